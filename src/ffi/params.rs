//! `tl_params`: parameter sets, module grouping and weight-space arithmetic.

use super::boundary::{
    destroy, ensure_distinct, hand_out, handle_mut, handle_ref, optional_mut, try_mut, try_slice, try_slice_mut,
    try_str, Handle,
};
use super::{guard, guard_value, tl_context, RawDType};
use crate::error::{Error, Result, Status};
use crate::geometry::{self, ModuleGeometry};
use crate::params::{Checkpoint, Grouping, ParamSet, TensorSpec, Unmatched};
use crate::tensor::DType;
use std::ffi::{c_char, c_void};

/// A parameter set: named tensors grouped into modules, loaded from a safetensors file, wrapped
/// around the caller's memory, or cloned. Tensors of dtype F32, F64, F16 and BF16 are weights;
/// other dtypes are carried through untouched and left out of every weight-space figure.
///
/// Thread safety: a set may be read by several threads at once (distances, as the a or b of an
/// interpolation); a call that writes into it (as out, or regrouping it) needs it exclusively.
pub struct tl_params {
    _opaque: [u8; 0],
}

// SAFETY: tl_params is never instantiated; its pointers come from hand_out or handle_of of a
// ParamSet.
unsafe impl Handle for tl_params {
    type Target = ParamSet;
}

/// How tensor names are grouped into modules (see tl_params_set_grouping).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleGrouping {
    /// The first dot-separated component of the name (the default): "layer1.0.conv1.weight"
    /// is in module "layer1".
    First = 0,
    /// The first `depth` components.
    Depth = 1,
    /// Explicit prefixes, matched on whole components; the longest match wins.
    Prefixes = 2,
    /// Every tensor is its own module.
    Tensor = 3,
}

/// What prefix grouping does with a weight no prefix matches.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmatchedPolicy {
    /// The tensor forms a module of its own, named by its full name.
    OwnGroup = 0,
    /// TL_STATUS_NOT_FOUND naming the tensor.
    Error = 1,
}

/// A `tl_module_grouping` value as received from C.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct RawGrouping(pub u32);

/// A `tl_unmatched` value as received from C.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct RawUnmatched(pub u32);

/// One tensor in the caller's memory, for tl_params_wrap.
#[repr(C)]
pub struct tl_tensor {
    /// NUL-terminated UTF-8 name, e.g. "layer1.0.conv1.weight"; copied by tl_params_wrap.
    pub name: *const c_char,
    /// The elements, C order, aligned for the dtype. Used in place, not copied.
    pub data: *mut c_void,
    pub dtype: RawDType,
    /// `ndim` dimensions (NULL allowed when ndim is 0: a scalar); copied by tl_params_wrap.
    pub shape: *const u64,
    pub ndim: usize,
    /// -1: host memory; k >= 0: memory of CUDA device k, used in place by distance, norms,
    /// interpolation and rewind with a CUDA context for that device (synchronise the producer
    /// first); the other operations need host memory.
    pub device: i32,
}

/// The figures of one module comparing sets a and b.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct tl_module_geometry {
    /// Elements of the module's weights.
    pub numel: u64,
    /// ||a - b||_2.
    pub distance: f64,
    /// ||a||_2.
    pub norm_a: f64,
    /// ||b||_2.
    pub norm_b: f64,
    /// ||a - b|| / ||a||.
    pub relative: f64,
    /// <a, b> / (||a|| ||b||).
    pub cosine: f64,
}

impl From<ModuleGeometry> for tl_module_geometry {
    fn from(g: ModuleGeometry) -> Self {
        tl_module_geometry {
            numel: g.numel,
            distance: g.distance,
            norm_a: g.norm_a,
            norm_b: g.norm_b,
            relative: g.relative,
            cosine: g.cosine,
        }
    }
}

fn dtype_to_raw(d: DType) -> RawDType {
    RawDType(d as u32)
}

