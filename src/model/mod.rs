//! The built-in reference models: a multilayer perceptron (dense layers, ReLU, softmax
//! cross-entropy), enough to produce the study's models and to serve as an evaluator, and a small
//! convolutional network described by a JSON specification ([`cnn`], docs/cnn.md).
//!
//! Parameters live in a [`ParamSet`] with one module per layer: `fc1.weight` (out x in, row
//! major) and `fc1.bias`, then `fc2.*`, ... The last layer gives the logits. Products run through
//! faer's GEMM in f32 (the storage dtype); losses and error rates are summed in f64. Weights of
//! another dtype (a set loaded from a file) are converted to f32 on the way in.

pub mod cnn;

pub use cnn::{Cnn, CnnSpec};

use crate::backend::cpu::mlp::{bias_act, noisy_copy, row_loss, SoftmaxXent};
use crate::backend::{DenseLayer, LayerNoise};
use crate::error::{fail, try_filled, try_with_capacity, Error, Result};
use crate::params::{HostSliceMut, ParamSet};
use crate::tensor::HostSlice;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// A labelled data set: `n` rows of `dim` features (row major) and a class per row.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub x: Vec<f32>,
    pub y: Vec<u32>,
    pub n: usize,
    pub dim: usize,
    pub classes: usize,
}

impl Dataset {
    /// Checks sizes and labels.
    pub fn new(x: Vec<f32>, y: Vec<u32>, dim: usize, classes: usize) -> Result<Dataset> {
        if dim == 0 || classes < 2 {
            fail!(InvalidArgument, "a data set needs dim >= 1 and classes >= 2, got dim {dim}, classes {classes}");
        }
        let n = y.len();
        if x.len() != n * dim {
            fail!(ShapeMismatch, "data set: {} features for {n} labels of dim {dim} (expected {})", x.len(), n * dim);
        }
        if let Some(i) = y.iter().position(|&c| c as usize >= classes) {
            fail!(InvalidArgument, "data set: label {} of row {i} is not below classes = {classes}", y[i]);
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            fail!(NonFinite, "data set: feature {} of row {} is not finite", i % dim, i / dim);
        }
        Ok(Dataset { x, y, n, dim, classes })
    }

    /// Rows `idx` as a new data set.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let mut x = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            x.extend_from_slice(&self.x[i * self.dim..(i + 1) * self.dim]);
        }
        Dataset { x, y: idx.iter().map(|&i| self.y[i]).collect(), n: idx.len(), dim: self.dim, classes: self.classes }
    }

    /// The first `n` rows.
    pub fn head(&self, n: usize) -> Dataset {
        self.subset(&(0..n.min(self.n)).collect::<Vec<_>>())
    }
}

/// Mean loss, error and accuracy of a model on a data set.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Metrics {
    /// Mean softmax cross-entropy (nats).
    pub loss: f64,
    /// Fraction of rows whose arg-max class is wrong (the 0-1 error).
    pub error: f64,
    /// 1 - error.
    pub accuracy: f64,
}

/// Rows per forward pass of an evaluation: big evaluation sets need little memory.
const EVAL_ROWS: usize = 1024;

/// An MLP's architecture: layer widths from the input to the classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mlp {
    sizes: Vec<usize>,
}

/// One layer's weights as f32: `w` is out x in, row major.
struct Layer<'a> {
    w: std::borrow::Cow<'a, [f32]>,
    b: std::borrow::Cow<'a, [f32]>,
}

/// A host f32 set of the given tensors, in order: the model's way to hold its own weights.
pub fn f32_set(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<ParamSet> {
    // Serialise as safetensors and load from the bytes: the one constructor of owned sets.
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            fail!(ShapeMismatch, "tensor {name:?}: shape {shape:?} but {} values", data.len());
        }
        let end = offset + 4 * data.len();
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}));
        offset = end;
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut file = try_with_capacity(8 + text.len() + offset, "the set's tensors")?;
    file.extend_from_slice(&(text.len() as u64).to_le_bytes());
    file.extend_from_slice(&text);
    for (_, _, data) in tensors {
        for v in data {
            file.extend_from_slice(&v.to_le_bytes());
        }
    }
    ParamSet::from_bytes(&file, "model weights")
}

