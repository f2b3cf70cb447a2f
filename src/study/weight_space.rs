//! The sections about weight space (docs/analyses.md, section 10, "Weight space"): l2 distances,
//! interpolation curves and barriers, the RI-T barrier after permutation alignment and layer-wise
//! barriers, cross-domain interpolation, and (in `basin`) the (epsilon, delta)-basin test and
//! module criticality with rewind curves.

mod basin;

use super::domains::DomainKind;
use super::models::HEAD;
use super::{barrier_tolerance, mean, num, Chart, Figure, Finding, Inputs, Line, Progress, Section, Size};
use crate::align::{apply, match_weights, MatchOptions, PermSpec};
use crate::error::{Error, Result};
use crate::eval::{CnnEvaluator, Metric};
use crate::landscape::{curve_barrier, extrapolation_lambdas, interpolation_curve, linspace, Barrier};
use crate::model::{Cnn, Dataset};
use crate::params::ParamSet;
use serde_json::{json, Map, Value};
use std::time::Instant;

/// This family's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Interpolation on [-1, 2]: `lambdas_per_unit` + 1 points per unit of lambda.
    pub lambdas_per_unit: usize,
    /// Domains of the alignment and layer-wise barriers, and their grid on [0, 1].
    pub layerwise_domains: Vec<DomainKind>,
    pub layerwise_points: usize,
    /// Points of the cross-domain curves on [0, 1].
    pub cross_points: usize,
    /// The basin test: its domains, draws for property 1, pairs for properties 2 and 3 per
    /// delta, and delta as multiples of the pair's distance.
    pub basin_domains: Vec<DomainKind>,
    pub basin_samples: usize,
    pub basin_pairs: usize,
    pub basin_deltas: Vec<f64>,
    /// Criticality and rewind: the domains, the training images (the sample S), the refined
    /// search's alphas and tolerance, noise samples per point, repeats, and rewind points.
    pub criticality_domains: Vec<DomainKind>,
    pub criticality_images: usize,
    pub criticality_alphas: usize,
    pub criticality_tolerance: f64,
    pub criticality_samples: usize,
    pub criticality_repeats: usize,
    pub rewind_points: usize,
}

impl Settings {
    pub fn new(size: Size) -> Settings {
        let near_first = vec![DomainKind::Real];
        let far = vec![DomainKind::Far];
        match size {
            Size::Tiny => Settings {
                lambdas_per_unit: 2,
                layerwise_domains: near_first.clone(),
                layerwise_points: 3,
                cross_points: 3,
                basin_domains: near_first,
                basin_samples: 3,
                basin_pairs: 2,
                basin_deltas: vec![1.0],
                criticality_domains: far,
                criticality_images: 60,
                criticality_alphas: 2,
                criticality_tolerance: 1.0,
                criticality_samples: 2,
                criticality_repeats: 1,
                rewind_points: 3,
            },
            // Sized from timing so that this family and `features` stay near a third of a run.
            Size::Quick => Settings {
                lambdas_per_unit: 3,
                layerwise_domains: near_first.clone(),
                layerwise_points: 3,
                cross_points: 4,
                basin_domains: near_first,
                basin_samples: 6,
                basin_pairs: 3,
                basin_deltas: vec![0.5, 2.0],
                criticality_domains: far,
                criticality_images: 60,
                criticality_alphas: 3,
                criticality_tolerance: 1.0,
                criticality_samples: 2,
                criticality_repeats: 2,
                rewind_points: 4,
            },
            Size::Full => Settings {
                lambdas_per_unit: 4,
                layerwise_domains: near_first.clone(),
                layerwise_points: 5,
                cross_points: 5,
                basin_domains: near_first,
                basin_samples: 8,
                basin_pairs: 4,
                basin_deltas: vec![0.5, 1.0, 2.0],
                criticality_domains: far,
                criticality_images: 100,
                criticality_alphas: 3,
                criticality_tolerance: 1.0,
                criticality_samples: 2,
                criticality_repeats: 2,
                rewind_points: 5,
            },
        }
    }
}

/// A section of this family.
type SectionFn = fn(&Inputs) -> Result<Section>;

