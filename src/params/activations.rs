//! Activations files, as `tlens cka` reads them: one tensor per layer, in file order, samples
//! first; the remaining dimensions are flattened into features.
//!
//! Two readers, one set of rules for what a layer is:
//! - [`activation_layers`]: every layer of a set in memory, as a matrix over the set's memory;
//! - [`ActivationFile`]: a file mapped read-only and read in blocks of rows, each block converted
//!   (to f32, or f64 for f64 layers) into a buffer the caller reuses, and its pages handed back
//!   to the kernel once read. Streaming a file through [`crate::cka::CkaAccumulator`] this way
//!   holds about one block in memory whatever the file's size.

use super::safetensors::{open_regular, parse_header};
use super::{HeaderEntry, ParamSet, Tensor, TensorDType};
use crate::backend::cpu::weights::{bf16_to_f32, f16_to_f32};
use crate::error::{fail, human_bytes, Error, Result};
use crate::tensor::{DType, Matrix};
use std::ops::Range;
use std::path::Path;

/// Every layer of an activations file (`what` names it in messages) as a matrix over the set's
/// memory. A file with no tensors is [`Error::Format`]; a scalar layer is
/// [`Error::ShapeMismatch`] and a non-float layer [`Error::UnsupportedDtype`], naming the layer.
pub fn activation_layers<'a>(layers: &'a ParamSet, what: &str) -> Result<Vec<Matrix<'a>>> {
    if layers.tensors().is_empty() {
        return Err(Error::Format(format!("{what}: the file holds no tensors")));
    }
    layers.tensors().iter().map(|l| layer_matrix(l, what)).collect()
}

fn layer_matrix<'a>(layer: &'a Tensor, what: &str) -> Result<Matrix<'a>> {
    let (_, rows, cols) = layer_shape(layer.name(), layer.dtype(), layer.shape(), what)?;
    Matrix::from_host(layer.host()?, rows, cols, cols).map_err(|e| {
        let msg = format!("{what}: layer {:?}: {e}", layer.name());
        match e {
            Error::ShapeMismatch(_) => Error::ShapeMismatch(msg),
            Error::DegenerateInput(_) => Error::DegenerateInput(msg),
            Error::NonFinite(_) => Error::NonFinite(msg),
            Error::InvalidArgument(_) => Error::InvalidArgument(msg),
            other => other,
        }
    })
}

/// A tensor as a layer: its float dtype, samples (the first dimension) and features (the product
/// of the others, which fits: it is at most the element count). The errors of
/// [`activation_layers`], naming the file (`what`) and the tensor.
fn layer_shape(name: &str, dtype: TensorDType, shape: &[usize], what: &str) -> Result<(DType, usize, usize)> {
    let Some((&rows, rest)) = shape.split_first() else {
        fail!(ShapeMismatch, "{what}: tensor {name:?} is a scalar; activations need a first dimension of samples");
    };
    let Some(dtype) = dtype.weight() else {
        fail!(
            UnsupportedDtype,
            "{what}: tensor {name:?} has dtype {}; activations must be F32, F64, F16 or BF16",
            dtype.name()
        );
    };
    let cols: usize = rest.iter().product();
    if cols == 0 {
        fail!(InvalidArgument, "{what}: layer {name:?}: matrix has 0 columns (features)");
    }
    Ok((dtype, rows, cols))
}

/// One layer of an [`ActivationFile`]: `rows` samples of `cols` features.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationLayer {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    rows: usize,
    cols: usize,
    /// Where its elements start in the file.
    offset: usize,
}

