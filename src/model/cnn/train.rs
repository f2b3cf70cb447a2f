//! Minibatch SGD for the CNN: the models' shared loop ([`crate::model::sgd`]) around the CNN's
//! loss gradient.

use super::graph::Workspace;
use super::Cnn;
use crate::backend::cpu::cnn::xent_grad;
use crate::error::Result;
use crate::model::{sgd, store_f32, Dataset, TrainOptions};
use crate::params::ParamSet;
use rayon::prelude::*;

/// Mean loss of the rows `idx` of `data` and its gradient (set order) into `grads`; the buffers
/// come from `ws`, which keeps them for the next call.
pub(super) fn loss_grad(
    cnn: &Cnn,
    w: &[&[f32]],
    data: &Dataset,
    idx: &[usize],
    grads: &mut [Vec<f32>],
    ws: &mut Workspace,
) -> f64 {
    let nb = idx.len();
    let g = &cnn.graph;
    let gather = |x: &mut [f32]| {
        for (row, &i) in x.chunks_mut(data.dim).zip(idx) {
            row.copy_from_slice(&data.x[i * data.dim..(i + 1) * data.dim]);
        }
    };
    ws.tape.reset_with(g.sizes.len(), gather, nb * data.dim);
    g.forward(w, nb, &mut ws.tape, 0..g.ops.len(), false, &|_| true);
    let classes = cnn.classes();
    let logits = ws.tape.get(cnn.logits_buffer());
    let mut dlogits = ws.dbuf.take(nb * classes);
    let scale = 1.0 / nb as f32;
    let losses: Vec<f64> = dlogits
        .par_chunks_mut(classes)
        .zip(logits.par_chunks(classes))
        .zip(idx.par_iter())
        .map(|((d, z), &i)| xent_grad(z, data.y[i] as usize, scale, d))
        .collect();
    grads.iter_mut().for_each(|v| v.fill(0.0));
    g.backward(w, nb, ws, dlogits, grads);
    losses.iter().sum::<f64>() / nb as f64
}

pub(super) fn train(cnn: &Cnn, p: &mut ParamSet, data: &Dataset, opts: &TrainOptions) -> Result<Vec<f64>> {
    cnn.check_data(data)?;
    opts.check()?;
    let mut w: Vec<Vec<f32>> = cnn.weights_of(p)?.into_iter().map(|c| c.into_owned()).collect();
    let mut ws = Workspace::default();
    // On a worker of rayon's pool: a step's many short parallel loops then start on that worker
    // instead of each waking one from the calling thread (and putting the caller to sleep).
    let history = rayon::scope(|_| {
        sgd(&mut w, data.n, opts, |w, idx, grads| {
            let refs: Vec<&[f32]> = w.iter().map(|v| v.as_slice()).collect();
            loss_grad(cnn, &refs, data, idx, grads, &mut ws)
        })
    })?;
    for (i, (name, _)) in cnn.tensors.iter().enumerate() {
        store_f32(p, name, &w[i])?;
    }
    Ok(history)
}
