//! The embedded study: a miniature of "What is being transferred in transfer learning?"
//! (Neyshabur, Sedghi and Zhang, NeurIPS 2020) that runs with no download (docs/analyses.md,
//! section 10).
//!
//! The images are procedural 3 x 24 x 24 pictures (`domains`, docs/study-domains.md): a 20-class
//! source task and four target domains after the paper's DomainNet real, clipart and quickdraw
//! and CheXpert. The network is the built-in CNN (`models::study_spec`). Per seed the study
//! trains RI, P (with checkpoints), and per target domain two P-T, two RI-T from two inits and
//! two RI-T from one init (`models`); every section then measures one experiment of the paper on
//! every seed and checks its findings per seed ("held in k of n seeds").
//!
//! Files: `domains` (the images), `models` (data and training), one file per family of sections
//! (`training`: accuracy, learning curves, pre-training checkpoints; `features`: CKA, mistakes,
//! block shuffle; `weight_space`: distances, interpolation, basins, criticality, rewind), `report`
//! (the HTML page and its plots), and `export` (models and data as safetensors).

mod domains;
mod export;
mod features;
mod models;
mod report;
mod training;
mod weight_space;

pub use domains::{contact_sheet, domain, DomainKind, Split, IMAGE};
pub use models::study_spec;

use crate::atomic_write::write_atomic;
use crate::backend::Context;
use crate::error::Result;
use models::Trainset;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// A few seconds: for tests of the pipeline, not of the findings.
    Tiny,
    /// Within a minute on two cores.
    Quick,
    /// The default run.
    Full,
}

/// A run's settings: the data, the training and each family of sections' own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub name: &'static str,
    pub size: Size,
    /// Seeds 0..seeds: each trains every model anew (the images are shared).
    pub seeds: usize,
    /// The target domains, nearest to the source first.
    pub domains: Vec<DomainKind>,
    /// Seeds the images (the same in every seed of the run).
    pub data_seed: u64,
    pub source_train: usize,
    pub source_validation: usize,
    pub source_test: usize,
    /// The sizing rule's grid of training images per class of a target domain, ascending; the
    /// last is the cap (docs/analyses.md, section 10, revision 2; `models::size_rule`).
    pub train_per_class: Vec<usize>,
    pub target_validation: usize,
    pub target_test: usize,
    pub batch: usize,
    pub source_epochs: usize,
    pub source_lr: f64,
    /// P's checkpoints: the epochs after which its weights are kept (increasing; the last is
    /// `source_epochs`).
    pub checkpoint_epochs: Vec<usize>,
    pub target_epochs: usize,
    /// One rate for both regimes, for a contrast at equal rates; the target models train at the
    /// rates chosen on the validation split (`Trainset::lrs`, from `lr_grid`).
    pub target_lr: f64,
    /// The learning rates tried per regime and domain, ascending (docs/analyses.md, section 10).
    pub lr_grid: Vec<f64>,
    /// The domain of the checkpoint sweep (P-T from each of P's checkpoints).
    pub sweep_domain: DomainKind,
    pub training: training::Settings,
    pub features: features::Settings,
    pub weight_space: weight_space::Settings,
}

