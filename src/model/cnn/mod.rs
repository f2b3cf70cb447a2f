//! The built-in CNN (docs/cnn.md): a small ResNet-like network described by a JSON
//! specification, with GroupNorm rather than BatchNorm.
//!
//! Files: `spec` (the JSON), `lower` (shapes, tensor numbering, modules), `graph` (the layers as
//! operations on activation buffers, forward and backward), `train` (minibatch SGD), `noise`
//! (the batched evaluation of noisy copies of one module). The per-image pieces are
//! [`crate::backend::cpu::cnn`], the CPU twin of `kernels/cnn.cu`.

mod graph;
mod lower;
mod noise;
mod spec;
mod train;

pub use lower::{BasicBlock, ConvLayer, DenseLayer, GroupNormLayer, Layer, Shape};
pub use spec::{CnnSpec, LayerSpec};

use super::{f32_set, metrics_of, Dataset, Metrics, TrainOptions};
use crate::backend::cpu::cnn::SoftmaxXent;
use crate::error::{fail, try_filled, Error, Result};
use crate::params::{Grouping, ParamSet};
use graph::Graph;
use rayon::prelude::*;
use std::borrow::Cow;

/// The safetensors metadata key under which a set carries its CNN's specification.
pub const SPEC_METADATA_KEY: &str = "transferlens.cnn_spec";

/// Images per forward pass of an evaluation: memory stays bounded on big evaluation sets.
pub(crate) const EVAL_ROWS: usize = 256;

/// A CNN's architecture: the specification, lowered.
#[derive(Debug, Clone)]
pub struct Cnn {
    spec: CnnSpec,
    layers: Vec<Layer>,
    layer_modules: Vec<Option<usize>>,
    shapes: Vec<Shape>,
    modules: Vec<String>,
    tensors: Vec<(String, Vec<usize>)>,
    tensor_modules: Vec<usize>,
    graph: Graph,
}

impl Cnn {
    pub fn new(spec: CnnSpec) -> Result<Cnn> {
        let l = lower::lower(&spec)?;
        let graph = Graph::new(Self::input_of(&spec), &l.layers, &l.shapes);
        Ok(Cnn {
            spec,
            layers: l.layers,
            layer_modules: l.layer_modules,
            shapes: l.shapes,
            modules: l.modules,
            tensors: l.tensors,
            tensor_modules: l.tensor_modules,
            graph,
        })
    }

    pub fn from_json(text: &str) -> Result<Cnn> {
        Cnn::new(CnnSpec::from_json(text)?)
    }

    /// The CNN whose specification `p` carries in its metadata (a set made by [`Cnn::init`], or
    /// saved from one).
    pub fn from_metadata(p: &ParamSet) -> Result<Cnn> {
        match p.metadata().get(SPEC_METADATA_KEY) {
            Some(text) => Cnn::from_json(text),
            None => fail!(NotFound, "the set carries no CNN specification (metadata key {SPEC_METADATA_KEY:?})"),
        }
    }

    fn input_of(spec: &CnnSpec) -> Shape {
        let [c, h, w] = spec.input;
        Shape { c, h, w }
    }

