//! How far to trust one CKA value: `cka_statistics` (jackknife or bootstrap interval, permutation null and
//! the most influential samples; the repository's docs/analyses.md, section 1, "Uncertainty").

use crate::arrays::{input_matrix, InputMatrix};
use crate::cka::estimator;
use crate::errors::{invalid, to_py};
use numpy::{PyArray1, PyUntypedArrayMethods};
use pyo3::prelude::*;
use transferlens::cka::{self, BootstrapInterval, Influence, IntervalKind, JackknifeInterval, PermutationNull};
use transferlens::Context;

/// What `cka_statistics` found. A statistic that was not asked for is None.
///
/// - `cka`: CKA of all the data; `estimator`.
/// - `interval` (lower, upper): the interval of kind `interval_kind` at `level`, and its
///   `std_error`. "jackknife": around `jackknife_estimate`, the bias-corrected estimate, with
///   the jackknife's standard error. "percentile" or "bca" (bootstrap): `std_error` the
///   resampled values' standard deviation; `resamples` those values; `bias_correction` BCa's z0
///   (either bootstrap kind), `acceleration` its a (BCa only); `degenerate_resamples`
///   resamples left out because a layer had no variance in them (very small n only); `blocks`
///   and `block_size`: the blocks the samples were dealt into (each its own block up to 64).
/// - `p_value`: (1 + #{null >= cka}) / (1 + permutations), one-sided; `null_mean`, `null_std`
///   and `null_values`: CKA of x against row-permuted y (at small n, the biased estimator's
///   null mean is its bias).
/// - `deltas`: per sample, CKA without it minus CKA of all (float64, n values, closed form);
///   `top_samples` (int64 row indices) and `top_deltas`: the samples whose removal changes CKA
///   most, largest |change| first.
#[pyclass(name = "CkaStatistics", module = "transferlens", frozen, get_all)]
pub struct CkaStatistics {
    cka: f64,
    estimator: String,
    level: Option<f64>,
    interval: Option<(f64, f64)>,
    interval_kind: Option<String>,
    jackknife_estimate: Option<f64>,
    bias_correction: Option<f64>,
    acceleration: Option<f64>,
    std_error: Option<f64>,
    resamples: Option<Py<PyArray1<f64>>>,
    degenerate_resamples: Option<usize>,
    blocks: Option<usize>,
    block_size: Option<usize>,
    p_value: Option<f64>,
    null_mean: Option<f64>,
    null_std: Option<f64>,
    null_values: Option<Py<PyArray1<f64>>>,
    deltas: Option<Py<PyArray1<f64>>>,
    top_samples: Option<Py<PyArray1<i64>>>,
    top_deltas: Option<Py<PyArray1<f64>>>,
}

#[pymethods]
impl CkaStatistics {
    fn __repr__(&self, py: Python<'_>) -> String {
        let mut parts = vec![format!("cka={:.6}", self.cka)];
        if let (Some(level), Some((lo, hi))) = (self.level, self.interval) {
            parts.push(format!("{:.0}% interval=({lo:.6}, {hi:.6})", 100.0 * level));
        }
        if let (Some(p), Some(mean)) = (self.p_value, self.null_mean) {
            parts.push(format!("p_value={p:.4}, null_mean={mean:.6}"));
        }
        if let Some(top) = &self.top_samples {
            parts.push(format!("top_samples={} listed", top.bind(py).len()));
        }
        format!("CkaStatistics({})", parts.join(", "))
    }
}

