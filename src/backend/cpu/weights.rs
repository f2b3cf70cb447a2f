//! CPU twin of `kernels/weights.cu`; CUDA host code in `backend/cuda/weights.rs`. The
//! per-chunk loops of [`crate::geometry`]: sums of squares, dot products and interpolation on
//! host slices of any storage dtype.
//!
//! Each function is one generic body compiled twice by `multiversion!` (baseline, and AVX2 +
//! FMA + F16C where the CPU has them); inside the AVX2 version the sums and the 16-bit
//! interpolation call AVX-512 code where the CPU also has AVX-512F. The baseline bodies are plain
//! loops over fixed-width blocks that the compiler vectorises; the vector bodies are written with
//! intrinsics (the 16-bit loads: bf16 to f32 is a byte shuffle, f16 to f32 is F16C's
//! `vcvtph2ps`), and `stats` reads each element once for its four sums. The interpolations
//! report whether every result is finite, checked block by block while the block is in L1, and
//! can write large outputs with non-temporal stores ([`Stores`]). Every version adds the same
//! products in the same sixteen lanes in the same order, and interpolates with the same
//! expression, so they give the same bits.
//!
//! Rounding against the kernels:
//! - interpolation ([`lerp32`], [`lerp_f64`]) is `lerp_<t>`'s expression, `fma(l, b, (1 - l) a)`
//!   in f32 (f64 for f64 data) with `l` and `1 - l` rounded to that type, then rounded once to
//!   the storage type (nearest even): the same bits as the device;
//! - sums of squares ([`sum_sq_diff`], [`sum_sq`], [`stats`]) are f64 sums on both, in another
//!   order (sixteen lanes here, blocks and atomics there), and `segment_sumsq_<t>` fuses each
//!   multiply-add where these round the square first: they agree to a few units in the last
//!   place of an f64 (and the device's atomics vary the last bits from run to run).

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Exact conversion of a storage element to f64, inlined into the loops below.
pub trait Load: Copy + Send + Sync {
    fn f64(self) -> f64;
    /// The [`LANES`] elements at `p`, exactly, in the lanes of a `V`.
    ///
    /// # Safety
    /// `p` addresses LANES readable elements, and the CPU has `V`'s features (call it only from
    /// code compiled for them).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load<V: Vector>(p: *const Self) -> V;
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

/// Eight bf16 at `p` as f32: the bf16 bits are the top half of the f32. The sixteen bytes are
/// loaded into both halves of the register, then one byte shuffle puts elements 0..4 in the low
/// half and 4..8 in the high half, each above a zero: one operation after the load, where a
/// widening and a shift were two.
///
/// # Safety
/// `p` addresses eight readable elements; the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load_bf16x8(p: *const bf16) -> __m256 {
    // SAFETY: a 16-byte unaligned load of the caller's eight elements, then register operations.
    unsafe {
        let both = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
        // Per 32-bit lane: two zero bytes (index -1), then the element's two bytes.
        #[rustfmt::skip]
        let spread = _mm256_setr_epi8(
            -1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7,
            -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1, 14, 15,
        );
        _mm256_castsi256_ps(_mm256_shuffle_epi8(both, spread))
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
    unsafe fn load<V: Vector>(p: *const f64) -> V {
        // SAFETY: the caller's elements and CPU features, as V::from_f64 needs.
        unsafe { V::from_f64(p) }
    }
}
impl Load for f32 {
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load<V: Vector>(p: *const f32) -> V {
        // SAFETY: the caller's elements and CPU features, as V::from_f32 needs.
        unsafe { V::from_f32(p) }
    }
}
impl Load for f16 {
    #[inline(always)]
    fn f64(self) -> f64 {
        f16_to_f32(self.to_bits()) as f64
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load<V: Vector>(p: *const f16) -> V {
        // SAFETY: the caller's elements and CPU features, as V::from_f16 needs.
        unsafe { V::from_f16(p) }
    }
}
impl Load for bf16 {
    #[inline(always)]
    fn f64(self) -> f64 {
        bf16_to_f32(self.to_bits()) as f64
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load<V: Vector>(p: *const bf16) -> V {
        // SAFETY: the caller's elements and CPU features, as V::from_bf16 needs.
        unsafe { V::from_bf16(p) }
    }
}

/// [`LANES`] f64 in registers, lane `k` at index `k`. A value exists only where the CPU has the
/// type's features: the constructors are unsafe and say so, so the arithmetic is safe.
#[cfg(target_arch = "x86_64")]
pub trait Vector: Copy {
    /// # Safety
    /// The CPU has the type's features.
    unsafe fn zero() -> Self;
    /// # Safety
    /// `p` addresses LANES readable elements; the CPU has the type's features.
    unsafe fn from_f64(p: *const f64) -> Self;
    /// # Safety
    /// As [`Vector::from_f64`].
    unsafe fn from_f32(p: *const f32) -> Self;
    /// # Safety
    /// As [`Vector::from_f64`].
    unsafe fn from_f16(p: *const f16) -> Self;
    /// # Safety
    /// As [`Vector::from_f64`].
    unsafe fn from_bf16(p: *const bf16) -> Self;
    fn store(self, lanes: &mut [f64; LANES]);
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
}

/// Sixteen f64 as four AVX vectors.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub struct Avx2([__m256d; 4]);

/// Sixteen f64 as two AVX-512 vectors.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub struct Avx512([__m512d; 2]);

#[cfg(target_arch = "x86_64")]
impl Vector for Avx2 {
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: a register operation; the caller's CPU has AVX.
        unsafe { Avx2([_mm256_setzero_pd(); 4]) }
    }
    #[inline(always)]
    unsafe fn from_f64(p: *const f64) -> Self {
        // SAFETY: four 32-byte unaligned loads of the caller's sixteen elements.
        unsafe {
            Avx2([_mm256_loadu_pd(p), _mm256_loadu_pd(p.add(4)), _mm256_loadu_pd(p.add(8)), _mm256_loadu_pd(p.add(12))])
        }
    }
    #[inline(always)]
    unsafe fn from_f32(p: *const f32) -> Self {
        // SAFETY: four 16-byte unaligned loads of the caller's sixteen elements, widened.
        unsafe {
            let w = |q: *const f32| _mm256_cvtps_pd(_mm_loadu_ps(q));
            Avx2([w(p), w(p.add(4)), w(p.add(8)), w(p.add(12))])
        }
    }
    #[inline(always)]
    unsafe fn from_f16(p: *const f16) -> Self {
        // SAFETY: the caller's sixteen elements, eight at a time; the CPU has AVX2 and F16C.
        unsafe {
            let ((a, b), (c, d)) = (widen_f32x8(load_f16x8(p)), widen_f32x8(load_f16x8(p.add(8))));
            Avx2([a, b, c, d])
        }
    }
    #[inline(always)]
    unsafe fn from_bf16(p: *const bf16) -> Self {
        // SAFETY: the caller's sixteen elements, eight at a time; the CPU has AVX2.
        unsafe {
            let ((a, b), (c, d)) = (widen_f32x8(load_bf16x8(p)), widen_f32x8(load_bf16x8(p.add(8))));
            Avx2([a, b, c, d])
        }
    }
    #[inline(always)]
    fn store(self, lanes: &mut [f64; LANES]) {
        for (j, v) in self.0.into_iter().enumerate() {
            // SAFETY: a store into lanes 4j..4j + 4 of sixteen; the CPU has AVX (self exists).
            unsafe { _mm256_storeu_pd(lanes.as_mut_ptr().add(4 * j), v) };
        }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: register operations; the CPU has AVX (self exists).
        Avx2(std::array::from_fn(|j| unsafe { _mm256_add_pd(self.0[j], o.0[j]) }))
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: register operations; the CPU has AVX (self exists).
        Avx2(std::array::from_fn(|j| unsafe { _mm256_sub_pd(self.0[j], o.0[j]) }))
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        // SAFETY: register operations; the CPU has AVX (self exists).
        Avx2(std::array::from_fn(|j| unsafe { _mm256_mul_pd(self.0[j], o.0[j]) }))
    }
}

#[cfg(target_arch = "x86_64")]
impl Vector for Avx512 {
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: a register operation; the caller's CPU has AVX-512F.
        unsafe { Avx512([_mm512_setzero_pd(); 2]) }
    }
    #[inline(always)]
    unsafe fn from_f64(p: *const f64) -> Self {
        // SAFETY: two 64-byte unaligned loads of the caller's sixteen elements.
        unsafe { Avx512([_mm512_loadu_pd(p), _mm512_loadu_pd(p.add(8))]) }
    }
    #[inline(always)]
    unsafe fn from_f32(p: *const f32) -> Self {
        // SAFETY: two 32-byte unaligned loads of the caller's sixteen elements, widened.
        unsafe { Avx512([_mm512_cvtps_pd(_mm256_loadu_ps(p)), _mm512_cvtps_pd(_mm256_loadu_ps(p.add(8)))]) }
    }
    #[inline(always)]
    unsafe fn from_f16(p: *const f16) -> Self {
        // SAFETY: the caller's sixteen elements, eight at a time; the CPU has AVX-512F and F16C.
        unsafe { Avx512([_mm512_cvtps_pd(load_f16x8(p)), _mm512_cvtps_pd(load_f16x8(p.add(8)))]) }
    }
    #[inline(always)]
    unsafe fn from_bf16(p: *const bf16) -> Self {
        // SAFETY: the caller's sixteen elements, eight at a time; the CPU has AVX-512F.
        unsafe { Avx512([_mm512_cvtps_pd(load_bf16x8(p)), _mm512_cvtps_pd(load_bf16x8(p.add(8)))]) }
    }
    #[inline(always)]
    fn store(self, lanes: &mut [f64; LANES]) {
        // SAFETY: stores into lanes 0..8 and 8..16 of sixteen; the CPU has AVX-512F (self exists).
        unsafe {
            _mm512_storeu_pd(lanes.as_mut_ptr(), self.0[0]);
            _mm512_storeu_pd(lanes.as_mut_ptr().add(8), self.0[1]);
        }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: register operations; the CPU has AVX-512F (self exists).
        unsafe { Avx512([_mm512_add_pd(self.0[0], o.0[0]), _mm512_add_pd(self.0[1], o.0[1])]) }
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: register operations; the CPU has AVX-512F (self exists).
        unsafe { Avx512([_mm512_sub_pd(self.0[0], o.0[0]), _mm512_sub_pd(self.0[1], o.0[1])]) }
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        // SAFETY: register operations; the CPU has AVX-512F (self exists).
        unsafe { Avx512([_mm512_mul_pd(self.0[0], o.0[0]), _mm512_mul_pd(self.0[1], o.0[1])]) }
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

/// Lanes of independent accumulators: lane `k` sums the elements at `k` mod 16 in order, and
/// the tail after the last whole block goes to lane 0. Sixteen lanes are two AVX-512 vectors or
/// four AVX ones per sum: enough independent additions to hide their latency.
const LANES: usize = 16;

/// Which of the four sums `[sum a^2, sum b^2, sum a b, sum (a - b)^2]` a kernel forms: one type
/// per kernel, so that each version is compiled for its own sums.
trait Wanted {
    const SQ_A: bool;
    const SQ_B: bool;
    const DOT: bool;
    const SQ_DIFF: bool;
    /// The wanted sums, as the indices of the four.
    fn each() -> impl Iterator<Item = usize> {
        [Self::SQ_A, Self::SQ_B, Self::DOT, Self::SQ_DIFF].into_iter().enumerate().filter(|w| w.1).map(|w| w.0)
    }
}

/// `sum (a - b)^2`.
struct SqDiff;
impl Wanted for SqDiff {
    const SQ_A: bool = false;
    const SQ_B: bool = false;
    const DOT: bool = false;
    const SQ_DIFF: bool = true;
}
/// `sum a^2`.
struct SqA;
impl Wanted for SqA {
    const SQ_A: bool = true;
    const SQ_B: bool = false;
    const DOT: bool = false;
    const SQ_DIFF: bool = false;
}
/// All four.
struct AllFour;
impl Wanted for AllFour {
    const SQ_A: bool = true;
    const SQ_B: bool = true;
    const DOT: bool = true;
    const SQ_DIFF: bool = true;
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

/// The wanted sums of whole blocks in vectors `V`: one pass, each block of sixteen loaded and
/// widened once, the same operations per lane as the plain loops (a multiply, then an add: no
/// fused multiply-add, which would change the bits).
///
/// # Safety
/// The CPU has `V`'s features; `a` and `b` have the same length, a multiple of [`LANES`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn vector_blocks<V: Vector, W: Wanted, A: Load, B: Load>(a: &[A], b: &[B], acc: &mut [[f64; LANES]; 4]) {
    debug_assert!(a.len() == b.len() && a.len().is_multiple_of(LANES));
    // SAFETY: every load reads the sixteen elements at i < a.len() = b.len(), a multiple of
    // sixteen; the CPU features are the caller's contract.
    unsafe {
        let mut s = [V::zero(); 4];
        let mut i = 0;
        while i < a.len() {
            let x: V = A::load(a.as_ptr().add(i));
            let y: V = B::load(b.as_ptr().add(i));
            if W::SQ_A {
                s[0] = s[0].add(x.mul(x));
            }
            if W::SQ_B {
                s[1] = s[1].add(y.mul(y));
            }
            if W::DOT {
                s[2] = s[2].add(x.mul(y));
            }
            if W::SQ_DIFF {
                let d = x.sub(y);
                s[3] = s[3].add(d.mul(d));
            }
            i += LANES;
        }
        for q in W::each() {
            s[q].store(&mut acc[q]);
        }
    }
}

/// [`vector_blocks`] in AVX-512 vectors.
///
/// # Safety
/// As [`vector_blocks`]; the CPU has AVX-512F, AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn avx512_blocks<W: Wanted, A: Load, B: Load>(a: &[A], b: &[B], acc: &mut [[f64; LANES]; 4]) {
    // SAFETY: the caller's contract is vector_blocks's, and this function's features are
    // Avx512's.
    unsafe { vector_blocks::<Avx512, W, A, B>(a, b, acc) }
}

/// Set by tests to run the AVX2 code on a CPU that has AVX-512.
#[cfg(test)]
static FORCE_AVX2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the AVX-512 code can run (the std macro caches the CPU's answer).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx512() -> bool {
    #[cfg(test)]
    if FORCE_AVX2.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Adds the wanted sums of `a` and `b` (same length) to the lanes of `acc` (indexed as in
/// [`Wanted`]), which start at zero. `HW`: the vector code, where `multiversion!` says the CPU
/// has AVX2 (and AVX-512 where it has that too).
#[inline(always)]
fn sums<const HW: bool, W: Wanted, A: Load, B: Load>(a: &[A], b: &[B]) -> [[f64; LANES]; 4] {
    assert_eq!(a.len(), b.len());
    let mut acc = [[0f64; LANES]; 4];
    let whole = a.len() - a.len() % LANES;
    blocks::<HW, W, A, B>(&a[..whole], &b[..whole], &mut acc);
    for (x, y) in a[whole..].iter().zip(&b[whole..]) {
        let (x, y) = (x.f64(), y.f64());
        let d = x - y;
        let values = [x * x, y * y, x * y, d * d];
        for q in W::each() {
            acc[q][0] += values[q];
        }
    }
    acc
}

/// The wanted sums of whole blocks (the lengths are equal multiples of [`LANES`]) into `acc`,
/// which is zero.
#[inline(always)]
fn blocks<const HW: bool, W: Wanted, A: Load, B: Load>(a: &[A], b: &[B], acc: &mut [[f64; LANES]; 4]) {
    #[cfg(target_arch = "x86_64")]
    if HW {
        if has_avx512() {
            // SAFETY: the CPU reported AVX-512F just above, and HW is true only after it
            // reported AVX2, FMA and F16C; the caller passes equal lengths, multiples of LANES.
            unsafe { avx512_blocks::<W, A, B>(a, b, acc) };
        } else {
            // SAFETY: HW is true only in code compiled for, and run after the CPU reported,
            // AVX2, FMA and F16C; the caller passes equal lengths, multiples of LANES.
            unsafe { vector_blocks::<Avx2, W, A, B>(a, b, acc) };
        }
        return;
    }
    // Passes over sub-blocks small enough to stay in L1: memory is read once.
    const SUB: usize = 2048;
    for (x, y) in a.chunks(SUB).zip(b.chunks(SUB)) {
        if W::SQ_A {
            plain_sq(x, &mut acc[0]);
        }
        if W::SQ_B {
            plain_sq(y, &mut acc[1]);
        }
        if W::DOT {
            plain_dot(x, y, &mut acc[2]);
        }
        if W::SQ_DIFF {
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
        total(sums::<HW, SqDiff, A, B>(a, b)[3])
    }
}

multiversion! {
    /// Sum of a^2 in f64.
    pub fn sum_sq<A: Load>(a: &[A]) -> f64 {
        total(sums::<HW, SqA, A, A>(a, a)[0])
    }
}

multiversion! {
    /// `[sum a^2, sum b^2, sum a b, sum (a - b)^2]` in f64.
    pub fn stats<A: Load, B: Load>(a: &[A], b: &[B]) -> [f64; 4] {
        sums::<HW, AllFour, A, B>(a, b).map(total)
    }
}

/// Elements per block of the interpolations (their scratch blocks and finiteness checks) and of
/// [`all_finite`].
const BLOCK: usize = 256;

/// Storage types whose values can be told finite from their bits alone: a test without branches,
/// so that a fold over a block vectorises.
pub trait Finite: Copy {
    /// Whether the value is an infinity or a NaN (its exponent bits all set).
    fn non_finite(self) -> bool;
}
impl Finite for f64 {
    #[inline(always)]
    fn non_finite(self) -> bool {
        self.to_bits() & 0x7ff0_0000_0000_0000 == 0x7ff0_0000_0000_0000
    }
}
impl Finite for f32 {
    #[inline(always)]
    fn non_finite(self) -> bool {
        self.to_bits() & 0x7f80_0000 == 0x7f80_0000
    }
}
impl Finite for f16 {
    #[inline(always)]
    fn non_finite(self) -> bool {
        self.to_bits() & 0x7c00 == 0x7c00
    }
}
impl Finite for bf16 {
    #[inline(always)]
    fn non_finite(self) -> bool {
        self.to_bits() & 0x7f80 == 0x7f80
    }
}

/// Whether every value of a block is finite: one branch-free pass, meant for a block that was
/// just written and is still in L1.
#[inline(always)]
fn block_finite<T: Finite>(x: &[T]) -> bool {
    !x.iter().fold(false, |any, v| any | v.non_finite())
}

multiversion! {
    /// Whether every value is finite (no infinity, no NaN).
    pub fn all_finite<T: Finite>(x: &[T]) -> bool {
        x.chunks(BLOCK).all(block_finite)
    }
}

/// Storage types interpolated in f32 arithmetic.
pub trait Lerp32: Finite + Default + Send + Sync {
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

/// [`Lerp32::lerp_block`] with AVX-512 for a 16-bit type: sixteen elements at a time (`load16`,
/// `round16`), then the rest as [`lerp_block_avx2`] does it (`load8`, `round8`). The same
/// operations per element as the other versions, so the same bits.
///
/// # Safety
/// The CPU has AVX-512F, AVX2, FMA and F16C; the loads read sixteen and eight elements at the
/// pointer they are given, and the roundings return sixteen and eight 16-bit values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn lerp_block_avx512<T: Lerp32>(
    a: &[T],
    b: &[T],
    l: f32,
    m: f32,
    out: &mut [T],
    (load16, round16): (impl Fn(*const T) -> __m512, impl Fn(__m512) -> __m256i),
    (load8, round8): (impl Fn(*const T) -> __m256, impl Fn(__m256) -> __m128i),
) {
    let n = a.len();
    assert!(b.len() == n && out.len() == n && std::mem::size_of::<T>() == 2);
    let whole = n - n % 16;
    // SAFETY: the CPU features are the caller's contract; every access is to the sixteen
    // elements at i < whole <= n of slices of length n, two bytes each; the rest goes to
    // lerp_block_avx2, whose contract is part of this one.
    unsafe {
        let (vl, vm) = (_mm512_set1_ps(l), _mm512_set1_ps(m));
        let mut i = 0;
        while i < whole {
            let (x, y) = (load16(a.as_ptr().add(i)), load16(b.as_ptr().add(i)));
            let v = _mm512_fmadd_ps(vl, y, _mm512_mul_ps(vm, x));
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, round16(v));
            i += 16;
        }
        lerp_block_avx2(&a[whole..], &b[whole..], l, m, &mut out[whole..], load8, round8);
    }
}

/// [`lerp_block_avx512`] for bf16.
///
/// # Safety
/// The CPU has AVX-512F, AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn lerp_bf16_avx512(a: &[bf16], b: &[bf16], l: f32, m: f32, out: &mut [bf16]) {
    // SAFETY: this function's features are the contract; each load reads the elements it is
    // pointed at (sixteen, eight), each rounding returns as many 16-bit values.
    unsafe {
        lerp_block_avx512(
            a,
            b,
            l,
            m,
            out,
            (
                |p| {
                    let h = _mm256_loadu_si256(p as *const __m256i);
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                },
                |v| round_bf16x16(v),
            ),
            (|p| load_bf16x8(p), |v| round_bf16x8(v)),
        )
    }
}

/// [`lerp_block_avx512`] for f16: F16C's conversions, sixteen wide, rounding to nearest even.
///
/// # Safety
/// The CPU has AVX-512F, AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn lerp_f16_avx512(a: &[f16], b: &[f16], l: f32, m: f32, out: &mut [f16]) {
    // SAFETY: this function's features are the contract; each load reads the elements it is
    // pointed at (sixteen, eight), each rounding returns as many 16-bit values.
    unsafe {
        lerp_block_avx512(
            a,
            b,
            l,
            m,
            out,
            (
                |p| _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
                |v| _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v),
            ),
            (|p| load_f16x8(p), |v| _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)),
        )
    }
}

