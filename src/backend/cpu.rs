//! CPU primitives: conversion with a shift, Gram and cross products through faer's GEMM on all
//! cores, and the f64 reductions the analyses are built from.
//!
//! Dense work buffers hold the *transpose* of a batch: a column-major `features x rows` matrix
//! whose column `k` is sample `k`. Converting a row-major input is then a streaming copy (row `k`
//! of the input becomes contiguous column `k`), and faer's GEMM reads either orientation.

use super::{CkaBatchMoments, CkaGramTerms};
use crate::error::{fail, Result};
use crate::tensor::{Element, HostSlice, Matrix, Storage};
use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// The arithmetic type of the dense products: f32 for f32/f16/bf16 data, f64 for f64 data.
pub trait Real: Element + faer::traits::RealField + Copy + Default {
    fn from_f64(v: f64) -> Self;
}
impl Real for f32 {
    #[inline]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}
impl Real for f64 {
    #[inline]
    fn from_f64(v: f64) -> Self {
        v
    }
}

fn par() -> Par {
    Par::rayon(0)
}

/// Rows per parallel work item in streaming loops: big enough to amortise scheduling.
fn rows_per_task(cols: usize) -> usize {
    (16384 / cols.max(1)).max(1)
}

/// The host slice of a view, or an error for device memory (served by the CUDA backend).
pub(crate) fn host_slice<'a>(m: &Matrix<'a>, name: &str) -> Result<HostSlice<'a>> {
    match m.storage() {
        Storage::Host(s) => Ok(*s),
        Storage::Device { device, .. } => fail!(
            InvalidArgument,
            "{name}: the matrix lives in the memory of CUDA device {device}, but this context runs on the CPU; create the context with TL_BACKEND_CUDA"
        ),
    }
}

/// Calls `f` with the row `r` of `m` as a typed slice.
macro_rules! with_rows {
    ($slice:expr, |$rows:ident| $body:expr) => {
        match $slice {
            HostSlice::F32($rows) => $body,
            HostSlice::F64($rows) => $body,
            HostSlice::F16($rows) => $body,
            HostSlice::BF16($rows) => $body,
        }
    };
}

/// Column means of `m` in f64, for centering. A column whose entries are all equal gets its
/// exact value rather than a rounded mean, so that centering gives exact zeros there and a
/// constant layer is recognised as having no variance. Rejects NaN and Inf, naming the first
/// position found.
pub(crate) fn column_means(m: &Matrix, name: &str) -> Result<Vec<f64>> {
    let (rows, cols, stride) = (m.rows(), m.cols(), m.row_stride());
    if rows == 0 {
        fail!(DegenerateInput, "{name} has 0 rows (samples)");
    }
    let slice = host_slice(m, name)?;
    let first = with_rows!(slice, |data| data[..cols].iter().map(|v| v.to_f64()).collect::<Vec<_>>());
    // Branch-free, so that the loop vectorises: a NaN or Inf makes its column's sum non-finite
    // (found afterwards, on the slow path); a column differing from its first value "varies".
    let chunk = rows_per_task(cols);
    let (sum, varies) = with_rows!(slice, |data| {
        (0..rows.div_ceil(chunk))
            .into_par_iter()
            .map(|t| {
                let (mut sum, mut varies) = (vec![0.0f64; cols], vec![false; cols]);
                for r in t * chunk..((t + 1) * chunk).min(rows) {
                    let row = &data[r * stride..r * stride + cols];
                    for (((s, d), &v), &f) in sum.iter_mut().zip(varies.iter_mut()).zip(row).zip(&first) {
                        let v = v.to_f64();
                        *s += v;
                        *d |= v != f;
                    }
                }
                (sum, varies)
            })
            .reduce_with(|(mut sa, mut va), (sb, vb)| {
                sa.iter_mut().zip(&sb).for_each(|(a, b)| *a += b);
                va.iter_mut().zip(&vb).for_each(|(a, b)| *a |= b);
                (sa, va)
            })
            .expect("rows > 0")
    });
    if sum.iter().any(|s| !s.is_finite()) {
        return Err(first_non_finite(m, name));
    }
    Ok((0..cols).map(|c| if varies[c] { sum[c] / rows as f64 } else { first[c] }).collect())
}

