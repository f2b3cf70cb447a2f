//! The sections about training: accuracy of every model (does transfer help, and where most),
//! learning curves (does P-T optimise faster) and which of P's checkpoints to fine-tune from.

use super::{mean, num, Finding, Inputs, Progress, Section, Size};
use crate::error::Result;
use serde_json::{json, Map, Value};

/// This family's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {}

impl Settings {
    pub fn new(_size: Size) -> Settings {
        Settings {}
    }
}

/// Every section of this family, in report order.
pub(super) fn sections(inputs: &Inputs, progress: Progress) -> Result<Vec<Section>> {
    progress("accuracy", 0.0);
    Ok(vec![accuracy(inputs)?])
}

/// Target test accuracy of P-T and RI-T per domain and seed.
fn accuracy(inputs: &Inputs) -> Result<Section> {
    let set = inputs.set;
    let mut table = String::from("\nTarget test accuracy (mean of the two models of each kind; per seed)\n");
    let mut per_domain = Map::new();
    let mut findings = Vec::new();
    for (d, data) in set.targets.iter().enumerate() {
        let cnn = &set.target_cnns[d];
        let mut per_seed = Vec::new();
        let mut rows = Vec::new();
        for s in &set.seeds {
            let m = &s.domains[d];
            let pt = mean(&[
                cnn.evaluate(&m.pt[0].weights, &data.test)?.accuracy,
                cnn.evaluate(&m.pt[1].weights, &data.test)?.accuracy,
            ]);
            let rit = mean(&[
                cnn.evaluate(&m.rit[0].weights, &data.test)?.accuracy,
                cnn.evaluate(&m.rit[1].weights, &data.test)?.accuracy,
            ]);
            table.push_str(&format!("  {:<10} seed {}  P-T {pt:.4}  RI-T {rit:.4}\n", data.kind.name(), s.seed));
            per_seed.push((pt > rit, format!("seed {}: P-T {pt:.4}, RI-T {rit:.4}", s.seed)));
            rows.push(json!({"seed": s.seed, "pt": num(pt), "rit": num(rit)}));
        }
        per_domain.insert(data.kind.name().into(), Value::Array(rows));
        findings.push(Finding::new(
            format!("Transfer helps on {}: P-T is more accurate than RI-T", data.kind.name()),
            "mean test accuracy of the two P-T models above that of the two RI-T models",
            per_seed,
        ));
    }
    Ok(Section {
        title: "Accuracy".into(),
        json: Map::from_iter([("accuracy".to_string(), Value::Object(per_domain))]),
        table,
        findings,
        figures: vec![],
    })
}
