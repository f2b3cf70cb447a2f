//! Lowering a specification: shapes worked out layer by layer, parameters numbered in set order,
//! layers assigned to modules.

use super::spec::{describe, CnnSpec, LayerSpec};
use crate::error::{fail, Result};

/// The shape of one image's activations; a vector is `c x 1 x 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    /// Values per image.
    pub fn numel(&self) -> usize {
        self.c * self.h * self.w
    }
}

/// A convolution: weight `out_c x in_c x kernel x kernel`, optional bias `out_c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvLayer {
    pub weight: usize,
    pub bias: Option<usize>,
    pub in_c: usize,
    pub out_c: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvLayer {
    /// The output size along a side of `n` pixels.
    pub fn out_side(&self, n: usize) -> usize {
        (n + 2 * self.padding - self.kernel) / self.stride + 1
    }
    /// Rows of the im2col matrix: `in_c * kernel * kernel`.
    pub fn patch(&self) -> usize {
        self.in_c * self.kernel * self.kernel
    }
}

/// A GroupNorm: gamma `weight` and beta `bias`, `channels` each.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupNormLayer {
    pub weight: usize,
    pub bias: usize,
    pub channels: usize,
    pub groups: usize,
    pub eps: f64,
}

/// A dense layer: weight `out_f x in_f`, optional bias `out_f`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenseLayer {
    pub weight: usize,
    pub bias: Option<usize>,
    pub in_f: usize,
    pub out_f: usize,
}

/// A residual basic block (docs/cnn.md).
#[derive(Debug, Clone, PartialEq)]
pub struct BasicBlock {
    pub conv1: ConvLayer,
    pub gn1: GroupNormLayer,
    pub conv2: ConvLayer,
    pub gn2: GroupNormLayer,
    pub downsample: Option<(ConvLayer, GroupNormLayer)>,
}

/// One lowered layer, parameters as indices into the set's tensors.
// A block is five layers' worth of indices; the lists of layers are short, so it stays unboxed
// (docs/cnn.md names the variant's payload `BasicBlock`).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    Conv(ConvLayer),
    GroupNorm(GroupNormLayer),
    Relu,
    AvgPool { kernel: usize, stride: usize },
    GlobalAvgPool,
    Flatten,
    Dense(DenseLayer),
    Block(BasicBlock),
}

impl ConvLayer {
    fn tensors(&self) -> impl Iterator<Item = usize> {
        std::iter::once(self.weight).chain(self.bias)
    }
}

impl GroupNormLayer {
    fn tensors(&self) -> impl Iterator<Item = usize> {
        [self.weight, self.bias].into_iter()
    }
}

impl Layer {
    /// The layer's tensors (indices into the set), in set order.
    pub fn tensors(&self) -> Vec<usize> {
        match self {
            Layer::Conv(c) => c.tensors().collect(),
            Layer::GroupNorm(g) => g.tensors().collect(),
            Layer::Dense(d) => std::iter::once(d.weight).chain(d.bias).collect(),
            Layer::Block(b) => {
                let mut t: Vec<usize> =
                    b.conv1.tensors().chain(b.gn1.tensors()).chain(b.conv2.tensors()).chain(b.gn2.tensors()).collect();
                if let Some((c, g)) = &b.downsample {
                    t.extend(c.tensors().chain(g.tensors()));
                }
                t
            }
            Layer::Relu | Layer::AvgPool { .. } | Layer::GlobalAvgPool | Layer::Flatten => Vec::new(),
        }
    }
}

/// The result of lowering a spec.
#[derive(Debug, Clone)]
pub(super) struct Lowered {
    pub layers: Vec<Layer>,
    pub layer_modules: Vec<Option<usize>>,
    pub shapes: Vec<Shape>,
    pub modules: Vec<String>,
    /// Tensor names and shapes, in set order.
    pub tensors: Vec<(String, Vec<usize>)>,
    /// The module of each tensor.
    pub tensor_modules: Vec<usize>,
}

