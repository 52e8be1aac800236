//! The element-wise passes over one chunk of a row, in compute precision.
//!
//! Notation for one row: `m = max_j z_j`, `t_i = e^(z_i - m)`, `a = sigmoid(m)`,
//! `b = sigmoid(-m)`. Since `sigmoid(z) e^z = e^(z + log sigmoid(z))` and that exponent is
//! increasing in `z`, the row max of `z` also maximizes the sigsoftmax numerator, and dividing
//! every numerator by the max one gives
//!
//! `w_i = t_i^2 / (b + a t_i)`, in `[0, 1]`, with `y_i = w_i / sum_j w_j`.
//!
//! So the sum never overflows or underflows and each element costs one exponential. Softmax is
//! the same with `w_i = t_i`.
//!
//! Sums use [`LANES`] independent accumulators combined in a fixed tree, so they vectorize and
//! give the same bits on every instruction set.

use super::math::{max_lane, mul_add, select, sigmoid_neg, Real};
use super::simd::Kernel;

/// Independent accumulators per sum: one AVX-512 register of f32.
const LANES: usize = 16;

/// Per-row values every pass needs, computed once per row in f64.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowConsts<A> {
    /// The row max of `z`.
    pub m: A,
    /// `sigmoid(m)`.
    pub a: A,
    /// `sigmoid(-m)`, computed directly.
    pub b: A,
    /// `min(m, 0)`.
    pub m_negative: A,
}

impl<A: Real> RowConsts<A> {
    pub fn new(m: A) -> Self {
        let m64 = m.to_f64();
        let a = A::from_f64(super::math::sigmoid_f64(m64));
        let b = A::from_f64(super::math::sigmoid_f64(-m64));
        let m_negative = select(m < A::ZERO, m, A::ZERO);
        Self {
            m,
            a,
            b,
            m_negative,
        }
    }

    /// `log w_i + ln(1 + e^-|m|)`, the part of `log y_i` that varies per entry; `-inf` for a
    /// masked logit. With `log sigmoid(x) = min(x, 0) - ln(1 + e^-|x|)`,
    /// `log w_i = (z_i - m) + (min(z_i, 0) - min(m, 0)) - ln(1 + e^-|z_i|) + ln(1 + e^-|m|)`.
    /// Pairing the two differences keeps large logits from cancelling: at `z_i = m = -1e4`,
    /// `log sigmoid(z_i) - log sigmoid(m)` in f32 would lose three digits.
    #[inline(always)]
    pub fn log_weight_part<const SIG: bool, const FMA: bool>(&self, z: A) -> A {
        let difference = z - self.m;
        if SIG {
            let negative_parts = select(z < A::ZERO, z, A::ZERO) - self.m_negative;
            difference + negative_parts - (-z.abs()).exp_lane::<FMA>().ln_1p_unit::<FMA>()
        } else {
            difference
        }
    }

    /// `w_i` for one logit (see the module docs); exactly 0 for a masked logit.
    #[inline(always)]
    pub fn weight<const SIG: bool, const FMA: bool>(&self, z: A) -> A {
        self.weight_and_recip::<SIG, FMA>(z).0
    }

    /// `w_i` and `1 / (b + a t_i)` (1 for softmax).
    ///
    /// `sigmoid(-z_i) = b / (b + a t_i)`, so the second value also gives the gradient's slope
    /// without another exponential while `b` is a normal number.
    #[inline(always)]
    pub fn weight_and_recip<const SIG: bool, const FMA: bool>(&self, z: A) -> (A, A) {
        let t = (z - self.m).exp_lane::<FMA>();
        if SIG {
            // When t and b both underflow the true weight is 0, not 0/0: keep the divisor
            // away from zero. t * (t / d) rather than t^2 / d keeps weights near t (large m)
            // from underflowing through t^2.
            let d = max_lane(mul_add::<A, FMA>(self.a, t, self.b), A::MIN_POSITIVE);
            let r = d.recip_lane::<FMA>();
            (t * (t * r), r)
        } else {
            (t, A::ONE)
        }
    }
}