/// The error for a matrix known to hold a NaN or an Inf (or values whose sum overflows),
/// naming the first such position in row order.
fn first_non_finite(m: &Matrix, name: &str) -> crate::Error {
    let (cols, stride) = (m.cols(), m.row_stride());
    let found = host_slice(m, name).ok().and_then(|slice| {
        with_rows!(slice, |data| (0..m.rows()).find_map(|r| {
            data[r * stride..r * stride + cols]
                .iter()
                .position(|v| !v.to_f64().is_finite())
                .map(|c| (r, c, data[r * stride + c].to_f64()))
        }))
    });
    match found {
        Some((r, c, v)) => crate::Error::NonFinite(format!("{name} holds {v} at row {r}, column {c}")),
        None => {
            crate::Error::NonFinite(format!("{name}: its values are too large: sums over the samples overflow f64"))
        }
    }
}

/// Writes `(row - shift)` of every row of `m` into columns `0..rows` of the column-major block
/// `out` (leading dimension `ld`, starting at feature offset `offset`), converted to `T`, and
/// returns each row's squared norm in f64. Rejects NaN and Inf.
pub(crate) fn write_shifted_transpose<T: Real>(
    m: &Matrix,
    name: &str,
    shift: &[f64],
    out: &mut [T],
    ld: usize,
    offset: usize,
) -> Result<Vec<f64>> {
    let (rows, cols, stride) = (m.rows(), m.cols(), m.row_stride());
    debug_assert!(shift.len() == cols && offset + cols <= ld && out.len() >= rows * ld);
    let slice = host_slice(m, name)?;
    let mut norms = vec![0.0f64; rows];
    with_rows!(slice, |data| {
        out[..rows * ld].par_chunks_mut(ld).zip(norms.par_iter_mut()).enumerate().for_each(|(r, (dst, norm))| {
            let src = &data[r * stride..r * stride + cols];
            let dst = &mut dst[offset..offset + cols];
            // Eight partial sums and no branch, so that the loop vectorises; a NaN or Inf
            // makes the norm non-finite and is located afterwards.
            const LANES: usize = 8;
            let mut acc = [0.0f64; LANES];
            let split = cols - cols % LANES;
            for ((d, s), c) in dst[..split]
                .chunks_exact_mut(LANES)
                .zip(src[..split].chunks_exact(LANES))
                .zip(shift[..split].chunks_exact(LANES))
            {
                for l in 0..LANES {
                    let z = T::from_f64(s[l].to_f64() - c[l]);
                    d[l] = z;
                    let z = z.to_f64();
                    acc[l] += z * z;
                }
            }
            let mut total: f64 = acc.iter().sum();
            for ((d, s), c) in dst[split..].iter_mut().zip(&src[split..]).zip(&shift[split..]) {
                let z = T::from_f64(s.to_f64() - c);
                *d = z;
                total += z.to_f64() * z.to_f64();
            }
            *norm = total;
        })
    });
    if norms.iter().any(|n| !n.is_finite()) {
        return Err(first_non_finite(m, name));
    }
    Ok(norms)
}

/// `a * b^T` for column-major `a` (m x k) and `b` (n x k), into `dst` (m x n), replacing it.
pub(crate) fn cross_product<T: Real>(dst: MatMut<T>, a: MatRef<T>, b: MatRef<T>) {
    faer::linalg::matmul::matmul(dst, Accum::Replace, a, b.transpose(), T::one_impl(), par());
}

/// `a * b` into `dst`, replacing it.
pub(crate) fn product<T: Real>(dst: MatMut<T>, a: MatRef<T>, b: MatRef<T>) {
    faer::linalg::matmul::matmul(dst, Accum::Replace, a, b, T::one_impl(), par());
}

