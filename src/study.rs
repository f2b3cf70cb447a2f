//! The embedded study: a miniature of "What is being transferred in transfer learning?" that
//! runs with no download (ANALYSES.md section 10).
//!
//! Two image tasks are generated procedurally: 12 x 12 single-channel images of short strokes.
//! The source task's class is the orientation of its strokes (8 orientations); the target's class
//! is one of 4 other orientations times the stroke length (short or long), so both tasks are read
//! through oriented-stroke features, and block shuffling (which cuts strokes apart) hurts a model
//! that reuses them. The target has few training images, so that what P learned matters.
//!
//! Models (the built-in MLP 144-128-64-32-8, modules fc1..fc4): RI (random init), P (trained on
//! the source), two P-T (P fine-tuned on the target with a fresh head, differing in data order),
//! two RI-T (trained on the target from two random inits) and two RI-T from one init (differing
//! in data order). Every analysis of the library is run on them and the headline findings of the
//! study are checked, each reported as held or not.

use crate::backend::Context;
use crate::cka::{self, Estimator};
use crate::criticality::{self, Eps, Noise, Path, Search};
use crate::data;
use crate::error::{Error, Result};
use crate::eval::{Metric, MlpEvaluator};
use crate::geometry;
use crate::landscape;
use crate::model::{Dataset, Metrics, Mlp, TrainOptions};
use crate::params::ParamSet;
use crate::tensor::Matrix;
use serde_json::{json, Map, Value};

/// Image side.
pub const SIDE: usize = 12;
const CLASSES: usize = 8;

/// How big a run is.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub name: &'static str,
    pub source_train: usize,
    pub target_train: usize,
    pub target_test: usize,
    /// Rows of the target's held-out set on which criticality is measured.
    pub criticality_rows: usize,
    pub source_epochs: usize,
    pub target_epochs: usize,
    /// Interpolation points per unit of lambda on [-1, 2].
    pub lambda_per_unit: usize,
    pub criticality_search: Search,
    pub criticality_samples: usize,
    /// Block sizes of the shuffle sweep (each divides SIDE; SIDE itself is the identity).
    pub blocks: Vec<usize>,
    pub rewind_points: usize,
}

impl Config {
    pub fn full() -> Config {
        Config {
            name: "full",
            source_train: 8000,
            target_train: 400,
            target_test: 2000,
            criticality_rows: 1000,
            source_epochs: 20,
            target_epochs: 40,
            lambda_per_unit: 20,
            criticality_search: Search::Refined { alphas: 11, tolerance: 0.02, alpha_steps: 6 },
            criticality_samples: 10,
            blocks: vec![1, 2, 3, 4, 6, 12],
            rewind_points: 11,
        }
    }
    pub fn quick() -> Config {
        Config {
            name: "quick",
            source_train: 4000,
            target_train: 400,
            target_test: 1000,
            criticality_rows: 400,
            source_epochs: 12,
            target_epochs: 30,
            lambda_per_unit: 10,
            criticality_search: Search::Refined { alphas: 11, tolerance: 0.05, alpha_steps: 0 },
            criticality_samples: 10,
            blocks: vec![1, 2, 4, 12],
            rewind_points: 6,
        }
    }
    /// A few seconds: for tests of the pipeline, not of the findings.
    pub fn tiny() -> Config {
        Config {
            name: "tiny",
            source_train: 600,
            target_train: 150,
            target_test: 200,
            criticality_rows: 100,
            source_epochs: 4,
            target_epochs: 6,
            lambda_per_unit: 3,
            criticality_search: Search::Refined { alphas: 3, tolerance: 0.3, alpha_steps: 0 },
            criticality_samples: 3,
            blocks: vec![1, 12],
            rewind_points: 3,
        }
    }
}

/// Barrier tolerance on the target test error: one percentage point.
pub const BARRIER_TOLERANCE: f64 = 0.01;

/// A task's images.
#[derive(Debug, Clone)]
pub struct Task {
    pub train: Dataset,
    pub test: Dataset,
}

