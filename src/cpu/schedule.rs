//! Splits each op over rows and chunks, widens half-precision chunks, and runs the kernels.
//!
//! Every row is visited in chunks of [`CHUNK`] elements, and row statistics are combined chunk
//! by chunk in index order whether the chunks ran on one thread or several, so the plan chosen
//! below never changes a result bit.

use std::ops::Range;

use rayon::prelude::*;

use super::kernels::{
    slope_at, Backward, CrossEntropyChunk, CrossEntropyGrad, CrossEntropyStats, Dot, LogBackward,
    LogProbabilities, Max, Probabilities, RowConsts, Scale, StoreWeights, UnmaskedSum, WeightSum,
};
use super::math::{max_lane, Real};
use super::simd::{dispatch, Kernel};
use crate::element::Element;
use crate::options::{Activation, CrossEntropyOptions, Reduction, Upstream};
use crate::shape::Shape;

/// Elements per chunk: 16 KiB of f32, so a chunk and its widened copy stay in L1 while a pass
/// works on it, and half-precision chunks widen into a stack buffer of this size.
pub const CHUNK: usize = 4096;

/// Problems up to this many elements run on the calling thread. A rayon dispatch costs a few
/// microseconds, about the time to process this many elements on one core.
const SERIAL_MAX_ELEMENTS: usize = 1 << 15;

/// With at least this many rows per thread, whole rows are spread over threads, and the last
/// uneven share costs at most a fifth of the run. Fewer, long rows are split into chunks.
const ROWS_PER_THREAD: usize = 4;

/// The smallest task handed to rayon, in elements, so that scheduling stays a small fraction.
const TASK_ELEMENTS: usize = 1 << 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Everything on the calling thread.
    Serial,
    /// Rows in parallel, each row on one thread, at least `min_rows` rows per task.
    Rows { min_rows: usize },
    /// Rows one after another, the chunks of each row in parallel.
    Split,
}

fn plan(shape: Shape) -> Plan {
    let threads = rayon::current_num_threads();
    if threads == 1 || shape.len() <= SERIAL_MAX_ELEMENTS {
        Plan::Serial
    } else if shape.rows() >= ROWS_PER_THREAD * threads || shape.cols() <= 2 * CHUNK {
        Plan::Rows {
            min_rows: (TASK_ELEMENTS / shape.cols()).max(1),
        }
    } else {
        Plan::Split
    }
}

/// The way the chunks of one row are visited: in order on one thread, or split over threads.
#[derive(Clone, Copy, Debug)]
struct Visit {
    split: bool,
}

const CHUNKS_PER_TASK: usize = TASK_ELEMENTS / CHUNK;

fn chunk_range(index: usize, cols: usize) -> Range<usize> {
    index * CHUNK..((index + 1) * CHUNK).min(cols)
}

impl Visit {
    /// Combines `f(range)` over the chunks of a row of `cols` elements, in chunk order.
    fn reduce<P: Send>(
        self,
        cols: usize,
        init: P,
        f: impl Fn(Range<usize>) -> P + Sync + Send,
        combine: impl Fn(P, P) -> P,
    ) -> P {
        let count = cols.div_ceil(CHUNK);
        if self.split {
            let parts: Vec<P> = (0..count)
                .into_par_iter()
                .with_min_len(CHUNKS_PER_TASK)
                .map(|index| f(chunk_range(index, cols)))
                .collect();
            parts.into_iter().fold(init, combine)
        } else {
            (0..count)
                .map(|index| f(chunk_range(index, cols)))
                .fold(init, combine)
        }
    }

    /// Runs `f(range, chunk)` over the mutable chunks of `row` and combines the results in
    /// chunk order.
    fn reduce_mut<T: Send, P: Send>(
        self,
        row: &mut [T],
        init: P,
        f: impl Fn(Range<usize>, &mut [T]) -> P + Sync + Send,
        combine: impl Fn(P, P) -> P,
    ) -> P {
        let cols = row.len();
        if self.split {
            let parts: Vec<P> = row
                .par_chunks_mut(CHUNK)
                .with_min_len(CHUNKS_PER_TASK)
                .enumerate()
                .map(|(index, chunk)| f(chunk_range(index, cols), chunk))
                .collect();
            parts.into_iter().fold(init, combine)
        } else {
            row.chunks_mut(CHUNK)
                .enumerate()
                .map(|(index, chunk)| f(chunk_range(index, cols), chunk))
                .fold(init, combine)
        }
    }