/// Loads a safetensors file into memory the set owns: the set is a snapshot, and truncating or
/// rewriting the file afterwards changes nothing in it (the file itself is never modified).
/// The header is validated against the file's size before the file's size is allocated.
/// A file that cannot be opened or read, or a path that is not a regular file (a FIFO, device
/// or directory), is TL_STATUS_IO; a malformed, truncated or inconsistent file is
/// TL_STATUS_FORMAT with a message naming the file and the tensor at fault. Modules are grouped
/// by the first name component until tl_params_set_grouping says otherwise.
/// On success *out owns a set to free with tl_params_destroy.
#[no_mangle]
pub unsafe extern "C" fn tl_params_load(
    ctx: *mut tl_context,
    safetensors_path: *const c_char,
    out: *mut *mut tl_params,
) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write (the C contract).
        let out = unsafe { try_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: ctx is NULL or a live context; the path NULL or a NUL-terminated string.
        let (_ctx, path) = unsafe { (handle_ref(ctx, "ctx")?, try_str(safetensors_path, "safetensors_path")?) };
        hand_out(ParamSet::load(path)?, out);
        Ok(())
    })
}

/// Like tl_params_load, but maps the file (private, copy-on-write) instead of copying it: pages
/// are read when first used and writes into the set never reach the file. The file must not be
/// truncated or modified while the set lives: a truncated file stops the process (SIGBUS) when
/// a lost page is touched, and a file rewritten in place changes the set's weights under it.
/// For files larger than the memory a copy may take; tl_params_load is the safe default.
#[no_mangle]
pub unsafe extern "C" fn tl_params_load_mapped(
    ctx: *mut tl_context,
    safetensors_path: *const c_char,
    out: *mut *mut tl_params,
) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write (the C contract).
        let out = unsafe { try_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: ctx is NULL or a live context; the path NULL or a NUL-terminated string.
        let (_ctx, path) = unsafe { (handle_ref(ctx, "ctx")?, try_str(safetensors_path, "safetensors_path")?) };
        // SAFETY: that the file stays unchanged while the set lives is the caller's contract,
        // documented above.
        hand_out(unsafe { ParamSet::load_mapped(path) }?, out);
        Ok(())
    })
}

/// Loads a checkpoint as users keep it into memory the set owns: a safetensors file, a folder
/// holding model.safetensors, or a sharded checkpoint (its folder, or its
/// model.safetensors.index.json, whose weight_map names the shard of every tensor). Every file's
/// header is validated against its size, and a sharded checkpoint's shards against its index (a
/// tensor in two shards, or in another shard than the index says, is TL_STATUS_FORMAT naming
/// both). Tensors keep each file's order, shard after shard in the order of the shards' file
/// names; the first shard's metadata is kept.
/// The files are read through read-only mappings during the call: they must not be truncated
/// while it runs. Errors as tl_params_load. On success *out owns a set to free with
/// tl_params_destroy.
#[no_mangle]
pub unsafe extern "C" fn tl_params_load_checkpoint(
    ctx: *mut tl_context,
    path: *const c_char,
    out: *mut *mut tl_params,
) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write (the C contract).
        let out = unsafe { try_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: ctx is NULL or a live context; the path NULL or a NUL-terminated string.
        let (_ctx, path) = unsafe { (handle_ref(ctx, "ctx")?, try_str(path, "path")?) };
        // SAFETY: that the files stay whole during the call is the caller's contract, above; the
        // mappings end with the call.
        let checkpoint = unsafe { Checkpoint::open(path) }?;
        hand_out(checkpoint.load()?, out);
        Ok(())
    })
}

/// Writes the set as a safetensors file, atomically (a temporary file in the same folder,
/// flushed, then renamed over the path). Tensors keep their order; a loaded file's metadata is
/// kept.
#[no_mangle]
pub unsafe extern "C" fn tl_params_save(params: *const tl_params, safetensors_path: *const c_char) -> Status {
    guard(|| {
        // SAFETY: params is NULL or a live set; the path NULL or a NUL-terminated string.
        let (params, path) = unsafe { (handle_ref(params, "params")?, try_str(safetensors_path, "safetensors_path")?) };
        params.save(path)
    })
}

/// Frees a set; NULL is a no-op. A wrapped set's memory stays the caller's.
#[no_mangle]
pub unsafe extern "C" fn tl_params_destroy(params: *mut tl_params) {
    // SAFETY: params is NULL or a set made by this library, destroyed once (the C contract).
    guard_value((), || unsafe { destroy(params) })
}

