//! Permutation specs: which tensor axes share one permutation of hidden units.
//!
//! A spec is a list of groups. A group is one layer's (or one residual stream's) hidden units:
//! every `(tensor, axis)` it lists is indexed by those units, so permuting the units permutes
//! all of them along that axis at once, and the network computes the same function.
//!
//! GroupNorm: a permutation of a GroupNorm's channels keeps the function only if it maps each
//! normalisation group onto a normalisation group. A group's `partition` lists the block counts
//! it must preserve, coarse to fine, each dividing the next: the units form `partition[0]`
//! equal contiguous blocks, which are permuted as wholes, and within each the next level's
//! blocks, down to the single units. Matching solves this exactly (best inner assignment per
//! pair of blocks, then an assignment of the blocks), so the constraint costs no optimality
//! beyond what the GroupNorm itself imposes.

use crate::error::{fail, Result};
use crate::model::cnn::{ConvLayer, GroupNormLayer, Layer};
use crate::model::{Cnn, Mlp};
use crate::params::ParamSet;
use serde::{Deserialize, Serialize};

/// One group of axes that share a permutation of `size` units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermGroup {
    /// A name for messages and reports (the layer or stream the units belong to).
    pub name: String,
    /// The number of units.
    pub size: usize,
    /// Block counts to preserve, coarse to fine (each divides the next and `size`); empty: any
    /// permutation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition: Vec<usize>,
    /// `(tensor name, axis)` pairs indexed by the units.
    pub axes: Vec<(String, usize)>,
}

/// The groups of a model. See the module docs; the JSON form is in docs/align.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermSpec {
    pub groups: Vec<PermGroup>,
}

impl PermGroup {
    /// Whether `perm` (aligned unit `i` takes unit `perm[i]`) is a permutation of the group's
    /// units that maps every block of every partition level onto a block.
    pub fn admits(&self, perm: &[usize]) -> bool {
        if perm.len() != self.size {
            return false;
        }
        let mut seen = vec![false; self.size];
        for &p in perm {
            if p >= self.size || std::mem::replace(&mut seen[p], true) {
                return false;
            }
        }
        self.partition.iter().all(|&blocks| {
            let width = self.size / blocks;
            // Each block's units all land in one block, and (perm being a bijection) fill it.
            perm.chunks(width).all(|block| block.iter().all(|&p| p / width == block[0] / width))
        })
    }
}

impl PermSpec {
    /// Parses the JSON form and checks its internal consistency (not against a set).
    pub fn from_json(text: &str) -> Result<PermSpec> {
        let spec: PermSpec =
            serde_json::from_str(text).map_err(|e| crate::Error::Format(format!("permutation spec: {e}")))?;
        spec.check_partitions()?;
        Ok(spec)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a spec always serialises")
    }

    fn check_partitions(&self) -> Result<()> {
        for g in &self.groups {
            if g.size == 0 {
                fail!(InvalidArgument, "permutation group {:?} has size 0", g.name);
            }
            let mut coarser = 1;
            for &blocks in &g.partition {
                if blocks == 0 || !blocks.is_multiple_of(coarser) || !g.size.is_multiple_of(blocks) {
                    fail!(
                        InvalidArgument,
                        "permutation group {:?}: partition {:?} is not a chain of block counts each dividing the next and the size {}",
                        g.name,
                        g.partition,
                        g.size
                    );
                }
                coarser = blocks;
            }
        }
        Ok(())
    }

    /// Checks the spec against a set: every tensor exists, is a weight held in host memory and
    /// has `size` entries along its axis, and no `(tensor, axis)` belongs to two groups.
    pub fn check(&self, set: &ParamSet) -> Result<()> {
        self.check_partitions()?;
        let mut owner = std::collections::HashMap::new();
        for g in &self.groups {
            for (name, axis) in &g.axes {
                let Some(t) = set.tensor(name) else {
                    fail!(NotFound, "permutation group {:?}: the set has no tensor {name:?}", g.name);
                };
                if !t.is_weight() {
                    fail!(
                        UnsupportedDtype,
                        "permutation group {:?}: tensor {name:?} has dtype {}, not a weight dtype",
                        g.name,
                        t.dtype().name()
                    );
                }
                if t.shape().get(*axis) != Some(&g.size) {
                    fail!(
                        ShapeMismatch,
                        "permutation group {:?} has {} units but tensor {name:?} (shape {:?}) axis {axis} does not",
                        g.name,
                        g.size,
                        t.shape()
                    );
                }
                if let Some(other) = owner.insert((name.as_str(), *axis), g.name.as_str()) {
                    fail!(
                        InvalidArgument,
                        "tensor {name:?} axis {axis} is in two permutation groups, {other:?} and {:?}",
                        g.name
                    );
                }
            }
        }
        Ok(())
    }

