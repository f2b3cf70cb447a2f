//! Permutation alignment (the repository's docs/align.md): `PermSpec`, weight and activation
//! matching, B rewritten in A's unit order, and layer-wise connectivity.

use crate::analyses::{barrier_dict, curve_dict, metric_of, module_index, run, Evaluator};
use crate::arrays::{backend_choice, layers, Inputs};
use crate::errors::{invalid, to_py};
use crate::params::{context_for, ParamSet};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use transferlens::align::{self, ActivationMatcher as Matcher, MatchOptions, Matching, Moving, PermSpec as Spec};
use transferlens::BackendChoice;

/// Which tensor axes share one permutation of hidden units: a list of groups, each a layer's (or
/// a residual stream's) units, with the `(tensor, axis)` pairs those units index.
///
/// `PermSpec.infer(params)` reads it from the set itself: the built-in CNN when the file's
/// metadata describes one, else a plain chain of dense layers (the built-in MLP among them).
/// `PermSpec.from_json(text)` reads the JSON form of docs/align.md for any other model (a
/// ResNet block, a transformer MLP block, ...). Tensors outside the spec are left as they are
/// (`untouched(params)` lists them).
#[pyclass(name = "PermSpec", module = "transferlens", frozen)]
pub struct PermSpec {
    inner: Spec,
    source: &'static str,
}

#[pymethods]
impl PermSpec {
    /// The spec the set's own description gives (see the class docstring).
    #[staticmethod]
    fn infer(params: PyRef<'_, ParamSet>) -> PyResult<PermSpec> {
        let (inner, source) = Spec::infer(params.get()?).map_err(to_py)?;
        Ok(PermSpec { inner, source })
    }

    /// Parses the JSON form: {"groups": [{"name", "size", "axes": [[tensor, axis], ...],
    /// "partition" (optional)}]}. Checked for consistency here, against a set when used.
    #[staticmethod]
    fn from_json(text: &str) -> PyResult<PermSpec> {
        let inner = Spec::from_json(text).map_err(to_py)?;
        Ok(PermSpec { inner, source: "JSON" })
    }

    /// The JSON form (what `from_json` reads).
    fn to_json(&self) -> String {
        self.inner.to_json()
    }

    /// Where the spec came from: the inference used, or "JSON".
    #[getter]
    fn source(&self) -> &'static str {
        self.source
    }

    /// The groups, in order: [{"name", "size", "partition", "axes": [(tensor, axis), ...]}].
    #[getter]
    fn groups<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let groups = self.inner.groups.iter().map(|g| {
            let d = PyDict::new(py);
            d.set_item("name", &g.name)?;
            d.set_item("size", g.size)?;
            d.set_item("partition", &g.partition)?;
            d.set_item("axes", &g.axes)?;
            Ok(d)
        });
        PyList::new(py, groups.collect::<PyResult<Vec<_>>>()?)
    }

    /// Checks the spec against a set: every tensor present, a weight, `size` long on its axis,
    /// no axis in two groups. Raises NotFound, ShapeMismatch, ... naming the tensor.
    fn check(&self, params: PyRef<'_, ParamSet>) -> PyResult<()> {
        self.inner.check(params.get()?).map_err(to_py)
    }

    /// The names of the set's tensors that no group touches (alignment leaves them as they are).
    fn untouched(&self, params: PyRef<'_, ParamSet>) -> PyResult<Vec<String>> {
        Ok(self.inner.untouched(params.get()?))
    }

    fn __len__(&self) -> usize {
        self.inner.groups.len()
    }

    fn __repr__(&self) -> String {
        let sizes: Vec<usize> = self.inner.groups.iter().map(|g| g.size).collect();
        format!("PermSpec({} groups of sizes {sizes:?}, from {})", sizes.len(), self.source)
    }
}

/// {"perms": [int64 array per group], "passes": int, "converged": bool}.
fn matching_dict<'py>(py: Python<'py>, m: &Matching) -> PyResult<Bound<'py, PyDict>> {
    let perms = m.perms.iter().map(|p| PyArray1::from_iter(py, p.iter().map(|&i| i as i64)));
    let d = PyDict::new(py);
    d.set_item("perms", PyList::new(py, perms)?)?;
    d.set_item("passes", m.passes)?;
    d.set_item("converged", m.converged)?;
    Ok(d)
}

