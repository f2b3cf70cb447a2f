//! Pairing the tensors of two checkpoints whose names or tensor sets differ: name prefixes
//! stripped on either side, tensors excluded by pattern, and (on request) only the tensors both
//! hold compared, everything else listed as left out with its reason.
//!
//! A [`Pairing`] is computed from the two tensor lists alone (names, dtypes, shapes), so that it
//! serves sets in memory ([`paired_sets`]) and mapped checkpoints streamed one tensor pair at a
//! time ([`super::checkpoint::paired_distance`]) alike. Without `only_shared`, any difference
//! is an error that names the differing tensors (the first [`MAX_NAMED`] and a count).

use super::{Grouping, ParamSet, Tensor, TensorDType};
use crate::error::{fail, Error, Result};
use std::collections::HashMap;

/// How many differing tensors an error names before it gives a count of the rest.
pub const MAX_NAMED: usize = 20;

/// How the tensors of checkpoint A are matched to those of checkpoint B.
#[derive(Debug, Clone, Default)]
pub struct PairingOptions {
    /// Prefixes removed from A's names before matching; the first that a name starts with is
    /// removed (once). Names without any of them are kept as they are.
    pub strip_prefix_a: Vec<String>,
    /// The same for B's names.
    pub strip_prefix_b: Vec<String>,
    /// Pair the weights present in both with equal shapes, and list every other weight as left
    /// out instead of failing.
    pub only_shared: bool,
    /// Tensors whose name (after stripping) matches any of these are left out on both sides.
    pub exclude: Vec<regex::Regex>,
}

/// One tensor of a checkpoint, as the pairing sees it.
#[derive(Debug, Clone, Copy)]
pub struct TensorInfo<'a> {
    pub name: &'a str,
    pub dtype: TensorDType,
    pub shape: &'a [usize],
}

impl<'a> From<&'a Tensor> for TensorInfo<'a> {
    fn from(t: &'a Tensor) -> Self {
        TensorInfo { name: t.name(), dtype: t.dtype(), shape: t.shape() }
    }
}

/// Why a tensor takes no part in the figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftOutReason {
    /// B holds no tensor of this (stripped) name.
    MissingInB,
    /// A holds no tensor of this (stripped) name.
    MissingInA,
    /// Both hold it, with different shapes.
    ShapeDiffers { a: Vec<usize>, b: Vec<usize> },
    /// A weight (F32, F64, F16, BF16) on one side, another dtype on the other.
    DtypeDiffers { a: String, b: String },
    /// Not a weight on either side (an integer counter, say): carried through, never compared.
    NotAWeight { dtype: String },
    /// Its name matches this `exclude` pattern.
    Excluded { pattern: String },
}

impl LeftOutReason {
    /// Whether the tensor differs between the checkpoints (an error without `only_shared`), as
    /// opposed to being left out by rule (not a weight, excluded).
    pub fn is_mismatch(&self) -> bool {
        matches!(
            self,
            LeftOutReason::MissingInA
                | LeftOutReason::MissingInB
                | LeftOutReason::ShapeDiffers { .. }
                | LeftOutReason::DtypeDiffers { .. }
        )
    }

    /// A short code: `missing_in_a`, `missing_in_b`, `shape_differs`, `dtype_differs`,
    /// `not_a_weight`, `excluded`.
    pub fn code(&self) -> &'static str {
        match self {
            LeftOutReason::MissingInB => "missing_in_b",
            LeftOutReason::MissingInA => "missing_in_a",
            LeftOutReason::ShapeDiffers { .. } => "shape_differs",
            LeftOutReason::DtypeDiffers { .. } => "dtype_differs",
            LeftOutReason::NotAWeight { .. } => "not_a_weight",
            LeftOutReason::Excluded { .. } => "excluded",
        }
    }
}

impl std::fmt::Display for LeftOutReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeftOutReason::MissingInB => write!(f, "missing in B"),
            LeftOutReason::MissingInA => write!(f, "missing in A"),
            LeftOutReason::ShapeDiffers { a, b } => write!(f, "shape differs: {a:?} in A, {b:?} in B"),
            LeftOutReason::DtypeDiffers { a, b } => write!(f, "dtype differs: {a} in A, {b} in B"),
            LeftOutReason::NotAWeight { dtype } => write!(f, "not a weight ({dtype})"),
            LeftOutReason::Excluded { pattern } => write!(f, "excluded by {pattern:?}"),
        }
    }
}

/// A tensor left out of the figures. `name` is the name after stripping; `a` and `b` are the
/// indices (into each side's tensor list) of the tensor where that side holds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    pub name: String,
    pub a: Option<usize>,
    pub b: Option<usize>,
    pub reason: LeftOutReason,
}