impl Config {
    pub fn new(size: Size) -> Config {
        let name = match size {
            Size::Tiny => "tiny",
            Size::Quick => "quick",
            Size::Full => "full",
        };
        // Sizes from the CPU time of training on two cores and P's source validation accuracy
        // (docs/analyses.md, section 10).
        let (seeds, source_train, source_held_out, source_epochs) = match size {
            Size::Tiny => (2, 200, 60, 2),
            Size::Quick => (1, 3000, 300, 16),
            Size::Full => (3, 3000, 500, 16),
        };
        // Revision 2: the training sets are sized by the rule on RI-T's validation accuracy (the
        // grid's last size is the cap, from the time of a run); the test sets are large enough
        // that a barrier's tolerance is not a matter of two images.
        let (train_per_class, target_validation, target_test, target_epochs) = match size {
            Size::Tiny => (vec![10, 20], 60, 60, 2),
            Size::Quick => (vec![20, 40], 200, 500, 8),
            Size::Full => (vec![30, 60, 120], 300, 1000, 12),
        };
        let checkpoint_epochs = match size {
            Size::Tiny => vec![1, 2],
            Size::Quick => vec![4, 8, 12, 16],
            Size::Full => vec![4, 8, 10, 12, 14, 16],
        };
        let domains = match size {
            Size::Tiny => vec![DomainKind::Real, DomainKind::Far],
            _ => DomainKind::targets().to_vec(),
        };
        Config {
            name,
            size,
            seeds,
            domains,
            data_seed: 2020,
            source_train,
            source_validation: source_held_out,
            source_test: source_held_out,
            train_per_class,
            target_validation,
            target_test,
            batch: 32,
            source_epochs,
            source_lr: 0.1,
            checkpoint_epochs,
            target_epochs,
            target_lr: 0.03,
            lr_grid: vec![0.01, 0.03, 0.1],
            sweep_domain: DomainKind::Real,
            training: training::Settings::new(size),
            features: features::Settings::new(size),
            weight_space: weight_space::Settings::new(size),
        }
    }
    pub fn full() -> Config {
        Config::new(Size::Full)
    }
    pub fn quick() -> Config {
        Config::new(Size::Quick)
    }
    pub fn tiny() -> Config {
        Config::new(Size::Tiny)
    }
}

/// Barrier tolerance on the target test error: one percentage point (the CLI's default; the
/// study's floor, see [`barrier_tolerance`]).
pub const BARRIER_TOLERANCE: f64 = 0.01;

/// The study's barrier tolerance for a curve of the test error on `n` images whose endpoint
/// errors average `endpoint_error`: max(0.01, 2 sqrt(e (1 - e) / n)), twice the binomial standard
/// error of an error rate e on n images, never below [`BARRIER_TOLERANCE`] (docs/analyses.md,
/// section 10, revision 2).
pub fn barrier_tolerance(endpoint_error: f64, n: usize) -> f64 {
    let e = endpoint_error.clamp(0.0, 1.0);
    BARRIER_TOLERANCE.max(2.0 * (e * (1.0 - e) / n.max(1) as f64).sqrt())
}

/// The sizing rule's bar: RI-T's best validation accuracy must reach this multiple of chance.
pub const SIZING_BAR_TIMES_CHANCE: f64 = 3.0;

/// A report of progress: (what is running, fraction done).
pub type Progress<'a> = &'a mut dyn FnMut(&str, f64);

/// The study's figures, as JSON (see [`run`]) with the tables as text and the HTML report, and
/// the trained models and data to export.
pub struct Outcome {
    pub json: Value,
    pub tables: String,
    pub html: String,
    cfg: Config,
    set: Trainset,
}

impl Outcome {
    /// Writes every model and dataset as safetensors under `dir/models/` and `dir/data/` (the
    /// map `files` of study.json names them), then `dir/study.json` and `dir/report.html`; every
    /// file atomically. Returns the paths of study.json and report.html.
    pub fn save(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        export::export(&self.cfg, &self.set, dir)?;
        let json_path = dir.join("study.json");
        let html_path = dir.join("report.html");
        let text = serde_json::to_string_pretty(&self.json).expect("a JSON value serialises");
        write_atomic(&json_path, |w| writeln!(w, "{text}"))?;
        write_atomic(&html_path, |w| w.write_all(self.html.as_bytes()))?;
        Ok((json_path, html_path))
    }
}

/// What every section reads.
pub(crate) struct Inputs<'a> {
    pub ctx: &'a Context,
    pub cfg: &'a Config,
    pub set: &'a Trainset,
}

/// A claim of the paper, checked on every seed against a criterion written down before the
/// run (docs/analyses.md, section 10).
pub(crate) struct Finding {
    pub claim: String,
    /// The criterion, as evaluated per seed.
    pub criterion: String,
    /// Per seed: whether the criterion held, and the figures it was decided on.
    pub per_seed: Vec<(bool, String)>,
}

/// How a finding fared over the seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// In every seed.
    Held,
    /// In some seeds, not all.
    Mixed,
    /// In none.
    NotHeld,
}

