//! Module criticality, network criticality, the PAC-Bayes bound and rewind curves
//! (docs/analyses.md, sections 6 and 7; Chatterji, Neyshabur, Sedghi, ICLR 2020).
//!
//! For module i, with theta_i(alpha) on the path from the initial weights (alpha = 0) to the final
//! ones (alpha = 1) and every other module at its final value:
//!
//! mu_i(eps) = min over alpha, sigma of ||theta_i(alpha) - theta_i^0||^2 / s^2
//! subject to mean_k L(theta_i(alpha) + s z_k, Theta_-i^F) <= eps,
//!
//! where s is the per-element standard deviation of the noise: `sigma * scale` (absolute
//! noise) or `sigma * ||theta_i^F|| / sqrt(k_i)` (noise relative to the weights), sigma in
//! [0, 1]. On the straight path ||theta_i(alpha) - theta_i^0|| = alpha ||theta_i^F - theta_i^0||,
//! the definition's numerator. The z_k are standard normals from Philox (seed, stream = module
//! << 32 | k, index = element offset in the module): common random numbers, so the estimate is
//! the same for a seed whatever the thread count, and moves smoothly with sigma.
//!
//! Grid mode is the public implementation's search (alpha in linspace(0, 1, 11), sigma in
//! linspace(1e-16, 1, 11), 10 samples; the minimum over feasible points), computed exactly but
//! skipping points that cannot beat the best feasible score found so far. Refined mode finds, for
//! each alpha of the grid, the largest feasible sigma by bisection, then refines alpha by a
//! golden-section search around the best one. A module with no feasible point has criticality
//! +inf.

use crate::aliasing::ensure_disjoint;
use crate::backend::Context;
use crate::error::{fail, Result};
use crate::eval::{add_module_noise, check_metrics, evaluate_points, Evaluator, Metric, Metrics, ModuleNoise};
use crate::geometry;
use crate::landscape::linspace;
use crate::params::ParamSet;

/// The feasibility threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Eps {
    /// eps itself.
    Absolute(f64),
    /// eps = (1 + r) L(final): r = 0.01 is the public implementation's 1.01.
    Relative(f64),
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
    pub seed: u64,
}

impl Default for Options {
    /// The public implementation: 0-1 error, eps = 1.01 L(final), absolute noise of scale 1, the
    /// 11 x 11 grid, 10 samples.
    fn default() -> Self {
        Options {
            metric: Metric::Error,
            eps: Eps::Relative(0.01),
            noise: Noise::Absolute { scale: 1.0 },
            search: Search::Grid { alphas: 11, sigmas: 11 },
            samples: 10,
            seed: 0,
        }
    }
}

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
    /// mu_i(eps); +inf when no point is feasible.
    pub value: f64,
    /// The minimising alpha and sigma (NaN-free: 0 when infeasible).
    pub alpha: f64,
    pub sigma: f64,
    /// The per-element noise standard deviation at the minimum.
    pub noise_std: f64,
    /// The mean metric under noise at the minimum (the constraint's left side).
    pub expected: f64,
    /// Points evaluated (each `samples` evaluations).
    pub points: usize,
}

/// Criticality of every module.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkCriticality {
    pub modules: Vec<ModuleCriticality>,
    /// Sum over modules (+inf if any module is infeasible).
    pub total: f64,
    /// The metric of the final weights, and the eps used.
    pub final_metric: f64,
    pub eps: f64,
    /// The mean metric with every module at its minimiser at once (theta_i(alpha_i) plus noise of
    /// std noise_std_i, the same noise samples): the E_U[L_S(Theta^alpha + U)] of the PAC-Bayes
    /// bound. +inf when a module is infeasible.
    pub joint_expected: f64,
}

