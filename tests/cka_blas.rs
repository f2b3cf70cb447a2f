//! The products of the CPU CKA (`backend::cpu::cka`: `product`, `cross_product`, `gram_lower`).
//! With the `blas` feature (`cargo test --release --features blas --test cka_blas`) they run
//! through CBLAS where a view has unit stride along its rows or its columns, and through faer
//! otherwise; without it, through faer. On awkward sizes and every layout, each equals faer's
//! product to f32 rounding; where faer is the route (any view without a unit stride, the default
//! build, a call from a rayon worker) it is faer's product bit for bit, and with the feature the
//! contiguous case is CBLAS's own `sgemm` / `ssyrk` bit for bit.

use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use transferlens::backend::cpu::cka::{cross_product, gram_lower, product};

/// Sizes with 1s, primes, a k past the GEMM kernels' blocking, and an empty inner dimension.
const SIZES: [(usize, usize, usize); 8] =
    [(1, 1, 1), (7, 1, 257), (1, 7, 1031), (257, 7, 1031), (7, 257, 1), (257, 257, 1031), (1031, 257, 7), (5, 3, 0)];

/// Values in [-1, 1) from a seeded splitmix64.
fn random_mat(rows: usize, cols: usize, seed: u64) -> Mat<f32> {
    let mut state = seed;
    Mat::from_fn(rows, cols, |_, _| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    })
}

/// How an operand is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// Column-major with the leading dimension faer's `Mat` chooses.
    ColumnMajor,
    /// Row-major: the transpose of a column-major matrix (CBLAS's `Trans`).
    RowMajor,
    /// Column-major inside a larger matrix: leading dimension well past the rows.
    Padded,
    /// Rows in reverse order (row stride -1): no unit stride in either direction, for faer.
    Reversed,
}

impl Layout {
    const ALL: [Layout; 4] = [Layout::ColumnMajor, Layout::RowMajor, Layout::Padded, Layout::Reversed];
}

/// Whether a view reads as column-major (the rule of `backend::cpu::cka::blas`): unit stride
/// down the columns (or a single row) and columns at least a column's length apart (or a single
/// column). CBLAS writes such a destination.
fn column_major(m: MatRef<f32>) -> bool {
    (m.nrows() == 1 || m.row_stride() == 1) && (m.ncols() == 1 || m.col_stride() >= m.nrows() as isize)
}

/// Whether the `blas` feature hands an operand to CBLAS: column-major as stored or transposed.
fn cblas_reads(m: MatRef<f32>) -> bool {
    column_major(m) || column_major(m.transpose())
}

/// A matrix's values stored in `layout`; `view` reads them back as the same `rows x cols` matrix.
struct Stored {
    storage: Mat<f32>,
    layout: Layout,
    rows: usize,
    cols: usize,
}

impl Stored {
    fn new(values: MatRef<f32>, layout: Layout) -> Self {
        let (rows, cols) = (values.nrows(), values.ncols());
        let storage = match layout {
            Layout::ColumnMajor => values.to_owned(),
            Layout::RowMajor => values.transpose().to_owned(),
            Layout::Padded => {
                let mut big = Mat::from_fn(rows + 13, cols + 2, |_, _| f32::NAN);
                big.as_mut().submatrix_mut(5, 1, rows, cols).copy_from(values);
                big
            }
            Layout::Reversed => values.reverse_rows().to_owned(),
        };
        Stored { storage, layout, rows, cols }
    }

    fn view(&self) -> MatRef<'_, f32> {
        match self.layout {
            Layout::ColumnMajor => self.storage.as_ref(),
            Layout::RowMajor => self.storage.transpose(),
            Layout::Padded => self.storage.as_ref().submatrix(5, 1, self.rows, self.cols),
            Layout::Reversed => self.storage.as_ref().reverse_rows(),
        }
    }

    fn view_mut(&mut self) -> MatMut<'_, f32> {
        match self.layout {
            Layout::ColumnMajor => self.storage.as_mut(),
            Layout::RowMajor => self.storage.as_mut().transpose_mut(),
            Layout::Padded => self.storage.as_mut().submatrix_mut(5, 1, self.rows, self.cols),
            Layout::Reversed => self.storage.as_mut().reverse_rows_mut(),
        }
    }
}

/// faer's product as the library calls it, into a destination of the given layout.
fn faer_product(a: MatRef<f32>, b: MatRef<f32>, dst_layout: Layout) -> Mat<f32> {
    let mut dst = Stored::new(Mat::<f32>::zeros(a.nrows(), b.ncols()).as_ref(), dst_layout);
    faer::linalg::matmul::matmul(dst.view_mut(), Accum::Replace, a, b, 1.0, Par::rayon(0));
    dst.view().to_owned()
}

