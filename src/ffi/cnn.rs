//! `tl_cnn`: the built-in CNN (docs/cnn.md) through the C ABI: made from a JSON specification,
//! its weights initialised, evaluated as a `tl_evaluator` for every analysis, trained, and its
//! module activations read for CKA.

use super::analysis::{tl_evaluator, HostEvaluator};
use super::boundary::{
    destroy, element_count, hand_out, handle_mut, handle_ref, to_usize, try_mut, try_slice, try_slice_mut, try_str,
    Handle,
};
use super::train::{read_train_options, tl_train_options};
use super::{guard, guard_value, tl_params};
use crate::error::{fail, Result, Status};
use crate::eval::CnnEvaluator;
use crate::model::{Cnn, Dataset};
use std::ffi::{c_char, CString};

/// A CNN's architecture, made from a JSON specification (docs/cnn.md); it holds no weights.
///
/// Thread safety: a CNN is never written after tl_cnn_create; several calls may use it at once.
pub struct tl_cnn {
    _opaque: [u8; 0],
}

/// What a `tl_cnn` handle points at: the CNN and its module names as C strings, which live as
/// long as the handle.
pub(crate) struct HostCnn {
    cnn: Cnn,
    module_names: Vec<CString>,
}

// SAFETY: tl_cnn is never instantiated; its pointers come from hand_out of a HostCnn.
unsafe impl Handle for tl_cnn {
    type Target = HostCnn;
}

/// The CNN's images as a data set: `x` holds rows x C x H x W floats (NCHW), `labels` one class
/// per row (None: every label 0, for a call that reads no labels). Checked against the CNN's
/// input shape and classes, finite, and not empty.
///
/// # Safety
/// `x` is NULL or points to rows x C x H x W readable floats; `labels`, when given, is NULL or
/// points to `rows` readable labels.
unsafe fn images_of(cnn: &Cnn, x: *const f32, labels: Option<*const u32>, rows: u64) -> Result<Dataset> {
    let rows = to_usize(rows, "rows")?;
    let s = cnn.input_shape();
    let n = element_count(&[("rows", rows), ("C", s.c), ("H", s.h), ("W", s.w)])?;
    // SAFETY: x is NULL or n readable floats (the caller's contract).
    let x = unsafe { try_slice(x, n, "x") }?.to_vec();
    let y = match labels {
        // SAFETY: labels is NULL or rows readable labels (the caller's contract).
        Some(labels) => unsafe { try_slice(labels, rows, "labels") }?.to_vec(),
        None => vec![0; rows],
    };
    let data = Dataset::new(x, y, s.numel(), cnn.classes())?;
    cnn.check_data(&data)?;
    Ok(data)
}

/// Makes a CNN from its JSON specification (docs/cnn.md). A specification that does not parse
/// or describes no valid network is TL_STATUS_INVALID_ARGUMENT (or the status the parser gives)
/// with a message naming the layer and the field. On success *out owns a CNN to free with
/// tl_cnn_destroy.
#[no_mangle]
pub unsafe extern "C" fn tl_cnn_create(spec_json: *const c_char, out: *mut *mut tl_cnn) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write (the C contract).
        let out = unsafe { try_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: spec_json is NULL or a NUL-terminated string (the C contract).
        let cnn = Cnn::from_json(unsafe { try_str(spec_json, "spec_json") }?)?;
        let module_names =
            cnn.module_names().into_iter().map(|m| CString::new(m.replace('\0', "?")).unwrap_or_default()).collect();
        hand_out(HostCnn { cnn, module_names }, out);
        Ok(())
    })
}

/// Frees a CNN; NULL is a no-op. Evaluators and sets made from it stay valid.
#[no_mangle]
pub unsafe extern "C" fn tl_cnn_destroy(cnn: *mut tl_cnn) {
    // SAFETY: cnn is NULL or one made by this library, destroyed once (the C contract).
    guard_value((), || unsafe { destroy(cnn) })
}

/// The number of classes (the logits of the last layer); 0 when cnn is NULL.
#[no_mangle]
pub unsafe extern "C" fn tl_cnn_classes(cnn: *const tl_cnn) -> usize {
    // SAFETY: cnn is NULL or a live CNN (the C contract).
    guard_value(0, || unsafe { handle_ref(cnn, "cnn") }.map_or(0, |h| h.cnn.classes()))
}

