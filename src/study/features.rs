//! The sections that compare what the models compute: accuracy, CKA of their features, the
//! block-shuffle sweep and the agreement of their predictions.

use super::models::sweep_opts;
use super::tasks::{shuffled, SIDE};
use super::{mean, num, Finding, Inputs, Plots, Section};
use crate::cka::{self, Estimator};
use crate::data;
use crate::error::Result;
use crate::params::ParamSet;
use crate::tensor::Matrix;
use serde_json::{json, Map, Value};

/// Target test accuracy of every model (and P's on the source task).
pub(super) fn accuracy(inputs: &Inputs) -> Result<Section> {
    let (mlp, m, target) = (inputs.mlp, inputs.models, inputs.target);
    let named: [(&str, &ParamSet); 7] = [
        ("RI", &m.ri),
        ("P-T #1", &m.pt[0]),
        ("P-T #2", &m.pt[1]),
        ("RI-T #1", &m.rit[0]),
        ("RI-T #2", &m.rit[1]),
        ("RI-T same init #1", &m.rit_same[0]),
        ("RI-T same init #2", &m.rit_same[1]),
    ];
    let mut table =
        format!("Target test accuracy ({} test images, {} training images)\n", target.test.n, target.train.n);
    let mut accuracy = Map::new();
    let p_source = mlp.evaluate(&m.p, &inputs.source.test)?.accuracy;
    table.push_str(&format!("  {:<20} {:.4}  (source task)\n", "P", p_source));
    accuracy.insert("P (source task)".into(), num(p_source));
    let mut of = Vec::with_capacity(named.len());
    for (name, p) in named {
        let a = mlp.evaluate(p, &target.test)?.accuracy;
        table.push_str(&format!("  {:<20} {:.4}\n", name, a));
        accuracy.insert(name.into(), num(a));
        of.push(a);
    }
    let (pt_acc, rit_acc) = (mean(&of[1..3]), mean(&of[3..5]));
    Ok(Section {
        json: Map::from_iter([("accuracy".to_string(), Value::Object(accuracy))]),
        table,
        findings: vec![Finding::new(
            "Transfer helps: P-T models are more accurate on the target than RI-T models",
            pt_acc > rit_acc,
            format!("mean accuracy P-T {pt_acc:.4}, RI-T {rit_acc:.4}"),
        )],
    })
}

/// CKA per layer on the target test set for four pairings.
pub(super) fn cka(inputs: &Inputs, plots: &mut Plots) -> Result<Section> {
    let (mlp, m, layers) = (inputs.mlp, inputs.models, &inputs.layers);
    let test = &inputs.target.test;
    let acts = |p: &ParamSet| mlp.activations(p, test);
    let (a_p, a_pt1, a_pt2, a_rit1, a_rit2) =
        (acts(&m.p)?, acts(&m.pt[0])?, acts(&m.pt[1])?, acts(&m.rit[0])?, acts(&m.rit[1])?);
    let widths = &mlp.sizes()[1..];
    let n = test.n;
    let per_layer = |x: &[Vec<f32>], y: &[Vec<f32>]| -> Result<Vec<f64>> {
        (0..layers.len())
            .map(|l| {
                let mx = Matrix::contiguous(&x[l], n, widths[l])?;
                let my = Matrix::contiguous(&y[l], n, widths[l])?;
                cka::linear_cka(inputs.ctx, &mx, &my, Estimator::Biased)
            })
            .collect()
    };
    let rows: Vec<(&'static str, Vec<f64>)> = vec![
        ("P-T & P", per_layer(&a_pt1, &a_p)?),
        ("P-T & P-T", per_layer(&a_pt1, &a_pt2)?),
        ("P-T & RI-T", per_layer(&a_pt1, &a_rit1)?),
        ("RI-T & RI-T", per_layer(&a_rit1, &a_rit2)?),
    ];
    let mut table = String::from("\nCKA (linear, biased) per layer on the target test set\n");
    table.push_str(&format!("  {:<12}", ""));
    for l in layers {
        table.push_str(&format!(" {l:>8}"));
    }
    table.push('\n');
    let mut cka_json = Map::new();
    for (name, v) in &rows {
        table.push_str(&format!("  {name:<12}"));
        let mut row = Map::new();
        for (l, x) in layers.iter().zip(v) {
            table.push_str(&format!(" {x:>8.4}"));
            row.insert(l.clone(), num(*x));
        }
        table.push('\n');
        cka_json.insert((*name).into(), Value::Object(row));
    }
    // The head's CKA is dominated by the shared labels; the features are the hidden layers.
    let hidden = layers.len() - 1;
    let (c_ptpt, c_ritrit) = (mean(&rows[1].1[..hidden]), mean(&rows[3].1[..hidden]));
    plots.cka = rows.iter().map(|(name, v)| (name.to_string(), v.clone())).collect();
    Ok(Section {
        json: Map::from_iter([("cka".to_string(), Value::Object(cka_json))]),
        table,
        findings: vec![Finding::new(
            "Two P-T models have more similar features than two RI-T models (CKA, mean over hidden layers)",
            c_ptpt > c_ritrit,
            format!("P-T & P-T {c_ptpt:.4}, RI-T & RI-T {c_ritrit:.4}"),
        )],
    })
}

/// One block size of the sweep: P-T and RI-T retrained on block-shuffled target images.
struct SweepPoint {
    block: usize,
    pt_accuracy: f64,
    rit_accuracy: f64,
    pt_early_loss: f64,
    rit_early_loss: f64,
    pt_train_loss: Vec<f64>,
    rit_train_loss: Vec<f64>,
}

