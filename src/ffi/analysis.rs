//! Evaluators, landscape, criticality and the data tools through the C ABI.

use super::{arg_mut, arg_ref, arg_slice, arg_slice_mut, destroy, guard, guard_value, hand_out, tl_context, tl_params};
use crate::criticality::{self, Eps, Noise, Path, Search};
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
    fn get(self, what: &str) -> Result<Metric> {
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
/// inside the callback (a few training batches in train mode) before it evaluates.
pub type tl_eval_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, params: *const tl_params, out: *mut tl_metrics) -> i32>;

enum Kind {
    Mlp(MlpEvaluator),
    Callback { f: unsafe extern "C" fn(*mut c_void, *const tl_params, *mut tl_metrics) -> i32, user: *mut c_void },
}

/// An evaluator: the built-in MLP on a data set, or a host callback.
///
/// Thread safety: an evaluator is used by one call at a time.
pub struct tl_evaluator {
    kind: Kind,
}

struct CallbackEval {
    f: unsafe extern "C" fn(*mut c_void, *const tl_params, *mut tl_metrics) -> i32,
    user: *mut c_void,
}

impl Evaluator for CallbackEval {
    fn evaluate(&mut self, _ctx: &crate::Context, sets: &[&ParamSet]) -> Result<Vec<Metrics>> {
        let mut out = Vec::with_capacity(sets.len());
        for set in sets {
            // tl_params is a ParamSet and nothing else: the handle is the set's own address.
            const { assert!(std::mem::offset_of!(tl_params, inner) == 0) };
            let handle = *set as *const ParamSet as *const tl_params;
            let mut m = tl_metrics::default();
            eval::take_callback_error();
            // SAFETY: the host promised a valid function; handle and &mut m are valid for the call.
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

impl tl_evaluator {
    fn with<T>(&mut self, body: impl FnOnce(&mut dyn Evaluator) -> Result<T>) -> Result<T> {
        match &mut self.kind {
            Kind::Mlp(m) => body(m),
            Kind::Callback { f, user } => body(&mut CallbackEval { f: *f, user: *user }),
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
        let out = unsafe { arg_mut(out, "out") }?;
        let Some(f) = fn_ else { fail!(NullArgument, "fn is NULL") };
        hand_out(tl_evaluator { kind: Kind::Callback { f, user } }, out);
        Ok(())
    })
}

fn mlp_of(sizes: *const u64, n_sizes: usize) -> Result<Mlp> {
    let sizes = unsafe { arg_slice(sizes, n_sizes, "sizes") }?;
    let sizes: Vec<usize> = sizes
        .iter()
        .map(|&s| usize::try_from(s).map_err(|_| Error::InvalidArgument(format!("width {s} is too large"))))
        .collect::<Result<_>>()?;
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
        let out = unsafe { arg_mut(out, "out") }?;
        let mlp = mlp_of(sizes, n_sizes)?;
        let rows = usize::try_from(rows).map_err(|_| Error::InvalidArgument("rows is too large".into()))?;
        let dim = mlp.sizes()[0];
        let n = rows.checked_mul(dim).ok_or_else(|| Error::InvalidArgument("rows x inputs overflows".into()))?;
        let x = unsafe { arg_slice(x, n, "x") }?.to_vec();
        let y = unsafe { arg_slice(labels, rows, "labels") }?.to_vec();
        let data = Dataset::new(x, y, dim, mlp.classes())?;
        hand_out(tl_evaluator { kind: Kind::Mlp(MlpEvaluator::new(mlp, data)) }, out);
        Ok(())
    })
}

/// Frees an evaluator; NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn tl_evaluator_destroy(evaluator: *mut tl_evaluator) {
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
            // SAFETY: the caller passes a NUL-terminated string.
            eval::set_callback_error(&unsafe { CStr::from_ptr(message) }.to_string_lossy());
        }
    })
}