impl ActivationLayer {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The dtype stored in the file.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Samples: the first dimension.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Features: the product of the other dimensions.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The same layer with its first `dims` dimensions as the samples (batch x tokens, for
    /// token activations: each token a row), or None when it has fewer dimensions.
    pub fn with_sample_dims(&self, dims: usize) -> Option<ActivationLayer> {
        if self.shape.len() < dims {
            return None;
        }
        let (samples, features) = self.shape.split_at(dims);
        Some(ActivationLayer { rows: samples.iter().product(), cols: features.iter().product(), ..self.clone() })
    }

    /// The bytes of rows `rows` in the file.
    fn byte_range(&self, rows: Range<usize>) -> Range<usize> {
        let row_bytes = self.cols * self.dtype.size();
        self.offset + rows.start * row_bytes..self.offset + rows.end * row_bytes
    }
}

/// Rows of one layer as [`ActivationFile::read_rows`] converts them: f32 for F32, F16 and BF16
/// layers (exact), f64 for F64 layers. Cleared and refilled block after block, so that its
/// memory is allocated once.
#[derive(Debug, Clone, PartialEq)]
pub enum RowBlock {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl RowBlock {
    /// An empty block for rows of `dtype`.
    pub fn for_dtype(dtype: DType) -> RowBlock {
        match dtype {
            DType::F64 => RowBlock::F64(Vec::new()),
            DType::F32 | DType::F16 | DType::BF16 => RowBlock::F32(Vec::new()),
        }
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        match self {
            RowBlock::F32(v) => v.len(),
            RowBlock::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        match self {
            RowBlock::F32(v) => v.clear(),
            RowBlock::F64(v) => v.clear(),
        }
    }

    /// The rows held, as a matrix of `cols` features.
    pub fn matrix(&self, cols: usize) -> Result<Matrix<'_>> {
        let rows = self.len().checked_div(cols).unwrap_or(0);
        match self {
            RowBlock::F32(v) => Matrix::contiguous(v, rows, cols),
            RowBlock::F64(v) => Matrix::contiguous(v, rows, cols),
        }
    }
}

/// An activations file mapped read-only, read in blocks of rows; see the module docs.
///
/// The mapping is advised sequential (the kernel reads ahead further, and may drop pages soon
/// after they are read), and [`ActivationFile::release_rows`] hands the pages of rows already
/// used back to the kernel, so that the resident set does not grow with the file.
pub struct ActivationFile {
    what: String,
    map: memmap2::Mmap,
    /// Tensors in file order; offsets relative to the data section.
    entries: Vec<HeaderEntry>,
    data_start: usize,
}

impl std::fmt::Debug for ActivationFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivationFile").field("what", &self.what).field("tensors", &self.entries.len()).finish()
    }
}

