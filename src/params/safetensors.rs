//! The safetensors reader and writer: a file is validated against its size before any tensor is
//! touched, mapped copy-on-write (or copied, for bytes in memory) and written atomically.

use super::tensor::aligned_copy;
use super::{Backing, ParamSet, Tensor, TensorDType};
use crate::atomic_write::write_atomic;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

#[cfg(target_endian = "big")]
compile_error!("transferlens reads safetensors (little-endian) data in place: big-endian hosts are not supported");

/// Largest header accepted, as in the safetensors crate: bigger is certainly not a checkpoint.
const MAX_HEADER_BYTES: u64 = 100_000_000;

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

/// A file that is not valid safetensors; `what` names the file, `msg` says what is wrong.
fn bad(what: &str, msg: impl std::fmt::Display) -> Error {
    Error::Format(format!("{what}: not a valid safetensors file: {msg}"))
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
        return Err(bad(what, format_args!("header length {n} is implausible (over {MAX_HEADER_BYTES} bytes)")));
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
    let (_, meta) = safetensors::SafeTensors::read_metadata(file).map_err(|e| bad(what, e))?;
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
        // SAFETY: memmap2 asks that nobody change the file while it is mapped. The mapping is
        // private, so our writes never reach the file; a change by another process is the caveat
        // of every memory-mapped reader and is documented above (truncation stops the process).
        let mut map = unsafe { memmap2::MmapOptions::new().map_copy(&file) }
            .map_err(|e| Error::Io(format!("{what}: cannot map the file: {e}")))?;
        let header = parse_header(&map, &what)?;
        // SAFETY: `header` was validated against this mapping, which the set keeps alive.
        let mut set = unsafe { Self::from_header(header, map.as_mut_ptr(), &what) }?;
        set._backing._map = Some(map);
        Ok(set)
    }

    /// A set holding a copy of the safetensors bytes `file` (`what` names it in messages).
    pub fn from_bytes(file: &[u8], what: &str) -> Result<ParamSet> {
        let header = parse_header(file, what)?;
        let mut owned = aligned_copy(file);
        // SAFETY: `owned` is a copy of the bytes `header` was validated against, and the set
        // keeps it alive.
        let mut set = unsafe { Self::from_header(header, owned.as_mut_ptr() as *mut u8, what) }?;
        set._backing._owned.push(owned);
        Ok(set)
    }

    /// Builds the tensor table over a validated file image at `base`; weights whose address is
    /// not aligned for their dtype (safetensors does not promise alignment) are copied into
    /// aligned buffers.
    ///
    /// # Safety
    /// `base` must address the writable file image that [`parse_header`] validated `header`
    /// against, and that image must outlive the set (the caller stores it in the set's backing).
    unsafe fn from_header(header: Header, base: *mut u8, what: &str) -> Result<ParamSet> {
        let mut backing = Backing::default();
        let mut tensors = Vec::with_capacity(header.entries.len());
        for e in header.entries {
            let (numel, nbytes) = byte_size(&e.shape, e.dtype.to_safetensors())
                .ok_or_else(|| bad(what, format_args!("tensor {:?}: size overflows", e.name)))?;
            // SAFETY: parse_header checked data_start + end <= the image's length, so the
            // tensor's bytes lie inside the image at `base` (the caller's contract).
            let mut ptr = unsafe { base.add(header.data_start + e.start) };
            if let TensorDType::Weight(d) = e.dtype {
                if !(ptr as usize).is_multiple_of(d.size()) {
                    // SAFETY: ptr..ptr + nbytes lies inside the image (checked as above), which
                    // nothing writes while the set is being built.
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

    /// Writes the set as safetensors, atomically: a temporary file in the same folder is
    /// written, flushed to disk and renamed over `path`. Tensors keep their order; the metadata
    /// of a loaded file is kept.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
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
        while !(8 + text.len()).is_multiple_of(8) {
            text.push(' ');
        }
        write_atomic(path, |w| {
            w.write_all(&(text.len() as u64).to_le_bytes())?;
            w.write_all(text.as_bytes())?;
            for t in &self.tensors {
                w.write_all(t.bytes().map_err(std::io::Error::other)?)?;
            }
            Ok(())
        })
    }
}
