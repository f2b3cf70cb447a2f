//! One tensor of a set: its dtype, shape and bytes, and typed views of its host elements.

use crate::error::{fail, Error, Result};
use crate::tensor::{DType, HostSlice};
use half::{bf16, f16};

/// The element type of a tensor of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorDType {
    /// A weight: part of every weight-space figure.
    Weight(DType),
    /// Any other safetensors dtype: carried through untouched, left out of the figures.
    Other(safetensors::Dtype),
}

impl TensorDType {
    pub(super) fn from_safetensors(d: safetensors::Dtype) -> Self {
        use safetensors::Dtype as D;
        match d {
            D::F32 => TensorDType::Weight(DType::F32),
            D::F64 => TensorDType::Weight(DType::F64),
            D::F16 => TensorDType::Weight(DType::F16),
            D::BF16 => TensorDType::Weight(DType::BF16),
            other => TensorDType::Other(other),
        }
    }

    pub(super) fn to_safetensors(self) -> safetensors::Dtype {
        use safetensors::Dtype as D;
        match self {
            TensorDType::Weight(DType::F32) => D::F32,
            TensorDType::Weight(DType::F64) => D::F64,
            TensorDType::Weight(DType::F16) => D::F16,
            TensorDType::Weight(DType::BF16) => D::BF16,
            TensorDType::Other(d) => d,
        }
    }

    /// The safetensors name: `"F32"`, `"BF16"`, `"I64"`, ...
    pub fn name(self) -> String {
        format!("{:?}", self.to_safetensors())
    }

    /// The weight dtype, or `None` for a carried-through tensor.
    pub fn weight(self) -> Option<DType> {
        match self {
            TensorDType::Weight(d) => Some(d),
            TensorDType::Other(_) => None,
        }
    }
}

