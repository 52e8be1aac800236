//! The candle custom ops on CUDA tensors against the same ops on CPU tensors, for every dtype,
//! both activations and shapes on both sides of the kernels' dispatch thresholds.
//!
//! Built only with the feature `candle-cuda`, as the module `cuda` of the candle tests. Such a
//! build links libcuda, because candle configures cudarc that way, so the test binary starts
//! only where the NVIDIA driver is installed. Without a visible GPU each test here prints that
//! it skipped and passes.
//!
//! NOTE: not yet run on a GPU. It compiles and passes clippy in CI; no GPU was lent to the
//! sessions that wrote it.
use candle_core::{DType, Device, Tensor, Var};
use sigsoftmax::{candle as ssm, Activation, CrossEntropyOptions, Reduction};

use super::{flat_f64, uniform, ACTIVATIONS};

/// Shapes on both sides of the kernels' regime limits (`make_plan` in `kernels/common.cuh`).
/// A warp takes a row of up to 1024 columns with 16-byte loads, or 256 on the scalar path that
/// odd widths take. A block takes longer rows. Rows are split across blocks from 16384 columns
/// when there are fewer than 96 rows, and always beyond what a block keeps in registers.
const SHAPES: [(usize, usize); 13] = [
    (5, 1),
    (5, 31),
    (5, 33),
    (5, 256),
    (5, 257),
    (5, 1024),
    (5, 1025),
    (5, 4097),
    (3, 16383),
    (3, 16384),
    (96, 16384),
    (2, 50257),
    (2, 131_072),
];

/// Returns the largest difference allowed, as a fraction of the largest magnitude in the
/// reference.
///
/// f32 and f64: both engines accumulate in the compute type in a fixed order, but not in the
/// same order, so the bound is a few units in the last place. f16 (unit roundoff 2^-11) and
/// bf16 (2^-8): each engine rounds its f32 result once, so the results may differ by one unit
/// in the last place of the largest value. The bound allows four.
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-12,
        DType::F32 => 1e-5,
        DType::F16 => 4.0 * 2f64.powi(-11),
        DType::BF16 => 4.0 * 2f64.powi(-8),
        other => unreachable!("no tolerance for {other:?}"),
    }
}

/// Returns the first GPU, or prints a message and returns `None` when candle finds none.
fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(device) => Some(device),
        Err(error) => {
            eprintln!("skipped: no CUDA device ({error})");
            None
        }
    }
}

/// Asserts `|got - want| <= tol * max |want|` where `want` is finite, and the same infinity or
/// NaN where it is not.
fn assert_close(case: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let (got, want) = (flat_f64(got), flat_f64(want));
    assert_eq!(got.len(), want.len(), "{case}: lengths differ");
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if w.is_finite() {
            assert!(
                (g - w).abs() <= tol * scale,
                "{case}: element {i} is {g:e} on the GPU and {w:e} on the CPU (bound {:e})",
                tol * scale
            );
        } else {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{case}: element {i} is {g} on the GPU and {w} on the CPU"
            );
        }
    }
}