/// Every section of this family, in report order.
pub(super) fn sections(inputs: &Inputs, progress: Progress) -> Result<Vec<Section>> {
    let steps: [(&str, SectionFn); 6] = [
        ("distances", distances_section),
        ("interpolation", interpolation_section),
        ("alignment and layer-wise barriers", layerwise_section),
        ("cross-domain interpolation", cross_domain_section),
        ("basin test", basin::basin_section),
        ("criticality and rewind", basin::criticality_section),
    ];
    let mut out = Vec::new();
    for (k, (what, f)) in steps.iter().enumerate() {
        progress(&format!("weight space: {what}"), k as f64 / steps.len() as f64);
        out.push(timed(|| f(inputs))?);
    }
    Ok(out)
}

/// Runs `f` and stores its seconds under `seconds` in the section's JSON key.
fn timed(f: impl FnOnce() -> Result<Section>) -> Result<Section> {
    let started = Instant::now();
    let mut s = f()?;
    let seconds = started.elapsed().as_secs_f64();
    for v in s.json.values_mut() {
        if let Value::Object(o) = v {
            o.insert("seconds".into(), num(seconds));
        }
    }
    s.table.push_str(&format!("  ({seconds:.1} s)\n"));
    Ok(s)
}

/// Per seed, the evidence of every domain; a seed holds when every domain does (and there is
/// at least one).
fn all_domains(per: Vec<Vec<(bool, String)>>) -> Vec<(bool, String)> {
    per.into_iter()
        .enumerate()
        .map(|(s, v)| {
            let text: Vec<&str> = v.iter().map(|x| x.1.as_str()).collect();
            (!v.is_empty() && v.iter().all(|x| x.0), format!("seed {s}: {}", text.join("; ")))
        })
        .collect()
}

/// The l2 distance of two sets over the tensors of each named module (by tensor name; `a`'s
/// grouping), and in total over those modules.
fn module_distances(a: &ParamSet, b: &ParamSet, modules: &[String]) -> Result<(Vec<f64>, f64)> {
    let mut per = Vec::with_capacity(modules.len());
    for name in modules {
        let m = a.module_index(name).ok_or_else(|| Error::NotFound(format!("no module {name:?}")))?;
        let mut sq = 0.0f64;
        for &t in &a.modules()[m].tensors {
            let ta = &a.tensors()[t];
            let tb = b.tensor(ta.name()).ok_or_else(|| Error::NotFound(format!("no tensor {:?}", ta.name())))?;
            if ta.shape() != tb.shape() {
                return Err(Error::ShapeMismatch(format!(
                    "tensor {:?}: {:?} vs {:?}",
                    ta.name(),
                    ta.shape(),
                    tb.shape()
                )));
            }
            let (x, y) = (ta.host()?.to_f32(), tb.host()?.to_f32());
            sq += x.iter().zip(y.iter()).map(|(&u, &v)| (f64::from(u) - f64::from(v)).powi(2)).sum::<f64>();
        }
        per.push(sq.sqrt());
    }
    let total = per.iter().map(|d| d * d).sum::<f64>().sqrt();
    Ok((per, total))
}

