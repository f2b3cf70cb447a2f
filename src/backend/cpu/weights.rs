//! CPU twin of `kernels/weights.cu`; CUDA host code in `backend/cuda/weights.rs`. The
//! per-chunk loops of [`crate::geometry`]: sums of squares, dot products and interpolation on
//! host slices of any storage dtype.
//!
//! Each function is one generic body compiled twice by `multiversion!` (baseline, and AVX2 +
//! FMA + F16C where the CPU has them). The baseline bodies are plain loops over fixed-width
//! blocks that the compiler vectorises; the AVX2 bodies are written with intrinsics (the 16-bit
//! loads: bf16 to f32 is a shift, f16 to f32 is F16C's `vcvtph2ps`), and `stats` reads each
//! element once for its four sums. Both versions add the same products in the same lanes in
//! the same order, so they give the same bits.
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

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Exact conversion of a storage element to f64, inlined into the loops below.
pub trait Load: Copy + Send + Sync {
    fn f64(self) -> f64;
    /// The eight elements at `p` as two vectors of four f64, exactly.
    ///
    /// # Safety
    /// `p` addresses eight readable elements, and the CPU has AVX2 and F16C (call it from
    /// `multiversion!` code under `HW` only).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8_avx2(p: *const Self) -> (__m256d, __m256d);
}

/// Eight f32 as two vectors of four f64.
///
/// # Safety
/// The CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn widen_f32x8(v: __m256) -> (__m256d, __m256d) {
    // SAFETY: register operations only; the caller's CPU has AVX.
    unsafe { (_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v))) }
}

/// Eight bf16 at `p` as f32: the bf16 bits are the top half of the f32.
///
/// # Safety
/// `p` addresses eight readable elements; the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load_bf16x8(p: *const bf16) -> __m256 {
    // SAFETY: a 16-byte unaligned load of the caller's eight elements, then register operations.
    unsafe {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
}

/// Eight f16 at `p` as f32 (F16C, exact).
///
/// # Safety
/// `p` addresses eight readable elements; the CPU has AVX and F16C.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load_f16x8(p: *const f16) -> __m256 {
    // SAFETY: a 16-byte unaligned load of the caller's eight elements, then a conversion.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
}

