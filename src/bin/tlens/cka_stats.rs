//! `tlens cka --ci/--interval/--bootstrap/--null/--influence`: how far to trust each CKA value (a
//! jackknife or bootstrap interval, a permutation null, the most influential samples), for every
//! pair of layers.

use crate::common::{json_f64, print_json};
use serde_json::{json, Value};
use std::path::Path;
use transferlens::cka::{self, Estimator};
use transferlens::params::{activation_layers, ParamSet};
use transferlens::{Error, Result};

/// The statistics flags of `tlens cka`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatsArgs {
    /// An interval at this level (e.g. 0.95) for every CKA value.
    #[arg(long, value_name = "LEVEL")]
    ci: Option<f64>,
    /// How the interval is formed: from the leave-one-out values, around the bias-corrected
    /// estimate (jackknife: the default, and the only one that covers on wide layers,
    /// docs/analyses.md), or from bootstrap resamples, their quantiles (percentile) or
    /// bias-corrected and accelerated (bca). Percentile when only --bootstrap is given.
    #[arg(long, value_name = "KIND", value_enum)]
    interval: Option<Interval>,
    /// Resamples of a bootstrap interval (implies --ci 0.95 when --ci is not given, and
    /// --interval percentile when --interval is not given).
    #[arg(long, value_name = "B")]
    bootstrap: Option<usize>,
    /// A permutation null from P row permutations of B's layer: p-value, null mean and spread.
    #[arg(long, value_name = "P")]
    null: Option<usize>,
    /// The K samples whose removal changes each CKA value most.
    #[arg(long, value_name = "K")]
    influence: Option<usize>,
    /// Seed of the resamples and permutations.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
}

/// `--interval`: the jackknife interval, or a bootstrap interval of a [`cka::IntervalKind`].
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Jackknife,
    Percentile,
    Bca,
}

const DEFAULT_LEVEL: f64 = 0.95;
const DEFAULT_RESAMPLES: usize = 1000;

/// The interval asked for, if any: its level and how it is formed.
enum IntervalRequest {
    Jackknife(f64),
    Bootstrap(f64, cka::IntervalKind, usize),
}

impl StatsArgs {
    /// Whether any statistic was asked for (a lone --interval too: it is refused, not ignored).
    pub fn requested(&self) -> bool {
        self.ci.is_some()
            || self.interval.is_some()
            || self.bootstrap.is_some()
            || self.null.is_some()
            || self.influence.is_some()
    }

    /// The interval of --ci, --interval and --bootstrap.
    fn interval_request(&self) -> Result<Option<IntervalRequest>> {
        if self.ci.is_none() && self.bootstrap.is_none() {
            if let Some(kind) = self.interval {
                return Err(Error::InvalidArgument(format!(
                    "--interval {} needs --ci LEVEL (or --bootstrap B for a bootstrap interval)",
                    format!("{kind:?}").to_lowercase()
                )));
            }
            return Ok(None);
        }
        let level = self.ci.unwrap_or(DEFAULT_LEVEL);
        let default_kind = if self.bootstrap.is_some() { Interval::Percentile } else { Interval::Jackknife };
        let resamples = self.bootstrap.unwrap_or(DEFAULT_RESAMPLES);
        Ok(Some(match self.interval.unwrap_or(default_kind) {
            Interval::Jackknife if self.bootstrap.is_some() => {
                return Err(Error::InvalidArgument(
                    "--bootstrap draws resamples for --interval percentile or bca; the jackknife interval uses the n leave-one-out values instead".into(),
                ))
            }
            Interval::Jackknife => IntervalRequest::Jackknife(level),
            Interval::Percentile => IntervalRequest::Bootstrap(level, cka::IntervalKind::Percentile, resamples),
            Interval::Bca => IntervalRequest::Bootstrap(level, cka::IntervalKind::Bca, resamples),
        }))
    }
}

