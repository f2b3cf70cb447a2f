//! `tlens curve`, `tlens rewind`, `tlens criticality`: the library's analyses of two checkpoints,
//! with the metrics from an evaluation server (`--eval-server`). Defaults are the library's.

use crate::align::{align_weights, SpecArgs};
use crate::checkpoints::{Pair, PairArgs};
use crate::common::{json_f64, print_json};
use crate::eval_server::{EvalServer, Needs, ServerArgs};
use crate::weights::{in_files, parse_grouping};
use serde_json::{json, Value};
use std::path::PathBuf;
use transferlens::align::MatchOptions;
use transferlens::criticality::{self, Eps, Noise, Options, Path as CritPath, Search};
use transferlens::eval::{Metric, Metrics};
use transferlens::{geometry, landscape, Context, Grouping, Result};

/// A comma-separated list of finite numbers (one argument, so that clap keeps it whole).
#[derive(Clone, Debug)]
struct Grid(Vec<f64>);

/// Parses a comma-separated list of finite numbers.
fn parse_list(text: &str) -> std::result::Result<Grid, String> {
    let values: std::result::Result<Vec<f64>, String> = text
        .split(',')
        .map(|v| match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            _ => Err(format!("{v:?} is not a finite number")),
        })
        .collect();
    let values = values?;
    if values.is_empty() {
        return Err("the list is empty".into());
    }
    Ok(Grid(values))
}

/// Which metrics a curve reports.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Metrics2 {
    Both,
    Loss,
    Error,
}

impl Metrics2 {
    fn needs(self) -> Needs {
        Needs { loss: !matches!(self, Metrics2::Error), error: !matches!(self, Metrics2::Loss) }
    }
}

