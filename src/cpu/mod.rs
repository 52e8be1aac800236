//! The CPU engine: every op on host slices, vectorized and parallel with rayon.
//!
//! Each row is processed in fixed chunks of [`CHUNK`] elements. Row statistics (max, sums) are
//! combined chunk by chunk in order, so the result is bit-identical whatever the thread count and
//! whether a row was split across threads. The ops run on the current rayon pool; call them
//! inside [`rayon::ThreadPool::install`] to choose the number of threads.
//!
//! Work is spread over rows when there are enough of them, and over chunks of each row when the
//! rows are few and long (see [`schedule`]). The inner loops are compiled for AVX-512, AVX2+FMA
//! and the baseline instruction set, and picked at run time.

mod kernels;
mod math;
mod schedule;
mod simd;

pub use math::Real;
pub use schedule::CHUNK;
pub use simd::instruction_set;

use crate::element::Element;
use crate::error::{Error, IgnoreIndexDisplay, Result};
use crate::options::{Activation, CrossEntropyOptions, Reduction, Upstream};
use crate::shape::Shape;

/// Computes `y = sigsoftmax(z)` (or softmax) row by row.
///
/// Masked entries (`-inf`) get exactly 0. A row with no finite entry, or with NaN or `+inf`,
/// becomes NaN everywhere, as `torch.softmax` does.
///
/// # Errors
/// [`Error::LengthMismatch`] when `z` or `y` is not `rows * cols` long.
///
/// ```
/// use sigsoftmax::{cpu, Activation, Shape};
///
/// let z = [1.0f32, 2.0, 3.0, f32::NEG_INFINITY];
/// let mut y = [0.0f32; 4];
/// cpu::forward(Activation::Sigsoftmax, Shape::new(1, 4)?, &z, &mut y)?;
/// assert!((y.iter().sum::<f32>() - 1.0).abs() < 1e-6);
/// assert_eq!(y[3], 0.0);
/// # Ok::<(), sigsoftmax::Error>(())
/// ```
pub fn forward<T: Element>(
    activation: Activation,
    shape: Shape,
    z: &[T],
    y: &mut [T],
) -> Result<()> {
    const OP: &str = "forward";
    shape.check_matrix(OP, "z", z.len())?;
    shape.check_matrix(OP, "y", y.len())?;
    schedule::forward(activation, shape, Some(z), y, false);
    Ok(())
}

/// Computes the forward pass over the logits, replacing them with the probabilities.
///
/// # Errors
/// [`Error::LengthMismatch`] when `z` is not `rows * cols` long.
pub fn forward_in_place<T: Element>(
    activation: Activation,
    shape: Shape,
    z: &mut [T],
) -> Result<()> {
    shape.check_matrix("forward_in_place", "z", z.len())?;
    schedule::forward(activation, shape, None, z, false);
    Ok(())
}

/// Computes `l = log sigsoftmax(z)` (or log softmax) without forming `y` first.
///
/// Masked entries get `-inf`; a row with no finite entry, NaN or `+inf` becomes NaN.
///
/// # Errors
/// [`Error::LengthMismatch`] when `z` or `l` is not `rows * cols` long.
pub fn log_forward<T: Element>(
    activation: Activation,
    shape: Shape,
    z: &[T],
    l: &mut [T],
) -> Result<()> {
    const OP: &str = "log_forward";
    shape.check_matrix(OP, "z", z.len())?;
    shape.check_matrix(OP, "l", l.len())?;
    schedule::forward(activation, shape, Some(z), l, true);
    Ok(())
}

/// Computes the gradient with respect to the logits from `z`, `y = forward(z)` and `dy`:
/// `dz_i = (1 + sigmoid(-z_i)) * y_i * (dy_i - sum_j dy_j y_j)` (without the first factor for
/// softmax).
///
/// Masked entries get exactly 0. NaN in `y` or `dy` spreads over the row through the sum.
///
/// # Errors
/// [`Error::LengthMismatch`] when a buffer is not `rows * cols` long.
pub fn backward<T: Element>(
    activation: Activation,
    shape: Shape,
    z: &[T],
    y: &[T],
    dy: &[T],
    dz: &mut [T],
) -> Result<()> {
    const OP: &str = "backward";
    for (name, len) in [
        ("z", z.len()),
        ("y", y.len()),
        ("dy", dy.len()),
        ("dz", dz.len()),
    ] {
        shape.check_matrix(OP, name, len)?;
    }
    schedule::backward(activation, shape, z, y, dy, dz, false);
    Ok(())
}

/// Computes the gradient with respect to the logits from `z`, `l = log_forward(z)` and `dl`:
/// `dz_i = (1 + sigmoid(-z_i)) * (dl_i - exp(l_i) * sum_j dl_j)`, the sum over unmasked `j`.
///
/// A masked log-probability is the constant `-inf`, so masked entries get exactly 0 and their
/// `dl` reaches no other entry, whatever it holds.
///
/// # Errors
/// [`Error::LengthMismatch`] when a buffer is not `rows * cols` long.
pub fn log_backward<T: Element>(
    activation: Activation,
    shape: Shape,
    z: &[T],
    l: &[T],
    dl: &[T],
    dz: &mut [T],
) -> Result<()> {
    const OP: &str = "log_backward";
    for (name, len) in [
        ("z", z.len()),
        ("l", l.len()),
        ("dl", dl.len()),
        ("dz", dz.len()),
    ] {
        shape.check_matrix(OP, name, len)?;
    }
    schedule::backward(activation, shape, z, l, dl, dz, true);
    Ok(())
}

