//! The candle custom ops: values against `sigsoftmax::cpu`, autograd gradients against central
//! finite differences in f64 and against the CPU backward ops, and a tiny model that trains.
//! With the feature `candle-cuda`, the module `cuda` compares candle's CUDA tensors with the CPU.
#![cfg(feature = "candle")]

use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use sigsoftmax::{candle as ssm, cpu, Activation, CrossEntropyOptions, Reduction, Shape};

#[cfg(feature = "candle-cuda")]
#[path = "candle/cuda.rs"]
mod cuda;

const ACTIVATIONS: [Activation; 2] = [Activation::Sigsoftmax, Activation::Softmax];

/// Deterministic values in `[-scale, scale)` from a 64-bit xorshift generator.
fn uniform(len: usize, scale: f64, seed: u64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
            scale * (2.0 * unit - 1.0)
        })
        .collect()
}

/// Copies a float tensor from any device to a flat `Vec<f64>`.
fn flat_f64(tensor: &Tensor) -> Vec<f64> {
    tensor
        .to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("a float tensor converts to Vec<f64>")
}

/// `max_i |a_i - b_i|`.
fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared vectors differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Central differences of `loss` at `point`, one coordinate at a time.
fn finite_difference(point: &[f64], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    // With h = 1e-5 the truncation error is about h^2 |f'''| / 6 < 1e-9 for these smooth
    // functions of O(1) inputs, and the rounding error about 1e-16 |f| / h = 1e-11.
    const H: f64 = 1e-5;
    let mut shifted = point.to_vec();
    (0..point.len())
        .map(|i| {
            shifted[i] = point[i] + H;
            let plus = loss(&shifted);
            shifted[i] = point[i] - H;
            let minus = loss(&shifted);
            shifted[i] = point[i];
            (plus - minus) / (2.0 * H)
        })
        .collect()
}

/// The bound for a finite-difference gradient check: see [`finite_difference`].
const FD_TOLERANCE: f64 = 1e-7;

#[test]
fn forward_matches_cpu_api() -> candle_core::Result<()> {
    let dims = (2, 3, 17);
    let values: Vec<f32> = uniform(2 * 3 * 17, 6.0, 1)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let z = Tensor::from_vec(values.clone(), dims, &Device::Cpu)?;
    let shape = Shape::new(6, 17).unwrap();
    for activation in ACTIVATIONS {
        let mut expected = vec![0.0f32; values.len()];
        cpu::forward(activation, shape, &values, &mut expected).unwrap();
        let y = ssm::sigsoftmax(&z, activation)?;
        assert_eq!(y.dims(), &[2, 3, 17]);
        assert_eq!(
            y.flatten_all()?.to_vec1::<f32>()?,
            expected,
            "{activation:?}"
        );

        cpu::log_forward(activation, shape, &values, &mut expected).unwrap();
        let l = ssm::log_sigsoftmax(&z, activation)?;
        assert_eq!(
            l.flatten_all()?.to_vec1::<f32>()?,
            expected,
            "log {activation:?}"
        );
    }
    Ok(())
}

#[test]
fn non_contiguous_input_is_copied() -> candle_core::Result<()> {
    let values: Vec<f32> = uniform(5 * 7, 3.0, 2)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let z = Tensor::from_vec(values, (5, 7), &Device::Cpu)?;
    let transposed = z.t()?;
    assert!(!transposed.is_contiguous());
    let from_view = ssm::sigsoftmax(&transposed, Activation::Sigsoftmax)?;
    let from_copy = ssm::sigsoftmax(&transposed.contiguous()?, Activation::Sigsoftmax)?;
    assert_eq!(
        from_view.flatten_all()?.to_vec1::<f32>()?,
        from_copy.flatten_all()?.to_vec1::<f32>()?
    );
    Ok(())
}