    pub fn spec(&self) -> &CnnSpec {
        &self.spec
    }
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }
    /// Per layer, the index of its module (`None` for layers without parameters).
    pub fn layer_modules(&self) -> &[Option<usize>] {
        &self.layer_modules
    }
    pub fn input_shape(&self) -> Shape {
        Self::input_of(&self.spec)
    }
    /// Per layer, the shape of its output for one image.
    pub fn output_shapes(&self) -> &[Shape] {
        &self.shapes
    }
    pub fn classes(&self) -> usize {
        self.spec.classes
    }
    pub fn module_names(&self) -> Vec<String> {
        self.modules.clone()
    }
    /// Tensor names and shapes, in set order.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.tensors.clone()
    }

    /// The grouping that puts each tensor into its CNN module; a loaded set regrouped with it
    /// has the modules of [`Cnn::module_names`].
    pub fn grouping(&self) -> Grouping {
        Grouping::Explicit(
            self.tensors
                .iter()
                .zip(&self.tensor_modules)
                .map(|((t, _), &m)| (t.clone(), self.modules[m].clone()))
                .collect(),
        )
    }

    /// He-normal conv and dense weights (std `sqrt(2 / fan_in)`) from Philox stream = the
    /// tensor's index under `seed`; zero biases; GroupNorm gamma 1, beta 0. The set is grouped
    /// into the CNN's modules and carries the specification in its metadata.
    pub fn init(&self, seed: u64) -> Result<ParamSet> {
        let mut t = Vec::with_capacity(self.tensors.len());
        let mut is_gn_weight = vec![false; self.tensors.len()];
        let mut mark = |gn: &GroupNormLayer| is_gn_weight[gn.weight] = true;
        for l in &self.layers {
            match l {
                Layer::GroupNorm(gn) => mark(gn),
                Layer::Block(b) => {
                    mark(&b.gn1);
                    mark(&b.gn2);
                    if let Some((_, g)) = &b.downsample {
                        mark(g);
                    }
                }
                _ => {}
            }
        }
        for (i, (name, shape)) in self.tensors.iter().enumerate() {
            let count: usize = shape.iter().product();
            let mut v = try_filled(count, 0f32, name)?;
            if is_gn_weight[i] {
                v.fill(1.0);
            } else if shape.len() > 1 {
                crate::rng::normals_f32(seed, i as u64, 0, &mut v);
                let fan_in: usize = shape[1..].iter().product();
                let s = (2.0 / fan_in as f64).sqrt() as f32;
                v.iter_mut().for_each(|x| *x *= s);
            }
            t.push((name.clone(), shape.clone(), v));
        }
        let mut set = f32_set(&t)?;
        set.set_grouping(self.grouping())?;
        set.metadata_mut().insert(SPEC_METADATA_KEY.to_string(), self.spec.to_json());
        Ok(set)
    }

    /// Checks that `data` holds images of the input shape and the CNN's classes, and is not empty.
    pub fn check_data(&self, data: &Dataset) -> Result<()> {
        let s = self.input_shape();
        if data.dim != s.numel() || data.classes != self.classes() {
            fail!(
                ShapeMismatch,
                "the data set has {} features and {} classes, the CNN takes {} x {} x {} = {} features and {} classes",
                data.dim,
                data.classes,
                s.c,
                s.h,
                s.w,
                s.numel(),
                self.classes()
            );
        }
        if data.n == 0 {
            fail!(DegenerateInput, "the data set is empty");
        }
        Ok(())
    }

    /// The weights of `p` as f32 (converted from other dtypes), in set order; names and shapes
    /// checked.
    pub(crate) fn weights_of<'a>(&self, p: &'a ParamSet) -> Result<Vec<Cow<'a, [f32]>>> {
        self.tensors
            .iter()
            .map(|(name, shape)| {
                let t = p
                    .tensor(name)
                    .ok_or_else(|| Error::NotFound(format!("the CNN needs a tensor {name:?}, which the set lacks")))?;
                if t.shape() != shape.as_slice() {
                    fail!(ShapeMismatch, "tensor {name:?} has shape {:?}, the CNN expects {shape:?}", t.shape());
                }
                Ok(t.host()?.to_f32())
            })
            .collect()
    }

    /// The layer that reads each tensor (set order).
    fn tensor_layers(&self) -> Vec<usize> {
        let mut out = vec![0; self.tensors.len()];
        for (l, layer) in self.layers.iter().enumerate() {
            for t in layer.tensors() {
                out[t] = l;
            }
        }
        out
    }

    /// The logits buffer of a tape.
    fn logits_buffer(&self) -> usize {
        *self.graph.layer_out.last().expect("a CNN has layers")
    }

    /// Forward passes over `data` in chunks of [`EVAL_ROWS`] rows, through the first `ops`
    /// operations: `each(start, m, tape)` sees each chunk's tape, which keeps the logits (when
    /// computed) and the buffers `keep` names.
    fn for_chunks(
        &self,
        w: &[&[f32]],
        data: &Dataset,
        ops: usize,
        keep: &dyn Fn(usize) -> bool,
        mut each: impl FnMut(usize, usize, &graph::Tape) -> Result<()>,
    ) -> Result<()> {
        let logits = self.logits_buffer();
        let keep = |b: usize| b == logits || keep(b);
        let mut tape = graph::Tape::default();
        for start in (0..data.n).step_by(EVAL_ROWS) {
            let m = EVAL_ROWS.min(data.n - start);
            tape.reset(self.graph.sizes.len(), &data.x[start * data.dim..(start + m) * data.dim]);
            self.graph.forward(w, m, &mut tape, 0..ops, true, &keep);
            each(start, m, &tape)?;
        }
        Ok(())
    }

    /// Metrics and predicted classes of `p` on `data`.
    pub fn evaluate_with_predictions(&self, p: &ParamSet, data: &Dataset) -> Result<(Metrics, Vec<u32>)> {
        self.check_data(data)?;
        let w = self.weights_of(p)?;
        let w: Vec<&[f32]> = w.iter().map(|c| c.as_ref()).collect();
        let mut tally = SoftmaxXent::default();
        let mut pred = Vec::with_capacity(data.n);
        let logits = self.logits_buffer();
        let classes = self.classes();
        self.for_chunks(&w, data, self.graph.ops.len(), &|_| false, |start, m, tape| {
            let z = tape.get(logits);
            tally.add(faer::MatRef::from_row_major_slice(z, m, classes), &data.y[start..start + m], Some(&mut pred));
            Ok(())
        })?;
        Ok((metrics_of(&tally, data.n)?, pred))
    }

    /// Metrics of `p` on `data`.
    pub fn evaluate(&self, p: &ParamSet, data: &Dataset) -> Result<Metrics> {
        Ok(self.evaluate_with_predictions(p, data)?.0)
    }

    /// Metrics of several sets on one data set, the sets evaluated in parallel; in the order of
    /// `sets`.
    pub fn evaluate_many(&self, sets: &[&ParamSet], data: &Dataset) -> Result<Vec<Metrics>> {
        sets.par_iter().map(|p| self.evaluate(p, data)).collect()
    }

    /// The output of each module's last layer for the rows of `data`, per module: `n x features`
    /// row major, an image's features in NCHW order.
    pub fn activations(&self, p: &ParamSet, data: &Dataset) -> Result<Vec<Vec<f32>>> {
        self.check_data(data)?;
        let w = self.weights_of(p)?;
        let w: Vec<&[f32]> = w.iter().map(|c| c.as_ref()).collect();
        // The buffer of each module's last layer.
        let mut outs = vec![0usize; self.modules.len()];
        for (l, m) in self.layer_modules.iter().enumerate() {
            if let Some(m) = m {
                outs[*m] = self.graph.layer_out[l];
            }
        }
        let mut acts: Vec<Vec<f32>> = outs
            .iter()
            .map(|&b| crate::error::try_with_capacity(data.n * self.graph.sizes[b], "the module activations"))
            .collect::<Result<_>>()?;
        self.for_chunks(&w, data, self.graph.ops.len(), &|b| outs.contains(&b), |_, _, tape| {
            for (a, &b) in acts.iter_mut().zip(&outs) {
                a.extend_from_slice(tape.get(b));
            }
            Ok(())
        })?;
        Ok(acts)
    }

    /// The output of module `module`'s last layer for the rows of `data` (`n x features`, row
    /// major, an image's features in NCHW order): [`Cnn::activations`]`[module]`, bit for bit,
    /// with only the layers up to that one run.
    pub fn module_activations(&self, p: &ParamSet, data: &Dataset, module: usize) -> Result<Vec<f32>> {
        let Some(last) = self.layer_modules.iter().rposition(|m| *m == Some(module)) else {
            fail!(NotFound, "module index {module} is out of range: the CNN has {} modules", self.modules.len())
        };
        self.check_data(data)?;
        let w = self.weights_of(p)?;
        let w: Vec<&[f32]> = w.iter().map(|c| c.as_ref()).collect();
        let out = self.graph.layer_out[last];
        let mut acts = crate::error::try_with_capacity(data.n * self.graph.sizes[out], "the module activations")?;
        self.for_chunks(&w, data, self.graph.layer_ops[last].end, &|b| b == out, |_, _, tape| {
            acts.extend_from_slice(tape.get(out));
            Ok(())
        })?;
        Ok(acts)
    }

    /// The activations of the hidden units that the layer with weight tensor `weight` (an index
    /// into the set's tensors) writes, where the network next uses them: a conv or dense layer's
    /// outputs after the GroupNorm and ReLU layers that follow it, a block's `conv1` after the
    /// block's inner ReLU, a block's downsample at the block's output. `None` for any other tensor.
    fn unit_buffer(&self, weight: usize) -> Option<usize> {
        for (l, layer) in self.layers.iter().enumerate() {
            let after_norm_and_relu = || {
                let last = (l + 1..self.layers.len())
                    .take_while(|&k| matches!(self.layers[k], Layer::GroupNorm(_) | Layer::Relu))
                    .last()
                    .unwrap_or(l);
                self.graph.layer_out[last]
            };
            match layer {
                Layer::Conv(c) if c.weight == weight => return Some(after_norm_and_relu()),
                Layer::Dense(d) if d.weight == weight => return Some(after_norm_and_relu()),
                Layer::Block(b) if b.conv1.weight == weight => {
                    // The block's operations: conv1, then its GroupNorm with the inner ReLU.
                    return Some(self.graph.ops[self.graph.layer_ops[l].start + 1].dst());
                }
                Layer::Block(b) if b.downsample.as_ref().is_some_and(|(ds, _)| ds.weight == weight) => {
                    return Some(self.graph.layer_out[l])
                }
                _ => {}
            }
        }
        None
    }

    /// Per named weight tensor (a conv's, a dense layer's, a block's `conv1` or downsample), the
    /// activations of the units it writes where the network next uses them (see
    /// `unit_buffer`), for the rows of `data`: `n x features` row major, an image's features in
    /// NCHW order. For activation matching (`crate::align`).
    pub fn unit_activations(&self, p: &ParamSet, data: &Dataset, weights: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut buffers = Vec::with_capacity(weights.len());
        for name in weights {
            let tensor = self.tensors.iter().position(|(n, _)| n == name);
            match tensor.and_then(|t| self.unit_buffer(t)) {
                Some(b) => buffers.push(b),
                None => fail!(
                    NotFound,
                    "{name:?} is not the weight of a conv or dense layer (or a block's conv1 or downsample) of the CNN"
                ),
            }
        }
        self.check_data(data)?;
        let w = self.weights_of(p)?;
        let w: Vec<&[f32]> = w.iter().map(|c| c.as_ref()).collect();
        let mut acts: Vec<Vec<f32>> = buffers
            .iter()
            .map(|&b| crate::error::try_with_capacity(data.n * self.graph.sizes[b], "the unit activations"))
            .collect::<Result<_>>()?;
        self.for_chunks(&w, data, self.graph.ops.len(), &|b| buffers.contains(&b), |_, _, tape| {
            for (a, &b) in acts.iter_mut().zip(&buffers) {
                a.extend_from_slice(tape.get(b));
            }
            Ok(())
        })?;
        Ok(acts)
    }

    /// Metrics of the noisy copies of module `module` of `p` (an index into `p.modules()`), as
    /// [`crate::eval::ModuleNoise`] defines them: bit for bit those of writing each copy into a
    /// set and calling [`Cnn::evaluate`]. The layers below the module run once per chunk of rows.
    pub fn evaluate_module_noise(
        &self,
        p: &ParamSet,
        data: &Dataset,
        module: usize,
        std: f64,
        seed: u64,
        samples: usize,
    ) -> Result<Vec<Metrics>> {
        noise::evaluate_module_noise(self, p, data, module, std, seed, samples)
    }

    /// The mean loss of `p` over the rows of `data` and its gradient, per tensor in set order
    /// (f32, the layout of the tensors). Rows run in chunks of a fixed size, and the chunks'
    /// gradients are added in order.
    pub fn loss_gradient(&self, p: &ParamSet, data: &Dataset) -> Result<(f64, Vec<Vec<f32>>)> {
        self.check_data(data)?;
        let w = self.weights_of(p)?;
        let w: Vec<&[f32]> = w.iter().map(|c| c.as_ref()).collect();
        let mut total: Vec<Vec<f32>> = w.iter().map(|v| vec![0f32; v.len()]).collect();
        let mut part = total.clone();
        let mut loss = 0.0;
        let rows: Vec<usize> = (0..data.n).collect();
        let mut ws = graph::Workspace::default();
        for idx in rows.chunks(EVAL_ROWS) {
            let share = idx.len() as f64 / data.n as f64;
            loss += share * train::loss_grad(self, &w, data, idx, &mut part, &mut ws);
            for (t, g) in total.iter_mut().zip(&part) {
                t.iter_mut().zip(g).for_each(|(t, &g)| *t += share as f32 * g);
            }
        }
        Ok((loss, total))
    }

    /// Trains `p` in place by minibatch SGD with momentum and weight decay; returns the mean
    /// training loss of each epoch. The result is the same for a seed on any number of threads.
    pub fn train(&self, p: &mut ParamSet, data: &Dataset, opts: &TrainOptions) -> Result<Vec<f64>> {
        train::train(self, p, data, opts)
    }
}
