//! Golden vectors: exact sigsoftmax values computed with mpmath at 60 digits and rounded to f64
//! (`tests/data/golden.json`). Non-finite numbers are the strings "-inf", "inf" and "nan".
//!
//! Tolerances are the ones the file's `meta.tolerance_hint` gives for f32 implementations:
//! forward elementwise relative error at most 1e-5 where `y >= 2^-126`, backward
//! `|dz_i - exact_i| <= 1e-5 dz_err_scale_i`, differences below 2^-126 ignored (f32 may flush
//! subnormal outputs). The log forward uses 1e-5 relative, floored at 1, the metric of
//! `meta.numpy_float64_reference_vs_mpmath`. The f64 path uses the derived bounds of `common`
//! with u = 2^-53.

use serde_json::Value;
use sigsoftmax::{Activation, DType, Device, Element, Shape};

use crate::common::{devices, forward_row, log_sigmoid, weight_derivative, Precision, SplitMix64};

const GOLDEN: &str = include_str!("../data/golden.json");

/// The f32 tolerance hint of the golden file.
const F32_HINT: f64 = 1e-5;

/// Differences below the smallest normal f32 are ignored for f32 outputs.
const F32_FLOOR: f64 = 1.1754943508222875e-38; // 2^-126

fn golden() -> Value {
    serde_json::from_str(GOLDEN).expect("tests/data/golden.json is valid JSON")
}

fn number(value: &Value) -> f64 {
    match value {
        Value::Number(number) => number.as_f64().expect("finite number"),
        Value::String(text) => match text.as_str() {
            "inf" => f64::INFINITY,
            "-inf" => f64::NEG_INFINITY,
            "nan" => f64::NAN,
            other => panic!("unexpected string {other:?} where a number belongs"),
        },
        other => panic!("unexpected value {other} where a number belongs"),
    }
}

fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(number)
        .collect()
}

/// One row of the `cases` array.
struct GoldenCase {
    name: String,
    z: Vec<f64>,
    dy: Vec<f64>,
    y: Vec<f64>,
    log_y: Vec<f64>,
    dz: Vec<f64>,
    dz_err_scale: Vec<f64>,
}

fn cases() -> Vec<GoldenCase> {
    let golden = golden();
    golden["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|case| GoldenCase {
            name: case["name"].as_str().expect("name").to_owned(),
            z: numbers(&case["z"]),
            dy: numbers(&case["dy"]),
            y: numbers(&case["y"]),
            log_y: numbers(&case["log_y"]),
            dz: numbers(&case["dz"]),
            dz_err_scale: numbers(&case["dz_err_scale"]),
        })
        .collect()
}

/// How far an output may be from the exact golden value.
#[derive(Clone, Copy)]
enum Bound {
    /// The f32 hint: `hint * |exact|`, differences below 2^-126 ignored.
    F32Hint,
    /// The derived f64 bound: `u (16 + 2 sqrt(n))` times a scale.
    F64Derived { cols: usize },
}

impl Bound {
    fn for_dtype(dtype: DType, cols: usize) -> Self {
        match dtype {
            DType::F32 => Bound::F32Hint,
            _ => Bound::F64Derived { cols },
        }
    }

    /// Bound for a probability, relative to the exact value (f32) or the row max (f64).
    fn probability(self, exact: f64, row_max: f64) -> f64 {
        match self {
            Bound::F32Hint => (F32_HINT * exact).max(F32_FLOOR),
            Bound::F64Derived { cols } => {
                derived_units(cols) * Precision::of(DType::F64).compute_u * row_max
            }
        }
    }

    /// Bound for a gradient with the golden error scale.
    fn gradient(self, scale: f64) -> f64 {
        match self {
            Bound::F32Hint => (F32_HINT * scale).max(F32_FLOOR),
            Bound::F64Derived { cols } => {
                let precision = Precision::of(DType::F64);
                derived_units(cols) * precision.compute_u * scale + precision.compute_floor
            }
        }
    }
}

fn derived_units(cols: usize) -> f64 {
    16.0 + 2.0 * (cols as f64).sqrt()
}

