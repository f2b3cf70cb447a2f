//! Parameter sets: named tensors grouped into modules; safetensors in and out.
//!
//! A [`ParamSet`] is a list of named tensors in a fixed order (file order for a loaded set, the
//! caller's order for a wrapped one). Tensors of dtype F32, F64, F16 and BF16 are *weights*;
//! tensors of any other safetensors dtype (an I64 `num_batches_tracked`, say) are carried through
//! byte for byte and left out of every weight-space figure ([`ParamSet::left_out`] lists them).
//!
//! Weights are grouped into modules by name ([`Grouping`]); module names are listed in order of
//! first appearance. A set's memory is one of: a private copy-on-write mapping of a safetensors
//! file (loading reads only the pages used; writing copies only the pages written), the caller's
//! own memory ([`ParamSet::wrap`], zero-copy), or buffers the set owns. Every set is writable, so
//! any of them can receive an interpolation.
//!
//! A safetensors file is untrusted input: its header length, offsets, dtypes and shapes are
//! checked (with overflow-checked arithmetic) against the file's size before any tensor is
//! touched, so that a hostile file gives [`Error::Format`] naming the tensor at fault, never an
//! out-of-bounds read or an allocation larger than the file.

use crate::error::{fail, Error, Result};
use crate::tensor::DType;
use half::{bf16, f16};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

#[cfg(target_endian = "big")]
compile_error!("transferlens reads safetensors (little-endian) data in place: big-endian hosts are not supported");

/// Largest header accepted, as in the safetensors crate: bigger is certainly not a checkpoint.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The element type of a tensor of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorDType {
    /// A weight: part of every weight-space figure.
    Weight(DType),
    /// Any other safetensors dtype: carried through untouched, left out of the figures.
    Other(safetensors::Dtype),
}

impl TensorDType {
    fn from_safetensors(d: safetensors::Dtype) -> Self {
        use safetensors::Dtype as D;
        match d {
            D::F32 => TensorDType::Weight(DType::F32),
            D::F64 => TensorDType::Weight(DType::F64),
            D::F16 => TensorDType::Weight(DType::F16),
            D::BF16 => TensorDType::Weight(DType::BF16),
            other => TensorDType::Other(other),
        }
    }

    fn to_safetensors(self) -> safetensors::Dtype {
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
    name: String,
    dtype: TensorDType,
    shape: Vec<usize>,
    numel: usize,
    ptr: *mut u8,
    nbytes: usize,
    /// -1: host memory; k >= 0: memory of CUDA device k (wrapped sets only).
    device: i32,
}

// SAFETY: a Tensor is a view into memory owned by (or lent for the lifetime of) its ParamSet;
// reads go through &self and writes through &mut ParamSet, so Rust's borrow rules order them.
unsafe impl Send for Tensor {}
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

    fn check_host(&self) -> Result<()> {
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
    pub fn host(&self) -> Result<crate::tensor::HostSlice<'_>> {
        use crate::tensor::HostSlice;
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

    /// Host address range, for overlap checks.
    /// The address of the first element (host or device memory, see [`Tensor::device`]).
    pub(crate) fn address(&self) -> u64 {
        self.ptr as u64
    }

    pub(crate) fn addr_range(&self) -> (usize, usize) {
        (self.ptr as usize, self.ptr as usize + self.nbytes)
    }
}

/// How tensor names are grouped into modules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Grouping {
    /// The first dot-separated component: `layer1.0.conv1.weight` is in `layer1`.
    #[default]
    First,
    /// The first `d` components (`d >= 1`); shorter names are their own module.
    Depth(usize),
    /// Explicit prefixes, matched on whole components (`layer1` matches `layer1.0.conv1.weight`
    /// but not `layer10.weight`); the longest matching prefix wins.
    Prefixes { prefixes: Vec<String>, unmatched: Unmatched },
    /// Every tensor is its own module.
    Tensor,
}

/// What [`Grouping::Prefixes`] does with a weight that no prefix matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unmatched {
    /// The tensor forms a module of its own, named by the tensor's full name.
    #[default]
    OwnGroup,
    /// An error naming the tensor.
    Error,
}

