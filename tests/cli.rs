//! End-to-end tests of the `sigsoftmax` program: each op on .npy files compared with the library
//! called directly, every bad input rejected with one line and no output file, the JSON of
//! `bench`, and `--help`.
//!
//! The input files are written byte by byte here (not with the reader the program uses), so
//! the tests also check the program's reading of float16, big-endian and Fortran-order files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use sigsoftmax::{bf16, cpu, f16, Activation, CrossEntropyOptions, Reduction, Shape, Upstream};

/// A fresh folder under the system's temporary folder, deleted when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("sigsoftmax-cli-{}-{unique}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Lists the names of the files in the folder, sorted.
    fn file_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a .npy file (format version 1.0) with the given type string, order, shape and raw
/// data bytes.
fn write_npy(path: &Path, descr: &str, fortran_order: bool, shape: &[usize], data: &[u8]) {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let order = if fortran_order { "True" } else { "False" };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape_text}, }}");
    // The magic (6 bytes), version (2) and header length (2) plus the header and its final
    // newline must fill a multiple of 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');

    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

fn write_f32(path: &Path, shape: &[usize], values: &[f32]) {
    let data: Vec<u8> = values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    write_npy(path, "<f4", false, shape, &data);
}

fn write_i64(path: &Path, values: &[i64]) {
    let data: Vec<u8> = values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    write_npy(path, "<i8", false, &[values.len()], &data);
}

/// Reads a .npy file into its shape, its type string and its values as f64.
fn read_npy(path: &Path) -> (Vec<u64>, String, Vec<f64>) {
    let npy = npyz::NpyFile::new(std::fs::File::open(path).unwrap()).unwrap();
    let shape = npy.shape().to_vec();
    let descr = match npy.dtype() {
        npyz::DType::Plain(type_str) => type_str.to_string(),
        other => panic!("unexpected dtype {other:?}"),
    };
    let values = match descr.as_str() {
        "<f2" => npy
            .into_vec::<f16>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect(),
        "<f4" => npy
            .into_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect(),
        "<f8" => npy.into_vec::<f64>().unwrap(),
        other => panic!("unexpected output type {other}"),
    };
    (shape, descr, values)
}

fn sigsoftmax(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sigsoftmax"))
        .args(args)
        .output()
        .unwrap()
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Logits with a known spread, including large and negative values and a masked entry.
fn logits(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            if i == 3 {
                f32::NEG_INFINITY
            } else {
                ((i * 37 % 101) as f32 - 50.0) * 0.11
            }
        })
        .collect()
}

fn upstream(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.25)
        .collect()
}

fn assert_success(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "status {:?}, stderr: {stderr}",
        output.status
    );
}

fn as_f64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&value| f64::from(value)).collect()
}

const ROWS: usize = 3;
const COLS: usize = 7;

#[test]
fn forward_matches_library() {
    let dir = TempDir::new();
    let z = logits(ROWS, COLS);
    write_f32(&dir.path("z.npy"), &[ROWS, COLS], &z);

    let out = dir.path("y.npy");
    assert_success(&sigsoftmax(&[
        "run",
        "forward",
        "--logits",
        arg(&dir.path("z.npy")),
        "--out",
        arg(&out),
        "--device",
        "cpu",
    ]));

    let mut y = vec![0.0f32; z.len()];
    cpu::forward(
        Activation::Sigsoftmax,
        Shape::new(ROWS, COLS).unwrap(),
        &z,
        &mut y,
    )
    .unwrap();
    let (shape, descr, values) = read_npy(&out);
    assert_eq!(shape, [ROWS as u64, COLS as u64]);
    assert_eq!(descr, "<f4");
    assert_eq!(values, as_f64(&y));
}