impl Load for f64 {
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8_avx2(p: *const f64) -> (__m256d, __m256d) {
        // SAFETY: two 32-byte unaligned loads of the caller's eight elements.
        unsafe { (_mm256_loadu_pd(p), _mm256_loadu_pd(p.add(4))) }
    }
}
impl Load for f32 {
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8_avx2(p: *const f32) -> (__m256d, __m256d) {
        // SAFETY: a 32-byte unaligned load of the caller's eight elements; the CPU has AVX2.
        unsafe { widen_f32x8(_mm256_loadu_ps(p)) }
    }
}
impl Load for f16 {
    #[inline(always)]
    fn f64(self) -> f64 {
        f16_to_f32(self.to_bits()) as f64
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8_avx2(p: *const f16) -> (__m256d, __m256d) {
        // SAFETY: the caller's eight elements and CPU features, as load_f16x8 needs.
        unsafe { widen_f32x8(load_f16x8(p)) }
    }
}
impl Load for bf16 {
    #[inline(always)]
    fn f64(self) -> f64 {
        bf16_to_f32(self.to_bits()) as f64
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8_avx2(p: *const bf16) -> (__m256d, __m256d) {
        // SAFETY: the caller's eight elements and CPU features, as load_bf16x8 needs.
        unsafe { widen_f32x8(load_bf16x8(p)) }
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

/// Lanes of independent accumulators: enough to hide the add latency and fill a vector. Lane
/// `k` sums the elements at `k` mod 8; the tail after the last whole block goes to lane 0.
const LANES: usize = 8;

/// Which of the four sums `[sum a^2, sum b^2, sum a b, sum (a - b)^2]` a kernel forms.
#[derive(Clone, Copy)]
struct Wanted {
    sq_a: bool,
    sq_b: bool,
    dot: bool,
    sq_diff: bool,
}

// The plain loops: one sum per loop, lane-wise, so that the loop vectoriser turns each into
// vertical vector code. (A loop that updates several sums at once gets packed across the sums
// instead, with shuffles, several times slower.) Whole blocks of LANES elements only.

#[inline(always)]
fn plain_sq_diff<A: Load, B: Load>(a: &[A], b: &[B], acc: &mut [f64; LANES]) {
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for k in 0..LANES {
            let d = x[k].f64() - y[k].f64();
            acc[k] += d * d;
        }
    }
}

#[inline(always)]
fn plain_dot<A: Load, B: Load>(a: &[A], b: &[B], acc: &mut [f64; LANES]) {
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for k in 0..LANES {
            acc[k] += x[k].f64() * y[k].f64();
        }
    }
}

#[inline(always)]
fn plain_sq<A: Load>(a: &[A], acc: &mut [f64; LANES]) {
    for x in a.chunks_exact(LANES) {
        for k in 0..LANES {
            let v = x[k].f64();
            acc[k] += v * v;
        }
    }
}

/// `s += x y`, lane by lane: a multiply, then an add.
///
/// # Safety
/// The CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_product(s: &mut [__m256d; 2], x: (__m256d, __m256d), y: (__m256d, __m256d)) {
    // SAFETY: register operations only; the caller's CPU has AVX.
    unsafe {
        s[0] = _mm256_add_pd(s[0], _mm256_mul_pd(x.0, y.0));
        s[1] = _mm256_add_pd(s[1], _mm256_mul_pd(x.1, y.1));
    }
}

/// The wanted sums of whole blocks with AVX2: one pass, each block of eight loaded once, the
/// same operations per lane as the plain loops (a multiply, then an add: no fused
/// multiply-add, which would change the bits).
///
/// # Safety
/// The CPU has AVX2 and F16C; `a` and `b` have the same length, a multiple of [`LANES`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx2_blocks<A: Load, B: Load>(a: &[A], b: &[B], w: Wanted, acc: &mut [[f64; LANES]; 4]) {
    debug_assert!(a.len() == b.len() && a.len().is_multiple_of(LANES));
    // SAFETY: every load reads the eight elements at i < a.len() = b.len(), a multiple of eight;
    // the accumulators are arrays of eight f64; the CPU features are the caller's contract.
    unsafe {
        let mut s = [[_mm256_setzero_pd(); 2]; 4];
        for (q, lanes) in acc.iter().enumerate() {
            s[q] = [_mm256_loadu_pd(lanes.as_ptr()), _mm256_loadu_pd(lanes.as_ptr().add(4))];
        }
        let mut i = 0;
        while i < a.len() {
            let x = A::load8_avx2(a.as_ptr().add(i));
            let y = B::load8_avx2(b.as_ptr().add(i));
            if w.sq_a {
                add_product(&mut s[0], x, x);
            }
            if w.sq_b {
                add_product(&mut s[1], y, y);
            }
            if w.dot {
                add_product(&mut s[2], x, y);
            }
            if w.sq_diff {
                let d = (_mm256_sub_pd(x.0, y.0), _mm256_sub_pd(x.1, y.1));
                add_product(&mut s[3], d, d);
            }
            i += LANES;
        }
        for (q, lanes) in acc.iter_mut().enumerate() {
            _mm256_storeu_pd(lanes.as_mut_ptr(), s[q][0]);
            _mm256_storeu_pd(lanes.as_mut_ptr().add(4), s[q][1]);
        }
    }
}

/// Adds the wanted sums of `a` and `b` (same length) to the lanes of `acc` (indexed as in
/// [`Wanted`]). `HW`: the AVX2 code, where `multiversion!` says the CPU has it.
#[inline(always)]
fn sums<const HW: bool, A: Load, B: Load>(a: &[A], b: &[B], w: Wanted, acc: &mut [[f64; LANES]; 4]) {
    assert_eq!(a.len(), b.len());
    let whole = a.len() - a.len() % LANES;
    blocks::<HW, A, B>(&a[..whole], &b[..whole], w, acc);
    for (x, y) in a[whole..].iter().zip(&b[whole..]) {
        let (x, y) = (x.f64(), y.f64());
        let d = x - y;
        let values = [x * x, y * y, x * y, d * d];
        for (q, want) in [w.sq_a, w.sq_b, w.dot, w.sq_diff].into_iter().enumerate() {
            if want {
                acc[q][0] += values[q];
            }
        }
    }
}