impl Grouping {
    /// Parses the CLI form: `first`, `depth:N`, `tensor`, `prefixes:P1,P2,...` (unmatched
    /// tensors form their own modules).
    pub fn parse(text: &str) -> Result<Grouping> {
        let g = if text == "first" {
            Grouping::First
        } else if text == "tensor" {
            Grouping::Tensor
        } else if let Some(d) = text.strip_prefix("depth:") {
            let d: usize = d
                .parse()
                .map_err(|_| Error::InvalidArgument(format!("modules: depth {d:?} is not a positive whole number")))?;
            Grouping::Depth(d)
        } else if let Some(list) = text.strip_prefix("prefixes:") {
            Grouping::Prefixes {
                prefixes: list.split(',').map(str::to_string).collect(),
                unmatched: Unmatched::OwnGroup,
            }
        } else {
            fail!(InvalidArgument, "modules: {text:?} is not one of first, depth:N, tensor, prefixes:P1,P2,...")
        };
        g.validate()?;
        Ok(g)
    }

    fn validate(&self) -> Result<()> {
        match self {
            Grouping::Depth(0) => fail!(InvalidArgument, "modules: depth must be at least 1"),
            Grouping::Prefixes { prefixes, .. } => {
                if prefixes.is_empty() {
                    fail!(InvalidArgument, "modules: the list of prefixes is empty");
                }
                if let Some(i) = prefixes.iter().position(|p| p.is_empty()) {
                    fail!(InvalidArgument, "modules: prefix {i} is empty");
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The module of tensor `name`.
    pub fn module_of<'n>(&self, name: &'n str) -> Result<std::borrow::Cow<'n, str>> {
        use std::borrow::Cow;
        Ok(match self {
            Grouping::First => Cow::Borrowed(name.split('.').next().unwrap_or(name)),
            Grouping::Depth(d) => {
                let end = name.match_indices('.').nth(d.saturating_sub(1)).map_or(name.len(), |(i, _)| i);
                Cow::Borrowed(&name[..end])
            }
            Grouping::Tensor => Cow::Borrowed(name),
            Grouping::Prefixes { prefixes, unmatched } => {
                let best = prefixes.iter().filter(|p| prefix_matches(p, name)).max_by_key(|p| p.len());
                match (best, unmatched) {
                    (Some(p), _) => Cow::Owned(p.trim_end_matches('.').to_string()),
                    (None, Unmatched::OwnGroup) => Cow::Borrowed(name),
                    (None, Unmatched::Error) => {
                        fail!(NotFound, "tensor {name:?} matches none of the module prefixes {prefixes:?}")
                    }
                }
            }
        })
    }
}

/// `prefix` matches `name` on whole dot-separated components; a prefix ending in '.' matches
/// any name that starts with it.
fn prefix_matches(prefix: &str, name: &str) -> bool {
    if prefix.ends_with('.') {
        return name.starts_with(prefix);
    }
    name == prefix || (name.starts_with(prefix) && name.as_bytes()[prefix.len()] == b'.')
}

/// A module: a name and the indices of its weight tensors in the set, in set order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    pub tensors: Vec<usize>,
    /// Total elements of its tensors.
    pub numel: u64,
}

/// Memory a set owns: a private mapping of its file and/or aligned buffers.
#[derive(Default)]
struct Backing {
    _map: Option<memmap2::MmapMut>,
    _owned: Vec<Box<[u64]>>,
}

/// A description of one tensor in the caller's memory, for [`ParamSet::wrap`].
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub ptr: *mut u8,
    /// -1 for host memory, else a CUDA device ordinal.
    pub device: i32,
}

/// A list of named tensors grouped into modules. See the module docs.
///
/// Thread safety: a set may be read from several threads at once; writing (interpolating into
/// it, regrouping) needs exclusive access.
pub struct ParamSet {
    tensors: Vec<Tensor>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
    grouping: Grouping,
    modules: Vec<Module>,
    _backing: Backing,
}

