//! Activation matching (Ainsworth et al., Git Re-Basin, ICLR 2023, section 3.1; Entezari et al.,
//! ICLR 2022): per permutation group, the Pearson correlation of every unit of A with every unit
//! of B over the same inputs, then one assignment that maximises the summed correlation (with the
//! group's partition, as weight matching). The groups are independent: no descent is needed.
//!
//! The cross products are the CKA accumulator's ([`CkaAccumulator`], one per group, A's units as
//! its x layer and B's as its y layer): streaming over batches, exact in f64 relative to a
//! per-unit shift, on the context's backend.
//!
//! Activations are given per group as an `observations x units` matrix: for a dense layer one row
//! per input, for a conv one row per input and pixel (each pixel is one more sample of the
//! channel); [`units_last`] turns an `[N, units, pixels...]` tensor into that layout.

use super::matching::{best_permutation, Matching};
use super::spec::PermSpec;
use crate::backend::Context;
use crate::cka::{CkaAccumulator, Estimator};
use crate::error::{fail, Result};
use crate::model::{Cnn, Dataset, Mlp};
use crate::params::ParamSet;
use crate::tensor::Matrix;

/// Streams both models' activations, group by group, and matches each group's units once all
/// batches are in.
#[derive(Debug, Clone)]
pub struct ActivationMatcher {
    spec: PermSpec,
    /// One per group: x = A's units, y = B's units.
    moments: Vec<CkaAccumulator>,
    /// Set by an update that failed after some groups took its batch.
    incomplete: bool,
}

impl ActivationMatcher {
    /// A matcher for the groups of `spec` (checked for consistency, not against a set).
    pub fn new(spec: &PermSpec) -> Result<ActivationMatcher> {
        let spec = PermSpec::from_json(&spec.to_json())?;
        let moments =
            spec.groups.iter().map(|_| CkaAccumulator::new(1, 1, Estimator::Biased)).collect::<Result<_>>()?;
        Ok(ActivationMatcher { spec, moments, incomplete: false })
    }

    /// Adds a batch: per group (in spec order), A's and B's activations on the same inputs, each
    /// `observations x group size`, rows in the same order. Shapes are checked before any group
    /// takes the batch; a failure after that (a NaN in the data, say) leaves the matcher
    /// unusable, and later calls say so.
    pub fn update(&mut self, ctx: &Context, a: &[Matrix], b: &[Matrix]) -> Result<()> {
        self.ensure_complete()?;
        let groups = self.spec.groups.len();
        if a.len() != groups || b.len() != groups {
            fail!(
                ShapeMismatch,
                "the spec has {groups} groups, but the batch holds {} of A and {} of B",
                a.len(),
                b.len()
            );
        }
        for (g, group) in self.spec.groups.iter().enumerate() {
            for (who, m) in [("A", &a[g]), ("B", &b[g])] {
                if m.cols() != group.size {
                    fail!(
                        ShapeMismatch,
                        "group {:?} has {} units, but {who}'s activations have {} columns",
                        group.name,
                        group.size,
                        m.cols()
                    );
                }
            }
            if a[g].rows() != b[g].rows() {
                fail!(
                    ShapeMismatch,
                    "group {:?}: A's activations have {} rows (observations), B's {}; both need the same inputs",
                    group.name,
                    a[g].rows(),
                    b[g].rows()
                );
            }
        }
        for (g, group) in self.spec.groups.iter().enumerate() {
            let outcome = self.moments[g].update(ctx, std::slice::from_ref(&a[g]), std::slice::from_ref(&b[g]));
            if let Err(e) = outcome {
                self.incomplete = g > 0;
                return Err(prefixed(e, &group.name));
            }
        }
        Ok(())
    }

    fn ensure_complete(&self) -> Result<()> {
        if self.incomplete {
            fail!(
                InvalidArgument,
                "an earlier update failed after some groups had taken its batch; start a new matcher"
            );
        }
        Ok(())
    }

    /// Per group, the `size x size` row-major correlation of A's unit `i` (row) with B's unit
    /// `j` (column). A unit constant over the data (a dead ReLU) correlates 0 with every unit.
    pub fn correlations(&self) -> Result<Vec<Vec<f64>>> {
        self.ensure_complete()?;
        self.spec.groups.iter().zip(&self.moments).map(|(g, acc)| correlation(acc, g.size, &g.name)).collect()
    }

    /// The permutations of B's units that maximise each group's summed correlation with A's
    /// (`perms[g][i]`: the unit of B that becomes unit `i`, as weight matching gives them).
    pub fn finish(&self) -> Result<Matching> {
        let perms = self
            .spec
            .groups
            .iter()
            .zip(self.correlations()?)
            .map(|(g, c)| best_permutation(g, &c))
            .collect::<Result<_>>()?;
        Ok(Matching { perms, passes: 1, converged: true })
    }
}

