//! The custom ops on candle's CUDA storage, through the raw launchers of [`crate::cuda::raw`]
//! on candle's own device buffers and stream.
//!
//! candle pins its own cudarc release, so nothing here passes a cudarc type to this crate:
//! buffers travel as raw `CUdeviceptr` values (`u64`) and the stream as a raw pointer. Every
//! pointer is taken through cudarc's `device_ptr`/`device_ptr_mut` on candle's stream, and
//! the guards they return live until the launch has been enqueued.
//!
//! NOTE: not yet run on a GPU; it compiles and passes clippy with `--features candle-cuda`.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{CudaStorage, DType, Layout, Result};

use super::ops::{Backward, CrossEntropy, Forward};
use crate::cuda::raw;
use crate::element::Element;
use crate::options::{CrossEntropyOptions, Reduction, Upstream};
use crate::{bf16, f16};

/// Calls `$body::<T>` for the element type of a float storage.
macro_rules! dispatch_float {
    ($dtype:expr, $op:expr, $body:ident($($arg:expr),*)) => {
        match $dtype {
            DType::F32 => $body::<f32>($($arg),*),
            DType::F64 => $body::<f64>($($arg),*),
            DType::F16 => $body::<f16>($($arg),*),
            DType::BF16 => $body::<bf16>($($arg),*),
            other => candle_core::bail!(
                "sigsoftmax::candle::{}: dtype {other:?} is not supported; use f32, f64, f16 or bf16",
                $op
            ),
        }
    };
}

pub(super) fn forward(op: &Forward, z: &CudaStorage, layout: &Layout) -> Result<CudaStorage> {
    dispatch_float!(
        z.dtype(),
        Forward::op_name(op.log_output),
        forward_typed(op, z, layout)
    )
}

fn forward_typed<T: Element + CudaDType + DeviceRepr>(
    op: &Forward,
    z: &CudaStorage,
    layout: &Layout,
) -> Result<CudaStorage> {
    let name = Forward::op_name(op.log_output);
    let device = z.device().clone();
    let stream = bind(&device)?;
    let z_offset = contiguous_byte_offset::<T>(layout, name)?;
    // SAFETY: every element of `y` is written by the launch before anything reads it.
    let mut y = unsafe { device.alloc::<T>(op.shape.len()) }?;
    let mut workspace = alloc_workspace(&device, raw::forward_workspace_size(T::DTYPE, op.shape))?;
    {
        let (z_ptr, _z_guard) = z.as_cuda_slice::<T>()?.device_ptr(&stream);
        let (y_ptr, _y_guard) = y.device_ptr_mut(&stream);
        let (workspace_ptr, _workspace_guard) = workspace_ptr(&mut workspace, &stream);
        // SAFETY: `z_ptr + z_offset` and `y_ptr` address `shape.len()` elements of `T` in
        // candle's context (the layout is contiguous and the output was allocated for the
        // shape), the workspace has the size the launcher asked for, and the guards keep all
        // three recorded on `stream` until the launch is enqueued.
        unsafe {
            raw::forward(
                T::DTYPE,
                op.activation,
                op.log_output,
                op.shape,
                z_ptr + z_offset,
                y_ptr,
                workspace_ptr,
                raw_stream(&stream),
            )
        }
        .map_err(candle_core::Error::wrap)?;
    }
    Ok(CudaStorage::wrap_cuda_slice(y, device))
}

pub(super) fn backward(op: &Backward, inputs: [(&CudaStorage, &Layout); 3]) -> Result<CudaStorage> {
    dispatch_float!(
        inputs[0].0.dtype(),
        "sigsoftmax_backward",
        backward_typed(op, inputs)
    )
}