fn distances_section(inputs: &Inputs) -> Result<Section> {
    let set = inputs.set;
    let seeds = set.seeds.len();
    let modules = set.source_cnn.module_names();
    let body: Vec<String> = modules.iter().filter(|m| *m != HEAD).cloned().collect();
    let mut table =
        String::from("\nl2 distance per module and in total (P pairs body-only: P's head has another shape)\n");
    let mut closer: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    let mut to_p: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    let mut json_domains = Map::new();
    let mut figures = Vec::new();
    for (d, data) in set.targets.iter().enumerate() {
        let name = data.kind.name();
        let mut rows = Vec::new();
        let mut per_module: [Vec<Vec<f64>>; 2] = Default::default();
        for (s, sm) in set.seeds.iter().enumerate() {
            let m = &sm.domains[d];
            let (pt, pt_total) = module_distances(&m.pt[0].weights, &m.pt[1].weights, &modules)?;
            let (rit, rit_total) = module_distances(&m.rit[0].weights, &m.rit[1].weights, &modules)?;
            let (_, pt_p) = module_distances(&m.pt[0].weights, &sm.p.weights, &body)?;
            let (_, rit_p) = module_distances(&m.rit[0].weights, &sm.p.weights, &body)?;
            let (_, pt_body) = module_distances(&m.pt[0].weights, &m.pt[1].weights, &body)?;
            let (_, rit_body) = module_distances(&m.rit[0].weights, &m.rit[1].weights, &body)?;
            table.push_str(&format!(
                "  {name:<10} seed {s}  2 P-T {pt_total:.2} (body {pt_body:.2})  2 RI-T {rit_total:.2} (body {rit_body:.2})  \
                 P-T & P {pt_p:.2}  RI-T & P {rit_p:.2}  (lr P-T {}, RI-T {})\n",
                m.pt[0].options.lr, m.rit[0].options.lr
            ));
            table.push_str(&format!("    per module {modules:?}: 2 P-T {}  2 RI-T {}\n", fmt(&pt), fmt(&rit)));
            let every = pt.iter().zip(&rit).all(|(a, b)| a < b) && pt_total < rit_total;
            closer[s].push((
                every,
                format!("{name}: 2 P-T {} total {pt_total:.2}, 2 RI-T {} total {rit_total:.2}", fmt(&pt), fmt(&rit)),
            ));
            to_p[s].push((pt_p < rit_p, format!("{name}: body P-T & P {pt_p:.2}, RI-T & P {rit_p:.2}")));
            rows.push(json!({"seed": s, "modules": modules,
                "pt_pt": pt, "pt_pt_total": pt_total, "pt_pt_body": pt_body,
                "rit_rit": rit, "rit_rit_total": rit_total, "rit_rit_body": rit_body,
                "pt_p_body": pt_p, "rit_p_body": rit_p}));
            per_module[0].push(pt);
            per_module[1].push(rit);
        }
        figures.push(Figure {
            title: format!("l2 distance per module on {name}"),
            caption: "The distance between the two models of a pair, module by module (mean over seeds, range as \
                      a band). Look for the two P-T models closer than the two RI-T models in every module."
                .into(),
            chart: Chart::Lines {
                x: (0..modules.len()).map(|i| i as f64).collect(),
                x_labels: Some(modules.clone()),
                lines: vec![Line::over_seeds("2 P-T", &per_module[0]), Line::over_seeds("2 RI-T", &per_module[1])],
                y_range: None,
                marks: vec![],
                x_label: "module".into(),
                y_label: "l2 distance".into(),
            },
        });
        json_domains.insert(name.into(), Value::Array(rows));
    }
    let findings = vec![
        Finding::new(
            "Two P-T models are closer in weight space than two RI-T models, in every module",
            "d(P-T, P-T) < d(RI-T, RI-T) in each module (head included) and in total, in every domain",
            all_domains(closer),
        ),
        Finding::new(
            "P-T stays closer to P than RI-T is",
            "body-only d(P-T, P) < d(RI-T, P), in every domain",
            all_domains(to_p),
        ),
    ];
    let mut json = Map::new();
    json.insert("domains".into(), Value::Object(json_domains));
    json.insert("p_pairs".into(), json!("body only (conv1..layer3): P's head has another shape"));
    Ok(Section {
        title: "Distances in weight space".into(),
        json: Map::from_iter([("l2".to_string(), Value::Object(json))]),
        table,
        findings,
        figures,
    })
}

fn fmt(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
    format!("[{}]", items.join(", "))
}

/// The evaluator of `cnn` on the first `n` rows of `data`.
fn evaluator(cnn: &Cnn, data: &Dataset, n: usize) -> CnnEvaluator {
    CnnEvaluator::new(cnn.clone(), data.head(n))
}

/// The evaluator of `cnn` on every test image of a domain: curves, barriers, the basin test and
/// rewind use them all (docs/analyses.md, section 10, revision 2).
fn test_evaluator(cnn: &Cnn, test: &Dataset) -> CnnEvaluator {
    evaluator(cnn, test, test.n)
}

/// The tolerance a barrier of a curve evaluated by `ev` is judged against: `barrier_tolerance`
/// at the mean of the curve's endpoint errors and the images evaluated.
fn tolerance_of(barrier: &Barrier, ev: &CnnEvaluator) -> f64 {
    barrier_tolerance((barrier.start + barrier.end) / 2.0, ev.data().n)
}

