//! Both sides of every dispatch threshold, bit-identical results across thread counts and
//! repeated runs, in-place variants, and very long rows.
//!
//! The CPU engine reads each row in chunks of `cpu::CHUNK` elements and spreads the work over
//! rows, or over the chunks of each row when rows are few. Its inner loops run 8 (AVX2) or 16
//! (AVX-512) f32 lanes, with a scalar tail. The sizes below sit on both sides of each switch.

use sigsoftmax::cpu::{self, CHUNK};
use sigsoftmax::{bf16, f16, Activation, Device, Element, Shape};

use crate::common::{
    bit_patterns, check_all_ops, check_all_ops_everywhere, devices, random_upstream, round_to,
    to_storage, unmasked_targets, with_threads, CrossEntropySpec, SplitMix64, UpstreamSpec,
};

/// Row lengths around each switch, with the branch each one hits.
fn threshold_cols() -> Vec<usize> {
    vec![
        7,
        8,
        9, // one 8-lane register: tail only, exactly one register, one register and a tail
        15,
        16,
        17, // the same around a 16-lane register
        31,
        32,
        33, // two registers of either width
        CHUNK - 1,
        CHUNK,
        CHUNK + 1, // one chunk, exactly one, one and a 1-element tail chunk
        2 * CHUNK - 1,
        2 * CHUNK,
        2 * CHUNK + 1, // the same around two chunks, where a split row has two parts
    ]
}

/// Row counts around the thread counts used (1, 2 and 3) and a large count where the engine
/// splits over rows only.
const THRESHOLD_ROWS: [usize; 7] = [1, 2, 3, 7, 8, 9, 64];

const THREAD_COUNTS: [usize; 3] = [1, 2, 3];

fn random_matrix(shape: Shape, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    let mut z: Vec<f64> = (0..shape.len()).map(|_| 6.0 * rng.next_signed()).collect();
    // A masked entry at the first entry of the second chunk, or at the end of a shorter row.
    if shape.cols() > 1 {
        for row in z.chunks_mut(shape.cols()) {
            let at = (row.len() - 1).min(CHUNK);
            row[at] = f64::NEG_INFINITY;
        }
    }
    z
}

fn shapes() -> impl Iterator<Item = Shape> {
    THRESHOLD_ROWS.into_iter().flat_map(|rows| {
        threshold_cols()
            .into_iter()
            .map(move |cols| Shape::new(rows, cols).expect("valid shape"))
    })
}

fn check_thresholds<T: Element>(device: &Device) {
    for shape in shapes() {
        let z = random_matrix(shape, shape.len() as u64);
        with_threads(2, || {
            check_all_ops::<T>(device, Activation::Sigsoftmax, shape, &z, 9)
        });
    }
}

#[test]
fn thresholds_match_reference() {
    for device in devices() {
        for_each_dtype!(check_thresholds, &device);
    }
}

