//! Cross-entropy cases with exactly known answers: label smoothing restricted to unmasked
//! entries, ignored rows, the mean over no rows, masked targets, and a gradient that does not
//! sum to zero.

use sigsoftmax::cpu::Real;
use sigsoftmax::{Activation, Device, Element, Reduction, Shape};

use crate::common::{
    check_cross_entropy, cross_entropy_ref, devices, CrossEntropySpec, Precision, SplitMix64,
    UpstreamSpec, ACTIVATIONS,
};

fn run<T: Element>(
    device: &Device,
    activation: Activation,
    shape: Shape,
    z: &[f64],
    targets: &[i64],
    spec: &CrossEntropySpec,
) -> (f64, Vec<f64>, Vec<f64>) {
    let input: Vec<T> = z.iter().map(|&v| T::from_f64(v)).collect();
    let mut losses = vec![T::Accum::default(); shape.rows()];
    let mut grad = vec![T::default(); shape.len()];
    let total = device
        .cross_entropy(
            activation,
            shape,
            &input,
            targets,
            &spec.options(),
            &mut losses,
            Some(&mut grad),
        )
        .expect("cross_entropy failed");
    let losses = losses.iter().map(|v| v.to_f64()).collect();
    let grad = grad.iter().map(|v| v.to_f64()).collect();
    (total, losses, grad)
}

// z = [0, -inf, 0, -inf], target 0, smoothing 0.5: y = [1/2, 0, 1/2, 0] for both activations,
// q = [0.5 + 0.125, 0, 0.125, 0] (masked entries get no share), Q = 0.75, so the loss is
// 0.75 ln 2 and the gradient g'(0) (Q y - q) = [-0.25, 0, 0.25, 0] g'(0), with g'(0) = 1.5 for
// sigsoftmax and 1 for softmax. Smoothing over all four columns would give an infinite loss.
// The reference must give these values; the engine is then compared with the reference.
#[test]
fn label_smoothing_skips_masked_entries() {
    let shape = Shape::new(1, 4).expect("valid shape");
    let z = [0.0, f64::NEG_INFINITY, 0.0, f64::NEG_INFINITY];
    let spec = CrossEntropySpec {
        label_smoothing: 0.5,
        ..CrossEntropySpec::plain()
    };
    for activation in ACTIVATIONS {
        let reference = cross_entropy_ref(activation, shape, &z, &[0], &spec, f64::EPSILON / 2.0);
        let want_loss = 0.75 * std::f64::consts::LN_2;
        let diff = (reference.losses[0] - want_loss).abs();
        assert!(
            diff <= 4.0 * f64::EPSILON,
            "reference loss {:e}, want {want_loss:e}",
            reference.losses[0]
        );
        let slope = if activation == Activation::Sigsoftmax {
            1.5
        } else {
            1.0
        };
        let want_grad = [-0.25 * slope, 0.0, 0.25 * slope, 0.0];
        for i in 0..4 {
            let diff = (reference.grad[i] - want_grad[i]).abs();
            assert!(
                diff <= 4.0 * f64::EPSILON,
                "reference grad[{i}] {:e}, want {:e}",
                reference.grad[i],
                want_grad[i]
            );
        }
    }
    for device in devices() {
        for activation in ACTIVATIONS {
            for_each_dtype!(check_smoothing_case, &device, activation, shape, &z, &spec);
        }
    }
}

fn check_smoothing_case<T: Element>(
    device: &Device,
    activation: Activation,
    shape: Shape,
    z: &[f64],
    spec: &CrossEntropySpec,
) {
    let output = check_cross_entropy::<T>(device, activation, shape, z, &[0], spec);
    let loss = output.losses[0].to_f64();
    assert!(
        loss.is_finite(),
        "{} {} on {}: loss {loss}, want finite",
        activation.name(),
        T::DTYPE,
        device.name()
    );
}

// The sigsoftmax cross-entropy gradient sums to sum_i (1 + s(-z_i)) (Q y_i - q_i), which is not
// zero; softmax's sums to Q - Q = 0. Compares each row sum with the reference's.
#[test]
fn gradient_row_sum_not_zero() {
    let shape = Shape::new(4, 50).expect("valid shape");
    let mut rng = SplitMix64::new(42);
    let z: Vec<f64> = (0..shape.len()).map(|_| 4.0 * rng.next_signed()).collect();
    let targets = [3, 17, 0, 49];
    let spec = CrossEntropySpec {
        reduction: Reduction::Sum,
        ..CrossEntropySpec::plain()
    };
    for device in devices() {
        for activation in ACTIVATIONS {
            let output =
                check_cross_entropy::<f32>(&device, activation, shape, &z, &targets, &spec);
            let grad = output.grad.expect("gradient");
            let u = Precision::of(sigsoftmax::DType::F32).compute_u;
            let reference = cross_entropy_ref(
                activation,
                shape,
                &crate::common::round_to::<f32>(&z),
                &targets,
                &spec,
                u,
            );
            for row in 0..shape.rows() {
                let range = row * 50..(row + 1) * 50;
                let got: f64 = grad[range.clone()].iter().map(|&v| v as f64).sum();
                let want: f64 = reference.grad[range.clone()].iter().sum();
                let tol: f64 = reference.grad_units[range].iter().sum::<f64>() * u;
                let context = format!("{} on {}: row {row}", activation.name(), device.name());
                assert!(
                    (got - want).abs() <= tol,
                    "{context}: gradient sum {got:e}, want {want:e} (tol {tol:e})"
                );
                if activation == Activation::Sigsoftmax {
                    assert!(
                        want.abs() > 1e-3,
                        "{context}: reference gradient sum {want:e} is too close to 0 to test"
                    );
                }
            }
        }
    }
}