/// Mutable host elements of one of the weight dtypes.
#[derive(Debug)]
pub enum HostSliceMut<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
    F16(&'a mut [f16]),
    BF16(&'a mut [bf16]),
}

/// One named tensor of a set. The bytes live in the set's backing memory.
#[derive(Debug)]
pub struct Tensor {
    pub(super) name: String,
    pub(super) dtype: TensorDType,
    pub(super) shape: Vec<usize>,
    pub(super) numel: usize,
    pub(super) ptr: *mut u8,
    pub(super) nbytes: usize,
    /// -1: host memory; k >= 0: memory of CUDA device k (wrapped sets only).
    pub(super) device: i32,
}

// SAFETY: a Tensor is a view into memory owned by (or lent for the lifetime of) its ParamSet,
// which moves with it; nothing in it is tied to the thread that made it.
unsafe impl Send for Tensor {}
// SAFETY: shared access only reads (through &self); writes need &mut Tensor (from &mut ParamSet),
// so Rust's borrow rules order every write against every read.
unsafe impl Sync for Tensor {}

impl Tensor {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn dtype(&self) -> TensorDType {
        self.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements (1 for a scalar, 0 if a dimension is 0).
    pub fn numel(&self) -> usize {
        self.numel
    }
    pub fn nbytes(&self) -> usize {
        self.nbytes
    }
    /// -1 for host memory, else the CUDA device ordinal.
    pub fn device(&self) -> i32 {
        self.device
    }
    pub fn is_weight(&self) -> bool {
        self.dtype.weight().is_some()
    }

    /// The raw little-endian bytes (host tensors only).
    pub fn bytes(&self) -> Result<&[u8]> {
        self.check_host()?;
        if self.nbytes == 0 {
            return Ok(&[]);
        }
        // SAFETY: ptr addresses nbytes readable bytes for the set's lifetime (checked on
        // construction), and no &mut to them exists while &self is held.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr, self.nbytes) })
    }

    pub(crate) fn bytes_mut(&mut self) -> Result<&mut [u8]> {
        self.check_host()?;
        if self.nbytes == 0 {
            return Ok(&mut []);
        }
        // SAFETY: as for bytes(); &mut self guarantees exclusivity, and tensors of one set never
        // overlap (checked on construction).
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr, self.nbytes) })
    }

    pub(super) fn check_host(&self) -> Result<()> {
        if self.device >= 0 {
            fail!(
                DeviceUnavailable,
                "tensor {:?} lives on CUDA device {}; this operation needs host memory (distance, norms, interpolation and rewind run on the device with a CUDA context)",
                self.name,
                self.device
            );
        }
        Ok(())
    }

    /// The elements of a weight tensor in host memory.
    pub fn host(&self) -> Result<HostSlice<'_>> {
        let d = self.weight_dtype()?;
        self.check_host()?;
        let n = self.numel;
        if n == 0 {
            return Ok(match d {
                DType::F32 => HostSlice::F32(&[]),
                DType::F64 => HostSlice::F64(&[]),
                DType::F16 => HostSlice::F16(&[]),
                DType::BF16 => HostSlice::BF16(&[]),
            });
        }
        let p = self.ptr;
        // SAFETY: weight tensors are aligned for their dtype and hold numel elements (checked on
        // construction); every bit pattern is a valid float.
        Ok(unsafe {
            match d {
                DType::F32 => HostSlice::F32(std::slice::from_raw_parts(p as *const f32, n)),
                DType::F64 => HostSlice::F64(std::slice::from_raw_parts(p as *const f64, n)),
                DType::F16 => HostSlice::F16(std::slice::from_raw_parts(p as *const f16, n)),
                DType::BF16 => HostSlice::BF16(std::slice::from_raw_parts(p as *const bf16, n)),
            }
        })
    }

    /// The elements of a weight tensor in host memory, writable.
    pub fn host_mut(&mut self) -> Result<HostSliceMut<'_>> {
        let d = self.weight_dtype()?;
        self.check_host()?;
        let n = self.numel;
        if n == 0 {
            return Ok(match d {
                DType::F32 => HostSliceMut::F32(&mut []),
                DType::F64 => HostSliceMut::F64(&mut []),
                DType::F16 => HostSliceMut::F16(&mut []),
                DType::BF16 => HostSliceMut::BF16(&mut []),
            });
        }
        let p = self.ptr;
        // SAFETY: as for host(), with exclusivity from &mut self.
        Ok(unsafe {
            match d {
                DType::F32 => HostSliceMut::F32(std::slice::from_raw_parts_mut(p as *mut f32, n)),
                DType::F64 => HostSliceMut::F64(std::slice::from_raw_parts_mut(p as *mut f64, n)),
                DType::F16 => HostSliceMut::F16(std::slice::from_raw_parts_mut(p as *mut f16, n)),
                DType::BF16 => HostSliceMut::BF16(std::slice::from_raw_parts_mut(p as *mut bf16, n)),
            }
        })
    }

    fn weight_dtype(&self) -> Result<DType> {
        self.dtype.weight().ok_or_else(|| {
            Error::UnsupportedDtype(format!(
                "tensor {:?} has dtype {}, which is not a weight dtype (F32, F64, F16, BF16)",
                self.name,
                self.dtype.name()
            ))
        })
    }

    /// The address of the first element (host or device memory, see [`Tensor::device`]).
    pub(crate) fn address(&self) -> u64 {
        self.ptr as u64
    }

    /// The address range `[start, end)` of the bytes, for overlap checks.
    pub(crate) fn addr_range(&self) -> (usize, usize) {
        (self.ptr as usize, self.ptr as usize + self.nbytes)
    }
}

/// An owned, 8-byte-aligned copy of `bytes`.
pub(super) fn aligned_copy(bytes: &[u8]) -> Box<[u64]> {
    let mut buf = vec![0u64; bytes.len().div_ceil(8)].into_boxed_slice();
    // SAFETY: the buffer holds at least bytes.len() bytes; u64 has no invalid bit patterns.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.as_mut_ptr() as *mut u8, bytes.len());
    }
    buf
}

/// An owned, 8-byte-aligned, zeroed buffer of at least `len` bytes, or None when the allocation
/// fails (the size comes from a file, so failure is an error, not an abort).
pub(super) fn aligned_zeroed(len: usize) -> Option<Box<[u64]>> {
    let words = len.div_ceil(8);
    if words == 0 {
        return Some(Box::new([]));
    }
    let layout = std::alloc::Layout::array::<u64>(words).ok()?;
    // SAFETY: the layout has a non-zero size (words > 0).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut u64;
    if ptr.is_null() {
        return None;
    }
    // SAFETY: ptr was allocated by the global allocator with the layout of `words` u64s, all
    // zeroed (a valid u64 each); the Box takes ownership and frees it with the same layout.
    Some(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, words)) })
}
