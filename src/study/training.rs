//! The sections about training: the learning rates chosen on the validation split, accuracy of
//! every model (does transfer help, and where most), learning curves (does P-T optimise faster)
//! and which of P's checkpoints to fine-tune from (docs/analyses.md, section 10).

use super::domains::DomainKind;
use super::{mean, num, Chart, Figure, Finding, Inputs, Line, Progress, Section, Size};
use crate::error::Result;
use serde_json::{json, Map, Value};

/// This family's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `c*`, "where pre-training plateaus", is the earliest checkpoint at which P's source
    /// validation accuracy reaches this share of its value at the last checkpoint.
    pub plateau_share: f64,
}

impl Settings {
    pub fn new(_size: Size) -> Settings {
        Settings { plateau_share: 0.9 }
    }
}

/// Every section of this family, in report order.
pub(super) fn sections(inputs: &Inputs, progress: Progress) -> Result<Vec<Section>> {
    progress("accuracy", 0.7);
    let tests = TestAccuracy::measure(inputs)?;
    let mut sections = vec![learning_rates(inputs), accuracy(inputs, &tests)?, learning_curves(inputs)];
    progress("pre-training checkpoints", 0.72);
    sections.push(checkpoints(inputs, &tests)?);
    Ok(sections)
}

/// A model's mean training loss over the first quarter of its epochs (at least one epoch).
pub(crate) fn early_loss(loss: &[f64]) -> f64 {
    super::early_mean(loss, 4)
}

/// Twice the standard error of the difference of accuracies `a` and `b`, each a binomial
/// proportion on `n` test images: the noise margin of the training criteria.
pub(crate) fn noise_margin(a: f64, b: f64, n: usize) -> f64 {
    2.0 * ((a * (1.0 - a) + b * (1.0 - b)) / n as f64).sqrt()
}

/// Test accuracies of the two P-T and two RI-T of every seed and domain: `pt[seed][domain]`.
struct TestAccuracy {
    pt: Vec<Vec<[f64; 2]>>,
    rit: Vec<Vec<[f64; 2]>>,
}

impl TestAccuracy {
    fn measure(inputs: &Inputs) -> Result<TestAccuracy> {
        let set = inputs.set;
        let (mut pt, mut rit) = (Vec::new(), Vec::new());
        for s in &set.seeds {
            let (mut pt_seed, mut rit_seed) = (Vec::new(), Vec::new());
            for (d, m) in s.domains.iter().enumerate() {
                let (cnn, test) = (&set.target_cnns[d], &set.targets[d].test);
                let acc = |w| cnn.evaluate(w, test).map(|m| m.accuracy);
                pt_seed.push([acc(&m.pt[0].weights)?, acc(&m.pt[1].weights)?]);
                rit_seed.push([acc(&m.rit[0].weights)?, acc(&m.rit[1].weights)?]);
            }
            pt.push(pt_seed);
            rit.push(rit_seed);
        }
        Ok(TestAccuracy { pt, rit })
    }

    fn pt_mean(&self, seed: usize, d: usize) -> f64 {
        mean(&self.pt[seed][d])
    }

    fn rit_mean(&self, seed: usize, d: usize) -> f64 {
        mean(&self.rit[seed][d])
    }
}