fn prefixed(e: crate::Error, group: &str) -> crate::Error {
    use crate::Error as E;
    let p = |m: String| format!("group {group:?}: {m}");
    match e {
        E::NonFinite(m) => E::NonFinite(p(m)),
        E::ShapeMismatch(m) => E::ShapeMismatch(p(m)),
        E::InvalidArgument(m) => E::InvalidArgument(p(m)),
        E::DegenerateInput(m) => E::DegenerateInput(p(m)),
        E::OutOfMemory(m) => E::OutOfMemory(p(m)),
        other => other,
    }
}

/// The correlation matrix from one group's accumulator state (its exported moments: count, the
/// two layers' sums, their squared norms, then per pair (A, A), (B, B), (A, B) the column-major
/// cross product, a scalar and two vectors).
fn correlation(acc: &CkaAccumulator, p: usize, name: &str) -> Result<Vec<f64>> {
    let (shift_len, moments_len) = acc.state_len();
    if acc.count() < 2 {
        fail!(DegenerateInput, "group {name:?}: correlations need at least 2 observations, got {}", acc.count());
    }
    if shift_len == 0 {
        fail!(
            InvalidArgument,
            "group {name:?}: {p} units are too many for activation matching (the cross products would not fit)"
        );
    }
    let mut shift = vec![0.0; shift_len];
    let mut m = vec![0.0; moments_len];
    acc.export(&mut shift, &mut m)?;
    let n = m[0];
    let (sum_a, sum_b) = (&m[1..1 + p], &m[1 + p..1 + 2 * p]);
    let pair = p * p + 1 + 2 * p;
    let first_pair = 1 + 2 * p + 2;
    let gram_a = &m[first_pair..first_pair + p * p];
    let gram_b = &m[first_pair + pair..first_pair + pair + p * p];
    let cross = &m[first_pair + 2 * pair..first_pair + 2 * pair + p * p];
    // Centred sums of squares and products: sum z z' - sum z sum z' / n (z = x - shift).
    let var = |gram: &[f64], sum: &[f64], i: usize| (gram[i * p + i] - sum[i] * sum[i] / n).max(0.0);
    let sd_a: Vec<f64> = (0..p).map(|i| var(gram_a, sum_a, i).sqrt()).collect();
    let sd_b: Vec<f64> = (0..p).map(|j| var(gram_b, sum_b, j).sqrt()).collect();
    let mut out = vec![0.0; p * p];
    for i in 0..p {
        for j in 0..p {
            let denominator = sd_a[i] * sd_b[j];
            if denominator > 0.0 {
                let cov = cross[j * p + i] - sum_a[i] * sum_b[j] / n;
                out[i * p + j] = (cov / denominator).clamp(-1.0, 1.0);
            }
        }
    }
    Ok(out)
}

/// Activation matching on one batch: see [`ActivationMatcher`].
pub fn match_activations(ctx: &Context, spec: &PermSpec, a: &[Matrix], b: &[Matrix]) -> Result<Matching> {
    let mut matcher = ActivationMatcher::new(spec)?;
    matcher.update(ctx, a, b)?;
    matcher.finish()
}

/// An `[n, units, pixels...]` tensor's values (row major, `values.len() = n x units x pixels`)
/// as the `(n x pixels) x units` row-major matrix whose row is one input at one pixel.
pub fn units_last<T: Copy>(values: &[T], n: usize, units: usize) -> Result<Vec<T>> {
    if n == 0 || units == 0 || !values.len().is_multiple_of(n * units) {
        fail!(ShapeMismatch, "{} values are not {n} inputs x {units} units x some pixels", values.len());
    }
    let pixels = values.len() / (n * units);
    if pixels == 1 {
        return Ok(values.to_vec());
    }
    let mut out = Vec::with_capacity(values.len());
    for image in values.chunks_exact(units * pixels) {
        for x in 0..pixels {
            out.extend((0..units).map(|u| image[u * pixels + x]));
        }
    }
    Ok(out)
}

/// Per group of [`PermSpec::for_mlp`], the built-in MLP's hidden activations (after ReLU) on
/// `data`, `n x units`.
pub fn mlp_unit_activations(mlp: &Mlp, p: &ParamSet, data: &Dataset) -> Result<Vec<Vec<f32>>> {
    let mut acts = mlp.activations(p, data)?;
    acts.pop(); // the logits
    Ok(acts)
}

/// Per group of `spec` (the CNN's, from [`PermSpec::for_cnn`]), the activations of its units
/// where the network uses them (after GroupNorm and ReLU; a residual stream at the output of the
/// layer that starts it) on `data`, `(n x pixels) x units`.
pub fn cnn_unit_activations(cnn: &Cnn, spec: &PermSpec, p: &ParamSet, data: &Dataset) -> Result<Vec<Vec<f32>>> {
    let openers: Vec<&str> = spec.groups.iter().map(|g| g.axes[0].0.as_str()).collect();
    let acts = cnn.unit_activations(p, data, &openers)?;
    acts.iter().zip(&spec.groups).map(|(a, g)| units_last(a, data.n, g.size)).collect()
}