/// The block-shuffle sweep: P-T and RI-T retrained on block-shuffled target images.
pub(super) fn block_shuffle(inputs: &Inputs, plots: &mut Plots) -> Result<Section> {
    let (mlp, m, cfg, target) = (inputs.mlp, inputs.models, inputs.cfg, inputs.target);
    let mut table = String::from("\nBlock shuffle (target task; the same permutation for train and test)\n");
    table.push_str(&format!(
        "  {:>5} {:>10} {:>10} {:>8} {:>16} {:>16}\n",
        "block", "P-T acc", "RI-T acc", "gap", "P-T early loss", "RI-T early loss"
    ));
    let early = (cfg.target_epochs / 5).max(1);
    let mut sweep = Vec::with_capacity(cfg.blocks.len());
    for &block in &cfg.blocks {
        let train = shuffled(&target.train, block, 9)?;
        let test = shuffled(&target.test, block, 9)?;
        let mut pt = m.pt_init.try_clone()?;
        let pt_train_loss = mlp.train(&mut pt, &train, &sweep_opts(cfg, 200))?;
        let mut rit = m.rit_init[0].try_clone()?;
        let rit_train_loss = mlp.train(&mut rit, &train, &sweep_opts(cfg, 300))?;
        let point = SweepPoint {
            block,
            pt_accuracy: mlp.evaluate(&pt, &test)?.accuracy,
            rit_accuracy: mlp.evaluate(&rit, &test)?.accuracy,
            pt_early_loss: mean(&pt_train_loss[..early]),
            rit_early_loss: mean(&rit_train_loss[..early]),
            pt_train_loss,
            rit_train_loss,
        };
        let (ap, ar, ep, er) = (point.pt_accuracy, point.rit_accuracy, point.pt_early_loss, point.rit_early_loss);
        table.push_str(&format!("  {block:>5} {ap:>10.4} {ar:>10.4} {:>8.4} {ep:>16.4} {er:>16.4}\n", ap - ar));
        sweep.push(point);
    }
    let first = &sweep[0];
    let last = sweep.iter().find(|s| s.block == SIDE).unwrap_or(&sweep[sweep.len() - 1]);
    let gap = |s: &SweepPoint| s.pt_accuracy - s.rit_accuracy;
    let findings = vec![
        Finding::new(
            format!(
                "Benefits shrink as block shuffling destroys visual features (accuracy gap P-T - RI-T at block {} below block {})",
                first.block, last.block
            ),
            gap(first) < gap(last),
            format!("gap {:.4} at block {}, {:.4} at block {}", gap(first), first.block, gap(last), last.block),
        ),
        Finding::new(
            format!(
                "Optimisation speed still benefits at block {}: P-T's training loss over the first {early} epochs is below RI-T's",
                first.block
            ),
            first.pt_early_loss < first.rit_early_loss,
            format!("P-T {:.4}, RI-T {:.4}", first.pt_early_loss, first.rit_early_loss),
        ),
    ];
    let losses = |v: &[f64]| v.iter().map(|&x| num(x)).collect::<Vec<_>>();
    let json: Vec<Value> = sweep
        .iter()
        .map(|s| {
            json!({"block": s.block, "pt_accuracy": num(s.pt_accuracy), "rit_accuracy": num(s.rit_accuracy),
                   "pt_train_loss": losses(&s.pt_train_loss), "rit_train_loss": losses(&s.rit_train_loss)})
        })
        .collect();
    plots.block_shuffle = sweep.iter().map(|s| (s.block, s.pt_accuracy, s.rit_accuracy)).collect();
    Ok(Section { json: Map::from_iter([("block_shuffle".to_string(), Value::Array(json))]), table, findings })
}

/// Agreement of the predictions of two P-T models, and of a P-T and an RI-T model.
pub(super) fn agreement(inputs: &Inputs) -> Result<Section> {
    let (mlp, m, test) = (inputs.mlp, inputs.models, &inputs.target.test);
    let predictions = |p: &ParamSet| -> Result<Vec<u32>> { Ok(mlp.evaluate_with_predictions(p, test)?.1) };
    let (p1, p2, r1) = (predictions(&m.pt[0])?, predictions(&m.pt[1])?, predictions(&m.rit[0])?);
    let mut agreement = Map::new();
    let mut table = String::from("\nAgreement of predictions on the target test set\n");
    table.push_str(&format!(
        "  {:<12} {:>10} {:>7} {:>7} {:>16} {:>16}\n",
        "", "both right", "only A", "only B", "both wrong same", "both wrong diff"
    ));
    let mut shared_mistakes = Vec::new();
    for (name, a, b) in [("P-T & P-T", &p1, &p2), ("P-T & RI-T", &p1, &r1)] {
        let c = data::prediction_agreement(a, b, &test.y)?.counts();
        table.push_str(&format!("  {name:<12} {:>10} {:>7} {:>7} {:>16} {:>16}\n", c[0], c[1], c[2], c[3], c[4]));
        agreement.insert(
            name.into(),
            json!({"both_right": c[0], "only_a": c[1], "only_b": c[2], "both_wrong_same": c[3], "both_wrong_different": c[4]}),
        );
        // Shared mistakes: of the samples either model gets wrong, the share both get wrong alike.
        shared_mistakes.push(c[3] as f64 / (c[1] + c[2] + c[3] + c[4]).max(1) as f64);
    }
    Ok(Section {
        json: Map::from_iter([("agreement".to_string(), Value::Object(agreement))]),
        table,
        findings: vec![Finding::new(
            "Two P-T models make more similar mistakes than a P-T and an RI-T model",
            shared_mistakes[0] > shared_mistakes[1],
            format!(
                "shared mistakes {:.3} vs {:.3} of the samples either gets wrong",
                shared_mistakes[0], shared_mistakes[1]
            ),
        )],
    })
}
