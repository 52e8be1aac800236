//! Runtime device choice: one type that runs every op on host slices, on the GPU when one is
//! usable and on the CPU otherwise.

use crate::element::Element;
use crate::error::Result;
use crate::options::{Activation, CrossEntropyOptions};
use crate::shape::Shape;

/// The device to use, as given on the command line (`auto`, `cpu`, `cuda`, `cuda:N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// The first GPU when one is usable, else the CPU.
    #[default]
    Auto,
    /// The CPU engine.
    Cpu,
    /// The GPU with this ordinal.
    Cuda(usize),
}

impl std::str::FromStr for DeviceRequest {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|ordinal| ordinal.parse().ok())
                .map(DeviceRequest::Cuda)
                .ok_or_else(|| format!("unknown device `{s}`; use auto, cpu, cuda or cuda:N")),
        }
    }
}

/// A device that runs the ops on host slices.
///
/// On a GPU each call copies its inputs to the device, runs the kernel and copies the results
/// back, which suits tests and the command line. Training loops keep their data on the GPU and
/// call the `cuda` module directly.
#[derive(Debug)]
pub enum Device {
    /// The CPU engine on the current rayon pool.
    Cpu,
    /// A GPU, with the stream the ops run on.
    #[cfg(cuda_kernels)]
    Cuda(crate::cuda::Gpu),
}

impl Device {
    /// Opens the requested device.
    ///
    /// # Errors
    /// [`crate::Error::CudaUnavailable`] when a GPU was requested but this build has no CUDA
    /// support, the driver library is missing or no GPU is present;
    /// [`crate::Error::DeviceOutOfRange`] for an ordinal past the last GPU.
    /// [`DeviceRequest::Auto`] never fails: it falls back to the CPU.
    pub fn new(request: DeviceRequest) -> Result<Self> {
        match request {
            DeviceRequest::Cpu => Ok(Device::Cpu),
            DeviceRequest::Auto => Ok(Self::new_cuda(0).unwrap_or(Device::Cpu)),
            DeviceRequest::Cuda(ordinal) => Self::new_cuda(ordinal),
        }
    }

    #[cfg(cuda_kernels)]
    fn new_cuda(ordinal: usize) -> Result<Self> {
        crate::cuda::Gpu::new(ordinal).map(Device::Cuda)
    }

    #[cfg(not(cuda_kernels))]
    fn new_cuda(_ordinal: usize) -> Result<Self> {
        Err(crate::error::Error::CudaUnavailable {
            reason: "this build has no CUDA support; rebuild with `--features cuda`".into(),
        })
    }

    /// Returns whether this is a GPU.
    pub fn is_cuda(&self) -> bool {
        !matches!(self, Device::Cpu)
    }

    /// Returns a short description for reports, such as `cpu` or `cuda:0 (NVIDIA H200)`.
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            #[cfg(cuda_kernels)]
            Device::Cuda(gpu) => gpu.name(),
        }
    }

    /// [`crate::cpu::forward`] on this device.
    pub fn forward<T: Element>(
        &self,
        activation: Activation,
        shape: Shape,
        z: &[T],
        y: &mut [T],
    ) -> Result<()> {
        match self {
            Device::Cpu => crate::cpu::forward(activation, shape, z, y),
            #[cfg(cuda_kernels)]
            Device::Cuda(gpu) => gpu.forward_host(activation, shape, z, y),
        }
    }

    /// [`crate::cpu::log_forward`] on this device.
    pub fn log_forward<T: Element>(
        &self,
        activation: Activation,
        shape: Shape,
        z: &[T],
        l: &mut [T],
    ) -> Result<()> {
        match self {
            Device::Cpu => crate::cpu::log_forward(activation, shape, z, l),
            #[cfg(cuda_kernels)]
            Device::Cuda(gpu) => gpu.log_forward_host(activation, shape, z, l),
        }
    }

    /// [`crate::cpu::backward`] on this device.
    pub fn backward<T: Element>(
        &self,
        activation: Activation,
        shape: Shape,
        z: &[T],
        y: &[T],
        dy: &[T],
        dz: &mut [T],
    ) -> Result<()> {
        match self {
            Device::Cpu => crate::cpu::backward(activation, shape, z, y, dy, dz),
            #[cfg(cuda_kernels)]
            Device::Cuda(gpu) => gpu.backward_host(activation, shape, z, y, dy, dz),
        }
    }

    /// [`crate::cpu::log_backward`] on this device.
    pub fn log_backward<T: Element>(
        &self,
        activation: Activation,
        shape: Shape,
        z: &[T],
        l: &[T],
        dl: &[T],
        dz: &mut [T],
    ) -> Result<()> {
        match self {
            Device::Cpu => crate::cpu::log_backward(activation, shape, z, l, dl, dz),
            #[cfg(cuda_kernels)]
            Device::Cuda(gpu) => gpu.log_backward_host(activation, shape, z, l, dl, dz),
        }
    }

    /// [`crate::cpu::cross_entropy`] on this device.
    #[allow(clippy::too_many_arguments)] // mirrors the op's signature
    pub fn cross_entropy<T: Element>(
        &self,
        activation: Activation,
        shape: Shape,
        z: &[T],
        targets: &[i64],
        options: &CrossEntropyOptions<'_>,
        losses: &mut [T::Accum],
        grad: Option<&mut [T]>,
    ) -> Result<f64> {
        match self {
            Device::Cpu => {
                crate::cpu::cross_entropy(activation, shape, z, targets, options, losses, grad)
            }
            #[cfg(cuda_kernels)]
            Device::Cuda(gpu) => {
                gpu.cross_entropy_host(activation, shape, z, targets, options, losses, grad)
            }
        }
    }
}
