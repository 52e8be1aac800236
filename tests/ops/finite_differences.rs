//! Gradients of the f64 path against central finite differences of the engine's own forward,
//! log forward and cross-entropy loss.
//!
//! With step `h`, the central difference of a scalar `phi` along `z_k` differs from the
//! derivative by at most `h^2 / 6 * M3 + e / h`, where `M3` bounds the third derivative along
//! `z_k` and `e` bounds the error of evaluating `phi`. Along one coordinate, every op here is a
//! function of `p = y_k = s(G)` with `G = g(z_k) - log R` and `R` fixed, so the bounds
//! `|s'| <= 1/4`, `|s''| <= 0.0963`, `|s'''| <= 1/8`, `g' < 2`, `|g''| <= 1/4` and
//! `|g'''| <= 0.0963` give `|p'''| <= 1.2` and `|d^3/dz^3 log(e^g + R)| <= 1.25`:
//! - `phi = sum_i dy_i y_i = c + (dy_k - c) p` with `|c| <= max |dy|`, so `M3 <= 2.4 max |dy|`;
//! - `phi = sum_i dl_i l_i`, so `M3 <= 1.35 sum_i |dl_i|`;
//! - `phi = sum_r c_r loss_r` with `loss_r = -sum_i q_i l_i` and `sum_i q_i <= 1`, so
//!   `M3 <= 1.35 |c_r|` for the row of `z_k`.
//!
//! The logits are rounded to multiples of 2^-40 and stay below 2^8 in magnitude, so `z_k +- h`
//! with `h = 2^-17` is exact. They stay that small because the rounding term grows as
//! `u |l| / h`, which at logits of 1e4 exceeds the gradient itself.
//!
//! The engine's own rounding adds its bound from `common`; for backward,
//! `scale_k <= g' y_k (|dy_k| + sum_j |dy_j| y_j) <= 4 max |dy|`, and for log backward
//! `scale_k <= 4 sum_i |dl_i|`.

use proptest::prelude::*;
use sigsoftmax::cpu::Real;
use sigsoftmax::{Activation, Device, Reduction, Shape};

use crate::common::{
    compensated_sum, cross_entropy_ref, devices, forward_row, is_masked, random_upstream,
    unmasked_targets, zero_at_masks, CrossEntropySpec, Precision, SplitMix64, UpstreamSpec,
    ACTIVATIONS,
};
use crate::properties::{build_logits, matrix_params, MatrixParams};

const STEP: f64 = 1.0 / 131072.0; // 2^-17

fn forward_f64(device: &Device, activation: Activation, shape: Shape, z: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; shape.len()];
    device
        .forward(activation, shape, z, &mut y)
        .expect("forward failed");
    y
}

fn log_forward_f64(device: &Device, activation: Activation, shape: Shape, z: &[f64]) -> Vec<f64> {
    let mut l = vec![0.0; shape.len()];
    device
        .log_forward(activation, shape, z, &mut l)
        .expect("log_forward failed");
    l
}

/// Central difference of `phi` along `z[k]`.
fn central_difference(z: &[f64], k: usize, phi: impl Fn(&[f64]) -> f64) -> f64 {
    let mut shifted = z.to_vec();
    shifted[k] = z[k] + STEP;
    let up = phi(&shifted);
    shifted[k] = z[k] - STEP;
    let down = phi(&shifted);
    (up - down) / (2.0 * STEP)
}

fn assert_matches_difference(
    op: &str,
    device: &Device,
    k: usize,
    got: f64,
    difference: f64,
    tol: f64,
) {
    let diff = (got - difference).abs();
    assert!(
        diff <= tol,
        "{op} on {}: d/dz[{k}] got {got:e}, central difference {difference:e}, |diff| {diff:e} > tol {tol:e}",
        device.name()
    );
}

/// `sum_i weights_i values_i` over unmasked entries.
fn masked_dot(z: &[f64], weights: &[f64], values: &[f64]) -> f64 {
    compensated_sum(
        (0..z.len())
            .filter(|&i| !is_masked(z[i]))
            .map(|i| weights[i] * values[i]),
    )
}

