//! Linear centered kernel alignment (CKA) between two sets of features of the same samples.
//!
//! `X` is `n x p`, `Y` is `n x q`; rows are the same `n` samples. With `X~`, `Y~` the
//! column-centered matrices and `r_x` the vector of squared row norms of `X~`:
//!
//! * biased (Kornblith et al. 2019): `HSIC(X, Y) = ||Y~^T X~||_F^2`;
//! * debiased (the U-statistic of Song et al. 2012, as in Kornblith et al.'s
//!   `feature_space_linear_cka(debiased=True)`):
//!   `hsic_u(X, Y) = ||X~^T Y~||_F^2 - n/(n-2) r_x . r_y + ||X~||_F^2 ||Y~||_F^2 / ((n-1)(n-2))`;
//!
//! and `CKA = HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y))`. The biased estimator needs `n >= 2`, the
//! debiased one `n >= 4`; a layer with no variance, or a non-positive debiased `HSIC(X, X)`, is
//! [`Error::DegenerateInput`](crate::Error::DegenerateInput), never a NaN.
//!
//! Every estimator is a function of a few *terms* per pair of layers: `||X~^T Y~||_F^2`,
//! `r_x . r_y`, and per layer `||X~||_F^2`. They are computed by one of two routes, whichever
//! needs fewer multiply-adds:
//!
//! * feature space: `p x q` cross products and `p x p` Grams (cheap when `n` is large);
//! * sample space: the `n x n` Gram `X~ X~^T` of each layer, once (cheap when `p` is large:
//!   `n << p` never builds a `p x p` matrix).
//!
//! Whole data is centered at its exact column means (on the CPU, a layer with a small offset is
//! multiplied in place and its products centered afterwards), and the products are reduced to
//! the terms at once. The streaming [`CkaAccumulator`] accumulates moments relative to a *shift*
//! (the first batch's column means), so data with a large offset does not cancel
//! catastrophically, and re-centers exactly at the end. Feeding it batches of any sizes gives the
//! full-data result up to rounding, and accumulators merge across threads or processes.
//!
//! [`MinibatchCka`] is the minibatch estimator of Nguyen, Raghu and Kornblith (2021): the mean
//! over batches of the unbiased `HSIC_1`, a different quantity from full-data CKA.

mod accumulator;
mod minibatch;
pub mod stats;

pub use accumulator::CkaAccumulator;
pub use minibatch::{minibatch_cka, MinibatchCka};
pub use stats::{
    bootstrap, influence, jackknife, permutation_null, BootstrapInterval, Influence, IntervalKind, JackknifeInterval,
    PermutationNull,
};

use crate::backend::cpu;
use crate::backend::{Backend, CkaGramTerms, Context};
use crate::error::{fail, Error, Result};
use crate::tensor::{DType, Matrix};

/// The HSIC estimator. The discriminants are the C ABI's `tl_cka_estimator` values.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Estimator {
    /// `||Y~^T X~||_F^2`: Kornblith et al.'s linear CKA.
    Biased = 0,
    /// The unbiased U-statistic of Song et al. (2012); needs `n >= 4`; can be slightly negative.
    Debiased = 1,
}

impl Estimator {
    /// The estimator for a C ABI value, or an error naming `what`.
    pub fn from_raw(raw: u32, what: &str) -> Result<Self> {
        Ok(match raw {
            0 => Estimator::Biased,
            1 => Estimator::Debiased,
            _ => fail!(InvalidArgument, "{what}: unknown estimator value {raw} (expected 0 = BIASED, 1 = DEBIASED)"),
        })
    }

    /// The fewest samples for which the estimator is defined.
    pub const fn min_samples(self) -> usize {
        match self {
            Estimator::Biased => 2,
            Estimator::Debiased => 4,
        }
    }
}

/// The terms of one pair of layers `(u, v)` that every estimator is built from.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PairTerms {
    /// `||U~^T V~||_F^2`.
    cross_fro2: f64,
    /// `r_u . r_v`, the dot product of the squared row norms of the centered layers.
    row_norms_dot: f64,
}

/// HSIC of a pair from its terms; `trace_u = ||U~||_F^2`.
fn hsic(est: Estimator, n: f64, pair: PairTerms, trace_u: f64, trace_v: f64) -> f64 {
    match est {
        Estimator::Biased => pair.cross_fro2,
        Estimator::Debiased => {
            pair.cross_fro2 - n / (n - 2.0) * pair.row_norms_dot + trace_u * trace_v / ((n - 1.0) * (n - 2.0))
        }
    }
}

/// Everything needed for the CKA of every pair: terms of each layer with itself and of each
/// (x, y) pair, and each layer's trace.
struct Terms {
    n: u64,
    trace_x: Vec<f64>,
    trace_y: Vec<f64>,
    self_x: Vec<PairTerms>,
    self_y: Vec<PairTerms>,
    /// Row-major `nx x ny`.
    cross: Vec<PairTerms>,
}

