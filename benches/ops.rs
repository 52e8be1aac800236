//! Criterion benchmarks of the CPU ops against a plain copy of the same bytes.
//!
//! Each group is one storage type and shape and holds, for a 1-thread pool (`serial`) and a
//! pool of every available thread (`parallel`):
//! - `copy`: a pass that reads one buffer and writes another of the same length, the memory
//!   limit the ops are measured against;
//! - `forward`, `softmax` (the same forward with the sigmoid factor off), `backward` and
//!   `cross_entropy` (mean, with a gradient buffer).
//!
//! Throughput counts the bytes each op must move. Forward reads `z` and writes `y`. Backward
//! reads `z`, `y` and `dy` and writes `dz`. Cross-entropy reads `z` and writes the gradient,
//! plus one target and one loss per row. The ratio of an op's bytes per second to `copy`'s is its
//! fraction of the limit.
//!
//! Run with `cargo bench --bench ops`; a filter such as `cargo bench --bench ops -- f32/32x50257`
//! runs one group. Measurement times are short so the whole run takes a few minutes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rayon::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};
use sigsoftmax::{bf16, cpu, Activation, CrossEntropyOptions, Element, Shape};

/// GPT-2's vocabulary with a batch of 32, Gemma's with 8, and one row of Llama 3's.
const SHAPES: [(usize, usize); 3] = [(32, 50257), (8, 256_000), (1, 128_256)];

/// Copies in blocks of this many elements per rayon task, the same order of size as the
/// engine's chunks.
const COPY_BLOCK: usize = 16 * 1024;

fn pools() -> Vec<(&'static str, ThreadPool)> {
    let build = |threads: usize| {
        ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool")
    };
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    vec![("serial", build(1)), ("parallel", build(all))]
}

/// Logits uniform on [-8, 8) from a fixed linear congruential sequence.
fn logits<T: Element>(len: usize) -> Vec<T> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let unit = (state >> 11) as f64 * 2f64.powi(-53);
            T::from_f64(16.0 * unit - 8.0)
        })
        .collect()
}

fn bench_type<T: Element>(c: &mut Criterion, pools: &[(&'static str, ThreadPool)]) {
    let size = T::DTYPE.size_bytes() as u64;
    for (rows, cols) in SHAPES {
        let shape = Shape::new(rows, cols).expect("valid shape");
        let len = shape.len();
        let z = logits::<T>(len);
        let mut y = vec![T::default(); len];
        cpu::forward(Activation::Sigsoftmax, shape, &z, &mut y).expect("forward");
        let dy = logits::<T>(len);
        let mut out = vec![T::default(); len];
        let targets: Vec<i64> = (0..rows as i64).map(|r| (r * 7919) % cols as i64).collect();
        let mut losses = vec![T::Accum::default(); rows];
        let options = CrossEntropyOptions::default();
        let two_buffers = 2 * len as u64 * size;
        let per_row = rows as u64 * (8 + std::mem::size_of::<T::Accum>() as u64);

        let mut group = c.benchmark_group(format!("{}/{rows}x{cols}", T::DTYPE));
        for (label, pool) in pools {
            group.throughput(Throughput::Bytes(two_buffers));
            group.bench_function(BenchmarkId::new("copy", label), |b| {
                b.iter(|| {
                    pool.install(|| {
                        out.par_chunks_mut(COPY_BLOCK)
                            .zip(z.par_chunks(COPY_BLOCK))
                            .for_each(|(dst, src)| dst.copy_from_slice(src));
                    });
                    black_box(&mut out);
                })
            });
            for (name, activation) in [
                ("forward", Activation::Sigsoftmax),
                ("softmax", Activation::Softmax),
            ] {
                group.bench_function(BenchmarkId::new(name, label), |b| {
                    b.iter(|| {
                        pool.install(|| cpu::forward(activation, shape, black_box(&z), &mut out))
                            .expect("forward")
                    })
                });
            }

            group.throughput(Throughput::Bytes(2 * two_buffers));
            group.bench_function(BenchmarkId::new("backward", label), |b| {
                b.iter(|| {
                    pool.install(|| {
                        cpu::backward(
                            Activation::Sigsoftmax,
                            shape,
                            black_box(&z),
                            &y,
                            &dy,
                            &mut out,
                        )
                    })
                    .expect("backward")
                })
            });

            group.throughput(Throughput::Bytes(two_buffers + per_row));
            group.bench_function(BenchmarkId::new("cross_entropy", label), |b| {
                b.iter(|| {
                    pool.install(|| {
                        cpu::cross_entropy(
                            Activation::Sigsoftmax,
                            shape,
                            black_box(&z),
                            &targets,
                            &options,
                            &mut losses,
                            Some(&mut out),
                        )
                    })
                    .expect("cross_entropy")
                })
            });
        }
        group.finish();
    }
}

fn bench_ops(c: &mut Criterion) {
    let pools = pools();
    bench_type::<f32>(c, &pools);
    bench_type::<bf16>(c, &pools);
}

criterion_group! {
    name = benches;
    // 10 samples over 1 s per benchmark: each op takes 0.1 to 20 ms here, so every sample still
    // averages several calls, and the 60 benchmarks finish in about two minutes.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = bench_ops
}
criterion_main!(benches);