/// Sixteen f32 rounded to bf16 as [`f32_to_bf16`] rounds them (nearest even; NaN quietened).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn round_bf16x16(v: __m512) -> __m256i {
    // SAFETY: register operations only; the caller's CPU has AVX-512F.
    unsafe {
        let bits = _mm512_castps_si512(v);
        let high = _mm512_srli_epi32::<16>(bits);
        let odd = _mm512_and_si512(high, _mm512_set1_epi32(1));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd)));
        let quiet_nan = _mm512_or_si512(high, _mm512_set1_epi32(0x0040));
        let is_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        // Every value fits 16 bits: truncating each to its low half keeps it.
        _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rounded, quiet_nan))
    }
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
    /// Straight into `out`, without the scratch block: nothing to round. In the AVX2 version
    /// the compiler turns this into vector FMAs.
    #[inline(always)]
    fn lerp_block<const HW: bool>(a: &[f32], b: &[f32], l: f32, m: f32, out: &mut [f32]) {
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = l.mul_add(*y, m * *x);
        }
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
            if has_avx512() {
                // SAFETY: the CPU reported AVX-512F just above, and HW is true only after it
                // reported AVX2, FMA and F16C.
                unsafe { lerp_bf16_avx512(a, b, l, m, out) };
                return;
            }
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
            if has_avx512() {
                // SAFETY: the CPU reported AVX-512F just above, and HW is true only after it
                // reported AVX2, FMA and F16C.
                unsafe { lerp_f16_avx512(a, b, l, m, out) };
                return;
            }
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

