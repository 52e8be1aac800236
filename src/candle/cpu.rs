//! The custom ops on candle's CPU storage, through [`crate::cpu`].

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result};

use super::ops::{Backward, CrossEntropy, Forward};
use crate::element::Element;
use crate::options::{CrossEntropyOptions, Reduction, Upstream};
use crate::{bf16, cpu, f16};

/// Calls `$body` with `$slice` bound to the contiguous elements of a float CPU storage, and
/// wraps the returned vector back into the same storage variant.
macro_rules! with_float_slice {
    ($storage:expr, $layout:expr, $op:expr, |$slice:ident| $body:expr) => {
        match $storage {
            CpuStorage::F32(data) => {
                let $slice: &[f32] = contiguous(data, $layout, $op)?;
                CpuStorage::F32($body)
            }
            CpuStorage::F64(data) => {
                let $slice: &[f64] = contiguous(data, $layout, $op)?;
                CpuStorage::F64($body)
            }
            CpuStorage::F16(data) => {
                let $slice: &[f16] = contiguous(data, $layout, $op)?;
                CpuStorage::F16($body)
            }
            CpuStorage::BF16(data) => {
                let $slice: &[bf16] = contiguous(data, $layout, $op)?;
                CpuStorage::BF16($body)
            }
            other => candle_core::bail!(
                "sigsoftmax::candle::{}: dtype {:?} is not supported; use f32, f64, f16 or bf16",
                $op,
                other.dtype()
            ),
        }
    };
}

pub(super) fn forward(op: &Forward, z: &CpuStorage, layout: &Layout) -> Result<CpuStorage> {
    let name = Forward::op_name(op.log_output);
    Ok(with_float_slice!(z, layout, name, |z| {
        let mut y = vec![Default::default(); z.len()];
        if op.log_output {
            cpu::log_forward(op.activation, op.shape, z, &mut y)
        } else {
            cpu::forward(op.activation, op.shape, z, &mut y)
        }
        .map_err(candle_core::Error::wrap)?;
        y
    }))
}

pub(super) fn backward(
    op: &Backward,
    [(z, z_layout), (out, out_layout), (dout, dout_layout)]: [(&CpuStorage, &Layout); 3],
) -> Result<CpuStorage> {
    const NAME: &str = "sigsoftmax_backward";
    Ok(with_float_slice!(z, z_layout, NAME, |z| {
        let out = contiguous(same_dtype(out, z)?, out_layout, NAME)?;
        let dout = contiguous(same_dtype(dout, z)?, dout_layout, NAME)?;
        let mut dz = vec![Default::default(); z.len()];
        if op.log_output {
            cpu::log_backward(op.activation, op.shape, z, out, dout, &mut dz)
        } else {
            cpu::backward(op.activation, op.shape, z, out, dout, &mut dz)
        }
        .map_err(candle_core::Error::wrap)?;
        dz
    }))
}

pub(super) fn cross_entropy(
    op: &CrossEntropy,
    (logits, logits_layout): (&CpuStorage, &Layout),
    (targets, targets_layout): (&CpuStorage, &Layout),
) -> Result<CpuStorage> {
    const NAME: &str = "cross_entropy";
    let targets: &[i64] = contiguous(targets.as_slice()?, targets_layout, NAME)?;
    let options = options(op, Upstream::One);
    let rows = op.shape.rows();
    match logits {
        CpuStorage::F64(data) => {
            let logits: &[f64] = contiguous(data, logits_layout, NAME)?;
            let mut losses = vec![0.0f64; rows];
            let loss = cpu::cross_entropy(
                op.activation,
                op.shape,
                logits,
                targets,
                &options,
                &mut losses,
                None,
            )
            .map_err(candle_core::Error::wrap)?;
            Ok(CpuStorage::F64(reduced_or_per_row(
                loss,
                losses,
                op.reduction,
            )))
        }
        _ => {
            let losses = with_f32_accum_slice(logits, logits_layout, |logits| {
                let mut losses = vec![0.0f32; rows];
                let loss = cpu_cross_entropy_f32(op, logits, targets, &options, &mut losses)?;
                Ok(reduced_or_per_row(loss as f32, losses, op.reduction))
            })?;
            Ok(CpuStorage::F32(losses))
        }
    }
}

pub(super) fn cross_entropy_backward(
    op: &CrossEntropy,
    (logits, logits_layout): (&CpuStorage, &Layout),
    (targets, targets_layout): (&CpuStorage, &Layout),
    (upstream, upstream_layout): (&CpuStorage, &Layout),
) -> Result<CpuStorage> {
    const NAME: &str = "cross_entropy_backward";
    let targets: &[i64] = contiguous(targets.as_slice()?, targets_layout, NAME)?;
    Ok(match (logits, upstream) {
        (CpuStorage::F64(data), CpuStorage::F64(upstream)) => {
            let logits: &[f64] = contiguous(data, logits_layout, NAME)?;
            let upstream: &[f64] = contiguous(upstream, upstream_layout, NAME)?;
            CpuStorage::F64(cross_entropy_grad_f64(op, logits, targets, upstream)?)
        }
        (_, CpuStorage::F32(upstream)) => {
            let upstream: &[f32] = contiguous(upstream, upstream_layout, NAME)?;
            let upstream = match op.reduction {
                Reduction::None => Upstream::PerRow(upstream),
                Reduction::Sum | Reduction::Mean => Upstream::Scalar(f64::from(upstream[0])),
            };
            let options = options(op, upstream);
            with_float_slice!(logits, logits_layout, NAME, |logits| {
                cross_entropy_grad(op, logits, targets, &options)?
            })
        }
        (logits, upstream) => candle_core::bail!(
            "sigsoftmax::candle::{NAME}: the upstream gradient has dtype {:?} but logits of \
             dtype {:?} need {:?}",
            upstream.dtype(),
            logits.dtype(),
            super::loss_dtype(logits.dtype())
        ),
    })
}