/// The wanted sums of whole blocks (the lengths are equal multiples of [`LANES`]).
#[inline(always)]
fn blocks<const HW: bool, A: Load, B: Load>(a: &[A], b: &[B], w: Wanted, acc: &mut [[f64; LANES]; 4]) {
    #[cfg(target_arch = "x86_64")]
    if HW {
        // SAFETY: HW is true only in code compiled for, and run after the CPU reported, AVX2,
        // FMA and F16C; the caller passes equal lengths, multiples of LANES.
        unsafe { avx2_blocks(a, b, w, acc) };
        return;
    }
    // Passes over sub-blocks small enough to stay in L1: memory is read once.
    const SUB: usize = 2048;
    for (x, y) in a.chunks(SUB).zip(b.chunks(SUB)) {
        if w.sq_a {
            plain_sq(x, &mut acc[0]);
        }
        if w.sq_b {
            plain_sq(y, &mut acc[1]);
        }
        if w.dot {
            plain_dot(x, y, &mut acc[2]);
        }
        if w.sq_diff {
            plain_sq_diff(x, y, &mut acc[3]);
        }
    }
}

fn total(acc: [f64; LANES]) -> f64 {
    acc.iter().sum()
}

multiversion! {
    /// Sum of (a - b)^2 in f64.
    pub fn sum_sq_diff<A: Load, B: Load>(a: &[A], b: &[B]) -> f64 {
        let mut acc = [[0f64; LANES]; 4];
        sums::<HW, A, B>(a, b, Wanted { sq_a: false, sq_b: false, dot: false, sq_diff: true }, &mut acc);
        total(acc[3])
    }
}

multiversion! {
    /// Sum of a^2 in f64.
    pub fn sum_sq<A: Load>(a: &[A]) -> f64 {
        let mut acc = [[0f64; LANES]; 4];
        sums::<HW, A, A>(a, a, Wanted { sq_a: true, sq_b: false, dot: false, sq_diff: false }, &mut acc);
        total(acc[0])
    }
}

multiversion! {
    /// `[sum a^2, sum b^2, sum a b, sum (a - b)^2]` in f64.
    pub fn stats<A: Load, B: Load>(a: &[A], b: &[B]) -> [f64; 4] {
        let mut acc = [[0f64; LANES]; 4];
        sums::<HW, A, B>(a, b, Wanted { sq_a: true, sq_b: true, dot: true, sq_diff: true }, &mut acc);
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
        lerp_block_plain(a, b, l, m, out)
    }
}

/// [`Lerp32::lerp_block`] in plain code: through an f32 scratch block, then stored.
#[inline(always)]
fn lerp_block_plain<T: Lerp32>(a: &[T], b: &[T], l: f32, m: f32, out: &mut [T]) {
    let mut tmp = [0f32; BLOCK];
    let n = a.len();
    for ((t, x), y) in tmp[..n].iter_mut().zip(a).zip(b) {
        *t = l.mul_add(y.to_f32(), m * x.to_f32());
    }
    T::store(&tmp[..n], out);
}

/// [`Lerp32::lerp_block`] with AVX2 + FMA for a 16-bit type: eight elements at a time loaded as
/// f32 by `load`, interpolated, rounded once to the storage type by `round`; the tail in plain
/// code.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `load` reads eight elements at the pointer it is given, and
/// `round` returns eight 16-bit values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn lerp_block_avx2<T: Lerp32>(
    a: &[T],
    b: &[T],
    l: f32,
    m: f32,
    out: &mut [T],
    load: impl Fn(*const T) -> __m256,
    round: impl Fn(__m256) -> __m128i,
) {
    let n = a.len();
    assert!(b.len() == n && out.len() == n && std::mem::size_of::<T>() == 2);
    let whole = n - n % 8;
    // SAFETY: the CPU features are the caller's contract; every access is to the eight elements
    // at i < whole <= n of slices of length n, two bytes each.
    unsafe {
        let (vl, vm) = (_mm256_set1_ps(l), _mm256_set1_ps(m));
        let mut i = 0;
        while i < whole {
            let (x, y) = (load(a.as_ptr().add(i)), load(b.as_ptr().add(i)));
            let v = _mm256_fmadd_ps(vl, y, _mm256_mul_ps(vm, x));
            _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, round(v));
            i += 8;
        }
    }
    lerp_block_plain(&a[whole..], &b[whole..], l, m, &mut out[whole..]);
}

