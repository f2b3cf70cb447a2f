//! Element types and borrowed matrix views.
//!
//! A [`Matrix`] is a row-major view of caller-owned memory: rows are samples, columns are
//! features, and consecutive rows start `row_stride` elements apart. Host views borrow a slice
//! whose length is checked against the shape on construction, so an analysis never reads out
//! of bounds. Device views (memory of a CUDA device) are served by the CUDA backend.

use crate::error::{fail, Result};
use half::{bf16, f16};

/// Storage type of floating-point data. The discriminants are the C ABI's `tl_dtype` values.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32 = 0,
    F64 = 1,
    F16 = 2,
    BF16 = 3,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Lower-case name as used in messages and by safetensors users (`"f32"`, `"bf16"`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// The dtype of a C ABI value, or an error naming `what`.
    pub fn from_raw(raw: u32, what: &str) -> Result<DType> {
        Ok(match raw {
            0 => DType::F32,
            1 => DType::F64,
            2 => DType::F16,
            3 => DType::BF16,
            _ => fail!(
                UnsupportedDtype,
                "{what}: unknown dtype value {raw} (expected 0 = F32, 1 = F64, 2 = F16, 3 = BF16)"
            ),
        })
    }
}

/// A floating-point storage element: one of f32, f64, f16, bf16.
pub trait Element: Copy + Send + Sync + 'static {
    const DTYPE: DType;
    fn to_f64(self) -> f64;
    fn to_f32(self) -> f32;
    /// The slice as a dtype-tagged [`HostSlice`].
    fn host_slice(data: &[Self]) -> HostSlice<'_>;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn host_slice(data: &[Self]) -> HostSlice<'_> {
        HostSlice::F32(data)
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
}
impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn host_slice(data: &[Self]) -> HostSlice<'_> {
        HostSlice::F64(data)
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self as f32
    }
}
impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn host_slice(data: &[Self]) -> HostSlice<'_> {
        HostSlice::F16(data)
    }
    #[inline]
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}
impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn host_slice(data: &[Self]) -> HostSlice<'_> {
        HostSlice::BF16(data)
    }
    #[inline]
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    #[inline]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// Host elements of one of the supported dtypes.
#[derive(Debug, Clone, Copy)]
pub enum HostSlice<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

impl<'a> HostSlice<'a> {
    pub fn dtype(&self) -> DType {
        match self {
            HostSlice::F32(_) => DType::F32,
            HostSlice::F64(_) => DType::F64,
            HostSlice::F16(_) => DType::F16,
            HostSlice::BF16(_) => DType::BF16,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            HostSlice::F32(s) => s.len(),
            HostSlice::F64(s) => s.len(),
            HostSlice::F16(s) => s.len(),
            HostSlice::BF16(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The values as f32: borrowed for f32 data, converted (f64 rounded to nearest) otherwise.
    pub fn to_f32(&self) -> std::borrow::Cow<'a, [f32]> {
        use std::borrow::Cow;
        match *self {
            HostSlice::F32(x) => Cow::Borrowed(x),
            HostSlice::F64(x) => Cow::Owned(x.iter().map(|&v| v as f32).collect()),
            HostSlice::F16(x) => Cow::Owned(x.iter().map(|v| v.to_f32()).collect()),
            HostSlice::BF16(x) => Cow::Owned(x.iter().map(|v| v.to_f32()).collect()),
        }
    }
    /// The first `len` elements (panics past the end, as slicing does).
    pub fn prefix(&self, len: usize) -> HostSlice<'a> {
        match *self {
            HostSlice::F32(s) => HostSlice::F32(&s[..len]),
            HostSlice::F64(s) => HostSlice::F64(&s[..len]),
            HostSlice::F16(s) => HostSlice::F16(&s[..len]),
            HostSlice::BF16(s) => HostSlice::BF16(&s[..len]),
        }
    }
}

/// Where a matrix's elements live.
#[derive(Debug, Clone, Copy)]
pub enum Storage<'a> {
    Host(HostSlice<'a>),
    /// Memory of CUDA device `device`, starting at the device address `ptr`.
    Device {
        ptr: u64,
        dtype: DType,
        device: i32,
        _borrow: std::marker::PhantomData<&'a ()>,
    },
}

/// A row-major matrix view: `rows` samples by `cols` features, `row_stride` elements between
/// row starts (`row_stride >= cols`).
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    storage: Storage<'a>,
    rows: usize,
    cols: usize,
    row_stride: usize,
}

