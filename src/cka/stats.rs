//! How far to trust one CKA value (docs/analyses.md, section 1, "Uncertainty"): a bootstrap
//! interval over the samples, a permutation null, and the change of CKA when each sample is
//! left out. CPU only, for one pair of host layers `x` (`n x p`) and `y` (`n x q`), with either
//! estimator.
//!
//! All three start from copies of the layers centered at their exact column means, in f32 for
//! f32, f16 and bf16 data and in f64 for f64 data (as [`cka_matrix`](super::cka_matrix)
//! multiplies). Products are faer GEMMs; every sum that a result is formed from is f64.
//!
//! * [`bootstrap`]: samples are dealt into `m` blocks by a seeded shuffle; one pass over the
//!   data keeps, per pair of layers, the `m x m` table of inner products of the blocks' cross
//!   products and an `m x m x m` table for the centering cross term. A resample is a vector of
//!   integer block counts `w`, and its CKA is a few quadratic and cubic forms in `w` over the
//!   tables: exactly the CKA of the data with block `k` repeated `w_k` times, without forming a
//!   `p x q` product per resample. The interval is the percentile one or BCa, whose
//!   acceleration comes from the same tables with each block left out once.
//! * [`permutation_null`]: CKA of `x` against `y` with its rows permuted, `P` times; only the
//!   cross product changes, one GEMM per permutation.
//! * [`jackknife`]: the interval from the `n` leave-one-out values of [`influence`], centred on
//!   the bias-corrected estimate; the one that covers on wide layers.
//! * [`influence`]: leaving sample `i` out is a rank-one downdate of each centered product,
//!   `S' = S - n/(n-1) u~_i v~_i^T`, so every estimator's terms without `i` follow from a few
//!   per-sample numbers (`u~_i^T S v~_i`, the row norms, ...), for all `n` samples at the cost
//!   of three products more than the CKA.

use super::{check_min_samples, hsic, Estimator, PairTerms};
use crate::backend::cpu::cka::{column_stats, gram_lower, host_slice, product_scale};
use crate::backend::cpu::Real;
use crate::error::{fail, Result};
use crate::rng::block_words;
use crate::tensor::{DType, Element, HostSlice, Matrix};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// The most blocks the bootstrap deals the samples into when the caller does not choose: the
/// tables cost `m^2 (p^2 + q^2 + pq)` multiply-adds and each resample `3 m^3`, so 64 keeps
/// both well under the CKA's own cost at `n` in the thousands (see [`auto_blocks`]).
pub const MAX_AUTO_BLOCKS: usize = 64;

/// Philox streams of the random draws (see [`crate::rng`]): the shuffle into blocks, then one
/// stream per resample and per permutation, offset so that the uses never share a stream.
const SHUFFLE_STREAM: u64 = 0x5354_0000_0000_0000;
const RESAMPLE_STREAM: u64 = 0x5354_0001_0000_0000;
const PERMUTATION_STREAM: u64 = 0x5354_0002_0000_0000;

/// How a bootstrap interval is read off the resampled values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IntervalKind {
    /// The `(1 - level) / 2` and `(1 + level) / 2` quantiles of the resampled values.
    #[default]
    Percentile,
    /// Bias-corrected and accelerated (Efron 1987): the quantiles at levels moved by the
    /// fraction of resamples below the estimate (`bias_correction`) and by the skewness of the
    /// leave-one-block-out values (`acceleration`). Not the default: on wide layers the
    /// resamples' shift is partly an artifact of the repeated samples, which BCa takes for the
    /// estimator's bias and corrects the wrong way (docs/analyses.md, "Uncertainty").
    Bca,
}

/// A bootstrap interval of CKA.
#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapInterval {
    /// CKA of all the data (from the same tables, equal to [`cka_matrix`](super::cka_matrix) up
    /// to rounding).
    pub cka: f64,
    /// The interval's level, e.g. 0.95, and how it was formed.
    pub level: f64,
    pub kind: IntervalKind,
    /// The interval's ends: quantiles of the resampled CKA values (linear interpolation between
    /// order statistics), at `(1 -+ level) / 2` for [`IntervalKind::Percentile`], at the levels
    /// moved by `bias_correction` and `acceleration` for [`IntervalKind::Bca`].
    pub lower: f64,
    pub upper: f64,
    /// BCa's `z0 = Phi^-1(fraction of resamples below the estimate, ties counting half)`,
    /// the fraction kept within `[1/(2B), 1 - 1/(2B)]`; 0 when the resamples are centered on the
    /// estimate. Reported for both kinds.
    pub bias_correction: f64,
    /// BCa's `a = sum d^3 / (6 (sum d^2)^(3/2))` over the leave-one-block-out values' deviations
    /// `d` from their mean (0 if one of them is degenerate). Only for [`IntervalKind::Bca`]:
    /// the jackknife costs one evaluation over all blocks per block, which the percentile
    /// interval does not need.
    pub acceleration: Option<f64>,
    /// The standard deviation of the resampled values: the bootstrap standard error.
    pub std_error: f64,
    /// The resampled CKA values, in resample order.
    pub resamples: Vec<f64>,
    /// Resamples left out because a layer had no variance in them (or, debiased, a
    /// non-positive HSIC with itself): possible only at very small `n`.
    pub degenerate: usize,
    /// The number of blocks `m` the samples were dealt into, and the largest block's size
    /// (blocks differ by at most one sample).
    pub blocks: usize,
    pub block_size: usize,
}

/// The permutation null of CKA: `x` against `y` with its rows permuted.
#[derive(Debug, Clone, PartialEq)]
pub struct PermutationNull {
    /// CKA of the data as given.
    pub cka: f64,
    /// `(1 + #{null >= cka}) / (1 + P)`: one-sided, never 0.
    pub p_value: f64,
    /// The mean and standard deviation of the null values: at small `n` the biased estimator's
    /// null mean is far above 0, which is its bias.
    pub mean: f64,
    pub std: f64,
    /// The null values, in permutation order.
    pub values: Vec<f64>,
}

/// The change of CKA when each sample is left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Influence {
    /// CKA of all the data.
    pub cka: f64,
    /// `delta[i] = CKA(without sample i) - CKA(all)`.
    pub delta: Vec<f64>,
}

