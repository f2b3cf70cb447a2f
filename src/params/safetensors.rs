//! The safetensors reader and writer: a file is validated against its size before any tensor is
//! touched, read into memory the set owns (or mapped, on request) and written atomically.
//!
//! The header is parsed straight into compact entries (no intermediate JSON tree), so that its
//! memory stays a small multiple of the header's size and its time linear in it.

use super::tensor::{aligned_copy, aligned_zeroed};
use super::{Backing, ParamSet, Tensor, TensorDType};
use crate::atomic_write::write_atomic;
use crate::error::{Error, Result};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;
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
    /// Tensors in file (offset) order; tensors of zero bytes at one offset are ordered by name.
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

/// One tensor's entry as the JSON spells it.
#[derive(Deserialize)]
struct RawEntry {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// The header's JSON object, read entry by entry: each entry is checked against the data
/// section's length as it is read, and `__metadata__` must map strings to strings.
struct HeaderVisitor {
    data_len: usize,
}

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = (Vec<HeaderEntry>, BTreeMap<String, String>);

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object of tensors")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        let mut metadata = None;
        while let Some(name) = map.next_key::<String>()? {
            if name == "__metadata__" {
                if metadata.is_some() {
                    return Err(de::Error::custom("__metadata__ appears twice"));
                }
                let m: BTreeMap<String, String> = map
                    .next_value()
                    .map_err(|e| de::Error::custom(format_args!("__metadata__ is not a map of strings: {e}")))?;
                metadata = Some(m);
                continue;
            }
            let t = |msg: std::fmt::Arguments| de::Error::custom(format_args!("tensor {name:?}: {msg}"));
            let raw: RawEntry = map.next_value().map_err(|e| t(format_args!("{e}")))?;
            let (start, end) = raw.data_offsets;
            let dtype = raw.dtype;
            if end < start {
                return Err(t(format_args!("data_offsets [{start}, {end}] run backwards")));
            }
            if end > self.data_len {
                return Err(t(format_args!(
                    "data_offsets [{start}, {end}] run past the end of the data ({} bytes): the file is truncated or corrupt",
                    self.data_len
                )));
            }
            let Some((_, size)) = byte_size(&raw.shape, dtype) else {
                return Err(t(format_args!("shape {:?} of {dtype:?} overflows", raw.shape)));
            };
            if end - start != size {
                return Err(t(format_args!(
                    "holds {} bytes, but dtype {dtype:?} and shape {:?} need {size}",
                    end - start,
                    raw.shape
                )));
            }
            entries.push(HeaderEntry {
                name,
                dtype: TensorDType::from_safetensors(dtype),
                shape: raw.shape,
                start,
                end,
            });
        }
        Ok((entries, metadata.unwrap_or_default()))
    }
}

/// Validates the header text of a file whose data section holds `data_len` bytes: the tensors
/// must tile the data section exactly, with distinct names.
fn parse_header_text(text: &[u8], data_len: usize, data_start: usize, what: &str) -> Result<Header> {
    let text = std::str::from_utf8(text).map_err(|e| bad(what, format_args!("header is not UTF-8: {e}")))?;
    let mut json = serde_json::Deserializer::from_str(text);
    let (mut entries, metadata) = (&mut json)
        .deserialize_map(HeaderVisitor { data_len })
        .and_then(|v| json.end().map(|()| v))
        .map_err(|e| bad(what, format_args!("header is not a valid JSON object of tensors: {e}")))?;
    entries.sort_unstable_by(|x, y| (x.start, x.end, &x.name).cmp(&(y.start, y.end, &y.name)));
    let mut at = 0;
    for e in &entries {
        if e.start != at {
            return Err(bad(
                what,
                format_args!(
                    "tensor {:?} starts at byte {} of the data, expected {at}: tensors overlap or leave gaps",
                    e.name, e.start
                ),
            ));
        }
        at = e.end;
    }
    if at != data_len {
        return Err(bad(
            what,
            format_args!("the tensors cover {at} bytes of data but the file holds {data_len}: trailing bytes"),
        ));
    }
    // Names must be distinct; sorting indices (not names) keeps the extra memory small.
    let mut by_name: Vec<u32> = (0..entries.len() as u32).collect();
    by_name.sort_unstable_by(|&i, &j| entries[i as usize].name.cmp(&entries[j as usize].name));
    if let Some(w) = by_name.windows(2).find(|w| entries[w[0] as usize].name == entries[w[1] as usize].name) {
        return Err(bad(what, format_args!("tensor {:?} appears twice", entries[w[0] as usize].name)));
    }
    Ok(Header { entries, metadata, data_start })
}

/// The header length that the first 8 bytes of a file of `file_len` bytes give, checked.
fn header_length(prefix: [u8; 8], file_len: u64, what: &str) -> Result<usize> {
    let n = u64::from_le_bytes(prefix);
    let available = file_len - 8;
    if n > MAX_HEADER_BYTES {
        return Err(bad(what, format_args!("header length {n} is implausible (over {MAX_HEADER_BYTES} bytes)")));
    }
    if n > available {
        return Err(bad(what, format_args!("truncated: the header says {n} bytes, only {available} follow")));
    }
    Ok(n as usize)
}