impl Terms {
    /// CKA of every (x, y) pair, row-major, with degenerate layers reported by name.
    fn cka(&self, est: Estimator) -> Result<Vec<f64>> {
        check_min_samples(self.n as usize, est)?;
        let n = self.n as f64;
        let self_hsic = |name: &str, i: usize, pair: PairTerms, trace: f64| -> Result<f64> {
            if !(trace.is_finite() && pair.cross_fro2.is_finite() && pair.row_norms_dot.is_finite()) {
                return Err(overflow(&format!("{name}[{i}]")));
            }
            if trace <= 0.0 {
                fail!(DegenerateInput, "{name}[{i}] has zero variance: every feature is constant over the samples");
            }
            let h = hsic(est, n, pair, trace, trace);
            if h.is_nan() || h <= 0.0 {
                fail!(
                    DegenerateInput,
                    "{name}[{i}]: the {est:?} HSIC of the layer with itself is {h:e}, not positive (too few samples or too little variance)"
                );
            }
            Ok(h)
        };
        let hx: Vec<f64> = (0..self.trace_x.len())
            .map(|i| self_hsic("x", i, self.self_x[i], self.trace_x[i]))
            .collect::<Result<_>>()?;
        let hy: Vec<f64> = (0..self.trace_y.len())
            .map(|j| self_hsic("y", j, self.self_y[j], self.trace_y[j]))
            .collect::<Result<_>>()?;
        let ny = hy.len();
        let mut out = Vec::with_capacity(self.cross.len());
        for (k, &pair) in self.cross.iter().enumerate() {
            let (i, j) = (k / ny, k % ny);
            // Two roots, not the root of a product, which would underflow or overflow first.
            let value = hsic(est, n, pair, self.trace_x[i], self.trace_y[j]) / (hx[i].sqrt() * hy[j].sqrt());
            if !value.is_finite() {
                return Err(overflow(&format!("x[{i}] and y[{j}]")));
            }
            out.push(value);
        }
        Ok(out)
    }
}

/// The error for terms that overflow f64: only f64 input of extreme magnitude gets there (both
/// backends scale f32, f16 and bf16 layers into range), and the caller can fix it by scaling.
/// It is NonFinite, like a sum over the samples that overflows (the statistics pass).
fn overflow(what: &str) -> Error {
    Error::NonFinite(format!(
        "{what}: its values are too large: a sum of CKA's terms overflows f64; CKA does not change \
         when a layer is scaled, so divide the layer by a constant such as its largest value"
    ))
}

fn check_min_samples(n: usize, est: Estimator) -> Result<()> {
    if n < est.min_samples() {
        fail!(DegenerateInput, "the {est:?} estimator needs at least {} samples, got {n}", est.min_samples());
    }
    Ok(())
}

/// Linear CKA of `x` and `y`.
pub fn linear_cka(ctx: &Context, x: &Matrix, y: &Matrix, estimator: Estimator) -> Result<f64> {
    Ok(cka_matrix(ctx, std::slice::from_ref(x), std::slice::from_ref(y), estimator)?[0])
}

/// CKA of every pair: `out[i * ys.len() + j] = CKA(xs[i], ys[j])`. Each layer's Gram is formed
/// once, whatever the number of pairs it takes part in.
pub fn cka_matrix(ctx: &Context, xs: &[Matrix], ys: &[Matrix], estimator: Estimator) -> Result<Vec<f64>> {
    let n = check_layers(xs, ys)?;
    cka_matrix_via(ctx, xs, ys, estimator, choose_route(n, xs, ys))
}

/// [`cka_matrix`] through a given route rather than the cheaper one: both give the same values
/// up to rounding (the tests check it); benchmarks compare their speed.
pub fn cka_matrix_via(
    ctx: &Context,
    xs: &[Matrix],
    ys: &[Matrix],
    estimator: Estimator,
    route: Route,
) -> Result<Vec<f64>> {
    let n = check_layers(xs, ys)?;
    check_min_samples(n, estimator)?;
    // Whole data: centered at the exact column means, the products reduced to the terms at once
    // (the streaming accumulator gives the same values with its f64 state).
    whole_data_terms(ctx, xs, ys, route, estimator)?.cka(estimator)
}

/// Which products to form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `p x q` cross products and `p x p` Grams.
    Feature,
    /// `n x n` Grams of the samples.
    Sample,
}

/// The route with fewer multiply-adds: feature space costs `n (sum p_i^2 / 2 + sum_ij p_i q_j)`,
/// sample space `n^2 sum p_i / 2` for the Grams plus `n^2` per pair for their inner products.
pub fn choose_route(n: usize, xs: &[Matrix], ys: &[Matrix]) -> Route {
    let n = n as f64;
    let px: Vec<f64> = xs.iter().map(|m| m.cols() as f64).collect();
    let qy: Vec<f64> = ys.iter().map(|m| m.cols() as f64).collect();
    let all = px.iter().chain(&qy);
    let feature = n * (all.clone().map(|p| p * p / 2.0).sum::<f64>() + px.iter().sum::<f64>() * qy.iter().sum::<f64>());
    let pairs = (px.len() * qy.len() + px.len() + qy.len()) as f64;
    let sample = n * n * (all.sum::<f64>() / 2.0 + pairs);
    if sample < feature {
        Route::Sample
    } else {
        Route::Feature
    }
}

