//! cuBLAS through cudarc's raw bindings: the one place where the crate (and the GPU benchmark)
//! calls a cuBLAS product, [`Gemm::run`] and [`Syrk::run`], typed by the arithmetic type
//! ([`BlasScalar`]: f32 or f64), with the dimensions checked against cuBLAS's 32-bit interface
//! and the status turned into an error naming the product. Matrices are column-major, as cuBLAS
//! sees them; the crate's products go to the device's handle (`CudaDevice::blas`) on its
//! stream, in full f32 (no TF32) or f64.

use crate::error::{Error, Result};
use cudarc::cublas::sys as cb;
use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

pub use cb::cublasHandle_t as Handle;
pub use cb::cublasOperation_t as Op;

/// `op(X) = X`.
pub const OP_N: Op = Op::CUBLAS_OP_N;
/// `op(X) = X^T`.
pub const OP_T: Op = Op::CUBLAS_OP_T;

/// The arithmetic type of a product: f32 (`cublasS*`) or f64 (`cublasD*`).
pub trait BlasScalar: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {
    /// The kernel name suffix of the type: `"f32"` or `"f64"`.
    const SUFFIX: &'static str;
    fn to_f64(self) -> f64;
    fn one() -> Self;
    /// `cublas<t>gemm` with alpha = 1, beta = 0.
    ///
    /// # Safety
    /// As [`Gemm::run`], for the raw arguments.
    unsafe fn raw_gemm(h: Handle, g: &Gemm32) -> cb::cublasStatus_t;
    /// `cublas<t>syrk` (lower triangle) with alpha = 1, beta = 0.
    ///
    /// # Safety
    /// As [`Syrk::run`], for the raw arguments.
    unsafe fn raw_syrk(h: Handle, s: &Syrk32) -> cb::cublasStatus_t;
    /// `cublas<t>gemmStridedBatched` with alpha = 1, beta = 0.
    ///
    /// # Safety
    /// As [`BatchedGemm::run`], for the raw arguments.
    unsafe fn raw_gemm_batched(h: Handle, g: &Gemm32, strides: [i64; 3], batch: i32) -> cb::cublasStatus_t;
}

macro_rules! impl_blas_scalar {
    ($t:ty, $suffix:literal, $syrk:ident, $gemm:ident, $gemm_batched:ident) => {
        impl BlasScalar for $t {
            const SUFFIX: &'static str = $suffix;
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn one() -> Self {
                1.0
            }
            unsafe fn raw_gemm(h: Handle, g: &Gemm32) -> cb::cublasStatus_t {
                let (one, zero): ($t, $t) = (1.0, 0.0);
                // SAFETY: the caller's contract (Gemm::run's) covers the addresses and shapes;
                // alpha and beta are host values that outlive the call.
                unsafe {
                    cb::$gemm(
                        h,
                        g.ta,
                        g.tb,
                        g.m,
                        g.n,
                        g.k,
                        &one,
                        g.a as *const $t,
                        g.lda,
                        g.b as *const $t,
                        g.ldb,
                        &zero,
                        g.c as *mut $t,
                        g.ldc,
                    )
                }
            }
            unsafe fn raw_gemm_batched(h: Handle, g: &Gemm32, strides: [i64; 3], batch: i32) -> cb::cublasStatus_t {
                let (one, zero): ($t, $t) = (1.0, 0.0);
                // SAFETY: as in raw_gemm, under BatchedGemm::run's contract.
                unsafe {
                    cb::$gemm_batched(
                        h,
                        g.ta,
                        g.tb,
                        g.m,
                        g.n,
                        g.k,
                        &one,
                        g.a as *const $t,
                        g.lda,
                        strides[0],
                        g.b as *const $t,
                        g.ldb,
                        strides[1],
                        &zero,
                        g.c as *mut $t,
                        g.ldc,
                        strides[2],
                        batch,
                    )
                }
            }
            unsafe fn raw_syrk(h: Handle, s: &Syrk32) -> cb::cublasStatus_t {
                let (one, zero): ($t, $t) = (1.0, 0.0);
                // SAFETY: as in raw_gemm, under Syrk::run's contract.
                unsafe {
                    cb::$syrk(
                        h,
                        cb::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
                        s.trans,
                        s.n,
                        s.k,
                        &one,
                        s.a as *const $t,
                        s.lda,
                        &zero,
                        s.c as *mut $t,
                        s.ldc,
                    )
                }
            }
        }
    };
}
impl_blas_scalar!(f32, "f32", cublasSsyrk_v2, cublasSgemm_v2, cublasSgemmStridedBatched);
impl_blas_scalar!(f64, "f64", cublasDsyrk_v2, cublasDgemm_v2, cublasDgemmStridedBatched);

/// `C = op_a(A) op_b(B)`: `C` is `m x n`, `op_a(A)` `m x k`, `op_b(B)` `k x n`, column-major
/// at device addresses `a`, `b`, `c` with leading dimensions `lda`, `ldb`, `ldc`.
#[derive(Debug, Clone, Copy)]
pub struct Gemm {
    pub ta: Op,
    pub tb: Op,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub lda: usize,
    pub b: u64,
    pub ldb: usize,
    pub c: u64,
    pub ldc: usize,
}