/// Combines `map(x_i)` over a chunk into one value through [`LANES`] accumulators.
/// Logits are padded with `-inf`, whose weight is 0 and which the max ignores.
///
/// Closures passed to this and to [`map_into`] are `#[inline(always)]`: a closure left out of
/// line would be compiled without the caller's target features and call `fmaf` per element.
#[inline(always)]
fn reduce<A: Real>(
    x: &[A],
    pad: A,
    init: A,
    map: impl Fn(A) -> A,
    combine: impl Fn(A, A) -> A,
) -> A {
    let mut acc = [init; LANES];
    let mut blocks = x.chunks_exact(LANES);
    for block in &mut blocks {
        for lane in 0..LANES {
            acc[lane] = combine(acc[lane], map(block[lane]));
        }
    }
    // The tail is padded to a whole block with `pad`, which `map` must send to the neutral
    // value of `combine`. Indexing the lanes with a run-time tail length instead makes LLVM
    // keep them in memory and use 2-lane vectors.
    let rest = blocks.remainder();
    if !rest.is_empty() {
        let mut last = [pad; LANES];
        last[..rest.len()].copy_from_slice(rest);
        for lane in 0..LANES {
            acc[lane] = combine(acc[lane], map(last[lane]));
        }
    }
    fold_lanes(acc, combine)
}

/// Combines the lanes pairwise in a fixed order.
#[inline(always)]
fn fold_lanes<A: Real>(mut acc: [A; LANES], combine: impl Fn(A, A) -> A) -> A {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for lane in 0..width {
            acc[lane] = combine(acc[lane], acc[lane + width]);
        }
    }
    acc[0]
}

/// Sets `out_i = f(in_i)`, reading `input` when given and `out` itself otherwise, so the
/// out-of-place ops need no copy.
#[inline(always)]
fn map_into<A: Real>(input: Option<&[A]>, out: &mut [A], f: impl Fn(A) -> A) {
    match input {
        Some(input) => {
            for (out, &x) in out.iter_mut().zip(input) {
                *out = f(x);
            }
        }
        None => {
            for out in out.iter_mut() {
                *out = f(*out);
            }
        }
    }
}

#[inline(always)]
fn add<A: Real>(x: A, y: A) -> A {
    x + y
}

/// The max of a chunk; NaN entries are skipped here and caught by the sums that follow.
pub(crate) struct Max<'a, A>(pub &'a [A]);

impl<A: Real> Kernel for Max<'_, A> {
    type Output = A;

    #[inline(always)]
    fn run<const FMA: bool>(self) -> A {
        reduce(
            self.0,
            A::NEG_INFINITY,
            A::NEG_INFINITY,
            #[inline(always)]
            |z| z,
            max_lane,
        )
    }
}

/// `sum_i w_i` over a chunk of logits.
pub(crate) struct WeightSum<'a, A, const SIG: bool> {
    pub z: &'a [A],
    pub consts: RowConsts<A>,
}

impl<A: Real, const SIG: bool> Kernel for WeightSum<'_, A, SIG> {
    type Output = A;

    #[inline(always)]
    fn run<const FMA: bool>(self) -> A {
        let consts = self.consts;
        reduce(
            self.z,
            A::NEG_INFINITY,
            A::ZERO,
            #[inline(always)]
            |z| consts.weight::<SIG, FMA>(z),
            add,
        )
    }
}

/// Writes the weights `w_i` of a chunk of logits and returns their sum.
pub(crate) struct StoreWeights<'a, A, const SIG: bool> {
    pub src: Option<&'a [A]>,
    pub x: &'a mut [A],
    pub consts: RowConsts<A>,
}