fn assert_within(what: &str, index: usize, got: f64, exact: f64, tol: f64) {
    if exact.is_nan() {
        assert!(got.is_nan(), "{what}[{index}]: got {got:e}, want NaN");
        return;
    }
    if exact.is_infinite() {
        assert_eq!(got, exact, "{what}[{index}]: got {got:e}, want {exact:e}");
        return;
    }
    let diff = (got - exact).abs();
    assert!(
        diff <= tol,
        "{what}[{index}]: got {got:e}, exact {exact:e}, |diff| {diff:e} > tol {tol:e}"
    );
}

fn run_forward<T: Element>(device: &Device, z: &[f64], log: bool) -> Vec<f64> {
    let shape = Shape::new(1, z.len()).expect("valid shape");
    let input: Vec<T> = z.iter().map(|&v| T::from_f64(v)).collect();
    let mut output = vec![T::default(); z.len()];
    let result = if log {
        device.log_forward(Activation::Sigsoftmax, shape, &input, &mut output)
    } else {
        device.forward(Activation::Sigsoftmax, shape, &input, &mut output)
    };
    result.expect("forward failed");
    output.iter().map(|v| v.to_f64()).collect()
}

fn run_backward<T: Element>(device: &Device, z: &[f64], y: &[f64], dy: &[f64]) -> Vec<f64> {
    let shape = Shape::new(1, z.len()).expect("valid shape");
    let convert = |values: &[f64]| values.iter().map(|&v| T::from_f64(v)).collect::<Vec<T>>();
    let mut dz = vec![T::default(); z.len()];
    device
        .backward(
            Activation::Sigsoftmax,
            shape,
            &convert(z),
            &convert(y),
            &convert(dy),
            &mut dz,
        )
        .expect("backward failed");
    dz.iter().map(|v| v.to_f64()).collect()
}

fn log_bound(dtype: DType, z: &[f64], exact: &[f64]) -> Vec<f64> {
    match dtype {
        DType::F32 => exact.iter().map(|l| F32_HINT * l.abs().max(1.0)).collect(),
        _ => {
            let reference = forward_row(Activation::Sigsoftmax, z);
            let u = Precision::of(DType::F64).compute_u;
            let sum_units = 2.0 * (z.len() as f64).sqrt();
            (0..z.len())
                .map(|i| u * (16.0 * reference.log_scale(i, u) + sum_units))
                .collect()
        }
    }
}

fn check_cases<T: Element>(device: &Device) {
    for case in cases() {
        let cols = case.z.len();
        let bound = Bound::for_dtype(T::DTYPE, cols);
        let what = |op: &str| format!("{} {op} {} on {}", case.name, T::DTYPE, device.name());
        let row_max = case.y.iter().copied().fold(0.0, f64::max);

        let y = run_forward::<T>(device, &case.z, false);
        for (i, (&got, &exact)) in y.iter().zip(&case.y).enumerate() {
            assert_within(
                &what("forward"),
                i,
                got,
                exact,
                bound.probability(exact, row_max),
            );
        }

        let l = run_forward::<T>(device, &case.z, true);
        let log_tolerances = log_bound(T::DTYPE, &case.z, &case.log_y);
        for (i, (&got, &exact)) in l.iter().zip(&case.log_y).enumerate() {
            assert_within(&what("log_forward"), i, got, exact, log_tolerances[i]);
        }

        let dz = run_backward::<T>(device, &case.z, &case.y, &case.dy);
        for (i, (&got, &exact)) in dz.iter().zip(&case.dz).enumerate() {
            assert_within(
                &what("backward"),
                i,
                got,
                exact,
                bound.gradient(case.dz_err_scale[i]),
            );
        }
    }
}

#[test]
fn golden_cases_f32() {
    for device in devices() {
        check_cases::<f32>(&device);
    }
}

#[test]
fn golden_cases_f64() {
    for device in devices() {
        check_cases::<f64>(&device);
    }
}