/// The input image shape: channels, height and width (a data row is c x h x w floats, NCHW).
#[no_mangle]
pub unsafe extern "C" fn tl_cnn_input_shape(cnn: *const tl_cnn, c: *mut u64, h: *mut u64, w: *mut u64) -> Status {
    guard(|| {
        // SAFETY: cnn is NULL or a live CNN; c, h and w NULL or valid for a write (the C contract).
        let (cnn, c, h, w) = unsafe { (handle_ref(cnn, "cnn")?, try_mut(c, "c")?, try_mut(h, "h")?, try_mut(w, "w")?) };
        let s = cnn.cnn.input_shape();
        (*c, *h, *w) = (s.c as u64, s.h as u64, s.w as u64);
        Ok(())
    })
}

/// The number of modules (conv1, each block, fc, ... as docs/cnn.md groups them); 0 when cnn is
/// NULL. A set made by tl_cnn_init has these modules, in this order.
#[no_mangle]
pub unsafe extern "C" fn tl_cnn_module_count(cnn: *const tl_cnn) -> usize {
    // SAFETY: cnn is NULL or a live CNN (the C contract).
    guard_value(0, || unsafe { handle_ref(cnn, "cnn") }.map_or(0, |h| h.module_names.len()))
}

/// The name of module `module`, NUL-terminated; the string lives until tl_cnn_destroy. NULL when
/// cnn is NULL or module is out of range.
#[no_mangle]
pub unsafe extern "C" fn tl_cnn_module_name(cnn: *const tl_cnn, module: usize) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: cnn is NULL or a live CNN (the C contract).
        unsafe { handle_ref(cnn, "cnn") }
            .ok()
            .and_then(|h| h.module_names.get(module))
            .map_or(std::ptr::null(), |name| name.as_ptr())
    })
}

/// The features per image of module `module`'s output (its last layer's C x H x W, NCHW): the
/// columns of the activations tl_cnn_activations writes for that module.
#[no_mangle]
pub unsafe extern "C" fn tl_cnn_module_width(cnn: *const tl_cnn, module: usize, out: *mut u64) -> Status {
    guard(|| {
        // SAFETY: cnn is NULL or a live CNN, out NULL or valid for a write (the C contract).
        let (cnn, out) = unsafe { (handle_ref(cnn, "cnn")?, try_mut(out, "out")?) };
        *out = module_width(&cnn.cnn, module)? as u64;
        Ok(())
    })
}

/// The features per image of a module's output: the output shape of its last layer.
fn module_width(cnn: &Cnn, module: usize) -> Result<usize> {
    let last_layer = cnn.layer_modules().iter().rposition(|m| *m == Some(module));
    match last_layer {
        Some(l) => Ok(cnn.output_shapes()[l].numel()),
        None => {
            fail!(NotFound, "module index {module} is out of range: the CNN has {} modules", cnn.module_names().len())
        }
    }
}

/// Initial weights: He-normal conv and dense weights from `seed`, zero biases, GroupNorm gamma 1
/// and beta 0; f32 tensors named as PyTorch names them (conv1.weight, layer1.conv1.weight, ...),
/// grouped into the CNN's modules, with the specification in the set's metadata (saved with it by
/// tl_params_save). On success *out owns a set to free with tl_params_destroy.
#[no_mangle]
pub unsafe extern "C" fn tl_cnn_init(cnn: *const tl_cnn, seed: u64, out: *mut *mut tl_params) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write (the C contract).
        let out = unsafe { try_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: cnn is NULL or a live CNN (the C contract).
        let cnn = unsafe { handle_ref(cnn, "cnn") }?;
        hand_out(cnn.cnn.init(seed)?, out);
        Ok(())
    })
}

