//! CPU twin of `kernels/cka.cu`; CUDA host code in `backend/cuda/cka.rs`. Column statistics,
//! the shifted copies of the layers and their row norms, the products (faer's GEMM on all
//! cores, or the system's CBLAS with the `blas` feature, where the device calls cuBLAS) and the
//! f64 reductions of the products.
//!
//! Dense work buffers hold the *transpose* of a batch: a column-major `features x rows` matrix
//! whose column `k` is sample `k`. Converting a row-major input is then a streaming copy (row `k`
//! of the input becomes contiguous column `k`), and faer's GEMM reads either orientation.
//!
//! Rounding against the kernels:
//! - the shifted copy (`shift_<t>_to_<a>`): `x - shift` in f64, rounded once to f32 or f64, on
//!   both: the same bits;
//! - row norms (`row_sqnorms`), the squared norm of a product (`sumsq`), the inner product of
//!   two Grams (`sym_inner`): f64 sums on both, in another order (eight lanes here, a warp or a
//!   block and atomics there), and `row_sqnorms` and `sumsq` fuse each multiply-add (`fma`)
//!   where this file rounds the square first: they agree to a few units in the last place of
//!   an f64;
//! - column statistics (`colstats`): here the sums run relative to the first row (see
//!   [`column_stats`]); the device sums the raw values in f64. A constant column gets its exact
//!   value on both;
//! - the products: faer and cuBLAS, both in full f32 (f64 for f64 data), sum in different
//!   orders; a layer stored in `T` with a small offset is used in place here and centered
//!   after the product (see `Operand::new`), where the device always multiplies centered copies.

use crate::backend::{CkaBatchMoments, CkaGramTerms};
use crate::error::{fail, human_bytes, try_filled, Result};
use crate::tensor::{Element, HostSlice, Matrix, Storage};
use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// The arithmetic type of the dense products: f32 for f32/f16/bf16 data, f64 for f64 data.
pub trait Real: Element + faer::traits::RealField + Copy + Default {
    /// Whether layers are scaled into this type's range before the products (see
    /// [`product_scale`]): f32 products of values near the ends of f32's range would underflow
    /// or overflow, where their f64 sums fit.
    const SCALES: bool;
    /// CBLAS's `?gemm` and `?syrk` in this type, for [`product`] and [`gram_lower`] with the
    /// `blas` feature.
    #[cfg(feature = "blas")]
    const CBLAS: (blas::Gemm<Self>, blas::Syrk<Self>);
    fn from_f64(v: f64) -> Self;
    /// The data of `slice` when it is stored in this type, to be used in place.
    fn stored(slice: HostSlice<'_>) -> Option<&[Self]>;
}
impl Real for f32 {
    const SCALES: bool = true;
    #[cfg(feature = "blas")]
    const CBLAS: (blas::Gemm<Self>, blas::Syrk<Self>) = (cblas_sys::cblas_sgemm, cblas_sys::cblas_ssyrk);
    #[inline]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn stored(slice: HostSlice<'_>) -> Option<&[Self]> {
        match slice {
            HostSlice::F32(data) => Some(data),
            _ => None,
        }
    }
}
impl Real for f64 {
    const SCALES: bool = false;
    #[cfg(feature = "blas")]
    const CBLAS: (blas::Gemm<Self>, blas::Syrk<Self>) = (cblas_sys::cblas_dgemm, cblas_sys::cblas_dsyrk);
    #[inline]
    fn from_f64(v: f64) -> Self {
        v
    }
    fn stored(slice: HostSlice<'_>) -> Option<&[Self]> {
        match slice {
            HostSlice::F64(data) => Some(data),
            _ => None,
        }
    }
}

/// The power of two a layer is multiplied by before its products in `T`, from the mean square
/// of its centered (or shifted) values: 1 where that lies within 2^-50 ..= 2^50 (the products
/// of f32 values there are far from underflow and overflow), else the power of two that brings
/// it near 1. CKA does not change when a layer is scaled, and every term is scaled back in f64
/// (exactly: a power of two), where the terms of any finite f32, f16 or bf16 input fit; so f32
/// activations of 1e-23 or 1e19 give the f64 answer instead of zeros and infinities.
pub(crate) fn product_scale<T: Real>(mean_square: f64) -> f64 {
    const SAFE: f64 = 1_125_899_906_842_624.0; // 2^50
    if !(T::SCALES && mean_square > 0.0 && mean_square.is_finite()) || (1.0 / SAFE..=SAFE).contains(&mean_square) {
        return 1.0;
    }
    2f64.powi((-0.5 * mean_square.log2()).round() as i32)
}

