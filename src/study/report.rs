//! The study's self-contained HTML report: the findings first, then each section with its plots
//! (inline SVG, captions saying what to look for) and its table. No scripts, no links.

use super::{Chart, Figure, Finding, Line, Section, Verdict};
use serde_json::Value;

const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten, about `target`
/// of them.
pub(super) fn round_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * power).find(|&s| s >= raw).unwrap_or(10.0 * power);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick's label: as few decimals as the step needs.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
    let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
    format!("{v:.decimals$}")
}

/// The y range of a line chart: the data's (bands included), widened to round ticks.
fn y_extent(lines: &[Line]) -> (f64, f64) {
    let values = lines.iter().flat_map(|l| l.low.iter().chain(&l.high).chain(&l.mean)).filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |a, &v| (a.0.min(v), a.1.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let (lo, hi) = if hi - lo < 1e-12 { (lo - 0.5, hi + 0.5) } else { (lo, hi) };
    let pad = 0.05 * (hi - lo);
    // Quantities that cannot be negative (distances, errors) keep their axis at or above 0.
    let bottom = if lo >= 0.0 { (lo - pad).max(0.0) } else { lo - pad };
    let ticks = round_ticks(bottom, hi + pad, 5);
    let step = if ticks.len() > 1 { ticks[1] - ticks[0] } else { hi - lo };
    ((bottom / step).floor() * step, ((hi + pad) / step).ceil() * step)
}

const W: f64 = 560.0;
const H: f64 = 320.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 45.0;

fn svg_open() -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    )
}