/// faer's lower triangle of `a a^T` as the library calls it (the upper triangle zero).
fn faer_gram_lower(a: MatRef<f32>) -> Mat<f32> {
    let mut dst = Mat::<f32>::zeros(a.nrows(), a.nrows());
    faer::linalg::matmul::triangular::matmul(
        dst.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        a,
        BlockStructure::Rectangular,
        a.transpose(),
        BlockStructure::Rectangular,
        1.0,
        Par::rayon(0),
    );
    dst
}

/// The sum of the worst-case f32 rounding of two computations of `a b` (`u = 2^-24`, `k` the
/// inner dimension): `2 k u (|a| |b|)`, entry by entry. A wrong operand, transpose or leading
/// dimension misses it by far.
fn rounding_bound(a: MatRef<f32>, b: MatRef<f32>) -> Mat<f64> {
    let abs = |m: MatRef<f32>| Mat::from_fn(m.nrows(), m.ncols(), |i, j| (m[(i, j)] as f64).abs());
    let scale = 2.0 * a.ncols() as f64 * 2f64.powi(-24);
    abs(a) * abs(b) * faer::Scale(scale)
}

/// Asserts `|got - want| <= bound` over the lower triangle when `lower`, else everywhere.
fn assert_within(got: MatRef<f32>, want: MatRef<f32>, bound: MatRef<f64>, lower: bool, what: &str) {
    for j in 0..got.ncols() {
        for i in if lower { j..got.nrows() } else { 0..got.nrows() } {
            let (g, w, limit) = (got[(i, j)] as f64, want[(i, j)] as f64, bound[(i, j)]);
            assert!((g - w).abs() <= limit, "{what}: entry ({i}, {j}) is {g:e}, faer's {w:e} (bound {limit:e})");
        }
    }
}

/// Asserts that `got` and `want` hold the same bits, naming the first entry that differs.
fn assert_same_bits(got: MatRef<f32>, want: MatRef<f32>, what: &str) {
    for j in 0..got.ncols() {
        for i in 0..got.nrows() {
            let (g, w) = (got[(i, j)], want[(i, j)]);
            assert_eq!(g.to_bits(), w.to_bits(), "{what}: entry ({i}, {j}) is {g:e}, expected {w:e}");
        }
    }
}

#[test]
fn products_equal_faer_to_rounding_on_every_layout_and_bit_for_bit_where_faer_runs() {
    for (case, &(m, n, k)) in SIZES.iter().enumerate() {
        let a_values = random_mat(m, k, 2 * case as u64);
        let b_values = random_mat(k, n, 2 * case as u64 + 1);
        let bound = rounding_bound(a_values.as_ref(), b_values.as_ref());
        for a_layout in Layout::ALL {
            for b_layout in Layout::ALL {
                let (a, b) = (Stored::new(a_values.as_ref(), a_layout), Stored::new(b_values.as_ref(), b_layout));
                for dst_layout in [Layout::ColumnMajor, Layout::Padded, Layout::RowMajor] {
                    let what = format!("{m} x {n} x {k}, a {a_layout:?}, b {b_layout:?}, dst {dst_layout:?}");
                    let mut dst = Stored::new(Mat::from_fn(m, n, |_, _| f32::NAN).as_ref(), dst_layout);
                    product(dst.view_mut(), a.view(), b.view());
                    let got = dst.view().to_owned();
                    let want = faer_product(a.view(), b.view(), dst_layout);
                    assert_within(got.as_ref(), want.as_ref(), bound.as_ref(), false, &what);
                    // CBLAS writes a column-major destination only.
                    let cblas_route = cfg!(feature = "blas")
                        && m * n * k > 0
                        && cblas_reads(a.view())
                        && cblas_reads(b.view())
                        && column_major(dst.view());
                    if !cblas_route {
                        assert_same_bits(got.as_ref(), want.as_ref(), &format!("{what}: faer's route, faer's bits"));
                    }
                }
                // `cross_product(a, b^T)` is `product(a, b)`.
                let bt = Stored::new(b_values.transpose(), b_layout);
                let mut dst = Mat::from_fn(m, n, |_, _| f32::NAN);
                cross_product(dst.as_mut(), a.view(), bt.view());
                let mut direct = Mat::from_fn(m, n, |_, _| f32::NAN);
                product(direct.as_mut(), a.view(), bt.view().transpose());
                assert_same_bits(
                    dst.as_ref(),
                    direct.as_ref(),
                    &format!("cross product {m} x {n} x {k}, {a_layout:?}"),
                );
            }
        }
    }
}

