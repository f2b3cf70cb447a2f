//! `tlens inspect`, `tlens distance`, `tlens interpolate`: checkpoints in weight space.

use crate::checkpoints::{self, Pair, PairArgs};
use crate::common::{json_f64, print_json};
use crate::progress::Progress;
use std::path::{Path, PathBuf};
use transferlens::params::paired_distance;
use transferlens::{geometry, Context, Error, Grouping, ParamSet, Result};

/// Parses `--modules` for clap, so that a bad value is a usage error (exit 2).
pub fn parse_grouping(text: &str) -> std::result::Result<Grouping, String> {
    Grouping::parse(text).map_err(|e| e.to_string())
}

/// Parses `--lambda`: any finite real number.
pub fn parse_lambda(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("lambda must be a finite number, got {v}")),
        Err(_) => Err(format!("{text:?} is not a number")),
    }
}

/// List a checkpoint's tensors (name, dtype, shape), its modules and parameter counts.
///
/// Tensors of dtype F32, F64, F16 and BF16 are weights; other dtypes (an I64
/// num_batches_tracked, say) are listed as left out of weight-space figures.
#[derive(clap::Args)]
#[command(after_help = "Example:\n  tlens inspect resnet50_finetuned.safetensors --modules depth:2\n\n\
JSON (--json): {\"tensors\": [{\"name\", \"dtype\", \"shape\", \"numel\", \"weight\"}], \
\"modules\": [{\"name\", \"numel\", \"tensors\"}], \"weight_numel\", \"left_out\": [names], \"metadata\": {}}")]
pub struct InspectArgs {
    /// The checkpoint: a safetensors file, a directory holding model.safetensors, or a sharded
    /// checkpoint (its directory or its model.safetensors.index.json).
    ckpt: PathBuf,
    /// How tensor names group into modules: first, depth:N, tensor, prefixes:P1,P2,...
    #[arg(long, default_value = "first", value_parser = parse_grouping)]
    modules: Grouping,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The l2 distance between two checkpoints, per module and in total.
///
/// Per module i: ||a_i - b_i||_2 over all its weights, accumulated in f64 whatever the storage
/// dtype; total = sqrt(sum of the squares). Both checkpoints must hold the same weights (names
/// and shapes) unless --only-shared, --strip-prefix-a/-b or --exclude say otherwise; non-weight
/// dtypes are left out. Checkpoints are mapped and read one tensor pair at a time, so memory
/// stays far below their size.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  tlens distance pt_t1.safetensors pt_t2.safetensors\n  \
tlens distance init.safetensors final.safetensors --modules prefixes:layer1,layer2 --json\n  \
tlens distance pretrained/ finetuned/ --strip-prefix-a model.0.auto_model. --only-shared\n\n\
JSON (--json): {\"modules\": [{\"name\": str, \"numel\": int, \"distance\": float}, ...], \"total\": float, \
\"numel\": int, \"left_out\": [{\"name\", \"a\", \"b\", \"reason\", \"detail\"}]}")]
pub struct DistanceArgs {
    /// The first checkpoint (a safetensors file, a directory holding model.safetensors, or a
    /// sharded checkpoint's directory or index).
    a: PathBuf,
    /// The second checkpoint.
    b: PathBuf,
    /// How tensor names group into modules: first (the first dot-separated component),
    /// depth:N (the first N), tensor (one per tensor), prefixes:P1,P2,... (longest match wins;
    /// unmatched tensors are their own modules).
    #[arg(long, default_value = "first", value_parser = parse_grouping)]
    modules: Grouping,
    #[command(flatten)]
    pairing: PairArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Write (1 - L) A + L B as safetensors, for any real L (outside [0, 1] it extrapolates).
///
/// Computed in f32 (f64 for f64 tensors) and rounded once to each tensor's dtype; L = 0 and
/// L = 1 reproduce A and B bit for bit. Non-weight tensors (integer dtypes) are copied from A,
/// and so is A's metadata; with --only-shared, so are A's weights that B lacks (a fresh head).
/// Prints what it wrote. The output is written atomically; it may not be A or B. A symlink at
/// the output path is kept (the file it points to is replaced, keeping its permissions). A
/// result that is not finite (an overflow at a large L) is an error and writes nothing.
#[derive(clap::Args)]
#[command(
    allow_negative_numbers = true,
    after_help = "Examples:\n  tlens interpolate pt_t1.safetensors pt_t2.safetensors --lambda 0.5 --output mid.safetensors\n  \
tlens interpolate a.safetensors b.safetensors --lambda -1 --output extrapolated.safetensors\n  \
tlens interpolate finetuned/ pretrained.safetensors --only-shared --lambda 0.5 --output mid.safetensors\n\n\
JSON (--json): {\"output\", \"lambda\", \"tensors\", \"interpolated\", \"interpolated_numel\", \
\"copied_from_a\": [names], \"not_weights\": [names], \"left_out\": [...]}"
)]
pub struct InterpolateArgs {
    /// Checkpoint A (lambda = 0).
    a: PathBuf,
    /// Checkpoint B (lambda = 1).
    b: PathBuf,
    /// The interpolation coefficient L: any finite real number.
    #[arg(long, value_parser = parse_lambda)]
    lambda: f64,
    /// Where to write the result (safetensors).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    pairing: PairArgs,
    /// Print what was written as JSON.
    #[arg(long)]
    json: bool,
}

