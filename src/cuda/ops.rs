//! The safe ops over cudarc buffers: same names, options and errors as [`crate::cpu`].
//!
//! Each function checks lengths, element alignment and that every buffer belongs to the
//! stream's context, allocates the workspace a long-row launch needs (stream-ordered), binds
//! the context to the calling thread, and holds cudarc's pointer guards until the kernels are
//! enqueued, so cudarc's event tracking orders the launch after earlier writes to the inputs
//! and later work after the launch's writes. Only the cross-entropy waits for the GPU, to
//! return the reduced loss.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaViewMut, DevicePtr, DevicePtrMut, DeviceSlice};

use super::raw;
use crate::element::Element;
use crate::error::{Error, IgnoreIndexDisplay, Result};
use crate::options::{Activation, CrossEntropyOptions, Upstream};
use crate::shape::Shape;

/// Computes `y = sigsoftmax(z)` (or softmax) row by row on `stream`, without waiting for it.
///
/// Semantics as [`crate::cpu::forward`].
///
/// # Errors
/// [`Error::LengthMismatch`], [`Error::Misaligned`], [`Error::Cuda`] (also when a buffer
/// belongs to another context than `stream`).
pub fn forward<T: Element>(
    stream: &Arc<CudaStream>,
    activation: Activation,
    shape: Shape,
    z: &impl DevicePtr<T>,
    y: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    forward_impl(stream, activation, shape, false, "forward", z, y)
}

/// Computes `l = log sigsoftmax(z)` (or log softmax) on `stream`, without waiting for it.
///
/// Semantics as [`crate::cpu::log_forward`].
///
/// # Errors
/// As [`forward`].
pub fn log_forward<T: Element>(
    stream: &Arc<CudaStream>,
    activation: Activation,
    shape: Shape,
    z: &impl DevicePtr<T>,
    l: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    forward_impl(stream, activation, shape, true, "log_forward", z, l)
}

fn forward_impl<T: Element>(
    stream: &Arc<CudaStream>,
    activation: Activation,
    shape: Shape,
    log_output: bool,
    op: &'static str,
    z: &impl DevicePtr<T>,
    y: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    check_buffer(op, "z", shape, shape.len(), stream, z)?;
    check_buffer(op, "y", shape, shape.len(), stream, y)?;
    let workspace = alloc_workspace(
        op,
        shape,
        stream,
        raw::forward_workspace_size(T::DTYPE, shape),
    )?;
    bind(op, shape, stream)?;
    let (z_ptr, _z_guard) = z.device_ptr(stream);
    let (y_ptr, _y_guard) = y.device_ptr_mut(stream);
    check_alignment::<T>(op, &[("z", z_ptr), ("y", y_ptr)])?;
    let (workspace_ptr, _workspace_guard) = workspace_ptr(&workspace, stream);
    // SAFETY: z and y hold shape.len() elements of T (checked above) in the stream's context
    // (checked above), aligned to T (checked above), and are distinct buffers (one is borrowed
    // shared, the other mutably). The workspace was allocated above with the size the launcher
    // asks for, and cudarc allocations are at least 256-byte aligned. The guards keep all
    // three alive and record the launch for cudarc's event tracking until the end of scope.
    unsafe {
        raw::forward(
            T::DTYPE,
            activation,
            log_output,
            shape,
            z_ptr,
            y_ptr,
            workspace_ptr,
            stream.cu_stream(),
        )
    }
}

/// Computes the forward pass over `z` in place on `stream`, without waiting for it.
///
/// # Errors
/// As [`forward`].
pub fn forward_in_place<T: Element>(
    stream: &Arc<CudaStream>,
    activation: Activation,
    shape: Shape,
    z: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    const OP: &str = "forward_in_place";
    check_buffer(OP, "z", shape, shape.len(), stream, z)?;
    let workspace = alloc_workspace(
        OP,
        shape,
        stream,
        raw::forward_workspace_size(T::DTYPE, shape),
    )?;
    bind(OP, shape, stream)?;
    let (z_ptr, _z_guard) = z.device_ptr_mut(stream);
    check_alignment::<T>(OP, &[("z", z_ptr)])?;
    let (workspace_ptr, _workspace_guard) = workspace_ptr(&workspace, stream);
    // SAFETY: as in `forward_impl`; the launcher allows y == z.
    unsafe {
        raw::forward(
            T::DTYPE,
            activation,
            false,
            shape,
            z_ptr,
            z_ptr,
            workspace_ptr,
            stream.cu_stream(),
        )
    }
}

