//! CPU twin of `kernels/weights.cu`; CUDA host code in `backend/cuda/weights.rs`. The
//! per-chunk loops of [`crate::geometry`]: sums of squares, dot products and interpolation on
//! host slices of any storage dtype.
//!
//! Each function is one generic body compiled twice by `multiversion!` (baseline, and AVX2 +
//! FMA + F16C where the CPU has them); the bodies are plain loops over fixed-width blocks that
//! the compiler vectorises.
//!
//! Rounding against the kernels:
//! - interpolation ([`lerp32`], [`lerp_f64`]) is `lerp_<t>`'s expression, `fma(l, b, (1 - l) a)`
//!   in f32 (f64 for f64 data) with `l` and `1 - l` rounded to that type, then rounded once to
//!   the storage type (nearest even): the same bits as the device;
//! - sums of squares ([`sum_sq_diff`], [`sum_sq`], [`stats`]) are f64 sums on both, in another
//!   order (eight lanes here, blocks and atomics there), and `segment_sumsq_<t>` fuses each
//!   multiply-add where these round the square first: they agree to a few units in the last
//!   place of an f64 (and the device's atomics vary the last bits from run to run).

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
    pub fn sum_sq_diff<A: Load, B: Load>(a: &[A], b: &[B]) -> f64 {
        assert_eq!(a.len(), b.len());
        let mut acc = [0f64; LANES];
        acc_sq_diff::<HW, A, B>(a, b, &mut acc);
        total(acc)
    }
}

multiversion! {
    /// Sum of a^2 in f64.
    pub fn sum_sq<A: Load>(a: &[A]) -> f64 {
        let mut acc = [0f64; LANES];
        acc_sq::<HW, A>(a, &mut acc);
        total(acc)
    }
}

multiversion! {
    /// `[sum a^2, sum b^2, sum a b, sum (a - b)^2]` in f64.
    pub fn stats<A: Load, B: Load>(a: &[A], b: &[B]) -> [f64; 4] {
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
    /// `out = fma(l, b, m a)` on up to one block, `m = 1 - l`; `HW`: AVX2, FMA and F16C may
    /// be used.
    #[inline(always)]
    fn lerp_block<const HW: bool>(a: &[Self], b: &[Self], l: f32, m: f32, out: &mut [Self]) {
        let mut tmp = [0f32; BLOCK];
        let n = a.len();
        for ((t, x), y) in tmp[..n].iter_mut().zip(a).zip(b) {
            *t = l.mul_add(y.to_f32(), m * x.to_f32());
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
    fn lerp_block<const HW: bool>(a: &[f16], b: &[f16], l: f32, m: f32, out: &mut [f16]) {
        #[cfg(target_arch = "x86_64")]
        if HW {
            use std::arch::x86_64::*;
            let n = a.len();
            assert!(b.len() == n && out.len() == n);
            let full = n - n % 8;
            // SAFETY: HW is true only in code compiled for and run after the CPU reported AVX2,
            // FMA and F16C; every access is to 8 elements within [0, full) of slices of length n.
            unsafe {
                let (vl, vm) = (_mm256_set1_ps(l), _mm256_set1_ps(m));
                let mut i = 0;
                while i < full {
                    let x = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(i) as *const __m128i));
                    let y = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i) as *const __m128i));
                    let v = _mm256_fmadd_ps(vl, y, _mm256_mul_ps(vm, x));
                    // Round to nearest even, once.
                    let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                    _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, h);
                    i += 8;
                }
            }
            for i in full..n {
                out[i] = f16::from_f32(l.mul_add(b[i].to_f32(), m * a[i].to_f32()));
            }
            return;
        }
        let mut tmp = [0f32; BLOCK];
        let n = a.len();
        for ((t, x), y) in tmp[..n].iter_mut().zip(a).zip(b) {
            *t = l.mul_add(y.to_f32(), m * x.to_f32());
        }
        Self::store(&tmp[..n], out);
    }
}

multiversion! {
    /// `out = (1 - l) a + l b` as `lerp_<t>` computes it: `fma(l, b, (1 - l) a)` in f32, with
    /// `1 - l` rounded to f32, then rounded once to the storage type.
    pub fn lerp32<T: Lerp32>(a: &[T], b: &[T], l: f32, out: &mut [T]) {
        assert!(a.len() == out.len() && b.len() == out.len());
        let m = 1.0 - l;
        for ((sa, sb), so) in a.chunks(BLOCK).zip(b.chunks(BLOCK)).zip(out.chunks_mut(BLOCK)) {
            T::lerp_block::<HW>(sa, sb, l, m, so);
        }
    }
}

multiversion! {
    /// `out = (1 - l) a + l b` as `lerp_f64` computes it: `fma(l, b, (1 - l) a)` in f64.
    pub fn lerp_f64<>(a: &[f64], b: &[f64], l: f64, out: &mut [f64]) {
        assert!(a.len() == out.len() && b.len() == out.len());
        let m = 1.0 - l;
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = l.mul_add(*y, m * *x);
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
        crate::backend::cpu::FORCE_BASELINE.store(true, std::sync::atomic::Ordering::Relaxed);
        check_kernels();
        crate::backend::cpu::FORCE_BASELINE.store(false, std::sync::atomic::Ordering::Relaxed);
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
            // Interpolation as the kernel: fma(l, b, (1 - l) a) in f32, rounded once to f16.
            let yh: Vec<f16> = y.iter().map(|&v| f16::from_f64(v)).collect();
            let mut out = vec![f16::ZERO; n];
            lerp32(&xh, &yh, -0.5, &mut out);
            for i in 0..n {
                let w = f16::from_f32((-0.5f32).mul_add(yh[i].to_f32(), 1.5 * xh[i].to_f32()));
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
