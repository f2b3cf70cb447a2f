//! Module criticality, network criticality, the PAC-Bayes bound and rewind curves
//! (docs/analyses.md, sections 6 and 7; Chatterji, Neyshabur, Sedghi, ICLR 2020).
//!
//! For module i, with theta_i(alpha) on the path from the initial weights (alpha = 0) to the final
//! ones (alpha = 1) and every other module at its final value:
//!
//! mu_i(eps) = min over alpha, sigma of ||theta_i(alpha) - theta_i^0||^2 / s^2
//! subject to mean_k L(theta_i(alpha) + s z_k, Theta_-i^F) + c se <= eps, sigma >= floor,
//!
//! where s is the per-element standard deviation of the noise: `sigma * ||theta_i^F|| / sqrt(k_i)`
//! (noise relative to the weights, the default) or `sigma * scale` (absolute noise), sigma in
//! [floor, 1]; se is the standard error of the noisy mean and c the confidence option. On the
//! straight path ||theta_i(alpha) - theta_i^0|| = alpha ||theta_i^F - theta_i^0||, the
//! definition's numerator. The z_k are standard normals from Philox (seed, stream = module << 32
//! | k, index = element offset in the module): common random numbers, so the estimate is the same
//! for a seed whatever the thread count, and moves smoothly with sigma.
//!
//! The refined search (the default) finds, for each alpha of a grid, the largest feasible sigma by
//! bisection, then refines alpha by a golden-section search around the best one. The grid search
//! is the public implementation's (alpha in linspace(0, 1, 11), sigma in linspace(1e-16, 1, 11),
//! 10 samples; the minimum over feasible points), computed exactly but skipping points that cannot
//! beat the best feasible score found so far; [`Options::reference`] is that implementation. A
//! module with no feasible point at or above the sigma floor has criticality +inf and is flagged
//! infeasible. With R repeats the search runs for the seeds seed, seed + 1, ..., and each module
//! reports the mean and spread of its R values.

mod bound;
mod search;

pub use bound::{
    bound_from_kl, held_out_estimate, kl_sum, pac_bayes, pac_bayes_bound, pac_bayes_from_kl, pac_bayes_short,
    pac_bayes_term, Bound, HeldOut,
};

use crate::aliasing::ensure_disjoint;
use crate::backend::Context;
use crate::error::{fail, Result};
use crate::eval::{add_module_noise, evaluate_points, Evaluator, Metric, Metrics};
use crate::geometry;
use crate::landscape::linspace;
use crate::params::ParamSet;
use search::ModuleSearch;

/// The feasibility threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Eps {
    /// eps itself.
    Absolute(f64),
    /// eps = (1 + r) L(final): r = 0.01 is the public implementation's 1.01.
    Relative(f64),
    /// eps = L(final) + d: an increase of the metric in its own units (d = 0.02: two points of
    /// 0-1 error).
    Increase(f64),
}

/// How sigma becomes the per-element standard deviation of the noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Noise {
    /// sigma * scale.
    Absolute { scale: f64 },
    /// sigma * ||theta_i^F|| / sqrt(k_i).
    Relative,
}

/// The search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Search {
    /// The public implementation's grid: `alphas` x `sigmas` points.
    Grid { alphas: usize, sigmas: usize },
    /// Bisection on sigma for each of `alphas` grid values (until the bracket's ratio is below
    /// 1 + `tolerance`), then `alpha_steps` golden-section steps on alpha (0: none).
    Refined { alphas: usize, tolerance: f64, alpha_steps: usize },
}

/// Options of the criticality search.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub metric: Metric,
    pub eps: Eps,
    pub noise: Noise,
    pub search: Search,
    /// Noise samples per point.
    pub samples: usize,
    /// The noise seed of the first repeat; repeat r uses seed + r.
    pub seed: u64,
    /// The smallest sigma a feasible point may have (in [0, 1)); 0 admits the grid's 1e-16.
    pub sigma_floor: f64,
    /// c: a point is feasible when its mean metric under noise plus c standard errors of that mean
    /// is within eps (0: the mean, as the public implementation).
    pub confidence: f64,
    /// Independent noise seeds (R >= 1): each module reports the mean and spread over them.
    pub repeats: usize,
}