fn uniform(seed: u64, stream: u64, i: u64) -> f64 {
    crate::rng::block_words(seed, stream, i)[0] as f64 / 4294967296.0
}

/// Renders one image of strokes: each (orientation, length) pair is one stroke at a random place.
fn render(strokes: &[(f64, f64)], seed: u64, index: u64, out: &mut [f32]) {
    let mut noise = [0f64; SIDE * SIDE];
    crate::rng::normals_f64(seed, 1_000_000 + index, 0, &mut noise);
    for (p, z) in out.iter_mut().zip(&noise) {
        *p = (0.15 * z) as f32;
    }
    for (s, &(theta, len)) in strokes.iter().enumerate() {
        let r = |k: u64| uniform(seed, index, 4 * s as u64 + k);
        let (cx, cy) = (2.5 + 7.0 * r(0), 2.5 + 7.0 * r(1));
        let theta = theta + (r(2) - 0.5) * 0.2; // +-6 degrees of jitter
        let amp = 0.8 + 0.4 * r(3);
        let (dx, dy) = (theta.cos() * len / 2.0, theta.sin() * len / 2.0);
        let (ax, ay, bx, by) = (cx - dx, cy - dy, cx + dx, cy + dy);
        for y in 0..SIDE {
            for x in 0..SIDE {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let (vx, vy) = (bx - ax, by - ay);
                let t = (((px - ax) * vx + (py - ay) * vy) / (vx * vx + vy * vy)).clamp(0.0, 1.0);
                let (qx, qy) = (ax + t * vx - px, ay + t * vy - py);
                let d2 = qx * qx + qy * qy;
                out[y * SIDE + x] += (amp * (-d2 / (2.0 * 0.6 * 0.6)).exp()) as f32;
            }
        }
    }
}

/// The source task: class c = strokes at orientation c * pi / 8 (2 or 3 strokes of length 5).
/// The target task: class c = orientation (2k + 1) pi / 8 for k = c / 2, long (7) or short (3)
/// strokes for c even or odd (2 strokes).
fn make(target: bool, n: usize, seed: u64) -> Result<Dataset> {
    let mut x = vec![0f32; n * SIDE * SIDE];
    let mut y = Vec::with_capacity(n);
    let pi = std::f64::consts::PI;
    for i in 0..n {
        let c = (uniform(seed, 2_000_000, i as u64) * CLASSES as f64) as usize % CLASSES;
        let strokes: Vec<(f64, f64)> = if target {
            let theta = (2 * (c / 2) + 1) as f64 * pi / 8.0;
            let len = if c % 2 == 0 { 7.0 } else { 3.0 };
            vec![(theta, len); 2]
        } else {
            let k = 2 + (uniform(seed, 2_000_001, i as u64) * 2.0) as usize;
            vec![(c as f64 * pi / 8.0, 5.0); k]
        };
        render(&strokes, seed, i as u64, &mut x[i * SIDE * SIDE..(i + 1) * SIDE * SIDE]);
        y.push(c as u32);
    }
    Dataset::new(x, y, SIDE * SIDE, CLASSES)
}

/// The source and target tasks of a configuration.
pub fn tasks(cfg: &Config) -> Result<(Task, Task)> {
    let source = Task { train: make(false, cfg.source_train, 11)?, test: make(false, 1000.min(cfg.target_test), 12)? };
    let target = Task { train: make(true, cfg.target_train, 21)?, test: make(true, cfg.target_test, 22)? };
    Ok((source, target))
}

fn shuffled(d: &Dataset, b: usize, seed: u64) -> Result<Dataset> {
    let mut d = d.clone();
    data::block_shuffle(&mut d.x, d.n, 1, SIDE, SIDE, b, seed)?;
    Ok(d)
}

/// A report of progress: (what is running, fraction done).
pub type Progress<'a> = &'a mut dyn FnMut(&str, f64);

