//! Checkpoints as users keep them: one safetensors file, a directory holding `model.safetensors`,
//! or a sharded checkpoint (a directory holding `model.safetensors.index.json`, or that index
//! file itself, whose `weight_map` names the shard of every tensor).
//!
//! A [`Checkpoint`] maps its files read-only and reads one tensor at a time: after a tensor has
//! been used its pages are handed back to the kernel, so that streaming two checkpoints through a
//! distance ([`paired_distance`]) holds about one tensor pair in memory, whatever their size.
//! [`Checkpoint::load`] copies every tensor into a [`ParamSet`] for the analyses that need a
//! whole set.

use super::pairing::Pairing;
use super::safetensors::{open_regular, parse_header};
use super::tensor::aligned_copy;
use super::{Backing, Grouping, ParamSet, Tensor, TensorDType};
use crate::error::{fail, Error, Result};
use crate::tensor::{DType, HostSlice};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The single file of a Hugging Face checkpoint directory.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded Hugging Face checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One safetensors file of a checkpoint, mapped read-only.
struct Shard {
    map: memmap2::Mmap,
}

/// One tensor of a checkpoint: where its bytes are.
#[derive(Debug, Clone)]
pub struct CheckpointTensor {
    name: String,
    dtype: TensorDType,
    shape: Vec<usize>,
    numel: usize,
    shard: usize,
    /// The byte range in the shard's file.
    start: usize,
    end: usize,
}

impl CheckpointTensor {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn dtype(&self) -> TensorDType {
        self.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.numel
    }
    pub fn nbytes(&self) -> usize {
        self.end - self.start
    }
}

impl<'a> From<&'a CheckpointTensor> for super::pairing::TensorInfo<'a> {
    fn from(t: &'a CheckpointTensor) -> Self {
        super::pairing::TensorInfo { name: &t.name, dtype: t.dtype, shape: &t.shape }
    }
}

/// A checkpoint's files, mapped; see the module docs.
pub struct Checkpoint {
    what: String,
    shards: Vec<Shard>,
    tensors: Vec<CheckpointTensor>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("what", &self.what)
            .field("shards", &self.shards.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// The `weight_map` of a sharded checkpoint's index (other keys are ignored).
#[derive(serde::Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// The files of a checkpoint, and for a sharded one the file each tensor is in (as the index
/// says).
struct Layout {
    files: Vec<PathBuf>,
    shard_of: Option<BTreeMap<String, String>>,
}

/// What `path` is: the files to map, and whether an index lists their tensors.
fn resolve(path: &Path) -> Result<Layout> {
    let what = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| Error::Io(format!("{what}: {e}")))?;
    let index_path = if meta.is_dir() {
        let (index, single) = (path.join(INDEX_FILE), path.join(SINGLE_FILE));
        if index.exists() {
            index
        } else if single.exists() {
            return Ok(Layout { files: vec![single], shard_of: None });
        } else {
            fail!(
                Io,
                "{what}: is a directory holding neither {SINGLE_FILE} nor {INDEX_FILE}; a checkpoint is a regular file \
                 of safetensors, such a directory, or the index file"
            );
        }
    } else if path.to_string_lossy().ends_with(".json") {
        path.to_path_buf()
    } else {
        return Ok(Layout { files: vec![path.to_path_buf()], shard_of: None });
    };
    let iwhat = index_path.display().to_string();
    let (file, len) = open_regular(&index_path, &iwhat)?;
    if len > 100_000_000 {
        fail!(Format, "{iwhat}: {len} bytes is implausibly large for a checkpoint index");
    }
    let index: Index = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| Error::Format(format!("{iwhat}: not a valid checkpoint index (a JSON object with a \"weight_map\" of tensor names to shard files): {e}")))?;
    let folder = index_path.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<PathBuf> = Vec::new();
    for (tensor, shard) in &index.weight_map {
        let p = Path::new(shard);
        if p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            fail!(
                Format,
                "{iwhat}: tensor {tensor:?} is in shard {shard:?}, which is not a file name inside the index's folder"
            );
        }
        let full = folder.join(p);
        if !shards.contains(&full) {
            shards.push(full);
        }
    }
    if shards.is_empty() {
        fail!(Format, "{iwhat}: the weight_map lists no tensors");
    }
    shards.sort();
    let by_shard = index.weight_map.into_iter().map(|(t, s)| (t, folder.join(s).display().to_string())).collect();
    Ok(Layout { files: shards, shard_of: Some(by_shard) })
}

