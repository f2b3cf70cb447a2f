//! Module and network criticality and the PAC-Bayes bound through the C ABI.
//!
//! The options and the report structs are versioned by their leading `size` field: a caller
//! built against an older, smaller struct passes its own sizeof, the library reads (options) or
//! writes (reports) only the bytes that caller knows, and later fields take their defaults.

use super::analysis::{bool_field, tl_evaluator, RawMetric};
use super::boundary::{ensure_distinct, handle_mut, handle_ref, try_mut, try_slice, try_slice_mut};
use super::{guard, tl_context, tl_params};
use crate::criticality::{self, Eps, HeldOut, ModuleCriticality, NetworkCriticality, Noise, Path, Search};
use crate::error::{fail, Result, Status};
use crate::params::ParamSet;

/// Options of module criticality. Fill the struct from tl_criticality_options_default() (or
/// tl_criticality_options_reference()) and keep its `size`: fields added in later versions take
/// their defaults for callers that were built against an older, smaller struct (a `size` that
/// ends inside a field is no version of it and is refused). Every numeric
/// field is checked (TL_STATUS_INVALID_ARGUMENT with the field's name when out of range).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tl_criticality_options {
    pub size: usize,
    /// The metric constrained (default TL_METRIC_ERROR, the 0-1 error).
    pub metric: RawMetric,
    /// How eps is read: 0, the threshold itself; 1, the threshold is (1 + eps) x the final
    /// model's metric (the public implementation, eps = 0.01); 2, the threshold is the final
    /// model's metric + eps, in the metric's units (the default).
    pub eps_relative: u32,
    /// Default 0.02: the 0-1 error may rise by 2 points (see docs/analyses.md, section 6).
    pub eps: f64,
    /// 1: per-element noise std sigma ||theta_i^F|| / sqrt(k_i) (default); 0: sigma x noise_scale.
    pub noise_relative: u32,
    /// Absolute noise only: the std at sigma = 1 (finite, > 0; default 1).
    pub noise_scale: f64,
    /// 1: bisection on sigma, then alpha refined (default); 0: the public implementation's grid.
    pub refined: u32,
    /// Grid points of alpha (2 to 65536; default 11) and, for the grid, of sigma (default 11).
    pub alphas: u32,
    pub sigmas: u32,
    /// Refined: stop bisecting when the bracket's ratio is below 1 + tolerance (>= 1e-12;
    /// default 0.02).
    pub tolerance: f64,
    /// Refined: golden-section steps on alpha (at most 200; default 6; 0 keeps the grid's alphas).
    pub alpha_steps: u32,
    /// Noise samples per point (1 to 2^20; default 10).
    pub samples: u32,
    /// Seeds the Philox noise of the first repeat (repeat r uses seed + r): the same seed gives
    /// the same answer.
    pub seed: u64,
    /// The smallest sigma of a feasible point, in [0, 1) (default 1e-3): a module with no feasible
    /// point at or above it is +infinity and flagged infeasible. 0 admits the grid's 1e-16.
    pub sigma_floor: f64,
    /// A point is feasible when its mean metric under noise plus `confidence` standard errors of
    /// that mean is within eps (finite, >= 0; default 2; 0: the mean, as the public
    /// implementation).
    pub confidence: f64,
    /// Independent noise seeds (1 to 1000; default 3): each module reports the mean and the spread.
    pub repeats: u32,
}

/// The defaults, chosen to measure trained networks (docs/analyses.md, section 6): 0-1 error,
/// eps = final error + 0.02, noise relative to the weights, the refined search (11 alphas,
/// tolerance 0.02, 6 golden-section steps), 10 samples, sigma floor 1e-3, confidence 2 standard
/// errors, 3 repeats, seed 0.
#[no_mangle]
pub extern "C" fn tl_criticality_options_default() -> tl_criticality_options {
    options_to_c(&criticality::Options::default())
}