    /// The names of the set's tensors that no group touches (left as they are by alignment).
    pub fn untouched(&self, set: &ParamSet) -> Vec<String> {
        let touched: std::collections::HashSet<&str> =
            self.groups.iter().flat_map(|g| g.axes.iter().map(|(n, _)| n.as_str())).collect();
        set.tensors().iter().map(|t| t.name()).filter(|n| !touched.contains(n)).map(str::to_owned).collect()
    }

    /// The spec a set's own description gives: the built-in CNN's when the set's metadata
    /// carries a CNN specification ([`Cnn::from_metadata`]), else a plain chain of dense layers
    /// ([`PermSpec::for_dense_chain`], which also covers the built-in MLP). Returns the spec and
    /// a few words saying which inference was used.
    pub fn infer(set: &ParamSet) -> Result<(PermSpec, &'static str)> {
        if set.metadata().contains_key(crate::model::cnn::SPEC_METADATA_KEY) {
            let cnn = Cnn::from_metadata(set)?;
            return Ok((PermSpec::for_cnn(&cnn)?, "the built-in CNN (from the file's metadata)"));
        }
        Ok((PermSpec::for_dense_chain(set)?, "a chain of dense layers"))
    }

    /// The built-in MLP: hidden layer `l`'s units index `fc{l}.weight` axis 0, `fc{l}.bias`
    /// axis 0 and `fc{l+1}.weight` axis 1. Inputs and logits are not permuted.
    pub fn for_mlp(mlp: &Mlp) -> PermSpec {
        let groups = (1..mlp.layers())
            .map(|l| PermGroup {
                name: format!("fc{l}"),
                size: mlp.sizes()[l],
                partition: Vec::new(),
                axes: vec![
                    (format!("fc{l}.weight"), 0),
                    (format!("fc{l}.bias"), 0),
                    (format!("fc{}.weight", l + 1), 1),
                ],
            })
            .collect();
        PermSpec { groups }
    }

    /// A plain chain of dense layers in a set: its 2-D tensors named `*.weight`, in set order,
    /// each taking the previous one's outputs (`W[l+1]` is `o x W[l].rows`). The hidden units of
    /// layer `l` index `W[l]` axis 0, the matching `*.bias` axis 0 (if the set has a 1-D one of
    /// that size) and `W[l+1]` axis 1.
    pub fn for_dense_chain(set: &ParamSet) -> Result<PermSpec> {
        let weights: Vec<_> =
            set.tensors().iter().filter(|t| t.name().ends_with(".weight") && t.shape().len() == 2).collect();
        if weights.len() < 2 {
            fail!(
                InvalidArgument,
                "a dense chain needs at least two 2-D \"*.weight\" tensors; the set has {}",
                weights.len()
            );
        }
        let mut groups = Vec::with_capacity(weights.len() - 1);
        for pair in weights.windows(2) {
            let (w, next) = (pair[0], pair[1]);
            let units = w.shape()[0];
            if next.shape()[1] != units {
                fail!(
                    ShapeMismatch,
                    "not a dense chain: {:?} gives {units} outputs but {:?} (shape {:?}) takes {}",
                    w.name(),
                    next.name(),
                    next.shape(),
                    next.shape()[1]
                );
            }
            let prefix = w.name().strip_suffix(".weight").expect("filtered on the suffix");
            let mut axes = vec![(w.name().to_owned(), 0)];
            let bias = format!("{prefix}.bias");
            if set.tensor(&bias).is_some_and(|b| b.shape() == [units]) {
                axes.push((bias, 0));
            }
            axes.push((next.name().to_owned(), 1));
            groups.push(PermGroup { name: prefix.to_owned(), size: units, partition: Vec::new(), axes });
        }
        Ok(PermSpec { groups })
    }

