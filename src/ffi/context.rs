//! `tl_context`: where the arithmetic runs.

use super::boundary::{destroy, hand_out, handle_ref, try_mut, Handle};
use super::{guard, guard_value, RawBackend};
use crate::backend::{Backend, BackendChoice, Context};
use crate::error::Status;

/// A context: the resolved backend (CPU or a CUDA device) that every analysis runs on.
///
/// Thread safety: a context on the CPU backend may be used from several threads at once. A CUDA
/// context owns one stream: give each thread its own context.
pub struct tl_context {
    _opaque: [u8; 0],
}

// SAFETY: tl_context is never instantiated; its pointers come from hand_out of a Context.
unsafe impl Handle for tl_context {
    type Target = Context;
}

/// Makes a context. `backend` AUTO picks CUDA when a driver and a device are present, else the
/// CPU; CUDA asked for without them fails with TL_STATUS_DEVICE_UNAVAILABLE and a message that
/// says what is missing. `device` is the CUDA device ordinal (ignored for the CPU).
/// On success *out owns a context to free with tl_context_destroy.
#[no_mangle]
pub unsafe extern "C" fn tl_context_create(backend: RawBackend, device: i32, out: *mut *mut tl_context) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write (the C contract).
        let out = unsafe { try_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        let choice = BackendChoice::from_raw(backend.0, "backend")?;
        hand_out(Context::new(choice, device)?, out);
        Ok(())
    })
}

/// Frees a context made by tl_context_create; NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn tl_context_destroy(ctx: *mut tl_context) {
    // SAFETY: ctx is NULL or a context from tl_context_create, destroyed once (the C contract).
    guard_value((), || unsafe { destroy(ctx) })
}

/// Writes the context's resolved backend (TL_BACKEND_CPU or TL_BACKEND_CUDA) to *out.
#[no_mangle]
pub unsafe extern "C" fn tl_context_backend(ctx: *const tl_context, out: *mut BackendChoice) -> Status {
    guard(|| {
        // SAFETY: ctx is NULL or a live context, out NULL or valid for a write (the C contract).
        let (ctx, out) = unsafe { (handle_ref(ctx, "ctx")?, try_mut(out, "out")?) };
        *out = match ctx.backend() {
            Backend::Cpu => BackendChoice::Cpu,
            Backend::Cuda => BackendChoice::Cuda,
        };
        Ok(())
    })
}
