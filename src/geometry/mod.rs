//! Weight-space arithmetic: norms, distances, cosine, interpolation and rewind of modules.
//!
//! Figures are per module of the first set (its [`Grouping`](crate::params::Grouping)) and in
//! total; sums run in f64 whatever the storage dtype, and only weights (F32, F64, F16, BF16)
//! count. Interpolation computes `(1 - lambda) a + lambda b` in f32 for f32, f16 and bf16 tensors
//! (f64 for f64 tensors) and rounds once to the storage dtype; `lambda = 0` and `lambda = 1`
//! copy the endpoints bit for bit.
//!
//! The work is memory-bound: every tensor is cut into chunks that run in parallel (rayon), each
//! chunk in a tight loop the compiler vectorises. Partial sums are added in a fixed order, so a
//! result does not depend on the number of threads. The per-chunk loops ([`kernels`]) work on
//! host slices. Sets wrapped over the memory of a CUDA device are computed there, in place, by
//! the kernels of `kernels/weights.cu` (with a CUDA context for that device): distance, norms,
//! interpolation and rewind; `compare` needs host sets.
//!
//! ```
//! use transferlens::{geometry, Context, ParamSet};
//! // A safetensors file holding fc.weight (F32 [2]) and fc.bias (F32 scalar).
//! fn file(w: [f32; 2], b: f32) -> Vec<u8> {
//!     let header = br#"{"fc.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"fc.bias":{"dtype":"F32","shape":[],"data_offsets":[8,12]}}"#;
//!     let mut f = (header.len() as u64).to_le_bytes().to_vec();
//!     f.extend_from_slice(header);
//!     for v in [w[0], w[1], b] {
//!         f.extend(v.to_le_bytes());
//!     }
//!     f
//! }
//! let a = ParamSet::from_bytes(&file([1.0, 2.0], 0.5), "a")?;
//! let b = ParamSet::from_bytes(&file([4.0, 6.0], 0.5), "b")?;
//! let ctx = Context::cpu();
//! let d = geometry::distance(&ctx, &a, &b)?;
//! assert_eq!(a.modules()[0].name, "fc"); // the first name component
//! assert_eq!(d.modules, [5.0]);
//! let mut mid = a.try_clone()?;
//! geometry::interpolate(&ctx, &a, &b, 0.5, &mut mid)?;
//! assert_eq!(geometry::distance(&ctx, &a, &mid)?.total, 2.5);
//! # Ok::<(), transferlens::Error>(())
//! ```

use crate::backend::Context;
use crate::error::{fail, Error, Result};
use crate::params::{match_all, match_weights, HostSliceMut, ParamSet};
use crate::tensor::HostSlice;
use device::Placement;
use rayon::prelude::*;

mod device;

/// Elements per parallel task: big enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 16;

/// Per-element kernels on host slices: the primitives a device backend would replace.
///
/// Each kernel is one generic body compiled twice: for the baseline target and, on x86-64, with
/// AVX2 enabled, chosen at run time (the baseline x86-64 target only has SSE2). The bodies are
/// plain loops over fixed-width blocks that the compiler vectorises.
pub mod kernels {
    use half::slice::HalfFloatSliceExt;
    use half::{bf16, f16};

