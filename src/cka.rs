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

use crate::backend::cpu::{self, Real};
use crate::backend::{column_means, Backend, CkaGramTerms, Context};
use crate::error::{fail, Result};
use crate::tensor::{DType, Matrix};
use faer::MatMut;
use rayon::prelude::*;

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
            if trace <= 0.0 {
                fail!(DegenerateInput, "{name}[{i}] has zero variance: every feature is constant over the samples");
            }
            let h = hsic(est, n, pair, trace, trace);
            if !(h > 0.0) {
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
            let value = hsic(est, n, pair, self.trace_x[i], self.trace_y[j]) / (hx[i] * hy[j]).sqrt();
            if !value.is_finite() {
                fail!(Panic, "CKA of x[{i}] and y[{j}] evaluated to {value} from finite, non-degenerate input");
            }
            out.push(value);
        }
        Ok(out)
    }
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

fn require_cpu(ctx: &Context, what: &str) -> Result<()> {
    match ctx.backend() {
        Backend::Cpu => Ok(()),
        Backend::Cuda => {
            fail!(DeviceUnavailable, "{what} runs on the CPU backend only; use a CPU context for it")
        }
    }
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

/// Adds the symmetric `p x p` matrix whose lower triangle is that of the column-major `lower`
/// to the column-major `dst`.
fn add_symmetric_from_lower(dst: &mut [f64], lower: &[f64], p: usize) {
    for j in 0..p {
        let column = &lower[j * p..(j + 1) * p];
        for i in j..p {
            let v = column[i];
            dst[j * p + i] += v;
            if i != j {
                dst[i * p + j] += v;
            }
        }
    }
}

/// Copies the strict lower triangle of a square matrix onto its upper triangle.
fn mirror_lower<T: Real>(mut m: MatMut<T>) {
    for j in 1..m.ncols() {
        for i in 0..j {
            m[(i, j)] = m[(j, i)];
        }
    }
}

/// The moments of one pair of layers `(u, v)`, relative to the accumulator's shifts: with `z`
/// a shifted row of `u`, `w` the same row of `v`, `a = |z|^2`, `b = |w|^2`.
#[derive(Debug, Clone, PartialEq)]
struct PairMoments {
    u: usize,
    v: usize,
    /// `sum z w^T`, column-major `p_u x p_v` (the layout of the GEMM results it sums).
    zw: Vec<f64>,
    /// `sum a b`.
    ab: f64,
    /// `sum a w` (length `p_v`).
    aw: Vec<f64>,
    /// `sum b z` (length `p_u`).
    bz: Vec<f64>,
}

/// Exact streaming linear CKA of every (x, y) pair of layers.
///
/// Feeding batches gives the same result as the concatenated data (up to rounding), whatever
/// the batch sizes, one row included. The first update fixes each layer's feature count and a
/// per-feature *shift* (the first batch's column means; a column constant in that batch is
/// shifted by its exact value); moments are accumulated in f64 relative to it, so that data
/// with a large offset keeps its precision.
///
/// State for all-reduce across processes: [`CkaAccumulator::export`] writes the shift and the
/// moments as flat f64 buffers. Moments are additive only between accumulators with the same
/// shift, so the protocol is: every process updates; one broadcasts its shift; every process
/// calls [`CkaAccumulator::rebase`] with it; the moment buffers are summed (all-reduce); every
/// process imports (shift, summed moments). Within one process, [`CkaAccumulator::merge`] does
/// all of this.
///
/// Memory: `sum_i p_i^2 + sum_ij p_i q_j` f64 values (every layer's Gram and every cross product).
#[derive(Debug, Clone)]
pub struct CkaAccumulator {
    estimator: Estimator,
    nx: usize,
    ny: usize,
    /// Feature count of each layer (x layers, then y layers); empty until the first update.
    widths: Vec<usize>,
    shift: Vec<Vec<f64>>,
    count: f64,
    /// `sum z` per layer.
    sum: Vec<Vec<f64>>,
    /// `sum |z|^2` per layer.
    sum_sq: Vec<f64>,
    /// Self pairs `(u, u)` for every layer, then `(x_i, y_j)` row-major.
    pairs: Vec<PairMoments>,
}

impl CkaAccumulator {
    /// An empty accumulator for `nx` layers of x and `ny` layers of y.
    pub fn new(nx: usize, ny: usize, estimator: Estimator) -> Result<Self> {
        if nx == 0 || ny == 0 {
            fail!(InvalidArgument, "nx and ny must be positive (got {nx} and {ny})");
        }
        Ok(CkaAccumulator {
            estimator,
            nx,
            ny,
            widths: Vec::new(),
            shift: Vec::new(),
            count: 0.0,
            sum: Vec::new(),
            sum_sq: Vec::new(),
            pairs: Vec::new(),
        })
    }

    pub fn estimator(&self) -> Estimator {
        self.estimator
    }

    /// The number of x layers and of y layers.
    pub fn layer_counts(&self) -> (usize, usize) {
        (self.nx, self.ny)
    }

    /// Samples seen so far.
    pub fn count(&self) -> u64 {
        self.count as u64
    }

    /// Layer feature counts (x layers then y layers), fixed by the first update; empty before.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    fn init(&mut self, widths: Vec<usize>, shift: Vec<Vec<f64>>) {
        let (nx, ny) = (self.nx, self.ny);
        let layer_pairs = (0..nx + ny).map(|u| (u, u)).chain((0..nx * ny).map(|k| (k / ny, nx + k % ny)));
        self.pairs = layer_pairs
            .map(|(u, v)| PairMoments {
                u,
                v,
                zw: vec![0.0; widths[u] * widths[v]],
                ab: 0.0,
                aw: vec![0.0; widths[v]],
                bz: vec![0.0; widths[u]],
            })
            .collect();
        self.sum = widths.iter().map(|&p| vec![0.0; p]).collect();
        self.sum_sq = vec![0.0; widths.len()];
        self.widths = widths;
        self.shift = shift;
        self.count = 0.0;
    }

    /// Adds a batch: `xs[i]` and `ys[j]` hold the same rows (samples) of each layer. A batch of
    /// zero rows is a no-op.
    pub fn update(&mut self, ctx: &Context, xs: &[Matrix], ys: &[Matrix]) -> Result<()> {
        if xs.len() != self.nx || ys.len() != self.ny {
            fail!(
                ShapeMismatch,
                "the accumulator was made for {} x layers and {} y layers, the batch has {} and {}",
                self.nx,
                self.ny,
                xs.len(),
                ys.len()
            );
        }
        let rows = xs[0].rows();
        check_same_rows(xs, ys, rows)?;
        let layers = labelled(xs, ys);
        if self.widths.is_empty() {
            if rows == 0 {
                return Ok(());
            }
            let shift = layers.iter().map(|(name, m)| column_means(ctx, m, name)).collect::<Result<Vec<_>>>()?;
            self.init(layers.iter().map(|(_, m)| m.cols()).collect(), shift);
        } else {
            for (u, (name, m)) in layers.iter().enumerate() {
                if m.cols() != self.widths[u] {
                    fail!(
                        ShapeMismatch,
                        "{name} has {} features, but the first update fixed it at {}",
                        m.cols(),
                        self.widths[u]
                    );
                }
            }
            if rows == 0 {
                return Ok(());
            }
        }
        self.accumulate(ctx, &layers, wants_f64(xs, ys))
    }

    /// Adds the moments of one batch, computed by the context's backend, to the f64 state.
    fn accumulate(&mut self, ctx: &Context, layers: &[(String, &Matrix)], wide: bool) -> Result<()> {
        let batch = match ctx.backend() {
            Backend::Cpu if wide => cpu::cka_batch_moments::<f64>(layers, &self.shift, self.nx)?,
            Backend::Cpu => cpu::cka_batch_moments::<f32>(layers, &self.shift, self.nx)?,
            Backend::Cuda => crate::backend::cuda::cka_batch_moments(ctx, layers, &self.shift, self.nx, wide)?,
        };
        let (nl, nx, widths) = (layers.len(), self.nx, &self.widths);
        let offsets = batch.offsets(widths, nx);
        let px: usize = widths[..nx].iter().sum();
        let (norms, third) = (&batch.norms, &batch.third);
        for pair in self.pairs.iter_mut() {
            let (u, v) = (pair.u, pair.v);
            let (pu, pv) = (widths[u], widths[v]);
            if u == v {
                add_symmetric_from_lower(&mut pair.zw, &batch.grams_lower[u], pu);
            } else {
                // Block (x_u, y_v) of the column-major px x py cross product.
                pair.zw.par_chunks_mut(pu).enumerate().for_each(|(j, column)| {
                    let start = (offsets[v] + j) * px + offsets[u];
                    let src = &batch.cross[start..start + pu];
                    column.iter_mut().zip(src).for_each(|(out, s)| *out += s);
                });
            }

            pair.ab += norms[u].iter().zip(&norms[v]).map(|(a, b)| a * b).sum::<f64>();
            // third[v] is column-major p_v x (nl + 1): column u holds sum a_u w_v.
            pair.aw.iter_mut().zip(&third[v][u * pv..(u + 1) * pv]).for_each(|(out, t)| *out += t);
            pair.bz.iter_mut().zip(&third[u][v * pu..(v + 1) * pu]).for_each(|(out, t)| *out += t);
        }
        for u in 0..nl {
            let p = widths[u];
            self.sum[u].iter_mut().zip(&third[u][nl * p..(nl + 1) * p]).for_each(|(acc, t)| *acc += t);
            self.sum_sq[u] += norms[u].iter().sum::<f64>();
        }
        self.count += batch.rows as f64;
        Ok(())
    }

    /// Re-expresses the moments relative to a new shift (exactly, up to rounding); later
    /// updates use it too. `shift` holds every layer's features, x layers then y layers.
    pub fn rebase(&mut self, shift: &[f64]) -> Result<()> {
        if self.widths.is_empty() {
            fail!(InvalidArgument, "the accumulator has no data yet: its first update fixes the layer shapes");
        }
        let total: usize = self.widths.iter().sum();
        if shift.len() != total {
            fail!(ShapeMismatch, "shift has {} values, the layers have {total} features in all", shift.len());
        }
        if let Some(i) = shift.iter().position(|v| !v.is_finite()) {
            fail!(NonFinite, "shift[{i}] is {}", shift[i]);
        }
        // Moving the shift from c to c' adds d = c - c' to every shifted row.
        let mut new_shift = Vec::with_capacity(self.widths.len());
        let mut delta = Vec::with_capacity(self.widths.len());
        let mut start = 0;
        for (u, &p) in self.widths.iter().enumerate() {
            let target = &shift[start..start + p];
            delta.push(self.shift[u].iter().zip(target).map(|(c, t)| c - t).collect::<Vec<f64>>());
            new_shift.push(target.to_vec());
            start += p;
        }
        self.translate(&delta);
        self.shift = new_shift;
        Ok(())
    }

    /// Adds `delta[u]` to every accumulated row of layer `u` (the shift moves by `-delta`).
    ///
    /// With `a' = |z + d|^2 = a + 2 z.d + |d|^2`, every moment of the moved rows is a polynomial
    /// in the old moments; the updates below are those polynomials, term by term.
    fn translate(&mut self, delta: &[Vec<f64>]) {
        let n = self.count;
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let old_sum = self.sum.clone();
        let old_sum_sq = self.sum_sq.clone();
        let dd: Vec<f64> = delta.iter().map(|d| dot(d, d)).collect();
        let ds: Vec<f64> = (0..delta.len()).map(|u| dot(&delta[u], &old_sum[u])).collect();
        for pair in self.pairs.iter_mut() {
            let (u, v) = (pair.u, pair.v);
            let (pu, pv) = (self.widths[u], self.widths[v]);
            let (du, dv) = (&delta[u], &delta[v]);
            let (su, sv) = (&old_sum[u], &old_sum[v]);
            // M^T d_u and M d_v, from the old second moments.
            let mt_du: Vec<f64> = (0..pv).map(|j| dot(&pair.zw[j * pu..(j + 1) * pu], du)).collect();
            let mut m_dv = vec![0.0; pu];
            for (j, column) in pair.zw.chunks(pu).enumerate() {
                m_dv.iter_mut().zip(column).for_each(|(acc, m)| *acc += m * dv[j]);
            }
            // sum a'_u a'_v.
            pair.ab += 2.0 * dot(&pair.aw, dv)
                + 2.0 * dot(&pair.bz, du)
                + 4.0 * dot(du, &m_dv)
                + dd[v] * old_sum_sq[u]
                + dd[u] * old_sum_sq[v]
                + 2.0 * dd[v] * ds[u]
                + 2.0 * dd[u] * ds[v]
                + n * dd[u] * dd[v];
            // sum a'_u w'_v with w' = w + d_v.
            for j in 0..pv {
                pair.aw[j] +=
                    old_sum_sq[u] * dv[j] + 2.0 * mt_du[j] + 2.0 * ds[u] * dv[j] + dd[u] * sv[j] + n * dd[u] * dv[j];
            }
            // sum b'_v z'_u, the mirror image.
            for i in 0..pu {
                pair.bz[i] +=
                    old_sum_sq[v] * du[i] + 2.0 * m_dv[i] + 2.0 * ds[v] * du[i] + dd[v] * su[i] + n * dd[v] * du[i];
            }
            // sum z'_u w'_v^T = M + s_u d_v^T + d_u s_v^T + n d_u d_v^T.
            for (j, column) in pair.zw.chunks_mut(pu).enumerate() {
                for (i, m) in column.iter_mut().enumerate() {
                    *m += su[i] * dv[j] + du[i] * sv[j] + n * du[i] * dv[j];
                }
            }
        }
        for u in 0..delta.len() {
            self.sum_sq[u] += 2.0 * ds[u] + n * dd[u];
            for (s, d) in self.sum[u].iter_mut().zip(&delta[u]) {
                *s += n * d;
            }
        }
    }

    /// Adds the moments of `other` (same layer shapes) to this accumulator.
    pub fn merge(&mut self, other: &CkaAccumulator) -> Result<()> {
        if (self.nx, self.ny) != (other.nx, other.ny) {
            fail!(
                ShapeMismatch,
                "cannot merge an accumulator of {} x {} layers into one of {} x {}",
                other.nx,
                other.ny,
                self.nx,
                self.ny
            );
        }
        if other.widths.is_empty() {
            return Ok(());
        }
        if self.widths.is_empty() {
            let estimator = self.estimator;
            *self = other.clone();
            self.estimator = estimator;
            return Ok(());
        }
        if self.widths != other.widths {
            fail!(
                ShapeMismatch,
                "layer feature counts differ: {:?} here, {:?} in the merged accumulator",
                self.widths,
                other.widths
            );
        }
        let mut other = other.clone();
        other.rebase(&self.shift.concat())?;
        self.count += other.count;
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        self.sum_sq.iter_mut().zip(&other.sum_sq).for_each(|(x, y)| *x += y);
        for (a, b) in self.pairs.iter_mut().zip(&other.pairs) {
            a.ab += b.ab;
            a.zw.iter_mut().zip(&b.zw).for_each(|(x, y)| *x += y);
            a.aw.iter_mut().zip(&b.aw).for_each(|(x, y)| *x += y);
            a.bz.iter_mut().zip(&b.bz).for_each(|(x, y)| *x += y);
        }
        Ok(())
    }

    /// Lengths of the two export buffers: `(shift, moments)`; `(0, 0)` before the layer shapes
    /// are fixed.
    pub fn state_len(&self) -> (usize, usize) {
        if self.widths.is_empty() {
            return (0, 0);
        }
        let shift: usize = self.widths.iter().sum();
        let moments = 1
            + shift
            + self.widths.len()
            + self.pairs.iter().map(|p| p.zw.len() + 1 + p.aw.len() + p.bz.len()).sum::<usize>();
        (shift, moments)
    }

    fn check_state_buffers(&self, shift: usize, moments: usize) -> Result<()> {
        let (ls, lm) = self.state_len();
        if ls == 0 {
            fail!(
                InvalidArgument,
                "the accumulator's layer shapes are not fixed yet: update it once (or set its widths) first"
            );
        }
        if shift != ls || moments != lm {
            fail!(ShapeMismatch, "state buffers must hold {ls} and {lm} values, got {shift} and {moments}");
        }
        Ok(())
    }

    /// Writes the shift and the moments. The moments buffer is additive between accumulators
    /// with equal shifts (see the type's docs); its first value is the sample count.
    pub fn export(&self, shift: &mut [f64], moments: &mut [f64]) -> Result<()> {
        self.check_state_buffers(shift.len(), moments.len())?;
        shift.copy_from_slice(&self.shift.concat());
        let mut out = Vec::with_capacity(moments.len());
        out.push(self.count);
        self.sum.iter().for_each(|s| out.extend_from_slice(s));
        out.extend_from_slice(&self.sum_sq);
        for p in &self.pairs {
            out.extend_from_slice(&p.zw);
            out.push(p.ab);
            out.extend_from_slice(&p.aw);
            out.extend_from_slice(&p.bz);
        }
        moments.copy_from_slice(&out);
        Ok(())
    }

    /// Replaces the state with an exported one. The layer shapes must already be fixed (by an
    /// update, or by [`CkaAccumulator::set_widths`]).
    pub fn import(&mut self, shift: &[f64], moments: &[f64]) -> Result<()> {
        self.check_state_buffers(shift.len(), moments.len())?;
        if let Some(i) = shift.iter().position(|v| !v.is_finite()) {
            fail!(NonFinite, "shift[{i}] is {}", shift[i]);
        }
        if let Some(i) = moments.iter().position(|v| !v.is_finite()) {
            fail!(NonFinite, "moments[{i}] is {}", moments[i]);
        }
        if moments[0] < 0.0 || moments[0].fract() != 0.0 {
            fail!(InvalidArgument, "moments[0] is the sample count, a non-negative integer; got {}", moments[0]);
        }
        let mut rest = moments;
        let mut take = |k: usize| -> Vec<f64> {
            let (head, tail) = rest.split_at(k);
            rest = tail;
            head.to_vec()
        };
        self.count = take(1)[0];
        let widths = self.widths.clone();
        self.sum = widths.iter().map(|&p| take(p)).collect();
        self.sum_sq = take(widths.len());
        for p in self.pairs.iter_mut() {
            p.zw = take(p.zw.len());
            p.ab = take(1)[0];
            p.aw = take(p.aw.len());
            p.bz = take(p.bz.len());
        }
        let mut start = 0;
        for (u, &p) in widths.iter().enumerate() {
            self.shift[u] = shift[start..start + p].to_vec();
            start += p;
        }
        Ok(())
    }

    /// Fixes the layer feature counts (x layers then y layers) of an accumulator that has seen
    /// no data, so that a state can be imported into it.
    pub fn set_widths(&mut self, widths: &[usize]) -> Result<()> {
        if !self.widths.is_empty() {
            fail!(InvalidArgument, "the layer shapes are already fixed");
        }
        if widths.len() != self.nx + self.ny {
            fail!(
                ShapeMismatch,
                "widths has {} entries, the accumulator has {} layers",
                widths.len(),
                self.nx + self.ny
            );
        }
        if let Some(u) = widths.iter().position(|&p| p == 0) {
            fail!(InvalidArgument, "widths[{u}] is 0: every layer needs at least one feature");
        }
        let shift = widths.iter().map(|&p| vec![0.0; p]).collect();
        self.init(widths.to_vec(), shift);
        Ok(())
    }

    /// The terms of every pair, re-centered at the exact column means.
    fn terms(&self) -> Terms {
        let mut centered = self.clone();
        if self.count > 0.0 {
            let minus_mean: Vec<Vec<f64>> =
                self.sum.iter().map(|s| s.iter().map(|v| -v / self.count).collect()).collect();
            centered.translate(&minus_mean);
        }
        // A layer whose every row equals the shift is constant: exactly zero variance, which
        // rounding in the re-centering must not turn into a tiny positive value.
        for (u, t) in centered.sum_sq.iter_mut().enumerate() {
            if self.sum_sq[u] == 0.0 {
                *t = 0.0;
            }
        }
        let pair_terms =
            |p: &PairMoments| PairTerms { cross_fro2: p.zw.iter().map(|v| v * v).sum(), row_norms_dot: p.ab };
        let (nx, ny) = (self.nx, self.ny);
        let (selfs, cross) = centered.pairs.split_at(nx + ny);
        Terms {
            n: self.count as u64,
            trace_x: centered.sum_sq[..nx].to_vec(),
            trace_y: centered.sum_sq[nx..].to_vec(),
            self_x: selfs[..nx].iter().map(pair_terms).collect(),
            self_y: selfs[nx..].iter().map(pair_terms).collect(),
            cross: cross.iter().map(pair_terms).collect(),
        }
    }

    /// CKA of every (x, y) pair from the data seen so far, row-major `nx x ny`.
    pub fn result(&self) -> Result<Vec<f64>> {
        if self.count == 0.0 {
            fail!(DegenerateInput, "the accumulator has seen no samples");
        }
        self.terms().cka(self.estimator)
    }
}