fn load(path: &Path) -> Result<ParamSet> {
    let _p = Progress::during(format!("reading {}", path.display()));
    checkpoints::open(path)?.load()
}

/// Names both files in an error that speaks of "a" and "b".
pub fn in_files(e: Error, pa: &Path, pb: &Path) -> Error {
    let prefix = format!("A = {}, B = {}: ", pa.display(), pb.display());
    match e {
        Error::UnsupportedDtype(m) => Error::UnsupportedDtype(prefix + &m),
        Error::ShapeMismatch(m) => Error::ShapeMismatch(prefix + &m),
        other => other,
    }
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let mut set = load(&args.ckpt)?;
    set.set_grouping(args.modules)?;
    let left_out: Vec<_> = set.left_out().map(|t| t.name().to_string()).collect();
    if args.json {
        let tensors: Vec<_> = set
            .tensors()
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name(),
                    "dtype": t.dtype().name(),
                    "shape": t.shape(),
                    "numel": t.numel(),
                    "weight": t.is_weight(),
                })
            })
            .collect();
        let modules: Vec<_> = set
            .modules()
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name,
                    "numel": m.numel,
                    "tensors": m.tensors.iter().map(|&i| set.tensors()[i].name()).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "tensors": tensors,
            "modules": modules,
            "weight_numel": set.weight_numel(),
            "left_out": left_out,
            "metadata": set.metadata(),
        }));
        return Ok(());
    }
    let w = set.tensors().iter().map(|t| t.name().len()).max().unwrap_or(0).max(6);
    println!("{}", args.ckpt.display());
    println!("{:w$}  {:5}  {:>12}  shape", "tensor", "dtype", "numel");
    for t in set.tensors() {
        let mark = if t.is_weight() { "" } else { "  (left out)" };
        println!("{:w$}  {:5}  {:>12}  {:?}{mark}", t.name(), t.dtype().name(), t.numel(), t.shape());
    }
    println!();
    let mw = set.modules().iter().map(|m| m.name.len()).max().unwrap_or(0).max(6);
    println!("{:mw$}  {:>7}  {:>12}", "module", "tensors", "numel");
    for m in set.modules() {
        println!("{:mw$}  {:>7}  {:>12}", m.name, m.tensors.len(), m.numel);
    }
    let weights = set.tensors().iter().filter(|t| t.is_weight()).count();
    println!(
        "\n{} tensors: {weights} weights in {} modules, {} parameters",
        set.tensors().len(),
        set.modules().len(),
        set.weight_numel()
    );
    if !left_out.is_empty() {
        let list: Vec<_> = set.left_out().map(|t| format!("{} ({})", t.name(), t.dtype().name())).collect();
        println!("left out of weight-space figures: {}", list.join(", "));
    }
    Ok(())
}

