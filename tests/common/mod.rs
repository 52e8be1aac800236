//! Shared test support: the devices to run on, a float64 reference for every op, input
//! generation, and the tolerances every comparison uses.
//!
//! # Tolerances
//!
//! `u` is the unit roundoff of the precision the engine computes in (2^-24 for f32, f16 and
//! bf16, which are computed in f32; 2^-53 for f64) and `n` the number of columns. Each bound is
//! the sum of the elementwise roundings and the error of the row sums:
//!
//! - Elementwise work costs at most 8 roundings per output (exp or log1p of up to 3 ulp, then
//!   up to 5 multiplications, divisions and additions), doubled for margin: 16 u.
//! - A sum of `n` terms rounded independently has a random-walk error with standard deviation
//!   about `u sqrt(n) / 3` relative to the sum of the magnitudes of its terms (for positive terms
//!   whose partial sums grow linearly). Five standard deviations give `2 u sqrt(n)`, so a test
//!   over thousands of rows fails by chance with probability below 1e-3. Sums split into chunks
//!   or vector lanes have smaller errors.
//!
//! From these:
//! - forward: `|y_i - ref_i| <= u (16 + 2 sqrt(n)) max_j ref_j`. The relative error of the
//!   argument `z_i - m` adds `u |z_i - m| y_i <= u y_max / e` (because `y_i <= y_max e^-(m - z_i)`),
//!   which the 16 u covers.
//! - log forward: `l_i = (z_i - m) + (log s(z_i) - log s(m)) - log S` with `S` the sum of the
//!   shifted weights, so `|l_i - ref_i| <= u (16 scale_i + 2 sqrt(n))` with
//!   `scale_i = |z_i - m| + e(z_i) + e(m) + |log S|`, the magnitudes of the terms, and
//!   `2 u sqrt(n)` the absolute error that the relative error of `S` puts on `log S`.
//!   `log s(x) = min(x, 0) - log1p(exp(-|x|))` is rounded once at the magnitude of the result
//!   and is exact once the log1p term drops below half an ulp, so its error in units of u is
//!   `e(x) = min(|log s(x)|, log1p(exp(-|x|)) / u)`: at x = -1e4 it is 0, not 1e4.
//! - backward: `|dz_i - ref_i| <= u (16 + 2 sqrt(n)) scale_i` with
//!   `scale_i = g'(z_i) |y_i| (|dy_i| + sum_j |dy_j y_j|)`, which bounds every term of
//!   `g'(z_i) y_i (dy_i - sum_j dy_j y_j)`; the plain relative error is meaningless where
//!   `dy_i - <dy, y>` cancels. Log backward uses `scale_i = g'(z_i) (|dl_i| + e^l_i sum_j |dl_j|)`.
//! - cross-entropy: the loss sums `q_i l_i`, so its bound is `sum_i q_i` times the log bound plus
//!   a sum error; the gradient `c g'(z_i) (Q y_i - q_i)` inherits the forward bound on `y_i`.
//! - f16 and bf16 outputs are rounded once from the f32 result: add one rounding of the value,
//!   `u_h |ref|` with `u_h` 2^-11 (f16) or 2^-8 (bf16), and half the smallest subnormal spacing.
//!   The reference runs on the half-rounded inputs, so input rounding is not part of the error.
//! - Outputs below the smallest normal number of the compute precision may be flushed to zero
//!   or lose bits in subnormal intermediates: every bound gets an absolute floor of 4 times the
//!   smallest normal (2^-124 for f32, 2^-1020 for f64).

#![allow(dead_code)] // each test module uses its own subset

use std::sync::Once;

use sigsoftmax::cpu::Real;
use sigsoftmax::{
    Activation, CrossEntropyOptions, DType, Device, DeviceRequest, Element, Reduction, Shape,
    Upstream,
};

// ---------------------------------------------------------------------------------------------
// Devices

static CUDA_SKIP_NOTICE: Once = Once::new();

/// Returns every device present: the CPU always, and GPU 0 when the crate is built with the
/// `cuda` feature and the GPU opens. Prints once to stderr why CUDA tests are skipped otherwise.
pub fn devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    match Device::new(DeviceRequest::Cuda(0)) {
        Ok(gpu) => devices.push(gpu),
        Err(error) => CUDA_SKIP_NOTICE.call_once(|| eprintln!("CUDA tests skipped: {error}")),
    }
    devices
}