/// Minibatch CKA (Nguyen, Raghu, Kornblith 2021): the weighted mean over batches of the
/// unbiased `HSIC_1` of each batch's Grams, `CKA = HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L))`.
///
/// With `K = X X^T`, `L = Y Y^T` of a batch of `m >= 4` rows and `K'`, `L'` their copies with a
/// zeroed diagonal:
/// `HSIC_1 = [tr(K'L') + (1^T K' 1)(1^T L' 1)/((m-1)(m-2)) - 2/(m-2) 1^T K' L' 1] / (m(m-3))`.
/// `HSIC_1` does not change when a constant is added to the features, so each batch is centered
/// first, which keeps data with large offsets precise. Every batch has weight 1 unless given
/// another with [`MinibatchCka::update_weighted`] (e.g. its row count).
#[derive(Debug, Clone)]
pub struct MinibatchCka {
    nx: usize,
    ny: usize,
    weight: f64,
    /// Weighted sums of HSIC_1: x self terms, y self terms, then (x, y) pairs row-major.
    sums: Vec<f64>,
}

impl MinibatchCka {
    pub fn new(nx: usize, ny: usize) -> Result<Self> {
        if nx == 0 || ny == 0 {
            fail!(InvalidArgument, "nx and ny must be positive (got {nx} and {ny})");
        }
        Ok(MinibatchCka { nx, ny, weight: 0.0, sums: vec![0.0; nx + ny + nx * ny] })
    }

