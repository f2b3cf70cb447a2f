//! Weight matching (Ainsworth et al., Git Re-Basin, ICLR 2023): coordinate descent over the
//! permutation groups. Visiting one group with the others' permutations held, the summed inner
//! product `sum_t <A_t, P(B_t)>` is linear in that group's permutation: its weight matrix is
//! `S[i][j] = sum over the group's (tensor, axis) of <A_t slice i, B_t' slice j>` along the axis,
//! with `B_t'` being `B_t` under the other groups' current permutations, and one assignment
//! maximises it. The objective never decreases, so the descent stops.

use super::apply::{axis_permutations, source_indices};
use super::assignment::{solve, Objective};
use super::spec::{PermGroup, PermSpec};
use crate::error::{fail, Result};
use crate::params::ParamSet;
use crate::tensor::HostSlice;
use faer::{Accum, MatRef, Par};

/// How weight matching runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchOptions {
    /// Seeds the order in which each pass visits the groups.
    pub seed: u64,
    /// The most passes over all groups; matching stops earlier after a pass that changed no
    /// group.
    pub max_passes: usize,
}

impl Default for MatchOptions {
    fn default() -> Self {
        MatchOptions { seed: 0, max_passes: 100 }
    }
}

/// The result of weight matching.
#[derive(Debug, Clone, PartialEq)]
pub struct Matching {
    /// Per group of the spec, the unit order for B: aligned unit `i` is B's unit `perms[g][i]`
    /// (input for [`super::apply`]).
    pub perms: Vec<Vec<usize>>,
    /// Passes run (the last one changed nothing when `converged`).
    pub passes: usize,
    /// Whether a full pass left every group as it was (else `max_passes` ran out).
    pub converged: bool,
}

/// Finds the permutations of B's units that best match A's weights (see the module docs). A and B
/// must both fit the spec, with the same shapes for its tensors.
pub fn match_weights(spec: &PermSpec, a: &ParamSet, b: &ParamSet, options: &MatchOptions) -> Result<Matching> {
    let identity: Vec<Vec<usize>> = spec.groups.iter().map(|g| (0..g.size).collect()).collect();
    axis_permutations(spec, a, &identity)?;
    axis_permutations(spec, b, &identity)?;
    for (name, _) in spec.groups.iter().flat_map(|g| &g.axes) {
        let (ta, tb) = (a.tensor(name).expect("checked"), b.tensor(name).expect("checked"));
        if ta.shape() != tb.shape() {
            fail!(ShapeMismatch, "tensor {name:?} has shape {:?} in A but {:?} in B", ta.shape(), tb.shape());
        }
    }
    if options.max_passes == 0 {
        fail!(InvalidArgument, "weight matching needs max_passes >= 1");
    }

    // The tensors the spec touches, as f64, and A's unfoldings per (group, axis entry).
    let values =
        |set: &ParamSet, name: &str| -> Result<Vec<f64>> { Ok(to_f64(set.tensor(name).expect("checked").host()?)) };
    let mut b_values = std::collections::HashMap::new();
    let mut a_unfolded = Vec::with_capacity(spec.groups.len());
    for g in &spec.groups {
        let mut per_axis = Vec::with_capacity(g.axes.len());
        for (name, axis) in &g.axes {
            let shape = a.tensor(name).expect("checked").shape();
            per_axis.push(unfold(&values(a, name)?, shape, *axis));
            if !b_values.contains_key(name.as_str()) {
                b_values.insert(name.as_str(), values(b, name)?);
            }
        }
        a_unfolded.push(per_axis);
    }

    let mut perms = identity;
    let mut passes = 0;
    let mut converged = false;
    while passes < options.max_passes && !converged {
        converged = true;
        for g in crate::model::permutation(spec.groups.len(), options.seed, passes as u64) {
            let group = &spec.groups[g];
            let axis_perms = axis_permutations(spec, b, &perms)?;
            let mut similarity = faer::Mat::<f64>::zeros(group.size, group.size);
            for ((name, axis), a_u) in group.axes.iter().zip(&a_unfolded[g]) {
                let t = b.tensor_index(name).expect("checked");
                let shape = b.tensors()[t].shape();
                // B under the other groups' permutations; this group's own axis stays in B's order.
                let mut perms_here = axis_perms[t].clone();
                perms_here[*axis] = None;
                let src = &b_values[name.as_str()];
                let permuted: Vec<f64> = source_indices(shape, &perms_here).into_iter().map(|i| src[i]).collect();
                let b_u = unfold(&permuted, shape, *axis);
                let rest = a_u.len() / group.size;
                let a_m = MatRef::from_row_major_slice(a_u, group.size, rest);
                let b_m = MatRef::from_row_major_slice(&b_u, group.size, rest);
                faer::linalg::matmul::matmul(similarity.as_mut(), Accum::Add, a_m, b_m.transpose(), 1.0, Par::Seq);
            }
            let weights: Vec<f64> = (0..group.size)
                .flat_map(|i| (0..group.size).map(move |j| (i, j)))
                .map(|(i, j)| similarity[(i, j)])
                .collect();
            let best = best_permutation(group, &weights)?;
            // Keep the current order unless the new one is strictly better: ties cannot cycle.
            if score(&weights, group.size, &best) > score(&weights, group.size, &perms[g]) {
                perms[g] = best;
                converged = false;
            }
        }
        passes += 1;
    }
    Ok(Matching { perms, passes, converged })
}