fn backward_typed<T: Element + CudaDType + DeviceRepr>(
    op: &Backward,
    [(z, z_layout), (out, out_layout), (dout, dout_layout)]: [(&CudaStorage, &Layout); 3],
) -> Result<CudaStorage> {
    const NAME: &str = "sigsoftmax_backward";
    let device = z.device().clone();
    let stream = bind(&device)?;
    let offsets = [
        contiguous_byte_offset::<T>(z_layout, NAME)?,
        contiguous_byte_offset::<T>(out_layout, NAME)?,
        contiguous_byte_offset::<T>(dout_layout, NAME)?,
    ];
    // SAFETY: every element of `dz` is written by the launch before anything reads it.
    let mut dz = unsafe { device.alloc::<T>(op.shape.len()) }?;
    let mut workspace = alloc_workspace(&device, raw::backward_workspace_size(T::DTYPE, op.shape))?;
    {
        let (z_ptr, _z_guard) = z.as_cuda_slice::<T>()?.device_ptr(&stream);
        let (out_ptr, _out_guard) = out.as_cuda_slice::<T>()?.device_ptr(&stream);
        let (dout_ptr, _dout_guard) = dout.as_cuda_slice::<T>()?.device_ptr(&stream);
        let (dz_ptr, _dz_guard) = dz.device_ptr_mut(&stream);
        let (workspace_ptr, _workspace_guard) = workspace_ptr(&mut workspace, &stream);
        // SAFETY: as in `forward_typed`, for the three inputs (each contiguous with
        // `shape.len()` elements from its offset), the fresh `dz` and the workspace.
        unsafe {
            raw::backward(
                T::DTYPE,
                op.activation,
                op.log_output,
                op.shape,
                z_ptr + offsets[0],
                out_ptr + offsets[1],
                dout_ptr + offsets[2],
                dz_ptr,
                workspace_ptr,
                raw_stream(&stream),
            )
        }
        .map_err(candle_core::Error::wrap)?;
    }
    Ok(CudaStorage::wrap_cuda_slice(dz, device))
}

pub(super) fn cross_entropy(
    op: &CrossEntropy,
    logits: (&CudaStorage, &Layout),
    targets: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    dispatch_float!(
        logits.0.dtype(),
        "cross_entropy",
        cross_entropy_typed(op, logits, targets, None)
    )
    .map(|(loss, _grad)| loss)
}

pub(super) fn cross_entropy_backward(
    op: &CrossEntropy,
    logits: (&CudaStorage, &Layout),
    targets: (&CudaStorage, &Layout),
    upstream: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    dispatch_float!(
        logits.0.dtype(),
        "cross_entropy_backward",
        cross_entropy_typed(op, logits, targets, Some(upstream))
    )
    .and_then(|(_loss, grad)| grad.ok_or_else(|| candle_core::Error::msg(
            "sigsoftmax::candle::cross_entropy_backward: internal error, the launch returned no gradient",
        )))
}