/// The public implementation as reference: the 11 x 11 grid with sigma from 1e-16, absolute noise
/// of scale 1, eps = 1.01 x the final error, 10 samples, the mean within eps, sigma floor 0, one
/// repeat. On trained networks most modules then score at sigma = 1e-16 (values around 1e32).
#[no_mangle]
pub extern "C" fn tl_criticality_options_reference() -> tl_criticality_options {
    options_to_c(&criticality::Options::reference())
}

fn options_to_c(o: &criticality::Options) -> tl_criticality_options {
    let (eps_kind, eps) = match o.eps {
        Eps::Absolute(e) => (0, e),
        Eps::Relative(r) => (1, r),
        Eps::Increase(d) => (2, d),
    };
    let (noise_relative, noise_scale) = match o.noise {
        Noise::Relative => (1, 1.0),
        Noise::Absolute { scale } => (0, scale),
    };
    // The fields of the other search keep their own defaults.
    let (refined, alphas, sigmas, tolerance, alpha_steps) = match o.search {
        Search::Grid { alphas, sigmas } => (0, alphas, sigmas, 0.02, 6),
        Search::Refined { alphas, tolerance, alpha_steps } => (1, alphas, 11, tolerance, alpha_steps),
    };
    tl_criticality_options {
        size: std::mem::size_of::<tl_criticality_options>(),
        metric: RawMetric(o.metric as u32),
        eps_relative: eps_kind,
        eps,
        noise_relative,
        noise_scale,
        refined,
        alphas: alphas as u32,
        sigmas: sigmas as u32,
        tolerance,
        alpha_steps: alpha_steps as u32,
        samples: o.samples as u32,
        seed: o.seed,
        sigma_floor: o.sigma_floor,
        confidence: o.confidence,
        repeats: o.repeats as u32,
    }
}

/// The caller's options over the defaults, for the first `size` bytes the caller knows.
///
/// # Safety
/// `opts` is NULL or points to a struct of at least `opts->size` readable bytes (an older caller's
/// struct may be smaller than ours), starting with its `size` field.
unsafe fn read_options(opts: *const tl_criticality_options) -> Result<criticality::Options> {
    let mut o = tl_criticality_options_default();
    if !opts.is_null() {
        // SAFETY: the caller's struct holds at least its `size` field, first.
        let size = unsafe { std::ptr::read_unaligned(opts.cast::<usize>()) };
        check_version_size::<tl_criticality_options>(size, "opts")?;
        let n = size.min(std::mem::size_of::<tl_criticality_options>());
        // SAFETY: the caller's struct has `size` readable bytes and ours `n` <= size writable ones;
        // every field is a plain integer or float (the enum field is a RawMetric), so any bytes
        // are a valid value, checked below.
        unsafe {
            std::ptr::copy_nonoverlapping(opts.cast::<u8>(), (&mut o as *mut tl_criticality_options).cast::<u8>(), n)
        };
    }
    options_from_c(&o)
}

/// The Rust options of a caller's struct (read over the defaults by `read_options`); the
/// numbers are checked by the analysis.
fn options_from_c(o: &tl_criticality_options) -> Result<criticality::Options> {
    let (alphas, sigmas) = (o.alphas as usize, o.sigmas as usize);
    Ok(criticality::Options {
        metric: o.metric.get("opts->metric")?,
        eps: match o.eps_relative {
            0 => Eps::Absolute(o.eps),
            1 => Eps::Relative(o.eps),
            2 => Eps::Increase(o.eps),
            v => fail!(InvalidArgument, "opts->eps_relative must be 0, 1 or 2, got {v}"),
        },
        noise: if bool_field(o.noise_relative, "opts->noise_relative")? {
            Noise::Relative
        } else {
            Noise::Absolute { scale: o.noise_scale }
        },
        search: if bool_field(o.refined, "opts->refined")? {
            Search::Refined { alphas, tolerance: o.tolerance, alpha_steps: o.alpha_steps as usize }
        } else {
            Search::Grid { alphas, sigmas }
        },
        samples: o.samples as usize,
        seed: o.seed,
        sigma_floor: o.sigma_floor,
        confidence: o.confidence,
        repeats: o.repeats as usize,
    })
}

