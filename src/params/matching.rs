//! Pairing the tensors of two sets by name, with mismatches named.

use super::ParamSet;
use crate::error::{fail, Result};

/// Checks that `b` has the same weights as `a` (names and shapes; dtypes may differ) and
/// returns, for each weight of `a` in set order, its index in `b`. A mismatch names the first
/// differing tensor.
pub fn match_weights(a: &ParamSet, b: &ParamSet, a_name: &str, b_name: &str) -> Result<Vec<usize>> {
    let mut pairs = vec![usize::MAX; a.tensors.len()];
    for (i, t) in a.tensors.iter().enumerate().filter(|(_, t)| t.is_weight()) {
        let Some(j) = b.tensor_index(&t.name) else {
            fail!(ShapeMismatch, "tensor {:?} of {a_name} is missing from {b_name}", t.name);
        };
        let u = &b.tensors[j];
        if !u.is_weight() {
            fail!(
                ShapeMismatch,
                "tensor {:?} is a weight ({}) in {a_name} but {} in {b_name}",
                t.name,
                t.dtype.name(),
                u.dtype.name()
            );
        }
        if u.shape != t.shape {
            fail!(
                ShapeMismatch,
                "tensor {:?} has shape {:?} in {a_name} but {:?} in {b_name}",
                t.name,
                t.shape,
                u.shape
            );
        }
        pairs[i] = j;
    }
    if let Some(u) = b.tensors.iter().find(|u| u.is_weight() && a.tensor_index(&u.name).is_none()) {
        fail!(ShapeMismatch, "tensor {:?} of {b_name} is missing from {a_name}", u.name);
    }
    Ok(pairs)
}

/// Checks that `out` can receive a result shaped like `a`: it holds every weight of `a` with the
/// same dtype and shape and no weight that `a` lacks. Non-weights of `a` that `out` also holds
/// (same dtype and shape) are paired so that they can be copied; others are skipped, so that a
/// wrapped live model need not wrap its integer buffers. Returns, for each tensor of `a`, its
/// index in `out`.
pub fn match_all(a: &ParamSet, out: &ParamSet, a_name: &str, out_name: &str) -> Result<Vec<Option<usize>>> {
    let mut pairs = Vec::with_capacity(a.tensors.len());
    for t in &a.tensors {
        let Some(j) = out.tensor_index(&t.name) else {
            if t.is_weight() {
                fail!(ShapeMismatch, "tensor {:?} of {a_name} is missing from {out_name}", t.name);
            }
            pairs.push(None);
            continue;
        };
        let u = &out.tensors[j];
        if u.dtype != t.dtype || u.shape != t.shape {
            fail!(
                ShapeMismatch,
                "tensor {:?} is {} {:?} in {a_name} but {} {:?} in {out_name}",
                t.name,
                t.dtype.name(),
                t.shape,
                u.dtype.name(),
                u.shape
            );
        }
        pairs.push(Some(j));
    }
    if let Some(u) = out.tensors.iter().find(|u| u.is_weight() && a.tensor_index(&u.name).is_none()) {
        fail!(ShapeMismatch, "tensor {:?} of {out_name} is missing from {a_name}", u.name);
    }
    Ok(pairs)
}