#[test]
fn log_forward_and_softmax_match_library() {
    let dir = TempDir::new();
    let z = logits(ROWS, COLS);
    let shape = Shape::new(ROWS, COLS).unwrap();
    write_f32(&dir.path("z.npy"), &[ROWS, COLS], &z);
    let logits_arg = dir.path("z.npy");

    let cases: [(&str, &[&str], Activation, bool); 3] = [
        ("log-forward", &[], Activation::Sigsoftmax, true),
        ("softmax", &[], Activation::Softmax, false),
        (
            "forward",
            &["--activation", "softmax"],
            Activation::Softmax,
            false,
        ),
    ];
    for (op, extra, activation, log) in cases {
        let out = dir.path(&format!("{op}.npy"));
        let mut args = vec![
            "run",
            op,
            "--logits",
            arg(&logits_arg),
            "--out",
            arg(&out),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        assert_success(&sigsoftmax(&args));

        let mut expected = vec![0.0f32; z.len()];
        if log {
            cpu::log_forward(activation, shape, &z, &mut expected).unwrap();
        } else {
            cpu::forward(activation, shape, &z, &mut expected).unwrap();
        }
        assert_eq!(read_npy(&out).2, as_f64(&expected), "op {op} {extra:?}");
    }
}

#[test]
fn backward_matches_library() {
    let dir = TempDir::new();
    let shape = Shape::new(ROWS, COLS).unwrap();
    let z = logits(ROWS, COLS);
    let mut y = vec![0.0f32; z.len()];
    cpu::forward(Activation::Sigsoftmax, shape, &z, &mut y).unwrap();
    let dy = upstream(z.len());
    write_f32(&dir.path("z.npy"), &[ROWS, COLS], &z);
    write_f32(&dir.path("y.npy"), &[ROWS, COLS], &y);
    write_f32(&dir.path("dy.npy"), &[ROWS, COLS], &dy);

    let out = dir.path("dz.npy");
    let output = sigsoftmax(&[
        "run",
        "backward",
        "--logits",
        arg(&dir.path("z.npy")),
        "--probs",
        arg(&dir.path("y.npy")),
        "--grad",
        arg(&dir.path("dy.npy")),
        "--out",
        arg(&out),
        "--device",
        "cpu",
    ]);
    assert_success(&output);

    let mut dz = vec![0.0f32; z.len()];
    cpu::backward(Activation::Sigsoftmax, shape, &z, &y, &dy, &mut dz).unwrap();
    assert_eq!(read_npy(&out).2, as_f64(&dz));
}

#[test]
fn log_backward_matches_library() {
    let dir = TempDir::new();
    let shape = Shape::new(ROWS, COLS).unwrap();
    let z = logits(ROWS, COLS);
    let mut l = vec![0.0f32; z.len()];
    cpu::log_forward(Activation::Sigsoftmax, shape, &z, &mut l).unwrap();
    let dl = upstream(z.len());
    write_f32(&dir.path("z.npy"), &[ROWS, COLS], &z);
    write_f32(&dir.path("l.npy"), &[ROWS, COLS], &l);
    write_f32(&dir.path("dl.npy"), &[ROWS, COLS], &dl);

    let out = dir.path("dz.npy");
    let output = sigsoftmax(&[
        "run",
        "log-backward",
        "--logits",
        arg(&dir.path("z.npy")),
        "--log-probs",
        arg(&dir.path("l.npy")),
        "--grad",
        arg(&dir.path("dl.npy")),
        "--out",
        arg(&out),
        "--device",
        "cpu",
    ]);
    assert_success(&output);

    let mut dz = vec![0.0f32; z.len()];
    cpu::log_backward(Activation::Sigsoftmax, shape, &z, &l, &dl, &mut dz).unwrap();
    assert_eq!(read_npy(&out).2, as_f64(&dz));
}

#[test]
fn cross_entropy_matches_library() {
    let dir = TempDir::new();
    let shape = Shape::new(ROWS, COLS).unwrap();
    let z = logits(ROWS, COLS);
    // The middle row is ignored with the default ignore index.
    let targets = [2i64, -100, 6];
    write_f32(&dir.path("z.npy"), &[ROWS, COLS], &z);
    write_i64(&dir.path("t.npy"), &targets);

    for (reduction, name) in [
        (Reduction::None, "none"),
        (Reduction::Sum, "sum"),
        (Reduction::Mean, "mean"),
    ] {
        let out = dir.path(&format!("loss-{name}.npy"));
        let grad_out = dir.path(&format!("grad-{name}.npy"));
        let output = sigsoftmax(&[
            "run",
            "cross-entropy",
            "--logits",
            arg(&dir.path("z.npy")),
            "--targets",
            arg(&dir.path("t.npy")),
            "--reduction",
            name,
            "--label-smoothing",
            "0.1",
            "--out",
            arg(&out),
            "--grad-out",
            arg(&grad_out),
            "--device",
            "cpu",
        ]);
        assert_success(&output);

        let options = CrossEntropyOptions {
            label_smoothing: 0.1,
            reduction,
            upstream: Upstream::One,
            ..Default::default()
        };
        let mut losses = vec![0.0f32; ROWS];
        let mut grad = vec![0.0f32; z.len()];
        let loss = cpu::cross_entropy(
            Activation::Sigsoftmax,
            shape,
            &z,
            &targets,
            &options,
            &mut losses,
            Some(&mut grad),
        )
        .unwrap();

        let stdout = String::from_utf8(output.stdout).unwrap();
        assert_eq!(
            stdout.trim().parse::<f64>().unwrap(),
            loss,
            "printed loss, reduction {name}"
        );
        let (loss_shape, loss_descr, loss_values) = read_npy(&out);
        assert_eq!(loss_descr, "<f4");
        match reduction {
            Reduction::None => {
                assert_eq!(loss_shape, [ROWS as u64]);
                assert_eq!(loss_values, as_f64(&losses));
            }
            _ => {
                assert_eq!(
                    loss_shape,
                    Vec::<u64>::new(),
                    "a reduced loss is a 0-d array"
                );
                assert_eq!(loss_values, [f64::from(loss as f32)]);
            }
        }
        assert_eq!(
            read_npy(&grad_out).2,
            as_f64(&grad),
            "gradient, reduction {name}"
        );
    }
}

#[test]
fn cross_entropy_without_grad_out() {
    let dir = TempDir::new();
    write_f32(&dir.path("z.npy"), &[ROWS, COLS], &logits(ROWS, COLS));
    let data: Vec<u8> = [0i32, 1, 2]
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    write_npy(&dir.path("t.npy"), "<i4", false, &[ROWS], &data);

    let out = dir.path("loss.npy");
    let output = sigsoftmax(&[
        "run",
        "cross-entropy",
        "--logits",
        arg(&dir.path("z.npy")),
        "--targets",
        arg(&dir.path("t.npy")),
        "--out",
        arg(&out),
        "--device",
        "cpu",
    ]);
    assert_success(&output);
    assert_eq!(dir.file_names(), ["loss.npy", "t.npy", "z.npy"]);
}

#[test]
fn storage_types_set_output_type() {
    let dir = TempDir::new();
    let shape = Shape::new(ROWS, COLS).unwrap();
    let z = logits(ROWS, COLS);
    write_f32(&dir.path("z.npy"), &[ROWS, COLS], &z);
    let z16: Vec<f16> = z.iter().map(|&value| f16::from_f32(value)).collect();
    let data: Vec<u8> = z16.iter().flat_map(|value| value.to_le_bytes()).collect();
    write_npy(&dir.path("z16.npy"), "<f2", false, &[ROWS, COLS], &data);

    // An f16 file computes in f16 and writes float16 without --dtype.
    let out = dir.path("y16.npy");
    assert_success(&sigsoftmax(&[
        "run",
        "forward",
        "--logits",
        arg(&dir.path("z16.npy")),
        "--out",
        arg(&out),
        "--device",
        "cpu",
    ]));
    let mut y16 = vec![f16::ZERO; z.len()];
    cpu::forward(Activation::Sigsoftmax, shape, &z16, &mut y16).unwrap();
    let (_, descr, values) = read_npy(&out);
    assert_eq!(descr, "<f2");
    assert_eq!(
        values,
        y16.iter().map(|value| value.to_f64()).collect::<Vec<_>>()
    );

    // bf16 is written as float32, which represents every bf16 value exactly.
    let out = dir.path("ybf16.npy");
    let output = sigsoftmax(&[
        "run",
        "forward",
        "--logits",
        arg(&dir.path("z.npy")),
        "--dtype",
        "bf16",
        "--out",
        arg(&out),
        "--device",
        "cpu",
    ]);
    assert_success(&output);
    let zb: Vec<bf16> = z.iter().map(|&value| bf16::from_f32(value)).collect();
    let mut yb = vec![bf16::ZERO; z.len()];
    cpu::forward(Activation::Sigsoftmax, shape, &zb, &mut yb).unwrap();
    let (_, descr, values) = read_npy(&out);
    assert_eq!(descr, "<f4");
    assert_eq!(
        values,
        yb.iter().map(|value| value.to_f64()).collect::<Vec<_>>()
    );

    // f64 computes in f64 and writes float64.
    let out = dir.path("y64.npy");
    let output = sigsoftmax(&[
        "run",
        "forward",
        "--logits",
        arg(&dir.path("z.npy")),
        "--dtype",
        "f64",
        "--out",
        arg(&out),
        "--device",
        "cpu",
    ]);
    assert_success(&output);
    let z64 = as_f64(&z);
    let mut y64 = vec![0.0f64; z.len()];
    cpu::forward(Activation::Sigsoftmax, shape, &z64, &mut y64).unwrap();
    let (_, descr, values) = read_npy(&out);
    assert_eq!(descr, "<f8");
    assert_eq!(values, y64);
}

#[test]
fn big_endian_and_fortran_order_inputs() {
    let dir = TempDir::new();
    let shape = Shape::new(ROWS, COLS).unwrap();
    let z = logits(ROWS, COLS);
    let mut y = vec![0.0f32; z.len()];
    cpu::forward(Activation::Sigsoftmax, shape, &z, &mut y).unwrap();

    let big_endian: Vec<u8> = z.iter().flat_map(|value| value.to_be_bytes()).collect();
    write_npy(
        &dir.path("big.npy"),
        ">f4",
        false,
        &[ROWS, COLS],
        &big_endian,
    );
    // Fortran order stores column by column.
    let column_major: Vec<u8> = (0..COLS)
        .flat_map(|c| (0..ROWS).map(move |r| r * COLS + c))
        .flat_map(|i| z[i].to_le_bytes())
        .collect();
    write_npy(
        &dir.path("fortran.npy"),
        "<f4",
        true,
        &[ROWS, COLS],
        &column_major,
    );

    for name in ["big", "fortran"] {
        let out = dir.path(&format!("{name}-y.npy"));
        let input = dir.path(&format!("{name}.npy"));
        assert_success(&sigsoftmax(&[
            "run",
            "forward",
            "--logits",
            arg(&input),
            "--out",
            arg(&out),
            "--device",
            "cpu",
        ]));
        assert_eq!(read_npy(&out).2, as_f64(&y), "{name} input");
    }
}

/// Runs the program expecting failure. Checks the exit status, that stderr is one line starting
/// with `error:`, and that neither `out` nor a temporary file was left behind.
fn assert_rejected(dir: &TempDir, args: &[&str], out: &Path, expected_in_message: &str) {
    let names_before = dir.file_names();
    let output = sigsoftmax(args);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success(), "{args:?} succeeded");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?} printed more than one line: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    assert!(
        stderr.contains(expected_in_message),
        "{args:?}: expected `{expected_in_message}` in: {stderr}"
    );
    assert!(!out.exists(), "{args:?} created {}", out.display());
    assert_eq!(dir.file_names(), names_before, "{args:?} left files behind");
}