impl Checkpoint {
    /// Opens a checkpoint (see the module docs) and validates every file's header against its
    /// size. For a sharded checkpoint, every tensor of the index must be in the shard it names,
    /// and every tensor of a shard in the index.
    ///
    /// # Safety
    /// The files are mapped: they must not be truncated or modified while the checkpoint lives
    /// (a truncated file stops the process with SIGBUS when a lost page is read).
    pub unsafe fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let Layout { files, shard_of: index } = resolve(path)?;
        let mut shards = Vec::with_capacity(files.len());
        let mut tensors = Vec::new();
        let mut metadata = BTreeMap::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        for (s, file_path) in files.iter().enumerate() {
            let what = file_path.display().to_string();
            let (file, len) = open_regular(file_path, &what)?;
            if len < 8 {
                fail!(Format, "{what}: not a valid safetensors file: truncated: {len} bytes");
            }
            // SAFETY: the caller promises that the file does not change while the checkpoint
            // (which owns the mapping) lives; the mapping is read-only.
            let map = unsafe { memmap2::MmapOptions::new().map(&file) }
                .map_err(|e| Error::Io(format!("{what}: cannot map the file: {e}")))?;
            let header = parse_header(&map, &what)?;
            if s == 0 {
                metadata = header.metadata.clone();
            }
            for e in header.entries {
                if let Some(index) = &index {
                    match index.get(&e.name) {
                        Some(listed) if *listed == what => {}
                        Some(listed) => {
                            fail!(Format, "{what}: holds tensor {:?}, which the index puts in {listed}", e.name)
                        }
                        None => fail!(Format, "{what}: holds tensor {:?}, which the index does not list", e.name),
                    }
                }
                if let Some(other) = seen.insert(e.name.clone(), what.clone()) {
                    fail!(Format, "tensor {:?} is in both {other} and {what}", e.name);
                }
                let numel = e.shape.iter().product();
                let (start, end) = (header.data_start + e.start, header.data_start + e.end);
                tensors.push(CheckpointTensor {
                    name: e.name,
                    dtype: e.dtype,
                    shape: e.shape,
                    numel,
                    shard: s,
                    start,
                    end,
                });
            }
            shards.push(Shard { map });
        }
        if let Some(index) = &index {
            if let Some((name, shard)) = index.iter().find(|(name, _)| !seen.contains_key(*name)) {
                fail!(Format, "{}: the index puts tensor {name:?} in {shard}, which does not hold it", path.display());
            }
        }
        Ok(Checkpoint { what: path.display().to_string(), shards, tensors, metadata })
    }

    /// The path it was opened from, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }
    /// Every tensor: shard by shard (in file-name order), each in file order.
    pub fn tensors(&self) -> &[CheckpointTensor] {
        &self.tensors
    }
    /// The first file's `__metadata__`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
    /// How many files it spans.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Runs `f` on the elements of weight tensor `i` (an aligned copy when the file does not
    /// align them), then hands the tensor's pages back to the kernel.
    pub fn with_weight<R>(&self, i: usize, f: impl FnOnce(HostSlice<'_>) -> R) -> Result<R> {
        let t = &self.tensors[i];
        let Some(dtype) = t.dtype.weight() else {
            fail!(
                UnsupportedDtype,
                "{}: tensor {:?} has dtype {}, not a weight dtype",
                self.what,
                t.name,
                t.dtype.name()
            )
        };
        let bytes = &self.shards[t.shard].map[t.start..t.end];
        let copy;
        let aligned: &[u8] = if (bytes.as_ptr() as usize).is_multiple_of(dtype.size()) {
            bytes
        } else {
            copy = aligned_copy(bytes);
            // SAFETY: the copy holds at least bytes.len() initialised bytes and lives to the
            // end of this function.
            unsafe { std::slice::from_raw_parts(copy.as_ptr() as *const u8, bytes.len()) }
        };
        let n = t.numel;
        let p = aligned.as_ptr();
        // SAFETY: `aligned` holds n elements of `dtype` (the header was validated against the
        // file) at an address aligned for it; every bit pattern is a valid float.
        let slice = unsafe {
            match dtype {
                DType::F32 => HostSlice::F32(std::slice::from_raw_parts(p as *const f32, n)),
                DType::F64 => HostSlice::F64(std::slice::from_raw_parts(p as *const f64, n)),
                DType::F16 => HostSlice::F16(std::slice::from_raw_parts(p as *const half::f16, n)),
                DType::BF16 => HostSlice::BF16(std::slice::from_raw_parts(p as *const half::bf16, n)),
            }
        };
        let r = f(slice);
        self.release(t);
        Ok(r)
    }

    /// Hands the pages of tensor `t` back to the kernel, so that reading a large checkpoint
    /// tensor by tensor does not keep the whole file resident in this process.
    fn release(&self, t: &CheckpointTensor) {
        if t.end > t.start {
            let map = &self.shards[t.shard].map;
            // SAFETY: the mapping is read-only and file-backed, and the file does not change
            // (the contract of `open`): after MADV_DONTNEED a read fetches the same bytes from
            // the file again, so slices into these pages (of this or a neighbouring tensor that
            // shares a page) keep their contents. memmap2 widens the range to whole pages.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, t.start, t.end - t.start) };
        }
    }

    /// Copies every tensor into a set the caller owns (tensor order and names kept).
    pub fn load(&self) -> Result<ParamSet> {
        let mut backing = Backing::default();
        let mut tensors = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let mut copy = aligned_copy(&self.shards[t.shard].map[t.start..t.end]);
            self.release(t);
            let ptr = copy.as_mut_ptr() as *mut u8;
            backing._owned.push(copy);
            tensors.push(Tensor {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                numel: t.numel,
                ptr,
                nbytes: t.nbytes(),
                device: -1,
            });
        }
        let mut set = ParamSet::assemble(tensors, self.metadata.clone())?;
        set._backing = backing;
        Ok(set)
    }
}