/// A weight of A paired with a weight of B: `name` is the shared name after stripping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPair {
    pub name: String,
    pub a: usize,
    pub b: usize,
}

/// The result of pairing: the pairs in A's order, then everything left out (A's tensors in
/// A's order, then B's own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pairing {
    pub pairs: Vec<TensorPair>,
    pub left_out: Vec<LeftOut>,
}

impl Pairing {
    /// The weights of A that are not paired (left out, with a tensor in A): what an
    /// interpolation copies from A unchanged.
    pub fn unpaired_weights_of_a<'s>(&'s self, a: &'s [TensorInfo<'_>]) -> impl Iterator<Item = &'s LeftOut> + 's {
        self.left_out.iter().filter(move |l| l.a.is_some_and(|i| a[i].dtype.weight().is_some()))
    }

    /// The same pairing seen from the other side: A and B (indices and reasons) exchanged.
    pub fn swapped(&self) -> Pairing {
        let swap = |r: &LeftOutReason| match r {
            LeftOutReason::MissingInA => LeftOutReason::MissingInB,
            LeftOutReason::MissingInB => LeftOutReason::MissingInA,
            LeftOutReason::ShapeDiffers { a, b } => LeftOutReason::ShapeDiffers { a: b.clone(), b: a.clone() },
            LeftOutReason::DtypeDiffers { a, b } => LeftOutReason::DtypeDiffers { a: b.clone(), b: a.clone() },
            other => other.clone(),
        };
        Pairing {
            pairs: self.pairs.iter().map(|p| TensorPair { name: p.name.clone(), a: p.b, b: p.a }).collect(),
            left_out: self
                .left_out
                .iter()
                .map(|l| LeftOut { name: l.name.clone(), a: l.b, b: l.a, reason: swap(&l.reason) })
                .collect(),
        }
    }

    /// The module of each pair under `grouping`, applied to the stripped names: module names in
    /// order of first appearance, and for each the indices (into `pairs`) of its pairs.
    pub fn modules(&self, grouping: &Grouping) -> Result<Vec<(String, Vec<usize>)>> {
        grouping.validate()?;
        let mut modules: Vec<(String, Vec<usize>)> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (k, p) in self.pairs.iter().enumerate() {
            let m = grouping.module_of(&p.name)?;
            match by_name.get(m.as_ref()) {
                Some(&i) => modules[i].1.push(k),
                None => {
                    by_name.insert(m.to_string(), modules.len());
                    modules.push((m.into_owned(), vec![k]));
                }
            }
        }
        Ok(modules)
    }
}

/// `name` without the first of `prefixes` that it starts with.
fn strip<'n>(name: &'n str, prefixes: &[String]) -> &'n str {
    prefixes.iter().find_map(|p| name.strip_prefix(p.as_str())).unwrap_or(name)
}

/// Stripped names of one side, checked to stay distinct and non-empty.
fn stripped<'n>(tensors: &[TensorInfo<'n>], prefixes: &[String], side: &str) -> Result<HashMap<&'n str, usize>> {
    let mut index = HashMap::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let s = strip(t.name, prefixes);
        if s.is_empty() {
            fail!(InvalidArgument, "stripping a prefix from {:?} of {side} leaves an empty name", t.name);
        }
        if let Some(j) = index.insert(s, i) {
            fail!(
                InvalidArgument,
                "{:?} and {:?} of {side} both become {s:?} once the prefixes are stripped",
                tensors[j].name,
                t.name
            );
        }
    }
    Ok(index)
}