pub fn distance(args: DistanceArgs) -> Result<()> {
    let pair = Pair::open(&args.a, &args.b, &args.pairing)?;
    let (modules, total) = {
        let _p = Progress::during("computing distances");
        paired_distance(&pair.a, &pair.b, &pair.pairing, &args.modules).map_err(|e| in_files(e, &args.a, &args.b))?
    };
    let numel: u64 = modules.iter().map(|m| m.numel).sum();
    if args.json {
        let list: Vec<_> = modules
            .iter()
            .map(|m| serde_json::json!({"name": m.name, "numel": m.numel, "distance": json_f64(m.distance)}))
            .collect();
        print_json(&serde_json::json!({
            "modules": list,
            "total": json_f64(total),
            "numel": numel,
            "left_out": pair.left_out_json(),
        }));
        return Ok(());
    }
    let w = modules.iter().map(|m| m.name.len()).max().unwrap_or(0).max(6);
    println!("{:w$}  {:>12}  {:>14}", "module", "numel", "l2 distance");
    for m in &modules {
        println!("{:w$}  {:>12}  {:>14.6}", m.name, m.numel, m.distance);
    }
    println!("{:w$}  {:>12}  {:>14.6}", "total", numel, total);
    pair.print_left_out();
    Ok(())
}

/// Refuses an output that is the same file as an input (also through a symlink or a hard
/// link): the input would be replaced by the result.
pub fn check_output_is_not_an_input(output: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(out) = std::fs::metadata(output) else { return Ok(()) };
    for (role, input) in inputs {
        if let Ok(m) = std::fs::metadata(input) {
            if (m.dev(), m.ino()) == (out.dev(), out.ino()) {
                return Err(Error::InvalidArgument(format!(
                    "--output {} is the same file as {role} ({}); writing it would replace an input",
                    output.display(),
                    input.display()
                )));
            }
        }
    }
    Ok(())
}

pub fn interpolate(args: InterpolateArgs) -> Result<()> {
    check_output_is_not_an_input(&args.output, &[("A", &args.a), ("B", &args.b)])?;
    let pair = Pair::open(&args.a, &args.b, &args.pairing)?;
    let (a, b) = {
        let _p = Progress::during("reading the checkpoints");
        pair.sets_on_a(&Grouping::Tensor)?
    };
    // A copy of A receives the result (its non-weights, unpaired weights and metadata are A's).
    let mut out = a.try_clone()?;
    {
        let _p = Progress::during(format!("interpolating (lambda = {})", args.lambda));
        geometry::interpolate(&Context::cpu(), &a, &b, args.lambda, &mut out)
            .map_err(|e| in_files(e, &args.a, &args.b))?;
    }
    {
        let _p = Progress::during(format!("writing {}", args.output.display()));
        out.save(&args.output)?;
    }
    let copied = pair.copied_from_a();
    let not_weights: Vec<&str> =
        pair.a.tensors().iter().filter(|t| t.dtype().weight().is_none()).map(|t| t.name()).collect();
    let interpolated = b.tensors().len();
    if args.json {
        print_json(&serde_json::json!({
            "output": args.output.display().to_string(),
            "lambda": args.lambda,
            "tensors": out.tensors().len(),
            "interpolated": interpolated,
            "interpolated_numel": a.weight_numel(),
            "copied_from_a": copied,
            "not_weights": not_weights,
            "left_out": pair.left_out_json(),
        }));
        return Ok(());
    }
    println!(
        "wrote {}: {} tensors; {interpolated} weights ({} parameters) at (1 - {l}) A + {l} B",
        args.output.display(),
        out.tensors().len(),
        a.weight_numel(),
        l = args.lambda
    );
    if !copied.is_empty() {
        println!("copied from A unchanged (not in B or not matching): {}", copied.join(", "));
    }
    if !not_weights.is_empty() {
        println!("copied from A (not weights): {}", not_weights.join(", "));
    }
    pair.print_left_out();
    Ok(())
}
