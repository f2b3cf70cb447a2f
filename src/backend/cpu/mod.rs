//! The CPU backend: one file per kernel file, named after it, doing the same arithmetic.
//!
//! - [`cka`]: CPU twin of `kernels/cka.cu` (column statistics, the shifted copies, row norms,
//!   reductions of the products) plus the products themselves (faer's GEMM on all cores, where
//!   the device calls cuBLAS); CUDA host code in `backend/cuda/cka.rs`.
//! - [`weights`]: CPU twin of `kernels/weights.cu` (sums of squares, interpolation); CUDA host
//!   code in `backend/cuda/weights.rs`.
//! - [`mlp`]: CPU twin of `kernels/mlp.cu` (noisy copies of a layer, bias and ReLU, softmax
//!   cross-entropy); CUDA host code in `backend/cuda/mlp.rs`.
//! - [`cnn`]: CPU twin of `kernels/cnn.cu` (im2col, GroupNorm, pooling, the per-copy
//!   cross-entropy of the CNN); CUDA host code in `backend/cuda/cnn.rs`.
//! - [`pool`]: the threads after a `fork` (a forked child computes on the calling thread).
//!
//! Each twin's module doc says where its rounding equals the kernel's and where it differs.
//! The streaming loops are compiled twice by [`multiversion!`]: for the baseline target and,
//! on x86-64, with AVX2, FMA and F16C, chosen at run time.

/// Defines `$vis fn $name` whose body is compiled for the baseline target (SSE2 on x86-64) and,
/// on x86-64, for AVX2 + FMA + F16C; the latter runs where the CPU has all three, so that the
/// streaming loops run at twice the vector width. The body sees `const HW: bool`, true in the
/// AVX2 version, for code that uses intrinsics (F16C conversions) directly.
///
/// Both versions compute the same bits: Rust never contracts `a * b + c` into a fused
/// multiply-add, so only an explicit `mul_add` fuses, and it is exact in both (an instruction
/// here, the C library's `fma` in the baseline version).
macro_rules! multiversion {
    ($(#[$doc:meta])* $vis:vis fn $name:ident<$($g:ident: $bound:path),*>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        $vis fn $name<$($g: $bound),*>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body<const HW: bool, $($g: $bound),*>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn with_avx2<$($g: $bound),*>($($arg: $ty),*) $(-> $ret)? {
                body::<true, $($g),*>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::backend::cpu::has_avx2_fma_f16c() {
                // SAFETY: with_avx2 only needs the target features it is compiled for, and the
                // CPU reported AVX2, FMA and F16C just above.
                return unsafe { with_avx2::<$($g),*>($($arg),*) };
            }
            body::<false, $($g),*>($($arg),*)
        }
    };
}

pub mod cka;
pub mod cnn;
pub mod mlp;
pub(crate) mod pool;
pub mod weights;

pub use cka::Real;
pub(crate) use cka::{
    centered_gram, cka_batch_moments, cka_feature_terms, cka_gram_terms, column_means, frobenius_dot,
};

/// Set by tests to run the baseline versions on a CPU that has AVX2.
#[cfg(test)]
pub(crate) static FORCE_BASELINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the AVX2 versions of [`multiversion!`] functions can run (the std macro caches the
/// CPU's answer).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2_fma_f16c() -> bool {
    #[cfg(test)]
    if FORCE_BASELINE.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}