/// The rates chosen per regime and domain on seed 0's validation split, with the grid.
fn learning_rates(inputs: &Inputs) -> Section {
    let set = inputs.set;
    let mut table = String::from(
        "\nLearning rates (chosen on the validation split, seed 0; accuracy on validation, early training loss)\n",
    );
    let mut json = Map::new();
    let labels: Vec<String> = inputs.cfg.lr_grid.iter().map(|lr| format!("{lr}")).collect();
    let mut lines = Vec::new();
    for choice in &set.lrs {
        let name = choice.kind.name();
        table.push_str(&format!("  {name:<10} chosen: P-T {}  RI-T {}\n", choice.pt, choice.rit));
        let mut grid = Vec::new();
        for g in &choice.grid {
            let (pt_early, rit_early) = (early_loss(&g.pt_loss), early_loss(&g.rit_loss));
            table.push_str(&format!(
                "    lr {:<5}  P-T {:.4} (early loss {pt_early:.3})  RI-T {:.4} (early loss {rit_early:.3})\n",
                g.lr, g.pt_validation, g.rit_validation
            ));
            grid.push(
                json!({"lr": g.lr, "pt_validation": num(g.pt_validation), "rit_validation": num(g.rit_validation),
                             "pt_early_loss": num(pt_early), "rit_early_loss": num(rit_early)}),
            );
        }
        json.insert(name.into(), json!({"pt": choice.pt, "rit": choice.rit, "grid": grid}));
        for (regime, values) in [
            ("P-T", choice.grid.iter().map(|g| g.pt_validation).collect::<Vec<_>>()),
            ("RI-T", choice.grid.iter().map(|g| g.rit_validation).collect()),
        ] {
            lines.push(Line::over_seeds(format!("{regime} {name}"), &[values]));
        }
    }
    let (sizing_table, sizing_json) = sizing(inputs);
    table.push_str(&sizing_table);
    Section {
        title: "Training sizes and learning rates".into(),
        json: Map::from_iter([
            ("learning_rates".to_string(), Value::Object(json)),
            ("sizing".to_string(), sizing_json),
        ]),
        table,
        findings: vec![],
        figures: vec![Figure {
            title: "Validation accuracy against the learning rate (seed 0)".into(),
            caption: "Each regime and domain trains at the rate with the highest validation accuracy (ties: the \
                      smaller). The test split plays no part in the choice."
                .into(),
            chart: Chart::Lines {
                x: (0..labels.len()).map(|i| i as f64).collect(),
                x_labels: Some(labels),
                lines,
                y_range: Some((0.0, 1.0)),
                marks: vec![],
                x_label: "learning rate".into(),
                y_label: "validation accuracy".into(),
            },
        }],
    }
}

/// The sizing sweep of every target domain: RI-T's validation accuracy per size and rate, the
/// bar and the chosen size (docs/analyses.md, section 10, revision 2), as a table and JSON.
fn sizing(inputs: &Inputs) -> (String, Value) {
    let set = inputs.set;
    let grid = &inputs.cfg.lr_grid;
    let mut table = format!(
        "\nTraining sizes (seed 0's first RI-T at rates {grid:?}, validation accuracy; the smallest size whose best \
         rate reaches the bar, 3 x chance, else the cap {})\n",
        inputs.cfg.train_per_class.last().copied().unwrap_or(0)
    );
    let mut json = Map::new();
    for (sizing, data) in set.sizing.iter().zip(&set.targets) {
        let name = sizing.kind.name();
        let mut steps = Vec::new();
        for step in &sizing.steps {
            table.push_str(&format!(
                "  {name:<10} {:>4} per class  validation {}  best {:.3} {} bar {:.2}\n",
                step.per_class,
                step.validation.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(" "),
                step.best(),
                if step.best() >= sizing.bar { ">=" } else { "<" },
                sizing.bar
            ));
            steps.push(json!({"per_class": step.per_class, "validation": step.validation, "best": num(step.best())}));
        }
        let verdict = if sizing.reached { "reached the bar" } else { "below the bar at the cap: RI-T is weak here" };
        table.push_str(&format!(
            "  {name:<10} chosen {} per class ({} training images): {verdict}\n",
            sizing.per_class, data.train.n
        ));
        json.insert(
            name.into(),
            json!({"bar": num(sizing.bar), "steps": steps, "per_class": sizing.per_class,
                   "train_images": data.train.n, "reached": sizing.reached, "lr_grid": grid}),
        );
    }
    (table, Value::Object(json))
}