fn par() -> Par {
    Par::rayon(0)
}

/// Rows per parallel work item in streaming loops: big enough to amortise scheduling.
fn rows_per_task(cols: usize) -> usize {
    (16384 / cols.max(1)).max(1)
}

/// `sum_i f(i)` for `i < len` in f64 with eight partial sums and no branch, so that the loop
/// vectorises.
#[inline(always)]
fn lane_sum(len: usize, f: impl Fn(usize) -> f64) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let split = len - len % LANES;
    for i in (0..split).step_by(LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
    }
    acc.iter().sum::<f64>() + (split..len).map(f).sum::<f64>()
}

multiversion! {
    /// Adds `row - first` and its square to `sum` and `sum_sq` for each row `r` in `rows` of
    /// `data` (row `r` starts at `r * stride`).
    fn add_shifted_rows<E: Element>(
        data: &[E],
        rows: std::ops::Range<usize>,
        stride: usize,
        first: &[f64],
        sum: &mut [f64],
        sum_sq: &mut [f64]
    ) {
        let cols = first.len();
        for r in rows {
            let row = &data[r * stride..r * stride + cols];
            for (((s, q), &v), &f) in sum.iter_mut().zip(sum_sq.iter_mut()).zip(row).zip(first) {
                let z = v.to_f64() - f;
                *s += z;
                *q += z * z;
            }
        }
    }
}

multiversion! {
    /// Writes `(src - shift) * scale`, converted to `T`, to `dst` and returns the squared norm
    /// of the converted values in f64.
    fn write_shifted_row<E: Element, T: Real>(src: &[E], shift: &[f64], scale: f64, dst: &mut [T]) -> f64 {
        let (src, shift, dst) = (&src[..dst.len()], &shift[..dst.len()], dst);
        let mut norm = 0.0;
        // Blocks of 256, so that the writes and the sum of one block vectorise separately.
        for ((d, s), c) in dst.chunks_mut(256).zip(src.chunks(256)).zip(shift.chunks(256)) {
            for ((d, s), c) in d.iter_mut().zip(s).zip(c) {
                *d = T::from_f64((s.to_f64() - c) * scale);
            }
            let d = &*d;
            norm += lane_sum(d.len(), |i| d[i].to_f64() * d[i].to_f64());
        }
        norm
    }
}

multiversion! {
    /// `|row - means|^2` in f64.
    fn centered_sq_norm<E: Element>(row: &[E], means: &[f64]) -> f64 {
        let means = &means[..row.len()];
        lane_sum(row.len(), |i| {
            let z = row[i].to_f64() - means[i];
            z * z
        })
    }
}

