//! The batched evaluation of noisy copies of one module (module criticality's samples).
//!
//! The layers below the module's first layer run once per chunk of rows; each copy then runs
//! from that layer up with its noisy tensors, the copies in parallel, each tallying its own
//! cross-entropy and 0-1 error row by row. Where the module is a single conv (with the GroupNorm
//! after it), the K copies' convs are one GEMM per image over the K stacked filter banks, on one
//! im2col of the image. The chunks of rows and every operation are those of
//! [`Cnn::evaluate`], so each copy's metrics are bit for bit those of evaluating the copy
//! written into a set.

use super::graph::{Step, Tape};
use super::lower::Layer;
use super::{metrics_of, Cnn, EVAL_ROWS};
use crate::backend::cpu::cnn::im2col;
use crate::backend::cpu::cnn::SoftmaxXent;
use crate::backend::cpu::mlp::noisy_copy;
use crate::error::{fail, Result};
use crate::model::{Dataset, Metrics};
use crate::params::ParamSet;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

pub(super) fn evaluate_module_noise(
    cnn: &Cnn,
    p: &ParamSet,
    data: &Dataset,
    module: usize,
    std: f64,
    seed: u64,
    samples: usize,
) -> Result<Vec<Metrics>> {
    cnn.check_data(data)?;
    if !std.is_finite() || std < 0.0 {
        fail!(InvalidArgument, "the noise's standard deviation must be finite and >= 0, got {std}");
    }
    let Some(m) = p.modules().get(module) else {
        fail!(NotFound, "module index {module} is out of range: the set has {} modules", p.modules().len())
    };
    let w = cnn.weights_of(p)?;
    // The module's tensors that the CNN reads (CNN tensor index, set tensor index, offset of the
    // tensor within the module); others take noise that no evaluation sees.
    let mut targets = Vec::new();
    let mut offset = 0u64;
    for &t in &m.tensors {
        let tensor = &p.tensors()[t];
        if let Some(ci) = cnn.tensors.iter().position(|(n, _)| n == tensor.name()) {
            targets.push((ci, t, offset));
        }
        offset += tensor.numel() as u64;
    }
    let stream = |k: usize| ((module as u64) << 32) | k as u64;
    let copies: Vec<Vec<Vec<f32>>> = (0..samples)
        .into_par_iter()
        .map(|k| {
            targets
                .iter()
                .map(|&(_, t, off)| Ok(noisy_copy(p.tensors()[t].host()?, std, seed, stream(k), off)))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    // The first layer that reads a noisy tensor.
    let tensor_layer = cnn.tensor_layers();
    let first = targets.iter().map(|&(ci, _, _)| tensor_layer[ci]).min().unwrap_or(cnn.layers.len());
    let g = &cnn.graph;
    let start_op = g.layer_ops.get(first).map_or(g.ops.len(), |r| r.start);
    let stacked = stacked_conv(cnn, &targets, first, &copies);
    let logits = cnn.logits_buffer();
    let classes = cnn.classes();
    let clean: Vec<&[f32]> = w.iter().map(|c| c.as_ref()).collect();
    let mut tallies = vec![SoftmaxXent::default(); samples];
    for start in (0..data.n).step_by(EVAL_ROWS) {
        let m = EVAL_ROWS.min(data.n - start);
        let mut below = Tape::default();
        below.reset(g.sizes.len(), &data.x[start * data.dim..(start + m) * data.dim]);
        // Below the module: once for all copies; buffers the layers above read are kept.
        g.forward(&clean, m, &mut below, 0..start_op, true, &|b| b == logits);
        let labels = &data.y[start..start + m];
        // The copies' conv outputs, when the module is a single conv: one GEMM for all copies.
        let conv_outs = stacked.as_ref().map(|s| s.run(cnn, &below, m));
        let resume = if stacked.is_some() { start_op + 1 } else { start_op };
        let run_copy = |copy: &Vec<Vec<f32>>, tally: &mut SoftmaxXent, conv_out: Option<Vec<f32>>| {
            let mut wk = clean.clone();
            for (&(ci, _, _), v) in targets.iter().zip(copy) {
                wk[ci] = v;
            }
            let mut tape = below.fork();
            if let Some(out) = conv_out {
                tape.set(g.ops[start_op].dst(), out);
            }
            g.forward(&wk, m, &mut tape, resume..g.ops.len(), true, &|b| b == logits);
            let z = tape.get(logits);
            tally.add(faer::MatRef::from_row_major_slice(z, m, classes), labels, None);
        };
        match conv_outs {
            Some(outs) => copies
                .par_iter()
                .zip(tallies.par_iter_mut())
                .zip(outs.into_par_iter())
                .for_each(|((copy, tally), out)| run_copy(copy, tally, Some(out))),
            None => copies.par_iter().zip(tallies.par_iter_mut()).for_each(|(copy, tally)| run_copy(copy, tally, None)),
        }
    }
    tallies.iter().map(|t| metrics_of(t, data.n)).collect()
}

/// The K copies' filter banks of a module that is a single conv (its GroupNorm may follow it in
/// the module), stacked: `K * out_c x patch`, and their biases.
struct StackedConv {
    op: usize,
    weights: Vec<f32>,
    biases: Option<Vec<Vec<f32>>>,
}

/// The stacked banks when every noisy tensor belongs to the conv layer `first` or to a GroupNorm
/// layer right after it; `None` otherwise.
fn stacked_conv(
    cnn: &Cnn,
    targets: &[(usize, usize, u64)],
    first: usize,
    copies: &[Vec<Vec<f32>>],
) -> Option<StackedConv> {
    let Some(Layer::Conv(conv)) = cnn.layers.get(first) else { return None };
    let gn_after = matches!(cnn.layers.get(first + 1), Some(Layer::GroupNorm(_)));
    let tensor_layer = cnn.tensor_layers();
    if !targets.iter().all(|&(ci, _, _)| tensor_layer[ci] == first || (gn_after && tensor_layer[ci] == first + 1)) {
        return None;
    }
    // Each copy's value of tensor `ci`, noisy where it is a target, else the clean weight.
    let position = |ci: usize| targets.iter().position(|&(t, _, _)| t == ci);
    let wpos = position(conv.weight)?;
    let weights: Vec<f32> = copies.iter().flat_map(|c| c[wpos].iter().copied()).collect();
    let biases = match conv.bias {
        Some(b) => {
            let bpos = position(b)?;
            Some(copies.iter().map(|c| c[bpos].clone()).collect())
        }
        None => None,
    };
    Some(StackedConv { op: cnn.graph.layer_ops[first].start, weights, biases })
}

impl StackedConv {
    /// Each copy's conv output (m images) from the input in `below`.
    fn run(&self, cnn: &Cnn, below: &Tape, m: usize) -> Vec<Vec<f32>> {
        let Step::Conv { conv, geom, src, .. } = &cnn.graph.ops[self.op] else {
            unreachable!("a stacked conv is a conv")
        };
        let x = below.get(*src);
        let (patch, pixels) = (geom.patch(), geom.pixels());
        let out_size = conv.out_c * pixels;
        let k_copies = self.weights.len() / (conv.out_c * patch);
        let in_size = geom.in_c * geom.h * geom.w;
        let bank = MatRef::from_row_major_slice(&self.weights, k_copies * conv.out_c, patch);
        // Per image, the K copies' outputs one after the other.
        let mut per_image = vec![0f32; m * k_copies * out_size];
        per_image.par_chunks_mut(k_copies * out_size).zip(x.par_chunks(in_size)).for_each_init(
            || vec![0f32; if geom.is_pointwise() { 0 } else { patch * pixels }],
            |cols, (y, x)| {
                let b: &[f32] = if geom.is_pointwise() {
                    x
                } else {
                    im2col(geom, x, cols);
                    cols
                };
                faer::linalg::matmul::matmul(
                    MatMut::from_row_major_slice_mut(y, k_copies * conv.out_c, pixels),
                    Accum::Replace,
                    bank,
                    MatRef::from_row_major_slice(b, patch, pixels),
                    1.0f32,
                    Par::Seq,
                );
            },
        );
        (0..k_copies)
            .into_par_iter()
            .map(|k| {
                let mut out = vec![0f32; m * out_size];
                for (i, o) in out.chunks_mut(out_size).enumerate() {
                    o.copy_from_slice(&per_image[(i * k_copies + k) * out_size..][..out_size]);
                    if let Some(b) = &self.biases {
                        for (row, &bv) in o.chunks_mut(pixels).zip(&b[k]) {
                            row.iter_mut().for_each(|v| *v += bv);
                        }
                    }
                }
                out
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::ModuleNoise;

    /// The stacked GEMM gives each copy the bits of its own GEMM, on convs from small to wide
    /// (patches of 9 to 288 rows, 10 copies), so the batched path equals writing each copy.
    #[test]
    fn stacked_conv_modules_take_the_one_gemm_path_and_match_each_copy() {
        let spec = r#"{"input": [3, 10, 9], "classes": 4, "layers": [
            {"type": "conv", "name": "a", "out": 32, "kernel": 3, "padding": 1, "bias": true},
            {"type": "groupnorm", "name": "an", "groups": 8},
            {"type": "relu"},
            {"type": "conv", "name": "b", "out": 64, "kernel": 3, "stride": 2, "padding": 1, "bias": false},
            {"type": "relu"},
            {"type": "conv", "name": "c", "out": 16, "kernel": 1},
            {"type": "global_avgpool"},
            {"type": "dense", "name": "fc", "out": 4}]}"#;
        let cnn = Cnn::from_json(spec).unwrap();
        let p = cnn.init(3).unwrap();
        let n = 40;
        let mut x = vec![0f32; n * 270];
        crate::rng::normals_f32(5, 0, 0, &mut x);
        let data = Dataset::new(x, (0..n as u32).map(|i| i % 4).collect(), 270, 4).unwrap();
        let w = cnn.weights_of(&p).unwrap();
        for module in 0..3 {
            let tensors = &p.modules()[module].tensors;
            let mut offset = 0;
            let targets: Vec<(usize, usize, u64)> = tensors
                .iter()
                .map(|&t| {
                    let o = offset;
                    offset += p.tensors()[t].numel() as u64;
                    (t, t, o)
                })
                .collect();
            let copies: Vec<Vec<Vec<f32>>> =
                (0..10).map(|_| targets.iter().map(|&(t, _, _)| w[t].to_vec()).collect()).collect();
            let first = cnn.layer_modules().iter().position(|m| *m == Some(module)).unwrap();
            assert!(stacked_conv(&cnn, &targets, first, &copies).is_some(), "module {module} is a single conv");
            let got = cnn.evaluate_module_noise(&p, &data, module, 0.02, 8, 10).unwrap();
            let noise = ModuleNoise { point: &p, module, std: 0.02, seed: 8, samples: 10 };
            for (k, m) in got.iter().enumerate() {
                let mut copy = p.try_clone().unwrap();
                noise.add_to(k, &mut copy).unwrap();
                assert_eq!(*m, cnn.evaluate(&copy, &data).unwrap(), "module {module} copy {k}");
            }
        }
    }
}