/// Target test accuracy of P-T and RI-T per domain and seed, the transfer gain, and P's source
/// test accuracy.
fn accuracy(inputs: &Inputs, tests: &TestAccuracy) -> Result<Section> {
    let set = inputs.set;
    let n = inputs.cfg.target_test;
    let mut table = String::from(
        "\nTarget test accuracy (mean of the two models of each kind; gain = P-T - RI-T; margin = 2 se)\n",
    );
    let mut per_domain = Map::new();
    // gains[seed][domain], and whether the gain beats its noise margin.
    let mut gains = vec![vec![(0.0, false); set.targets.len()]; set.seeds.len()];
    for (d, data) in set.targets.iter().enumerate() {
        let mut rows = Vec::new();
        for (i, s) in set.seeds.iter().enumerate() {
            let (pt, rit) = (tests.pt_mean(i, d), tests.rit_mean(i, d));
            let (gain, margin) = (pt - rit, noise_margin(pt, rit, n));
            gains[i][d] = (gain, gain > margin);
            table.push_str(&format!(
                "  {:<10} seed {}  P-T {pt:.4}  RI-T {rit:.4}  gain {gain:+.4}  margin {margin:.4}\n",
                data.kind.name(),
                s.seed
            ));
            rows.push(json!({"seed": s.seed, "pt": num(pt), "rit": num(rit), "gain": num(gain), "margin": num(margin),
                             "pt_models": tests.pt[i][d].map(num), "rit_models": tests.rit[i][d].map(num)}));
        }
        per_domain.insert(data.kind.name().into(), Value::Array(rows));
    }
    let mut source = Vec::new();
    for s in &set.seeds {
        let p = set.source_cnn.evaluate(&s.p.weights, &set.source.test)?.accuracy;
        table.push_str(&format!("  P on the source task, seed {}: {p:.4}\n", s.seed));
        source.push(json!({"seed": s.seed, "p": num(p)}));
    }

    let names: Vec<&str> = set.targets.iter().map(|t| t.kind.name()).collect();
    let every_domain = gains
        .iter()
        .zip(&set.seeds)
        .map(|(g, s)| {
            let evidence: Vec<String> = names.iter().zip(g).map(|(n, (gain, _))| format!("{n} {gain:+.4}")).collect();
            (g.iter().all(|(_, beyond)| *beyond), format!("seed {}: gains {}", s.seed, evidence.join(", ")))
        })
        .collect();
    let mut findings = vec![Finding::new(
        "Transfer helps on every domain: P-T is more accurate than RI-T on each target",
        "on every target domain, the mean test accuracy of the two P-T exceeds that of the two RI-T by more than \
         2 se of the difference",
        every_domain,
    )];
    if let Some(real) = set.target_index(DomainKind::Real) {
        let most = gains
            .iter()
            .zip(&set.seeds)
            .map(|(g, s)| {
                let largest = g.iter().all(|(gain, _)| g[real].0 >= *gain);
                let evidence: Vec<String> =
                    names.iter().zip(g).map(|(n, (gain, _))| format!("{n} {gain:+.4}")).collect();
                (largest, format!("seed {}: gains {}", s.seed, evidence.join(", ")))
            })
            .collect();
        findings.push(Finding::new(
            "Transfer helps most on the domain closest to the source (real)",
            "real's transfer gain (P-T minus RI-T test accuracy, in points) is the largest of the target domains'",
            most,
        ));
    }

    let per_seed = |f: &dyn Fn(usize, usize) -> f64| -> Vec<Vec<f64>> {
        (0..set.seeds.len()).map(|i| (0..names.len()).map(|d| f(i, d)).collect()).collect()
    };
    let figure = Figure {
        title: "Target test accuracy per domain".into(),
        caption: "P-T against RI-T on each target, nearest to the source first. Transfer helps where P-T lies above \
                  RI-T; the paper finds the largest gain on real. Chance is 0.1 on the near domains and 0.2 on far."
            .into(),
        chart: Chart::Lines {
            x: (0..names.len()).map(|d| d as f64).collect(),
            x_labels: Some(names.iter().map(|n| n.to_string()).collect()),
            lines: vec![
                Line::over_seeds("P-T", &per_seed(&|i, d| tests.pt_mean(i, d))),
                Line::over_seeds("RI-T", &per_seed(&|i, d| tests.rit_mean(i, d))),
            ],
            y_range: Some((0.0, 1.0)),
            marks: vec![],
            x_label: "target domain".into(),
            y_label: "test accuracy".into(),
        },
    };
    Ok(Section {
        title: "Accuracy".into(),
        json: Map::from_iter([
            ("accuracy".to_string(), Value::Object(per_domain)),
            ("source_accuracy".to_string(), Value::Array(source)),
        ]),
        table,
        findings,
        figures: vec![figure],
    })
}

