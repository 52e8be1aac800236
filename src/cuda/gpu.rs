//! [`Gpu`]: one device's context and stream, the ops on host slices, and event timing.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaView, CudaViewMut};

use super::ops;
use crate::cpu::Real;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::options::{Activation, CrossEntropyOptions};
use crate::shape::Shape;

/// A GPU with the stream the ops run on.
///
/// The `*_host` methods copy their inputs to the device, run the op and copy the results back
/// (waiting for the GPU), which suits tests and the command line. Training code keeps its data
/// on the device and calls the functions of [`crate::cuda`] on [`Gpu::stream`].
#[derive(Debug)]
pub struct Gpu {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    device_name: String,
}

impl Gpu {
    /// Opens the GPU with this ordinal and creates a stream on it.
    ///
    /// Looks for the driver library before cudarc loads it, so a missing driver is an error and
    /// not a panic. With the feature `candle-cuda`, cudarc links libcuda as candle configures
    /// it, so a program that starts at all has the library.
    ///
    /// # Errors
    /// [`Error::CudaUnavailable`] when `libcuda.so` is missing, the driver fails to initialize
    /// or no GPU is visible; [`Error::DeviceOutOfRange`] for an ordinal past the last GPU.
    pub fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: is_culib_present only tries to open the driver library by its usual names and
        // closes it again; it runs no code of the library. cudarc would panic on the first
        // driver call without it.
        #[cfg(not(feature = "candle-cuda"))]
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::CudaUnavailable {
                reason: "the NVIDIA driver library (libcuda.so) was not found; install the NVIDIA driver"
                    .into(),
            });
        }
        let count = CudaContext::device_count().map_err(|error| Error::CudaUnavailable {
            reason: format!(
                "the CUDA driver failed to initialize ({error}); check that a GPU is visible \
                 (nvidia-smi, CUDA_VISIBLE_DEVICES)"
            ),
        })?;
        let count = usize::try_from(count).unwrap_or(0);
        if count == 0 {
            return Err(Error::CudaUnavailable {
                reason: "no CUDA device is visible; check nvidia-smi and CUDA_VISIBLE_DEVICES"
                    .into(),
            });
        }
        if ordinal >= count {
            return Err(Error::DeviceOutOfRange { ordinal, count });
        }
        let unavailable = |what: &str, error: cudarc::driver::DriverError| Error::CudaUnavailable {
            reason: format!("failed to {what} on CUDA device {ordinal}: {error}"),
        };
        let context =
            CudaContext::new(ordinal).map_err(|error| unavailable("create a context", error))?;
        let stream = context
            .new_stream()
            .map_err(|error| unavailable("create a stream", error))?;
        let device_name = context
            .name()
            .map_err(|error| unavailable("read the device name", error))?;
        Ok(Self {
            context,
            stream,
            device_name,
        })
    }

    /// Returns a short description such as `cuda:0 (NVIDIA H200)`.
    pub fn name(&self) -> String {
        format!("cuda:{} ({})", self.context.ordinal(), self.device_name)
    }

    /// Returns the device's context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    /// Returns the stream the ops of this value run on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Runs `work` (which enqueues GPU work on [`Gpu::stream`]) between two CUDA events and
    /// returns the GPU time between them in milliseconds, waiting for the work to finish.
    ///
    /// The time covers what the GPU executed between the events, not host overhead before the
    /// first launch; event resolution is about 0.5 microseconds.
    ///
    /// # Errors
    /// The error of `work`, or [`Error::Cuda`] when an event fails.
    pub fn time_ms(&self, work: impl FnOnce(&Arc<CudaStream>) -> Result<()>) -> Result<f32> {
        let shape = Shape::new(1, 1)?;
        let event_error = super::driver_error("time_ms", shape);
        let start = self
            .context
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(event_error)?;
        let end = self
            .context
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(event_error)?;
        start.record(&self.stream).map_err(event_error)?;
        work(&self.stream)?;
        end.record(&self.stream).map_err(event_error)?;
        start.elapsed_ms(&end).map_err(event_error)
    }

    /// Times a device-to-device copy of `bytes` bytes (it reads `bytes` and writes `bytes`),
    /// the bandwidth limit that benchmarks compare the ops against. Runs one untimed copy,
    /// then `iterations` copies between one pair of events, and returns the mean milliseconds
    /// per copy.
    ///
    /// # Errors
    /// [`Error::EmptyShape`] for 0 bytes or 0 iterations, [`Error::Cuda`] when an allocation
    /// or copy fails.
    pub fn device_copy_ms(&self, bytes: usize, iterations: usize) -> Result<f32> {
        let shape = Shape::new(iterations, bytes)?;
        let error = super::driver_error("device_copy", shape);
        let source = self.stream.alloc_zeros::<u8>(bytes).map_err(error)?;
        let mut destination = self.stream.alloc_zeros::<u8>(bytes).map_err(error)?;
        self.stream
            .memcpy_dtod(&source, &mut destination)
            .map_err(error)?;
        let total = self.time_ms(|stream| {
            for _ in 0..iterations {
                stream
                    .memcpy_dtod(&source, &mut destination)
                    .map_err(error)?;
            }
            Ok(())
        })?;
        Ok(total / iterations as f32)
    }

    /// [`crate::cpu::forward`] through host copies.
    pub fn forward_host<T: Element>(
        &self,
        activation: Activation,
        shape: Shape,
        z: &[T],
        y: &mut [T],
    ) -> Result<()> {
        const OP: &str = "forward";
        shape.check_matrix(OP, "z", z.len())?;
        shape.check_matrix(OP, "y", y.len())?;
        let z_dev = self.upload(OP, shape, z)?;
        let mut y_dev = self.alloc_like(OP, shape, y)?;
        ops::forward(
            &self.stream,
            activation,
            shape,
            &typed::<T>(&z_dev),
            &mut typed_mut::<T>(&mut y_dev),
        )?;
        self.download(OP, shape, &y_dev, y)
    }

    /// [`crate::cpu::log_forward`] through host copies.
    pub fn log_forward_host<T: Element>(
        &self,
        activation: Activation,
        shape: Shape,
        z: &[T],
        l: &mut [T],
    ) -> Result<()> {
        const OP: &str = "log_forward";
        shape.check_matrix(OP, "z", z.len())?;
        shape.check_matrix(OP, "l", l.len())?;
        let z_dev = self.upload(OP, shape, z)?;
        let mut l_dev = self.alloc_like(OP, shape, l)?;
        ops::log_forward(
            &self.stream,
            activation,
            shape,
            &typed::<T>(&z_dev),
            &mut typed_mut::<T>(&mut l_dev),
        )?;
        self.download(OP, shape, &l_dev, l)
    }

    /// [`crate::cpu::backward`] through host copies.
    pub fn backward_host<T: Element>(
        &self,
        activation: Activation,
        shape: Shape,
        z: &[T],
        y: &[T],
        dy: &[T],
        dz: &mut [T],
    ) -> Result<()> {
        self.backward_host_impl(
            activation,
            shape,
            false,
            ["backward", "y", "dy"],
            z,
            y,
            dy,
            dz,
        )
    }

    /// [`crate::cpu::log_backward`] through host copies.
    pub fn log_backward_host<T: Element>(
        &self,
        activation: Activation,
        shape: Shape,
        z: &[T],
        l: &[T],
        dl: &[T],
        dz: &mut [T],
    ) -> Result<()> {
        self.backward_host_impl(
            activation,
            shape,
            true,
            ["log_backward", "l", "dl"],
            z,
            l,
            dl,
            dz,
        )
    }

    #[allow(clippy::too_many_arguments)] // the op's buffers plus its names
    fn backward_host_impl<T: Element>(
        &self,
        activation: Activation,
        shape: Shape,
        log_output: bool,
        [op, out_name, dout_name]: [&'static str; 3],
        z: &[T],
        out: &[T],
        dout: &[T],
        dz: &mut [T],
    ) -> Result<()> {
        for (name, len) in [
            ("z", z.len()),
            (out_name, out.len()),
            (dout_name, dout.len()),
            ("dz", dz.len()),
        ] {
            shape.check_matrix(op, name, len)?;
        }
        let z_dev = self.upload(op, shape, z)?;
        let out_dev = self.upload(op, shape, out)?;
        let dout_dev = self.upload(op, shape, dout)?;
        let mut dz_dev = self.alloc_like(op, shape, dz)?;
        let (z_view, out_view, dout_view) = (
            typed::<T>(&z_dev),
            typed::<T>(&out_dev),
            typed::<T>(&dout_dev),
        );
        let mut dz_view = typed_mut::<T>(&mut dz_dev);
        if log_output {
            ops::log_backward(
                &self.stream,
                activation,
                shape,
                &z_view,
                &out_view,
                &dout_view,
                &mut dz_view,
            )?;
        } else {
            ops::backward(
                &self.stream,
                activation,
                shape,
                &z_view,
                &out_view,
                &dout_view,
                &mut dz_view,
            )?;
        }
        self.download(op, shape, &dz_dev, dz)
    }

    /// [`crate::cpu::cross_entropy`] through host copies. Targets and options are checked on
    /// the host first, so nothing is written on error, as on the CPU.
    #[allow(clippy::too_many_arguments)] // mirrors the op's signature
    pub fn cross_entropy_host<T: Element>(
        &self,
        activation: Activation,
        shape: Shape,
        z: &[T],
        targets: &[i64],
        options: &CrossEntropyOptions<'_>,
        losses: &mut [T::Accum],
        grad: Option<&mut [T]>,
    ) -> Result<f64> {
        const OP: &str = "cross_entropy";
        shape.check_matrix(OP, "z", z.len())?;
        if let Some(grad) = &grad {
            shape.check_matrix(OP, "grad", grad.len())?;
        }
        crate::cpu::check_cross_entropy(OP, shape, targets, options, losses.len())?;

        let z_dev = self.upload(OP, shape, z)?;
        let targets_dev = self.upload(OP, shape, targets)?;
        let mut losses_dev = self.alloc_bytes(OP, shape, std::mem::size_of_val(losses))?;
        let mut grad_dev = match &grad {
            Some(grad) => Some(self.alloc_like(OP, shape, grad)?),
            None => None,
        };
        let loss = {
            let mut grad_view = grad_dev.as_mut().map(typed_mut::<T>);
            ops::cross_entropy(
                &self.stream,
                activation,
                shape,
                &typed::<T>(&z_dev),
                &typed::<i64>(&targets_dev),
                options,
                &mut typed_mut::<T::Accum>(&mut losses_dev),
                grad_view.as_mut(),
            )?
        };
        self.download_losses(OP, shape, &losses_dev, losses)?;
        if let (Some(grad), Some(grad_dev)) = (grad, &grad_dev) {
            self.download(OP, shape, grad_dev, grad)?;
        }
        Ok(loss)
    }

    /// Copies a host slice into a new device buffer, as bytes.
    fn upload<V: Plain>(
        &self,
        op: &'static str,
        shape: Shape,
        host: &[V],
    ) -> Result<CudaSlice<u8>> {
        self.stream
            .clone_htod(as_bytes(host))
            .map_err(super::driver_error(op, shape))
    }

    /// Allocates a device buffer of the same byte length as `host`.
    fn alloc_like<V: Plain>(
        &self,
        op: &'static str,
        shape: Shape,
        host: &[V],
    ) -> Result<CudaSlice<u8>> {
        self.alloc_bytes(op, shape, std::mem::size_of_val(host))
    }

    fn alloc_bytes(&self, op: &'static str, shape: Shape, bytes: usize) -> Result<CudaSlice<u8>> {
        // SAFETY: the buffer is only read back after the op has written every element of it.
        unsafe { self.stream.alloc::<u8>(bytes) }.map_err(super::driver_error(op, shape))
    }

    /// Copies the per-row losses back. They are f32, or f64 for f64 storage (`Element::Accum`);
    /// the generic compute type is filled through `Real::from_f64`, which is exact for both.
    fn download_losses<A: Real>(
        &self,
        op: &'static str,
        shape: Shape,
        device: &CudaSlice<u8>,
        losses: &mut [A],
    ) -> Result<()> {
        if std::mem::size_of::<A>() == std::mem::size_of::<f64>() {
            let mut host = vec![0.0f64; losses.len()];
            self.download(op, shape, device, &mut host)?;
            losses
                .iter_mut()
                .zip(host)
                .for_each(|(loss, value)| *loss = A::from_f64(value));
        } else {
            let mut host = vec![0.0f32; losses.len()];
            self.download(op, shape, device, &mut host)?;
            losses
                .iter_mut()
                .zip(host)
                .for_each(|(loss, value)| *loss = A::from_f64(f64::from(value)));
        }
        Ok(())
    }

    /// Copies a device buffer back into `host` and waits for the stream.
    fn download<V: Plain>(
        &self,
        op: &'static str,
        shape: Shape,
        device: &CudaSlice<u8>,
        host: &mut [V],
    ) -> Result<()> {
        let error = super::driver_error(op, shape);
        self.stream
            .memcpy_dtoh(device, as_bytes_mut(host))
            .map_err(error)?;
        self.stream.synchronize().map_err(error)
    }
}

