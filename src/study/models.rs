//! The study's data and models: the source task and the target domains, and per seed RI, P (with
//! its pre-training checkpoints), and per target domain two P-T, two RI-T from two inits and two
//! RI-T from one init, all on the built-in CNN and trained on the CPU.

use super::domains::{domain, DomainKind, Split};
use super::{Config, Progress};
use crate::error::{Error, Result};
use crate::model::{store_f32, Cnn, Dataset, TrainOptions};
use crate::params::ParamSet;

/// The study's CNN for a task of `classes` classes: a stride-2 stem and three residual stages
/// (ResNet's shape at the scale of 3 x 24 x 24 images). Modules: conv1, layer1, layer2, layer3,
/// fc.
pub fn study_spec(classes: usize) -> String {
    format!(
        r#"{{"input": [3, 24, 24], "classes": {classes}, "layers": [
  {{"type": "conv", "name": "conv1", "out": 16, "kernel": 3, "stride": 2, "padding": 1, "bias": false}},
  {{"type": "groupnorm", "name": "gn1", "groups": 4}},
  {{"type": "relu"}},
  {{"type": "block", "name": "layer1", "out": 16, "stride": 1, "groups": 4}},
  {{"type": "block", "name": "layer2", "out": 32, "stride": 2, "groups": 4}},
  {{"type": "block", "name": "layer3", "out": 64, "stride": 2, "groups": 8}},
  {{"type": "global_avgpool"}},
  {{"type": "dense", "name": "fc", "out": {classes}}}
]}}"#
    )
}

/// The head's module name: the module replaced when P is fine-tuned on a target.
pub const HEAD: &str = "fc";

/// One task's images: training, validation (for choices such as the learning rate) and test.
pub struct TaskData {
    pub kind: DomainKind,
    pub train: Dataset,
    pub validation: Dataset,
    pub test: Dataset,
}

impl TaskData {
    /// Generates the three splits of `kind` with the sizes of `cfg`. The images are the same in
    /// every seed of a run: a seed varies the initialisation and the order of the data.
    pub fn generate(kind: DomainKind, cfg: &Config) -> Result<TaskData> {
        let (train, validation, test) = match kind {
            DomainKind::Source => (cfg.source_train, cfg.source_validation, cfg.source_test),
            _ => (cfg.target_train, cfg.target_validation, cfg.target_test),
        };
        Ok(TaskData {
            kind,
            train: domain(kind, Split::Train, train, cfg.data_seed)?,
            validation: domain(kind, Split::Validation, validation, cfg.data_seed)?,
            test: domain(kind, Split::Test, test, cfg.data_seed)?,
        })
    }
}

/// A trained model with where it started and how it trained.
pub struct Trained {
    pub init: ParamSet,
    pub weights: ParamSet,
    /// The mean training loss of each epoch.
    pub train_loss: Vec<f64>,
    pub options: TrainOptions,
}

/// The models trained on one target domain, in one seed.
pub struct DomainModels {
    pub kind: DomainKind,
    /// P with a fresh head, fine-tuned; the two differ in the head's init and the data order.
    pub pt: [Trained; 2],
    /// Trained from two random inits.
    pub rit: [Trained; 2],
    /// Trained from one random init (that of `rit[0]`), in two other data orders.
    pub rit_same: [Trained; 2],
}

/// The models of one seed.
pub struct SeedModels {
    pub seed: u64,
    /// P's random init (source head): the RI model.
    pub ri: ParamSet,
    /// P: pre-trained on the source task.
    pub p: Trained,
    /// P's weights after the epochs of `Config::checkpoint_epochs` (the last is P itself).
    pub p_checkpoints: Vec<(usize, ParamSet)>,
    /// Per target domain, in the order of `Config::domains`.
    pub domains: Vec<DomainModels>,
}

/// Everything the sections read: the networks, the data and the trained models of every seed.
pub struct Trainset {
    /// The CNN of the source task (P, RI).
    pub source_cnn: Cnn,
    /// The CNN of each target domain (its own head), in the order of `Config::domains`.
    pub target_cnns: Vec<Cnn>,
    pub source: TaskData,
    pub targets: Vec<TaskData>,
    pub seeds: Vec<SeedModels>,
}

impl Trainset {
    /// The index of `kind` among the target domains.
    pub fn target_index(&self, kind: DomainKind) -> Option<usize> {
        self.targets.iter().position(|t| t.kind == kind)
    }
}

/// Training options of the source task.
pub fn source_options(cfg: &Config, seed: u64) -> TrainOptions {
    TrainOptions { epochs: cfg.source_epochs, batch: cfg.batch, lr: cfg.source_lr, seed, ..TrainOptions::default() }
}

/// Training options on a target: the same for P-T and RI-T but for the learning rate, which is
/// chosen per regime (`pretrained` or not) and domain.
pub fn target_options(cfg: &Config, lr: f64, seed: u64) -> TrainOptions {
    TrainOptions { epochs: cfg.target_epochs, batch: cfg.batch, lr, seed, ..TrainOptions::default() }
}

