//! Every conversion from a C pointer to a Rust reference, slice, string or handle, in one place.
//!
//! Each function here is `unsafe`: its caller (an `extern "C"` function) forwards the C caller's
//! promise that a pointer is NULL or valid as the function's documentation says. What can be
//! checked is checked here: NULL becomes `TL_STATUS_NULL_ARGUMENT` naming the argument, and an
//! element count that overflows is `TL_STATUS_INVALID_ARGUMENT` naming its factors.
//!
//! Handles follow one scheme ([`Handle`]): the C type (`tl_params`) is an opaque marker that is
//! never instantiated, and a handle pointer points at the Rust value itself (`ParamSet`), boxed by
//! [`hand_out`] and freed by [`destroy`]. So a pointer is only ever converted between a marker
//! type and the one type it stands for, and a `&ParamSet` can be handed back to C as its handle
//! ([`handle_of`]) with no layout assumption.

use crate::error::{fail, Error, Result};
use std::ffi::{c_char, CStr};

/// A C handle type: an opaque marker whose pointers point at a `Target`.
///
/// # Safety
/// The implementing type must never be instantiated nor dereferenced: its pointers are only ever
/// made by [`hand_out`] or [`handle_of`] from a `Target`.
pub(crate) unsafe trait Handle {
    type Target;
}

/// `&*ptr`, or `TL_STATUS_NULL_ARGUMENT` naming the argument.
///
/// # Safety
/// `ptr` is NULL or points to a valid `T` that nothing writes while `'a` lasts.
pub(crate) unsafe fn try_ref<'a, T>(ptr: *const T, name: &str) -> Result<&'a T> {
    // SAFETY: the caller's contract: NULL (as_ref gives None) or valid and unwritten for 'a.
    unsafe { ptr.as_ref() }.ok_or_else(|| Error::NullArgument(format!("{name} is NULL")))
}

/// `&mut *ptr`, or `TL_STATUS_NULL_ARGUMENT` naming the argument.
///
/// # Safety
/// `ptr` is NULL or points to a valid `T` that nothing else reads or writes while `'a` lasts.
pub(crate) unsafe fn try_mut<'a, T>(ptr: *mut T, name: &str) -> Result<&'a mut T> {
    // SAFETY: the caller's contract: NULL (as_mut gives None) or valid and exclusive for 'a.
    unsafe { ptr.as_mut() }.ok_or_else(|| Error::NullArgument(format!("{name} is NULL")))
}

/// `Some(&mut *ptr)` for an optional output, `None` for NULL.
///
/// # Safety
/// As for [`try_mut`].
pub(crate) unsafe fn optional_mut<'a, T>(ptr: *mut T) -> Option<&'a mut T> {
    // SAFETY: the caller's contract, as for try_mut.
    unsafe { ptr.as_mut() }
}

/// The `len` elements at `ptr`; NULL is accepted only when `len` is 0.
///
/// # Safety
/// `ptr` is NULL or points to `len` valid, aligned elements that nothing writes while `'a` lasts.
pub(crate) unsafe fn try_slice<'a, T>(ptr: *const T, len: usize, name: &str) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        fail!(NullArgument, "{name} is NULL but its length is {len}");
    }
    // SAFETY: non-NULL, and the caller's contract gives `len` valid elements unwritten for 'a.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The `len` elements at `ptr`, writable; NULL is accepted only when `len` is 0.
///
/// # Safety
/// `ptr` is NULL or points to `len` aligned elements, writable, that nothing else reads or writes
/// while `'a` lasts.
pub(crate) unsafe fn try_slice_mut<'a, T>(ptr: *mut T, len: usize, name: &str) -> Result<&'a mut [T]> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        fail!(NullArgument, "{name} is NULL but its length is {len}");
    }
    // SAFETY: non-NULL, and the caller's contract gives `len` elements exclusive for 'a.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// A NUL-terminated string argument as UTF-8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that nothing writes while `'a` lasts.
pub(crate) unsafe fn try_str<'a>(ptr: *const c_char, name: &str) -> Result<&'a str> {
    if ptr.is_null() {
        fail!(NullArgument, "{name} is NULL");
    }
    // SAFETY: non-NULL, and the caller's contract gives a NUL-terminated string for 'a.
    unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|_| Error::InvalidArgument(format!("{name} is not valid UTF-8")))
}

/// The value behind a handle, or `TL_STATUS_NULL_ARGUMENT` naming the argument.
///
/// # Safety
/// `handle` is NULL or a live handle made by [`hand_out`] (or [`handle_of`]) that nothing writes
/// while `'a` lasts.
pub(crate) unsafe fn handle_ref<'a, H: Handle>(handle: *const H, name: &str) -> Result<&'a H::Target> {
    // SAFETY: a handle points at its Target (the Handle contract); validity is the caller's.
    unsafe { try_ref(handle.cast::<H::Target>(), name) }
}

