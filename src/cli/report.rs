//! Benchmark output: one JSON object per line, or an aligned table.

use sigsoftmax::{Activation, DType, Shape};

use super::timing::Stats;
use super::Op;

/// One measured op with its memory limit.
pub struct Measurement {
    pub op: Op,
    pub activation: Activation,
    pub dtype: DType,
    pub shape: Shape,
    pub device: String,
    /// CPU threads of the op and its memory pass, or `None` on a GPU.
    pub threads: Option<usize>,
    pub op_stats: Stats,
    pub limit_stats: Stats,
    pub bytes: u64,
    pub limit_bytes: u64,
    pub limit_kind: &'static str,
}

impl Measurement {
    /// Returns the op's throughput at its median time, in GB/s (10^9 bytes per second).
    pub fn gb_per_s(&self) -> f64 {
        self.bytes as f64 / self.op_stats.median / 1e9
    }

    /// Returns the memory pass's throughput at its median time, in GB/s.
    pub fn limit_gb_per_s(&self) -> f64 {
        self.limit_bytes as f64 / self.limit_stats.median / 1e9
    }

    /// Returns the op's throughput as a fraction of the memory pass's.
    pub fn limit_fraction(&self) -> f64 {
        self.gb_per_s() / self.limit_gb_per_s()
    }

    /// Formats the measurement as one line of JSON, with times in milliseconds.
    pub fn to_json_line(&self) -> String {
        let ms = |seconds: f64| seconds * 1e3;
        let (op, limit) = (&self.op_stats, &self.limit_stats);
        serde_json::json!({
            "op": self.op.name(),
            "activation": self.activation.name(),
            "dtype": self.dtype.name(),
            "rows": self.shape.rows(),
            "cols": self.shape.cols(),
            "device": self.device,
            "threads": self.threads,
            "iters": op.iters,
            "bytes": self.bytes,
            "median_ms": ms(op.median),
            "min_ms": ms(op.min),
            "max_ms": ms(op.max),
            "p10_ms": ms(op.p10),
            "p90_ms": ms(op.p90),
            "gb_per_s": self.gb_per_s(),
            "limit_kind": self.limit_kind,
            "limit_bytes": self.limit_bytes,
            "limit_median_ms": ms(limit.median),
            "limit_min_ms": ms(limit.min),
            "limit_gb_per_s": self.limit_gb_per_s(),
            "limit_fraction": self.limit_fraction(),
        })
        .to_string()
    }
}

/// Formats measurements as a table with a header line naming the device and the limit.
pub fn format_table(measurements: &[Measurement]) -> String {
    let Some(first) = measurements.first() else {
        return String::new();
    };
    let mut kinds: Vec<&str> = Vec::new();
    for measurement in measurements {
        if !kinds.contains(&measurement.limit_kind) {
            kinds.push(measurement.limit_kind);
        }
    }
    let threads = match first.threads {
        Some(threads) => format!(", {threads} threads"),
        None => String::new(),
    };
    let mut text = format!(
        "device: {}{threads}. limit: {}, timed alternately with the op in this run.\n\n",
        first.device,
        kinds.join("; ")
    );

    let header = [
        "op",
        "activation",
        "dtype",
        "shape",
        "median ms",
        "min ms",
        "GB/s",
        "limit GB/s",
        "of limit",
    ];
    let rows: Vec<[String; 9]> = measurements
        .iter()
        .map(|m| {
            [
                m.op.name().to_string(),
                m.activation.name().to_string(),
                m.dtype.name().to_string(),
                m.shape.to_string(),
                format!("{:.4}", m.op_stats.median * 1e3),
                format!("{:.4}", m.op_stats.min * 1e3),
                format!("{:.1}", m.gb_per_s()),
                format!("{:.1}", m.limit_gb_per_s()),
                format!("{:.0}%", m.limit_fraction() * 100.0),
            ]
        })
        .collect();

    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    // Text columns are left-aligned, numbers right-aligned.
    let text_columns = 4;
    let mut push_row = |cells: &[&str]| {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                if column < text_columns {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    };
    push_row(&header);
    for row in &rows {
        push_row(&row.each_ref().map(String::as_str));
    }
    text
}
