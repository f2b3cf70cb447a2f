//! Linear CKA: `linear_cka`, `cka_matrix` and the streaming `CkaAccumulator`.

use crate::arrays::{backend_choice, layers, Inputs};
use crate::errors::{invalid, to_py};
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1};
use pyo3::prelude::*;
use transferlens::cka::{self, CkaAccumulator as Accumulator, Estimator};
use transferlens::BackendChoice;

pub fn estimator(name: &str) -> PyResult<Estimator> {
    match name {
        "biased" => Ok(Estimator::Biased),
        "debiased" => Ok(Estimator::Debiased),
        _ => invalid(format!("estimator must be 'biased' or 'debiased', got {name:?}")),
    }
}

fn estimator_name(e: Estimator) -> &'static str {
    match e {
        Estimator::Biased => "biased",
        Estimator::Debiased => "debiased",
    }
}

/// A row-major `rows x cols` float64 array.
fn matrix_array<'py>(
    py: Python<'py>,
    values: Vec<f64>,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    PyArray1::from_vec(py, values).reshape([rows, cols])
}

/// Linear CKA between the features `x` (samples x p) and `y` (samples x q) of the same samples.
///
/// `x` and `y` are numpy arrays or objects with `__dlpack__` (PyTorch, JAX, CuPy), float32,
/// float64, float16 or bfloat16, in host memory or on a CUDA device. Arrays whose rows are each
/// contiguous (any row stride) are read in place; other layouts are copied once. `estimator` is
/// "biased" (Kornblith et al. 2019) or "debiased" (the unbiased HSIC, needs 4 samples);
/// `backend` is "auto" (CUDA when a device works, else the CPU), "cpu" or "cuda". CUDA tensors
/// are computed on their own device. The GIL is released while the library computes.
///
/// Raises transferlens.DegenerateInput for a layer with no variance or too few samples,
/// NonFinite for NaN or Inf, ShapeMismatch for different sample counts.
#[pyfunction]
#[pyo3(signature = (x, y, estimator="biased", backend="auto"))]
pub fn linear_cka(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    estimator: &str,
    backend: &str,
) -> PyResult<f64> {
    let est = self::estimator(estimator)?;
    let inputs = Inputs::import(&[("x", vec![x.clone()]), ("y", vec![y.clone()])], backend_choice(backend)?)?;
    let (xs, ys) = (inputs.matrices(0)?, inputs.matrices(1)?);
    let ctx = &inputs.ctx;
    py.detach(|| cka::linear_cka(ctx, &xs[0], &ys[0], est)).map_err(to_py)
}

/// CKA of every pair of layers: a float64 array of shape (len(xs), len(ys)) with
/// out[i, j] = linear_cka(xs[i], ys[j]). `xs` and `ys` are lists of arrays of the same samples
/// (inputs as for linear_cka). Each layer's products are formed once, whatever the number of
/// pairs it takes part in.
#[pyfunction]
#[pyo3(signature = (xs, ys, estimator="biased", backend="auto"))]
pub fn cka_matrix<'py>(
    py: Python<'py>,
    xs: &Bound<'py, PyAny>,
    ys: &Bound<'py, PyAny>,
    estimator: &str,
    backend: &str,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let est = self::estimator(estimator)?;
    let inputs = Inputs::import(&[("xs", layers(xs)?), ("ys", layers(ys)?)], backend_choice(backend)?)?;
    let (mx, my) = (inputs.matrices(0)?, inputs.matrices(1)?);
    let ctx = &inputs.ctx;
    let values = py.detach(|| cka::cka_matrix(ctx, &mx, &my, est)).map_err(to_py)?;
    matrix_array(py, values, mx.len(), my.len())
}

/// Marks a state array: "TLA" as a number, then the layout version.
const STATE_MAGIC: f64 = 5_524_545.0;
const STATE_VERSION: f64 = 1.0;

/// Full-data linear CKA of `n_x` x-layers against `n_y` y-layers, fed in batches of samples:
/// after `update` on every batch, `result()` equals `cka_matrix` on all the data (up to
/// rounding). Accumulators of the same layers `merge`, in any order; `state()` and
/// `CkaAccumulator.from_state` carry one across processes.
///
/// Across processes (torch.distributed or MPI), gather every rank's state and merge:
///
///     state = torch.from_numpy(acc.state())
///     states = [torch.empty_like(state) for _ in range(world_size)]
///     torch.distributed.all_gather(states, state)
///     total = CkaAccumulator.from_state(states[0].numpy())
///     for s in states[1:]:
///         total.merge(CkaAccumulator.from_state(s.numpy()))
///     cka = total.result()
///
/// (with mpi4py: `states = comm.allgather(acc.state())`). Every rank's state has the same
/// length once the layers' widths are known (after the first update).
#[pyclass(name = "CkaAccumulator", module = "transferlens")]
pub struct CkaAccumulator {
    inner: Accumulator,
    backend: BackendChoice,
}