#[test]
fn bad_inputs_rejected() {
    let dir = TempDir::new();
    let z = logits(ROWS, COLS);
    write_f32(&dir.path("z.npy"), &[ROWS, COLS], &z);
    write_f32(&dir.path("z1d.npy"), &[z.len()], &z);
    write_f32(&dir.path("z3d.npy"), &[1, ROWS, COLS], &z);
    write_f32(&dir.path("y-wrong.npy"), &[COLS, ROWS], &z);
    write_f32(&dir.path("dy.npy"), &[ROWS, COLS], &upstream(z.len()));
    write_i64(&dir.path("zint.npy"), &[1, 2, 3]);
    write_i64(&dir.path("t.npy"), &[0, 1, 2]);
    write_i64(&dir.path("t-range.npy"), &[0, COLS as i64, 2]);
    write_f32(&dir.path("t-float.npy"), &[ROWS], &[0.0, 1.0, 2.0]);
    std::fs::write(dir.path("garbage.npy"), b"not a numpy file").unwrap();

    let out = dir.path("out.npy");
    let (z_arg, o) = (dir.path("z.npy"), arg(&out));
    let z_arg = arg(&z_arg);
    let path = |name: &str| dir.path(name).to_str().unwrap().to_string();
    let missing = path("missing.npy");
    let folder = dir.0.to_str().unwrap().to_string();
    let in_missing_folder = path("no-such-folder/out.npy");
    let same_out_other_spelling = path("./out.npy");
    let (z1d, z3d, zint, garbage) = (
        path("z1d.npy"),
        path("z3d.npy"),
        path("zint.npy"),
        path("garbage.npy"),
    );
    let (y_wrong, dy, t, t_range, t_float) = (
        path("y-wrong.npy"),
        path("dy.npy"),
        path("t.npy"),
        path("t-range.npy"),
        path("t-float.npy"),
    );

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "forward", "--logits", &missing, "--out", o],
            "missing.npy",
        ),
        (
            vec!["run", "forward", "--logits", &z1d, "--out", o],
            "must be 2-D",
        ),
        (
            vec!["run", "forward", "--logits", &z3d, "--out", o],
            "must be 2-D",
        ),
        (
            vec!["run", "forward", "--logits", &zint, "--out", o],
            "must be float16, float32 or float64",
        ),
        (
            vec!["run", "forward", "--logits", &garbage, "--out", o],
            "not a valid .npy file",
        ),
        (
            vec![
                "run", "backward", "--logits", z_arg, "--probs", &y_wrong, "--grad", &dy, "--out",
                o,
            ],
            "[7, 3]",
        ),
        (
            vec![
                "run", "backward", "--logits", z_arg, "--grad", &dy, "--out", o,
            ],
            "--probs",
        ),
        (
            vec![
                "run",
                "forward",
                "--logits",
                z_arg,
                "--targets",
                &t,
                "--out",
                o,
            ],
            "--targets",
        ),
        (
            vec![
                "run",
                "cross-entropy",
                "--logits",
                z_arg,
                "--targets",
                &t_range,
                "--out",
                o,
            ],
            "target 7 in row 1",
        ),
        (
            vec![
                "run",
                "cross-entropy",
                "--logits",
                z_arg,
                "--targets",
                &t_float,
                "--out",
                o,
            ],
            "int32 or int64",
        ),
        (
            vec![
                "run",
                "cross-entropy",
                "--logits",
                z_arg,
                "--targets",
                &z1d,
                "--out",
                o,
            ],
            "int32 or int64",
        ),
        (
            vec![
                "run",
                "cross-entropy",
                "--logits",
                z_arg,
                "--targets",
                &t,
                "--label-smoothing",
                "1.5",
                "--out",
                o,
            ],
            "label smoothing 1.5",
        ),
        (
            vec!["run", "forward", "--logits", z_arg, "--out", &folder],
            "is a folder",
        ),
        (
            vec![
                "run",
                "forward",
                "--logits",
                z_arg,
                "--out",
                &in_missing_folder,
            ],
            "does not exist",
        ),
        (
            vec![
                "run",
                "cross-entropy",
                "--logits",
                z_arg,
                "--targets",
                &t,
                "--out",
                o,
                "--grad-out",
                o,
            ],
            "two different files",
        ),
        // The same file spelled another way: the folder with `.` appended.
        (
            vec![
                "run",
                "cross-entropy",
                "--logits",
                z_arg,
                "--targets",
                &t,
                "--out",
                o,
                "--grad-out",
                &same_out_other_spelling,
            ],
            "two different files",
        ),
        (
            vec!["run", "sideways", "--logits", z_arg, "--out", o],
            "sideways",
        ),
        (
            vec![
                "run",
                "softmax",
                "--logits",
                z_arg,
                "--activation",
                "sigsoftmax",
                "--out",
                o,
            ],
            "softmax",
        ),
        (vec!["run", "forward", "--logits", z_arg], "--out"),
        (vec!["bench", "--shape", "8by100"], "8by100"),
    ];
    for (args, expected) in &cases {
        assert_rejected(&dir, args, &out, expected);
    }

    // A failed cross-entropy creates neither output, even when the first could be written.
    let grad_out = dir.path("grad.npy");
    let args = [
        "run",
        "cross-entropy",
        "--logits",
        z_arg,
        "--targets",
        &t_range,
        "--out",
        o,
        "--grad-out",
        arg(&grad_out),
    ];
    assert_rejected(&dir, &args, &out, "out of range");
    assert!(!grad_out.exists());

    // A failed run leaves an existing output file as it was.
    std::fs::write(&out, b"previous").unwrap();
    let output = sigsoftmax(&["run", "forward", "--logits", &z1d, "--out", o]);
    assert!(!output.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
}

