//! Invalid input gives the typed error that names the value, and nothing is written: every
//! output buffer keeps its sentinel value.

use sigsoftmax::{cpu, Activation, CrossEntropyOptions, Device, Error, Reduction, Shape, Upstream};

use crate::common::devices;

const SENTINEL: f32 = 7.0;
const ACT: Activation = Activation::Sigsoftmax;

fn shape() -> Shape {
    Shape::new(2, 3).expect("valid shape")
}

fn assert_untouched(what: &str, values: &[f32]) {
    for (index, &value) in values.iter().enumerate() {
        assert_eq!(
            value, SENTINEL,
            "{what}: entry {index} was overwritten with {value} on error"
        );
    }
}

/// Asserts a length error naming `name`, with the expected and actual lengths in its message.
fn assert_length_error(
    op: &str,
    result: sigsoftmax::Result<impl std::fmt::Debug>,
    name: &str,
    expected: usize,
    actual: usize,
) {
    let error = result.expect_err(&format!("{op} accepted `{name}` of length {actual}"));
    let message = error.to_string();
    match error {
        Error::LengthMismatch {
            name: got_name,
            expected: got_expected,
            actual: got_actual,
            ..
        } => {
            assert_eq!(
                got_name, name,
                "{op}: error names buffer `{got_name}`, want `{name}`"
            );
            assert_eq!(
                got_expected, expected,
                "{op}: expected length {got_expected}, want {expected}"
            );
            assert_eq!(
                got_actual, actual,
                "{op}: actual length {got_actual}, want {actual}"
            );
        }
        other => panic!("{op}: got {other:?}, want LengthMismatch for `{name}`"),
    }
    assert!(
        message.contains(name),
        "{op}: message {message:?} does not name `{name}`"
    );
    assert!(
        message.contains(&actual.to_string()),
        "{op}: message {message:?} does not give the length {actual}"
    );
    assert!(
        message.contains(&expected.to_string()),
        "{op}: message {message:?} does not give the length {expected}"
    );
}

#[test]
fn shape_rejects_zero_sizes() {
    for (rows, cols) in [(0, 3), (3, 0), (0, 0)] {
        let error = Shape::new(rows, cols).expect_err("empty shape accepted");
        let message = error.to_string();
        assert!(
            matches!(error, Error::EmptyShape { rows: r, cols: c } if r == rows && c == cols),
            "Shape::new({rows}, {cols}) gave {error:?}, want EmptyShape"
        );
        assert!(
            message.contains(&format!("{rows} x {cols}")),
            "message {message:?} does not name {rows} x {cols}"
        );
    }
}

#[test]
fn shape_rejects_overflow() {
    let error = Shape::new(usize::MAX, 2).expect_err("overflowing shape accepted");
    assert!(
        matches!(error, Error::ShapeTooLarge { cols: 2, .. }),
        "got {error:?}, want ShapeTooLarge"
    );
}

#[test]
fn forward_rejects_wrong_lengths() {
    for device in devices() {
        let device = &device;
        let good = [0.5f32; 6];
        let mut y = [SENTINEL; 6];
        assert_length_error(
            "forward",
            device.forward(ACT, shape(), &good[..5], &mut y),
            "z",
            6,
            5,
        );
        assert_untouched("forward y", &y);
        let mut long = [SENTINEL; 7];
        assert_length_error(
            "forward",
            device.forward(ACT, shape(), &good, &mut long),
            "y",
            6,
            7,
        );
        assert_untouched("forward y", &long);

        assert_length_error(
            "log_forward",
            device.log_forward(ACT, shape(), &good[..4], &mut y),
            "z",
            6,
            4,
        );
        assert_length_error(
            "log_forward",
            device.log_forward(ACT, shape(), &good, &mut long),
            "l",
            6,
            7,
        );
        assert_untouched("log_forward l", &y);
        assert_untouched("log_forward l", &long);
    }
}

#[test]
fn backward_rejects_wrong_lengths() {
    for device in devices() {
        let (good, short) = ([0.5f32; 6], [0.5f32; 5]);
        let mut dz = [SENTINEL; 6];
        let mut dz_short = [SENTINEL; 5];
        for log in [false, true] {
            let (op, second, third) = if log {
                ("log_backward", "l", "dl")
            } else {
                ("backward", "y", "dy")
            };
            let call = |z: &[f32], y: &[f32], dy: &[f32], dz: &mut [f32]| {
                if log {
                    device.log_backward(ACT, shape(), z, y, dy, dz)
                } else {
                    device.backward(ACT, shape(), z, y, dy, dz)
                }
            };
            assert_length_error(op, call(&short, &good, &good, &mut dz), "z", 6, 5);
            assert_length_error(op, call(&good, &short, &good, &mut dz), second, 6, 5);
            assert_length_error(op, call(&good, &good, &short, &mut dz), third, 6, 5);
            assert_length_error(op, call(&good, &good, &good, &mut dz_short), "dz", 6, 5);
            assert_untouched(op, &dz);
            assert_untouched(op, &dz_short);
        }
    }
}

/// Calls cross-entropy on the 2 x 3 logits with sentinel-filled losses and gradient, asserts
/// that neither was written, and returns the error.
fn cross_entropy_error(
    device: &Device,
    z: &[f32],
    targets: &[i64],
    options: &CrossEntropyOptions<'_>,
    losses_len: usize,
    grad_len: usize,
) -> Error {
    let mut losses = vec![SENTINEL; losses_len];
    let mut grad = vec![SENTINEL; grad_len];
    let result = device.cross_entropy(
        ACT,
        shape(),
        z,
        targets,
        options,
        &mut losses,
        Some(&mut grad),
    );
    let error = result.expect_err(&format!(
        "cross_entropy accepted targets {targets:?} and options {options:?}"
    ));
    assert_untouched("cross_entropy losses", &losses);
    assert_untouched("cross_entropy gradient", &grad);
    error
}

