//! Evaluators written in Python, and the analyses that use them: interpolation curves,
//! barriers, module and network criticality, rewind curves, the PAC-Bayes bound; and the data
//! tools (prediction agreement, block shuffle).

use crate::errors::{invalid, to_py};
use crate::params::{context_for, ParamSet};
use numpy::{PyArray1, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use transferlens::criticality::{self, Eps, HeldOut, ModuleCriticality, NetworkCriticality, Noise, Path, Search};
use transferlens::eval::{self, Metric, Metrics};
use transferlens::ffi::tl_criticality_options;
use transferlens::landscape::Barrier;
use transferlens::{Context, Error, ParamSet as Set};

/// An evaluator written in Python: `fn(params)` returns the metrics of the model whose weights
/// the analysis has just written into its live set, as a dict {"loss": float, "error": float}
/// (and optionally "accuracy", else 1 - error). `params` is that live set, readable during the
/// call only. A model wrapped with `ParamSet.from_arrays` (or `transferlens.torch.wrap_module`)
/// already holds the weights, so `fn` usually just runs it. An exception raised by `fn` ends the
/// analysis and propagates out of it unchanged.
#[pyclass(name = "Evaluator", module = "transferlens")]
pub struct Evaluator {
    function: Py<PyAny>,
}

#[pymethods]
impl Evaluator {
    #[new]
    fn new(function: Bound<'_, PyAny>) -> PyResult<Self> {
        if !function.is_callable() {
            return Err(PyTypeError::new_err(
                "Evaluator(fn) needs a callable fn(params) -> {'loss': ..., 'error': ...}",
            ));
        }
        Ok(Evaluator { function: function.unbind() })
    }

    /// The Python function.
    #[getter]
    fn function(&self, py: Python<'_>) -> Py<PyAny> {
        self.function.clone_ref(py)
    }
}

/// The library's side of a Python evaluator during one analysis: the exception `fn` raised, if
/// any, is kept to be raised again, unchanged, when the analysis returns.
struct Bridge<'a> {
    function: &'a Py<PyAny>,
    raised: Option<PyErr>,
}

fn metrics_of(value: &Bound<'_, PyAny>) -> Result<Metrics, Error> {
    let field = |key: &str| -> Option<f64> { value.get_item(key).ok()?.extract::<f64>().ok() };
    let (Some(loss), Some(error)) = (field("loss"), field("error")) else {
        return Err(Error::Callback(format!(
            "the evaluator returned {}; expected a dict with float 'loss' and 'error'",
            value.repr().map(|r| r.to_string()).unwrap_or_else(|_| "an object".into())
        )));
    };
    let accuracy = if value.get_item("accuracy").is_ok() {
        field("accuracy").ok_or_else(|| Error::Callback("the evaluator's 'accuracy' is not a float".into()))?
    } else {
        1.0 - error
    };
    Ok(Metrics { loss, error, accuracy })
}

impl eval::Evaluator for Bridge<'_> {
    fn evaluate(&mut self, _ctx: &Context, sets: &[&Set]) -> Result<Vec<Metrics>, Error> {
        Python::attach(|py| {
            let mut out = Vec::with_capacity(sets.len());
            for set in sets {
                let view = Py::new(py, ParamSet::lend(set)).map_err(|e| Error::Callback(e.to_string()))?;
                let result = self.function.call1(py, (view.clone_ref(py),));
                // The view must not outlive the call: the analysis writes the set next.
                match view.bind(py).try_borrow_mut() {
                    Ok(mut v) => v.expire(),
                    Err(_) => {
                        return Err(Error::Panic("the evaluator's view of the live set is still borrowed".into()))
                    }
                }
                match result {
                    Ok(v) => out.push(metrics_of(v.bind(py))?),
                    Err(e) => {
                        self.raised = Some(e);
                        return Err(Error::Callback("the Python evaluator raised an exception".into()));
                    }
                }
            }
            Ok(out)
        })
    }
}

