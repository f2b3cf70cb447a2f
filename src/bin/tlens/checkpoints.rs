//! Reading checkpoints and pairing two of them: the options every two-checkpoint command shares.
//! The matching itself is the library's (`transferlens::params::pair_tensors`); this file only
//! turns flags into its options and its result into text and JSON.

use serde_json::{json, Value};
use std::path::Path;
use transferlens::params::{
    pair_tensors, paired_sets, Checkpoint, Grouping, LeftOut, Pairing, PairingOptions, ParamSet, TensorInfo,
};
use transferlens::Result;

/// Parses `--exclude` for clap, so that a bad pattern is a usage error (exit 2).
fn parse_regex(text: &str) -> std::result::Result<regex::Regex, String> {
    regex::Regex::new(text).map_err(|e| e.to_string())
}

/// How the tensors of the two checkpoints are matched.
#[derive(clap::Args, Debug, Clone)]
pub struct PairArgs {
    /// Remove this prefix from the names of the first checkpoint before matching (repeatable;
    /// the first that a name starts with is removed).
    #[arg(long, value_name = "PREFIX")]
    strip_prefix_a: Vec<String>,
    /// Remove this prefix from the names of the second checkpoint before matching (repeatable).
    #[arg(long, value_name = "PREFIX")]
    strip_prefix_b: Vec<String>,
    /// Compare the weights present in both with equal shapes; list the others as left out
    /// instead of failing.
    #[arg(long)]
    only_shared: bool,
    /// Leave out the tensors whose name (after stripping) matches this regular expression
    /// (repeatable).
    #[arg(long, value_name = "REGEX", value_parser = parse_regex)]
    exclude: Vec<regex::Regex>,
}

impl PairArgs {
    fn options(&self) -> PairingOptions {
        PairingOptions {
            strip_prefix_a: self.strip_prefix_a.clone(),
            strip_prefix_b: self.strip_prefix_b.clone(),
            only_shared: self.only_shared,
            exclude: self.exclude.clone(),
        }
    }
}

/// Opens a checkpoint: a safetensors file, a directory holding `model.safetensors`, a sharded
/// checkpoint's directory or its index.
pub fn open(path: &Path) -> Result<Checkpoint> {
    // SAFETY: checkpoints are inputs that nothing changes while tlens reads them; the README
    // says so (a file truncated meanwhile ends tlens with SIGBUS, as any tool that maps files).
    unsafe { Checkpoint::open(path) }
}

/// Two checkpoints and how their tensors pair.
pub struct Pair {
    pub a: Checkpoint,
    pub b: Checkpoint,
    pub pairing: Pairing,
}

impl Pair {
    pub fn open(a: &Path, b: &Path, args: &PairArgs) -> Result<Pair> {
        let (a, b) = (open(a)?, open(b)?);
        let ta: Vec<TensorInfo> = a.tensors().iter().map(TensorInfo::from).collect();
        let tb: Vec<TensorInfo> = b.tensors().iter().map(TensorInfo::from).collect();
        let pairing = pair_tensors(&ta, &tb, &args.options(), a.what(), b.what())?;
        Ok(Pair { a, b, pairing })
    }

    /// Both checkpoints in memory, ready for an analysis whose base (the set it writes, holding
    /// every tensor) is A; B's paired weights under A's names.
    pub fn sets_on_a(&self, grouping: &Grouping) -> Result<(ParamSet, ParamSet)> {
        paired_sets(self.a.load()?, self.b.load()?, &self.pairing, grouping)
    }

    /// The same with B as the base (the final weights of rewind and criticality): returns
    /// (A's paired weights under B's names, B).
    pub fn sets_on_b(&self, grouping: &Grouping) -> Result<(ParamSet, ParamSet)> {
        let (b, a) = paired_sets(self.b.load()?, self.a.load()?, &self.pairing.swapped(), grouping)?;
        Ok((a, b))
    }

    /// A's weights that are copied unchanged (unpaired), by their names in A.
    pub fn copied_from_a(&self) -> Vec<String> {
        let ta: Vec<TensorInfo> = self.a.tensors().iter().map(TensorInfo::from).collect();
        self.pairing.unpaired_weights_of_a(&ta).filter_map(|l| l.a).map(|i| ta[i].name.to_string()).collect()
    }

    /// B's weights that are copied unchanged into a set based on B.
    pub fn copied_from_b(&self) -> Vec<String> {
        let tb: Vec<TensorInfo> = self.b.tensors().iter().map(TensorInfo::from).collect();
        let swapped = self.pairing.swapped();
        swapped.unpaired_weights_of_a(&tb).filter_map(|l| l.a).map(|i| tb[i].name.to_string()).collect()
    }

    fn names(&self, l: &LeftOut) -> (Option<&str>, Option<&str>) {
        (l.a.map(|i| self.a.tensors()[i].name()), l.b.map(|i| self.b.tensors()[i].name()))
    }

    /// `left_out` for JSON: every tensor not compared, with its names on each side (null where
    /// that side lacks it), the reason's code and the reason in words.
    pub fn left_out_json(&self) -> Value {
        Value::Array(
            self.pairing
                .left_out
                .iter()
                .map(|l| {
                    let (a, b) = self.names(l);
                    json!({"name": l.name, "a": a, "b": b, "reason": l.reason.code(), "detail": l.reason.to_string()})
                })
                .collect(),
        )
    }

    /// The left-out tensors as text lines, one per tensor.
    pub fn print_left_out(&self) {
        if self.pairing.left_out.is_empty() {
            return;
        }
        println!("left out ({}):", self.pairing.left_out.len());
        for l in &self.pairing.left_out {
            println!("  {}: {}", l.name, l.reason);
        }
    }
}