/// Every pair of layers of the two files, with the statistics asked for. The layers are read
/// whole (the statistics need them in memory).
pub fn run(
    acts_a: &Path,
    acts_b: &Path,
    estimator: Estimator,
    mask: Option<&str>,
    json_output: bool,
    args: &StatsArgs,
) -> Result<()> {
    if mask.is_some() {
        return Err(Error::InvalidArgument(
            "--ci, --bootstrap, --null and --influence do not take --mask yet: gather the real tokens into the files"
                .into(),
        ));
    }
    let (file_a, file_b) = (ParamSet::load(acts_a)?, ParamSet::load(acts_b)?);
    let xs = activation_layers(&file_a, &acts_a.display().to_string())?;
    let ys = activation_layers(&file_b, &acts_b.display().to_string())?;
    let names = |set: &ParamSet| set.tensors().iter().map(|t| t.name().to_string()).collect::<Vec<_>>();
    let (names_a, names_b) = (names(&file_a), names(&file_b));
    let interval = args.interval_request()?;
    let mut pairs = Vec::new();
    for (x, name_a) in xs.iter().zip(&names_a) {
        for (y, name_b) in ys.iter().zip(&names_b) {
            let context = |e: Error| in_pair(e, acts_a, name_a, acts_b, name_b);
            let mut pair = json!({"a": name_a, "b": name_b});
            let mut value = None;
            // The jackknife interval and the influence share the leave-one-out values.
            let wants_jackknife = matches!(interval, Some(IntervalRequest::Jackknife(_)));
            let left_out = (wants_jackknife || args.influence.is_some())
                .then(|| cka::influence(x, y, estimator).map_err(context))
                .transpose()?;
            match interval {
                Some(IntervalRequest::Jackknife(level)) => {
                    let ci = left_out.as_ref().expect("computed above").jackknife(level).map_err(context)?;
                    value = Some(ci.cka);
                    pair["interval"] = json!({
                        "level": level, "kind": "jackknife",
                        "lower": json_f64(ci.lower), "upper": json_f64(ci.upper),
                        "estimate": json_f64(ci.estimate), "std_error": json_f64(ci.std_error),
                    });
                }
                Some(IntervalRequest::Bootstrap(level, kind, resamples)) => {
                    let ci = cka::bootstrap(x, y, estimator, level, kind, resamples, 0, args.seed).map_err(context)?;
                    value = Some(ci.cka);
                    pair["interval"] = json!({
                        "level": level, "kind": format!("{kind:?}").to_lowercase(),
                        "lower": json_f64(ci.lower), "upper": json_f64(ci.upper),
                        "bias_correction": json_f64(ci.bias_correction), "acceleration": ci.acceleration.map(json_f64),
                        "std_error": json_f64(ci.std_error), "resamples": resamples, "degenerate": ci.degenerate,
                        "blocks": ci.blocks, "block_size": ci.block_size,
                    });
                }
                None => {}
            }
            if let Some(permutations) = args.null {
                let null = cka::permutation_null(x, y, estimator, permutations, args.seed).map_err(context)?;
                value = Some(null.cka);
                pair["null"] = json!({
                    "permutations": permutations, "p_value": json_f64(null.p_value),
                    "mean": json_f64(null.mean), "std": json_f64(null.std),
                });
            }
            if let (Some(k), Some(inf)) = (args.influence, &left_out) {
                value = Some(inf.cka);
                pair["influence"] = Value::Array(
                    inf.top(k).into_iter().map(|(i, d)| json!({"sample": i, "delta": json_f64(d)})).collect(),
                );
            }
            pair["cka"] = json_f64(value.expect("at least one statistic was asked for"));
            pairs.push(pair);
        }
    }
    if json_output {
        print_json(&json!({
            "estimator": format!("{estimator:?}").to_lowercase(),
            "seed": args.seed,
            "pairs": pairs,
        }));
    } else {
        for p in &pairs {
            print_pair(p);
        }
    }
    Ok(())
}

fn print_pair(p: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!("{} \\ {}: CKA {:.4}", p["a"].as_str().unwrap_or(""), p["b"].as_str().unwrap_or(""), f(&p["cka"]));
    if let Some(ci) = p.get("interval").filter(|ci| ci["kind"] == "jackknife") {
        println!(
            "  {:.0}% interval [{:.4}, {:.4}] (jackknife, around the bias-corrected estimate {:.4}), standard error {:.4}",
            100.0 * f(&ci["level"]),
            f(&ci["lower"]),
            f(&ci["upper"]),
            f(&ci["estimate"]),
            f(&ci["std_error"])
        );
    } else if let Some(ci) = p.get("interval") {
        println!(
            "  {:.0}% interval [{:.4}, {:.4}] ({}), standard error {:.4} ({} resamples of {} blocks of up to {} samples)",
            100.0 * f(&ci["level"]),
            f(&ci["lower"]),
            f(&ci["upper"]),
            ci["kind"].as_str().unwrap_or(""),
            f(&ci["std_error"]),
            ci["resamples"],
            ci["blocks"],
            ci["block_size"]
        );
    }
    if let Some(null) = p.get("null") {
        println!(
            "  null ({} permutations): p = {:.4}, null mean {:.4}, sd {:.4}",
            null["permutations"],
            f(&null["p_value"]),
            f(&null["mean"]),
            f(&null["std"])
        );
    }
    if let Some(Value::Array(top)) = p.get("influence") {
        let listed: Vec<String> = top.iter().map(|e| format!("#{} ({:+.5})", e["sample"], f(&e["delta"]))).collect();
        println!("  most influential samples (CKA without it minus CKA): {}", listed.join(", "));
    }
}

/// The library's error with the pair of layers it concerns (the library calls them x and y).
fn in_pair(e: Error, acts_a: &Path, name_a: &str, acts_b: &Path, name_b: &str) -> Error {
    let at =
        |m: String| format!("{} layer {name_a:?} against {} layer {name_b:?}: {m}", acts_a.display(), acts_b.display());
    match e {
        Error::ShapeMismatch(m) => Error::ShapeMismatch(at(m)),
        Error::DegenerateInput(m) => Error::DegenerateInput(at(m)),
        Error::NonFinite(m) => Error::NonFinite(at(m)),
        Error::InvalidArgument(m) => Error::InvalidArgument(at(m)),
        other => other,
    }
}
