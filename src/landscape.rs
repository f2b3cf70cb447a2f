//! Interpolation curves and performance barriers (docs/analyses.md, sections 4 and 5).
//!
//! A curve evaluates theta(lambda) = (1 - lambda) a + lambda b (or, per module, module i moved
//! and the rest at b) at every lambda of a grid; the weights are written by
//! [`geometry::interpolate`] / [`geometry::interpolate_module`]. The barrier of a loss-like
//! metric is the largest excess of the curve over the chord between its endpoints on [0, 1];
//! for an accuracy-like metric the sign flips.

use crate::aliasing::ensure_disjoint;
use crate::backend::Context;
use crate::error::{fail, Result};
use crate::eval::{evaluate_points, Evaluator, Metric, Metrics};
use crate::geometry;
use crate::params::ParamSet;

/// `n` evenly spaced points from `lo` to `hi`, both included.
pub fn linspace(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![lo],
        _ => (0..n).map(|i| if i + 1 == n { hi } else { lo + (hi - lo) * i as f64 / (n - 1) as f64 }).collect(),
    }
}

/// The study's grid: 50 points on [0, 1].
pub fn default_lambdas() -> Vec<f64> {
    linspace(0.0, 1.0, 50)
}

/// The study's plotting range [-1, 2] with `per_unit` + 1 points per unit of lambda; contains 0
/// and 1 exactly.
pub fn extrapolation_lambdas(per_unit: usize) -> Vec<f64> {
    let k = per_unit.max(1);
    (0..=3 * k).map(|i| -1.0 + i as f64 / k as f64).collect()
}

/// The metrics of the sets along the segment from `a` (lambda = 0) to `b` (lambda = 1) at each
/// lambda; `module` moves only that module (the rest stays at `b`). `live` receives the weights
/// (the host's wrapped model for a callback evaluator); it must hold the weights of `a` and share
/// no memory with `a` or `b`.
pub fn interpolation_curve(
    ctx: &Context,
    ev: &mut dyn Evaluator,
    a: &ParamSet,
    b: &ParamSet,
    live: &mut ParamSet,
    lambdas: &[f64],
    module: Option<usize>,
) -> Result<Vec<Metrics>> {
    if lambdas.is_empty() {
        fail!(InvalidArgument, "the lambda grid is empty");
    }
    if let Some(l) = lambdas.iter().find(|l| !l.is_finite()) {
        fail!(InvalidArgument, "the lambda grid holds a non-finite value {l}");
    }
    ensure_disjoint("live", live, &[("a", a), ("b", b)])?;
    let mut extra = Vec::new();
    evaluate_points(ctx, ev, live, &mut extra, lambdas.len(), |k, out| match module {
        None => geometry::interpolate(ctx, a, b, lambdas[k], out),
        Some(m) => geometry::interpolate_module(ctx, a, b, lambdas[k], m, out),
    })
}

/// A barrier and where it peaks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Barrier {
    /// max over lambda in [0, 1] of the excess over the chord (>= 0, since the endpoints count).
    pub value: f64,
    /// The lambda where it peaks (the first, on ties).
    pub peak_lambda: f64,
    /// The metric at lambda = 0 and lambda = 1.
    pub start: f64,
    pub end: f64,
    /// value <= tolerance.
    pub same_basin: bool,
}

/// The barrier of `values` (the metric at each lambda) on [0, 1]: `larger_is_worse` for a loss or
/// an error, not for an accuracy. The grid must contain 0 and 1; points outside [0, 1] are
/// ignored. Two models are in one basin when the barrier is at most `tolerance`.
pub fn barrier(lambdas: &[f64], values: &[f64], larger_is_worse: bool, tolerance: f64) -> Result<Barrier> {
    if lambdas.len() != values.len() {
        fail!(ShapeMismatch, "{} lambdas but {} values", lambdas.len(), values.len());
    }
    if !(tolerance.is_finite() && tolerance >= 0.0) {
        fail!(InvalidArgument, "the tolerance must be a finite number >= 0, got {tolerance}");
    }
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        fail!(NonFinite, "the curve holds a non-finite value {v}");
    }
    let at = |x: f64| lambdas.iter().position(|&l| l == x);
    let (Some(i0), Some(i1)) = (at(0.0), at(1.0)) else {
        fail!(InvalidArgument, "the barrier needs a lambda grid that contains 0 and 1 exactly")
    };
    let sign = if larger_is_worse { 1.0 } else { -1.0 };
    let (m0, m1) = (values[i0], values[i1]);
    let mut best = (f64::NEG_INFINITY, 0.0);
    for (&l, &v) in lambdas.iter().zip(values) {
        if (0.0..=1.0).contains(&l) {
            let excess = sign * (v - ((1.0 - l) * m0 + l * m1));
            if excess > best.0 {
                best = (excess, l);
            }
        }
    }
    // Endpoints have excess 0 up to rounding; clamp so that a barrier is never negative.
    let value = best.0.max(0.0);
    Ok(Barrier { value, peak_lambda: best.1, start: m0, end: m1, same_basin: value <= tolerance })
}

/// The barrier of a computed curve for `metric`.
pub fn curve_barrier(lambdas: &[f64], curve: &[Metrics], metric: Metric, tolerance: f64) -> Result<Barrier> {
    let v: Vec<f64> = curve.iter().map(|m| metric.of(m)).collect();
    barrier(lambdas, &v, metric.larger_is_worse(), tolerance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barrier_of_a_bump_and_of_a_line() {
        let l = linspace(0.0, 1.0, 5);
        let b = barrier(&l, &[0.1, 0.2, 0.5, 0.3, 0.2], true, 0.05).unwrap();
        assert!((b.value - (0.5 - 0.15)).abs() < 1e-12);
        assert_eq!(b.peak_lambda, 0.5);
        assert!(!b.same_basin);
        let flat = barrier(&l, &[0.1, 0.125, 0.15, 0.175, 0.2], true, 1e-9).unwrap();
        assert!(flat.value < 1e-12 && flat.same_basin);
        // Accuracy: a dip is a barrier.
        let acc = barrier(&l, &[0.9, 0.8, 0.5, 0.8, 0.9], false, 0.0).unwrap();
        assert!((acc.value - 0.4).abs() < 1e-12);
        assert!(barrier(&[0.0, 0.5], &[1.0, 2.0], true, 0.0).is_err());
    }

    #[test]
    fn extrapolation_grid_contains_the_endpoints() {
        let l = extrapolation_lambdas(10);
        assert_eq!(l.first(), Some(&-1.0));
        assert_eq!(l.last(), Some(&2.0));
        assert!(l.contains(&0.0) && l.contains(&1.0));
        assert_eq!(default_lambdas().len(), 50);
    }
}