impl Default for Options {
    /// Defaults that measure trained networks (docs/analyses.md, section 6, gives the
    /// measurement): 0-1 error, eps = final error + 0.02, noise relative to the weights, the
    /// refined search (11 alphas, tolerance 0.02, 6 golden-section steps), 10 samples, sigma
    /// floor 1e-3, confidence 2 standard errors, 3 repeats.
    fn default() -> Self {
        Options {
            metric: Metric::Error,
            eps: Eps::Increase(0.02),
            noise: Noise::Relative,
            search: Search::Refined { alphas: 11, tolerance: 0.02, alpha_steps: 6 },
            samples: 10,
            seed: 0,
            sigma_floor: 1e-3,
            confidence: 2.0,
            repeats: 3,
        }
    }
}

impl Options {
    /// The public implementation: 0-1 error, eps = 1.01 L(final), absolute noise of scale 1, the
    /// 11 x 11 grid with sigma from 1e-16, 10 samples, the mean within eps, one seed. On trained
    /// networks it reports the score at sigma = 1e-16 (around 1e32) for most modules.
    pub fn reference() -> Self {
        Options {
            metric: Metric::Error,
            eps: Eps::Relative(0.01),
            noise: Noise::Absolute { scale: 1.0 },
            search: Search::Grid { alphas: 11, sigmas: 11 },
            samples: 10,
            seed: 0,
            sigma_floor: 0.0,
            confidence: 0.0,
            repeats: 1,
        }
    }
}

/// Upper limits of the options: beyond them the work (or the memory) would be absurd.
pub const MAX_SAMPLES: usize = 1 << 20;
pub const MAX_GRID_POINTS: usize = 1 << 16;
pub const MAX_ALPHA_STEPS: usize = 200;
pub const MAX_REPEATS: usize = 1000;
/// The smallest bisection tolerance: 1 + tolerance is well above 1 in f64.
pub const MIN_TOLERANCE: f64 = 1e-12;
/// A cap on bisection steps (from [1e-16, 1] with the smallest tolerance takes under 70).
const MAX_BISECTIONS: usize = 200;

/// The path from the initial to the final weights.
#[derive(Clone, Copy)]
pub enum Path<'a> {
    /// The straight segment theta^0 -> theta^F.
    Straight { init: &'a ParamSet, final_: &'a ParamSet },
    /// Checkpoints from the initial (first) to the final (last) weights, piecewise linear; alpha
    /// in [0, 1] is spread evenly over the segments.
    Checkpoints(&'a [&'a ParamSet]),
}

impl<'a> Path<'a> {
    fn init(&self) -> &'a ParamSet {
        match self {
            Path::Straight { init, .. } => init,
            Path::Checkpoints(c) => c[0],
        }
    }
    fn final_(&self) -> &'a ParamSet {
        match self {
            Path::Straight { final_, .. } => final_,
            Path::Checkpoints(c) => c[c.len() - 1],
        }
    }
    /// Checks the path's length, and that `live` (written at every point) shares no memory with
    /// any set of the path.
    fn check(&self, live: &ParamSet) -> Result<()> {
        match self {
            Path::Straight { init, final_ } => ensure_disjoint("live", live, &[("init", init), ("final", final_)]),
            Path::Checkpoints(c) => {
                if c.len() < 2 {
                    fail!(InvalidArgument, "a checkpoint path needs at least 2 checkpoints, got {}", c.len());
                }
                let names: Vec<String> = (0..c.len()).map(|i| format!("checkpoints[{i}]")).collect();
                let inputs: Vec<(&str, &ParamSet)> = names.iter().map(String::as_str).zip(c.iter().copied()).collect();
                ensure_disjoint("live", live, &inputs)
            }
        }
    }
}

/// One module's criticality.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleCriticality {
    pub module: String,
    /// Elements of the module (k_i).
    pub numel: u64,
    /// mu_i(eps), the mean over the repeats; +inf when a repeat found no feasible point.
    pub value: f64,
    /// Whether every repeat found a feasible point at or above the sigma floor.
    pub feasible: bool,
    /// mu_i of each repeat (+inf where infeasible).
    pub repeats: Vec<f64>,
    /// The sample standard deviation of `repeats` (0 for one repeat; +inf when infeasible).
    pub spread: f64,
    /// value / k_i: criticality per parameter, comparable across module sizes.
    pub per_parameter: f64,
    /// k_i log(1 + value / k_i): the module's term of the PAC-Bayes bound.
    pub pac_bayes_term: f64,
    /// The minimising alpha and sigma of the first repeat (seed `Options::seed`; 0 when
    /// infeasible).
    pub alpha: f64,
    pub sigma: f64,
    /// The per-element noise standard deviation there.
    pub noise_std: f64,
    /// The mean metric under noise there (the constraint's left side) and its standard error.
    pub expected: f64,
    pub expected_se: f64,
    /// The metric with only this module rewound to its initial weights (the rest final).
    pub rewound_metric: f64,
    /// The area under the rewind curve: the metric along theta_i(alpha), alpha from 0 to 1 on the
    /// search's alpha grid (trapezoids).
    pub rewind_area: f64,
    /// Points evaluated (a point under noise costs `samples` evaluations, a rewind point one).
    pub points: usize,
}

