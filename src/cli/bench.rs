//! `sigsoftmax bench`: times each op, storage type and shape requested, with progress on stderr
//! and the results on stdout as a table or as JSON lines.

use std::io::IsTerminal;
use std::time::Duration;

use sigsoftmax::{bf16, f16, Activation, DType, Device, Element, Shape};

use super::bench_cpu::{CaseTiming, CpuBuffers};
use super::report::{format_table, Measurement};
use super::timing::Settings;
use super::{BenchArgs, CliError, Op};

/// Vocabulary sizes of real models: Llama 2, GPT-2, Llama 3 and Gemma.
const DEFAULT_COLS: [usize; 4] = [32000, 50257, 128256, 256000];

/// One token, a few tokens, and a small batch of tokens.
const DEFAULT_ROWS: [usize; 3] = [1, 8, 32];

const DEFAULT_OPS: [Op; 4] = [Op::Forward, Op::Softmax, Op::Backward, Op::CrossEntropy];

const DEFAULT_DTYPES: [DType; 2] = [DType::F32, DType::BF16];

/// Runs `sigsoftmax bench` (and the program without a subcommand).
pub fn bench(args: &BenchArgs) -> Result<(), CliError> {
    let plan = Plan::from_args(args)?;
    let device = Device::new(args.device)?;
    let threads = match args.threads {
        Some(threads) => threads.get(),
        None => std::thread::available_parallelism().map_or(1, |threads| threads.get()),
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|error| sigsoftmax::Error::ThreadPool {
            threads,
            message: error.to_string(),
        })?;

    let mut output = Output::new(args.json, plan.cases());
    let result = pool.install(|| match &device {
        Device::Cpu => bench_cpu(&plan, threads, &mut output),
        #[cfg(cuda_kernels)]
        Device::Cuda(gpu) => cuda::bench_cuda(&plan, gpu, &mut output),
    });

    // Clear the progress line first, so that an error message starts on a line of its own.
    output.clear_progress();
    result?;
    output.print_table()?;
    Ok(())
}

/// The ops, storage types, shapes and timing settings of one benchmark run.
struct Plan {
    ops: Vec<Op>,
    dtypes: Vec<DType>,
    shapes: Vec<Shape>,
    activation: Activation,
    settings: Settings,
}

impl Plan {
    fn from_args(args: &BenchArgs) -> Result<Self, CliError> {
        let ops = if args.ops.is_empty() {
            DEFAULT_OPS.to_vec()
        } else {
            args.ops.clone()
        };
        let dtypes = if args.dtypes.is_empty() {
            DEFAULT_DTYPES.to_vec()
        } else {
            args.dtypes.iter().map(|&dtype| dtype.into()).collect()
        };
        let shapes = if args.shapes.is_empty() {
            let shapes = DEFAULT_COLS
                .iter()
                .flat_map(|&cols| DEFAULT_ROWS.map(|rows| Shape::new(rows, cols)));
            shapes.collect::<Result<_, _>>()?
        } else {
            args.shapes.clone()
        };
        let settings = Settings {
            warmup: args.warmup,
            min_iters: args.iters,
            min_time: Duration::from_secs_f64(args.min_time),
        };
        Ok(Plan {
            ops,
            dtypes,
            shapes,
            activation: args.activation.into(),
            settings,
        })
    }

    fn cases(&self) -> usize {
        self.ops.len() * self.dtypes.len() * self.shapes.len()
    }

    fn needs_backward_inputs(&self) -> bool {
        self.ops
            .iter()
            .any(|op| matches!(op, Op::Backward | Op::LogBackward))
    }
}

fn bench_cpu(plan: &Plan, threads: usize, output: &mut Output) -> Result<(), CliError> {
    for &dtype in &plan.dtypes {
        match dtype {
            DType::F32 => bench_cpu_typed::<f32>(plan, threads, output)?,
            DType::F64 => bench_cpu_typed::<f64>(plan, threads, output)?,
            DType::F16 => bench_cpu_typed::<f16>(plan, threads, output)?,
            DType::BF16 => bench_cpu_typed::<bf16>(plan, threads, output)?,
        }
    }
    Ok(())
}