    /// Exact conversion of a storage element to f64, inlined into the loops below.
    pub trait Load: Copy + Send + Sync {
        fn f64(self) -> f64;
        /// Eight elements (`x.len() == 8`) as f64; `HW`: F16C and AVX may be used.
        #[inline(always)]
        fn load8<const HW: bool>(x: &[Self]) -> [f64; 8] {
            std::array::from_fn(|k| x[k].f64())
        }
    }
    impl Load for f64 {
        #[inline(always)]
        fn f64(self) -> f64 {
            self
        }
    }
    impl Load for f32 {
        #[inline(always)]
        fn f64(self) -> f64 {
            self as f64
        }
    }
    impl Load for f16 {
        #[inline(always)]
        fn f64(self) -> f64 {
            f16_to_f32(self.to_bits()) as f64
        }
        #[inline(always)]
        fn load8<const HW: bool>(x: &[f16]) -> [f64; 8] {
            #[cfg(target_arch = "x86_64")]
            if HW {
                use std::arch::x86_64::*;
                assert!(x.len() == 8);
                let mut out = [0f64; 8];
                // SAFETY: HW is true only in code that runs after the CPU reported AVX2 and F16C;
                // x holds 8 elements (16 bytes) and out 8 f64.
                unsafe {
                    let h = _mm_loadu_si128(x.as_ptr() as *const __m128i);
                    let f = _mm256_cvtph_ps(h);
                    _mm256_storeu_pd(out.as_mut_ptr(), _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
                    _mm256_storeu_pd(out.as_mut_ptr().add(4), _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
                }
                return out;
            }
            std::array::from_fn(|k| x[k].f64())
        }
    }
    impl Load for bf16 {
        #[inline(always)]
        fn f64(self) -> f64 {
            bf16_to_f32(self.to_bits()) as f64
        }
    }

    /// bf16 to f32 is exact: the bf16 bits are the top half of the f32.
    #[inline(always)]
    pub fn bf16_to_f32(bits: u16) -> f32 {
        f32::from_bits((bits as u32) << 16)
    }

    /// f16 to f32, exact, branch-free so that it vectorises: the exponent is rebased by a
    /// multiplication by 2^112 (which also normalises subnormals); Inf and NaN keep their
    /// payload.
    #[inline(always)]
    pub fn f16_to_f32(bits: u16) -> f32 {
        let h = bits as u32;
        let sign = (h & 0x8000) << 16;
        let em = h & 0x7fff;
        let finite = f32::from_bits(em << 13) * f32::from_bits(0x7780_0000); // 2^112
        let special = 0x7f80_0000 | ((em & 0x3ff) << 13);
        let magnitude = if em >= 0x7c00 { special } else { finite.to_bits() };
        f32::from_bits(sign | magnitude)
    }

    /// f32 to bf16, rounding to nearest even; NaN stays NaN (quietened).
    #[inline(always)]
    pub fn f32_to_bf16(x: f32) -> u16 {
        let b = x.to_bits();
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        let nan = ((b >> 16) as u16) | 0x0040;
        if x.is_nan() {
            nan
        } else {
            rounded
        }
    }

    /// Set by tests to run the baseline versions on a CPU that has AVX2.
    #[cfg(test)]
    static FORCE_BASELINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// Whether the AVX2 versions can run (checked once; the std macro caches).
    #[inline]
    fn avx2() -> bool {
        #[cfg(test)]
        if FORCE_BASELINE.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Defines `pub fn $name` that runs `$body` compiled for AVX2 where the CPU has it, else
    /// compiled for the baseline target.
    macro_rules! multiversion {
        ($(#[$doc:meta])* fn $name:ident<$($g:ident: $bound:path),*>($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
            $(#[$doc])*
            pub fn $name<$($g: $bound),*>($($arg: $ty),*) -> $ret {
                #[inline(always)]
                #[allow(non_snake_case)]
                fn body<const HW: bool, $($g: $bound),*>($($arg: $ty),*) -> $ret $body
                #[cfg(target_arch = "x86_64")]
                #[target_feature(enable = "avx2,f16c")]
                unsafe fn with_avx2<$($g: $bound),*>($($arg: $ty),*) -> $ret {
                    body::<true, $($g),*>($($arg),*)
                }
                #[cfg(target_arch = "x86_64")]
                if avx2() {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { with_avx2::<$($g),*>($($arg),*) };
                }
                body::<false, $($g),*>($($arg),*)
            }
        };
    }

    /// Lanes of independent accumulators: enough to hide the add latency and fill a vector.
    const LANES: usize = 8;

    // One sum per loop, lane-wise: the loop vectoriser turns each into vertical vector code.
    // (A loop that updates several sums at once gets packed across the sums instead, with
    // shuffles, several times slower.)

    #[inline(always)]
    fn acc_sq_diff<const HW: bool, A: Load, B: Load>(a: &[A], b: &[B], acc: &mut [f64; LANES]) {
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            let (x, y) = (A::load8::<HW>(x), B::load8::<HW>(y));
            for k in 0..LANES {
                let d = x[k] - y[k];
                acc[k] += d * d;
            }
        }
        for (x, y) in ra.iter().zip(rb) {
            let d = x.f64() - y.f64();
            acc[0] += d * d;
        }
    }

    #[inline(always)]
    fn acc_dot<const HW: bool, A: Load, B: Load>(a: &[A], b: &[B], acc: &mut [f64; LANES]) {
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            let (x, y) = (A::load8::<HW>(x), B::load8::<HW>(y));
            for k in 0..LANES {
                acc[k] += x[k] * y[k];
            }
        }
        for (x, y) in ra.iter().zip(rb) {
            acc[0] += x.f64() * y.f64();
        }
    }

    #[inline(always)]
    fn acc_sq<const HW: bool, A: Load>(a: &[A], acc: &mut [f64; LANES]) {
        let ca = a.chunks_exact(LANES);
        let ra = ca.remainder();
        for x in ca {
            let x = A::load8::<HW>(x);
            for k in 0..LANES {
                let v = x[k];
                acc[k] += v * v;
            }
        }
        for x in ra {
            acc[0] += x.f64() * x.f64();
        }
    }

    fn total(acc: [f64; LANES]) -> f64 {
        acc.iter().sum()
    }

    multiversion! {
        /// Sum of (a - b)^2 in f64.
        fn sum_sq_diff<A: Load, B: Load>(a: &[A], b: &[B]) -> f64 {
            assert_eq!(a.len(), b.len());
            let mut acc = [0f64; LANES];
            acc_sq_diff::<HW, A, B>(a, b, &mut acc);
            total(acc)
        }
    }

    multiversion! {
        /// Sum of a^2 in f64.
        fn sum_sq<A: Load>(a: &[A]) -> f64 {
            let mut acc = [0f64; LANES];
            acc_sq::<HW, A>(a, &mut acc);
            total(acc)
        }
    }

    multiversion! {
        /// `[sum a^2, sum b^2, sum a b, sum (a - b)^2]` in f64.
        fn stats<A: Load, B: Load>(a: &[A], b: &[B]) -> [f64; 4] {
            assert_eq!(a.len(), b.len());
            // Four passes over blocks small enough to stay in L1: memory is read once.
            const SUB: usize = 2048;
            let mut acc = [[0f64; LANES]; 4];
            for (x, y) in a.chunks(SUB).zip(b.chunks(SUB)) {
                acc_sq::<HW, A>(x, &mut acc[0]);
                acc_sq::<HW, B>(y, &mut acc[1]);
                acc_dot::<HW, A, B>(x, y, &mut acc[2]);
                acc_sq_diff::<HW, A, B>(x, y, &mut acc[3]);
            }
            acc.map(total)
        }
    }

    /// Elements per block of [`lerp32`]'s f32 scratch.
    const BLOCK: usize = 256;

    /// Storage types interpolated in f32 arithmetic.
    pub trait Lerp32: Copy + Send + Sync {
        fn to_f32(self) -> f32;
        fn store(src: &[f32], dst: &mut [Self]);
        /// out = wa a + wb b on up to one block; `HW`: F16C and AVX may be used.
        #[inline(always)]
        fn lerp_block<const HW: bool>(a: &[Self], b: &[Self], wa: f32, wb: f32, out: &mut [Self]) {
            let mut tmp = [0f32; BLOCK];
            let n = a.len();
            for ((t, x), y) in tmp[..n].iter_mut().zip(a).zip(b) {
                *t = wa * x.to_f32() + wb * y.to_f32();
            }
            Self::store(&tmp[..n], out);
        }
    }
    impl Lerp32 for f32 {
        #[inline(always)]
        fn to_f32(self) -> f32 {
            self
        }
        #[inline(always)]
        fn store(src: &[f32], dst: &mut [f32]) {
            dst.copy_from_slice(src);
        }
    }
    impl Lerp32 for bf16 {
        #[inline(always)]
        fn to_f32(self) -> f32 {
            bf16_to_f32(self.to_bits())
        }
        #[inline(always)]
        fn store(src: &[f32], dst: &mut [bf16]) {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = bf16::from_bits(f32_to_bf16(*s));
            }
        }
    }
    impl Lerp32 for f16 {
        #[inline(always)]
        fn to_f32(self) -> f32 {
            f16_to_f32(self.to_bits())
        }
        #[inline(always)]
        fn store(src: &[f32], dst: &mut [f16]) {
            // half rounds to nearest even, with F16C where the CPU has it.
            dst.convert_from_f32_slice(src);
        }
        #[inline(always)]
        fn lerp_block<const HW: bool>(a: &[f16], b: &[f16], wa: f32, wb: f32, out: &mut [f16]) {
            #[cfg(target_arch = "x86_64")]
            if HW {
                use std::arch::x86_64::*;
                let n = a.len();
                assert!(b.len() == n && out.len() == n);
                let full = n - n % 8;
                // SAFETY: HW is true only after the CPU reported AVX2 and F16C; every access
                // is to 8 elements within [0, full) of slices of length n.
                unsafe {
                    let (va, vb) = (_mm256_set1_ps(wa), _mm256_set1_ps(wb));
                    let mut i = 0;
                    while i < full {
                        let x = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(i) as *const __m128i));
                        let y = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i) as *const __m128i));
                        let v = _mm256_add_ps(_mm256_mul_ps(va, x), _mm256_mul_ps(vb, y));
                        // Round to nearest even, once.
                        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                        _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, h);
                        i += 8;
                    }
                }
                for i in full..n {
                    out[i] = f16::from_f32(wa * a[i].to_f32() + wb * b[i].to_f32());
                }
                return;
            }
            let mut tmp = [0f32; BLOCK];
            let n = a.len();
            for ((t, x), y) in tmp[..n].iter_mut().zip(a).zip(b) {
                *t = wa * x.to_f32() + wb * y.to_f32();
            }
            Self::store(&tmp[..n], out);
        }
    }

    multiversion! {
        /// out = wa a + wb b computed in f32 and rounded once to the storage type.
        fn lerp32<T: Lerp32>(a: &[T], b: &[T], wa: f32, wb: f32, out: &mut [T]) -> () {
            assert!(a.len() == out.len() && b.len() == out.len());
            for ((sa, sb), so) in a.chunks(BLOCK).zip(b.chunks(BLOCK)).zip(out.chunks_mut(BLOCK)) {
                T::lerp_block::<HW>(sa, sb, wa, wb, so);
            }
        }
    }

    multiversion! {
        /// out = wa a + wb b in f64.
        fn lerp_f64<>(a: &[f64], b: &[f64], wa: f64, wb: f64, out: &mut [f64]) -> () {
            assert!(a.len() == out.len() && b.len() == out.len());
            for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
                *o = wa * *x + wb * *y;
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn f16_conversion_is_exact_for_every_bit_pattern() {
            for bits in 0..=u16::MAX {
                let want = f16::from_bits(bits).to_f32();
                let got = f16_to_f32(bits);
                if want.is_nan() {
                    assert!(got.is_nan(), "{bits:#x}");
                } else {
                    assert_eq!(got.to_bits(), want.to_bits(), "{bits:#x}");
                }
            }
        }

        #[test]
        fn kernels_match_f64_loops_on_awkward_lengths() {
            // Both versions: the one this CPU picks, then the baseline one.
            check_kernels();
            FORCE_BASELINE.store(true, std::sync::atomic::Ordering::Relaxed);
            check_kernels();
            FORCE_BASELINE.store(false, std::sync::atomic::Ordering::Relaxed);
        }

        fn check_kernels() {
            let mut s = 777u64;
            let mut next = || {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 52) as f64 * 2.0 - 1.0
            };
            for n in [0usize, 1, 3, 7, 8, 9, 17, 255, 2049, 4101] {
                let x: Vec<f64> = (0..n).map(|_| next()).collect();
                let y: Vec<f64> = (0..n).map(|_| next()).collect();
                let xh: Vec<f16> = x.iter().map(|&v| f16::from_f64(v)).collect();
                let yb: Vec<bf16> = y.iter().map(|&v| bf16::from_f64(v)).collect();
                let (xq, yq): (Vec<f64>, Vec<f64>) =
                    (xh.iter().map(|v| v.to_f64()).collect(), yb.iter().map(|v| v.to_f64()).collect());
                let mut want = [0f64; 4];
                for i in 0..n {
                    want[0] += xq[i] * xq[i];
                    want[1] += yq[i] * yq[i];
                    want[2] += xq[i] * yq[i];
                    want[3] += (xq[i] - yq[i]) * (xq[i] - yq[i]);
                }
                let got = stats(&xh, &yb);
                for k in 0..4 {
                    assert!((got[k] - want[k]).abs() <= 1e-12 * want[k].abs().max(1.0), "n {n} k {k}");
                }
                let d = sum_sq_diff(&xh, &yb);
                assert!((d - want[3]).abs() <= 1e-12 * want[3].max(1.0), "n {n}");
                assert!((sum_sq(&xh) - want[0]).abs() <= 1e-12 * want[0].max(1.0), "n {n}");
                // Interpolation in f32, rounded once to f16.
                let yh: Vec<f16> = y.iter().map(|&v| f16::from_f64(v)).collect();
                let mut out = vec![f16::ZERO; n];
                lerp32(&xh, &yh, 1.5, -0.5, &mut out);
                for i in 0..n {
                    let w = f16::from_f32(1.5 * xh[i].to_f32() + -0.5 * yh[i].to_f32());
                    assert_eq!(out[i].to_bits(), w.to_bits(), "n {n} i {i}");
                }
            }
        }

        #[test]
        fn bf16_rounding_matches_half() {
            let mut s = 12345u64;
            for _ in 0..200_000 {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let x = f32::from_bits((s >> 32) as u32);
                let want = bf16::from_f32(x);
                let got = f32_to_bf16(x);
                if x.is_nan() {
                    assert!(bf16::from_bits(got).is_nan());
                } else {
                    assert_eq!(got, want.to_bits(), "{x:e}");
                }
            }
        }
    }
}

