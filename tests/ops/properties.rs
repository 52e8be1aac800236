//! Property tests: random shapes, logit scales from 1e-3 to 1e4, random `-inf` masks, rows with
//! NaN, `+inf` or no finite entry, every storage type and both activations, each compared with
//! the float64 reference under the tolerances derived in `common`.

use proptest::prelude::*;
use sigsoftmax::{Activation, Device, Element, Reduction, Shape};

use crate::common::{
    check_backward, check_cross_entropy, check_forward, check_log_backward, check_log_forward,
    devices, random_upstream, round_to, unmasked_targets, zero_at_masks, CrossEntropySpec,
    SplitMix64, UpstreamSpec, ACTIVATIONS,
};

/// Parameters of a random logit matrix; the values come from `seed`, so shrinking reduces the
/// shape and the scale while the values stay random.
#[derive(Debug, Clone)]
pub struct MatrixParams {
    pub rows: usize,
    pub cols: usize,
    /// Logits are `offset + scale * uniform(-1, 1)`.
    pub scale: f64,
    pub offset: f64,
    pub mask_probability: f64,
    /// Whether one row gets a NaN, a `+inf` or only `-inf` entries.
    pub special_row: bool,
    pub seed: u64,
}

prop_compose! {
    pub fn matrix_params(max_log10_scale: f64, allow_special: bool)(
        rows in 1usize..=6,
        // Mostly short rows; some medium; a few around one and two CHUNKs of the CPU engine.
        cols in prop_oneof![6 => 1usize..=40, 3 => 41usize..=700, 1 => 3000usize..=9000],
        log10_scale in -3.0f64..=max_log10_scale,
        offset in prop_oneof![2 => Just(0.0), 1 => -1e4f64..1e4],
        mask_probability in prop_oneof![Just(0.0), Just(0.1), Just(0.5), Just(0.97)],
        special in proptest::bool::weighted(0.2),
        seed in any::<u64>(),
    ) -> MatrixParams {
        MatrixParams {
            rows,
            cols,
            scale: 10f64.powf(log10_scale),
            offset,
            mask_probability,
            special_row: special && allow_special,
            seed,
        }
    }
}

/// Builds the logits described by `params`: uniform values, sometimes a tie at the row max,
/// masks, and at most one special row.
pub fn build_logits(params: &MatrixParams) -> (Shape, Vec<f64>) {
    let shape = Shape::new(params.rows, params.cols).expect("valid shape");
    let mut rng = SplitMix64::new(params.seed);
    let mut z: Vec<f64> = (0..shape.len())
        .map(|_| params.offset + params.scale * rng.next_signed())
        .collect();
    for row in z.chunks_mut(params.cols) {
        // A tie at the max is the case where the row max appears twice.
        if row.len() > 1 && rng.next_f64() < 0.2 {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let at = rng.next_below(row.len());
            row[at] = max;
        }
        for value in row.iter_mut() {
            if rng.next_f64() < params.mask_probability {
                *value = f64::NEG_INFINITY;
            }
        }
    }
    if params.special_row {
        let row = rng.next_below(params.rows);
        let cols = params.cols;
        let at = row * cols + rng.next_below(cols);
        match rng.next_below(3) {
            0 => z[at] = f64::NAN,
            1 => z[at] = f64::INFINITY,
            _ => z[row * cols..(row + 1) * cols].fill(f64::NEG_INFINITY),
        }
    }
    (shape, z)
}

fn forward_case<T: Element>(device: &Device, activation: Activation, shape: Shape, z: &[f64]) {
    check_forward::<T>(device, activation, shape, z);
}

fn log_forward_case<T: Element>(device: &Device, activation: Activation, shape: Shape, z: &[f64]) {
    check_log_forward::<T>(device, activation, shape, z);
}

fn backward_case<T: Element>(
    device: &Device,
    activation: Activation,
    shape: Shape,
    z: &[f64],
    dy: &[f64],
) {
    check_backward::<T>(device, activation, shape, z, dy);
}

fn log_backward_case<T: Element>(
    device: &Device,
    activation: Activation,
    shape: Shape,
    z: &[f64],
    dl: &[f64],
) {
    check_log_backward::<T>(device, activation, shape, z, dl);
}

/// A random cross-entropy configuration: reduction, smoothing, ignore index and upstream.
#[derive(Debug, Clone)]
struct CrossEntropyParams {
    reduction: Reduction,
    label_smoothing: f64,
    /// 0: -100 (PyTorch's default), 1: none, 2: class 0.
    ignore_kind: usize,
    ignore_probability: f64,
    /// 0: one, 1: scalar, 2: per row (scalar unless the reduction is none).
    upstream_kind: usize,
}

