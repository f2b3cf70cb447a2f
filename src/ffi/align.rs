//! Permutation alignment through the C ABI (docs/align.md): `tl_perm_spec` (inferred or from
//! JSON), weight and activation matching, applying a permutation, and the layer-wise curve.
//!
//! Permutations cross the ABI as one flat `uint64_t` array for the whole spec: group `g`'s
//! permutation (`perm[i]`: the unit of B that becomes unit `i`) at the offset of the sizes of
//! the groups before it; `tl_perm_spec_units` gives the total length.

use super::analysis::{tl_evaluator, tl_metrics};
use super::boundary::{
    destroy, hand_out, handle_mut, handle_ref, optional_mut, to_usize, try_mut, try_slice, try_slice_mut, try_str,
    Handle,
};
use super::cka::{tl_matrix, views};
use super::context::tl_context;
use super::criticality::check_version_size;
use super::{guard, guard_value, tl_params};
use crate::align::{apply, layerwise_curve, match_weights, ActivationMatcher, MatchOptions, Moving, PermSpec};
use crate::error::{fail, Result, Status};

/// A permutation spec: which tensor axes share one permutation of hidden units (docs/align.md).
/// Immutable once made: any number of calls may read it at once.
pub struct tl_perm_spec {
    _opaque: [u8; 0],
}

// SAFETY: tl_perm_spec is never instantiated; its pointers come from hand_out of a PermSpec.
unsafe impl Handle for tl_perm_spec {
    type Target = PermSpec;
}

/// Options of tl_align_weights. Fill the struct from tl_align_options_default() and keep its
/// `size`: fields added in later versions take their defaults for callers built against an
/// older, smaller struct.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tl_align_options {
    pub size: usize,
    /// Seeds the order in which each pass visits the groups (default 0).
    pub seed: u64,
    /// The most passes over all groups (>= 1; default 100); matching stops earlier after a pass
    /// that changed no group.
    pub max_passes: u64,
}

super::criticality::versioned!(tl_align_options { size, seed, max_passes });

/// The defaults: seed 0, at most 100 passes.
#[no_mangle]
pub extern "C" fn tl_align_options_default() -> tl_align_options {
    let o = MatchOptions::default();
    tl_align_options { size: std::mem::size_of::<tl_align_options>(), seed: o.seed, max_passes: o.max_passes as u64 }
}

/// The caller's options over the defaults (NULL: the defaults).
///
/// # Safety
/// `opts` is NULL or points to a struct of at least `opts->size` readable bytes, starting with
/// its `size` field.
unsafe fn read_options(opts: *const tl_align_options) -> Result<MatchOptions> {
    let mut o = tl_align_options_default();
    if !opts.is_null() {
        // SAFETY: the caller's struct holds at least its `size` field, first.
        let size = unsafe { std::ptr::read_unaligned(opts.cast::<usize>()) };
        check_version_size::<tl_align_options>(size, "opts")?;
        let n = size.min(std::mem::size_of::<tl_align_options>());
        // SAFETY: the caller's struct has `size` readable bytes and ours `n` <= size writable
        // ones; every field is a plain integer, so any bytes are a valid value.
        unsafe { std::ptr::copy_nonoverlapping(opts.cast::<u8>(), (&mut o as *mut tl_align_options).cast::<u8>(), n) };
    }
    Ok(MatchOptions { seed: o.seed, max_passes: to_usize(o.max_passes, "opts->max_passes")? })
}

/// Infers the spec from a set's own description: the built-in CNN's when the set's metadata
/// carries a CNN specification (tl_cnn_init sets, and files saved from them), else a plain chain
/// of dense layers (its 2-D "*.weight" tensors in set order; the built-in MLP is one). A set that
/// is neither is TL_STATUS_SHAPE_MISMATCH or TL_STATUS_INVALID_ARGUMENT naming the tensor.
#[no_mangle]
pub unsafe extern "C" fn tl_perm_spec_infer(set: *const tl_params, out: *mut *mut tl_perm_spec) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write, set NULL or a live set (the C contract).
        let (out, set) = unsafe { (try_mut(out, "out")?, handle_ref(set, "set")) };
        *out = std::ptr::null_mut();
        hand_out(PermSpec::infer(set?)?.0, out);
        Ok(())
    })
}

/// Reads a spec from its JSON form (docs/align.md): {"groups": [{"name", "size", "axes":
/// [[tensor, axis], ...], "partition": [...]}]}. Malformed JSON is TL_STATUS_FORMAT; a size of 0
/// or a partition that is no chain of divisors is TL_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub unsafe extern "C" fn tl_perm_spec_from_json(json: *const std::ffi::c_char, out: *mut *mut tl_perm_spec) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write, json NULL or a NUL-terminated string.
        let (out, json) = unsafe { (try_mut(out, "out")?, try_str(json, "json")) };
        *out = std::ptr::null_mut();
        hand_out(PermSpec::from_json(json?)?, out);
        Ok(())
    })
}

