//! Evaluators, landscape, rewind curves and the data tools through the C ABI (criticality is in
//! `criticality.rs`).

use super::boundary::{
    destroy, element_count, ensure_distinct, hand_out, handle_mut, handle_of, handle_ref, to_usize, try_mut, try_slice,
    try_slice_mut, Handle,
};
use super::{guard, guard_value, tl_context, tl_params};
use crate::criticality;
use crate::error::{fail, Error, Result, Status};
use crate::eval::{self, Evaluator, Metric, MlpEvaluator};
use crate::model::{Dataset, Metrics, Mlp};
use crate::params::ParamSet;
use std::ffi::{c_char, c_void, CStr};

/// Metrics of a parameter set on an evaluation set.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct tl_metrics {
    /// Mean loss (the built-in model: softmax cross-entropy in nats).
    pub loss: f64,
    /// The 0-1 error: the fraction of wrong predictions.
    pub error: f64,
    /// 1 - error (a host may report its own accuracy-like figure, e.g. AUC).
    pub accuracy: f64,
}

impl From<Metrics> for tl_metrics {
    fn from(m: Metrics) -> Self {
        tl_metrics { loss: m.loss, error: m.error, accuracy: m.accuracy }
    }
}

/// Which metric an analysis reads.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Loss = 0,
    Error = 1,
    Accuracy = 2,
}

/// A `tl_metric` value as received from C.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct RawMetric(pub u32);

impl RawMetric {
    pub(super) fn get(self, what: &str) -> Result<Metric> {
        Ok(match self.0 {
            0 => Metric::Loss,
            1 => Metric::Error,
            2 => Metric::Accuracy,
            v => {
                fail!(InvalidArgument, "{what}: unknown metric value {v} (expected 0 = LOSS, 1 = ERROR, 2 = ACCURACY)")
            }
        })
    }
}

/// The host's evaluation function. It evaluates its model, whose weights the library has just
/// written into `params` (a set the host wrapped around its live model with tl_params_wrap and
/// passed as `live`), and writes the metrics to `out`. It returns 0 on success; any other value
/// aborts the analysis with TL_STATUS_CALLBACK, and the host may describe the failure with
/// tl_set_callback_error first. A model with batch-norm layers recomputes their running statistics
/// inside the callback (a few training batches in train mode) before it evaluates. The callback
/// may read `params` (tl_params_tensor_data, ...) but must not change it, and must not use the
/// evaluator or the sets of the analysis that called it in any other way.
pub type tl_eval_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, params: *const tl_params, out: *mut tl_metrics) -> i32>;

/// An evaluator: the built-in MLP or CNN on a data set, or a host callback.
///
/// Thread safety: an evaluator is used by one call at a time.
pub struct tl_evaluator {
    _opaque: [u8; 0],
}

/// What a `tl_evaluator` handle points at.
pub(crate) enum HostEvaluator {
    Mlp(MlpEvaluator),
    Callback(CallbackEvaluator),
    Cnn(Box<eval::CnnEvaluator>),
}

// SAFETY: tl_evaluator is never instantiated; its pointers come from hand_out of a HostEvaluator.
unsafe impl Handle for tl_evaluator {
    type Target = HostEvaluator;
}

/// The host's evaluation function and its `user` pointer.
pub(crate) struct CallbackEvaluator {
    f: unsafe extern "C" fn(*mut c_void, *const tl_params, *mut tl_metrics) -> i32,
    user: *mut c_void,
}

impl Evaluator for CallbackEvaluator {
    fn evaluate(&mut self, _ctx: &crate::Context, sets: &[&ParamSet]) -> Result<Vec<Metrics>> {
        let mut out = Vec::with_capacity(sets.len());
        for set in sets {
            // The sets are the caller's live set (or the set of tl_evaluate): the callback gets
            // back the handle it passed, derived from the reference the analysis holds.
            let handle = handle_of::<tl_params>(set);
            let mut m = tl_metrics::default();
            eval::take_callback_error();
            // SAFETY: the host gave a valid function for this evaluator (tl_evaluator_from_callback's
            // contract); handle points at a set readable for the call, and &mut m is valid.
            let rc = unsafe { (self.f)(self.user, handle, &mut m) };
            if rc != 0 {
                let msg = eval::take_callback_error().unwrap_or_else(|| "no message was set".into());
                return Err(Error::Callback(format!("the evaluation callback returned {rc}: {msg}")));
            }
            out.push(Metrics { loss: m.loss, error: m.error, accuracy: m.accuracy });
        }
        Ok(out)
    }
}