/// Runs an analysis with the GIL released; the evaluator's exception, if it raised one, is
/// what the call raises.
pub fn run<R: Send>(
    py: Python<'_>,
    evaluator: &Evaluator,
    body: impl FnOnce(&mut dyn eval::Evaluator) -> Result<R, Error> + Send,
) -> PyResult<R> {
    let mut bridge = Bridge { function: &evaluator.function, raised: None };
    let result = py.detach(|| body(&mut bridge));
    match (result, bridge.raised.take()) {
        (_, Some(raised)) => Err(raised),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(to_py(e)),
    }
}

pub fn metric_of(name: &str) -> PyResult<Metric> {
    match name {
        "loss" => Ok(Metric::Loss),
        "error" => Ok(Metric::Error),
        "accuracy" => Ok(Metric::Accuracy),
        _ => invalid(format!("metric must be 'loss', 'error' or 'accuracy', got {name:?}")),
    }
}

/// {"<points>": the grid, "loss", "error", "accuracy": arrays}.
pub fn curve_dict<'py>(py: Python<'py>, points: &str, grid: &[f64], curve: &[Metrics]) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item(points, PyArray1::from_slice(py, grid))?;
    out.set_item("loss", PyArray1::from_iter(py, curve.iter().map(|m| m.loss)))?;
    out.set_item("error", PyArray1::from_iter(py, curve.iter().map(|m| m.error)))?;
    out.set_item("accuracy", PyArray1::from_iter(py, curve.iter().map(|m| m.accuracy)))?;
    Ok(out)
}

/// A module given by name or index, checked against `set`.
pub fn module_index(set: &Set, module: &Bound<'_, PyAny>) -> PyResult<usize> {
    if let Ok(name) = module.extract::<String>() {
        return transferlens::geometry::module_named(set, &name).map_err(to_py);
    }
    let index: usize = module.extract()?;
    if index >= set.modules().len() {
        return Err(to_py(Error::NotFound(format!(
            "module index {index} is out of range: the set has {} modules",
            set.modules().len()
        ))));
    }
    Ok(index)
}

/// The metrics along theta(lam) = (1 - lam) a + lam b at each lambda (default: the library's
/// 50 points on [0, 1]; any finite values, outside [0, 1] it extrapolates). `module` (a name or
/// index) moves only that module, the rest staying at b. Each point is written into `live` (the
/// set the evaluator's model reads: e.g. `transferlens.torch.wrap_module`'s), which must hold
/// a's tensors and share no memory with a or b. Returns {"lambdas", "loss", "error",
/// "accuracy"} as float64 arrays.
#[pyfunction]
#[pyo3(signature = (evaluator, a, b, live, lambdas=None, *, module=None))]
pub fn interpolation_curve<'py>(
    py: Python<'py>,
    evaluator: PyRef<'py, Evaluator>,
    a: PyRef<'py, ParamSet>,
    b: PyRef<'py, ParamSet>,
    mut live: PyRefMut<'py, ParamSet>,
    lambdas: Option<Vec<f64>>,
    module: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let (a, b, live) = (a.get()?, b.get()?, live.get_mut()?);
    let lambdas = lambdas.unwrap_or_else(transferlens::landscape::default_lambdas);
    let module = module.map(|m| module_index(a, &m)).transpose()?;
    let ctx = context_for(&[a, b, live])?;
    let curve =
        run(py, &evaluator, |ev| transferlens::landscape::interpolation_curve(&ctx, ev, a, b, live, &lambdas, module))?;
    curve_dict(py, "lambdas", &lambdas, &curve)
}