/// Computes the gradient with respect to the logits from `z`, `y = forward(z)` and `dy`, on
/// `stream` without waiting for it. Semantics as [`crate::cpu::backward`].
///
/// # Errors
/// As [`forward`].
pub fn backward<T: Element>(
    stream: &Arc<CudaStream>,
    activation: Activation,
    shape: Shape,
    z: &impl DevicePtr<T>,
    y: &impl DevicePtr<T>,
    dy: &impl DevicePtr<T>,
    dz: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    backward_impl(
        stream,
        activation,
        shape,
        false,
        ["backward", "y", "dy"],
        z,
        y,
        dy,
        dz,
    )
}

/// Computes the gradient with respect to the logits from `z`, `l = log_forward(z)` and `dl`,
/// on `stream` without waiting for it. Semantics as [`crate::cpu::log_backward`].
///
/// # Errors
/// As [`forward`].
pub fn log_backward<T: Element>(
    stream: &Arc<CudaStream>,
    activation: Activation,
    shape: Shape,
    z: &impl DevicePtr<T>,
    l: &impl DevicePtr<T>,
    dl: &impl DevicePtr<T>,
    dz: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    backward_impl(
        stream,
        activation,
        shape,
        true,
        ["log_backward", "l", "dl"],
        z,
        l,
        dl,
        dz,
    )
}

