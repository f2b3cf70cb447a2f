//! [`CkaAccumulator`]: exact streaming linear CKA, its state export, import and merge.

use super::{check_same_rows, labelled, wants_f64, Estimator, PairTerms, Terms};
use crate::backend::cpu;
use crate::backend::{column_means, Backend, Context};
use crate::error::{fail, human_bytes, try_filled, try_with_capacity, Result};
use crate::tensor::{HostSlice, Matrix, Storage};
use rayon::prelude::*;

/// The most f64 values the additive moments may take (16 GiB). Layers wider than that (a
/// 131072-wide layer's Gram alone is 128 GiB) make the accumulator keep their samples instead
/// and compute in sample space at the end, as `tl_cka_linear` does for wide layers.
const MOMENT_LIMIT: u128 = 1 << 31;

/// The f64 values of the additive moments for these layer widths (x layers first): every
/// layer's Gram and every (x, y) cross product, their third moments and the column sums.
fn moment_values(widths: &[usize], nx: usize) -> u128 {
    let w: Vec<u128> = widths.iter().map(|&p| p as u128).collect();
    let pair = |u: usize, v: usize| w[u] * w[v] + w[u] + w[v] + 1;
    let selfs: u128 = (0..w.len()).map(|u| pair(u, u)).sum();
    let cross: u128 = (0..nx).flat_map(|i| (nx..w.len()).map(move |j| (i, j))).map(|(i, j)| pair(i, j)).sum();
    1 + 2 * w.iter().sum::<u128>() + w.len() as u128 + selfs + cross
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
/// Memory: `sum_i p_i^2 + sum_ij p_i q_j` f64 values (every layer's Gram and every cross
/// product). Where that passes 2^31 values (16 GiB), the accumulator keeps every sample instead
/// (`n x p` f64 values per layer, growing with the data) and computes in sample space at the end,
/// as [`super::cka_matrix`] does for wide layers; such a state is not additive, so export,
/// import and rebase refuse it (merge still works).
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
    /// For layers too wide for the moments: every sample seen, per layer, row-major
    /// `count x p`; `None` while the moments are kept.
    samples: Option<Vec<Vec<f64>>>,
}