#[test]
fn gram_lower_equals_faer_to_rounding_and_leaves_the_upper_triangle() {
    const UNTOUCHED: f32 = 7.0;
    for (case, &(n, _, k)) in SIZES.iter().enumerate() {
        let values = random_mat(n, k, 100 + case as u64);
        let bound = rounding_bound(values.as_ref(), values.transpose());
        for layout in Layout::ALL {
            let what = format!("Gram of {n} x {k}, {layout:?}");
            let a = Stored::new(values.as_ref(), layout);
            let want = faer_gram_lower(a.view());
            let mut dst = Mat::from_fn(n, n, |_, _| UNTOUCHED);
            gram_lower(dst.as_mut(), a.view());
            assert_within(dst.as_ref(), want.as_ref(), bound.as_ref(), true, &what);
            for j in 0..n {
                for i in 0..j {
                    assert_eq!(dst[(i, j)], UNTOUCHED, "{what}: upper entry ({i}, {j}) was written");
                }
            }
            if !(cfg!(feature = "blas") && n * k > 0 && cblas_reads(a.view())) {
                // faer's upper triangle is zero, this one UNTOUCHED: compare the lower triangles.
                for j in 0..n {
                    let (g, w) = (dst.col(j).subrows(j, n - j), want.col(j).subrows(j, n - j));
                    assert_same_bits(g.as_mat(), w.as_mat(), &format!("{what}: faer's route, faer's bits, column {j}"));
                }
            }
        }
    }
}

/// A product nested in a rayon parallel loop runs on faer, which shares rayon's threads, never
/// on OpenBLAS's own thread pool (see the `blas` module of `backend::cpu::cka`).
#[test]
fn products_inside_a_rayon_worker_are_faers() {
    let (a, b) = (random_mat(257, 1031, 7), random_mat(1031, 65, 8));
    let want = faer_product(a.as_ref(), b.as_ref(), Layout::ColumnMajor);
    let want_gram = faer_gram_lower(a.as_ref());
    let results: Vec<(Mat<f32>, Mat<f32>)> = rayon::broadcast(|_| {
        let mut dst = Mat::<f32>::zeros(257, 65);
        product(dst.as_mut(), a.as_ref(), b.as_ref());
        let mut gram = Mat::<f32>::zeros(257, 257);
        gram_lower(gram.as_mut(), a.as_ref());
        (dst, gram)
    });
    for (dst, gram) in &results {
        assert_same_bits(dst.as_ref(), want.as_ref(), "product in a rayon worker");
        assert_same_bits(gram.as_ref(), want_gram.as_ref(), "Gram in a rayon worker");
    }
}

/// With the feature, the products of contiguous column-major operands are CBLAS's own results:
/// the route is taken, not only allowed.
#[cfg(feature = "blas")]
#[test]
fn the_blas_feature_calls_cblas_for_contiguous_operands() {
    use cblas_sys::{cblas_sgemm, cblas_ssyrk, CblasColMajor, CblasLower, CblasNoTrans};
    let (m, n, k) = (257, 65, 1031);
    let (a, b) = (random_mat(m, k, 9), random_mat(k, n, 10));
    let mut want = Mat::<f32>::zeros(m, n);
    let mut want_gram = Mat::<f32>::zeros(m, m);
    // SAFETY: `a` (m x k), `b` (k x n), `want` (m x n) and `want_gram` (m x m) are faer `Mat`s:
    // column-major with unit row stride and column strides (leading dimensions) at least their
    // row counts; the sizes passed are theirs, so CBLAS reads and writes inside them only.
    unsafe {
        cblas_sgemm(
            CblasColMajor,
            CblasNoTrans,
            CblasNoTrans,
            m as i32,
            n as i32,
            k as i32,
            1.0,
            a.as_ptr(),
            a.col_stride() as i32,
            b.as_ptr(),
            b.col_stride() as i32,
            0.0,
            want.as_ptr_mut(),
            want.col_stride() as i32,
        );
        cblas_ssyrk(
            CblasColMajor,
            CblasLower,
            CblasNoTrans,
            m as i32,
            k as i32,
            1.0,
            a.as_ptr(),
            a.col_stride() as i32,
            0.0,
            want_gram.as_ptr_mut(),
            want_gram.col_stride() as i32,
        );
    }
    let mut got = Mat::<f32>::zeros(m, n);
    product(got.as_mut(), a.as_ref(), b.as_ref());
    assert_same_bits(got.as_ref(), want.as_ref(), "product: CBLAS's sgemm");
    let mut got_gram = Mat::<f32>::zeros(m, m);
    gram_lower(got_gram.as_mut(), a.as_ref());
    assert_same_bits(got_gram.as_ref(), want_gram.as_ref(), "Gram: CBLAS's ssyrk");
}
