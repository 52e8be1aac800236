//! Command-line arguments of the `sigsoftmax` program and the error it reports.
//!
//! With no subcommand the program runs `bench` with its defaults, so `cargo run --release` is
//! the benchmark. `run` applies one op to .npy files.

pub mod bench;
mod bench_cpu;
#[cfg(cuda_kernels)]
mod bench_cuda;
mod npy;
mod random;
mod report;
pub mod run;
mod timing;

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sigsoftmax::{Activation, DType, DeviceRequest, Reduction, Shape};

/// The parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "sigsoftmax",
    version,
    about = "Benchmark and run sigsoftmax (a drop-in replacement for softmax) on the CPU or a GPU",
    long_about = "Benchmark and run sigsoftmax, sigmoid(z_i) exp(z_i) / sum_j sigmoid(z_j) \
                  exp(z_j), a drop-in replacement for softmax (Kanai et al., NeurIPS 2018).\n\n\
                  Without a subcommand, runs `bench` with its defaults and the options given.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options of `bench`, for the run without a subcommand.
    #[command(flatten)]
    pub bench: BenchArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Time the ops on random logits and compare them with a memory pass of the same bytes.
    Bench(BenchArgs),
    /// Apply one op to logits read from a .npy file and write the result as .npy.
    Run(RunArgs),
}

/// An op as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Op {
    /// y = sigsoftmax(z).
    Forward,
    /// l = log sigsoftmax(z).
    LogForward,
    /// dz from z, y = forward(z) and dy.
    Backward,
    /// dz from z, l = log_forward(z) and dl.
    LogBackward,
    /// Per-row losses -log y[target] and their gradient with respect to z.
    CrossEntropy,
    /// y = softmax(z): the forward op with the softmax activation, the baseline.
    Softmax,
}

impl Op {
    /// Returns the name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Forward => "forward",
            Op::LogForward => "log-forward",
            Op::Backward => "backward",
            Op::LogBackward => "log-backward",
            Op::CrossEntropy => "cross-entropy",
            Op::Softmax => "softmax",
        }
    }

    /// Returns the activation this op runs with: `softmax` forces the softmax activation, and
    /// the other ops take the requested one.
    pub fn activation(self, requested: Activation) -> Activation {
        match self {
            Op::Softmax => Activation::Softmax,
            _ => requested,
        }
    }
}

/// A storage type as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F32,
    F64,
    F16,
    Bf16,
}

impl From<DTypeArg> for DType {
    fn from(dtype: DTypeArg) -> Self {
        match dtype {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F64 => DType::F64,
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
}

/// An activation as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ActivationArg {
    Sigsoftmax,
    Softmax,
}

impl From<ActivationArg> for Activation {
    fn from(activation: ActivationArg) -> Self {
        match activation {
            ActivationArg::Sigsoftmax => Activation::Sigsoftmax,
            ActivationArg::Softmax => Activation::Softmax,
        }
    }
}

/// A cross-entropy reduction as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReductionArg {
    None,
    Sum,
    Mean,
}

impl From<ReductionArg> for Reduction {
    fn from(reduction: ReductionArg) -> Self {
        match reduction {
            ReductionArg::None => Reduction::None,
            ReductionArg::Sum => Reduction::Sum,
            ReductionArg::Mean => Reduction::Mean,
        }
    }
}

/// Options of `bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Op to time; repeat the flag or separate with commas
    /// [default: forward, softmax, backward, cross-entropy]
    #[arg(long = "op", value_enum, value_delimiter = ',', value_name = "OP")]
    pub ops: Vec<Op>,

    /// Storage type to time; repeat or separate with commas [default: f32, bf16]
    #[arg(
        long = "dtype",
        value_enum,
        value_delimiter = ',',
        value_name = "DTYPE"
    )]
    pub dtypes: Vec<DTypeArg>,

    /// Shape ROWSxCOLS to time, such as 8x50257; repeat or separate with commas
    /// [default: rows 1, 8 and 32 times cols 32000, 50257, 128256 and 256000]
    #[arg(long = "shape", value_parser = parse_shape, value_delimiter = ',', value_name = "ROWSxCOLS")]
    pub shapes: Vec<Shape>,

    /// Device: auto (the first GPU if one is usable, else the CPU), cpu, cuda or cuda:N
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceRequest,

    /// CPU threads for the ops and the memory pass, 1 to 1024 [default: all logical cores]
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    pub threads: Option<NonZeroUsize>,

    /// Activation of every op except `softmax`, which always uses softmax
    #[arg(long, value_enum, default_value_t = ActivationArg::Sigsoftmax)]
    pub activation: ActivationArg,

    /// Print one JSON object per line per measurement instead of the table
    #[arg(long)]
    pub json: bool,

    /// Untimed repetitions of each op and of its memory pass before timing
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub warmup: usize,

    /// Minimum number of timed repetitions of each op (and of its memory pass)
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,

    /// Keep repeating until the timed repetitions of each op add up to at least this many
    /// seconds, up to 1,000,000 repetitions
    #[arg(
        long,
        default_value_t = 0.1,
        value_name = "SECONDS",
        value_parser = parse_seconds,
        allow_negative_numbers = true
    )]
    pub min_time: f64,
}