#[allow(clippy::too_many_arguments)] // the op's buffers plus its names
fn backward_impl<T: Element>(
    stream: &Arc<CudaStream>,
    activation: Activation,
    shape: Shape,
    log_output: bool,
    [op, out_name, dout_name]: [&'static str; 3],
    z: &impl DevicePtr<T>,
    out: &impl DevicePtr<T>,
    dout: &impl DevicePtr<T>,
    dz: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    check_buffer(op, "z", shape, shape.len(), stream, z)?;
    check_buffer(op, out_name, shape, shape.len(), stream, out)?;
    check_buffer(op, dout_name, shape, shape.len(), stream, dout)?;
    check_buffer(op, "dz", shape, shape.len(), stream, dz)?;
    let workspace = alloc_workspace(
        op,
        shape,
        stream,
        raw::backward_workspace_size(T::DTYPE, shape),
    )?;
    bind(op, shape, stream)?;
    let (z_ptr, _z_guard) = z.device_ptr(stream);
    let (out_ptr, _out_guard) = out.device_ptr(stream);
    let (dout_ptr, _dout_guard) = dout.device_ptr(stream);
    let (dz_ptr, _dz_guard) = dz.device_ptr_mut(stream);
    check_alignment::<T>(
        op,
        &[
            ("z", z_ptr),
            (out_name, out_ptr),
            (dout_name, dout_ptr),
            ("dz", dz_ptr),
        ],
    )?;
    let (workspace_ptr, _workspace_guard) = workspace_ptr(&workspace, stream);
    // SAFETY: the four buffers hold shape.len() elements of T in the stream's context, aligned
    // to T (all checked above); dz is borrowed mutably, so it overlaps none of the inputs. The
    // workspace has the size the launcher asks for, and the guards keep everything alive until
    // the launch is enqueued and recorded.
    unsafe {
        raw::backward(
            T::DTYPE,
            activation,
            log_output,
            shape,
            z_ptr,
            out_ptr,
            dout_ptr,
            dz_ptr,
            workspace_ptr,
            stream.cu_stream(),
        )
    }
}

/// Computes the fused cross-entropy on `stream` and waits for it to return the reduced loss.
///
/// `losses` receives one loss per row in the compute type (f32, or f64 for f64 storage),
/// `grad` the gradient when given. [`Upstream::PerRow`] values are copied to the device.
/// Semantics as [`crate::cpu::cross_entropy`].
///
/// # Errors
/// As [`crate::cpu::cross_entropy`], plus [`Error::Misaligned`] and [`Error::Cuda`]. Targets
/// are checked on the GPU: on [`Error::TargetOutOfRange`] the other rows' losses and gradients
/// have been written (the offending rows hold NaN), unlike on the CPU.
#[allow(clippy::too_many_arguments)] // mirrors the op's signature
pub fn cross_entropy<T: Element>(
    stream: &Arc<CudaStream>,
    activation: Activation,
    shape: Shape,
    z: &impl DevicePtr<T>,
    targets: &impl DevicePtr<i64>,
    options: &CrossEntropyOptions<'_>,
    losses: &mut impl DevicePtrMut<T::Accum>,
    grad: Option<&mut CudaViewMut<'_, T>>,
) -> Result<f64> {
    const OP: &str = "cross_entropy";
    check_buffer(OP, "z", shape, shape.len(), stream, z)?;
    let guard_and_ptr = match grad {
        Some(grad) => {
            check_buffer(OP, "grad", shape, shape.len(), stream, grad)?;
            bind(OP, shape, stream)?;
            Some(grad.device_ptr_mut(stream))
        }
        None => None,
    };
    let grad_ptr = guard_and_ptr.as_ref().map_or(0, |(ptr, _)| *ptr);
    let (z_ptr, _z_guard) = z.device_ptr(stream);
    cross_entropy_impl::<T>(
        stream, activation, shape, OP, z_ptr, grad_ptr, targets, options, losses,
    )
}

/// Computes the fused cross-entropy and overwrites the logits with their gradient, on `stream`,
/// and waits for it to return the reduced loss.
///
/// # Errors
/// As [`cross_entropy`].
pub fn cross_entropy_in_place<T: Element>(
    stream: &Arc<CudaStream>,
    activation: Activation,
    shape: Shape,
    z: &mut impl DevicePtrMut<T>,
    targets: &impl DevicePtr<i64>,
    options: &CrossEntropyOptions<'_>,
    losses: &mut impl DevicePtrMut<T::Accum>,
) -> Result<f64> {
    const OP: &str = "cross_entropy_in_place";
    check_buffer(OP, "z", shape, shape.len(), stream, z)?;
    bind(OP, shape, stream)?;
    let (z_ptr, _z_guard) = z.device_ptr_mut(stream);
    cross_entropy_impl::<T>(
        stream, activation, shape, OP, z_ptr, z_ptr, targets, options, losses,
    )
}

/// The shared part of both cross-entropy functions, once z and grad are resolved to pointers.
#[allow(clippy::too_many_arguments)] // the op's buffers
fn cross_entropy_impl<T: Element>(
    stream: &Arc<CudaStream>,
    activation: Activation,
    shape: Shape,
    op: &'static str,
    z_ptr: u64,
    grad_ptr: u64,
    targets: &impl DevicePtr<i64>,
    options: &CrossEntropyOptions<'_>,
    losses: &mut impl DevicePtrMut<T::Accum>,
) -> Result<f64> {
    options.validate(op)?;
    check_buffer(op, "targets", shape, shape.rows(), stream, targets)?;
    check_buffer(op, "losses", shape, shape.rows(), stream, losses)?;
    bind(op, shape, stream)?;

    // A per-row upstream gradient arrives as a host slice; the kernels read it from the device.
    let upstream_device = match options.upstream {
        Upstream::PerRow(values) => {
            shape.check_per_row(op, "upstream", values.len())?;
            Some(
                stream
                    .clone_htod(values)
                    .map_err(super::driver_error(op, shape))?,
            )
        }
        _ => None,
    };
    let device_options = CrossEntropyOptions {
        upstream: if upstream_device.is_some() {
            Upstream::One
        } else {
            options.upstream
        },
        ..*options
    };
    let workspace_size = raw::cross_entropy_workspace_size(T::DTYPE, shape);
    let workspace = alloc_workspace(op, shape, stream, workspace_size)?
        .expect("the cross-entropy workspace is never empty");

    let (targets_ptr, _targets_guard) = targets.device_ptr(stream);
    let (losses_ptr, _losses_guard) = losses.device_ptr_mut(stream);
    check_alignment::<T>(op, &[("z", z_ptr), ("grad", grad_ptr)])?;
    check_aligned(op, "targets", targets_ptr, 8)?;
    check_aligned(op, "losses", losses_ptr, std::mem::size_of::<T::Accum>())?;
    let upstream_guard = upstream_device
        .as_ref()
        .map(|values| values.device_ptr(stream));
    let upstream_ptr = upstream_guard.as_ref().map_or(0, |(ptr, _)| *ptr);
    let mut result_bytes = [0u8; raw::CROSS_ENTROPY_RESULT_BYTES];
    {
        let (workspace_ptr, _workspace_guard) = workspace.device_ptr(stream);
        // SAFETY: z and grad (0 or shape.len() elements, possibly equal to z) are aligned
        // buffers of the stream's context, checked by the callers and above; targets and losses
        // hold `rows` values (checked above); the upstream copy holds `rows` f32 values; the
        // workspace has the size the launcher asks for and cudarc's 256-byte alignment. The
        // guards keep every buffer alive until the copy below has waited for the kernels.
        unsafe {
            raw::cross_entropy(
                T::DTYPE,
                activation,
                shape,
                z_ptr,
                targets_ptr,
                &device_options,
                upstream_ptr,
                losses_ptr,
                grad_ptr,
                workspace_ptr,
                stream.cu_stream(),
            )?;
        }
    }
    let result_view = workspace.slice(0..raw::CROSS_ENTROPY_RESULT_BYTES);
    stream
        .memcpy_dtoh(&result_view, &mut result_bytes)
        .map_err(super::driver_error(op, shape))?;
    stream
        .synchronize()
        .map_err(super::driver_error(op, shape))?;
    // SAFETY: the bytes were written by the launcher as a sigsoftmax_cross_entropy_result, a
    // plain C struct of integers and a double for which every bit pattern is valid;
    // read_unaligned copes with the byte array's alignment.
    let result: raw::CrossEntropyResult =
        unsafe { std::ptr::read_unaligned(result_bytes.as_ptr().cast()) };
    if result.invalid_row >= 0 {
        return Err(Error::TargetOutOfRange {
            op,
            row: result.invalid_row as usize,
            target: result.invalid_target,
            cols: shape.cols(),
            ignore_index: IgnoreIndexDisplay(options.ignore_index),
        });
    }
    Ok(result.loss)
}

/// Checks a buffer's length and that it belongs to the stream's context.
fn check_buffer<T>(
    op: &'static str,
    name: &'static str,
    shape: Shape,
    expected: usize,
    stream: &Arc<CudaStream>,
    buffer: &impl DeviceSlice<T>,
) -> Result<()> {
    if buffer.len() != expected {
        return Err(Error::LengthMismatch {
            op,
            name,
            shape,
            expected,
            actual: buffer.len(),
        });
    }
    if buffer.stream().context() != stream.context() {
        return Err(Error::Cuda {
            op,
            shape,
            message: format!(
                "buffer `{name}` belongs to the context of CUDA device {} but the stream to \
                 device {}; allocate it on the stream's context",
                buffer.stream().context().ordinal(),
                stream.context().ordinal()
            ),
        });
    }
    Ok(())
}

fn check_alignment<T>(op: &'static str, pointers: &[(&'static str, u64)]) -> Result<()> {
    pointers
        .iter()
        .try_for_each(|&(name, ptr)| check_aligned(op, name, ptr, std::mem::align_of::<T>()))
}