fn lines_svg(
    x: &[f64],
    x_labels: Option<&[String]>,
    lines: &[Line],
    y_range: Option<(f64, f64)>,
    marks: &[(f64, String)],
    x_label: &str,
    y_label: &str,
) -> String {
    let (y0, y1) = y_range.unwrap_or_else(|| y_extent(lines));
    let (x0, x1) = x.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, &v| (a.0.min(v), a.1.max(v)));
    let (x0, x1) = if x1 > x0 { (x0, x1) } else { (x0 - 1.0, x0 + 1.0) };
    let (plot_w, plot_h) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let px = |v: f64| LEFT + (v - x0) / (x1 - x0) * plot_w;
    // Values off the axis (a non-finite value, or one outside a fixed range) sit on its edge.
    let py = |v: f64| {
        let v = if v.is_finite() { v.clamp(y0, y1) } else { y1 };
        TOP + (1.0 - (v - y0) / (y1 - y0)) * plot_h
    };
    let mut s = svg_open();
    s += &format!(r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>"##);
    let yticks = round_ticks(y0, y1, 5);
    let ystep = if yticks.len() > 1 { yticks[1] - yticks[0] } else { 1.0 };
    for &v in &yticks {
        let yy = py(v);
        s += &format!(
            r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 4.0,
            yy + 4.0,
            tick_label(v, ystep)
        );
    }
    let xticks: Vec<(f64, String)> = match x_labels {
        Some(labels) => x.iter().zip(labels).map(|(&v, l)| (v, l.clone())).collect(),
        None => {
            let t = round_ticks(x0, x1, 6);
            let step = if t.len() > 1 { t[1] - t[0] } else { 1.0 };
            t.iter().map(|&v| (v, tick_label(v, step))).collect()
        }
    };
    for (v, label) in &xticks {
        s +=
            &format!(r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#, px(*v), H - BOTTOM + 14.0, esc(label));
    }
    // Each mark's label on its own line, so that marks at nearby x stay readable, on a white
    // box so that the curves under it do not hide it (about 6 px per character at 11 px).
    for (k, (v, label)) in marks.iter().enumerate() {
        let xx = px(*v);
        let baseline = TOP + 11.0 + 12.0 * k as f64;
        s += &format!(
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{TOP}" y2="{}" stroke="#999" stroke-dasharray="3,3"/><rect x="{:.1}" y="{:.1}" width="{:.1}" height="12" fill="white" fill-opacity="0.85"/><text x="{:.1}" y="{baseline}" fill="#444">{}</text>"##,
            H - BOTTOM,
            xx + 1.0,
            baseline - 9.5,
            6.2 * label.chars().count() as f64 + 4.0,
            xx + 3.0,
            esc(label)
        );
    }
    s += &format!(r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, LEFT + plot_w / 2.0, H - 10.0, esc(x_label));
    let mid = TOP + plot_h / 2.0;
    s += &format!(
        r#"<text x="14" y="{mid}" text-anchor="middle" transform="rotate(-90 14 {mid})">{}</text>"#,
        esc(y_label)
    );
    for (i, line) in lines.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let band = line.low.iter().zip(&line.high).any(|(l, h)| h - l > 0.0);
        if band {
            let upper = x.iter().zip(&line.high).map(|(&a, &b)| format!("{:.1},{:.1}", px(a), py(b)));
            let lower = x.iter().zip(&line.low).rev().map(|(&a, &b)| format!("{:.1},{:.1}", px(a), py(b)));
            let points: Vec<String> = upper.chain(lower).collect();
            s += &format!(r#"<polygon points="{}" fill="{c}" fill-opacity="0.15" stroke="none"/>"#, points.join(" "));
        }
        let points: Vec<String> = x
            .iter()
            .zip(&line.mean)
            .filter(|(_, v)| v.is_finite())
            .map(|(&a, &b)| format!("{:.1},{:.1}", px(a), py(b)))
            .collect();
        s += &format!(r#"<polyline fill="none" stroke="{c}" stroke-width="1.8" points="{}"/>"#, points.join(" "));
        if x.len() <= 12 {
            for (&a, &b) in x.iter().zip(&line.mean) {
                s += &format!(r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{c}"/>"#, px(a), py(b));
            }
        }
        let ly = TOP + 10.0 + 16.0 * i as f64;
        s += &format!(
            r#"<rect x="{}" y="{ly}" width="12" height="3" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            W - RIGHT + 8.0,
            W - RIGHT + 24.0,
            ly + 4.0,
            esc(&line.name)
        );
    }
    s + "</svg>"
}

fn heatmap_svg(rows: &[String], columns: &[String], values: &[Vec<f64>], range: (f64, f64)) -> String {
    let (plot_w, plot_h) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let (cw, ch) = (plot_w / columns.len().max(1) as f64, plot_h / rows.len().max(1) as f64);
    let shade = |v: f64| {
        let t = if v.is_finite() { ((v - range.0) / (range.1 - range.0)).clamp(0.0, 1.0) } else { 0.0 };
        // White (low) to dark blue (high).
        let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
        format!("#{:02x}{:02x}{:02x}", lerp(255.0, 8.0), lerp(255.0, 48.0), lerp(255.0, 107.0))
    };
    let mut s = svg_open();
    for (r, row) in values.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let (x, y) = (LEFT + c as f64 * cw, TOP + r as f64 * ch);
            let ink = if v.is_finite() && (v - range.0) / (range.1 - range.0) > 0.55 { "#fff" } else { "#000" };
            s += &format!(
                r#"<rect x="{x:.1}" y="{y:.1}" width="{cw:.1}" height="{ch:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{ink}">{}</text>"#,
                shade(v),
                x + cw / 2.0,
                y + ch / 2.0 + 4.0,
                if v.is_finite() { format!("{v:.2}") } else { "-".into() }
            );
        }
    }
    for (r, name) in rows.iter().enumerate() {
        s += &format!(
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 4.0,
            TOP + (r as f64 + 0.5) * ch + 4.0,
            esc(name)
        );
    }
    for (c, name) in columns.iter().enumerate() {
        s += &format!(
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            LEFT + (c as f64 + 0.5) * cw,
            H - BOTTOM + 14.0,
            esc(name)
        );
    }
    // The colour scale.
    for k in 0..=10 {
        let v = range.0 + (range.1 - range.0) * k as f64 / 10.0;
        let y = TOP + (10 - k) as f64 * plot_h / 11.0;
        s += &format!(
            r##"<rect x="{}" y="{y:.1}" width="14" height="{:.1}" fill="{}" stroke="#ccc"/>"##,
            W - RIGHT + 12.0,
            plot_h / 11.0,
            shade(v)
        );
        if k % 5 == 0 {
            s += &format!(r#"<text x="{}" y="{:.1}">{v:.1}</text>"#, W - RIGHT + 30.0, y + plot_h / 22.0 + 4.0);
        }
    }
    s + "</svg>"
}

/// One figure: its title, the plot, and the caption.
fn figure(f: &Figure) -> String {
    let svg = match &f.chart {
        Chart::Lines { x, x_labels, lines, y_range, marks, x_label, y_label } => {
            lines_svg(x, x_labels.as_deref(), lines, *y_range, marks, x_label, y_label)
        }
        Chart::Heatmap { rows, columns, values, range } => heatmap_svg(rows, columns, values, *range),
    };
    format!(
        "<figure><figcaption class=\"title\">{}</figcaption>{svg}<figcaption>{}</figcaption></figure>",
        esc(&f.title),
        esc(&f.caption)
    )
}

/// The report: findings, then every section's figures and table, as one HTML page.
pub(super) fn html(json: &Value, findings: &[Finding], sections: &[Section], tables: &str) -> String {
    let mut list = String::new();
    for f in findings {
        let (class, word) = match f.verdict() {
            Verdict::Held => ("ok", "held"),
            Verdict::Mixed => ("mixed", "mixed"),
            Verdict::NotHeld => ("no", "not held"),
        };
        let evidence: Vec<String> = f.per_seed.iter().map(|(_, e)| esc(e)).collect();
        list += &format!(
            "<li class=\"{class}\"><b>{word}</b> in {} of {} seeds: {} <small>Criterion: {}. {}</small></li>",
            f.held_in(),
            f.per_seed.len(),
            esc(&f.claim),
            esc(&f.criterion),
            evidence.join("; ")
        );
    }
    let mut body = String::new();
    for s in sections.iter().filter(|s| !s.figures.is_empty() || !s.table.is_empty()) {
        body += &format!("<h2>{}</h2><div class=\"plots\">", esc(&s.title));
        for f in &s.figures {
            body += &figure(f);
        }
        body += "</div>";
        if !s.table.trim().is_empty() {
            body += &format!("<pre>{}</pre>", esc(s.table.trim_start_matches('\n')));
        }
    }
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>transferlens study</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}} .ok b{{color:#2ca02c}} .no b{{color:#d62728}} .mixed b{{color:#ff7f0e}}
li{{margin-bottom:.4em}} small{{color:#555;display:block}} pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}
.plots{{display:flex;flex-wrap:wrap;gap:1em}} figure{{margin:0;max-width:560px}} figcaption{{font-size:.9em;color:#333}} figcaption.title{{font-weight:bold}}</style></head><body>
<h1>What is being transferred? The embedded study ({config}, {seeds} seeds)</h1>
<p>A miniature of Neyshabur, Sedghi and Zhang (NeurIPS 2020) on procedurally generated images with the built-in CNN. Every finding is checked per seed against a criterion written down before the run; lines show the mean over seeds and the band the smallest to the largest seed.</p>
<h2>Findings</h2><ul>{list}</ul>
{body}
<h2>All tables</h2><pre>{tables}</pre>
</body></html>
"#,
        config = esc(json["config"].as_str().unwrap_or("")),
        seeds = json["seeds"].as_u64().unwrap_or(0),
        tables = esc(tables),
    )
}

#[cfg(test)]
mod tests {
    use super::round_ticks;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = round_ticks(0.0, 1.0, 5);
        let want = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
        assert!(t.len() == want.len() && t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{t:?}");
        let t = round_ticks(-1.0, 2.0, 6);
        assert_eq!(t.first(), Some(&-1.0));
        assert_eq!(t.last(), Some(&2.0));
        let t = round_ticks(0.0312, 0.0871, 5);
        assert!(t.iter().all(|v| (v * 100.0 - (v * 100.0).round()).abs() < 1e-9), "{t:?}");
        let (lo, hi) = super::y_extent(&[super::Line {
            name: "d".into(),
            mean: vec![0.5, 28.0],
            low: vec![0.4, 27.0],
            high: vec![0.6, 29.0],
        }]);
        assert!(lo == 0.0 && hi >= 29.0, "a non-negative quantity's axis starts at 0: {lo}..{hi}");
        let t = round_ticks(0.0312, 0.0871, 5);
        assert!(t.iter().all(|v| (v * 100.0 - (v * 100.0).round()).abs() < 1e-9), "{t:?}");
    }
}