/// Makes a set over the caller's memory, zero-copy: `count` tensors described by `tensors`.
/// Names and shapes are copied; the data is used in place and must stay valid, and not be
/// used by anything else during a call that writes into the set, until tl_params_destroy.
/// All wrapped tensors are weights (tl_dtype). Tensors must not overlap in memory (wrap tied
/// weights once). On success *out owns a set to free with tl_params_destroy.
#[no_mangle]
pub unsafe extern "C" fn tl_params_wrap(
    ctx: *mut tl_context,
    tensors: *const tl_tensor,
    count: usize,
    out: *mut *mut tl_params,
) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write (the C contract).
        let out = unsafe { try_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: ctx is NULL or a live context; tensors NULL or `count` descriptions.
        let (_ctx, views) = unsafe { (handle_ref(ctx, "ctx")?, try_slice(tensors, count, "tensors")?) };
        let mut specs = Vec::with_capacity(views.len());
        for (i, v) in views.iter().enumerate() {
            // SAFETY: each description's name is NULL or a NUL-terminated string, and its shape
            // NULL or `ndim` values (the C contract).
            let (name, dims) = unsafe {
                (
                    try_str(v.name, &format!("tensors[{i}].name"))?.to_string(),
                    try_slice(v.shape, v.ndim, &format!("tensors[{i}].shape"))?,
                )
            };
            let dtype = DType::from_raw(v.dtype.0, &format!("tensors[{i}].dtype"))?;
            let shape = dims
                .iter()
                .map(|&d| {
                    usize::try_from(d).map_err(|_| {
                        Error::InvalidArgument(format!(
                            "tensors[{i}] ({name:?}): dimension {d} exceeds the address space"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            specs.push(TensorSpec { name, dtype, shape, ptr: v.data as *mut u8, device: v.device });
        }
        // SAFETY: the data stays valid and unused by others while the set lives (the C contract
        // in the doc comment), which is ParamSet::wrap's contract.
        let set = unsafe { ParamSet::wrap(specs) }?;
        hand_out(set, out);
        Ok(())
    })
}

/// Makes a deep copy of `params` in memory the new set owns (same tensors, grouping and
/// metadata): a place to write interpolations into. On success *out owns a set to free with
/// tl_params_destroy.
#[no_mangle]
pub unsafe extern "C" fn tl_params_clone(params: *const tl_params, out: *mut *mut tl_params) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write, params NULL or a live set (the C contract).
        let (out, params) = unsafe { (try_mut(out, "out")?, handle_ref(params, "params")) };
        *out = std::ptr::null_mut();
        hand_out(params?.try_clone()?, out);
        Ok(())
    })
}

/// Regroups the set's weights into modules. `depth` (>= 1) is read for
/// TL_MODULE_GROUPING_DEPTH only; `prefixes` (`n_prefixes` non-empty strings) and `unmatched`
/// for TL_MODULE_GROUPING_PREFIXES only. On failure the grouping is unchanged.
#[no_mangle]
pub unsafe extern "C" fn tl_params_set_grouping(
    params: *mut tl_params,
    grouping: RawGrouping,
    depth: u32,
    prefixes: *const *const c_char,
    n_prefixes: usize,
    unmatched: RawUnmatched,
) -> Status {
    guard(|| {
        // SAFETY: params is NULL or a live set used by this call alone (the C contract).
        let params = unsafe { handle_mut(params, "params") }?;
        let g = match grouping.0 {
            0 => Grouping::First,
            1 => Grouping::Depth(depth as usize),
            2 => {
                let unmatched = match unmatched.0 {
                    0 => Unmatched::OwnGroup,
                    1 => Unmatched::Error,
                    v => {
                        return Err(Error::InvalidArgument(format!(
                            "unmatched: unknown value {v} (expected 0 = OWN_GROUP, 1 = ERROR)"
                        )))
                    }
                };
                // SAFETY: prefixes is NULL or `n_prefixes` pointers, each NULL or a NUL-terminated
                // string (the C contract).
                let prefixes = unsafe {
                    try_slice(prefixes, n_prefixes, "prefixes")?
                        .iter()
                        .enumerate()
                        .map(|(i, &p)| try_str(p, &format!("prefixes[{i}]")).map(str::to_string))
                        .collect::<Result<Vec<_>>>()?
                };
                Grouping::Prefixes { prefixes, unmatched }
            }
            3 => Grouping::Tensor,
            v => {
                return Err(Error::InvalidArgument(format!(
                    "grouping: unknown value {v} (expected 0 = FIRST, 1 = DEPTH, 2 = PREFIXES, 3 = TENSOR)"
                )))
            }
        };
        params.set_grouping(g)
    })
}

/// The number of modules of the set (0 when params is NULL).
#[no_mangle]
pub unsafe extern "C" fn tl_params_module_count(params: *const tl_params) -> usize {
    // SAFETY: params is NULL or a live set (the C contract).
    guard_value(0, || unsafe { handle_ref(params, "params") }.map_or(0, |p| p.modules().len()))
}

/// Writes the module's name (NUL-terminated) into buf; returns the length it needs.
/// The length counts the terminating NUL: a buffer of that many bytes holds the whole name. A
/// shorter buffer (buf_len > 0) receives the name cut short and NUL-terminated; buf may be NULL
/// when buf_len is 0. Returns 0 when params is NULL or module is out of range.
#[no_mangle]
pub unsafe extern "C" fn tl_params_module_name(
    params: *const tl_params,
    module: usize,
    buf: *mut c_char,
    buf_len: usize,
) -> usize {
    guard_value(0, || {
        // SAFETY: params is NULL or a live set (the C contract).
        let Ok(p) = (unsafe { handle_ref(params, "params") }) else {
            return 0;
        };
        let Some(m) = p.modules().get(module) else {
            return 0;
        };
        let name = m.name.as_bytes();
        // SAFETY: buf is NULL or holds buf_len writable bytes (the C contract).
        if let Ok(buf) = unsafe { try_slice_mut(buf.cast::<u8>(), buf_len, "buf") } {
            if !buf.is_empty() {
                let n = name.len().min(buf.len() - 1);
                buf[..n].copy_from_slice(&name[..n]);
                buf[n] = 0;
            }
        }
        name.len() + 1
    })
}

/// Finds the module called `name` and writes its index to *out; TL_STATUS_NOT_FOUND if there
/// is none.
#[no_mangle]
pub unsafe extern "C" fn tl_params_find_module(
    params: *const tl_params,
    name: *const c_char,
    out: *mut usize,
) -> Status {
    guard(|| {
        // SAFETY: params is NULL or a live set, name NULL or a NUL-terminated string, out NULL or
        // valid for a write (the C contract).
        let (params, name, out) =
            unsafe { (handle_ref(params, "params")?, try_str(name, "name")?, try_mut(out, "out")?) };
        *out = geometry::module_named(params, name)?;
        Ok(())
    })
}

/// The number of tensors of the set, weights and carried-through ones (0 when params is NULL).
#[no_mangle]
pub unsafe extern "C" fn tl_params_tensor_count(params: *const tl_params) -> usize {
    // SAFETY: params is NULL or a live set (the C contract).
    guard_value(0, || unsafe { handle_ref(params, "params") }.map_or(0, |p| p.tensors().len()))
}

/// Gives the weight tensor called `name`: its dtype, the address of its elements (host memory,
/// valid until the set is destroyed; read-only unless the set wraps the caller's memory) and
/// its element count. TL_STATUS_NOT_FOUND if there is none; TL_STATUS_UNSUPPORTED_DTYPE for a
/// carried-through (non-weight) tensor.
#[no_mangle]
pub unsafe extern "C" fn tl_params_tensor_data(
    params: *const tl_params,
    name: *const c_char,
    dtype: *mut RawDType,
    data: *mut *const c_void,
    numel: *mut u64,
) -> Status {
    guard(|| {
        // SAFETY: params is NULL or a live set, name NULL or a NUL-terminated string, and each
        // output NULL or valid for a write (the C contract).
        let (params, name, dtype, data, numel) = unsafe {
            (
                handle_ref(params, "params")?,
                try_str(name, "name")?,
                try_mut(dtype, "dtype")?,
                try_mut(data, "data")?,
                try_mut(numel, "numel")?,
            )
        };
        let t = params.tensor(name).ok_or_else(|| Error::NotFound(format!("no tensor {name:?} in the set")))?;
        let host = t.host()?;
        *dtype = dtype_to_raw(host.dtype());
        *data = t.bytes()?.as_ptr() as *const c_void;
        *numel = t.numel() as u64;
        Ok(())
    })
}

/// The caller's array of tl_params_module_count(a) entries (NULL allowed only when 0).
///
/// # Safety
/// `out` is NULL or points to that many writable values that nothing else uses during the call.
unsafe fn per_module_out<'a>(out: *mut f64, a: &ParamSet) -> Result<&'a mut [f64]> {
    // SAFETY: the caller's contract.
    unsafe { try_slice_mut(out, a.modules().len(), "out_per_module") }
}

/// Writes per-module values and, where the caller asked for it, their total.
fn write_module_values(values: &geometry::Distances, out: &mut [f64], out_total: Option<&mut f64>) {
    out.copy_from_slice(&values.modules);
    if let Some(t) = out_total {
        *t = values.total;
    }
}

/// out_per_module has tl_params_module_count entries; out_total may be NULL.
/// Distances ||a_i - b_i||_2 per module of a (its grouping), accumulated in f64, and the total
/// sqrt(sum of squares). a and b must hold the same weights (names and shapes; dtypes may
/// differ): otherwise TL_STATUS_SHAPE_MISMATCH naming the first differing tensor.
#[no_mangle]
pub unsafe extern "C" fn tl_params_distance(
    ctx: *mut tl_context,
    a: *const tl_params,
    b: *const tl_params,
    out_per_module: *mut f64,
    out_total: *mut f64,
) -> Status {
    guard(|| {
        // SAFETY: ctx is NULL or a live context, a and b NULL or live sets (the C contract).
        let (ctx, a, b) = unsafe { (handle_ref(ctx, "ctx")?, handle_ref(a, "a")?, handle_ref(b, "b")?) };
        // SAFETY: the outputs are NULL or valid for their documented lengths (the C contract).
        let (out, out_total) = unsafe { (per_module_out(out_per_module, a)?, optional_mut(out_total)) };
        let d = geometry::distance(ctx, a, b)?;
        write_module_values(&d, out, out_total);
        Ok(())
    })
}

/// Norms ||p_i||_2 per module (tl_params_module_count entries in out_per_module) and of all
/// weights (out_total, may be NULL), accumulated in f64.
#[no_mangle]
pub unsafe extern "C" fn tl_params_norms(
    ctx: *mut tl_context,
    params: *const tl_params,
    out_per_module: *mut f64,
    out_total: *mut f64,
) -> Status {
    guard(|| {
        // SAFETY: ctx is NULL or a live context, params NULL or a live set (the C contract).
        let (ctx, p) = unsafe { (handle_ref(ctx, "ctx")?, handle_ref(params, "params")?) };
        // SAFETY: the outputs are NULL or valid for their documented lengths (the C contract).
        let (out, out_total) = unsafe { (per_module_out(out_per_module, p)?, optional_mut(out_total)) };
        let d = geometry::norms(ctx, p)?;
        write_module_values(&d, out, out_total);
        Ok(())
    })
}

/// Distance, norms, relative distance and cosine per module of a (tl_params_module_count(a)
/// entries in out_per_module) and over all weights (out_total, may be NULL). A module that is
/// all zeros in a or b is TL_STATUS_DEGENERATE_INPUT naming it.
#[no_mangle]
pub unsafe extern "C" fn tl_params_compare(
    ctx: *mut tl_context,
    a: *const tl_params,
    b: *const tl_params,
    out_per_module: *mut tl_module_geometry,
    out_total: *mut tl_module_geometry,
) -> Status {
    guard(|| {
        // SAFETY: ctx is NULL or a live context, a and b NULL or live sets (the C contract).
        let (ctx, a, b) = unsafe { (handle_ref(ctx, "ctx")?, handle_ref(a, "a")?, handle_ref(b, "b")?) };
        // SAFETY: the outputs are NULL or valid for their documented lengths (the C contract).
        let (out, out_total) =
            unsafe { (try_slice_mut(out_per_module, a.modules().len(), "out_per_module")?, optional_mut(out_total)) };
        let (modules, total) = geometry::compare(ctx, a, b)?;
        for (o, g) in out.iter_mut().zip(modules) {
            *o = g.into();
        }
        if let Some(t) = out_total {
            *t = total.into();
        }
        Ok(())
    })
}

/// out = (1 - lambda) a + lambda b, for any real lambda; out must match a and b.
/// lambda must be finite; outside [0, 1] it extrapolates. Computed in f32 (f64 for f64
/// tensors) and rounded once; lambda 0 and 1 give a and b bit for bit. out must hold the
/// weights of a (names, dtypes, shapes) and no others, be a different set from a and b and
/// share no memory with them; a's non-weight tensors are copied into out where it holds them
/// (a wrapped set need not). A result holding NaN or Inf (a non-finite input, or an overflow at
/// a large lambda) is TL_STATUS_NON_FINITE naming the first such tensor.
#[no_mangle]
pub unsafe extern "C" fn tl_params_interpolate(
    ctx: *mut tl_context,
    a: *const tl_params,
    b: *const tl_params,
    lambda: f64,
    out: *mut tl_params,
) -> Status {
    guard(|| {
        ensure_distinct("out", out, &[("a", a), ("b", b)])?;
        // SAFETY: ctx is NULL or a live context; a, b and out NULL or live sets, out distinct from
        // a and b (checked above) and used by this call alone (the C contract).
        let (ctx, a, b, out) =
            unsafe { (handle_ref(ctx, "ctx")?, handle_ref(a, "a")?, handle_ref(b, "b")?, handle_mut(out, "out")?) };
        geometry::interpolate(ctx, a, b, lambda, out)
    })
}

/// Moves module `module` (an index into a's modules) to (1 - lambda) a + lambda b and keeps
/// every other weight at b; non-weight tensors are copied from a. Requirements as for
/// tl_params_interpolate; a module index out of range is TL_STATUS_NOT_FOUND.
#[no_mangle]
pub unsafe extern "C" fn tl_params_interpolate_module(
    ctx: *mut tl_context,
    a: *const tl_params,
    b: *const tl_params,
    lambda: f64,
    module: usize,
    out: *mut tl_params,
) -> Status {
    guard(|| {
        ensure_distinct("out", out, &[("a", a), ("b", b)])?;
        // SAFETY: as in tl_params_interpolate.
        let (ctx, a, b, out) =
            unsafe { (handle_ref(ctx, "ctx")?, handle_ref(a, "a")?, handle_ref(b, "b")?, handle_mut(out, "out")?) };
        geometry::interpolate_module(ctx, a, b, lambda, module, out)
    })
}

/// Rewinds module `module` of `final_params` toward `initial`: that module becomes
/// (1 - alpha) initial + alpha final, every other weight stays at final. alpha = 1 gives the
/// final weights and alpha = 0 the module at its initial value, bit for bit. Non-weight tensors
/// are copied from initial. Requirements as for tl_params_interpolate_module.
#[no_mangle]
pub unsafe extern "C" fn tl_params_rewind(
    ctx: *mut tl_context,
    initial: *const tl_params,
    final_params: *const tl_params,
    module: usize,
    alpha: f64,
    out: *mut tl_params,
) -> Status {
    guard(|| {
        ensure_distinct("out", out, &[("initial", initial), ("final_params", final_params)])?;
        // SAFETY: as in tl_params_interpolate.
        let (ctx, initial, final_params, out) = unsafe {
            (
                handle_ref(ctx, "ctx")?,
                handle_ref(initial, "initial")?,
                handle_ref(final_params, "final_params")?,
                handle_mut(out, "out")?,
            )
        };
        geometry::rewind(ctx, initial, final_params, module, alpha, out)
    })
}