/// Initial weights of the built-in MLP with widths `sizes`: He-normal weights from `seed`, zero
/// biases; tensors fc1.weight, fc1.bias, ... (f32), one module per layer.
#[no_mangle]
pub unsafe extern "C" fn tl_mlp_init(sizes: *const u64, n_sizes: usize, seed: u64, out: *mut *mut tl_params) -> Status {
    guard(|| {
        let out = unsafe { arg_mut(out, "out") }?;
        let p = mlp_of(sizes, n_sizes)?.init(seed)?;
        hand_out(tl_params { inner: p }, out);
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
        let ev = unsafe { arg_mut(evaluator, "evaluator") }?;
        let p = &unsafe { arg_ref(params, "params") }?.inner;
        let out = unsafe { arg_mut(out, "out") }?;
        // No context here: the host evaluates (the analyses pass theirs to the evaluator).
        let m = ev.with(|e| e.evaluate(&crate::Context::cpu(), &[p]))?;
        eval::check_metrics(&m[0], "evaluation")?;
        *out = m[0].into();
        Ok(())
    })
}

/// Checks that `live` is a set of its own, distinct from the inputs.
fn distinct(live: *mut tl_params, others: &[*const tl_params]) -> Result<()> {
    if others.iter().any(|&o| std::ptr::eq(o, live)) {
        fail!(InvalidArgument, "live must be a set of its own, not one of the inputs");
    }
    Ok(())
}

/// The metrics along the segment theta(lambda) = (1 - lambda) a + lambda b at each of the `n`
/// lambdas (any real values; outside [0, 1] it extrapolates) into out[n]. `module` >= 0 moves only
/// that module (the rest stays at b); -1 moves all. Each point is written into `live` (the set the
/// evaluator evaluates: for a callback, the host's wrapped model), which must hold a's weights.
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
        let ctx = &unsafe { arg_ref(ctx, "ctx") }?.inner;
        let ev = unsafe { arg_mut(evaluator, "evaluator") }?;
        distinct(live, &[a, b])?;
        let (a, b) = (&unsafe { arg_ref(a, "a") }?.inner, &unsafe { arg_ref(b, "b") }?.inner);
        let live = &mut unsafe { arg_mut(live, "live") }?.inner;
        let lambdas = unsafe { arg_slice(lambdas, n, "lambdas") }?;
        let out = unsafe { arg_slice_mut(out, n, "out") }?;
        let module = match module {
            -1 => None,
            m if m >= 0 => Some(m as usize),
            m => fail!(InvalidArgument, "module must be -1 (all) or a module index, got {m}"),
        };
        let curve = ev.with(|e| crate::landscape::interpolation_curve(ctx, e, a, b, live, lambdas, module))?;
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
        let lambdas = unsafe { arg_slice(lambdas, n, "lambdas") }?;
        let curve = unsafe { arg_slice(curve, n, "curve") }?;
        let out = unsafe { arg_mut(out, "out") }?;
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

/// Options of module criticality. Set `size` to sizeof(tl_criticality_options) after filling the
/// struct from tl_criticality_options_default(): fields added in later versions take their
/// defaults for callers that were built against an older, smaller struct.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tl_criticality_options {
    pub size: usize,
    /// The metric constrained (default TL_METRIC_ERROR, the 0-1 error).
    pub metric: RawMetric,
    /// 1: eps = (1 + eps) x the final model's metric (default, eps = 0.01); 0: eps is absolute.
    pub eps_relative: u32,
    pub eps: f64,
    /// 1: per-element noise std sigma ||theta_i^F|| / sqrt(k_i); 0: sigma x noise_scale (default).
    pub noise_relative: u32,
    pub noise_scale: f64,
    /// 0: the public implementation's grid (default); 1: bisection on sigma, then alpha refined.
    pub refined: u32,
    /// Grid points of alpha (default 11) and, for the grid, of sigma (default 11).
    pub alphas: u32,
    pub sigmas: u32,
    /// Refined: stop bisecting when the bracket's ratio is below 1 + tolerance (default 0.01).
    pub tolerance: f64,
    /// Refined: golden-section steps on alpha (default 8; 0 keeps the grid's alphas).
    pub alpha_steps: u32,
    /// Noise samples per point (default 10).
    pub samples: u32,
    /// Seeds the Philox noise: the same seed gives the same answer.
    pub seed: u64,
}