/// The gradient for f64 logits. A per-row upstream gradient is applied after the op, in f64,
/// because [`Upstream::PerRow`] takes f32 values and would round it.
fn cross_entropy_grad_f64(
    op: &CrossEntropy,
    logits: &[f64],
    targets: &[i64],
    upstream: &[f64],
) -> Result<Vec<f64>> {
    let (options, per_row) = match op.reduction {
        Reduction::None => (options(op, Upstream::One), Some(upstream)),
        Reduction::Sum | Reduction::Mean => (options(op, Upstream::Scalar(upstream[0])), None),
    };
    let mut grad = cross_entropy_grad(op, logits, targets, &options)?;
    if let Some(per_row) = per_row {
        let cols = op.shape.cols();
        for (row, &scale) in grad.chunks_exact_mut(cols).zip(per_row) {
            row.iter_mut().for_each(|value| *value *= scale);
        }
    }
    Ok(grad)
}

fn cross_entropy_grad<T: Element>(
    op: &CrossEntropy,
    logits: &[T],
    targets: &[i64],
    options: &CrossEntropyOptions<'_>,
) -> Result<Vec<T>> {
    let mut losses = vec![Default::default(); op.shape.rows()];
    let mut grad = vec![T::default(); logits.len()];
    cpu::cross_entropy(
        op.activation,
        op.shape,
        logits,
        targets,
        options,
        &mut losses,
        Some(&mut grad),
    )
    .map_err(candle_core::Error::wrap)?;
    Ok(grad)
}

/// Runs `body` on f32, f16 or bf16 logits, whose losses are all f32.
fn with_f32_accum_slice<R>(
    logits: &CpuStorage,
    layout: &Layout,
    body: impl FnOnce(F32AccumSlice<'_>) -> Result<R>,
) -> Result<R> {
    const NAME: &str = "cross_entropy";
    match logits {
        CpuStorage::F32(data) => body(F32AccumSlice::F32(contiguous(data, layout, NAME)?)),
        CpuStorage::F16(data) => body(F32AccumSlice::F16(contiguous(data, layout, NAME)?)),
        CpuStorage::BF16(data) => body(F32AccumSlice::BF16(contiguous(data, layout, NAME)?)),
        other => candle_core::bail!(
            "sigsoftmax::candle::{NAME}: dtype {:?} is not supported; use f32, f64, f16 or bf16",
            other.dtype()
        ),
    }
}

/// Logits whose compute type is f32.
enum F32AccumSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

fn cpu_cross_entropy_f32(
    op: &CrossEntropy,
    logits: F32AccumSlice<'_>,
    targets: &[i64],
    options: &CrossEntropyOptions<'_>,
    losses: &mut [f32],
) -> Result<f64> {
    let (activation, shape) = (op.activation, op.shape);
    match logits {
        F32AccumSlice::F32(z) => {
            cpu::cross_entropy(activation, shape, z, targets, options, losses, None)
        }
        F32AccumSlice::F16(z) => {
            cpu::cross_entropy(activation, shape, z, targets, options, losses, None)
        }
        F32AccumSlice::BF16(z) => {
            cpu::cross_entropy(activation, shape, z, targets, options, losses, None)
        }
    }
    .map_err(candle_core::Error::wrap)
}

/// The loss vector for the reduction: the one reduced value, or the per-row losses.
fn reduced_or_per_row<A>(reduced: A, per_row: Vec<A>, reduction: Reduction) -> Vec<A> {
    match reduction {
        Reduction::None => per_row,
        Reduction::Sum | Reduction::Mean => vec![reduced],
    }
}

fn options<'a>(op: &CrossEntropy, upstream: Upstream<'a>) -> CrossEntropyOptions<'a> {
    CrossEntropyOptions {
        ignore_index: op.ignore_index,
        label_smoothing: op.label_smoothing,
        reduction: op.reduction,
        upstream,
    }
}

/// The elements a contiguous layout covers.
fn contiguous<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!(
            "sigsoftmax::candle::{op}: the input is not contiguous (strides {:?}); call \
             Tensor::contiguous first",
            layout.stride()
        ),
    }
}

/// Borrows `storage` as elements of `T`, the dtype of the first input.
fn same_dtype<'a, T: candle_core::WithDType>(
    storage: &'a CpuStorage,
    _first: &[T],
) -> Result<&'a [T]> {
    storage.as_slice::<T>()
}