impl Finding {
    pub fn new(claim: impl Into<String>, criterion: impl Into<String>, per_seed: Vec<(bool, String)>) -> Finding {
        Finding { claim: claim.into(), criterion: criterion.into(), per_seed }
    }
    pub fn held_in(&self) -> usize {
        self.per_seed.iter().filter(|s| s.0).count()
    }
    pub fn verdict(&self) -> Verdict {
        match self.held_in() {
            k if k == self.per_seed.len() => Verdict::Held,
            0 => Verdict::NotHeld,
            _ => Verdict::Mixed,
        }
    }
    fn to_json(&self) -> Value {
        let verdict = match self.verdict() {
            Verdict::Held => "held",
            Verdict::Mixed => "mixed",
            Verdict::NotHeld => "not held",
        };
        json!({
            "claim": self.claim,
            "criterion": self.criterion,
            "held": self.verdict() == Verdict::Held,
            "verdict": verdict,
            "held_in": self.held_in(),
            "seeds": self.per_seed.len(),
            "per_seed": self.per_seed.iter().map(|(h, e)| json!({"held": h, "evidence": e})).collect::<Vec<_>>(),
        })
    }
}

/// A line of a plot: the mean over seeds at each x, with the smallest and largest seed's value
/// as a band (equal to the mean for one seed).
#[derive(Debug, Clone, Default)]
pub(crate) struct Line {
    pub name: String,
    pub mean: Vec<f64>,
    pub low: Vec<f64>,
    pub high: Vec<f64>,
}

impl Line {
    /// The line of per-seed values `per_seed[seed][point]`.
    pub fn over_seeds(name: impl Into<String>, per_seed: &[Vec<f64>]) -> Line {
        let points = per_seed.first().map_or(0, |v| v.len());
        let at = |i: usize| per_seed.iter().map(move |s| s[i]);
        Line {
            name: name.into(),
            mean: (0..points).map(|i| at(i).sum::<f64>() / per_seed.len() as f64).collect(),
            low: (0..points).map(|i| at(i).fold(f64::INFINITY, f64::min)).collect(),
            high: (0..points).map(|i| at(i).fold(f64::NEG_INFINITY, f64::max)).collect(),
        }
    }
}

/// A plot of the report.
#[derive(Debug, Clone)]
pub(crate) enum Chart {
    /// Lines over a shared x axis; `x_labels` names the ticks (categories such as layers) when
    /// given, else the ticks are round numbers. `y_range` fixes the y axis (CKA within [0, 1]).
    /// `marks` are (x, label) vertical markers, such as the two models of an interpolation.
    Lines {
        x: Vec<f64>,
        x_labels: Option<Vec<String>>,
        lines: Vec<Line>,
        y_range: Option<(f64, f64)>,
        marks: Vec<(f64, String)>,
        x_label: String,
        y_label: String,
    },
    /// A matrix of values in [lo, hi] (a layer-by-layer CKA map), rows and columns named.
    Heatmap { rows: Vec<String>, columns: Vec<String>, values: Vec<Vec<f64>>, range: (f64, f64) },
}

/// A plot with its title and a caption saying what to look for.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    pub title: String,
    pub caption: String,
    pub chart: Chart,
}

/// What one section adds to the outcome.
#[derive(Default)]
pub(crate) struct Section {
    /// Its heading in the report.
    pub title: String,
    /// Its keys of study.json, in order.
    pub json: Map<String, Value>,
    /// Its tables, as printed.
    pub table: String,
    pub findings: Vec<Finding>,
    pub figures: Vec<Figure>,
}

/// A float for JSON: non-finite values (an infeasible criticality) become null.
pub(crate) fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null)
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The mean of a per-epoch training loss over its first `1 / parts` (ceil, at least one epoch):
/// the "early loss" that measures optimisation speed.
pub(crate) fn early_mean(loss: &[f64], parts: usize) -> f64 {
    mean(&loss[..loss.len().div_ceil(parts).min(loss.len())])
}