multiversion! {
    /// `|column - c d|^2` in f64.
    fn centered_sq_sum<T: Real>(column: &[T], c: f64, d: &[f64]) -> f64 {
        let d = &d[..column.len()];
        lane_sum(column.len(), |i| {
            let v = column[i].to_f64() - c * d[i];
            v * v
        })
    }
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

/// Column statistics from one read of a matrix, in f64.
pub(crate) struct ColumnStats {
    /// Column means; a constant column gets its exact value, so that centering gives exact
    /// zeros there and a constant layer is recognised as having no variance.
    pub means: Vec<f64>,
    /// `||X~||_F^2`, the sum of squared deviations from the column means.
    pub trace: f64,
}

/// Column means and total variance of `m` in one pass. Sums run relative to the first row `f`:
/// a constant column sums to exact zeros, and since `f` is one of the samples, `n (m - f)^2` is
/// at most `n` times the column's sum of squared deviations, so the correction
/// `sum (x - f)^2 - n (m - f)^2` loses at most `log2(n)` bits even for data far from the
/// origin. Rejects NaN and Inf, naming the first position found.
pub(crate) fn column_stats(m: &Matrix, name: &str) -> Result<ColumnStats> {
    let (rows, cols, stride) = (m.rows(), m.cols(), m.row_stride());
    if rows == 0 {
        fail!(DegenerateInput, "{name} has 0 rows (samples)");
    }
    let slice = host_slice(m, name)?;
    let first = with_rows!(slice, |data| data[..cols].iter().map(|v| v.to_f64()).collect::<Vec<_>>());
    // Branch-free, so that the loop vectorises: a NaN or Inf makes its column's sums non-finite
    // (found afterwards, on the slow path). Each task folds many rows into one pair of vectors;
    // the tasks' sums are added in order, so that the result does not depend on the scheduling.
    let tasks = rows.div_ceil(rows_per_task(cols) * 16).max(1);
    let chunk = rows.div_ceil(tasks);
    let partial: Vec<(Vec<f64>, Vec<f64>)> = with_rows!(slice, |data| {
        (0..tasks)
            .into_par_iter()
            .map(|t| {
                let (mut sum, mut sum_sq) = (vec![0.0f64; cols], vec![0.0f64; cols]);
                add_shifted_rows(data, t * chunk..((t + 1) * chunk).min(rows), stride, &first, &mut sum, &mut sum_sq);
                (sum, sum_sq)
            })
            .collect()
    });
    let (mut sum, mut sum_sq) = (vec![0.0f64; cols], vec![0.0f64; cols]);
    for (s, q) in &partial {
        sum.iter_mut().zip(s).for_each(|(a, b)| *a += b);
        sum_sq.iter_mut().zip(q).for_each(|(a, b)| *a += b);
    }
    if sum.iter().chain(&sum_sq).any(|s| !s.is_finite()) {
        return Err(first_non_finite(m, name));
    }
    let n = rows as f64;
    let means = first.iter().zip(&sum).map(|(f, s)| f + s / n).collect();
    let trace = sum.iter().zip(&sum_sq).map(|(s, q)| (q - s * s / n).max(0.0)).sum();
    Ok(ColumnStats { means, trace })
}

/// Column means of `m` in f64, for centering (see [`ColumnStats::means`]).
pub(crate) fn column_means(m: &Matrix, name: &str) -> Result<Vec<f64>> {
    Ok(column_stats(m, name)?.means)
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

/// Writes `(row - shift) * scale` of every row of `m` into columns `0..rows` of the column-major
/// block `out` (leading dimension `ld`, starting at feature offset `offset`), converted to `T`,
/// and returns each row's squared norm in f64, scaled back (`/ scale^2`). Rejects NaN and Inf.
pub(crate) fn write_shifted_transpose<T: Real>(
    m: &Matrix,
    name: &str,
    shift: &[f64],
    scale: f64,
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
            // A NaN or Inf makes the norm non-finite and is located afterwards.
            *norm =
                write_shifted_row(&data[r * stride..r * stride + cols], shift, scale, &mut dst[offset..offset + cols]);
        })
    });
    if norms.iter().any(|n| !n.is_finite()) {
        return Err(first_non_finite(m, name));
    }
    if scale != 1.0 {
        let back = 1.0 / (scale * scale);
        norms.iter_mut().for_each(|n| *n *= back);
    }
    Ok(norms)
}

/// `a * b^T` into `dst` (`a` m x k, `b` n x k, `dst` m x n), replacing it.
pub fn cross_product<T: Real>(dst: MatMut<T>, a: MatRef<T>, b: MatRef<T>) {
    product(dst, a, b.transpose())
}

/// `a * b` into `dst`, replacing it: CBLAS's `?gemm` with the `blas` feature where the layouts
/// allow (see the `blas` module), faer's GEMM on all cores otherwise.
pub fn product<T: Real>(dst: MatMut<T>, a: MatRef<T>, b: MatRef<T>) {
    #[cfg(feature = "blas")]
    let Some(dst) = blas::gemm(dst, a, b) else {
        return;
    };
    faer::linalg::matmul::matmul(dst, Accum::Replace, a, b, T::one_impl(), par());
}