/// Elements a strided view spans: the last row ends at `(rows - 1) * stride + cols`.
fn span(rows: usize, cols: usize, row_stride: usize) -> Option<usize> {
    if rows == 0 {
        return Some(0);
    }
    (rows - 1).checked_mul(row_stride)?.checked_add(cols)
}

impl<'a> Matrix<'a> {
    /// A host view of `data` with the given shape; `row_stride = cols` for contiguous rows.
    pub fn new<T: Element>(data: &'a [T], rows: usize, cols: usize, row_stride: usize) -> Result<Self> {
        Self::from_host(T::host_slice(data), rows, cols, row_stride)
    }

    /// A contiguous host view (`row_stride = cols`).
    pub fn contiguous<T: Element>(data: &'a [T], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols)
    }

    /// A host view over an already typed slice.
    pub fn from_host(data: HostSlice<'a>, rows: usize, cols: usize, row_stride: usize) -> Result<Self> {
        check_shape(cols, row_stride)?;
        let needed = span(rows, cols, row_stride).ok_or_else(|| {
            crate::Error::InvalidArgument(format!(
                "matrix of {rows} x {cols} with row_stride {row_stride} overflows the address space"
            ))
        })?;
        if data.len() < needed {
            fail!(
                ShapeMismatch,
                "matrix of {rows} x {cols} with row_stride {row_stride} needs {needed} elements, the buffer holds {}",
                data.len()
            );
        }
        Ok(Matrix { storage: Storage::Host(data), rows, cols, row_stride })
    }

    /// A view of device memory. The address is not dereferenced here; the CUDA backend checks
    /// that it belongs to `device`.
    ///
    /// # Safety
    /// `ptr` must address at least `(rows - 1) * row_stride + cols` elements of `dtype` on CUDA
    /// device `device`, valid for reads for `'a`.
    pub unsafe fn from_device(
        ptr: u64,
        dtype: DType,
        device: i32,
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Result<Self> {
        check_shape(cols, row_stride)?;
        if span(rows, cols, row_stride).and_then(|n| n.checked_mul(dtype.size())).is_none() {
            fail!(
                InvalidArgument,
                "matrix of {rows} x {cols} with row_stride {row_stride} overflows the address space"
            );
        }
        Ok(Matrix {
            storage: Storage::Device { ptr, dtype, device, _borrow: std::marker::PhantomData },
            rows,
            cols,
            row_stride,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }
    pub fn storage(&self) -> &Storage<'a> {
        &self.storage
    }
    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::Host(s) => s.dtype(),
            Storage::Device { dtype, .. } => *dtype,
        }
    }
    /// The same view restricted to rows `start..start + count`.
    pub fn row_range(&self, start: usize, count: usize) -> Result<Matrix<'a>> {
        if !matches!(start.checked_add(count), Some(end) if end <= self.rows) {
            fail!(
                InvalidArgument,
                "rows {start}..{} out of a matrix of {} rows",
                start.saturating_add(count),
                self.rows
            );
        }
        // An empty range may start past the last element (count == 0 at the end): clamp it.
        let offset = start * self.row_stride;
        let storage = match self.storage {
            Storage::Host(s) => Storage::Host(match s {
                HostSlice::F32(d) => HostSlice::F32(&d[offset.min(d.len())..]),
                HostSlice::F64(d) => HostSlice::F64(&d[offset.min(d.len())..]),
                HostSlice::F16(d) => HostSlice::F16(&d[offset.min(d.len())..]),
                HostSlice::BF16(d) => HostSlice::BF16(&d[offset.min(d.len())..]),
            }),
            Storage::Device { ptr, dtype, device, _borrow } => {
                Storage::Device { ptr: ptr + (offset * dtype.size()) as u64, dtype, device, _borrow }
            }
        };
        Ok(Matrix { storage, rows: count, cols: self.cols, row_stride: self.row_stride })
    }
}

fn check_shape(cols: usize, row_stride: usize) -> Result<()> {
    if cols == 0 {
        fail!(InvalidArgument, "matrix has 0 columns (features)");
    }
    if row_stride < cols {
        fail!(InvalidArgument, "row_stride {row_stride} is smaller than cols {cols}");
    }
    Ok(())
}
