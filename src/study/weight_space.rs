//! The sections in weight space: distances, interpolation curves and barriers, module
//! criticality and rewind curves.

use super::{num, Finding, Inputs, Plots, Progress, Section, BARRIER_TOLERANCE};
use crate::criticality::{self, Eps, Path};
use crate::error::Result;
use crate::eval::{Metric, MlpEvaluator};
use crate::geometry;
use crate::landscape;
use crate::params::ParamSet;
use serde_json::{json, Map, Value};

/// l2 distances per module and in total between pairs of models.
pub(super) fn distance(inputs: &Inputs) -> Result<Section> {
    let (m, layers) = (inputs.models, &inputs.layers);
    let dist = |a: &ParamSet, b: &ParamSet| geometry::distance(inputs.ctx, a, b);
    let rows = [
        ("2 P-T", dist(&m.pt[0], &m.pt[1])?),
        ("2 RI-T", dist(&m.rit[0], &m.rit[1])?),
        ("P-T & P", dist(&m.pt[0], &m.p)?),
        ("RI-T & P", dist(&m.rit[0], &m.p)?),
    ];
    let mut table = String::from("\nl2 distance per module and in total\n");
    table.push_str(&format!("  {:<10}", ""));
    for l in layers {
        table.push_str(&format!(" {l:>8}"));
    }
    table.push_str(&format!(" {:>8}\n", "total"));
    let mut total = Map::new();
    let mut per_module = Map::new();
    for (name, d) in &rows {
        table.push_str(&format!("  {name:<10}"));
        let mut row = Map::new();
        for (l, x) in layers.iter().zip(&d.modules) {
            table.push_str(&format!(" {x:>8.3}"));
            row.insert(l.clone(), num(*x));
        }
        table.push_str(&format!(" {:>8.3}\n", d.total));
        total.insert((*name).into(), num(d.total));
        per_module.insert((*name).into(), Value::Object(row));
    }
    let [pt_pt, rit_rit, pt_p, rit_p] = [0, 1, 2, 3].map(|k| rows[k].1.total);
    let findings = vec![
        Finding::new(
            "Two P-T models are closer in weight space than two RI-T models (total l2)",
            pt_pt < rit_rit,
            format!("2 P-T {pt_pt:.3}, 2 RI-T {rit_rit:.3}"),
        ),
        Finding::new(
            "P-T models stay closer to P than RI-T models are (total l2)",
            pt_p < rit_p,
            format!("P-T & P {pt_p:.3}, RI-T & P {rit_p:.3}"),
        ),
    ];
    let json = Map::from_iter([
        ("distance".to_string(), Value::Object(total)),
        ("distance_per_module".to_string(), Value::Object(per_module)),
    ]);
    Ok(Section { json, table, findings })
}

/// Interpolation curves on [-1, 2] and the barrier on the target test error between pairs of
/// models.
pub(super) fn barrier(inputs: &Inputs, plots: &mut Plots) -> Result<Section> {
    let (ctx, m) = (inputs.ctx, inputs.models);
    let lambdas = landscape::extrapolation_lambdas(inputs.cfg.lambda_per_unit);
    let mut evaluator = MlpEvaluator::new(inputs.mlp.clone(), inputs.target.test.clone());
    let mut live = m.p.try_clone()?;
    let pairs: [(&str, &ParamSet, &ParamSet); 3] = [
        ("P-T & P-T", &m.pt[0], &m.pt[1]),
        ("RI-T & RI-T", &m.rit[0], &m.rit[1]),
        ("RI-T & RI-T (same init)", &m.rit_same[0], &m.rit_same[1]),
    ];
    let mut values = Map::new();
    let mut details = Map::new();
    let mut barriers = Vec::with_capacity(pairs.len());
    let mut table = format!(
        "\nBarrier on the target test error along the segment (tolerance {BARRIER_TOLERANCE}; curves on [-1, 2], {} points)\n",
        lambdas.len()
    );
    for (name, a, b) in pairs {
        let curve = landscape::interpolation_curve(ctx, &mut evaluator, a, b, &mut live, &lambdas, None)?;
        let bar = landscape::curve_barrier(&lambdas, &curve, Metric::Error, BARRIER_TOLERANCE)?;
        table.push_str(&format!(
            "  {:<24} barrier {:.4} at lambda {:.2} (error {:.4} -> {:.4}): {}\n",
            name,
            bar.value,
            bar.peak_lambda,
            bar.start,
            bar.end,
            if bar.same_basin { "one basin" } else { "barrier" }
        ));
        values.insert(name.into(), num(bar.value));
        details.insert(
            name.into(),
            json!({"value": num(bar.value), "peak_lambda": num(bar.peak_lambda), "start": num(bar.start),
                   "end": num(bar.end), "same_basin": bar.same_basin,
                   "lambdas": lambdas.iter().map(|&l| num(l)).collect::<Vec<_>>(),
                   "error": curve.iter().map(|c| num(c.error)).collect::<Vec<_>>(),
                   "loss": curve.iter().map(|c| num(c.loss)).collect::<Vec<_>>()}),
        );
        plots.interpolation.push((name.to_string(), curve.iter().map(|c| c.error).collect()));
        barriers.push(bar);
    }
    let findings = vec![
        Finding::new(
            "P-T models lie in one basin: no barrier between two P-T models",
            barriers[0].same_basin,
            format!("barrier {:.4} (tolerance {BARRIER_TOLERANCE})", barriers[0].value),
        ),
        Finding::new(
            "RI-T models from different inits are separated by a barrier",
            !barriers[1].same_basin,
            format!("barrier {:.4}", barriers[1].value),
        ),
        Finding::new(
            "RI-T models are separated by a barrier even from the same init",
            !barriers[2].same_basin,
            format!("barrier {:.4}", barriers[2].value),
        ),
    ];
    let json = Map::from_iter([
        ("barrier".to_string(), Value::Object(values)),
        ("barrier_details".to_string(), Value::Object(details)),
        ("barrier_tolerance".to_string(), json!(BARRIER_TOLERANCE)),
    ]);
    plots.lambdas = lambdas;
    Ok(Section { json, table, findings })
}