impl std::fmt::Debug for ParamSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamSet").field("tensors", &self.tensors.len()).field("modules", &self.modules).finish()
    }
}

/// One tensor of a validated safetensors header: the byte range is relative to the data section.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderEntry {
    pub name: String,
    pub dtype: TensorDType,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// A validated safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Tensors in file (offset) order.
    pub entries: Vec<HeaderEntry>,
    pub metadata: BTreeMap<String, String>,
    /// Where the data section starts in the file.
    pub data_start: usize,
}

fn bad(what: &str, msg: impl std::fmt::Display) -> Error {
    Error::Format(format!("{what}: {msg}"))
}

/// Bytes `numel` elements of `dtype` take, or None on overflow or a fractional byte count.
fn byte_size(shape: &[usize], dtype: safetensors::Dtype) -> Option<(usize, usize)> {
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    let bits = numel.checked_mul(dtype.bitsize())?;
    (bits % 8 == 0).then_some((numel, bits / 8))
}

/// Parses and validates the header of the safetensors bytes `file`; `what` names the file in
/// messages. Every size and offset is checked against `file.len()` with checked arithmetic.
pub fn parse_header(file: &[u8], what: &str) -> Result<Header> {
    if file.len() < 8 {
        return Err(bad(
            what,
            format_args!("truncated: {} bytes, but a safetensors file starts with an 8-byte header length", file.len()),
        ));
    }
    let n = u64::from_le_bytes(file[..8].try_into().expect("8 bytes"));
    let available = (file.len() - 8) as u64;
    if n > MAX_HEADER_BYTES {
        return Err(bad(
            what,
            format_args!("header length {n} is implausible (over {MAX_HEADER_BYTES} bytes): not a safetensors file"),
        ));
    }
    if n > available {
        return Err(bad(what, format_args!("truncated: the header says {n} bytes, only {available} follow")));
    }
    let data_start = 8 + n as usize;
    let header =
        std::str::from_utf8(&file[8..data_start]).map_err(|e| bad(what, format_args!("header is not UTF-8: {e}")))?;
    // Our own pass first, for messages that name the tensor at fault.
    let value: serde_json::Value =
        serde_json::from_str(header).map_err(|e| bad(what, format_args!("header is not valid JSON: {e}")))?;
    let map = value.as_object().ok_or_else(|| bad(what, "header is not a JSON object"))?;
    let data_len = file.len() - data_start;
    let mut ranges = Vec::with_capacity(map.len());
    for (name, info) in map {
        if name == "__metadata__" {
            continue;
        }
        let t = |msg: String| bad(what, format_args!("tensor {name:?}: {msg}"));
        let dtype: safetensors::Dtype = info
            .get("dtype")
            .cloned()
            .ok_or_else(|| t("no dtype".into()))
            .and_then(|d| serde_json::from_value(d.clone()).map_err(|_| t(format!("unknown dtype {d}"))))?;
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| t("no valid shape (a list of non-negative integers)".into()))?;
        let offsets: (usize, usize) = info
            .get("data_offsets")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| t("no valid data_offsets (two non-negative integers)".into()))?;
        let (start, end) = offsets;
        if end < start {
            return Err(t(format!("data_offsets [{start}, {end}] run backwards")));
        }
        if end > data_len {
            return Err(t(format!(
                "data_offsets [{start}, {end}] run past the end of the data ({data_len} bytes): the file is truncated or corrupt"
            )));
        }
        let (_, size) = byte_size(&shape, dtype).ok_or_else(|| t(format!("shape {shape:?} of {dtype:?} overflows")))?;
        if end - start != size {
            return Err(t(format!("holds {} bytes, but dtype {dtype:?} and shape {shape:?} need {size}", end - start)));
        }
        ranges.push((start, end, name.as_str()));
    }
    ranges.sort();
    let mut at = 0;
    for &(start, end, name) in &ranges {
        if start != at {
            return Err(bad(
                what,
                format_args!(
                    "tensor {name:?} starts at byte {start} of the data, expected {at}: tensors overlap or leave gaps"
                ),
            ));
        }
        at = end;
    }
    if at != data_len {
        return Err(bad(
            what,
            format_args!("the tensors cover {at} bytes of data but the file holds {data_len}: trailing bytes"),
        ));
    }
    // The crate's own parse and validation, for defence in depth and the metadata.
    let (_, meta) = safetensors::SafeTensors::read_metadata(file)
        .map_err(|e| bad(what, format_args!("not a valid safetensors file: {e}")))?;
    let mut entries = Vec::with_capacity(ranges.len());
    for name in meta.offset_keys() {
        let info = meta.info(&name).ok_or_else(|| Error::Panic(format!("safetensors lost tensor {name:?}")))?;
        let (start, end) = info.data_offsets;
        // Re-check what the crate returned: these ranges are what we read.
        match byte_size(&info.shape, info.dtype) {
            Some((_, size)) if end >= start && end - start == size && end <= data_len => {}
            _ => return Err(bad(what, format_args!("tensor {name:?}: inconsistent header"))),
        }
        entries.push(HeaderEntry {
            dtype: TensorDType::from_safetensors(info.dtype),
            shape: info.shape.clone(),
            start,
            end,
            name,
        });
    }
    let metadata =
        meta.metadata().as_ref().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
    Ok(Header { entries, metadata, data_start })
}

