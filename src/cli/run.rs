//! `sigsoftmax run`: one op on .npy files.
//!
//! Every input is read and checked and every result computed before any output file is
//! created, so bad input leaves no output behind.

use std::path::{Path, PathBuf};

use sigsoftmax::cpu::Real;
use sigsoftmax::{
    bf16, f16, Activation, CrossEntropyOptions, DType, Device, Element, Reduction, Shape, Upstream,
};

use super::npy::{self, FloatArray, OutputData, PendingOutput};
use super::{alloc_zeroed, cli_error, CliError, Op, RunArgs};

/// Runs `sigsoftmax run`.
pub fn run(args: &RunArgs) -> Result<(), CliError> {
    check_inputs(args)?;
    let activation = activation(args)?;
    let device = Device::new(args.device)?;

    let logits = npy::read_float(&args.logits, "logits")?;
    let shape = matrix_shape(&logits, &args.logits)?;
    let dtype = args
        .dtype
        .map(DType::from)
        .unwrap_or_else(|| logits.dtype());
    let context = RunContext {
        args,
        device,
        activation,
        shape,
        logits,
    };
    match dtype {
        DType::F32 => context.run::<f32>(),
        DType::F64 => context.run::<f64>(),
        DType::F16 => context.run::<f16>(),
        DType::BF16 => context.run::<bf16>(),
    }
}

/// Rejects missing inputs and options the op does not use, before any file is read.
fn check_inputs(args: &RunArgs) -> Result<(), CliError> {
    let op = args.op.name();
    let needs = |given: bool, flag: &str, description: &str| {
        if given {
            Ok(())
        } else {
            Err(cli_error!("{op} needs {flag} FILE: pass {description}"))
        }
    };
    match args.op {
        Op::Backward => {
            needs(
                args.probs.is_some(),
                "--probs",
                "the probabilities y = forward(z) of these logits",
            )?;
            needs(
                args.grad.is_some(),
                "--grad",
                "the gradient dy with respect to y",
            )?;
        }
        Op::LogBackward => {
            let description = "the log-probabilities l = log-forward(z) of these logits";
            needs(args.log_probs.is_some(), "--log-probs", description)?;
            needs(
                args.grad.is_some(),
                "--grad",
                "the gradient dl with respect to l",
            )?;
        }
        Op::CrossEntropy => {
            needs(
                args.targets.is_some(),
                "--targets",
                "one int32 or int64 class index per row",
            )?;
        }
        Op::Forward | Op::LogForward | Op::Softmax => {}
    }

    let unused = [
        ("--probs", args.probs.is_some(), args.op == Op::Backward),
        (
            "--log-probs",
            args.log_probs.is_some(),
            args.op == Op::LogBackward,
        ),
        (
            "--grad",
            args.grad.is_some(),
            matches!(args.op, Op::Backward | Op::LogBackward),
        ),
        (
            "--targets",
            args.targets.is_some(),
            args.op == Op::CrossEntropy,
        ),
        (
            "--ignore-index",
            args.ignore_index.is_some(),
            args.op == Op::CrossEntropy,
        ),
        (
            "--label-smoothing",
            args.label_smoothing.is_some(),
            args.op == Op::CrossEntropy,
        ),
        (
            "--reduction",
            args.reduction.is_some(),
            args.op == Op::CrossEntropy,
        ),
        (
            "--grad-out",
            args.grad_out.is_some(),
            args.op == Op::CrossEntropy,
        ),
    ];
    if args
        .grad_out
        .as_deref()
        .is_some_and(|grad_out| same_file(grad_out, &args.out))
    {
        return Err(cli_error!(
            "--out and --grad-out are both `{}`; pass two different files",
            args.out.display()
        ));
    }
    for (flag, given, used) in unused {
        if given && !used {
            return Err(cli_error!("{op} does not use {flag}; remove it"));
        }
    }

    npy::check_output_path(&args.out, "output")?;
    if let Some(grad_out) = &args.grad_out {
        npy::check_output_path(grad_out, "gradient output")?;
    }
    Ok(())
}

fn activation(args: &RunArgs) -> Result<Activation, CliError> {
    let requested = args.activation.map(Activation::from);
    if args.op == Op::Softmax && requested == Some(Activation::Sigsoftmax) {
        return Err(cli_error!(
            "op softmax always uses the softmax activation; use op forward for sigsoftmax"
        ));
    }
    Ok(args.op.activation(requested.unwrap_or_default()))
}

/// Returns the shape of a 2-D logits array, or an error for any other rank.
fn matrix_shape(logits: &FloatArray, path: &Path) -> Result<Shape, CliError> {
    let [rows, cols] = logits.shape[..] else {
        return Err(cli_error!(
            "logits file `{}` has shape {:?} but must be 2-D [rows, cols]; \
             reshape it, for example with z.reshape(-1, z.shape[-1])",
            path.display(),
            logits.shape
        ));
    };
    Shape::new(rows, cols).map_err(|error| cli_error!("logits file `{}`: {error}", path.display()))
}

/// Everything `run` needs once the storage type is known.
struct RunContext<'a> {
    args: &'a RunArgs,
    device: Device,
    activation: Activation,
    shape: Shape,
    logits: FloatArray,
}