/// P with a fresh head for `target`: every tensor of P outside the head, the head from
/// `target.init(seed)`.
pub fn with_fresh_head(target: &Cnn, p: &ParamSet, seed: u64) -> Result<ParamSet> {
    let mut out = target.init(seed)?;
    let head = out.module_index(HEAD).expect("the study's CNN has a head module");
    let body: Vec<String> = out
        .tensors()
        .iter()
        .enumerate()
        .filter(|(i, _)| !out.modules()[head].tensors.contains(i))
        .map(|(_, t)| t.name().to_string())
        .collect();
    for name in body {
        let from = p.tensor(&name).ok_or_else(|| Error::NotFound(format!("P has no tensor {name:?}")))?;
        store_f32(&mut out, &name, &from.host()?.to_f32())?;
    }
    Ok(out)
}

fn train_from(cnn: &Cnn, init: &ParamSet, data: &Dataset, options: TrainOptions) -> Result<Trained> {
    let mut weights = init.try_clone()?;
    let train_loss = cnn.train(&mut weights, data, &options)?;
    Ok(Trained { init: init.try_clone()?, weights, train_loss, options })
}

/// Trains every model of one seed. The learning rates are `Config::source_lr`, and per target
/// domain `lrs[d] = (P-T's, RI-T's)`.
pub fn train_seed(
    cfg: &Config,
    set: (&Cnn, &[Cnn], &TaskData, &[TaskData]),
    seed: u64,
    lrs: &[(f64, f64)],
    progress: Progress,
) -> Result<SeedModels> {
    let (source_cnn, target_cnns, source, targets) = set;
    let base = 1000 * seed;
    let ri = source_cnn.init(base + 1)?;
    progress(&format!("seed {seed}: pre-training P"), 0.0);
    // P is trained in segments that end at the checkpoint epochs (each segment restarts the
    // momentum buffer).
    let mut p = ri.try_clone()?;
    let mut p_loss = Vec::new();
    let mut p_checkpoints = Vec::new();
    let mut done = 0;
    for &epoch in &cfg.checkpoint_epochs {
        let opts = TrainOptions { epochs: epoch - done, seed: base + 2 + epoch as u64, ..source_options(cfg, 0) };
        p_loss.extend(source_cnn.train(&mut p, &source.train, &opts)?);
        p_checkpoints.push((epoch, p.try_clone()?));
        done = epoch;
    }
    let p = Trained { init: ri.try_clone()?, weights: p, train_loss: p_loss, options: source_options(cfg, base + 2) };
    let mut domains = Vec::with_capacity(targets.len());
    for (d, (cnn, data)) in target_cnns.iter().zip(targets).enumerate() {
        progress(
            &format!("seed {seed}: training on {}", data.kind.name()),
            (d + 1) as f64 / (targets.len() + 1) as f64,
        );
        let (pt_lr, rit_lr) = lrs[d];
        let s = base + 100 * (d as u64 + 1);
        let pt = [
            train_from(cnn, &with_fresh_head(cnn, &p.weights, s + 1)?, &data.train, target_options(cfg, pt_lr, s + 2))?,
            train_from(cnn, &with_fresh_head(cnn, &p.weights, s + 3)?, &data.train, target_options(cfg, pt_lr, s + 4))?,
        ];
        let rit_init = [cnn.init(s + 5)?, cnn.init(s + 6)?];
        let rit = [
            train_from(cnn, &rit_init[0], &data.train, target_options(cfg, rit_lr, s + 7))?,
            train_from(cnn, &rit_init[1], &data.train, target_options(cfg, rit_lr, s + 8))?,
        ];
        let rit_same = [
            train_from(cnn, &rit_init[0], &data.train, target_options(cfg, rit_lr, s + 9))?,
            train_from(cnn, &rit_init[0], &data.train, target_options(cfg, rit_lr, s + 10))?,
        ];
        domains.push(DomainModels { kind: data.kind, pt, rit, rit_same });
    }
    Ok(SeedModels { seed, ri, p, p_checkpoints, domains })
}

/// Generates the data and trains the models of every seed of `cfg`.
pub fn train_all(cfg: &Config, progress: Progress) -> Result<Trainset> {
    let source_cnn = Cnn::from_json(&study_spec(DomainKind::Source.classes()))?;
    let target_cnns =
        cfg.domains.iter().map(|k| Cnn::from_json(&study_spec(k.classes()))).collect::<Result<Vec<_>>>()?;
    progress("generating the images", 0.0);
    let source = TaskData::generate(DomainKind::Source, cfg)?;
    let targets = cfg.domains.iter().map(|&k| TaskData::generate(k, cfg)).collect::<Result<Vec<_>>>()?;
    let lrs = vec![(cfg.target_lr, cfg.target_lr); targets.len()];
    let mut seeds = Vec::with_capacity(cfg.seeds);
    for seed in 0..cfg.seeds as u64 {
        seeds.push(train_seed(cfg, (&source_cnn, &target_cnns, &source, &targets), seed, &lrs, progress)?);
    }
    Ok(Trainset { source_cnn, target_cnns, source, targets, seeds })
}