/// The bit patterns of every output of every op, in a fixed order.
fn run_all_ops<T: Element>(
    device: &Device,
    shape: Shape,
    z: &[f64],
    seed: u64,
) -> Vec<(&'static str, Vec<u64>)> {
    let activation = Activation::Sigsoftmax;
    let mut rng = SplitMix64::new(seed);
    let z_t: Vec<T> = to_storage(&round_to::<T>(z));
    let dy: Vec<T> = to_storage(&random_upstream(&mut rng, shape.len()));
    let targets = unmasked_targets(&mut rng, shape, &round_to::<T>(z));
    let spec = CrossEntropySpec {
        label_smoothing: 0.2,
        upstream: UpstreamSpec::Scalar(1.5),
        ..CrossEntropySpec::plain()
    };
    let mut outputs = Vec::new();

    let mut y = vec![T::default(); shape.len()];
    device
        .forward(activation, shape, &z_t, &mut y)
        .expect("forward failed");
    outputs.push(("forward", bit_patterns(&y)));
    let mut l = vec![T::default(); shape.len()];
    device
        .log_forward(activation, shape, &z_t, &mut l)
        .expect("log_forward failed");
    outputs.push(("log_forward", bit_patterns(&l)));
    let mut dz = vec![T::default(); shape.len()];
    device
        .backward(activation, shape, &z_t, &y, &dy, &mut dz)
        .expect("backward failed");
    outputs.push(("backward", bit_patterns(&dz)));
    device
        .log_backward(activation, shape, &z_t, &l, &dy, &mut dz)
        .expect("log_backward failed");
    outputs.push(("log_backward", bit_patterns(&dz)));

    let mut losses = vec![T::Accum::default(); shape.rows()];
    let total = device
        .cross_entropy(
            activation,
            shape,
            &z_t,
            &targets,
            &spec.options(),
            &mut losses,
            Some(&mut dz),
        )
        .expect("cross_entropy failed");
    outputs.push(("cross_entropy gradient", bit_patterns(&dz)));
    let losses: Vec<u64> = losses
        .iter()
        .map(|v| sigsoftmax::cpu::Real::to_f64(*v).to_bits())
        .collect();
    outputs.push(("cross_entropy losses", losses));
    outputs.push(("cross_entropy loss", vec![total.to_bits()]));
    outputs
}

fn assert_same_bits(
    what: &str,
    shape: Shape,
    first: &[(&str, Vec<u64>)],
    second: &[(&str, Vec<u64>)],
) {
    for ((op, expected), (_, got)) in first.iter().zip(second) {
        if let Some(index) = (0..expected.len()).find(|&i| expected[i] != got[i]) {
            let (want, got) = (f64::from_bits(expected[index]), f64::from_bits(got[index]));
            panic!("{op} shape {shape}, {what}: entry {index} is {got:e}, first run gave {want:e}");
        }
    }
}

fn check_determinism<T: Element>(device: &Device) {
    for shape in shapes() {
        let z = random_matrix(shape, shape.len() as u64 + 1);
        let first = with_threads(1, || run_all_ops::<T>(device, shape, &z, 5));
        for threads in THREAD_COUNTS {
            let again = with_threads(threads, || run_all_ops::<T>(device, shape, &z, 5));
            let what = format!("{} with {threads} threads on {}", T::DTYPE, device.name());
            assert_same_bits(&what, shape, &first, &again);
        }
        let repeated = with_threads(2, || run_all_ops::<T>(device, shape, &z, 5));
        let what = format!("{} repeated with 2 threads on {}", T::DTYPE, device.name());
        assert_same_bits(&what, shape, &first, &repeated);
    }
}

#[test]
fn thread_counts_give_identical_bits() {
    for device in devices() {
        for_each_dtype!(check_determinism, &device);
    }
}

// ---------------------------------------------------------------------------------------------
// In-place variants (CPU only: the device API has no in-place ops)

fn in_place_shapes() -> Vec<Shape> {
    [
        (1, 2 * CHUNK + 1),
        (3, 33),
        (9, CHUNK + 1),
        (64, 17),
        (2, 1),
    ]
    .into_iter()
    .map(|(rows, cols)| Shape::new(rows, cols).expect("valid shape"))
    .collect()
}

/// Logits with a NaN row and a masked entry, so the in-place paths see those too.
fn in_place_logits(shape: Shape) -> Vec<f64> {
    let mut z = random_matrix(shape, 77);
    if shape.rows() > 2 {
        z[shape.cols()] = f64::NAN;
    }
    z
}

fn check_forward_in_place<T: Element>(threads: usize) {
    for shape in in_place_shapes() {
        let z: Vec<T> = to_storage(&in_place_logits(shape));
        for activation in [Activation::Sigsoftmax, Activation::Softmax] {
            let (expected, in_place) = with_threads(threads, || {
                let mut y = vec![T::default(); shape.len()];
                cpu::forward(activation, shape, &z, &mut y).expect("forward failed");
                let mut in_place = z.clone();
                cpu::forward_in_place(activation, shape, &mut in_place)
                    .expect("forward_in_place failed");
                (y, in_place)
            });
            let what = format!(
                "forward_in_place {} {} with {threads} threads",
                activation.name(),
                T::DTYPE
            );
            assert_same_bits(
                &what,
                shape,
                &[("forward", bit_patterns(&expected))],
                &[("", bit_patterns(&in_place))],
            );
        }
    }
}

