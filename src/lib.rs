#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

#[cfg(feature = "candle")]
pub mod candle;
pub mod cpu;
#[cfg(cuda_kernels)]
pub mod cuda;
mod device;
mod element;
mod error;
mod options;
mod shape;

pub use device::{Device, DeviceRequest};
pub use element::{DType, Element};
pub use error::{Error, IgnoreIndexDisplay, Result};
pub use half::{bf16, f16};
pub use options::{Activation, CrossEntropyOptions, Reduction, Upstream};
pub use shape::Shape;