/// One module's figures comparing sets `a` and `b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModuleGeometry {
    /// Elements of the module.
    pub numel: u64,
    /// ||a - b||_2.
    pub distance: f64,
    /// ||a||_2.
    pub norm_a: f64,
    /// ||b||_2.
    pub norm_b: f64,
    /// ||a - b|| / ||a||.
    pub relative: f64,
    /// <a, b> / (||a|| ||b||).
    pub cosine: f64,
}

/// Distances per module (of `a`'s grouping) and in total.
#[derive(Debug, Clone, PartialEq)]
pub struct Distances {
    pub modules: Vec<f64>,
    pub total: f64,
}

/// A task: a chunk of one tensor pair.
struct Task {
    module: usize,
    ia: usize,
    ib: usize,
    start: usize,
    end: usize,
}

/// Chunks of every weight of `a`'s modules, paired with `b` through `pairs`.
fn tasks(a: &ParamSet, pairs: &[usize], modules: Option<usize>) -> Vec<Task> {
    let mut out = Vec::new();
    for (m, module) in a.modules().iter().enumerate() {
        if modules.is_some_and(|only| only != m) {
            continue;
        }
        for &ia in &module.tensors {
            let n = a.tensors()[ia].numel();
            let mut start = 0;
            while start < n {
                let end = (start + CHUNK).min(n);
                out.push(Task { module: m, ia, ib: pairs[ia], start, end });
                start = end;
            }
        }
    }
    out
}

