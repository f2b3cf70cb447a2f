//! `ParamSet`: named tensors grouped into modules; `distance` and `interpolate`.

use crate::arrays::{context, numpy_dtype};
use crate::dlpack::{self, DlpackTensor};
use crate::errors::{invalid, to_py};
use numpy::{PyArray1, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use transferlens::geometry;
use transferlens::params::{Grouping, TensorSpec};
use transferlens::tensor::HostSlice;
use transferlens::{BackendChoice, Context, Error, ParamSet as Set};

/// A set the library lends to an evaluator for the length of one call.
pub struct Lent(*const Set);

// SAFETY: the pointer is only dereferenced with the GIL held, during the evaluator call that
// lent it, while the analysis keeps the set alive and does not write it.
unsafe impl Send for Lent {}
// SAFETY: as for Send; the set is only read through it.
unsafe impl Sync for Lent {}

enum Slot {
    Owned(Set),
    /// The live set of a running analysis, for one evaluator call.
    Lent(Lent),
    /// A lent set whose call has returned.
    Expired,
}

/// What keeps wrapped memory alive.
enum Keep {
    Numpy(#[allow(dead_code)] Py<PyAny>),
    Dlpack(#[allow(dead_code)] DlpackTensor),
}

/// ParamSet: named tensors (weights) grouped into modules.
///
/// Make one with `ParamSet.load(path)` (safetensors), `ParamSet.from_arrays({name: array})`
/// (wraps the arrays' memory in place: results written into the set land in the arrays), or
/// `interpolate`. Modules group tensors by the first dot-separated part of their names
/// (`layer1.0.conv1.weight` is in `layer1`) unless `set_grouping` says otherwise.
#[pyclass(name = "ParamSet", module = "transferlens")]
pub struct ParamSet {
    slot: Slot,
    _keep: Vec<Keep>,
}

impl ParamSet {
    pub fn owned(set: Set) -> ParamSet {
        ParamSet { slot: Slot::Owned(set), _keep: Vec::new() }
    }

    /// A view of `set` for an evaluator call; [`ParamSet::expire`] ends it.
    pub fn lend(set: &Set) -> ParamSet {
        ParamSet { slot: Slot::Lent(Lent(set as *const Set)), _keep: Vec::new() }
    }

    pub fn expire(&mut self) {
        self.slot = Slot::Expired;
    }

    pub fn get(&self) -> PyResult<&Set> {
        match &self.slot {
            Slot::Owned(s) => Ok(s),
            // SAFETY: a lent set is alive and unwritten while the evaluator call that received it
            // runs (see `Lent`); `expire` ends the view when the call returns.
            Slot::Lent(l) => Ok(unsafe { &*l.0 }),
            Slot::Expired => {
                invalid("this ParamSet was lent to an evaluator call that has returned; read it inside the call")
            }
        }
    }

    pub fn get_mut(&mut self) -> PyResult<&mut Set> {
        match &mut self.slot {
            Slot::Owned(s) => Ok(s),
            _ => invalid("the set an evaluator receives is read-only"),
        }
    }
}

/// The context for analyses of these sets: the CUDA device their memory is on, else the CPU.
pub fn context_for(sets: &[&Set]) -> PyResult<Context> {
    let device = sets.iter().flat_map(|s| s.tensors()).map(|t| t.device()).find(|&d| d >= 0);
    match device {
        Some(d) => context(BackendChoice::Cuda, d),
        None => Ok(Context::cpu()),
    }
}

/// The spec of one wrapped array, and what keeps it alive.
fn wrap_one(name: &str, value: &Bound<'_, PyAny>) -> PyResult<(TensorSpec, Keep)> {
    if let Ok(a) = value.cast::<PyUntypedArray>() {
        let Some(dtype) = numpy_dtype(a) else {
            return Err(to_py(Error::UnsupportedDtype(format!(
                "tensor {name:?} has dtype {}; weights are float32, float64, float16 or bfloat16",
                a.dtype()
            ))));
        };
        // SAFETY: the array object is alive (we hold it); reading its flags and data fields is sound.
        let (flags, ptr) = unsafe { ((*a.as_array_ptr()).flags, (*a.as_array_ptr()).data) };
        if flags & numpy::npyffi::NPY_ARRAY_WRITEABLE == 0 {
            return invalid(format!("tensor {name:?}: the array is read-only; the set must be able to write it"));
        }
        if !a.is_c_contiguous() {
            return invalid(format!(
                "tensor {name:?}: the array is not C-contiguous, so it cannot be wrapped in place; pass numpy.ascontiguousarray(x) and keep that array"
            ));
        }
        let spec = TensorSpec { name: name.into(), dtype, shape: a.shape().to_vec(), ptr: ptr as *mut u8, device: -1 };
        return Ok((spec, Keep::Numpy(value.clone().unbind())));
    }
    if !value.hasattr("__dlpack__")? {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "tensor {name:?}: expected a numpy array or an object with __dlpack__, got {}",
            value.get_type().name()?
        )));
    }
    let t = dlpack::import(value, |_| Ok(None))?;
    if t.read_only {
        return invalid(format!("tensor {name:?}: the exporter marked the tensor read-only"));
    }
    let mut compact = 1isize;
    for (k, &d) in t.shape.iter().enumerate().rev() {
        if d > 1 && t.strides[k] != compact {
            return invalid(format!(
                "tensor {name:?}: strides {:?} for shape {:?} are not row-major contiguous, so it cannot be wrapped in place (call .contiguous() and keep that tensor)",
                t.strides, t.shape
            ));
        }
        compact *= d as isize;
    }
    let device = if t.on_host() {
        -1
    } else if t.device_type == dlpack::DEVICE_CUDA {
        t.device_id
    } else {
        return invalid(format!("tensor {name:?}: DLPack device type {} is neither the CPU nor CUDA", t.device_type));
    };
    let spec = TensorSpec { name: name.into(), dtype: t.dtype, shape: t.shape.clone(), ptr: t.ptr, device };
    Ok((spec, Keep::Dlpack(t)))
}