/// One module's criticality (the first fields of tl_criticality_report, kept for existing
/// callers).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct tl_criticality {
    /// mu_i(eps), the mean over the repeats; +infinity when no point at or above the sigma floor
    /// is feasible (in any repeat).
    pub value: f64,
    /// The minimising alpha and sigma of the first repeat (0 when infeasible).
    pub alpha: f64,
    pub sigma: f64,
    /// The per-element noise standard deviation at the minimum.
    pub noise_std: f64,
    /// The mean metric under noise there.
    pub expected: f64,
    /// Elements of the module.
    pub numel: u64,
    /// Points evaluated, each with `samples` evaluations (a rewind point: one).
    pub points: u64,
}

fn criticality_to_c(c: &ModuleCriticality) -> tl_criticality {
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

/// One module's criticality with its size-aware measures, spread and rewind measures. Set `size`
/// to sizeof(tl_criticality_report) before the call: the library writes only the bytes the
/// caller's struct holds.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct tl_criticality_report {
    pub size: usize,
    /// mu_i(eps), the mean over the repeats; +infinity when infeasible.
    pub value: f64,
    /// value / numel: criticality per parameter, the measure to rank modules of different sizes.
    pub per_parameter: f64,
    /// numel x log(1 + value / numel): the module's term of the PAC-Bayes bound.
    pub pac_bayes_term: f64,
    /// The sample standard deviation of the repeats' values (0 for one repeat; +infinity when
    /// infeasible).
    pub spread: f64,
    /// The minimising alpha and sigma of the first repeat (0 when infeasible), the per-element
    /// noise std there, the mean metric under noise and its standard error.
    pub alpha: f64,
    pub sigma: f64,
    pub noise_std: f64,
    pub expected: f64,
    pub expected_se: f64,
    /// The metric with only this module rewound to its initial weights.
    pub rewound_metric: f64,
    /// The area under the module's rewind curve (alpha from 0 to 1 on the search's alpha grid).
    pub rewind_area: f64,
    /// Elements of the module, and points evaluated.
    pub numel: u64,
    pub points: u64,
    /// 1 when every repeat found a feasible point at or above the sigma floor, else 0.
    pub feasible: u32,
    /// The repeats run.
    pub repeats: u32,
}

fn report_to_c(c: &ModuleCriticality) -> tl_criticality_report {
    tl_criticality_report {
        size: std::mem::size_of::<tl_criticality_report>(),
        value: c.value,
        per_parameter: c.per_parameter,
        pac_bayes_term: c.pac_bayes_term,
        spread: c.spread,
        alpha: c.alpha,
        sigma: c.sigma,
        noise_std: c.noise_std,
        expected: c.expected,
        expected_se: c.expected_se,
        rewound_metric: c.rewound_metric,
        rewind_area: c.rewind_area,
        numel: c.numel,
        points: c.points as u64,
        feasible: u32::from(c.feasible),
        repeats: c.repeats.len() as u32,
    }
}

/// A size-versioned struct: its first field is its size in bytes.
///
/// # Safety
/// Implementors are `repr(C)` structs of plain integers and floats whose first field is a `usize`.
pub(super) unsafe trait Versioned: Copy {
    const NAME: &'static str;
    /// Where each field ends, in bytes from the start, in order.
    fn field_ends() -> Vec<usize>;
}

/// The size of the field a projection selects (no value needed).
pub(super) fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    std::mem::size_of::<F>()
}

macro_rules! versioned {
    ($t:ident { $($field:ident),+ $(,)? }) => {
        // SAFETY: repr(C), plain numbers (RawMetric is a transparent u32), `size: usize` first.
        unsafe impl $crate::ffi::criticality::Versioned for $t {
            const NAME: &'static str = stringify!($t);
            fn field_ends() -> Vec<usize> {
                vec![$(std::mem::offset_of!($t, $field) + $crate::ffi::criticality::field_size(|s: &$t| &s.$field)),+]
            }
        }
    };
}
pub(super) use versioned;