/// The metrics of the rows a [`SoftmaxXent`] has seen.
fn metrics_of(tally: &SoftmaxXent, rows: usize) -> Result<Metrics> {
    if !tally.loss.is_finite() {
        fail!(NonFinite, "the loss is not finite: the weights hold NaN or Inf, or the logits overflow");
    }
    let error = tally.wrong as f64 / rows as f64;
    Ok(Metrics { loss: tally.loss / rows as f64, error, accuracy: 1.0 - error })
}

/// How the learning rate changes from epoch to epoch.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LrSchedule {
    /// `lr` in every epoch.
    #[default]
    Constant,
    /// `lr * factor^(epoch / every)`: multiplied by `factor` every `every` epochs.
    Step { every: usize, factor: f64 },
    /// `lr * (1 + cos(pi * epoch / epochs)) / 2`: from `lr` down towards 0 over the run.
    Cosine,
}

/// Options of [`Mlp::train`] and [`Cnn::train`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Seeds the order in which rows are visited each epoch.
    pub seed: u64,
    /// The learning rate of each epoch (constant by default).
    pub schedule: LrSchedule,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 10,
            batch: 32,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 0.0,
            seed: 0,
            schedule: LrSchedule::Constant,
        }
    }
}

impl TrainOptions {
    /// Checks the options' ranges.
    pub fn check(&self) -> Result<()> {
        // NaN fails every check.
        let lr_ok = self.lr > 0.0 && self.lr.is_finite();
        let decay_ok = self.weight_decay >= 0.0;
        let schedule_ok = match self.schedule {
            LrSchedule::Step { every, factor } => every >= 1 && factor > 0.0 && factor.is_finite(),
            LrSchedule::Constant | LrSchedule::Cosine => true,
        };
        if self.batch == 0 || !lr_ok || !(0.0..1.0).contains(&self.momentum) || !decay_ok || !schedule_ok {
            fail!(
                InvalidArgument,
                "training needs batch >= 1, lr > 0, 0 <= momentum < 1, weight_decay >= 0 and a step schedule with \
                 every >= 1 and factor > 0; got {self:?}"
            );
        }
        Ok(())
    }

    /// The learning rate of epoch `epoch` (from 0).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        match self.schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Step { every, factor } => self.lr * factor.powi((epoch / every.max(1)) as i32),
            LrSchedule::Cosine => {
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / self.epochs.max(1) as f64).cos())
            }
        }
    }
}

/// Writes f32 values into tensor `name` of `p`, rounding to its dtype.
pub(crate) fn store_f32(p: &mut ParamSet, name: &str, src: &[f32]) -> Result<()> {
    let i = p.tensor_index(name).ok_or_else(|| Error::NotFound(format!("no tensor {name:?}")))?;
    match p.tensors_mut()[i].host_mut()? {
        HostSliceMut::F32(d) => d.copy_from_slice(src),
        HostSliceMut::F64(d) => d.iter_mut().zip(src).for_each(|(d, &s)| *d = s as f64),
        HostSliceMut::F16(d) => d.iter_mut().zip(src).for_each(|(d, &s)| *d = half::f16::from_f32(s)),
        HostSliceMut::BF16(d) => d.iter_mut().zip(src).for_each(|(d, &s)| *d = half::bf16::from_f32(s)),
    }
    Ok(())
}

/// Minibatch SGD with momentum and weight decay over `n` rows, shared by the built-in models:
/// each epoch visits the rows in [`permutation`]`(n, seed, epoch)` order in batches of
/// `opts.batch`; `loss_grad(w, rows, grads)` returns the batch's mean loss and writes its
/// gradient (per tensor, the layout of `w`) into `grads`; then `v = momentum v + g +
/// weight_decay w`, `w -= lr_epoch v` element by element. Returns the mean batch loss of each
/// epoch; fails on a non-finite one. `opts` is checked by the caller.
pub(crate) fn sgd(
    w: &mut [Vec<f32>],
    n: usize,
    opts: &TrainOptions,
    mut loss_grad: impl FnMut(&[Vec<f32>], &[usize], &mut [Vec<f32>]) -> f64,
) -> Result<Vec<f64>> {
    let mut grads: Vec<Vec<f32>> = w.iter().map(|v| vec![0f32; v.len()]).collect();
    let mut vel = grads.clone();
    let (mom, wd) = (opts.momentum as f32, opts.weight_decay as f32);
    let mut history = Vec::with_capacity(opts.epochs);
    for epoch in 0..opts.epochs {
        let lr = opts.lr_at(epoch) as f32;
        let order = permutation(n, opts.seed, epoch as u64);
        let mut total = 0.0;
        let mut batches = 0;
        for idx in order.chunks(opts.batch) {
            total += loss_grad(w, idx, &mut grads);
            batches += 1;
            w.par_iter_mut().zip(grads.par_iter()).zip(vel.par_iter_mut()).for_each(|((wt, g), v)| {
                for ((x, &gi), vi) in wt.iter_mut().zip(g).zip(v.iter_mut()) {
                    *vi = mom * *vi + gi + wd * *x;
                    *x -= lr * *vi;
                }
            });
        }
        let mean = total / batches as f64;
        if !mean.is_finite() {
            fail!(
                NonFinite,
                "training diverged in epoch {} (the loss is not finite); lower the learning rate",
                epoch + 1
            );
        }
        history.push(mean);
    }
    Ok(history)
}

