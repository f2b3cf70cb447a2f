//! Every model of every seed and every split of every task as safetensors, so that any number
//! of study.json can be recomputed with another tool (docs/analyses.md, section 10).
//!
//! Models go to `DIR/models/NAME.safetensors` with the CNN specification in their metadata
//! (`Cnn::from_metadata` rebuilds the network); data go to `DIR/data/TASK-SPLIT.safetensors`
//! with `x` (F32, N x 3 x 24 x 24) and `y` (I64, N). Every file is written atomically.

use super::models::Trainset;
use super::Config;
use crate::error::{Error, Result};
use crate::model::Dataset;
use crate::params::ParamSet;
use serde_json::{json, Map, Value};
use std::path::Path;

/// Every model of `set` as (name, file relative to the output folder, weights): per seed RI, P,
/// P's checkpoints, per domain the six target models and their inits, and the checkpoint sweep.
pub(crate) fn model_files<'a>(cfg: &Config, set: &'a Trainset) -> Vec<(String, String, &'a ParamSet)> {
    let mut out = Vec::new();
    let mut add = |name: String, p: &'a ParamSet| {
        let file = format!("models/{}.safetensors", name.replace('/', "-"));
        out.push((name, file, p));
    };
    for s in &set.seeds {
        let seed = s.seed;
        add(format!("seed{seed}/RI"), &s.ri);
        add(format!("seed{seed}/P"), &s.p.weights);
        for (epoch, w) in &s.p_checkpoints {
            add(format!("seed{seed}/P-epoch{epoch}"), w);
        }
        for m in &s.domains {
            let domain = m.kind.name();
            for (kind, pair) in [("P-T", &m.pt), ("RI-T", &m.rit), ("RI-T-same-init", &m.rit_same)] {
                for (k, model) in pair.iter().enumerate() {
                    add(format!("seed{seed}/{domain}/{kind}{k}"), &model.weights);
                    add(format!("seed{seed}/{domain}/{kind}{k}-init"), &model.init);
                }
            }
        }
        for (epoch, model) in &s.sweep {
            add(format!("seed{seed}/{}/P-T-from-P-epoch{epoch}", cfg.sweep_domain.name()), &model.weights);
        }
    }
    out
}

/// Every split of every task as (name, file relative to the output folder, data).
pub(crate) fn data_files(set: &Trainset) -> Vec<(String, String, &Dataset)> {
    let mut out = Vec::new();
    for task in std::iter::once(&set.source).chain(&set.targets) {
        for (split, d) in [("train", &task.train), ("validation", &task.validation), ("test", &task.test)] {
            let name = format!("{}-{split}", task.kind.name());
            out.push((name.clone(), format!("data/{name}.safetensors"), d));
        }
    }
    out
}

/// study.json's map of the exported files: `models` and `data`, each a name to its file.
pub(crate) fn file_map(cfg: &Config, set: &Trainset) -> Value {
    let models: Map<String, Value> = model_files(cfg, set).into_iter().map(|(n, f, _)| (n, json!(f))).collect();
    let data: Map<String, Value> = data_files(set).into_iter().map(|(n, f, _)| (n, json!(f))).collect();
    json!({"models": models, "data": data})
}

/// Writes every model and every split of `set` under `dir` (`models/` and `data/`), each file
/// atomically.
pub(crate) fn export(cfg: &Config, set: &Trainset, dir: &Path) -> Result<()> {
    for sub in ["models", "data"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| Error::Io(format!("{}: {e}", d.display())))?;
    }
    for (_, file, p) in model_files(cfg, set) {
        p.save(dir.join(file))?;
    }
    for (_, file, d) in data_files(set) {
        dataset_set(d)?.save(dir.join(file))?;
    }
    Ok(())
}

/// A dataset as a set of two tensors: `x` (F32, the images' shape) and `y` (I64 labels).
pub(crate) fn dataset_set(d: &Dataset) -> Result<ParamSet> {
    let [c, h, w] = super::IMAGE;
    let x_bytes = 4 * d.x.len();
    let y_bytes = 8 * d.y.len();
    let header = json!({
        "x": {"dtype": "F32", "shape": [d.n, c, h, w], "data_offsets": [0, x_bytes]},
        "y": {"dtype": "I64", "shape": [d.n], "data_offsets": [x_bytes, x_bytes + y_bytes]},
        "__metadata__": {"classes": d.classes.to_string()},
    });
    let mut text = header.to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut file = Vec::with_capacity(8 + text.len() + x_bytes + y_bytes);
    file.extend_from_slice(&(text.len() as u64).to_le_bytes());
    file.extend_from_slice(&text);
    file.extend(d.x.iter().flat_map(|v| v.to_le_bytes()));
    file.extend(d.y.iter().flat_map(|&v| i64::from(v).to_le_bytes()));
    ParamSet::from_bytes(&file, "a study dataset")
}