versioned!(tl_criticality_options {
    size,
    metric,
    eps_relative,
    eps,
    noise_relative,
    noise_scale,
    refined,
    alphas,
    sigmas,
    tolerance,
    alpha_steps,
    samples,
    seed,
    sigma_floor,
    confidence,
    repeats,
});
versioned!(tl_criticality_report {
    size,
    value,
    per_parameter,
    pac_bayes_term,
    spread,
    alpha,
    sigma,
    noise_std,
    expected,
    expected_se,
    rewound_metric,
    rewind_area,
    numel,
    points,
    feasible,
    repeats,
});
versioned!(tl_network_report {
    size,
    total,
    total_spread,
    final_metric,
    eps,
    joint_expected,
    pac_bayes_kl,
    ranking_agreement,
    ranking_stable,
    infeasible_modules,
});
versioned!(tl_bound_report { size, bound, held_out, vacuous, has_held_out });

/// Refuses a `size` that no version of the struct has: one that ends inside a field. A version's
/// size is where one of its fields ends, padded to the struct's alignment as a C compiler pads
/// it; a size at least the whole struct is a newer caller's, whose first bytes are ours.
pub(super) fn check_version_size<T: Versioned>(size: usize, what: &str) -> Result<()> {
    let align = std::mem::align_of::<T>();
    let is_a_version = size >= std::mem::size_of::<T>()
        || T::field_ends().iter().any(|&end| size == end || size == end.next_multiple_of(align));
    if !is_a_version {
        fail!(
            InvalidArgument,
            "{what}->size is {size}, which ends inside a field of {}: set it to sizeof({}) of the \
             header you compile against",
            T::NAME,
            T::NAME
        );
    }
    Ok(())
}

/// The `size` a caller wrote at `out`, checked to be the size of a version of the struct.
///
/// # Safety
/// `out` is non-NULL and its first `usize` is readable.
unsafe fn caller_size<T: Versioned>(out: *const T, what: &str) -> Result<usize> {
    // SAFETY: the caller's contract.
    let size = unsafe { std::ptr::read_unaligned(out.cast::<usize>()) };
    check_version_size::<T>(size, what)?;
    Ok(size)
}

/// Writes the first `size` bytes the caller knows of `value` (and its own size) to `out`.
///
/// # Safety
/// `out` is non-NULL and `size` bytes there are writable.
unsafe fn write_versioned<T: Versioned>(out: *mut T, size: usize, mut value: T) {
    let n = size.min(std::mem::size_of::<T>());
    // The caller's struct says its own size.
    // SAFETY: T starts with a usize (Versioned's contract).
    unsafe { std::ptr::write_unaligned((&mut value as *mut T).cast::<usize>(), n) };
    // SAFETY: `value` has size_of::<T>() >= n readable bytes, `out` n writable ones (the caller's
    // contract); they are distinct objects.
    unsafe { std::ptr::copy_nonoverlapping((&value as *const T).cast::<u8>(), out.cast::<u8>(), n) };
}

/// The handles of a path as the C functions receive it, before any is dereferenced: the
/// checkpoints when given, else init and final.
enum PathHandles<'a> {
    Straight { init: *const tl_params, final_: *const tl_params },
    Checkpoints(&'a [*const tl_params]),
}

impl<'a> PathHandles<'a> {
    /// # Safety
    /// `checkpoints` is NULL or points to `n_checkpoints` readable pointers.
    unsafe fn new(
        init: *const tl_params,
        final_: *const tl_params,
        checkpoints: *const *const tl_params,
        n_checkpoints: usize,
    ) -> Result<Self> {
        if checkpoints.is_null() && n_checkpoints == 0 {
            return Ok(PathHandles::Straight { init, final_ });
        }
        // SAFETY: the caller's contract.
        Ok(PathHandles::Checkpoints(unsafe { try_slice(checkpoints, n_checkpoints, "checkpoints") }?))
    }