/// One number of a module's criticality, for a row of the table.
type ModuleMeasure = fn(&criticality::ModuleCriticality) -> f64;

/// Module and network criticality of P-T and RI-T on the target's training sample S (the sample
/// of the definition and of the bound), with the PAC-Bayes bound (m = |S|) beside the held-out
/// estimate from the test set.
pub(super) fn criticality(inputs: &Inputs, plots: &mut Plots, progress: Progress) -> Result<Section> {
    let (ctx, m, cfg, layers) = (inputs.ctx, inputs.models, inputs.cfg, &inputs.layers);
    let sample = inputs.target.train.head(cfg.criticality_rows);
    let test = &inputs.target.test;
    let options = criticality::Options {
        search: cfg.criticality_search,
        samples: cfg.criticality_samples,
        seed: 5,
        ..criticality::Options::default()
    };
    let Eps::Increase(increase) = options.eps else { unreachable!("the default eps is an increase") };
    let mut evaluator = MlpEvaluator::new(inputs.mlp.clone(), sample.clone());
    let mut live = m.p.try_clone()?;
    let mut values = Map::new();
    let mut details = Map::new();
    let mut table = format!(
        "\nModule criticality (0-1 error on the {} target training images, eps = final error + {increase}, noise relative to the weights, sigma >= {}, mean + {} standard errors within eps, {} samples, {} seeds; inf = no feasible point)\n",
        sample.n, options.sigma_floor, options.confidence, options.samples, options.repeats
    );
    table.push_str(&format!("  {:<6} {:<12}", "", ""));
    for l in layers {
        table.push_str(&format!(" {l:>10}"));
    }
    table.push_str(&format!(" {:>10} {:>10} {:>10}\n", "network", "PAC-Bayes", "held-out"));
    let mut rankings = Vec::new();
    for (k, (name, init, final_)) in
        [("P-T", &m.pt_init, &m.pt[0]), ("RI-T", &m.rit_init[0], &m.rit[0])].into_iter().enumerate()
    {
        progress(&format!("module criticality ({name})"), 0.45 + 0.3 * k as f64);
        let net = criticality::network_criticality(
            ctx,
            &mut evaluator,
            Path::Straight { init, final_ },
            &mut live,
            &options,
        )?;
        let test_error = inputs.mlp.evaluate(final_, test)?.error;
        let bound = criticality::pac_bayes(
            &net,
            sample.n as u64,
            0.05,
            Some(criticality::HeldOut { error: test_error, n: test.n as u64 }),
        )?;
        let held_out = bound.held_out.unwrap_or(f64::NAN);
        let rows: [(&str, ModuleMeasure); 3] =
            [("mu", |c| c.value), ("spread", |c| c.spread), ("mu / k", |c| c.per_parameter)];
        for (r, (label, of)) in rows.iter().enumerate() {
            table.push_str(&format!("  {:<6} {label:<12}", if r == 0 { name } else { "" }));
            for c in &net.modules {
                table.push_str(&format!(" {:>10.4}", of(c)));
            }
            match r {
                0 => table.push_str(&format!(
                    " {:>10.4} {:>10.4} {:>10.4}{}\n",
                    net.total,
                    bound.value,
                    held_out,
                    if bound.vacuous { " (bound vacuous)" } else { "" }
                )),
                1 => table.push_str(&format!(" {:>10.4}\n", net.total_spread)),
                _ => table.push_str(&format!(
                    "  ranking by mu / k {} ({:.0}% of seeds agree)\n",
                    if net.ranking_stable() { "stable" } else { "UNSTABLE" },
                    100.0 * net.ranking_agreement
                )),
            }
        }
        let mut row = Map::new();
        let mut modules = Vec::new();
        for c in &net.modules {
            row.insert(c.module.clone(), num(c.value));
            modules.push(json!({"module": c.module, "value": num(c.value), "feasible": c.feasible,
                                "repeats": c.repeats.iter().map(|&v| num(v)).collect::<Vec<_>>(), "spread": num(c.spread),
                                "per_parameter": num(c.per_parameter), "pac_bayes_term": num(c.pac_bayes_term),
                                "alpha": num(c.alpha), "sigma": num(c.sigma), "noise_std": num(c.noise_std),
                                "expected_error": num(c.expected), "expected_error_se": num(c.expected_se),
                                "rewound_error": num(c.rewound_metric), "rewind_area": num(c.rewind_area),
                                "numel": c.numel, "points": c.points}));
        }
        values.insert(name.into(), Value::Object(row));
        details.insert(
            name.into(),
            json!({"modules": modules, "network": num(net.total), "network_spread": num(net.total_spread),
                   "ranking_agreement": num(net.ranking_agreement), "ranking_stable": net.ranking_stable(),
                   "final_error": num(net.final_metric), "eps": num(net.eps), "measured_on": sample.n,
                   "pac_bayes_bound": num(bound.value), "bound_vacuous": bound.vacuous,
                   "held_out_estimate": num(held_out), "test_error": num(test_error), "test_images": test.n,
                   "joint_expected_error": num(net.joint_expected), "bound_note": "m = the training images criticality was measured on, delta = 0.05; the O~(1) term is omitted; the expectation term is the error with every module perturbed at its minimiser at once; held-out = test error + sqrt(log(1/delta) / (2 n))"}),
        );
        plots.criticality.push((name.to_string(), net.modules.iter().map(|c| c.value).collect()));
        rankings.push((name, net.modules.iter().map(|c| c.per_parameter).collect::<Vec<f64>>()));
    }
    let findings = rankings
        .iter()
        .map(|(name, v)| {
            let (lowest, top_hidden) = (v[0], v[v.len() - 2]);
            Finding::new(
                format!(
                    "Lower modules are less critical than higher ones per parameter ({name}: fc1 below the top hidden module, mu / k)"
                ),
                lowest < top_hidden,
                format!("fc1 {lowest:.4}, {} {top_hidden:.4}", layers[layers.len() - 2]),
            )
        })
        .collect();
    let json = Map::from_iter([
        ("criticality".to_string(), Value::Object(values)),
        ("criticality_details".to_string(), Value::Object(details)),
        ("criticality_note".to_string(), json!("null stands for +inf: no feasible point at or above the sigma floor")),
    ]);
    Ok(Section { json, table, findings })
}