/// The state of the search over (alpha, sigma) for one module: where the points are written and
/// how many have been evaluated.
struct ModuleSearch<'c, 'p> {
    ctx: &'c Context,
    ev: &'c mut dyn Evaluator,
    path: Path<'p>,
    module: usize,
    opts: &'c Options,
    live: &'c mut ParamSet,
    /// Further scratch sets for evaluators that take several sets per call.
    extra: Vec<ParamSet>,
    /// theta_i(alpha) with the other modules final, before noise.
    point: ParamSet,
    /// The per-element noise std at sigma = 1.
    unit: f64,
    /// Points evaluated so far.
    points: usize,
}

/// A feasible point of the search: its score ||theta_i(alpha) - theta_i^0||^2 / s^2 (the
/// criticality when it is the minimum), where it lies, and the metric under noise there.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Candidate {
    score: f64,
    alpha: f64,
    sigma: f64,
    /// The mean metric under noise (<= eps).
    expected: f64,
}

/// Whether a point scoring `score` beats the best feasible point found so far.
fn beats(best: Option<Candidate>, score: f64) -> bool {
    best.is_none_or(|b| score < b.score)
}

impl ModuleSearch<'_, '_> {
    /// Writes theta_i(alpha) (rest final) into `self.point`; returns ||theta_i(alpha) - theta_i^0||^2.
    fn place(&mut self, alpha: f64) -> Result<f64> {
        match self.path {
            Path::Straight { init, final_ } => {
                geometry::rewind(self.ctx, init, final_, self.module, alpha, &mut self.point)?;
            }
            Path::Checkpoints(c) => {
                let segs = c.len() - 1;
                let t = alpha.clamp(0.0, 1.0) * segs as f64;
                let s = (t.floor() as usize).min(segs - 1);
                let mut tmp = c[0].try_clone()?;
                geometry::interpolate(self.ctx, c[s], c[s + 1], t - s as f64, &mut tmp)?;
                geometry::rewind(self.ctx, &tmp, c[segs], self.module, 0.0, &mut self.point)?;
            }
        }
        let d = geometry::distance(self.ctx, &self.point, self.path.init())?;
        Ok(d.modules[self.module].powi(2))
    }

    /// Mean metric of the placed point under noise of per-element std `std`: the evaluator's
    /// own way with the noisy copies where it has one, else each copy written into a set.
    fn mean_under_noise(&mut self, std: f64) -> Result<f64> {
        let k = self.opts.samples;
        let noise = ModuleNoise { point: &self.point, module: self.module, std, seed: self.opts.seed, samples: k };
        let ms: Vec<Metrics> = match self.ev.evaluate_module_noise(self.ctx, &noise) {
            Some(got) => {
                let got = got?;
                if got.len() != k {
                    fail!(Callback, "the evaluator returned {} results for {k} noisy copies", got.len());
                }
                for m in &got {
                    check_metrics(m, "evaluation under noise")?;
                }
                got
            }
            None => evaluate_points(self.ctx, self.ev, self.live, &mut self.extra, k, |j, out| {
                geometry::interpolate(self.ctx, noise.point, noise.point, 1.0, out)?;
                noise.add_to(j, out)
            })?,
        };
        self.points += 1;
        Ok(ms.iter().map(|m| self.opts.metric.of(m)).sum::<f64>() / k as f64)
    }
}