#[pymethods]
impl CkaAccumulator {
    #[new]
    #[pyo3(signature = (n_x, n_y, estimator="biased", backend="auto"))]
    fn new(n_x: usize, n_y: usize, estimator: &str, backend: &str) -> PyResult<Self> {
        let inner = Accumulator::new(n_x, n_y, self::estimator(estimator)?).map_err(to_py)?;
        Ok(CkaAccumulator { inner, backend: backend_choice(backend)? })
    }

    /// Adds a batch: `xs` holds n_x arrays and `ys` n_y arrays (a single array stands for a list
    /// of one), each of the batch's samples x that layer's features. Batches may differ in size.
    fn update(&mut self, py: Python<'_>, xs: &Bound<'_, PyAny>, ys: &Bound<'_, PyAny>) -> PyResult<()> {
        let inputs = Inputs::import(&[("xs", layers(xs)?), ("ys", layers(ys)?)], self.backend)?;
        let (mx, my) = (inputs.matrices(0)?, inputs.matrices(1)?);
        let ctx = &inputs.ctx;
        let inner = &mut self.inner;
        py.detach(|| inner.update(ctx, &mx, &my)).map_err(to_py)
    }

    /// Adds the samples another accumulator of the same layers has seen.
    fn merge(&mut self, py: Python<'_>, other: PyRef<'_, CkaAccumulator>) -> PyResult<()> {
        let (inner, other) = (&mut self.inner, &other.inner);
        py.detach(|| inner.merge(other)).map_err(to_py)
    }

    /// CKA of every (x, y) pair of layers over all samples seen: float64, shape (n_x, n_y).
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let inner = &self.inner;
        let values = py.detach(|| inner.result()).map_err(to_py)?;
        let (nx, ny) = inner.layer_counts();
        matrix_array(py, values, nx, ny)
    }

    /// The accumulator as one float64 array (layer counts, estimator, widths, shift and
    /// moments), for `CkaAccumulator.from_state`. Needs at least one update; layers too wide for
    /// additive moments (over 2^31 values of Grams) have no state.
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let (ls, lm) = self.inner.state_len();
        let (mut shift, mut moments) = (vec![0.0; ls], vec![0.0; lm]);
        self.inner.export(&mut shift, &mut moments).map_err(to_py)?;
        let (nx, ny) = self.inner.layer_counts();
        let mut out = vec![STATE_MAGIC, STATE_VERSION, nx as f64, ny as f64, self.inner.estimator() as u32 as f64];
        out.extend(self.inner.widths().iter().map(|&w| w as f64));
        out.extend(shift);
        out.extend(moments);
        Ok(PyArray1::from_vec(py, out))
    }

    /// The accumulator that `state()` described.
    #[staticmethod]
    #[pyo3(signature = (state, backend="auto"))]
    fn from_state(state: PyReadonlyArray1<'_, f64>, backend: &str) -> PyResult<Self> {
        let s = state.as_slice()?;
        let bad = |why: &str| invalid(format!("not a CkaAccumulator state: {why}"));
        if s.len() < 5 || s[0] != STATE_MAGIC {
            return bad("it does not start with the state marker");
        }
        if s[1] != STATE_VERSION {
            return bad(&format!("layout version {} (this package reads {STATE_VERSION})", s[1]));
        }
        let count = |v: f64| if v >= 0.0 && v.fract() == 0.0 && v < 1e15 { Some(v as usize) } else { None };
        let (Some(nx), Some(ny), Some(est)) = (count(s[2]), count(s[3]), count(s[4])) else {
            return bad("the layer counts or the estimator are not small integers");
        };
        let est = Estimator::from_raw(est as u32, "state estimator").map_err(to_py)?;
        let mut inner = Accumulator::new(nx, ny, est).map_err(to_py)?;
        let Some(widths) = s.get(5..5 + nx + ny) else { return bad("it is shorter than its widths") };
        let Some(widths) = widths.iter().map(|&w| count(w)).collect::<Option<Vec<usize>>>() else {
            return bad("a width is not an integer");
        };
        inner.set_widths(&widths).map_err(to_py)?;
        let (ls, lm) = inner.state_len();
        let rest = &s[5 + nx + ny..];
        if rest.len() != ls + lm {
            return bad(&format!("{} values follow the widths, the layers need {}", rest.len(), ls + lm));
        }
        inner.import(&rest[..ls], &rest[ls..]).map_err(to_py)?;
        Ok(CkaAccumulator { inner, backend: backend_choice(backend)? })
    }

    /// Samples seen so far.
    #[getter]
    fn count(&self) -> u64 {
        self.inner.count()
    }

    /// "biased" or "debiased".
    #[getter]
    fn estimator(&self) -> &'static str {
        estimator_name(self.inner.estimator())
    }

    fn __repr__(&self) -> String {
        let (nx, ny) = self.inner.layer_counts();
        format!("CkaAccumulator(n_x={nx}, n_y={ny}, estimator={:?}, count={})", self.estimator(), self.inner.count())
    }
}