/// The value behind a handle, writable, or `TL_STATUS_NULL_ARGUMENT` naming the argument.
///
/// # Safety
/// `handle` is NULL or a live handle made by [`hand_out`] that nothing else uses while `'a` lasts.
pub(crate) unsafe fn handle_mut<'a, H: Handle>(handle: *mut H, name: &str) -> Result<&'a mut H::Target> {
    // SAFETY: a handle points at its Target (the Handle contract); exclusivity is the caller's.
    unsafe { try_mut(handle.cast::<H::Target>(), name) }
}

/// The handle of a value that C already holds a handle to: the same pointer, for a callback.
pub(crate) fn handle_of<H: Handle>(value: &H::Target) -> *const H {
    (value as *const H::Target).cast::<H>()
}

/// Moves `value` to the heap and hands its ownership to C through `out`.
pub(crate) fn hand_out<H: Handle>(value: H::Target, out: &mut *mut H) {
    *out = Box::into_raw(Box::new(value)).cast::<H>();
}

/// Takes back a handle made by [`hand_out`] and drops its value; NULL is a no-op.
///
/// # Safety
/// `handle` is NULL or a live handle made by [`hand_out`], not used again afterwards.
pub(crate) unsafe fn destroy<H: Handle>(handle: *mut H) {
    if !handle.is_null() {
        // SAFETY: hand_out made the pointer with Box::into_raw of a Target, and the caller
        // destroys it once.
        drop(unsafe { Box::from_raw(handle.cast::<H::Target>()) });
    }
}

/// Fails with `TL_STATUS_INVALID_ARGUMENT` when the output handle `out` (named `out_name`) is one
/// of `inputs`: the call would read a set while writing it. Compares addresses only, so it runs
/// before any reference to the sets is formed. NULL is left to the NULL checks that follow.
pub(crate) fn ensure_distinct<H>(out_name: &str, out: *const H, inputs: &[(&str, *const H)]) -> Result<()> {
    if out.is_null() {
        return Ok(());
    }
    if let Some((name, _)) = inputs.iter().find(|(_, input)| std::ptr::eq(*input, out)) {
        fail!(InvalidArgument, "{out_name} is {name}: the call writes {out_name} while it reads {name}; pass a set of its own (tl_params_clone makes one)");
    }
    Ok(())
}

/// The product of caller-given sizes, or `TL_STATUS_INVALID_ARGUMENT` naming them when it
/// overflows `size_t`.
pub(crate) fn element_count(factors: &[(&str, usize)]) -> Result<usize> {
    factors.iter().try_fold(1usize, |n, &(_, f)| n.checked_mul(f)).ok_or_else(|| {
        let named: Vec<String> = factors.iter().map(|(name, f)| format!("{name} ({f})")).collect();
        Error::InvalidArgument(format!("{} overflows size_t", named.join(" x ")))
    })
}

/// A caller-given 64-bit count as `usize`, or `TL_STATUS_INVALID_ARGUMENT` naming it.
pub(crate) fn to_usize(value: u64, name: &str) -> Result<usize> {
    usize::try_from(value)
        .or_else(|_| fail!(InvalidArgument, "{name} = {value} does not fit in this platform's size_t"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    struct Marker;
    // SAFETY: Marker is never instantiated by these tests' handles, only named.
    unsafe impl Handle for Marker {
        type Target = String;
    }

    #[test]
    fn a_handle_round_trips_and_null_is_named() {
        let mut out: *mut Marker = std::ptr::null_mut();
        hand_out::<Marker>("set".to_string(), &mut out);
        // SAFETY: out was just made by hand_out and is used by this test alone.
        let value = unsafe { handle_ref(out, "h") }.unwrap();
        assert_eq!(value, "set");
        assert!(std::ptr::eq(handle_of::<Marker>(value), out));
        // SAFETY: destroyed once; NULL is a no-op.
        unsafe { destroy(out) };
        // SAFETY: NULL is accepted by contract.
        let err = unsafe { handle_ref::<Marker>(std::ptr::null(), "params") }.unwrap_err();
        assert_eq!((err.status(), err.to_string()), (Status::NullArgument, "params is NULL".into()));
    }

    #[test]
    fn overflowing_counts_name_their_factors() {
        assert_eq!(element_count(&[("nx", 3), ("ny", 4)]).unwrap(), 12);
        let err = element_count(&[("nx", usize::MAX), ("ny", 2)]).unwrap_err();
        assert_eq!(err.status(), Status::InvalidArgument);
        assert!(err.to_string().starts_with("nx (") && err.to_string().contains("x ny (2) overflows"), "{err}");
    }

    #[test]
    fn the_same_handle_as_an_input_is_refused_by_name() {
        let (a, b) = (1u8, 2u8);
        ensure_distinct("live", &b, &[("a", &a as *const u8)]).unwrap();
        ensure_distinct::<u8>("live", std::ptr::null(), &[("a", std::ptr::null())]).unwrap();
        let msg =
            ensure_distinct("live", &b, &[("a", &a as *const u8), ("checkpoints[1]", &b)]).unwrap_err().to_string();
        assert!(msg.starts_with("live is checkpoints[1]: "), "{msg}");
    }
}