struct Builder {
    tensors: Vec<(String, Vec<usize>)>,
    tensor_modules: Vec<usize>,
    module: usize,
}

impl Builder {
    fn tensor(&mut self, name: String, shape: Vec<usize>) -> Result<usize> {
        if self.tensors.iter().any(|(n, _)| *n == name) {
            fail!(InvalidArgument, "CNN spec: the tensor name {name:?} appears twice; give the layers distinct names");
        }
        self.tensors.push((name, shape));
        self.tensor_modules.push(self.module);
        Ok(self.tensors.len() - 1)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        what: &str,
        name: &str,
        in_s: Shape,
        out: usize,
        k: usize,
        s: usize,
        p: usize,
        bias: bool,
    ) -> Result<(ConvLayer, Shape)> {
        if in_s.h + 2 * p < k || in_s.w + 2 * p < k {
            fail!(
                InvalidArgument,
                "CNN spec: {what}: field \"kernel\" ({k}) is larger than the padded input {} x {} (padding {p})",
                in_s.h + 2 * p,
                in_s.w + 2 * p
            );
        }
        let weight = self.tensor(format!("{name}.weight"), vec![out, in_s.c, k, k])?;
        let bias = if bias { Some(self.tensor(format!("{name}.bias"), vec![out])?) } else { None };
        let conv = ConvLayer { weight, bias, in_c: in_s.c, out_c: out, kernel: k, stride: s, padding: p };
        let shape = Shape { c: out, h: conv.out_side(in_s.h), w: conv.out_side(in_s.w) };
        Ok((conv, shape))
    }

    fn groupnorm(&mut self, what: &str, name: &str, c: usize, groups: usize, eps: f64) -> Result<GroupNormLayer> {
        if !c.is_multiple_of(groups) {
            fail!(InvalidArgument, "CNN spec: {what}: field \"groups\" ({groups}) does not divide the {c} channels");
        }
        let weight = self.tensor(format!("{name}.weight"), vec![c])?;
        let bias = self.tensor(format!("{name}.bias"), vec![c])?;
        Ok(GroupNormLayer { weight, bias, channels: c, groups, eps })
    }
}

