//! The timing loop: an op and its memory pass, run alternately so that noise (other processes,
//! clock changes) hits both, and summary statistics of the samples.

use std::time::{Duration, Instant};

/// How long to measure each op.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Untimed repetitions of each before timing.
    pub warmup: usize,
    /// Minimum timed repetitions.
    pub min_iters: u64,
    /// Minimum total time of the op's timed repetitions.
    pub min_time: Duration,
}

/// Upper bound on the samples per op, so a very fast op with a long `min_time` cannot fill the
/// memory with samples.
pub(super) const MAX_ITERS: u64 = 1_000_000;

/// Summary of the timed repetitions of one function, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub iters: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// 10th percentile (nearest rank).
    pub p10: f64,
    /// 90th percentile (nearest rank).
    pub p90: f64,
}

impl Stats {
    /// Summarizes samples in seconds. Panics when `samples` is empty.
    pub(super) fn from_samples(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let rank = |fraction: f64| samples[((fraction * n as f64).ceil() as usize).clamp(1, n) - 1];
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            0.5 * (samples[n / 2 - 1] + samples[n / 2])
        };
        Stats {
            iters: n,
            median,
            min: samples[0],
            max: samples[n - 1],
            p10: rank(0.1),
            p90: rank(0.9),
        }
    }
}

/// The function that one call of the closure in [`measure_pair`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The op being measured.
    Op,
    /// The memory pass it is compared with.
    Limit,
}

/// Times the op and its memory pass alternately until the op has run at least `min_iters`
/// times and for at least `min_time` in total. `run(side)` runs one of the two once and returns
/// how long that took (with a device synchronization where the device needs one).
pub fn measure_pair(settings: Settings, mut run: impl FnMut(Side) -> Duration) -> (Stats, Stats) {
    for _ in 0..settings.warmup {
        run(Side::Op);
        run(Side::Limit);
    }

    let mut op_samples = Vec::new();
    let mut limit_samples = Vec::new();
    let mut op_total = Duration::ZERO;
    loop {
        let op_time = run(Side::Op);
        op_total += op_time;
        op_samples.push(op_time.as_secs_f64());
        limit_samples.push(run(Side::Limit).as_secs_f64());

        let iters = op_samples.len() as u64;
        let enough = iters >= settings.min_iters && op_total >= settings.min_time;
        if enough || iters >= MAX_ITERS {
            break;
        }
    }
    (
        Stats::from_samples(op_samples),
        Stats::from_samples(limit_samples),
    )
}

/// Runs `work` once and returns its wall-clock time.
pub fn time_once(work: impl FnOnce()) -> Duration {
    let start = Instant::now();
    work();
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_known_samples() {
        let stats = Stats::from_samples(vec![5.0, 1.0, 4.0, 2.0, 3.0, 6.0, 7.0, 8.0, 9.0, 10.0]);
        assert_eq!(stats.iters, 10);
        assert_eq!(stats.median, 5.5);
        assert_eq!(stats.min, 1.0);
        assert_eq!(stats.max, 10.0);
        assert_eq!(stats.p10, 1.0);
        assert_eq!(stats.p90, 9.0);
    }

    #[test]
    fn stats_of_one_sample() {
        let stats = Stats::from_samples(vec![2.0]);
        assert_eq!(stats.median, 2.0);
        assert_eq!(stats.p10, 2.0);
        assert_eq!(stats.p90, 2.0);
    }
}