/// The defaults: the public implementation's 11 x 11 grid, 10 samples, 0-1 error, eps = 1.01 x
/// the final error, absolute noise of scale 1, seed 0.
#[no_mangle]
pub extern "C" fn tl_criticality_options_default() -> tl_criticality_options {
    tl_criticality_options {
        size: std::mem::size_of::<tl_criticality_options>(),
        metric: RawMetric(1),
        eps_relative: 1,
        eps: 0.01,
        noise_relative: 0,
        noise_scale: 1.0,
        refined: 0,
        alphas: 11,
        sigmas: 11,
        tolerance: 0.01,
        alpha_steps: 8,
        samples: 10,
        seed: 0,
    }
}

fn flag(v: u32, name: &str) -> Result<bool> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => fail!(InvalidArgument, "{name} must be 0 or 1, got {v}"),
    }
}

/// The caller's options over the defaults, for the first `size` bytes the caller knows.
unsafe fn read_options(opts: *const tl_criticality_options) -> Result<criticality::Options> {
    let mut o = tl_criticality_options_default();
    if !opts.is_null() {
        // SAFETY: the caller's struct holds at least its `size` field.
        let size = unsafe { std::ptr::read_unaligned(opts as *const usize) };
        if size < std::mem::size_of::<usize>() {
            fail!(InvalidArgument, "opts->size is {size}; set it to sizeof(tl_criticality_options)");
        }
        let n = size.min(std::mem::size_of::<tl_criticality_options>());
        // SAFETY: the caller promises `size` readable bytes; we copy no more than ours.
        unsafe { std::ptr::copy_nonoverlapping(opts as *const u8, &mut o as *mut _ as *mut u8, n) };
    }
    let (alphas, sigmas) = (o.alphas as usize, o.sigmas as usize);
    Ok(criticality::Options {
        metric: o.metric.get("opts->metric")?,
        eps: if flag(o.eps_relative, "opts->eps_relative")? { Eps::Relative(o.eps) } else { Eps::Absolute(o.eps) },
        noise: if flag(o.noise_relative, "opts->noise_relative")? {
            Noise::Relative
        } else {
            Noise::Absolute { scale: o.noise_scale }
        },
        search: if flag(o.refined, "opts->refined")? {
            Search::Refined { alphas, tolerance: o.tolerance, alpha_steps: o.alpha_steps as usize }
        } else {
            Search::Grid { alphas, sigmas }
        },
        samples: o.samples as usize,
        seed: o.seed,
    })
}

/// One module's criticality.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct tl_criticality {
    /// mu_i(eps); +infinity when no point of the search is feasible.
    pub value: f64,
    /// The minimising alpha and sigma (0 when infeasible).
    pub alpha: f64,
    pub sigma: f64,
    /// The per-element noise standard deviation at the minimum.
    pub noise_std: f64,
    /// The mean metric under noise there.
    pub expected: f64,
    /// Elements of the module.
    pub numel: u64,
    /// Points evaluated, each with `samples` evaluations.
    pub points: u64,
}

fn crit_out(c: &criticality::ModuleCriticality) -> tl_criticality {
    tl_criticality {
        value: c.value,
        alpha: c.alpha,
        sigma: c.sigma,
        noise_std: c.noise_std,
        expected: c.expected,
        numel: c.numel,
        points: c.points as u64,
    }
}