/// The lower triangle (diagonal included) of `a * a^T` into `dst`, replacing it; the strict
/// upper triangle of `dst` is left untouched.
pub(crate) fn gram_lower<T: Real>(dst: MatMut<T>, a: MatRef<T>) {
    faer::linalg::matmul::triangular::matmul(
        dst,
        BlockStructure::TriangularLower,
        Accum::Replace,
        a,
        BlockStructure::Rectangular,
        a.transpose(),
        BlockStructure::Rectangular,
        T::one_impl(),
        par(),
    );
}

/// `sum_ij (a_ij * b_ij)` in f64 over full matrices.
pub(crate) fn frobenius_dot<T: Real>(a: MatRef<T>, b: MatRef<T>) -> f64 {
    debug_assert!(a.nrows() == b.nrows() && a.ncols() == b.ncols());
    (0..a.ncols())
        .into_par_iter()
        .map(|j| (0..a.nrows()).map(|i| a[(i, j)].to_f64() * b[(i, j)].to_f64()).sum::<f64>())
        .sum()
}

/// The moments of one batch for a CKA accumulator (see [`CkaBatchMoments`]): every layer is
/// shifted and converted to `T` into one `features x rows` buffer for the x layers and one for
/// the y layers, so that all cross products are one GEMM.
pub(crate) fn cka_batch_moments<T: Real>(
    layers: &[(String, &Matrix)],
    shifts: &[Vec<f64>],
    nx: usize,
) -> Result<CkaBatchMoments> {
    let rows = layers[0].1.rows();
    let nl = layers.len();
    let widths: Vec<usize> = layers.iter().map(|(_, m)| m.cols()).collect();
    let mut moments = CkaBatchMoments { rows, ..Default::default() };
    let offsets = moments.offsets(&widths, nx);
    let (px, py): (usize, usize) = (widths[..nx].iter().sum(), widths[nx..].iter().sum());
    let mut bx = vec![T::default(); px * rows];
    let mut by = vec![T::default(); py * rows];
    for (u, (name, m)) in layers.iter().enumerate() {
        let (buf, ld) = if u < nx { (&mut bx, px) } else { (&mut by, py) };
        moments.norms.push(write_shifted_transpose::<T>(m, name, &shifts[u], buf, ld, offsets[u])?);
    }
    let xt = MatRef::from_column_major_slice(&bx, px, rows);
    let yt = MatRef::from_column_major_slice(&by, py, rows);
    let block = |u: usize| -> MatRef<T> {
        if u < nx {
            xt.subrows(offsets[u], widths[u])
        } else {
            yt.subrows(offsets[u], widths[u])
        }
    };

    // Second moments: all cross products at once, and each layer's Gram (lower triangle).
    let mut cross = faer::Mat::<T>::zeros(px, py);
    cross_product(cross.as_mut(), xt, yt);
    moments.cross = to_f64_column_major(cross.as_ref());
    moments.grams_lower = (0..nl)
        .map(|u| {
            let mut g = faer::Mat::<T>::zeros(widths[u], widths[u]);
            gram_lower(g.as_mut(), block(u));
            to_f64_column_major(g.as_ref())
        })
        .collect();

    // Third moments `sum a_u w_v` for every (u, v), and the column sums, as one product per
    // layer v with the stacked squared row norms and a column of ones.
    let mut norms_t: Vec<T> = moments.norms.iter().flat_map(|n| n.iter().map(|&a| T::from_f64(a))).collect();
    norms_t.extend(std::iter::repeat_n(T::one_impl(), rows));
    let norms_mat = MatRef::from_column_major_slice(&norms_t, rows, nl + 1);
    moments.third = (0..nl)
        .map(|v| {
            let mut t = faer::Mat::<T>::zeros(widths[v], nl + 1);
            product(t.as_mut(), block(v), norms_mat);
            to_f64_column_major(t.as_ref())
        })
        .collect();
    Ok(moments)
}