    /// The built-in CNN: each conv's output channels with the GroupNorm after it form a group
    /// (with the GroupNorm's partition), which the next conv or dense takes on its input axis.
    /// A block's shortcut makes its output share the stream's group: the identity shortcut keeps
    /// the input's group (conv2 and gn2 join it), a downsample starts the new stream's group
    /// (downsample.0, downsample.1, conv2 and gn2). The input channels and the logits are not
    /// permuted; channels that reach a `flatten` are not permuted either (their group is
    /// dropped), since the dense layer after it sees channel x pixel features.
    pub fn for_cnn(cnn: &Cnn) -> Result<PermSpec> {
        let names: Vec<String> = cnn.tensor_shapes().into_iter().map(|(n, _)| n).collect();
        let mut b = CnnSpecBuilder { names: &names, groups: Vec::new(), block_counts: Vec::new(), dropped: Vec::new() };
        let mut stream: Option<usize> = None;
        for layer in cnn.layers() {
            match layer {
                Layer::Conv(c) => stream = Some(b.conv(c, stream)),
                Layer::GroupNorm(gn) => b.groupnorm(gn, stream),
                Layer::Dense(d) => {
                    b.join(stream, d.weight, 1);
                    let g = b.open(d.weight);
                    if let Some(bias) = d.bias {
                        b.join(Some(g), bias, 0);
                    }
                    stream = Some(g);
                }
                Layer::Block(block) => {
                    let inner = b.conv(&block.conv1, stream);
                    b.groupnorm(&block.gn1, Some(inner));
                    let out = match &block.downsample {
                        Some((conv, gn)) => {
                            let g = b.conv(conv, stream);
                            b.groupnorm(gn, Some(g));
                            Some(g)
                        }
                        None => stream,
                    };
                    b.join(Some(inner), block.conv2.weight, 1);
                    b.join(out, block.conv2.weight, 0);
                    if let Some(bias) = block.conv2.bias {
                        b.join(out, bias, 0);
                    }
                    b.groupnorm(&block.gn2, out);
                    stream = out;
                }
                Layer::Flatten => {
                    if let Some(g) = stream.take() {
                        b.dropped.push(g);
                    }
                }
                Layer::Relu | Layer::AvgPool { .. } | Layer::GlobalAvgPool => {}
            }
        }
        // The last stream is the logits.
        if let Some(g) = stream {
            b.dropped.push(g);
        }
        b.finish(cnn)
    }
}

struct CnnSpecBuilder<'a> {
    names: &'a [String],
    groups: Vec<PermGroup>,
    /// Per group, the GroupNorm group counts it must preserve.
    block_counts: Vec<Vec<usize>>,
    dropped: Vec<usize>,
}

impl CnnSpecBuilder<'_> {
    fn open(&mut self, tensor: usize) -> usize {
        let name = self.names[tensor].strip_suffix(".weight").unwrap_or(&self.names[tensor]).to_owned();
        self.groups.push(PermGroup {
            name,
            size: 0,
            partition: Vec::new(),
            axes: vec![(self.names[tensor].clone(), 0)],
        });
        self.block_counts.push(Vec::new());
        self.groups.len() - 1
    }

    /// Adds `tensor`'s `axis` to `group`; nothing when the axis is not permuted (`None`).
    fn join(&mut self, group: Option<usize>, tensor: usize, axis: usize) {
        if let Some(g) = group {
            self.groups[g].axes.push((self.names[tensor].clone(), axis));
        }
    }

    /// A conv taking `input`: its output channels start a new group, returned.
    fn conv(&mut self, c: &ConvLayer, input: Option<usize>) -> usize {
        self.join(input, c.weight, 1);
        let g = self.open(c.weight);
        if let Some(bias) = c.bias {
            self.join(Some(g), bias, 0);
        }
        g
    }

    fn groupnorm(&mut self, gn: &GroupNormLayer, group: Option<usize>) {
        self.join(group, gn.weight, 0);
        self.join(group, gn.bias, 0);
        if let Some(g) = group {
            if gn.groups > 1 {
                self.block_counts[g].push(gn.groups);
            }
        }
    }

    fn finish(mut self, cnn: &Cnn) -> Result<PermSpec> {
        let shapes = cnn.tensor_shapes();
        let mut groups = Vec::new();
        for (g, mut group) in std::mem::take(&mut self.groups).into_iter().enumerate() {
            if self.dropped.contains(&g) {
                continue;
            }
            let first = &group.axes[0].0;
            group.size = shapes.iter().find(|(n, _)| n == first).map(|(_, s)| s[0]).expect("the CNN's own tensor");
            let mut counts = std::mem::take(&mut self.block_counts[g]);
            counts.sort_unstable();
            counts.dedup();
            if counts.windows(2).any(|w| !w[1].is_multiple_of(w[0])) {
                fail!(
                    InvalidArgument,
                    "the GroupNorms on channels {:?} have group counts {counts:?}, which do not nest (each dividing the next); write a spec by hand that leaves them unpermuted",
                    group.name
                );
            }
            group.partition = counts;
            groups.push(group);
        }
        let spec = PermSpec { groups };
        spec.check_partitions()?;
        Ok(spec)
    }
}