/// A jackknife interval of CKA: centred on the jackknife's bias-corrected estimate, with the
/// jackknife standard error (Efron and Tibshirani, "An Introduction to the Bootstrap", ch. 11),
/// from the `n` leave-one-out values of [`influence`]. Unlike the bootstrap intervals it covers
/// the population CKA at its level on wide layers as well as narrow ones (docs/analyses.md,
/// "Uncertainty"), and it needs no resamples and no seed. It removes the biased estimator's
/// bias of order `1/n`, not the `(p/n)^2` remainder, which at large `n` can exceed the
/// interval's width: on layers wide against `n`, pair it with the debiased estimator.
#[derive(Debug, Clone, PartialEq)]
pub struct JackknifeInterval {
    /// CKA of all the data.
    pub cka: f64,
    /// The interval's level, e.g. 0.95.
    pub level: f64,
    /// The bias-corrected estimate `n cka - (n - 1) mean_i CKA(without i)`: the estimator's bias
    /// of order `1/n` (large for the biased estimator on wide layers) taken out.
    pub estimate: f64,
    /// `estimate -+ Phi^-1((1 + level) / 2) std_error`.
    pub lower: f64,
    pub upper: f64,
    /// `sqrt((n - 1) / n sum_i (CKA(without i) - their mean)^2)`.
    pub std_error: f64,
}

impl Influence {
    /// The jackknife interval at `level` (strictly between 0 and 1) from these leave-one-out
    /// values.
    pub fn jackknife(&self, level: f64) -> Result<JackknifeInterval> {
        check_level(level)?;
        let n = self.delta.len() as f64;
        let mean = self.delta.iter().sum::<f64>() / n;
        let spread = self.delta.iter().map(|d| (d - mean) * (d - mean)).sum::<f64>();
        let std_error = ((n - 1.0) / n * spread).sqrt();
        let estimate = self.cka - (n - 1.0) * mean;
        let half_width = normal_quantile((1.0 + level) / 2.0) * std_error;
        Ok(JackknifeInterval {
            cka: self.cka,
            level,
            estimate,
            lower: estimate - half_width,
            upper: estimate + half_width,
            std_error,
        })
    }

    /// The `k` samples whose removal changes CKA most, as `(index, delta)`, largest `|delta|`
    /// first (ties by index).
    pub fn top(&self, k: usize) -> Vec<(usize, f64)> {
        let mut order: Vec<usize> = (0..self.delta.len()).collect();
        order.sort_by(|&a, &b| self.delta[b].abs().total_cmp(&self.delta[a].abs()).then(a.cmp(&b)));
        order.into_iter().take(k).map(|i| (i, self.delta[i])).collect()
    }
}

/// The blocks for `n` samples: every sample its own block (the exact sample bootstrap) up to
/// [`MAX_AUTO_BLOCKS`] samples, else that many blocks of `n / 64` samples or one more.
pub fn auto_blocks(n: usize) -> usize {
    n.min(MAX_AUTO_BLOCKS)
}

/// A bootstrap interval of CKA(x, y) of `kind` at `level` from `resamples` resamples of `blocks`
/// blocks of samples (0: [`auto_blocks`]). The blocks, the resamples and so the interval depend
/// only on `seed` and the data, not on the number of threads.
#[allow(clippy::too_many_arguments)]
pub fn bootstrap(
    x: &Matrix,
    y: &Matrix,
    estimator: Estimator,
    level: f64,
    kind: IntervalKind,
    resamples: usize,
    blocks: usize,
    seed: u64,
) -> Result<BootstrapInterval> {
    let n = check_pair(x, y, estimator)?;
    check_level(level)?;
    if resamples < 2 {
        fail!(InvalidArgument, "a bootstrap interval needs at least 2 resamples, got {resamples}");
    }
    if blocks > n {
        fail!(InvalidArgument, "{blocks} bootstrap blocks for {n} samples: at most one block per sample");
    }
    let m = if blocks == 0 { auto_blocks(n) } else { blocks };
    let order = shuffled(n, seed);
    if wants_f64(x, y) {
        bootstrap_typed::<f64>(x, y, estimator, (level, kind), resamples, m, seed, &order)
    } else {
        bootstrap_typed::<f32>(x, y, estimator, (level, kind), resamples, m, seed, &order)
    }
}

fn check_level(level: f64) -> Result<()> {
    if !(level > 0.0 && level < 1.0) {
        fail!(InvalidArgument, "the interval's level must lie strictly between 0 and 1, got {level}");
    }
    Ok(())
}

/// The jackknife interval of CKA(x, y) at `level`: [`influence`], then
/// [`Influence::jackknife`]. Needs one sample more than the estimator (3 biased, 5 debiased).
pub fn jackknife(x: &Matrix, y: &Matrix, estimator: Estimator, level: f64) -> Result<JackknifeInterval> {
    check_level(level)?;
    influence(x, y, estimator)?.jackknife(level)
}

/// The permutation null of CKA(x, y) from `permutations` row permutations of `y`, drawn from
/// `seed`.
pub fn permutation_null(
    x: &Matrix,
    y: &Matrix,
    estimator: Estimator,
    permutations: usize,
    seed: u64,
) -> Result<PermutationNull> {
    check_pair(x, y, estimator)?;
    if permutations == 0 {
        fail!(InvalidArgument, "a permutation null needs at least 1 permutation");
    }
    if wants_f64(x, y) {
        null_typed::<f64>(x, y, estimator, permutations, seed)
    } else {
        null_typed::<f32>(x, y, estimator, permutations, seed)
    }
}

/// The change of CKA(x, y) when each sample is left out, in closed form. Needs one sample more
/// than the estimator (3 biased, 5 debiased).
pub fn influence(x: &Matrix, y: &Matrix, estimator: Estimator) -> Result<Influence> {
    let n = check_pair(x, y, estimator)?;
    if n <= estimator.min_samples() {
        fail!(
            DegenerateInput,
            "leaving a sample out of {n} leaves too few for the {estimator:?} estimator, which needs {}",
            estimator.min_samples()
        );
    }
    if wants_f64(x, y) {
        influence_typed::<f64>(x, y, estimator)
    } else {
        influence_typed::<f32>(x, y, estimator)
    }
}