/// The performance barrier of a curve from `interpolation_curve` (its lambdas must include 0
/// and 1): the largest excess of the metric over the chord between the endpoints on [0, 1] (for
/// "accuracy", the shortfall below it). Returns {"value", "peak_lambda", "start", "end",
/// "same_basin"}; same_basin is value <= tolerance (0.01: the embedded study's tolerance).
#[pyfunction]
#[pyo3(signature = (curve, *, metric="error", tolerance=0.01))]
pub fn barrier<'py>(
    py: Python<'py>,
    curve: &Bound<'py, PyAny>,
    metric: &str,
    tolerance: f64,
) -> PyResult<Bound<'py, PyDict>> {
    let metric = metric_of(metric)?;
    let lambdas: Vec<f64> = curve.get_item("lambdas")?.extract()?;
    let values: Vec<f64> = curve.get_item(metric.name())?.extract()?;
    let b = transferlens::landscape::barrier(&lambdas, &values, metric.larger_is_worse(), tolerance).map_err(to_py)?;
    barrier_dict(py, &b)
}

/// {"value", "peak_lambda", "start", "end", "same_basin"}.
pub fn barrier_dict<'py>(py: Python<'py>, b: &Barrier) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("value", b.value)?;
    out.set_item("peak_lambda", b.peak_lambda)?;
    out.set_item("start", b.start)?;
    out.set_item("end", b.end)?;
    out.set_item("same_basin", b.same_basin)?;
    Ok(out)
}

/// The keyword options of criticality, as the C ABI's tl_criticality_options names them.
const OPTION_NAMES: [&str; 15] = [
    "metric",
    "eps_relative",
    "eps",
    "noise_relative",
    "noise_scale",
    "refined",
    "alphas",
    "sigmas",
    "tolerance",
    "alpha_steps",
    "samples",
    "seed",
    "sigma_floor",
    "confidence",
    "repeats",
];

/// The options: the preset's values (the library's defaults, or the public implementation's
/// for "reference"), each keyword given replacing one.
fn options(preset: &str, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<criticality::Options> {
    let mut o: tl_criticality_options = match preset {
        "default" => transferlens::ffi::tl_criticality_options_default(),
        "reference" => transferlens::ffi::tl_criticality_options_reference(),
        _ => return invalid(format!("preset must be 'default' or 'reference', got {preset:?}")),
    };
    let mut metric = None;
    if let Some(kwargs) = kwargs {
        for (key, value) in kwargs.iter() {
            let key: String = key.extract()?;
            match key.as_str() {
                "metric" => metric = Some(metric_of(&value.extract::<String>()?)?),
                "eps_relative" => o.eps_relative = value.extract()?,
                "eps" => o.eps = value.extract()?,
                "noise_relative" => o.noise_relative = u32::from(value.extract::<bool>()?),
                "noise_scale" => o.noise_scale = value.extract()?,
                "refined" => o.refined = u32::from(value.extract::<bool>()?),
                "alphas" => o.alphas = value.extract()?,
                "sigmas" => o.sigmas = value.extract()?,
                "tolerance" => o.tolerance = value.extract()?,
                "alpha_steps" => o.alpha_steps = value.extract()?,
                "samples" => o.samples = value.extract()?,
                "seed" => o.seed = value.extract()?,
                "sigma_floor" => o.sigma_floor = value.extract()?,
                "confidence" => o.confidence = value.extract()?,
                "repeats" => o.repeats = value.extract()?,
                _ => {
                    return Err(PyTypeError::new_err(format!(
                        "unexpected keyword argument {key:?}; the criticality options are {}",
                        OPTION_NAMES.join(", ")
                    )))
                }
            }
        }
    }
    let metric = match metric {
        Some(m) => m,
        None => metric_of(["loss", "error", "accuracy"][o.metric.0 as usize])?,
    };
    let (alphas, sigmas) = (o.alphas as usize, o.sigmas as usize);
    Ok(criticality::Options {
        metric,
        eps: match o.eps_relative {
            0 => Eps::Absolute(o.eps),
            1 => Eps::Relative(o.eps),
            2 => Eps::Increase(o.eps),
            v => return invalid(format!("eps_relative must be 0 (absolute), 1 (relative) or 2 (increase), got {v}")),
        },
        noise: if o.noise_relative == 1 { Noise::Relative } else { Noise::Absolute { scale: o.noise_scale } },
        search: if o.refined == 1 {
            Search::Refined { alphas, tolerance: o.tolerance, alpha_steps: o.alpha_steps as usize }
        } else {
            Search::Grid { alphas, sigmas }
        },
        samples: o.samples as usize,
        seed: o.seed,
        sigma_floor: o.sigma_floor,
        confidence: o.confidence,
        repeats: o.repeats as usize,
    })
}

fn report_dict<'py>(py: Python<'py>, c: &ModuleCriticality) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("module", &c.module)?;
    d.set_item("value", c.value)?;
    d.set_item("per_parameter", c.per_parameter)?;
    d.set_item("pac_bayes_term", c.pac_bayes_term)?;
    d.set_item("spread", c.spread)?;
    d.set_item("repeats", PyList::new(py, &c.repeats)?)?;
    d.set_item("alpha", c.alpha)?;
    d.set_item("sigma", c.sigma)?;
    d.set_item("noise_std", c.noise_std)?;
    d.set_item("expected", c.expected)?;
    d.set_item("expected_se", c.expected_se)?;
    d.set_item("rewound_metric", c.rewound_metric)?;
    d.set_item("rewind_area", c.rewind_area)?;
    d.set_item("numel", c.numel)?;
    d.set_item("points", c.points)?;
    d.set_item("feasible", c.feasible)?;
    Ok(d)
}

