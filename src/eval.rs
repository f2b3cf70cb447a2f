//! Evaluators: the metrics (loss, 0-1 error, accuracy) of a parameter set on an evaluation set.
//!
//! Three implementations sit behind [`Evaluator`]: the built-in MLP on a data set
//! ([`MlpEvaluator`]), the built-in CNN on a data set ([`CnnEvaluator`]), and a host function ([`FnEvaluator`] in Rust; a C function pointer through
//! the C ABI) that evaluates the host's own model after the library has written the weights into
//! a wrapped (live) set. A host whose model has batch-norm layers recomputes their running
//! statistics inside the callback (a pass over some training batches in train mode) before it
//! evaluates, since interpolated or perturbed weights invalidate them.
//!
//! The analyses write each point into scratch sets and ask the evaluator for their metrics,
//! up to [`Evaluator::batch`] sets per call, passing their context: the MLP evaluates them in
//! parallel on the CPU, or one after the other on the CUDA device of a CUDA context; a host
//! callback sees one live set at a time. Module criticality's noisy copies ([`ModuleNoise`]) are offered
//! to [`Evaluator::evaluate_module_noise`] first: the MLP evaluates them without writing sets,
//! computing the layers below the noisy module once, on the context's backend (CPU or CUDA).

use crate::backend::{cuda, Backend, Context, LayerNoise};
use crate::error::{fail, Error, Result};
use crate::model::{Cnn, Dataset, Mlp};
use crate::params::{HostSliceMut, ParamSet};
use std::cell::RefCell;
use std::sync::Arc;

pub use crate::model::Metrics;

/// Which metric an analysis reads from [`Metrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Loss,
    Error,
    Accuracy,
}

impl Metric {
    pub fn of(self, m: &Metrics) -> f64 {
        match self {
            Metric::Loss => m.loss,
            Metric::Error => m.error,
            Metric::Accuracy => m.accuracy,
        }
    }
    /// Whether a larger value is worse (loss, error) rather than better (accuracy).
    pub fn larger_is_worse(self) -> bool {
        !matches!(self, Metric::Accuracy)
    }
    pub fn name(self) -> &'static str {
        match self {
            Metric::Loss => "loss",
            Metric::Error => "error",
            Metric::Accuracy => "accuracy",
        }
    }
}

/// Something that gives the metrics of parameter sets.
pub trait Evaluator {
    /// The metrics of each set, in order. `ctx` is the analysis's context: an evaluator may
    /// compute on its backend (the built-in MLP does); a host callback ignores it.
    fn evaluate(&mut self, ctx: &Context, sets: &[&ParamSet]) -> Result<Vec<Metrics>>;
    /// How many sets one call should receive (1 for a host that owns one live model).
    fn batch(&self) -> usize {
        1
    }
    /// The metrics of the noisy copies of `noise`, in order, when this evaluator has a way
    /// faster than writing each copy into a set; `None` makes the caller write and evaluate the
    /// copies through [`Evaluator::evaluate`].
    fn evaluate_module_noise(&mut self, _ctx: &Context, _noise: &ModuleNoise<'_>) -> Option<Result<Vec<Metrics>>> {
        None
    }
}

/// Noisy copies of a point that differ in one module: copy k is `point` with `std * z` added to
/// every tensor of module `module`, z the Philox normals of (`seed`, stream [`Self::stream`])
/// at the element's offset within the module (tensors in the module's order), each noisy value
/// rounded once to its tensor's dtype. Module criticality evaluates these at every point of its
/// search.
///
/// The built-in MLP evaluates them without writing sets, on the context's backend; on the CPU
/// the result is bit for bit that of writing each copy:
///
/// ```
/// use transferlens::eval::{Evaluator, MlpEvaluator, ModuleNoise};
/// use transferlens::model::{Dataset, Mlp};
/// use transferlens::Context;
/// let mlp = Mlp::new(&[4, 8, 3])?;
/// let point = mlp.init(1)?; // modules fc1, fc2
/// let x: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin()).collect();
/// let data = Dataset::new(x, (0..10).map(|i| i % 3).collect(), 4, 3)?;
/// let mut ev = MlpEvaluator::new(mlp.clone(), data.clone());
/// let noise = ModuleNoise { point: &point, module: 0, std: 0.1, seed: 7, samples: 4 };
/// let fast = ev.evaluate_module_noise(&Context::cpu(), &noise).expect("fc1 is one layer")?;
/// for (k, m) in fast.iter().enumerate() {
///     let mut copy = point.try_clone()?;
///     noise.add_to(k, &mut copy)?;
///     assert_eq!(*m, mlp.evaluate(&copy, &data)?);
/// }
/// # Ok::<(), transferlens::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ModuleNoise<'a> {
    pub point: &'a ParamSet,
    pub module: usize,
    /// The per-element standard deviation.
    pub std: f64,
    pub seed: u64,
    /// Copies (noise samples).
    pub samples: usize,
}

