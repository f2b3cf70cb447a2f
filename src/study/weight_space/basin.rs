//! The (epsilon, delta)-basin test of the talk, and module criticality with rewind curves
//! (docs/analyses.md, section 10, "Weight space").

use super::super::domains::DomainKind;
use super::super::models::Trained;
use super::super::{num, Chart, Figure, Finding, Inputs, Line, Section};
use super::{all_domains, evaluator, fmt4, test_evaluator};
use crate::criticality::{network_criticality, pac_bayes, HeldOut, Options, Path, Search};
use crate::error::Result;
use crate::eval::{CnnEvaluator, Evaluator};
use crate::landscape::linspace;
use crate::model::{store_f32, Dataset};
use crate::params::ParamSet;
use crate::rng::{block_words, normals_f64};
use serde_json::{json, Map, Value};

/// Every weight of `p` as f32, tensors in set order.
fn flatten(p: &ParamSet) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(p.weight_numel() as usize);
    for t in p.tensors() {
        out.extend_from_slice(&t.host()?.to_f32());
    }
    Ok(out)
}

/// `template` with its weights replaced by `flat` (the order of [`flatten`]).
fn unflatten(template: &ParamSet, flat: &[f32]) -> Result<ParamSet> {
    let mut out = template.try_clone()?;
    let mut at = 0;
    let names: Vec<(String, usize)> = template.tensors().iter().map(|t| (t.name().to_string(), t.numel())).collect();
    for (name, n) in names {
        store_f32(&mut out, &name, &flat[at..at + n])?;
        at += n;
    }
    Ok(out)
}

/// Uniform in (0, 1): element `i` of `stream` under `seed`.
fn uniform(seed: u64, stream: u64, i: u64) -> f64 {
    (f64::from(block_words(seed, stream, i / 4)[(i % 4) as usize]) + 0.5) / 4_294_967_296.0
}

/// The axis-aligned box spanned by two points.
struct Box {
    lo: Vec<f32>,
    hi: Vec<f32>,
}

impl Box {
    fn spanned(a: &[f32], b: &[f32]) -> Box {
        Box {
            lo: a.iter().zip(b).map(|(x, y)| x.min(*y)).collect(),
            hi: a.iter().zip(b).map(|(x, y)| x.max(*y)).collect(),
        }
    }
    /// A point of U_S: every coordinate uniform in its interval.
    fn sample(&self, seed: u64, stream: u64) -> Vec<f32> {
        (0..self.lo.len())
            .map(|j| {
                let u = uniform(seed, stream, j as u64) as f32;
                self.lo[j] + u * (self.hi[j] - self.lo[j])
            })
            .collect()
    }
    /// f(w1, w2): where the ray from w1 through w2 leaves the box (w1 itself when w1 = w2).
    fn exit(&self, w1: &[f32], w2: &[f32]) -> Vec<f32> {
        let mut alpha = f64::INFINITY;
        for j in 0..w1.len() {
            let d = f64::from(w2[j]) - f64::from(w1[j]);
            let bound = if d > 0.0 { self.hi[j] } else { self.lo[j] };
            if d != 0.0 {
                alpha = alpha.min((f64::from(bound) - f64::from(w1[j])) / d);
            }
        }
        if !alpha.is_finite() {
            alpha = 0.0;
        }
        w1.iter().zip(w2).map(|(&x, &y)| (f64::from(x) + alpha * (f64::from(y) - f64::from(x))) as f32).collect()
    }
}

fn l2(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum::<f64>().sqrt()
}

/// The outcome of the basin test for one pair at every delta of the grid.
struct BasinTest {
    mu: f64,
    eps: f64,
    /// (delta multiple, delta, mean excess of property 2, of property 3, both >= 2 eps and > 0).
    per_delta: Vec<(f64, f64, f64, f64, bool)>,
}

impl BasinTest {
    fn is_basin(&self) -> bool {
        self.per_delta.iter().any(|d| d.4)
    }
    fn summary(&self) -> String {
        let parts: Vec<String> =
            self.per_delta.iter().map(|(c, _, e2, e3, _)| format!("delta {c}d: excess {e2:.3} / {e3:.3}")).collect();
        format!("mu {:.3}, eps^ {:.4} (2 eps^ {:.4}); {}", self.mu, self.eps, 2.0 * self.eps, parts.join(", "))
    }
}

