//! `tlens align`: B rewritten in the unit order that best matches A (docs/align.md), and the
//! spec handling that `tlens curve --align` shares.

use crate::checkpoints;
use crate::common::{json_f64, print_json};
use crate::progress::Progress;
use serde_json::json;
use std::path::{Path, PathBuf};
use transferlens::align::activations::units_last;
use transferlens::align::{apply, match_weights, ActivationMatcher, MatchOptions, Matching, PermGroup, PermSpec};
use transferlens::{geometry, Context, Error, Matrix, ParamSet, Result};

/// How the unit orders are matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Weight matching (Git Re-Basin): coordinate descent over the groups on the weights alone.
    Weights,
    /// Activation matching: per group, the correlation of the two models' unit activations on
    /// the same inputs (--acts-a, --acts-b), then one assignment.
    Activations,
}

/// Rewrite B in the order of hidden units that best matches A, and write it to --output.
///
/// The aligned B computes the same function as B (a permutation only moves values) but lies next
/// to A in weight space. The spec (which tensor axes share one permutation) is read from --spec
/// (JSON, docs/align.md) or inferred from A: the built-in CNN when A's metadata carries its
/// specification, else a plain chain of dense layers (the built-in MLP is one). Tensors that no
/// group touches (integer buffers, the logits' bias, ...) are copied as they are and listed.
/// Prints the l2 distance to A before and after. The output is written atomically and may not
/// be A or B.
///
/// Activation files (--method activations) hold, per permutation group, a tensor named as the
/// group, of shape [N, units, ...]: N inputs (the same inputs, in the same order, for A and B),
/// the group's units on axis 1, and any further axes (a conv's pixels) counted as more samples.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  tlens align a.safetensors b.safetensors --output b_aligned.safetensors\n  \
tlens align a.safetensors b.safetensors --output b_aligned.safetensors --spec resnet_spec.json --json\n  \
tlens align a.safetensors b.safetensors --output b_aligned.safetensors --method activations \\\n    \
--acts-a acts_a.safetensors --acts-b acts_b.safetensors\n\n\
JSON (--json): {\"output\", \"spec\", \"method\", \"groups\": [{\"name\", \"size\", \"moved\"}], \"distance_before\", \
\"distance_after\", \"passes\", \"converged\", \"untouched\": [names]}")]
pub struct AlignArgs {
    /// Checkpoint A, the reference order.
    a: PathBuf,
    /// Checkpoint B, the model to rewrite.
    b: PathBuf,
    /// Where to write the aligned B (safetensors).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    spec: SpecArgs,
    /// How to match the units.
    #[arg(long, value_enum, default_value = "weights")]
    method: Method,
    /// A's activations, one tensor per group (--method activations).
    #[arg(long, value_name = "FILE")]
    acts_a: Option<PathBuf>,
    /// B's activations on the same inputs (--method activations).
    #[arg(long, value_name = "FILE")]
    acts_b: Option<PathBuf>,
    /// Seeds the order in which weight matching visits the groups.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The most passes of weight matching over all groups.
    #[arg(long, default_value_t = MatchOptions::default().max_passes)]
    max_passes: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The spec option shared by `tlens align` and `tlens curve --align`.
#[derive(clap::Args, Debug, Clone)]
pub struct SpecArgs {
    /// The permutation spec as JSON (docs/align.md); default: inferred from A.
    #[arg(long, value_name = "SPEC.json")]
    spec: Option<PathBuf>,
}

/// `e` with `prefix` before its message, its kind kept.
fn prefixed(e: Error, prefix: &str) -> Error {
    let p = |m: String| format!("{prefix}{m}");
    match e {
        Error::NullArgument(m) => Error::NullArgument(p(m)),
        Error::InvalidArgument(m) => Error::InvalidArgument(p(m)),
        Error::ShapeMismatch(m) => Error::ShapeMismatch(p(m)),
        Error::UnsupportedDtype(m) => Error::UnsupportedDtype(p(m)),
        Error::DegenerateInput(m) => Error::DegenerateInput(p(m)),
        Error::NonFinite(m) => Error::NonFinite(p(m)),
        Error::Io(m) => Error::Io(p(m)),
        Error::Format(m) => Error::Format(p(m)),
        Error::NotFound(m) => Error::NotFound(p(m)),
        Error::DeviceUnavailable(m) => Error::DeviceUnavailable(p(m)),
        Error::Device(m) => Error::Device(p(m)),
        Error::Callback(m) => Error::Callback(p(m)),
        Error::Panic(m) => Error::Panic(p(m)),
        Error::OutOfMemory(m) => Error::OutOfMemory(p(m)),
    }
}

impl SpecArgs {
    pub fn is_given(&self) -> bool {
        self.spec.is_some()
    }