impl ModuleNoise<'_> {
    /// The Philox stream of copy `k`: `module << 32 | k`.
    pub fn stream(&self, k: usize) -> u64 {
        ((self.module as u64) << 32) | k as u64
    }

    /// Adds copy `k`'s noise to `out`, which holds the point's values.
    pub fn add_to(&self, k: usize, out: &mut ParamSet) -> Result<()> {
        let Some(m) = self.point.modules().get(self.module) else {
            fail!(NotFound, "module index {} is out of range", self.module)
        };
        add_module_noise(out, &m.tensors, self.std, self.seed, self.stream(k))
    }
}

/// Adds `std * z` to the tensors `tensors` of `set` (indices into its tensors), z the Philox
/// normals of (seed, stream) at the offset within those tensors taken in order, each value
/// rounded once to its dtype.
pub fn add_module_noise(set: &mut ParamSet, tensors: &[usize], std: f64, seed: u64, stream: u64) -> Result<()> {
    let mut offset = 0u64;
    let mut z = Vec::new();
    for &t in tensors {
        let tensor = &mut set.tensors_mut()[t];
        let n = tensor.numel();
        z.resize(n, 0f64);
        crate::rng::normals_f64(seed, stream, offset, &mut z);
        offset += n as u64;
        match tensor.host_mut()? {
            HostSliceMut::F32(d) => d.iter_mut().zip(&z).for_each(|(d, z)| *d = (*d as f64 + std * z) as f32),
            HostSliceMut::F64(d) => d.iter_mut().zip(&z).for_each(|(d, z)| *d += std * z),
            HostSliceMut::F16(d) => {
                d.iter_mut().zip(&z).for_each(|(d, z)| *d = half::f16::from_f64(d.to_f64() + std * z))
            }
            HostSliceMut::BF16(d) => {
                d.iter_mut().zip(&z).for_each(|(d, z)| *d = half::bf16::from_f64(d.to_f64() + std * z))
            }
        }
    }
    Ok(())
}

/// The built-in MLP on a data set, both fixed at construction (the data's device copy is
/// uploaded once).
#[derive(Clone)]
pub struct MlpEvaluator {
    mlp: Mlp,
    data: Dataset,
    /// Sets evaluated per call, in parallel.
    pub batch: usize,
    /// The data on the CUDA device of the last CUDA context used, uploaded once.
    device_data: Option<Arc<cuda::mlp::DeviceDataset>>,
}

impl std::fmt::Debug for MlpEvaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlpEvaluator")
            .field("mlp", &self.mlp)
            .field("rows", &self.data.n)
            .field("batch", &self.batch)
            .field("on_device", &self.device_data.as_ref().map(|d| d.ordinal()))
            .finish()
    }
}

impl MlpEvaluator {
    pub fn new(mlp: Mlp, data: Dataset) -> Self {
        MlpEvaluator { mlp, data, batch: 10, device_data: None }
    }

    pub fn mlp(&self) -> &Mlp {
        &self.mlp
    }

    pub fn data(&self) -> &Dataset {
        &self.data
    }

