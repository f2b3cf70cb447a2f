//! The sections about features (docs/analyses.md, section 10, "Features"): CKA per layer, the
//! mistakes two models share and whether P-T's extra mistakes are ambiguous, and the
//! block-shuffle sweep (P-T and RI-T retrained on block-shuffled images).

use super::domains::{DomainKind, IMAGE};
use super::models::{Trained, HEAD};
use super::{mean, num, Chart, Figure, Finding, Inputs, Line, Progress, Section, Size};
use crate::cka::{cka_matrix, Estimator};
use crate::data::{block_shuffle, prediction_agreement};
use crate::error::Result;
use crate::model::{Cnn, Dataset};
use crate::tensor::Matrix;
use serde_json::{json, Map, Value};
use std::time::Instant;

/// This family's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// CKA runs on the first `cka_images` test images of each domain.
    pub cka_images: usize,
    /// The domains of the block-shuffle sweep.
    pub block_domains: Vec<DomainKind>,
    /// Block sizes of the sweep, largest first; the image side (the identity) reuses the trained
    /// models.
    pub block_sizes: Vec<usize>,
}

impl Settings {
    pub fn new(size: Size) -> Settings {
        let side = IMAGE[1];
        match size {
            Size::Tiny => {
                Settings { cka_images: 60, block_domains: vec![DomainKind::Real], block_sizes: vec![side, 4] }
            }
            Size::Quick => {
                Settings { cka_images: 300, block_domains: vec![DomainKind::Real], block_sizes: vec![side, 4, 1] }
            }
            Size::Full => {
                Settings { cka_images: 500, block_domains: vec![DomainKind::Real], block_sizes: vec![side, 4, 1] }
            }
        }
    }
}

/// The pairs of models CKA compares: (label, first model, second model).
const CKA_PAIRS: [&str; 4] = ["P-T & P", "P-T & P-T", "P-T & RI-T", "RI-T & RI-T"];

/// Every section of this family, in report order.
pub(super) fn sections(inputs: &Inputs, progress: Progress) -> Result<Vec<Section>> {
    progress("features: CKA and mistakes", 0.0);
    let started = Instant::now();
    let per_domain = domain_outputs(inputs)?;
    let outputs_seconds = started.elapsed().as_secs_f64();
    // The shared forward passes are counted in the CKA section's seconds.
    let cka = timed(outputs_seconds, || cka_section(inputs, &per_domain))?;
    let mistakes = timed(0.0, || mistakes_section(inputs, &per_domain))?;
    drop(per_domain);
    progress("features: block shuffle", 0.5);
    let block = timed(0.0, || block_section(inputs))?;
    Ok(vec![cka, mistakes, block])
}

/// Runs `f` and stores its seconds (plus `extra`) under `seconds` in the section's JSON key.
fn timed(extra: f64, f: impl FnOnce() -> Result<Section>) -> Result<Section> {
    let started = Instant::now();
    let mut s = f()?;
    let seconds = extra + started.elapsed().as_secs_f64();
    for v in s.json.values_mut() {
        if let Value::Object(o) = v {
            o.insert("seconds".into(), num(seconds));
        }
    }
    s.table.push_str(&format!("  ({seconds:.1} s)\n"));
    Ok(s)
}

/// The module outputs of one seed's models on one domain's CKA images, and their softmax
/// probabilities on the whole test set.
struct SeedOutputs {
    /// Per model of [`CKA_PAIRS`]'s order P, P-T 0, P-T 1, RI-T 0, RI-T 1: per module the
    /// `n x features` outputs.
    acts: [Vec<Vec<f32>>; 5],
    /// Softmax probabilities (n x classes) of P-T 0, P-T 1, RI-T 0, RI-T 1 on the test set.
    probs: [Vec<f32>; 4],
}

/// Per domain, per seed.
type Outputs = Vec<Vec<SeedOutputs>>;

