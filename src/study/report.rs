//! The study's self-contained HTML report: tables and inline SVG plots, no scripts, no links.

use super::Plots;
use serde_json::Value;

const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A line plot of several series; x ticks from `xticks` (position, label). Non-finite values
/// (an infeasible criticality) are drawn as a marker at the top edge, labelled "inf".
fn plot(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(String, Vec<f64>, Vec<f64>)],
    xticks: &[(f64, String)],
    vline: &[f64],
) -> String {
    let (w, h, l, r, t, b) = (560.0, 320.0, 60.0, 150.0, 30.0, 45.0);
    let xs = series.iter().flat_map(|s| s.1.iter().copied());
    let ys: Vec<f64> = series.iter().flat_map(|s| s.2.iter().copied()).filter(|v| v.is_finite()).collect();
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |a, x| (a.0.min(x), a.1.max(x)));
    let (mut y0, mut y1) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, &y| (a.0.min(y), a.1.max(y)));
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    if y1 - y0 < 1e-12 {
        y1 = y0 + 1.0;
    }
    let pad = 0.05 * (y1 - y0);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let (x0, x1) = if x1 > x0 { (x0, x1) } else { (x0 - 1.0, x0 + 1.0) };
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| if y.is_finite() { t + (1.0 - (y - y0) / (y1 - y0)) * (h - t - b) } else { t };
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    s +=
        &format!(r#"<text x="{}" y="16" text-anchor="middle" font-size="13">{}</text>"#, (l + w - r) / 2.0, esc(title));
    s +=
        &format!(r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#888"/>"##, w - l - r, h - t - b);
    for k in 0..=4 {
        let y = y0 + (y1 - y0) * k as f64 / 4.0;
        let (xr, yy, xt) = (w - r, py(y), l - 4.0);
        s += &format!(
            r##"<line x1="{l}" x2="{xr}" y1="{yy}" y2="{yy}" stroke="#eee"/><text x="{xt}" y="{}" text-anchor="end">{y:.3}</text>"##,
            yy + 4.0
        );
    }
    for (x, label) in xticks {
        s += &format!(r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, px(*x), h - b + 14.0, esc(label));
    }
    for &x in vline {
        let (xx, yb) = (px(x), h - b);
        s += &format!(r##"<line x1="{xx}" x2="{xx}" y1="{t}" y2="{yb}" stroke="#bbb" stroke-dasharray="3,3"/>"##);
    }
    s += &format!(r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, (l + w - r) / 2.0, h - 8.0, esc(xlabel));
    s += &format!(
        r#"<text x="14" y="{}" text-anchor="middle" transform="rotate(-90 14 {})">{}</text>"#,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0,
        esc(ylabel)
    );
    for (i, (name, x, y)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<String> = x
            .iter()
            .zip(y)
            .filter(|(_, y)| y.is_finite())
            .map(|(&x, &y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        s += &format!(r#"<polyline fill="none" stroke="{c}" stroke-width="1.8" points="{}"/>"#, pts.join(" "));
        for (&xv, &yv) in x.iter().zip(y) {
            if x.len() <= 12 || !yv.is_finite() {
                s += &format!(r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#, px(xv), py(yv));
            }
            if !yv.is_finite() {
                s += &format!(r#"<text x="{:.1}" y="{:.1}" fill="{c}">inf</text>"#, px(xv) + 4.0, py(yv) + 12.0);
            }
        }
        s += &format!(
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            w - r + 8.0,
            t + 10.0 + 16.0 * i as f64,
            w - r + 24.0,
            t + 14.0 + 16.0 * i as f64,
            esc(name)
        );
    }
    s + "</svg>"
}

/// The report: findings, plots and the printed tables, as one HTML page.
pub(super) fn html(json: &Value, layers: &[String], plots: &Plots, tables: &str) -> String {
    let (curves, lambdas, cka, crit, sweep) =
        (&plots.interpolation, &plots.lambdas, &plots.cka, &plots.criticality, &plots.block_shuffle);
    let layer_ticks: Vec<(f64, String)> = layers.iter().enumerate().map(|(i, l)| (i as f64, l.clone())).collect();
    let idx: Vec<f64> = (0..layers.len()).map(|i| i as f64).collect();
    let lam_ticks: Vec<(f64, String)> = [-1.0, 0.0, 1.0, 2.0].iter().map(|&x| (x, format!("{x}"))).collect();
    let interp = plot(
        "Target test error along the line through two models",
        "lambda (0 and 1: the two models)",
        "test error",
        &curves.iter().map(|(n, v)| (n.clone(), lambdas.to_vec(), v.clone())).collect::<Vec<_>>(),
        &lam_ticks,
        &[0.0, 1.0],
    );
    let cka_plot = plot(
        "CKA per layer",
        "layer",
        "CKA",
        &cka.iter().map(|(n, v)| (n.clone(), idx.clone(), v.clone())).collect::<Vec<_>>(),
        &layer_ticks,
        &[],
    );
    let log_crit: Vec<(String, Vec<f64>, Vec<f64>)> = crit
        .iter()
        .map(|(n, v)| (n.clone(), idx.clone(), v.iter().map(|x| x.ln_1p() / std::f64::consts::LN_10).collect()))
        .collect();
    let crit_plot = plot(
        "Module criticality (log10(1 + mu); inf = infeasible)",
        "module",
        "log10(1 + criticality)",
        &log_crit,
        &layer_ticks,
        &[],
    );
    let bs: Vec<f64> = sweep.iter().map(|s| s.0 as f64).collect();
    let btick: Vec<(f64, String)> = sweep.iter().map(|s| (s.0 as f64, s.0.to_string())).collect();
    let sweep_plot = plot(
        "Block-shuffle sweep: target test accuracy",
        "block size (12 = unshuffled)",
        "accuracy",
        &[
            ("P-T".into(), bs.clone(), sweep.iter().map(|s| s.1).collect()),
            ("RI-T".into(), bs, sweep.iter().map(|s| s.2).collect()),
        ],
        &btick,
        &[],
    );
    let mut findings = String::new();
    if let Some(Value::Array(fs)) = json.get("findings") {
        for f in fs {
            let held = f["held"].as_bool().unwrap_or(false);
            findings += &format!(
                "<li class=\"{}\"><b>{}</b> {} <small>({})</small></li>",
                if held { "ok" } else { "no" },
                if held { "held" } else { "not held" },
                esc(f["claim"].as_str().unwrap_or("")),
                esc(f["evidence"].as_str().unwrap_or(""))
            );
        }
    }
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>transferlens study</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}} .ok b{{color:#2ca02c}} .no b{{color:#d62728}}
pre{{background:#f6f6f6;padding:1em;overflow-x:auto}} .plots{{display:flex;flex-wrap:wrap;gap:1em}}</style></head><body>
<h1>What is being transferred? The embedded study ({config})</h1>
<p>A miniature of Neyshabur, Sedghi and Zhang (NeurIPS 2020) on procedurally generated stroke images with the built-in MLP.</p>
<h2>Findings</h2><ul>{findings}</ul>
<h2>Plots</h2><div class="plots">{interp}{cka_plot}{crit_plot}{sweep_plot}</div>
<h2>Tables</h2><pre>{tables}</pre>
</body></html>
"#,
        config = esc(json["config"].as_str().unwrap_or("")),
        tables = esc(tables),
    )
}