/// Runs `body` on a rayon pool of `threads` threads.
pub fn with_threads<R: Send>(threads: usize, body: impl FnOnce() -> R + Send) -> R {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("failed to build a rayon pool");
    pool.install(body)
}

/// Calls a generic function once per storage type: `for_each_dtype!(check, a, b)` calls
/// `check::<f32>(a, b)`, then f64, f16 and bf16.
macro_rules! for_each_dtype {
    ($function:ident, $($arg:expr),* $(,)?) => {{
        $function::<f32>($($arg),*);
        $function::<f64>($($arg),*);
        $function::<sigsoftmax::f16>($($arg),*);
        $function::<sigsoftmax::bf16>($($arg),*);
    }};
}

pub const ACTIVATIONS: [Activation; 2] = [Activation::Sigsoftmax, Activation::Softmax];

// ---------------------------------------------------------------------------------------------
// Random numbers

/// SplitMix64 (Steele, Lea and Flood, 2014): a 64-bit generator whose state advances by a fixed
/// odd constant and whose output is a mix of the state.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.state;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    /// Uniform on [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * 2f64.powi(-53)
    }

    /// Uniform on [-1, 1).
    pub fn next_signed(&mut self) -> f64 {
        2.0 * self.next_f64() - 1.0
    }

    /// Uniform on `0..bound`.
    pub fn next_below(&mut self, bound: usize) -> usize {
        (self.next_f64() * bound as f64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions

pub fn to_storage<T: Element>(values: &[f64]) -> Vec<T> {
    values.iter().map(|&v| T::from_f64(v)).collect()
}

pub fn to_f64s<T: Element>(values: &[T]) -> Vec<f64> {
    values.iter().map(|v| v.to_f64()).collect()
}

/// Rounds each value to `T` and back, so a reference sees exactly what the engine reads.
pub fn round_to<T: Element>(values: &[f64]) -> Vec<f64> {
    values.iter().map(|&v| T::from_f64(v).to_f64()).collect()
}

/// The bit patterns of a buffer, for bit-identity checks.
pub fn bit_patterns<T: Element>(values: &[T]) -> Vec<u64> {
    values.iter().map(|v| v.to_f64().to_bits()).collect()
}

pub fn accum_to_f64<A: Real>(values: &[A]) -> Vec<f64> {
    values.iter().map(|v| v.to_f64()).collect()
}

// ---------------------------------------------------------------------------------------------
// Precision and comparisons

/// Unit roundoffs and absolute floors of one storage type, as derived in the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Precision {
    /// Unit roundoff of the compute precision.
    pub compute_u: f64,
    /// Absolute floor for flushed or subnormal results in the compute precision.
    pub compute_floor: f64,
    /// Unit roundoff of the final rounding to storage (0 when storage is the compute type).
    pub store_u: f64,
    /// Half the smallest subnormal spacing of the storage type (0 when storage is the compute
    /// type).
    pub store_floor: f64,
}

impl Precision {
    pub fn of(dtype: DType) -> Self {
        let f32_compute = (2f64.powi(-24), 4.0 * 2f64.powi(-126));
        let (compute_u, compute_floor, store_u, store_floor) = match dtype {
            DType::F64 => (2f64.powi(-53), 4.0 * 2f64.powi(-1022), 0.0, 0.0),
            DType::F32 => (f32_compute.0, f32_compute.1, 0.0, 0.0),
            DType::F16 => (f32_compute.0, f32_compute.1, 2f64.powi(-11), 2f64.powi(-25)),
            DType::BF16 => (f32_compute.0, f32_compute.1, 2f64.powi(-8), 2f64.powi(-134)),
        };
        Self {
            compute_u,
            compute_floor,
            store_u,
            store_floor,
        }
    }

    /// The bound for an output whose computation error is `units` unit roundoffs of the compute
    /// precision, rounded once to storage.
    pub fn tolerance(&self, units: f64, want: f64) -> f64 {
        let compute = self.compute_u * units + self.compute_floor;
        compute + self.store_u * (want.abs() + compute) + self.store_floor
    }
}

/// What a comparison is about, for failure messages.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub op: &'a str,
    pub activation: Activation,
    pub dtype: DType,
    pub device: &'a Device,
    pub shape: Shape,
}

impl std::fmt::Display for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} on {} shape {}",
            self.op,
            self.activation.name(),
            self.dtype,
            self.device.name(),
            self.shape
        )
    }
}