/// Types copied between host and device as raw bytes: the storage types and the i64 targets.
/// None has padding, and every bit pattern is a valid value.
///
/// # Safety
/// Implement only for such plain types.
unsafe trait Plain: Copy {}
// SAFETY: Element is sealed (its supertrait lives in a private module) and implemented only for
// f32, f64, half::f16 and half::bf16: numbers without padding, valid for every bit pattern.
unsafe impl<T: Element> Plain for T {}
// SAFETY: a primitive integer without padding; every bit pattern is a valid value.
unsafe impl Plain for i64 {}

fn as_bytes<V: Plain>(values: &[V]) -> &[u8] {
    // SAFETY: V has no padding (Plain), so all size_of_val bytes are initialized, and u8 has
    // alignment 1; the byte slice borrows `values` for its whole life.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), std::mem::size_of_val(values)) }
}

fn as_bytes_mut<V: Plain>(values: &mut [V]) -> &mut [u8] {
    // SAFETY: as in as_bytes; any bytes written form a valid V (Plain).
    unsafe {
        std::slice::from_raw_parts_mut(values.as_mut_ptr().cast(), std::mem::size_of_val(values))
    }
}

/// Views a byte buffer uploaded from a `[V]` as `V` elements again.
fn typed<V>(bytes: &CudaSlice<u8>) -> CudaView<'_, V> {
    let len = bytes.len() / std::mem::size_of::<V>();
    // SAFETY: the bytes were copied from (or will receive) a host `[V]` of `len` elements, and
    // cudarc allocations are 256-byte aligned, so the view is valid and aligned for V.
    unsafe { bytes.transmute::<V>(len) }
        .expect("a buffer of len * size_of::<V>() bytes has room for len values")
}

fn typed_mut<V>(bytes: &mut CudaSlice<u8>) -> CudaViewMut<'_, V> {
    let len = bytes.len() / std::mem::size_of::<V>();
    // SAFETY: as in `typed`.
    unsafe { bytes.transmute_mut::<V>(len) }
        .expect("a buffer of len * size_of::<V>() bytes has room for len values")
}