/// An owned, 8-byte-aligned copy of `bytes`.
fn aligned_copy(bytes: &[u8]) -> Box<[u64]> {
    let mut buf = vec![0u64; bytes.len().div_ceil(8)].into_boxed_slice();
    // SAFETY: the buffer holds at least bytes.len() bytes; u64 has no invalid bit patterns.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.as_mut_ptr() as *mut u8, bytes.len());
    }
    buf
}

impl ParamSet {
    /// Loads a safetensors file, memory-mapped (private, copy-on-write).
    ///
    /// The mapping reads the file lazily; a file truncated by another process while mapped can
    /// still stop the process (SIGBUS), as with any memory-mapped reader.
    pub fn load(path: impl AsRef<Path>) -> Result<ParamSet> {
        let path = path.as_ref();
        let what = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| Error::Io(format!("{what}: {e}")))?;
        let len = file.metadata().map_err(|e| Error::Io(format!("{what}: {e}")))?.len();
        if len < 8 {
            return Err(bad(
                &what,
                format_args!("truncated: {len} bytes, but a safetensors file starts with an 8-byte header length"),
            ));
        }
        if usize::try_from(len).is_err() {
            return Err(bad(&what, "too large for this machine's address space"));
        }
        // SAFETY: a private mapping; see the doc comment about concurrent truncation.
        let mut map = unsafe { memmap2::MmapOptions::new().map_copy(&file) }
            .map_err(|e| Error::Io(format!("{what}: cannot map the file: {e}")))?;
        let header = parse_header(&map, &what)?;
        let base = map.as_mut_ptr();
        let mut set = Self::from_header(header, base, &what)?;
        set._backing._map = Some(map);
        Ok(set)
    }

    /// A set holding a copy of the safetensors bytes `file` (`what` names it in messages).
    pub fn from_bytes(file: &[u8], what: &str) -> Result<ParamSet> {
        let header = parse_header(file, what)?;
        let mut owned = aligned_copy(file);
        let base = owned.as_mut_ptr() as *mut u8;
        let mut set = Self::from_header(header, base, what)?;
        set._backing._owned.push(owned);
        Ok(set)
    }

    /// Builds the tensor table over a validated file image at `base`; weights whose address is
    /// not aligned for their dtype (safetensors does not promise alignment) are copied into
    /// aligned buffers.
    fn from_header(header: Header, base: *mut u8, what: &str) -> Result<ParamSet> {
        let mut backing = Backing::default();
        let mut tensors = Vec::with_capacity(header.entries.len());
        for e in header.entries {
            let (numel, nbytes) = byte_size(&e.shape, e.dtype.to_safetensors())
                .ok_or_else(|| bad(what, format_args!("tensor {:?}: size overflows", e.name)))?;
            // SAFETY: parse_header checked data_start + end <= file length.
            let mut ptr = unsafe { base.add(header.data_start + e.start) };
            if let TensorDType::Weight(d) = e.dtype {
                if (ptr as usize) % d.size() != 0 {
                    // SAFETY: the range was validated above.
                    let mut copy = aligned_copy(unsafe { std::slice::from_raw_parts(ptr, nbytes) });
                    ptr = copy.as_mut_ptr() as *mut u8;
                    backing._owned.push(copy);
                }
            }
            tensors.push(Tensor { name: e.name, dtype: e.dtype, shape: e.shape, numel, ptr, nbytes, device: -1 });
        }
        let mut set = Self::assemble(tensors, header.metadata)?;
        set._backing = backing;
        Ok(set)
    }

    fn assemble(tensors: Vec<Tensor>, metadata: BTreeMap<String, String>) -> Result<ParamSet> {
        let mut index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if index.insert(t.name.clone(), i).is_some() {
                fail!(InvalidArgument, "tensor name {:?} appears twice", t.name);
            }
        }
        let mut set = ParamSet {
            tensors,
            index,
            metadata,
            grouping: Grouping::First,
            modules: Vec::new(),
            _backing: Backing::default(),
        };
        set.set_grouping(Grouping::First)?;
        Ok(set)
    }

    /// A set over the caller's memory, zero-copy: results written into it land in the caller's
    /// tensors.
    ///
    /// # Safety
    /// Each `ptr` must address `numel * dtype.size()` bytes, aligned for the dtype, readable and
    /// writable and not used by anything else while the set lives (on the host when `device`
    /// is -1, else on that CUDA device).
    pub unsafe fn wrap(specs: Vec<TensorSpec>) -> Result<ParamSet> {
        let mut tensors = Vec::with_capacity(specs.len());
        for (i, s) in specs.into_iter().enumerate() {
            if s.name.is_empty() {
                fail!(InvalidArgument, "tensors[{i}]: the name is empty");
            }
            if s.device < -1 {
                fail!(
                    InvalidArgument,
                    "tensor {:?}: device {} is neither -1 (host) nor a CUDA ordinal",
                    s.name,
                    s.device
                );
            }
            let numel = s.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let nbytes = numel.and_then(|n| n.checked_mul(s.dtype.size())).filter(|&b| b <= isize::MAX as usize);
            let (Some(numel), Some(nbytes)) = (numel, nbytes) else {
                fail!(InvalidArgument, "tensor {:?}: shape {:?} is too large for the address space", s.name, s.shape)
            };
            if nbytes > 0 && s.ptr.is_null() {
                fail!(
                    NullArgument,
                    "tensor {:?}: data is NULL but the shape {:?} holds {numel} elements",
                    s.name,
                    s.shape
                );
            }
            if (s.ptr as usize) % s.dtype.size() != 0 {
                fail!(
                    InvalidArgument,
                    "tensor {:?}: data is not aligned to {} bytes, as {} elements need",
                    s.name,
                    s.dtype.size(),
                    s.dtype.name()
                );
            }
            tensors.push(Tensor {
                name: s.name,
                dtype: TensorDType::Weight(s.dtype),
                shape: s.shape,
                numel,
                ptr: s.ptr,
                nbytes,
                device: s.device,
            });
        }
        // Tensors must not share memory: writes run in parallel, one task per region.
        let mut spans: Vec<(i32, usize, usize, usize)> = tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| t.nbytes > 0)
            .map(|(i, t)| (t.device, t.ptr as usize, t.ptr as usize + t.nbytes, i))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            if w[0].0 == w[1].0 && w[1].1 < w[0].2 {
                fail!(
                    InvalidArgument,
                    "tensors {:?} and {:?} overlap in memory; wrap shared (tied) weights once",
                    tensors[w[0].3].name,
                    tensors[w[1].3].name
                );
            }
        }
        Self::assemble(tensors, BTreeMap::new())
    }

    /// A deep copy in memory the new set owns (host sets only).
    pub fn try_clone(&self) -> Result<ParamSet> {
        let mut backing = Backing::default();
        let mut tensors = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let mut copy = aligned_copy(t.bytes()?);
            let ptr = copy.as_mut_ptr() as *mut u8;
            backing._owned.push(copy);
            tensors.push(Tensor {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                numel: t.numel,
                ptr,
                nbytes: t.nbytes,
                device: -1,
            });
        }
        let mut set = Self::assemble(tensors, self.metadata.clone())?;
        set.grouping = self.grouping.clone();
        set.modules = self.modules.clone();
        set._backing = backing;
        Ok(set)
    }

    /// Writes the set as safetensors, atomically: a temporary file in the same folder is
    /// written, flushed to disk and renamed over `path`. Tensors keep their order; the metadata
    /// of a loaded file is kept.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let what = path.display().to_string();
        let io = |e: std::io::Error| Error::Io(format!("{what}: {e}"));
        let mut header = serde_json::Map::new();
        if !self.metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::to_value(&self.metadata).expect("strings serialise"));
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            t.check_host()?;
            header.insert(
                t.name.clone(),
                serde_json::json!({
                    "dtype": t.dtype.name(),
                    "shape": t.shape,
                    "data_offsets": [offset, offset + t.nbytes],
                }),
            );
            offset += t.nbytes;
        }
        // serde_json's map keeps insertion order only with preserve_order; order in the header
        // does not matter to readers: the offsets fix the file order.
        let mut text = serde_json::to_string(&header).expect("header serialises");
        // Pad with spaces so that the data starts 8-byte aligned, as the reference writer does.
        while (8 + text.len()) % 8 != 0 {
            text.push(' ');
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let file_name = path.file_name().ok_or_else(|| Error::InvalidArgument(format!("{what}: not a file path")))?;
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = dir.join(format!(
            ".{}.tmp-{}-{}",
            file_name.to_string_lossy(),
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let file = std::fs::File::create(&tmp)?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
            w.write_all(&(text.len() as u64).to_le_bytes())?;
            w.write_all(text.as_bytes())?;
            for t in &self.tensors {
                w.write_all(t.bytes().map_err(std::io::Error::other)?)?;
            }
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, path)?;
            // Make the rename itself durable.
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }

    /// All tensors, in set order.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }
    pub(crate) fn tensors_mut(&mut self) -> &mut [Tensor] {
        &mut self.tensors
    }
    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }
    pub fn tensor_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
    /// The tensors left out of weight-space figures (non-float dtypes), in set order.
    pub fn left_out(&self) -> impl Iterator<Item = &Tensor> {
        self.tensors.iter().filter(|t| !t.is_weight())
    }
    /// The file's `__metadata__`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
    pub fn metadata_mut(&mut self) -> &mut BTreeMap<String, String> {
        &mut self.metadata
    }
    pub fn grouping(&self) -> &Grouping {
        &self.grouping
    }
    /// The modules, in order of first appearance; only weights belong to modules.
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }
    /// The index of module `name`.
    pub fn module_index(&self, name: &str) -> Option<usize> {
        self.modules.iter().position(|m| m.name == name)
    }

    /// Regroups the weights into modules.
    pub fn set_grouping(&mut self, grouping: Grouping) -> Result<()> {
        grouping.validate()?;
        let mut modules: Vec<Module> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (i, t) in self.tensors.iter().enumerate() {
            if !t.is_weight() {
                continue;
            }
            let m = grouping.module_of(&t.name)?;
            let k = match by_name.get(m.as_ref()) {
                Some(&k) => k,
                None => {
                    by_name.insert(m.to_string(), modules.len());
                    modules.push(Module { name: m.into_owned(), tensors: Vec::new(), numel: 0 });
                    modules.len() - 1
                }
            };
            modules[k].tensors.push(i);
            modules[k].numel += t.numel as u64;
        }
        self.modules = modules;
        self.grouping = grouping;
        Ok(())
    }

    /// Total elements of the weights.
    pub fn weight_numel(&self) -> u64 {
        self.modules.iter().map(|m| m.numel).sum()
    }
}