impl HostEvaluator {
    pub(super) fn as_dyn(&mut self) -> &mut dyn Evaluator {
        match self {
            HostEvaluator::Mlp(m) => m,
            HostEvaluator::Callback(c) => c,
            HostEvaluator::Cnn(c) => c.as_mut(),
        }
    }
}

/// Makes an evaluator from a host callback; `user` is passed back to every call.
#[no_mangle]
pub unsafe extern "C" fn tl_evaluator_from_callback(
    fn_: tl_eval_fn,
    user: *mut c_void,
    out: *mut *mut tl_evaluator,
) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write (the C contract).
        let out = unsafe { try_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        let Some(f) = fn_ else { fail!(NullArgument, "fn is NULL") };
        hand_out(HostEvaluator::Callback(CallbackEvaluator { f, user }), out);
        Ok(())
    })
}

/// The built-in MLP with the caller's layer widths.
///
/// # Safety
/// `sizes` is NULL or points to `n_sizes` readable values.
pub(super) unsafe fn mlp_of(sizes: *const u64, n_sizes: usize) -> Result<Mlp> {
    // SAFETY: the caller's contract.
    let sizes = unsafe { try_slice(sizes, n_sizes, "sizes") }?;
    let sizes: Vec<usize> =
        sizes.iter().enumerate().map(|(i, &s)| to_usize(s, &format!("sizes[{i}]"))).collect::<Result<_>>()?;
    Mlp::new(&sizes)
}

/// Makes an evaluator of the built-in MLP with layer widths `sizes` (inputs, hidden..., classes)
/// on `rows` samples: `x` holds rows x sizes[0] floats (row major), `labels` one class per row.
/// The data are copied. The sets it evaluates hold tensors fc1.weight (out x in), fc1.bias, ...
#[no_mangle]
pub unsafe extern "C" fn tl_evaluator_mlp(
    sizes: *const u64,
    n_sizes: usize,
    x: *const f32,
    labels: *const u32,
    rows: u64,
    out: *mut *mut tl_evaluator,
) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write (the C contract).
        let out = unsafe { try_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: sizes is NULL or n_sizes values (the C contract).
        let mlp = unsafe { mlp_of(sizes, n_sizes) }?;
        let rows = to_usize(rows, "rows")?;
        let dim = mlp.sizes()[0];
        let n = element_count(&[("rows", rows), ("sizes[0]", dim)])?;
        // SAFETY: x is NULL or rows x sizes[0] values, labels NULL or rows values (the C contract).
        let (x, y) = unsafe { (try_slice(x, n, "x")?.to_vec(), try_slice(labels, rows, "labels")?.to_vec()) };
        let data = Dataset::new(x, y, dim, mlp.classes())?;
        hand_out(HostEvaluator::Mlp(MlpEvaluator::new(mlp, data)), out);
        Ok(())
    })
}

/// Frees an evaluator; NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn tl_evaluator_destroy(evaluator: *mut tl_evaluator) {
    // SAFETY: evaluator is NULL or one made by this library, destroyed once (the C contract).
    guard_value((), || unsafe { destroy(evaluator) })
}

/// Records the host's description of a failure, from inside a tl_eval_fn, before it returns
/// non-zero; the analysis reports it in tl_last_error_message. NULL clears it.
#[no_mangle]
pub unsafe extern "C" fn tl_set_callback_error(message: *const c_char) {
    guard_value((), || {
        if message.is_null() {
            eval::take_callback_error();
        } else {
            // SAFETY: a non-NULL message is a NUL-terminated string (the C contract).
            eval::set_callback_error(&unsafe { CStr::from_ptr(message) }.to_string_lossy());
        }
    })
}

/// Initial weights of the built-in MLP with widths `sizes`: He-normal weights from `seed`, zero
/// biases; tensors fc1.weight, fc1.bias, ... (f32), one module per layer.
#[no_mangle]
pub unsafe extern "C" fn tl_mlp_init(sizes: *const u64, n_sizes: usize, seed: u64, out: *mut *mut tl_params) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write (the C contract).
        let out = unsafe { try_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: sizes is NULL or n_sizes values (the C contract).
        let mlp = unsafe { mlp_of(sizes, n_sizes) }?;
        hand_out(mlp.init(seed)?, out);
        Ok(())
    })
}

