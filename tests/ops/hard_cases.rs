//! The hard rows of the numerics contract: finite logits of any magnitude give finite outputs
//! that match the reference, on every op, storage type, activation and device. Each row sits in
//! the middle of a 3-row matrix between two ordinary rows, so a kernel that leaks state between
//! rows fails too.

use sigsoftmax::{bf16, f16, Activation, Device, Element, Shape};

use crate::common::{
    check_backward, check_cross_entropy, check_forward, check_log_backward, check_log_forward,
    devices, random_upstream, unmasked_targets, CrossEntropySpec, SplitMix64, ACTIVATIONS,
};

/// Surrounds `row` with two ordinary rows.
fn embed(row: &[f64]) -> (Shape, Vec<f64>) {
    let cols = row.len();
    let mut rng = SplitMix64::new(7);
    let mut z: Vec<f64> = (0..cols).map(|_| 3.0 * rng.next_signed()).collect();
    z.extend_from_slice(row);
    z.extend((0..cols).map(|_| 3.0 * rng.next_signed()));
    (Shape::new(3, cols).expect("valid shape"), z)
}

fn check_hard_row_on<T: Element>(device: &Device, activation: Activation, row: &[f64]) {
    let (shape, z) = embed(row);
    let mut rng = SplitMix64::new(11);
    let dy = random_upstream(&mut rng, shape.len());
    let context = format!(
        "{} {} on {} for row {row:?}",
        activation.name(),
        T::DTYPE,
        device.name()
    );

    let y = check_forward::<T>(device, activation, shape, &z);
    assert_finite(&format!("forward {context}"), &y);
    let l = check_log_forward::<T>(device, activation, shape, &z);
    assert_finite(&format!("log_forward {context}"), &l);
    let dz = check_backward::<T>(device, activation, shape, &z, &dy);
    assert_finite(&format!("backward {context}"), &dz);
    let dz = check_log_backward::<T>(device, activation, shape, &z, &dy);
    assert_finite(&format!("log_backward {context}"), &dz);

    let targets = unmasked_targets(&mut rng, shape, &z);
    let output = check_cross_entropy::<T>(
        device,
        activation,
        shape,
        &z,
        &targets,
        &CrossEntropySpec::plain(),
    );
    assert!(
        output.total.is_finite(),
        "cross_entropy {context}: loss {} is not finite",
        output.total
    );
    assert_finite(
        &format!("cross_entropy gradient {context}"),
        &output.grad.expect("gradient"),
    );
}

fn assert_finite<T: Element>(what: &str, values: &[T]) {
    for (index, value) in values.iter().enumerate() {
        let value = value.to_f64();
        assert!(
            value.is_finite(),
            "{what}: entry {index} is {value:e}, want a finite value"
        );
    }
}

fn check_hard_row<T: Element>(row: &[f64]) {
    for device in devices() {
        for activation in ACTIVATIONS {
            check_hard_row_on::<T>(&device, activation, row);
        }
    }
}

/// Runs a hard row in every storage type; f16 only when it does not overflow f16's range.
fn check_hard_row_all_types(row: &[f64]) {
    check_hard_row::<f32>(row);
    check_hard_row::<f64>(row);
    check_hard_row::<bf16>(row);
    if row.iter().all(|v| v.abs() <= f16::MAX.to_f64()) {
        check_hard_row::<f16>(row);
    }
}

// Both sigmoid factors underflow in f32 (s(-1e4) = 0), so only the stable form is finite.
#[test]
fn hard_row_minus_1e4() {
    check_hard_row_all_types(&[-1e4, -1e4 - 1.0]);
}

// exp(88) is near f32's overflow threshold (88.72).
#[test]
fn hard_row_88_87() {
    check_hard_row_all_types(&[88.0, 87.0]);
}

// s(z) exp(z) = exp(-220) underflows f32 even though the normalized result is ordinary.
#[test]
fn hard_row_minus_110() {
    check_hard_row_all_types(&[-110.0, -111.0]);
}

// exp(12) = 162755 overflows f16 (max 65504), so a computation in f16 fails.
#[test]
fn hard_row_f16_12_11() {
    check_hard_row_all_types(&[12.0, 11.0]);
}

// 3e38 is near f32's max: z - m and every intermediate must stay finite. f16 cannot hold it.
#[test]
fn hard_row_3e38_0() {
    check_hard_row_all_types(&[3e38, 0.0]);
}

// One column: y = 1 and every gradient 0, for logits of any magnitude.
#[test]
fn single_column_rows() {
    let shape = Shape::new(6, 1).expect("valid shape");
    let z = [-1e4, -110.0, -3.0, 0.0, 88.0, 1e4];
    crate::common::check_all_ops_everywhere::<f32>(shape, &z, 1);
    crate::common::check_all_ops_everywhere::<f64>(shape, &z, 2);
    crate::common::check_all_ops_everywhere::<bf16>(shape, &z, 3);
    crate::common::check_all_ops_everywhere::<f16>(shape, &z, 4);
}