// Every row ignored: the mean is 0/0 = NaN, every loss and gradient is 0.
#[test]
fn mean_over_no_rows_is_nan() {
    let shape = Shape::new(3, 5).expect("valid shape");
    let z: Vec<f64> = (0..15).map(|i| i as f64 * 0.3 - 2.0).collect();
    let targets = [-100, -100, -100];
    for device in devices() {
        for activation in ACTIVATIONS {
            let (total, losses, grad) = run::<f32>(
                &device,
                activation,
                shape,
                &z,
                &targets,
                &CrossEntropySpec::plain(),
            );
            assert!(
                total.is_nan(),
                "{} on {}: mean over no rows is {total:e}, want NaN",
                activation.name(),
                device.name()
            );
            assert!(
                losses.iter().all(|&v| v == 0.0),
                "losses of ignored rows: {losses:?}, want all 0"
            );
            assert!(
                grad.iter().all(|&v| v == 0.0),
                "gradient of ignored rows: {grad:?}, want all 0"
            );
        }
    }
}

// An ignore index that is also a class: rows with that target are ignored, the others counted.
#[test]
fn ignore_index_inside_class_range() {
    let shape = Shape::new(3, 6).expect("valid shape");
    let mut rng = SplitMix64::new(8);
    let z: Vec<f64> = (0..shape.len()).map(|_| 2.0 * rng.next_signed()).collect();
    let targets = [2, 4, 2];
    let spec = CrossEntropySpec {
        ignore_index: Some(2),
        ..CrossEntropySpec::plain()
    };
    for device in devices() {
        for activation in ACTIVATIONS {
            let output =
                check_cross_entropy::<f32>(&device, activation, shape, &z, &targets, &spec);
            let losses: Vec<f64> = output.losses.iter().map(|&v| v as f64).collect();
            assert_eq!(
                losses[0], 0.0,
                "row 0 targets the ignore index: loss {}",
                losses[0]
            );
            assert!(losses[1] > 0.0, "row 1 is counted: loss {}", losses[1]);
            let mean_tol = 1e-6 * losses[1];
            let diff = (output.total - losses[1]).abs();
            assert!(
                diff <= mean_tol,
                "mean over one counted row: {:e}, row loss {:e}",
                output.total,
                losses[1]
            );
        }
    }
}

// A target whose logit is masked has probability 0: the loss is +inf.
#[test]
fn masked_target_gives_infinite_loss() {
    let shape = Shape::new(2, 4).expect("valid shape");
    let z = [1.0, f64::NEG_INFINITY, 0.5, -1.0, 0.0, 1.0, 2.0, 3.0];
    for device in devices() {
        for activation in ACTIVATIONS {
            let spec = CrossEntropySpec {
                reduction: Reduction::None,
                ..CrossEntropySpec::plain()
            };
            let (total, losses, _) = run::<f32>(&device, activation, shape, &z, &[1, 2], &spec);
            let context = format!("{} on {}", activation.name(), device.name());
            assert_eq!(
                losses[0],
                f64::INFINITY,
                "{context}: loss of a masked target is {}, want inf",
                losses[0]
            );
            assert!(
                losses[1].is_finite(),
                "{context}: loss of row 1 is {}, want finite",
                losses[1]
            );
            assert_eq!(
                total,
                f64::INFINITY,
                "{context}: summed loss is {total}, want inf"
            );
        }
    }
}

// Per-row upstream values scale each row's gradient; a zero upstream zeroes it exactly.
#[test]
fn per_row_upstream_scales_rows() {
    let shape = Shape::new(3, 40).expect("valid shape");
    let mut rng = SplitMix64::new(21);
    let z: Vec<f64> = (0..shape.len()).map(|_| 5.0 * rng.next_signed()).collect();
    let targets = [0, 20, 39];
    let spec = CrossEntropySpec {
        reduction: Reduction::None,
        upstream: UpstreamSpec::PerRow(vec![2.0, 0.0, -0.5]),
        ..CrossEntropySpec::plain()
    };
    for device in devices() {
        for activation in ACTIVATIONS {
            let output =
                check_cross_entropy::<f32>(&device, activation, shape, &z, &targets, &spec);
            let grad = output.grad.expect("gradient");
            let zeroed = &grad[40..80];
            assert!(
                zeroed.iter().all(|&v| v == 0.0),
                "row with upstream 0 has gradient {zeroed:?}"
            );
        }
    }
}