    /// The spec for aligning `b` to `a` (checked against both), and where it came from.
    pub fn resolve(&self, a: &ParamSet, b: &ParamSet, path_a: &Path, path_b: &Path) -> Result<(PermSpec, String)> {
        let (spec, source) = match &self.spec {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Io(format!("cannot read the spec {}: {e}", path.display())))?;
                let spec = PermSpec::from_json(&text).map_err(|e| prefixed(e, &format!("{}: ", path.display())))?;
                (spec, path.display().to_string())
            }
            None => {
                let (spec, how) = PermSpec::infer(a).map_err(|e| {
                    prefixed(
                        e,
                        &format!(
                            "cannot infer a permutation spec from A ({}); write one and pass --spec: ",
                            path_a.display()
                        ),
                    )
                })?;
                (spec, format!("inferred: {how}"))
            }
        };
        spec.check(a).map_err(|e| prefixed(e, &format!("A ({}): ", path_a.display())))?;
        spec.check(b).map_err(|e| prefixed(e, &format!("B ({}): ", path_b.display())))?;
        Ok((spec, source))
    }
}

/// Weight matching of `b` to `a` under `spec`, and `b` rewritten in the matched order.
pub fn align_weights(
    spec: &PermSpec,
    a: &ParamSet,
    b: &ParamSet,
    options: &MatchOptions,
) -> Result<(Matching, ParamSet)> {
    let matching = {
        let _p = Progress::during("matching the weights");
        match_weights(spec, a, b, options)?
    };
    let aligned = apply(spec, b, &matching.perms)?;
    Ok((matching, aligned))
}

/// One group's activations from a file: the tensor named as the group, `[N, units, ...]`, as an
/// `(N x pixels) x units` matrix; and its shape, which both files must share.
fn group_activations(acts: &ParamSet, path: &Path, group: &PermGroup) -> Result<(Vec<f32>, Vec<usize>)> {
    let Some(t) = acts.tensor(&group.name) else {
        return Err(Error::NotFound(format!(
            "{}: no tensor {:?} (the activations of permutation group {:?}, shape [N, {}, ...])",
            path.display(),
            group.name,
            group.name,
            group.size
        )));
    };
    if t.shape().len() < 2 || t.shape()[1] != group.size || t.shape()[0] == 0 {
        return Err(Error::ShapeMismatch(format!(
            "{}: tensor {:?} has shape {:?}; permutation group {:?} needs [N, {}, ...] with N >= 1",
            path.display(),
            group.name,
            t.shape(),
            group.name,
            group.size
        )));
    }
    let values = t.host().map_err(|e| prefixed(e, &format!("{}: ", path.display())))?.to_f32();
    Ok((units_last(&values, t.shape()[0], group.size)?, t.shape().to_vec()))
}

/// Per group, its `observations x units` values as a matrix.
fn group_views<'a>(values: &'a [Vec<f32>], spec: &PermSpec) -> Result<Vec<Matrix<'a>>> {
    values.iter().zip(&spec.groups).map(|(v, g)| Matrix::contiguous(v, v.len() / g.size, g.size)).collect()
}