fn check_pair(x: &Matrix, y: &Matrix, estimator: Estimator) -> Result<usize> {
    let n = super::check_layers(std::slice::from_ref(x), std::slice::from_ref(y))?;
    check_min_samples(n, estimator)?;
    Ok(n)
}

fn wants_f64(x: &Matrix, y: &Matrix) -> bool {
    x.dtype() == DType::F64 || y.dtype() == DType::F64
}

/// A layer centered at its column means, scaled by a power of two into `T`'s comfortable range
/// (CKA does not change), rows in a given order, row-major.
struct Centered<T> {
    rows: usize,
    cols: usize,
    data: Vec<T>,
    /// Squared row norms of the stored values, in f64.
    norms: Vec<f64>,
}

impl<T: Real> Centered<T> {
    /// `order[r]` is the input row stored as row `r` (`None`: the input order).
    fn new(m: &Matrix, name: &str, order: Option<&[usize]>) -> Result<Self> {
        let (rows, cols, stride) = (m.rows(), m.cols(), m.row_stride());
        let stats = column_stats(m, name)?;
        if stats.trace <= 0.0 {
            fail!(DegenerateInput, "{name} has zero variance: every feature is constant over the samples");
        }
        let scale = if T::SCALES { product_scale::<T>(stats.trace / (rows * cols) as f64) } else { 1.0 };
        let mut data = vec![T::default(); rows * cols];
        let means = &stats.means;
        fn fill<E: Element, T: Real>(
            src: &[E],
            stride: usize,
            means: &[f64],
            scale: f64,
            order: Option<&[usize]>,
            data: &mut [T],
        ) {
            let cols = means.len();
            data.par_chunks_mut(cols.max(1)).enumerate().for_each(|(r, dst)| {
                let row = order.map_or(r, |o| o[r]);
                let src = &src[row * stride..row * stride + cols];
                for ((d, s), mu) in dst.iter_mut().zip(src).zip(means) {
                    *d = T::from_f64((s.to_f64() - mu) * scale);
                }
            });
        }
        match host_slice(m, name)? {
            HostSlice::F32(s) => fill(s, stride, means, scale, order, &mut data),
            HostSlice::F64(s) => fill(s, stride, means, scale, order, &mut data),
            HostSlice::F16(s) => fill(s, stride, means, scale, order, &mut data),
            HostSlice::BF16(s) => fill(s, stride, means, scale, order, &mut data),
        }
        let norms = data.par_chunks(cols.max(1)).map(|row| row.iter().map(|v| v.to_f64() * v.to_f64()).sum()).collect();
        Ok(Centered { rows, cols, data, norms })
    }

    fn mat(&self) -> MatRef<'_, T> {
        MatRef::from_row_major_slice(&self.data, self.rows, self.cols)
    }

    /// Row `i`.
    fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Rows `start..start + len`.
    fn rows_of(&self, start: usize, len: usize) -> MatRef<'_, T> {
        MatRef::from_row_major_slice(&self.data[start * self.cols..(start + len) * self.cols], len, self.cols)
    }

    fn trace(&self) -> f64 {
        self.norms.iter().sum()
    }
}

fn gemm<T: Real>(dst: MatMut<T>, a: MatRef<T>, b: MatRef<T>, par: Par) {
    faer::linalg::matmul::matmul(dst, Accum::Replace, a, b, T::one_impl(), par);
}

/// `a^T b` as a new column-major matrix.
fn cross<T: Real>(a: MatRef<T>, b: MatRef<T>) -> faer::Mat<T> {
    let mut out = faer::Mat::<T>::zeros(a.ncols(), b.ncols());
    gemm(out.as_mut(), a.transpose(), b, Par::rayon(0));
    out
}

/// `a^T a` as a new column-major matrix: its lower triangle by a triangular GEMM (half the
/// multiply-adds of [`cross`]), mirrored into the upper one.
fn gram<T: Real>(a: MatRef<T>) -> faer::Mat<T> {
    let p = a.ncols();
    let mut out = faer::Mat::<T>::zeros(p, p);
    gram_lower(out.as_mut(), a.transpose());
    for j in 1..p {
        for i in 0..j {
            out[(i, j)] = out[(j, i)];
        }
    }
    out
}

/// `||a||_F^2` in f64.
fn fro2<T: Real>(a: MatRef<T>) -> f64 {
    (0..a.ncols()).into_par_iter().map(|j| (0..a.nrows()).map(|i| a[(i, j)].to_f64().powi(2)).sum::<f64>()).sum()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A uniform integer in `0..bound` from a 64-bit draw (bias below `bound / 2^64`).
fn below(draw: u64, bound: usize) -> usize {
    ((draw as u128 * bound as u128) >> 64) as usize
}

/// The `i`-th 64-bit draw of a stream.
fn draw(seed: u64, stream: u64, i: u64) -> u64 {
    let w = block_words(seed, stream, i / 2);
    let (hi, lo) = if i.is_multiple_of(2) { (w[0], w[1]) } else { (w[2], w[3]) };
    ((hi as u64) << 32) | lo as u64
}

/// A uniformly random permutation of `0..n` (Fisher-Yates) from one stream.
fn permutation(n: usize, seed: u64, stream: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = below(draw(seed, stream, i as u64), i + 1);
        p.swap(i, j);
    }
    p
}

/// The order the bootstrap deals the samples into blocks in.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    permutation(n, seed, SHUFFLE_STREAM)
}

/// CKA from the terms of the three pairs, or `None` when a layer's HSIC with itself is not
/// positive.
fn cka_of(est: Estimator, n: f64, xy: PairTerms, xx: PairTerms, yy: PairTerms, tx: f64, ty: f64) -> Option<f64> {
    let hx = hsic(est, n, xx, tx, tx);
    let hy = hsic(est, n, yy, ty, ty);
    if !(tx > 0.0 && ty > 0.0 && hx > 0.0 && hy > 0.0) {
        return None;
    }
    let value = hsic(est, n, xy, tx, ty) / (hx.sqrt() * hy.sqrt());
    value.is_finite().then_some(value)
}

// ---------------------------------------------------------------------------------------------
// Bootstrap