/// Tests whether the box spanned by `a` and `b` is an (eps^, delta)-basin of the 0-1 error of `ev`.
fn basin_test(inputs: &Inputs, ev: &mut CnnEvaluator, a: &ParamSet, b: &ParamSet, seed: u64) -> Result<BasinTest> {
    let st = &inputs.cfg.weight_space;
    let (fa, fb) = (flatten(a)?, flatten(b)?);
    let n = fa.len();
    let span = l2(&fa, &fb);
    let region = Box::spanned(&fa, &fb);
    let errors = |ev: &mut CnnEvaluator, points: Vec<Vec<f32>>| -> Result<Vec<f64>> {
        let sets = points.iter().map(|p| unflatten(a, p)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&ParamSet> = sets.iter().collect();
        Ok(ev.evaluate(inputs.ctx, &refs)?.iter().map(|m| m.error).collect())
    };
    // Property 1.
    let inside: Vec<Vec<f32>> = (0..st.basin_samples).map(|k| region.sample(seed, k as u64)).collect();
    let l = errors(ev, inside)?;
    let mu = l.iter().sum::<f64>() / l.len() as f64;
    let eps = l.iter().map(|v| (v - mu).abs()).sum::<f64>() / l.len() as f64;
    let mut per_delta = Vec::new();
    for (c_index, &c) in st.basin_deltas.iter().enumerate() {
        let delta = c * span;
        let mut points = Vec::with_capacity(2 * st.basin_pairs);
        for k in 0..st.basin_pairs {
            let stream = 1000 * (c_index as u64 + 1) + 10 * k as u64;
            let (w1, w2) = (region.sample(seed, stream + 1), region.sample(seed, stream + 2));
            let f = region.exit(&w1, &w2);
            // Property 2: f + N(0, delta^2 / n I).
            let mut z = vec![0f64; n];
            normals_f64(seed, stream + 3, 0, &mut z);
            let std = delta / (n as f64).sqrt();
            points.push(f.iter().zip(&z).map(|(&x, &g)| (f64::from(x) + std * g) as f32).collect());
            // Property 3: on along the ray by |nu|, nu ~ N(0, delta^2).
            let mut nu = [0f64; 1];
            normals_f64(seed, stream + 4, 0, &mut nu);
            let out = l2(&f, &w1);
            let step = if out > 0.0 { delta * nu[0].abs() / out } else { 0.0 };
            points.push(
                f.iter()
                    .zip(&w1)
                    .map(|(&x, &w)| (f64::from(x) + step * (f64::from(x) - f64::from(w))) as f32)
                    .collect(),
            );
        }
        let e = errors(ev, points)?;
        let e2 = e.iter().step_by(2).sum::<f64>() / st.basin_pairs as f64 - mu;
        let e3 = e.iter().skip(1).step_by(2).sum::<f64>() / st.basin_pairs as f64 - mu;
        // A region the loss does not rise out of is no basin, whatever eps^.
        let rises = |e: f64| e > 0.0 && e >= 2.0 * eps;
        per_delta.push((c, delta, e2, e3, rises(e2) && rises(e3)));
    }
    Ok(BasinTest { mu, eps, per_delta })
}

/// Every image of two data sets together.
fn joined(a: &Dataset, b: &Dataset) -> Result<Dataset> {
    let (a, b) = (a.head(a.n), b.head(b.n));
    let mut x = a.x;
    x.extend_from_slice(&b.x);
    let mut y = a.y;
    y.extend_from_slice(&b.y);
    Dataset::new(x, y, a.dim, a.classes)
}

pub(super) fn basin_section(inputs: &Inputs) -> Result<Section> {
    let set = inputs.set;
    let st = &inputs.cfg.weight_space;
    let seeds = set.seeds.len();
    let mut table = format!(
        "\n(epsilon, delta)-basin test: S = the box two solutions span; {} draws for property 1, {} pairs per delta for \
         properties 2 and 3, delta = c * ||w_a - w_b|| for c in {:?}; test error on every test image of the \
         domain (cross-domain: of both domains)\n",
        st.basin_samples, st.basin_pairs, st.basin_deltas
    );
    let mut pt_basin: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    let mut rit_not: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    let mut cross: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    let mut json_pairs = Map::new();
    // Per pair label, per seed: min(excess 2, excess 3) / (2 eps^) at each delta.
    let mut ratios: Vec<(String, Vec<Vec<f64>>)> = Vec::new();
    let mut record = |label: String, s: usize, t: &BasinTest, table: &mut String| {
        table.push_str(&format!("  {label:<24} seed {s}  {}  basin: {}\n", t.summary(), t.is_basin()));
        let ratio: Vec<f64> = t.per_delta.iter().map(|d| (d.2.min(d.3) / (2.0 * t.eps)).clamp(-10.0, 10.0)).collect();
        match ratios.iter_mut().find(|r| r.0 == label) {
            Some(r) => r.1.push(ratio),
            None => ratios.push((label.clone(), vec![ratio])),
        }
        json_pairs.entry(label).or_insert_with(|| json!([])).as_array_mut().expect("an array").push(json!({
            "seed": s, "mu": num(t.mu), "eps": num(t.eps), "basin": t.is_basin(),
            "per_delta": t.per_delta.iter().map(|d| json!({"c": d.0, "delta": num(d.1), "excess_2": num(d.2),
                                                          "excess_3": num(d.3), "basin": d.4})).collect::<Vec<_>>()}));
    };
    for &kind in &st.basin_domains {
        let Some(d) = set.target_index(kind) else { continue };
        let name = kind.name();
        let mut ev = test_evaluator(&set.target_cnns[d], &set.targets[d].test);
        for (s, sm) in set.seeds.iter().enumerate() {
            let m = &sm.domains[d];
            let pt = basin_test(inputs, &mut ev, &m.pt[0].weights, &m.pt[1].weights, 31 * sm.seed + 1)?;
            let rit = basin_test(inputs, &mut ev, &m.rit[0].weights, &m.rit[1].weights, 31 * sm.seed + 2)?;
            pt_basin[s].push((pt.is_basin(), format!("{name}: P-T {}", pt.summary())));
            rit_not[s].push((!rit.is_basin(), format!("{name}: RI-T {}", rit.summary())));
            record(format!("P-T / P-T on {name}"), s, &pt, &mut table);
            record(format!("RI-T / RI-T on {name}"), s, &rit, &mut table);
        }
    }
    let (real, clipart) = (set.target_index(DomainKind::Real), set.target_index(DomainKind::Clipart));
    if let (Some(r), Some(c)) = (real, clipart) {
        let data = joined(&set.targets[r].test, &set.targets[c].test)?;
        let mut ev = CnnEvaluator::new(set.target_cnns[r].clone(), data);
        for (s, sm) in set.seeds.iter().enumerate() {
            let (a, b) = (&sm.domains[r], &sm.domains[c]);
            let pt = basin_test(inputs, &mut ev, &a.pt[0].weights, &b.pt[0].weights, 31 * sm.seed + 3)?;
            let rit = basin_test(inputs, &mut ev, &a.rit[0].weights, &b.rit[0].weights, 31 * sm.seed + 4)?;
            cross[s].push((pt.is_basin(), format!("real & clipart: P-T {}", pt.summary())));
            record("P-T real & clipart".into(), s, &pt, &mut table);
            record("RI-T real & clipart".into(), s, &rit, &mut table);
        }
    } else {
        table.push_str("  (cross-domain pairs skipped: the run has not both real and clipart)\n");
    }
    let figure = Figure {
        title: "(epsilon, delta)-basin test".into(),
        caption: "For each pair's box S: the smaller of the two escape excesses (properties 2 and 3) over 2 eps^, \
                  against delta in units of the pair's distance (mean over seeds, range as a band; clipped to \
                  [-10, 10]). At 1 or above both properties hold: S is an (eps^, delta)-basin. Look for the P-T \
                  lines reaching 1 and the RI-T lines staying below."
            .into(),
        chart: Chart::Lines {
            x: st.basin_deltas.clone(),
            x_labels: None,
            lines: ratios.iter().map(|(label, per_seed)| Line::over_seeds(label.clone(), per_seed)).collect(),
            y_range: None,
            marks: vec![],
            x_label: "delta / ||w_a - w_b||".into(),
            y_label: "escape excess / 2 eps^".into(),
        },
    };
    let mut findings = vec![
        Finding::new(
            "The two P-T models span a basin",
            "the box S of the P-T pair is an (eps^, delta)-basin for some delta of the grid, in every basin domain",
            all_domains(pt_basin),
        ),
        Finding::new(
            "The two RI-T models do not span a basin",
            "the box S of the RI-T pair is an (eps^, delta)-basin for no delta of the grid, in every basin domain",
            all_domains(rit_not),
        ),
    ];
    if cross.iter().any(|c| !c.is_empty()) {
        findings.push(Finding::new(
            "P-T models of two domains share a basin",
            "the box of the P-T models of real and clipart is an (eps^, delta)-basin for some delta of the grid \
             (test error on both domains' images)",
            all_domains(cross),
        ));
    }
    let mut json = Map::new();
    json.insert(
        "set".into(),
        json!("the axis-aligned box spanned by the two solutions, no margin; U_S draws every coordinate uniformly"),
    );
    json.insert("samples".into(), json!(st.basin_samples));
    json.insert("pairs_per_delta".into(), json!(st.basin_pairs));
    json.insert("delta_multiples".into(), json!(st.basin_deltas));
    json.insert("pairs".into(), Value::Object(json_pairs));
    Ok(Section {
        title: "The (epsilon, delta)-basin test".into(),
        json: Map::from_iter([("basin".to_string(), Value::Object(json))]),
        table,
        findings,
        figures: vec![figure],
    })
}

/// Per module: the test error with the module moved to alpha on its path from init (0) to final
/// (1), the rest final, at each alpha of `alphas`.
fn rewind_errors(inputs: &Inputs, ev: &mut CnnEvaluator, t: &Trained, alphas: &[f64]) -> Result<Vec<Vec<f64>>> {
    let mut live = t.weights.try_clone()?;
    (0..t.weights.modules().len())
        .map(|i| {
            let curve = crate::criticality::rewind_curve(inputs.ctx, ev, &t.init, &t.weights, &mut live, i, alphas)?;
            Ok(curve.iter().map(|m| m.error).collect())
        })
        .collect()
}

pub(super) fn criticality_section(inputs: &Inputs) -> Result<Section> {
    let set = inputs.set;
    let st = &inputs.cfg.weight_space;
    let seeds = set.seeds.len();
    let alphas = linspace(0.0, 1.0, st.rewind_points);
    let options = |seed: u64| Options {
        search: Search::Refined { alphas: st.criticality_alphas, tolerance: st.criticality_tolerance, alpha_steps: 0 },
        samples: st.criticality_samples,
        repeats: st.criticality_repeats,
        seed,
        ..Options::default()
    };
    let mut table = format!(
        "\nModule criticality (0-1 error on {} training images, eps = final + 0.02, noise relative to the weights, \
         refined search: {} alphas, tolerance {}, {} samples, {} repeats) and rewind (test error on every test \
         image)\n",
        st.criticality_images,
        st.criticality_alphas,
        st.criticality_tolerance,
        st.criticality_samples,
        st.criticality_repeats,
    );
    let mut lower: [Vec<Vec<(bool, String)>>; 2] = [vec![vec![]; seeds], vec![vec![]; seeds]];
    let mut fc_critical: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    let mut mu_lower: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    let mut mu_fc: Vec<Vec<(bool, String)>> = vec![vec![]; seeds];
    let mut json_domains = Map::new();
    let mut figures = Vec::new();
    for &kind in &st.criticality_domains {
        let Some(d) = set.target_index(kind) else { continue };
        let (cnn, data) = (&set.target_cnns[d], &set.targets[d]);
        let name = kind.name();
        let modules = cnn.module_names();
        let at = |m: &str| modules.iter().position(|x| x == m).expect("the study's CNN has this module");
        let (low, high, fc) = ([at("conv1"), at("layer1")], [at("layer2"), at("layer3")], at("fc"));
        let mut ev_test = test_evaluator(cnn, &data.test);
        let mut ev_train = evaluator(cnn, &data.train, st.criticality_images);
        let m_samples = st.criticality_images.min(data.train.n) as u64;
        let mut rows = Vec::new();
        // [regime][seed] = per-module damage, and the rewind curves [regime][module][seed].
        let mut damage_lines: [Vec<Vec<f64>>; 2] = Default::default();
        let mut curves: [Vec<Vec<Vec<f64>>>; 2] = [vec![vec![]; modules.len()], vec![vec![]; modules.len()]];
        for (s, sm) in set.seeds.iter().enumerate() {
            let m = &sm.domains[d];
            let mut per_regime = Vec::new();
            for (k, (label, t)) in [("P-T", &m.pt[0]), ("RI-T", &m.rit[0])].into_iter().enumerate() {
                let rewind = rewind_errors(inputs, &mut ev_test, t, &alphas)?;
                let final_error = rewind[0][alphas.len() - 1];
                let damage: Vec<f64> = rewind.iter().map(|c| c[0] - final_error).collect();
                let mut live = t.weights.try_clone()?;
                let net = network_criticality(
                    inputs.ctx,
                    &mut ev_train,
                    Path::Straight { init: &t.init, final_: &t.weights },
                    &mut live,
                    &options(sm.seed),
                )?;
                let test_error = cnn.evaluate(&t.weights, &data.test)?.error;
                let bound =
                    pac_bayes(&net, m_samples, 0.05, Some(HeldOut { error: test_error, n: data.test.n as u64 }))?;
                let per_k: Vec<f64> = net.modules.iter().map(|c| c.per_parameter).collect();
                table.push_str(&format!(
                    "  {name:<6} seed {s} {label:<5} rewind damage {modules:?} {}\n      mu {} spread {} mu/k {} \
                     PAC-Bayes terms {}; ranking agreement {:.2}; bound {:.3} (vacuous {}), held-out {:.3}\n",
                    fmt4(&damage),
                    fmt_g(&net.modules.iter().map(|c| c.value).collect::<Vec<_>>()),
                    fmt_g(&net.modules.iter().map(|c| c.spread).collect::<Vec<_>>()),
                    fmt_g(&per_k),
                    fmt_g(&net.modules.iter().map(|c| c.pac_bayes_term).collect::<Vec<_>>()),
                    net.ranking_agreement,
                    bound.value,
                    bound.vacuous,
                    bound.held_out.unwrap_or(f64::NAN)
                ));
                let pair_mean = |v: &[f64], idx: [usize; 2]| (v[idx[0]] + v[idx[1]]) / 2.0;
                let (dl, dh) = (pair_mean(&damage, low), pair_mean(&damage, high));
                lower[k][s].push((
                    dl > dh,
                    format!("{name}: {label} rewind damage conv1+layer1 {dl:.3}, layer2+layer3 {dh:.3}"),
                ));
                for (i, c) in rewind.iter().enumerate() {
                    curves[k][i].push(c.clone());
                }
                damage_lines[k].push(damage.clone());
                rows.push(json!({"seed": s, "model": label, "modules": modules,
                    "rewind_alphas": alphas, "rewind_errors": rewind, "rewind_damage": damage,
                    "mu": net.modules.iter().map(|c| num(c.value)).collect::<Vec<_>>(),
                    "mu_spread": net.modules.iter().map(|c| num(c.spread)).collect::<Vec<_>>(),
                    "mu_per_parameter": per_k.iter().map(|&v| num(v)).collect::<Vec<_>>(),
                    "pac_bayes_terms": net.modules.iter().map(|c| num(c.pac_bayes_term)).collect::<Vec<_>>(),
                    "numel": net.modules.iter().map(|c| c.numel).collect::<Vec<_>>(),
                    "ranking_agreement": num(net.ranking_agreement),
                    "bound": num(bound.value), "bound_vacuous": bound.vacuous,
                    "held_out": bound.held_out.map(num), "test_error": num(test_error)}));
                per_regime.push((damage, per_k));
            }
            let ((pt_damage, pt_k), (rit_damage, rit_k)) = (&per_regime[0], &per_regime[1]);
            fc_critical[s].push((
                pt_damage[fc] >= 0.10 && pt_damage[fc] > rit_damage[fc],
                format!("{name}: fc rewind damage P-T {:.3}, RI-T {:.3}", pt_damage[fc], rit_damage[fc]),
            ));
            let pair_mean = |v: &[f64], idx: [usize; 2]| (v[idx[0]] + v[idx[1]]) / 2.0;
            let (kl, kh) = (pair_mean(rit_k, low), pair_mean(rit_k, high));
            mu_lower[s].push((kl > kh, format!("{name}: RI-T mu/k conv1+layer1 {kl:.3e}, layer2+layer3 {kh:.3e}")));
            mu_fc[s]
                .push((pt_k[fc] > rit_k[fc], format!("{name}: fc mu/k P-T {:.3e}, RI-T {:.3e}", pt_k[fc], rit_k[fc])));
        }
        figures.push(Figure {
            title: format!("Rewind damage per module on {name}"),
            caption: "Test error with one module moved back to its initial weights (the rest final) minus the final \
                      error (mean over seeds, range as a band). Look for the lower modules above the upper ones for \
                      both, and fc high for P-T only."
                .into(),
            chart: Chart::Lines {
                x: (0..modules.len()).map(|i| i as f64).collect(),
                x_labels: Some(modules.clone()),
                lines: vec![Line::over_seeds("P-T", &damage_lines[0]), Line::over_seeds("RI-T", &damage_lines[1])],
                y_range: None,
                marks: vec![],
                x_label: "module rewound".into(),
                y_label: "error increase".into(),
            },
        });
        for (k, label) in ["P-T", "RI-T"].into_iter().enumerate() {
            figures.push(Figure {
                title: format!("Rewind curves of {label} on {name}"),
                caption: "Test error as one module moves from its initial weights (alpha 0) to its final ones \
                          (alpha 1), the rest final, one line per module (mean over seeds). Look for which modules \
                          the error depends on."
                    .into(),
                chart: Chart::Lines {
                    x: alphas.clone(),
                    x_labels: None,
                    lines: modules.iter().zip(&curves[k]).map(|(m, c)| Line::over_seeds(m.clone(), c)).collect(),
                    y_range: Some((0.0, 1.0)),
                    marks: vec![],
                    x_label: "alpha (0: initial, 1: final)".into(),
                    y_label: "test error".into(),
                },
            });
        }
        json_domains.insert(name.into(), Value::Array(rows));
    }
    let [pt_lower, rit_lower] = lower;
    let findings = vec![
        Finding::new(
            "RI-T: the lower modules are critical",
            "RI-T's mean rewind damage of conv1 and layer1 above that of layer2 and layer3, in every criticality domain",
            all_domains(rit_lower),
        ),
        Finding::new(
            "P-T: the same pattern as RI-T",
            "P-T's mean rewind damage of conv1 and layer1 above that of layer2 and layer3, in every criticality domain",
            all_domains(pt_lower),
        ),
        Finding::new(
            "P-T: the FC layer becomes critical",
            "fc's rewind damage of P-T at least 0.10 and above that of RI-T, in every criticality domain",
            all_domains(fc_critical),
        ),
        Finding::new(
            "Size-aware criticality: the lower modules are critical for RI-T",
            "RI-T's mean mu / k of conv1 and layer1 above that of layer2 and layer3, in every criticality domain",
            all_domains(mu_lower),
        ),
        Finding::new(
            "Size-aware criticality: fc more critical for P-T than for RI-T",
            "fc's mu / k for P-T above that for RI-T, in every criticality domain",
            all_domains(mu_fc),
        ),
    ];
    let mut json = Map::new();
    json.insert(
        "options".into(),
        json!({"metric": "0-1 error", "eps": "final + 0.02", "noise": "relative to the weights",
               "alphas": st.criticality_alphas, "tolerance": st.criticality_tolerance,
               "samples": st.criticality_samples, "repeats": st.criticality_repeats,
               "images": st.criticality_images, "delta": 0.05}),
    );
    json.insert("domains".into(), Value::Object(json_domains));
    Ok(Section {
        title: "Module criticality and rewind".into(),
        json: Map::from_iter([("criticality".to_string(), Value::Object(json))]),
        table,
        findings,
        figures,
    })
}

fn fmt_g(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.3e}")).collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_box_exit_lies_on_the_ray_and_on_the_boundary() {
        let region = Box::spanned(&[0.0, 0.0], &[1.0, 2.0]);
        // From (0.5, 0.5) through (0.75, 1.0): x leaves at alpha 2 (x = 1), y at alpha 3 (y = 2).
        let f = region.exit(&[0.5, 0.5], &[0.75, 1.0]);
        assert!((f[0] - 1.0).abs() < 1e-6 && (f[1] - 1.5).abs() < 1e-6, "{f:?}");
        // Equal points: no direction, the exit is the point itself.
        assert_eq!(region.exit(&[0.5, 0.5], &[0.5, 0.5]), vec![0.5, 0.5]);
    }

    #[test]
    fn box_samples_stay_inside_and_differ_by_stream() {
        let region = Box::spanned(&[0.0, -1.0, 3.0], &[1.0, 1.0, 3.0]);
        let (a, b) = (region.sample(7, 1), region.sample(7, 2));
        for p in [&a, &b] {
            assert!(p.iter().zip(&region.lo).zip(&region.hi).all(|((v, lo), hi)| lo <= v && v <= hi), "{p:?}");
        }
        assert_ne!(a, b);
        assert_eq!(a, region.sample(7, 1));
    }
}