/// A copy of a host tensor's elements as a flat numpy array (bfloat16 widened to float32).
fn host_array<'py>(py: Python<'py>, data: HostSlice<'_>) -> Bound<'py, PyAny> {
    match data {
        HostSlice::F32(d) => PyArray1::from_slice(py, d).into_any(),
        HostSlice::F64(d) => PyArray1::from_slice(py, d).into_any(),
        HostSlice::F16(d) => PyArray1::from_slice(py, d).into_any(),
        HostSlice::BF16(d) => PyArray1::from_iter(py, d.iter().map(|v| v.to_f32())).into_any(),
    }
}

#[pymethods]
impl ParamSet {
    /// Reads a safetensors file into memory the set owns.
    #[staticmethod]
    fn load(py: Python<'_>, path: std::path::PathBuf) -> PyResult<ParamSet> {
        py.detach(|| Set::load(&path)).map(ParamSet::owned).map_err(to_py)
    }

    /// Reads a checkpoint as it is kept: a safetensors file, a folder holding
    /// `model.safetensors`, or a sharded checkpoint (its folder or its
    /// `model.safetensors.index.json`), into memory the set owns. The shards are checked against
    /// the index; the files must not be truncated while the call reads them.
    #[staticmethod]
    fn load_checkpoint(py: Python<'_>, path: std::path::PathBuf) -> PyResult<ParamSet> {
        py.detach(|| {
            // SAFETY: the mappings end with this call; that the files stay whole meanwhile is
            // the documented contract (as for any tool that maps its inputs).
            let checkpoint = unsafe { transferlens::params::Checkpoint::open(&path) }?;
            checkpoint.load()
        })
        .map(ParamSet::owned)
        .map_err(to_py)
    }

    /// Wraps a dict {name: array} in place, in the dict's order: numpy arrays (C-contiguous,
    /// writable) or `__dlpack__` tensors (contiguous; host or CUDA memory), float32, float64,
    /// float16 or bfloat16. Nothing is copied: the set reads the arrays' current values, and an
    /// analysis that writes into the set (as `live`) writes into the arrays. The set keeps the
    /// arrays alive.
    #[staticmethod]
    fn from_arrays(arrays: &Bound<'_, PyDict>) -> PyResult<ParamSet> {
        let mut specs = Vec::with_capacity(arrays.len());
        let mut keep = Vec::with_capacity(arrays.len());
        for (k, v) in arrays.iter() {
            let name: String = k.extract()?;
            let (spec, kept) = wrap_one(&name, &v)?;
            specs.push(spec);
            keep.push(kept);
        }
        // SAFETY: each spec addresses its array's numel elements, aligned for the dtype (numpy
        // and DLPack exporters align elements), writable (checked), and `keep` holds the arrays
        // alive as long as the set lives; overlapping tensors are refused by `wrap`.
        let set = unsafe { Set::wrap(specs) }.map_err(to_py)?;
        Ok(ParamSet { slot: Slot::Owned(set), _keep: keep })
    }