/// The lower triangle (diagonal included) of `a * a^T` into `dst`, replacing it; the strict
/// upper triangle of `dst` is left untouched. CBLAS's `?syrk` with the `blas` feature where the
/// layouts allow (see the `blas` module), faer's triangular GEMM on all cores otherwise.
pub fn gram_lower<T: Real>(dst: MatMut<T>, a: MatRef<T>) {
    #[cfg(feature = "blas")]
    let Some(dst) = blas::syrk_lower(dst, a) else {
        return;
    };
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

/// The products through the system's CBLAS (the `blas` feature). CBLAS takes a matrix as
/// column-major data with a leading dimension, as stored or transposed, so a view whose rows or
/// columns have unit stride goes to CBLAS and any other view (and any size past CBLAS's `int`)
/// to faer; so does an empty product.
///
/// Threads: OpenBLAS runs each call on its own thread pool, beside rayon's. The CKA products are
/// called from the caller's thread, where rayon's workers are idle; a call from inside a rayon
/// worker (a product nested in a parallel loop) goes to faer, which shares rayon's pool, so
/// the two pools never run at once. The blockwise GEMMs of `cka::stats` (many single-threaded
/// products in parallel) call faer directly and stay on it.
#[cfg(feature = "blas")]
pub mod blas {
    use super::Real;
    use cblas_sys::{CblasColMajor, CblasLower, CblasNoTrans, CblasTrans, CBLAS_LAYOUT, CBLAS_TRANSPOSE, CBLAS_UPLO};
    use faer::{MatMut, MatRef};
    use std::ffi::c_int;

    /// The signature of `cblas_sgemm` and `cblas_dgemm`.
    pub type Gemm<T> = unsafe extern "C" fn(
        CBLAS_LAYOUT,
        CBLAS_TRANSPOSE,
        CBLAS_TRANSPOSE,
        c_int,
        c_int,
        c_int,
        T,
        *const T,
        c_int,
        *const T,
        c_int,
        T,
        *mut T,
        c_int,
    );
    /// The signature of `cblas_ssyrk` and `cblas_dsyrk`.
    pub type Syrk<T> = unsafe extern "C" fn(
        CBLAS_LAYOUT,
        CBLAS_UPLO,
        CBLAS_TRANSPOSE,
        c_int,
        c_int,
        T,
        *const T,
        c_int,
        T,
        *mut T,
        c_int,
    );

    /// A `rows x cols` view as CBLAS reads it: `ptr` holds a column-major matrix with leading
    /// dimension `ld`, the view itself (`CblasNoTrans`) or its transpose (`CblasTrans`).
    struct Operand<T> {
        ptr: *const T,
        ld: c_int,
        trans: CBLAS_TRANSPOSE,
    }

    /// The leading dimension of a `rows x cols` view (both at least 1) with these strides read
    /// as column-major: unit stride down a column and columns at least `rows` apart (a single
    /// row or column needs only the other condition).
    fn column_major_ld(rows: usize, cols: usize, row_stride: isize, col_stride: isize) -> Option<c_int> {
        if rows > 1 && row_stride != 1 {
            return None;
        }
        let ld = if cols == 1 { rows as isize } else { col_stride };
        if ld < rows as isize {
            return None;
        }
        c_int::try_from(ld).ok()
    }

    fn operand<T>(m: MatRef<T>) -> Option<Operand<T>> {
        let (rows, cols, rs, cs) = (m.nrows(), m.ncols(), m.row_stride(), m.col_stride());
        let (ld, trans) = match column_major_ld(rows, cols, rs, cs) {
            Some(ld) => (ld, CblasNoTrans),
            None => (column_major_ld(cols, rows, cs, rs)?, CblasTrans),
        };
        Some(Operand { ptr: m.as_ptr(), ld, trans })
    }

    /// Whether CBLAS may run a product with these sizes: none empty, each fits an `int`, and the
    /// call is not made from a rayon worker (see the module's comment).
    fn takes(sizes: &[usize]) -> bool {
        rayon::current_thread_index().is_none() && sizes.iter().all(|&s| s > 0 && c_int::try_from(s).is_ok())
    }

    /// `a * b` into `dst` with `?gemm`, or `dst` back, untouched, when CBLAS cannot take it.
    pub(super) fn gemm<'a, T: Real>(dst: MatMut<'a, T>, a: MatRef<T>, b: MatRef<T>) -> Option<MatMut<'a, T>> {
        let (m, n, k) = (dst.nrows(), dst.ncols(), a.ncols());
        // The sizes CBLAS is told are dst's and a's: checked, as faer checks them.
        assert!(a.nrows() == m && b.nrows() == k && b.ncols() == n, "product of mismatched sizes");
        if !takes(&[m, n, k]) {
            return Some(dst);
        }
        let (Some(x), Some(y), Some(ldc)) =
            (operand(a), operand(b), column_major_ld(m, n, dst.row_stride(), dst.col_stride()))
        else {
            return Some(dst);
        };
        // SAFETY: the assert above matched the sizes of `a`, `b` and `dst`; `takes` checked that
        // m, n, k are positive and fit `c_int`. `operand` checked that `x.ptr` holds `a` (m x k)
        // column-major with leading dimension `x.ld` >= m (NoTrans) or its transpose (k x m,
        // `x.ld` >= k, Trans), so every element CBLAS reads is an element of `a`; the same for
        // `b` (k x n). `column_major_ld` checked that `dst` (m x n) is column-major with
        // `ldc` >= m, and `dst` is borrowed mutably for the call, so the writes stay inside it
        // and alias nothing else. beta = 0: `dst`'s old values are not read.
        unsafe {
            (T::CBLAS.0)(
                CblasColMajor,
                x.trans,
                y.trans,
                m as c_int,
                n as c_int,
                k as c_int,
                T::one_impl(),
                x.ptr,
                x.ld,
                y.ptr,
                y.ld,
                T::zero_impl(),
                dst.as_ptr_mut(),
                ldc,
            );
        }
        None
    }

    /// The lower triangle of `a * a^T` into `dst` with `?syrk`, or `dst` back, untouched, when
    /// CBLAS cannot take it.
    pub(super) fn syrk_lower<'a, T: Real>(dst: MatMut<'a, T>, a: MatRef<T>) -> Option<MatMut<'a, T>> {
        let (n, k) = (a.nrows(), a.ncols());
        assert!(dst.nrows() == n && dst.ncols() == n, "Gram into a matrix of another size");
        if !takes(&[n, k]) {
            return Some(dst);
        }
        let (Some(x), Some(ldc)) = (operand(a), column_major_ld(n, n, dst.row_stride(), dst.col_stride())) else {
            return Some(dst);
        };
        // SAFETY: the assert above matched the sizes of `dst` and `a`; `takes` checked that n and
        // k are positive and fit `c_int`. `operand` checked that `x.ptr` holds `a` (n x k)
        // column-major with leading dimension `x.ld` >= n (NoTrans: C = A A^T) or its transpose
        // (k x n, `x.ld` >= k, Trans: C = A^T A, the same product), so every element CBLAS
        // reads is an element of `a`. `dst` (n x n) is column-major with `ldc` >= n and
        // borrowed mutably for the call; `?syrk` with CblasLower writes only its lower
        // triangle. beta = 0: its old values are not read.
        unsafe {
            (T::CBLAS.1)(
                CblasColMajor,
                CblasLower,
                x.trans,
                n as c_int,
                k as c_int,
                T::one_impl(),
                x.ptr,
                x.ld,
                T::zero_impl(),
                dst.as_ptr_mut(),
                ldc,
            );
        }
        None
    }
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
    let mut bx = try_filled(px * rows, T::default(), "the batch's x layers, shifted")?;
    let mut by = try_filled(py * rows, T::default(), "the batch's y layers, shifted")?;
    // Each layer's scale from the mean square of its shifted batch (see `product_scale`).
    let mut scales = Vec::with_capacity(nl);
    for (u, (name, m)) in layers.iter().enumerate() {
        let scale = if T::SCALES {
            let norms = centered_row_norms(m, name, &shifts[u])?;
            product_scale::<T>(norms.iter().sum::<f64>() / (rows * widths[u]) as f64)
        } else {
            1.0
        };
        scales.push(scale);
        let (buf, ld) = if u < nx { (&mut bx, px) } else { (&mut by, py) };
        moments.norms.push(write_shifted_transpose::<T>(m, name, &shifts[u], scale, buf, ld, offsets[u])?);
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
    let mut cross = try_filled(px * py, T::default(), "the batch's cross products")?;
    cross_product(MatMut::from_column_major_slice_mut(&mut cross, px, py), xt, yt);
    moments.cross = to_f64(&cross, 1.0)?;
    if scales.iter().any(|&s| s != 1.0) {
        // Scale back block (x_u, y_v) by 1 / (s_u s_v), feature by feature.
        let per_feature = |range: std::ops::Range<usize>| -> Vec<f64> {
            range.flat_map(|u| std::iter::repeat_n(1.0 / scales[u], widths[u])).collect()
        };
        let (fx, fy) = (per_feature(0..nx), per_feature(nx..nl));
        moments.cross.par_chunks_mut(px.max(1)).zip(fy.par_iter()).for_each(|(column, gy)| {
            column.iter_mut().zip(&fx).for_each(|(c, gx)| *c *= gx * gy);
        });
    }
    moments.grams_lower = (0..nl)
        .map(|u| {
            let p = widths[u];
            let mut g = try_filled(p * p, T::default(), "a layer's Gram")?;
            gram_lower(MatMut::from_column_major_slice_mut(&mut g, p, p), block(u));
            to_f64(&g, 1.0 / (scales[u] * scales[u]))
        })
        .collect::<Result<_>>()?;

    // Third moments `sum a_u w_v` for every (u, v), and the column sums, as one product per
    // layer v with the stacked squared row norms and a column of ones.
    let mut norms_t: Vec<T> =
        moments.norms.iter().zip(&scales).flat_map(|(n, &s)| n.iter().map(move |&a| T::from_f64(a * s * s))).collect();
    norms_t.extend(std::iter::repeat_n(T::one_impl(), rows));
    let norms_mat = MatRef::from_column_major_slice(&norms_t, rows, nl + 1);
    moments.third = (0..nl)
        .map(|v| {
            let mut t = try_filled(widths[v] * (nl + 1), T::default(), "a layer's third moments")?;
            product(MatMut::from_column_major_slice_mut(&mut t, widths[v], nl + 1), block(v), norms_mat);
            // Column u is scaled by s_v s_u^2, the last (the sums) by s_v.
            let mut t = to_f64(&t, 1.0 / scales[v])?;
            for (u, column) in t.chunks_mut(widths[v]).enumerate().take(nl) {
                let back = 1.0 / (scales[u] * scales[u]);
                column.iter_mut().for_each(|c| *c *= back);
            }
            Ok(t)
        })
        .collect::<Result<_>>()?;
    Ok(moments)
}