#[test]
fn half_dtypes_match_cpu_api() -> candle_core::Result<()> {
    let values = uniform(4 * 9, 5.0, 3);
    let shape = Shape::new(4, 9).unwrap();
    let z = Tensor::from_vec(values, (4, 9), &Device::Cpu)?;

    let z16 = z.to_dtype(DType::F16)?;
    let input: Vec<half::f16> = z16.flatten_all()?.to_vec1()?;
    let mut expected = vec![half::f16::ZERO; input.len()];
    cpu::forward(Activation::Sigsoftmax, shape, &input, &mut expected).unwrap();
    let y16 = ssm::sigsoftmax(&z16, Activation::Sigsoftmax)?;
    assert_eq!(y16.dtype(), DType::F16);
    assert_eq!(y16.flatten_all()?.to_vec1::<half::f16>()?, expected);

    let zb = z.to_dtype(DType::BF16)?;
    let input: Vec<half::bf16> = zb.flatten_all()?.to_vec1()?;
    let mut expected = vec![half::bf16::ZERO; input.len()];
    cpu::log_forward(Activation::Sigsoftmax, shape, &input, &mut expected).unwrap();
    let lb = ssm::log_sigsoftmax(&zb, Activation::Sigsoftmax)?;
    assert_eq!(lb.dtype(), DType::BF16);
    assert_eq!(lb.flatten_all()?.to_vec1::<half::bf16>()?, expected);
    Ok(())
}

#[test]
fn unsupported_inputs_are_rejected() -> candle_core::Result<()> {
    let ints = Tensor::new(&[1u32, 2, 3], &Device::Cpu)?;
    let error = ssm::sigsoftmax(&ints, Activation::Sigsoftmax).unwrap_err();
    assert!(error.to_string().contains("U32"), "{error}");

    let scalar = Tensor::new(1.0f32, &Device::Cpu)?;
    let error = ssm::sigsoftmax(&scalar, Activation::Sigsoftmax).unwrap_err();
    assert!(error.to_string().contains("scalar"), "{error}");

    let logits = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
    let targets = Tensor::new(&[0i64, 1, 2], &Device::Cpu)?;
    let options = CrossEntropyOptions::default();
    let error =
        ssm::cross_entropy(&logits, &targets, Activation::Sigsoftmax, &options).unwrap_err();
    assert!(error.to_string().contains("targets have shape"), "{error}");

    let targets = Tensor::new(&[0i64, 3], &Device::Cpu)?;
    let error =
        ssm::cross_entropy(&logits, &targets, Activation::Sigsoftmax, &options).unwrap_err();
    assert!(error.to_string().contains("out of range"), "{error}");
    Ok(())
}

/// Checks `d/dz sum(w * op(z))` from candle's autograd against finite differences, for the
/// probabilities and the log-probabilities, with one masked (`-inf`) logit.
#[test]
fn forward_gradients_match_finite_differences() -> candle_core::Result<()> {
    let (rows, cols) = (3, 8);
    let mut point = uniform(rows * cols, 4.0, 4);
    point[5] = f64::NEG_INFINITY;
    let weights = Tensor::from_vec(uniform(rows * cols, 1.0, 5), (rows, cols), &Device::Cpu)?;
    for activation in ACTIVATIONS {
        for log_output in [false, true] {
            let apply = |z: &Tensor| {
                if log_output {
                    ssm::log_sigsoftmax(z, activation)
                } else {
                    ssm::sigsoftmax(z, activation)
                }
            };
            // Masked log-probabilities are -inf, so the weighted sum skips them.
            let weighted_sum = |z: &Tensor| -> candle_core::Result<Tensor> {
                let out = apply(z)?;
                let finite = out.ne(f64::NEG_INFINITY)?;
                let out = finite.where_cond(&out, &out.zeros_like()?)?;
                (out * &weights)?.sum_all()
            };
            let z = Var::from_vec(point.clone(), (rows, cols), &Device::Cpu)?;
            let grads = weighted_sum(z.as_tensor())?.backward()?;
            let autograd = flat_f64(grads.get(&z).expect("z is a variable"));

            let numeric = finite_difference(&point, |p| {
                let z = Tensor::from_slice(p, (rows, cols), &Device::Cpu).unwrap();
                weighted_sum(&z).unwrap().to_scalar::<f64>().unwrap()
            });
            let error = max_abs_diff(&autograd, &numeric);
            assert!(
                error < FD_TOLERANCE,
                "{activation:?} log={log_output}: max error {error:e}"
            );
            assert_eq!(autograd[5], 0.0, "masked entry gets gradient 0");
        }
    }
    Ok(())
}

