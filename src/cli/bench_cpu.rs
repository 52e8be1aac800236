//! The benchmark on the CPU: the ops of [`sigsoftmax::cpu`] on preallocated buffers, each timed
//! alternately with a plain memory pass over the same buffers on the same thread pool.
//!
//! The memory pass reads and writes the same bytes as the op: a copy `z -> out` for the ops
//! that read one matrix (forward, log-forward, softmax, cross-entropy), and
//! `out = z ^ y ^ dy` byte by byte for the backward ops, which read three. Its throughput is the
//! limit the op's throughput is compared with.

use rayon::prelude::*;
use sigsoftmax::{cpu, Activation, CrossEntropyOptions, Element, Shape};

use super::random::{fill_normal, fill_targets};
use super::timing::{self, time_once, Settings, Side, Stats};
use super::{alloc_zeroed, CliError, Op};

/// Standard deviation of the random logits, in the range of a trained language model's output
/// so that the exponentials vary over many orders of magnitude.
pub const LOGIT_STD: f64 = 3.0;

/// Bytes per task of the parallel memory pass.
const PASS_PIECE: usize = 1 << 16;

/// The timings and byte counts of one op on one shape.
pub struct CaseTiming {
    pub op: Stats,
    pub limit: Stats,
    /// Bytes the op reads and writes per run.
    pub bytes: u64,
    /// Bytes the memory pass reads and writes per run.
    pub limit_bytes: u64,
    /// A description of the memory pass, for the table header and the JSON.
    pub limit_kind: &'static str,
}

/// Returns the bytes `op` reads and writes per run on a `shape` matrix of `T`: every matrix it
/// reads or writes once, plus the target and the loss of each row for the cross-entropy.
pub fn op_bytes<T: Element>(op: Op, shape: Shape) -> u64 {
    let matrix = shape.len() as u64 * std::mem::size_of::<T>() as u64;
    let per_row = (std::mem::size_of::<i64>() + std::mem::size_of::<T::Accum>()) as u64;
    match op {
        Op::Forward | Op::LogForward | Op::Softmax => 2 * matrix,
        Op::Backward | Op::LogBackward => 4 * matrix,
        Op::CrossEntropy => 2 * matrix + shape.rows() as u64 * per_row,
    }
}

/// The input and output buffers of every op for one storage type and shape.
pub struct CpuBuffers<T: Element> {
    shape: Shape,
    z: Vec<T>,
    /// `y = forward(z)` or `l = log_forward(z)`, the input of the backward ops.
    saved: Vec<T>,
    /// `dy` or `dl`, random.
    upstream: Vec<T>,
    out: Vec<T>,
    targets: Vec<i64>,
    losses: Vec<T::Accum>,
}

impl<T: Element> CpuBuffers<T> {
    /// Allocates the buffers and fills the logits, the upstream gradient and the targets with
    /// seeded random values. The backward inputs are allocated only when `backward` is set.
    pub fn new(shape: Shape, backward: bool) -> Result<Self, CliError> {
        let purpose = format!("a {shape} {} matrix", T::DTYPE);
        let mut z = alloc_zeroed(shape.len(), &purpose)?;
        fill_normal(&mut z, LOGIT_STD, 1);
        let backward_len = if backward { shape.len() } else { 0 };
        let saved = alloc_zeroed(backward_len, &purpose)?;
        let mut upstream = alloc_zeroed(backward_len, &purpose)?;
        fill_normal(&mut upstream, 1.0, 2);
        let out = alloc_zeroed(shape.len(), &purpose)?;
        let mut targets = vec![0; shape.rows()];
        fill_targets(&mut targets, shape.cols(), 3);
        let losses = vec![Default::default(); shape.rows()];
        Ok(Self {
            shape,
            z,
            saved,
            upstream,
            out,
            targets,
            losses,
        })
    }

    /// Times `op` with `activation` alternately with its memory pass.
    pub fn time(
        &mut self,
        op: Op,
        activation: Activation,
        settings: Settings,
    ) -> Result<CaseTiming, CliError> {
        let activation = op.activation(activation);
        self.prepare(op, activation)?;

        // Run the op once untimed so that an error surfaces here and not inside the timed loop.
        // The loop repeats this call on the same buffers, so it cannot fail where this did not.
        self.run(op, activation)?;
        let pass = MemoryPass::for_op(op);
        let mut failure = None;
        let (op_stats, limit_stats) = timing::measure_pair(settings, |side| match side {
            Side::Op => time_once(|| {
                if let Err(error) = self.run(op, activation) {
                    failure.get_or_insert(error);
                }
            }),
            Side::Limit => time_once(|| self.memory_pass(pass)),
        });
        if let Some(error) = failure {
            return Err(error.into());
        }

        let matrix = self.shape.len() as u64 * std::mem::size_of::<T>() as u64;
        Ok(CaseTiming {
            op: op_stats,
            limit: limit_stats,
            bytes: op_bytes::<T>(op, self.shape),
            limit_bytes: pass.bytes(matrix),
            limit_kind: pass.name(),
        })
    }

