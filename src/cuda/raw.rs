//! Raw launchers over device pointers, for code that owns its memory and streams.
//!
//! Pointers are `CUdeviceptr` values (`u64`) in the current CUDA context, and `stream` is a
//! `CUstream` of that context (null for the legacy default stream). Every function enqueues its
//! kernels on `stream` and returns without waiting; none allocates. The caller makes sure that
//! the context owning the buffers is current on the calling thread (cudarc:
//! `CudaContext::bind_to_thread`), since the kernels launch through the CUDA runtime.
//!
//! Workspace: [`forward`], [`backward`] and [`cross_entropy`] take a device buffer of at least
//! the bytes returned by [`forward_workspace_size`], [`backward_workspace_size`] or
//! [`cross_entropy_workspace_size`] for the same dtype and shape, 16-byte aligned (0 when the
//! size is 0). It may be reused once the launch has finished on the stream.

use std::ffi::{c_void, CStr};

use cudarc::driver::sys::{CUdeviceptr, CUstream};

use super::sys;
use crate::element::DType;
use crate::error::{Error, Result};
use crate::options::{Activation, CrossEntropyOptions, Reduction, Upstream};
use crate::shape::Shape;

/// The reduced cross-entropy and row counts that [`cross_entropy`] leaves at the start of its
/// workspace (the `sigsoftmax_cross_entropy_result` C struct).
pub type CrossEntropyResult = sys::sigsoftmax_cross_entropy_result;

/// Bytes at the start of the cross-entropy workspace that hold a [`CrossEntropyResult`].
pub const CROSS_ENTROPY_RESULT_BYTES: usize = std::mem::size_of::<CrossEntropyResult>();

/// Bytes of workspace [`forward`] needs for `shape` (0 for shapes that need none).
pub fn forward_workspace_size(dtype: DType, shape: Shape) -> usize {
    // SAFETY: a pure host function of its integer arguments.
    unsafe {
        sys::sigsoftmax_forward_workspace_size(super::dtype_code(dtype), rows(shape), cols(shape))
    }
}

/// Bytes of workspace [`backward`] needs for `shape` (0 for shapes that need none).
pub fn backward_workspace_size(dtype: DType, shape: Shape) -> usize {
    // SAFETY: a pure host function of its integer arguments.
    unsafe {
        sys::sigsoftmax_backward_workspace_size(super::dtype_code(dtype), rows(shape), cols(shape))
    }
}

/// Bytes of workspace [`cross_entropy`] needs for `shape` (always at least
/// [`CROSS_ENTROPY_RESULT_BYTES`]).
pub fn cross_entropy_workspace_size(dtype: DType, shape: Shape) -> usize {
    // SAFETY: a pure host function of its integer arguments.
    unsafe {
        sys::sigsoftmax_cross_entropy_workspace_size(
            super::dtype_code(dtype),
            rows(shape),
            cols(shape),
        )
    }
}

/// Enqueues `y = forward(z)`, or `l = log_forward(z)` when `log_output` is true.
///
/// # Safety
/// `z` and `y` point to `shape.len()` elements of `dtype` in the current context, aligned to
/// the element size; `y` may equal `z` but may not otherwise overlap it. `workspace` points to
/// at least [`forward_workspace_size`] bytes, 16-byte aligned (any value when that is 0). All
/// of them stay allocated, and are not written by other work, until the launch has finished on
/// `stream`, which belongs to the current context.
#[allow(clippy::too_many_arguments)] // the C launcher's parameters
pub unsafe fn forward(
    dtype: DType,
    activation: Activation,
    log_output: bool,
    shape: Shape,
    z: CUdeviceptr,
    y: CUdeviceptr,
    workspace: CUdeviceptr,
    stream: CUstream,
) -> Result<()> {
    let op = if log_output { "log_forward" } else { "forward" };
    let status = sys::sigsoftmax_forward(
        super::dtype_code(dtype),
        activation_code(activation),
        i32::from(log_output),
        z as *const c_void,
        y as *mut c_void,
        workspace as *mut c_void,
        rows(shape),
        cols(shape),
        stream as *mut c_void,
    );
    check(status, op, shape)
}

/// Enqueues the gradient with respect to `z`: from `out = y` and `dout = dy`, or from
/// `out = l` and `dout = dl` when `log_output` is true.
///
/// # Safety
/// As for [`forward`], for `z`, `out`, `dout` and `dz` (`dz` may equal any of the inputs) and
/// [`backward_workspace_size`] bytes of `workspace`.
#[allow(clippy::too_many_arguments)] // the C launcher's parameters
pub unsafe fn backward(
    dtype: DType,
    activation: Activation,
    log_output: bool,
    shape: Shape,
    z: CUdeviceptr,
    out: CUdeviceptr,
    dout: CUdeviceptr,
    dz: CUdeviceptr,
    workspace: CUdeviceptr,
    stream: CUstream,
) -> Result<()> {
    let op = if log_output {
        "log_backward"
    } else {
        "backward"
    };
    let status = sys::sigsoftmax_backward(
        super::dtype_code(dtype),
        activation_code(activation),
        i32::from(log_output),
        z as *const c_void,
        out as *const c_void,
        dout as *const c_void,
        dz as *mut c_void,
        workspace as *mut c_void,
        rows(shape),
        cols(shape),
        stream as *mut c_void,
    );
    check(status, op, shape)
}

