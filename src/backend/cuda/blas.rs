//! cuBLAS through cudarc's raw bindings, typed by the arithmetic type: the products of the CKA
//! terms and of the MLP's layers. Matrices are column-major, as cuBLAS sees them; every call
//! goes to the device's handle (see `CudaDevice::blas`) on its stream.

use crate::error::{Error, Result};
use cudarc::cublas::sys as cb;
use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

/// The arithmetic type of the products: f32 or f64.
pub(crate) trait Acc: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {
    const SUFFIX: &'static str;
    fn to_f64(self) -> f64;
    fn one() -> Self;
    /// `C = alpha op(A) op(A)^T + beta C`, lower triangle.
    #[allow(clippy::too_many_arguments)]
    unsafe fn syrk(
        h: cb::cublasHandle_t,
        trans: cb::cublasOperation_t,
        n: i32,
        k: i32,
        a: u64,
        lda: i32,
        c: u64,
        ldc: i32,
    ) -> cb::cublasStatus_t;
    /// `C = op(A) op(B)`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        h: cb::cublasHandle_t,
        ta: cb::cublasOperation_t,
        tb: cb::cublasOperation_t,
        m: i32,
        n: i32,
        k: i32,
        a: u64,
        lda: i32,
        b: u64,
        ldb: i32,
        c: u64,
        ldc: i32,
    ) -> cb::cublasStatus_t;
}

macro_rules! impl_acc {
    ($t:ty, $suffix:literal, $syrk:ident, $gemm:ident) => {
        impl Acc for $t {
            const SUFFIX: &'static str = $suffix;
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn one() -> Self {
                1.0
            }
            unsafe fn syrk(
                h: cb::cublasHandle_t,
                trans: cb::cublasOperation_t,
                n: i32,
                k: i32,
                a: u64,
                lda: i32,
                c: u64,
                ldc: i32,
            ) -> cb::cublasStatus_t {
                let (one, zero): ($t, $t) = (1.0, 0.0);
                cb::$syrk(
                    h,
                    cb::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
                    trans,
                    n,
                    k,
                    &one,
                    a as *const $t,
                    lda,
                    &zero,
                    c as *mut $t,
                    ldc,
                )
            }
            unsafe fn gemm(
                h: cb::cublasHandle_t,
                ta: cb::cublasOperation_t,
                tb: cb::cublasOperation_t,
                m: i32,
                n: i32,
                k: i32,
                a: u64,
                lda: i32,
                b: u64,
                ldb: i32,
                c: u64,
                ldc: i32,
            ) -> cb::cublasStatus_t {
                let (one, zero): ($t, $t) = (1.0, 0.0);
                cb::$gemm(h, ta, tb, m, n, k, &one, a as *const $t, lda, b as *const $t, ldb, &zero, c as *mut $t, ldc)
            }
        }
    };
}
impl_acc!(f32, "f32", cublasSsyrk_v2, cublasSgemm_v2);
impl_acc!(f64, "f64", cublasDsyrk_v2, cublasDgemm_v2);

pub(crate) const OP_N: cb::cublasOperation_t = cb::cublasOperation_t::CUBLAS_OP_N;
pub(crate) const OP_T: cb::cublasOperation_t = cb::cublasOperation_t::CUBLAS_OP_T;

/// A dimension for cuBLAS's 32-bit interface.
pub(crate) fn dim(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::InvalidArgument(format!("{what} = {v} is too large for a cuBLAS product (at most {})", i32::MAX))
    })
}

pub(crate) fn blas_check(call: &str, status: cb::cublasStatus_t) -> Result<()> {
    status.result().map_err(|e| Error::Device(format!("{call} failed: {e}")))
}