/// Computes the fused cross-entropy: per-row losses, their reduction and, when `grad` is given,
/// the gradient with respect to the logits, in one pass over each row.
///
/// `losses` receives one loss per row (0 for ignored rows). The return value is the loss
/// reduced as `options.reduction` says (the sum for [`Reduction::None`]). The gradient is
/// `upstream * (1 + sigmoid(-z_i)) * (Q y_i - q_i)` (divided by the number of counted rows for
/// the mean), where `q` is the smoothed target distribution restricted to unmasked entries
/// and `Q` its sum. It does not sum to zero over a row, unlike softmax's.
///
/// A target whose logit is `-inf` gives an infinite loss. A row with NaN or `+inf` gives NaN.
///
/// # Errors
/// [`Error::LengthMismatch`] for wrong buffer lengths, [`Error::TargetOutOfRange`] for a target
/// that is neither a class nor the ignore index, [`Error::InvalidLabelSmoothing`] and
/// [`Error::UpstreamNeedsNoReduction`] for invalid options. Nothing is written on error.
///
/// ```
/// use sigsoftmax::{cpu, Activation, CrossEntropyOptions, Shape};
///
/// let z = [2.0f32, 0.5, -1.0, 0.0, 0.0, 0.0];
/// let targets = [0i64, 2];
/// let mut losses = [0.0f32; 2];
/// let mut grad = [0.0f32; 6];
/// let shape = Shape::new(2, 3)?;
/// let options = CrossEntropyOptions::default(); // mean over rows, no smoothing
/// let mean = cpu::cross_entropy(
///     Activation::Sigsoftmax, shape, &z, &targets, &options, &mut losses, Some(&mut grad),
/// )?;
/// assert!((mean - (losses[0] + losses[1]) as f64 / 2.0).abs() < 1e-6);
/// # Ok::<(), sigsoftmax::Error>(())
/// ```
pub fn cross_entropy<T: Element>(
    activation: Activation,
    shape: Shape,
    z: &[T],
    targets: &[i64],
    options: &CrossEntropyOptions<'_>,
    losses: &mut [T::Accum],
    grad: Option<&mut [T]>,
) -> Result<f64> {
    const OP: &str = "cross_entropy";
    shape.check_matrix(OP, "z", z.len())?;
    if let Some(grad) = &grad {
        shape.check_matrix(OP, "grad", grad.len())?;
    }
    let counted = check_cross_entropy(OP, shape, targets, options, losses.len())?;
    schedule::cross_entropy(
        activation,
        shape,
        Some(z),
        grad,
        targets,
        options,
        counted,
        losses,
    );
    Ok(reduce_losses(losses, options.reduction, counted))
}

/// Computes the fused cross-entropy and overwrites the logits with their gradient, which halves
/// the memory of a training step whose largest tensor is the logits.
///
/// Same semantics and errors as [`cross_entropy`].
pub fn cross_entropy_in_place<T: Element>(
    activation: Activation,
    shape: Shape,
    z: &mut [T],
    targets: &[i64],
    options: &CrossEntropyOptions<'_>,
    losses: &mut [T::Accum],
) -> Result<f64> {
    const OP: &str = "cross_entropy_in_place";
    shape.check_matrix(OP, "z", z.len())?;
    let counted = check_cross_entropy(OP, shape, targets, options, losses.len())?;
    schedule::cross_entropy(
        activation,
        shape,
        None,
        Some(z),
        targets,
        options,
        counted,
        losses,
    );
    Ok(reduce_losses(losses, options.reduction, counted))
}

/// Validates targets and options; returns the number of rows that are not ignored.
pub(crate) fn check_cross_entropy(
    op: &'static str,
    shape: Shape,
    targets: &[i64],
    options: &CrossEntropyOptions<'_>,
    losses_len: usize,
) -> Result<usize> {
    options.validate(op)?;
    shape.check_per_row(op, "targets", targets.len())?;
    shape.check_per_row(op, "losses", losses_len)?;
    if let Upstream::PerRow(upstream) = options.upstream {
        shape.check_per_row(op, "upstream", upstream.len())?;
    }
    let cols = shape.cols();
    let mut counted = 0;
    for (row, &target) in targets.iter().enumerate() {
        if Some(target) == options.ignore_index {
            continue;
        }
        if usize::try_from(target).map_or(true, |t| t >= cols) {
            let ignore_index = IgnoreIndexDisplay(options.ignore_index);
            return Err(Error::TargetOutOfRange {
                op,
                row,
                target,
                cols,
                ignore_index,
            });
        }
        counted += 1;
    }
    Ok(counted)
}

/// Sums the per-row losses in f64, in row order, and divides by `counted` for the mean.
fn reduce_losses<A: Real>(losses: &[A], reduction: Reduction, counted: usize) -> f64 {
    let sum: f64 = losses.iter().map(|&loss| loss.to_f64()).sum();
    match reduction {
        Reduction::None | Reduction::Sum => sum,
        Reduction::Mean => sum / counted as f64,
    }
}