/// The test error along theta(lambda) = (1 - lambda) a + lambda b (only `module` moved, the rest
/// at `b`, when given), and its barrier on [0, 1], judged against `tolerance_of` (`same_basin`).
fn error_curve(
    inputs: &Inputs,
    ev: &mut CnnEvaluator,
    a: &ParamSet,
    b: &ParamSet,
    lambdas: &[f64],
    module: Option<usize>,
) -> Result<(Vec<f64>, Barrier)> {
    let mut live = a.try_clone()?;
    let curve = interpolation_curve(inputs.ctx, ev, a, b, &mut live, lambdas, module)?;
    let mut barrier = curve_barrier(lambdas, &curve, Metric::Error, 0.0)?;
    barrier.same_basin = barrier.value <= tolerance_of(&barrier, ev);
    Ok((curve.iter().map(|m| m.error).collect(), barrier))
}

const PAIRS: [&str; 3] = ["P-T / P-T", "RI-T / RI-T", "RI-T / RI-T, one init"];

fn interpolation_section(inputs: &Inputs) -> Result<Section> {
    let set = inputs.set;
    let st = &inputs.cfg.weight_space;
    let seeds = set.seeds.len();
    let lambdas = extrapolation_lambdas(st.lambdas_per_unit);
    let mut table = format!(
        "\nInterpolation on [-1, 2] ({} points), barrier of the test error on [0, 1] against tol = max(0.01, 2 \
         sqrt(e (1 - e) / n)), e the endpoints' mean error, n the test images\n",
        lambdas.len()
    );
    let mut verdicts: [Vec<Vec<(bool, String)>>; 3] = Default::default();
    for v in &mut verdicts {
        *v = vec![vec![]; seeds];
    }
    let mut json_domains = Map::new();
    let mut figures = Vec::new();
    for (d, data) in set.targets.iter().enumerate() {
        let name = data.kind.name();
        let mut ev = test_evaluator(&set.target_cnns[d], &data.test);
        let mut curves: [Vec<Vec<f64>>; 3] = Default::default();
        let mut barriers: [Vec<Barrier>; 3] = Default::default();
        let mut tolerances: [Vec<f64>; 3] = Default::default();
        for (s, sm) in set.seeds.iter().enumerate() {
            let m = &sm.domains[d];
            let pairs = [(&m.pt[0], &m.pt[1]), (&m.rit[0], &m.rit[1]), (&m.rit_same[0], &m.rit_same[1])];
            for (k, (a, b)) in pairs.into_iter().enumerate() {
                let (curve, barrier) = error_curve(inputs, &mut ev, &a.weights, &b.weights, &lambdas, None)?;
                let tol = tolerance_of(&barrier, &ev);
                table.push_str(&format!(
                    "  {name:<10} seed {s}  {:<22} barrier {:.4} (tol {tol:.4}) at lambda {:.2} (errors {:.3}, {:.3})\n",
                    PAIRS[k], barrier.value, barrier.peak_lambda, barrier.start, barrier.end
                ));
                let evidence = format!("{name}: barrier {:.4}, tol {tol:.4}", barrier.value);
                tolerances[k].push(tol);
                // P-T: no barrier; RI-T pairs: a barrier.
                let held = if k == 0 { barrier.same_basin } else { !barrier.same_basin };
                verdicts[k][s].push((held, evidence));
                curves[k].push(curve);
                barriers[k].push(barrier);
            }
        }
        let mut marks = vec![(0.0, "A".to_string()), (1.0, "B".to_string())];
        for k in 0..3 {
            let peak = mean(&barriers[k].iter().map(|b| b.peak_lambda).collect::<Vec<_>>());
            let value = mean(&barriers[k].iter().map(|b| b.value).collect::<Vec<_>>());
            marks.push((peak, format!("{} barrier {value:.3}", PAIRS[k])));
        }
        figures.push(Figure {
            title: format!("Interpolation on {name}"),
            caption: "Test error along the line through two models (A at 0, B at 1; beyond [0, 1] it \
                      extrapolates), mean over seeds with the range as a band; the marks show where each pair's \
                      barrier peaks and its height. Look for a flat P-T curve between A and B and a bump for RI-T."
                .into(),
            chart: Chart::Lines {
                x: lambdas.clone(),
                x_labels: None,
                lines: (0..3).map(|k| Line::over_seeds(PAIRS[k], &curves[k])).collect(),
                y_range: Some((0.0, 1.0)),
                marks,
                x_label: "lambda".into(),
                y_label: "test error".into(),
            },
        });
        json_domains.insert(
            name.into(),
            json!({
                "pt_pt": {"curves": curves[0], "barriers": barriers[0].iter().map(|b| b.value).collect::<Vec<_>>(),
                           "tolerances": tolerances[0]},
                "rit_rit": {"curves": curves[1], "barriers": barriers[1].iter().map(|b| b.value).collect::<Vec<_>>(),
                           "tolerances": tolerances[1]},
                "rit_rit_same_init": {"curves": curves[2], "barriers": barriers[2].iter().map(|b| b.value).collect::<Vec<_>>(),
                           "tolerances": tolerances[2]},
            }),
        );
    }
    let [pt, rit, same] = verdicts;
    let findings = vec![
        Finding::new("No barrier between two P-T models", "barrier <= tol in every domain", all_domains(pt)),
        Finding::new("A barrier between two RI-T models", "barrier > tol in every domain", all_domains(rit)),
        Finding::new(
            "A barrier between two RI-T models even from one init",
            "barrier > tol in every domain",
            all_domains(same),
        ),
    ];
    let mut json = Map::new();
    json.insert("lambdas".into(), json!(lambdas));
    json.insert("metric".into(), json!("test error"));
    json.insert(
        "images".into(),
        json!(set.targets.iter().map(|t| (t.kind.name().to_string(), json!(t.test.n))).collect::<Map<_, _>>()),
    );
    json.insert("tolerance".into(), json!("max(0.01, 2 sqrt(e (1 - e) / n)), e the mean endpoint error, n the images"));
    json.insert("domains".into(), Value::Object(json_domains));
    Ok(Section {
        title: "Interpolation and barriers".into(),
        json: Map::from_iter([("interpolation".to_string(), Value::Object(json))]),
        table,
        findings,
        figures,
    })
}

