// NOTE: not yet run on a GPU. This file compiles with `--features cuda`, but its timing loop,
// its error paths and the numbers it reports have not been checked on a device.

//! The benchmark on a GPU: the ops of [`sigsoftmax::cuda`] on device buffers, each timed with
//! CUDA events alternately with a device-to-device copy on the same stream.
//!
//! The copy reads and writes as many bytes as the op, so it copies half the op's byte count. It
//! copies between two buffers of its own, so the op's inputs stay unchanged.
//!
//! The timed launches are enqueued back to back, an event between each op and copy, and the
//! host waits for the GPU only after a batch of them. While the host enqueues faster than the
//! GPU works, each interval between two events is the GPU time of one launch. On shapes where a
//! launch takes less GPU time than the host needs to enqueue the next one, the intervals include
//! that host time, for the op and the copy alike.

use sigsoftmax::cuda::cudarc::driver::sys::CUevent_flags;
use sigsoftmax::cuda::cudarc::driver::{
    CudaEvent, CudaSlice, DeviceRepr, DriverError, ValidAsZeroBits,
};
use sigsoftmax::cuda::{self, Gpu};
use sigsoftmax::{Activation, CrossEntropyOptions, Element, Shape};

use super::bench_cpu::{op_bytes, CaseTiming, LOGIT_STD};
use super::random::{fill_normal, fill_targets};
use super::timing::{Settings, Stats, MAX_ITERS};
use super::{alloc_zeroed, cli_error, CliError, Op};

/// Maximum timed pairs (one op and one copy) enqueued before the host waits for the GPU, which
/// bounds the events alive at once to `2 * MAX_BATCH + 1`.
const MAX_BATCH: u64 = 1024;

/// The message of a backward op run without its inputs, which `CudaBuffers::new` allocates
/// whenever the requested ops contain a backward op.
const BACKWARD_INPUTS: &str = "the backward inputs were not allocated for a backward op";

const LIMIT_KIND: &str = "a device-to-device copy of the same bytes, on the same stream";

/// The input and output buffers of every op for one storage type and shape, on one GPU.
pub struct CudaBuffers<'gpu, T: Element> {
    gpu: &'gpu Gpu,
    shape: Shape,
    z: CudaSlice<T>,
    /// `y = forward(z)` or `l = log_forward(z)`, the input of the backward ops. `None` when no
    /// backward op is requested.
    saved: Option<CudaSlice<T>>,
    /// `dy` or `dl`, random. `None` when no backward op is requested.
    upstream: Option<CudaSlice<T>>,
    out: CudaSlice<T>,
    targets: CudaSlice<i64>,
    losses: CudaSlice<T::Accum>,
    /// Source and destination of the copy, as long as the largest copy of the requested ops.
    copy_source: CudaSlice<u8>,
    copy_destination: CudaSlice<u8>,
}