    /// The layer noise equivalent to `noise`, when its module is exactly one layer of the MLP
    /// (its weight and bias, in any order); `None` otherwise.
    fn layer_noise(&self, noise: &ModuleNoise<'_>) -> Option<LayerNoise> {
        let module = noise.point.modules().get(noise.module)?;
        let layer = self.mlp.layer_names().iter().position(|n| *n == module.name)?;
        let (weight, bias) = (format!("{}.weight", module.name), format!("{}.bias", module.name));
        let (mut weight_index0, mut bias_index0) = (None, None);
        let mut offset = 0u64;
        for &t in &module.tensors {
            let tensor = &noise.point.tensors()[t];
            match tensor.name() {
                n if n == weight => weight_index0 = Some(offset),
                n if n == bias => bias_index0 = Some(offset),
                _ => return None,
            }
            offset += tensor.numel() as u64;
        }
        Some(LayerNoise {
            layer,
            std: noise.std,
            seed: noise.seed,
            stream0: noise.stream(0),
            draws: noise.samples,
            weight_index0: weight_index0?,
            bias_index0: bias_index0?,
        })
    }

    /// The data on the CUDA device of `ctx` (uploaded at the first call on that device).
    fn device_data(&mut self, dev: &cuda::CudaDevice) -> Result<Arc<cuda::mlp::DeviceDataset>> {
        Ok(match &self.device_data {
            Some(d) if d.ordinal() == dev.ordinal() => d.clone(),
            _ => {
                self.mlp.check_data(&self.data)?;
                let d = &self.data;
                let up = Arc::new(cuda::mlp::DeviceDataset::upload(dev, &d.x, &d.y, d.dim, d.classes)?);
                self.device_data = Some(up.clone());
                up
            }
        })
    }

    /// The noisy copies on the CUDA device of `ctx`.
    fn evaluate_layer_noise_cuda(&mut self, ctx: &Context, p: &ParamSet, noise: &LayerNoise) -> Result<Vec<Metrics>> {
        let dev = ctx.cuda_device().ok_or_else(|| Error::Panic("a CUDA context without a device".into()))?;
        let data = self.device_data(dev)?;
        let model = cuda::mlp::DeviceMlp::upload(dev, self.mlp.sizes(), &self.mlp.stored_layers(p)?, noise.layer)?;
        let got = model.evaluate_layer_noise(dev, &data, noise)?;
        Ok(got.into_iter().map(|(loss, error)| Metrics { loss, error, accuracy: 1.0 - error }).collect())
    }

    /// One set on the CUDA device of `ctx`.
    fn evaluate_cuda(&mut self, ctx: &Context, p: &ParamSet) -> Result<Metrics> {
        let dev = ctx.cuda_device().ok_or_else(|| Error::Panic("a CUDA context without a device".into()))?;
        let data = self.device_data(dev)?;
        let model = cuda::mlp::DeviceMlp::upload(dev, self.mlp.sizes(), &self.mlp.stored_layers(p)?, 0)?;
        let (loss, error) = model.evaluate(dev, &data)?;
        Ok(Metrics { loss, error, accuracy: 1.0 - error })
    }
}

impl Evaluator for MlpEvaluator {
    fn evaluate(&mut self, ctx: &Context, sets: &[&ParamSet]) -> Result<Vec<Metrics>> {
        match ctx.backend() {
            Backend::Cpu => self.mlp.evaluate_many(sets, &self.data),
            Backend::Cuda => sets.iter().map(|p| self.evaluate_cuda(ctx, p)).collect(),
        }
    }
    fn batch(&self) -> usize {
        self.batch.max(1)
    }
    fn evaluate_module_noise(&mut self, ctx: &Context, noise: &ModuleNoise<'_>) -> Option<Result<Vec<Metrics>>> {
        let layer_noise = self.layer_noise(noise)?;
        Some(match ctx.backend() {
            Backend::Cpu => self.mlp.evaluate_layer_noise(noise.point, &self.data, &layer_noise),
            Backend::Cuda => self.evaluate_layer_noise_cuda(ctx, noise.point, &layer_noise),
        })
    }
}

/// A host function as an evaluator; an `Err` aborts the analysis.
pub struct FnEvaluator<F: FnMut(&ParamSet) -> Result<Metrics>>(pub F);