    /// Runs `f(range, chunk)` over the mutable chunks of `row`.
    fn for_each_mut<T: Send>(
        self,
        row: &mut [T],
        f: impl Fn(Range<usize>, &mut [T]) + Sync + Send,
    ) {
        self.reduce_mut(row, (), f, |(), ()| ());
    }
}

/// Calls `row_fn(row index, output row, per-row value, visit)` for every row, on the plan
/// [`plan`] picks. Without `dst` only the per-row values are handed out.
fn for_each_row<T: Send, L: Send>(
    shape: Shape,
    dst: Option<&mut [T]>,
    per_row: &mut [L],
    row_fn: impl Fn(usize, Option<&mut [T]>, &mut L, Visit) + Sync + Send,
) {
    let cols = shape.cols();
    let (parallel_rows, visit) = match plan(shape) {
        Plan::Serial => (None, Visit { split: false }),
        Plan::Split => (None, Visit { split: true }),
        Plan::Rows { min_rows } => (Some(min_rows), Visit { split: false }),
    };
    match (dst, parallel_rows) {
        (Some(dst), Some(min_rows)) => dst
            .par_chunks_mut(cols)
            .zip(per_row.par_iter_mut())
            .with_min_len(min_rows)
            .enumerate()
            .for_each(|(r, (row, value))| row_fn(r, Some(row), value, visit)),
        (None, Some(min_rows)) => per_row
            .par_iter_mut()
            .with_min_len(min_rows)
            .enumerate()
            .for_each(|(r, value)| row_fn(r, None, value, visit)),
        (Some(dst), None) => {
            for (r, (row, value)) in dst.chunks_mut(cols).zip(per_row.iter_mut()).enumerate() {
                row_fn(r, Some(row), value, visit);
            }
        }
        (None, None) => {
            for (r, value) in per_row.iter_mut().enumerate() {
                row_fn(r, None, value, visit);
            }
        }
    }
}

/// Widens a chunk to compute precision, inside [`dispatch`] so that the loop vectorizes.
struct Widen<'a, T: Element> {
    src: &'a [T],
    dst: &'a mut [T::Accum],
}

impl<T: Element> Kernel for Widen<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        T::widen(self.src, self.dst);
    }
}

/// Rounds a chunk to storage precision, inside [`dispatch`].
struct Narrow<'a, T: Element> {
    src: &'a [T::Accum],
    dst: &'a mut [T],
}

impl<T: Element> Kernel for Narrow<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        T::narrow(self.src, self.dst);
    }
}

/// Runs `f` on `src` in compute precision; half chunks are widened into a stack buffer.
#[inline]
fn read<T: Element, R>(src: &[T], f: impl FnOnce(&[T::Accum]) -> R) -> R {
    if let Some(native) = T::as_accum(src) {
        return f(native);
    }
    let mut buffer = [<T::Accum as Real>::ZERO; CHUNK];
    let buffer = &mut buffer[..src.len()];
    dispatch(Widen { src, dst: buffer });
    f(buffer)
}

/// Runs `f(input, output)` in compute precision, where `input` is `src` (or `None` when the
/// output already contains the input, as in place), and stores the output with one rounding. Half
/// chunks are widened into a stack buffer and computed there in place.
#[inline]
fn update<T: Element, R>(
    dst: &mut [T],
    src: Option<&[T]>,
    f: impl FnOnce(Option<&[T::Accum]>, &mut [T::Accum]) -> R,
) -> R {
    if let Some(native) = T::as_accum_mut(dst) {
        return f(src.and_then(T::as_accum), native);
    }
    let mut buffer = [<T::Accum as Real>::ZERO; CHUNK];
    let buffer = &mut buffer[..dst.len()];
    dispatch(Widen {
        src: src.unwrap_or(dst),
        dst: buffer,
    });
    let result = f(None, buffer);
    dispatch(Narrow { src: buffer, dst });
    result
}

/// Runs `f` to fill `dst` in compute precision and stores the result with one rounding.
#[inline]
fn write<T: Element>(dst: &mut [T], f: impl FnOnce(&mut [T::Accum])) {
    if let Some(native) = T::as_accum_mut(dst) {
        return f(native);
    }
    let mut buffer = [<T::Accum as Real>::ZERO; CHUNK];
    let buffer = &mut buffer[..dst.len()];
    f(buffer);
    dispatch(Narrow { src: buffer, dst });
}