fn domain_outputs(inputs: &Inputs) -> Result<Outputs> {
    let set = inputs.set;
    let mut out = Vec::new();
    for (d, data) in set.targets.iter().enumerate() {
        let cnn = &set.target_cnns[d];
        let mut seeds = Vec::new();
        for s in &set.seeds {
            let m = &s.domains[d];
            let full = |p| cnn.activations(p, &data.test);
            let acts_pt0 = full(&m.pt[0].weights)?;
            let acts_pt1 = full(&m.pt[1].weights)?;
            let acts_rit0 = full(&m.rit[0].weights)?;
            let acts_rit1 = full(&m.rit[1].weights)?;
            let probs = [&acts_pt0, &acts_pt1, &acts_rit0, &acts_rit1].map(|a| softmax_rows(logits(a), cnn.classes()));
            let n = inputs.cfg.features.cka_images.min(data.test.n);
            // P reads the same images through its own (source) head: only the class count differs.
            let head = Dataset { classes: set.source_cnn.classes(), ..data.test.head(n) };
            let cut = |a: Vec<Vec<f32>>| -> Vec<Vec<f32>> {
                a.into_iter().map(|v| v[..v.len() / data.test.n * n].to_vec()).collect()
            };
            let acts = [
                set.source_cnn.activations(&s.p.weights, &head)?,
                cut(acts_pt0),
                cut(acts_pt1),
                cut(acts_rit0),
                cut(acts_rit1),
            ];
            seeds.push(SeedOutputs { acts, probs });
        }
        out.push(seeds);
    }
    Ok(out)
}

/// The logits: the output of the last module (the head, a dense layer).
fn logits(acts: &[Vec<f32>]) -> &[f32] {
    acts.last().expect("the CNN has modules")
}

/// Row-wise softmax of `n x classes` logits.
fn softmax_rows(z: &[f32], classes: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(z.len());
    for row in z.chunks(classes) {
        let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = row.iter().map(|&v| f64::from(v - top).exp()).collect();
        let sum: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| (v / sum) as f32));
    }
    out
}

fn argmax_rows(p: &[f32], classes: usize) -> Vec<u32> {
    p.chunks(classes)
        .map(|r| {
            r.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32
        })
        .collect()
}

/// The names of the body modules (every module but the head).
fn body_modules(cnn: &Cnn) -> Vec<String> {
    cnn.module_names().into_iter().filter(|m| m != HEAD).collect()
}

/// CKA of every pair of modules of two models: `[i][j]` = CKA(module i of a, module j of b).
fn cka_grid(ctx: &crate::backend::Context, a: &[Vec<f32>], b: &[Vec<f32>], n: usize) -> Result<Vec<Vec<f64>>> {
    fn view(v: &[f32], n: usize) -> Result<Matrix<'_>> {
        Matrix::contiguous(v, n, v.len() / n)
    }
    let xs = a.iter().map(|v| view(v, n)).collect::<Result<Vec<_>>>()?;
    let ys = b.iter().map(|v| view(v, n)).collect::<Result<Vec<_>>>()?;
    let flat = cka_matrix(ctx, &xs, &ys, Estimator::Biased)?;
    Ok(flat.chunks(ys.len()).map(|r| r.to_vec()).collect())
}