/// Activation matching from two files of activations on the same inputs, one tensor per group.
fn match_from_files(spec: &PermSpec, path_a: &Path, path_b: &Path) -> Result<Matching> {
    let (acts_a, acts_b) = (load(path_a)?, load(path_b)?);
    let (mut values_a, mut values_b) = (Vec::new(), Vec::new());
    for g in &spec.groups {
        let (a, shape_a) = group_activations(&acts_a, path_a, g)?;
        let (b, shape_b) = group_activations(&acts_b, path_b, g)?;
        if shape_a != shape_b {
            return Err(Error::ShapeMismatch(format!(
                "group {:?}: the activations have shape {shape_a:?} in {} but {shape_b:?} in {}; both need the same inputs",
                g.name,
                path_a.display(),
                path_b.display()
            )));
        }
        values_a.push(a);
        values_b.push(b);
    }
    let _p = Progress::during("matching the activations");
    let mut matcher = ActivationMatcher::new(spec)?;
    matcher.update(&Context::cpu(), &group_views(&values_a, spec)?, &group_views(&values_b, spec)?)?;
    matcher.finish()
}

fn load(path: &Path) -> Result<ParamSet> {
    let _p = Progress::during(format!("reading {}", path.display()));
    checkpoints::open(path)?.load()
}

fn total_distance(a: &ParamSet, b: &ParamSet, pa: &Path, pb: &Path) -> Result<f64> {
    Ok(geometry::distance(&Context::cpu(), a, b).map_err(|e| crate::weights::in_files(e, pa, pb))?.total)
}

pub fn run(args: AlignArgs) -> Result<()> {
    crate::weights::check_output_is_not_an_input(&args.output, &[("A", &args.a), ("B", &args.b)])?;
    if args.method == Method::Weights && (args.acts_a.is_some() || args.acts_b.is_some()) {
        return Err(Error::InvalidArgument("--acts-a and --acts-b go with --method activations".into()));
    }
    let (a, b) = (load(&args.a)?, load(&args.b)?);
    let (spec, source) = args.spec.resolve(&a, &b, &args.a, &args.b)?;
    let before = total_distance(&a, &b, &args.a, &args.b)?;
    let (matching, aligned) = match args.method {
        Method::Weights => {
            let options = MatchOptions { seed: args.seed, max_passes: args.max_passes };
            align_weights(&spec, &a, &b, &options).map_err(|e| crate::weights::in_files(e, &args.a, &args.b))?
        }
        Method::Activations => {
            let (Some(acts_a), Some(acts_b)) = (&args.acts_a, &args.acts_b) else {
                return Err(Error::InvalidArgument("--method activations needs --acts-a and --acts-b".into()));
            };
            let matching = match_from_files(&spec, acts_a, acts_b)?;
            let aligned = apply(&spec, &b, &matching.perms)?;
            (matching, aligned)
        }
    };
    let after = total_distance(&a, &aligned, &args.a, &args.output)?;
    {
        let _p = Progress::during(format!("writing {}", args.output.display()));
        aligned.save(&args.output)?;
    }
    let untouched = spec.untouched(&b);
    let moved: Vec<bool> = matching.perms.iter().map(|p| p.iter().enumerate().any(|(i, &j)| i != j)).collect();
    let method = match args.method {
        Method::Weights => "weights",
        Method::Activations => "activations",
    };
    if args.json {
        let groups: Vec<_> =
            spec.groups.iter().zip(&moved).map(|(g, &m)| json!({"name": g.name, "size": g.size, "moved": m})).collect();
        print_json(&json!({
            "output": args.output.display().to_string(),
            "spec": source,
            "method": method,
            "groups": groups,
            "distance_before": json_f64(before),
            "distance_after": json_f64(after),
            "passes": matching.passes,
            "converged": matching.converged,
            "untouched": untouched,
        }));
        return Ok(());
    }
    println!("wrote {}: B in the unit order matched to A ({method} matching)", args.output.display());
    println!("spec: {source}; {} groups, {} reordered", spec.groups.len(), moved.iter().filter(|&&m| m).count());
    if args.method == Method::Weights {
        let state = if matching.converged { "converged" } else { "stopped at --max-passes, not converged" };
        println!("weight matching: {} passes, {state}", matching.passes);
    }
    println!("l2 distance to A: before {before:.6}, after {after:.6}");
    if !untouched.is_empty() {
        println!("left as they are (in no group): {}", untouched.join(", "));
    }
    Ok(())
}