    /// Adds a batch with weight 1.
    pub fn update(&mut self, ctx: &Context, xs: &[Matrix], ys: &[Matrix]) -> Result<()> {
        self.update_weighted(ctx, xs, ys, 1.0)
    }

    /// Adds a batch of at least 4 rows with the given positive weight.
    pub fn update_weighted(&mut self, ctx: &Context, xs: &[Matrix], ys: &[Matrix], weight: f64) -> Result<()> {
        require_cpu(ctx, "minibatch CKA")?;
        if !(weight > 0.0 && weight.is_finite()) {
            fail!(InvalidArgument, "weight must be positive and finite, got {weight}");
        }
        if xs.len() != self.nx || ys.len() != self.ny {
            fail!(
                ShapeMismatch,
                "expected {} x layers and {} y layers, got {} and {}",
                self.nx,
                self.ny,
                xs.len(),
                ys.len()
            );
        }
        let m = check_layers(xs, ys)?;
        if m < 4 {
            fail!(DegenerateInput, "a minibatch needs at least 4 rows for HSIC_1, got {m}");
        }
        // Batches are small: centered Grams in f64 with zeroed diagonals, each formed once.
        let mut grams = Vec::with_capacity(xs.len() + ys.len());
        for (name, x) in labelled(xs, ys) {
            let (mut gram, _) = cpu::centered_gram::<f64>(x, &name)?;
            mirror_lower(gram.as_mut());
            for i in 0..m {
                gram[(i, i)] = 0.0;
            }
            let row_sums: Vec<f64> = (0..m).map(|i| (0..m).map(|j| gram[(i, j)]).sum()).collect();
            grams.push((gram, row_sums));
        }
        let mf = m as f64;
        let hsic1 = |u: usize, v: usize| -> f64 {
            let (k, k1) = &grams[u];
            let (l, l1) = &grams[v];
            let trace = cpu::frobenius_dot(k.as_ref(), l.as_ref());
            let (sk, sl): (f64, f64) = (k1.iter().sum(), l1.iter().sum());
            let kl = k1.iter().zip(l1).map(|(a, b)| a * b).sum::<f64>();
            (trace + sk * sl / ((mf - 1.0) * (mf - 2.0)) - 2.0 / (mf - 2.0) * kl) / (mf * (mf - 3.0))
        };
        let (nx, ny) = (self.nx, self.ny);
        for u in 0..nx + ny {
            self.sums[u] += weight * hsic1(u, u);
        }
        for k in 0..nx * ny {
            self.sums[nx + ny + k] += weight * hsic1(k / ny, nx + k % ny);
        }
        self.weight += weight;
        Ok(())
    }