/// Tables of one pair of layers `(u, v)` over `m` blocks, from which the pair's terms on any
/// resample follow (docs/analyses.md, section 1, "Uncertainty", for the algebra). `M_k` is
/// block `k`'s `sum u_i v_i^T`, `s_k` and `t_k` its column sums of `u` and `v`, `a_i = S^T u_i`
/// and `c_i = T^T v_i` with `S = [s_1 .. s_m]`, `T = [t_1 .. t_m]`.
struct PairTables {
    m: usize,
    /// `<M_k, M_l>_F`.
    blocks_inner: Vec<f64>,
    /// `[l][k][j] = sum_{i in l} a_i[k] c_i[j] = s_k^T M_l t_j`.
    centering: Vec<f64>,
    /// `s_k . s_l` and `t_k . t_l`.
    sums_u: Vec<f64>,
    sums_v: Vec<f64>,
    /// `[l][j] = sum_{i in l} |u_i|^2 c_i[j]` and `sum_{i in l} |v_i|^2 a_i[j]`.
    norm_u_c: Vec<f64>,
    norm_v_a: Vec<f64>,
    /// Per block: `sum |u_i|^2 |v_i|^2`, `sum |u_i|^2`, `sum |v_i|^2`.
    norms_uv: Vec<f64>,
    norms_u: Vec<f64>,
    norms_v: Vec<f64>,
}

/// The most elements of the buffer that holds the blocks' cross products of a chunk of
/// features (64 MiB of f32).
const PRODUCTS_BUFFER_ELEMENTS: usize = 1 << 24;

/// Work units of fixed size, so that what each unit sums, and so every result, does not depend
/// on the number of threads: rows of a layer per projection GEMM, and elements of each block's
/// products per Gram GEMM. Each unit is a single-threaded GEMM; the units run in parallel.
const PROJECTION_ROWS: usize = 1024;
const GRAM_ELEMENTS: usize = 1 << 15;

/// Block `k` of `n` samples in `m` blocks: `(start, len)`, the first `n % m` blocks one longer.
fn block_range(n: usize, m: usize, k: usize) -> (usize, usize) {
    let (base, extra) = (n / m, n % m);
    (k * base + k.min(extra), base + usize::from(k < extra))
}

/// What the bootstrap tables need of one layer, formed once and shared by the pairs the layer
/// is in: `sums[k]`, the sum of block `k`'s rows (f64), and `projections` (`n x m`, row-major):
/// `a_i = S^T u_i` with `S = [s_1 .. s_m]`.
struct LayerBlocks {
    sums: Vec<Vec<f64>>,
    projections: Vec<f64>,
}

impl LayerBlocks {
    fn new<T: Real>(u: &Centered<T>, m: usize) -> Self {
        let sums: Vec<Vec<f64>> = (0..m)
            .into_par_iter()
            .map(|k| {
                let (start, len) = block_range(u.rows, m, k);
                let mut s = vec![0.0f64; u.cols];
                for r in start..start + len {
                    for (acc, v) in s.iter_mut().zip(&u.data[r * u.cols..(r + 1) * u.cols]) {
                        *acc += v.to_f64();
                    }
                }
                s
            })
            .collect();
        let s = faer::Mat::<T>::from_fn(u.cols, m, |i, k| T::from_f64(sums[k][i]));
        let mut projections = vec![0.0f64; u.rows * m];
        projections.par_chunks_mut(PROJECTION_ROWS * m).enumerate().for_each(|(c, dst)| {
            let rows = dst.len() / m;
            let mut part = faer::Mat::<T>::zeros(rows, m);
            gemm(part.as_mut(), u.rows_of(c * PROJECTION_ROWS, rows), s.as_ref(), Par::Seq);
            dst.iter_mut().enumerate().for_each(|(e, d)| *d = part[(e / m, e % m)].to_f64());
        });
        LayerBlocks { sums, projections }
    }
}

/// `total += weight * a a^T` for `a` (`m x e`), one GEMM per [`GRAM_ELEMENTS`] columns, summed in
/// f64 in column order.
fn add_gram<T: Real>(total: &mut [f64], a: MatRef<T>, weight: f64) {
    let (m, e) = (a.nrows(), a.ncols());
    let parts: Vec<faer::Mat<T>> = (0..e.div_ceil(GRAM_ELEMENTS))
        .into_par_iter()
        .map(|s| {
            let part = a.subcols(s * GRAM_ELEMENTS, GRAM_ELEMENTS.min(e - s * GRAM_ELEMENTS));
            let mut g = faer::Mat::<T>::zeros(m, m);
            gemm(g.as_mut(), part, part.transpose(), Par::Seq);
            g
        })
        .collect();
    for g in parts {
        total.iter_mut().enumerate().for_each(|(idx, t)| *t += weight * g[(idx / m, idx % m)].to_f64());
    }
}

/// `G_kl = <M_k, M_l>_F` with `M_k = U_k^T V_k`, a chunk of `u`'s features at a time so that
/// the blocks' products of one chunk fit in a bounded buffer. Each block's product is one
/// single-threaded GEMM, the blocks in parallel. For a layer with itself (`symmetric`), `M_k`
/// is symmetric: a chunk of rows needs only the columns from its own first one on, the square
/// on the diagonal counting once and the rest twice (for its mirror), which halves the work.
fn blocks_inner<T: Real>(
    u: &Centered<T>,
    v: &Centered<T>,
    m: usize,
    symmetric: bool,
    buffer_elements: usize,
) -> Vec<f64> {
    let (p, q) = (u.cols, v.cols);
    let chunk = (buffer_elements / (m * q)).clamp(1, p);
    let mut products = vec![T::default(); m * chunk * q];
    let mut total = vec![0.0f64; m * m];
    for start in (0..p).step_by(chunk) {
        let width = chunk.min(p - start);
        let first_col = if symmetric { start } else { 0 };
        let (cols, len) = (q - first_col, width * (q - first_col));
        products[..m * len].par_chunks_mut(len).enumerate().for_each(|(k, dst)| {
            let (first, rows) = block_range(u.rows, m, k);
            gemm(
                MatMut::from_column_major_slice_mut(dst, width, cols),
                u.rows_of(first, rows).subcols(start, width).transpose(),
                v.rows_of(first, rows).subcols(first_col, cols),
                Par::Seq,
            );
        });
        let stacked = MatRef::from_row_major_slice(&products[..m * len], m, len);
        if symmetric {
            // Column-major: the square on the diagonal is the first `width` columns.
            let square = width * width;
            add_gram(&mut total, stacked.subcols(0, square), 1.0);
            add_gram(&mut total, stacked.subcols(square, len - square), 2.0);
        } else {
            add_gram(&mut total, stacked, 1.0);
        }
    }
    total
}