/// Target test error as each module alone is rewound from the final weights to its initial
/// ones (P-T and RI-T); JSON only.
pub(super) fn rewind(inputs: &Inputs) -> Result<Section> {
    let (ctx, m) = (inputs.ctx, inputs.models);
    let alphas = landscape::linspace(1.0, 0.0, inputs.cfg.rewind_points);
    let mut evaluator = MlpEvaluator::new(inputs.mlp.clone(), inputs.target.test.clone());
    let mut live = m.p.try_clone()?;
    let mut curves = Map::new();
    for (name, init, final_) in [("P-T", &m.pt_init, &m.pt[0]), ("RI-T", &m.rit_init[0], &m.rit[0])] {
        let mut per_module = Map::new();
        for (i, l) in inputs.layers.iter().enumerate() {
            let c = criticality::rewind_curve(ctx, &mut evaluator, init, final_, &mut live, i, &alphas)?;
            per_module.insert(l.clone(), Value::Array(c.iter().map(|x| num(x.error)).collect()));
        }
        curves.insert(
            name.into(),
            json!({"alphas": alphas.iter().map(|&a| num(a)).collect::<Vec<_>>(), "error": per_module}),
        );
    }
    Ok(Section { json: Map::from_iter([("rewind".to_string(), Value::Object(curves))]), ..Section::default() })
}
