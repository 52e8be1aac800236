//! The crate's error type, shared by the CPU and CUDA paths.

use crate::shape::Shape;

/// Everything that can go wrong when calling an op.
///
/// Each variant names the op and the offending value, and its message says what to change.
/// Input errors (lengths, targets, options) are detected before any memory is written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)] // each field is named in its variant's message
pub enum Error {
    /// `rows` or `cols` is zero.
    #[error("invalid shape {rows} x {cols}: rows and cols must both be at least 1")]
    EmptyShape { rows: usize, cols: usize },

    /// `rows * cols` does not fit in `usize` (or in the 64-bit sizes the GPU launchers take).
    #[error("invalid shape {rows} x {cols}: rows * cols overflows a 64-bit element count")]
    ShapeTooLarge { rows: usize, cols: usize },

    /// A buffer's length does not match the shape.
    #[error(
        "{op}: `{name}` has {actual} elements but shape {shape} needs {expected}; \
         pass a buffer of exactly that length"
    )]
    LengthMismatch {
        op: &'static str,
        name: &'static str,
        shape: Shape,
        expected: usize,
        actual: usize,
    },

    /// A cross-entropy target is neither a class index nor the ignore index.
    #[error(
        "{op}: target {target} in row {row} is out of range for {cols} classes; \
         use a class index in 0..{cols} or the ignore index ({ignore_index})"
    )]
    TargetOutOfRange {
        op: &'static str,
        row: usize,
        target: i64,
        cols: usize,
        ignore_index: IgnoreIndexDisplay,
    },

    /// Label smoothing outside `[0, 1]` or not finite.
    #[error("invalid label smoothing {0}: use a finite value in [0, 1]")]
    InvalidLabelSmoothing(f64),

    /// A per-row upstream gradient was combined with a reduction to one scalar.
    #[error(
        "{op}: a per-row upstream gradient needs Reduction::None, but the reduction is {reduction}; \
         pass Upstream::Scalar for sum or mean"
    )]
    UpstreamNeedsNoReduction {
        op: &'static str,
        reduction: &'static str,
    },

    /// A device buffer is not aligned to its element size.
    #[error("{op}: device buffer `{name}` at {address:#x} is not aligned to {align} bytes; pass a pointer aligned to the element size")]
    Misaligned {
        op: &'static str,
        name: &'static str,
        address: usize,
        align: usize,
    },

    /// No usable GPU: no CUDA support in this build, no driver library, or no device.
    #[error("CUDA is not available: {reason}")]
    CudaUnavailable { reason: String },

    /// A device ordinal past the number of GPUs.
    #[error("CUDA device {ordinal} does not exist: this machine has {count} CUDA device(s); use an ordinal below {count}")]
    DeviceOutOfRange { ordinal: usize, count: usize },

    /// A CUDA call failed.
    #[error("{op} on shape {shape} failed on the GPU: {message}")]
    Cuda {
        op: &'static str,
        shape: Shape,
        message: String,
    },

    /// A thread pool for `threads` could not be built.
    #[error("failed to build a thread pool with {threads} threads: {message}")]
    ThreadPool { threads: usize, message: String },
}

/// Formats an optional ignore index in messages (`none` when every target must be a class).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IgnoreIndexDisplay(pub Option<i64>);

impl std::fmt::Display for IgnoreIndexDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(index) => write!(f, "{index}"),
            None => f.write_str("none"),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