/// Makes an evaluator of the CNN on `rows` images: `x` holds rows x C x H x W floats (NCHW, the
/// shape of tl_cnn_input_shape), `labels` one class per row, below tl_cnn_classes. The data and
/// the architecture are copied (the CNN may be destroyed first). The sets it evaluates hold the
/// tensors of tl_cnn_init, of any float dtype; every analysis accepts it, and module criticality
/// evaluates its noisy copies in one batch per point.
#[no_mangle]
pub unsafe extern "C" fn tl_evaluator_cnn(
    cnn: *const tl_cnn,
    x: *const f32,
    labels: *const u32,
    rows: u64,
    out: *mut *mut tl_evaluator,
) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write (the C contract).
        let out = unsafe { try_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: cnn is NULL or a live CNN (the C contract).
        let cnn = &unsafe { handle_ref(cnn, "cnn") }?.cnn;
        // SAFETY: x is NULL or rows x C x H x W floats, labels NULL or rows labels (the C contract).
        let data = unsafe { images_of(cnn, x, Some(labels), rows) }?;
        hand_out(HostEvaluator::Cnn(Box::new(CnnEvaluator::new(cnn.clone(), data))), out);
        Ok(())
    })
}

/// Trains `params` in place by minibatch SGD with momentum and weight decay on `rows` images
/// (`x` rows x C x H x W floats, NCHW; `labels` one class per row). `params` holds the CNN's
/// tensors (a set from tl_cnn_init, or one loaded with the same names and shapes; f32 storage).
/// `opts` NULL means tl_train_options_default(). The mean training loss of each epoch goes to
/// epoch_losses, which holds opts->epochs values, or is NULL with n_epoch_losses = 0. The result
/// is the same for a seed on any number of threads. On failure the weights may be partly
/// trained.
#[no_mangle]
pub unsafe extern "C" fn tl_cnn_train(
    cnn: *const tl_cnn,
    params: *mut tl_params,
    x: *const f32,
    labels: *const u32,
    rows: u64,
    opts: *const tl_train_options,
    epoch_losses: *mut f64,
    n_epoch_losses: usize,
) -> Status {
    guard(|| {
        // SAFETY: cnn is NULL or a live CNN; params NULL or a live set used by this call alone;
        // opts NULL or a struct of opts->size bytes (the C contract).
        let (cnn, p, opts) =
            unsafe { (&handle_ref(cnn, "cnn")?.cnn, handle_mut(params, "params")?, read_train_options(opts)?) };
        // SAFETY: epoch_losses is NULL or n_epoch_losses writable values (the C contract).
        let losses = unsafe { try_slice_mut(epoch_losses, n_epoch_losses, "epoch_losses") }?;
        super::train::check_losses_len(losses.len(), &opts)?;
        // SAFETY: x is NULL or rows x C x H x W floats, labels NULL or rows labels (the C contract).
        let data = unsafe { images_of(cnn, x, Some(labels), rows) }?;
        let got = cnn.train(p, &data, &opts)?;
        super::train::write_losses(&got, losses);
        Ok(())
    })
}

/// The output of module `module` (as tl_cnn_module_width describes it) for `rows` images `x`
/// (rows x C x H x W floats, NCHW), into out: rows x width floats, row major, each image's
/// features in NCHW order; out_len must be rows x width. Only the layers up to the module's last
/// one run. The activations of several models feed the CKA functions.
#[no_mangle]
pub unsafe extern "C" fn tl_cnn_activations(
    cnn: *const tl_cnn,
    params: *const tl_params,
    x: *const f32,
    rows: u64,
    module: usize,
    out: *mut f32,
    out_len: u64,
) -> Status {
    guard(|| {
        // SAFETY: cnn is NULL or a live CNN, params NULL or a live set (the C contract).
        let (cnn, p) = unsafe { (&handle_ref(cnn, "cnn")?.cnn, handle_ref(params, "params")?) };
        let width = module_width(cnn, module)?;
        let want = element_count(&[("rows", to_usize(rows, "rows")?), ("the module's width", width)])?;
        let out_len = to_usize(out_len, "out_len")?;
        if out_len != want {
            fail!(
                ShapeMismatch,
                "out_len is {out_len}, module {module} needs rows ({rows}) x width ({width}) = {want}"
            );
        }
        // SAFETY: out is NULL or out_len writable floats (the C contract).
        let out = unsafe { try_slice_mut(out, out_len, "out") }?;
        // SAFETY: x is NULL or rows x C x H x W floats (the C contract).
        let data = unsafe { images_of(cnn, x, None, rows) }?;
        out.copy_from_slice(&cnn.module_activations(p, &data, module)?);
        Ok(())
    })
}