/// Training loss per epoch of P-T and RI-T per domain (mean of a seed's two models).
fn learning_curves(inputs: &Inputs) -> Section {
    let set = inputs.set;
    let epochs = inputs.cfg.target_epochs;
    let mut table = String::from(
        "\nLearning curves: early training loss (mean over the first quarter of the epochs; two models each)\n",
    );
    let mut json = Map::new();
    let mut figures = Vec::new();
    // faster[seed]: per domain (P-T early, RI-T early).
    let mut early = vec![Vec::new(); set.seeds.len()];
    for (d, data) in set.targets.iter().enumerate() {
        let name = data.kind.name();
        let curve = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| (x + y) / 2.0).collect() };
        let pt: Vec<Vec<f64>> =
            set.seeds.iter().map(|s| curve(&s.domains[d].pt[0].train_loss, &s.domains[d].pt[1].train_loss)).collect();
        let rit: Vec<Vec<f64>> =
            set.seeds.iter().map(|s| curve(&s.domains[d].rit[0].train_loss, &s.domains[d].rit[1].train_loss)).collect();
        let mut rows = Vec::new();
        for (i, s) in set.seeds.iter().enumerate() {
            let (p, r) = (early_loss(&pt[i]), early_loss(&rit[i]));
            early[i].push((p, r));
            table.push_str(&format!("  {name:<10} seed {}  P-T {p:.4}  RI-T {r:.4}\n", s.seed));
            rows.push(json!({"seed": s.seed, "pt_early_loss": num(p), "rit_early_loss": num(r),
                             "pt": pt[i].iter().map(|&v| num(v)).collect::<Vec<_>>(),
                             "rit": rit[i].iter().map(|&v| num(v)).collect::<Vec<_>>()}));
        }
        let equal: Vec<String> = set.lrs[d]
            .grid
            .iter()
            .map(|g| format!("lr {}: P-T {:.4} RI-T {:.4}", g.lr, early_loss(&g.pt_loss), early_loss(&g.rit_loss)))
            .collect();
        table.push_str(&format!("  {name:<10} at equal rates (seed 0, grid): {}\n", equal.join("; ")));
        json.insert(name.into(), Value::Array(rows));
        let (pt_lr, rit_lr) = (set.lrs[d].pt, set.lrs[d].rit);
        figures.push(Figure {
            title: format!("Learning curves on {name}"),
            caption: format!(
                "Training loss per epoch (mean of two models; band over seeds). P-T optimises faster where its \
                 curve lies below RI-T's early on. Rates: P-T {pt_lr}, RI-T {rit_lr} (each chosen on validation)."
            ),
            chart: Chart::Lines {
                x: (1..=epochs).map(|e| e as f64).collect(),
                x_labels: None,
                lines: vec![Line::over_seeds("P-T", &pt), Line::over_seeds("RI-T", &rit)],
                y_range: None,
                marks: vec![],
                x_label: "epoch".into(),
                y_label: "training loss (nats)".into(),
            },
        });
    }
    let names: Vec<&str> = set.targets.iter().map(|t| t.kind.name()).collect();
    let per_seed = early
        .iter()
        .zip(&set.seeds)
        .map(|(e, s)| {
            let evidence: Vec<String> =
                names.iter().zip(e).map(|(n, (p, r))| format!("{n} P-T {p:.3} vs RI-T {r:.3}")).collect();
            (e.iter().all(|(p, r)| p < r), format!("seed {}: {}", s.seed, evidence.join(", ")))
        })
        .collect();
    Section {
        title: "Learning curves".into(),
        json: Map::from_iter([("learning_curves".to_string(), Value::Object(json))]),
        table,
        findings: vec![Finding::new(
            "P-T optimises faster than RI-T on every domain",
            "on every target domain, the mean training loss over the first quarter of the epochs of the two P-T is \
             below that of the two RI-T",
            per_seed,
        )],
        figures,
    }
}