/// A zero `rows x cols` matrix, for sizes a caller controls: a failed allocation is
/// `TL_STATUS_OUT_OF_MEMORY` naming `what` and the size, never an abort.
fn try_zero_mat<T: Real>(rows: usize, cols: usize, what: &str) -> Result<faer::Mat<T>> {
    let mut m = faer::Mat::<T>::new();
    m.try_reserve(rows, cols).map_err(|_| {
        let bytes = rows as u128 * cols as u128 * std::mem::size_of::<T>() as u128;
        crate::Error::OutOfMemory(format!("{what}: could not allocate {rows} x {cols} values ({})", human_bytes(bytes)))
    })?;
    m.resize_with(rows, cols, |_, _| T::zero_impl());
    Ok(m)
}

/// An f64 copy of a dense buffer, times `factor` (a power of two that undoes the scales).
fn to_f64<T: Real>(values: &[T], factor: f64) -> Result<Vec<f64>> {
    let mut out = try_filled(values.len(), 0.0, "an f64 copy of a product")?;
    out.par_chunks_mut(4096).zip(values.par_chunks(4096)).for_each(|(o, v)| {
        o.iter_mut().zip(v).for_each(|(o, v)| *o = v.to_f64() * factor);
    });
    Ok(out)
}

/// The centered `n x n` Gram of one layer scaled by `scale^2` (lower triangle; the strict upper
/// triangle is zero), the squared row norms of the centered layer in f64 (not scaled), and
/// `scale`, the layer's [`product_scale`].
pub(crate) fn centered_gram<T: Real>(m: &Matrix, name: &str) -> Result<(faer::Mat<T>, Vec<f64>, f64)> {
    let n = m.rows();
    let stats = column_stats(m, name)?;
    let scale = product_scale::<T>(stats.trace / (n * m.cols()) as f64);
    let mut buffer = try_filled(n * m.cols(), T::default(), &format!("{name}, centered"))?;
    let norms = write_shifted_transpose::<T>(m, name, &stats.means, scale, &mut buffer, m.cols(), 0)?;
    let zt = MatRef::from_column_major_slice(&buffer, m.cols(), n);
    let mut gram = try_zero_mat::<T>(n, n, &format!("{name}'s Gram of the samples"))?;
    gram_lower(gram.as_mut(), zt.transpose());
    Ok((gram, norms, scale))
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
    let mut scales = Vec::with_capacity(layers.len());
    let mut terms = CkaGramTerms::default();
    for (name, m) in layers {
        let (gram, norms, scale) = centered_gram::<T>(m, name)?;
        grams.push(gram);
        scales.push(scale);
        terms.norms.push(norms);
    }
    terms.inner = pairs
        .iter()
        .map(|&(u, v)| {
            let back = 1.0 / (scales[u] * scales[v]);
            symmetric_inner(grams[u].as_ref(), grams[v].as_ref()) * back * back
        })
        .collect();
    Ok(terms)
}