/// Eight f32 rounded to bf16 as [`f32_to_bf16`] rounds them (nearest even; NaN quietened).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn round_bf16x8(v: __m256) -> __m128i {
    // SAFETY: register operations only; the caller's CPU has AVX2.
    unsafe {
        let bits = _mm256_castps_si256(v);
        let high = _mm256_srli_epi32::<16>(bits);
        let odd = _mm256_and_si256(high, _mm256_set1_epi32(1));
        let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd)));
        let quiet_nan = _mm256_or_si256(high, _mm256_set1_epi32(0x0040));
        let is_nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        let r = _mm256_blendv_epi8(rounded, quiet_nan, is_nan);
        // Every value fits 16 bits: pack them (within each 128-bit half), then take the
        // halves' low quadwords.
        _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi32(r, r)))
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
    #[inline(always)]
    fn lerp_block<const HW: bool>(a: &[bf16], b: &[bf16], l: f32, m: f32, out: &mut [bf16]) {
        #[cfg(target_arch = "x86_64")]
        if HW {
            // SAFETY: HW is true only in code compiled for, and run after the CPU reported,
            // AVX2, FMA and F16C; load_bf16x8 reads the eight elements it is pointed at.
            unsafe {
                lerp_block_avx2(a, b, l, m, out, |p| load_bf16x8(p), |v| round_bf16x8(v));
            }
            return;
        }
        lerp_block_plain(a, b, l, m, out)
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
            // SAFETY: HW is true only in code compiled for, and run after the CPU reported,
            // AVX2, FMA and F16C; load_f16x8 reads the eight elements it is pointed at.
            unsafe {
                lerp_block_avx2(
                    a,
                    b,
                    l,
                    m,
                    out,
                    |p| load_f16x8(p),
                    |v| {
                        // Round to nearest even, once.
                        _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)
                    },
                );
            }
            return;
        }
        lerp_block_plain(a, b, l, m, out)
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
    fn kernels_match_f64_loops_on_awkward_lengths_and_starts() {
        // The version this CPU picks, then the baseline one: the same bits.
        let picked = check_kernels();
        crate::backend::cpu::FORCE_BASELINE.store(true, std::sync::atomic::Ordering::Relaxed);
        let baseline = check_kernels();
        crate::backend::cpu::FORCE_BASELINE.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(picked.len(), baseline.len());
        for (k, (p, b)) in picked.iter().zip(&baseline).enumerate() {
            assert_eq!(p.to_bits(), b.to_bits(), "result {k}: {p} vs {b}");
        }
    }

    /// Values in [-1, 1) with a few of every magnitude a weight may take.
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let v = (s >> 11) as f64 / (1u64 << 52) as f64 * 2.0 - 1.0;
                match i % 13 {
                    5 => v * 1e-6,
                    9 => v * 3e3,
                    _ => v,
                }
            })
            .collect()
    }

    /// The four sums of every kernel against f64 loops over the stored values; returns every
    /// result, for comparing versions bit for bit.
    fn check_sums<A: Load, B: Load>(x: &[A], y: &[B], what: &str, out: &mut Vec<f64>) {
        let mut want = [0f64; 4];
        for (a, b) in x.iter().zip(y) {
            let (a, b) = (a.f64(), b.f64());
            want[0] += a * a;
            want[1] += b * b;
            want[2] += a * b;
            want[3] += (a - b) * (a - b);
        }
        let scale = want[0].max(want[1]).max(1.0);
        let got = stats(x, y);
        for k in 0..4 {
            assert!((got[k] - want[k]).abs() <= 1e-12 * scale, "{what}: stats[{k}] {} vs {}", got[k], want[k]);
        }
        let (d, sq) = (sum_sq_diff(x, y), sum_sq(x));
        assert!((d - want[3]).abs() <= 1e-12 * scale, "{what}: sum_sq_diff {d} vs {}", want[3]);
        assert!((sq - want[0]).abs() <= 1e-12 * scale, "{what}: sum_sq {sq} vs {}", want[0]);
        assert_eq!(got[3].to_bits(), d.to_bits(), "{what}: stats and sum_sq_diff add alike");
        assert_eq!(got[0].to_bits(), sq.to_bits(), "{what}: stats and sum_sq add alike");
        out.extend(got);
    }

    fn check_kernels() -> Vec<f64> {
        let mut results = Vec::new();
        let (x, y) = (values(4200, 777), values(4200, 778));
        let xs = (
            x.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            x.clone(),
            x.iter().map(|&v| f16::from_f64(v)).collect::<Vec<_>>(),
            x.iter().map(|&v| bf16::from_f64(v)).collect::<Vec<_>>(),
        );
        let ys = (
            y.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            y.clone(),
            y.iter().map(|&v| f16::from_f64(v)).collect::<Vec<_>>(),
            y.iter().map(|&v| bf16::from_f64(v)).collect::<Vec<_>>(),
        );
        // Lengths around the vector width and the plain loops' sub-blocks, and starts off every
        // alignment (a and b differently).
        for n in [0usize, 1, 3, 7, 8, 9, 15, 17, 255, 2047, 2049, 4101] {
            for (sa, sb) in [(0usize, 0usize), (1, 3), (3, 2), (5, 0)] {
                let (ra, rb) = (sa..sa + n, sb..sb + n);
                let what = |pair: &str| format!("{pair} n {n} starts {sa} {sb}");
                macro_rules! pairs {
                    ($($a:tt $b:tt $name:literal),*) => {$(
                        check_sums(&xs.$a[ra.clone()], &ys.$b[rb.clone()], &what($name), &mut results);
                    )*};
                }
                pairs!(0 0 "f32 f32", 1 1 "f64 f64", 2 2 "f16 f16", 3 3 "bf16 bf16", 0 3 "f32 bf16", 2 1 "f16 f64",
                    3 2 "bf16 f16", 1 0 "f64 f32");
                // Interpolation as the kernel: fma(l, b, (1 - l) a) in f32, rounded once.
                let mut out = vec![f16::ZERO; n];
                lerp32(&xs.2[ra.clone()], &ys.2[rb.clone()], -0.5, &mut out);
                for (i, o) in out.iter().enumerate() {
                    let w = f16::from_f32((-0.5f32).mul_add(ys.2[sb + i].to_f32(), 1.5 * xs.2[sa + i].to_f32()));
                    assert_eq!(o.to_bits(), w.to_bits(), "f16 lerp {} i {i}", what(""));
                }
                let mut out = vec![bf16::ZERO; n];
                lerp32(&xs.3[ra.clone()], &ys.3[rb.clone()], 0.3, &mut out);
                for (i, o) in out.iter().enumerate() {
                    let w =
                        bf16::from_f32(0.3f32.mul_add(ys.3[sb + i].to_f32(), (1.0 - 0.3f32) * xs.3[sa + i].to_f32()));
                    assert_eq!(o.to_bits(), w.to_bits(), "bf16 lerp {} i {i}", what(""));
                }
            }
        }
        results
    }

    #[test]
    fn bf16_interpolation_rounds_special_values_as_the_kernel() {
        // Ties, values that round up to infinity, infinities, NaN, subnormals and zeros of both
        // signs, in every lane of a block of eight and in the tail.
        let specials = [
            f32::MAX,
            -f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x3f80_8000), // a tie: 1 + 2^-8, halfway between two bf16
            f32::from_bits(0x3f81_8000), // a tie above an odd bf16
            f32::from_bits(0x0000_0001),
            -f32::from_bits(0x007f_ffff),
            0.0,
            -0.0,
            1.0,
            -3.5,
            65504.0,
            1e-30,
            3.0e38,
        ];
        for l in [0.0f32, 1.0, 0.5, 2.0, -1.0] {
            let a: Vec<bf16> = specials.iter().map(|&v| bf16::from_f32(v)).collect();
            let b: Vec<bf16> = specials.iter().rev().map(|&v| bf16::from_f32(v)).collect();
            let mut out = vec![bf16::ZERO; a.len()];
            lerp32(&a, &b, l, &mut out);
            for i in 0..a.len() {
                let v = l.mul_add(b[i].to_f32(), (1.0 - l) * a[i].to_f32());
                let w = f32_to_bf16(v);
                if v.is_nan() {
                    assert!(out[i].is_nan(), "l {l} i {i}: {:?}", out[i]);
                    assert_eq!(out[i].to_bits(), w, "l {l} i {i}: the same quiet NaN");
                } else {
                    assert_eq!(out[i].to_bits(), w, "l {l} i {i}: {v:e}");
                }
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