/// Criticality of every module.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkCriticality {
    pub modules: Vec<ModuleCriticality>,
    /// Sum over modules (+inf if any module is infeasible).
    pub total: f64,
    /// The sample standard deviation of the per-repeat totals (0 for one repeat).
    pub total_spread: f64,
    /// The fraction of repeats whose ranking of the modules by mu_i / k_i is the ranking of the
    /// mean values; 1 for one repeat.
    pub ranking_agreement: f64,
    /// The metric of the final weights, and the eps used.
    pub final_metric: f64,
    pub eps: f64,
    /// The mean metric with every module at its minimiser at once (theta_i(alpha_i) plus noise of
    /// std noise_std_i, the same noise samples, first repeat): the E_U[L_S(Theta^alpha + U)] of the
    /// PAC-Bayes bound. +inf when a module is infeasible.
    pub joint_expected: f64,
}

impl NetworkCriticality {
    /// Whether every repeat ranks the modules (by mu_i / k_i) the same way.
    pub fn ranking_stable(&self) -> bool {
        self.ranking_agreement == 1.0
    }
}

fn check_options(o: &Options) -> Result<()> {
    if o.samples == 0 || o.samples > MAX_SAMPLES {
        fail!(InvalidArgument, "criticality needs 1 to {MAX_SAMPLES} noise samples, got {}", o.samples);
    }
    if o.repeats == 0 || o.repeats > MAX_REPEATS {
        fail!(InvalidArgument, "criticality needs 1 to {MAX_REPEATS} repeats, got {}", o.repeats);
    }
    match o.eps {
        Eps::Absolute(e) | Eps::Increase(e) if !e.is_finite() => fail!(InvalidArgument, "eps must be finite, got {e}"),
        Eps::Relative(r) if !(r.is_finite() && r >= 0.0) => {
            fail!(InvalidArgument, "relative eps r must be finite and >= 0, got {r}")
        }
        _ => {}
    }
    if let Noise::Absolute { scale } = o.noise {
        if !(scale.is_finite() && scale > 0.0) {
            fail!(InvalidArgument, "the noise scale must be finite and > 0, got {scale}");
        }
    }
    if !(o.sigma_floor >= 0.0 && o.sigma_floor < 1.0) {
        fail!(InvalidArgument, "the sigma floor must be in [0, 1), got {}", o.sigma_floor);
    }
    if !(o.confidence.is_finite() && o.confidence >= 0.0) {
        fail!(InvalidArgument, "the confidence must be finite and >= 0 standard errors, got {}", o.confidence);
    }
    let grid = |what: &str, n: usize| -> Result<()> {
        if !(2..=MAX_GRID_POINTS).contains(&n) {
            fail!(InvalidArgument, "the search needs 2 to {MAX_GRID_POINTS} {what}, got {n}");
        }
        Ok(())
    };
    match o.search {
        Search::Grid { alphas, sigmas } => {
            grid("alphas", alphas)?;
            grid("sigmas", sigmas)?;
        }
        Search::Refined { alphas, tolerance, alpha_steps } => {
            grid("alphas", alphas)?;
            if !(tolerance.is_finite() && tolerance >= MIN_TOLERANCE) {
                fail!(
                    InvalidArgument,
                    "the refined search needs a finite tolerance >= {MIN_TOLERANCE:e}, got {tolerance:e}"
                );
            }
            if alpha_steps > MAX_ALPHA_STEPS {
                fail!(
                    InvalidArgument,
                    "the refined search takes at most {MAX_ALPHA_STEPS} alpha steps, got {alpha_steps}"
                );
            }
        }
    }
    Ok(())
}