fn layerwise_section(inputs: &Inputs) -> Result<Section> {
    let set = inputs.set;
    let st = &inputs.cfg.weight_space;
    let seeds = set.seeds.len();
    let lambdas = linspace(0.0, 1.0, st.layerwise_points);
    let modules = set.source_cnn.module_names();
    let mut table = format!(
        "\nRI-T barrier raw and after weight matching; layer-wise barriers (one module moved, the rest at the \
         first model), test error, {} points on [0, 1]\n",
        lambdas.len()
    );
    let mut aligned_held: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    let mut json_domains = Map::new();
    let mut figures = Vec::new();
    for &kind in &st.layerwise_domains {
        let Some(d) = set.target_index(kind) else { continue };
        let (cnn, data) = (&set.target_cnns[d], &set.targets[d]);
        let name = kind.name();
        let spec = PermSpec::for_cnn(cnn)?;
        let mut ev = test_evaluator(cnn, &data.test);
        let mut rows = Vec::new();
        let mut layer_lines: [Vec<Vec<f64>>; 2] = Default::default();
        for (s, sm) in set.seeds.iter().enumerate() {
            let m = &sm.domains[d];
            let (a, b) = (&m.rit[0].weights, &m.rit[1].weights);
            let (_, raw) = error_curve(inputs, &mut ev, a, b, &lambdas, None)?;
            let matching = match_weights(&spec, a, b, &MatchOptions::default())?;
            let b_aligned = apply(&spec, b, &matching.perms)?;
            let (_, aligned) = error_curve(inputs, &mut ev, a, &b_aligned, &lambdas, None)?;
            let (_, pt_raw) = error_curve(inputs, &mut ev, &m.pt[0].weights, &m.pt[1].weights, &lambdas, None)?;
            let aligned_tol = tolerance_of(&aligned, &ev);
            table.push_str(&format!(
                "  {name:<10} seed {s}  RI-T barrier raw {:.4}, aligned {:.4} (tol {aligned_tol:.4}; matching {} passes, \
                 converged {}); P-T barrier {:.4}\n",
                raw.value, aligned.value, matching.passes, matching.converged, pt_raw.value
            ));
            aligned_held[s].push((
                !aligned.same_basin,
                format!(
                    "{name}: RI-T barrier raw {:.4}, after alignment {:.4}, tol {aligned_tol:.4}",
                    raw.value, aligned.value
                ),
            ));
            let mut per_pair = Vec::new();
            for (k, (first, second)) in [(&m.pt[0], &m.pt[1]), (&m.rit[0], &m.rit[1])].into_iter().enumerate() {
                let mut per_module = Vec::new();
                for i in 0..modules.len() {
                    // Module i moves from the second model (0) to the first (1); the rest stays at the first.
                    let (_, barrier) =
                        error_curve(inputs, &mut ev, &second.weights, &first.weights, &lambdas, Some(i))?;
                    per_module.push(barrier.value);
                }
                table.push_str(&format!("    layer-wise {} {modules:?}: {}\n", ["P-T", "RI-T"][k], fmt4(&per_module)));
                layer_lines[k].push(per_module.clone());
                per_pair.push(per_module);
            }
            rows.push(json!({"seed": s, "rit_raw": num(raw.value), "rit_aligned": num(aligned.value), "rit_aligned_tolerance": num(aligned_tol),
                             "pt_raw": num(pt_raw.value), "matching_passes": matching.passes,
                             "layerwise_pt": per_pair[0], "layerwise_rit": per_pair[1]}));
        }
        figures.push(Figure {
            title: format!("Layer-wise barriers on {name}"),
            caption: "The barrier of the test error when only one module is interpolated between the two models \
                      of a pair and the others stay at the first model (mean over seeds, range as a band). Look for \
                      which modules carry the RI-T barrier."
                .into(),
            chart: Chart::Lines {
                x: (0..modules.len()).map(|i| i as f64).collect(),
                x_labels: Some(modules.clone()),
                lines: vec![
                    Line::over_seeds("P-T / P-T", &layer_lines[0]),
                    Line::over_seeds("RI-T / RI-T", &layer_lines[1]),
                ],
                y_range: None,
                marks: vec![],
                x_label: "module interpolated".into(),
                y_label: "barrier (test error)".into(),
            },
        });
        json_domains.insert(name.into(), Value::Array(rows));
    }
    let findings = vec![Finding::new(
        "The RI-T barrier is not only a permutation of units",
        "the RI-T/RI-T barrier after weight matching > tol, in every layer-wise domain",
        all_domains(aligned_held),
    )];
    let mut json = Map::new();
    json.insert("lambdas".into(), json!(lambdas));
    json.insert("modules".into(), json!(modules));
    json.insert("domains".into(), Value::Object(json_domains));
    Ok(Section {
        title: "Alignment and layer-wise barriers".into(),
        json: Map::from_iter([("alignment".to_string(), Value::Object(json))]),
        table,
        findings,
        figures,
    })
}

