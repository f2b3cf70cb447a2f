//! Parameter sets: named tensors grouped into modules; safetensors in and out.
//!
//! A [`ParamSet`] is a list of named tensors in a fixed order (file order for a loaded set, the
//! caller's order for a wrapped one). Tensors of dtype F32, F64, F16 and BF16 are *weights*;
//! tensors of any other safetensors dtype (an I64 `num_batches_tracked`, say) are carried through
//! byte for byte and left out of every weight-space figure ([`ParamSet::left_out`] lists them).
//!
//! Weights are grouped into modules by name ([`Grouping`]); module names are listed in order of
//! first appearance. A set's memory is one of: buffers the set owns (a loaded file is read into
//! them, so the set is a snapshot that later changes to the file cannot touch), the caller's own
//! memory ([`ParamSet::wrap`], zero-copy), or, on request, a private copy-on-write mapping of a
//! file ([`ParamSet::load_mapped`], whose file must not change while the set lives). Every set is
//! writable, so any of them can receive an interpolation.
//!
//! A safetensors file is untrusted input: its header length, offsets, dtypes and shapes are
//! checked (with overflow-checked arithmetic) against the file's size before any tensor is
//! touched, so that a hostile file gives [`Error::Format`] naming the tensor at fault, never an
//! out-of-bounds read or an allocation larger than the file.
//!
//! Files: `tensor` (one tensor of a set and its host slices), `grouping` (names into modules),
//! `safetensors` (the one safetensors reader, which every loader uses, and `save`), `matching`
//! (pairing the tensors of two sets), `activations` (per-layer activations, for `tlens cka`: a set
//! in memory, or a file mapped and read in blocks of rows), `pairing` (matching the tensors of two
//! checkpoints whose names or tensor sets differ, with the reasons for what is left out),
//! `checkpoint` (single-file, directory and sharded checkpoints, mapped and read one tensor at a
//! time).

mod activations;
mod checkpoint;
mod grouping;
mod matching;
mod pairing;
mod safetensors;
mod tensor;

pub use self::safetensors::{parse_header, Header, HeaderEntry};
pub use crate::atomic_write::abandon_unfinished_writes;
pub use activations::{activation_layers, ActivationFile, ActivationLayer, RowBlock};
pub use checkpoint::{paired_distance, Checkpoint, CheckpointTensor, ModuleDistance, INDEX_FILE, SINGLE_FILE};
pub use grouping::{Grouping, Module, Unmatched};
pub use matching::{match_all, match_weights};
pub use pairing::{
    pair_sets, pair_tensors, paired_sets, LeftOut, LeftOutReason, Pairing, PairingOptions, TensorInfo, TensorPair,
    MAX_NAMED,
};
pub use tensor::{HostSliceMut, Tensor, TensorDType};

use crate::error::{fail, Result};
use crate::tensor::DType;
use std::collections::{BTreeMap, HashMap};
use tensor::aligned_copy;

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

impl ParamSet {
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
            if !(s.ptr as usize).is_multiple_of(s.dtype.size()) {
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
