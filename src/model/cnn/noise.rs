//! The batched evaluation of noisy copies of one module (module criticality's samples).
//!
//! The layers below the module's first layer run once per chunk of rows; each copy then runs
//! from that layer up with its noisy tensors, the copies in parallel, each tallying its own
//! cross-entropy and 0-1 error row by row. The chunks of rows and every operation are those of
//! [`Cnn::evaluate`], so each copy's metrics are bit for bit those of evaluating the copy
//! written into a set.

use super::{metrics_of, Cnn, EVAL_ROWS};
use crate::backend::cpu::cnn::SoftmaxXent;
use crate::backend::cpu::mlp::noisy_copy;
use crate::error::{fail, Result};
use crate::model::{Dataset, Metrics};
use crate::params::ParamSet;
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
    let logits = cnn.logits_buffer();
    let classes = cnn.classes();
    let clean: Vec<&[f32]> = w.iter().map(|c| c.as_ref()).collect();
    let mut tallies = vec![SoftmaxXent::default(); samples];
    for start in (0..data.n).step_by(EVAL_ROWS) {
        let m = EVAL_ROWS.min(data.n - start);
        let mut below = g.tape(data.x[start * data.dim..(start + m) * data.dim].to_vec());
        // Below the module: once for all copies, keeping what the layers above read.
        let needed_above = |b: usize| g.read_from(b, start_op) || b == logits;
        g.forward(&clean, m, &mut below, 0..start_op, true, &needed_above);
        let labels = &data.y[start..start + m];
        copies.par_iter().zip(tallies.par_iter_mut()).for_each(|(copy, tally)| {
            let mut wk = clean.clone();
            for (&(ci, _, _), v) in targets.iter().zip(copy) {
                wk[ci] = v;
            }
            let mut tape = below.clone();
            g.forward(&wk, m, &mut tape, start_op..g.ops.len(), true, &|b| b == logits);
            let z = tape[logits].as_deref().expect("the logits are kept");
            tally.add(faer::MatRef::from_row_major_slice(z, m, classes), labels, None);
        });
    }
    tallies.iter().map(|t| metrics_of(t, data.n)).collect()
}