/// Enqueues the fused cross-entropy. `losses` receives one value per row (f32, or f64 for f64
/// storage); `grad` (0 for none, or equal to `z` for in place) the gradient. The reduced loss,
/// the counted rows and the first out-of-range target are written as a [`CrossEntropyResult`]
/// at the start of `workspace`; targets are not checked on the host.
///
/// `options.upstream` may not be [`Upstream::PerRow`] here, since that holds a host slice: pass
/// a device buffer of `rows` f32 values as `upstream_per_row` instead (with
/// [`Reduction::None`]), and [`Upstream::One`] in `options`.
///
/// # Errors
/// [`Error::InvalidLabelSmoothing`] and [`Error::UpstreamNeedsNoReduction`] for invalid
/// options, [`Error::Cuda`] when a launch fails.
///
/// # Safety
/// As for [`forward`], for `z`, `grad` and [`cross_entropy_workspace_size`] bytes of
/// `workspace`; `targets` points to `rows` `i64` values, `losses` to `rows` values of the
/// compute type, and `upstream_per_row` (when not 0) to `rows` f32 values.
#[allow(clippy::too_many_arguments)] // the C launcher's parameters
pub unsafe fn cross_entropy(
    dtype: DType,
    activation: Activation,
    shape: Shape,
    z: CUdeviceptr,
    targets: CUdeviceptr,
    options: &CrossEntropyOptions<'_>,
    upstream_per_row: CUdeviceptr,
    losses: CUdeviceptr,
    grad: CUdeviceptr,
    workspace: CUdeviceptr,
    stream: CUstream,
) -> Result<()> {
    const OP: &str = "cross_entropy";
    options.validate(OP)?;
    if upstream_per_row != 0 && options.reduction != Reduction::None {
        return Err(Error::UpstreamNeedsNoReduction {
            op: OP,
            reduction: options.reduction.name(),
        });
    }
    let (upstream, upstream_scalar) = match options.upstream {
        Upstream::One if upstream_per_row != 0 => {
            (sys::sigsoftmax_upstream_SIGSOFTMAX_UPSTREAM_PER_ROW, 1.0)
        }
        Upstream::One => (sys::sigsoftmax_upstream_SIGSOFTMAX_UPSTREAM_ONE, 1.0),
        Upstream::Scalar(value) => (sys::sigsoftmax_upstream_SIGSOFTMAX_UPSTREAM_SCALAR, value),
        Upstream::PerRow(_) => {
            return Err(Error::Cuda {
                op: OP,
                shape,
                message: "the raw launcher takes a per-row upstream gradient as a device pointer \
                          (`upstream_per_row`), not as Upstream::PerRow"
                    .into(),
            })
        }
    };
    let c_options = sys::sigsoftmax_cross_entropy_options {
        has_ignore_index: i32::from(options.ignore_index.is_some()),
        ignore_index: options.ignore_index.unwrap_or(0),
        label_smoothing: options.label_smoothing,
        reduction: match options.reduction {
            Reduction::None => sys::sigsoftmax_reduction_SIGSOFTMAX_REDUCTION_NONE,
            Reduction::Sum => sys::sigsoftmax_reduction_SIGSOFTMAX_REDUCTION_SUM,
            Reduction::Mean => sys::sigsoftmax_reduction_SIGSOFTMAX_REDUCTION_MEAN,
        },
        upstream,
        upstream_scalar,
        upstream_per_row: upstream_per_row as *const f32,
    };
    let status = sys::sigsoftmax_cross_entropy(
        super::dtype_code(dtype),
        activation_code(activation),
        z as *const c_void,
        targets as *const i64,
        &c_options,
        losses as *mut c_void,
        grad as *mut c_void,
        workspace as *mut c_void,
        rows(shape),
        cols(shape),
        stream as *mut c_void,
    );
    check(status, OP, shape)
}

fn activation_code(activation: Activation) -> sys::sigsoftmax_activation {
    match activation {
        Activation::Sigsoftmax => sys::sigsoftmax_activation_SIGSOFTMAX_SIGSOFTMAX,
        Activation::Softmax => sys::sigsoftmax_activation_SIGSOFTMAX_SOFTMAX,
    }
}

// A validated shape has rows * cols below 2^63, so both fit in i64.
fn rows(shape: Shape) -> i64 {
    shape.rows() as i64
}

fn cols(shape: Shape) -> i64 {
    shape.cols() as i64
}

/// Maps a launcher status to [`Error::Cuda`] with the runtime's name and description.
fn check(status: sys::cudaError_t, op: &'static str, shape: Shape) -> Result<()> {
    if status == sys::cudaError_cudaSuccess {
        return Ok(());
    }
    // SAFETY: sigsoftmax_error_string returns a NUL-terminated thread-local buffer that stays
    // valid until the next call on this thread; it is copied out at once.
    let text = unsafe { CStr::from_ptr(sys::sigsoftmax_error_string(status)) }.to_string_lossy();
    let hint = if status == sys::cudaError_cudaErrorNoKernelImageForDevice {
        "; rebuild with SIGSOFTMAX_CUDA_ARCHS listing this GPU's compute capability"
    } else {
        ""
    };
    Err(Error::Cuda {
        op,
        shape,
        message: format!("{text}{hint}"),
    })
}