fn network_dict<'py>(py: Python<'py>, net: &NetworkCriticality) -> PyResult<Bound<'py, PyDict>> {
    let modules = PyDict::new(py);
    for c in &net.modules {
        modules.set_item(&c.module, report_dict(py, c)?)?;
    }
    let d = PyDict::new(py);
    d.set_item("modules", modules)?;
    d.set_item("total", net.total)?;
    d.set_item("total_spread", net.total_spread)?;
    d.set_item("final_metric", net.final_metric)?;
    d.set_item("eps", net.eps)?;
    d.set_item("joint_expected", net.joint_expected)?;
    d.set_item("pac_bayes_kl", net.modules.iter().map(|c| c.pac_bayes_term).sum::<f64>())?;
    d.set_item("ranking_agreement", net.ranking_agreement)?;
    d.set_item("ranking_stable", net.ranking_stable())?;
    d.set_item("infeasible_modules", net.modules.iter().filter(|c| !c.feasible).count())?;
    Ok(d)
}

/// The sets of a path: init and final, or the checkpoints (then init and final are None).
fn path_sets<'s>(
    init: &'s Option<PyRef<'s, ParamSet>>,
    final_: &'s Option<PyRef<'s, ParamSet>>,
    checkpoints: &'s [PyRef<'s, ParamSet>],
) -> PyResult<Vec<&'s Set>> {
    match (init, final_, checkpoints.is_empty()) {
        (Some(i), Some(f), true) => Ok(vec![i.get()?, f.get()?]),
        (None, None, false) => checkpoints.iter().map(|c| c.get()).collect(),
        _ => invalid("give init and final, or checkpoints (with init=None and final=None), not both"),
    }
}