/// Feature-space CKA terms of whole data: `||U~^T V~||_F^2` for each requested pair `(u, v)`,
/// each layer's `||U~||_F^2`, and (when asked for) the squared norms of its centered rows.
pub(crate) struct FeatureTerms {
    pub inner: Vec<f64>,
    pub traces: Vec<f64>,
    /// Empty unless asked for.
    pub norms: Vec<Vec<f64>>,
}

/// One layer as a `features x rows` operand of the products (column `k` is sample `k`).
struct Operand<'a, T> {
    data: OperandData<'a, T>,
    features: usize,
    /// The mean of the operand's columns: the column means when the layer is used in place,
    /// zero when it is copied centered.
    mean: Vec<f64>,
    /// The squared norms of the centered rows (not scaled), when asked for.
    norms: Option<Vec<f64>>,
    /// The layer's [`product_scale`]: the operand holds the layer times it.
    scale: f64,
}

enum OperandData<'a, T> {
    /// The stored layer, used in place.
    Stored { data: &'a [T], stride: usize },
    /// A copy centered at the exact means, converted to `T`.
    Copied(Vec<T>),
}

impl<'a, T: Real> Operand<'a, T> {
    /// A layer stored in `T` is used in place, and the products are centered afterwards
    /// (`X~^T X~ = X^T X - n m m^T`), when its offset is at most its spread,
    /// `n |m|^2 <= ||X~||_F^2`. The products' rounding errors grow with the offset (the sums
    /// drift by `n m_i m_j`). Measured in f32 on 20000 rows against the f64 reference: post-ReLU
    /// activations (offset 0.7 of the spread) 1.4e-7 relative in CKA, the same as a centered
    /// copy; at 1.5 spreads twice the copy's error, at 6 spreads 15 times. Other layers are
    /// copied centered.
    fn new(m: &Matrix<'a>, name: &str, stats: &ColumnStats, row_norms: bool) -> Result<Self> {
        let (rows, features) = (m.rows(), m.cols());
        let stored = match m.storage() {
            Storage::Host(slice) => T::stored(*slice),
            Storage::Device { .. } => None,
        };
        let offset = rows as f64 * stats.means.iter().map(|v| v * v).sum::<f64>();
        let scale = product_scale::<T>(stats.trace / (rows * features) as f64);
        if let Some(data) = stored.filter(|_| offset <= stats.trace && scale == 1.0) {
            let norms = if row_norms { Some(centered_row_norms(m, name, &stats.means)?) } else { None };
            let data = OperandData::Stored { data, stride: m.row_stride() };
            return Ok(Operand { data, features, mean: stats.means.clone(), norms, scale });
        }
        let mut buffer = try_filled(features * rows, T::default(), &format!("{name}, centered"))?;
        let norms = write_shifted_transpose::<T>(m, name, &stats.means, scale, &mut buffer, features, 0)?;
        let norms = row_norms.then_some(norms);
        Ok(Operand { data: OperandData::Copied(buffer), features, mean: vec![0.0; features], norms, scale })
    }