/// The metric of the final weights and the eps it implies.
pub fn eps_for(
    ctx: &Context,
    ev: &mut dyn Evaluator,
    final_: &ParamSet,
    live: &mut ParamSet,
    opts: &Options,
) -> Result<(f64, f64)> {
    ensure_disjoint("live", live, &[("final", final_)])?;
    let m = evaluate_points(ctx, ev, live, &mut Vec::new(), 1, |_, out| {
        geometry::interpolate(ctx, final_, final_, 1.0, out)
    })?;
    let l = opts.metric.of(&m[0]);
    let eps = match opts.eps {
        Eps::Absolute(e) => e,
        Eps::Relative(r) => (1.0 + r) * l,
        Eps::Increase(d) => l + d,
    };
    Ok((l, eps))
}

/// The criticality of module `module` (an index into the final set's modules). `live` receives
/// each point (the host's wrapped model for a callback evaluator).
pub fn module_criticality(
    ctx: &Context,
    ev: &mut dyn Evaluator,
    path: Path<'_>,
    live: &mut ParamSet,
    module: usize,
    opts: &Options,
) -> Result<ModuleCriticality> {
    check_options(opts)?;
    path.check(live)?;
    let (_, eps) = eps_for(ctx, ev, path.final_(), live, opts)?;
    module_at_eps(ctx, ev, path, live, module, opts, eps)
}