impl PairTables {
    /// The tables of `(u, v)`; `u` and `v` may be the same layer (then `lu` and `lv` too).
    fn new<T: Real>(u: &Centered<T>, lu: &LayerBlocks, v: &Centered<T>, lv: &LayerBlocks, m: usize) -> Self {
        let n = u.rows;
        let (a, c) = (&lu.projections, &lv.projections);
        let gram = |s: &[Vec<f64>]| -> Vec<f64> { (0..m * m).map(|e| dot(&s[e / m], &s[e % m])).collect() };
        // Per block l: the m x m sums of outer products a_i c_i^T, the norm-weighted sums of c_i
        // and a_i, and [sum |u|^2 |v|^2, sum |u|^2, sum |v|^2].
        type BlockSums = (Vec<f64>, Vec<f64>, Vec<f64>, [f64; 3]);
        let per_block: Vec<BlockSums> = (0..m)
            .into_par_iter()
            .map(|l| {
                let (start, len) = block_range(n, m, l);
                let (mut outer, mut nuc, mut nva, mut norms) = (vec![0.0; m * m], vec![0.0; m], vec![0.0; m], [0.0; 3]);
                for i in start..start + len {
                    let (ai, ci) = (&a[i * m..(i + 1) * m], &c[i * m..(i + 1) * m]);
                    let (ru, rv) = (u.norms[i], v.norms[i]);
                    for k in 0..m {
                        let row = &mut outer[k * m..(k + 1) * m];
                        row.iter_mut().zip(ci).for_each(|(o, cj)| *o += ai[k] * cj);
                        nuc[k] += ru * ci[k];
                        nva[k] += rv * ai[k];
                    }
                    norms[0] += ru * rv;
                    norms[1] += ru;
                    norms[2] += rv;
                }
                (outer, nuc, nva, norms)
            })
            .collect();
        PairTables {
            m,
            blocks_inner: blocks_inner(u, v, m, std::ptr::eq(u, v), PRODUCTS_BUFFER_ELEMENTS),
            centering: per_block.iter().flat_map(|b| b.0.iter().copied()).collect(),
            sums_u: gram(&lu.sums),
            sums_v: gram(&lv.sums),
            norm_u_c: per_block.iter().flat_map(|b| b.1.iter().copied()).collect(),
            norm_v_a: per_block.iter().flat_map(|b| b.2.iter().copied()).collect(),
            norms_uv: per_block.iter().map(|b| b.3[0]).collect(),
            norms_u: per_block.iter().map(|b| b.3[1]).collect(),
            norms_v: per_block.iter().map(|b| b.3[2]).collect(),
        }
    }

    /// The pair's terms and both traces on the data with block `k` repeated `w[k]` times
    /// (`total` samples); `support` lists the blocks with `w[k] > 0` (about 63% of them in a
    /// resample, so the cubic form costs a quarter of `m^3`).
    fn terms(&self, w: &[f64], support: &[usize], total: f64) -> (PairTerms, f64, f64) {
        let m = self.m;
        let quad = |t: &[f64]| -> f64 {
            support.iter().map(|&k| w[k] * support.iter().map(|&j| t[k * m + j] * w[j]).sum::<f64>()).sum()
        };
        let su2 = quad(&self.sums_u); // |sum of the resample's u rows|^2
        let sv2 = quad(&self.sums_v);
        let cubic: f64 = support.iter().map(|&l| w[l] * quad(&self.centering[l * m * m..(l + 1) * m * m])).sum();
        let cross_fro2 = quad(&self.blocks_inner) - 2.0 * cubic / total + su2 * sv2 / (total * total);
        let trace_u = dot(w, &self.norms_u) - su2 / total;
        let trace_v = dot(w, &self.norms_v) - sv2 / total;
        // r_u . r_v with r the squared norms of the rows centered at the resample's means.
        let (mu2, mv2) = (su2 / (total * total), sv2 / (total * total));
        let row_norms_dot = dot(w, &self.norms_uv) - 2.0 / total * (quad(&self.norm_u_c) + quad(&self.norm_v_a))
            + mv2 * dot(w, &self.norms_u)
            + mu2 * dot(w, &self.norms_v)
            + 4.0 * cubic / (total * total)
            - 3.0 * total * mu2 * mv2;
        (PairTerms { cross_fro2, row_norms_dot }, trace_u, trace_v)
    }
}

