//! `tlens inspect`, `tlens distance`, `tlens interpolate`: checkpoints in weight space.

use crate::common::{json_f64, print_json};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use transferlens::{geometry, Context, Error, Grouping, ParamSet, Result};

/// Parses `--modules` for clap, so that a bad value is a usage error (exit 2).
fn parse_grouping(text: &str) -> std::result::Result<Grouping, String> {
    Grouping::parse(text).map_err(|e| e.to_string())
}

/// Parses `--lambda`: any finite real number.
fn parse_lambda(text: &str) -> std::result::Result<f64, String> {
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
    /// The checkpoint (safetensors).
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
/// dtype; total = sqrt(sum of the squares). Both files must hold the same weights (names and
/// shapes); non-weight dtypes are left out.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  tlens distance pt_t1.safetensors pt_t2.safetensors\n  \
tlens distance init.safetensors final.safetensors --modules prefixes:layer1,layer2 --json\n\n\
JSON (--json): {\"modules\": [{\"name\": str, \"numel\": int, \"distance\": float}, ...], \"total\": float}")]
pub struct DistanceArgs {
    /// The first checkpoint (its module grouping is used).
    a: PathBuf,
    /// The second checkpoint.
    b: PathBuf,
    /// How tensor names group into modules: first (the first dot-separated component),
    /// depth:N (the first N), tensor (one per tensor), prefixes:P1,P2,... (longest match wins;
    /// unmatched tensors are their own modules).
    #[arg(long, default_value = "first", value_parser = parse_grouping)]
    modules: Grouping,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Write (1 - L) A + L B as safetensors, for any real L (outside [0, 1] it extrapolates).
///
/// Computed in f32 (f64 for f64 tensors) and rounded once to each tensor's dtype; L = 0 and
/// L = 1 reproduce A and B bit for bit. Non-weight tensors (integer dtypes) are copied from A,
/// and so is A's metadata. The output is written atomically; it may not be A or B. A symlink at
/// the output path is kept (the file it points to is replaced, keeping its permissions). A
/// result that is not finite (an overflow at a large L) is an error and writes nothing.
#[derive(clap::Args)]
#[command(
    allow_negative_numbers = true,
    after_help = "Examples:\n  tlens interpolate pt_t1.safetensors pt_t2.safetensors --lambda 0.5 --output mid.safetensors\n  \
tlens interpolate a.safetensors b.safetensors --lambda -1 --output extrapolated.safetensors"
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
}

/// A progress line on stderr for work that runs longer than a second; silent when stderr is not
/// a terminal.
struct Progress {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(what: String) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { stop: None, thread: None };
        }
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let spin = ['|', '/', '-', '\\'];
            let mut shown = false;
            let mut k = 0;
            loop {
                let wait = if shown { Duration::from_millis(200) } else { Duration::from_secs(1) };
                match rx.recv_timeout(wait) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        eprint!("\r{} {what} ({:.0} s)", spin[k % 4], t0.elapsed().as_secs_f64());
                        shown = true;
                        k += 1;
                    }
                    _ => break,
                }
            }
            if shown {
                eprint!("\r\x1b[2K");
            }
        });
        Progress { stop: Some(tx), thread: Some(thread) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn load(path: &Path) -> Result<ParamSet> {
    let _p = Progress::start(format!("reading {}", path.display()));
    ParamSet::load(path)
}

/// Checks that B holds A's weights, naming the files and the first differing tensor.
fn check_pair(a: &ParamSet, b: &ParamSet, pa: &Path, pb: &Path) -> Result<()> {
    let (na, nb) = (pa.display().to_string(), pb.display().to_string());
    transferlens::params::match_weights(a, b, &na, &nb).map(|_| ())
}

/// Names both files in an error that speaks of "a" and "b".
fn in_files(e: Error, pa: &Path, pb: &Path) -> Error {
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
    let mut a = load(&args.a)?;
    let b = load(&args.b)?;
    a.set_grouping(args.modules)?;
    check_pair(&a, &b, &args.a, &args.b)?;
    let ctx = Context::cpu();
    let d = {
        let _p = Progress::start("computing distances".into());
        geometry::distance(&ctx, &a, &b).map_err(|e| in_files(e, &args.a, &args.b))?
    };
    if args.json {
        let modules: Vec<_> = a
            .modules()
            .iter()
            .zip(&d.modules)
            .map(|(m, &dist)| serde_json::json!({"name": m.name, "numel": m.numel, "distance": json_f64(dist)}))
            .collect();
        print_json(&serde_json::json!({"modules": modules, "total": json_f64(d.total)}));
        return Ok(());
    }
    let w = a.modules().iter().map(|m| m.name.len()).max().unwrap_or(0).max(6);
    println!("{:w$}  {:>12}  {:>14}", "module", "numel", "l2 distance");
    for (m, dist) in a.modules().iter().zip(&d.modules) {
        println!("{:w$}  {:>12}  {:>14.6}", m.name, m.numel, dist);
    }
    println!("{:w$}  {:>12}  {:>14.6}", "total", a.weight_numel(), d.total);
    let left: Vec<_> = a.left_out().map(|t| t.name().to_string()).collect();
    if !left.is_empty() {
        println!("left out (not weights): {}", left.join(", "));
    }
    Ok(())
}

/// Refuses an output that is the same file as an input (also through a symlink or a hard
/// link): the input would be replaced by the result.
fn check_output_is_not_an_input(output: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
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
    let a = load(&args.a)?;
    let b = load(&args.b)?;
    check_pair(&a, &b, &args.a, &args.b)?;
    // A copy of A receives the result (its non-weights and metadata are A's).
    let mut out = a.try_clone()?;
    {
        let _p = Progress::start(format!("interpolating (lambda = {})", args.lambda));
        geometry::interpolate(&Context::cpu(), &a, &b, args.lambda, &mut out)
            .map_err(|e| in_files(e, &args.a, &args.b))?;
    }
    let _p = Progress::start(format!("writing {}", args.output.display()));
    out.save(&args.output)?;
    Ok(())
}
