//! Opening a GPU where there may be none: typed errors, never a panic, with and without the
//! `cuda` feature. Runs everywhere; on a machine with a GPU the checks that need its absence
//! return early.

use sigsoftmax::{Device, DeviceRequest, Error};

/// Returns whether this process can open GPU 0 through the driver library.
fn gpu_visible() -> bool {
    Device::new(DeviceRequest::Cuda(0)).is_ok()
}

#[test]
fn cuda_request_without_gpu_is_typed_error() {
    let result = std::panic::catch_unwind(|| Device::new(DeviceRequest::Cuda(0)));
    let result = result.expect("Device::new(Cuda(0)) panicked instead of returning an error");
    if result.is_ok() {
        return; // a GPU is present: nothing to check here
    }
    match result {
        Err(Error::CudaUnavailable { reason }) => {
            assert!(!reason.is_empty(), "CudaUnavailable carries no reason");
        }
        other => panic!("expected Error::CudaUnavailable, got {other:?}"),
    }
}

#[test]
fn cuda_error_message_says_what_to_do() {
    let Err(error) = Device::new(DeviceRequest::Cuda(0)) else {
        return; // a GPU is present
    };
    let message = error.to_string();
    assert!(
        message.starts_with("CUDA is not available: "),
        "unexpected message: {message}"
    );
    if cfg!(cuda_kernels) {
        assert!(
            !message.contains("--features cuda"),
            "a cuda build blamed the feature: {message}"
        );
    } else {
        assert!(
            message.contains("--features cuda"),
            "a CPU-only build should name the feature: {message}"
        );
    }
}

#[test]
fn auto_falls_back_to_cpu() {
    let device = Device::new(DeviceRequest::Auto).expect("Auto never fails");
    if !gpu_visible() {
        assert!(
            !device.is_cuda(),
            "Auto picked a GPU that Cuda(0) could not open"
        );
        assert_eq!(device.name(), "cpu");
    }
}

#[test]
fn large_ordinal_is_typed_error() {
    match Device::new(DeviceRequest::Cuda(1 << 20)) {
        Err(Error::DeviceOutOfRange { ordinal, count }) => {
            assert_eq!(ordinal, 1 << 20);
            assert!(count >= 1, "DeviceOutOfRange reported {count} devices");
        }
        Err(Error::CudaUnavailable { .. }) => assert!(!gpu_visible()),
        other => panic!("expected DeviceOutOfRange or CudaUnavailable, got {other:?}"),
    }
}

#[cfg(cuda_kernels)]
mod with_feature {
    use sigsoftmax::cuda::{raw, Gpu};
    use sigsoftmax::{DType, Error, Shape};

    #[test]
    fn gpu_new_without_driver_is_typed_error() {
        match Gpu::new(0) {
            Ok(_) => {} // a GPU is present
            Err(Error::CudaUnavailable { .. }) => {}
            Err(other) => panic!("expected CudaUnavailable, got {other:?}"),
        }
    }

    // The workspace queries are host functions and run without a GPU.
    #[test]
    fn workspace_zero_for_short_rows() {
        let shape = Shape::new(4096, 1024).unwrap();
        for dtype in DType::ALL {
            assert_eq!(raw::forward_workspace_size(dtype, shape), 0, "{dtype}");
            assert_eq!(raw::backward_workspace_size(dtype, shape), 0, "{dtype}");
        }
    }

    #[test]
    fn workspace_for_few_long_rows() {
        // 4 rows of 256000: the split path, which keeps per-chunk statistics.
        let shape = Shape::new(4, 256_000).unwrap();
        for dtype in DType::ALL {
            assert!(raw::forward_workspace_size(dtype, shape) > 0, "{dtype}");
            assert!(raw::backward_workspace_size(dtype, shape) > 0, "{dtype}");
            assert!(
                raw::cross_entropy_workspace_size(dtype, shape) > raw::CROSS_ENTROPY_RESULT_BYTES,
                "{dtype}"
            );
        }
    }

    #[test]
    fn cross_entropy_workspace_holds_result() {
        let shape = Shape::new(3, 5).unwrap();
        for dtype in DType::ALL {
            assert!(
                raw::cross_entropy_workspace_size(dtype, shape) >= raw::CROSS_ENTROPY_RESULT_BYTES
            );
        }
    }
}