#[test]
fn forward_in_place_matches_forward() {
    for threads in [1, 2] {
        for_each_dtype!(check_forward_in_place, threads);
    }
}

fn check_cross_entropy_in_place<T: Element>(threads: usize) {
    for shape in in_place_shapes() {
        let z64 = in_place_logits(shape);
        let z: Vec<T> = to_storage(&z64);
        let mut rng = SplitMix64::new(3);
        let mut targets = unmasked_targets(&mut rng, shape, &round_to::<T>(&z64));
        targets[shape.rows() - 1] = -100;
        let spec = CrossEntropySpec {
            label_smoothing: 0.3,
            ..CrossEntropySpec::plain()
        };
        let options = spec.options();
        for activation in [Activation::Sigsoftmax, Activation::Softmax] {
            let (expected, in_place) = with_threads(threads, || {
                let mut losses = vec![T::Accum::default(); shape.rows()];
                let mut grad = vec![T::default(); shape.len()];
                let total = cpu::cross_entropy(
                    activation,
                    shape,
                    &z,
                    &targets,
                    &options,
                    &mut losses,
                    Some(&mut grad),
                )
                .expect("cross_entropy failed");
                let expected = (total, losses, grad);

                let mut losses = vec![T::Accum::default(); shape.rows()];
                let mut grad = z.clone();
                let total = cpu::cross_entropy_in_place(
                    activation,
                    shape,
                    &mut grad,
                    &targets,
                    &options,
                    &mut losses,
                )
                .expect("cross_entropy_in_place failed");
                (expected, (total, losses, grad))
            });
            let bits = |(total, losses, grad): &(f64, Vec<T::Accum>, Vec<T>)| {
                let losses = losses
                    .iter()
                    .map(|v| sigsoftmax::cpu::Real::to_f64(*v).to_bits())
                    .collect();
                vec![
                    ("loss", vec![total.to_bits()]),
                    ("losses", losses),
                    ("gradient", bit_patterns(grad)),
                ]
            };
            let what = format!(
                "cross_entropy_in_place {} {} with {threads} threads",
                activation.name(),
                T::DTYPE
            );
            assert_same_bits(&what, shape, &bits(&expected), &bits(&in_place));
        }
    }
}

#[test]
fn cross_entropy_in_place_matches() {
    for threads in [1, 2] {
        for_each_dtype!(check_cross_entropy_in_place, threads);
    }
}

// ---------------------------------------------------------------------------------------------
// Very long rows: a single row is split over chunks and threads.

fn check_long_row(cols: usize) {
    let shape = Shape::new(1, cols).expect("valid shape");
    let mut rng = SplitMix64::new(cols as u64);
    let mut z: Vec<f64> = (0..cols).map(|_| 8.0 * rng.next_signed()).collect();
    z[cols / 2] = f64::NEG_INFINITY;
    check_all_ops_everywhere::<f32>(shape, &z, 1);
    check_all_ops_everywhere::<f64>(shape, &z, 2);
    check_all_ops_everywhere::<f16>(shape, &z, 3);
    check_all_ops_everywhere::<bf16>(shape, &z, 4);
    for device in devices() {
        let serial = with_threads(1, || run_all_ops::<f32>(&device, shape, &z, 6));
        let parallel = with_threads(2, || run_all_ops::<f32>(&device, shape, &z, 6));
        assert_same_bits(
            &format!("f32 with 1 and 2 threads on {}", device.name()),
            shape,
            &serial,
            &parallel,
        );
    }
}

#[test]
fn long_row_256000() {
    check_long_row(256_000);
}

#[test]
fn long_row_300000() {
    check_long_row(300_000);
}