    /// Writes the set as safetensors (atomically: a temporary file renamed over `path`).
    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let set = self.get()?;
        py.detach(|| set.save(&path)).map_err(to_py)
    }

    /// {module name: [tensor names]}, modules in order of first appearance.
    #[getter]
    fn modules<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let set = self.get()?;
        let out = PyDict::new(py);
        for m in set.modules() {
            let names: Vec<&str> = m.tensors.iter().map(|&i| set.tensors()[i].name()).collect();
            out.set_item(&m.name, PyList::new(py, names)?)?;
        }
        Ok(out)
    }

    /// The tensor names, in set order.
    #[getter]
    fn tensor_names(&self) -> PyResult<Vec<String>> {
        Ok(self.get()?.tensors().iter().map(|t| t.name().to_string()).collect())
    }

    /// Elements of all weights.
    #[getter]
    fn numel(&self) -> PyResult<u64> {
        Ok(self.get()?.weight_numel())
    }

    /// Regroups the tensors into modules: "first" (the default: the first dot-separated part of
    /// the name), "depth:N" (the first N parts), "tensor" (each tensor its own module) or
    /// "prefixes:P1,P2,..." (the longest matching prefix; unmatched tensors form their own).
    fn set_grouping(&mut self, spec: &str) -> PyResult<()> {
        let grouping = Grouping::parse(spec).map_err(to_py)?;
        self.get_mut()?.set_grouping(grouping).map_err(to_py)
    }

    /// A deep copy in memory the new set owns (host sets only).
    fn copy(&self, py: Python<'_>) -> PyResult<ParamSet> {
        let set = self.get()?;
        py.detach(|| set.try_clone()).map(ParamSet::owned).map_err(to_py)
    }

    /// set[name] -> numpy.ndarray: a copy of a host weight tensor, in its shape (bfloat16 as
    /// float32).
    fn __getitem__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let set = self.get()?;
        let Some(t) = set.tensor(name) else {
            return Err(to_py(Error::NotFound(format!("no tensor named {name:?}"))));
        };
        let flat = host_array(py, t.host().map_err(to_py)?);
        flat.call_method1("reshape", (t.shape().to_vec(),))
    }

    fn __contains__(&self, name: &str) -> PyResult<bool> {
        Ok(self.get()?.tensor(name).is_some())
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.get()?.tensors().len())
    }

    fn __repr__(&self) -> String {
        match self.get() {
            Ok(s) => format!(
                "ParamSet({} tensors, {} modules, {} weights)",
                s.tensors().len(),
                s.modules().len(),
                s.weight_numel()
            ),
            Err(_) => "ParamSet(<expired>)".into(),
        }
    }
}

/// ||a_i - b_i||_2 for each module i of `a` (tensors matched by name) and the total over all
/// weights: {"modules": {name: float}, "total": float}.
#[pyfunction]
pub fn distance<'py>(
    py: Python<'py>,
    a: PyRef<'py, ParamSet>,
    b: PyRef<'py, ParamSet>,
) -> PyResult<Bound<'py, PyDict>> {
    let (a, b) = (a.get()?, b.get()?);
    let ctx = context_for(&[a, b])?;
    let d = py.detach(|| geometry::distance(&ctx, a, b)).map_err(to_py)?;
    let modules = PyDict::new(py);
    for (m, v) in a.modules().iter().zip(&d.modules) {
        modules.set_item(&m.name, v)?;
    }
    let out = PyDict::new(py);
    out.set_item("modules", modules)?;
    out.set_item("total", d.total)?;
    Ok(out)
}

/// A new set (1 - lam) a + lam b (any finite lam: outside [0, 1] it extrapolates), with a's
/// names, dtypes and modules.
#[pyfunction]
pub fn interpolate(py: Python<'_>, a: PyRef<'_, ParamSet>, b: PyRef<'_, ParamSet>, lam: f64) -> PyResult<ParamSet> {
    let (a, b) = (a.get()?, b.get()?);
    let ctx = context_for(&[a, b])?;
    py.detach(|| {
        let mut out = a.try_clone()?;
        geometry::interpolate(&ctx, a, b, lam, &mut out)?;
        Ok(out)
    })
    .map(ParamSet::owned)
    .map_err(to_py)
}