macro_rules! dispatch2 {
    ($a:expr, $b:expr, $f:ident) => {{
        use HostSlice as H;
        match ($a, $b) {
            (H::F32(x), H::F32(y)) => kernels::$f(x, y),
            (H::F32(x), H::F64(y)) => kernels::$f(x, y),
            (H::F32(x), H::F16(y)) => kernels::$f(x, y),
            (H::F32(x), H::BF16(y)) => kernels::$f(x, y),
            (H::F64(x), H::F32(y)) => kernels::$f(x, y),
            (H::F64(x), H::F64(y)) => kernels::$f(x, y),
            (H::F64(x), H::F16(y)) => kernels::$f(x, y),
            (H::F64(x), H::BF16(y)) => kernels::$f(x, y),
            (H::F16(x), H::F32(y)) => kernels::$f(x, y),
            (H::F16(x), H::F64(y)) => kernels::$f(x, y),
            (H::F16(x), H::F16(y)) => kernels::$f(x, y),
            (H::F16(x), H::BF16(y)) => kernels::$f(x, y),
            (H::BF16(x), H::F32(y)) => kernels::$f(x, y),
            (H::BF16(x), H::F64(y)) => kernels::$f(x, y),
            (H::BF16(x), H::F16(y)) => kernels::$f(x, y),
            (H::BF16(x), H::BF16(y)) => kernels::$f(x, y),
        }
    }};
}