fn check_forward_gradient(
    device: &Device,
    activation: Activation,
    shape: Shape,
    z: &[f64],
    dy: &[f64],
) {
    let u = Precision::of(sigsoftmax::DType::F64).compute_u;
    let n = shape.cols() as f64;
    let units = 16.0 + 2.0 * n.sqrt();
    let y = forward_f64(device, activation, shape, z);
    let mut dz = vec![0.0; shape.len()];
    device
        .backward(activation, shape, z, &y, dy, &mut dz)
        .expect("backward failed");

    let max_dy = dy.iter().fold(0.0f64, |acc, v| acc.max(v.abs()));
    // Each y_i is within u * units * y_max <= u * units of the exact value.
    let evaluation_error = u * units * n * max_dy;
    let bound = STEP * STEP / 6.0 * 2.4 * max_dy + evaluation_error / STEP;
    for k in (0..shape.len()).filter(|&k| !is_masked(z[k])) {
        let phi = |z: &[f64]| masked_dot(z, dy, &forward_f64(device, activation, shape, z));
        let difference = central_difference(z, k, phi);
        let tol = bound + u * units * 4.0 * max_dy;
        assert_matches_difference("backward", device, k, dz[k], difference, tol);
    }
}

fn check_log_forward_gradient(
    device: &Device,
    activation: Activation,
    shape: Shape,
    z: &[f64],
    dl: &[f64],
) {
    let u = Precision::of(sigsoftmax::DType::F64).compute_u;
    let cols = shape.cols();
    let sum_units = 2.0 * (cols as f64).sqrt();
    let l = log_forward_f64(device, activation, shape, z);
    let mut dz = vec![0.0; shape.len()];
    device
        .log_backward(activation, shape, z, &l, dl, &mut dz)
        .expect("log_backward failed");

    // phi's error sums each |dl_i| times the log bound of its entry (see `common`).
    let mut evaluation_error = 0.0;
    for (row, z_row) in z.chunks(cols).enumerate() {
        let reference = forward_row(activation, z_row);
        for i in (0..cols).filter(|&i| !is_masked(z_row[i])) {
            evaluation_error +=
                dl[row * cols + i].abs() * u * (16.0 * reference.log_scale(i, u) + sum_units);
        }
    }
    let abs_dl: f64 = dl.iter().map(|v| v.abs()).sum();
    let bound = STEP * STEP / 6.0 * 1.35 * abs_dl + evaluation_error / STEP;
    for k in (0..shape.len()).filter(|&k| !is_masked(z[k])) {
        let phi = |z: &[f64]| masked_dot(z, dl, &log_forward_f64(device, activation, shape, z));
        let difference = central_difference(z, k, phi);
        let tol = bound + u * (16.0 + sum_units) * 4.0 * abs_dl;
        assert_matches_difference("log_backward", device, k, dz[k], difference, tol);
    }
}

fn check_cross_entropy_gradient(
    device: &Device,
    activation: Activation,
    shape: Shape,
    z: &[f64],
    targets: &[i64],
    spec: &CrossEntropySpec,
) {
    let u = Precision::of(sigsoftmax::DType::F64).compute_u;
    let options = spec.options();
    let rows = shape.rows();
    let counted = targets
        .iter()
        .filter(|&&t| Some(t) != spec.ignore_index)
        .count();
    let divisor = if spec.reduction == Reduction::Mean {
        counted as f64
    } else {
        1.0
    };
    let factors: Vec<f64> = (0..rows)
        .map(|row| {
            let upstream = match &spec.upstream {
                UpstreamSpec::One => 1.0,
                UpstreamSpec::Scalar(value) => *value,
                UpstreamSpec::PerRow(values) => values[row] as f64,
            };
            upstream / divisor
        })
        .collect();
    // phi = sum_r c_r loss_r: the scalar whose gradient the op returns.
    let phi = |z: &[f64]| {
        let mut losses = vec![0.0f64; rows];
        device
            .cross_entropy(activation, shape, z, targets, &options, &mut losses, None)
            .expect("cross_entropy failed");
        compensated_sum((0..rows).map(|row| factors[row] * losses[row].to_f64()))
    };
    let mut losses = vec![0.0f64; rows];
    let mut grad = vec![0.0f64; shape.len()];
    device
        .cross_entropy(
            activation,
            shape,
            z,
            targets,
            &options,
            &mut losses,
            Some(&mut grad),
        )
        .expect("cross_entropy failed");

    let reference = cross_entropy_ref(activation, shape, z, targets, spec, u);
    let evaluation_error: f64 = (0..rows)
        .map(|row| factors[row].abs() * u * reference.loss_units[row])
        .sum();
    let cols = shape.cols();
    for k in (0..shape.len()).filter(|&k| !is_masked(z[k])) {
        let factor = factors[k / cols].abs();
        let bound = STEP * STEP / 6.0 * 1.35 * factor + evaluation_error / STEP;
        let difference = central_difference(z, k, phi);
        let tol = bound + u * reference.grad_units[k];
        assert_matches_difference("cross_entropy", device, k, grad[k], difference, tol);
    }
}