/// Lowers `spec`, checking every shape.
pub(super) fn lower(spec: &CnnSpec) -> Result<Lowered> {
    let [c, h, w] = spec.input;
    let mut shape = Shape { c, h, w };
    let mut is_vector = false;
    let mut b = Builder { tensors: Vec::new(), tensor_modules: Vec::new(), module: 0 };
    let mut modules: Vec<String> = Vec::new();
    let mut layers = Vec::new();
    let mut layer_modules = Vec::new();
    let mut shapes = Vec::new();
    let mut last_module: Option<usize> = None;
    for (i, l) in spec.layers.iter().enumerate() {
        let what = describe(i, l.kind(), l.name());
        if matches!(
            l,
            LayerSpec::Conv { .. }
                | LayerSpec::AvgPool { .. }
                | LayerSpec::Block { .. }
                | LayerSpec::GlobalAvgPool
                | LayerSpec::Flatten
        ) && is_vector
        {
            fail!(InvalidArgument, "CNN spec: {what}: the input is a vector (after global_avgpool, flatten or dense), this layer needs an image");
        }
        let module = match l.name() {
            None => None,
            Some(name) => {
                let module_name = match (l.module(), l, last_module) {
                    (Some(m), _, _) => m.to_string(),
                    (None, LayerSpec::GroupNorm { .. }, Some(prev)) => modules[prev].clone(),
                    (None, _, _) => name.to_string(),
                };
                let k = match modules.iter().position(|m| *m == module_name) {
                    Some(k) => k,
                    None => {
                        modules.push(module_name);
                        modules.len() - 1
                    }
                };
                b.module = k;
                last_module = Some(k);
                Some(k)
            }
        };
        let layer = match l {
            LayerSpec::Conv { name, out, kernel, stride, padding, bias, .. } => {
                let (conv, s) = b.conv(&what, name, shape, *out, *kernel, *stride, *padding, *bias)?;
                shape = s;
                Layer::Conv(conv)
            }
            LayerSpec::GroupNorm { name, groups, eps, .. } => {
                Layer::GroupNorm(b.groupnorm(&what, name, shape.c, *groups, *eps)?)
            }
            LayerSpec::Relu => Layer::Relu,
            LayerSpec::AvgPool { kernel, stride } => {
                if *kernel > shape.h || *kernel > shape.w {
                    fail!(
                        InvalidArgument,
                        "CNN spec: {what}: field \"kernel\" ({kernel}) is larger than the input {} x {}",
                        shape.h,
                        shape.w
                    );
                }
                shape = Shape { c: shape.c, h: (shape.h - kernel) / stride + 1, w: (shape.w - kernel) / stride + 1 };
                Layer::AvgPool { kernel: *kernel, stride: *stride }
            }
            LayerSpec::GlobalAvgPool => {
                shape = Shape { c: shape.c, h: 1, w: 1 };
                is_vector = true;
                Layer::GlobalAvgPool
            }
            LayerSpec::Flatten => {
                shape = Shape { c: shape.numel(), h: 1, w: 1 };
                is_vector = true;
                Layer::Flatten
            }
            LayerSpec::Dense { name, out, bias, .. } => {
                if !is_vector {
                    fail!(
                        InvalidArgument,
                        "CNN spec: {what}: the input is an image; put flatten or global_avgpool before a dense layer"
                    );
                }
                let weight = b.tensor(format!("{name}.weight"), vec![*out, shape.c])?;
                let bias = if *bias { Some(b.tensor(format!("{name}.bias"), vec![*out])?) } else { None };
                let d = DenseLayer { weight, bias, in_f: shape.c, out_f: *out };
                shape = Shape { c: *out, h: 1, w: 1 };
                Layer::Dense(d)
            }
            LayerSpec::Block { name, out, stride, groups, eps, .. } => {
                let input = shape;
                let (conv1, s1) = b.conv(&what, &format!("{name}.conv1"), input, *out, 3, *stride, 1, false)?;
                let gn1 = b.groupnorm(&what, &format!("{name}.gn1"), *out, *groups, *eps)?;
                let (conv2, s2) = b.conv(&what, &format!("{name}.conv2"), s1, *out, 3, 1, 1, false)?;
                let gn2 = b.groupnorm(&what, &format!("{name}.gn2"), *out, *groups, *eps)?;
                let downsample = if *stride != 1 || input.c != *out {
                    let (ds, _) = b.conv(&what, &format!("{name}.downsample.0"), input, *out, 1, *stride, 0, false)?;
                    let dg = b.groupnorm(&what, &format!("{name}.downsample.1"), *out, *groups, *eps)?;
                    Some((ds, dg))
                } else {
                    None
                };
                shape = s2;
                Layer::Block(BasicBlock { conv1, gn1, conv2, gn2, downsample })
            }
        };
        if shape.numel() == 0 {
            fail!(InvalidArgument, "CNN spec: {what}: the output is empty");
        }
        layers.push(layer);
        layer_modules.push(module);
        shapes.push(shape);
    }
    if !is_vector || shape.c != spec.classes {
        let i = spec.layers.len() - 1;
        let l = &spec.layers[i];
        fail!(
            InvalidArgument,
            "CNN spec: {}: the last layer must give a vector of the {} classes, it gives {} x {} x {}{}",
            describe(i, l.kind(), l.name()),
            spec.classes,
            shape.c,
            shape.h,
            shape.w,
            if is_vector { "" } else { " (an image)" }
        );
    }
    Ok(Lowered { layers, layer_modules, shapes, modules, tensors: b.tensors, tensor_modules: b.tensor_modules })
}