/// Runs the study with configuration `cfg`: training on the CPU, the analyses on `ctx`'s backend
/// where they have a CUDA path.
pub fn run(ctx: &Context, cfg: &Config, progress: Progress) -> Result<Outcome> {
    let started = std::time::Instant::now();
    let set = models::train_all(cfg, progress)?;
    let inputs = Inputs { ctx, cfg, set: &set };
    let mut sections = Vec::new();
    sections.extend(training::sections(&inputs, progress)?);
    sections.extend(features::sections(&inputs, progress)?);
    sections.extend(weight_space::sections(&inputs, progress)?);

    let mut tables: String = sections.iter().map(|s| s.table.as_str()).collect();
    let mut json = Map::new();
    json.insert("config".into(), json!(cfg.name));
    json.insert("seeds".into(), json!(cfg.seeds));
    json.insert(
        "sizes".into(),
        json!({"source_train": cfg.source_train, "source_validation": cfg.source_validation,
               "source_test": cfg.source_test, "source_epochs": cfg.source_epochs, "source_lr": cfg.source_lr,
               "checkpoint_epochs": cfg.checkpoint_epochs, "train_per_class_grid": cfg.train_per_class,
               "target_train": set.targets.iter().map(|t| (t.kind.name().to_string(), json!(t.train.n))).collect::<Map<_, _>>(),
               "target_validation": cfg.target_validation, "target_test": cfg.target_test,
               "target_epochs": cfg.target_epochs, "batch": cfg.batch, "lr_grid": cfg.lr_grid,
               "data_seed": cfg.data_seed}),
    );
    json.insert("domains".into(), json!(cfg.domains.iter().map(|d| d.name()).collect::<Vec<_>>()));
    json.insert(
        "model".into(),
        json!({"spec": serde_json::from_str::<Value>(&study_spec(10)).expect("the spec is JSON"),
               "modules": set.source_cnn.module_names()}),
    );
    let mut findings = Vec::new();
    for section in &sections {
        json.extend(section.json.clone());
    }
    for section in &mut sections {
        findings.append(&mut section.findings);
    }
    tables.push_str(&findings_table(&findings, cfg.seeds));
    json.insert("findings".into(), findings.iter().map(Finding::to_json).collect());
    json.insert("files".into(), export::file_map(cfg, &set));
    json.insert("seconds".into(), num(started.elapsed().as_secs_f64()));
    let json = Value::Object(json);
    let html = report::html(&json, &findings, &sections, &tables);
    progress("done", 1.0);
    Ok(Outcome { json, tables, html, cfg: cfg.clone(), set })
}

/// The findings, each with how many seeds it held in.
fn findings_table(findings: &[Finding], seeds: usize) -> String {
    let mut table = String::from("\nFindings of the study\n");
    for f in findings {
        let mark = match f.verdict() {
            Verdict::Held => "held",
            Verdict::Mixed => "mixed",
            Verdict::NotHeld => "NOT held",
        };
        table.push_str(&format!("  [{mark}, {} of {seeds} seeds] {}\n", f.held_in(), f.claim));
    }
    let held = findings.iter().filter(|f| f.verdict() == Verdict::Held).count();
    table.push_str(&format!("  {held} of {} held in every seed.\n", findings.len()));
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_barrier_tolerance_is_two_standard_errors_with_a_floor_of_a_point() {
        // e = 0.3 on 1000 images: 2 sqrt(0.21 / 1000).
        assert!((barrier_tolerance(0.3, 1000) - 2.0 * (0.21f64 / 1000.0).sqrt()).abs() < 1e-15);
        assert!((barrier_tolerance(0.3, 1000) - 0.02898).abs() < 1e-5);
        // Four times the images halve it.
        assert!((barrier_tolerance(0.3, 4000) - barrier_tolerance(0.3, 1000) / 2.0).abs() < 1e-15);
        // Never below 0.01: many images, or an error of 0 or 1.
        assert_eq!(barrier_tolerance(0.3, 1_000_000), BARRIER_TOLERANCE);
        assert_eq!(barrier_tolerance(0.0, 100), BARRIER_TOLERANCE);
        assert_eq!(barrier_tolerance(1.0, 100), BARRIER_TOLERANCE);
        // Largest at e = 0.5.
        assert!(barrier_tolerance(0.5, 1000) > barrier_tolerance(0.3, 1000));
    }
}
