//! [`MinibatchCka`]: the minibatch CKA estimator of Nguyen, Raghu and Kornblith (2021).

use super::{check_layers, label, labelled};
use crate::backend::cpu::{self, Real};
use crate::backend::{Backend, Context};
use crate::error::{fail, Result};
use crate::tensor::Matrix;
use faer::MatMut;

/// Copies the strict lower triangle of a square matrix onto its upper triangle.
fn mirror_lower<T: Real>(mut m: MatMut<T>) {
    for j in 1..m.ncols() {
        for i in 0..j {
            m[(i, j)] = m[(j, i)];
        }
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
            let (mut gram, _, _) = cpu::centered_gram::<f64>(x, &name)?;
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
            if self.sums[u].is_nan() || self.sums[u] <= 0.0 {
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

/// Minibatch CKA forms its Grams on the host only.
fn require_cpu(ctx: &Context, what: &str) -> Result<()> {
    match ctx.backend() {
        Backend::Cpu => Ok(()),
        Backend::Cuda => {
            fail!(DeviceUnavailable, "{what} runs on the CPU backend only; use a CPU context for it")
        }
    }
}