#[cfg(not(cuda_kernels))]
#[test]
fn cuda_request_rejected_without_cuda() {
    let dir = TempDir::new();
    write_f32(&dir.path("z.npy"), &[ROWS, COLS], &logits(ROWS, COLS));
    let (z, out) = (dir.path("z.npy"), dir.path("out.npy"));
    let args = [
        "run",
        "forward",
        "--logits",
        arg(&z),
        "--out",
        arg(&out),
        "--device",
        "cuda",
    ];
    assert_rejected(&dir, &args, &out, "CUDA is not available");
    assert_rejected(
        &dir,
        &["bench", "--device", "cuda:1"],
        &out,
        "CUDA is not available",
    );
}

#[test]
fn bench_thread_count_out_of_range() {
    for threads in ["0", "100000", "many"] {
        let output = sigsoftmax(&["bench", "--threads", threads, "--shape", "2x10"]);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            !output.status.success(),
            "--threads {threads} succeeded: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "more than one line: {stderr}");
        assert!(
            stderr.contains("invalid thread count"),
            "--threads {threads}: {stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "--threads {threads} printed results"
        );
    }
}

/// Checks the one error line of a CUDA build asked for a GPU it cannot open: the driver or the
/// device is missing, or (on a machine with GPUs) the ordinal is past the last one.
#[cfg(cuda_kernels)]
#[test]
fn bench_on_absent_gpu_fails() {
    let output = sigsoftmax(&["bench", "--device", "cuda:4096", "--shape", "2x10"]);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success(), "succeeded: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "more than one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    let unavailable = stderr.contains("CUDA is not available");
    let out_of_range = stderr.contains("CUDA device 4096 does not exist");
    assert!(unavailable || out_of_range, "unexpected message: {stderr}");
    assert!(output.stdout.is_empty(), "printed results");
}