#[allow(clippy::too_many_arguments)]
fn bootstrap_typed<T: Real>(
    x: &Matrix,
    y: &Matrix,
    est: Estimator,
    (level, kind): (f64, IntervalKind),
    resamples: usize,
    m: usize,
    seed: u64,
    order: &[usize],
) -> Result<BootstrapInterval> {
    let n = x.rows();
    let xc = Centered::<T>::new(x, "x", Some(order))?;
    let yc = Centered::<T>::new(y, "y", Some(order))?;
    let (lx, ly) = (LayerBlocks::new(&xc, m), LayerBlocks::new(&yc, m));
    let xy = PairTables::new(&xc, &lx, &yc, &ly, m);
    let xx = PairTables::new(&xc, &lx, &xc, &lx, m);
    let yy = PairTables::new(&yc, &ly, &yc, &ly, m);
    let sizes: Vec<f64> = (0..m).map(|k| block_range(n, m, k).1 as f64).collect();
    let evaluate = |w: &[f64]| -> Option<f64> {
        let total = dot(w, &sizes);
        if total < est.min_samples() as f64 {
            return None;
        }
        let support: Vec<usize> = (0..m).filter(|&k| w[k] > 0.0).collect();
        let (txy, tx, ty) = xy.terms(w, &support, total);
        let (txx, _, _) = xx.terms(w, &support, total);
        let (tyy, _, _) = yy.terms(w, &support, total);
        cka_of(est, total, txy, txx, tyy, tx, ty)
    };
    let Some(cka) = evaluate(&vec![1.0; m]) else {
        fail!(
            DegenerateInput,
            "the {est:?} HSIC of a layer with itself is not positive (too few samples or too little variance)"
        );
    };
    let values: Vec<Option<f64>> = (0..resamples)
        .into_par_iter()
        .map(|b| {
            let mut w = vec![0.0f64; m];
            for i in 0..m {
                w[below(draw(seed, RESAMPLE_STREAM + b as u64, i as u64), m)] += 1.0;
            }
            evaluate(&w)
        })
        .collect();
    let resampled: Vec<f64> = values.iter().flatten().copied().collect();
    let degenerate = resamples - resampled.len();
    if resampled.len() < 2 {
        fail!(DegenerateInput, "{degenerate} of {resamples} bootstrap resamples have a layer without variance: too few samples for an interval");
    }
    // The jackknife over the resampling unit, the block: each block left out once.
    let acceleration = (kind == IntervalKind::Bca).then(|| {
        let left_out: Option<Vec<f64>> = (0..m)
            .into_par_iter()
            .map(|k| {
                let mut w = vec![1.0; m];
                w[k] = 0.0;
                evaluate(&w)
            })
            .collect();
        left_out.map_or(0.0, |v| skewness_acceleration(&v))
    });
    let bias_correction = median_bias(&resampled, cka);
    let mut sorted = resampled.clone();
    sorted.sort_by(f64::total_cmp);
    let (_, std) = mean_std(&resampled);
    let (lower_prob, upper_prob) = match kind {
        IntervalKind::Percentile => ((1.0 - level) / 2.0, (1.0 + level) / 2.0),
        IntervalKind::Bca => {
            let a = acceleration.unwrap_or(0.0);
            (
                bca_level(normal_quantile((1.0 - level) / 2.0), bias_correction, a),
                bca_level(normal_quantile((1.0 + level) / 2.0), bias_correction, a),
            )
        }
    };
    Ok(BootstrapInterval {
        cka,
        level,
        kind,
        lower: quantile(&sorted, lower_prob),
        upper: quantile(&sorted, upper_prob),
        bias_correction,
        acceleration,
        std_error: std,
        resamples: resampled,
        degenerate,
        blocks: m,
        block_size: n.div_ceil(m),
    })
}

/// BCa's `z0`: the normal quantile of the fraction of `values` below `estimate` (ties half),
/// kept within `[1/(2B), 1 - 1/(2B)]` so that it stays finite.
fn median_bias(values: &[f64], estimate: f64) -> f64 {
    let b = values.len() as f64;
    let below = values
        .iter()
        .map(|&v| {
            if v < estimate {
                1.0
            } else if v == estimate {
                0.5
            } else {
                0.0
            }
        })
        .sum::<f64>();
    normal_quantile((below / b).clamp(0.5 / b, 1.0 - 0.5 / b))
}

/// BCa's acceleration from jackknife values: `sum d^3 / (6 (sum d^2)^(3/2))` with `d` the
/// deviations of the mean from each value (0 when they are all equal).
fn skewness_acceleration(jackknife: &[f64]) -> f64 {
    let mean = jackknife.iter().sum::<f64>() / jackknife.len() as f64;
    let (s2, s3) = jackknife.iter().fold((0.0, 0.0), |(s2, s3), v| {
        let d = mean - v;
        (s2 + d * d, s3 + d * d * d)
    });
    if s2 > 0.0 {
        s3 / (6.0 * s2.powf(1.5))
    } else {
        0.0
    }
}

/// The probability at which BCa reads the quantile that the percentile interval reads at
/// `Phi(z)`: `Phi(z0 + (z0 + z) / (1 - a (z0 + z)))`, where a non-positive denominator is the
/// formula's limit (the smallest or largest resample).
fn bca_level(z: f64, z0: f64, a: f64) -> f64 {
    let t = z0 + z;
    let denominator = 1.0 - a * t;
    if denominator <= 0.0 {
        return if t > 0.0 { 1.0 } else { 0.0 };
    }
    normal_cdf(z0 + t / denominator)
}