/// Checks that `b` has the same weights as `a` (names and shapes; dtypes may differ) and
/// returns, for each weight of `a` in set order, its index in `b`. A mismatch names the first
/// differing tensor.
pub fn match_weights(a: &ParamSet, b: &ParamSet, a_name: &str, b_name: &str) -> Result<Vec<usize>> {
    let mut pairs = vec![usize::MAX; a.tensors.len()];
    for (i, t) in a.tensors.iter().enumerate().filter(|(_, t)| t.is_weight()) {
        let Some(j) = b.tensor_index(&t.name) else {
            fail!(ShapeMismatch, "tensor {:?} of {a_name} is missing from {b_name}", t.name);
        };
        let u = &b.tensors[j];
        if !u.is_weight() {
            fail!(
                ShapeMismatch,
                "tensor {:?} is a weight ({}) in {a_name} but {} in {b_name}",
                t.name,
                t.dtype.name(),
                u.dtype.name()
            );
        }
        if u.shape != t.shape {
            fail!(
                ShapeMismatch,
                "tensor {:?} has shape {:?} in {a_name} but {:?} in {b_name}",
                t.name,
                t.shape,
                u.shape
            );
        }
        pairs[i] = j;
    }
    if let Some(u) = b.tensors.iter().find(|u| u.is_weight() && a.tensor_index(&u.name).is_none()) {
        fail!(ShapeMismatch, "tensor {:?} of {b_name} is missing from {a_name}", u.name);
    }
    Ok(pairs)
}

