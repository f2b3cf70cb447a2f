//! Data for the weight-space benchmarks (benches/geometry.rs, examples/time_weights.rs): fresh
//! values and 8-byte aligned arrays of any dtype wrapped as parameter sets. Included by path.

use half::{bf16, f16};
use rayon::prelude::*;
use transferlens::params::{ParamSet, TensorSpec};
use transferlens::{DType, Element};

/// Fresh values in [-1, 1) from a small LCG (the values do not matter to the speed, but zeros
/// could flatter the conversions).
pub fn fill(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// One array of a dtype, in 8-byte aligned storage.
pub struct Buf {
    pub words: Vec<u64>,
    pub n: usize,
    pub dtype: DType,
}

impl Buf {
    pub fn new(values: &[f64], dtype: DType) -> Buf {
        let n = values.len();
        let mut buf = Buf { words: vec![0u64; (n * dtype.size()).div_ceil(8)], n, dtype };
        match dtype {
            DType::F32 => buf.typed::<f32>().iter_mut().zip(values).for_each(|(o, v)| *o = *v as f32),
            DType::F64 => buf.typed::<f64>().copy_from_slice(values),
            DType::F16 => buf.typed::<f16>().iter_mut().zip(values).for_each(|(o, v)| *o = f16::from_f64(*v)),
            DType::BF16 => buf.typed::<bf16>().iter_mut().zip(values).for_each(|(o, v)| *o = bf16::from_f64(*v)),
        }
        buf
    }
    /// The storage as `n` elements of `T`, the buffer's dtype.
    pub fn typed<T: Element>(&mut self) -> &mut [T] {
        assert!(T::DTYPE == self.dtype, "a {} buffer read as {}", self.dtype.name(), T::DTYPE.name());
        // SAFETY: the words hold at least n elements of T (the buffer's dtype), 8-byte aligned
        // (enough for every dtype); every bit pattern is a valid float; the borrow is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut T, self.n) }
    }
    pub fn nbytes(&self) -> usize {
        self.n * self.dtype.size()
    }
    /// A set of one tensor over this storage.
    ///
    /// # Safety
    /// The buffer outlives the set and is not used otherwise while the set is written.
    pub unsafe fn set(&mut self) -> ParamSet {
        let spec = TensorSpec {
            name: "layer1.weight".into(),
            dtype: self.dtype,
            shape: vec![self.n],
            ptr: self.words.as_mut_ptr() as *mut u8,
            device: -1,
        };
        // SAFETY: the caller's contract.
        unsafe { ParamSet::wrap(vec![spec]) }.unwrap()
    }
}

/// A copy of `src` into `dst` split across rayon's threads in 128 KiB pieces, as the library
/// splits its work: the reference the kernels' rates are compared with.
pub fn par_copy(src: &[u64], dst: &mut [u64]) {
    dst.par_chunks_mut(1 << 14).zip(src.par_chunks(1 << 14)).for_each(|(d, s)| d.copy_from_slice(s));
}