/// The checkpoint sweep: P's source validation accuracy at each checkpoint, beside the test
/// accuracy and early loss of P-T fine-tuned from it.
fn checkpoints(inputs: &Inputs, tests: &TestAccuracy) -> Result<Section> {
    let set = inputs.set;
    let cfg = inputs.cfg;
    let mut table = String::from("\nPre-training checkpoints\n");
    let Some(d) = set.target_index(cfg.sweep_domain) else {
        table.push_str("  (the sweep's domain is not among this run's domains)\n");
        return Ok(Section { title: "Pre-training checkpoints".into(), table, ..Section::default() });
    };
    let domain = cfg.sweep_domain.name();
    let (cnn, test) = (&set.target_cnns[d], &set.targets[d].test);
    let n = cfg.target_test;
    let epochs: Vec<usize> = cfg.checkpoint_epochs.clone();
    table.push_str(&format!(
        "  per checkpoint: P's source validation accuracy | P-T on {domain}: test accuracy, early loss\n"
    ));
    let (mut source_acc, mut sweep_acc, mut sweep_early, mut rit_acc) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rows = Vec::new();
    let (mut plateau_gain, mut earlier, mut independent) = (Vec::new(), Vec::new(), Vec::new());
    for (i, s) in set.seeds.iter().enumerate() {
        let p_val: Vec<f64> = s
            .p_checkpoints
            .iter()
            .map(|(_, w)| set.source_cnn.evaluate(w, &set.source.validation).map(|m| m.accuracy))
            .collect::<Result<_>>()?;
        let acc: Vec<f64> =
            s.sweep.iter().map(|(_, m)| cnn.evaluate(&m.weights, test).map(|m| m.accuracy)).collect::<Result<_>>()?;
        let loss: Vec<f64> = s.sweep.iter().map(|(_, m)| early_loss(&m.train_loss)).collect();
        let rit = tests.rit_mean(i, d);
        for (c, &epoch) in epochs.iter().enumerate() {
            table.push_str(&format!(
                "  seed {} epoch {epoch:>3}: P {:.4} | P-T {:.4}, early loss {:.4}\n",
                s.seed, p_val[c], acc[c], loss[c]
            ));
        }
        table.push_str(&format!("  seed {} RI-T on {domain} (mean of two): {rit:.4}\n", s.seed));

        let last = epochs.len() - 1;
        let star = p_val.iter().position(|&v| v >= cfg.training.plateau_share * p_val[last]).unwrap_or(last);
        let gain_star = acc[star] - rit;
        let gain_first = acc[0] - rit;
        let margin_star = noise_margin(acc[star], rit, n);
        plateau_gain.push((
            gain_star > margin_star && gain_first < gain_star,
            format!(
                "seed {}: c* = epoch {}; gain over RI-T from c* {gain_star:+.4} (margin {margin_star:.4}), from epoch {} \
                 {gain_first:+.4}",
                s.seed, epochs[star], epochs[0]
            ),
        ));
        let margin_last = noise_margin(acc[star], acc[last], n);
        earlier.push((
            star < last && acc[star] >= acc[last] - margin_last,
            format!(
                "seed {}: c* = epoch {} of {}; P-T from c* {:.4}, from the last {:.4} (margin {margin_last:.4})",
                s.seed, epochs[star], epochs[last], acc[star], acc[last]
            ),
        ));
        let knee = |improvement: &dyn Fn(usize) -> f64| {
            let total = (0..epochs.len()).map(improvement).fold(0.0, f64::max);
            (0..epochs.len()).find(|&c| total <= 0.0 || improvement(c) >= total / 2.0).unwrap_or(0)
        };
        let loss_knee = knee(&|c| loss[0] - loss[c]);
        let acc_knee = knee(&|c| acc[c] - acc[0]);
        independent.push((
            loss_knee != acc_knee,
            format!(
                "seed {}: half the early-loss improvement by epoch {}, half the accuracy improvement by epoch {}",
                s.seed, epochs[loss_knee], epochs[acc_knee]
            ),
        ));
        rows.push(json!({"seed": s.seed, "c_star": epochs[star], "rit_accuracy": num(rit),
                         "p_source_validation": p_val.iter().map(|&v| num(v)).collect::<Vec<_>>(),
                         "pt_accuracy": acc.iter().map(|&v| num(v)).collect::<Vec<_>>(),
                         "pt_early_loss": loss.iter().map(|&v| num(v)).collect::<Vec<_>>()}));
        rit_acc.push(vec![rit; epochs.len()]);
        source_acc.push(p_val);
        sweep_acc.push(acc);
        sweep_early.push(loss);
    }
    let x: Vec<f64> = epochs.iter().map(|&e| e as f64).collect();
    let rit_early: Vec<Vec<f64>> = set
        .seeds
        .iter()
        .map(|s| {
            let m = &s.domains[d];
            vec![mean(&[early_loss(&m.rit[0].train_loss), early_loss(&m.rit[1].train_loss)]); epochs.len()]
        })
        .collect();
    let figures = vec![
        Figure {
            title: format!("Fine-tuning on {domain} from P's checkpoints"),
            caption: format!(
                "P's accuracy on the source validation split at each checkpoint (its pre-training curve) beside the \
                 test accuracy on {domain} of P-T fine-tuned from that checkpoint, and RI-T's for reference. The paper: \
                 the gains appear once pre-training plateaus, and an earlier checkpoint loses no accuracy."
            ),
            chart: Chart::Lines {
                x: x.clone(),
                x_labels: None,
                lines: vec![
                    Line::over_seeds("P (source val.)", &source_acc),
                    Line::over_seeds(format!("P-T ({domain} test)"), &sweep_acc),
                    Line::over_seeds(format!("RI-T ({domain} test)"), &rit_acc),
                ],
                y_range: Some((0.0, 1.0)),
                marks: vec![],
                x_label: "pre-training epoch of the checkpoint".into(),
                y_label: "accuracy".into(),
            },
        },
        Figure {
            title: format!("Early training loss on {domain} against the checkpoint"),
            caption: "Mean training loss over the first quarter of the fine-tuning epochs: optimisation speed. The paper \
                      finds its improvement independent of the final accuracy's."
                .into(),
            chart: Chart::Lines {
                x,
                x_labels: None,
                lines: vec![Line::over_seeds("P-T", &sweep_early), Line::over_seeds("RI-T", &rit_early)],
                y_range: None,
                marks: vec![],
                x_label: "pre-training epoch of the checkpoint".into(),
                y_label: "early training loss (nats)".into(),
            },
        },
    ];
    let findings = vec![
        Finding::new(
            "Fine-tuning improves significantly from the checkpoints where pre-training plateaus",
            format!(
                "with c* the earliest checkpoint where P's source validation accuracy reaches {:.0}% of the last \
                 checkpoint's: P-T from c* beats the two RI-T's mean test accuracy on {domain} by more than 2 se, and \
                 P-T from the first checkpoint gains less",
                100.0 * cfg.training.plateau_share
            ),
            plateau_gain,
        ),
        Finding::new(
            "One can fine-tune from an earlier checkpoint without losing accuracy",
            format!("c* is before the last checkpoint and P-T from c* is at most 2 se below P-T from the last, on {domain}"),
            earlier,
        ),
        Finding::new(
            "Optimisation speed and final accuracy improve independently over the checkpoints",
            "the first checkpoint attaining half of the early-loss improvement differs from the first attaining half of \
             the test-accuracy improvement (both from the first checkpoint to the best)",
            independent,
        ),
    ];
    Ok(Section {
        title: "Pre-training checkpoints".into(),
        json: Map::from_iter([(
            "checkpoints".to_string(),
            json!({"domain": domain, "epochs": epochs, "per_seed": rows}),
        )]),
        table,
        findings,
        figures,
    })
}