/// One input as a host matrix: these statistics run on the CPU only.
fn host_input(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<InputMatrix> {
    input_matrix(obj, what, &|device| {
        invalid(format!(
            "cka_statistics runs on the CPU, but {what} is on CUDA device {device}: pass a host copy (e.g. tensor.cpu())"
        ))
    })
}

/// CKA of `x` and `y` (samples x features of the same samples; numpy arrays or host
/// `__dlpack__` tensors) with how far to trust it:
///
/// - an interval at level `ci` (strictly between 0 and 1), formed as `interval` says:
///   "jackknife" (the default) around the bias-corrected estimate from the n leave-one-out
///   values, the only kind that covers at its level on layers wide against n
///   (docs/analyses.md); or a bootstrap interval, "percentile" or "bca" (bias-corrected and
///   accelerated), from `bootstrap` resamples (1000 when not given) formed from per-block terms
///   without re-forming the products per resample, `blocks` (0: each sample its own block up
///   to 64 samples, else 64 blocks) setting the resampling unit. `bootstrap` alone means
///   "percentile"; `bootstrap=0` asks for no interval;
/// - `null` row permutations of `y` (0: none) give a one-sided p-value and the null's mean;
/// - `influence` (0: none) names the samples whose removal changes CKA most (all n
///   leave-one-out changes in closed form, in `deltas`).
///
/// `seed` draws the blocks, resamples and permutations; `estimator` is "biased" or "debiased".
/// Runs on the CPU with the GIL released. Raises ShapeMismatch for different sample counts or
/// a non-2-D input, NonFinite for NaN or Inf, DegenerateInput for too few samples or a layer
/// without variance, InvalidArgument for an option out of range.
#[pyfunction]
#[pyo3(signature = (x, y, *, ci=0.95, bootstrap=None, null=200, influence=10, seed=0, estimator="biased", blocks=0, interval=None))]
#[allow(clippy::too_many_arguments)]
pub fn cka_statistics(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    ci: f64,
    bootstrap: Option<usize>,
    null: usize,
    influence: usize,
    seed: u64,
    estimator: &str,
    blocks: usize,
    interval: Option<&str>,
) -> PyResult<CkaStatistics> {
    let est = self::estimator(estimator)?;
    let requested = interval_request(interval, bootstrap)?;
    let (x, y) = (host_input(x, "x")?, host_input(y, "y")?);
    let (mx, my) = (x.matrix().map_err(to_py)?, y.matrix().map_err(to_py)?);
    type Found =
        (f64, Option<JackknifeInterval>, Option<BootstrapInterval>, Option<PermutationNull>, Option<Influence>);
    let (value, jackknifed, bootstrapped, permuted, left_out): Found = py
        .detach(|| {
            // The jackknife interval and the influence share the leave-one-out values.
            let wants_jackknife = matches!(requested, Some(Requested::Jackknife));
            let left_out = (influence > 0 || wants_jackknife).then(|| cka::influence(&mx, &my, est)).transpose()?;
            let jackknifed = match (&requested, &left_out) {
                (Some(Requested::Jackknife), Some(l)) => Some(l.jackknife(ci)?),
                _ => None,
            };
            let bootstrapped = match requested {
                Some(Requested::Bootstrap(kind, resamples)) => {
                    Some(cka::bootstrap(&mx, &my, est, ci, kind, resamples, blocks, seed)?)
                }
                _ => None,
            };
            let permuted = (null > 0).then(|| cka::permutation_null(&mx, &my, est, null, seed)).transpose()?;
            let value = match (&bootstrapped, &permuted, &left_out) {
                (Some(i), _, _) => i.cka,
                (_, Some(p), _) => p.cka,
                (_, _, Some(l)) => l.cka,
                _ => cka::linear_cka(&Context::cpu(), &mx, &my, est)?,
            };
            Ok((value, jackknifed, bootstrapped, permuted, left_out.filter(|_| influence > 0)))
        })
        .map_err(to_py)?;
    let top = left_out.as_ref().map(|l| l.top(influence));
    let kind_name = |kind: IntervalKind| format!("{kind:?}").to_lowercase();
    Ok(CkaStatistics {
        cka: value,
        estimator: estimator.to_owned(),
        level: jackknifed.as_ref().map(|j| j.level).or(bootstrapped.as_ref().map(|i| i.level)),
        interval: jackknifed.as_ref().map(|j| (j.lower, j.upper)).or(bootstrapped.as_ref().map(|i| (i.lower, i.upper))),
        interval_kind: jackknifed
            .as_ref()
            .map(|_| "jackknife".to_owned())
            .or(bootstrapped.as_ref().map(|i| kind_name(i.kind))),
        jackknife_estimate: jackknifed.as_ref().map(|j| j.estimate),
        bias_correction: bootstrapped.as_ref().map(|i| i.bias_correction),
        acceleration: bootstrapped.as_ref().and_then(|i| i.acceleration),
        std_error: jackknifed.as_ref().map(|j| j.std_error).or(bootstrapped.as_ref().map(|i| i.std_error)),
        resamples: bootstrapped.as_ref().map(|i| PyArray1::from_slice(py, &i.resamples).unbind()),
        degenerate_resamples: bootstrapped.as_ref().map(|i| i.degenerate),
        blocks: bootstrapped.as_ref().map(|i| i.blocks),
        block_size: bootstrapped.as_ref().map(|i| i.block_size),
        p_value: permuted.as_ref().map(|p| p.p_value),
        null_mean: permuted.as_ref().map(|p| p.mean),
        null_std: permuted.as_ref().map(|p| p.std),
        null_values: permuted.as_ref().map(|p| PyArray1::from_slice(py, &p.values).unbind()),
        deltas: left_out.as_ref().map(|l| PyArray1::from_slice(py, &l.delta).unbind()),
        top_samples: top.as_ref().map(|t| PyArray1::from_iter(py, t.iter().map(|&(i, _)| i as i64)).unbind()),
        top_deltas: top.as_ref().map(|t| PyArray1::from_iter(py, t.iter().map(|&(_, d)| d)).unbind()),
    })
}

/// The interval a call asked for.
enum Requested {
    Jackknife,
    Bootstrap(IntervalKind, usize),
}

/// `interval` and `bootstrap` as `tlens cka` reads `--interval` and `--bootstrap`: the jackknife
/// unless resamples are given, then percentile; `bootstrap=0` asks for no interval.
fn interval_request(interval: Option<&str>, bootstrap: Option<usize>) -> PyResult<Option<Requested>> {
    const DEFAULT_RESAMPLES: usize = 1000;
    let kind = match interval {
        None | Some("jackknife" | "percentile" | "bca") => interval,
        Some(other) => {
            return invalid(format!("interval must be \"jackknife\", \"percentile\" or \"bca\", got {other:?}"))
        }
    };
    Ok(match (kind, bootstrap) {
        (None, Some(0)) => None,
        (Some(kind), Some(0)) => {
            return invalid(format!("interval={kind:?} with bootstrap=0, which asks for no interval"));
        }
        (None | Some("jackknife"), None) => Some(Requested::Jackknife),
        (Some("jackknife"), Some(_)) => {
            return invalid(
                "bootstrap draws resamples for interval=\"percentile\" or \"bca\"; the jackknife interval uses the n leave-one-out values instead",
            )
        }
        (Some("bca"), resamples) => Some(Requested::Bootstrap(IntervalKind::Bca, resamples.unwrap_or(DEFAULT_RESAMPLES))),
        (_, resamples) => Some(Requested::Bootstrap(IntervalKind::Percentile, resamples.unwrap_or(DEFAULT_RESAMPLES))),
    })
}