impl<'gpu, T> CudaBuffers<'gpu, T>
where
    T: Element + DeviceRepr + ValidAsZeroBits,
    T::Accum: DeviceRepr + ValidAsZeroBits,
{
    /// Allocates the buffers on `gpu` and uploads the same seeded random logits, upstream
    /// gradient and targets as the CPU benchmark. The backward inputs are allocated only when
    /// `ops` contains a backward op.
    pub fn new(gpu: &'gpu Gpu, shape: Shape, ops: &[Op]) -> Result<Self, CliError> {
        let purpose = format!("a {shape} {} matrix", T::DTYPE);
        let failed = |what: &'static str| driver_error::<T>(what, shape);
        let stream = gpu.stream();

        let mut z_host: Vec<T> = alloc_zeroed(shape.len(), &purpose)?;
        fill_normal(&mut z_host, LOGIT_STD, 1);
        let z = stream.clone_htod(&z_host).map_err(failed("upload z"))?;
        drop(z_host);

        let backward = ops
            .iter()
            .any(|op| matches!(op, Op::Backward | Op::LogBackward));
        let (saved, upstream) = if backward {
            let mut upstream_host: Vec<T> = alloc_zeroed(shape.len(), &purpose)?;
            fill_normal(&mut upstream_host, 1.0, 2);
            let upstream = stream
                .clone_htod(&upstream_host)
                .map_err(failed("upload dy"))?;
            let saved = stream
                .alloc_zeros::<T>(shape.len())
                .map_err(failed("allocate y"))?;
            (Some(saved), Some(upstream))
        } else {
            (None, None)
        };

        let out = stream
            .alloc_zeros::<T>(shape.len())
            .map_err(failed("allocate the output"))?;
        let mut targets_host = vec![0; shape.rows()];
        fill_targets(&mut targets_host, shape.cols(), 3);
        let targets = stream
            .clone_htod(&targets_host)
            .map_err(failed("upload the targets"))?;
        let losses = stream
            .alloc_zeros::<T::Accum>(shape.rows())
            .map_err(failed("allocate the losses"))?;

        let copy_len = ops
            .iter()
            .map(|&op| copy_len::<T>(op, shape))
            .max()
            .unwrap_or(0);
        let copy_source = stream
            .alloc_zeros::<u8>(copy_len)
            .map_err(failed("allocate the copy source"))?;
        let copy_destination = stream
            .alloc_zeros::<u8>(copy_len)
            .map_err(failed("allocate the copy destination"))?;

        Ok(Self {
            gpu,
            shape,
            z,
            saved,
            upstream,
            out,
            targets,
            losses,
            copy_source,
            copy_destination,
        })
    }

    /// Times `op` with `activation` alternately with a device-to-device copy of its bytes.
    pub fn time(
        &mut self,
        op: Op,
        activation: Activation,
        settings: Settings,
    ) -> Result<CaseTiming, CliError> {
        let activation = op.activation(activation);
        self.prepare(op, activation)?;

        // Run the op once and wait for it, so that an error surfaces here and not inside the
        // timed loop. The loop repeats this call on the same buffers.
        self.run(op, activation)?;
        self.gpu.stream().synchronize().map_err(driver_error::<T>(
            "run the op once before timing",
            self.shape,
        ))?;

        let copy_len = copy_len::<T>(op, self.shape);
        let (op_stats, limit_stats) = self.measure_pair(op, activation, copy_len, settings)?;
        Ok(CaseTiming {
            op: op_stats,
            limit: limit_stats,
            bytes: op_bytes::<T>(op, self.shape),
            limit_bytes: 2 * copy_len as u64,
            limit_kind: LIMIT_KIND,
        })
    }

    /// Computes the saved forward output that a backward op reads.
    fn prepare(&mut self, op: Op, activation: Activation) -> sigsoftmax::Result<()> {
        let (stream, shape) = (self.gpu.stream(), self.shape);
        let (z, saved) = match (op, &mut self.saved) {
            (Op::Backward | Op::LogBackward, Some(saved)) => (&self.z, saved),
            (Op::Backward | Op::LogBackward, None) => unreachable!("{BACKWARD_INPUTS}"),
            _ => return Ok(()),
        };
        if op == Op::Backward {
            cuda::forward(stream, activation, shape, z, saved)
        } else {
            cuda::log_forward(stream, activation, shape, z, saved)
        }
    }

    /// Enqueues `op` once on the stream. Every op except the cross-entropy returns without
    /// waiting for the GPU.
    fn run(&mut self, op: Op, activation: Activation) -> sigsoftmax::Result<()> {
        let (stream, shape) = (self.gpu.stream(), self.shape);
        let z = &self.z;
        match op {
            Op::Forward | Op::Softmax => cuda::forward(stream, activation, shape, z, &mut self.out),
            Op::LogForward => cuda::log_forward(stream, activation, shape, z, &mut self.out),
            Op::Backward | Op::LogBackward => {
                let (saved, upstream) = match (&self.saved, &self.upstream) {
                    (Some(saved), Some(upstream)) => (saved, upstream),
                    _ => unreachable!("{BACKWARD_INPUTS}"),
                };
                if op == Op::Backward {
                    cuda::backward(stream, activation, shape, z, saved, upstream, &mut self.out)
                } else {
                    cuda::log_backward(stream, activation, shape, z, saved, upstream, &mut self.out)
                }
            }
            // `cuda::cross_entropy` copies the reduced loss to the host and waits for the GPU on
            // every call, so its samples include that copy and the wait. The GPU is then idle
            // when the next copy and op are enqueued, so their samples also include the host
            // time of one launch.
            Op::CrossEntropy => {
                let options = CrossEntropyOptions::default();
                let mut grad = self.out.as_view_mut();
                cuda::cross_entropy(
                    stream,
                    activation,
                    shape,
                    z,
                    &self.targets,
                    &options,
                    &mut self.losses,
                    Some(&mut grad),
                )
                .map(|_| ())
            }
        }
    }

    /// Enqueues a copy of the first `len` bytes of the copy source to the copy destination.
    fn copy(&mut self, len: usize) -> Result<(), CliError> {
        let source = self.copy_source.slice(0..len);
        let mut destination = self.copy_destination.slice_mut(0..len);
        self.gpu
            .stream()
            .memcpy_dtod(&source, &mut destination)
            .map_err(driver_error::<T>("copy on the device", self.shape))
    }

    /// Times the op and a copy of `copy_len` bytes alternately until the op has run at least
    /// `settings.min_iters` times and for at least `settings.min_time` of GPU time in total, or
    /// [`MAX_ITERS`] times.
    fn measure_pair(
        &mut self,
        op: Op,
        activation: Activation,
        copy_len: usize,
        settings: Settings,
    ) -> Result<(Stats, Stats), CliError> {
        for _ in 0..settings.warmup {
            self.run(op, activation)?;
            self.copy(copy_len)?;
        }

        let shape = self.shape;
        let failed = move |what: &'static str| driver_error::<T>(what, shape);
        let gpu = self.gpu;
        let stream = gpu.stream();
        let mut events: Vec<CudaEvent> = Vec::new();
        let mut op_samples = Vec::new();
        let mut limit_samples = Vec::new();
        let mut op_total = 0.0;
        let min_time = settings.min_time.as_secs_f64();
        let mut batch = settings.min_iters.clamp(1, MAX_BATCH);
        loop {
            // Each event ends one interval and starts the next, so `batch` pairs need
            // `2 * batch + 1` events.
            let event_count = 2 * batch as usize + 1;
            while events.len() < event_count {
                let event = gpu
                    .context()
                    .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .map_err(failed("create a CUDA event"))?;
                events.push(event);
            }

            // One untimed op and copy give the GPU work while the host enqueues the first timed
            // launch, so that the first interval does not start on an idle GPU.
            self.run(op, activation)?;
            self.copy(copy_len)?;
            let recorded = failed("record a CUDA event");
            events[0].record(stream).map_err(recorded)?;
            for pair in 0..batch as usize {
                self.run(op, activation)?;
                events[2 * pair + 1].record(stream).map_err(recorded)?;
                self.copy(copy_len)?;
                events[2 * pair + 2].record(stream).map_err(recorded)?;
            }

            // `elapsed_ms` waits for both events, so the first call waits for the whole batch and
            // reports an error of any launch in it.
            let waited = failed("wait for the timed launches");
            for pair in 0..batch as usize {
                let (start, middle, end) = (
                    &events[2 * pair],
                    &events[2 * pair + 1],
                    &events[2 * pair + 2],
                );
                let op_ms = start.elapsed_ms(middle).map_err(waited)?;
                let copy_ms = middle.elapsed_ms(end).map_err(waited)?;
                let op_seconds = f64::from(op_ms) / 1e3;
                op_total += op_seconds;
                op_samples.push(op_seconds);
                limit_samples.push(f64::from(copy_ms) / 1e3);
            }

            let iters = op_samples.len() as u64;
            let enough = iters >= settings.min_iters && op_total >= min_time;
            if enough || iters >= MAX_ITERS {
                break;
            }
            batch = next_batch(settings, iters, op_total);
        }
        Ok((
            Stats::from_samples(op_samples),
            Stats::from_samples(limit_samples),
        ))
    }
}