unsafe fn path_of<'a>(
    init: *const tl_params,
    final_: *const tl_params,
    checkpoints: *const *const tl_params,
    n_checkpoints: usize,
    store: &'a mut Vec<&'a ParamSet>,
) -> Result<Path<'a>> {
    if !checkpoints.is_null() || n_checkpoints > 0 {
        let ptrs = unsafe { arg_slice(checkpoints, n_checkpoints, "checkpoints") }?;
        for (i, &p) in ptrs.iter().enumerate() {
            store.push(&unsafe { arg_ref(p, &format!("checkpoints[{i}]")) }?.inner);
        }
        return Ok(Path::Checkpoints(store));
    }
    Ok(Path::Straight {
        init: &unsafe { arg_ref(init, "init") }?.inner,
        final_: &unsafe { arg_ref(final_, "final") }?.inner,
    })
}

/// The criticality of module `module` of `final` along the straight path from `init`, or, when
/// `checkpoints` is not NULL, along the piecewise-linear path through its `n_checkpoints` sets
/// (first = initial, last = final; init and final are then ignored and may be NULL). Every point
/// is written into `live` (the set the evaluator evaluates). opts may be NULL for the defaults.
#[no_mangle]
pub unsafe extern "C" fn tl_module_criticality(
    ctx: *const tl_context,
    evaluator: *mut tl_evaluator,
    init: *const tl_params,
    final_: *const tl_params,
    checkpoints: *const *const tl_params,
    n_checkpoints: usize,
    live: *mut tl_params,
    module: usize,
    opts: *const tl_criticality_options,
    out: *mut tl_criticality,
) -> Status {
    guard(|| {
        let ctx = &unsafe { arg_ref(ctx, "ctx") }?.inner;
        let ev = unsafe { arg_mut(evaluator, "evaluator") }?;
        distinct(live, &[init, final_])?;
        let opts = unsafe { read_options(opts) }?;
        let mut store = Vec::new();
        let path = unsafe { path_of(init, final_, checkpoints, n_checkpoints, &mut store) }?;
        let live = &mut unsafe { arg_mut(live, "live") }?.inner;
        let out = unsafe { arg_mut(out, "out") }?;
        let c = ev.with(|e| criticality::module_criticality(ctx, e, path, live, module, &opts))?;
        *out = crit_out(&c);
        Ok(())
    })
}

/// Summary of a network criticality.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct tl_network_summary {
    /// Sum over modules; +infinity if a module is infeasible.
    pub total: f64,
    /// The final model's metric and the eps used.
    pub final_metric: f64,
    pub eps: f64,
    /// The mean metric with every module at its minimiser and noise at once: the expectation
    /// term of the PAC-Bayes bound (+infinity when a module is infeasible).
    pub joint_expected: f64,
}

/// The criticality of every module of `final` into out_modules[tl_params_module_count(final)]
/// and their sum into *out (arguments as for tl_module_criticality).
#[no_mangle]
pub unsafe extern "C" fn tl_network_criticality(
    ctx: *const tl_context,
    evaluator: *mut tl_evaluator,
    init: *const tl_params,
    final_: *const tl_params,
    checkpoints: *const *const tl_params,
    n_checkpoints: usize,
    live: *mut tl_params,
    opts: *const tl_criticality_options,
    out_modules: *mut tl_criticality,
    n_modules: usize,
    out: *mut tl_network_summary,
) -> Status {
    guard(|| {
        let ctx = &unsafe { arg_ref(ctx, "ctx") }?.inner;
        let ev = unsafe { arg_mut(evaluator, "evaluator") }?;
        distinct(live, &[init, final_])?;
        let opts = unsafe { read_options(opts) }?;
        let mut store = Vec::new();
        let path = unsafe { path_of(init, final_, checkpoints, n_checkpoints, &mut store) }?;
        let live = &mut unsafe { arg_mut(live, "live") }?.inner;
        let out = unsafe { arg_mut(out, "out") }?;
        let mods = unsafe { arg_slice_mut(out_modules, n_modules, "out_modules") }?;
        let net = ev.with(|e| criticality::network_criticality(ctx, e, path, live, &opts))?;
        if mods.len() != net.modules.len() {
            fail!(
                ShapeMismatch,
                "out_modules has {} entries but the set has {} modules",
                mods.len(),
                net.modules.len()
            );
        }
        for (o, c) in mods.iter_mut().zip(&net.modules) {
            *o = crit_out(c);
        }
        *out = tl_network_summary {
            total: net.total,
            final_metric: net.final_metric,
            eps: net.eps,
            joint_expected: net.joint_expected,
        };
        Ok(())
    })
}