/// The gradient candle computes is exactly what `cpu::backward` returns for `dy = w`.
#[test]
fn forward_gradient_matches_cpu_backward() -> candle_core::Result<()> {
    let (rows, cols) = (4, 33);
    let values: Vec<f32> = uniform(rows * cols, 8.0, 6)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let weights: Vec<f32> = uniform(rows * cols, 1.0, 7)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let shape = Shape::new(rows, cols).unwrap();
    let z = Var::from_vec(values.clone(), (rows, cols), &Device::Cpu)?;
    let w = Tensor::from_vec(weights.clone(), (rows, cols), &Device::Cpu)?;

    let y = ssm::sigsoftmax(z.as_tensor(), Activation::Sigsoftmax)?;
    let grads = (&y * &w)?.sum_all()?.backward()?;
    let autograd: Vec<f32> = grads.get(&z).unwrap().flatten_all()?.to_vec1()?;

    let mut y_direct = vec![0.0f32; rows * cols];
    cpu::forward(Activation::Sigsoftmax, shape, &values, &mut y_direct).unwrap();
    let mut expected = vec![0.0f32; rows * cols];
    cpu::backward(
        Activation::Sigsoftmax,
        shape,
        &values,
        &y_direct,
        &weights,
        &mut expected,
    )
    .unwrap();
    assert_eq!(autograd, expected);
    Ok(())
}

/// Cross-entropy gradients for every reduction, with label smoothing and an ignored row,
/// against finite differences of the same candle function.
#[test]
fn cross_entropy_gradients_match_finite_differences() -> candle_core::Result<()> {
    let (rows, cols) = (5, 7);
    let point = uniform(rows * cols, 3.0, 8);
    let targets = Tensor::new(&[3i64, -100, 0, 6, 2], &Device::Cpu)?;
    let row_weights = Tensor::from_vec(uniform(rows, 1.0, 9), rows, &Device::Cpu)?;
    for activation in ACTIVATIONS {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            for label_smoothing in [0.0, 0.1] {
                let options = CrossEntropyOptions {
                    reduction,
                    label_smoothing,
                    ..CrossEntropyOptions::default()
                };
                let scalar_loss = |z: &Tensor| -> candle_core::Result<Tensor> {
                    let loss = ssm::cross_entropy(z, &targets, activation, &options)?;
                    match reduction {
                        // Weights that are not all 1 check the per-row upstream gradient.
                        Reduction::None => (loss * &row_weights)?.sum_all(),
                        Reduction::Sum | Reduction::Mean => Ok(loss),
                    }
                };
                let z = Var::from_vec(point.clone(), (rows, cols), &Device::Cpu)?;
                let grads = scalar_loss(z.as_tensor())?.backward()?;
                let autograd = flat_f64(grads.get(&z).expect("z is a variable"));
                let numeric = finite_difference(&point, |p| {
                    let z = Tensor::from_slice(p, (rows, cols), &Device::Cpu).unwrap();
                    scalar_loss(&z).unwrap().to_scalar::<f64>().unwrap()
                });
                let error = max_abs_diff(&autograd, &numeric);
                let case = format!("{activation:?} {reduction:?} eps={label_smoothing}");
                assert!(error < FD_TOLERANCE, "{case}: max error {error:e}");
                assert!(
                    autograd[cols..2 * cols].iter().all(|&g| g == 0.0),
                    "{case}: the ignored row gets gradient 0"
                );
            }
        }
    }
    Ok(())
}

/// Losses and gradient in f32 equal the direct `cpu::cross_entropy` call.
#[test]
fn cross_entropy_matches_cpu_api() -> candle_core::Result<()> {
    let (rows, cols) = (6, 50);
    let values: Vec<f32> = uniform(rows * cols, 5.0, 10)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let target_values = [0i64, 49, 7, 7, 13, 21];
    let shape = Shape::new(rows, cols).unwrap();
    let options = CrossEntropyOptions::default();

    let mut losses = vec![0.0f32; rows];
    let mut expected_grad = vec![0.0f32; rows * cols];
    let expected = cpu::cross_entropy(
        Activation::Sigsoftmax,
        shape,
        &values,
        &target_values,
        &options,
        &mut losses,
        Some(&mut expected_grad),
    )
    .unwrap();

    // u32 targets are widened to i64 on the way in.
    let targets = Tensor::new(&target_values.map(|t| t as u32), &Device::Cpu)?;
    let z = Var::from_vec(values, (rows, cols), &Device::Cpu)?;
    let loss = ssm::cross_entropy(z.as_tensor(), &targets, Activation::Sigsoftmax, &options)?;
    assert_eq!(loss.dims(), &[] as &[usize]);
    assert_eq!(loss.dtype(), DType::F32);
    assert_eq!(loss.to_scalar::<f32>()?, expected as f32);
    let grads = loss.backward()?;
    let grad: Vec<f32> = grads.get(&z).unwrap().flatten_all()?.to_vec1()?;
    assert_eq!(grad, expected_grad);

    let per_row_options = CrossEntropyOptions {
        reduction: Reduction::None,
        ..options
    };
    let per_row = ssm::cross_entropy(
        z.as_tensor(),
        &targets,
        Activation::Sigsoftmax,
        &per_row_options,
    )?;
    assert_eq!(per_row.dims(), &[rows]);
    assert_eq!(per_row.to_vec1::<f32>()?, losses);
    Ok(())
}