/// Frees a spec; NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn tl_perm_spec_destroy(spec: *mut tl_perm_spec) {
    // SAFETY: spec is NULL or a live spec, not used again (the C contract).
    guard_value((), || unsafe { destroy(spec) })
}

/// The number of groups; 0 for NULL.
#[no_mangle]
pub unsafe extern "C" fn tl_perm_spec_group_count(spec: *const tl_perm_spec) -> usize {
    // SAFETY: spec is NULL or a live spec (the C contract).
    guard_value(0, || unsafe { handle_ref(spec, "spec") }.map_or(0, |s| s.groups.len()))
}

/// The total number of units over all groups: the length of a permutation array; 0 for NULL.
#[no_mangle]
pub unsafe extern "C" fn tl_perm_spec_units(spec: *const tl_perm_spec) -> usize {
    // SAFETY: spec is NULL or a live spec (the C contract).
    guard_value(0, || unsafe { handle_ref(spec, "spec") }.map_or(0, |s| s.groups.iter().map(|g| g.size).sum()))
}

/// The number of units of group `group` into *out (TL_STATUS_NOT_FOUND past the last group).
#[no_mangle]
pub unsafe extern "C" fn tl_perm_spec_group_size(spec: *const tl_perm_spec, group: usize, out: *mut u64) -> Status {
    guard(|| {
        // SAFETY: spec is NULL or a live spec, out NULL or valid for a write (the C contract).
        let (spec, out) = unsafe { (handle_ref(spec, "spec")?, try_mut(out, "out")?) };
        let Some(g) = spec.groups.get(group) else {
            fail!(NotFound, "group {group} is out of range: the spec has {} groups", spec.groups.len());
        };
        *out = g.size as u64;
        Ok(())
    })
}

/// Checks the spec against a set: every tensor it names exists, is a weight with the group's
/// size on its axis, and no (tensor, axis) is in two groups. Errors name the group and tensor.
#[no_mangle]
pub unsafe extern "C" fn tl_perm_spec_check(spec: *const tl_perm_spec, set: *const tl_params) -> Status {
    guard(|| {
        // SAFETY: spec and set are NULL or live handles (the C contract).
        let (spec, set) = unsafe { (handle_ref(spec, "spec")?, handle_ref(set, "set")?) };
        spec.check(set)
    })
}

/// Fails unless a permutation array of `n_perms` values fits the spec.
fn check_units(spec: &PermSpec, n_perms: usize) -> Result<()> {
    let units: usize = spec.groups.iter().map(|g| g.size).sum();
    if n_perms != units {
        fail!(ShapeMismatch, "n_perms is {n_perms} but the spec has {units} units (tl_perm_spec_units)");
    }
    Ok(())
}

/// The flat array of `perms` split per group. A value past `size_t` becomes `usize::MAX`, which
/// `apply` refuses as no permutation.
fn split_perms(spec: &PermSpec, perms: &[u64]) -> Result<Vec<Vec<usize>>> {
    check_units(spec, perms.len())?;
    let mut out = Vec::with_capacity(spec.groups.len());
    let mut rest = perms;
    for g in &spec.groups {
        let (head, tail) = rest.split_at(g.size);
        out.push(head.iter().map(|&p| usize::try_from(p).unwrap_or(usize::MAX)).collect());
        rest = tail;
    }
    Ok(out)
}

fn write_perms(perms: &[Vec<usize>], out: &mut [u64]) {
    for (o, &p) in out.iter_mut().zip(perms.iter().flatten()) {
        *o = p as u64;
    }
}

/// Weight matching (Git Re-Basin): the permutations of B's units that best match A's weights,
/// into `perms` (`n_perms` = tl_perm_spec_units). `opts` may be NULL (the defaults). `passes`
/// and `converged` (1 when a full pass changed nothing, else 0) may be NULL. A and B must both fit
/// the spec with equal shapes (errors name the group and tensor).
#[no_mangle]
pub unsafe extern "C" fn tl_align_weights(
    spec: *const tl_perm_spec,
    a: *const tl_params,
    b: *const tl_params,
    opts: *const tl_align_options,
    perms: *mut u64,
    n_perms: usize,
    passes: *mut u64,
    converged: *mut i32,
) -> Status {
    guard(|| {
        // SAFETY: spec, a and b are NULL or live handles; opts NULL or a versioned struct; perms
        // NULL or n_perms writable values; passes and converged NULL or valid for a write.
        let (spec, a, b, options, perms, passes, converged) = unsafe {
            (
                handle_ref(spec, "spec")?,
                handle_ref(a, "a")?,
                handle_ref(b, "b")?,
                read_options(opts)?,
                try_slice_mut(perms, n_perms, "perms")?,
                optional_mut(passes),
                optional_mut(converged),
            )
        };
        check_units(spec, n_perms)?;
        let found = match_weights(spec, a, b, &options)?;
        write_perms(&found.perms, perms);
        if let Some(p) = passes {
            *p = found.passes as u64;
        }
        if let Some(c) = converged {
            *c = i32::from(found.converged);
        }
        Ok(())
    })
}