impl<A: Real, const SIG: bool> Kernel for StoreWeights<'_, A, SIG> {
    type Output = A;

    #[inline(always)]
    fn run<const FMA: bool>(self) -> A {
        let consts = self.consts;
        map_into(
            self.src,
            self.x,
            #[inline(always)]
            |z| consts.weight::<SIG, FMA>(z),
        );
        reduce(
            self.x,
            A::ZERO,
            A::ZERO,
            #[inline(always)]
            |w| w,
            add,
        )
    }
}

/// Multiplies a chunk by a factor.
pub(crate) struct Scale<'a, A> {
    pub x: &'a mut [A],
    pub factor: A,
}

impl<A: Real> Kernel for Scale<'_, A> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        for x in self.x.iter_mut() {
            *x = *x * self.factor;
        }
    }
}

/// Writes the probabilities `w_i / sum` of a chunk of logits.
pub(crate) struct Probabilities<'a, A, const SIG: bool> {
    pub src: Option<&'a [A]>,
    pub x: &'a mut [A],
    pub consts: RowConsts<A>,
    pub inverse_sum: A,
}

impl<A: Real, const SIG: bool> Kernel for Probabilities<'_, A, SIG> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let consts = self.consts;
        map_into(
            self.src,
            self.x,
            #[inline(always)]
            |z| consts.weight::<SIG, FMA>(z) * self.inverse_sum,
        );
    }
}

/// Writes the log probabilities of a chunk of logits, `l_i = log_weight_part(z_i) - shift`
/// with `shift = log sum_j w_j - ln(1 + e^-|m|)` (`log sum_j t_j` for softmax). Masked
/// logits give `-inf`.
pub(crate) struct LogProbabilities<'a, A, const SIG: bool> {
    pub src: Option<&'a [A]>,
    pub x: &'a mut [A],
    pub consts: RowConsts<A>,
    pub shift: A,
}

impl<A: Real, const SIG: bool> Kernel for LogProbabilities<'_, A, SIG> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        map_into(
            self.src,
            self.x,
            #[inline(always)]
            // Not log(w_i) directly, which is log(0) once t_i underflows.
            |z| self.consts.log_weight_part::<SIG, FMA>(z) - self.shift,
        );
    }
}

/// Sums `map(a_i, b_i)` over a chunk through [`LANES`] accumulators; the tail is padded with
/// zeros, which `map` must send to 0 (see [`reduce`] for why it is padded).
#[inline(always)]
fn sum_pairs<A: Real>(a: &[A], b: &[A], map: impl Fn(A, A) -> A) -> A {
    let mut acc = [A::ZERO; LANES];
    let mut a_blocks = a.chunks_exact(LANES);
    let mut b_blocks = b.chunks_exact(LANES);
    for (a, b) in (&mut a_blocks).zip(&mut b_blocks) {
        for lane in 0..LANES {
            acc[lane] += map(a[lane], b[lane]);
        }
    }
    let (a_rest, b_rest) = (a_blocks.remainder(), b_blocks.remainder());
    if !a_rest.is_empty() {
        let (mut a_last, mut b_last) = ([A::ZERO; LANES], [A::ZERO; LANES]);
        a_last[..a_rest.len()].copy_from_slice(a_rest);
        b_last[..b_rest.len()].copy_from_slice(b_rest);
        for lane in 0..LANES {
            acc[lane] += map(a_last[lane], b_last[lane]);
        }
    }
    fold_lanes(acc, add)
}

/// `sum_i a_i b_i` over a chunk.
pub(crate) struct Dot<'a, A> {
    pub a: &'a [A],
    pub b: &'a [A],
}

impl<A: Real> Kernel for Dot<'_, A> {
    type Output = A;

    #[inline(always)]
    fn run<const FMA: bool>(self) -> A {
        sum_pairs(
            self.a,
            self.b,
            #[inline(always)]
            |a, b| a * b,
        )
    }
}