/// The metrics of the models along the line from A (lambda = 0) to B (lambda = 1), and the
/// barrier of each metric on [0, 1].
///
/// Each point (1 - lambda) A + lambda B is written as a safetensors file holding every tensor of
/// A (its unpaired weights copied unchanged, with --only-shared) and evaluated by the server.
/// With --module NAME only that module moves; the rest stays at B. The barrier needs 0 and 1 in
/// the grid (it is null otherwise). With --align, B is first rewritten in the unit order that
/// best matches A (weight matching, as `tlens align`; --spec or an inferred spec), so that the
/// curve runs from A to the aligned B.
#[derive(clap::Args)]
#[command(
    allow_negative_numbers = true,
    after_help = "Example:\n  tlens curve pt_t1.safetensors pt_t2.safetensors --lambdas -1,-0.5,0,0.5,1,1.5,2 \\\n    \
--eval-server 'python3 examples/eval_server_torch.py' --json\n\n\
JSON (--json): {\"lambdas\": [...], \"loss\": [...], \"error\": [...], \"barrier\": {\"loss\": {\"value\", \"peak_lambda\", \
\"start\", \"end\", \"same_basin\", \"tolerance\"}, \"error\": {...}}, \"module\": name or null, \"evaluations\": int, \"left_out\": [...], \
\"alignment\": null or {\"spec\", \"passes\", \"converged\", \"distance_before\", \"distance_after\"}}"
)]
pub struct CurveArgs {
    /// Checkpoint A (lambda = 0).
    a: PathBuf,
    /// Checkpoint B (lambda = 1).
    b: PathBuf,
    /// The grid, comma-separated (default: the library's 50 points on [0, 1]).
    #[arg(long, value_parser = parse_list, allow_hyphen_values = true)]
    lambdas: Option<Grid>,
    /// Move only this module (the rest stays at B).
    #[arg(long)]
    module: Option<String>,
    /// How tensor names group into modules (for --module): first, depth:N, tensor, prefixes:...
    #[arg(long, default_value = "first", value_parser = parse_grouping)]
    modules: Grouping,
    /// The metrics to ask for and report.
    #[arg(long, value_enum, default_value = "both")]
    metrics: Metrics2,
    /// Two models are in one basin when the barrier is at most this (the study's tolerance).
    #[arg(long, default_value_t = transferlens::study::BARRIER_TOLERANCE)]
    tolerance: f64,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    pairing: PairArgs,
    /// Align B to A first (weight matching; see `tlens align`).
    #[arg(long)]
    align: bool,
    #[command(flatten)]
    spec: SpecArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn barrier_json(b: &landscape::Barrier, tolerance: f64) -> Value {
    json!({
        "value": json_f64(b.value),
        "peak_lambda": b.peak_lambda,
        "start": json_f64(b.start),
        "end": json_f64(b.end),
        "same_basin": b.same_basin,
        "tolerance": tolerance,
    })
}

fn column(curve: &[Metrics], metric: Metric) -> Value {
    Value::Array(curve.iter().map(|m| json_f64(metric.of(m))).collect())
}

pub fn curve(args: CurveArgs) -> Result<()> {
    let pair = Pair::open(&args.a, &args.b, &args.pairing)?;
    let (a, mut b) = pair.sets_on_a(&args.modules)?;
    let mut alignment = Value::Null;
    if args.align {
        let (spec, source) = args.spec.resolve(&a, &b, &args.a, &args.b)?;
        let before = geometry::distance(&Context::cpu(), &a, &b)?.total;
        let (matching, aligned) =
            align_weights(&spec, &a, &b, &MatchOptions::default()).map_err(|e| in_files(e, &args.a, &args.b))?;
        b = aligned;
        let after = geometry::distance(&Context::cpu(), &a, &b)?.total;
        alignment = json!({"spec": source, "passes": matching.passes, "converged": matching.converged,
                           "distance_before": json_f64(before), "distance_after": json_f64(after)});
    } else if args.spec.is_given() {
        return Err(transferlens::Error::InvalidArgument("--spec goes with --align".into()));
    }
    let module = args.module.as_deref().map(|m| geometry::module_named(&a, m)).transpose()?;
    let lambdas = args.lambdas.clone().map_or_else(landscape::default_lambdas, |g| g.0);
    let needs = args.metrics.needs();
    let mut server = EvalServer::start(&args.server, needs)?;
    let mut live = a.try_clone()?;
    let ctx = Context::cpu();
    let curve = landscape::interpolation_curve(&ctx, &mut server, &a, &b, &mut live, &lambdas, module)
        .map_err(|e| in_files(e, &args.a, &args.b))?;
    let evaluations = server.evaluations();
    drop(server);
    let has_endpoints = lambdas.contains(&0.0) && lambdas.contains(&1.0);
    let mut metrics = Vec::new();
    if needs.loss {
        metrics.push(Metric::Loss);
    }
    if needs.error {
        metrics.push(Metric::Error);
    }
    let mut barriers = Vec::new();
    for &m in &metrics {
        let b = if has_endpoints { Some(landscape::curve_barrier(&lambdas, &curve, m, args.tolerance)?) } else { None };
        barriers.push((m, b));
    }
    if args.json {
        let mut out = serde_json::Map::new();
        out.insert("lambdas".into(), json!(lambdas));
        for &m in &metrics {
            out.insert(m.name().into(), column(&curve, m));
        }
        let barrier: serde_json::Map<String, Value> = barriers
            .iter()
            .map(|(m, b)| (m.name().to_string(), b.as_ref().map_or(Value::Null, |b| barrier_json(b, args.tolerance))))
            .collect();
        out.insert("barrier".into(), Value::Object(barrier));
        out.insert("module".into(), json!(args.module));
        out.insert("evaluations".into(), json!(evaluations));
        out.insert("copied_from_a".into(), json!(pair.copied_from_a()));
        out.insert("left_out".into(), pair.left_out_json());
        out.insert("alignment".into(), alignment);
        print_json(&Value::Object(out));
        return Ok(());
    }
    if let Value::Object(al) = &alignment {
        println!(
            "B aligned to A first (spec: {}; {} passes): l2 distance to A {:.6} before, {:.6} after",
            al["spec"].as_str().unwrap_or(""),
            al["passes"],
            al["distance_before"].as_f64().unwrap_or(f64::NAN),
            al["distance_after"].as_f64().unwrap_or(f64::NAN)
        );
    }
    match &args.module {
        Some(m) => println!("module {m} moved from A (lambda = 0) to B (lambda = 1); the rest at B"),
        None => println!("from A (lambda = 0) to B (lambda = 1)"),
    }
    print!("{:>10}", "lambda");
    for m in &metrics {
        print!("  {:>12}", m.name());
    }
    println!();
    for (l, c) in lambdas.iter().zip(&curve) {
        print!("{l:>10.4}");
        for &m in &metrics {
            print!("  {:>12.6}", m.of(c));
        }
        println!();
    }
    for (m, b) in &barriers {
        match b {
            Some(b) => println!(
                "barrier ({}): {:.6} at lambda = {} (start {:.6}, end {:.6}); {} (tolerance {})",
                m.name(),
                b.value,
                b.peak_lambda,
                b.start,
                b.end,
                if b.same_basin { "same basin" } else { "not the same basin" },
                args.tolerance
            ),
            None => println!("barrier ({}): needs 0 and 1 in --lambdas", m.name()),
        }
    }
    println!("{evaluations} evaluations");
    let copied = pair.copied_from_a();
    if !copied.is_empty() {
        println!("copied from A unchanged into every candidate: {}", copied.join(", "));
    }
    pair.print_left_out();
    Ok(())
}

/// Each module's rewind curve: the metrics with that module moved from its final weights
/// (alpha = 1) toward its initial ones (alpha = 0), every other module final.
///
/// Candidates hold every tensor of FINAL (its unpaired weights, such as a fresh head, unchanged).
#[derive(clap::Args)]
#[command(after_help = "Example:\n  tlens rewind pretrained.safetensors finetuned/ --only-shared \\\n    \
--eval-server 'python3 examples/eval_server_torch.py' --modules depth:2 --json\n\n\
JSON (--json): {\"alphas\": [...], \"modules\": [{\"name\", \"numel\", \"loss\": [...], \"error\": [...]}], \
\"evaluations\": int, \"left_out\": [...]}")]
pub struct RewindArgs {
    /// The initial checkpoint (alpha = 0).
    init: PathBuf,
    /// The final checkpoint (alpha = 1).
    #[arg(value_name = "FINAL")]
    final_: PathBuf,
    /// The alphas, comma-separated (default: 1 down to 0 in 11 steps, the criticality search's
    /// grid).
    #[arg(long, value_parser = parse_list, allow_hyphen_values = true)]
    alphas: Option<Grid>,
    /// Only these modules (repeatable; default: every module).
    #[arg(long)]
    module: Vec<String>,
    /// How tensor names group into modules: first, depth:N, tensor, prefixes:P1,P2,...
    #[arg(long, default_value = "first", value_parser = parse_grouping)]
    modules: Grouping,
    /// The metrics to ask for and report.
    #[arg(long, value_enum, default_value = "both")]
    metrics: Metrics2,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    pairing: PairArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn rewind(args: RewindArgs) -> Result<()> {
    let pair = Pair::open(&args.init, &args.final_, &args.pairing)?;
    let (init, final_) = pair.sets_on_b(&args.modules)?;
    let chosen: Vec<usize> = if args.module.is_empty() {
        (0..final_.modules().len()).collect()
    } else {
        args.module.iter().map(|m| geometry::module_named(&final_, m)).collect::<Result<_>>()?
    };
    let alphas = args.alphas.clone().map_or_else(|| landscape::linspace(1.0, 0.0, 11), |g| g.0);
    let needs = args.metrics.needs();
    let mut server = EvalServer::start(&args.server, needs)?;
    let mut live = final_.try_clone()?;
    let ctx = Context::cpu();
    let mut curves = Vec::with_capacity(chosen.len());
    for &m in &chosen {
        let c = criticality::rewind_curve(&ctx, &mut server, &init, &final_, &mut live, m, &alphas)
            .map_err(|e| in_files(e, &args.init, &args.final_))?;
        curves.push(c);
    }
    let evaluations = server.evaluations();
    drop(server);
    let metrics: Vec<Metric> =
        [(needs.loss, Metric::Loss), (needs.error, Metric::Error)].into_iter().filter(|x| x.0).map(|x| x.1).collect();
    if args.json {
        let modules: Vec<Value> = chosen
            .iter()
            .zip(&curves)
            .map(|(&m, c)| {
                let module = &final_.modules()[m];
                let mut o = serde_json::Map::new();
                o.insert("name".into(), json!(module.name));
                o.insert("numel".into(), json!(module.numel));
                for &metric in &metrics {
                    o.insert(metric.name().into(), column(c, metric));
                }
                Value::Object(o)
            })
            .collect();
        print_json(&json!({
            "alphas": alphas,
            "modules": modules,
            "evaluations": evaluations,
            "copied_from_final": pair.copied_from_b(),
            "left_out": pair.left_out_json(),
        }));
        return Ok(());
    }
    for (&m, c) in chosen.iter().zip(&curves) {
        let module = &final_.modules()[m];
        println!("module {} ({} parameters)", module.name, module.numel);
        print!("{:>10}", "alpha");
        for metric in &metrics {
            print!("  {:>12}", metric.name());
        }
        println!();
        for (a, p) in alphas.iter().zip(c) {
            print!("{a:>10.4}");
            for &metric in &metrics {
                print!("  {:>12.6}", metric.of(p));
            }
            println!();
        }
        println!();
    }
    println!("{evaluations} evaluations");
    print_copied_from_final(&pair);
    pair.print_left_out();
    Ok(())
}

fn print_copied_from_final(pair: &Pair) {
    let copied = pair.copied_from_b();
    if !copied.is_empty() {
        println!("copied from FINAL unchanged into every candidate: {}", copied.join(", "));
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum MetricArg {
    Error,
    Loss,
}

/// Parses `--eps`: increase:D, relative:R or absolute:E.
fn parse_eps(text: &str) -> std::result::Result<Eps, String> {
    let (kind, v) =
        text.split_once(':').ok_or_else(|| format!("{text:?} is not increase:D, relative:R or absolute:E"))?;
    let v: f64 = v.parse().map_err(|_| format!("{v:?} is not a number"))?;
    match kind {
        "increase" => Ok(Eps::Increase(v)),
        "relative" => Ok(Eps::Relative(v)),
        "absolute" => Ok(Eps::Absolute(v)),
        _ => Err(format!("{kind:?} is not increase, relative or absolute")),
    }
}

/// Parses `--noise`: relative, or absolute:SCALE.
fn parse_noise(text: &str) -> std::result::Result<Noise, String> {
    if text == "relative" {
        return Ok(Noise::Relative);
    }
    match text.strip_prefix("absolute:").map(str::parse::<f64>) {
        Some(Ok(scale)) => Ok(Noise::Absolute { scale }),
        _ => Err(format!("{text:?} is not relative or absolute:SCALE")),
    }
}

/// Module criticality (Chatterji et al.) of every module and network criticality, with the
/// library's options and defaults; the PAC-Bayes bound with --samples M.
///
/// Each point evaluated is FINAL with one module moved toward INIT plus Gaussian noise, written
/// with every tensor of FINAL. Defaults (docs/analyses.md, section 6): 0-1 error, eps = final
/// error + 0.02, noise relative to the weights, the refined search (11 alphas, tolerance 0.02, 6
/// golden-section steps), 10 noise samples, sigma floor 1e-3, 2 standard errors, 3 repeats.
#[derive(clap::Args)]
#[command(after_help = "Example:\n  tlens criticality init.safetensors final.safetensors \\\n    \
--eval-server 'python3 examples/eval_server_torch.py' --samples 50000 --json\n\n\
JSON (--json): {\"modules\": [{\"name\", \"numel\", \"value\", \"feasible\", \"repeats\", \"spread\", \"per_parameter\", \
\"pac_bayes_term\", \"alpha\", \"sigma\", \"noise_std\", \"expected\", \"expected_se\", \"rewound_metric\", \"rewind_area\", \
\"points\"}], \"total\", \"total_spread\", \"ranking_agreement\", \"final_metric\", \"eps\", \"joint_expected\", \"metric\", \
\"bound\": {\"value\", \"vacuous\", \"m\", \"delta\"} or null, \"evaluations\", \"left_out\": [...]}")]
pub struct CriticalityArgs {
    /// The initial checkpoint.
    init: PathBuf,
    /// The final checkpoint.
    #[arg(value_name = "FINAL")]
    final_: PathBuf,
    /// The metric the constraint reads.
    #[arg(long, value_enum)]
    metric: Option<MetricArg>,
    /// The threshold: increase:D (final + D), relative:R ((1 + R) final) or absolute:E.
    #[arg(long, value_parser = parse_eps)]
    eps: Option<Eps>,
    /// The noise: relative (to each module's weights) or absolute:SCALE.
    #[arg(long, value_parser = parse_noise)]
    noise: Option<Noise>,
    /// Grid points of alpha in the search.
    #[arg(long)]
    alphas: Option<usize>,
    /// Noise samples per point.
    #[arg(long)]
    noise_samples: Option<usize>,
    /// Independent noise seeds.
    #[arg(long)]
    repeats: Option<usize>,
    /// The noise seed of the first repeat.
    #[arg(long)]
    seed: Option<u64>,
    /// The smallest sigma a feasible point may have.
    #[arg(long)]
    sigma_floor: Option<f64>,
    /// Standard errors of the noisy mean added before comparing with eps.
    #[arg(long)]
    confidence: Option<f64>,
    /// Start from the public implementation's options (grid search, absolute noise, eps = 1.01
    /// final, one seed) instead of the library's defaults; other options override.
    #[arg(long)]
    reference: bool,
    /// The number of training samples the model was fitted on (m): adds the PAC-Bayes bound.
    #[arg(long)]
    samples: Option<u64>,
    /// The bound's confidence parameter.
    #[arg(long, default_value_t = 0.05)]
    delta: f64,
    /// How tensor names group into modules: first, depth:N, tensor, prefixes:P1,P2,...
    #[arg(long, default_value = "first", value_parser = parse_grouping)]
    modules: Grouping,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    pairing: PairArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl CriticalityArgs {
    fn options(&self) -> Options {
        let mut o = if self.reference { Options::reference() } else { Options::default() };
        if let Some(m) = self.metric {
            o.metric = match m {
                MetricArg::Error => Metric::Error,
                MetricArg::Loss => Metric::Loss,
            };
        }
        if let Some(e) = self.eps {
            o.eps = e;
        }
        if let Some(n) = self.noise {
            o.noise = n;
        }
        if let Some(a) = self.alphas {
            o.search = match o.search {
                Search::Grid { sigmas, .. } => Search::Grid { alphas: a, sigmas },
                Search::Refined { tolerance, alpha_steps, .. } => Search::Refined { alphas: a, tolerance, alpha_steps },
            };
        }
        if let Some(n) = self.noise_samples {
            o.samples = n;
        }
        if let Some(r) = self.repeats {
            o.repeats = r;
        }
        if let Some(s) = self.seed {
            o.seed = s;
        }
        if let Some(f) = self.sigma_floor {
            o.sigma_floor = f;
        }
        if let Some(c) = self.confidence {
            o.confidence = c;
        }
        o
    }
}

pub fn criticality(args: CriticalityArgs) -> Result<()> {
    let opts = args.options();
    let pair = Pair::open(&args.init, &args.final_, &args.pairing)?;
    let (init, final_) = pair.sets_on_b(&args.modules)?;
    let needs = Needs { loss: opts.metric == Metric::Loss, error: opts.metric == Metric::Error };
    let mut server = EvalServer::start(&args.server, needs)?;
    let mut live = final_.try_clone()?;
    let ctx = Context::cpu();
    let path = CritPath::Straight { init: &init, final_: &final_ };
    let net = criticality::network_criticality(&ctx, &mut server, path, &mut live, &opts)
        .map_err(|e| in_files(e, &args.init, &args.final_))?;
    let evaluations = server.evaluations();
    drop(server);
    let bound = args.samples.map(|m| criticality::pac_bayes(&net, m, args.delta, None).map(|b| (m, b))).transpose()?;
    if args.json {
        let modules: Vec<Value> = net
            .modules
            .iter()
            .map(|c| {
                json!({
                    "name": c.module, "numel": c.numel, "value": json_f64(c.value), "feasible": c.feasible,
                    "repeats": c.repeats.iter().map(|&v| json_f64(v)).collect::<Vec<_>>(),
                    "spread": json_f64(c.spread), "per_parameter": json_f64(c.per_parameter),
                    "pac_bayes_term": json_f64(c.pac_bayes_term), "alpha": c.alpha, "sigma": c.sigma,
                    "noise_std": c.noise_std, "expected": c.expected, "expected_se": c.expected_se,
                    "rewound_metric": c.rewound_metric, "rewind_area": c.rewind_area, "points": c.points,
                })
            })
            .collect();
        print_json(&json!({
            "modules": modules,
            "total": json_f64(net.total),
            "total_spread": json_f64(net.total_spread),
            "ranking_agreement": net.ranking_agreement,
            "final_metric": net.final_metric,
            "eps": net.eps,
            "joint_expected": json_f64(net.joint_expected),
            "metric": opts.metric.name(),
            "bound": bound.map(|(m, b)| json!({"value": json_f64(b.value), "vacuous": b.vacuous, "m": m, "delta": args.delta})),
            "evaluations": evaluations,
            "copied_from_final": pair.copied_from_b(),
            "left_out": pair.left_out_json(),
        }));
        return Ok(());
    }
    let w = net.modules.iter().map(|c| c.module.len()).max().unwrap_or(0).max(6);
    println!("{} of FINAL: {:.6}; eps = {:.6}", opts.metric.name(), net.final_metric, net.eps);
    println!(
        "{:w$}  {:>12}  {:>14}  {:>10}  {:>12}  {:>8}  {:>10}  {:>10}",
        "module", "numel", "criticality", "spread", "per param", "alpha", "sigma", "rewound"
    );
    for c in &net.modules {
        println!(
            "{:w$}  {:>12}  {:>14.6e}  {:>10.3e}  {:>12.6e}  {:>8.4}  {:>10.4e}  {:>10.6}{}",
            c.module,
            c.numel,
            c.value,
            c.spread,
            c.per_parameter,
            c.alpha,
            c.sigma,
            c.rewound_metric,
            if c.feasible { "" } else { "  (infeasible)" }
        );
    }
    println!(
        "network criticality: {:.6e} (spread {:.3e}); ranking agreement {:.2}; joint expected {} {:.6}",
        net.total,
        net.total_spread,
        net.ranking_agreement,
        opts.metric.name(),
        net.joint_expected
    );
    if let Some((m, b)) = bound {
        println!(
            "PAC-Bayes bound (m = {m}, delta = {}): {:.6}{}",
            args.delta,
            b.value,
            if b.vacuous { " (vacuous: over 1)" } else { "" }
        );
    }
    println!("{evaluations} evaluations");
    print_copied_from_final(&pair);
    pair.print_left_out();
    Ok(())
}