/// The study's figures, as JSON (see [`run`]) with the tables as text.
pub struct Outcome {
    pub json: Value,
    pub tables: String,
    pub html: String,
}

fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null)
}

struct Models {
    ri: ParamSet,
    p: ParamSet,
    pt: [ParamSet; 2],
    rit: [ParamSet; 2],
    rit_same: [ParamSet; 2],
    /// The initial weights of P-T (P with a fresh head) and of the RI-T models.
    pt_init: ParamSet,
    rit_init: [ParamSet; 2],
}

fn source_opts(cfg: &Config) -> TrainOptions {
    TrainOptions { epochs: cfg.source_epochs, batch: 32, lr: 0.05, momentum: 0.9, weight_decay: 0.0, seed: 100 }
}
fn target_opts(cfg: &Config, pretrained: bool, seed: u64) -> TrainOptions {
    // Fine-tuning uses a smaller step, as the study's fine-tuning does.
    let lr = if pretrained { 0.01 } else { 0.05 };
    TrainOptions { epochs: cfg.target_epochs, batch: 16, lr, momentum: 0.9, weight_decay: 0.0, seed }
}

/// The sweep trains P-T and RI-T alike, so that their training losses compare optimisation
/// speed rather than step sizes.
fn sweep_opts(cfg: &Config, seed: u64) -> TrainOptions {
    target_opts(cfg, false, seed)
}

/// P with a fresh head (the last layer re-initialised from `seed`).
fn with_fresh_head(ctx: &Context, mlp: &Mlp, p: &ParamSet, seed: u64) -> Result<ParamSet> {
    let fresh = mlp.init(seed)?;
    let head = mlp.layers() - 1;
    let mut out = p.try_clone()?;
    // Module `head` at the fresh init, the rest at P: a rewind of P's head to `fresh`.
    geometry::rewind(ctx, &fresh, p, head, 0.0, &mut out)?;
    Ok(out)
}