fn check_options(o: &Options) -> Result<()> {
    if o.samples == 0 || o.samples > u32::MAX as usize {
        // Sample k draws from stream module << 32 | k.
        fail!(InvalidArgument, "criticality needs 1 to 2^32 - 1 noise samples, got {}", o.samples);
    }
    match o.eps {
        Eps::Absolute(e) if !e.is_finite() => fail!(InvalidArgument, "eps must be finite, got {e}"),
        Eps::Relative(r) if !(r.is_finite() && r >= 0.0) => {
            fail!(InvalidArgument, "relative eps r must be >= 0, got {r}")
        }
        _ => {}
    }
    if let Noise::Absolute { scale } = o.noise {
        if !(scale.is_finite() && scale > 0.0) {
            fail!(InvalidArgument, "the noise scale must be > 0, got {scale}");
        }
    }
    match o.search {
        Search::Grid { alphas, sigmas } if alphas < 2 || sigmas < 2 => {
            fail!(InvalidArgument, "the grid needs at least 2 alphas and 2 sigmas")
        }
        Search::Refined { alphas, tolerance, .. } if alphas < 2 || !(tolerance > 0.0 && tolerance.is_finite()) => {
            fail!(InvalidArgument, "the refined search needs at least 2 alphas and a tolerance > 0")
        }
        _ => {}
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
    let point = final_.try_clone()?;
    let mut s = ModuleSearch { ctx, ev, path, module, opts, live, extra: Vec::new(), point, unit, points: 0 };
    let mut best: Option<Candidate> = None;
    match opts.search {
        Search::Grid { alphas, sigmas } => {
            let sig = linspace(1e-16, 1.0, sigmas);
            for &alpha in &linspace(0.0, 1.0, alphas) {
                let num = s.place(alpha)?;
                // Descending sigma: the first feasible one is this alpha's best score.
                for &sigma in sig.iter().rev() {
                    let score = num / (sigma * s.unit).powi(2);
                    if !beats(best, score) {
                        break; // smaller sigmas score higher still
                    }
                    let expected = s.mean_under_noise(sigma * s.unit)?;
                    if expected <= eps {
                        best = Some(Candidate { score, alpha, sigma, expected });
                        break;
                    }
                }
            }
        }
        Search::Refined { alphas, tolerance, alpha_steps } => {
            let grid = linspace(0.0, 1.0, alphas);
            for &alpha in &grid {
                if let Some(c) = largest_sigma(&mut s, alpha, eps, tolerance, best)? {
                    if beats(best, c.score) {
                        best = Some(c);
                    }
                }
            }
            if let Some(b) = best {
                // Golden-section search on alpha in the bracket of the best grid alpha.
                let i = grid.iter().position(|&a| a == b.alpha).unwrap_or(0);
                let (mut lo, mut hi) = (grid[i.saturating_sub(1)], grid[(i + 1).min(alphas - 1)]);
                let g = 0.5 * (5f64.sqrt() - 1.0);
                // The best score at alpha `a` (+inf when infeasible), recorded in `best` if it wins.
                let eval = |s: &mut ModuleSearch, a: f64, best: &mut Option<Candidate>| -> Result<f64> {
                    let found = largest_sigma(s, a, eps, tolerance, None)?;
                    if let Some(c) = found {
                        if beats(*best, c.score) {
                            *best = Some(c);
                        }
                    }
                    Ok(found.map_or(f64::INFINITY, |c| c.score))
                };
                let (mut x1, mut x2) = (hi - g * (hi - lo), lo + g * (hi - lo));
                let mut f1 = if alpha_steps > 0 { eval(&mut s, x1, &mut best)? } else { 0.0 };
                let mut f2 = if alpha_steps > 0 { eval(&mut s, x2, &mut best)? } else { 0.0 };
                for _ in 2..alpha_steps {
                    if f1 <= f2 {
                        hi = x2;
                        x2 = x1;
                        f2 = f1;
                        x1 = hi - g * (hi - lo);
                        f1 = eval(&mut s, x1, &mut best)?;
                    } else {
                        lo = x1;
                        x1 = x2;
                        f1 = f2;
                        x2 = lo + g * (hi - lo);
                        f2 = eval(&mut s, x2, &mut best)?;
                    }
                }
            }
        }
    }
    Ok(match best {
        Some(Candidate { score, alpha, sigma, expected }) => ModuleCriticality {
            module: name,
            numel,
            value: score,
            alpha,
            sigma,
            noise_std: sigma * s.unit,
            expected,
            points: s.points,
        },
        None => ModuleCriticality {
            module: name,
            numel,
            value: f64::INFINITY,
            alpha: 0.0,
            sigma: 0.0,
            noise_std: 0.0,
            expected: 0.0,
            points: s.points,
        },
    })
}

/// The largest feasible sigma in (0, 1] at `alpha` by geometric bisection; None if none is
/// feasible or none can beat `best`.
fn largest_sigma(
    s: &mut ModuleSearch,
    alpha: f64,
    eps: f64,
    tolerance: f64,
    best: Option<Candidate>,
) -> Result<Option<Candidate>> {
    let num = s.place(alpha)?;
    let unit = s.unit;
    let score = move |sigma: f64| num / (sigma * unit).powi(2);
    let e1 = s.mean_under_noise(s.unit)?;
    if e1 <= eps {
        return Ok(Some(Candidate { score: score(1.0), alpha, sigma: 1.0, expected: e1 }));
    }
    // The smallest sigma that could still beat the best score; below it nothing helps. A point
    // that has not moved (num = 0) scores 0 at any feasible sigma.
    let mut lo = match best {
        Some(b) if num > 0.0 => (num / b.score).sqrt() / s.unit,
        _ => 1e-16,
    }
    .max(1e-16);
    if lo >= 1.0 {
        return Ok(None);
    }
    let mut elo = s.mean_under_noise(lo * s.unit)?;
    if elo > eps {
        return Ok(None);
    }
    let mut hi = 1.0;
    while hi / lo > 1.0 + tolerance {
        let mid = (lo * hi).sqrt();
        let e = s.mean_under_noise(mid * s.unit)?;
        if e <= eps {
            lo = mid;
            elo = e;
        } else {
            hi = mid;
        }
    }
    Ok(Some(Candidate { score: score(lo), alpha, sigma: lo, expected: elo }))
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
    let joint_expected =
        if total.is_finite() { joint_mean(ctx, ev, path, live, opts, &modules)? } else { f64::INFINITY };
    Ok(NetworkCriticality { modules, total, final_metric, eps, joint_expected })
}

/// The mean metric with every module at its minimiser at once, under the same noise samples
/// (streams module << 32 | k) as the per-module searches.
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
        let point = final_.try_clone()?;
        let mut s = ModuleSearch {
            ctx,
            ev: &mut *ev,
            path,
            module: i,
            opts,
            live: &mut *live,
            extra: Vec::new(),
            point,
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

/// The PAC-Bayes bound of the theorem, with the O~(1) term left out:
/// E + sqrt((1/4 sum_i k_i log(1 + mu_i / k_i) + log(m / delta)) / (m - 1)), with E the mean
/// metric under the joint perturbation ([`NetworkCriticality::joint_expected`]) and
/// alpha_i^2 ||theta_i^F - theta_i^0||^2 / (k_i sigma_i^2) = mu_i / k_i. +inf when a module is
/// infeasible.
pub fn pac_bayes_bound(net: &NetworkCriticality, m: u64, delta: f64) -> Result<f64> {
    check_bound_args(m, delta)?;
    if !net.total.is_finite() {
        return Ok(f64::INFINITY);
    }
    let kl: f64 = net.modules.iter().map(|c| c.numel as f64 * (c.value / c.numel as f64).ln_1p()).sum();
    Ok(net.joint_expected + ((0.25 * kl + (m as f64 / delta).ln()) / (m as f64 - 1.0)).sqrt())
}

/// The short form: eps + sqrt((mu(eps) / 4 + log(m / delta)) / m), O~(1) left out.
pub fn pac_bayes_short(eps: f64, mu: f64, m: u64, delta: f64) -> Result<f64> {
    check_bound_args(m, delta)?;
    if !mu.is_finite() {
        return Ok(f64::INFINITY);
    }
    Ok(eps + ((mu / 4.0 + (m as f64 / delta).ln()) / m as f64).sqrt())
}

fn check_bound_args(m: u64, delta: f64) -> Result<()> {
    if m < 2 || !(delta > 0.0 && delta < 1.0) {
        fail!(InvalidArgument, "the bound needs m >= 2 samples and 0 < delta < 1, got m = {m}, delta = {delta}");
    }
    Ok(())
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
