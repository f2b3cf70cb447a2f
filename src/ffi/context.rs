//! `tl_context`: where the arithmetic runs.

use super::{arg_mut, arg_ref, destroy, guard, guard_value, hand_out, RawBackend};
use crate::backend::{Backend, BackendChoice, Context};
use crate::error::Status;

/// A context: the resolved backend (CPU or a CUDA device) that every analysis runs on.
///
/// Thread safety: a context on the CPU backend may be used from several threads at once. A CUDA
/// context owns one stream: give each thread its own context.
pub struct tl_context {
    pub(crate) inner: Context,
}

/// Makes a context. `backend` AUTO picks CUDA when a driver and a device are present, else the
/// CPU; CUDA asked for without them fails with TL_STATUS_DEVICE_UNAVAILABLE and a message that
/// says what is missing. `device` is the CUDA device ordinal (ignored for the CPU).
/// On success *out owns a context to free with tl_context_destroy.
#[no_mangle]
pub unsafe extern "C" fn tl_context_create(backend: RawBackend, device: i32, out: *mut *mut tl_context) -> Status {
    guard(|| {
        let out = unsafe { arg_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        let choice = BackendChoice::from_raw(backend.0, "backend")?;
        hand_out(tl_context { inner: Context::new(choice, device)? }, out);
        Ok(())
    })
}

/// Frees a context made by tl_context_create; NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn tl_context_destroy(ctx: *mut tl_context) {
    guard_value((), || unsafe { destroy(ctx) })
}

/// Writes the context's resolved backend (TL_BACKEND_CPU or TL_BACKEND_CUDA) to *out.
#[no_mangle]
pub unsafe extern "C" fn tl_context_backend(ctx: *const tl_context, out: *mut BackendChoice) -> Status {
    guard(|| {
        let ctx = unsafe { arg_ref(ctx, "ctx") }?;
        let out = unsafe { arg_mut(out, "out") }?;
        *out = match ctx.inner.backend() {
            Backend::Cpu => BackendChoice::Cpu,
            Backend::Cuda => BackendChoice::Cuda,
        };
        Ok(())
    })
}