/// Runs the fused cross-entropy. Without `upstream` it returns the loss tensor's storage;
/// with it, the gradient with respect to the logits as well.
///
/// It reads the launcher's result record back to the host (which waits for the stream) to
/// report an out-of-range target as an error, as the CPU path does, and to build the reduced
/// loss.
fn cross_entropy_typed<T: Element + CudaDType + DeviceRepr>(
    op: &CrossEntropy,
    (logits, logits_layout): (&CudaStorage, &Layout),
    (targets, targets_layout): (&CudaStorage, &Layout),
    upstream: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    const NAME: &str = "cross_entropy";
    let device = logits.device().clone();
    let stream = bind(&device)?;
    let logits_offset = contiguous_byte_offset::<T>(logits_layout, NAME)?;
    let targets_offset = contiguous_byte_offset::<i64>(targets_layout, NAME)?;
    let rows = op.shape.rows();

    // The upstream gradient: a scalar read to the host, or a per-row f32 device buffer.
    let mut per_row_upstream: Option<CudaSlice<f32>> = None;
    let mut upstream_scalar = Upstream::One;
    if let Some((upstream, upstream_layout)) = upstream {
        let values = upstream_as_f32(&device, upstream, upstream_layout)?;
        match op.reduction {
            Reduction::None => per_row_upstream = Some(values),
            Reduction::Sum | Reduction::Mean => {
                let host = stream
                    .clone_dtoh(&values)
                    .map_err(candle_core::Error::wrap)?;
                upstream_scalar = Upstream::Scalar(f64::from(host[0]));
            }
        }
    }
    let options = CrossEntropyOptions {
        ignore_index: op.ignore_index,
        label_smoothing: op.label_smoothing,
        reduction: op.reduction,
        upstream: upstream_scalar,
    };

    let mut workspace = alloc_workspace(
        &device,
        raw::cross_entropy_workspace_size(T::DTYPE, op.shape),
    )?;
    // One loss per row in the compute type: f64 for f64 logits, f32 otherwise.
    let mut losses = if T::DTYPE == crate::DType::F64 {
        Losses::F64(device.alloc_zeros::<f64>(rows)?)
    } else {
        Losses::F32(device.alloc_zeros::<f32>(rows)?)
    };
    let mut grad = match upstream {
        // SAFETY: every element is written by the launch before anything reads it.
        Some(_) => Some(unsafe { device.alloc::<T>(op.shape.len()) }?),
        None => None,
    };
    {
        let (logits_ptr, _logits_guard) = logits.as_cuda_slice::<T>()?.device_ptr(&stream);
        let (targets_ptr, _targets_guard) = targets.as_cuda_slice::<i64>()?.device_ptr(&stream);
        let (losses_ptr, _losses_guard) = match &mut losses {
            Losses::F32(values) => values.device_ptr_mut(&stream),
            Losses::F64(values) => values.device_ptr_mut(&stream),
        };
        let (grad_ptr, _grad_guard) = match grad.as_mut() {
            Some(grad) => {
                let (ptr, guard) = grad.device_ptr_mut(&stream);
                (ptr, Some(guard))
            }
            None => (0, None),
        };
        let (upstream_ptr, _upstream_guard) = match per_row_upstream.as_ref() {
            Some(values) => {
                let (ptr, guard) = values.device_ptr(&stream);
                (ptr, Some(guard))
            }
            None => (0, None),
        };
        let (workspace_ptr, _workspace_guard) = workspace_ptr(&mut workspace, &stream);
        // SAFETY: logits (contiguous, `shape.len()` elements of `T` from the offset), targets
        // (`rows` i64 from the offset), losses (`rows` values of the compute type), grad
        // (`shape.len()` of `T`, or 0), the per-row upstream (`rows` f32, or 0) and the
        // workspace of the size the launcher asked for all belong to candle's context, and
        // their guards keep them recorded on `stream` until the launch is enqueued.
        unsafe {
            raw::cross_entropy(
                T::DTYPE,
                op.activation,
                op.shape,
                logits_ptr + logits_offset,
                targets_ptr + targets_offset,
                &options,
                upstream_ptr,
                losses_ptr,
                grad_ptr,
                workspace_ptr,
                raw_stream(&stream),
            )
        }
        .map_err(candle_core::Error::wrap)?;
    }

    let record = read_result(&stream, workspace.as_ref())?;
    if record.invalid_row >= 0 {
        candle_core::bail!(
            "sigsoftmax::candle::{NAME}: target {} in row {} is out of range for {} classes; \
             use a class index in 0..{} or the ignore index ({:?})",
            record.invalid_target,
            record.invalid_row,
            op.shape.cols(),
            op.shape.cols(),
            op.ignore_index
        );
    }
    let loss = match (op.reduction, losses) {
        (Reduction::None, Losses::F32(values)) => {
            CudaStorage::wrap_cuda_slice(values, device.clone())
        }
        (Reduction::None, Losses::F64(values)) => {
            CudaStorage::wrap_cuda_slice(values, device.clone())
        }
        (Reduction::Sum | Reduction::Mean, Losses::F32(_)) => {
            let value = [record.loss as f32];
            let slice = stream
                .clone_htod(&value)
                .map_err(candle_core::Error::wrap)?;
            CudaStorage::wrap_cuda_slice(slice, device.clone())
        }
        (Reduction::Sum | Reduction::Mean, Losses::F64(_)) => {
            let slice = stream
                .clone_htod(&[record.loss])
                .map_err(candle_core::Error::wrap)?;
            CudaStorage::wrap_cuda_slice(slice, device.clone())
        }
    };
    let grad = grad.map(|grad| CudaStorage::wrap_cuda_slice(grad, device));
    Ok((loss, grad))
}

/// Per-row losses on the device, in the compute type.
enum Losses {
    F32(CudaSlice<f32>),
    F64(CudaSlice<f64>),
}