impl ActivationFile {
    /// Maps a safetensors file and validates its header against its size (the checks of every
    /// reader of the crate). Paths that are not regular files are refused with [`Error::Io`].
    ///
    /// # Safety
    /// The file must not be truncated or modified while the value lives: a truncated file stops
    /// the process (SIGBUS) when a lost page is read, and a file rewritten in place changes the
    /// rows read.
    pub unsafe fn open(path: impl AsRef<Path>) -> Result<ActivationFile> {
        let what = path.as_ref().display().to_string();
        let (file, len) = open_regular(path.as_ref(), &what)?;
        if len < 8 {
            fail!(
                Format,
                "{what}: not a valid safetensors file: truncated: {len} bytes, but a safetensors file starts with an 8-byte header length"
            );
        }
        // SAFETY: the caller promises that the file does not change while the value (which owns
        // the mapping) lives; the mapping is read-only.
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }
            .map_err(|e| Error::Io(format!("{what}: cannot map the file: {e}")))?;
        // Only a hint: the reads below are correct whatever the kernel makes of it.
        let _ = map.advise(memmap2::Advice::Sequential);
        let header = parse_header(&map, &what)?;
        Ok(ActivationFile { what, map, entries: header.entries, data_start: header.data_start })
    }

    /// The path it was opened from, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Every tensor (name, dtype, shape), in file order.
    pub fn tensors(&self) -> &[HeaderEntry] {
        &self.entries
    }

    /// The tensor named `name` and its little-endian bytes (for small tensors, such as a mask).
    pub fn tensor_bytes(&self, name: &str) -> Option<(&HeaderEntry, &[u8])> {
        let e = self.entries.iter().find(|e| e.name == name)?;
        Some((e, &self.map[self.data_start + e.start..self.data_start + e.end]))
    }

    /// Every tensor but `except`, in file order, as layers. A file with no tensors is
    /// [`Error::Format`]; a scalar is [`Error::ShapeMismatch`] and a non-float tensor
    /// [`Error::UnsupportedDtype`], naming the file and the tensor (as [`activation_layers`]).
    pub fn layers(&self, except: Option<&str>) -> Result<Vec<ActivationLayer>> {
        if self.entries.is_empty() {
            fail!(Format, "{}: the file holds no tensors", self.what);
        }
        self.entries
            .iter()
            .filter(|e| Some(e.name.as_str()) != except)
            .map(|e| {
                let (dtype, rows, cols) = layer_shape(&e.name, e.dtype, &e.shape, &self.what)?;
                Ok(ActivationLayer {
                    name: e.name.clone(),
                    dtype,
                    shape: e.shape.clone(),
                    rows,
                    cols,
                    offset: self.data_start + e.start,
                })
            })
            .collect()
    }

    /// Appends rows `rows` of `layer` (a layer of this file) to `out` (a block for the layer's
    /// dtype, see [`RowBlock::for_dtype`]), converted. A NaN or an infinity is
    /// [`Error::NonFinite`] naming the file, the layer, the row and the column.
    pub fn read_rows(&self, layer: &ActivationLayer, rows: Range<usize>, out: &mut RowBlock) -> Result<()> {
        if rows.start > rows.end || rows.end > layer.rows {
            fail!(InvalidArgument, "rows {rows:?} out of layer {:?} of {} rows", layer.name, layer.rows);
        }
        let bytes = &self.map[layer.byte_range(rows.clone())];
        let count = rows.len() * layer.cols;
        let reserve_failed = |_| {
            Error::OutOfMemory(format!(
                "{}: layer {:?}: could not allocate a block of {} rows ({})",
                self.what,
                layer.name,
                rows.len(),
                human_bytes((count * layer.dtype.size()) as u128)
            ))
        };
        // Elements are read from bytes: the file does not promise their alignment.
        let first_new = out.len();
        match (layer.dtype, out) {
            (DType::F64, RowBlock::F64(v)) => {
                v.try_reserve(count).map_err(reserve_failed)?;
                v.extend(bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))));
                self.check_finite(layer, rows.start, &v[first_new..])
            }
            (DType::F32, RowBlock::F32(v)) => {
                v.try_reserve(count).map_err(reserve_failed)?;
                v.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))));
                self.check_finite(layer, rows.start, &v[first_new..])
            }
            (DType::F16, RowBlock::F32(v)) => {
                v.try_reserve(count).map_err(reserve_failed)?;
                v.extend(bytes.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))));
                self.check_finite(layer, rows.start, &v[first_new..])
            }
            (DType::BF16, RowBlock::F32(v)) => {
                v.try_reserve(count).map_err(reserve_failed)?;
                v.extend(bytes.chunks_exact(2).map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]]))));
                self.check_finite(layer, rows.start, &v[first_new..])
            }
            (dtype, _) => fail!(
                InvalidArgument,
                "layer {:?} holds {}: read its rows into RowBlock::for_dtype({dtype:?})",
                layer.name,
                dtype.name()
            ),
        }
    }

    /// Fails, naming the first non-finite value, when `values` (rows from `first_row` on) hold one.
    fn check_finite<T: Copy + Into<f64>>(&self, layer: &ActivationLayer, first_row: usize, values: &[T]) -> Result<()> {
        let Some(i) = values.iter().position(|&v| !v.into().is_finite()) else { return Ok(()) };
        fail!(
            NonFinite,
            "{} layer {:?} holds {} at row {}, column {}",
            self.what,
            layer.name,
            values[i].into(),
            first_row + i / layer.cols,
            i % layer.cols
        );
    }

    /// Hands the pages of rows `rows` of `layer` back to the kernel: they no longer count in the
    /// resident set, and a later read of them reads the file again.
    pub fn release_rows(&self, layer: &ActivationLayer, rows: Range<usize>) {
        let bytes = layer.byte_range(rows.start.min(layer.rows)..rows.end.min(layer.rows));
        if !bytes.is_empty() {
            // SAFETY: the mapping is read-only and file-backed, and the file does not change (the
            // contract of `open`): after MADV_DONTNEED a read fetches the same bytes from the file
            // again, so no slice into these pages (of this layer or of a neighbour sharing a
            // page) changes. memmap2 widens the range to whole pages.
            let _ = unsafe {
                self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, bytes.start, bytes.len())
            };
        }
    }
}