fn sub(s: HostSlice<'_>, start: usize, end: usize) -> HostSlice<'_> {
    match s {
        HostSlice::F32(x) => HostSlice::F32(&x[start..end]),
        HostSlice::F64(x) => HostSlice::F64(&x[start..end]),
        HostSlice::F16(x) => HostSlice::F16(&x[start..end]),
        HostSlice::BF16(x) => HostSlice::BF16(&x[start..end]),
    }
}

/// Runs `f` on every task in parallel; returns the per-module sums of its results, added in
/// task order so that the result does not depend on scheduling.
fn reduce<const K: usize>(
    a: &ParamSet,
    b: &ParamSet,
    pairs: &[usize],
    f: impl Fn(HostSlice<'_>, HostSlice<'_>) -> [f64; K] + Sync,
) -> Result<Vec<[f64; K]>> {
    let tasks = tasks(a, pairs, None);
    let parts: Vec<[f64; K]> = tasks
        .par_iter()
        .map(|t| -> Result<[f64; K]> {
            let x = sub(a.tensors()[t.ia].host()?, t.start, t.end);
            let y = sub(b.tensors()[t.ib].host()?, t.start, t.end);
            Ok(f(x, y))
        })
        .collect::<Result<_>>()?;
    let mut sums = vec![[0f64; K]; a.modules().len()];
    for (t, p) in tasks.iter().zip(parts) {
        for k in 0..K {
            sums[t.module][k] += p[k];
        }
    }
    Ok(sums)
}

fn check_finite(module: &str, what: &str, v: f64) -> Result<f64> {
    if !v.is_finite() {
        fail!(NonFinite, "module {module:?}: {what} is not finite (the weights hold NaN or Inf, or overflow f64)");
    }
    Ok(v)
}

/// ||a_i - b_i||_2 for every module i of `a` and the total sqrt(sum_i ||a_i - b_i||^2).
pub fn distance(ctx: &Context, a: &ParamSet, b: &ParamSet) -> Result<Distances> {
    let place = device::placement(ctx, &[a, b])?;
    let pairs = match_weights(a, b, "a", "b")?;
    let sums = match place {
        Placement::Host => reduce(a, b, &pairs, |x, y| [dispatch2!(x, y, sum_sq_diff)])?,
        Placement::Device(dev) => device::module_sums(dev, a, Some((b, &pairs)))?.into_iter().map(|s| [s]).collect(),
    };
    let mut modules = Vec::with_capacity(sums.len());
    for (m, s) in a.modules().iter().zip(&sums) {
        modules.push(check_finite(&m.name, "the distance", s[0])?.sqrt());
    }
    let total = sums.iter().map(|s| s[0]).sum::<f64>().sqrt();
    Ok(Distances { modules, total })
}

/// ||p_i||_2 for every module i of `p`, and the norm of all weights.
pub fn norms(ctx: &Context, p: &ParamSet) -> Result<Distances> {
    let sums = match device::placement(ctx, &[p])? {
        Placement::Host => {
            let pairs: Vec<usize> = (0..p.tensors().len()).collect();
            reduce(p, p, &pairs, |x, _| {
                [match x {
                    HostSlice::F32(x) => kernels::sum_sq(x),
                    HostSlice::F64(x) => kernels::sum_sq(x),
                    HostSlice::F16(x) => kernels::sum_sq(x),
                    HostSlice::BF16(x) => kernels::sum_sq(x),
                }]
            })?
        }
        Placement::Device(dev) => device::module_sums(dev, p, None)?.into_iter().map(|s| [s]).collect(),
    };
    let mut modules = Vec::with_capacity(sums.len());
    for (m, s) in p.modules().iter().zip(&sums) {
        modules.push(check_finite(&m.name, "the norm", s[0])?.sqrt());
    }
    let total = sums.iter().map(|s| s[0]).sum::<f64>().sqrt();
    Ok(Distances { modules, total })
}

fn geometry_of(name: &str, numel: u64, s: [f64; 4]) -> Result<ModuleGeometry> {
    for (v, what) in s.iter().zip(["||a||", "||b||", "<a, b>", "||a - b||"]) {
        check_finite(name, what, *v)?;
    }
    let (aa, bb, ab, dd) = (s[0], s[1], s[2], s[3]);
    if aa == 0.0 || bb == 0.0 {
        fail!(
            DegenerateInput,
            "module {name:?}: {} is all zeros, so the relative distance and cosine are undefined",
            if aa == 0.0 { "a" } else { "b" }
        );
    }
    Ok(ModuleGeometry {
        numel,
        distance: dd.sqrt(),
        norm_a: aa.sqrt(),
        norm_b: bb.sqrt(),
        relative: dd.sqrt() / aa.sqrt(),
        cosine: (ab / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0),
    })
}

/// Distance, norms, relative distance and cosine for every module of `a`, and over all weights.
/// A module that is all zeros in either set is [`Error::DegenerateInput`].
pub fn compare(ctx: &Context, a: &ParamSet, b: &ParamSet) -> Result<(Vec<ModuleGeometry>, ModuleGeometry)> {
    if let Placement::Device(dev) = device::placement(ctx, &[a, b])? {
        fail!(
            DeviceUnavailable,
            "compare needs inner products, which CUDA device {} does not compute yet; use distance and norms there, or compare host copies",
            dev.ordinal()
        );
    }
    let pairs = match_weights(a, b, "a", "b")?;
    let sums = reduce(a, b, &pairs, |x, y| dispatch2!(x, y, stats))?;
    let mut out = Vec::with_capacity(sums.len());
    let mut total = [0f64; 4];
    for (m, s) in a.modules().iter().zip(&sums) {
        out.push(geometry_of(&m.name, m.numel, *s)?);
        for k in 0..4 {
            total[k] += s[k];
        }
    }
    let total = geometry_of("(all weights)", a.weight_numel(), total)?;
    Ok((out, total))
}

/// Which tensors an interpolation moves.
#[derive(Debug, Clone, Copy)]
enum Moving {
    All,
    Module(usize),
}

fn check_lambda(lambda: f64, name: &str) -> Result<()> {
    if !lambda.is_finite() {
        fail!(InvalidArgument, "{name} must be a finite number, got {lambda}");
    }
    Ok(())
}

/// Rejects an output that shares memory with an input: the writes would race the reads.
fn check_disjoint(out: &ParamSet, inputs: &[&ParamSet]) -> Result<()> {
    let mut spans: Vec<(usize, usize, &str)> = out
        .tensors()
        .iter()
        .filter(|t| t.nbytes() > 0)
        .map(|t| {
            let (s, e) = t.addr_range();
            (s, e, t.name())
        })
        .collect();
    spans.sort();
    for set in inputs {
        for t in set.tensors().iter().filter(|t| t.nbytes() > 0) {
            let (s, e) = t.addr_range();
            // The first out span that ends after s.
            let k = spans.partition_point(|x| x.1 <= s);
            if let Some(x) = spans.get(k) {
                if x.0 < e {
                    fail!(
                        InvalidArgument,
                        "out tensor {:?} shares memory with input tensor {:?}; write into a separate set",
                        x.2,
                        t.name()
                    );
                }
            }
        }
    }
    Ok(())
}

fn interpolate_impl(
    ctx: &Context,
    a: &ParamSet,
    b: &ParamSet,
    lambda: f64,
    moving: Moving,
    out: &mut ParamSet,
) -> Result<()> {
    check_lambda(lambda, "lambda")?;
    let place = device::placement(ctx, &[a, b, out])?;
    let pairs = match_weights(a, b, "a", "b")?;
    let out_of = match_all(a, out, "a", "out")?;
    check_disjoint(out, &[a, b])?;
    for (i, t) in a.tensors().iter().enumerate() {
        if t.is_weight() && t.dtype() != b.tensors()[pairs[i]].dtype() {
            fail!(
                UnsupportedDtype,
                "tensor {:?} is {} in a but {} in b; interpolation needs one dtype per tensor",
                t.name(),
                t.dtype().name(),
                b.tensors()[pairs[i]].dtype().name()
            );
        }
    }
    let moving_module = match moving {
        Moving::All => None,
        Moving::Module(m) => Some(m),
    };
    if let Placement::Device(dev) = place {
        return device::interpolate(dev, a, b, &pairs, out, &out_of, lambda, moving_module);
    }
    // Non-weights are copied from a; weights outside the moving module are copied from b.
    let tasks = tasks(a, &pairs, None);
    // Hand each task its own disjoint piece of out.
    let mut pieces: Vec<Option<HostSliceMut<'_>>> = Vec::new();
    let mut copies: Vec<(&[u8], &mut [u8])> = Vec::new();
    {
        let mut slots: Vec<Option<&mut crate::params::Tensor>> = out.tensors_mut().iter_mut().map(Some).collect();
        let mut rest: Vec<Option<HostSliceMut<'_>>> = Vec::with_capacity(slots.len());
        for (i, t) in a.tensors().iter().enumerate() {
            let Some(j) = out_of[i] else {
                rest.push(None); // a non-weight that out does not hold
                continue;
            };
            let o = slots[j].take().expect("out tensors are distinct");
            if t.is_weight() {
                rest.push(Some(o.host_mut()?));
            } else {
                rest.push(None);
                copies.push((t.bytes()?, o.bytes_mut()?));
            }
        }
        for task in &tasks {
            let whole = rest[task.ia].take().expect("a weight has an out slice");
            let len = task.end - task.start;
            let (head, tail) = split_mut(whole, len);
            pieces.push(Some(head));
            rest[task.ia] = Some(tail);
        }
    }
    let wa = 1.0 - lambda;
    let wb = lambda;
    let mut jobs: Vec<(&Task, HostSliceMut<'_>)> =
        tasks.iter().zip(pieces.into_iter().map(|p| p.expect("one piece per task"))).collect();
    jobs.par_iter_mut().try_for_each(|(task, o)| -> Result<()> {
        let x = sub(a.tensors()[task.ia].host()?, task.start, task.end);
        let y = sub(b.tensors()[task.ib].host()?, task.start, task.end);
        let moves = moving_module.map_or(true, |m| m == task.module);
        let l = if moves { lambda } else { 1.0 };
        lerp_slice(x, y, l, if moves { wa } else { 0.0 }, if moves { wb } else { 1.0 }, o)
    })?;
    copies.par_iter_mut().for_each(|(src, dst)| dst.copy_from_slice(src));
    Ok(())
}

fn split_mut(s: HostSliceMut<'_>, at: usize) -> (HostSliceMut<'_>, HostSliceMut<'_>) {
    match s {
        HostSliceMut::F32(x) => {
            let (h, t) = x.split_at_mut(at);
            (HostSliceMut::F32(h), HostSliceMut::F32(t))
        }
        HostSliceMut::F64(x) => {
            let (h, t) = x.split_at_mut(at);
            (HostSliceMut::F64(h), HostSliceMut::F64(t))
        }
        HostSliceMut::F16(x) => {
            let (h, t) = x.split_at_mut(at);
            (HostSliceMut::F16(h), HostSliceMut::F16(t))
        }
        HostSliceMut::BF16(x) => {
            let (h, t) = x.split_at_mut(at);
            (HostSliceMut::BF16(h), HostSliceMut::BF16(t))
        }
    }
}

/// out = (1 - lambda) a + lambda b on one chunk; lambda 0 and 1 copy an endpoint exactly.
fn lerp_slice(
    a: HostSlice<'_>,
    b: HostSlice<'_>,
    lambda: f64,
    wa: f64,
    wb: f64,
    out: &mut HostSliceMut<'_>,
) -> Result<()> {
    use HostSlice as H;
    use HostSliceMut as M;
    let endpoint = if lambda == 0.0 {
        Some(a)
    } else if lambda == 1.0 {
        Some(b)
    } else {
        None
    };
    match (a, b, out) {
        (H::F32(x), H::F32(y), M::F32(o)) => match endpoint {
            Some(H::F32(e)) => o.copy_from_slice(e),
            _ => kernels::lerp32(x, y, wa as f32, wb as f32, o),
        },
        (H::F64(x), H::F64(y), M::F64(o)) => match endpoint {
            Some(H::F64(e)) => o.copy_from_slice(e),
            _ => kernels::lerp_f64(x, y, wa, wb, o),
        },
        (H::F16(x), H::F16(y), M::F16(o)) => match endpoint {
            Some(H::F16(e)) => o.copy_from_slice(e),
            _ => kernels::lerp32(x, y, wa as f32, wb as f32, o),
        },
        (H::BF16(x), H::BF16(y), M::BF16(o)) => match endpoint {
            Some(H::BF16(e)) => o.copy_from_slice(e),
            _ => kernels::lerp32(x, y, wa as f32, wb as f32, o),
        },
        _ => return Err(Error::Panic("interpolation reached mixed dtypes after the dtype check".into())),
    }
    Ok(())
}

/// Writes `(1 - lambda) a + lambda b` into `out` for any finite `lambda` (outside [0, 1] it
/// extrapolates). `out` must hold the weights of `a` (names, dtypes, shapes) and share no
/// memory with `a` or `b`; non-weight tensors of `a` are copied into `out` where it holds them.
pub fn interpolate(ctx: &Context, a: &ParamSet, b: &ParamSet, lambda: f64, out: &mut ParamSet) -> Result<()> {
    interpolate_impl(ctx, a, b, lambda, Moving::All, out)
}

/// Moves module `module` (an index into `a`'s modules) to `(1 - lambda) a + lambda b` and keeps
/// every other weight at `b`; non-weight tensors are copied from `a`.
pub fn interpolate_module(
    ctx: &Context,
    a: &ParamSet,
    b: &ParamSet,
    lambda: f64,
    module: usize,
    out: &mut ParamSet,
) -> Result<()> {
    if module >= a.modules().len() {
        fail!(NotFound, "module index {module} is out of range: the set has {} modules", a.modules().len());
    }
    interpolate_impl(ctx, a, b, lambda, Moving::Module(module), out)
}

/// Rewinds module `module` of `final_` toward its value in `initial`:
/// theta_i = (1 - alpha) initial_i + alpha final_i, every other weight at `final_`. alpha = 1
/// gives the final weights, alpha = 0 the module at its initial value (the path of module
/// criticality and rewind curves). Non-weight tensors are copied from `initial`.
pub fn rewind(
    ctx: &Context,
    initial: &ParamSet,
    final_: &ParamSet,
    module: usize,
    alpha: f64,
    out: &mut ParamSet,
) -> Result<()> {
    check_lambda(alpha, "alpha")?;
    interpolate_module(ctx, initial, final_, alpha, module, out)
}

/// The module called `name` of `p`.
pub fn module_named(p: &ParamSet, name: &str) -> Result<usize> {
    p.module_index(name).ok_or_else(|| {
        Error::NotFound(format!(
            "no module {name:?}; the modules are {:?}",
            p.modules().iter().map(|m| m.name.as_str()).collect::<Vec<_>>()
        ))
    })
}