impl CkaAccumulator {
    /// An empty accumulator for `nx` layers of x and `ny` layers of y.
    pub fn new(nx: usize, ny: usize, estimator: Estimator) -> Result<Self> {
        if nx == 0 || ny == 0 {
            fail!(InvalidArgument, "nx and ny must be positive (got {nx} and {ny})");
        }
        // Every layer and every pair gets state: the counts must be countable.
        if nx.checked_mul(ny).and_then(|pairs| pairs.checked_add(nx)).and_then(|n| n.checked_add(ny)).is_none() {
            fail!(InvalidArgument, "nx ({nx}) and ny ({ny}) are too many layers: nx x ny + nx + ny overflows size_t");
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
            samples: None,
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

    /// Whether the layers are too wide for additive moments (see the type's docs).
    pub fn keeps_samples(&self) -> bool {
        self.samples.is_some()
    }

    /// Fixes the layer widths and allocates the state: the moments, or (for layers too wide) the
    /// sample store. A failed allocation is an error, not an abort.
    fn init(&mut self, widths: Vec<usize>, shift: Vec<Vec<f64>>) -> Result<()> {
        let (nx, ny) = (self.nx, self.ny);
        if moment_values(&widths, nx) > MOMENT_LIMIT {
            self.samples = Some(vec![Vec::new(); widths.len()]);
            self.pairs = Vec::new();
            self.sum = Vec::new();
            self.sum_sq = Vec::new();
        } else {
            let what = "the accumulator's moments";
            let mut pairs = try_with_capacity(nx * ny + nx + ny, what)?;
            for (u, v) in (0..nx + ny).map(|u| (u, u)).chain((0..nx * ny).map(|k| (k / ny, nx + k % ny))) {
                pairs.push(PairMoments {
                    u,
                    v,
                    zw: try_filled(widths[u] * widths[v], 0.0, what)?,
                    ab: 0.0,
                    aw: try_filled(widths[v], 0.0, what)?,
                    bz: try_filled(widths[u], 0.0, what)?,
                });
            }
            self.pairs = pairs;
            self.sum = widths.iter().map(|&p| try_filled(p, 0.0, what)).collect::<Result<_>>()?;
            self.sum_sq = vec![0.0; widths.len()];
            self.samples = None;
        }
        self.widths = widths;
        self.shift = shift;
        self.count = 0.0;
        Ok(())
    }

    /// Fails for an accumulator that keeps samples: `what` needs additive moments.
    fn ensure_moments(&self, what: &str) -> Result<()> {
        if self.keeps_samples() {
            let bytes = moment_values(&self.widths, self.nx) * 8;
            fail!(
                InvalidArgument,
                "cannot {what}: the layers are too wide for additive moments ({} of them), so this accumulator keeps its samples, whose state is not additive; gather the samples and use one accumulator (or tl_cka_matrix)",
                human_bytes(bytes)
            );
        }
        Ok(())
    }

    /// Appends the batch's rows to the sample store, in f64 (exact for every input dtype).
    fn keep_samples(&mut self, layers: &[(String, &Matrix)]) -> Result<()> {
        let store = self.samples.as_mut().expect("keep_samples on an accumulator of moments");
        for ((name, m), kept) in layers.iter().zip(store.iter_mut()) {
            let (rows, cols, stride) = (m.rows(), m.cols(), m.row_stride());
            let slice = match m.storage() {
                Storage::Host(slice) => *slice,
                Storage::Device { .. } => fail!(
                    InvalidArgument,
                    "{name}: layers this wide are kept as samples in host memory; pass host matrices"
                ),
            };
            let added = rows * cols;
            kept.try_reserve(added).map_err(|_| {
                crate::Error::OutOfMemory(format!(
                    "{name}: could not keep {rows} more samples of {cols} features ({} more)",
                    human_bytes(added as u128 * 8)
                ))
            })?;
            macro_rules! append {
                ($data:expr) => {
                    for r in 0..rows {
                        kept.extend($data[r * stride..r * stride + cols].iter().map(|v| v.to_f64()));
                    }
                };
            }
            use crate::tensor::Element;
            match slice {
                HostSlice::F32(d) => append!(d),
                HostSlice::F64(d) => append!(d),
                HostSlice::F16(d) => append!(d),
                HostSlice::BF16(d) => append!(d),
            }
            if let Some(i) = kept[kept.len() - added..].iter().position(|v| !v.is_finite()) {
                let value = kept[kept.len() - added + i];
                kept.truncate(kept.len() - added);
                fail!(NonFinite, "{name} holds {value} at row {}, column {}", i / cols, i % cols);
            }
        }
        Ok(())
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
            self.init(layers.iter().map(|(_, m)| m.cols()).collect(), shift)?;
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
        if self.keeps_samples() {
            self.keep_samples(&layers)?;
            self.count += rows as f64;
            return Ok(());
        }
        self.accumulate(ctx, &layers, wants_f64(xs, ys))
    }

    /// Adds the moments of one batch, computed by the context's backend, to the f64 state;
    /// `f64_products` when any layer is stored in f64 (see `wants_f64`).
    fn accumulate(&mut self, ctx: &Context, layers: &[(String, &Matrix)], f64_products: bool) -> Result<()> {
        let batch = match ctx.backend() {
            Backend::Cpu if f64_products => cpu::cka_batch_moments::<f64>(layers, &self.shift, self.nx)?,
            Backend::Cpu => cpu::cka_batch_moments::<f32>(layers, &self.shift, self.nx)?,
            Backend::Cuda => crate::backend::cuda::cka_batch_moments(ctx, layers, &self.shift, self.nx, f64_products)?,
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
        self.ensure_moments("rebase")?;
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
        if let (Some(mine), Some(theirs)) = (self.samples.as_mut(), other.samples.as_ref()) {
            for (kept, more) in mine.iter_mut().zip(theirs) {
                kept.try_reserve(more.len()).map_err(|_| {
                    crate::Error::OutOfMemory(format!(
                        "could not keep the merged accumulator's samples ({} more)",
                        human_bytes(more.len() as u128 * 8)
                    ))
                })?;
                kept.extend_from_slice(more);
            }
            self.count += other.count;
            return Ok(());
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
    /// are fixed, and for an accumulator that keeps samples (it has no exportable state).
    pub fn state_len(&self) -> (usize, usize) {
        if self.widths.is_empty() || self.keeps_samples() {
            return (0, 0);
        }
        let shift: usize = self.widths.iter().sum();
        let moments = 1
            + shift
            + self.widths.len()
            + self.pairs.iter().map(|p| p.zw.len() + 1 + p.aw.len() + p.bz.len()).sum::<usize>();
        (shift, moments)
    }

    fn check_state_buffers(&self, what: &str, shift: usize, moments: usize) -> Result<()> {
        self.ensure_moments(what)?;
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
        self.check_state_buffers("export the state", shift.len(), moments.len())?;
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
        self.check_state_buffers("import a state", shift.len(), moments.len())?;
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
        let values = moment_values(widths, self.nx);
        if values > MOMENT_LIMIT {
            fail!(
                OutOfMemory,
                "widths ({} features in all): the additive state would take {}, more than the {} an accumulator keeps as moments; layers this wide keep their samples, and such a state cannot be imported",
                widths.iter().map(|&p| p as u128).sum::<u128>(),
                human_bytes(values * 8),
                human_bytes(MOMENT_LIMIT * 8)
            );
        }
        let shift = widths.iter().map(|&p| try_filled(p, 0.0, "the accumulator's shift")).collect::<Result<_>>()?;
        self.init(widths.to_vec(), shift)
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
        if let Some(store) = &self.samples {
            let n = self.count as usize;
            let views = store
                .iter()
                .zip(&self.widths)
                .map(|(data, &p)| Matrix::from_host(HostSlice::F64(data), n, p, p))
                .collect::<Result<Vec<_>>>()?;
            let (xs, ys) = views.split_at(self.nx);
            return super::cka_matrix(&Context::cpu(), xs, ys, self.estimator);
        }
        self.terms().cka(self.estimator)
    }
}