/// Options of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The op to apply
    #[arg(value_enum)]
    pub op: Op,

    /// Logits z: a 2-D float16, float32 or float64 .npy file of shape [rows, cols]
    #[arg(long, value_name = "FILE")]
    pub logits: PathBuf,

    /// Probabilities y = forward(z), same shape as the logits (backward only)
    #[arg(long, value_name = "FILE")]
    pub probs: Option<PathBuf>,

    /// Log-probabilities l = log-forward(z), same shape as the logits (log-backward only)
    #[arg(long, value_name = "FILE")]
    pub log_probs: Option<PathBuf>,

    /// Gradient dy (backward) or dl (log-backward), same shape as the logits
    #[arg(long, value_name = "FILE")]
    pub grad: Option<PathBuf>,

    /// Class index per row: a 1-D int32 or int64 .npy file of length rows (cross-entropy only)
    #[arg(long, value_name = "FILE")]
    pub targets: Option<PathBuf>,

    /// Target value whose rows get loss 0 and gradient 0 and do not count in the mean
    /// (cross-entropy only) [default: -100]
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub ignore_index: Option<i64>,

    /// Label smoothing eps in [0, 1]: the target distribution becomes
    /// (1 - eps) onehot(t) + eps / cols on unmasked entries, without renormalizing over them
    /// (cross-entropy only) [default: 0]
    #[arg(long, value_name = "EPS", allow_negative_numbers = true)]
    pub label_smoothing: Option<f64>,

    /// Reduction of the per-row losses (cross-entropy only) [default: mean]
    #[arg(long, value_enum)]
    pub reduction: Option<ReductionArg>,

    /// Storage type of the computation [default: the logits file's type]
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,

    /// Device: auto (the first GPU if one is usable, else the CPU), cpu, cuda or cuda:N
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceRequest,

    /// Activation [default: sigsoftmax; the `softmax` op always uses softmax]
    #[arg(long, value_enum)]
    pub activation: Option<ActivationArg>,

    /// Output .npy file: y, l or dz, or the losses for cross-entropy (shape [rows] for
    /// --reduction none, a 0-d array otherwise). Float32, or float64/float16 when the storage
    /// type is f64/f16; cross-entropy losses are float32 (float64 for f64)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Output .npy file for the gradient of cross-entropy with respect to the logits (optional)
    #[arg(long, value_name = "FILE")]
    pub grad_out: Option<PathBuf>,
}

fn parse_shape(text: &str) -> Result<Shape, String> {
    let invalid =
        || format!("invalid shape `{text}`: use ROWSxCOLS with positive integers, such as 8x50257");
    let (rows, cols) = text.split_once(['x', 'X']).ok_or_else(invalid)?;
    let rows: usize = rows.trim().parse().map_err(|_| invalid())?;
    let cols: usize = cols.trim().parse().map_err(|_| invalid())?;
    Shape::new(rows, cols).map_err(|error| error.to_string())
}

/// The most threads `--threads` accepts: above the core count of any current CPU, and low
/// enough that a typo cannot start a hundred thousand threads.
const MAX_THREADS: usize = 1024;

fn parse_threads(text: &str) -> Result<NonZeroUsize, String> {
    let invalid = || format!("invalid thread count `{text}`: use a number from 1 to {MAX_THREADS}");
    let threads: usize = text.trim().parse().map_err(|_| invalid())?;
    match NonZeroUsize::new(threads) {
        Some(threads) if threads.get() <= MAX_THREADS => Ok(threads),
        _ => Err(invalid()),
    }
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        // Duration holds up to about 1.8e19 seconds; a day is already far more than any run.
        Ok(seconds) if (0.0..=86_400.0).contains(&seconds) => Ok(seconds),
        _ => Err(format!(
            "invalid time `{text}`: use a number of seconds from 0 to 86400"
        )),
    }
}

/// Writes `text` to standard output. A closed pipe (as with `| head`) ends the program quietly
/// with status 0; any other failure, such as a full disk, becomes an error.
pub fn write_stdout(text: &str) -> Result<(), CliError> {
    use std::io::Write;

    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => Err(CliError(format!(
            "failed to write to standard output: {error}"
        ))),
    }
}

/// An error the program reports as one line, `error: MESSAGE`, before exiting with status 1.
#[derive(Debug)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<sigsoftmax::Error> for CliError {
    fn from(error: sigsoftmax::Error) -> Self {
        CliError(error.to_string())
    }
}

/// Builds a [`CliError`] from a format string.
macro_rules! cli_error {
    ($($arg:tt)*) => {
        $crate::cli::CliError(format!($($arg)*))
    };
}
pub(crate) use cli_error;

/// Allocates a zeroed buffer of `len` elements, or returns an error naming the size instead of
/// aborting when the memory is not there.
pub(crate) fn alloc_zeroed<T: Default + Clone>(
    len: usize,
    purpose: &str,
) -> Result<Vec<T>, CliError> {
    let mut buffer = Vec::new();
    if buffer.try_reserve_exact(len).is_err() {
        let gib = len as f64 * std::mem::size_of::<T>() as f64 / (1u64 << 30) as f64;
        return Err(cli_error!(
            "failed to allocate {gib:.2} GiB for {purpose}; use a smaller shape"
        ));
    }
    buffer.resize(len, T::default());
    Ok(buffer)
}
