//! CUDA host code of `kernels/weights.cu`; CPU twin in `backend/cpu/weights.rs`. Interpolation,
//! segmented sums of squares, the raw Philox normals and dtype conversion on [`DeviceBuffer`]s,
//! and the dtype dispatch the weight-space analyses use on sets wrapped over device memory
//! (`geometry`).
//!
//! Rounding: `lerp_<t>` and the CPU's interpolation compute the same expression and give the
//! same bits; sums of squares are f64 on both sides and differ only in order (see the CPU
//! twin).

use super::device::{device_err, same_len, AnyBuffer, CudaDevice, DeviceBuffer, DeviceElement, BLOCK};
use crate::error::{fail, Error, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

/// Per-segment sums of squares from [`CudaDevice::segment_sumsq`].
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentSums {
    /// `sum (a - b)^2` per segment, when `b` was given.
    pub diff: Option<Vec<f64>>,
    /// `sum a^2` per segment, when asked for.
    pub a: Option<Vec<f64>>,
}

impl CudaDevice {
    /// `out = (1 - lambda) a + lambda b`, elementwise, computed as `fma(l, b, (1 - l) a)` in f32
    /// (f64 for f64 data) with `l = lambda` rounded to that type, then rounded once to `T`:
    /// the CPU's interpolation gives the same bits. `lambda = 0` and `1` copy `a` and `b` bit
    /// for bit. Any finite lambda is allowed (extrapolation).
    pub fn lerp<T: DeviceElement>(
        &self,
        a: &DeviceBuffer<T>,
        b: &DeviceBuffer<T>,
        lambda: f64,
        out: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        // SAFETY: no flag.
        unsafe { self.lerp_flagging(a, b, lambda, out, 0) }
    }

    /// [`Self::lerp`], and when `nonfinite` (the device address of an `i32`) is not 0, sets that
    /// flag to 1 if a result is NaN or Inf.
    ///
    /// # Safety
    /// `nonfinite` is 0 or the address of an `i32` on this device that stays allocated until the
    /// queued kernel has run.
    unsafe fn lerp_flagging<T: DeviceElement>(
        &self,
        a: &DeviceBuffer<T>,
        b: &DeviceBuffer<T>,
        lambda: f64,
        out: &mut DeviceBuffer<T>,
        nonfinite: u64,
    ) -> Result<()> {
        if !lambda.is_finite() {
            fail!(InvalidArgument, "lambda: interpolation weight must be finite, got {lambda}");
        }
        same_len(&[("a", a.len()), ("b", b.len()), ("out", out.len())])?;
        let n = a.len() as u64;
        if n == 0 {
            return Ok(());
        }
        let name = format!("lerp_{}", T::SUFFIX);
        let cfg = self.grid_1d_for(self.function(&name)?, n / 4);
        let (pa, _ga) = a.slice.device_ptr(self.stream());
        let (pb, _gb) = b.slice.device_ptr(self.stream());
        let (po, _go) = out.slice.device_ptr_mut(self.stream());
        // SAFETY: lerp_<t>(T* out, const T* a, const T* b, tl_u64 n, acc l, int* nonfinite); the
        // three buffers hold n elements each; nonfinite is NULL or, by the caller's contract, one
        // live i32 on this device.
        unsafe { self.launch(&name, cfg, (po, pa, pb, n, T::arith(lambda), nonfinite)) }
    }

    /// Standard normals of `crate::rng`'s stream into `out` (elements `index0 ..`), computed
    /// on the device in f32.
    pub fn normals_f32(&self, seed: u64, stream: u64, index0: u64, out: &mut DeviceBuffer<f32>) -> Result<()> {
        self.normals("normals_f32", seed, stream, index0, &mut out.slice)
    }

    /// As [`Self::normals_f32`], computed in f64.
    pub fn normals_f64(&self, seed: u64, stream: u64, index0: u64, out: &mut DeviceBuffer<f64>) -> Result<()> {
        self.normals("normals_f64", seed, stream, index0, &mut out.slice)
    }

    fn normals<B>(&self, name: &str, seed: u64, stream: u64, index0: u64, out: &mut CudaSlice<B>) -> Result<()> {
        let n = out.len() as u64;
        if n == 0 {
            return Ok(());
        }
        if index0.checked_add(n).is_none() {
            fail!(InvalidArgument, "index0: noise indices {index0} + {n} elements overflow 64 bits");
        }
        let blocks = ((index0 + n - 1) >> 2) - (index0 >> 2) + 1;
        let (po, _go) = out.device_ptr_mut(self.stream());
        // SAFETY: normals_<a>(A* out, tl_u64 n, tl_u64 seed, tl_u64 stream, tl_u64 index0), the
        // type of out matching the kernel's name; out holds n elements.
        unsafe { self.launch(name, self.grid_1d(blocks), (po, n, seed, stream, index0)) }
    }

    /// Sums of squares per segment, all segments in one launch, accumulated in f64: segment
    /// `s` covers elements `offsets[s] .. offsets[s + 1]`. Returns `sum (a - b)^2` per segment
    /// when `b` is given and `sum a^2` when `with_norms_of_a`. The atomic accumulation makes
    /// the last bits vary between runs.
    pub fn segment_sumsq<T: DeviceElement>(
        &self,
        a: &DeviceBuffer<T>,
        b: Option<&DeviceBuffer<T>>,
        offsets: &[u64],
        with_norms_of_a: bool,
    ) -> Result<SegmentSums> {
        if let Some(b) = b {
            same_len(&[("a", a.len()), ("b", b.len())])?;
        }
        if offsets.len() < 2 {
            fail!(InvalidArgument, "offsets: need at least 2 entries (one segment), got {}", offsets.len());
        }
        let nseg = offsets.len() - 1;
        if nseg > u32::MAX as usize {
            fail!(InvalidArgument, "offsets: {nseg} segments are too many");
        }
        if let Some(i) = (1..offsets.len()).find(|&i| offsets[i] < offsets[i - 1]) {
            fail!(
                InvalidArgument,
                "offsets: must not decrease, but offsets[{i}] = {} < offsets[{}] = {}",
                offsets[i],
                i - 1,
                offsets[i - 1]
            );
        }
        let total = offsets[nseg];
        if total > a.len() as u64 {
            fail!(ShapeMismatch, "offsets: the last offset {total} is past the end of a ({} elements)", a.len());
        }
        if b.is_none() && !with_norms_of_a {
            return Ok(SegmentSums { diff: None, a: None });
        }
        let name = format!("segment_sumsq_{}", T::SUFFIX);
        let offs = self.stream().clone_htod(offsets).map_err(device_err("cuMemcpyHtoDAsync(offsets)"))?;
        let mut diff = self.stream().alloc_zeros::<f64>(nseg).map_err(device_err("cuMemAlloc(segment sums)"))?;
        let mut norms = self.stream().alloc_zeros::<f64>(nseg).map_err(device_err("cuMemAlloc(segment sums)"))?;
        let (chunk, blocks) = segment_grid(total, self.resident_blocks(self.function(&name)?));
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        {
            let (pa, _ga) = a.slice.device_ptr(self.stream());
            let b_ptr = b.map(|b| b.slice.device_ptr(self.stream()));
            let pb = b_ptr.as_ref().map_or(0, |(p, _)| *p);
            let (poff, _goff) = offs.device_ptr(self.stream());
            let (pd, _gd) = diff.device_ptr_mut(self.stream());
            let (pn, _gn) = norms.device_ptr_mut(self.stream());
            let pn = if with_norms_of_a { pn } else { 0 };
            // SAFETY: segment_sumsq_<t>(const T* a, const T* b or NULL, const tl_u64* offsets,
            // tl_u32 nseg, tl_u64 chunk, double* out_diff, double* out_a or NULL); offsets
            // (nseg + 1 values) are non-decreasing and end within a (and b); the outputs hold
            // nseg zeros.
            unsafe { self.launch(&name, cfg, (pa, pb, poff, nseg as u32, chunk, pd, pn)) }?;
        }
        let fetch = |s: &CudaSlice<f64>| -> Result<Vec<f64>> {
            let v = self.stream().clone_dtoh(s).map_err(device_err("cuMemcpyDtoHAsync(segment sums)"))?;
            self.synchronize()?;
            Ok(v)
        };
        Ok(SegmentSums {
            diff: b.is_some().then(|| fetch(&diff)).transpose()?,
            a: with_norms_of_a.then(|| fetch(&norms)).transpose()?,
        })
    }

    /// `out = input` converted to `D`, rounded once to nearest even (f64 to f16 / bf16
    /// correctly rounded, without passing through f32 rounding).
    pub fn convert<S: DeviceElement, D: DeviceElement>(
        &self,
        input: &DeviceBuffer<S>,
        out: &mut DeviceBuffer<D>,
    ) -> Result<()> {
        same_len(&[("input", input.len()), ("out", out.len())])?;
        let n = input.len() as u64;
        if n == 0 {
            return Ok(());
        }
        if S::DTYPE == D::DTYPE {
            fail!(InvalidArgument, "convert: input and out are both {}; copy instead", S::SUFFIX);
        }
        let name = format!("convert_{}_to_{}", S::SUFFIX, D::SUFFIX);
        let (pi, _gi) = input.slice.device_ptr(self.stream());
        let (po, _go) = out.slice.device_ptr_mut(self.stream());
        // SAFETY: convert_<s>_to_<d>(D* out, const S* in, tl_u64 n); both buffers hold n
        // elements.
        unsafe { self.launch(&name, self.grid_1d(n), (po, pi, n)) }
    }
}

/// `sum (x - y)^2` over two device buffers of one dtype, or `sum x^2` without `y`, in f64
/// (one segment of [`CudaDevice::segment_sumsq`]).
pub(crate) fn sum_sq(dev: &CudaDevice, x: &AnyBuffer, y: Option<&AnyBuffer>) -> Result<f64> {
    let offsets = [0, x.len() as u64];
    macro_rules! sum {
        ($x:expr, $y:expr) => {{
            let r = dev.segment_sumsq($x, $y, &offsets, $y.is_none())?;
            r.diff.or(r.a).map_or(0.0, |v| v[0])
        }};
    }
    Ok(match (x, y) {
        (AnyBuffer::F32(x), None) => sum!(x, None::<&DeviceBuffer<f32>>),
        (AnyBuffer::F64(x), None) => sum!(x, None::<&DeviceBuffer<f64>>),
        (AnyBuffer::F16(x), None) => sum!(x, None::<&DeviceBuffer<half::f16>>),
        (AnyBuffer::BF16(x), None) => sum!(x, None::<&DeviceBuffer<half::bf16>>),
        (AnyBuffer::F32(x), Some(AnyBuffer::F32(y))) => sum!(x, Some(y)),
        (AnyBuffer::F64(x), Some(AnyBuffer::F64(y))) => sum!(x, Some(y)),
        (AnyBuffer::F16(x), Some(AnyBuffer::F16(y))) => sum!(x, Some(y)),
        (AnyBuffer::BF16(x), Some(AnyBuffer::BF16(y))) => sum!(x, Some(y)),
        _ => return Err(Error::Panic("sum of squares of buffers of two dtypes; the caller checks them".into())),
    })
}

/// [`CudaDevice::lerp`] on buffers of one dtype, setting the `i32` flag at device address
/// `nonfinite` (0: none) to 1 if a result is NaN or Inf.
///
/// # Safety
/// `nonfinite` is 0 or the address of an `i32` on `dev` that stays allocated until the queued
/// kernel has run.
pub(crate) unsafe fn lerp(
    dev: &CudaDevice,
    x: &AnyBuffer,
    y: &AnyBuffer,
    lambda: f64,
    out: &mut AnyBuffer,
    nonfinite: u64,
) -> Result<()> {
    // SAFETY: every arm passes `nonfinite` on under the caller's contract.
    unsafe {
        match (x, y, out) {
            (AnyBuffer::F32(x), AnyBuffer::F32(y), AnyBuffer::F32(o)) => dev.lerp_flagging(x, y, lambda, o, nonfinite),
            (AnyBuffer::F64(x), AnyBuffer::F64(y), AnyBuffer::F64(o)) => dev.lerp_flagging(x, y, lambda, o, nonfinite),
            (AnyBuffer::F16(x), AnyBuffer::F16(y), AnyBuffer::F16(o)) => dev.lerp_flagging(x, y, lambda, o, nonfinite),
            (AnyBuffer::BF16(x), AnyBuffer::BF16(y), AnyBuffer::BF16(o)) => {
                dev.lerp_flagging(x, y, lambda, o, nonfinite)
            }
            _ => Err(Error::Panic("interpolation of buffers of several dtypes; the caller checks them".into())),
        }
    }
}

/// Chunk length and block count of `segment_sumsq` for `total` elements: chunks of at least 4
/// elements per thread, about one chunk per resident block (`resident` blocks at once).
fn segment_grid(total: u64, resident: u32) -> (u64, u32) {
    let target = resident.max(1) as u64;
    let chunk = total.div_ceil(target).max(4 * BLOCK as u64);
    let blocks = total.div_ceil(chunk).clamp(1, target) as u32;
    (chunk, blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::device::BLOCKS_PER_SM;

    /// A port of the block / segment walk of `segment_sumsq_impl` (kernels/weights.cu) with the
    /// launch geometry above: every element of every segment is visited exactly once, by one
    /// block, and attributed to its own segment.
    #[test]
    fn segment_walk_visits_each_element_once() {
        let cases: [&[u64]; 5] = [
            &[0, 1],
            &[0, 7],
            &[0, 1, 8, 8, 1007, 500_000, 1_000_003],
            &[3, 5, 999_999],
            &[0, 0, 0, 5000, 5000, 70_001],
        ];
        for offsets in cases {
            for sm_count in [1u32, 7, 132] {
                let nseg = offsets.len() - 1;
                let total = offsets[nseg];
                let (chunk, blocks) = segment_grid(total, sm_count * BLOCKS_PER_SM);
                let mut seen = vec![0u8; total as usize];
                for block in 0..blocks as u64 {
                    let mut c0 = block * chunk;
                    while c0 < total {
                        let c1 = (c0 + chunk).min(total);
                        let (mut lo, mut hi) = (0usize, nseg);
                        while lo < hi {
                            let mid = (lo + hi) / 2;
                            if offsets[mid + 1] > c0 {
                                hi = mid;
                            } else {
                                lo = mid + 1;
                            }
                        }
                        let mut s = lo;
                        while s < nseg && offsets[s] < c1 {
                            let (s0, s1) = (offsets[s].max(c0), offsets[s + 1].min(c1));
                            for i in s0..s1 {
                                assert!(offsets[s] <= i && i < offsets[s + 1]);
                                seen[i as usize] += 1;
                            }
                            s += 1;
                        }
                        c0 += blocks as u64 * chunk;
                    }
                }
                for (i, &n) in seen.iter().enumerate() {
                    let inside = i as u64 >= offsets[0];
                    assert_eq!(n, inside as u8, "offsets {offsets:?} sm {sm_count} element {i}");
                }
            }
        }
    }
}