fn path_of<'s>(sets: &'s [&'s Set], straight: bool) -> Path<'s> {
    if straight {
        Path::Straight { init: sets[0], final_: sets[1] }
    } else {
        Path::Checkpoints(sets)
    }
}

/// The criticality of one module (a name or index of final's modules) along the straight path
/// from `init` to `final`, or along the piecewise-linear path through `checkpoints` (first =
/// initial, last = final; pass init=None, final=None). Every point is written into `live`.
/// The options are the C ABI's tl_criticality_options fields as keywords (metric: "loss",
/// "error" or "accuracy"; eps_relative: 0 absolute, 1 relative, 2 increase; eps;
/// noise_relative, refined: bool; noise_scale, alphas, sigmas, tolerance, alpha_steps, samples,
/// seed, sigma_floor, confidence, repeats), over the library's defaults (preset="default") or
/// the public implementation's (preset="reference"). Returns the module's report: value,
/// per_parameter, pac_bayes_term, spread, repeats, alpha, sigma, noise_std, expected,
/// expected_se, rewound_metric, rewind_area, numel, points, feasible.
#[pyfunction]
#[pyo3(signature = (evaluator, init, r#final, live, module, *, checkpoints=None, preset="default", **options))]
#[allow(clippy::too_many_arguments)]
pub fn module_criticality<'py>(
    py: Python<'py>,
    evaluator: PyRef<'py, Evaluator>,
    init: Option<PyRef<'py, ParamSet>>,
    r#final: Option<PyRef<'py, ParamSet>>,
    mut live: PyRefMut<'py, ParamSet>,
    module: Bound<'py, PyAny>,
    checkpoints: Option<Vec<PyRef<'py, ParamSet>>>,
    preset: &str,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = self::options(preset, options)?;
    let checkpoints = checkpoints.unwrap_or_default();
    let sets = path_sets(&init, &r#final, &checkpoints)?;
    let straight = checkpoints.is_empty();
    let module = module_index(sets[sets.len() - 1], &module)?;
    let live = live.get_mut()?;
    let mut all = sets.clone();
    all.push(live);
    let ctx = context_for(&all)?;
    let c = run(py, &evaluator, |ev| {
        criticality::module_criticality(&ctx, ev, path_of(&sets, straight), live, module, &opts)
    })?;
    report_dict(py, &c)
}

/// The criticality of every module (arguments and options as for module_criticality). Returns
/// {"modules": {name: report}, "total", "total_spread", "final_metric", "eps",
/// "joint_expected", "pac_bayes_kl", "ranking_agreement", "ranking_stable",
/// "infeasible_modules"}; pass it to pac_bayes_bound.
#[pyfunction]
#[pyo3(signature = (evaluator, init, r#final, live, *, checkpoints=None, preset="default", **options))]
#[allow(clippy::too_many_arguments)]
pub fn network_criticality<'py>(
    py: Python<'py>,
    evaluator: PyRef<'py, Evaluator>,
    init: Option<PyRef<'py, ParamSet>>,
    r#final: Option<PyRef<'py, ParamSet>>,
    mut live: PyRefMut<'py, ParamSet>,
    checkpoints: Option<Vec<PyRef<'py, ParamSet>>>,
    preset: &str,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = self::options(preset, options)?;
    let checkpoints = checkpoints.unwrap_or_default();
    let sets = path_sets(&init, &r#final, &checkpoints)?;
    let straight = checkpoints.is_empty();
    let live = live.get_mut()?;
    let mut all = sets.clone();
    all.push(live);
    let ctx = context_for(&all)?;
    let net =
        run(py, &evaluator, |ev| criticality::network_criticality(&ctx, ev, path_of(&sets, straight), live, &opts))?;
    network_dict(py, &net)
}

/// The metrics with module `module` (name or index) at (1 - alpha) init + alpha final and every
/// other module final, for each alpha (1 = final, 0 = rewound to init). Returns {"alphas",
/// "loss", "error", "accuracy"}.
#[pyfunction]
#[pyo3(signature = (evaluator, init, r#final, live, module, alphas))]
pub fn rewind_curve<'py>(
    py: Python<'py>,
    evaluator: PyRef<'py, Evaluator>,
    init: PyRef<'py, ParamSet>,
    r#final: PyRef<'py, ParamSet>,
    mut live: PyRefMut<'py, ParamSet>,
    module: Bound<'py, PyAny>,
    alphas: Vec<f64>,
) -> PyResult<Bound<'py, PyDict>> {
    let (init, final_, live) = (init.get()?, r#final.get()?, live.get_mut()?);
    let module = module_index(final_, &module)?;
    let ctx = context_for(&[init, final_, live])?;
    let curve = run(py, &evaluator, |ev| criticality::rewind_curve(&ctx, ev, init, final_, live, module, &alphas))?;
    curve_dict(py, "alphas", &alphas, &curve)
}

