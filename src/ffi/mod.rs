//! The C ABI: `extern "C"` functions over the Rust API, and nothing else.
//!
//! This layer holds no math. Each function checks its pointers and sizes, calls the Rust API and
//! maps the outcome to a [`Status`]. Every function runs inside [`guard`], a panic boundary: a
//! bug reaches the caller as `TL_STATUS_PANIC` with a message, never as an abort. The message of
//! a failure is kept per thread and read with `tl_last_error_message`. [`guard`] also keeps a
//! forked child from waiting on the parent's lost threads (see `backend::cpu::pool`).
//!
//! Pointers become references only through [`boundary`], which states each conversion's safety
//! contract; handles are opaque markers whose pointers point at the Rust value (see
//! [`boundary::Handle`]). The safety contract of every `extern "C"` function is the C one written
//! in its doc comment and in the header's conventions: each pointer is NULL where the doc allows
//! it, or valid for the documented length, and a set written by the call is not used by anything
//! else during it.
//!
//! Enum values arrive from C as plain integers and are validated before use (an out-of-range
//! value in a Rust enum would be undefined behaviour), so parameters and struct fields declared
//! in the header as `tl_dtype`, `tl_backend` and `tl_cka_estimator` are received here through
//! the `Raw*` newtypes.

#![allow(non_camel_case_types)]
// Each extern function's safety contract is in its C doc comment and the header's conventions
// (see above); the crate-internal unsafe fns carry a `# Safety` section.
#![allow(clippy::missing_safety_doc)]
#![deny(unsafe_op_in_unsafe_fn)]

mod align;
mod analysis;
mod boundary;
mod cka;
mod cka_stats;
mod cnn;
mod context;
mod criticality;
mod params;
mod train;

pub use align::*;
pub use analysis::*;
#[allow(unused_imports)]
pub use cka::*;
pub use cka_stats::*;
pub use cnn::*;
pub use context::*;
pub use criticality::*;
pub use params::*;
pub use train::*;

use crate::error::{Error, Result, Status};
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

/// A `tl_dtype` value as received from C; see the module docs.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct RawDType(pub u32);

/// A `tl_backend` value as received from C.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct RawBackend(pub u32);

/// A `tl_status` value as received from C.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct RawStatus(pub u32);

/// A `tl_cka_estimator` value as received from C.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct RawEstimator(pub u32);

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // Interior NULs would truncate the C string; replace them rather than lose the message.
    let text = CString::new(message.replace('\0', "?")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = text);
}

/// C calls in progress, process-wide: a panic on one of our worker threads during a call is
/// part of that call (rayon carries it to the caller's catch_unwind).
static CALLS_IN_PROGRESS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// How deep this thread is inside the panic boundary.
    static BOUNDARY_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether a panic on this thread now is one the boundary catches, so that its message goes to
/// `tl_last_error_message` and never to the host's stderr.
fn panic_is_caught_by_the_boundary() -> bool {
    BOUNDARY_DEPTH.with(Cell::get) > 0
        || (CALLS_IN_PROGRESS.load(Ordering::Relaxed) > 0 && rayon::current_thread_index().is_some())
}

/// Runs `body` as a C call: inside catch_unwind, with the quiet panic hook installed (once per
/// process; outside the boundary it defers to the hook that was there before, so a Rust host's
/// own panics still print).
fn within_boundary<T>(body: impl FnOnce() -> T) -> std::thread::Result<T> {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !panic_is_caught_by_the_boundary() {
                previous(info);
            }
        }));
    });
    CALLS_IN_PROGRESS.fetch_add(1, Ordering::Relaxed);
    BOUNDARY_DEPTH.with(|d| d.set(d.get() + 1));
    let outcome = catch_unwind(AssertUnwindSafe(body));
    BOUNDARY_DEPTH.with(|d| d.set(d.get() - 1));
    CALLS_IN_PROGRESS.fetch_sub(1, Ordering::Relaxed);
    outcome
}

