//! The CUDA backend: driver and NVRTC loaded at run time through cudarc.
//!
//! cudarc is built with its `cuda-13000` feature, so it looks for the CUDA 13 libraries
//! (`libcuda.so.1`, `libnvrtc.so.13`, `libcublas.so.13`). A missing library makes cudarc panic on
//! first use, so every entry point checks `is_culib_present()` first and turns absence into
//! [`crate::Error::DeviceUnavailable`].
//!
//! - [`kernels`]: the kernel sources and their compilation by NVRTC;
//! - [`device`]: a device's primary context, stream, compiled kernels, buffers, cuBLAS handle,
//!   and [`CudaDevice::launch`](device::CudaDevice), the one way a kernel is launched;
//! - [`blas`]: the one place cuBLAS products are called;
//! - the host code of each kernel file, named after it: [`weights`] (`kernels/weights.cu`:
//!   interpolation, segmented sums of squares, normals, conversions), [`cka`] (`kernels/cka.cu`:
//!   batch moments, Gram terms, column means), [`mlp`] (`kernels/mlp.cu`: the MLP's noisy
//!   copies), [`cnn`] (`kernels/cnn.cu`: the CNN's evaluation and its noisy copies). Their CPU
//!   twins are `backend/cpu/weights.rs`, `cka.rs`, `mlp.rs` and `cnn.rs`.

// The GPU benchmark calls cuBLAS through the same helper as the library.
#[cfg(feature = "bench")]
pub mod blas;
#[cfg(not(feature = "bench"))]
pub(crate) mod blas;
pub mod cka;
pub mod cnn;
pub mod device;
pub mod kernels;
pub mod mlp;
pub mod weights;

pub use cka::{cka_batch_moments, cka_feature_terms, cka_gram_terms, column_means};
#[cfg(feature = "bench")]
pub use cka::{last_phases, GramAlgo};
pub use device::{CudaDevice, DeviceBuffer, DeviceElement, MatrixShape};
pub use weights::SegmentSums;

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

/// Ok when the analyses can run on CUDA device `device`: a driver and the device exist, and
/// NVRTC and cuBLAS (`libnvrtc.so.13`, `libcublas.so.13`) can be loaded; otherwise
/// [`crate::Error::DeviceUnavailable`] saying what is missing. Never panics. The kernels are
/// compiled and the cuBLAS handle made by [`CudaDevice`] when a context is created
/// ([`crate::Context::new`]), so that `Auto` falls back to the CPU where they fail.
pub fn check_available(device: i32) -> Result<()> {
    check_device(device)?;
    // SAFETY: only try to open the shared libraries.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        fail!(
            DeviceUnavailable,
            "CUDA backend unavailable: NVRTC (libnvrtc.so.13) was not found; install CUDA 13's NVRTC (the toolkit, or the pip package nvidia-cuda-nvrtc) and put its folder on LD_LIBRARY_PATH, or use the CPU backend"
        );
    }
    // SAFETY: as above.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        fail!(
            DeviceUnavailable,
            "CUDA backend unavailable: cuBLAS (libcublas.so.13) was not found; install CUDA 13's cuBLAS (the toolkit, or the pip package nvidia-cublas) and put its folder on LD_LIBRARY_PATH, or use the CPU backend"
        );
    }
    Ok(())
}

/// A device ready for the analyses: `check_available`, then the device with its kernels loaded
/// and its cuBLAS handle made, so that every failure shows here rather than at the first call.
pub fn open_device(device: i32) -> Result<std::sync::Arc<CudaDevice>> {
    check_available(device)?;
    let dev = CudaDevice::new(device)?;
    dev.load_kernels()?;
    drop(dev.blas()?);
    Ok(std::sync::Arc::new(dev))
}