fn cka_section(inputs: &Inputs, outputs: &Outputs) -> Result<Section> {
    let set = inputs.set;
    let modules = set.source_cnn.module_names();
    let body = body_modules(&set.source_cnn).len();
    let mut table = String::from("\nLinear CKA per module (biased) on the test images, mean over seeds [min..max]\n");
    let mut json_domains = Map::new();
    let mut figures = Vec::new();
    // Per seed, per domain: the criteria's inputs.
    let seeds = set.seeds.len();
    let mut contrast: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    let mut falling: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    for (d, data) in set.targets.iter().enumerate() {
        let n = inputs.cfg.features.cka_images.min(data.test.n);
        // grids[pair][seed] = module x module CKA.
        let mut grids: Vec<Vec<Vec<Vec<f64>>>> = vec![vec![]; CKA_PAIRS.len()];
        for o in &outputs[d] {
            let [p, pt0, pt1, rit0, rit1] = &o.acts;
            for (k, (a, b)) in [(pt0, p), (pt0, pt1), (pt0, rit0), (rit0, rit1)].into_iter().enumerate() {
                grids[k].push(cka_grid(inputs.ctx, a, b, n)?);
            }
        }
        let diag = |k: usize, s: usize| -> Vec<f64> { (0..modules.len()).map(|i| grids[k][s][i][i]).collect() };
        let name = data.kind.name();
        table.push_str(&format!("  {name} ({n} images)\n    {:<12}", "pair"));
        modules.iter().for_each(|m| table.push_str(&format!(" {m:>18}")));
        table.push('\n');
        let mut lines = Vec::new();
        let mut pairs_json = Map::new();
        for (k, label) in CKA_PAIRS.iter().enumerate() {
            let per_seed: Vec<Vec<f64>> = (0..seeds).map(|s| diag(k, s)).collect();
            let line = Line::over_seeds(*label, &per_seed);
            table.push_str(&format!("    {label:<12}"));
            for i in 0..modules.len() {
                table.push_str(&format!(" {:>6.3} [{:.2}..{:.2}]", line.mean[i], line.low[i], line.high[i]));
            }
            table.push('\n');
            pairs_json.insert(label.to_string(), json!({"per_seed": per_seed, "grid_per_seed": grids[k]}));
            lines.push(line);
        }
        for s in 0..seeds {
            let (pt_pt, rit_rit, pt_p) = (diag(1, s), diag(3, s), diag(0, s));
            let above = (0..body).all(|i| pt_pt[i] > rit_rit[i]);
            contrast[s].push((
                above,
                format!("{name}: P-T&P-T {} vs RI-T&RI-T {}", fmt_list(&pt_pt[..body]), fmt_list(&rit_rit[..body])),
            ));
            let monotone = pt_p[body - 1] < pt_p[0] && (1..body).all(|i| pt_p[i] <= pt_p[i - 1] + 0.02);
            falling[s].push((monotone, format!("{name}: P-T&P {}", fmt_list(&pt_p[..body]))));
        }
        json_domains.insert(name.into(), Value::Object(pairs_json));
        figures.push(Figure {
            title: format!("CKA per module on {name}"),
            caption: "Linear CKA between the outputs of the same module of two models (1: the same \
                      representation up to rotation and scale), mean over seeds with the range as a \
                      band. Look for P-T & P-T above RI-T & RI-T, and P-T & P falling with depth."
                .into(),
            chart: Chart::Lines {
                x: (0..modules.len()).map(|i| i as f64).collect(),
                x_labels: Some(modules.clone()),
                lines,
                y_range: Some((0.0, 1.0)),
                marks: vec![],
                x_label: "module".into(),
                y_label: "linear CKA".into(),
            },
        });
        if d == 0 {
            for (k, what) in [(0, "P-T (rows) against P (columns)"), (3, "RI-T (rows) against RI-T (columns)")] {
                let values: Vec<Vec<f64>> = (0..modules.len())
                    .map(|i| {
                        (0..modules.len())
                            .map(|j| mean(&grids[k].iter().map(|g| g[i][j]).collect::<Vec<_>>()))
                            .collect()
                    })
                    .collect();
                figures.push(Figure {
                    title: format!("CKA of every pair of modules on {name}: {what}"),
                    caption: "Each cell is the CKA of a module of the first model with a module of the \
                              second, mean over seeds. Look for a bright diagonal where the two models \
                              compute the same features at the same depth."
                        .into(),
                    chart: Chart::Heatmap {
                        rows: modules.clone(),
                        columns: modules.clone(),
                        values,
                        range: (0.0, 1.0),
                    },
                });
            }
        }
    }
    let seed_verdicts = |per: Vec<Vec<(bool, String)>>| -> Vec<(bool, String)> {
        per.into_iter().enumerate().map(|(s, v)| (v.iter().all(|x| x.0), format!("seed {s}: {}", join(&v)))).collect()
    };
    let findings = vec![
        Finding::new(
            "Two P-T models have more similar features than two RI-T models, in every body module",
            "CKA(P-T, P-T) > CKA(RI-T, RI-T) in each of conv1..layer3, in every domain",
            seed_verdicts(contrast),
        ),
        Finding::new(
            "P-T & P similarity falls with depth",
            "CKA(P-T, P) at layer3 below that at conv1, no body module above the previous by more than 0.02, \
             in every domain",
            seed_verdicts(falling),
        ),
    ];
    let mut json = Map::new();
    json.insert("modules".into(), json!(modules));
    json.insert("estimator".into(), json!("biased linear CKA"));
    json.insert("domains".into(), Value::Object(json_domains));
    Ok(Section {
        title: "CKA per layer".into(),
        json: Map::from_iter([("cka".to_string(), Value::Object(json))]),
        table,
        findings,
        figures,
    })
}