fn train_models(ctx: &Context, mlp: &Mlp, cfg: &Config, src: &Task, tgt: &Task, progress: Progress) -> Result<Models> {
    let ri = mlp.init(1)?;
    let mut p = ri.try_clone()?;
    progress("training P on the source task", 0.02);
    mlp.train(&mut p, &src.train, &source_opts(cfg))?;
    let pt_init = with_fresh_head(ctx, mlp, &p, 7)?;
    let mut pt = [pt_init.try_clone()?, pt_init.try_clone()?];
    for (k, m) in pt.iter_mut().enumerate() {
        progress("fine-tuning P-T models", 0.08 + 0.02 * k as f64);
        mlp.train(m, &tgt.train, &target_opts(cfg, true, 200 + k as u64))?;
    }
    let rit_init = [mlp.init(2)?, mlp.init(3)?];
    let mut rit = [rit_init[0].try_clone()?, rit_init[1].try_clone()?];
    for (k, m) in rit.iter_mut().enumerate() {
        progress("training RI-T models", 0.12 + 0.02 * k as f64);
        mlp.train(m, &tgt.train, &target_opts(cfg, false, 300 + k as u64))?;
    }
    let mut rit_same = [rit_init[0].try_clone()?, rit_init[0].try_clone()?];
    for (k, m) in rit_same.iter_mut().enumerate() {
        // Same init as RI-T #1, other data orders.
        mlp.train(m, &tgt.train, &target_opts(cfg, false, 400 + k as u64))?;
    }
    Ok(Models { ri, p, pt, rit, rit_same, pt_init, rit_init })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Runs the study with configuration `cfg`: training on the CPU, the analyses on `ctx`'s backend
/// where they have a CUDA path (CKA, and the evaluations of curves, barriers and criticality).
pub fn run(ctx: &Context, cfg: &Config, progress: Progress) -> Result<Outcome> {
    let started = std::time::Instant::now();
    let mlp = Mlp::new(&[SIDE * SIDE, 128, 64, 32, CLASSES])?;
    let layers = mlp.layer_names();
    progress("generating the tasks", 0.0);
    let (src, tgt) = tasks(cfg)?;
    let m = train_models(ctx, &mlp, cfg, &src, &tgt, progress)?;
    let mut tables = String::new();
    let mut findings: Vec<(String, bool, String)> = Vec::new();

    // Accuracy.
    progress("evaluating", 0.2);
    let acc = |p: &ParamSet| -> Result<Metrics> { mlp.evaluate(p, &tgt.test) };
    let mut accuracy = Map::new();
    let named: Vec<(&str, &ParamSet)> = vec![
        ("RI", &m.ri),
        ("P-T #1", &m.pt[0]),
        ("P-T #2", &m.pt[1]),
        ("RI-T #1", &m.rit[0]),
        ("RI-T #2", &m.rit[1]),
        ("RI-T same init #1", &m.rit_same[0]),
        ("RI-T same init #2", &m.rit_same[1]),
    ];
    tables.push_str(&format!("Target test accuracy ({} test images, {} training images)\n", tgt.test.n, tgt.train.n));
    let p_source = mlp.evaluate(&m.p, &src.test)?;
    tables.push_str(&format!("  {:<20} {:.4}  (source task)\n", "P", p_source.accuracy));
    accuracy.insert("P (source task)".into(), num(p_source.accuracy));
    for (name, p) in &named {
        let a = acc(p)?;
        tables.push_str(&format!("  {:<20} {:.4}\n", name, a.accuracy));
        accuracy.insert((*name).into(), num(a.accuracy));
    }
    let pt_acc = mean(&[acc(&m.pt[0])?.accuracy, acc(&m.pt[1])?.accuracy]);
    let rit_acc = mean(&[acc(&m.rit[0])?.accuracy, acc(&m.rit[1])?.accuracy]);
    findings.push((
        "Transfer helps: P-T models are more accurate on the target than RI-T models".into(),
        pt_acc > rit_acc,
        format!("mean accuracy P-T {pt_acc:.4}, RI-T {rit_acc:.4}"),
    ));

    // CKA per layer on the target test set.
    progress("CKA per layer", 0.25);
    let acts = |p: &ParamSet| mlp.activations(p, &tgt.test);
    let (a_p, a_pt1, a_pt2, a_rit1, a_rit2) =
        (acts(&m.p)?, acts(&m.pt[0])?, acts(&m.pt[1])?, acts(&m.rit[0])?, acts(&m.rit[1])?);
    let widths = &mlp.sizes()[1..];
    let n = tgt.test.n;
    let cka_pair = |x: &[Vec<f32>], y: &[Vec<f32>]| -> Result<Vec<f64>> {
        (0..layers.len())
            .map(|l| {
                let mx = Matrix::contiguous(&x[l], n, widths[l])?;
                let my = Matrix::contiguous(&y[l], n, widths[l])?;
                cka::linear_cka(ctx, &mx, &my, Estimator::Biased)
            })
            .collect()
    };
    let cka_rows: Vec<(&str, Vec<f64>)> = vec![
        ("P-T & P", cka_pair(&a_pt1, &a_p)?),
        ("P-T & P-T", cka_pair(&a_pt1, &a_pt2)?),
        ("P-T & RI-T", cka_pair(&a_pt1, &a_rit1)?),
        ("RI-T & RI-T", cka_pair(&a_rit1, &a_rit2)?),
    ];
    tables.push_str("\nCKA (linear, biased) per layer on the target test set\n");
    tables.push_str(&format!("  {:<12}", ""));
    for l in &layers {
        tables.push_str(&format!(" {l:>8}"));
    }
    tables.push('\n');
    let mut cka_json = Map::new();
    for (name, v) in &cka_rows {
        tables.push_str(&format!("  {name:<12}"));
        let mut row = Map::new();
        for (l, x) in layers.iter().zip(v) {
            tables.push_str(&format!(" {x:>8.4}"));
            row.insert(l.clone(), num(*x));
        }
        tables.push('\n');
        cka_json.insert((*name).into(), Value::Object(row));
    }
    // The head's CKA is dominated by the shared labels; the features are the hidden layers.
    let hidden = layers.len() - 1;
    let (c_ptpt, c_ritrit) = (mean(&cka_rows[1].1[..hidden]), mean(&cka_rows[3].1[..hidden]));
    findings.push((
        "Two P-T models have more similar features than two RI-T models (CKA, mean over hidden layers)".into(),
        c_ptpt > c_ritrit,
        format!("P-T & P-T {c_ptpt:.4}, RI-T & RI-T {c_ritrit:.4}"),
    ));

    // Distances.
    progress("distances", 0.3);
    let dist = |a: &ParamSet, b: &ParamSet| geometry::distance(ctx, a, b);
    let dist_rows = vec![
        ("2 P-T", dist(&m.pt[0], &m.pt[1])?),
        ("2 RI-T", dist(&m.rit[0], &m.rit[1])?),
        ("P-T & P", dist(&m.pt[0], &m.p)?),
        ("RI-T & P", dist(&m.rit[0], &m.p)?),
    ];
    tables.push_str("\nl2 distance per module and in total\n");
    tables.push_str(&format!("  {:<10}", ""));
    for l in &layers {
        tables.push_str(&format!(" {l:>8}"));
    }
    tables.push_str(&format!(" {:>8}\n", "total"));
    let mut dist_json = Map::new();
    let mut dist_modules_json = Map::new();
    for (name, d) in &dist_rows {
        tables.push_str(&format!("  {name:<10}"));
        let mut row = Map::new();
        for (l, x) in layers.iter().zip(&d.modules) {
            tables.push_str(&format!(" {x:>8.3}"));
            row.insert(l.clone(), num(*x));
        }
        tables.push_str(&format!(" {:>8.3}\n", d.total));
        dist_json.insert((*name).into(), num(d.total));
        dist_modules_json.insert((*name).into(), Value::Object(row));
    }
    findings.push((
        "Two P-T models are closer in weight space than two RI-T models (total l2)".into(),
        dist_rows[0].1.total < dist_rows[1].1.total,
        format!("2 P-T {:.3}, 2 RI-T {:.3}", dist_rows[0].1.total, dist_rows[1].1.total),
    ));
    findings.push((
        "P-T models stay closer to P than RI-T models are (total l2)".into(),
        dist_rows[2].1.total < dist_rows[3].1.total,
        format!("P-T & P {:.3}, RI-T & P {:.3}", dist_rows[2].1.total, dist_rows[3].1.total),
    ));

    // Interpolation curves and barriers on the target test error.
    progress("interpolation curves", 0.35);
    let lambdas = landscape::extrapolation_lambdas(cfg.lambda_per_unit);
    let mut ev = MlpEvaluator::new(mlp.clone(), tgt.test.clone());
    let mut live = m.p.try_clone()?;
    let pairs: Vec<(&str, &ParamSet, &ParamSet)> = vec![
        ("P-T & P-T", &m.pt[0], &m.pt[1]),
        ("RI-T & RI-T", &m.rit[0], &m.rit[1]),
        ("RI-T & RI-T (same init)", &m.rit_same[0], &m.rit_same[1]),
    ];
    let mut barrier_json = Map::new();
    let mut barrier_detail = Map::new();
    let mut curves: Vec<(String, Vec<f64>)> = Vec::new();
    let mut barriers = Vec::new();
    tables.push_str(&format!(
        "\nBarrier on the target test error along the segment (tolerance {BARRIER_TOLERANCE}; curves on [-1, 2], {} points)\n",
        lambdas.len()
    ));
    for (name, a, b) in &pairs {
        let curve = landscape::interpolation_curve(ctx, &mut ev, a, b, &mut live, &lambdas, None)?;
        let bar = landscape::curve_barrier(&lambdas, &curve, Metric::Error, BARRIER_TOLERANCE)?;
        tables.push_str(&format!(
            "  {:<24} barrier {:.4} at lambda {:.2} (error {:.4} -> {:.4}): {}\n",
            name,
            bar.value,
            bar.peak_lambda,
            bar.start,
            bar.end,
            if bar.same_basin { "one basin" } else { "barrier" }
        ));
        barrier_json.insert((*name).into(), num(bar.value));
        barrier_detail.insert(
            (*name).into(),
            json!({"value": num(bar.value), "peak_lambda": num(bar.peak_lambda), "start": num(bar.start),
                   "end": num(bar.end), "same_basin": bar.same_basin,
                   "lambdas": lambdas.iter().map(|&l| num(l)).collect::<Vec<_>>(),
                   "error": curve.iter().map(|c| num(c.error)).collect::<Vec<_>>(),
                   "loss": curve.iter().map(|c| num(c.loss)).collect::<Vec<_>>()}),
        );
        curves.push((name.to_string(), curve.iter().map(|c| c.error).collect()));
        barriers.push(bar);
    }
    findings.push((
        "P-T models lie in one basin: no barrier between two P-T models".into(),
        barriers[0].same_basin,
        format!("barrier {:.4} (tolerance {BARRIER_TOLERANCE})", barriers[0].value),
    ));
    findings.push((
        "RI-T models from different inits are separated by a barrier".into(),
        !barriers[1].same_basin,
        format!("barrier {:.4}", barriers[1].value),
    ));
    findings.push((
        "RI-T models are separated by a barrier even from the same init".into(),
        !barriers[2].same_basin,
        format!("barrier {:.4}", barriers[2].value),
    ));

    // Criticality per module on a held-out part of the target.
    progress("module criticality", 0.45);
    let crit_eval = tgt.test.head(cfg.criticality_rows);
    let copts = criticality::Options {
        metric: Metric::Error,
        eps: Eps::Relative(0.01),
        noise: Noise::Relative,
        search: cfg.criticality_search,
        samples: cfg.criticality_samples,
        seed: 5,
    };
    let mut cev = MlpEvaluator::new(mlp.clone(), crit_eval.clone());
    let mut crit_json = Map::new();
    let mut crit_detail = Map::new();
    let mut crit_vals: Vec<(String, Vec<f64>)> = Vec::new();
    tables.push_str(&format!(
        "\nModule criticality (0-1 error on {} held-out target images, eps = 1.01 x final error, noise relative to the weights, {} samples; inf = no feasible point)\n",
        crit_eval.n, cfg.criticality_samples
    ));
    tables.push_str(&format!("  {:<6}", ""));
    for l in &layers {
        tables.push_str(&format!(" {l:>10}"));
    }
    tables.push_str(&format!(" {:>10} {:>12}\n", "network", "PAC-Bayes"));
    for (k, (name, init, fin)) in
        [("P-T", &m.pt_init, &m.pt[0]), ("RI-T", &m.rit_init[0], &m.rit[0])].iter().enumerate()
    {
        progress(&format!("module criticality ({name})"), 0.45 + 0.3 * k as f64);
        let net =
            criticality::network_criticality(ctx, &mut cev, Path::Straight { init, final_: fin }, &mut live, &copts)?;
        let bound = criticality::pac_bayes_bound(&net, crit_eval.n as u64, 0.05)?;
        tables.push_str(&format!("  {name:<6}"));
        let mut row = Map::new();
        let mut detail = Vec::new();
        for c in &net.modules {
            tables.push_str(&format!(" {:>10.4}", c.value));
            row.insert(c.module.clone(), num(c.value));
            detail.push(json!({"module": c.module, "value": num(c.value), "alpha": num(c.alpha), "sigma": num(c.sigma),
                               "noise_std": num(c.noise_std), "expected_error": num(c.expected), "numel": c.numel, "points": c.points}));
        }
        tables.push_str(&format!(" {:>10.4} {:>12.4}\n", net.total, bound));
        crit_json.insert((*name).into(), Value::Object(row));
        crit_detail.insert(
            (*name).into(),
            json!({"modules": detail, "network": num(net.total), "final_error": num(net.final_metric), "eps": num(net.eps),
                   "pac_bayes_bound": num(bound), "joint_expected_error": num(net.joint_expected), "bound_note": "m = evaluation images, delta = 0.05; the O~(1) term is omitted; the expectation term is the error with every module perturbed at its minimiser at once"}),
        );
        crit_vals.push((name.to_string(), net.modules.iter().map(|c| c.value).collect()));
    }
    for (name, v) in &crit_vals {
        let (lo, hi) = (v[0], v[v.len() - 2]);
        findings.push((
            format!("Lower modules are less critical than higher ones ({name}: fc1 below the top hidden module)"),
            lo < hi,
            format!("fc1 {lo:.4}, {} {hi:.4}", layers[layers.len() - 2]),
        ));
    }

    // Rewind curves.
    progress("rewind curves", 0.78);
    let alphas = landscape::linspace(1.0, 0.0, cfg.rewind_points);
    let mut rewind_json = Map::new();
    for (name, init, fin) in [("P-T", &m.pt_init, &m.pt[0]), ("RI-T", &m.rit_init[0], &m.rit[0])] {
        let mut per = Map::new();
        for (i, l) in layers.iter().enumerate() {
            let c = criticality::rewind_curve(ctx, &mut ev, init, fin, &mut live, i, &alphas)?;
            per.insert(l.clone(), Value::Array(c.iter().map(|x| num(x.error)).collect()));
        }
        rewind_json
            .insert(name.into(), json!({"alphas": alphas.iter().map(|&a| num(a)).collect::<Vec<_>>(), "error": per}));
    }

    // Block-shuffle sweep.
    progress("block-shuffle sweep", 0.82);
    let mut sweep = Vec::new();
    tables.push_str("\nBlock shuffle (target task; the same permutation for train and test)\n");
    tables.push_str(&format!(
        "  {:>5} {:>10} {:>10} {:>8} {:>16} {:>16}\n",
        "block", "P-T acc", "RI-T acc", "gap", "P-T early loss", "RI-T early loss"
    ));
    let early = (cfg.target_epochs / 5).max(1);
    for &b in &cfg.blocks {
        let train = shuffled(&tgt.train, b, 9)?;
        let test = shuffled(&tgt.test, b, 9)?;
        let mut pt = m.pt_init.try_clone()?;
        let hp = mlp.train(&mut pt, &train, &sweep_opts(cfg, 200))?;
        let mut ri = m.rit_init[0].try_clone()?;
        let hr = mlp.train(&mut ri, &train, &sweep_opts(cfg, 300))?;
        let (ap, ar) = (mlp.evaluate(&pt, &test)?.accuracy, mlp.evaluate(&ri, &test)?.accuracy);
        let (ep, er) = (mean(&hp[..early]), mean(&hr[..early]));
        tables.push_str(&format!("  {b:>5} {ap:>10.4} {ar:>10.4} {:>8.4} {ep:>16.4} {er:>16.4}\n", ap - ar));
        sweep.push((b, ap, ar, ep, er, hp, hr));
    }
    let first = &sweep[0];
    let last = sweep.iter().find(|s| s.0 == SIDE).unwrap_or(&sweep[sweep.len() - 1]);
    findings.push((
        format!("Benefits shrink as block shuffling destroys visual features (accuracy gap P-T - RI-T at block {} below block {})", first.0, last.0),
        first.1 - first.2 < last.1 - last.2,
        format!("gap {:.4} at block {}, {:.4} at block {}", first.1 - first.2, first.0, last.1 - last.2, last.0),
    ));
    findings.push((
        format!("Optimisation speed still benefits at block {}: P-T's training loss over the first {early} epochs is below RI-T's", first.0),
        first.3 < first.4,
        format!("P-T {:.4}, RI-T {:.4}", first.3, first.4),
    ));

    // Agreement of predictions.
    progress("agreement", 0.95);
    let preds = |p: &ParamSet| -> Result<Vec<u32>> { Ok(mlp.evaluate_with_predictions(p, &tgt.test)?.1) };
    let (p1, p2, r1) = (preds(&m.pt[0])?, preds(&m.pt[1])?, preds(&m.rit[0])?);
    let mut agree_json = Map::new();
    tables.push_str("\nAgreement of predictions on the target test set\n");
    tables.push_str(&format!(
        "  {:<12} {:>10} {:>7} {:>7} {:>16} {:>16}\n",
        "", "both right", "only A", "only B", "both wrong same", "both wrong diff"
    ));
    let mut same_frac = Vec::new();
    for (name, a, b) in [("P-T & P-T", &p1, &p2), ("P-T & RI-T", &p1, &r1)] {
        let g = data::prediction_agreement(a, b, &tgt.test.y)?;
        let c = g.counts();
        tables.push_str(&format!("  {name:<12} {:>10} {:>7} {:>7} {:>16} {:>16}\n", c[0], c[1], c[2], c[3], c[4]));
        agree_json.insert(
            name.into(),
            json!({"both_right": c[0], "only_a": c[1], "only_b": c[2], "both_wrong_same": c[3], "both_wrong_different": c[4]}),
        );
        // Shared mistakes: of the samples either model gets wrong, the share both get wrong alike.
        same_frac.push(c[3] as f64 / (c[1] + c[2] + c[3] + c[4]).max(1) as f64);
    }
    findings.push((
        "Two P-T models make more similar mistakes than a P-T and an RI-T model".into(),
        same_frac[0] > same_frac[1],
        format!("shared mistakes {:.3} vs {:.3} of the samples either gets wrong", same_frac[0], same_frac[1]),
    ));

    tables.push_str("\nFindings of the study\n");
    let held = findings.iter().filter(|f| f.1).count();
    for (claim, ok, why) in &findings {
        tables.push_str(&format!("  [{}] {claim} ({why})\n", if *ok { "held" } else { "NOT held" }));
    }
    tables.push_str(&format!("  {held} of {} held.\n", findings.len()));
    let seconds = started.elapsed().as_secs_f64();

    let json = json!({
        "config": cfg.name,
        "model": {"sizes": mlp.sizes(), "modules": layers},
        "accuracy": accuracy,
        "cka": cka_json,
        "distance": dist_json,
        "distance_per_module": dist_modules_json,
        "barrier": barrier_json,
        "barrier_details": barrier_detail,
        "barrier_tolerance": BARRIER_TOLERANCE,
        "criticality": crit_json,
        "criticality_details": crit_detail,
        "criticality_note": "null stands for +inf: no feasible point",
        "rewind": rewind_json,
        "block_shuffle": sweep.iter().map(|s| json!({"block": s.0, "pt_accuracy": num(s.1), "rit_accuracy": num(s.2),
            "pt_train_loss": s.5.iter().map(|&v| num(v)).collect::<Vec<_>>(), "rit_train_loss": s.6.iter().map(|&v| num(v)).collect::<Vec<_>>()})).collect::<Vec<_>>(),
        "agreement": agree_json,
        "findings": findings.iter().map(|(c, h, w)| json!({"claim": c, "held": h, "evidence": w})).collect::<Vec<_>>(),
        "seconds": num(seconds),
    });
    let html = crate::report::html(
        &json,
        &layers,
        &curves,
        &lambdas,
        &cka_rows,
        &crit_vals,
        &sweep.iter().map(|s| (s.0, s.1, s.2)).collect::<Vec<_>>(),
        &tables,
    );
    progress("done", 1.0);
    Ok(Outcome { json, tables, html })
}

/// Writes `text` to `path` atomically: a temporary file in the same folder, then a rename.
pub fn write_atomic(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let io = |e: std::io::Error| Error::Io(format!("{}: {e}", path.display()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}