/// The PAC-Bayes bound of the criticality theorem for `n` modules' results, with m samples and
/// confidence delta: expected + sqrt((1/4 sum_i k_i log(1 + mu_i / k_i) + log(m / delta)) / (m - 1)),
/// where `expected` is the metric under the joint perturbation (tl_network_summary.joint_expected;
/// eps bounds it from above for each module alone). The O~(1) term is omitted. +infinity when a
/// module is infeasible.
#[no_mangle]
pub unsafe extern "C" fn tl_pac_bayes_bound(
    modules: *const tl_criticality,
    n: usize,
    expected: f64,
    m: u64,
    delta: f64,
    out: *mut f64,
) -> Status {
    guard(|| {
        let mods = unsafe { arg_slice(modules, n, "modules") }?;
        let out = unsafe { arg_mut(out, "out") }?;
        let net = criticality::NetworkCriticality {
            modules: mods
                .iter()
                .map(|c| criticality::ModuleCriticality {
                    module: String::new(),
                    numel: c.numel,
                    value: c.value,
                    alpha: c.alpha,
                    sigma: c.sigma,
                    noise_std: c.noise_std,
                    expected: c.expected,
                    points: c.points as usize,
                })
                .collect(),
            total: mods.iter().map(|c| c.value).sum(),
            final_metric: 0.0,
            eps: expected,
            joint_expected: expected,
        };
        *out = criticality::pac_bayes_bound(&net, m, delta)?;
        Ok(())
    })
}

/// The rewind curve of module `module`: the metrics of (theta_i^alpha, Theta_-i^F) for each of the
/// `n` alphas (1 = final, 0 = initial) into out[n].
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
        let ctx = &unsafe { arg_ref(ctx, "ctx") }?.inner;
        let ev = unsafe { arg_mut(evaluator, "evaluator") }?;
        distinct(live, &[init, final_])?;
        let init = &unsafe { arg_ref(init, "init") }?.inner;
        let final_ = &unsafe { arg_ref(final_, "final") }?.inner;
        let live = &mut unsafe { arg_mut(live, "live") }?.inner;
        let alphas = unsafe { arg_slice(alphas, n, "alphas") }?;
        let out = unsafe { arg_slice_mut(out, n, "out") }?;
        if module >= final_.modules().len() {
            fail!(NotFound, "module index {module} is out of range: the set has {} modules", final_.modules().len());
        }
        let c = ev.with(|e| criticality::rewind_curve(ctx, e, init, final_, live, module, alphas))?;
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
        let dims: Vec<usize> = [n, c, h, w, block]
            .iter()
            .map(|&v| usize::try_from(v).map_err(|_| Error::InvalidArgument(format!("{v} is too large"))))
            .collect::<Result<_>>()?;
        let len = dims[..4]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::InvalidArgument("n x c x h x w overflows".into()))?;
        let images = unsafe { arg_slice_mut(images, len, "images") }?;
        crate::data::block_shuffle(images, dims[0], dims[1], dims[2], dims[3], dims[4], seed)
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
        let a = unsafe { arg_slice(a, n, "a") }?;
        let b = unsafe { arg_slice(b, n, "b") }?;
        let t = unsafe { arg_slice(truth, n, "truth") }?;
        let counts = unsafe { arg_slice_mut(counts, 5, "counts") }?;
        let g = crate::data::prediction_agreement(a, b, t)?;
        for (o, c) in counts.iter_mut().zip(g.counts()) {
            *o = c as u64;
        }
        if !category.is_null() {
            let cat = unsafe { arg_slice_mut(category, n, "category") }?;
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