    /// CKA of every (x, y) pair, row-major.
    pub fn result(&self) -> Result<Vec<f64>> {
        if self.weight == 0.0 {
            fail!(DegenerateInput, "no batch has been added");
        }
        let (nx, ny) = (self.nx, self.ny);
        for u in 0..nx + ny {
            if !(self.sums[u] > 0.0) {
                let name = if u < nx { label("x", u) } else { label("y", u - nx) };
                fail!(
                    DegenerateInput,
                    "{name}: the mean HSIC_1 of the layer with itself is {:e}, not positive",
                    self.sums[u] / self.weight
                );
            }
        }
        Ok((0..nx * ny).map(|k| self.sums[nx + ny + k] / (self.sums[k / ny] * self.sums[nx + k % ny]).sqrt()).collect())
    }
}

/// Minibatch CKA of `x` and `y` over consecutive batches of `batch_size` rows, each of weight 1;
/// a final partial batch is used when it has at least 4 rows and dropped otherwise.
pub fn minibatch_cka(ctx: &Context, x: &Matrix, y: &Matrix, batch_size: usize) -> Result<f64> {
    let n = check_layers(std::slice::from_ref(x), std::slice::from_ref(y))?;
    if batch_size < 4 {
        fail!(InvalidArgument, "batch_size must be at least 4, got {batch_size}");
    }
    let mut acc = MinibatchCka::new(1, 1)?;
    let mut start = 0;
    while start < n {
        let rows = batch_size.min(n - start);
        if rows >= 4 {
            acc.update(ctx, &[x.row_range(start, rows)?], &[y.row_range(start, rows)?])?;
        }
        start += rows;
    }
    acc.result().map(|v| v[0])
}