/// Runs `body` inside the panic boundary; maps its outcome to a status and records the message
/// of a failure for `tl_last_error_message`. A panic's message is recorded, never printed.
pub(crate) fn guard(body: impl FnOnce() -> Result<()>) -> Status {
    let outcome = within_boundary(|| crate::backend::cpu::pool::fork_safe(body)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(Error::Panic(what))
    });
    match outcome {
        Ok(()) => Status::Ok,
        Err(e) => {
            set_last_error(&e.to_string());
            e.status()
        }
    }
}

/// Runs an infallible `body` (a destructor, a getter) inside the panic boundary; a panic is
/// recorded as the last error and `fallback` returned.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    match within_boundary(body) {
        Ok(v) => v,
        Err(_) => {
            set_last_error("internal error (please report): panic in an infallible function");
            fallback
        }
    }
}

// Static NUL-terminated strings for the getters below.
static VERSION_CSTR: &CStr = {
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("version contains a NUL"),
    }
};

/// The library version, "MAJOR.MINOR.PATCH". The string is static.
#[no_mangle]
pub extern "C" fn tl_version() -> *const c_char {
    VERSION_CSTR.as_ptr()
}

/// The ABI version: it changes when a release breaks binary compatibility with older callers.
#[no_mangle]
pub extern "C" fn tl_abi_version() -> u32 {
    crate::ABI_VERSION
}

/// The name of a status code ("TL_STATUS_OK", ...), or "TL_STATUS_UNKNOWN" for a value that is
/// no status. The string is static.
#[no_mangle]
pub extern "C" fn tl_status_name(status: RawStatus) -> *const c_char {
    const NAMES: [&CStr; 15] = [
        c"TL_STATUS_OK",
        c"TL_STATUS_NULL_ARGUMENT",
        c"TL_STATUS_INVALID_ARGUMENT",
        c"TL_STATUS_SHAPE_MISMATCH",
        c"TL_STATUS_UNSUPPORTED_DTYPE",
        c"TL_STATUS_DEGENERATE_INPUT",
        c"TL_STATUS_NON_FINITE",
        c"TL_STATUS_IO",
        c"TL_STATUS_FORMAT",
        c"TL_STATUS_NOT_FOUND",
        c"TL_STATUS_DEVICE_UNAVAILABLE",
        c"TL_STATUS_DEVICE",
        c"TL_STATUS_CALLBACK",
        c"TL_STATUS_PANIC",
        c"TL_STATUS_OUT_OF_MEMORY",
    ];
    NAMES.get(status.0 as usize).copied().unwrap_or(c"TL_STATUS_UNKNOWN").as_ptr()
}

/// This thread's message for its last failed call, or "" if none failed. The string stays valid
/// until this thread's next call of a tl_ function.
#[no_mangle]
pub extern "C" fn tl_last_error_message() -> *const c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_match_the_rust_names() {
        for s in Status::ALL {
            // SAFETY: tl_status_name returns a static NUL-terminated string.
            let name = unsafe { CStr::from_ptr(tl_status_name(RawStatus(s as u32))) }.to_str().unwrap();
            assert_eq!(name, s.name());
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(tl_status_name(RawStatus(99))) }.to_str().unwrap();
        assert_eq!(unknown, "TL_STATUS_UNKNOWN");
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, Status::Panic);
        // SAFETY: the message stays valid until this thread's next tl_ call.
        let msg = unsafe { CStr::from_ptr(tl_last_error_message()) }.to_str().unwrap();
        assert!(msg.contains("boom"), "{msg}");
    }

    /// The quiet hook's decision: a panic inside a C call, on the caller's thread or on one of
    /// the pool's workers while the call runs, is the boundary's (recorded, not printed); one
    /// outside every call goes to the hook that was there before.
    #[test]
    fn panics_inside_a_call_are_kept_from_the_hosts_stderr() {
        assert!(!panic_is_caught_by_the_boundary());
        let mut seen = (false, false);
        let status = guard(|| {
            seen.0 = panic_is_caught_by_the_boundary();
            seen.1 = rayon::join(panic_is_caught_by_the_boundary, panic_is_caught_by_the_boundary) == (true, true);
            Ok(())
        });
        assert_eq!(status, Status::Ok);
        assert_eq!(seen, (true, true));
        assert!(!panic_is_caught_by_the_boundary());
        assert!(guard_value(false, panic_is_caught_by_the_boundary));
        assert!(!panic_is_caught_by_the_boundary());
    }
}
