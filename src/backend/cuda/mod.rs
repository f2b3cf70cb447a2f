//! The CUDA backend: driver and NVRTC loaded at run time through cudarc.
//!
//! cudarc is built with its `cuda-13000` feature, so it looks for the CUDA 13 libraries
//! (`libcuda.so.1`, `libnvrtc.so.13`, `libcublas.so.13`). A missing library makes cudarc panic on
//! first use, so every entry point checks `is_culib_present()` first and turns absence into
//! [`crate::Error::DeviceUnavailable`].
//!
//! - [`kernels`]: the kernel sources and their compilation by NVRTC;
//! - [`CudaDevice`]: a device's primary context, stream, compiled kernels and the device-side
//!   primitives (interpolation, fused perturbation, segmented norms, conversions, CKA helpers).

pub mod device;
pub mod kernels;

pub use device::{CudaDevice, DeviceBuffer, DeviceElement, MatrixShape, SegmentSums};

use crate::error::{fail, Result};

/// Ok when a CUDA driver is loadable and device `device` exists; otherwise
/// [`crate::Error::DeviceUnavailable`] saying what is missing. Never panics, with or without a
/// driver.
pub fn check_device(device: i32) -> Result<()> {
    if device < 0 {
        fail!(InvalidArgument, "device: CUDA device ordinal must be >= 0, got {device}");
    }
    // SAFETY: is_culib_present only tries to open the shared library; it calls nothing in it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        fail!(
            DeviceUnavailable,
            "CUDA backend unavailable: the CUDA driver library (libcuda.so) was not found; install an NVIDIA driver or use the CPU backend"
        );
    }
    let count =
        cudarc::driver::result::init().and_then(|_| cudarc::driver::result::device::get_count()).map_err(|e| {
            crate::Error::DeviceUnavailable(format!(
                "CUDA backend unavailable: the driver did not initialise ({})",
                device::describe("cuInit", &e)
            ))
        })?;
    if device >= count {
        fail!(
            DeviceUnavailable,
            "CUDA backend unavailable: device {device} asked for, the driver reports {count} device(s)"
        );
    }
    Ok(())
}

/// Ok when the analyses can run on CUDA device `device`. They are not yet routed to the
/// device primitives, so this reports the backend unavailable even where a device exists
/// (and `BackendChoice::Auto` resolves to the CPU); [`CudaDevice`] works where
/// [`check_device`] succeeds.
pub fn check_available(device: i32) -> Result<()> {
    check_device(device)?;
    fail!(
        DeviceUnavailable,
        "CUDA backend unavailable: the analyses do not run on CUDA yet (device {device} was found); use the CPU backend"
    )
}

/// The moments of one batch for a CKA accumulator on the device (see
/// [`crate::backend::CkaBatchMoments`]).
pub fn cka_batch_moments(
    _ctx: &crate::Context,
    _layers: &[(String, &crate::Matrix)],
    _shifts: &[Vec<f64>],
    _nx: usize,
    _wide: bool,
) -> Result<crate::backend::CkaBatchMoments> {
    fail!(DeviceUnavailable, "CKA on the CUDA backend is not available in this build; use a CPU context")
}

/// Column means for centering, computed on the device.
pub fn column_means(_ctx: &crate::Context, _m: &crate::Matrix, _name: &str) -> Result<Vec<f64>> {
    fail!(DeviceUnavailable, "CKA on the CUDA backend is not available in this build; use a CPU context")
}

/// Sample-space CKA terms on the device (see [`crate::backend::CkaGramTerms`]).
pub fn cka_gram_terms(
    _ctx: &crate::Context,
    _layers: &[(String, &crate::Matrix)],
    _pairs: &[(usize, usize)],
    _wide: bool,
) -> Result<crate::backend::CkaGramTerms> {
    fail!(DeviceUnavailable, "CKA on the CUDA backend is not available in this build; use a CPU context")
}