/// The PAC-Bayes bound of the criticality theorem from a `network_criticality` result (its
/// pac_bayes_kl and joint_expected), with m the number of samples the criticality was measured
/// on and confidence delta (0.05, as the embedded study); with test_error and n_test > 0, the
/// plain held-out estimate beside it. Returns {"bound", "vacuous", "held_out"} (held_out None
/// without test data); the bound is +inf when a module is infeasible, vacuous when above 1.
#[pyfunction]
#[pyo3(signature = (network, m, *, delta=0.05, test_error=None, n_test=0))]
pub fn pac_bayes_bound<'py>(
    py: Python<'py>,
    network: &Bound<'py, PyAny>,
    m: u64,
    delta: f64,
    test_error: Option<f64>,
    n_test: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let kl: f64 = network.get_item("pac_bayes_kl")?.extract()?;
    let expected: f64 = network.get_item("joint_expected")?.extract()?;
    let held_out = match (test_error, n_test) {
        (Some(error), n) if n > 0 => Some(HeldOut { error, n }),
        (None, 0) => None,
        _ => return invalid("give both test_error and n_test > 0 for the held-out estimate, or neither"),
    };
    let b = criticality::pac_bayes_from_kl(kl, expected, m, delta, held_out).map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("bound", b.value)?;
    d.set_item("vacuous", b.vacuous)?;
    d.set_item("held_out", b.held_out)?;
    Ok(d)
}

/// How two models' predicted labels `a` and `b` agree with the true labels (integer arrays of
/// one length). Returns {"both_right", "only_a", "only_b", "both_wrong_same",
/// "both_wrong_different": counts, "category": uint8 array of each sample's category 0..4 in
/// that order}.
#[pyfunction]
pub fn prediction_agreement<'py>(
    py: Python<'py>,
    a: Vec<u32>,
    b: Vec<u32>,
    truth: Vec<u32>,
) -> PyResult<Bound<'py, PyDict>> {
    let g = py.detach(|| transferlens::data::prediction_agreement(&a, &b, &truth)).map_err(to_py)?;
    let names = ["both_right", "only_a", "only_b", "both_wrong_same", "both_wrong_different"];
    let lists = [&g.both_right, &g.only_a, &g.only_b, &g.both_wrong_same, &g.both_wrong_different];
    let mut category = vec![0u8; truth.len()];
    let d = PyDict::new(py);
    for (k, (name, list)) in names.iter().zip(lists).enumerate() {
        d.set_item(name, list.len())?;
        for &i in list.iter() {
            category[i] = k as u8;
        }
    }
    d.set_item("category", PyArray1::from_vec(py, category))?;
    Ok(d)
}

/// Shuffles, in place, the block x block tiles (all channels) of every image of a C-contiguous,
/// writable float32 array of shape (n, c, h, w), with one permutation drawn from `seed` for all
/// images. `block` must divide h and w; block = h = w leaves the images as they are.
#[pyfunction]
#[pyo3(signature = (images, block, seed=0))]
pub fn block_shuffle(
    py: Python<'_>,
    images: &Bound<'_, numpy::PyArray4<f32>>,
    block: usize,
    seed: u64,
) -> PyResult<()> {
    let [n, c, h, w]: [usize; 4] = images.shape().try_into().expect("a 4-D array");
    let mut rw = images.try_readwrite()?;
    let data = rw.as_slice_mut().map_err(|_| PyTypeError::new_err("images must be C-contiguous"))?;
    py.detach(|| transferlens::data::block_shuffle(data, n, c, h, w, block, seed)).map_err(to_py)
}