/// `batch` products `C_j = op_a(A_j) op_b(B_j)` as [`Gemm`] describes each, the j-th matrices at
/// `a + j stride_a`, `b + j stride_b`, `c + j stride_c` (strides in elements; 0 shares a matrix).
#[derive(Debug, Clone, Copy)]
pub struct BatchedGemm {
    pub gemm: Gemm,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub batch: usize,
}

/// The lower triangle (diagonal included) of `C = op(A) op(A)^T`: `C` is `n x n`, `op(A)`
/// `n x k` (`trans = OP_N`: `A` is `n x k`; `OP_T`: `A` is `k x n`); the strict upper triangle
/// of `C` is left alone.
#[derive(Debug, Clone, Copy)]
pub struct Syrk {
    pub trans: Op,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub lda: usize,
    pub c: u64,
    pub ldc: usize,
}

/// A [`Gemm`] with its sizes as cuBLAS takes them.
#[doc(hidden)]
pub struct Gemm32 {
    ta: Op,
    tb: Op,
    m: i32,
    n: i32,
    k: i32,
    a: u64,
    lda: i32,
    b: u64,
    ldb: i32,
    c: u64,
    ldc: i32,
}

/// A [`Syrk`] with its sizes as cuBLAS takes them.
#[doc(hidden)]
pub struct Syrk32 {
    trans: Op,
    n: i32,
    k: i32,
    a: u64,
    lda: i32,
    c: u64,
    ldc: i32,
}

impl Gemm {
    /// Runs the product on `h` in arithmetic `S`; `what` names it in errors. A dimension above
    /// `i32::MAX` is [`Error::InvalidArgument`], a failed call [`Error::Device`].
    ///
    /// # Safety
    /// `h` is a live cuBLAS handle; `a`, `b` and `c` address live device memory of the
    /// handle's device holding the matrices described (elements of `S`, leading dimensions at
    /// least the stored row counts), and `c` overlaps neither `a` nor `b`.
    pub unsafe fn run<S: BlasScalar>(&self, h: Handle, what: &str) -> Result<()> {
        let g = Gemm32 {
            ta: self.ta,
            tb: self.tb,
            m: dim(self.m, what)?,
            n: dim(self.n, what)?,
            k: dim(self.k, what)?,
            a: self.a,
            lda: dim(self.lda, what)?,
            b: self.b,
            ldb: dim(self.ldb, what)?,
            c: self.c,
            ldc: dim(self.ldc, what)?,
        };
        // SAFETY: the caller's contract, passed on unchanged.
        check(&format!("cublas{}gemm ({what})", S::SUFFIX), unsafe { S::raw_gemm(h, &g) })
    }
}

impl BatchedGemm {
    /// Runs the products on `h` in arithmetic `S`, as [`Gemm::run`]; a batch above `i32::MAX`
    /// is [`Error::InvalidArgument`].
    ///
    /// # Safety
    /// As [`Gemm::run`], for every product of the batch; no `C_j` overlaps another product's
    /// matrices.
    pub unsafe fn run<S: BlasScalar>(&self, h: Handle, what: &str) -> Result<()> {
        let g = &self.gemm;
        let g32 = Gemm32 {
            ta: g.ta,
            tb: g.tb,
            m: dim(g.m, what)?,
            n: dim(g.n, what)?,
            k: dim(g.k, what)?,
            a: g.a,
            lda: dim(g.lda, what)?,
            b: g.b,
            ldb: dim(g.ldb, what)?,
            c: g.c,
            ldc: dim(g.ldc, what)?,
        };
        let strides = [self.stride_a as i64, self.stride_b as i64, self.stride_c as i64];
        let batch = dim(self.batch, what)?;
        // SAFETY: the caller's contract, passed on unchanged.
        check(&format!("cublas{}gemmStridedBatched ({what})", S::SUFFIX), unsafe {
            S::raw_gemm_batched(h, &g32, strides, batch)
        })
    }
}

impl Syrk {
    /// Runs the product on `h` in arithmetic `S`; `what` names it in errors, as [`Gemm::run`].
    ///
    /// # Safety
    /// As [`Gemm::run`]: `a` holds `op(A)` as described and `c` an `n x n` matrix (leading
    /// dimension `ldc`) that does not overlap `a`.
    pub unsafe fn run<S: BlasScalar>(&self, h: Handle, what: &str) -> Result<()> {
        let s = Syrk32 {
            trans: self.trans,
            n: dim(self.n, what)?,
            k: dim(self.k, what)?,
            a: self.a,
            lda: dim(self.lda, what)?,
            c: self.c,
            ldc: dim(self.ldc, what)?,
        };
        // SAFETY: the caller's contract, passed on unchanged.
        check(&format!("cublas{}syrk ({what})", S::SUFFIX), unsafe { S::raw_syrk(h, &s) })
    }
}

/// A dimension for cuBLAS's 32-bit interface.
fn dim(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::InvalidArgument(format!(
            "{what}: a dimension of {v} is too large for a cuBLAS product (at most {})",
            i32::MAX
        ))
    })
}

fn check(call: &str, status: cb::cublasStatus_t) -> Result<()> {
    status.result().map_err(|e| Error::Device(format!("{call} failed: {e}")))
}