/// The second derivative through the backward op, against finite differences of the first
/// derivative. candle detaches gradients unless `CANDLE_GRAD_DO_NOT_DETACH` is set before the
/// thread's first backward pass, so this test sets it (other tests do not depend on it).
#[test]
fn second_derivative_matches_finite_differences() -> candle_core::Result<()> {
    std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1");
    let (rows, cols) = (2, 6);
    let point = uniform(rows * cols, 3.0, 11);
    let weights = Tensor::from_vec(uniform(rows * cols, 1.0, 12), (rows, cols), &Device::Cpu)?;
    let probe = Tensor::from_vec(uniform(rows * cols, 1.0, 13), (rows, cols), &Device::Cpu)?;
    for activation in ACTIVATIONS {
        for log_output in [false, true] {
            // h(z) = sum(v * d/dz sum(w * op(z))), a scalar whose gradient needs the second
            // derivative of op.
            let first_derivative_probe = |z: &Var| -> candle_core::Result<Tensor> {
                let out = if log_output {
                    ssm::log_sigsoftmax(z.as_tensor(), activation)?
                } else {
                    ssm::sigsoftmax(z.as_tensor(), activation)?
                };
                let grads = (out * &weights)?.sum_all()?.backward()?;
                (grads.get(z).expect("z is a variable") * &probe)?.sum_all()
            };
            let z = Var::from_vec(point.clone(), (rows, cols), &Device::Cpu)?;
            let grads = first_derivative_probe(&z)?.backward()?;
            let autograd = flat_f64(grads.get(&z).expect("z is a variable"));
            let numeric = finite_difference(&point, |p| {
                let z = Var::from_slice(p, (rows, cols), &Device::Cpu).unwrap();
                first_derivative_probe(&z)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            });
            let error = max_abs_diff(&autograd, &numeric);
            assert!(
                error < FD_TOLERANCE,
                "{activation:?} log={log_output}: max error {error:e}"
            );
        }
    }
    Ok(())
}

/// A linear layer with the fused sigsoftmax cross-entropy learns a fixed random labelling of
/// random inputs: the loss falls over a few SGD steps.
#[test]
fn tiny_model_loss_falls() -> candle_core::Result<()> {
    let (batch, features, classes) = (64, 16, 10);
    let device = Device::Cpu;
    let inputs = Tensor::from_vec(
        uniform(batch * features, 1.0, 14)
            .into_iter()
            .map(|v| v as f32)
            .collect::<Vec<_>>(),
        (batch, features),
        &device,
    )?;
    let labels: Vec<i64> = (0..batch as i64)
        .map(|i| (i * 7 + 3) % classes as i64)
        .collect();
    let targets = Tensor::new(labels.as_slice(), &device)?;

    let var_map = VarMap::new();
    let builder = VarBuilder::from_varmap(&var_map, DType::F32, &device);
    let layer = candle_nn::linear(features, classes, builder.pp("out"))?;
    let mut sgd = candle_nn::SGD::new(var_map.all_vars(), 0.5)?;
    let options = CrossEntropyOptions::default();

    let mut losses = Vec::new();
    for _ in 0..30 {
        let logits = layer.forward(&inputs)?;
        let loss = ssm::cross_entropy(&logits, &targets, Activation::Sigsoftmax, &options)?;
        losses.push(loss.to_scalar::<f32>()?);
        sgd.backward_step(&loss)?;
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(losses.iter().all(|l| l.is_finite()), "losses {losses:?}");
    assert!(last < 0.8 * first, "loss fell only from {first} to {last}");

    // The trained layer's predictions agree with the labels more often than chance (1 in 10).
    let predictions: Vec<u32> = layer.forward(&inputs)?.argmax(D::Minus1)?.to_vec1()?;
    let correct = predictions
        .iter()
        .zip(&labels)
        .filter(|(&p, &t)| i64::from(p) == t)
        .count();
    assert!(correct > batch / 5, "{correct} of {batch} correct");
    Ok(())
}