impl RunContext<'_> {
    fn run<T: Element>(&self) -> Result<(), CliError> {
        let z: Vec<T> = self.logits.to_vec();
        let (activation, shape, device) = (self.activation, self.shape, &self.device);
        let mut out = alloc_zeroed::<T>(shape.len(), "the output")?;
        match self.args.op {
            Op::Forward | Op::Softmax => device.forward(activation, shape, &z, &mut out)?,
            Op::LogForward => device.log_forward(activation, shape, &z, &mut out)?,
            Op::Backward => {
                let y = self.read_like_logits::<T>(&self.args.probs, "probs")?;
                let dy = self.read_like_logits::<T>(&self.args.grad, "grad")?;
                device.backward(activation, shape, &z, &y, &dy, &mut out)?;
            }
            Op::LogBackward => {
                let l = self.read_like_logits::<T>(&self.args.log_probs, "log-probs")?;
                let dl = self.read_like_logits::<T>(&self.args.grad, "grad")?;
                device.log_backward(activation, shape, &z, &l, &dl, &mut out)?;
            }
            Op::CrossEntropy => return self.cross_entropy(&z, out),
        }

        let dims = [shape.rows(), shape.cols()];
        let pending = npy::write_pending(
            &self.args.out,
            "output",
            &dims,
            &OutputData::from_storage(&out),
        )?;
        pending.commit()
    }

    /// Runs cross-entropy, writes the losses and the gradient, and prints the reduced loss.
    fn cross_entropy<T: Element>(&self, z: &[T], mut grad: Vec<T>) -> Result<(), CliError> {
        let args = self.args;
        let shape = self.shape;
        let targets = self.read_targets()?;
        let options = CrossEntropyOptions {
            ignore_index: Some(args.ignore_index.unwrap_or(-100)),
            label_smoothing: args.label_smoothing.unwrap_or(0.0),
            reduction: args
                .reduction
                .map(Reduction::from)
                .unwrap_or(Reduction::Mean),
            upstream: Upstream::One,
        };
        let mut losses = alloc_zeroed::<T::Accum>(shape.rows(), "the losses")?;
        let grad_buffer = args.grad_out.as_ref().map(|_| grad.as_mut_slice());
        let loss = self.device.cross_entropy(
            self.activation,
            shape,
            z,
            &targets,
            &options,
            &mut losses,
            grad_buffer,
        )?;

        // Write every file before renaming any, so a failure leaves no output at all.
        let (loss_dims, loss_values) = match options.reduction {
            Reduction::None => (
                vec![shape.rows()],
                OutputData::losses(T::DTYPE, losses.iter().map(|loss| loss.to_f64())),
            ),
            Reduction::Sum | Reduction::Mean => {
                (vec![], OutputData::losses(T::DTYPE, std::iter::once(loss)))
            }
        };
        let mut pending: Vec<PendingOutput> = vec![npy::write_pending(
            &args.out,
            "output",
            &loss_dims,
            &loss_values,
        )?];
        if let Some(grad_out) = &args.grad_out {
            let dims = [shape.rows(), shape.cols()];
            pending.push(npy::write_pending(
                grad_out,
                "gradient output",
                &dims,
                &OutputData::from_storage(&grad),
            )?);
        }
        for output in pending {
            output.commit()?;
        }

        // The reduced loss; with reduction none the library returns the sum over rows.
        super::write_stdout(&format!("{loss}\n"))?;
        Ok(())
    }

    /// Reads a float file that must have the logits' shape, converted to storage type `T`.
    fn read_like_logits<T: Element>(
        &self,
        path: &Option<PathBuf>,
        role: &str,
    ) -> Result<Vec<T>, CliError> {
        let path = path
            .as_ref()
            .ok_or_else(|| cli_error!("{} needs --{role} FILE", self.args.op.name()))?;
        let array = npy::read_float(path, role)?;
        let expected = [self.shape.rows(), self.shape.cols()];
        if array.shape != expected {
            return Err(cli_error!(
                "{role} file `{}` has shape {:?} but the logits have shape {expected:?}; \
                 pass an array of the logits' shape",
                path.display(),
                array.shape
            ));
        }
        Ok(array.to_vec())
    }

    /// Reads the targets: a 1-D integer array with one entry per row.
    fn read_targets(&self) -> Result<Vec<i64>, CliError> {
        let path = self
            .args
            .targets
            .as_ref()
            .ok_or_else(|| cli_error!("cross-entropy needs --targets FILE"))?;
        let (dims, targets) = npy::read_int(path, "targets")?;
        if dims != [self.shape.rows()] {
            return Err(cli_error!(
                "targets file `{}` has shape {dims:?} but must be 1-D with one class index per \
                 row of the logits, shape [{}]",
                path.display(),
                self.shape.rows()
            ));
        }
        Ok(targets)
    }
}

/// Whether two output paths name the same file, however they are spelled (`out.npy`,
/// `./out.npy`, an absolute path or a symbolic link to a folder).
fn same_file(a: &Path, b: &Path) -> bool {
    fn resolve(path: &Path) -> Option<PathBuf> {
        if let Ok(full) = path.canonicalize() {
            return Some(full);
        }
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        Some(parent.canonicalize().ok()?.join(path.file_name()?))
    }
    a == b || matches!((resolve(a), resolve(b)), (Some(a), Some(b)) if a == b)
}
