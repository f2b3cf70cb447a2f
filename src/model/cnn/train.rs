//! Minibatch SGD with momentum and weight decay for the CNN.

use super::Cnn;
use crate::backend::cpu::cnn::xent_grad;
use crate::error::{fail, Result};
use crate::model::{permutation, store_f32, Dataset, TrainOptions};
use crate::params::ParamSet;
use rayon::prelude::*;

/// Mean loss of the rows `idx` of `data` and its gradient (set order) into `grads`.
pub(super) fn loss_grad(cnn: &Cnn, w: &[&[f32]], data: &Dataset, idx: &[usize], grads: &mut [Vec<f32>]) -> f64 {
    let nb = idx.len();
    let mut x = Vec::with_capacity(nb * data.dim);
    for &i in idx {
        x.extend_from_slice(&data.x[i * data.dim..(i + 1) * data.dim]);
    }
    let g = &cnn.graph;
    let mut tape = g.tape(x);
    g.forward(w, nb, &mut tape, 0..g.ops.len(), false, &|_| true);
    let classes = cnn.classes();
    let logits = tape[cnn.logits_buffer()].as_deref().expect("the forward pass keeps every buffer");
    let mut dlogits = vec![0f32; nb * classes];
    let scale = 1.0 / nb as f32;
    let losses: Vec<f64> = dlogits
        .par_chunks_mut(classes)
        .zip(logits.par_chunks(classes))
        .zip(idx.par_iter())
        .map(|((d, z), &i)| xent_grad(z, data.y[i] as usize, scale, d))
        .collect();
    grads.iter_mut().for_each(|v| v.fill(0.0));
    g.backward(w, nb, &tape, dlogits, grads);
    losses.iter().sum::<f64>() / nb as f64
}

pub(super) fn train(cnn: &Cnn, p: &mut ParamSet, data: &Dataset, opts: &TrainOptions) -> Result<Vec<f64>> {
    cnn.check_data(data)?;
    opts.check()?;
    let mut w: Vec<Vec<f32>> = cnn.weights_of(p)?.into_iter().map(|c| c.into_owned()).collect();
    let mut grads: Vec<Vec<f32>> = w.iter().map(|v| vec![0f32; v.len()]).collect();
    let mut vel = grads.clone();
    let (mom, wd) = (opts.momentum as f32, opts.weight_decay as f32);
    let mut history = Vec::with_capacity(opts.epochs);
    for epoch in 0..opts.epochs {
        let lr = opts.lr_at(epoch) as f32;
        let order = permutation(data.n, opts.seed, epoch as u64);
        let mut total = 0.0;
        let mut batches = 0;
        for idx in order.chunks(opts.batch) {
            let refs: Vec<&[f32]> = w.iter().map(|v| v.as_slice()).collect();
            total += loss_grad(cnn, &refs, data, idx, &mut grads);
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
    for (i, (name, _)) in cnn.tensors.iter().enumerate() {
        store_f32(p, name, &w[i])?;
    }
    Ok(history)
}