/// Runs every op and storage type on GPU 0 and checks the JSON records. Passes without checks
/// where no GPU is usable.
#[cfg(cuda_kernels)]
#[test]
fn bench_json_on_gpu() {
    let output = sigsoftmax(&[
        "bench",
        "--json",
        "--shape",
        "2x1000",
        "--op",
        "forward,softmax,backward,log-forward,log-backward,cross-entropy",
        "--dtype",
        "f32,f64,f16,bf16",
        "--iters",
        "3",
        "--warmup",
        "1",
        "--min-time",
        "0",
        "--device",
        "cuda",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("CUDA is not available") {
        eprintln!("skipped: {stderr}");
        return;
    }
    assert_success(&output);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 24, "one line per op and dtype: {stdout}");
    for line in lines {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let device = record["device"].as_str().unwrap();
        assert!(device.starts_with("cuda:0 ("), "{line}");
        assert!(record["threads"].is_null(), "{line}");
        assert!(record["iters"].as_u64().unwrap() >= 3, "{line}");
        assert_eq!(record["limit_bytes"], record["bytes"], "{line}");
        assert!(record["median_ms"].as_f64().unwrap() > 0.0, "{line}");
        assert!(record["limit_median_ms"].as_f64().unwrap() > 0.0, "{line}");
        assert!(record["gb_per_s"].as_f64().unwrap() > 0.0, "{line}");
    }
}

#[test]
fn bench_json_has_required_keys() {
    let output = sigsoftmax(&[
        "bench",
        "--json",
        "--shape",
        "2x1000",
        "--op",
        "forward,softmax,backward,log-forward,log-backward,cross-entropy",
        "--dtype",
        "f32,bf16",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--min-time",
        "0",
        "--threads",
        "1",
        "--device",
        "cpu",
    ]);
    assert_success(&output);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 12, "one line per op and dtype: {stdout}");

    let required = [
        "op",
        "dtype",
        "rows",
        "cols",
        "device",
        "threads",
        "median_ms",
        "gb_per_s",
        "limit_gb_per_s",
    ];
    for line in lines {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in required {
            assert!(record.get(key).is_some(), "missing `{key}` in {line}");
        }
        assert_eq!(record["rows"], 2);
        assert_eq!(record["cols"], 1000);
        assert_eq!(record["threads"], 1);
        assert_eq!(record["device"], "cpu");
        assert!(record["iters"].as_u64().unwrap() >= 2);
        assert!(record["median_ms"].as_f64().unwrap() > 0.0);
        assert!(record["gb_per_s"].as_f64().unwrap() > 0.0);
        assert!(record["limit_gb_per_s"].as_f64().unwrap() > 0.0);
        let expected_activation = if record["op"] == "softmax" {
            "softmax"
        } else {
            "sigsoftmax"
        };
        assert_eq!(record["activation"], expected_activation);
    }
}

#[test]
fn bench_table_lists_each_case() {
    let output = sigsoftmax(&[
        "bench",
        "--shape",
        "1x500,3x700",
        "--op",
        "forward",
        "--op",
        "softmax",
        "--dtype",
        "f32",
        "--iters",
        "1",
        "--min-time",
        "0",
        "--device",
        "cpu",
    ]);
    assert_success(&output);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("GB/s"), "{stdout}");
    for shape in ["1x500", "3x700"] {
        assert_eq!(
            stdout.lines().filter(|line| line.contains(shape)).count(),
            2,
            "{shape} in: {stdout}"
        );
    }
}

#[test]
fn help_for_each_subcommand() {
    for args in [
        &["--help"][..],
        &["bench", "--help"],
        &["run", "--help"],
        &["help", "run"],
    ] {
        let output = sigsoftmax(args);
        assert_success(&output);
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
    }
}