/// Activation matching: per group, the correlation of A's and B's unit activations on the same
/// inputs, then one assignment. `acts_a[g]` and `acts_b[g]` (`n_groups` = the spec's groups) are
/// group g's activations, observations x units (a conv: one row per input and pixel), host or
/// device memory of the context's device; they are read during the call only. The permutations go
/// to `perms` (`n_perms` = tl_perm_spec_units). Fewer than 2 observations is
/// TL_STATUS_DEGENERATE_INPUT; NaN or Inf is TL_STATUS_NON_FINITE naming the group.
#[no_mangle]
pub unsafe extern "C" fn tl_align_activations(
    ctx: *const tl_context,
    spec: *const tl_perm_spec,
    acts_a: *const tl_matrix,
    acts_b: *const tl_matrix,
    n_groups: usize,
    perms: *mut u64,
    n_perms: usize,
) -> Status {
    guard(|| {
        // SAFETY: ctx and spec are NULL or live handles; acts_a and acts_b NULL or n_groups valid
        // matrix descriptions of readable memory; perms NULL or n_perms writable values.
        let (ctx, spec, a, b, perms) = unsafe {
            (
                handle_ref(ctx, "ctx")?,
                handle_ref(spec, "spec")?,
                views(acts_a, n_groups, "acts_a")?,
                views(acts_b, n_groups, "acts_b")?,
                try_slice_mut(perms, n_perms, "perms")?,
            )
        };
        check_units(spec, n_perms)?;
        let mut matcher = ActivationMatcher::new(spec)?;
        matcher.update(ctx, &a, &b)?;
        write_perms(&matcher.finish()?.perms, perms);
        Ok(())
    })
}

/// B rewritten in the unit order `perms` (`n_perms` = tl_perm_spec_units, as tl_align_weights
/// writes them) into a new set *out: every tensor of the spec gathered along its permuted axes,
/// byte for byte; the others, the metadata and the grouping copied. A permutation that is not one,
/// or that moves units across a group's blocks (its partition), is TL_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub unsafe extern "C" fn tl_align_apply(
    spec: *const tl_perm_spec,
    b: *const tl_params,
    perms: *const u64,
    n_perms: usize,
    out: *mut *mut tl_params,
) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write; spec and b NULL or live handles; perms NULL or
        // n_perms readable values (the C contract).
        let (out, spec, b, perms) = unsafe {
            (try_mut(out, "out")?, handle_ref(spec, "spec"), handle_ref(b, "b"), try_slice(perms, n_perms, "perms"))
        };
        *out = std::ptr::null_mut();
        let spec = spec?;
        let perms = split_perms(spec, perms?)?;
        hand_out(apply(spec, b?, &perms)?, out);
        Ok(())
    })
}

/// The layer-wise curve (Adilova et al., ICLR 2024): the metrics at each of the `n` lambdas of A
/// with modules `first_module .. first_module + module_count` (A's modules, in order) at
/// (1 - lambda) A + lambda B and every other weight held at A bit for bit. One module:
/// (i, 1); the first k: (0, k); the last k: (count - k, k). Each point is written into `live`
/// (see "Live sets"), which must hold a's weights and be neither a nor b. Host sets only. The
/// barrier: tl_barrier on the curve.
#[no_mangle]
pub unsafe extern "C" fn tl_layerwise_curve(
    ctx: *const tl_context,
    evaluator: *mut tl_evaluator,
    a: *const tl_params,
    b: *const tl_params,
    live: *mut tl_params,
    lambdas: *const f64,
    n: usize,
    first_module: usize,
    module_count: usize,
    out: *mut tl_metrics,
) -> Status {
    guard(|| {
        super::boundary::ensure_distinct("live", live, &[("a", a), ("b", b)])?;
        // SAFETY: ctx is NULL or a live context; evaluator NULL or a live evaluator, a and b NULL
        // or live sets, and live NULL or a live set distinct from them (checked above); evaluator
        // and live are used by this call alone; lambdas and out are NULL or n values.
        let (ctx, ev, a, b, live, lambdas, out) = unsafe {
            (
                handle_ref(ctx, "ctx")?,
                handle_mut(evaluator, "evaluator")?,
                handle_ref(a, "a")?,
                handle_ref(b, "b")?,
                handle_mut(live, "live")?,
                try_slice(lambdas, n, "lambdas")?,
                try_slice_mut(out, n, "out")?,
            )
        };
        let moving = Moving::Range { first: first_module, count: module_count };
        let curve = layerwise_curve(ctx, ev.as_dyn(), a, b, live, lambdas, moving)?;
        for (o, c) in out.iter_mut().zip(curve) {
            *o = c.into();
        }
        Ok(())
    })
}