/// The upstream gradient as an f32 device buffer (candle passes f32, or f64 for f64 logits).
fn upstream_as_f32(
    device: &CudaDevice,
    upstream: &CudaStorage,
    layout: &Layout,
) -> Result<CudaSlice<f32>> {
    let stream = device.cuda_stream();
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::msg("sigsoftmax::candle::cross_entropy: upstream not contiguous")
    })?;
    // The per-row gradient is small (one value per row), so a round trip through the host
    // keeps this independent of candle's conversion kernels.
    let host: Vec<f32> = match upstream.dtype() {
        DType::F32 => stream.clone_dtoh(&upstream.as_cuda_slice::<f32>()?.slice(start..end)),
        DType::F64 => stream
            .clone_dtoh(&upstream.as_cuda_slice::<f64>()?.slice(start..end))
            .map(|values| values.into_iter().map(|v| v as f32).collect()),
        other => candle_core::bail!(
            "sigsoftmax::candle::cross_entropy: upstream gradient of dtype {other:?}; expected f32 or f64"
        ),
    }
    .map_err(candle_core::Error::wrap)?;
    stream.clone_htod(&host).map_err(candle_core::Error::wrap)
}

fn read_result(
    stream: &std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
    workspace: Option<&CudaSlice<u8>>,
) -> Result<raw::CrossEntropyResult> {
    let workspace = workspace.ok_or_else(|| {
        candle_core::Error::msg("the cross-entropy workspace holds at least the result record")
    })?;
    let bytes = stream
        .clone_dtoh(&workspace.slice(..raw::CROSS_ENTROPY_RESULT_BYTES))
        .map_err(candle_core::Error::wrap)?;
    // SAFETY: the launcher wrote a `sigsoftmax_cross_entropy_result` (plain integers and a
    // double) at the start of the workspace; `read_unaligned` copes with the Vec's alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<raw::CrossEntropyResult>()) })
}

/// Makes candle's context current on this thread (the launchers go through the CUDA runtime)
/// and returns candle's stream.
fn bind(
    device: &CudaDevice,
) -> Result<std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>> {
    let stream = device.cuda_stream();
    stream
        .context()
        .bind_to_thread()
        .map_err(candle_core::Error::wrap)?;
    Ok(stream)
}

/// A workspace of `bytes` (none when 0). cudarc frees it in stream order (or synchronously
/// where the driver has no memory pools), so dropping it after the launch is safe.
fn alloc_workspace(device: &CudaDevice, bytes: usize) -> Result<Option<CudaSlice<u8>>> {
    if bytes == 0 {
        return Ok(None);
    }
    // SAFETY: the launcher initializes the workspace before reading it.
    Ok(Some(unsafe { device.alloc::<u8>(bytes) }?))
}

fn workspace_ptr<'a>(
    workspace: &'a mut Option<CudaSlice<u8>>,
    stream: &'a candle_core::cuda_backend::cudarc::driver::CudaStream,
) -> (u64, Option<impl Drop + 'a>) {
    match workspace.as_mut() {
        Some(workspace) => {
            let (ptr, guard) = workspace.device_ptr_mut(stream);
            (ptr, Some(guard))
        }
        None => (0, None),
    }
}

/// The stream as the raw launchers take it: both are `CUstream`, possibly from two cudarc
/// releases, so it travels as a plain pointer.
fn raw_stream(
    stream: &candle_core::cuda_backend::cudarc::driver::CudaStream,
) -> cudarc::driver::sys::CUstream {
    stream.cu_stream() as *mut std::ffi::c_void as cudarc::driver::sys::CUstream
}

/// Byte offset of a contiguous layout's first element.
fn contiguous_byte_offset<T>(layout: &Layout, op: &str) -> Result<u64> {
    match layout.contiguous_offsets() {
        Some((start, _end)) => Ok((start * std::mem::size_of::<T>()) as u64),
        None => candle_core::bail!(
            "sigsoftmax::candle::{op}: the input is not contiguous (strides {:?}); call \
             Tensor::contiguous first",
            layout.stride()
        ),
    }
}