/// A seeded permutation of 0..n (Fisher-Yates on Philox words): the same for a seed everywhere.
pub fn permutation(n: usize, seed: u64, stream: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    shuffle(&mut p, seed, stream);
    p
}

/// Permutes `p` in place as [`permutation`] permutes `0..p.len()`.
pub(crate) fn shuffle(p: &mut [usize], seed: u64, stream: u64) {
    for i in (1..p.len()).rev() {
        let w = crate::rng::block_words(seed, stream, i as u64);
        let r = ((w[0] as u64) << 32 | w[1] as u64) as u128;
        let j = ((r * (i as u128 + 1)) >> 64) as usize;
        p.swap(i, j);
    }
}

impl Mlp {
    /// An MLP with `sizes[0]` inputs, hidden widths `sizes[1..k-1]` and `sizes[k-1]` classes.
    pub fn new(sizes: &[usize]) -> Result<Mlp> {
        if sizes.len() < 2 || sizes.contains(&0) {
            fail!(InvalidArgument, "an MLP needs at least an input and an output width, all >= 1; got {sizes:?}");
        }
        if *sizes.last().unwrap() < 2 {
            fail!(InvalidArgument, "an MLP classifier needs at least 2 classes");
        }
        Ok(Mlp { sizes: sizes.to_vec() })
    }

    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }
    pub fn layers(&self) -> usize {
        self.sizes.len() - 1
    }
    pub fn classes(&self) -> usize {
        *self.sizes.last().unwrap()
    }
    /// Module names, `fc1` .. `fcL`.
    pub fn layer_names(&self) -> Vec<String> {
        (1..=self.layers()).map(|l| format!("fc{l}")).collect()
    }

    /// He-normal weights (std sqrt(2 / fan_in)) from Philox stream `layer` under `seed`, zero biases.
    pub fn init(&self, seed: u64) -> Result<ParamSet> {
        let mut t = Vec::new();
        for l in 0..self.layers() {
            let (fi, fo) = (self.sizes[l], self.sizes[l + 1]);
            let name = format!("fc{}.weight", l + 1);
            let Some(count) = fi.checked_mul(fo) else {
                fail!(InvalidArgument, "{name}: {fo} x {fi} values overflow size_t");
            };
            let mut w = try_filled(count, 0f32, &name)?;
            crate::rng::normals_f32(seed, l as u64, 0, &mut w);
            let s = (2.0 / fi as f64).sqrt() as f32;
            w.iter_mut().for_each(|v| *v *= s);
            t.push((name, vec![fo, fi], w));
            t.push((format!("fc{}.bias", l + 1), vec![fo], vec![0f32; fo]));
        }
        f32_set(&t)
    }

    /// Layer `l`'s weight and bias as stored in `p` (any float dtype), shapes checked.
    pub fn stored_layer<'a>(&self, p: &'a ParamSet, l: usize) -> Result<DenseLayer<'a>> {
        let (fi, fo) = (self.sizes[l], self.sizes[l + 1]);
        let get = |suffix: &str, shape: &[usize]| -> Result<HostSlice<'a>> {
            let name = format!("fc{}.{suffix}", l + 1);
            let t = p
                .tensor(&name)
                .ok_or_else(|| Error::NotFound(format!("the MLP needs a tensor {name:?}, which the set lacks")))?;
            if t.shape() != shape {
                fail!(ShapeMismatch, "tensor {name:?} has shape {:?}, the MLP expects {shape:?}", t.shape());
            }
            t.host()
        };
        Ok(DenseLayer { weight: get("weight", &[fo, fi])?, bias: get("bias", &[fo])? })
    }

    /// Every layer as stored in `p`.
    pub fn stored_layers<'a>(&self, p: &'a ParamSet) -> Result<Vec<DenseLayer<'a>>> {
        (0..self.layers()).map(|l| self.stored_layer(p, l)).collect()
    }

    fn layers_of<'a>(&self, p: &'a ParamSet) -> Result<Vec<Layer<'a>>> {
        Ok(self.stored_layers(p)?.into_iter().map(|d| Layer { w: d.weight.to_f32(), b: d.bias.to_f32() }).collect())
    }

    /// Layer `l` on the rows of `input` (n x in): `input W^T + b`, then ReLU below the logits.
    fn dense_forward(&self, l: usize, layer: &Layer<'_>, input: MatRef<'_, f32>) -> faer::Mat<f32> {
        let (fi, fo) = (self.sizes[l], self.sizes[l + 1]);
        let mut z = faer::Mat::<f32>::zeros(input.nrows(), fo);
        let w = MatRef::from_row_major_slice(&layer.w, fo, fi);
        faer::linalg::matmul::matmul(z.as_mut(), Accum::Replace, input, w.transpose(), 1.0f32, Par::Seq);
        bias_act(z.as_mut(), &layer.b, l + 1 < self.layers());
        z
    }

    /// Activations of every layer for rows `x` (n x in): hidden layers after ReLU, then logits;
    /// each n x width, column major.
    fn forward_layers(&self, layers: &[Layer<'_>], x: &[f32], n: usize) -> Vec<faer::Mat<f32>> {
        let mut acts: Vec<faer::Mat<f32>> = Vec::with_capacity(layers.len());
        for (l, layer) in layers.iter().enumerate() {
            let input = match acts.last() {
                Some(h) => h.as_ref(),
                None => MatRef::from_row_major_slice(x, n, self.sizes[0]),
            };
            let z = self.dense_forward(l, layer, input);
            acts.push(z);
        }
        acts
    }

    /// Activations of every layer (`fc1` .. after ReLU, the last = logits) for the rows of
    /// `data`: one row-major `n x width` matrix per layer.
    pub fn activations(&self, p: &ParamSet, data: &Dataset) -> Result<Vec<Vec<f32>>> {
        self.check_data(data)?;
        let layers = self.layers_of(p)?;
        let acts = self.forward_layers(&layers, &data.x, data.n);
        Ok(acts
            .iter()
            .map(|a| {
                let mut out = Vec::with_capacity(a.nrows() * a.ncols());
                for i in 0..a.nrows() {
                    for j in 0..a.ncols() {
                        out.push(a[(i, j)]);
                    }
                }
                out
            })
            .collect())
    }

    /// Checks that `data` fits the MLP (inputs, classes) and is not empty.
    pub fn check_data(&self, data: &Dataset) -> Result<()> {
        if data.dim != self.sizes[0] || data.classes != self.classes() {
            fail!(
                ShapeMismatch,
                "the data set has {} features and {} classes, the MLP {} inputs and {} classes",
                data.dim,
                data.classes,
                self.sizes[0],
                self.classes()
            );
        }
        if data.n == 0 {
            fail!(DegenerateInput, "the data set is empty");
        }
        Ok(())
    }

    /// Metrics and predicted classes of `p` on `data`.
    pub fn evaluate_with_predictions(&self, p: &ParamSet, data: &Dataset) -> Result<(Metrics, Vec<u32>)> {
        self.check_data(data)?;
        let layers = self.layers_of(p)?;
        let mut tally = SoftmaxXent::default();
        let mut pred = Vec::with_capacity(data.n);
        for start in (0..data.n).step_by(EVAL_ROWS) {
            let m = EVAL_ROWS.min(data.n - start);
            let acts = self.forward_layers(&layers, &data.x[start * data.dim..(start + m) * data.dim], m);
            tally.add(acts.last().unwrap().as_ref(), &data.y[start..start + m], Some(&mut pred));
        }
        Ok((metrics_of(&tally, data.n)?, pred))
    }

    /// Metrics of `p` on `data`.
    pub fn evaluate(&self, p: &ParamSet, data: &Dataset) -> Result<Metrics> {
        Ok(self.evaluate_with_predictions(p, data)?.0)
    }

    /// Metrics of K parameter sets on one data set, the sets evaluated in parallel. Results are
    /// in the order of `sets`.
    pub fn evaluate_many(&self, sets: &[&ParamSet], data: &Dataset) -> Result<Vec<Metrics>> {
        sets.par_iter().map(|p| self.evaluate(p, data)).collect()
    }

    /// Metrics of the noisy copies of `p` described by `noise` (module criticality's samples),
    /// on the CPU: the layers below the noisy one are computed once for all copies, the copies
    /// in parallel from there. The results are bit for bit those of writing each copy into a
    /// set and calling [`Mlp::evaluate`]. The pieces around the products are
    /// [`crate::backend::cpu::mlp`], the CPU twin of `kernels/mlp.cu`; the CUDA version of the
    /// whole schedule is `backend::cuda::mlp`.
    pub fn evaluate_layer_noise(&self, p: &ParamSet, data: &Dataset, noise: &LayerNoise) -> Result<Vec<Metrics>> {
        self.check_data(data)?;
        let l = noise.layer;
        if l >= self.layers() {
            fail!(InvalidArgument, "noise on layer {l}, but the MLP has {} layers", self.layers());
        }
        let stored = self.stored_layer(p, l)?;
        noise.check(stored.weight.len(), stored.bias.len())?;
        let layers = self.layers_of(p)?;
        let copies: Vec<Layer<'static>> = (0..noise.draws)
            .into_par_iter()
            .map(|k| {
                let stream = noise.stream0 + k as u64;
                Layer {
                    w: noisy_copy(stored.weight, noise.std, noise.seed, stream, noise.weight_index0).into(),
                    b: noisy_copy(stored.bias, noise.std, noise.seed, stream, noise.bias_index0).into(),
                }
            })
            .collect();
        let mut tallies = vec![SoftmaxXent::default(); noise.draws];
        for start in (0..data.n).step_by(EVAL_ROWS) {
            let m = EVAL_ROWS.min(data.n - start);
            let x = MatRef::from_row_major_slice(&data.x[start * data.dim..(start + m) * data.dim], m, data.dim);
            let mut below: Option<faer::Mat<f32>> = None;
            for (j, layer) in layers.iter().enumerate().take(l) {
                below = Some(self.dense_forward(j, layer, below.as_ref().map_or(x, |h| h.as_ref())));
            }
            let input = below.as_ref().map_or(x, |h| h.as_ref());
            let labels = &data.y[start..start + m];
            copies.par_iter().zip(tallies.par_iter_mut()).for_each(|(copy, tally)| {
                let mut a = self.dense_forward(l, copy, input);
                for (j, layer) in layers.iter().enumerate().skip(l + 1) {
                    a = self.dense_forward(j, layer, a.as_ref());
                }
                tally.add(a.as_ref(), labels, None);
            });
        }
        tallies.iter().map(|t| metrics_of(t, data.n)).collect()
    }

    /// Mean loss and its gradient over rows `idx` of `data`, for the f32 weights `w` (per layer:
    /// weight, bias); the gradient has the same layout.
    fn loss_grad(&self, w: &[Vec<f32>], data: &Dataset, idx: &[usize], grad: &mut [Vec<f32>]) -> f64 {
        let nb = idx.len();
        let mut x = Vec::with_capacity(nb * data.dim);
        for &i in idx {
            x.extend_from_slice(&data.x[i * data.dim..(i + 1) * data.dim]);
        }
        let layers: Vec<Layer<'_>> = (0..self.layers())
            .map(|l| Layer { w: std::borrow::Cow::Borrowed(&w[2 * l]), b: std::borrow::Cow::Borrowed(&w[2 * l + 1]) })
            .collect();
        let acts = self.forward_layers(&layers, &x, nb);
        let c = self.classes();
        // dZ of the logits: (softmax - onehot) / nb.
        let logits = acts.last().unwrap();
        let mut dz = faer::Mat::<f32>::zeros(nb, c);
        let mut loss = 0.0;
        let mut row = vec![0f32; c];
        for i in 0..nb {
            for j in 0..c {
                row[j] = logits[(i, j)];
            }
            let label = data.y[idx[i]] as usize;
            loss += row_loss(&row, label).0;
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
            for j in 0..c {
                let p = (((row[j] - max) as f64).exp() / sum) as f32;
                dz[(i, j)] = (p - if j == label { 1.0 } else { 0.0 }) / nb as f32;
            }
        }
        for l in (0..self.layers()).rev() {
            let (fi, fo) = (self.sizes[l], self.sizes[l + 1]);
            let input = if l == 0 { MatRef::from_row_major_slice(&x, nb, fi) } else { acts[l - 1].as_ref() };
            // dW^T (in x out, column major) has the memory layout of dW (out x in, row major).
            let (gw, rest) = grad.split_at_mut(2 * l + 1);
            let gw = &mut gw[2 * l];
            faer::linalg::matmul::matmul(
                MatMut::from_column_major_slice_mut(gw, fi, fo),
                Accum::Replace,
                input.transpose(),
                dz.as_ref(),
                1.0f32,
                Par::Seq,
            );
            let gb = &mut rest[0];
            for (j, g) in gb.iter_mut().enumerate().take(fo) {
                *g = dz.col(j).iter().sum();
            }
            if l > 0 {
                let mut dh = faer::Mat::<f32>::zeros(nb, fi);
                let wl = MatRef::from_row_major_slice(&w[2 * l], fo, fi);
                faer::linalg::matmul::matmul(dh.as_mut(), Accum::Replace, dz.as_ref(), wl, 1.0f32, Par::Seq);
                let h = &acts[l - 1];
                for j in 0..fi {
                    for i in 0..nb {
                        if h[(i, j)] <= 0.0 {
                            dh[(i, j)] = 0.0;
                        }
                    }
                }
                dz = dh;
            }
        }
        loss / nb as f64
    }

    /// Trains `p` in place by minibatch SGD with momentum on `data`; returns the mean training
    /// loss of each epoch (as seen during the epoch).
    pub fn train(&self, p: &mut ParamSet, data: &Dataset, opts: &TrainOptions) -> Result<Vec<f64>> {
        self.check_data(data)?;
        opts.check()?;
        let mut w: Vec<Vec<f32>> =
            self.layers_of(p)?.into_iter().flat_map(|l| [l.w.into_owned(), l.b.into_owned()]).collect();
        let history = sgd(&mut w, data.n, opts, |w, idx, grad| self.loss_grad(w, data, idx, grad))?;
        self.store(p, &w)?;
        Ok(history)
    }

    /// Writes f32 weights (per layer: weight, bias) into `p`, rounding to its dtypes.
    fn store(&self, p: &mut ParamSet, w: &[Vec<f32>]) -> Result<()> {
        for l in 0..self.layers() {
            for (k, suffix) in ["weight", "bias"].iter().enumerate() {
                store_f32(p, &format!("fc{}.{suffix}", l + 1), &w[2 * l + k])?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize, dim: usize, classes: usize, seed: u64) -> Dataset {
        let mut x = vec![0f32; n * dim];
        crate::rng::normals_f32(seed, 99, 0, &mut x);
        // Labels from a fixed linear rule so that the task is learnable.
        let y = (0..n)
            .map(|i| {
                let r = &x[i * dim..(i + 1) * dim];
                let s: f32 = r.iter().enumerate().map(|(j, v)| v * ((j % 3) as f32 - 1.0)).sum();
                ((s.abs() * 1.7) as usize % classes) as u32
            })
            .collect();
        Dataset::new(x, y, dim, classes).unwrap()
    }

    /// Plain f64 forward: loss of the whole set.
    fn ref_loss(mlp: &Mlp, w: &[Vec<f64>], d: &Dataset, idx: &[usize]) -> f64 {
        let mut total = 0.0;
        for &i in idx {
            let mut h: Vec<f64> = d.x[i * d.dim..(i + 1) * d.dim].iter().map(|&v| v as f64).collect();
            for l in 0..mlp.layers() {
                let (fi, fo) = (mlp.sizes[l], mlp.sizes[l + 1]);
                let mut z = vec![0.0; fo];
                for o in 0..fo {
                    z[o] = w[2 * l + 1][o] + (0..fi).map(|k| w[2 * l][o * fi + k] * h[k]).sum::<f64>();
                    if l + 1 < mlp.layers() {
                        z[o] = z[o].max(0.0);
                    }
                }
                h = z;
            }
            let max = h.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + h.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            total += lse - h[d.y[i] as usize];
        }
        total / idx.len() as f64
    }

    fn weights64(mlp: &Mlp, p: &ParamSet) -> Vec<Vec<f64>> {
        mlp.layers_of(p)
            .unwrap()
            .into_iter()
            .flat_map(|l| [l.w.iter().map(|&v| v as f64).collect(), l.b.iter().map(|&v| v as f64).collect()])
            .collect()
    }

    #[test]
    fn forward_matches_f64_reference() {
        let mlp = Mlp::new(&[7, 5, 3, 4]).unwrap();
        let p = mlp.init(3).unwrap();
        let d = toy(13, 7, 4, 1);
        let m = mlp.evaluate(&p, &d).unwrap();
        let r = ref_loss(&mlp, &weights64(&mlp, &p), &d, &(0..13).collect::<Vec<_>>());
        assert!((m.loss - r).abs() < 1e-5 * r.abs().max(1.0), "{} vs {r}", m.loss);
        assert_eq!(p.modules().iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["fc1", "fc2", "fc3"]);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mlp = Mlp::new(&[5, 6, 3]).unwrap();
        let mut p = mlp.init(5).unwrap();
        // Non-zero biases, so that their gradient is exercised away from the init.
        let mut w: Vec<Vec<f32>> =
            mlp.layers_of(&p).unwrap().into_iter().flat_map(|l| [l.w.into_owned(), l.b.into_owned()]).collect();
        w[1].iter_mut().enumerate().for_each(|(i, v)| *v = 0.1 * i as f32 - 0.2);
        mlp.store(&mut p, &w).unwrap();
        let d = toy(9, 5, 3, 2);
        let idx: Vec<usize> = (0..9).collect();
        let mut g: Vec<Vec<f32>> = w.iter().map(|v| vec![0f32; v.len()]).collect();
        mlp.loss_grad(&w, &d, &idx, &mut g);
        let w64 = weights64(&mlp, &p);
        let h = 1e-5;
        for t in 0..w64.len() {
            for k in 0..w64[t].len() {
                let mut plus = w64.clone();
                plus[t][k] += h;
                let mut minus = w64.clone();
                minus[t][k] -= h;
                let fd = (ref_loss(&mlp, &plus, &d, &idx) - ref_loss(&mlp, &minus, &d, &idx)) / (2.0 * h);
                assert!((fd - g[t][k] as f64).abs() < 1e-4, "tensor {t} elem {k}: fd {fd} vs {}", g[t][k]);
            }
        }
    }

    #[test]
    fn training_reduces_the_loss_and_is_seeded() {
        let mlp = Mlp::new(&[6, 16, 3]).unwrap();
        let d = toy(120, 6, 3, 4);
        let mut p = mlp.init(1).unwrap();
        let before = mlp.evaluate(&p, &d).unwrap();
        let opts = TrainOptions { epochs: 30, batch: 16, lr: 0.05, ..Default::default() };
        let hist = mlp.train(&mut p, &d, &opts).unwrap();
        let after = mlp.evaluate(&p, &d).unwrap();
        assert!(after.loss < 0.7 * before.loss, "{} -> {}", before.loss, after.loss);
        assert!(hist.last().unwrap() < &hist[0]);
        let mut q = mlp.init(1).unwrap();
        mlp.train(&mut q, &d, &opts).unwrap();
        assert_eq!(mlp.evaluate(&q, &d).unwrap(), after);
    }

    #[test]
    fn learning_rate_schedules() {
        let base = TrainOptions { lr: 0.1, epochs: 4, ..Default::default() };
        assert_eq!(base.schedule, LrSchedule::Constant);
        assert!((0..4).all(|e| base.lr_at(e) == 0.1));
        let step = TrainOptions { schedule: LrSchedule::Step { every: 2, factor: 0.5 }, ..base.clone() };
        assert_eq!([step.lr_at(0), step.lr_at(1), step.lr_at(2), step.lr_at(5)], [0.1, 0.1, 0.05, 0.025]);
        let cosine = TrainOptions { schedule: LrSchedule::Cosine, ..base.clone() };
        assert_eq!(cosine.lr_at(0), 0.1);
        assert!((cosine.lr_at(2) - 0.05).abs() < 1e-15);
        assert!(cosine.lr_at(3) < cosine.lr_at(2));
        assert!(TrainOptions { schedule: LrSchedule::Step { every: 1, factor: 0.0 }, ..base.clone() }.check().is_err());
        assert!(TrainOptions { lr: f64::INFINITY, ..base }.check().is_err());
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = permutation(101, 7, 0);
        assert_ne!(p, (0..101).collect::<Vec<_>>());
        p.sort();
        assert_eq!(p, (0..101).collect::<Vec<_>>());
    }
}