    /// Each handle the analysis reads, with its argument's name.
    fn named(&self) -> Vec<(String, *const tl_params)> {
        match self {
            PathHandles::Straight { init, final_ } => vec![("init".into(), *init), ("final".into(), *final_)],
            PathHandles::Checkpoints(c) => {
                c.iter().enumerate().map(|(i, &p)| (format!("checkpoints[{i}]"), p)).collect()
            }
        }
    }

    /// Refuses `live` when it is one of the path's sets.
    fn ensure_live_is_not_one(&self, live: *const tl_params) -> Result<()> {
        let named = self.named();
        let inputs: Vec<(&str, *const tl_params)> = named.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        ensure_distinct("live", live, &inputs)
    }

    /// The sets behind the handles; `store` holds the checkpoints' references.
    ///
    /// # Safety
    /// Each handle is NULL or a live set that nothing writes while `'s` lasts.
    unsafe fn resolve<'s>(&self, store: &'s mut Vec<&'s ParamSet>) -> Result<Path<'s>> {
        match self {
            PathHandles::Straight { init, final_ } => Ok(Path::Straight {
                // SAFETY: the caller's contract.
                init: unsafe { handle_ref(*init, "init") }?,
                // SAFETY: the caller's contract.
                final_: unsafe { handle_ref(*final_, "final") }?,
            }),
            PathHandles::Checkpoints(c) => {
                for (i, &p) in c.iter().enumerate() {
                    // SAFETY: the caller's contract.
                    store.push(unsafe { handle_ref(p, &format!("checkpoints[{i}]")) }?);
                }
                Ok(Path::Checkpoints(store))
            }
        }
    }
}

/// The arguments every criticality function shares, resolved: the analysis runs `body` on them.
///
/// # Safety
/// The C contract of tl_module_criticality for ctx, evaluator, the path's handles, live and opts.
#[allow(clippy::too_many_arguments)]
unsafe fn with_path<R>(
    ctx: *const tl_context,
    evaluator: *mut tl_evaluator,
    init: *const tl_params,
    final_: *const tl_params,
    checkpoints: *const *const tl_params,
    n_checkpoints: usize,
    live: *mut tl_params,
    opts: *const tl_criticality_options,
    body: impl FnOnce(
        &crate::Context,
        &mut dyn crate::eval::Evaluator,
        Path<'_>,
        &mut ParamSet,
        &criticality::Options,
    ) -> Result<R>,
) -> Result<R> {
    // SAFETY: checkpoints is NULL or n_checkpoints pointers (the caller's contract).
    let handles = unsafe { PathHandles::new(init, final_, checkpoints, n_checkpoints) }?;
    handles.ensure_live_is_not_one(live)?;
    let mut store = Vec::new();
    // SAFETY: ctx is NULL or a live context; evaluator NULL or a live evaluator, the path's sets
    // NULL or live sets, and live NULL or a live set distinct from them (checked above), evaluator
    // and live used by this call alone; opts as read_options needs (the caller's contract).
    let (ctx, ev, path, live, opts) = unsafe {
        (
            handle_ref(ctx, "ctx")?,
            handle_mut(evaluator, "evaluator")?,
            handles.resolve(&mut store)?,
            handle_mut(live, "live")?,
            read_options(opts)?,
        )
    };
    body(ctx, ev.as_dyn(), path, live, &opts)
}

