//! The ops on [candle](https://docs.rs/candle-core/0.11) tensors, with autograd (feature
//! `candle`).
//!
//! Each function works on the last dimension: a tensor of shape `[d0, d1, .., cols]` is taken
//! as `d0 * d1 * ..` rows of `cols` classes. The forward passes are candle custom ops whose
//! backward passes are this crate's backward ops, themselves custom ops, so a gradient
//! computed by [`candle_core::Tensor::backward`] runs the fused kernels both ways:
//!
//! - CPU tensors go through [`crate::cpu`] (f32, f64, f16 and bf16);
//! - CUDA tensors (feature `candle-cuda`) go through the raw launchers of `crate::cuda::raw`
//!   on candle's own device buffers and stream. Without that feature, a CUDA tensor gets
//!   candle's "no cuda implementation" error.
//!
//! NOTE: the CUDA path compiles and passes clippy (CI builds `candle-cuda` with CUDA 13.0) and
//! `tests/candle/cuda.rs` compares it with the CPU path, but it has not run on a GPU.
//!
//! Inputs that are not contiguous are copied to a contiguous tensor first
//! ([`candle_core::Tensor::contiguous`], which is differentiable). Other dtypes, tensors with no
//! dimension and empty tensors are rejected with an error. Masked entries, NaN and infinities
//! behave as in [`crate::cpu`].
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use sigsoftmax::{candle, Activation, CrossEntropyOptions};
//!
//! let logits = Var::from_vec(vec![2.0f32, 0.5, -1.0, 0.0, 0.0, 0.0], (2, 3), &Device::Cpu)?;
//! let targets = Tensor::new(&[0i64, 2], &Device::Cpu)?;
//! let options = CrossEntropyOptions::default(); // mean over rows
//! let loss = candle::cross_entropy(&logits, &targets, Activation::Sigsoftmax, &options)?;
//! let grads = loss.backward()?;
//! let grad = grads.get(&logits).expect("the logits are a variable");
//! assert_eq!(grad.dims(), &[2, 3]);
//! # Ok::<(), candle_core::Error>(())
//! ```

mod cpu;
#[cfg(feature = "candle-cuda")]
mod cuda;
mod ops;

use candle_core::{DType, Result, Tensor};

use crate::options::{Activation, CrossEntropyOptions, Reduction, Upstream};
use crate::shape::Shape;

/// Computes `sigsoftmax(z)` (or softmax, with [`Activation::Softmax`]) over the last
/// dimension.
///
/// The result has the shape and dtype of `z`. Its gradient is computed by
/// [`crate::cpu::backward`] (or the CUDA backward) and supports a second derivative.
///
/// # Errors
/// When `z` has no dimension, is empty, or is not f32, f64, f16 or bf16, and when a CUDA launch
/// fails.
pub fn sigsoftmax(z: &Tensor, activation: Activation) -> Result<Tensor> {
    forward(z, activation, false)
}

/// Computes `log sigsoftmax(z)` (or log softmax) over the last dimension, without forming the
/// probabilities first.
///
/// Same shapes, dtypes and errors as [`sigsoftmax`]; the gradient is computed by
/// [`crate::cpu::log_backward`] (or the CUDA backward).
pub fn log_sigsoftmax(z: &Tensor, activation: Activation) -> Result<Tensor> {
    forward(z, activation, true)
}

