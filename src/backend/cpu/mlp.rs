//! CPU twin of `kernels/mlp.cu`; CUDA host code in `backend/cuda/mlp.rs`. The pieces of the
//! built-in MLP's batched perturbed evaluation around its products ([`crate::model::Mlp`] runs
//! the schedule and the products): the noisy copies of one layer, bias and ReLU, and the
//! softmax cross-entropy with the 0-1 error.
//!
//! Rounding against the kernels:
//! - noisy copies ([`noisy_copy`], `noisy_copies_<t>`): here `theta + std z` is computed in f64
//!   with the f64 normals of [`crate::rng`] and rounded once to the storage dtype; the device
//!   computes `fma(sigma, z, theta)` in f32 (f64 for f64 data) with its f32 (f64) normals, which
//!   agree with the host's within a few units in the last place, and rounds that to the storage
//!   dtype. A noisy value can therefore land on the neighbouring storage value (one ulp);
//! - bias and ReLU ([`bias_act`], `bias_act_f32`): `z + bias` in f32, then `max(., 0)`: the same
//!   bits on the same input;
//! - softmax cross-entropy ([`SoftmaxXent`], `softmax_xent_f32`): per row in f64, `max +
//!   ln(sum exp(z - max)) - z[label]` with the sum in class order, and the first arg-max, as
//!   the device; `exp` and `ln` are the C library's here and CUDA's there (each within an ulp or
//!   two), and the rows are summed in order here, in per-block partials there.

use crate::tensor::HostSlice;
use faer::{MatMut, MatRef};

/// The values of `src` plus `std * z`, z the Philox normals of (seed, stream) from `index0`,
/// each rounded once to `src`'s dtype (as adding the noise to a stored tensor does), as f32.
pub(crate) fn noisy_copy(src: HostSlice<'_>, std: f64, seed: u64, stream: u64, index0: u64) -> Vec<f32> {
    let mut z = vec![0f64; src.len()];
    crate::rng::normals_f64(seed, stream, index0, &mut z);
    match src {
        HostSlice::F32(d) => d.iter().zip(&z).map(|(&v, z)| (v as f64 + std * z) as f32).collect(),
        HostSlice::F64(d) => d.iter().zip(&z).map(|(&v, z)| (v + std * z) as f32).collect(),
        HostSlice::F16(d) => {
            d.iter().zip(&z).map(|(v, z)| half::f16::from_f64(v.to_f64() + std * z).to_f32()).collect()
        }
        HostSlice::BF16(d) => {
            d.iter().zip(&z).map(|(v, z)| half::bf16::from_f64(v.to_f64() + std * z).to_f32()).collect()
        }
    }
}

/// `z = act(z + bias)` for the `rows x width` activations `z` (one column per unit, `bias` one
/// value per column), act = ReLU when `relu`, else the identity.
pub(crate) fn bias_act(mut z: MatMut<'_, f32>, bias: &[f32], relu: bool) {
    for (j, &b) in bias.iter().enumerate().take(z.ncols()) {
        for v in z.as_mut().col_mut(j).iter_mut() {
            *v += b;
            if relu && *v < 0.0 {
                *v = 0.0;
            }
        }
    }
}

/// Softmax cross-entropy of one row of logits, and its first arg-max class.
pub(crate) fn row_loss(logits: &[f32], label: usize) -> (f64, usize) {
    let mut best = 0;
    let mut max = f64::NEG_INFINITY;
    for (j, &v) in logits.iter().enumerate() {
        if (v as f64) > max {
            max = v as f64;
            best = j;
        }
    }
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    (max + sum.ln() - logits[label] as f64, best)
}

/// The summed loss and the count of wrong rows seen so far, added row by row in order (so that
/// every way of computing the logits sums the same terms in the same order).
#[derive(Debug, Clone, Default)]
pub(crate) struct SoftmaxXent {
    /// Sum of the rows' cross-entropies (nats).
    pub loss: f64,
    /// Rows whose first arg-max is not the label.
    pub wrong: usize,
}

impl SoftmaxXent {
    /// Adds the rows of `logits` (rows x classes) labelled `labels`; pushes each row's predicted
    /// class onto `pred` when given.
    pub(crate) fn add(&mut self, logits: MatRef<'_, f32>, labels: &[u32], mut pred: Option<&mut Vec<u32>>) {
        let mut row = vec![0f32; logits.ncols()];
        for (i, &label) in labels.iter().enumerate().take(logits.nrows()) {
            for (j, r) in row.iter_mut().enumerate() {
                *r = logits[(i, j)];
            }
            let (l, best) = row_loss(&row, label as usize);
            self.loss += l;
            if best != label as usize {
                self.wrong += 1;
            }
            if let Some(p) = pred.as_deref_mut() {
                p.push(best as u32);
            }
        }
    }
}