fn fmt4(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.4}")).collect();
    format!("[{}]", items.join(", "))
}

/// The near domains: those that share the 10 classes.
fn is_near(kind: DomainKind) -> bool {
    matches!(kind, DomainKind::Real | DomainKind::Clipart | DomainKind::Quickdraw)
}

fn cross_domain_section(inputs: &Inputs) -> Result<Section> {
    let set = inputs.set;
    let st = &inputs.cfg.weight_space;
    let seeds = set.seeds.len();
    let lambdas = linspace(0.0, 1.0, st.cross_points);
    let (from, to) = (set.target_index(DomainKind::Real), set.target_index(DomainKind::Clipart));
    let mut table = String::from(
        "\nCross-domain interpolation: the models fine-tuned on real (lambda 0) and on clipart (1), test error on \
         every near domain\n",
    );
    let mut basin: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    let mut better: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    let mut json_domains = Map::new();
    let mut figures = Vec::new();
    let (Some(from), Some(to)) = (from, to) else {
        table.push_str("  (skipped: the run has not both real and clipart)\n");
        return Ok(Section {
            title: "Cross-domain interpolation".into(),
            json: Map::from_iter([("cross_domain".to_string(), json!({"skipped": true}))]),
            table,
            findings: vec![],
            figures,
        });
    };
    for (e, data) in set.targets.iter().enumerate().filter(|(_, t)| is_near(t.kind)) {
        let name = data.kind.name();
        let mut ev = test_evaluator(&set.target_cnns[e], &data.test);
        let mut curves: [Vec<Vec<f64>>; 2] = Default::default();
        let mut rows = Vec::new();
        for (s, sm) in set.seeds.iter().enumerate() {
            let (a, b) = (&sm.domains[from], &sm.domains[to]);
            let (pt, pt_barrier) = error_curve(inputs, &mut ev, &a.pt[0].weights, &b.pt[0].weights, &lambdas, None)?;
            let (rit, rit_barrier) =
                error_curve(inputs, &mut ev, &a.rit[0].weights, &b.rit[0].weights, &lambdas, None)?;
            let (pt_acc, rit_acc) = (1.0 - mean(&pt), 1.0 - mean(&rit));
            let pt_tol = tolerance_of(&pt_barrier, &ev);
            table.push_str(&format!(
                "  on {name:<10} seed {s}  P-T barrier {:.4} (tol {pt_tol:.4}), mean accuracy {pt_acc:.3}   RI-T \
                 barrier {:.4}, mean accuracy {rit_acc:.3}\n",
                pt_barrier.value, rit_barrier.value
            ));
            basin[s].push((
                pt_barrier.same_basin,
                format!("on {name}: P-T barrier {:.4}, tol {pt_tol:.4}", pt_barrier.value),
            ));
            better[s].push((pt_acc > rit_acc, format!("on {name}: mean accuracy P-T {pt_acc:.3}, RI-T {rit_acc:.3}")));
            rows.push(json!({"seed": s, "pt_curve": pt, "rit_curve": rit,
                             "pt_barrier": num(pt_barrier.value), "pt_tolerance": num(pt_tol),
                             "rit_barrier": num(rit_barrier.value)}));
            curves[0].push(pt);
            curves[1].push(rit);
        }
        figures.push(Figure {
            title: format!("Cross-domain interpolation, evaluated on {name}"),
            caption: "Test error along the segment from the model fine-tuned on real (0) to the one on clipart (1), \
                      mean over seeds with the range as a band. Look for P-T below RI-T everywhere and no bump on \
                      the P-T curve."
                .into(),
            chart: Chart::Lines {
                x: lambdas.clone(),
                x_labels: None,
                lines: vec![Line::over_seeds("P-T", &curves[0]), Line::over_seeds("RI-T", &curves[1])],
                y_range: Some((0.0, 1.0)),
                marks: vec![(0.0, "real".into()), (1.0, "clipart".into())],
                x_label: "lambda".into(),
                y_label: "test error".into(),
            },
        });
        json_domains.insert(name.into(), Value::Array(rows));
    }
    let findings = vec![
        Finding::new(
            "P-T models of two domains lie in one basin",
            "barrier <= tol between the P-T models of real and clipart, on every near domain evaluated",
            all_domains(basin),
        ),
        Finding::new(
            "P-T outperforms RI-T across domains",
            "mean accuracy along the P-T curve above that along the RI-T curve, on every near domain evaluated",
            all_domains(better),
        ),
    ];
    let mut json = Map::new();
    json.insert("lambdas".into(), json!(lambdas));
    json.insert("evaluated_on".into(), Value::Object(json_domains));
    Ok(Section {
        title: "Cross-domain interpolation".into(),
        json: Map::from_iter([("cross_domain".to_string(), Value::Object(json))]),
        table,
        findings,
        figures,
    })
}