    fn view(&self, rows: usize) -> MatRef<'_, T> {
        match &self.data {
            OperandData::Stored { data, stride } => MatRef::from_column_major_slice_with_stride(
                &data[..(rows - 1) * stride + self.features],
                self.features,
                rows,
                *stride,
            ),
            OperandData::Copied(buffer) => MatRef::from_column_major_slice(buffer, self.features, rows),
        }
    }
}

/// Squared norms of the rows of `m` centered at `means`, in f64.
fn centered_row_norms(m: &Matrix, name: &str, means: &[f64]) -> Result<Vec<f64>> {
    let (rows, cols, stride) = (m.rows(), m.cols(), m.row_stride());
    let slice = host_slice(m, name)?;
    let mut norms = vec![0.0f64; rows];
    with_rows!(slice, |data| {
        norms.par_iter_mut().enumerate().for_each(|(r, norm)| {
            *norm = centered_sq_norm(&data[r * stride..r * stride + cols], means);
        })
    });
    Ok(norms)
}

/// `||A - n d e^T||_F^2` in f64 for a product `A` in `T` of operands whose columns have means
/// `d` and `e`: the squared norm of the product of the centered operands. With `symmetric`, `A`
/// is a Gram given by its lower triangle (and `e = d`). Columns are summed in parallel, then in
/// order, so that the result does not depend on the scheduling.
fn centered_fro2<T: Real>(a: MatRef<T>, n: f64, d: &[f64], e: &[f64], symmetric: bool) -> f64 {
    let per_column: Vec<f64> = (0..a.ncols())
        .into_par_iter()
        .map(|j| {
            let column = a.col(j).try_as_col_major().expect("column-major product").as_slice();
            let c = n * e[j];
            let start = if symmetric { j } else { 0 };
            let below = centered_sq_sum(&column[start..], c, &d[start..]);
            if symmetric {
                let diagonal = column[j].to_f64() - c * d[j];
                2.0 * below - diagonal * diagonal
            } else {
                below
            }
        })
        .collect();
    per_column.iter().sum()
}