/// `sum_i x_i` over the entries whose logit `z_i` is not masked.
///
/// A masked log-probability is the constant `-inf`, so its upstream gradient reaches no
/// logit; skipping it also keeps a NaN or infinite upstream there out of the row.
pub(crate) struct UnmaskedSum<'a, A> {
    pub z: &'a [A],
    pub x: &'a [A],
}

impl<A: Real> Kernel for UnmaskedSum<'_, A> {
    type Output = A;

    #[inline(always)]
    fn run<const FMA: bool>(self) -> A {
        sum_pairs(
            self.z,
            self.x,
            #[inline(always)]
            |z, x| select(z == A::NEG_INFINITY, A::ZERO, x),
        )
    }
}

/// 0 for a finite row statistic, NaN otherwise: the value of a masked gradient entry.
fn zero_if_finite<A: Real>(statistic: A) -> A {
    if statistic.is_finite() {
        A::ZERO
    } else {
        A::NAN
    }
}

/// `d sigmoid-numerator / dz` relative to the numerator: `1 + sigmoid(-z)` (1 for softmax).
#[inline(always)]
fn slope<A: Real, const SIG: bool, const FMA: bool>(z: A) -> A {
    if SIG {
        A::ONE + sigmoid_neg::<A, FMA>(z)
    } else {
        A::ONE
    }
}

/// `dz_i = slope(z_i) y_i (dy_i - dot)`; exactly 0 where `z_i` is masked, unless the row is
/// NaN.
pub(crate) struct Backward<'a, A, const SIG: bool> {
    pub z: &'a [A],
    pub y: &'a [A],
    pub dy: &'a [A],
    pub dot: A,
    pub dz: &'a mut [A],
}

impl<A: Real, const SIG: bool> Kernel for Backward<'_, A, SIG> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        // Masked entries get 0, or NaN when the row is NaN (the dot product shows it).
        let masked = zero_if_finite(self.dot);
        let inputs = self.z.iter().zip(self.y).zip(self.dy);
        for (dz, ((&z, &y), &dy)) in self.dz.iter_mut().zip(inputs) {
            let value = slope::<A, SIG, FMA>(z) * y * (dy - self.dot);
            *dz = select(z == A::NEG_INFINITY, masked, value);
        }
    }
}

/// `dz_i = slope(z_i) (dl_i - e^(l_i) sum)`; exactly 0 where `z_i` is masked, whatever `dl_i`,
/// unless the row is NaN.
pub(crate) struct LogBackward<'a, A, const SIG: bool> {
    pub z: &'a [A],
    pub l: &'a [A],
    pub dl: &'a [A],
    pub sum: A,
    pub dz: &'a mut [A],
}

impl<A: Real, const SIG: bool> Kernel for LogBackward<'_, A, SIG> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let masked = zero_if_finite(self.sum);
        let inputs = self.z.iter().zip(self.l).zip(self.dl);
        for (dz, ((&z, &l), &dl)) in self.dz.iter_mut().zip(inputs) {
            let value = slope::<A, SIG, FMA>(z) * (dl - l.exp_lane::<FMA>() * self.sum);
            // A consistent mask has l = -inf; anything else there means the row was NaN.
            let masked = select(l == A::NEG_INFINITY, masked, A::NAN);
            *dz = select(z == A::NEG_INFINITY, masked, value);
        }
    }
}

/// The statistics cross-entropy needs from a chunk of logits besides the max.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CrossEntropyStats<A> {
    /// `sum_i w_i`.
    pub weight_sum: A,
    /// Over unmasked entries, `sum_i log_weight_part(z_i)`: the part of `sum_i log y_i` that
    /// varies per entry. Only computed with label smoothing.
    pub log_terms: A,
    /// The number of unmasked entries (exact: a chunk is far below 2^24 entries).
    pub unmasked: A,
}

impl<A: Real> CrossEntropyStats<A> {
    pub fn combine(self, other: Self) -> Self {
        Self {
            weight_sum: self.weight_sum + other.weight_sum,
            log_terms: self.log_terms + other.log_terms,
            unmasked: self.unmasked + other.unmasked,
        }
    }
}