/// Returns the number of pairs to enqueue next: enough to reach both `settings.min_iters` and,
/// at the mean op time so far, `settings.min_time`, within 1 to [`MAX_BATCH`] and the
/// [`MAX_ITERS`] left.
fn next_batch(settings: Settings, iters: u64, op_total: f64) -> u64 {
    let missing_iters = settings.min_iters.saturating_sub(iters);
    let missing_time = (settings.min_time.as_secs_f64() - op_total).max(0.0);
    let mean = op_total / iters as f64;
    // A float-to-integer `as` cast saturates. It turns the infinity from a mean of 0 into
    // u64::MAX and the NaN of 0 / 0 into 0, and the clamp below bounds both.
    let iters_for_time = (missing_time / mean).ceil() as u64;
    missing_iters
        .max(iters_for_time)
        .clamp(1, MAX_BATCH)
        .min(MAX_ITERS - iters)
}

/// Returns the length in bytes of the copy compared with `op`, which is half the bytes the op
/// moves because a copy reads and writes each byte once.
fn copy_len<T: Element>(op: Op, shape: Shape) -> usize {
    // Every count of `op_bytes` is even. It fits in usize because the op's buffers are allocated.
    (op_bytes::<T>(op, shape) / 2) as usize
}

/// Maps a driver error to a [`CliError`] that names the failed step and the case.
fn driver_error<T: Element>(
    what: &'static str,
    shape: Shape,
) -> impl Fn(DriverError) -> CliError + Copy {
    move |error| {
        cli_error!(
            "failed to {what} for {} {shape} on the GPU: {error}",
            T::DTYPE
        )
    }
}