fn add<A: Real>(x: A, y: A) -> A {
    x + y
}

fn fill_nan<T: Element>(row: &mut [T]) {
    row.fill(T::from_f64(f64::NAN));
}

/// Computes the row max of `z` chunk by chunk.
fn row_max<T: Element>(z: &[T], visit: Visit) -> T::Accum {
    visit.reduce(
        z.len(),
        T::Accum::NEG_INFINITY,
        |range| read(&z[range], |z| dispatch(Max(z))),
        max_lane,
    )
}

/// Forward and log forward: `dst` receives the result, computed from `src` or, in place,
/// from `dst`.
pub(crate) fn forward<T: Element>(
    activation: Activation,
    shape: Shape,
    src: Option<&[T]>,
    dst: &mut [T],
    log: bool,
) {
    let cols = shape.cols();
    let mut unit = vec![(); shape.rows()];
    let src_row = |r: usize| src.map(|src| &src[r * cols..(r + 1) * cols]);
    let sigmoid = activation == Activation::Sigsoftmax;
    for_each_row(shape, Some(dst), &mut unit, |r, dst, (), visit| {
        let Some(dst) = dst else { return };
        match (sigmoid, log) {
            (true, false) => forward_row::<T, true>(src_row(r), dst, visit),
            (false, false) => forward_row::<T, false>(src_row(r), dst, visit),
            (true, true) => log_forward_row::<T, true>(src_row(r), dst, visit),
            (false, true) => log_forward_row::<T, false>(src_row(r), dst, visit),
        }
    });
}

fn forward_row<T: Element, const SIG: bool>(src: Option<&[T]>, dst: &mut [T], visit: Visit) {
    let cols = dst.len();
    let m = row_max(src.unwrap_or(dst), visit);
    // m is +inf (NaN for the row, as torch.softmax) or -inf (no finite entry). NaN entries
    // do not reach m; they turn the sum below into NaN instead.
    if !m.is_finite() {
        return fill_nan(dst);
    }
    let consts = RowConsts::new(m);
    let slice_src = |range: Range<usize>| src.map(|src| &src[range]);

    if T::as_accum(dst).is_some() {
        // Same storage and compute type: store the weights in the output on the way, then
        // scale them, so each element needs one exponential.
        let sum = visit.reduce_mut(
            dst,
            T::Accum::ZERO,
            |range, chunk| {
                update(chunk, slice_src(range), |src, x| {
                    dispatch(StoreWeights::<_, SIG> { src, x, consts })
                })
            },
            add,
        );
        let factor = T::Accum::ONE / sum;
        visit.for_each_mut(dst, |_, chunk| {
            update(chunk, None, |_, x| dispatch(Scale { x, factor }))
        });
    } else {
        // Half storage: rounding unnormalized weights and then the probabilities would round
        // twice, so the output pass computes the weights again from the logits.
        let input = src.unwrap_or(dst);
        let sum = visit.reduce(
            cols,
            T::Accum::ZERO,
            |range| {
                read(&input[range], |z| {
                    dispatch(WeightSum::<_, SIG> { z, consts })
                })
            },
            add,
        );
        let inverse_sum = T::Accum::ONE / sum;
        visit.for_each_mut(dst, |range, chunk| {
            update(chunk, slice_src(range), |src, x| {
                dispatch(Probabilities::<_, SIG> {
                    src,
                    x,
                    consts,
                    inverse_sum,
                })
            })
        });
    }
}

fn log_forward_row<T: Element, const SIG: bool>(src: Option<&[T]>, dst: &mut [T], visit: Visit) {
    let cols = dst.len();
    let input = src.unwrap_or(dst);
    let m = row_max(input, visit);
    if !m.is_finite() {
        return fill_nan(dst);
    }
    let consts = RowConsts::new(m);
    let sum = visit.reduce(
        cols,
        T::Accum::ZERO,
        |range| {
            read(&input[range], |z| {
                dispatch(WeightSum::<_, SIG> { z, consts })
            })
        },
        add,
    );
    let shift = T::Accum::from_f64(log_shift::<SIG>(m.to_f64(), sum.to_f64()));
    visit.for_each_mut(dst, |range, chunk| {
        let src = src.map(|src| &src[range]);
        update(chunk, src, |src, x| {
            dispatch(LogProbabilities::<_, SIG> {
                src,
                x,
                consts,
                shift,
            })
        })
    });
}

