//! The CUDA backend: driver and NVRTC loaded at run time through cudarc.
//!
//! cudarc is built with its `cuda-13000` feature, so it looks for the CUDA 13 libraries
//! (`libcuda.so.1`, `libnvrtc.so.13`, `libcublas.so.13`). A missing library makes cudarc panic on
//! first use, so every entry point checks `is_culib_present()` first and turns absence into
//! [`crate::Error::DeviceUnavailable`].

pub mod kernels;

use crate::error::{fail, Result};

/// Ok when a CUDA driver is loadable and device `device` exists; otherwise an error that says
/// what is missing.
pub fn check_available(device: i32) -> Result<()> {
    // SAFETY: is_culib_present only tries to open the shared library; it calls nothing in it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        fail!(
            DeviceUnavailable,
            "CUDA backend unavailable: the CUDA driver library (libcuda.so) was not found; install an NVIDIA driver or use the CPU backend"
        );
    }
    let count = cudarc::driver::result::init()
        .and_then(|_| cudarc::driver::result::device::get_count())
        .map_err(|e| {
            crate::Error::DeviceUnavailable(format!(
                "CUDA backend unavailable: the driver did not initialise ({e})"
            ))
        })?;
    if device >= count {
        fail!(DeviceUnavailable, "CUDA backend unavailable: device {device} asked for, the driver reports {count} device(s)");
    }
    fail!(
        DeviceUnavailable,
        "CUDA backend unavailable: this build has no CUDA kernels yet (device {device} of {count} found); use the CPU backend"
    )
}