impl<F: FnMut(&ParamSet) -> Result<Metrics>> Evaluator for FnEvaluator<F> {
    fn evaluate(&mut self, _ctx: &Context, sets: &[&ParamSet]) -> Result<Vec<Metrics>> {
        sets.iter().map(|s| (self.0)(s)).collect()
    }
}

thread_local! {
    static CALLBACK_MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records the host's description of a callback failure (read once by the library).
pub fn set_callback_error(message: &str) {
    CALLBACK_MESSAGE.with(|m| *m.borrow_mut() = Some(message.to_string()));
}

/// Takes the recorded callback message, if any.
pub fn take_callback_error() -> Option<String> {
    CALLBACK_MESSAGE.with(|m| m.borrow_mut().take())
}

/// Checks that metrics are finite: an analysis never turns a NaN into a figure.
pub fn check_metrics(m: &Metrics, what: &str) -> Result<()> {
    if !(m.loss.is_finite() && m.error.is_finite() && m.accuracy.is_finite()) {
        fail!(NonFinite, "{what}: the evaluator returned a non-finite metric ({m:?})");
    }
    Ok(())
}

/// Evaluates `n` points: `write(k, set)` writes point k into a scratch set, which is then
/// evaluated; points go to the evaluator in batches of up to [`Evaluator::batch`]. The first
/// scratch set is `live` (the host's wrapped model); further ones are clones, kept in `extra`
/// across calls.
pub fn evaluate_points(
    ctx: &Context,
    ev: &mut dyn Evaluator,
    live: &mut ParamSet,
    extra: &mut Vec<ParamSet>,
    n: usize,
    mut write: impl FnMut(usize, &mut ParamSet) -> Result<()>,
) -> Result<Vec<Metrics>> {
    let batch = ev.batch().max(1);
    while extra.len() + 1 < batch.min(n) {
        extra.push(live.try_clone()?);
    }
    let mut out = Vec::with_capacity(n);
    let mut k = 0;
    while k < n {
        let m = batch.min(n - k);
        write(k, live)?;
        for j in 1..m {
            write(k + j, &mut extra[j - 1])?;
        }
        let sets: Vec<&ParamSet> = std::iter::once(&*live).chain(extra[..m - 1].iter()).collect();
        let got = ev.evaluate(ctx, &sets)?;
        if got.len() != m {
            fail!(Callback, "the evaluator returned {} results for {m} sets", got.len());
        }
        for g in &got {
            check_metrics(g, "evaluation")?;
        }
        out.extend(got);
        k += m;
    }
    Ok(out)
}

/// The built-in CNN on a data set, both fixed at construction. Sets are evaluated in parallel on
/// the CPU; module criticality's noisy copies take the CNN's batched path
/// ([`Cnn::evaluate_module_noise`]: the layers below the module once per chunk of rows, a single
/// conv module's copies as one GEMM), equal bit for bit to writing each copy.
#[derive(Debug, Clone)]
pub struct CnnEvaluator {
    cnn: Cnn,
    data: Dataset,
    /// Sets evaluated per call, in parallel.
    pub batch: usize,
}

impl CnnEvaluator {
    pub fn new(cnn: Cnn, data: Dataset) -> Self {
        CnnEvaluator { cnn, data, batch: 10 }
    }

    pub fn cnn(&self) -> &Cnn {
        &self.cnn
    }

    pub fn data(&self) -> &Dataset {
        &self.data
    }
}

impl Evaluator for CnnEvaluator {
    // The CNN has no device path yet: a CUDA context computes on the CPU (the same metrics as a
    // CPU context), until `backend::cuda::cnn` is wired in here.
    fn evaluate(&mut self, _ctx: &Context, sets: &[&ParamSet]) -> Result<Vec<Metrics>> {
        self.cnn.evaluate_many(sets, &self.data)
    }
    fn batch(&self) -> usize {
        self.batch.max(1)
    }
    fn evaluate_module_noise(&mut self, _ctx: &Context, noise: &ModuleNoise<'_>) -> Option<Result<Vec<Metrics>>> {
        Some(self.cnn.evaluate_module_noise(
            noise.point,
            &self.data,
            noise.module,
            noise.std,
            noise.seed,
            noise.samples,
        ))
    }
}