fn check_aligned(op: &'static str, name: &'static str, ptr: u64, align: usize) -> Result<()> {
    if ptr.is_multiple_of(align as u64) {
        Ok(())
    } else {
        Err(Error::Misaligned {
            op,
            name,
            address: ptr as usize,
            align,
        })
    }
}

/// Makes the stream's context current on this thread: the kernels launch through the CUDA
/// runtime, which uses the current context.
fn bind(op: &'static str, shape: Shape, stream: &Arc<CudaStream>) -> Result<()> {
    stream
        .context()
        .bind_to_thread()
        .map_err(super::driver_error(op, shape))
}

/// Allocates `bytes` of workspace on `stream`, or nothing when `bytes` is 0.
fn alloc_workspace(
    op: &'static str,
    shape: Shape,
    stream: &Arc<CudaStream>,
    bytes: usize,
) -> Result<Option<CudaSlice<u8>>> {
    if bytes == 0 {
        return Ok(None);
    }
    // SAFETY: the launchers write every workspace byte they read before reading it (partials
    // in pass 1 before pass 2, the result header in its first kernel), so uninitialized memory
    // is never observed.
    let workspace = unsafe { stream.alloc::<u8>(bytes) }.map_err(super::driver_error(op, shape))?;
    Ok(Some(workspace))
}

/// Returns the workspace pointer (0 when there is none) and the guard that keeps it alive.
fn workspace_ptr<'a>(
    workspace: &'a Option<CudaSlice<u8>>,
    stream: &'a CudaStream,
) -> (u64, Option<cudarc::driver::SyncOnDrop<'a>>) {
    match workspace {
        Some(buffer) => {
            let (ptr, guard) = buffer.device_ptr(stream);
            (ptr, Some(guard))
        }
        None => (0, None),
    }
}