fn fmt_list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
    format!("[{}]", items.join(", "))
}

fn join(v: &[(bool, String)]) -> String {
    v.iter().map(|x| x.1.as_str()).collect::<Vec<_>>().join("; ")
}

/// Both wrong with the same label over at least one wrong (0 when neither is ever wrong).
fn shared_mistake_share(counts: [usize; 5]) -> f64 {
    let wrong_any = counts[1] + counts[2] + counts[3] + counts[4];
    if wrong_any == 0 {
        0.0
    } else {
        counts[3] as f64 / wrong_any as f64
    }
}

/// Per sample: the ensemble's mean probability of the true class minus its largest mean
/// probability of another class.
fn ensemble_margins(members: &[&[f32]], truth: &[u32], classes: usize) -> Vec<f64> {
    truth
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let p =
                |c: usize| members.iter().map(|m| f64::from(m[i * classes + c])).sum::<f64>() / members.len() as f64;
            let other = (0..classes).filter(|&c| c != t as usize).map(p).fold(f64::NEG_INFINITY, f64::max);
            p(t as usize) - other
        })
        .collect()
}

fn mistakes_section(inputs: &Inputs, outputs: &Outputs) -> Result<Section> {
    let set = inputs.set;
    let seeds = set.seeds.len();
    let mut table = String::from(
        "\nMistakes on the test images: counts both right / only A / only B / both wrong same / both wrong \
         different, and the shared-mistake share\n",
    );
    if seeds == 1 {
        table.push_str("  (one seed: the ambiguity ensemble is that seed's P-T 1 and RI-T 1)\n");
    }
    let mut similar: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    // Per seed, pooled over domains: margins of the P-T-wrong-RI-T-right samples, of the rest, and
    // of the RI-T-wrong-P-T-right samples (the control).
    let mut pooled: Vec<[Vec<f64>; 3]> = vec![Default::default(); seeds];
    let mut json_domains = Map::new();
    let mut share_lines = Vec::new();
    for (d, data) in set.targets.iter().enumerate() {
        let name = data.kind.name();
        let classes = set.target_cnns[d].classes();
        let truth = &data.test.y;
        let mut rows = Vec::new();
        for s in 0..seeds {
            let o = &outputs[d][s];
            let pred: Vec<Vec<u32>> = o.probs.iter().map(|p| argmax_rows(p, classes)).collect();
            let acc: Vec<f64> = pred
                .iter()
                .map(|p| p.iter().zip(truth).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64)
                .collect();
            let pt_pt = prediction_agreement(&pred[0], &pred[1], truth)?;
            let rit_rit = prediction_agreement(&pred[2], &pred[3], truth)?;
            let pt_rit = prediction_agreement(&pred[0], &pred[2], truth)?;
            let shares = [pt_pt.counts(), rit_rit.counts(), pt_rit.counts()].map(shared_mistake_share);
            table.push_str(&format!(
                "  {name:<10} seed {s}  P-T&P-T {:?} share {:.3}  RI-T&RI-T {:?} share {:.3}  P-T&RI-T {:?} share \
                 {:.3}  (acc P-T {:.3} {:.3}, RI-T {:.3} {:.3})\n",
                pt_pt.counts(),
                shares[0],
                rit_rit.counts(),
                shares[1],
                pt_rit.counts(),
                shares[2],
                acc[0],
                acc[1],
                acc[2],
                acc[3]
            ));
            similar[s].push((
                shares[0] > shares[1],
                format!("{name}: shared-mistake share P-T&P-T {:.3}, RI-T&RI-T {:.3}", shares[0], shares[1]),
            ));
            // The ensemble: the other seeds' four models, or this seed's P-T 1 and RI-T 1.
            let members: Vec<&[f32]> = if seeds > 1 {
                (0..seeds).filter(|&t| t != s).flat_map(|t| outputs[d][t].probs.iter().map(|p| p.as_slice())).collect()
            } else {
                vec![o.probs[1].as_slice(), o.probs[3].as_slice()]
            };
            let margins = ensemble_margins(&members, truth, classes);
            let only_rit: std::collections::HashSet<usize> = pt_rit.only_b.iter().copied().collect();
            for (i, &m) in margins.iter().enumerate() {
                pooled[s][if only_rit.contains(&i) { 0 } else { 1 }].push(m);
            }
            pooled[s][2].extend(pt_rit.only_a.iter().map(|&i| margins[i]));
            rows.push(json!({
                "seed": s,
                "accuracy": {"pt0": acc[0], "pt1": acc[1], "rit0": acc[2], "rit1": acc[3]},
                "pt_pt": pt_pt.counts(), "rit_rit": rit_rit.counts(), "pt_rit": pt_rit.counts(),
                "shared_mistake_share": {"pt_pt": num(shares[0]), "rit_rit": num(shares[1]), "pt_rit": num(shares[2])},
                "margin_pt_wrong_rit_right": num(mean(&pt_rit.only_b.iter().map(|&i| margins[i]).collect::<Vec<_>>())),
                "pt_wrong_rit_right": pt_rit.only_b.len(),
            }));
        }
        share_lines.push(rows.clone());
        json_domains.insert(name.into(), Value::Array(rows));
    }
    let mut ambiguous = Vec::new();
    let mut margin_rows = Vec::new();
    table.push_str(
        "  Ensemble margin (pooled over domains): P-T wrong & RI-T right / the rest / control RI-T wrong & P-T right\n",
    );
    for (s, [extra, rest, control]) in pooled.iter().enumerate() {
        let (me, mr, mc) = (mean(extra), mean(rest), mean(control));
        table.push_str(&format!(
            "    seed {s}: {me:.3} ({} samples) / {mr:.3} ({}) / {mc:.3} ({})\n",
            extra.len(),
            rest.len(),
            control.len()
        ));
        ambiguous.push((
            !extra.is_empty() && me < mr,
            format!(
                "seed {s}: margin {me:.3} on {} P-T-only mistakes, {mr:.3} on the rest (control {mc:.3} on {} RI-T-only)",
                extra.len(),
                control.len()
            ),
        ));
        margin_rows
            .push(json!({"seed": s, "pt_wrong_rit_right": num(me), "rest": num(mr), "rit_wrong_pt_right": num(mc),
                                "counts": [extra.len(), rest.len(), control.len()]}));
    }
    let similar = similar
        .into_iter()
        .enumerate()
        .map(|(s, v)| (v.iter().all(|x| x.0), format!("seed {s}: {}", join(&v))))
        .collect();
    let findings = vec![
        Finding::new(
            "Two P-T models make similar mistakes",
            "shared-mistake share (both wrong, same label, over at least one wrong) of P-T & P-T above that of \
             RI-T & RI-T, in every domain",
            similar,
        ),
        Finding::new(
            "P-T's extra mistakes are ambiguous samples",
            "pooled over domains, the ensemble margin of the samples where P-T is wrong and RI-T right below that \
             of the other test samples",
            ambiguous,
        ),
    ];
    // The figure: the shares per domain (x) for the three pairs.
    let names: Vec<String> = set.targets.iter().map(|t| t.kind.name().to_string()).collect();
    let share_of = |pair: &str| -> Vec<Vec<f64>> {
        (0..seeds)
            .map(|s| {
                share_lines.iter().map(|rows| rows[s]["shared_mistake_share"][pair].as_f64().unwrap_or(0.0)).collect()
            })
            .collect()
    };
    let lines = vec![
        Line::over_seeds("P-T & P-T", &share_of("pt_pt")),
        Line::over_seeds("RI-T & RI-T", &share_of("rit_rit")),
        Line::over_seeds("P-T & RI-T", &share_of("pt_rit")),
    ];
    let figure = Figure {
        title: "Shared mistakes per domain".into(),
        caption: "The share of mistakes two models make with the same wrong label, among the samples at least \
                  one of them gets wrong (mean over seeds, range as a band). Look for P-T & P-T above RI-T & RI-T."
            .into(),
        chart: Chart::Lines {
            x: (0..names.len()).map(|i| i as f64).collect(),
            x_labels: Some(names),
            lines,
            y_range: Some((0.0, 1.0)),
            marks: vec![],
            x_label: "target domain".into(),
            y_label: "shared-mistake share".into(),
        },
    };
    let mut json = Map::new();
    json.insert("domains".into(), Value::Object(json_domains));
    json.insert("ensemble_margin".into(), Value::Array(margin_rows));
    json.insert(
        "ensemble".into(),
        json!(if seeds > 1 {
            "P-T 0, P-T 1, RI-T 0, RI-T 1 of every other seed"
        } else {
            "P-T 1 and RI-T 1 of the seed"
        }),
    );
    Ok(Section {
        title: "Mistakes and ambiguity".into(),
        json: Map::from_iter([("mistakes".to_string(), Value::Object(json))]),
        table,
        findings,
        figures: vec![figure],
    })
}