/// Checks that the layers share a positive row count and returns it.
fn check_layers(xs: &[Matrix], ys: &[Matrix]) -> Result<usize> {
    if xs.is_empty() || ys.is_empty() {
        fail!(InvalidArgument, "at least one layer of x and one of y are needed (got {} and {})", xs.len(), ys.len());
    }
    let n = xs[0].rows();
    check_same_rows(xs, ys, n)?;
    if n == 0 {
        fail!(DegenerateInput, "the matrices have 0 rows (samples)");
    }
    Ok(n)
}

fn check_same_rows(xs: &[Matrix], ys: &[Matrix], n: usize) -> Result<()> {
    for (name, layers) in [("x", xs), ("y", ys)] {
        for (i, m) in layers.iter().enumerate() {
            if m.rows() != n {
                fail!(
                    ShapeMismatch,
                    "{name}[{i}] has {} rows but x[0] has {n}: rows must be the same samples",
                    m.rows()
                );
            }
        }
    }
    Ok(())
}

/// Products run in f64 when any layer is stored in f64, else in f32 (f16 and bf16 are widened).
fn wants_f64(xs: &[Matrix], ys: &[Matrix]) -> bool {
    xs.iter().chain(ys).any(|m| m.dtype() == DType::F64)
}

/// A layer's label in messages: `x[2]`.
fn label(side: &str, i: usize) -> String {
    format!("{side}[{i}]")
}

/// Labels and views of the x layers, then the y layers.
fn labelled<'m, 'a>(xs: &'m [Matrix<'a>], ys: &'m [Matrix<'a>]) -> Vec<(String, &'m Matrix<'a>)> {
    xs.iter()
        .enumerate()
        .map(|(i, m)| (label("x", i), m))
        .chain(ys.iter().enumerate().map(|(j, m)| (label("y", j), m)))
        .collect()
}

/// Terms of whole data through `<K_u, K_v>_F`: sample space forms each layer's centered `n x n`
/// Gram once; feature space forms `||U~^T V~||_F^2`, which is the same number.
fn whole_data_terms(ctx: &Context, xs: &[Matrix], ys: &[Matrix], route: Route, est: Estimator) -> Result<Terms> {
    let (n, nx, ny) = (xs[0].rows(), xs.len(), ys.len());
    let layers = labelled(xs, ys);
    // Self pairs first, then (x_i, y_j) row-major.
    let pairs: Vec<(usize, usize)> =
        (0..nx + ny).map(|u| (u, u)).chain((0..nx * ny).map(|k| (k / ny, nx + k % ny))).collect();
    // Only the debiased estimator needs the row norms; the traces are their sums.
    let row_norms = est == Estimator::Debiased;
    let with_traces = |g: CkaGramTerms| {
        let traces = g.norms.iter().map(|r| r.iter().sum()).collect();
        (g.inner, traces, g.norms)
    };
    let (inner, traces, norms): (Vec<f64>, Vec<f64>, Vec<Vec<f64>>) = match ctx.backend() {
        Backend::Cpu if route == Route::Feature => {
            let t = if wants_f64(xs, ys) {
                cpu::cka_feature_terms::<f64>(&layers, &pairs, row_norms)?
            } else {
                cpu::cka_feature_terms::<f32>(&layers, &pairs, row_norms)?
            };
            (t.inner, t.traces, t.norms)
        }
        Backend::Cpu if wants_f64(xs, ys) => with_traces(cpu::cka_gram_terms::<f64>(&layers, &pairs)?),
        Backend::Cpu => with_traces(cpu::cka_gram_terms::<f32>(&layers, &pairs)?),
        Backend::Cuda if route == Route::Feature => {
            with_traces(crate::backend::cuda::cka_feature_terms(ctx, &layers, &pairs, wants_f64(xs, ys))?)
        }
        Backend::Cuda => with_traces(crate::backend::cuda::cka_gram_terms(ctx, &layers, &pairs, wants_f64(xs, ys))?),
    };
    let pair = |k: usize| {
        let (u, v) = pairs[k];
        let row_norms_dot = if row_norms { norms[u].iter().zip(&norms[v]).map(|(a, b)| a * b).sum() } else { 0.0 };
        PairTerms { cross_fro2: inner[k], row_norms_dot }
    };
    Ok(Terms {
        n: n as u64,
        trace_x: traces[..nx].to_vec(),
        trace_y: traces[nx..].to_vec(),
        self_x: (0..nx).map(pair).collect(),
        self_y: (nx..nx + ny).map(pair).collect(),
        cross: (nx + ny..nx + ny + nx * ny).map(pair).collect(),
    })
}