/// One module's distance between two checkpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleDistance {
    pub name: String,
    pub numel: u64,
    pub distance: f64,
}

/// The distance between two checkpoints, per module of the paired tensors and in total:
/// ||a_i - b_i||_2 for each module (`grouping` applied to the paired names) and the square root of
/// the sum of their squares. Tensor pairs are read one at a time, module by module, and added in
/// the order [`crate::geometry::distance`] adds them: the same figures, bit for bit, as that
/// function on the two sets in memory.
pub fn paired_distance(
    a: &Checkpoint,
    b: &Checkpoint,
    pairing: &Pairing,
    grouping: &Grouping,
) -> Result<(Vec<ModuleDistance>, f64)> {
    let mut out = Vec::new();
    let mut total = 0f64;
    for (name, members) in pairing.modules(grouping)? {
        let (mut sum, mut numel) = (0f64, 0u64);
        for k in members {
            let p = &pairing.pairs[k];
            numel += a.tensors[p.a].numel as u64;
            let partials =
                a.with_weight(p.a, |x| b.with_weight(p.b, |y| crate::geometry::sum_sq_diff_chunks(x, y)))???;
            for s in partials {
                sum += s;
            }
        }
        if !sum.is_finite() {
            fail!(
                NonFinite,
                "module {name:?}: the distance is not finite (the weights hold NaN or Inf, or overflow f64)"
            );
        }
        total += sum;
        out.push(ModuleDistance { name, numel, distance: sum.sqrt() });
    }
    Ok((out, total.sqrt()))
}