/// The sample standard deviation (0 for one value; +inf when a value is).
fn spread(values: &[f64]) -> f64 {
    if values.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    if values.len() < 2 {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
}

#[allow(clippy::too_many_arguments)]
fn module_at_eps(
    ctx: &Context,
    ev: &mut dyn Evaluator,
    path: Path<'_>,
    live: &mut ParamSet,
    module: usize,
    opts: &Options,
    eps: f64,
) -> Result<ModuleCriticality> {
    let final_ = path.final_();
    let Some(m) = final_.modules().get(module) else {
        fail!(NotFound, "module index {module} is out of range: the set has {} modules", final_.modules().len())
    };
    let (name, numel) = (m.name.clone(), m.numel);
    let unit = match opts.noise {
        Noise::Absolute { scale } => scale,
        Noise::Relative => {
            let norm = geometry::norms(ctx, final_)?.modules[module];
            if norm == 0.0 {
                fail!(DegenerateInput, "module {name:?} is all zeros, so noise relative to its weights is zero");
            }
            norm / (numel as f64).sqrt()
        }
    };
    let mut s = ModuleSearch {
        ctx,
        ev,
        path,
        module,
        opts,
        seed: opts.seed,
        live,
        extra: Vec::new(),
        point: final_.try_clone()?,
        unit,
        points: 0,
    };
    let mut first = None;
    let mut repeats = Vec::with_capacity(opts.repeats);
    for r in 0..opts.repeats {
        s.seed = opts.seed.wrapping_add(r as u64);
        let best = s.run(eps)?;
        repeats.push(best.map_or(f64::INFINITY, |c| c.score));
        if r == 0 {
            first = best;
        }
    }
    let (rewound_metric, rewind_area) = rewind_measures(&mut s)?;
    let feasible = repeats.iter().all(|v| v.is_finite());
    let value = if feasible { repeats.iter().sum::<f64>() / repeats.len() as f64 } else { f64::INFINITY };
    let (alpha, sigma, expected, expected_se) = match first {
        Some(c) => (c.alpha, c.sigma, c.expected, c.expected_se),
        None => (0.0, 0.0, 0.0, 0.0),
    };
    Ok(ModuleCriticality {
        module: name,
        numel,
        value,
        feasible,
        spread: spread(&repeats),
        repeats,
        per_parameter: value / numel as f64,
        pac_bayes_term: pac_bayes_term(value, numel),
        alpha,
        sigma,
        noise_std: if first.is_some() { sigma * unit } else { 0.0 },
        expected,
        expected_se,
        rewound_metric,
        rewind_area,
        points: s.points,
    })
}

/// The metric along the module's path at the search's alpha grid, without noise: the metric at
/// alpha = 0 (only this module rewound to init) and the area under the curve (trapezoids).
fn rewind_measures(s: &mut ModuleSearch) -> Result<(f64, f64)> {
    let alphas = match s.opts.search {
        Search::Grid { alphas, .. } | Search::Refined { alphas, .. } => linspace(0.0, 1.0, alphas),
    };
    let mut curve = Vec::with_capacity(alphas.len());
    for &a in &alphas {
        s.place(a)?;
        curve.push(s.metric_of_point()?);
    }
    let area = alphas.windows(2).zip(curve.windows(2)).map(|(a, m)| (a[1] - a[0]) * (m[0] + m[1]) / 2.0).sum();
    Ok((curve[0], area))
}

/// The indices of the modules ordered by `key` (ascending, +inf last, ties by index).
fn ranking(key: impl Fn(usize) -> f64, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
    order
}

/// The criticality of every module of the final set, and their sum.
pub fn network_criticality(
    ctx: &Context,
    ev: &mut dyn Evaluator,
    path: Path<'_>,
    live: &mut ParamSet,
    opts: &Options,
) -> Result<NetworkCriticality> {
    check_options(opts)?;
    path.check(live)?;
    let (final_metric, eps) = eps_for(ctx, ev, path.final_(), live, opts)?;
    let mut modules = Vec::new();
    for m in 0..path.final_().modules().len() {
        modules.push(module_at_eps(ctx, ev, path, live, m, opts, eps)?);
    }
    let total: f64 = modules.iter().map(|m| m.value).sum();
    let totals: Vec<f64> = (0..opts.repeats).map(|r| modules.iter().map(|m| m.repeats[r]).sum()).collect();
    let n = modules.len();
    let mean_ranking = ranking(|i| modules[i].per_parameter, n);
    let agreeing = (0..opts.repeats)
        .filter(|&r| ranking(|i| modules[i].repeats[r] / modules[i].numel as f64, n) == mean_ranking)
        .count();
    let joint_expected =
        if total.is_finite() { joint_mean(ctx, ev, path, live, opts, &modules)? } else { f64::INFINITY };
    Ok(NetworkCriticality {
        modules,
        total,
        total_spread: spread(&totals),
        ranking_agreement: agreeing as f64 / opts.repeats as f64,
        final_metric,
        eps,
        joint_expected,
    })
}

/// The mean metric with every module at its minimiser at once, under the same noise samples
/// (streams module << 32 | k, the first repeat's seed) as the per-module searches.
fn joint_mean(
    ctx: &Context,
    ev: &mut dyn Evaluator,
    path: Path<'_>,
    live: &mut ParamSet,
    opts: &Options,
    modules: &[ModuleCriticality],
) -> Result<f64> {
    let final_ = path.final_();
    let mut joint = final_.try_clone()?;
    let mut next = final_.try_clone()?;
    for (i, c) in modules.iter().enumerate() {
        let mut s = ModuleSearch {
            ctx,
            ev: &mut *ev,
            path,
            module: i,
            opts,
            seed: opts.seed,
            live: &mut *live,
            extra: Vec::new(),
            point: final_.try_clone()?,
            unit: 1.0,
            points: 0,
        };
        s.place(c.alpha)?;
        // Module i from its placed point, the rest as joined so far.
        geometry::rewind(ctx, &s.point, &joint, i, 0.0, &mut next)?;
        std::mem::swap(&mut joint, &mut next);
    }
    let tensors: Vec<Vec<usize>> = final_.modules().iter().map(|m| m.tensors.clone()).collect();
    let seed = opts.seed;
    let ms = evaluate_points(ctx, ev, live, &mut Vec::new(), opts.samples, |k, out| {
        geometry::interpolate(ctx, &joint, &joint, 1.0, out)?;
        for (i, c) in modules.iter().enumerate() {
            add_module_noise(out, &tensors[i], c.noise_std, seed, ((i as u64) << 32) | k as u64)?;
        }
        Ok(())
    })?;
    Ok(ms.iter().map(|m| opts.metric.of(m)).sum::<f64>() / opts.samples as f64)
}

/// The rewind curve of module `module`: the metrics of (theta_i^alpha, Theta_-i^F) for each
/// alpha (the study runs alpha from 1, the final weights, down to 0, the initial ones).
pub fn rewind_curve(
    ctx: &Context,
    ev: &mut dyn Evaluator,
    init: &ParamSet,
    final_: &ParamSet,
    live: &mut ParamSet,
    module: usize,
    alphas: &[f64],
) -> Result<Vec<Metrics>> {
    if let Some(a) = alphas.iter().find(|a| !a.is_finite()) {
        fail!(InvalidArgument, "alpha {a} is not finite");
    }
    ensure_disjoint("live", live, &[("init", init), ("final", final_)])?;
    evaluate_points(ctx, ev, live, &mut Vec::new(), alphas.len(), |k, out| {
        geometry::rewind(ctx, init, final_, module, alphas[k], out)
    })
}