/// The metrics of `params` (for a callback evaluator: the live set the callback receives),
/// computed on the host; the analyses evaluate on their context's backend.
#[no_mangle]
pub unsafe extern "C" fn tl_evaluate(
    evaluator: *mut tl_evaluator,
    params: *const tl_params,
    out: *mut tl_metrics,
) -> Status {
    guard(|| {
        // SAFETY: evaluator is NULL or a live evaluator used by this call alone, params NULL or a
        // live set, out NULL or valid for a write (the C contract).
        let (ev, p, out) =
            unsafe { (handle_mut(evaluator, "evaluator")?, handle_ref(params, "params")?, try_mut(out, "out")?) };
        // No context here: the host evaluates (the analyses pass theirs to the evaluator).
        let m = ev.as_dyn().evaluate(&crate::Context::cpu(), &[p])?;
        eval::check_metrics(&m[0], "evaluation")?;
        *out = m[0].into();
        Ok(())
    })
}

/// The metrics along the segment theta(lambda) = (1 - lambda) a + lambda b at each of the `n`
/// lambdas (any real values; outside [0, 1] it extrapolates) into out[n]. `module` >= 0 moves only
/// that module (the rest stays at b); -1 moves all. Each point is written into `live` (the set the
/// evaluator evaluates: for a callback, the host's wrapped model), which must hold a's weights
/// and be neither a nor b nor share memory with them.
/// `live` afterwards, on success or failure: see "Live sets" at the top of the header.
#[no_mangle]
pub unsafe extern "C" fn tl_interpolation_curve(
    ctx: *const tl_context,
    evaluator: *mut tl_evaluator,
    a: *const tl_params,
    b: *const tl_params,
    live: *mut tl_params,
    lambdas: *const f64,
    n: usize,
    module: i64,
    out: *mut tl_metrics,
) -> Status {
    guard(|| {
        ensure_distinct("live", live, &[("a", a), ("b", b)])?;
        // SAFETY: ctx is NULL or a live context; evaluator NULL or a live evaluator, a and b NULL
        // or live sets, and live NULL or a live set distinct from them (checked above); evaluator
        // and live are used by this call alone; lambdas and out are NULL or n values (the C
        // contract).
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
        let module = match module {
            -1 => None,
            m if m >= 0 => Some(m as usize),
            m => fail!(InvalidArgument, "module must be -1 (all) or a module index, got {m}"),
        };
        let curve = crate::landscape::interpolation_curve(ctx, ev.as_dyn(), a, b, live, lambdas, module)?;
        for (o, c) in out.iter_mut().zip(curve) {
            *o = c.into();
        }
        Ok(())
    })
}

/// A performance barrier (see tl_barrier).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct tl_barrier_result {
    /// max over lambda in [0, 1] of the metric's excess over the chord between the endpoints
    /// (for TL_METRIC_ACCURACY, the shortfall below it); >= 0.
    pub value: f64,
    /// Where it peaks.
    pub peak_lambda: f64,
    /// The metric at lambda = 0 and 1.
    pub start: f64,
    pub end: f64,
    /// 1 when value <= tolerance (one basin), else 0.
    pub same_basin: i32,
}

/// The barrier of a curve from tl_interpolation_curve: `lambdas` must contain 0 and 1.
#[no_mangle]
pub unsafe extern "C" fn tl_barrier(
    lambdas: *const f64,
    curve: *const tl_metrics,
    n: usize,
    metric: RawMetric,
    tolerance: f64,
    out: *mut tl_barrier_result,
) -> Status {
    guard(|| {
        // SAFETY: lambdas and curve are NULL or n values, out NULL or valid for a write (the C
        // contract).
        let (lambdas, curve, out) =
            unsafe { (try_slice(lambdas, n, "lambdas")?, try_slice(curve, n, "curve")?, try_mut(out, "out")?) };
        let metric = metric.get("metric")?;
        let curve: Vec<Metrics> =
            curve.iter().map(|m| Metrics { loss: m.loss, error: m.error, accuracy: m.accuracy }).collect();
        let b = crate::landscape::curve_barrier(lambdas, &curve, metric, tolerance)?;
        *out = tl_barrier_result {
            value: b.value,
            peak_lambda: b.peak_lambda,
            start: b.start,
            end: b.end,
            same_basin: b.same_basin as i32,
        };
        Ok(())
    })
}

pub(super) fn bool_field(v: u32, name: &str) -> Result<bool> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => fail!(InvalidArgument, "{name} must be 0 or 1, got {v}"),
    }
}

