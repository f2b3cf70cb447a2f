//! The search over (alpha, sigma) for one module and one noise seed: the grid and the refined
//! search, each accepting only points with sigma at or above the floor.

use super::{Options, Path, Search, MAX_BISECTIONS};
use crate::backend::Context;
use crate::error::{fail, Result};
use crate::eval::{check_metrics, evaluate_points, Evaluator, Metrics, ModuleNoise};
use crate::geometry;
use crate::landscape::linspace;
use crate::params::ParamSet;

/// The state of the search over (alpha, sigma) for one module: where the points are written and
/// how many have been evaluated.
pub(super) struct ModuleSearch<'c, 'p> {
    pub ctx: &'c Context,
    pub ev: &'c mut dyn Evaluator,
    pub path: Path<'p>,
    pub module: usize,
    pub opts: &'c Options,
    /// The noise seed of this search (one of the repeats).
    pub seed: u64,
    pub live: &'c mut ParamSet,
    /// Further scratch sets for evaluators that take several sets per call.
    pub extra: Vec<ParamSet>,
    /// theta_i(alpha) with the other modules final, before noise.
    pub point: ParamSet,
    /// The per-element noise std at sigma = 1.
    pub unit: f64,
    /// Points evaluated so far.
    pub points: usize,
}

/// A feasible point of the search: its score ||theta_i(alpha) - theta_i^0||^2 / s^2 (the
/// criticality when it is the minimum), where it lies, and the metric under noise there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Candidate {
    pub score: f64,
    pub alpha: f64,
    pub sigma: f64,
    /// The mean metric under noise and its standard error (mean + confidence x se <= eps).
    pub expected: f64,
    pub expected_se: f64,
}

/// The mean metric under noise at one point and the standard error of that mean.
#[derive(Debug, Clone, Copy)]
struct NoisyMean {
    mean: f64,
    se: f64,
}

/// Whether a point scoring `score` beats the best feasible point found so far.
fn beats(best: Option<Candidate>, score: f64) -> bool {
    best.is_none_or(|b| score < b.score)
}

fn keep_better(best: &mut Option<Candidate>, c: Option<Candidate>) {
    if let Some(c) = c {
        if beats(*best, c.score) {
            *best = Some(c);
        }
    }
}

impl ModuleSearch<'_, '_> {
    /// Writes theta_i(alpha) (rest final) into `self.point`; returns ||theta_i(alpha) - theta_i^0||^2.
    pub fn place(&mut self, alpha: f64) -> Result<f64> {
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

    /// The metric of the placed point without noise.
    pub fn metric_of_point(&mut self) -> Result<f64> {
        let point = &self.point;
        let ctx = self.ctx;
        let m = evaluate_points(ctx, self.ev, self.live, &mut self.extra, 1, |_, out| {
            geometry::interpolate(ctx, point, point, 1.0, out)
        })?;
        self.points += 1;
        Ok(self.opts.metric.of(&m[0]))
    }

    /// Mean metric of the placed point under noise of per-element std `std`: the evaluator's
    /// own way with the noisy copies where it has one, else each copy written into a set.
    fn mean_under_noise(&mut self, std: f64) -> Result<NoisyMean> {
        let k = self.opts.samples;
        let noise = ModuleNoise { point: &self.point, module: self.module, std, seed: self.seed, samples: k };
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
        let values: Vec<f64> = ms.iter().map(|m| self.opts.metric.of(m)).collect();
        let mean = values.iter().sum::<f64>() / k as f64;
        let se = if k > 1 {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1) as f64;
            (var / k as f64).sqrt()
        } else {
            0.0
        };
        Ok(NoisyMean { mean, se })
    }

    /// Whether a noisy mean satisfies the constraint: its upper confidence bound within eps.
    fn within(&self, m: NoisyMean, eps: f64) -> bool {
        m.mean + self.opts.confidence * m.se <= eps
    }