#[test]
fn cross_entropy_rejects_wrong_lengths() {
    let z = [0.5f32; 6];
    let targets = [0i64, 1];
    let options = CrossEntropyOptions::default();
    for device in devices() {
        let device = &device;
        let error = cross_entropy_error(device, &z[..5], &targets, &options, 2, 6);
        assert_length_error("cross_entropy", Err::<(), _>(error), "z", 6, 5);
        let error = cross_entropy_error(device, &z, &targets, &options, 2, 4);
        assert_length_error("cross_entropy", Err::<(), _>(error), "grad", 6, 4);
        let error = cross_entropy_error(device, &z, &targets[..1], &options, 2, 6);
        assert_length_error("cross_entropy", Err::<(), _>(error), "targets", 2, 1);
        let error = cross_entropy_error(device, &z, &targets, &options, 3, 6);
        assert_length_error("cross_entropy", Err::<(), _>(error), "losses", 2, 3);
        let upstream = [1.0f32; 3];
        let per_row = CrossEntropyOptions {
            reduction: Reduction::None,
            upstream: Upstream::PerRow(&upstream),
            ..options
        };
        let error = cross_entropy_error(device, &z, &targets, &per_row, 2, 6);
        assert_length_error("cross_entropy", Err::<(), _>(error), "upstream", 2, 3);
    }
}

#[test]
fn cross_entropy_rejects_bad_targets() {
    let z = [0.5f32; 6];
    let default = CrossEntropyOptions::default();
    let no_ignore = CrossEntropyOptions {
        ignore_index: None,
        ..default
    };
    // (targets, options, row of the bad target, bad target)
    let cases = [
        ([0, -1], default, 1, -1),
        ([3, 0], default, 0, 3),
        ([0, 100], default, 1, 100),
        ([-100, 0], no_ignore, 0, -100),
    ];
    for device in devices() {
        for (targets, options, want_row, want_target) in cases {
            let error = cross_entropy_error(&device, &z, &targets, &options, 2, 6);
            let message = error.to_string();
            match error {
                Error::TargetOutOfRange {
                    row, target, cols, ..
                } => {
                    assert_eq!(
                        row, want_row,
                        "targets {targets:?}: error names row {row}, want {want_row}"
                    );
                    assert_eq!(
                        target, want_target,
                        "targets {targets:?}: error names target {target}"
                    );
                    assert_eq!(
                        cols, 3,
                        "targets {targets:?}: error names {cols} classes, want 3"
                    );
                }
                other => panic!("targets {targets:?}: got {other:?}, want TargetOutOfRange"),
            }
            assert!(
                message.contains(&want_target.to_string()),
                "message {message:?} does not name target {want_target}"
            );
        }
    }
}

#[test]
fn cross_entropy_rejects_bad_smoothing() {
    let z = [0.5f32; 6];
    for device in devices() {
        for (smoothing, shown) in [
            (-0.1, "-0.1"),
            (1.5, "1.5"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "inf"),
        ] {
            let options = CrossEntropyOptions {
                label_smoothing: smoothing,
                ..Default::default()
            };
            let error = cross_entropy_error(&device, &z, &[0, 1], &options, 2, 6);
            let message = error.to_string();
            assert!(
                matches!(error, Error::InvalidLabelSmoothing(value) if value.to_bits() == smoothing.to_bits()),
                "smoothing {smoothing}: got {error:?}, want InvalidLabelSmoothing"
            );
            assert!(
                message.contains(shown),
                "message {message:?} does not show {shown}"
            );
        }
    }
}

#[test]
fn per_row_upstream_needs_no_reduction() {
    let z = [0.5f32; 6];
    let upstream = [1.0f32, 2.0];
    for device in devices() {
        for reduction in [Reduction::Mean, Reduction::Sum] {
            let options = CrossEntropyOptions {
                reduction,
                upstream: Upstream::PerRow(&upstream),
                ..Default::default()
            };
            let error = cross_entropy_error(&device, &z, &[0, 1], &options, 2, 6);
            let message = error.to_string();
            assert!(
                matches!(error, Error::UpstreamNeedsNoReduction { reduction: name, .. } if name == reduction.name()),
                "{}: got {error:?}, want UpstreamNeedsNoReduction",
                reduction.name()
            );
            assert!(
                message.contains(reduction.name()),
                "message {message:?} does not name {}",
                reduction.name()
            );
        }
    }
}

// The in-place variants validate before overwriting the logits.
#[test]
fn in_place_errors_keep_logits() {
    let mut z = [SENTINEL; 5];
    let result = cpu::forward_in_place(ACT, shape(), &mut z);
    assert_length_error("forward_in_place", result, "z", 6, 5);
    assert_untouched("forward_in_place z", &z);

    let mut z = [SENTINEL; 6];
    let mut losses = [SENTINEL; 2];
    let result = cpu::cross_entropy_in_place(
        ACT,
        shape(),
        &mut z,
        &[0, 5],
        &CrossEntropyOptions::default(),
        &mut losses,
    );
    assert!(
        matches!(result, Err(Error::TargetOutOfRange { target: 5, .. })),
        "got {result:?}, want TargetOutOfRange"
    );
    assert_untouched("cross_entropy_in_place z", &z);
    assert_untouched("cross_entropy_in_place losses", &losses);
}