/// The criticality of module `module` of `final` along the straight path from `init`, or, when
/// `checkpoints` is not NULL, along the piecewise-linear path through its `n_checkpoints` sets
/// (first = initial, last = final; init and final are then ignored and may be NULL). Every point
/// is written into `live` (the set the evaluator evaluates), which must be none of the path's sets
/// nor share memory with them. opts may be NULL for the defaults.
/// `live` afterwards, on success or failure: see "Live sets" at the top of the header.
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
        // SAFETY: out is NULL or valid for a write (the C contract).
        let out = unsafe { try_mut(out, "out") }?;
        // SAFETY: the C contract above.
        let c = unsafe {
            with_path(ctx, evaluator, init, final_, checkpoints, n_checkpoints, live, opts, |ctx, ev, path, live, o| {
                criticality::module_criticality(ctx, ev, path, live, module, o)
            })
        }?;
        *out = criticality_to_c(&c);
        Ok(())
    })
}

/// tl_module_criticality with the full report: per-parameter value, PAC-Bayes term, spread over
/// the repeats, feasibility and the rewind measures. Set out->size to
/// sizeof(tl_criticality_report) first.
/// `live` afterwards, on success or failure: see "Live sets" at the top of the header.
#[no_mangle]
pub unsafe extern "C" fn tl_module_criticality_report(
    ctx: *const tl_context,
    evaluator: *mut tl_evaluator,
    init: *const tl_params,
    final_: *const tl_params,
    checkpoints: *const *const tl_params,
    n_checkpoints: usize,
    live: *mut tl_params,
    module: usize,
    opts: *const tl_criticality_options,
    out: *mut tl_criticality_report,
) -> Status {
    guard(|| {
        if out.is_null() {
            fail!(NullArgument, "out is NULL");
        }
        // SAFETY: a non-NULL out holds at least its size field (the C contract).
        let size = unsafe { caller_size(out, "out") }?;
        // SAFETY: the C contract above.
        let c = unsafe {
            with_path(ctx, evaluator, init, final_, checkpoints, n_checkpoints, live, opts, |ctx, ev, path, live, o| {
                criticality::module_criticality(ctx, ev, path, live, module, o)
            })
        }?;
        // SAFETY: out holds `size` writable bytes (the C contract).
        unsafe { write_versioned(out, size, report_to_c(&c)) };
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
/// `live` afterwards, on success or failure: see "Live sets" at the top of the header.
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
        // SAFETY: out NULL or valid for a write, out_modules NULL or n_modules writable entries
        // (the C contract).
        let (out, mods) = unsafe { (try_mut(out, "out")?, try_slice_mut(out_modules, n_modules, "out_modules")?) };
        // SAFETY: the C contract above.
        let net = unsafe { network(ctx, evaluator, init, final_, checkpoints, n_checkpoints, live, opts, n_modules) }?;
        for (o, c) in mods.iter_mut().zip(&net.modules) {
            *o = criticality_to_c(c);
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

/// The network criticality, checked to have `n_modules` modules.
///
/// # Safety
/// As [`with_path`].
#[allow(clippy::too_many_arguments)]
unsafe fn network(
    ctx: *const tl_context,
    evaluator: *mut tl_evaluator,
    init: *const tl_params,
    final_: *const tl_params,
    checkpoints: *const *const tl_params,
    n_checkpoints: usize,
    live: *mut tl_params,
    opts: *const tl_criticality_options,
    n_modules: usize,
) -> Result<NetworkCriticality> {
    // SAFETY: the caller's contract.
    unsafe {
        with_path(ctx, evaluator, init, final_, checkpoints, n_checkpoints, live, opts, |ctx, ev, path, live, o| {
            let have = path_modules(&path);
            if n_modules != have {
                fail!(ShapeMismatch, "out_modules has {n_modules} entries but the set has {have} modules");
            }
            criticality::network_criticality(ctx, ev, path, live, o)
        })
    }
}

fn path_modules(path: &Path<'_>) -> usize {
    match path {
        Path::Straight { final_, .. } => final_.modules().len(),
        Path::Checkpoints(c) => c.last().map_or(0, |f| f.modules().len()),
    }
}

/// Summary of a network criticality with its repeats and the inputs of the bound. Set `size` to
/// sizeof(tl_network_report) before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct tl_network_report {
    pub size: usize,
    /// Sum of the modules' values; +infinity if a module is infeasible.
    pub total: f64,
    /// The sample standard deviation of the repeats' totals.
    pub total_spread: f64,
    /// The final model's metric and the eps used.
    pub final_metric: f64,
    pub eps: f64,
    /// The metric with every module at its minimiser and noise at once (first repeat): the
    /// expectation term of the PAC-Bayes bound (+infinity when a module is infeasible).
    pub joint_expected: f64,
    /// Sum over modules of numel log(1 + value / numel) (+infinity when a module is infeasible).
    pub pac_bayes_kl: f64,
    /// The fraction of repeats that rank the modules by value / numel as their means do.
    pub ranking_agreement: f64,
    /// 1 when every repeat gives that ranking, 0 when it is unstable.
    pub ranking_stable: u32,
    /// Modules with no feasible point at or above the sigma floor.
    pub infeasible_modules: u32,
}

/// The criticality of every module with the full reports: out_modules has n_modules entries of
/// out_modules[0].size bytes each (set it to sizeof(tl_criticality_report); every entry's size is
/// written), *out the summary (set out->size first). Other arguments as for
/// tl_module_criticality.
/// `live` afterwards, on success or failure: see "Live sets" at the top of the header.
#[no_mangle]
pub unsafe extern "C" fn tl_network_criticality_report(
    ctx: *const tl_context,
    evaluator: *mut tl_evaluator,
    init: *const tl_params,
    final_: *const tl_params,
    checkpoints: *const *const tl_params,
    n_checkpoints: usize,
    live: *mut tl_params,
    opts: *const tl_criticality_options,
    out_modules: *mut tl_criticality_report,
    n_modules: usize,
    out: *mut tl_network_report,
) -> Status {
    guard(|| {
        if out.is_null() {
            fail!(NullArgument, "out is NULL");
        }
        if out_modules.is_null() || n_modules == 0 {
            fail!(NullArgument, "out_modules is NULL or empty");
        }
        // SAFETY: non-NULL out and out_modules hold at least their size field (the C contract).
        let (size, stride) = unsafe { (caller_size(out, "out")?, caller_size(out_modules, "out_modules[0]")?) };
        if stride.checked_mul(n_modules).is_none() {
            fail!(InvalidArgument, "out_modules: {n_modules} entries of {stride} bytes overflow");
        }
        // SAFETY: the C contract above.
        let net = unsafe { network(ctx, evaluator, init, final_, checkpoints, n_checkpoints, live, opts, n_modules) }?;
        for (i, c) in net.modules.iter().enumerate() {
            // SAFETY: out_modules holds n_modules entries of `stride` bytes (the C contract), and
            // i < n_modules (checked in `network`).
            unsafe { write_versioned(out_modules.cast::<u8>().add(i * stride).cast(), stride, report_to_c(c)) };
        }
        let report = tl_network_report {
            size: std::mem::size_of::<tl_network_report>(),
            total: net.total,
            total_spread: net.total_spread,
            final_metric: net.final_metric,
            eps: net.eps,
            joint_expected: net.joint_expected,
            pac_bayes_kl: net.modules.iter().map(|c| c.pac_bayes_term).sum(),
            ranking_agreement: net.ranking_agreement,
            ranking_stable: u32::from(net.ranking_stable()),
            infeasible_modules: net.modules.iter().filter(|c| !c.feasible).count() as u32,
        };
        // SAFETY: out holds `size` writable bytes (the C contract).
        unsafe { write_versioned(out, size, report) };
        Ok(())
    })
}

/// The PAC-Bayes bound of the criticality theorem for `n` modules' results, with m samples and
/// confidence delta: expected + sqrt((1/4 sum_i k_i log(1 + mu_i / k_i) + log(m / delta)) / (m - 1)),
/// where `expected` is the metric under the joint perturbation (tl_network_summary.joint_expected;
/// eps bounds it from above for each module alone) and m the number of samples the criticality was
/// measured on (the training sample of the theorem). The O~(1) term is omitted. +infinity when a
/// module is infeasible; TL_STATUS_INVALID_ARGUMENT for a NaN or negative value or expected, a
/// module of 0 elements, m < 2 or delta outside (0, 1), TL_STATUS_NON_FINITE when the bound
/// overflows.
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
        // SAFETY: modules is NULL or n entries, out NULL or valid for a write (the C contract).
        let (mods, out) = unsafe { (try_slice(modules, n, "modules")?, try_mut(out, "out")?) };
        let modules = mods
            .iter()
            .enumerate()
            .map(|(i, c)| ModuleCriticality {
                module: format!("modules[{i}]"),
                numel: c.numel,
                value: c.value,
                feasible: c.value.is_finite(),
                repeats: vec![c.value],
                spread: 0.0,
                per_parameter: c.value / c.numel as f64,
                pac_bayes_term: criticality::pac_bayes_term(c.value, c.numel),
                alpha: c.alpha,
                sigma: c.sigma,
                noise_std: c.noise_std,
                expected: c.expected,
                expected_se: 0.0,
                rewound_metric: 0.0,
                rewind_area: 0.0,
                points: c.points as usize,
            })
            .collect();
        let net = NetworkCriticality {
            modules,
            total: mods.iter().map(|c| c.value).sum(),
            total_spread: 0.0,
            ranking_agreement: 1.0,
            final_metric: 0.0,
            eps: expected,
            joint_expected: expected,
        };
        *out = criticality::pac_bayes_bound(&net, m, delta)?;
        Ok(())
    })
}