/// A dense column-major f64 copy.
fn to_f64_column_major<T: Real>(m: MatRef<T>) -> Vec<f64> {
    let rows = m.nrows();
    let mut out = vec![0.0; rows * m.ncols()];
    out.par_chunks_mut(rows.max(1)).enumerate().for_each(|(j, column)| {
        let src = m.col(j);
        column.iter_mut().enumerate().for_each(|(i, o)| *o = src[i].to_f64());
    });
    out
}

/// The centered `n x n` Gram of one layer (lower triangle; the strict upper triangle is zero)
/// and the squared row norms of the centered layer, in f64.
pub(crate) fn centered_gram<T: Real>(m: &Matrix, name: &str) -> Result<(faer::Mat<T>, Vec<f64>)> {
    let n = m.rows();
    let means = column_means(m, name)?;
    let mut buffer = vec![T::default(); n * m.cols()];
    let norms = write_shifted_transpose::<T>(m, name, &means, &mut buffer, m.cols(), 0)?;
    let zt = MatRef::from_column_major_slice(&buffer, m.cols(), n);
    let mut gram = faer::Mat::<T>::zeros(n, n);
    gram_lower(gram.as_mut(), zt.transpose());
    Ok((gram, norms))
}

/// `<A, B>_F` in f64 for symmetric matrices given by their lower triangles.
pub(crate) fn symmetric_inner<T: Real>(a: MatRef<T>, b: MatRef<T>) -> f64 {
    (0..a.ncols())
        .into_par_iter()
        .map(|j| {
            let (ca, cb) = (a.col(j), b.col(j));
            let diagonal = ca[j].to_f64() * cb[j].to_f64();
            let below: f64 = (j + 1..a.nrows()).map(|i| ca[i].to_f64() * cb[i].to_f64()).sum();
            diagonal + 2.0 * below
        })
        .sum()
}

/// Sample-space CKA terms (see [`CkaGramTerms`]).
pub(crate) fn cka_gram_terms<T: Real>(layers: &[(String, &Matrix)], pairs: &[(usize, usize)]) -> Result<CkaGramTerms> {
    let mut grams = Vec::with_capacity(layers.len());
    let mut terms = CkaGramTerms::default();
    for (name, m) in layers {
        let (gram, norms) = centered_gram::<T>(m, name)?;
        grams.push(gram);
        terms.norms.push(norms);
    }
    terms.inner = pairs.iter().map(|&(u, v)| symmetric_inner(grams[u].as_ref(), grams[v].as_ref())).collect();
    Ok(terms)
}

/// Feature-space CKA terms of whole data (see [`CkaGramTerms`]): every layer centered at its
/// exact column means, then `||U~^T V~||_F^2` for each requested pair from one batch of moments
/// (the Grams' lower triangles and the cross products), without an accumulator's f64 state.
pub(crate) fn cka_feature_terms<T: Real>(
    layers: &[(String, &Matrix)],
    pairs: &[(usize, usize)],
    nx: usize,
) -> Result<CkaGramTerms> {
    let means = layers.iter().map(|(name, m)| column_means(m, name)).collect::<Result<Vec<_>>>()?;
    let moments = cka_batch_moments::<T>(layers, &means, nx)?;
    let widths: Vec<usize> = layers.iter().map(|(_, m)| m.cols()).collect();
    let offsets = moments.offsets(&widths, nx);
    let px: usize = widths[..nx].iter().sum();
    let square = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>();
    let inner = pairs
        .par_iter()
        .map(|&(u, v)| {
            if u == v {
                // Lower triangle of a symmetric matrix: off-diagonal entries count twice.
                let (p, g) = (widths[u], &moments.grams_lower[u]);
                (0..p).map(|j| g[j * p + j].powi(2) + 2.0 * square(&g[j * p + j + 1..(j + 1) * p])).sum()
            } else {
                // Block (x_u, y_v) of the column-major px x py cross product.
                (0..widths[v])
                    .map(|j| {
                        let start = (offsets[v] + j) * px + offsets[u];
                        square(&moments.cross[start..start + widths[u]])
                    })
                    .sum()
            }
        })
        .collect();
    Ok(CkaGramTerms { inner, norms: moments.norms })
}