fn score(weights: &[f64], n: usize, perm: &[usize]) -> f64 {
    perm.iter().enumerate().map(|(i, &j)| weights[i * n + j]).sum()
}

/// The permutation maximising `sum_i weights[i][perm[i]]` among those the group admits: with a
/// partition, the best inner matching for every pair of blocks, then the best matching of blocks.
pub(super) fn best_permutation(group: &PermGroup, weights: &[f64]) -> Result<Vec<usize>> {
    let all: Vec<usize> = (0..group.size).collect();
    best_within(weights, group.size, &all, &all, &group.partition)
}

/// Best matching of `rows` to `cols` (unit indices, equal counts) whose blocks follow `levels`
/// (block counts relative to the whole group, coarse to fine).
fn best_within(weights: &[f64], n: usize, rows: &[usize], cols: &[usize], levels: &[usize]) -> Result<Vec<usize>> {
    let k = rows.len();
    // The first level that splits this range into more than one block.
    let Some(split) = levels.iter().position(|&blocks| n / blocks < k) else {
        let sub: Vec<f64> = rows.iter().flat_map(|&i| cols.iter().map(move |&j| weights[i * n + j])).collect();
        let a = solve(&sub, k, k, Objective::Maximize)?;
        return Ok(a.permutation()?.into_iter().map(|j| cols[j]).collect());
    };
    let width = n / levels[split];
    let blocks = k / width;
    let finer = &levels[split + 1..];
    let mut inner = Vec::with_capacity(blocks * blocks);
    let mut values = Vec::with_capacity(blocks * blocks);
    for r in 0..blocks {
        for c in 0..blocks {
            let (rs, cs) = (&rows[r * width..(r + 1) * width], &cols[c * width..(c + 1) * width]);
            let perm = best_within(weights, n, rs, cs, finer)?;
            values.push(rs.iter().zip(&perm).map(|(&i, &j)| weights[i * n + j]).sum());
            inner.push(perm);
        }
    }
    let outer = solve(&values, blocks, blocks, Objective::Maximize)?.permutation()?;
    Ok(outer.iter().enumerate().flat_map(|(r, &c)| inner[r * blocks + c].clone()).collect())
}

fn to_f64(values: HostSlice<'_>) -> Vec<f64> {
    match values {
        HostSlice::F32(x) => x.iter().map(|&v| v as f64).collect(),
        HostSlice::F64(x) => x.to_vec(),
        HostSlice::F16(x) => x.iter().map(|v| v.to_f64()).collect(),
        HostSlice::BF16(x) => x.iter().map(|v| v.to_f64()).collect(),
    }
}

/// The tensor as a `shape[axis] x rest` row-major matrix: row `r` holds the elements with index
/// `r` on `axis`, the other axes in their order.
fn unfold(values: &[f64], shape: &[usize], axis: usize) -> Vec<f64> {
    let rows = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let mut out = vec![0.0; values.len()];
    for o in 0..outer {
        for r in 0..rows {
            let src = &values[(o * rows + r) * inner..(o * rows + r + 1) * inner];
            out[r * outer * inner + o * inner..r * outer * inner + (o + 1) * inner].copy_from_slice(src);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfold_puts_the_axis_first() {
        // 2 x 3 x 2, unfolded along axis 1: row r = [x[0][r][0], x[0][r][1], x[1][r][0], x[1][r][1]].
        let x: Vec<f64> = (0..12).map(f64::from).collect();
        assert_eq!(unfold(&x, &[2, 3, 2], 1), vec![0., 1., 6., 7., 2., 3., 8., 9., 4., 5., 10., 11.]);
        assert_eq!(unfold(&x, &[2, 3, 2], 0), x);
    }

    #[test]
    fn partitioned_matching_keeps_blocks_and_is_optimal_among_them() {
        // 4 units in 2 blocks of 2; the unconstrained optimum (0->2, 1->0, ...) breaks blocks.
        let n = 4;
        let w = [
            0., 0., 9., 0., //
            9., 0., 0., 0., //
            0., 1., 0., 2., //
            0., 0., 3., 1.,
        ];
        let group = PermGroup { name: "g".into(), size: n, partition: vec![2], axes: Vec::new() };
        let best = best_permutation(&group, &w).unwrap();
        assert!(group.admits(&best));
        // Brute force over the 8 admissible permutations.
        let mut top = f64::NEG_INFINITY;
        for p in permutations(n) {
            if group.admits(&p) {
                top = top.max(score(&w, n, &p));
            }
        }
        assert_eq!(score(&w, n, &best), top);
        assert!(top < 9.0 + 9.0);
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![Vec::new()];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for at in 0..n {
                let mut q = p.clone();
                q.insert(at, n - 1);
                out.push(q);
            }
        }
        out
    }
}