/// Returns logits of `rows x cols` in `dtype` with one masked entry in every row wider than one, on
/// the CPU and on `gpu`.
fn logits(rows: usize, cols: usize, dtype: DType, gpu: &Device) -> (Tensor, Tensor) {
    let mut values = uniform(rows * cols, 8.0, (rows * cols) as u64);
    if cols > 1 {
        for row in 0..rows {
            values[row * cols + (row * 7) % cols] = f64::NEG_INFINITY;
        }
    }
    let cpu = Tensor::from_vec(values, (rows, cols), &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .expect("f64 logits convert to every float dtype");
    let cuda = cpu.to_device(gpu).expect("the logits fit on the GPU");
    (cpu, cuda)
}

/// Computes `op(z)` and the gradient of `sum(w * op(z))` (masked outputs left out) on one device.
fn forward_and_gradient(
    z: &Tensor,
    weights: &Tensor,
    activation: Activation,
    log_output: bool,
) -> candle_core::Result<(Tensor, Tensor)> {
    let var = Var::from_tensor(z)?;
    let out = if log_output {
        ssm::log_sigsoftmax(var.as_tensor(), activation)?
    } else {
        ssm::sigsoftmax(var.as_tensor(), activation)?
    };
    let finite = out.ne(f64::NEG_INFINITY)?;
    let unmasked = finite.where_cond(&out, &out.zeros_like()?)?;
    let grads = (unmasked * weights)?.sum_all()?.backward()?;
    let grad = grads.get(&var).expect("z is a variable").clone();
    Ok((out, grad))
}

#[test]
fn forward_and_gradients_match_cpu() -> candle_core::Result<()> {
    let Some(gpu) = gpu() else { return Ok(()) };
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        for (rows, cols) in SHAPES {
            let (z_cpu, z_gpu) = logits(rows, cols, dtype, &gpu);
            let w_cpu =
                Tensor::from_vec(uniform(rows * cols, 1.0, 99), (rows, cols), &Device::Cpu)?
                    .to_dtype(dtype)?;
            let w_gpu = w_cpu.to_device(&gpu)?;
            for activation in ACTIVATIONS {
                for log_output in [false, true] {
                    let case = format!("{dtype:?} {rows}x{cols} {activation:?} log={log_output}");
                    let (y_cpu, g_cpu) =
                        forward_and_gradient(&z_cpu, &w_cpu, activation, log_output)?;
                    let (y_gpu, g_gpu) =
                        forward_and_gradient(&z_gpu, &w_gpu, activation, log_output)?;
                    assert!(y_gpu.device().is_cuda(), "{case}: output left the GPU");
                    assert_eq!(y_gpu.dtype(), dtype, "{case}");
                    assert_close(&format!("{case} output"), &y_gpu, &y_cpu, tolerance(dtype));
                    assert_close(
                        &format!("{case} gradient"),
                        &g_gpu,
                        &g_cpu,
                        tolerance(dtype),
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn cross_entropy_matches_cpu() -> candle_core::Result<()> {
    let Some(gpu) = gpu() else { return Ok(()) };
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        for (rows, cols) in SHAPES {
            let (z_cpu, z_gpu) = logits(rows, cols, dtype, &gpu);
            // Row 2 is ignored; the others point at an unmasked class.
            let targets: Vec<i64> = (0..rows)
                .map(|row| {
                    if row == 2 {
                        -100
                    } else if cols == 1 {
                        0
                    } else {
                        ((row * 7 + 1) % cols) as i64
                    }
                })
                .collect();
            let t_cpu = Tensor::from_vec(targets, rows, &Device::Cpu)?;
            let t_gpu = t_cpu.to_device(&gpu)?;
            for activation in ACTIVATIONS {
                for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
                    let options = CrossEntropyOptions {
                        label_smoothing: 0.1,
                        reduction,
                        ..CrossEntropyOptions::default()
                    };
                    let case = format!("{dtype:?} {rows}x{cols} {activation:?} {reduction:?}");
                    let run = |z: &Tensor, t: &Tensor| -> candle_core::Result<(Tensor, Tensor)> {
                        let var = Var::from_tensor(z)?;
                        let loss = ssm::cross_entropy(var.as_tensor(), t, activation, &options)?;
                        // A per-row loss gets a different weight per row, so the per-row
                        // upstream gradient is exercised too.
                        let total = match reduction {
                            Reduction::None => {
                                let scale =
                                    Tensor::arange(1.0f32, rows as f32 + 1.0, loss.device())?
                                        .to_dtype(loss.dtype())?;
                                (&loss * scale)?.sum_all()?
                            }
                            Reduction::Sum | Reduction::Mean => loss.clone(),
                        };
                        let grads = total.backward()?;
                        Ok((loss, grads.get(&var).expect("a variable").clone()))
                    };
                    let (loss_cpu, grad_cpu) = run(&z_cpu, &t_cpu)?;
                    let (loss_gpu, grad_gpu) = run(&z_gpu, &t_gpu)?;
                    assert_eq!(loss_gpu.dims(), loss_cpu.dims(), "{case}");
                    assert_eq!(loss_gpu.dtype(), loss_cpu.dtype(), "{case}");
                    // Losses are accumulated in f32 (f64 for f64 logits) from the same rounded
                    // logits, so they get the compute type's tolerance.
                    let loss_tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
                    assert_close(&format!("{case} loss"), &loss_gpu, &loss_cpu, loss_tol);
                    assert_close(
                        &format!("{case} gradient"),
                        &grad_gpu,
                        &grad_cpu,
                        tolerance(dtype),
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn gpu_rejects_bad_inputs() -> candle_core::Result<()> {
    let Some(gpu) = gpu() else { return Ok(()) };
    let logits = Tensor::zeros((2, 3), DType::F32, &gpu)?;
    let targets = Tensor::new(&[0i64, 3], &gpu)?;
    let error = ssm::cross_entropy(
        &logits,
        &targets,
        Activation::Sigsoftmax,
        &CrossEntropyOptions::default(),
    )
    .unwrap_err();
    assert!(error.to_string().contains("out of range"), "{error}");

    // A transposed view is copied to a contiguous tensor first.
    let z = Tensor::from_vec(uniform(5 * 7, 3.0, 2), (5, 7), &Device::Cpu)?
        .to_dtype(DType::F32)?
        .to_device(&gpu)?;
    let view = z.t()?;
    assert!(!view.is_contiguous());
    let from_view = ssm::sigsoftmax(&view, Activation::Sigsoftmax)?;
    let from_copy = ssm::sigsoftmax(&view.contiguous()?, Activation::Sigsoftmax)?;
    assert_eq!(flat_f64(&from_view), flat_f64(&from_copy));
    Ok(())
}