/// Weight matching (Git Re-Basin): the permutations of B's units that best match A's weights,
/// by coordinate descent over the spec's groups, visited in an order drawn from `seed`, for at
/// most `max_passes` passes (it stops after a pass that changes nothing). A and B must both fit
/// the spec with the same shapes. Returns {"perms": one int64 array per group (aligned unit i is
/// B's unit perms[g][i]), "passes", "converged"}; pass perms to `apply_permutation`. The GIL is
/// released while it runs.
#[pyfunction]
#[pyo3(signature = (spec, a, b, *, seed=0, max_passes=100))]
pub fn align_weights<'py>(
    py: Python<'py>,
    spec: PyRef<'py, PermSpec>,
    a: PyRef<'py, ParamSet>,
    b: PyRef<'py, ParamSet>,
    seed: u64,
    max_passes: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let (spec, a, b) = (&spec.inner, a.get()?, b.get()?);
    let options = MatchOptions { seed, max_passes };
    let found = py.detach(|| align::match_weights(spec, a, b, &options)).map_err(to_py)?;
    matching_dict(py, &found)
}

/// Activation matching: per group, the correlation of A's and B's unit activations on the same
/// inputs, then one assignment. `acts_a` and `acts_b` hold one array per group (in spec order;
/// a single array for a spec of one group), each observations x the group's units: a row per
/// input for a dense layer, a row per input and pixel for a conv. Arrays as for `linear_cka`
/// (numpy or `__dlpack__`, host or CUDA). Returns what `align_weights` returns (passes 1).
/// For more data than fits at once, feed `ActivationMatcher` batch by batch.
#[pyfunction]
#[pyo3(signature = (spec, acts_a, acts_b, *, backend="auto"))]
pub fn align_activations<'py>(
    py: Python<'py>,
    spec: PyRef<'py, PermSpec>,
    acts_a: &Bound<'py, PyAny>,
    acts_b: &Bound<'py, PyAny>,
    backend: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let mut matcher = ActivationMatcher::new(spec, backend)?;
    matcher.update(py, acts_a, acts_b)?;
    matcher.finish(py)
}

/// Activation matching fed in batches: `update(acts_a, acts_b)` per batch of inputs (arrays as
/// for `align_activations`; batches may differ in size), then `finish()`. The cross products
/// are the CKA accumulator's, exact in float64 however the data is split.
#[pyclass(name = "ActivationMatcher", module = "transferlens")]
pub struct ActivationMatcher {
    inner: Matcher,
    /// The groups' unit counts, the shapes of the correlation matrices.
    sizes: Vec<usize>,
    backend: BackendChoice,
}

#[pymethods]
impl ActivationMatcher {
    #[new]
    #[pyo3(signature = (spec, backend="auto"))]
    fn new(spec: PyRef<'_, PermSpec>, backend: &str) -> PyResult<Self> {
        let inner = Matcher::new(&spec.inner).map_err(to_py)?;
        let sizes = spec.inner.groups.iter().map(|g| g.size).collect();
        Ok(ActivationMatcher { inner, sizes, backend: backend_choice(backend)? })
    }

    /// Adds a batch: per group, A's and B's activations on the same inputs, rows in the same
    /// order. Shapes are checked before any group takes the batch.
    fn update(&mut self, py: Python<'_>, acts_a: &Bound<'_, PyAny>, acts_b: &Bound<'_, PyAny>) -> PyResult<()> {
        let inputs = Inputs::import(&[("acts_a", layers(acts_a)?), ("acts_b", layers(acts_b)?)], self.backend)?;
        let (a, b) = (inputs.matrices(0)?, inputs.matrices(1)?);
        let (ctx, inner) = (&inputs.ctx, &mut self.inner);
        py.detach(|| inner.update(ctx, &a, &b)).map_err(to_py)
    }

    /// Per group, the size x size float64 correlation of A's unit i (row) with B's unit j.
    fn correlations<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let inner = &self.inner;
        let all = py.detach(|| inner.correlations()).map_err(to_py)?;
        let arrays = all.into_iter().zip(&self.sizes).map(|(c, &size)| PyArray1::from_vec(py, c).reshape([size, size]));
        PyList::new(py, arrays.collect::<PyResult<Vec<_>>>()?)
    }

    /// The permutations that maximise each group's summed correlation, as `align_weights`
    /// returns them.
    fn finish<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = &self.inner;
        let found = py.detach(|| inner.finish()).map_err(to_py)?;
        matching_dict(py, &found)
    }
}