/// The standard normal distribution function, from `Phi(z) = 1/2 + phi(z) sum_k z^(2k+1) /
/// (1 3 5 ... (2k+1))`, whose terms all have the sign of `z` (no cancellation): about 1e-15
/// absolute error, which is what probability levels need. 0 and 1 beyond 9 (below 1e-18 away).
fn normal_cdf(z: f64) -> f64 {
    if z.abs() > 9.0 {
        return if z > 0.0 { 1.0 } else { 0.0 };
    }
    let (mut term, mut sum) = (z, z);
    let mut k = 1.0;
    while term.abs() > 1e-17 * sum.abs() {
        term *= z * z / (2.0 * k + 1.0);
        sum += term;
        k += 1.0;
    }
    let density = (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
    (0.5 + density * sum).clamp(0.0, 1.0)
}

/// The standard normal quantile of `prob` in `(0, 1)`, by bisection of [`normal_cdf`] on
/// `[-9, 9]` (100 halvings reach f64 resolution).
fn normal_quantile(prob: f64) -> f64 {
    let (mut lo, mut hi) = (-9.0f64, 9.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < prob {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The `prob` quantile of sorted values, interpolating linearly between order statistics.
fn quantile(sorted: &[f64], prob: f64) -> f64 {
    let pos = prob * (sorted.len() - 1) as f64;
    let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + frac * (sorted[hi] - sorted[lo])
}

/// Mean and sample standard deviation (0 for one value).
fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

// ---------------------------------------------------------------------------------------------
// Permutation null

fn null_typed<T: Real>(
    x: &Matrix,
    y: &Matrix,
    est: Estimator,
    permutations: usize,
    seed: u64,
) -> Result<PermutationNull> {
    let n = x.rows();
    let (xc, yc) = (Centered::<T>::new(x, "x", None)?, Centered::<T>::new(y, "y", None)?);
    let (tx, ty) = (xc.trace(), yc.trace());
    let self_terms = |c: &Centered<T>| PairTerms {
        cross_fro2: fro2(cross(c.mat(), c.mat()).as_ref()),
        row_norms_dot: dot(&c.norms, &c.norms),
    };
    let (xx, yy) = (self_terms(&xc), self_terms(&yc));
    let nf = n as f64;
    let cka_against = |yrows: &Centered<T>| -> Result<f64> {
        let xy = PairTerms {
            cross_fro2: fro2(cross(xc.mat(), yrows.mat()).as_ref()),
            row_norms_dot: dot(&xc.norms, &yrows.norms),
        };
        match cka_of(est, nf, xy, xx, yy, tx, ty) {
            Some(v) => Ok(v),
            None => fail!(
                DegenerateInput,
                "the {est:?} HSIC of a layer with itself is not positive (too few samples or too little variance)"
            ),
        }
    };
    let cka = cka_against(&yc)?;
    let mut permuted =
        Centered { rows: n, cols: yc.cols, data: vec![T::default(); yc.data.len()], norms: vec![0.0; n] };
    let mut values = Vec::with_capacity(permutations);
    for k in 0..permutations {
        let perm = permutation(n, seed, PERMUTATION_STREAM + k as u64);
        let q = yc.cols;
        permuted.data.par_chunks_mut(q.max(1)).zip(permuted.norms.par_iter_mut()).enumerate().for_each(
            |(r, (dst, norm))| {
                dst.copy_from_slice(&yc.data[perm[r] * q..(perm[r] + 1) * q]);
                *norm = yc.norms[perm[r]];
            },
        );
        values.push(cka_against(&permuted)?);
    }
    let (mean, std) = mean_std(&values);
    let exceed = values.iter().filter(|&&v| v >= cka).count();
    Ok(PermutationNull { cka, p_value: (1 + exceed) as f64 / (1 + permutations) as f64, mean, std, values })
}

// ---------------------------------------------------------------------------------------------
// Influence

/// The terms of one pair `(u, v)`: the pair's `PairTerms` and the traces of `u` and `v`.
type TermsAndTraces = (PairTerms, f64, f64);

/// The terms of one pair `(u, v)` on all the data, and with sample `i` left out for every `i`.
fn leave_one_out<T: Real>(u: &Centered<T>, v: &Centered<T>) -> (TermsAndTraces, Vec<TermsAndTraces>) {
    let n = u.rows;
    let nf = n as f64;
    // p x q; a layer with itself (the same operand) is a Gram, formed from one triangle.
    let s = if std::ptr::eq(u, v) { gram(u.mat()) } else { cross(u.mat(), v.mat()) };
    let f = fro2(s.as_ref());
    // (U~ S)^T, q x n: column i (row i of U~ S) is contiguous for the per-sample sums below.
    let mut us_t = faer::Mat::<T>::zeros(v.cols, n);
    gemm(us_t.as_mut(), s.as_ref().transpose(), u.mat().transpose(), Par::rayon(0));
    // U~^T r_v and V~^T r_u, for the row norms' cross terms.
    let weighted = |c: &Centered<T>, r: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0f64; c.cols];
        for (row, ri) in c.data.chunks(c.cols).zip(r) {
            out.iter_mut().zip(row).for_each(|(o, v)| *o += v.to_f64() * ri);
        }
        out
    };
    let (u_rv, v_ru) = (weighted(u, &v.norms), weighted(v, &u.norms));
    let (d, tu, tv) = (dot(&u.norms, &v.norms), u.trace(), v.trace());
    let grow = nf / (nf - 1.0);
    // `a . b` in f64 for a row of stored values.
    let dot_row = |a: &[T], b: &[f64]| -> f64 { a.iter().zip(b).map(|(x, y)| x.to_f64() * y).sum() };
    let without = (0..n)
        .into_par_iter()
        .map(|i| {
            let (ui, vi) = (u.row(i), v.row(i));
            // u~_i^T S v~_i.
            let us_i = us_t.col(i).try_as_col_major().expect("column-major product").as_slice();
            let z: f64 = us_i.iter().zip(vi).map(|(a, b)| a.to_f64() * b.to_f64()).sum();
            let (ru, rv) = (u.norms[i], v.norms[i]);
            let (gu, gv) = (dot_row(ui, &u_rv), dot_row(vi, &v_ru));
            let cross_fro2 = f - 2.0 * grow * z + grow * grow * ru * rv;
            // The rows stay centered at the new means: each moves by delta = u~_i / (n - 1).
            let k = nf - 1.0;
            let row_norms_dot = d
                + 2.0 * (gu + gv) / k
                + (rv * tu + ru * tv) / (k * k)
                + 4.0 * z / (k * k)
                + nf * ru * rv / (k * k * k * k)
                - ru * rv * grow.powi(4);
            (PairTerms { cross_fro2, row_norms_dot }, tu - grow * ru, tv - grow * rv)
        })
        .collect();
    ((PairTerms { cross_fro2: f, row_norms_dot: d }, tu, tv), without)
}

fn influence_typed<T: Real>(x: &Matrix, y: &Matrix, est: Estimator) -> Result<Influence> {
    let n = x.rows();
    let (xc, yc) = (Centered::<T>::new(x, "x", None)?, Centered::<T>::new(y, "y", None)?);
    let ((whole_xy, tx, ty), xy) = leave_one_out(&xc, &yc);
    let ((whole_xx, _, _), xx) = leave_one_out(&xc, &xc);
    let ((whole_yy, _, _), yy) = leave_one_out(&yc, &yc);
    let Some(cka) = cka_of(est, n as f64, whole_xy, whole_xx, whole_yy, tx, ty) else {
        fail!(
            DegenerateInput,
            "the {est:?} HSIC of a layer with itself is not positive (too few samples or too little variance)"
        );
    };
    let delta = (0..n)
        .map(|i| {
            let (pxy, tx, ty) = xy[i];
            // Without sample i a layer can lose all its variance (n = 3, say).
            match cka_of(est, (n - 1) as f64, pxy, xx[i].0, yy[i].0, tx, ty) {
                Some(v) => Ok(v - cka),
                None => {
                    fail!(DegenerateInput, "without sample {i}, a layer's {est:?} HSIC with itself is not positive")
                }
            }
        })
        .collect::<Result<_>>()?;
    Ok(Influence { cka, delta })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n x cols` values from a stream, with an offset so that centering matters.
    fn data(n: usize, cols: usize, stream: u64) -> Vec<f64> {
        (0..n * cols).map(|i| crate::rng::normal(7, stream, i as u64) + 3.0).collect()
    }

    /// The pair's terms on the rows of `u`, `v` (given order) with block `k` repeated `w[k]`
    /// times, computed directly.
    fn direct(u: &Centered<f64>, v: &Centered<f64>, m: usize, w: &[usize]) -> (f64, f64, f64, f64) {
        let rows = |c: &Centered<f64>| -> Vec<Vec<f64>> {
            let mut out = Vec::new();
            for (k, &copies) in w.iter().enumerate() {
                let (start, len) = block_range(c.rows, m, k);
                for _ in 0..copies {
                    out.extend((start..start + len).map(|r| c.data[r * c.cols..(r + 1) * c.cols].to_vec()));
                }
            }
            let total = out.len() as f64;
            let mean: Vec<f64> = (0..c.cols).map(|j| out.iter().map(|r| r[j]).sum::<f64>() / total).collect();
            out.iter().map(|r| r.iter().zip(&mean).map(|(a, b)| a - b).collect()).collect()
        };
        let (ur, vr) = (rows(u), rows(v));
        let mut fro = 0.0;
        for a in 0..u.cols {
            for b in 0..v.cols {
                let s: f64 = ur.iter().zip(&vr).map(|(x, y)| x[a] * y[b]).sum();
                fro += s * s;
            }
        }
        let norm = |r: &Vec<f64>| r.iter().map(|e| e * e).sum::<f64>();
        let d = ur.iter().zip(&vr).map(|(x, y)| norm(x) * norm(y)).sum();
        (fro, d, ur.iter().map(norm).sum(), vr.iter().map(norm).sum())
    }

    #[test]
    fn resample_terms_equal_the_terms_of_the_repeated_data() {
        let (n, p, q, m) = (23, 3, 5, 7);
        let (xd, yd) = (data(n, p, 1), data(n, q, 2));
        let x = Matrix::contiguous(&xd, n, p).unwrap();
        let y = Matrix::contiguous(&yd, n, q).unwrap();
        let (xc, yc) = (Centered::<f64>::new(&x, "x", None).unwrap(), Centered::<f64>::new(&y, "y", None).unwrap());
        for (u, v) in [(&xc, &yc), (&xc, &xc)] {
            let (lu, lv) = (LayerBlocks::new(u, m), LayerBlocks::new(v, m));
            let tables = PairTables::new(u, &lu, v, &lv, m);
            for w in [
                vec![1, 1, 1, 1, 1, 1, 1],
                vec![0, 3, 1, 0, 2, 0, 1],
                vec![7, 0, 0, 0, 0, 0, 0],
                vec![0, 0, 2, 2, 0, 3, 0],
            ] {
                let wf: Vec<f64> = w.iter().map(|&c| c as f64).collect();
                let total: f64 = (0..m).map(|k| (w[k] * block_range(n, m, k).1) as f64).sum();
                let support: Vec<usize> = (0..m).filter(|&k| w[k] > 0).collect();
                let (terms, tu, tv) = tables.terms(&wf, &support, total);
                let (fro, d, du, dv) = direct(u, v, m, &w);
                for (got, want) in [(terms.cross_fro2, fro), (terms.row_norms_dot, d), (tu, du), (tv, dv)] {
                    assert!((got - want).abs() <= 1e-10 * want.abs().max(1.0), "w {w:?}: {got} != {want}");
                }
            }
        }
    }

    #[test]
    fn chunked_block_products_equal_one_chunk_and_the_symmetric_half() {
        let (n, p, q, m) = (30, 9, 4, 5);
        let (xd, yd) = (data(n, p, 3), data(n, q, 4));
        let x = Matrix::contiguous(&xd, n, p).unwrap();
        let y = Matrix::contiguous(&yd, n, q).unwrap();
        let (xc, yc) = (Centered::<f64>::new(&x, "x", None).unwrap(), Centered::<f64>::new(&y, "y", None).unwrap());
        for (u, v) in [(&xc, &yc), (&xc, &xc)] {
            let whole = blocks_inner(u, v, m, false, PRODUCTS_BUFFER_ELEMENTS);
            // Chunks of 2 features, then of 1 (the buffer is smaller than one row of products);
            // a layer with itself also through the symmetric half.
            for buffer in [2 * m * v.cols, 1, PRODUCTS_BUFFER_ELEMENTS] {
                for symmetric in [false, std::ptr::eq(u, v)] {
                    let chunked = blocks_inner(u, v, m, symmetric, buffer);
                    for (a, b) in chunked.iter().zip(&whole) {
                        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} != {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn normal_distribution_function_and_quantile() {
        // Reference values of Phi to 16 digits.
        for (z, want) in
            [(0.0, 0.5), (-1.0, 0.15865525393145705), (1.959963984540054, 0.975), (-3.0, 0.0013498980316301)]
        {
            assert!((normal_cdf(z) - want).abs() < 1e-14, "Phi({z}) = {} != {want}", normal_cdf(z));
        }
        for prob in [1e-6, 0.025, 0.3, 0.5, 0.975, 1.0 - 1e-6] {
            assert!((normal_cdf(normal_quantile(prob)) - prob).abs() < 1e-15, "{prob}");
        }
        assert!((normal_quantile(0.975) - 1.959963984540054).abs() < 1e-12);
        // No correction: BCa reads the percentile levels.
        assert!((bca_level(normal_quantile(0.025), 0.0, 0.0) - 0.025).abs() < 1e-14);
        assert_eq!(skewness_acceleration(&[0.3, 0.3]), 0.0);
    }

    #[test]
    fn permutations_are_uniform_enough_and_blocks_cover_the_samples() {
        let mut first = [0usize; 5];
        for k in 0..5000 {
            let p = permutation(5, 3, k);
            let mut sorted = p.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
            first[p[0]] += 1;
        }
        // 1000 expected per value; 5 sigma is about 140.
        assert!(first.iter().all(|&c| (860..=1140).contains(&c)), "{first:?}");
        for (n, m) in [(10, 3), (64, 64), (100, 64), (7, 1)] {
            let mut next = 0;
            for k in 0..m {
                let (start, len) = block_range(n, m, k);
                assert_eq!(start, next);
                assert!(len == n / m || len == n / m + 1);
                next += len;
            }
            assert_eq!(next, n);
        }
    }
}