/// Checks that `out` can receive a result shaped like `a`: it holds every weight of `a` with the
/// same dtype and shape and no weight that `a` lacks. Non-weights of `a` that `out` also holds
/// (same dtype and shape) are paired so that they can be copied; others are skipped, so that a
/// wrapped live model need not wrap its integer buffers. Returns, for each tensor of `a`, its
/// index in `out`.
pub fn match_all(a: &ParamSet, out: &ParamSet, a_name: &str, out_name: &str) -> Result<Vec<Option<usize>>> {
    let mut pairs = Vec::with_capacity(a.tensors.len());
    for t in &a.tensors {
        let Some(j) = out.tensor_index(&t.name) else {
            if t.is_weight() {
                fail!(ShapeMismatch, "tensor {:?} of {a_name} is missing from {out_name}", t.name);
            }
            pairs.push(None);
            continue;
        };
        let u = &out.tensors[j];
        if u.dtype != t.dtype || u.shape != t.shape {
            fail!(
                ShapeMismatch,
                "tensor {:?} is {} {:?} in {a_name} but {} {:?} in {out_name}",
                t.name,
                t.dtype.name(),
                t.shape,
                u.dtype.name(),
                u.shape
            );
        }
        pairs.push(Some(j));
    }
    if let Some(u) = out.tensors.iter().find(|u| u.is_weight() && a.tensor_index(&u.name).is_none()) {
        fail!(ShapeMismatch, "tensor {:?} of {out_name} is missing from {a_name}", u.name);
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_rules() {
        let n = "layer1.0.conv1.weight";
        assert_eq!(Grouping::First.module_of(n).unwrap(), "layer1");
        assert_eq!(Grouping::Depth(2).module_of(n).unwrap(), "layer1.0");
        assert_eq!(Grouping::Depth(9).module_of(n).unwrap(), n);
        assert_eq!(Grouping::Tensor.module_of(n).unwrap(), n);
        let p = Grouping::parse("prefixes:layer1,layer1.0,layer").unwrap();
        assert_eq!(p.module_of(n).unwrap(), "layer1.0");
        assert_eq!(p.module_of("layer10.weight").unwrap(), "layer10.weight");
        let strict = Grouping::Prefixes { prefixes: vec!["layer1".into()], unmatched: Unmatched::Error };
        assert!(matches!(strict.module_of("fc.bias"), Err(Error::NotFound(_))));
        assert!(Grouping::parse("depth:0").is_err());
        assert!(Grouping::parse("depth:x").is_err());
        assert!(Grouping::parse("prefixes:a,,b").is_err());
        assert!(Grouping::parse("second").is_err());
    }
}