fn bench_cpu_typed<T: Element>(
    plan: &Plan,
    threads: usize,
    output: &mut Output,
) -> Result<(), CliError> {
    for &shape in &plan.shapes {
        output.progress(&format!("{} {shape}: preparing inputs", T::DTYPE));
        let mut buffers = CpuBuffers::<T>::new(shape, plan.needs_backward_inputs())?;
        for &op in &plan.ops {
            output.progress(&format!("{} {shape} {}", T::DTYPE, op.name()));
            let timing: CaseTiming = buffers.time(op, plan.activation, plan.settings)?;
            output.record(Measurement {
                op,
                activation: op.activation(plan.activation),
                dtype: T::DTYPE,
                shape,
                device: "cpu".to_string(),
                threads: Some(threads),
                op_stats: timing.op,
                limit_stats: timing.limit,
                bytes: timing.bytes,
                limit_bytes: timing.limit_bytes,
                limit_kind: timing.limit_kind,
            })?;
        }
    }
    Ok(())
}

/// The GPU side of the benchmark, which exists only in builds with the `cuda` feature.
#[cfg(cuda_kernels)]
mod cuda {
    use sigsoftmax::cuda::cudarc::driver::{DeviceRepr, ValidAsZeroBits};
    use sigsoftmax::cuda::Gpu;
    use sigsoftmax::{bf16, f16, DType, Element};

    use super::{Output, Plan};
    use crate::cli::bench_cuda::CudaBuffers;
    use crate::cli::report::Measurement;
    use crate::cli::CliError;

    pub(super) fn bench_cuda(plan: &Plan, gpu: &Gpu, output: &mut Output) -> Result<(), CliError> {
        for &dtype in &plan.dtypes {
            match dtype {
                DType::F32 => bench_cuda_typed::<f32>(plan, gpu, output)?,
                DType::F64 => bench_cuda_typed::<f64>(plan, gpu, output)?,
                DType::F16 => bench_cuda_typed::<f16>(plan, gpu, output)?,
                DType::BF16 => bench_cuda_typed::<bf16>(plan, gpu, output)?,
            }
        }
        Ok(())
    }

    fn bench_cuda_typed<T>(plan: &Plan, gpu: &Gpu, output: &mut Output) -> Result<(), CliError>
    where
        T: Element + DeviceRepr + ValidAsZeroBits,
        T::Accum: DeviceRepr + ValidAsZeroBits,
    {
        let device = gpu.name();
        for &shape in &plan.shapes {
            output.progress(&format!("{} {shape}: preparing inputs", T::DTYPE));
            let mut buffers = CudaBuffers::<T>::new(gpu, shape, &plan.ops)?;
            for &op in &plan.ops {
                output.progress(&format!("{} {shape} {}", T::DTYPE, op.name()));
                let timing = buffers.time(op, plan.activation, plan.settings)?;
                output.record(Measurement {
                    op,
                    activation: op.activation(plan.activation),
                    dtype: T::DTYPE,
                    shape,
                    device: device.clone(),
                    threads: None,
                    op_stats: timing.op,
                    limit_stats: timing.limit,
                    bytes: timing.bytes,
                    limit_bytes: timing.limit_bytes,
                    limit_kind: timing.limit_kind,
                })?;
            }
        }
        Ok(())
    }
}

/// Progress on stderr and results on stdout: JSON lines as they are measured, or a table at the
/// end.
struct Output {
    json: bool,
    total: usize,
    done: usize,
    measurements: Vec<Measurement>,
    /// Whether stderr is a terminal, where progress rewrites one line instead of adding lines.
    interactive: bool,
}

impl Output {
    fn new(json: bool, total: usize) -> Self {
        let interactive = std::io::stderr().is_terminal();
        Output {
            json,
            total,
            done: 0,
            measurements: Vec::new(),
            interactive,
        }
    }

    fn progress(&self, case: &str) {
        let line = format!(
            "[{:>width$}/{}] {case}",
            self.done + 1,
            self.total,
            width = self.total.to_string().len()
        );
        if self.interactive {
            // \x1b[2K clears the line so a shorter message leaves nothing of a longer one.
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    fn record(&mut self, measurement: Measurement) -> Result<(), CliError> {
        self.done += 1;
        if self.json {
            // Written and flushed line by line, so that a program reading stdout gets each
            // result when it is measured.
            super::write_stdout(&format!("{}\n", measurement.to_json_line()))?;
        }
        self.measurements.push(measurement);
        Ok(())
    }

    fn clear_progress(&self) {
        if self.interactive {
            eprint!("\r\x1b[2K");
        }
    }

    fn print_table(&self) -> Result<(), CliError> {
        if self.json {
            return Ok(());
        }
        super::write_stdout(&format_table(&self.measurements))
    }
}