/// The rewind curve of module `module`: the metrics of (theta_i^alpha, Theta_-i^F) for each of the
/// `n` alphas (1 = final, 0 = initial) into out[n]. Each point is written into `live`, which must
/// be neither init nor final nor share memory with them.
/// `live` afterwards, on success or failure: see "Live sets" at the top of the header.
#[no_mangle]
pub unsafe extern "C" fn tl_rewind_curve(
    ctx: *const tl_context,
    evaluator: *mut tl_evaluator,
    init: *const tl_params,
    final_: *const tl_params,
    live: *mut tl_params,
    module: usize,
    alphas: *const f64,
    n: usize,
    out: *mut tl_metrics,
) -> Status {
    guard(|| {
        ensure_distinct("live", live, &[("init", init), ("final", final_)])?;
        // SAFETY: ctx is NULL or a live context; evaluator NULL or a live evaluator, init and
        // final NULL or live sets, and live NULL or a live set distinct from them (checked above),
        // evaluator and live used by this call alone; alphas and out NULL or n values (the C
        // contract).
        let (ctx, ev, init, final_, live, alphas, out) = unsafe {
            (
                handle_ref(ctx, "ctx")?,
                handle_mut(evaluator, "evaluator")?,
                handle_ref(init, "init")?,
                handle_ref(final_, "final")?,
                handle_mut(live, "live")?,
                try_slice(alphas, n, "alphas")?,
                try_slice_mut(out, n, "out")?,
            )
        };
        if module >= final_.modules().len() {
            fail!(NotFound, "module index {module} is out of range: the set has {} modules", final_.modules().len());
        }
        let c = criticality::rewind_curve(ctx, ev.as_dyn(), init, final_, live, module, alphas)?;
        for (o, m) in out.iter_mut().zip(c) {
            *o = m.into();
        }
        Ok(())
    })
}

/// Block shuffle in place: n images of c x h x w floats (row major); each is cut into b x b
/// blocks (all channels) that are permuted by one permutation drawn from `seed`, the same for
/// every image. b must divide h and w; b = h = w is the identity.
#[no_mangle]
pub unsafe extern "C" fn tl_block_shuffle(
    images: *mut f32,
    n: u64,
    c: u64,
    h: u64,
    w: u64,
    block: u64,
    seed: u64,
) -> Status {
    guard(|| {
        let (n, c, h, w) = (to_usize(n, "n")?, to_usize(c, "c")?, to_usize(h, "h")?, to_usize(w, "w")?);
        let block = to_usize(block, "block")?;
        let len = element_count(&[("n", n), ("c", c), ("h", h), ("w", w)])?;
        // SAFETY: images is NULL or n x c x h x w writable floats (the C contract).
        let images = unsafe { try_slice_mut(images, len, "images") }?;
        crate::data::block_shuffle(images, n, c, h, w, block, seed)
    })
}

/// Agreement of two models' predicted labels `a` and `b` with the true labels over n samples:
/// counts[5] = both right, only A right, only B right, both wrong with the same label, both wrong
/// with different labels. `category` (n entries, may be NULL) receives each sample's index 0..4
/// in that order.
#[no_mangle]
pub unsafe extern "C" fn tl_prediction_agreement(
    a: *const u32,
    b: *const u32,
    truth: *const u32,
    n: usize,
    counts: *mut u64,
    category: *mut u8,
) -> Status {
    guard(|| {
        // SAFETY: a, b and truth are NULL or n labels, counts NULL or 5 writable counts (the C
        // contract).
        let (a, b, t, counts) = unsafe {
            (
                try_slice(a, n, "a")?,
                try_slice(b, n, "b")?,
                try_slice(truth, n, "truth")?,
                try_slice_mut(counts, 5, "counts")?,
            )
        };
        let g = crate::data::prediction_agreement(a, b, t)?;
        for (o, c) in counts.iter_mut().zip(g.counts()) {
            *o = c as u64;
        }
        if !category.is_null() {
            // SAFETY: a non-NULL category holds n writable entries (the C contract).
            let cat = unsafe { try_slice_mut(category, n, "category") }?;
            for (k, list) in
                [&g.both_right, &g.only_a, &g.only_b, &g.both_wrong_same, &g.both_wrong_different].iter().enumerate()
            {
                for &i in list.iter() {
                    cat[i] = k as u8;
                }
            }
        }
        Ok(())
    })
}
