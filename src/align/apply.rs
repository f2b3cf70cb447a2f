//! Rewriting a set in another unit order: every tensor of the spec gathered along its permuted
//! axes, byte for byte (a permutation only moves values, so any dtype is exact).

use super::spec::PermSpec;
use crate::error::{fail, Result};
use crate::params::ParamSet;

/// For each tensor of `set`, per axis, the permutation of the group that owns it (`None`: the
/// axis is not permuted). Checks the spec against the set and the permutations against the
/// spec.
pub(crate) fn axis_permutations<'p>(
    spec: &PermSpec,
    set: &ParamSet,
    perms: &'p [Vec<usize>],
) -> Result<Vec<Vec<Option<&'p [usize]>>>> {
    spec.check(set)?;
    if perms.len() != spec.groups.len() {
        fail!(InvalidArgument, "{} permutations for a spec of {} groups", perms.len(), spec.groups.len());
    }
    let mut per_tensor: Vec<Vec<Option<&[usize]>>> =
        set.tensors().iter().map(|t| vec![None; t.shape().len()]).collect();
    for (g, perm) in spec.groups.iter().zip(perms) {
        if !g.admits(perm) {
            fail!(
                InvalidArgument,
                "the permutation given for group {:?} is not a permutation of its {} units that keeps its blocks {:?}",
                g.name,
                g.size,
                g.partition
            );
        }
        for (name, axis) in &g.axes {
            let t = set.tensor_index(name).expect("checked by spec.check");
            per_tensor[t][*axis] = Some(perm.as_slice());
        }
    }
    Ok(per_tensor)
}

/// For each element of a tensor of `shape` rewritten with `perms` (per axis; `None` keeps the
/// axis), the flat index of the element it takes: `out[i0, .., ik] = in[p0[i0], .., pk[ik]]`.
pub(crate) fn source_indices(shape: &[usize], perms: &[Option<&[usize]>]) -> Vec<usize> {
    let numel: usize = shape.iter().product();
    // offsets[k][i]: the source offset contributed by index i on axis k.
    let mut stride = 1;
    let mut offsets = vec![Vec::new(); shape.len()];
    for k in (0..shape.len()).rev() {
        offsets[k] = (0..shape[k]).map(|i| perms[k].map_or(i, |p| p[i]) * stride).collect();
        stride *= shape[k];
    }
    let mut out = Vec::with_capacity(numel);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..numel {
        out.push(index.iter().zip(&offsets).map(|(&i, o)| o[i]).sum());
        for k in (0..shape.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    out
}

/// `b` rewritten in the unit order `perms` (one per group of `spec`; aligned unit `i` of a group
/// is `b`'s unit `perms[g][i]`), as a new set with `b`'s metadata and modules. Tensors outside
/// the spec ([`PermSpec::untouched`]) are copied as they are.
pub fn apply(spec: &PermSpec, b: &ParamSet, perms: &[Vec<usize>]) -> Result<ParamSet> {
    let axis_perms = axis_permutations(spec, b, perms)?;
    let mut out = b.try_clone()?;
    for (t, axes) in out.tensors_mut().iter_mut().zip(&axis_perms) {
        if t.numel() == 0 || axes.iter().all(Option::is_none) {
            continue;
        }
        let width = t.nbytes() / t.numel().max(1);
        let sources = source_indices(t.shape(), axes);
        let bytes = t.bytes_mut()?;
        let original = bytes.to_vec();
        for (dst, &src) in bytes.chunks_exact_mut(width).zip(&sources) {
            dst.copy_from_slice(&original[src * width..(src + 1) * width]);
        }
    }
    Ok(out)
}

/// The inverse of each permutation: applying `perms` then `invert(perms)` gives the set back.
pub fn invert(perms: &[Vec<usize>]) -> Vec<Vec<usize>> {
    perms
        .iter()
        .map(|p| {
            let mut inv = vec![0; p.len()];
            for (i, &j) in p.iter().enumerate() {
                inv[j] = i;
            }
            inv
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_indices_permute_each_axis() {
        // A 2 x 3 tensor, rows swapped and columns rotated.
        let rows = [1, 0];
        let cols = [2, 0, 1];
        let idx = source_indices(&[2, 3], &[Some(&rows), Some(&cols)]);
        assert_eq!(idx, vec![5, 3, 4, 2, 0, 1]);
        assert_eq!(source_indices(&[2, 3], &[None, None]), (0..6).collect::<Vec<_>>());
    }
}
