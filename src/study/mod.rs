//! The embedded study: a miniature of "What is being transferred in transfer learning?" that
//! runs with no download (docs/analyses.md, section 10).
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
//!
//! Files: `tasks` (the images), `models` (training), `features` and `weight_space` (one function
//! per analysis section, each returning its part of study.json, its table and its findings),
//! `report` (the HTML page).

mod domains;
mod features;
mod models;
mod report;
mod tasks;
mod weight_space;

pub use domains::{contact_sheet, domain, DomainKind, Split, IMAGE};
pub use tasks::{tasks, Task, SIDE};

use crate::atomic_write::write_atomic;
use crate::backend::Context;
use crate::criticality::Search;
use crate::error::Result;
use crate::model::Mlp;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// How big a run is.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub name: &'static str,
    pub source_train: usize,
    pub target_train: usize,
    pub target_test: usize,
    /// Rows of the target's training sample on which criticality is measured (the sample S of the
    /// definition and of the bound).
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

/// A report of progress: (what is running, fraction done).
pub type Progress<'a> = &'a mut dyn FnMut(&str, f64);

/// The study's figures, as JSON (see [`run`]) with the tables as text.
pub struct Outcome {
    pub json: Value,
    pub tables: String,
    pub html: String,
}

impl Outcome {
    /// Writes `dir/study.json` and `dir/report.html`, each atomically; returns their paths.
    pub fn save(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let json_path = dir.join("study.json");
        let html_path = dir.join("report.html");
        let text = serde_json::to_string_pretty(&self.json).expect("a JSON value serialises");
        write_atomic(&json_path, |w| writeln!(w, "{text}"))?;
        write_atomic(&html_path, |w| w.write_all(self.html.as_bytes()))?;
        Ok((json_path, html_path))
    }
}

/// What every section reads: where to compute, the configuration, the model, the tasks and the
/// trained models.
struct Inputs<'a> {
    ctx: &'a Context,
    cfg: &'a Config,
    mlp: &'a Mlp,
    /// The model's module names, `fc1` ... `fc4`.
    layers: Vec<String>,
    source: &'a Task,
    target: &'a Task,
    models: &'a models::Models,
}

/// A headline claim of the study, checked on this run's figures.
struct Finding {
    claim: String,
    held: bool,
    evidence: String,
}

impl Finding {
    fn new(claim: impl Into<String>, held: bool, evidence: String) -> Finding {
        Finding { claim: claim.into(), held, evidence }
    }
}

/// What one analysis section adds to the outcome.
#[derive(Default)]
struct Section {
    /// Its keys of study.json, in order.
    json: Map<String, Value>,
    /// Its table, as printed.
    table: String,
    findings: Vec<Finding>,
}

/// A named line of a plot: one value per point.
type Series = (String, Vec<f64>);

/// What the report plots, filled in by the sections that measure it.
#[derive(Default)]
struct Plots {
    /// The interpolation curves' lambdas, and the target test error along each curve.
    lambdas: Vec<f64>,
    interpolation: Vec<Series>,
    /// CKA per layer of each pairing.
    cka: Vec<Series>,
    /// Module criticality of each model.
    criticality: Vec<Series>,
    /// (block size, P-T accuracy, RI-T accuracy) of the block-shuffle sweep.
    block_shuffle: Vec<(usize, f64, f64)>,
}

/// A float for JSON: non-finite values (an infeasible criticality) become null.
fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Runs the study with configuration `cfg`: training on the CPU, the analyses on `ctx`'s backend
/// where they have a CUDA path (CKA, and the evaluations of curves, barriers and criticality).
pub fn run(ctx: &Context, cfg: &Config, progress: Progress) -> Result<Outcome> {
    let started = std::time::Instant::now();
    let mlp = Mlp::new(&[SIDE * SIDE, 128, 64, 32, tasks::CLASSES])?;
    progress("generating the tasks", 0.0);
    let (source, target) = tasks(cfg)?;
    let models = models::train_models(ctx, &mlp, cfg, &source, &target, progress)?;
    let inputs =
        Inputs { ctx, cfg, mlp: &mlp, layers: mlp.layer_names(), source: &source, target: &target, models: &models };

    let mut plots = Plots::default();
    progress("evaluating", 0.2);
    let mut sections = vec![features::accuracy(&inputs)?];
    progress("CKA per layer", 0.25);
    sections.push(features::cka(&inputs, &mut plots)?);
    progress("distances", 0.3);
    sections.push(weight_space::distance(&inputs)?);
    progress("interpolation curves", 0.35);
    sections.push(weight_space::barrier(&inputs, &mut plots)?);
    progress("module criticality", 0.45);
    sections.push(weight_space::criticality(&inputs, &mut plots, progress)?);
    progress("rewind curves", 0.78);
    sections.push(weight_space::rewind(&inputs)?);
    progress("block-shuffle sweep", 0.82);
    sections.push(features::block_shuffle(&inputs, &mut plots)?);
    progress("agreement", 0.95);
    sections.push(features::agreement(&inputs)?);

    let mut tables: String = sections.iter().map(|s| s.table.as_str()).collect();
    let mut json = Map::new();
    json.insert("config".into(), json!(cfg.name));
    json.insert("model".into(), json!({"sizes": mlp.sizes(), "modules": inputs.layers}));
    let mut findings = Vec::new();
    for section in sections {
        json.extend(section.json);
        findings.extend(section.findings);
    }
    tables.push_str(&findings_table(&findings));
    json.insert(
        "findings".into(),
        findings.iter().map(|f| json!({"claim": f.claim, "held": f.held, "evidence": f.evidence})).collect(),
    );
    json.insert("seconds".into(), num(started.elapsed().as_secs_f64()));
    let json = Value::Object(json);
    let html = report::html(&json, &inputs.layers, &plots, &tables);
    progress("done", 1.0);
    Ok(Outcome { json, tables, html })
}

/// The findings, each marked held or not, and how many held.
fn findings_table(findings: &[Finding]) -> String {
    let mut table = String::from("\nFindings of the study\n");
    for f in findings {
        let mark = if f.held { "held" } else { "NOT held" };
        table.push_str(&format!("  [{mark}] {} ({})\n", f.claim, f.evidence));
    }
    let held = findings.iter().filter(|f| f.held).count();
    table.push_str(&format!("  {held} of {} held.\n", findings.len()));
    table
}