/// Feature-space CKA terms of whole data (see [`FeatureTerms`]): each layer's Gram and each
/// pair's cross product, reduced to the terms in f64 as soon as formed, in one buffer.
/// `row_norms` asks for the centered row norms (the debiased estimator needs them).
pub(crate) fn cka_feature_terms<T: Real>(
    layers: &[(String, &Matrix)],
    pairs: &[(usize, usize)],
    row_norms: bool,
) -> Result<FeatureTerms> {
    let rows = layers[0].1.rows();
    let stats = layers.iter().map(|(name, m)| column_stats(m, name)).collect::<Result<Vec<_>>>()?;
    let operands = layers
        .iter()
        .zip(&stats)
        .map(|((name, m), st)| Operand::<T>::new(m, name, st, row_norms))
        .collect::<Result<Vec<_>>>()?;
    let widest = layers.iter().map(|(_, m)| m.cols()).max().unwrap_or(0);
    let mut buffer = try_zero_mat::<T>(widest, widest, "the products of the layers")?;
    let n = rows as f64;
    let inner = pairs
        .iter()
        .map(|&(u, v)| {
            let (a, b) = (&operands[u], &operands[v]);
            let mut dst = buffer.as_mut().submatrix_mut(0, 0, a.features, b.features);
            if u == v {
                gram_lower(dst.as_mut(), a.view(rows));
            } else {
                cross_product(dst.as_mut(), a.view(rows), b.view(rows));
            }
            let back = 1.0 / (a.scale * b.scale);
            centered_fro2(dst.as_ref(), n, &a.mean, &b.mean, u == v) * back * back
        })
        .collect();
    let norms = operands.into_iter().filter_map(|o| o.norms).collect();
    Ok(FeatureTerms { inner, traces: stats.iter().map(|s| s.trace).collect(), norms })
}

#[cfg(test)]
mod tests {
    use super::product_scale;

    /// The scale both backends apply to a layer before its f32 products: 1 inside 2^-50 ..= 2^50
    /// (and for f64 products, and for a statistic that says nothing: zero, NaN, Inf), else an
    /// exact power of two that brings the mean square near 1, up to the ends of f32's range: the
    /// smallest subnormal squared (2^-298) and the largest value squared (about 2^256).
    #[test]
    fn product_scale_is_one_in_range_and_a_power_of_two_that_brings_the_mean_square_near_one() {
        for ms in [1.0, 2f64.powi(-50), 2f64.powi(50), 1e-15, 1e15, 0.0, f64::NAN, f64::INFINITY, -1.0] {
            assert_eq!(product_scale::<f32>(ms), 1.0, "mean square {ms:e}");
        }
        for e in [-298, -160, -90, -51, 51, 90, 200, 256] {
            let ms = 1.5 * 2f64.powi(e);
            assert_eq!(product_scale::<f64>(ms), 1.0, "f64 products are never scaled: 2^{e}");
            let s = product_scale::<f32>(ms);
            assert!(s.is_finite() && s > 0.0, "2^{e}: {s:e}");
            assert_eq!(s.log2().fract(), 0.0, "2^{e}: the scale {s:e} is a power of two");
            let scaled = ms * s * s;
            assert!((0.5..=4.0).contains(&scaled), "2^{e}: mean square {ms:e} scaled to {scaled:e}");
        }
    }
}