/// Cross-entropy statistics of a chunk; `SMOOTH` adds the terms label smoothing needs.
pub(crate) struct CrossEntropyChunk<'a, A, const SIG: bool, const SMOOTH: bool> {
    pub z: &'a [A],
    pub consts: RowConsts<A>,
}

impl<A: Real, const SIG: bool, const SMOOTH: bool> Kernel
    for CrossEntropyChunk<'_, A, SIG, SMOOTH>
{
    type Output = CrossEntropyStats<A>;

    #[inline(always)]
    fn run<const FMA: bool>(self) -> CrossEntropyStats<A> {
        let consts = self.consts;
        let weight_sum = reduce(
            self.z,
            A::NEG_INFINITY,
            A::ZERO,
            #[inline(always)]
            |z| consts.weight::<SIG, FMA>(z),
            add,
        );
        if !SMOOTH {
            return CrossEntropyStats {
                weight_sum,
                ..Default::default()
            };
        }
        let log_terms = reduce(
            self.z,
            A::NEG_INFINITY,
            A::ZERO,
            #[inline(always)]
            |z| {
                let term = consts.log_weight_part::<SIG, FMA>(z);
                select(z == A::NEG_INFINITY, A::ZERO, term)
            },
            add,
        );
        let unmasked = reduce(
            self.z,
            A::NEG_INFINITY,
            A::ZERO,
            #[inline(always)]
            |z| select(z == A::NEG_INFINITY, A::ZERO, A::ONE),
            add,
        );
        CrossEntropyStats {
            weight_sum,
            log_terms,
            unmasked,
        }
    }
}

/// Writes `slope(z_i) (scale_y w_i - smoothing)` for a chunk of logits: the gradient without
/// the target's one-hot term, which the caller subtracts at the target. Masked entries get
/// exactly 0.
pub(crate) struct CrossEntropyGrad<'a, A, const SIG: bool> {
    pub src: Option<&'a [A]>,
    pub x: &'a mut [A],
    pub consts: RowConsts<A>,
    /// `upstream * Q / sum_j w_j`.
    pub scale_y: A,
    /// `upstream * eps / cols`, the smoothing mass on each unmasked entry.
    pub smoothing: A,
}

/// Below this `b = sigmoid(-m)` (row max above about 69), `b / (b + a t_i)` loses precision
/// where `t_i` underflows, so the slope is computed from `z_i` directly.
const MIN_SHARED_B: f64 = 1e-30;

impl<A: Real, const SIG: bool> Kernel for CrossEntropyGrad<'_, A, SIG> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let consts = self.consts;
        let (scale_y, smoothing) = (self.scale_y, self.smoothing);
        // Masked entries get 0, or NaN when the row is NaN (its weight sum, in scale_y, shows it).
        let masked = zero_if_finite(scale_y);
        if !SIG || consts.b.to_f64() >= MIN_SHARED_B {
            map_into(
                self.src,
                self.x,
                #[inline(always)]
                |z| {
                    let (w, r) = consts.weight_and_recip::<SIG, FMA>(z);
                    let slope = if SIG { A::ONE + consts.b * r } else { A::ONE };
                    let value = slope * (scale_y * w - smoothing);
                    select(z == A::NEG_INFINITY, masked, value)
                },
            );
        } else {
            map_into(
                self.src,
                self.x,
                #[inline(always)]
                |z| {
                    let w = consts.weight::<SIG, FMA>(z);
                    let value = slope::<A, SIG, FMA>(z) * (scale_y * w - smoothing);
                    select(z == A::NEG_INFINITY, masked, value)
                },
            );
        }
    }
}

/// Computes the slope at one logit, for the target fix-up.
pub(crate) fn slope_at(z: f64, sigmoid: bool) -> f64 {
    if sigmoid {
        slope::<f64, true, false>(z)
    } else {
        slope::<f64, false, false>(z)
    }
}