    /// Computes the saved forward output that a backward op reads.
    fn prepare(&mut self, op: Op, activation: Activation) -> sigsoftmax::Result<()> {
        match op {
            Op::Backward => cpu::forward(activation, self.shape, &self.z, &mut self.saved),
            Op::LogBackward => cpu::log_forward(activation, self.shape, &self.z, &mut self.saved),
            _ => Ok(()),
        }
    }

    fn run(&mut self, op: Op, activation: Activation) -> sigsoftmax::Result<()> {
        let shape = self.shape;
        match op {
            Op::Forward | Op::Softmax => cpu::forward(activation, shape, &self.z, &mut self.out),
            Op::LogForward => cpu::log_forward(activation, shape, &self.z, &mut self.out),
            Op::Backward => cpu::backward(
                activation,
                shape,
                &self.z,
                &self.saved,
                &self.upstream,
                &mut self.out,
            ),
            Op::LogBackward => cpu::log_backward(
                activation,
                shape,
                &self.z,
                &self.saved,
                &self.upstream,
                &mut self.out,
            ),
            Op::CrossEntropy => {
                let options = CrossEntropyOptions::default();
                let grad = Some(self.out.as_mut_slice());
                cpu::cross_entropy(
                    activation,
                    shape,
                    &self.z,
                    &self.targets,
                    &options,
                    &mut self.losses,
                    grad,
                )
                .map(|_| ())
            }
        }
    }

    /// Runs the memory pass that `op` is compared with: the same bytes read and written, no math.
    fn memory_pass(&mut self, pass: MemoryPass) {
        let out = as_bytes_mut(&mut self.out);
        let z = as_bytes(&self.z);
        match pass {
            MemoryPass::Copy => {
                out.par_chunks_mut(PASS_PIECE)
                    .zip(z.par_chunks(PASS_PIECE))
                    .for_each(|(dst, src)| {
                        dst.copy_from_slice(src);
                    });
            }
            MemoryPass::Xor3 => {
                let saved = as_bytes(&self.saved);
                let upstream = as_bytes(&self.upstream);
                out.par_chunks_mut(PASS_PIECE)
                    .zip(z.par_chunks(PASS_PIECE))
                    .zip(
                        saved
                            .par_chunks(PASS_PIECE)
                            .zip(upstream.par_chunks(PASS_PIECE)),
                    )
                    .for_each(|((dst, a), (b, c))| {
                        for (((d, &a), &b), &c) in dst.iter_mut().zip(a).zip(b).zip(c) {
                            *d = a ^ b ^ c;
                        }
                    });
            }
        }
    }
}

/// The memory pass an op is compared with.
#[derive(Debug, Clone, Copy)]
enum MemoryPass {
    /// `out = z`: one matrix read, one written.
    Copy,
    /// `out = z ^ y ^ dy`: three matrices read, one written.
    Xor3,
}

impl MemoryPass {
    fn for_op(op: Op) -> Self {
        match op {
            Op::Forward | Op::LogForward | Op::Softmax | Op::CrossEntropy => MemoryPass::Copy,
            Op::Backward | Op::LogBackward => MemoryPass::Xor3,
        }
    }

    /// Bytes moved per run for matrices of `matrix` bytes.
    fn bytes(self, matrix: u64) -> u64 {
        match self {
            MemoryPass::Copy => 2 * matrix,
            MemoryPass::Xor3 => 4 * matrix,
        }
    }

    fn name(self) -> &'static str {
        match self {
            MemoryPass::Copy => {
                "a parallel copy of z into the output, for ops that read one matrix"
            }
            MemoryPass::Xor3 => "an xor of z, y and dy into dz, for the backward ops",
        }
    }
}

fn as_bytes<T: Element>(values: &[T]) -> &[u8] {
    // SAFETY: `Element` is sealed and implemented only for f32, f64, f16 and bf16. These have no
    // padding, so every byte of the slice is initialized. A u8 needs no alignment, and the byte
    // slice covers exactly the same memory and borrows it for the same lifetime.
    unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
    }
}

fn as_bytes_mut<T: Element>(values: &mut [T]) -> &mut [u8] {
    // SAFETY: the argument of `as_bytes` holds here too. In addition every byte pattern is a
    // valid f32, f64, f16 or bf16, so whatever the pass writes leaves valid values behind.
    unsafe {
        std::slice::from_raw_parts_mut(
            values.as_mut_ptr().cast::<u8>(),
            std::mem::size_of_val(values),
        )
    }
}