/// The test reference itself against the exact values, with the derived f64 bounds: if this
/// fails, the reference (not the engine) is wrong.
#[test]
fn reference_matches_golden_cases() {
    for case in cases() {
        let cols = case.z.len();
        let bound = Bound::F64Derived { cols };
        let reference = forward_row(Activation::Sigsoftmax, &case.z);
        let row_max = case.y.iter().copied().fold(0.0, f64::max);
        for i in 0..cols {
            let what = format!("{} reference", case.name);
            assert_within(
                &format!("{what} y"),
                i,
                reference.y[i],
                case.y[i],
                bound.probability(case.y[i], row_max),
            );
        }
        let log_tolerances = log_bound(DType::F64, &case.z, &case.log_y);
        for i in 0..cols {
            let what = format!("{} reference log_y", case.name);
            assert_within(&what, i, reference.l[i], case.log_y[i], log_tolerances[i]);
        }
        let gradient =
            crate::common::backward_row(Activation::Sigsoftmax, &case.z, &case.y, &case.dy);
        for i in 0..cols {
            let what = format!("{} reference dz", case.name);
            assert_within(
                &what,
                i,
                gradient.dz[i],
                case.dz[i],
                bound.gradient(case.dz_err_scale[i]),
            );
        }
    }
}

// The fully masked row: the crate's documented behaviour is NaN for the whole row.
#[test]
fn golden_undefined_row_is_nan() {
    let golden = golden();
    for case in golden["undefined_cases"]
        .as_array()
        .expect("undefined_cases")
    {
        let z = numbers(&case["z"]);
        for device in devices() {
            let y = run_forward::<f32>(&device, &z, false);
            let l = run_forward::<f32>(&device, &z, true);
            let dz =
                run_backward::<f32>(&device, &z, &vec![f64::NAN; z.len()], &vec![1.0; z.len()]);
            for (op, values) in [("forward", y), ("log_forward", l), ("backward", dz)] {
                for (i, value) in values.iter().enumerate() {
                    assert!(
                        value.is_nan(),
                        "{op} of a fully masked row on {}: [{i}] is {value:e}, want NaN",
                        device.name()
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The 50257-wide row

/// The long row's inputs from the recipe in `meta.long_row_generator`: SplitMix64 from the
/// seed, `z_i = (out_i >> 40) 2^-20 - 8`, then `dy_i = (out_(vocab + i) >> 40) 2^-23 - 1`, then
/// `z_i = -inf` where `i % 1000 == 999`.
fn long_row_inputs(vocab: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = SplitMix64::new(seed);
    let mut z: Vec<f64> = (0..vocab)
        .map(|_| (rng.next_u64() >> 40) as f64 * 2f64.powi(-20) - 8.0)
        .collect();
    let dy: Vec<f64> = (0..vocab)
        .map(|_| (rng.next_u64() >> 40) as f64 * 2f64.powi(-23) - 1.0)
        .collect();
    for (i, value) in z.iter_mut().enumerate() {
        if i % 1000 == 999 {
            *value = f64::NEG_INFINITY;
        }
    }
    (z, dy)
}

fn long_case() -> (Value, Vec<f64>, Vec<f64>) {
    let golden = golden();
    let generator = &golden["meta"]["long_row_generator"];
    let vocab = generator["vocab"].as_u64().expect("vocab") as usize;
    let seed = generator["seed"].as_u64().expect("seed");
    let case = golden["long_cases"][0].clone();
    let (z, dy) = long_row_inputs(vocab, seed);
    (case, z, dy)
}

#[test]
fn long_row_generator_first_outputs() {
    let (case, z, dy) = long_case();
    let golden = golden();
    let seed = golden["meta"]["long_row_generator"]["seed"]
        .as_u64()
        .expect("seed");
    let check = &case["generator_check"];
    let mut rng = SplitMix64::new(seed);
    for (i, hex) in check["first_4_outputs_hex"]
        .as_array()
        .expect("hex outputs")
        .iter()
        .enumerate()
    {
        let hex = hex.as_str().expect("hex string");
        let want = u64::from_str_radix(hex.trim_start_matches("0x"), 16).expect("hex number");
        let got = rng.next_u64();
        assert_eq!(
            got, want,
            "SplitMix64 output {i}: got {got:#018x}, want {want:#018x}"
        );
    }
    for (i, want) in numbers(&check["z_first_4"]).into_iter().enumerate() {
        assert_eq!(z[i], want, "z[{i}]: got {}, want {want}", z[i]);
    }
    for (i, want) in numbers(&check["dy_first_4"]).into_iter().enumerate() {
        assert_eq!(dy[i], want, "dy[{i}]: got {}, want {want}", dy[i]);
    }
    let masked = z.iter().filter(|v| **v == f64::NEG_INFINITY).count();
    let want_masked = case["masked_count"].as_u64().expect("masked_count") as usize;
    assert_eq!(
        masked, want_masked,
        "masked entries: got {masked}, want {want_masked}"
    );
}

fn check_long_row<T: Element>(device: &Device) {
    let (case, z, dy) = long_case();
    let cols = z.len();
    let bound = Bound::for_dtype(T::DTYPE, cols);
    let what = |op: &str| format!("long row {op} {} on {}", T::DTYPE, device.name());
    let samples = &case["samples"];
    let index: Vec<usize> = samples["index"]
        .as_array()
        .expect("index")
        .iter()
        .map(|v| v.as_u64().expect("index") as usize)
        .collect();
    let y_exact = numbers(&samples["y"]);
    let log_exact = numbers(&samples["log_y"]);
    let dz_exact = numbers(&samples["dz"]);
    let y_max = number(&case["y_max"]);

    // Sampled inputs must match the generator.
    for (k, &i) in index.iter().enumerate() {
        assert_eq!(
            z[i],
            number(&samples["z"][k]),
            "generated z[{i}] differs from the sample"
        );
        assert_eq!(
            dy[i],
            number(&samples["dy"][k]),
            "generated dy[{i}] differs from the sample"
        );
    }

    let y = run_forward::<T>(device, &z, false);
    for (k, &i) in index.iter().enumerate() {
        assert_within(
            &what("forward"),
            i,
            y[i],
            y_exact[k],
            bound.probability(y_exact[k], y_max),
        );
    }
    let l = run_forward::<T>(device, &z, true);
    let reference = forward_row(Activation::Sigsoftmax, &z);
    let log_tolerances = log_bound(T::DTYPE, &z, &reference.l);
    for (k, &i) in index.iter().enumerate() {
        assert_within(
            &what("log_forward"),
            i,
            l[i],
            log_exact[k],
            log_tolerances[i],
        );
    }

    // Whole-row statistics of the output. With f32, each y_i is within F32_HINT * y_i of the
    // exact value, so a sum of y is within F32_HINT times the exact sum. With f64, each y_i is
    // within `e = u (16 + 2 sqrt(n)) y_max`, so a sum of n terms is within n e.
    let abs_dot: f64 = reference
        .y
        .iter()
        .zip(&dy)
        .map(|(v, d)| (v * d).abs())
        .sum();
    let abs_dy_sum: f64 = dy.iter().map(|d| d.abs()).sum();
    let element = derived_units(cols) * Precision::of(DType::F64).compute_u * y_max;
    let is_f32 = T::DTYPE == DType::F32;
    let pick = |f32_bound: f64, f64_bound: f64| if is_f32 { f32_bound } else { f64_bound };

    let y_sum: f64 = y.iter().sum();
    let want = number(&case["y_sum_fsum"]);
    assert_within(
        &what("sum of y"),
        0,
        y_sum,
        want,
        pick(F32_HINT * want, cols as f64 * element),
    );
    let y_sq_sum: f64 = y.iter().map(|v| v * v).sum();
    let want = number(&case["y_sq_sum"]);
    let tol = pick(2.0 * F32_HINT * want, 2.0 * y_max * cols as f64 * element);
    assert_within(&what("sum of y^2"), 0, y_sq_sum, want, tol);
    let got_max = y.iter().copied().fold(0.0, f64::max);
    let max_tol = pick(F32_HINT * y_max, element);
    assert_within(&what("max of y"), 0, got_max, y_max, max_tol);
    let argmax = case["y_argmax"].as_u64().expect("y_argmax") as usize;
    assert!(
        y[argmax] >= got_max - 2.0 * max_tol,
        "{}: y[{argmax}] = {:e} is not the max {got_max:e} within rounding",
        what("argmax"),
        y[argmax]
    );
    let dot: f64 = y.iter().zip(&dy).map(|(v, d)| v * d).sum();
    let want = number(&case["dot_dy_y"]);
    assert_within(
        &what("<dy, y>"),
        0,
        dot,
        want,
        pick(F32_HINT * abs_dot, abs_dy_sum * element),
    );

    // Backward from the exact y, with the golden error scale rebuilt from the reference.
    let dz = run_backward::<T>(device, &z, &reference.y, &dy);
    let scale: Vec<f64> = (0..cols)
        .map(|i| {
            let y = reference.y[i];
            weight_derivative(Activation::Sigsoftmax, z[i]) * y * (dy[i].abs() + abs_dot)
        })
        .collect();
    for (k, &i) in index.iter().enumerate() {
        assert_within(
            &what("backward"),
            i,
            dz[i],
            dz_exact[k],
            bound.gradient(scale[i]),
        );
    }
    let scale_sum: f64 = scale.iter().sum();
    let dz_sum: f64 = dz.iter().sum();
    assert_within(
        &what("sum of dz"),
        0,
        dz_sum,
        number(&case["dz_sum"]),
        bound.gradient(scale_sum),
    );
    let dz_abs_sum: f64 = dz.iter().map(|v| v.abs()).sum();
    assert_within(
        &what("sum of |dz|"),
        0,
        dz_abs_sum,
        number(&case["dz_abs_sum"]),
        bound.gradient(scale_sum),
    );
    let dz_max = dz.iter().fold(0.0f64, |acc, v| acc.max(v.abs()));
    let dz_argmax = case["dz_argmax_abs"].as_u64().expect("dz_argmax_abs") as usize;
    let want = number(&case["dz_max_abs"]);
    assert_within(
        &what("max |dz|"),
        dz_argmax,
        dz_max,
        want,
        bound.gradient(scale[dz_argmax]),
    );
}

#[test]
fn golden_long_row_f32() {
    for device in devices() {
        check_long_row::<f32>(&device);
    }
}

#[test]
fn golden_long_row_f64() {
    for device in devices() {
        check_long_row::<f64>(&device);
    }
}

#[test]
fn reference_matches_golden_long_row() {
    let (case, z, dy) = long_case();
    let cols = z.len();
    let bound = Bound::F64Derived { cols };
    let reference = forward_row(Activation::Sigsoftmax, &z);
    let samples = &case["samples"];
    let y_max = number(&case["y_max"]);
    let gradient = crate::common::backward_row(Activation::Sigsoftmax, &z, &reference.y, &dy);
    let abs_dot: f64 = reference
        .y
        .iter()
        .zip(&dy)
        .map(|(v, d)| (v * d).abs())
        .sum();
    for (k, index) in samples["index"]
        .as_array()
        .expect("index")
        .iter()
        .enumerate()
    {
        let i = index.as_u64().expect("index") as usize;
        let y = number(&samples["y"][k]);
        assert_within(
            "reference long row y",
            i,
            reference.y[i],
            y,
            bound.probability(y, y_max),
        );
        let log_y = number(&samples["log_y"][k]);
        let u = Precision::of(DType::F64).compute_u;
        let log_tol = u * (16.0 * reference.log_scale(i, u) + 2.0 * (cols as f64).sqrt());
        assert_within(
            "reference long row log_y",
            i,
            reference.l[i],
            log_y,
            log_tol,
        );
        let scale = weight_derivative(Activation::Sigsoftmax, z[i]) * y * (dy[i].abs() + abs_dot);
        let dz = number(&samples["dz"][k]);
        assert_within(
            "reference long row dz",
            i,
            gradient.dz[i],
            dz,
            bound.gradient(scale),
        );
    }
    let log_normalizer = number(&case["log_normalizer"]);
    // log sum_j s(z_j) exp(z_j) = m + log s(m) + log S, with S the sum of the shifted weights.
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let shifted_sum = crate::common::compensated_sum(
        z.iter()
            .filter(|v| v.is_finite())
            .map(|&v| ((v - m) + (log_sigmoid(v) - log_sigmoid(m))).exp()),
    );
    let got = m + log_sigmoid(m) + shifted_sum.ln();
    let u = Precision::of(DType::F64).compute_u;
    assert_within(
        "reference log normalizer",
        0,
        got,
        log_normalizer,
        16.0 * u * got.abs(),
    );
}