fn too_short(what: &str, len: u64) -> Error {
    bad(what, format_args!("truncated: {len} bytes, but a safetensors file starts with an 8-byte header length"))
}

/// Parses and validates the header of the safetensors bytes `file`; `what` names the file in
/// messages. Every size and offset is checked against `file.len()` with checked arithmetic.
pub fn parse_header(file: &[u8], what: &str) -> Result<Header> {
    let Some(prefix) = file.first_chunk::<8>() else { return Err(too_short(what, file.len() as u64)) };
    let n = header_length(*prefix, file.len() as u64, what)?;
    let data_start = 8 + n;
    parse_header_text(&file[8..data_start], file.len() - data_start, data_start, what)
}

/// Opens `path` for reading if it is a regular file: a FIFO, device or directory is refused
/// before it is opened (opening a FIFO would wait for a writer; a device may never end).
pub(super) fn open_regular(path: &Path, what: &str) -> Result<(std::fs::File, u64)> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let io = |e: std::io::Error| Error::Io(format!("{what}: {e}"));
    let not_regular = |t: std::fs::FileType| {
        let kind = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO (named pipe)"
        } else if t.is_char_device() {
            "a character device"
        } else if t.is_block_device() {
            "a block device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        Error::Io(format!("{what}: is {kind}; safetensors files must be regular files"))
    };
    let t = std::fs::metadata(path).map_err(io)?.file_type();
    if !t.is_file() {
        return Err(not_regular(t));
    }
    // O_NONBLOCK: should the path become a FIFO between the check and the open, the open does
    // not wait for a writer; the check on the open file below then refuses it.
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(not_regular(meta.file_type()));
    }
    Ok((file, meta.len()))
}

impl ParamSet {
    /// Loads a safetensors file into memory the set owns.
    ///
    /// The header is read and validated against the file's size first; only then is memory
    /// for the whole file allocated and the file read. The set is a snapshot: truncating or
    /// rewriting the file afterwards does not change it. Paths that are not regular files
    /// (FIFOs, devices, directories) are refused with [`Error::Io`].
    pub fn load(path: impl AsRef<Path>) -> Result<ParamSet> {
        let path = path.as_ref();
        let what = path.display().to_string();
        let io = |e: std::io::Error| Error::Io(format!("{what}: {e}"));
        let (mut file, len) = open_regular(path, &what)?;
        if len < 8 {
            return Err(too_short(&what, len));
        }
        let Ok(len) = usize::try_from(len) else {
            return Err(bad(&what, "too large for this machine's address space"));
        };
        let changed = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                Error::Io(format!("{what}: the file shrank while it was being read (it was {len} bytes)"))
            }
            _ => io(e),
        };
        let mut prefix = [0u8; 8];
        file.read_exact(&mut prefix).map_err(changed)?;
        let n = header_length(prefix, len as u64, &what)?;
        let mut text = vec![0u8; n];
        file.read_exact(&mut text).map_err(changed)?;
        let header = parse_header_text(&text, len - 8 - n, 8 + n, &what)?;
        // The header is valid for a file of `len` bytes: now hold the whole file.
        let mut image = aligned_zeroed(len)
            .ok_or_else(|| Error::Io(format!("{what}: cannot allocate {len} bytes to hold the file")))?;
        // SAFETY: the buffer holds at least len bytes; u64 has no invalid bit patterns, and
        // every byte pattern is a valid u8.
        let bytes = unsafe { std::slice::from_raw_parts_mut(image.as_mut_ptr() as *mut u8, len) };
        bytes[..8].copy_from_slice(&prefix);
        bytes[8..8 + n].copy_from_slice(&text);
        drop(text);
        file.read_exact(&mut bytes[8 + n..]).map_err(changed)?;
        // SAFETY: `image` holds the header bytes `header` was validated from and `len` bytes in
        // all; the set keeps it alive.
        let mut set = unsafe { Self::from_header(header, image.as_mut_ptr() as *mut u8, &what) }?;
        set._backing._owned.push(image);
        Ok(set)
    }

    /// Loads a safetensors file memory-mapped (private, copy-on-write): pages are read when
    /// first used, and writes into the set never reach the file. For files larger than the
    /// memory one wants to spend on a copy; [`ParamSet::load`] is the safe default.
    ///
    /// # Safety
    /// The file must not be truncated or modified while the set lives: a truncated file stops
    /// the process (SIGBUS) when a lost page is touched, and a file rewritten in place changes
    /// the set's weights under it.
    pub unsafe fn load_mapped(path: impl AsRef<Path>) -> Result<ParamSet> {
        let path = path.as_ref();
        let what = path.display().to_string();
        let (file, len) = open_regular(path, &what)?;
        if len < 8 {
            return Err(too_short(&what, len));
        }
        if usize::try_from(len).is_err() {
            return Err(bad(&what, "too large for this machine's address space"));
        }
        // SAFETY: memmap2 asks that nobody change the file while it is mapped: the caller's
        // contract. The mapping is private, so our writes never reach the file.
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