prop_compose! {
    fn cross_entropy_params()(
        reduction in prop_oneof![Just(Reduction::None), Just(Reduction::Sum), Just(Reduction::Mean)],
        label_smoothing in prop_oneof![2 => Just(0.0), 2 => 0.0f64..=1.0, 1 => Just(1.0)],
        ignore_kind in 0usize..3,
        ignore_probability in prop_oneof![Just(0.0), Just(0.3)],
        upstream_kind in 0usize..3,
    ) -> CrossEntropyParams {
        CrossEntropyParams { reduction, label_smoothing, ignore_kind, ignore_probability, upstream_kind }
    }
}

fn cross_entropy_setup<T: Element>(
    params: &CrossEntropyParams,
    shape: Shape,
    z: &[f64],
    seed: u64,
) -> (Vec<i64>, CrossEntropySpec) {
    let mut rng = SplitMix64::new(seed ^ 0x5EED);
    let ignore_index = match params.ignore_kind {
        0 => Some(-100),
        1 => None,
        _ => Some(0),
    };
    let mut targets = unmasked_targets(&mut rng, shape, &round_to::<T>(z));
    if let Some(ignore) = ignore_index {
        for target in targets.iter_mut() {
            if rng.next_f64() < params.ignore_probability {
                *target = ignore;
            }
        }
    }
    let scalar = 3.0 * rng.next_signed();
    let upstream = match params.upstream_kind {
        0 => UpstreamSpec::One,
        2 if params.reduction == Reduction::None => UpstreamSpec::PerRow(
            (0..shape.rows())
                .map(|_| (3.0 * rng.next_signed()) as f32)
                .collect(),
        ),
        _ => UpstreamSpec::Scalar(scalar),
    };
    let spec = CrossEntropySpec {
        ignore_index,
        label_smoothing: params.label_smoothing,
        reduction: params.reduction,
        upstream,
    };
    (targets, spec)
}

fn cross_entropy_case<T: Element>(
    device: &Device,
    activation: Activation,
    shape: Shape,
    z: &[f64],
    params: &CrossEntropyParams,
    seed: u64,
) {
    let (targets, spec) = cross_entropy_setup::<T>(params, shape, z, seed);
    check_cross_entropy::<T>(device, activation, shape, z, &targets, &spec);
}

proptest! {
    // 48 cases per op, each run in 4 storage types and 2 activations, take a few seconds on two
    // cores. Every run draws fresh inputs.
    #![proptest_config(ProptestConfig {
        cases: 48,
        // A failure prints its parameters, seed included, which reproduce it; no regression files.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn forward_matches_reference(params in matrix_params(4.0, true)) {
        let (shape, z) = build_logits(&params);
        for device in devices() {
            for activation in ACTIVATIONS {
                for_each_dtype!(forward_case, &device, activation, shape, &z);
            }
        }
    }

    #[test]
    fn log_forward_matches_reference(params in matrix_params(4.0, true)) {
        let (shape, z) = build_logits(&params);
        for device in devices() {
            for activation in ACTIVATIONS {
                for_each_dtype!(log_forward_case, &device, activation, shape, &z);
            }
        }
    }

    #[test]
    fn backward_matches_reference(params in matrix_params(4.0, true)) {
        let (shape, z) = build_logits(&params);
        let dy = random_upstream(&mut SplitMix64::new(params.seed.rotate_left(17)), shape.len());
        for device in devices() {
            for activation in ACTIVATIONS {
                for_each_dtype!(backward_case, &device, activation, shape, &z, &dy);
            }
        }
    }

    #[test]
    fn log_backward_matches_reference(params in matrix_params(4.0, true)) {
        let (shape, z) = build_logits(&params);
        let dl = random_upstream(&mut SplitMix64::new(params.seed.rotate_left(29)), shape.len());
        let dl = zero_at_masks(&z, &dl);
        for device in devices() {
            for activation in ACTIVATIONS {
                for_each_dtype!(log_backward_case, &device, activation, shape, &z, &dl);
            }
        }
    }

    #[test]
    fn cross_entropy_matches_reference(
        params in matrix_params(4.0, true),
        options in cross_entropy_params(),
    ) {
        let (shape, z) = build_logits(&params);
        for device in devices() {
            for activation in ACTIVATIONS {
                for_each_dtype!(cross_entropy_case, &device, activation, shape, &z, &options, params.seed);
            }
        }
    }
}