/// The bound with its reading. Set `size` to sizeof(tl_bound_report) before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct tl_bound_report {
    pub size: usize,
    /// The PAC-Bayes bound (+infinity when a module is infeasible).
    pub bound: f64,
    /// The held-out estimate test_error + sqrt(log(1 / delta) / (2 n_test)); 0 when no test data
    /// were given (has_held_out = 0).
    pub held_out: f64,
    /// 1 when the bound exceeds 1: it says nothing about a 0-1 error.
    pub vacuous: u32,
    pub has_held_out: u32,
}

/// The PAC-Bayes bound from a network report (its pac_bayes_kl and joint_expected) with m = the
/// number of samples the criticality was measured on and confidence delta, and, when n_test > 0,
/// the plain held-out estimate from the test error on n_test other samples beside it.
/// Errors as tl_pac_bayes_bound, and for a test_error outside [0, 1].
#[no_mangle]
pub unsafe extern "C" fn tl_pac_bayes_report(
    net: *const tl_network_report,
    m: u64,
    delta: f64,
    test_error: f64,
    n_test: u64,
    out: *mut tl_bound_report,
) -> Status {
    guard(|| {
        if out.is_null() {
            fail!(NullArgument, "out is NULL");
        }
        // SAFETY: a non-NULL out holds at least its size field (the C contract).
        let size = unsafe { caller_size(out, "out") }?;
        // SAFETY: net is NULL or a readable report (the C contract).
        let net = unsafe { try_slice(net, 1, "net") }?[0];
        if net.size < std::mem::offset_of!(tl_network_report, pac_bayes_kl) + std::mem::size_of::<f64>() {
            fail!(InvalidArgument, "net->size is {}: the report has no pac_bayes_kl", net.size);
        }
        let b = criticality::pac_bayes_from_kl(
            net.pac_bayes_kl,
            net.joint_expected,
            m,
            delta,
            (n_test > 0).then_some(HeldOut { error: test_error, n: n_test }),
        )?;
        let report = tl_bound_report {
            size: std::mem::size_of::<tl_bound_report>(),
            bound: b.value,
            held_out: b.held_out.unwrap_or(0.0),
            vacuous: u32::from(b.vacuous),
            has_held_out: u32::from(b.held_out.is_some()),
        };
        // SAFETY: out holds `size` writable bytes (the C contract).
        unsafe { write_versioned(out, size, report) };
        Ok(())
    })
}