proptest! {
    // Each case costs two evaluations per element, so shapes stay small (rows <= 3, cols <= 24).
    #![proptest_config(ProptestConfig {
        cases: 24,
        // A failure prints its parameters, seed included, which reproduce it; no regression files.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn forward_gradient_matches_differences(params in matrix_params(2.0, false)) {
        let (shape, z) = small_logits(params.clone());
        let dy = random_upstream(&mut SplitMix64::new(params.seed ^ 1), shape.len());
        for device in devices() {
            for activation in ACTIVATIONS {
                check_forward_gradient(&device, activation, shape, &z, &dy);
            }
        }
    }

    #[test]
    fn log_forward_gradient_matches_differences(params in matrix_params(2.0, false)) {
        let (shape, z) = small_logits(params.clone());
        let dl = random_upstream(&mut SplitMix64::new(params.seed ^ 2), shape.len());
        let dl = zero_at_masks(&z, &dl);
        for device in devices() {
            for activation in ACTIVATIONS {
                check_log_forward_gradient(&device, activation, shape, &z, &dl);
            }
        }
    }

    #[test]
    fn cross_entropy_gradient_matches_differences(
        params in matrix_params(2.0, false),
        label_smoothing in prop_oneof![Just(0.0), 0.0f64..=1.0],
        reduction in prop_oneof![Just(Reduction::None), Just(Reduction::Sum), Just(Reduction::Mean)],
    ) {
        let (shape, z) = small_logits(params.clone());
        let mut rng = SplitMix64::new(params.seed ^ 3);
        let mut targets = unmasked_targets(&mut rng, shape, &z);
        if shape.rows() > 1 {
            targets[0] = -100; // one ignored row, whose gradient must be 0
        }
        let upstream = if reduction == Reduction::None {
            UpstreamSpec::PerRow((0..shape.rows()).map(|_| (2.0 * rng.next_signed()) as f32).collect())
        } else {
            UpstreamSpec::Scalar(2.0 * rng.next_signed())
        };
        let spec = CrossEntropySpec { ignore_index: Some(-100), label_smoothing, reduction, upstream };
        for device in devices() {
            for activation in ACTIVATIONS {
                check_cross_entropy_gradient(&device, activation, shape, &z, &targets, &spec);
            }
        }
    }
}

/// Builds logits of at most 3 x 24, because the cost grows with the square of the element count.
/// They lie below 2^8 in magnitude on multiples of 2^-40, so steps of 2^-17 are exact, and every
/// row keeps one unmasked entry, so no row is undefined.
fn small_logits(mut params: MatrixParams) -> (Shape, Vec<f64>) {
    params.rows = params.rows.min(3);
    params.cols = params.cols % 24 + 1;
    params.offset *= 1e-2;
    let (shape, mut z) = build_logits(&params);
    let grid = 2f64.powi(40);
    for value in z.iter_mut().filter(|v| v.is_finite()) {
        *value = (*value * grid).round() / grid;
    }
    let mut rng = SplitMix64::new(params.seed ^ 4);
    for row in z.chunks_mut(shape.cols()) {
        if row.iter().all(|&v| is_masked(v)) {
            let at = rng.next_below(row.len());
            row[at] = params.scale * rng.next_signed();
        }
    }
    (shape, z)
}