/// A copy of `data` with its images block-shuffled (blocks of `b`, permutation from `seed`).
fn shuffled(data: &Dataset, b: usize, seed: u64) -> Result<Dataset> {
    let mut out = data.clone();
    let [c, h, w] = IMAGE;
    block_shuffle(&mut out.x, data.n, c, h, w, b, seed)?;
    Ok(out)
}

/// The mean training loss over the first ceil(epochs / 5) epochs.
fn early_loss(loss: &[f64]) -> f64 {
    super::early_mean(loss, 5)
}

/// Test accuracy and early training loss of a model retrained from `t`'s init on `train`.
fn retrain(cnn: &Cnn, t: &Trained, train: &Dataset, test: &Dataset) -> Result<(f64, f64)> {
    let mut w = t.init.try_clone()?;
    let loss = cnn.train(&mut w, train, &t.options)?;
    Ok((cnn.evaluate(&w, test)?.accuracy, early_loss(&loss)))
}

fn block_section(inputs: &Inputs) -> Result<Section> {
    let set = inputs.set;
    let st = &inputs.cfg.features;
    let seeds = set.seeds.len();
    let sizes = &st.block_sizes;
    let mut table = String::from(
        "\nBlock shuffle: test accuracy, relative drop and early training loss of P-T and RI-T against block size\n",
    );
    let mut drops: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    let mut shrinks: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    let mut speed: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    let mut json_domains = Map::new();
    let mut figures = Vec::new();
    for &kind in &st.block_domains {
        let Some(d) = set.target_index(kind) else { continue };
        let (cnn, data) = (&set.target_cnns[d], &set.targets[d]);
        let name = kind.name();
        // [seed][size] = (P-T acc, P-T early, RI-T acc, RI-T early).
        let mut grid = vec![vec![[0.0; 4]; sizes.len()]; seeds];
        for (s, sm) in set.seeds.iter().enumerate() {
            let m = &sm.domains[d];
            for (k, &b) in sizes.iter().enumerate() {
                grid[s][k] = if b == IMAGE[1] {
                    let acc = |t: &Trained| cnn.evaluate(&t.weights, &data.test).map(|r| r.accuracy);
                    [acc(&m.pt[0])?, early_loss(&m.pt[0].train_loss), acc(&m.rit[0])?, early_loss(&m.rit[0].train_loss)]
                } else {
                    let perm_seed = 7919 * sm.seed + b as u64;
                    let (train, test) = (shuffled(&data.train, b, perm_seed)?, shuffled(&data.test, b, perm_seed)?);
                    let (pa, pe) = retrain(cnn, &m.pt[0], &train, &test)?;
                    let (ra, re) = retrain(cnn, &m.rit[0], &train, &test)?;
                    [pa, pe, ra, re]
                };
            }
            let g = &grid[s];
            let (last, first) = (sizes.len() - 1, 0);
            table.push_str(&format!(
                "  {name:<10} seed {s} (lr P-T {}, RI-T {})\n",
                m.pt[0].options.lr, m.rit[0].options.lr
            ));
            for (k, &b) in sizes.iter().enumerate() {
                table.push_str(&format!(
                    "    block {b:>2}: P-T acc {:.3} (drop {:.3}) early loss {:.3}   RI-T acc {:.3} (drop {:.3}) early loss {:.3}\n",
                    g[k][0],
                    1.0 - g[k][0] / g[first][0],
                    g[k][1],
                    g[k][2],
                    1.0 - g[k][2] / g[first][2],
                    g[k][3]
                ));
            }
            let b_min = sizes[last];
            drops[s].push((
                g[last][0] < g[first][0] && g[last][2] < g[first][2],
                format!(
                    "{name}: P-T {:.3} -> {:.3}, RI-T {:.3} -> {:.3} (block {} -> {b_min})",
                    g[first][0], g[last][0], g[first][2], g[last][2], sizes[first]
                ),
            ));
            let (gap_full, gap_min) = (g[first][0] - g[first][2], g[last][0] - g[last][2]);
            shrinks[s].push((
                gap_min < gap_full,
                format!(
                    "{name}: P-T minus RI-T {gap_full:.3} at block {}, {gap_min:.3} at block {b_min}",
                    sizes[first]
                ),
            ));
            speed[s].push((
                g[last][1] < g[last][3],
                format!("{name}: early loss at block {b_min} P-T {:.3}, RI-T {:.3}", g[last][1], g[last][3]),
            ));
        }
        let col = |k: usize| -> Vec<Vec<f64>> { grid.iter().map(|g| g.iter().map(|r| r[k]).collect()).collect() };
        let rel = |k: usize| -> Vec<Vec<f64>> {
            grid.iter().map(|g| g.iter().map(|r| 1.0 - r[k] / g[0][k]).collect()).collect()
        };
        let x: Vec<f64> = (0..sizes.len()).map(|i| i as f64).collect();
        let labels: Vec<String> = sizes.iter().map(|b| b.to_string()).collect();
        for (what, lines, y_label, y_range, caption) in [
            (
                "test accuracy",
                vec![Line::over_seeds("P-T", &col(0)), Line::over_seeds("RI-T", &col(2))],
                "test accuracy",
                Some((0.0, 1.0)),
                "Smaller blocks destroy more of the images' visual features. Look for both lines falling \
                 to the right and the gap between them narrowing.",
            ),
            (
                "relative accuracy drop",
                vec![Line::over_seeds("P-T", &rel(0)), Line::over_seeds("RI-T", &rel(2))],
                "1 - acc(b) / acc(unshuffled)",
                None,
                "The share of accuracy lost to shuffling. Look for which regime loses more.",
            ),
            (
                "early training loss",
                vec![Line::over_seeds("P-T", &col(1)), Line::over_seeds("RI-T", &col(3))],
                "mean training loss, first fifth of the epochs",
                None,
                "Optimisation speed. Look for P-T below RI-T even at the smallest block, where features \
                 cannot be reused but low-level statistics can.",
            ),
        ] {
            figures.push(Figure {
                title: format!("Block shuffle on {name}: {what}"),
                caption: caption.into(),
                chart: Chart::Lines {
                    x: x.clone(),
                    x_labels: Some(labels.clone()),
                    lines,
                    y_range,
                    marks: vec![],
                    x_label: "block size (24: unshuffled)".into(),
                    y_label: y_label.into(),
                },
            });
        }
        json_domains.insert(
            name.into(),
            json!({"block_sizes": sizes, "pt_accuracy": col(0), "pt_early_loss": col(1),
                   "rit_accuracy": col(2), "rit_early_loss": col(3)}),
        );
    }
    let verdicts = |per: Vec<Vec<(bool, String)>>| -> Vec<(bool, String)> {
        per.into_iter()
            .enumerate()
            .map(|(s, v)| (!v.is_empty() && v.iter().all(|x| x.0), format!("seed {s}: {}", join(&v))))
            .collect()
    };
    let findings = vec![
        Finding::new(
            "Final accuracy drops with smaller blocks, for P-T and for RI-T",
            "accuracy at the smallest block size below that unshuffled, for both, in every block domain",
            verdicts(drops),
        ),
        Finding::new(
            "The benefit of P-T shrinks with smaller blocks",
            "acc(P-T) - acc(RI-T) at the smallest block size below that unshuffled, in every block domain",
            verdicts(shrinks),
        ),
        Finding::new(
            "P-T's speed benefit survives small blocks",
            "P-T's early training loss below RI-T's at the smallest block size, in every block domain",
            verdicts(speed),
        ),
    ];
    let mut json = Map::new();
    json.insert("domains".into(), Value::Object(json_domains));
    json.insert("early_loss".into(), json!("mean training loss over the first ceil(epochs / 5) epochs"));
    Ok(Section {
        title: "Block shuffle".into(),
        json: Map::from_iter([("block_shuffle".to_string(), Value::Object(json))]),
        table,
        findings,
        figures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_share_counts_same_label_mistakes_among_any_mistake() {
        // both right, only A, only B, both wrong same, both wrong different.
        assert_eq!(shared_mistake_share([10, 1, 2, 3, 4]), 0.3);
        assert_eq!(shared_mistake_share([10, 0, 0, 0, 0]), 0.0);
    }

    #[test]
    fn ensemble_margin_is_true_class_minus_best_other() {
        // Two members, two samples, three classes.
        let a = [0.6f32, 0.3, 0.1, 0.2, 0.5, 0.3];
        let b = [0.4f32, 0.4, 0.2, 0.2, 0.3, 0.5];
        let m = ensemble_margins(&[&a, &b], &[0, 0], 3);
        assert!((m[0] - (0.5 - 0.35)).abs() < 1e-6, "{m:?}");
        assert!((m[1] - (0.2 - 0.4)).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn softmax_rows_sum_to_one_and_keep_the_argmax() {
        let p = softmax_rows(&[1.0, 3.0, 2.0, 0.0, 0.0, 5.0], 3);
        assert!((p[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(argmax_rows(&p, 3), vec![1, 2]);
    }

    #[test]
    fn early_loss_averages_the_first_fifth() {
        assert_eq!(early_loss(&[5.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]), 4.0);
        assert_eq!(early_loss(&[2.0, 1.0]), 2.0);
    }
}