/// Computes the fused cross-entropy of `logits` (`[.., cols]`) against integer `targets`
/// (`[..]`, the leading dimensions of `logits`; u8, u32, i32 or i64).
///
/// The result is a scalar for [`Reduction::Sum`] and [`Reduction::Mean`] and one loss per row
/// (shape `[..]`) for [`Reduction::None`]. Its dtype is the precision the op accumulates in: f64
/// for f64 logits and f32 for the others. The gradient flows to `logits` only. It is computed in
/// the backward pass by a second fused pass over the logits, with the upstream gradient that
/// candle passes in, so `options.upstream` must be [`Upstream::One`].
///
/// `options.ignore_index`, label smoothing and the reductions are those of
/// [`crate::cpu::cross_entropy`].
///
/// # Errors
/// When the shapes of `logits` and `targets` do not match, a target is neither a class index
/// nor the ignore index, an option is invalid, a dtype is not supported, or a CUDA launch fails.
pub fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    activation: Activation,
    options: &CrossEntropyOptions<'_>,
) -> Result<Tensor> {
    if options.upstream != Upstream::One {
        candle_core::bail!(
            "sigsoftmax::candle::cross_entropy: options.upstream is {:?}, but candle's backward \
             pass supplies the upstream gradient; use Upstream::One",
            options.upstream
        );
    }
    options
        .validate("cross_entropy")
        .map_err(candle_core::Error::wrap)?;
    check_float_dtype("cross_entropy", logits.dtype())?;
    let (leading, cols) = split_last_dim("cross_entropy", logits)?;
    if targets.dims() != leading {
        candle_core::bail!(
            "sigsoftmax::candle::cross_entropy: targets have shape {:?} but logits of shape {:?} \
             need targets of shape {:?} (one class index per row)",
            targets.dims(),
            logits.dims(),
            leading
        );
    }
    let targets = match targets.dtype() {
        DType::I64 => targets.contiguous()?,
        DType::U8 | DType::U32 | DType::I32 => targets.to_dtype(DType::I64)?.contiguous()?,
        other => candle_core::bail!(
            "sigsoftmax::candle::cross_entropy: targets have dtype {other:?}; \
             use u8, u32, i32 or i64 class indices"
        ),
    };
    let rows = leading.iter().product::<usize>();
    let shape = Shape::new(rows, cols).map_err(candle_core::Error::wrap)?;
    let op = ops::CrossEntropy {
        activation,
        shape,
        ignore_index: options.ignore_index,
        label_smoothing: options.label_smoothing,
        reduction: options.reduction,
    };
    logits.contiguous()?.apply_op2(&targets, op)
}

fn forward(z: &Tensor, activation: Activation, log_output: bool) -> Result<Tensor> {
    let op_name = ops::Forward::op_name(log_output);
    check_float_dtype(op_name, z.dtype())?;
    let shape = row_shape(op_name, z)?;
    let op = ops::Forward {
        activation,
        log_output,
        shape,
    };
    z.contiguous()?.apply_op1(op)
}

/// Splits `[.., cols]` into the leading dimensions and `cols`.
fn split_last_dim<'a>(op: &str, tensor: &'a Tensor) -> Result<(&'a [usize], usize)> {
    match tensor.dims().split_last() {
        Some((&cols, leading)) => Ok((leading, cols)),
        None => candle_core::bail!(
            "sigsoftmax::candle::{op}: the input is a scalar; pass a tensor whose last \
             dimension holds the classes"
        ),
    }
}

/// Returns the `rows x cols` shape that a tensor of shape `[.., cols]` is taken as.
fn row_shape(op: &str, tensor: &Tensor) -> Result<Shape> {
    let (leading, cols) = split_last_dim(op, tensor)?;
    Shape::new(leading.iter().product(), cols).map_err(candle_core::Error::wrap)
}

fn check_float_dtype(op: &str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F64 | DType::F16 | DType::BF16 => Ok(()),
        other => candle_core::bail!(
            "sigsoftmax::candle::{op}: dtype {other:?} is not supported; use f32, f64, f16 or bf16"
        ),
    }
}

/// Returns the candle dtype of the cross-entropy's losses for logits of `dtype`.
fn loss_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Returns the shape of the loss tensor: `[]` for a reduction to one value, the leading
/// dimensions of the logits for [`Reduction::None`].
fn loss_shape(logits_shape: &candle_core::Shape, reduction: Reduction) -> candle_core::Shape {
    match reduction {
        Reduction::None => {
            let dims = logits_shape.dims();
            candle_core::Shape::from(&dims[..dims.len() - 1])
        }
        Reduction::Sum | Reduction::Mean => candle_core::Shape::from(()),
    }
}