#[cfg(test)]
mod tests {
    use super::super::models::train_all;
    use super::super::{features, Config};
    use super::*;
    use crate::backend::Context;

    #[test]
    fn distances_of_a_set_to_itself_are_zero_and_add_in_squares() {
        let cnn = Cnn::from_json(&super::super::study_spec(10)).unwrap();
        let (a, b) = (cnn.init(1).unwrap(), cnn.init(2).unwrap());
        let modules = cnn.module_names();
        let (same, total) = module_distances(&a, &a, &modules).unwrap();
        assert!(same.iter().all(|&d| d == 0.0) && total == 0.0);
        let (per, total) = module_distances(&a, &b, &modules).unwrap();
        assert!(per.iter().all(|&d| d > 0.0));
        assert!((total - per.iter().map(|d| d * d).sum::<f64>().sqrt()).abs() < 1e-9);
        // A P pair must be body-only: the heads differ in shape.
        let p = Cnn::from_json(&super::super::study_spec(20)).unwrap().init(3).unwrap();
        assert!(module_distances(&a, &p, &modules).is_err());
        let body: Vec<String> = modules.into_iter().filter(|m| m != HEAD).collect();
        assert!(module_distances(&a, &p, &body).is_ok());
    }

    /// Both families on the tiny configuration: every section has a table, a figure, its seconds
    /// and findings with one verdict per seed, and the figures agree with direct evaluations.
    #[test]
    fn tiny_sections_are_complete_and_consistent() {
        let cfg = Config::tiny();
        let set = train_all(&cfg, &mut |_: &str, _: f64| {}).unwrap();
        let ctx = Context::cpu();
        let inputs = Inputs { ctx: &ctx, cfg: &cfg, set: &set };
        let mut sections = features::sections(&inputs, &mut |_: &str, _: f64| {}).unwrap();
        sections.extend(sections_of(&inputs));
        for s in &sections {
            assert!(!s.table.is_empty() && !s.title.is_empty());
            for (key, v) in &s.json {
                assert!(v["seconds"].as_f64().is_some() || v.get("skipped").is_some(), "{key} has no seconds");
            }
            if s.json.values().all(|v| v.get("skipped").is_none()) {
                assert!(!s.figures.is_empty(), "{} has no figure", s.title);
                assert!(!s.findings.is_empty(), "{} has no finding", s.title);
            }
            for f in &s.findings {
                assert_eq!(f.per_seed.len(), cfg.seeds, "{}", f.claim);
            }
        }
        let json: Map<String, Value> = sections.iter().flat_map(|s| s.json.clone()).collect();
        // CKA within [0, 1] for every pair, module pair and seed.
        for (_, pairs) in json["cka"]["domains"].as_object().unwrap() {
            for (_, pair) in pairs.as_object().unwrap() {
                for seed in pair["grid_per_seed"].as_array().unwrap() {
                    for row in seed.as_array().unwrap() {
                        for v in row.as_array().unwrap() {
                            let v = v.as_f64().unwrap();
                            assert!((-1e-9..=1.0 + 1e-9).contains(&v), "{v}");
                        }
                    }
                }
            }
        }
        // The unshuffled block size reuses the trained models.
        let d = set.target_index(DomainKind::Real).unwrap();
        let pt0 = &set.seeds[0].domains[d].pt[0];
        let acc = set.target_cnns[d].evaluate(&pt0.weights, &set.targets[d].test).unwrap().accuracy;
        assert_eq!(json["block_shuffle"]["domains"]["real"]["pt_accuracy"][0][0].as_f64().unwrap(), acc);
        // The interpolation curve at lambda = 0 is the first model's error on every test image.
        let lambdas = json["interpolation"]["lambdas"].as_array().unwrap();
        let at0 = lambdas.iter().position(|l| l.as_f64() == Some(0.0)).unwrap();
        let err = set.target_cnns[d].evaluate(&pt0.weights, &set.targets[d].test).unwrap().error;
        let curve = &json["interpolation"]["domains"]["real"]["pt_pt"]["curves"][0];
        assert_eq!(curve[at0].as_f64().unwrap(), err);
        // Its barrier is judged against the tolerance of its endpoints and every test image.
        let at1 = lambdas.iter().position(|l| l.as_f64() == Some(1.0)).unwrap();
        let ends = (curve[at0].as_f64().unwrap() + curve[at1].as_f64().unwrap()) / 2.0;
        let tol = json["interpolation"]["domains"]["real"]["pt_pt"]["tolerances"][0].as_f64().unwrap();
        assert_eq!(tol, super::super::barrier_tolerance(ends, set.targets[d].test.n));
    }

    fn sections_of(inputs: &Inputs) -> Vec<Section> {
        sections(inputs, &mut |_: &str, _: f64| {}).unwrap()
    }
}
