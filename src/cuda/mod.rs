//! The CUDA engine (feature `cuda` or `candle-cuda`): every op on device buffers, in three layers.
//!
//! - [`raw`]: `unsafe` functions over raw device pointers and a raw stream, for frameworks that
//!   own their memory and streams (candle, burn, tch). They call the `extern "C"` launchers of
//!   `kernels/sigsoftmax.h` and never allocate or synchronize, except [`raw::cross_entropy`]'s
//!   reduced loss, which stays on the device until the caller reads it.
//! - The safe functions of this module over cudarc 0.19 buffers ([`forward`], [`backward`],
//!   [`cross_entropy`], ...): they check lengths, alignment and contexts, allocate the
//!   workspace a long-row launch needs, hold cudarc's pointer guards across the launch and map
//!   CUDA statuses to [`Error::Cuda`].
//! - [`Gpu`]: a context and a stream, with the ops on host slices (used by
//!   [`crate::Device`]) and event timing for benchmarks.
//!
//! Semantics, options and errors are those of [`crate::cpu`]: masked `-inf` entries get
//! probability 0 and gradient 0; a row with NaN or `+inf`, or with no finite entry, becomes
//! NaN. Results are bit-identical from run to run on one GPU (no float atomics, fixed reduction
//! orders), but not bit-identical to the CPU engine.
//!
//! NOTE: the kernels have been compiled (CUDA 13.0 and 11.8) but not yet run on a GPU;
//! `scripts/gpu-check.sh` runs the test suite on one.

mod gpu;
mod ops;
pub mod raw;
mod sys;

pub use cudarc;
pub use gpu::Gpu;
pub use ops::{
    backward, cross_entropy, cross_entropy_in_place, forward, forward_in_place, log_backward,
    log_forward,
};

use crate::element::DType;
use crate::error::Error;
use crate::shape::Shape;

/// Converts a storage type to the launchers' `sigsoftmax_dtype` code.
fn dtype_code(dtype: DType) -> sys::sigsoftmax_dtype {
    match dtype {
        DType::F32 => sys::sigsoftmax_dtype_SIGSOFTMAX_F32,
        DType::F64 => sys::sigsoftmax_dtype_SIGSOFTMAX_F64,
        DType::F16 => sys::sigsoftmax_dtype_SIGSOFTMAX_F16,
        DType::BF16 => sys::sigsoftmax_dtype_SIGSOFTMAX_BF16,
    }
}

/// Maps a cudarc driver error to [`Error::Cuda`].
fn driver_error(
    op: &'static str,
    shape: Shape,
) -> impl Fn(cudarc::driver::DriverError) -> Error + Copy {
    move |error| Error::Cuda {
        op,
        shape,
        message: error.to_string(),
    }
}