impl Context<'_> {
    fn position(&self, index: usize) -> (usize, usize) {
        (index / self.shape.cols(), index % self.shape.cols())
    }

    /// Asserts `|got - want| <= tol`; NaN must meet NaN and an infinite `want` must be met exactly.
    pub fn assert_close(&self, index: usize, got: f64, want: f64, tol: f64, z: f64) {
        let (row, col) = self.position(index);
        if want.is_nan() {
            assert!(
                got.is_nan(),
                "{self}: [{row}, {col}] got {got:e}, want NaN (z = {z:e})"
            );
            return;
        }
        if want.is_infinite() {
            assert_eq!(
                got, want,
                "{self}: [{row}, {col}] got {got:e}, want {want:e} (z = {z:e})"
            );
            return;
        }
        let diff = (got - want).abs();
        assert!(
            diff <= tol,
            "{self}: [{row}, {col}] got {got:e}, want {want:e}, |diff| {diff:e} > tol {tol:e} (z = {z:e})"
        );
    }

    /// Asserts `|got - want| <= tol` for a value that is not an element of the matrix.
    pub fn assert_value_close(&self, what: &str, got: f64, want: f64, tol: f64) {
        if want.is_nan() {
            assert!(got.is_nan(), "{self}: {what} got {got:e}, want NaN");
            return;
        }
        if want.is_infinite() {
            assert_eq!(got, want, "{self}: {what} got {got:e}, want {want:e}");
            return;
        }
        let diff = (got - want).abs();
        assert!(
            diff <= tol,
            "{self}: {what} got {got:e}, want {want:e}, |diff| {diff:e} > tol {tol:e}"
        );
    }

    /// Asserts that a masked entry is exactly `want` (0 for probabilities and gradients,
    /// `-inf` for log probabilities).
    pub fn assert_masked(&self, index: usize, got: f64, want: f64) {
        let (row, col) = self.position(index);
        assert!(
            got == want,
            "{self}: masked entry [{row}, {col}] got {got:e}, want exactly {want:e}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Float64 reference

/// `log s(x)` without cancellation: `min(x, 0) - log1p(exp(-|x|))`.
pub fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `g'(x)`, the derivative of the per-element log weight: `1 + s(-x)` for sigsoftmax, 1 for
/// softmax.
pub fn weight_derivative(activation: Activation, x: f64) -> f64 {
    match activation {
        Activation::Sigsoftmax => 1.0 + sigmoid(-x),
        Activation::Softmax => 1.0,
    }
}

/// Whether a row is undefined (NaN everywhere): it has NaN, `+inf`, or no finite entry.
pub fn is_undefined_row(z: &[f64]) -> bool {
    z.iter().any(|x| x.is_nan() || *x == f64::INFINITY) || z.iter().all(|x| *x == f64::NEG_INFINITY)
}

pub fn is_masked(x: f64) -> bool {
    x == f64::NEG_INFINITY
}

/// Neumaier's compensated sum, so the reference sums add no error that matters.
pub fn compensated_sum(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut sum = 0.0f64;
    let mut compensation = 0.0f64;
    for value in values {
        let t = sum + value;
        if sum.abs() >= value.abs() {
            compensation += (sum - t) + value;
        } else {
            compensation += (value - t) + sum;
        }
        sum = t;
    }
    sum + compensation
}

/// The reference forward and log forward of one row, with what the error bound of the log
/// needs.
#[derive(Debug, Clone)]
pub struct ForwardRow {
    pub y: Vec<f64>,
    pub l: Vec<f64>,
    pub y_max: f64,
    pub undefined: bool,
    activation: Activation,
    /// `|z_i - m|`.
    shift_abs: Vec<f64>,
    z: Vec<f64>,
    m: f64,
    log_sum: f64,
}

/// The rounding error of `log s(x)` in units of `u` (module docs).
fn log_sigmoid_error_units(x: f64, u: f64) -> f64 {
    log_sigmoid(x).abs().min((-x.abs()).exp().ln_1p() / u)
}

impl ForwardRow {
    /// `scale_i` of the log bound (module docs) for compute unit roundoff `u`; NaN for an
    /// undefined row.
    pub fn log_scale(&self, i: usize, u: f64) -> f64 {
        if self.undefined {
            return f64::NAN;
        }
        let sigmoid_units = match self.activation {
            Activation::Sigsoftmax => {
                log_sigmoid_error_units(self.z[i], u) + log_sigmoid_error_units(self.m, u)
            }
            Activation::Softmax => 0.0,
        };
        self.shift_abs[i] + sigmoid_units + self.log_sum.abs()
    }
}

/// Computes one row of sigsoftmax (or softmax) in the stable form: with `m = max z`,
/// `e_i = (z_i - m) + (log s(z_i) - log s(m))`, `l_i = e_i - log sum_j exp(e_j)`.
pub fn forward_row(activation: Activation, z: &[f64]) -> ForwardRow {
    let n = z.len();
    if is_undefined_row(z) {
        let nan = vec![f64::NAN; n];
        return ForwardRow {
            y: nan.clone(),
            l: nan.clone(),
            y_max: f64::NAN,
            undefined: true,
            activation,
            shift_abs: nan,
            z: z.to_vec(),
            m: f64::NAN,
            log_sum: f64::NAN,
        };
    }
    let m = z
        .iter()
        .copied()
        .filter(|x| !is_masked(*x))
        .fold(f64::NEG_INFINITY, f64::max);
    let log_sigmoid_m = log_sigmoid(m);
    let sigmoid_term = |x: f64| match activation {
        Activation::Sigsoftmax => log_sigmoid(x) - log_sigmoid_m,
        Activation::Softmax => 0.0,
    };
    let e: Vec<f64> = z
        .iter()
        .map(|&x| {
            if is_masked(x) {
                f64::NEG_INFINITY
            } else {
                (x - m) + sigmoid_term(x)
            }
        })
        .collect();

    // Every e_i <= 0 and e = 0 at the max, so the sum lies in [1, n].
    let sum = compensated_sum(e.iter().map(|v| v.exp()));
    let log_sum = sum.ln();
    let y: Vec<f64> = e.iter().map(|v| v.exp() / sum).collect();
    let l: Vec<f64> = e.iter().map(|v| v - log_sum).collect();
    let y_max = y.iter().copied().fold(0.0, f64::max);
    let shift_abs = z.iter().map(|&x| (x - m).abs()).collect();
    ForwardRow {
        y,
        l,
        y_max,
        undefined: false,
        activation,
        shift_abs,
        z: z.to_vec(),
        m,
        log_sum,
    }
}

/// The reference gradient of one row and its error scale.
#[derive(Debug, Clone)]
pub struct GradientRow {
    pub dz: Vec<f64>,
    pub scale: Vec<f64>,
}

/// `dz_i = g'(z_i) y_i (dy_i - sum_j dy_j y_j)` with the given `y` (not recomputed), so the
/// engine and the reference see the same inputs.
pub fn backward_row(activation: Activation, z: &[f64], y: &[f64], dy: &[f64]) -> GradientRow {
    let n = z.len();
    if is_undefined_row(z) {
        return GradientRow {
            dz: vec![f64::NAN; n],
            scale: vec![f64::NAN; n],
        };
    }
    let unmasked = || (0..n).filter(|&j| !is_masked(z[j]));
    let dot = compensated_sum(unmasked().map(|j| dy[j] * y[j]));
    let abs_dot = compensated_sum(unmasked().map(|j| (dy[j] * y[j]).abs()));
    let mut dz = vec![0.0; n];
    let mut scale = vec![0.0; n];
    for i in unmasked() {
        let slope = weight_derivative(activation, z[i]);
        dz[i] = slope * y[i] * (dy[i] - dot);
        scale[i] = slope * y[i].abs() * (dy[i].abs() + abs_dot);
    }
    GradientRow { dz, scale }
}

/// `dz_i = g'(z_i) (dl_i - exp(l_i) sum_j dl_j)`, the sum over unmasked entries only: a masked
/// `l_j` is the constant `-inf`, so its `dl_j` does not reach any logit.
pub fn log_backward_row(activation: Activation, z: &[f64], l: &[f64], dl: &[f64]) -> GradientRow {
    let n = z.len();
    if is_undefined_row(z) {
        return GradientRow {
            dz: vec![f64::NAN; n],
            scale: vec![f64::NAN; n],
        };
    }
    let unmasked = || (0..n).filter(|&j| !is_masked(z[j]));
    let sum = compensated_sum(unmasked().map(|j| dl[j]));
    let abs_sum = compensated_sum(unmasked().map(|j| dl[j].abs()));
    let mut dz = vec![0.0; n];
    let mut scale = vec![0.0; n];
    for i in unmasked() {
        let slope = weight_derivative(activation, z[i]);
        let p = l[i].exp();
        dz[i] = slope * (dl[i] - p * sum);
        scale[i] = slope * (dl[i].abs() + p * abs_sum);
    }
    GradientRow { dz, scale }
}

/// Cross-entropy options with an owned upstream, to build [`CrossEntropyOptions`] from.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossEntropySpec {
    pub ignore_index: Option<i64>,
    pub label_smoothing: f64,
    pub reduction: Reduction,
    pub upstream: UpstreamSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamSpec {
    One,
    Scalar(f64),
    PerRow(Vec<f32>),
}

impl CrossEntropySpec {
    pub fn plain() -> Self {
        Self {
            ignore_index: Some(-100),
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
            upstream: UpstreamSpec::One,
        }
    }

    pub fn options(&self) -> CrossEntropyOptions<'_> {
        let upstream = match &self.upstream {
            UpstreamSpec::One => Upstream::One,
            UpstreamSpec::Scalar(value) => Upstream::Scalar(*value),
            UpstreamSpec::PerRow(values) => Upstream::PerRow(values),
        };
        CrossEntropyOptions {
            ignore_index: self.ignore_index,
            label_smoothing: self.label_smoothing,
            reduction: self.reduction,
            upstream,
        }
    }

    fn upstream_of_row(&self, row: usize) -> f64 {
        match &self.upstream {
            UpstreamSpec::One => 1.0,
            UpstreamSpec::Scalar(value) => *value,
            UpstreamSpec::PerRow(values) => values[row] as f64,
        }
    }
}

/// The reference cross-entropy of a matrix, with error bounds in units of the compute roundoff.
#[derive(Debug, Clone)]
pub struct CrossEntropyRef {
    pub losses: Vec<f64>,
    pub loss_units: Vec<f64>,
    pub total: f64,
    pub total_units: f64,
    pub grad: Vec<f64>,
    pub grad_units: Vec<f64>,
}

/// Computes the reference cross-entropy. Per row with target `t`, the smoothed target is
/// `q_i = (1 - eps) [i == t] + eps / cols` on unmasked entries and 0 on masked ones, `Q` its sum,
/// the loss `-sum_i q_i l_i` and the gradient `c g'(z_i) (Q y_i - q_i)`, where `c` is the
/// upstream divided by the number of counted rows for the mean. Ignored rows get 0.
/// The gradient is not assumed to sum to zero: with `g' != 1` it does not.
/// `compute_u` is the unit roundoff the error bounds are for.
pub fn cross_entropy_ref(
    activation: Activation,
    shape: Shape,
    z: &[f64],
    targets: &[i64],
    spec: &CrossEntropySpec,
    compute_u: f64,
) -> CrossEntropyRef {
    let (rows, cols) = (shape.rows(), shape.cols());
    let sum_scale = 2.0 * (cols as f64).sqrt();
    let eps = spec.label_smoothing;
    let counted = targets
        .iter()
        .filter(|&&t| Some(t) != spec.ignore_index)
        .count();
    let divisor = if spec.reduction == Reduction::Mean {
        counted as f64
    } else {
        1.0
    };

    let mut losses = vec![0.0; rows];
    let mut loss_units = vec![0.0; rows];
    let mut grad = vec![0.0; rows * cols];
    let mut grad_units = vec![0.0; rows * cols];
    for row in 0..rows {
        if Some(targets[row]) == spec.ignore_index {
            continue;
        }
        let range = row * cols..(row + 1) * cols;
        let z_row = &z[range.clone()];
        let forward = forward_row(activation, z_row);
        if forward.undefined {
            losses[row] = f64::NAN;
            grad[range].fill(f64::NAN);
            continue;
        }
        let target = targets[row] as usize;
        let q: Vec<f64> = (0..cols)
            .map(|i| {
                if is_masked(z_row[i]) {
                    0.0
                } else {
                    eps / cols as f64 + if i == target { 1.0 - eps } else { 0.0 }
                }
            })
            .collect();
        let q_sum = compensated_sum(q.iter().copied());
        let unmasked = || (0..cols).filter(|&i| !is_masked(z_row[i]));
        losses[row] = -compensated_sum(unmasked().map(|i| q[i] * forward.l[i]));
        let weighted_log_scale =
            compensated_sum(unmasked().map(|i| q[i] * forward.log_scale(i, compute_u)));
        let weighted_abs_log = compensated_sum(unmasked().map(|i| q[i] * forward.l[i].abs()));
        loss_units[row] =
            16.0 * weighted_log_scale + sum_scale * (q_sum + weighted_abs_log) + losses[row].abs();

        let factor = spec.upstream_of_row(row) / divisor;
        for i in unmasked() {
            let slope = weight_derivative(activation, z_row[i]);
            let y = forward.y[i];
            grad[row * cols + i] = factor * slope * (q_sum * y - q[i]);
            grad_units[row * cols + i] = factor.abs()
                * slope
                * (q_sum * (16.0 + sum_scale) * forward.y_max + 16.0 * (q_sum * y + q[i]));
        }
    }
    let total = compensated_sum(losses.iter().copied()) / divisor;
    let total_units = compensated_sum(loss_units.iter().copied()) / divisor;
    CrossEntropyRef {
        losses,
        loss_units,
        total,
        total_units,
        grad,
        grad_units,
    }
}

// ---------------------------------------------------------------------------------------------
// Checks of each op against the reference

/// Runs forward on `z` (rounded to `T`) and compares with the reference; returns the output.
pub fn check_forward<T: Element>(
    device: &Device,
    activation: Activation,
    shape: Shape,
    z: &[f64],
) -> Vec<T> {
    let context = Context {
        op: "forward",
        activation,
        dtype: T::DTYPE,
        device,
        shape,
    };
    let precision = Precision::of(T::DTYPE);
    let z = round_to::<T>(z);
    let input: Vec<T> = to_storage(&z);
    let mut output = vec![T::default(); shape.len()];
    device
        .forward(activation, shape, &input, &mut output)
        .expect("forward failed");

    let cols = shape.cols();
    let units = 16.0 + 2.0 * (cols as f64).sqrt();
    for (row, z_row) in z.chunks(cols).enumerate() {
        let want = forward_row(activation, z_row);
        for col in 0..cols {
            let index = row * cols + col;
            let got = output[index].to_f64();
            if !want.undefined && is_masked(z_row[col]) {
                context.assert_masked(index, got, 0.0);
                continue;
            }
            let tol = precision.tolerance(units * want.y_max, want.y[col]);
            context.assert_close(index, got, want.y[col], tol, z_row[col]);
        }
    }
    output
}

/// Runs log forward on `z` (rounded to `T`) and compares with the reference; returns the output.
pub fn check_log_forward<T: Element>(
    device: &Device,
    activation: Activation,
    shape: Shape,
    z: &[f64],
) -> Vec<T> {
    let context = Context {
        op: "log_forward",
        activation,
        dtype: T::DTYPE,
        device,
        shape,
    };
    let precision = Precision::of(T::DTYPE);
    let z = round_to::<T>(z);
    let input: Vec<T> = to_storage(&z);
    let mut output = vec![T::default(); shape.len()];
    device
        .log_forward(activation, shape, &input, &mut output)
        .expect("log_forward failed");

    let cols = shape.cols();
    let sum_units = 2.0 * (cols as f64).sqrt();
    for (row, z_row) in z.chunks(cols).enumerate() {
        let want = forward_row(activation, z_row);
        for col in 0..cols {
            let index = row * cols + col;
            let got = output[index].to_f64();
            if !want.undefined && is_masked(z_row[col]) {
                context.assert_masked(index, got, f64::NEG_INFINITY);
                continue;
            }
            // An exact log below the storage range rounds to -inf, and the engine must agree.
            let want_stored = T::from_f64(want.l[col]).to_f64();
            let want_l = if want_stored.is_infinite() {
                want_stored
            } else {
                want.l[col]
            };
            let scale = want.log_scale(col, precision.compute_u);
            let tol = precision.tolerance(16.0 * scale + sum_units, want_l);
            context.assert_close(index, got, want_l, tol, z_row[col]);
        }
    }
    output
}

/// Runs backward with `y` = the reference forward rounded to `T` and upstream `dy`, and
/// compares with the reference on exactly those inputs; returns the output.
pub fn check_backward<T: Element>(
    device: &Device,
    activation: Activation,
    shape: Shape,
    z: &[f64],
    dy: &[f64],
) -> Vec<T> {
    let context = Context {
        op: "backward",
        activation,
        dtype: T::DTYPE,
        device,
        shape,
    };
    let cols = shape.cols();
    let z = round_to::<T>(z);
    let dy = round_to::<T>(dy);
    let y: Vec<f64> = z
        .chunks(cols)
        .flat_map(|z_row| round_to::<T>(&forward_row(activation, z_row).y))
        .collect();
    let mut output = vec![T::default(); shape.len()];
    device
        .backward(
            activation,
            shape,
            &to_storage::<T>(&z),
            &to_storage::<T>(&y),
            &to_storage::<T>(&dy),
            &mut output,
        )
        .expect("backward failed");

    for row in 0..shape.rows() {
        let range = row * cols..(row + 1) * cols;
        let want = backward_row(activation, &z[range.clone()], &y[range.clone()], &dy[range]);
        compare_gradient_row(&context, row, &z, &output, &want);
    }
    output
}

/// Runs log backward with `l` = the reference log forward rounded to `T` and upstream `dl`;
/// returns the output.
pub fn check_log_backward<T: Element>(
    device: &Device,
    activation: Activation,
    shape: Shape,
    z: &[f64],
    dl: &[f64],
) -> Vec<T> {
    let context = Context {
        op: "log_backward",
        activation,
        dtype: T::DTYPE,
        device,
        shape,
    };
    let cols = shape.cols();
    let z = round_to::<T>(z);
    let dl = round_to::<T>(dl);
    let l: Vec<f64> = z
        .chunks(cols)
        .flat_map(|z_row| round_to::<T>(&forward_row(activation, z_row).l))
        .collect();
    let mut output = vec![T::default(); shape.len()];
    device
        .log_backward(
            activation,
            shape,
            &to_storage::<T>(&z),
            &to_storage::<T>(&l),
            &to_storage::<T>(&dl),
            &mut output,
        )
        .expect("log_backward failed");

    for row in 0..shape.rows() {
        let range = row * cols..(row + 1) * cols;
        let want = log_backward_row(activation, &z[range.clone()], &l[range.clone()], &dl[range]);
        compare_gradient_row(&context, row, &z, &output, &want);
    }
    output
}

fn compare_gradient_row<T: Element>(
    context: &Context,
    row: usize,
    z: &[f64],
    output: &[T],
    want: &GradientRow,
) {
    let cols = context.shape.cols();
    let precision = Precision::of(T::DTYPE);
    let units = 16.0 + 2.0 * (cols as f64).sqrt();
    let z_row = &z[row * cols..(row + 1) * cols];
    let undefined = is_undefined_row(z_row);
    for col in 0..cols {
        let index = row * cols + col;
        let got = output[index].to_f64();
        if !undefined && is_masked(z_row[col]) {
            context.assert_masked(index, got, 0.0);
            continue;
        }
        let tol = precision.tolerance(units * want.scale[col], want.dz[col]);
        context.assert_close(index, got, want.dz[col], tol, z_row[col]);
    }
}

/// The outputs of one cross-entropy call.
#[derive(Debug, Clone)]
pub struct CrossEntropyOutput<T: Element> {
    pub total: f64,
    pub losses: Vec<T::Accum>,
    pub grad: Option<Vec<T>>,
}

/// Runs cross-entropy (with and without a gradient buffer) and compares the returned value,
/// the per-row losses and the gradient with the reference; returns the run with a gradient.
pub fn check_cross_entropy<T: Element>(
    device: &Device,
    activation: Activation,
    shape: Shape,
    z: &[f64],
    targets: &[i64],
    spec: &CrossEntropySpec,
) -> CrossEntropyOutput<T> {
    let context = Context {
        op: "cross_entropy",
        activation,
        dtype: T::DTYPE,
        device,
        shape,
    };
    let precision = Precision::of(T::DTYPE);
    let z = round_to::<T>(z);
    let input: Vec<T> = to_storage(&z);
    let options = spec.options();
    let want = cross_entropy_ref(activation, shape, &z, targets, spec, precision.compute_u);

    let mut losses = vec![T::Accum::default(); shape.rows()];
    let mut grad = vec![T::default(); shape.len()];
    let total = device
        .cross_entropy(
            activation,
            shape,
            &input,
            targets,
            &options,
            &mut losses,
            Some(&mut grad),
        )
        .expect("cross_entropy failed");
    let mut losses_only = vec![T::Accum::default(); shape.rows()];
    let total_only = device
        .cross_entropy(
            activation,
            shape,
            &input,
            targets,
            &options,
            &mut losses_only,
            None,
        )
        .expect("cross_entropy without a gradient failed");

    // Losses are stored in the compute type, so they carry no storage rounding.
    let loss_precision = Precision {
        store_u: 0.0,
        store_floor: 0.0,
        ..precision
    };
    let total_tol = loss_precision.tolerance(want.total_units, want.total);
    context.assert_value_close("returned loss", total, want.total, total_tol);
    context.assert_value_close(
        "returned loss without gradient",
        total_only,
        want.total,
        total_tol,
    );
    let cols = shape.cols();
    for row in 0..shape.rows() {
        let tol = loss_precision.tolerance(want.loss_units[row], want.losses[row]);
        let what = format!("loss of row {row} (target {})", targets[row]);
        context.assert_value_close(&what, losses[row].to_f64(), want.losses[row], tol);
        let what = format!(
            "loss of row {row} (target {}) without gradient",
            targets[row]
        );
        context.assert_value_close(&what, losses_only[row].to_f64(), want.losses[row], tol);
    }
    for row in 0..shape.rows() {
        let z_row = &z[row * cols..(row + 1) * cols];
        let ignored = Some(targets[row]) == spec.ignore_index;
        let undefined = is_undefined_row(z_row);
        for col in 0..cols {
            let index = row * cols + col;
            let got = grad[index].to_f64();
            if ignored || (!undefined && is_masked(z_row[col])) {
                context.assert_masked(index, got, 0.0);
                continue;
            }
            let tol = precision.tolerance(want.grad_units[index], want.grad[index]);
            context.assert_close(index, got, want.grad[index], tol, z_row[col]);
        }
    }
    CrossEntropyOutput {
        total,
        losses,
        grad: Some(grad),
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// Fills `rows x cols` upstream gradients uniform on [-1, 1).
pub fn random_upstream(rng: &mut SplitMix64, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.next_signed()).collect()
}

/// Returns `upstream` with 0 at masked entries, the upstream a loss gives in practice. Whether
/// log backward ignores nonzero upstream at masked entries is a separate test
/// (`log_backward_ignores_masked_upstream`), so other tests do not fail on that one behaviour.
pub fn zero_at_masks(z: &[f64], upstream: &[f64]) -> Vec<f64> {
    z.iter()
        .zip(upstream)
        .map(|(&x, &g)| if is_masked(x) { 0.0 } else { g })
        .collect()
}

/// Picks one unmasked class per row (0 for a row without one), so the loss stays finite.
pub fn unmasked_targets(rng: &mut SplitMix64, shape: Shape, z: &[f64]) -> Vec<i64> {
    z.chunks(shape.cols())
        .map(|row| {
            let candidates: Vec<usize> = (0..row.len()).filter(|&i| !is_masked(row[i])).collect();
            if candidates.is_empty() {
                0
            } else {
                candidates[rng.next_below(candidates.len())] as i64
            }
        })
        .collect()
}

/// Runs every op on one matrix with upstreams and targets drawn from `seed`, comparing each
/// with the reference: forward, log forward, backward, log backward and cross-entropy (plain,
/// and with smoothing 0.1, sum and a scalar upstream).
pub fn check_all_ops<T: Element>(
    device: &Device,
    activation: Activation,
    shape: Shape,
    z: &[f64],
    seed: u64,
) {
    let mut rng = SplitMix64::new(seed);
    let dy = random_upstream(&mut rng, shape.len());
    check_forward::<T>(device, activation, shape, z);
    check_log_forward::<T>(device, activation, shape, z);
    check_backward::<T>(device, activation, shape, z, &dy);
    check_log_backward::<T>(device, activation, shape, z, &zero_at_masks(z, &dy));
    let targets = unmasked_targets(&mut rng, shape, &round_to::<T>(z));
    check_cross_entropy::<T>(
        device,
        activation,
        shape,
        z,
        &targets,
        &CrossEntropySpec::plain(),
    );
    let smoothed = CrossEntropySpec {
        ignore_index: Some(-100),
        label_smoothing: 0.1,
        reduction: Reduction::Sum,
        upstream: UpstreamSpec::Scalar(-0.75),
    };
    check_cross_entropy::<T>(device, activation, shape, z, &targets, &smoothed);
}

/// Runs [`check_all_ops`] on every device and activation.
pub fn check_all_ops_everywhere<T: Element>(shape: Shape, z: &[f64], seed: u64) {
    for device in devices() {
        for activation in ACTIVATIONS {
            check_all_ops::<T>(&device, activation, shape, z, seed);
        }
    }
}

/// Asserts that every entry is finite (for inputs whose exact outputs all are).
pub fn assert_all_finite<T: Element>(what: &str, values: &[T]) {
    for (index, value) in values.iter().enumerate() {
        let value = value.to_f64();
        assert!(
            value.is_finite(),
            "{what} {}: entry {index} is {value:e}, want a finite value",
            T::DTYPE
        );
    }
}