/// `log y_i = log_weight_part(z_i) - shift` (see `RowConsts::log_weight_part`), with
/// `shift = ln(sum_j w_j) - ln(1 + e^-|m|)` for sigsoftmax and `ln(sum_j t_j)` for softmax.
fn log_shift<const SIG: bool>(m: f64, weight_sum: f64) -> f64 {
    let sigmoid_part = if SIG { (-m.abs()).exp().ln_1p() } else { 0.0 };
    weight_sum.ln() - sigmoid_part
}

/// Backward (`log` false: inputs `z, y, dy`) and log backward (`log` true: `z, l, dl`).
pub(crate) fn backward<T: Element>(
    activation: Activation,
    shape: Shape,
    z: &[T],
    out: &[T],
    grad_out: &[T],
    dz: &mut [T],
    log: bool,
) {
    let cols = shape.cols();
    let mut unit = vec![(); shape.rows()];
    let sigmoid = activation == Activation::Sigsoftmax;
    for_each_row(shape, Some(dz), &mut unit, |r, dz, (), visit| {
        let Some(dz) = dz else { return };
        let rows = r * cols..(r + 1) * cols;
        let (z, out, grad_out) = (&z[rows.clone()], &out[rows.clone()], &grad_out[rows]);
        match (sigmoid, log) {
            (true, false) => backward_row::<T, true>(z, out, grad_out, dz, visit),
            (false, false) => backward_row::<T, false>(z, out, grad_out, dz, visit),
            (true, true) => log_backward_row::<T, true>(z, out, grad_out, dz, visit),
            (false, true) => log_backward_row::<T, false>(z, out, grad_out, dz, visit),
        }
    });
}

fn backward_row<T: Element, const SIG: bool>(
    z: &[T],
    y: &[T],
    dy: &[T],
    dz: &mut [T],
    visit: Visit,
) {
    let dot = visit.reduce(
        z.len(),
        T::Accum::ZERO,
        |range| {
            read(&y[range.clone()], |a| {
                read(&dy[range], |b| dispatch(Dot { a, b }))
            })
        },
        add,
    );
    visit.for_each_mut(dz, |range, chunk| {
        read(&z[range.clone()], |z| {
            read(&y[range.clone()], |y| {
                read(&dy[range], |dy| {
                    write(chunk, |dz| {
                        dispatch(Backward::<_, SIG> { z, y, dy, dot, dz })
                    })
                })
            })
        })
    });
}

fn log_backward_row<T: Element, const SIG: bool>(
    z: &[T],
    l: &[T],
    dl: &[T],
    dz: &mut [T],
    visit: Visit,
) {
    let sum = visit.reduce(
        z.len(),
        T::Accum::ZERO,
        |range| {
            read(&z[range.clone()], |z| {
                read(&dl[range], |x| dispatch(UnmaskedSum { z, x }))
            })
        },
        add,
    );
    visit.for_each_mut(dz, |range, chunk| {
        read(&z[range.clone()], |z| {
            read(&l[range.clone()], |l| {
                read(&dl[range], |dl| {
                    write(chunk, |dz| {
                        dispatch(LogBackward::<_, SIG> { z, l, dl, sum, dz })
                    })
                })
            })
        })
    });
}

/// Computes the fused cross-entropy. The logits come from `src`, or, in place, from `grad`,
/// which then receives the gradient. With neither a gradient nor in place, only the losses are
/// computed.
#[allow(clippy::too_many_arguments)] // the validated arguments of `cpu::cross_entropy`
pub(crate) fn cross_entropy<T: Element>(
    activation: Activation,
    shape: Shape,
    src: Option<&[T]>,
    grad: Option<&mut [T]>,
    targets: &[i64],
    options: &CrossEntropyOptions<'_>,
    counted: usize,
    losses: &mut [T::Accum],
) {
    let cols = shape.cols();
    let sigmoid = activation == Activation::Sigsoftmax;
    let smooth = options.label_smoothing > 0.0;
    let row_fn = |r: usize, grad: Option<&mut [T]>, loss: &mut T::Accum, visit: Visit| {
        let src = src.map(|src| &src[r * cols..(r + 1) * cols]);
        let row = RowTask {
            target: targets[r],
            upstream: upstream(options, r, counted),
            src,
            grad,
        };
        *loss = match (sigmoid, smooth) {
            (true, false) => row.run::<true, false>(options, visit),
            (true, true) => row.run::<true, true>(options, visit),
            (false, false) => row.run::<false, false>(options, visit),
            (false, true) => row.run::<false, true>(options, visit),
        };
    };
    for_each_row(shape, grad, losses, row_fn);
}