    /// The best feasible point of the search, or None when no point with sigma >= the floor is
    /// feasible.
    pub fn run(&mut self, eps: f64) -> Result<Option<Candidate>> {
        let mut best: Option<Candidate> = None;
        match self.opts.search {
            Search::Grid { alphas, sigmas } => {
                let floor = self.opts.sigma_floor;
                let sig: Vec<f64> = linspace(1e-16, 1.0, sigmas).into_iter().filter(|&s| s >= floor).collect();
                for &alpha in &linspace(0.0, 1.0, alphas) {
                    let num = self.place(alpha)?;
                    // Descending sigma: the first feasible one is this alpha's best score.
                    for &sigma in sig.iter().rev() {
                        let score = num / (sigma * self.unit).powi(2);
                        if !beats(best, score) {
                            break; // smaller sigmas score higher still
                        }
                        let m = self.mean_under_noise(sigma * self.unit)?;
                        if self.within(m, eps) {
                            best = Some(Candidate { score, alpha, sigma, expected: m.mean, expected_se: m.se });
                            break;
                        }
                    }
                }
            }
            Search::Refined { alphas, tolerance, alpha_steps } => {
                let grid = linspace(0.0, 1.0, alphas);
                for &alpha in &grid {
                    let c = self.largest_sigma(alpha, eps, tolerance, best)?;
                    keep_better(&mut best, c);
                }
                if let (Some(b), true) = (best, alpha_steps > 0) {
                    self.golden_section(&grid, b.alpha, eps, tolerance, alpha_steps, &mut best)?;
                }
            }
        }
        Ok(best)
    }

    /// Golden-section search on alpha (two points, then `steps - 2` more) in the grid bracket around `around`; each
    /// point's best sigma is kept in `best` if it wins.
    fn golden_section(
        &mut self,
        grid: &[f64],
        around: f64,
        eps: f64,
        tolerance: f64,
        steps: usize,
        best: &mut Option<Candidate>,
    ) -> Result<()> {
        let i = grid.iter().position(|&a| a == around).unwrap_or(0);
        let (mut lo, mut hi) = (grid[i.saturating_sub(1)], grid[(i + 1).min(grid.len() - 1)]);
        let g = 0.5 * (5f64.sqrt() - 1.0);
        // The best score at alpha `a` (+inf when infeasible), kept in `best` if it wins.
        let eval = |s: &mut Self, a: f64, best: &mut Option<Candidate>| -> Result<f64> {
            let found = s.largest_sigma(a, eps, tolerance, None)?;
            keep_better(best, found);
            Ok(found.map_or(f64::INFINITY, |c| c.score))
        };
        let (mut x1, mut x2) = (hi - g * (hi - lo), lo + g * (hi - lo));
        let mut f1 = eval(self, x1, best)?;
        let mut f2 = eval(self, x2, best)?;
        for _ in 2..steps {
            if f1 <= f2 {
                hi = x2;
                x2 = x1;
                f2 = f1;
                x1 = hi - g * (hi - lo);
                f1 = eval(self, x1, best)?;
            } else {
                lo = x1;
                x1 = x2;
                f1 = f2;
                x2 = lo + g * (hi - lo);
                f2 = eval(self, x2, best)?;
            }
        }
        Ok(())
    }

    /// The largest feasible sigma in [floor, 1] at `alpha` by geometric bisection; None if none
    /// is feasible or none can beat `best`.
    fn largest_sigma(
        &mut self,
        alpha: f64,
        eps: f64,
        tolerance: f64,
        best: Option<Candidate>,
    ) -> Result<Option<Candidate>> {
        let num = self.place(alpha)?;
        let unit = self.unit;
        let score = move |sigma: f64| num / (sigma * unit).powi(2);
        let candidate = |sigma: f64, m: NoisyMean| Candidate {
            score: score(sigma),
            alpha,
            sigma,
            expected: m.mean,
            expected_se: m.se,
        };
        let top = self.mean_under_noise(unit)?;
        if self.within(top, eps) {
            return Ok(Some(candidate(1.0, top)));
        }
        // The smallest sigma that could still beat the best score; below it nothing helps. A point
        // that has not moved (num = 0) scores 0 at any feasible sigma. The floor (and 1e-16, the
        // grid's smallest sigma, when the floor is 0) bounds it from below.
        let floor = self.opts.sigma_floor.max(1e-16);
        let mut lo = match best {
            Some(b) if num > 0.0 => (num / b.score).sqrt() / unit,
            _ => floor,
        }
        .max(floor);
        if lo >= 1.0 {
            return Ok(None);
        }
        let mut at_lo = self.mean_under_noise(lo * unit)?;
        if !self.within(at_lo, eps) {
            return Ok(None);
        }
        let mut hi = 1.0;
        // The options guarantee 1 + tolerance > 1; the cap bounds the loop whatever the floats do.
        for _ in 0..MAX_BISECTIONS {
            if hi / lo <= 1.0 + tolerance {
                break;
            }
            let mid = (lo * hi).sqrt();
            let m = self.mean_under_noise(mid * unit)?;
            if self.within(m, eps) {
                lo = mid;
                at_lo = m;
            } else {
                hi = mid;
            }
        }
        Ok(Some(candidate(lo, at_lo)))
    }
}