/// How an interpolation writes its output.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stores {
    /// Ordinary stores: the output is read into the cache before it is written (write-allocate)
    /// and stays there for whoever reads it next. For outputs that fit in the cache.
    Cached,
    /// Non-temporal stores: each block is computed and checked in an L1 scratch block, then
    /// written to memory without being read first. An interpolation reads two arrays and writes
    /// one, so this moves three arrays' bytes instead of four; for outputs larger than the
    /// last-level cache, which would evict them anyway.
    Streaming,
}

/// Copies a block to `dst` with non-temporal stores where the CPU has them (SSE2, so every
/// x86-64); a plain copy elsewhere. The stores are weakly ordered: call [`stream_fence`] before
/// another thread may read `dst`.
#[inline(always)]
fn stream_store<T: Copy>(src: &[T], dst: &mut [T]) {
    assert!(src.len() == dst.len());
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(src);
        let (s, d) = (src.as_ptr() as *const u8, dst.as_mut_ptr() as *mut u8);
        // Plain stores up to the first 16-byte boundary of dst, streaming stores of 16 bytes
        // after it, plain stores for the rest.
        let head = d.align_offset(16).min(bytes);
        let whole = head + (bytes - head) / 16 * 16;
        // SAFETY: every access is within the `bytes` bytes of two distinct slices (src is
        // shared and dst exclusive); the streaming stores are to 16-byte aligned addresses,
        // and SSE2 is part of x86-64.
        unsafe {
            std::ptr::copy_nonoverlapping(s, d, head);
            let mut i = head;
            while i < whole {
                _mm_stream_si128(d.add(i) as *mut __m128i, _mm_loadu_si128(s.add(i) as *const __m128i));
                i += 16;
            }
            std::ptr::copy_nonoverlapping(s.add(whole), d.add(whole), bytes - whole);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// Orders the streaming stores of [`stream_store`] before every later store of this thread, so
/// that whoever learns of the work's end also sees its results.
#[inline(always)]
fn stream_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64; a fence touches no memory.
    unsafe {
        _mm_sfence()
    };
}

/// Interpolates block by block with `lerp_block`, checking each block finite while it is in L1;
/// with [`Stores::Streaming`] each block goes through an L1 scratch block and is then streamed
/// to `out`. The same values in both cases. Returns whether every result is finite.
#[inline(always)]
fn lerp_blocks<T: Finite + Default>(
    a: &[T],
    b: &[T],
    out: &mut [T],
    stores: Stores,
    mut lerp_block: impl FnMut(&[T], &[T], &mut [T]),
) -> bool {
    assert!(a.len() == out.len() && b.len() == out.len());
    let mut finite = true;
    let blocks = a.chunks(BLOCK).zip(b.chunks(BLOCK)).zip(out.chunks_mut(BLOCK));
    match stores {
        Stores::Cached => {
            for ((sa, sb), so) in blocks {
                lerp_block(sa, sb, so);
                finite &= block_finite(so);
            }
        }
        Stores::Streaming => {
            let mut scratch = [T::default(); BLOCK];
            for ((sa, sb), so) in blocks {
                let block = &mut scratch[..so.len()];
                lerp_block(sa, sb, block);
                finite &= block_finite(block);
                stream_store(block, so);
            }
            stream_fence();
        }
    }
    finite
}

multiversion! {
    /// `out = (1 - l) a + l b` as `lerp_<t>` computes it: `fma(l, b, (1 - l) a)` in f32, with
    /// `1 - l` rounded to f32, then rounded once to the storage type. Returns whether every
    /// result is finite, checked on each block while it is still in L1 (a second pass over the
    /// output cost more than the interpolation itself).
    pub fn lerp32<T: Lerp32>(a: &[T], b: &[T], l: f32, out: &mut [T], stores: Stores) -> bool {
        let m = 1.0 - l;
        lerp_blocks(a, b, out, stores, |sa, sb, so| T::lerp_block::<HW>(sa, sb, l, m, so))
    }
}

multiversion! {
    /// `out = (1 - l) a + l b` as `lerp_f64` computes it: `fma(l, b, (1 - l) a)` in f64.
    /// Returns whether every result is finite, as [`lerp32`].
    pub fn lerp_f64<>(a: &[f64], b: &[f64], l: f64, out: &mut [f64], stores: Stores) -> bool {
        let m = 1.0 - l;
        lerp_blocks(a, b, out, stores, |sa, sb, so| {
            for ((o, x), y) in so.iter_mut().zip(sa).zip(sb) {
                *o = l.mul_add(*y, m * *x);
            }
        })
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

    /// Runs `f` in every version this CPU can run: the one it picks (AVX-512 where it has it),
    /// AVX2, and the baseline.
    fn in_every_version<T>(f: impl Fn() -> T) -> [T; 3] {
        use std::sync::atomic::Ordering::Relaxed;
        let picked = f();
        FORCE_AVX2.store(true, Relaxed);
        let avx2 = f();
        crate::backend::cpu::FORCE_BASELINE.store(true, Relaxed);
        let baseline = f();
        crate::backend::cpu::FORCE_BASELINE.store(false, Relaxed);
        FORCE_AVX2.store(false, Relaxed);
        [picked, avx2, baseline]
    }

    #[test]
    fn kernels_match_f64_loops_on_awkward_lengths_and_starts() {
        let [picked, avx2, baseline] = in_every_version(check_kernels);
        assert_eq!(picked.len(), baseline.len());
        for (k, ((p, a), b)) in picked.iter().zip(&avx2).zip(&baseline).enumerate() {
            assert_eq!(p.to_bits(), b.to_bits(), "result {k}: {p} vs {b}");
            assert_eq!(a.to_bits(), b.to_bits(), "result {k}: {a} vs {b}");
        }
    }

    /// Sums of `x` and `y` (widened exactly) against plain f64 loops, within the bound of two
    /// recursive sums of n terms, `n eps sum |terms|` each (eps = 2u); returns the results.
    fn check_against_f64(x: &[f64], y: &[f64], what: &str) -> [f64; 4] {
        let (mut want, mut scale) = ([0f64; 4], [0f64; 4]);
        for (a, b) in x.iter().zip(y) {
            let terms = [a * a, b * b, a * b, (a - b) * (a - b)];
            for k in 0..4 {
                want[k] += terms[k];
                scale[k] += terms[k].abs();
            }
        }
        let bound = |k: usize| (x.len() as f64 + LANES as f64) * f64::EPSILON * scale[k];
        let got = match what.split(' ').next().unwrap() {
            "f16" => {
                let (a, b): (Vec<f16>, Vec<f16>) =
                    (x.iter().map(|&v| f16::from_f64(v)).collect(), y.iter().map(|&v| f16::from_f64(v)).collect());
                [stats(&a, &b), [sum_sq(&a), 0.0, 0.0, sum_sq_diff(&a, &b)]]
            }
            "bf16" => {
                let (a, b): (Vec<bf16>, Vec<bf16>) =
                    (x.iter().map(|&v| bf16::from_f64(v)).collect(), y.iter().map(|&v| bf16::from_f64(v)).collect());
                [stats(&a, &b), [sum_sq(&a), 0.0, 0.0, sum_sq_diff(&a, &b)]]
            }
            _ => [stats(x, y), [sum_sq(x), 0.0, 0.0, sum_sq_diff(x, y)]],
        };
        for k in 0..4 {
            assert!((got[0][k] - want[k]).abs() <= bound(k), "{what}: stats[{k}] {:e} vs {:e}", got[0][k], want[k]);
        }
        assert!((got[1][0] - want[0]).abs() <= bound(0), "{what}: sum_sq {:e} vs {:e}", got[1][0], want[0]);
        assert!((got[1][3] - want[3]).abs() <= bound(3), "{what}: sum_sq_diff {:e} vs {:e}", got[1][3], want[3]);
        got[0]
    }

    #[test]
    fn extreme_values_sum_within_the_f64_bound_in_every_version() {
        // Each type's largest finite values, smallest normals and subnormals, zeros and ordinary
        // values, both signs, mixed; stored in the type first so that the reference sees the
        // same numbers.
        let f16s = [
            65504.0,
            -65504.0,
            6.103515625e-5,
            5.960464477539063e-8,
            -1.1920928955078125e-7,
            0.0,
            -0.0,
            1.0,
            -3.5,
            1024.5,
        ];
        let bf16s = [
            3.3895313892515355e38,
            -3.3895313892515355e38,
            1.1754943508222875e-38,
            9.183549615799121e-41,
            -1e30,
            0.0,
            1.0,
            -2.5e-20,
            7.0e37,
        ];
        let f64s = [1e150, -1e150, 2.2250738585072014e-308, 5e-324, -1e-200, 0.0, 1.0, 3.0e100];
        let stored = |v: &[f64], what: &str| -> Vec<f64> {
            match what {
                "f16" => v.iter().map(|&x| f16::from_f64(x).to_f64()).collect(),
                "bf16" => v.iter().map(|&x| bf16::from_f64(x).to_f64()).collect(),
                _ => v.to_vec(),
            }
        };
        for (what, pool) in [("f16", &f16s[..]), ("bf16", &bf16s[..]), ("f64", &f64s[..])] {
            for n in [1usize, 15, 16, 17, 33, 1000, 4099] {
                // Two different walks through the pool, so that a and b differ in every lane.
                let x: Vec<f64> = stored(&(0..n).map(|i| pool[(i * 7 + 3) % pool.len()]).collect::<Vec<_>>(), what);
                let y: Vec<f64> = stored(&(0..n).map(|i| pool[(i * 5 + 1) % pool.len()]).collect::<Vec<_>>(), what);
                let label = format!("{what} n {n}");
                let [picked, avx2, baseline] = in_every_version(|| check_against_f64(&x, &y, &label));
                for k in 0..4 {
                    assert_eq!(picked[k].to_bits(), baseline[k].to_bits(), "{label}: sum {k}");
                    assert_eq!(avx2[k].to_bits(), baseline[k].to_bits(), "{label}: sum {k}");
                }
            }
        }
    }

    #[test]
    fn non_finite_elements_give_non_finite_sums_in_every_version() {
        for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            for at in [0usize, 5, 16, 37] {
                let mut a = vec![0.5f32; 40];
                a[at] = bad;
                let b = vec![0.25f32; 40];
                let (ha, hb): (Vec<f16>, Vec<f16>) =
                    (a.iter().map(|&v| f16::from_f32(v)).collect(), b.iter().map(|&v| f16::from_f32(v)).collect());
                let (ba, bb): (Vec<bf16>, Vec<bf16>) =
                    (a.iter().map(|&v| bf16::from_f32(v)).collect(), b.iter().map(|&v| bf16::from_f32(v)).collect());
                for sums in in_every_version(|| {
                    [
                        sum_sq_diff(&a, &b),
                        sum_sq_diff(&ha, &hb),
                        sum_sq_diff(&ba, &bb),
                        stats(&ha, &hb)[2],
                        stats(&ba, &bb)[0],
                    ]
                }) {
                    assert!(sums.iter().all(|s| !s.is_finite()), "{bad} at {at}: {sums:?}");
                }
            }
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
        for n in [0usize, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 255, 2047, 2049, 4101] {
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
                lerp32(&xs.2[ra.clone()], &ys.2[rb.clone()], -0.5, &mut out, Stores::Cached);
                for (i, o) in out.iter().enumerate() {
                    let w = f16::from_f32((-0.5f32).mul_add(ys.2[sb + i].to_f32(), 1.5 * xs.2[sa + i].to_f32()));
                    assert_eq!(o.to_bits(), w.to_bits(), "f16 lerp {} i {i}", what(""));
                }
                let mut out = vec![bf16::ZERO; n];
                lerp32(&xs.3[ra.clone()], &ys.3[rb.clone()], 0.3, &mut out, Stores::Streaming);
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
            for out in in_every_version(|| {
                let mut out = vec![bf16::ZERO; a.len()];
                lerp32(&a, &b, l, &mut out, Stores::Cached);
                out
            }) {
                check_special_lerp(&a, &b, l, &out);
            }
        }
    }

    /// `out` is the kernel's expression on `a` and `b`, rounded as the kernel rounds.
    fn check_special_lerp(a: &[bf16], b: &[bf16], l: f32, out: &[bf16]) {
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

    /// The vector roundings to bf16 (eight and sixteen wide) against [`f32_to_bf16`] on random
    /// bit patterns and on every kind of tie, near-tie and special value, where the CPU has them.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_bf16_rounding_matches_the_scalar_rounding() {
        let mut s = 99u64;
        let mut xs: Vec<f32> = (0..100_000)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                f32::from_bits((s >> 32) as u32)
            })
            .collect();
        for top in [0x3f80u32, 0x3f81, 0x7f7f, 0x7f80, 0x7fc0, 0x0000, 0x0001, 0x807f, 0xff7f, 0xff80] {
            for low in [0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff] {
                xs.push(f32::from_bits(top << 16 | low));
            }
        }
        xs.resize(xs.len().next_multiple_of(16), 1.0);
        let want: Vec<u16> = xs.iter().map(|&x| f32_to_bf16(x)).collect();
        let (avx2, avx512) = (std::is_x86_feature_detected!("avx2"), std::is_x86_feature_detected!("avx512f"));
        assert!(avx2 || !avx512);
        for (x, w) in xs.chunks_exact(16).zip(want.chunks_exact(16)) {
            let mut got = [0u16; 16];
            if avx2 {
                for (x8, g8) in x.chunks_exact(8).zip(got.chunks_exact_mut(8)) {
                    // SAFETY: the CPU has AVX2 (checked above); eight f32 read, eight u16 written.
                    unsafe {
                        _mm_storeu_si128(g8.as_mut_ptr() as *mut __m128i, round_bf16x8(_mm256_loadu_ps(x8.as_ptr())))
                    };
                }
                assert_eq!(&got[..], w, "eight wide: {x:?}");
            }
            if avx512 {
                // SAFETY: the CPU has AVX-512F (checked above); sixteen f32 read, sixteen u16
                // written.
                unsafe {
                    _mm256_storeu_si256(got.as_mut_ptr() as *mut __m256i, round_bf16x16(_mm512_loadu_ps(x.as_ptr())))
                };
                assert_eq!(&got[..], w, "sixteen wide: {x:?}");
            }
        }
    }

    /// Interpolates `x` and `y` (stored as `T`) in every version, with both kinds of stores;
    /// checks that the flag says whether the output holds a non-finite value, that
    /// [`all_finite`] agrees, and that every version and both stores write the same bits.
    /// Returns the flag.
    fn check_finite_flag<T: Lerp32>(x: &[T], y: &[T], l: f32, is_finite: impl Fn(T) -> bool, what: &str) -> bool {
        // Bit for bit (NaN included): the widening to f32 is one-to-one.
        let bits = |out: &[T]| out.iter().map(|v| v.to_f32().to_bits()).collect::<Vec<_>>();
        let [picked, avx2, baseline] = in_every_version(|| {
            let mut out = vec![x[0]; x.len()];
            let flag = lerp32(x, y, l, &mut out, Stores::Cached);
            assert_eq!(flag, out.iter().all(|&v| is_finite(v)), "{what}: flag against the output");
            assert_eq!(all_finite(&out), flag, "{what}: all_finite against the flag");
            let mut streamed = vec![x[0]; x.len()];
            assert_eq!(lerp32(x, y, l, &mut streamed, Stores::Streaming), flag, "{what}: streaming flag");
            assert!(bits(&streamed) == bits(&out), "{what}: streaming stores wrote other values");
            (flag, out)
        });
        assert!(
            bits(&picked.1) == bits(&baseline.1) && bits(&avx2.1) == bits(&baseline.1),
            "{what}: the versions differ"
        );
        baseline.0
    }

    /// [`lerp_f64`] with both kinds of stores: checks that they write the same bits and report
    /// the same flag, and returns it.
    fn lerp_f64_flag(x: &[f64], y: &[f64], l: f64) -> bool {
        let (mut cached, mut streamed) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        let flag = lerp_f64(x, y, l, &mut cached, Stores::Cached);
        assert_eq!(lerp_f64(x, y, l, &mut streamed, Stores::Streaming), flag, "streaming flag");
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&cached) == bits(&streamed), "streaming stores wrote other values");
        flag
    }

    /// Streaming stores write exactly what ordinary stores write, into outputs that start at every
    /// offset from a 16-byte boundary (the streaming stores need one; what lies before it is
    /// written plainly), around the block length, in every version, for every type.
    #[test]
    fn streaming_stores_write_the_same_bits_at_every_alignment() {
        let values: Vec<f64> = (0..4200).map(|i| ((i * 7919) % 1000) as f64 / 250.0 - 2.0).collect();
        fn check<T: Lerp32 + PartialEq + std::fmt::Debug>(x: &[T], y: &[T], what: &str) {
            let n_max = x.len() - 16;
            for n in [0usize, 1, 5, 8, 15, 16, 17, 255, 256, 257, 511, 1000, 4101] {
                for offset in 0..8 {
                    let run = |stores: Stores| {
                        // Canaries around the output: the stores stay within it.
                        let mut buf = vec![y[0]; n + 16];
                        let flag = lerp32(&x[3..3 + n], &y[..n], 0.3, &mut buf[offset..offset + n], stores);
                        (flag, buf)
                    };
                    assert!(n <= n_max);
                    for (cached, streamed) in in_every_version(|| (run(Stores::Cached), run(Stores::Streaming))) {
                        assert_eq!(cached, streamed, "{what} n {n} offset {offset}");
                    }
                }
            }
        }
        let f32s: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        check(&f32s, &f32s[7..], "f32");
        let f16s: Vec<f16> = values.iter().map(|&v| f16::from_f64(v)).collect();
        check(&f16s, &f16s[7..], "f16");
        let bf16s: Vec<bf16> = values.iter().map(|&v| bf16::from_f64(v)).collect();
        check(&bf16s, &bf16s[7..], "bf16");
        for n in [0usize, 1, 3, 255, 256, 257, 4101] {
            for offset in 0..4 {
                let run = |stores: Stores| {
                    let mut buf = vec![-1.0f64; n + 8];
                    let flag = lerp_f64(&values[..n], &values[9..9 + n], 0.3, &mut buf[offset..offset + n], stores);
                    (flag, buf.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
                };
                for (cached, streamed) in in_every_version(|| (run(Stores::Cached), run(Stores::Streaming))) {
                    assert_eq!(cached, streamed, "f64 n {n} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn interpolation_reports_non_finite_results_in_every_version() {
        // A non-finite input, or an overflow of the storage type, at the start, the end, around
        // a block boundary and in the vector tails; lengths around the vector widths and blocks.
        for n in [1usize, 7, 8, 17, 255, 256, 257, 1000, 4101] {
            for at in [0, n / 2, n - 1, 255.min(n - 1), 256.min(n - 1), n.saturating_sub(9)] {
                let what = |t: &str, kind: &str| format!("{t} n {n} at {at}: {kind}");
                let ones =
                    |v: f64| -> Vec<f64> { (0..n).map(|i| if i == at { v } else { 0.25 + i as f64 * 1e-3 }).collect() };
                let (x, y): (Vec<f64>, Vec<f64>) = (ones(0.5), ones(0.75));
                for (bad, kind) in [(f64::INFINITY, "inf"), (f64::NAN, "nan")] {
                    let xb: Vec<f64> = ones(bad);
                    for flag in in_every_version(|| lerp_f64_flag(&xb, &y, 0.3)) {
                        assert!(!flag, "{}", what("f64", kind));
                    }
                    let f: Vec<f32> = xb.iter().map(|&v| v as f32).collect();
                    let g: Vec<f32> = y.iter().map(|&v| v as f32).collect();
                    assert!(!check_finite_flag(&f, &g, 0.3, f32::is_finite, &what("f32", kind)));
                    let f: Vec<f16> = xb.iter().map(|&v| f16::from_f64(v)).collect();
                    let g: Vec<f16> = y.iter().map(|&v| f16::from_f64(v)).collect();
                    assert!(!check_finite_flag(&f, &g, 0.3, f16::is_finite, &what("f16", kind)));
                    let f: Vec<bf16> = xb.iter().map(|&v| bf16::from_f64(v)).collect();
                    let g: Vec<bf16> = y.iter().map(|&v| bf16::from_f64(v)).collect();
                    assert!(!check_finite_flag(&f, &g, 0.3, bf16::is_finite, &what("bf16", kind)));
                }
                // Overflow: a = -m, b = m at lambda 2 gives 3 m, past the largest finite m.
                let (xm, ym) = (ones(-6e4), ones(6e4));
                let f: Vec<f16> = xm.iter().map(|&v| f16::from_f64(v)).collect();
                let g: Vec<f16> = ym.iter().map(|&v| f16::from_f64(v)).collect();
                assert!(!check_finite_flag(&f, &g, 2.0, f16::is_finite, &what("f16", "overflow")));
                let (xm, ym) = (ones(-3e38), ones(3e38));
                let f: Vec<bf16> = xm.iter().map(|&v| bf16::from_f64(v)).collect();
                let g: Vec<bf16> = ym.iter().map(|&v| bf16::from_f64(v)).collect();
                assert!(!check_finite_flag(&f, &g, 2.0, bf16::is_finite, &what("bf16", "overflow")));
                let f: Vec<f32> = xm.iter().map(|&v| v as f32).collect();
                let g: Vec<f32> = ym.iter().map(|&v| v as f32).collect();
                assert!(!check_finite_flag(&f, &g, 2.0, f32::is_finite, &what("f32", "overflow")));
                let (xm, ym) = (ones(-1e308), ones(1e308));
                for flag in in_every_version(|| lerp_f64_flag(&xm, &ym, 2.0)) {
                    assert!(!flag, "{}", what("f64", "overflow"));
                }
                // And all finite.
                let f: Vec<bf16> = x.iter().map(|&v| bf16::from_f64(v)).collect();
                let g: Vec<bf16> = y.iter().map(|&v| bf16::from_f64(v)).collect();
                assert!(check_finite_flag(&f, &g, 0.3, bf16::is_finite, &what("bf16", "finite")));
                let f: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let g: Vec<f32> = y.iter().map(|&v| v as f32).collect();
                assert!(check_finite_flag(&f, &g, 0.3, f32::is_finite, &what("f32", "finite")));
                for flag in in_every_version(|| lerp_f64_flag(&x, &y, 0.3)) {
                    assert!(flag, "{}", what("f64", "finite"));
                }
            }
        }
    }

    #[test]
    fn all_finite_tells_every_special_value_of_every_type() {
        let mut f32s = vec![f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::MAX, f32::MIN_POSITIVE, 0.0];
        f32s.push(f32::from_bits(0x7f80_0001)); // a signalling NaN
        f32s.push(f32::from_bits(0x0000_0001)); // the smallest subnormal
        for v in f32s {
            for n in [1usize, 31, 300] {
                let mut x = vec![1.0f32; n];
                x[n - 1] = v;
                let [picked, avx2, baseline] = in_every_version(|| {
                    [
                        all_finite(&x),
                        all_finite(&x.iter().map(|&v| v as f64).collect::<Vec<_>>()),
                        all_finite(&x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>()),
                        all_finite(&x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>()),
                    ]
                });
                let want = [v.is_finite(), v.is_finite(), f16::from_f32(v).is_finite(), bf16::from_f32(v).is_finite()];
                assert_eq!(baseline, want, "{v:e} n {n}");
                assert_eq!(picked, want, "{v:e} n {n}");
                assert_eq!(avx2, want, "{v:e} n {n}");
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