/// Returns the upstream gradient of row `r`, divided by the counted rows for the mean.
fn upstream(options: &CrossEntropyOptions<'_>, r: usize, counted: usize) -> f64 {
    let value = match options.upstream {
        Upstream::One => 1.0,
        Upstream::Scalar(value) => value,
        Upstream::PerRow(values) => values[r] as f64,
    };
    match options.reduction {
        Reduction::Mean => value / counted as f64,
        Reduction::None | Reduction::Sum => value,
    }
}

/// One row of cross-entropy.
struct RowTask<'a, T> {
    target: i64,
    upstream: f64,
    src: Option<&'a [T]>,
    grad: Option<&'a mut [T]>,
}

impl<T: Element> RowTask<'_, T> {
    /// Writes the gradient (when there is one) and returns the row's loss.
    fn run<const SIG: bool, const SMOOTH: bool>(
        self,
        options: &CrossEntropyOptions<'_>,
        visit: Visit,
    ) -> T::Accum {
        let RowTask {
            target,
            upstream,
            src,
            grad,
        } = self;
        let Some(input) = src.or(grad.as_deref()) else {
            return T::Accum::ZERO;
        };
        let cols = input.len();
        if Some(target) == options.ignore_index {
            if let Some(grad) = grad {
                grad.fill(T::from_f64(0.0));
            }
            return T::Accum::ZERO;
        }
        // Validated by `check_cross_entropy`: 0 <= target < cols.
        let target = target as usize;
        let z_target = input[target].to_f64();

        let m = row_max(input, visit);
        if !m.is_finite() {
            if let Some(grad) = grad {
                fill_nan(grad);
            }
            return T::Accum::NAN;
        }
        let consts = RowConsts::new(m);
        let stats = visit.reduce(
            cols,
            CrossEntropyStats::default(),
            |range| {
                read(&input[range], |z| {
                    dispatch(CrossEntropyChunk::<_, SIG, SMOOTH> { z, consts })
                })
            },
            CrossEntropyStats::combine,
        );

        // log y_i = log_weight_part(z_i) - shift, in f64 for the target's scalar.
        let m64 = m.to_f64();
        let shift = log_shift::<SIG>(m64, stats.weight_sum.to_f64());
        let log_y_target = RowConsts::new(m64).log_weight_part::<SIG, false>(z_target) - shift;

        // q = (1 - eps) onehot(target) + eps / cols over unmasked entries; a weight of 0
        // skips its term so that 0 * -inf never appears.
        let eps = options.label_smoothing;
        let target_weight = 1.0 - eps;
        let target_masked = z_target == f64::NEG_INFINITY;
        let mut loss = if target_weight > 0.0 {
            -target_weight * log_y_target
        } else {
            0.0
        };
        let mut q_sum = if target_masked { 0.0 } else { target_weight };
        if SMOOTH {
            let unmasked = stats.unmasked.to_f64();
            let sum_log_y = stats.log_terms.to_f64() - unmasked * shift;
            loss -= eps / cols as f64 * sum_log_y;
            q_sum += eps * unmasked / cols as f64;
        }

        if let Some(grad) = grad {
            let scale_y = T::Accum::from_f64(upstream * q_sum / stats.weight_sum.to_f64());
            let smoothing = T::Accum::from_f64(upstream * eps / cols as f64);
            // The one-hot part of q, subtracted at the target in compute precision so that
            // half outputs are still rounded once.
            let target_term = if target_masked {
                0.0
            } else {
                upstream * target_weight * slope_at(z_target, SIG)
            };
            let target_term = T::Accum::from_f64(target_term);
            visit.for_each_mut(grad, |range, chunk| {
                let start = range.start;
                let contains_target = range.contains(&target);
                let src = src.map(|src| &src[range]);
                update(chunk, src, |src, x| {
                    dispatch(CrossEntropyGrad::<_, SIG> {
                        src,
                        x,
                        consts,
                        scale_y,
                        smoothing,
                    });
                    if contains_target {
                        x[target - start] = x[target - start] - target_term;
                    }
                });
            });
        }
        T::Accum::from_f64(loss)
    }
}