/// B rewritten in the unit order `perms` (one sequence of unit indices per group, as
/// `align_weights` and `align_activations` give them): a new set (host memory) with B's
/// metadata and modules that computes what B computes. Tensors outside the spec are copied as
/// they are. Raises InvalidArgument when a permutation does not fit its group.
#[pyfunction]
pub fn apply_permutation(
    py: Python<'_>,
    spec: PyRef<'_, PermSpec>,
    b: PyRef<'_, ParamSet>,
    perms: Vec<Vec<usize>>,
) -> PyResult<ParamSet> {
    let (spec, b) = (&spec.inner, b.get()?);
    py.detach(|| align::apply(spec, b, &perms)).map(ParamSet::owned).map_err(to_py)
}

/// The modules that move: exactly one of `module` (a name or index), `first` (k) or `last` (k).
fn moving(
    a: &transferlens::ParamSet,
    module: Option<Bound<'_, PyAny>>,
    first: Option<usize>,
    last: Option<usize>,
) -> PyResult<Moving> {
    match (module, first, last) {
        (Some(m), None, None) => Ok(Moving::Module(module_index(a, &m)?)),
        (None, Some(k), None) => Ok(Moving::First(k)),
        (None, None, Some(k)) => Ok(Moving::Last(k)),
        _ => invalid("give exactly one of module=, first= or last= (the modules that move from A to B)"),
    }
}

/// Layer-wise connectivity (Adilova et al., ICLR 2024): the metrics at each lambda when only
/// some of A's modules move to B, every other weight staying at A. Give exactly one of
/// `module` (name or index: that module alone), `first=k` (the first k modules) or `last=k`
/// (the last k). Align B first (`apply_permutation`) for the curve after alignment. Each point
/// is written into `live`, as for `interpolation_curve` (host sets only). Returns {"lambdas",
/// "loss", "error", "accuracy"} as float64 arrays.
#[pyfunction]
#[pyo3(signature = (evaluator, a, b, live, lambdas=None, *, module=None, first=None, last=None))]
#[allow(clippy::too_many_arguments)]
pub fn layerwise_curve<'py>(
    py: Python<'py>,
    evaluator: PyRef<'py, Evaluator>,
    a: PyRef<'py, ParamSet>,
    b: PyRef<'py, ParamSet>,
    mut live: PyRefMut<'py, ParamSet>,
    lambdas: Option<Vec<f64>>,
    module: Option<Bound<'py, PyAny>>,
    first: Option<usize>,
    last: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let (a, b, live) = (a.get()?, b.get()?, live.get_mut()?);
    let lambdas = lambdas.unwrap_or_else(transferlens::landscape::default_lambdas);
    let moving = moving(a, module, first, last)?;
    let ctx = context_for(&[a, b, live])?;
    let curve = run(py, &evaluator, |ev| align::layerwise_curve(&ctx, ev, a, b, live, &lambdas, moving))?;
    curve_dict(py, "lambdas", &lambdas, &curve)
}

/// `layerwise_curve` and the barrier of `metric` on it (the lambdas must include 0 and 1; the
/// default grid does). Returns the barrier as `barrier` does ({"value", "peak_lambda", "start",
/// "end", "same_basin"}) with the curve under "curve".
#[pyfunction]
#[pyo3(signature = (evaluator, a, b, live, lambdas=None, *, module=None, first=None, last=None, metric="error", tolerance=0.01))]
#[allow(clippy::too_many_arguments)]
pub fn layerwise_barrier<'py>(
    py: Python<'py>,
    evaluator: PyRef<'py, Evaluator>,
    a: PyRef<'py, ParamSet>,
    b: PyRef<'py, ParamSet>,
    mut live: PyRefMut<'py, ParamSet>,
    lambdas: Option<Vec<f64>>,
    module: Option<Bound<'py, PyAny>>,
    first: Option<usize>,
    last: Option<usize>,
    metric: &str,
    tolerance: f64,
) -> PyResult<Bound<'py, PyDict>> {
    let metric = metric_of(metric)?;
    let (a, b, live) = (a.get()?, b.get()?, live.get_mut()?);
    let lambdas = lambdas.unwrap_or_else(transferlens::landscape::default_lambdas);
    let moving = moving(a, module, first, last)?;
    let ctx = context_for(&[a, b, live])?;
    let (curve, found) =
        run(py, &evaluator, |ev| align::layerwise_barrier(&ctx, ev, a, b, live, &lambdas, moving, metric, tolerance))?;
    let out = barrier_dict(py, &found)?;
    out.set_item("curve", curve_dict(py, "lambdas", &lambdas, &curve)?)?;
    Ok(out)
}