/// Pairs the tensors of A and B (`a_name`, `b_name` name them in messages). See the module docs.
pub fn pair_tensors(
    a: &[TensorInfo<'_>],
    b: &[TensorInfo<'_>],
    opts: &PairingOptions,
    a_name: &str,
    b_name: &str,
) -> Result<Pairing> {
    let b_index = stripped(b, &opts.strip_prefix_b, b_name)?;
    let a_index = stripped(a, &opts.strip_prefix_a, a_name)?;
    let excluded = |name: &str| opts.exclude.iter().find(|r| r.is_match(name)).map(|r| r.as_str().to_string());
    let mut out = Pairing::default();
    for (i, t) in a.iter().enumerate() {
        let name = strip(t.name, &opts.strip_prefix_a);
        let j = b_index.get(name).copied();
        let left = |reason| LeftOut { name: name.to_string(), a: Some(i), b: j, reason };
        if let Some(pattern) = excluded(name) {
            out.left_out.push(left(LeftOutReason::Excluded { pattern }));
            continue;
        }
        let u = j.map(|j| &b[j]);
        match (t.dtype.weight(), u.map(|u| u.dtype.weight())) {
            (None, None) | (None, Some(None)) => {
                out.left_out.push(left(LeftOutReason::NotAWeight { dtype: t.dtype.name() }));
            }
            (Some(_), None) => out.left_out.push(left(LeftOutReason::MissingInB)),
            (Some(_), Some(None)) | (None, Some(Some(_))) => {
                let b_dtype = u.map(|u| u.dtype.name()).unwrap_or_default();
                out.left_out.push(left(LeftOutReason::DtypeDiffers { a: t.dtype.name(), b: b_dtype }));
            }
            (Some(_), Some(Some(_))) => {
                let (u, j) = (u.expect("matched"), j.expect("matched"));
                if u.shape != t.shape {
                    out.left_out.push(left(LeftOutReason::ShapeDiffers { a: t.shape.to_vec(), b: u.shape.to_vec() }));
                } else {
                    out.pairs.push(TensorPair { name: name.to_string(), a: i, b: j });
                }
            }
        }
    }
    for (j, u) in b.iter().enumerate() {
        let name = strip(u.name, &opts.strip_prefix_b);
        if a_index.contains_key(name) {
            continue;
        }
        let reason = if let Some(pattern) = excluded(name) {
            LeftOutReason::Excluded { pattern }
        } else if u.dtype.weight().is_some() {
            LeftOutReason::MissingInA
        } else {
            LeftOutReason::NotAWeight { dtype: u.dtype.name() }
        };
        out.left_out.push(LeftOut { name: name.to_string(), a: None, b: Some(j), reason });
    }
    if !opts.only_shared {
        let differing: Vec<&LeftOut> = out.left_out.iter().filter(|l| l.reason.is_mismatch()).collect();
        if !differing.is_empty() {
            let named: Vec<String> =
                differing.iter().take(MAX_NAMED).map(|l| format!("{:?} ({})", l.name, l.reason)).collect();
            let more = match differing.len().saturating_sub(MAX_NAMED) {
                0 => String::new(),
                n => format!(", and {n} more"),
            };
            return Err(Error::ShapeMismatch(format!(
                "A = {a_name} and B = {b_name} hold different weights ({} differ; --only-shared compares the \
                 ones both hold, --strip-prefix-a/-b and --exclude adjust the names): {}{more}",
                differing.len(),
                named.join("; ")
            )));
        }
    }
    Ok(out)
}

/// The pairing of two sets in memory.
pub fn pair_sets(a: &ParamSet, b: &ParamSet, opts: &PairingOptions, a_name: &str, b_name: &str) -> Result<Pairing> {
    let ta: Vec<TensorInfo> = a.tensors().iter().map(TensorInfo::from).collect();
    let tb: Vec<TensorInfo> = b.tensors().iter().map(TensorInfo::from).collect();
    pair_tensors(&ta, &tb, opts, a_name, b_name)
}

/// Sets that every analysis of two sets accepts, from a pairing of `full` (the pairing's A side)
/// and `other` (its B side):
///
/// - `full` keeps all its tensors and names (a set written from it loads into its model), but
///   its unpaired weights are carried through like non-weights: copied unchanged and left out of
///   every figure.
/// - `other` keeps only its paired weights, renamed to `full`'s names, in `full`'s order.
///
/// Both group their weights by `grouping` applied to the stripped names, so module i is the same
/// module in both. For an analysis whose base is the B side (the final weights of a rewind),
/// pass [`Pairing::swapped`] and the sets in swapped order.
pub fn paired_sets(
    full: ParamSet,
    other: ParamSet,
    pairing: &Pairing,
    grouping: &Grouping,
) -> Result<(ParamSet, ParamSet)> {
    let mut paired_in_full = vec![false; full.tensors.len()];
    for p in &pairing.pairs {
        if p.a >= full.tensors.len() || p.b >= other.tensors.len() {
            fail!(InvalidArgument, "the pairing does not belong to these sets: pair {:?} is out of range", p.name);
        }
        paired_in_full[p.a] = true;
    }
    let mut explicit = Vec::with_capacity(pairing.pairs.len());
    for (m, members) in pairing.modules(grouping)? {
        for k in members {
            explicit.push((full.tensors[pairing.pairs[k].a].name.clone(), m.clone()));
        }
    }
    let ParamSet { mut tensors, metadata, _backing, .. } = full;
    for (t, paired) in tensors.iter_mut().zip(&paired_in_full) {
        if let (false, TensorDType::Weight(_)) = (paired, t.dtype) {
            t.dtype = TensorDType::Other(t.dtype.to_safetensors());
        }
    }
    let names: Vec<String> = pairing.pairs.iter().map(|p| tensors[p.a].name.clone()).collect();
    let mut full_out = ParamSet::assemble(tensors, metadata)?;
    full_out._backing = _backing;
    full_out.set_grouping(Grouping::Explicit(explicit.clone()))?;

    let ParamSet { tensors, _backing, .. } = other;
    let mut slots: Vec<Option<Tensor>> = tensors.into_iter().map(Some).collect();
    let mut kept = Vec::with_capacity(pairing.pairs.len());
    for (p, name) in pairing.pairs.iter().zip(names) {
        let Some(mut t) = slots[p.b].take() else {
            fail!(InvalidArgument, "tensor {} of B is paired twice", p.b);
        };
        t.name = name;
        kept.push(t);
    }
    let mut other_out = ParamSet::assemble(kept, Default::default())?;
    other_out._backing = _backing;
    other_out.set_grouping(Grouping::Explicit(explicit))?;
    Ok((full_out, other_out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    fn info<'a>(name: &'a str, shape: &'a [usize]) -> TensorInfo<'a> {
        TensorInfo { name, dtype: TensorDType::Weight(DType::F32), shape }
    }

    #[test]
    fn prefixes_exclusions_and_reasons() {
        let a = [
            info("inner.enc.weight", &[4, 4]),
            info("inner.head.weight", &[3, 4]),
            info("inner.pooler.weight", &[4]),
            TensorInfo { name: "inner.steps", dtype: TensorDType::Other(safetensors::Dtype::I64), shape: &[] },
        ];
        let b = [info("enc.weight", &[4, 4]), info("head.weight", &[5, 4]), info("extra.bias", &[2])];
        let opts = PairingOptions { strip_prefix_a: vec!["inner.".into()], ..Default::default() };
        let e = pair_tensors(&a, &b, &opts, "a", "b").unwrap_err().to_string();
        assert!(e.contains("3 differ") && e.contains("head.weight") && e.contains("pooler.weight"), "{e}");
        assert!(e.contains("extra.bias") && e.contains("missing in A") && !e.contains("steps"), "{e}");
        let p = pair_tensors(&a, &b, &PairingOptions { only_shared: true, ..opts.clone() }, "a", "b").unwrap();
        assert_eq!(p.pairs, [TensorPair { name: "enc.weight".into(), a: 0, b: 0 }]);
        let reasons: Vec<_> = p.left_out.iter().map(|l| (l.name.as_str(), l.reason.code())).collect();
        assert_eq!(
            reasons,
            [
                ("head.weight", "shape_differs"),
                ("pooler.weight", "missing_in_b"),
                ("steps", "not_a_weight"),
                ("extra.bias", "missing_in_a")
            ]
        );
        let unpaired: Vec<_> = p.unpaired_weights_of_a(&a).map(|l| l.name.as_str()).collect();
        assert_eq!(unpaired, ["head.weight", "pooler.weight"]);
        // Excluding the differing tensors makes the remaining sets equal: no error.
        let ex =
            PairingOptions { exclude: vec![regex::Regex::new("^(head|pooler|extra)\\.").unwrap()], ..opts.clone() };
        let p = pair_tensors(&a, &b, &ex, "a", "b").unwrap();
        assert_eq!(p.pairs.len(), 1);
        // head.weight once (A's, with B's index), pooler.weight of A, extra.bias of B.
        assert_eq!(p.left_out.iter().filter(|l| l.reason.code() == "excluded").count(), 3);
    }

    #[test]
    fn an_error_names_twenty_and_counts_the_rest() {
        let names: Vec<String> = (0..48).map(|i| format!("layer{i}.weight")).collect();
        let a: Vec<_> = names.iter().map(|n| info(n, &[2])).collect();
        let e = pair_tensors(&a, &[], &PairingOptions::default(), "a", "b").unwrap_err().to_string();
        assert!(e.contains("48 differ") && e.contains("layer19.weight") && e.contains("and 28 more"), "{e}");
        assert!(!e.contains("layer20.weight"), "{e}");
    }

    #[test]
    fn names_that_collide_after_stripping_are_an_error() {
        let a = [info("m.x", &[1]), info("x", &[1])];
        let opts = PairingOptions { strip_prefix_a: vec!["m.".into()], ..Default::default() };
        let e = pair_tensors(&a, &[info("x", &[1])], &opts, "a", "b").unwrap_err().to_string();
        assert!(e.contains("\"m.x\"") && e.contains("both become"), "{e}");
    }
}
