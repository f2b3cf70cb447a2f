//! The study's data and models: the source task and the target domains, and per seed RI, P (with
//! its pre-training checkpoints), and per target domain two P-T, two RI-T from two inits and two
//! RI-T from one init, all on the built-in CNN and trained on the CPU.

use super::domains::{domain, DomainKind, Split};
use super::{Config, Progress};
use crate::error::{Error, Result};
use crate::model::{store_f32, Cnn, Dataset, TrainOptions};
use crate::params::ParamSet;
use rayon::prelude::*;

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
    /// Generates the three splits of `kind` with the given numbers of images from `data_seed`.
    /// The images are the same in every seed of a run: a seed varies the initialisation and the
    /// order of the data.
    pub fn generate(
        kind: DomainKind,
        train: usize,
        validation: usize,
        test: usize,
        data_seed: u64,
    ) -> Result<TaskData> {
        Ok(TaskData {
            kind,
            train: domain(kind, Split::Train, train, data_seed)?,
            validation: domain(kind, Split::Validation, validation, data_seed)?,
            test: domain(kind, Split::Test, test, data_seed)?,
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

impl Trained {
    pub fn try_clone(&self) -> Result<Trained> {
        Ok(Trained {
            init: self.init.try_clone()?,
            weights: self.weights.try_clone()?,
            train_loss: self.train_loss.clone(),
            options: self.options.clone(),
        })
    }
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
    /// The checkpoint sweep on `Config::sweep_domain`: per checkpoint of `p_checkpoints` (same
    /// order), P-T from that checkpoint with the head init, data order and rate of the domain's
    /// `pt[0]` (the last is a copy of `pt[0]`). Empty when the sweep domain is not among the run's
    /// domains.
    pub sweep: Vec<(usize, Trained)>,
}

/// One rate of the learning-rate grid on one domain: seed 0's first P-T and first RI-T trained
/// at that rate, with their validation accuracies.
pub struct GridPoint {
    pub lr: f64,
    pub pt_validation: f64,
    pub rit_validation: f64,
    pub pt_loss: Vec<f64>,
    pub rit_loss: Vec<f64>,
}

/// One size of the sizing sweep on one domain: seed 0's first RI-T trained on `per_class`
/// training images per class at every rate of `Config::lr_grid`.
pub struct SizingStep {
    pub per_class: usize,
    /// The validation accuracy at each rate of the grid.
    pub validation: Vec<f64>,
}

impl SizingStep {
    /// The validation accuracy at the best rate.
    pub fn best(&self) -> f64 {
        self.validation.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
}

/// The sizing sweep of one target domain and the training size it chose (docs/analyses.md,
/// section 10, revision 2).
pub struct Sizing {
    pub kind: DomainKind,
    /// RI-T's best validation accuracy must reach it: `SIZING_BAR_TIMES_CHANCE / classes`.
    pub bar: f64,
    /// The sizes tried, ascending: the sweep stops at the chosen one.
    pub steps: Vec<SizingStep>,
    /// The chosen number of training images per class.
    pub per_class: usize,
    /// Whether RI-T reached the bar there; false when the cap bound (RI-T below the bar).
    pub reached: bool,
}

/// The sizing rule: given RI-T's best validation accuracy at the first sizes of a grid of
/// `grid_len` sizes (ascending), the index of the chosen size and whether it reached `bar`: the
/// smallest size that reaches the bar, or the last (the cap) when none of the grid does. None
/// while no size has reached the bar and larger sizes remain to be tried.
pub fn size_rule(best_validation: &[f64], grid_len: usize, bar: f64) -> Option<(usize, bool)> {
    match best_validation.iter().position(|&v| v >= bar) {
        Some(i) => Some((i, true)),
        None if grid_len > 0 && best_validation.len() >= grid_len => Some((grid_len - 1, false)),
        None => None,
    }
}

/// The learning rates chosen on one target domain, and the grid they were chosen from.
pub struct LearningRates {
    pub kind: DomainKind,
    pub pt: f64,
    pub rit: f64,
    pub grid: Vec<GridPoint>,
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
    /// Per target domain, in the order of `Config::domains`: the rates of P-T and RI-T.
    pub lrs: Vec<LearningRates>,
    /// Per target domain, in the order of `Config::domains`: the sizing sweep and its choice.
    pub sizing: Vec<Sizing>,
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

/// The seeds of one seed's inits and data orders on target domain `d` (index in
/// `Config::domains`): every model's seed is derived from the run's seed and the domain.
struct TargetSeeds {
    pt_head: [u64; 2],
    pt_order: [u64; 2],
    rit_init: [u64; 2],
    rit_order: [u64; 2],
    rit_same_order: [u64; 2],
}

impl TargetSeeds {
    fn new(seed: u64, d: usize) -> TargetSeeds {
        let s = 1000 * seed + 100 * (d as u64 + 1);
        TargetSeeds {
            pt_head: [s + 1, s + 3],
            pt_order: [s + 2, s + 4],
            rit_init: [s + 5, s + 6],
            rit_order: [s + 7, s + 8],
            rit_same_order: [s + 9, s + 10],
        }
    }
}

/// A model to train: the network, its start, the data and the options.
struct Job<'a> {
    cnn: &'a Cnn,
    init: ParamSet,
    data: &'a Dataset,
    options: TrainOptions,
}

impl Job<'_> {
    fn train(self) -> Result<Trained> {
        let mut weights = self.init.try_clone()?;
        let train_loss = self.cnn.train(&mut weights, self.data, &self.options)?;
        Ok(Trained { init: self.init, weights, train_loss, options: self.options })
    }
}

/// Runs `work` on every item in parallel (rayon; each item's result is the same as in a serial
/// run), reporting `step` and the fraction of `span` done as items finish. Results keep the
/// items' order.
fn parallel<I: Send, T: Send>(
    items: Vec<I>,
    work: impl Fn(I) -> Result<T> + Sync,
    step: &str,
    span: (f64, f64),
    progress: Progress,
) -> Result<Vec<T>> {
    let total = items.len().max(1) as f64;
    progress(step, span.0);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let work = &work;
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            items
                .into_par_iter()
                .map(|item| {
                    let out = work(item);
                    // The receiver lives until every item is done: a failed send cannot happen.
                    done_tx.send(()).ok();
                    out
                })
                .collect::<Result<Vec<T>>>()
        });
        // Ends when the worker drops its sender, after the last item.
        for (k, ()) in done_rx.iter().enumerate() {
            progress(step, span.0 + (span.1 - span.0) * (k + 1) as f64 / total);
        }
        worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// One seed's pre-training: RI, P, and P's checkpoints (see [`SeedModels`]).
struct Pretrained {
    ri: ParamSet,
    p: Trained,
    checkpoints: Vec<(usize, ParamSet)>,
}

/// P of one seed, trained in segments that end at the checkpoint epochs (each segment restarts
/// the momentum buffer).
fn pretrain(cfg: &Config, cnn: &Cnn, source: &TaskData, seed: u64) -> Result<Pretrained> {
    let base = 1000 * seed;
    let ri = cnn.init(base + 1)?;
    let mut p = ri.try_clone()?;
    let mut p_loss = Vec::new();
    let mut p_checkpoints = Vec::new();
    let mut done = 0;
    for &epoch in &cfg.checkpoint_epochs {
        let opts = TrainOptions { epochs: epoch - done, seed: base + 2 + epoch as u64, ..source_options(cfg, 0) };
        p_loss.extend(cnn.train(&mut p, &source.train, &opts)?);
        p_checkpoints.push((epoch, p.try_clone()?));
        done = epoch;
    }
    let p = Trained { init: ri.try_clone()?, weights: p, train_loss: p_loss, options: source_options(cfg, base + 2) };
    Ok(Pretrained { ri, p, checkpoints: p_checkpoints })
}

/// Which model a job of the last phase trains.
#[derive(Clone, Copy)]
enum Slot {
    /// (seed index, domain index, model: 0..6 = pt[0], pt[1], rit[0], rit[1], rit_same[0], rit_same[1])
    Target(usize, usize, usize),
    /// (seed index, checkpoint index)
    Sweep(usize, usize),
}

/// Seed 0's first RI-T on every target domain, trained at every rate of the learning-rate grid
/// on ever larger training sets until the sizing rule decides (validation split only). Returns
/// per domain the sweep, the chosen training set and RI-T's grid models on it (per rate, with
/// their validation accuracies).
#[allow(clippy::type_complexity)]
fn size_training_sets(
    cfg: &Config,
    cnns: &[Cnn],
    validation: &[Dataset],
    span: (f64, f64),
    progress: Progress,
) -> Result<Vec<(Sizing, Dataset, Vec<(Trained, f64)>)>> {
    let domains = cfg.domains.len();
    let mut steps: Vec<Vec<SizingStep>> = (0..domains).map(|_| Vec::new()).collect();
    let mut decided: Vec<Option<(Sizing, Dataset, Vec<(Trained, f64)>)>> = (0..domains).map(|_| None).collect();
    let bar = |d: usize| super::SIZING_BAR_TIMES_CHANCE / cfg.domains[d].classes() as f64;
    let rounds = cfg.train_per_class.len() as f64;
    for (r, &per_class) in cfg.train_per_class.iter().enumerate() {
        let open: Vec<usize> = (0..domains).filter(|&d| decided[d].is_none()).collect();
        let train_sets = open
            .iter()
            .map(|&d| domain(cfg.domains[d], Split::Train, per_class * cfg.domains[d].classes(), cfg.data_seed))
            .collect::<Result<Vec<_>>>()?;
        let mut jobs = Vec::new();
        for (&d, data) in open.iter().zip(&train_sets) {
            let ts = TargetSeeds::new(0, d);
            for &lr in &cfg.lr_grid {
                let job = Job {
                    cnn: &cnns[d],
                    init: cnns[d].init(ts.rit_init[0])?,
                    data,
                    options: target_options(cfg, lr, ts.rit_order[0]),
                };
                jobs.push((d, job));
            }
        }
        let round =
            (span.0 + (span.1 - span.0) * r as f64 / rounds, span.0 + (span.1 - span.0) * (r + 1) as f64 / rounds);
        let trained = parallel(
            jobs,
            |(d, job)| {
                let trained = job.train()?;
                let accuracy = cnns[d].evaluate(&trained.weights, &validation[d])?.accuracy;
                Ok((trained, accuracy))
            },
            "sizing the training sets (seed 0's RI-T, validation split)",
            round,
            progress,
        )?;
        let mut trained = trained.into_iter();
        for (d, data) in open.into_iter().zip(train_sets) {
            let models: Vec<(Trained, f64)> = trained.by_ref().take(cfg.lr_grid.len()).collect();
            steps[d].push(SizingStep { per_class, validation: models.iter().map(|m| m.1).collect() });
            let best: Vec<f64> = steps[d].iter().map(SizingStep::best).collect();
            if let Some((_, reached)) = size_rule(&best, cfg.train_per_class.len(), bar(d)) {
                let sizing = Sizing {
                    kind: cfg.domains[d],
                    bar: bar(d),
                    steps: std::mem::take(&mut steps[d]),
                    per_class,
                    reached,
                };
                decided[d] = Some((sizing, data, models));
            }
        }
    }
    Ok(decided.into_iter().map(|d| d.expect("the rule decides at the grid's last size")).collect())
}

/// Generates the data and trains the models of every seed of `cfg`: P of every seed, then on
/// seed 0 the sizing sweep of the target training sets and the learning-rate grid, then every
/// target model and the checkpoint sweep. Each phase runs its models in parallel.
pub fn train_all(cfg: &Config, progress: Progress) -> Result<Trainset> {
    let source_cnn = Cnn::from_json(&study_spec(DomainKind::Source.classes()))?;
    let target_cnns =
        cfg.domains.iter().map(|k| Cnn::from_json(&study_spec(k.classes()))).collect::<Result<Vec<_>>>()?;
    if cfg.seeds == 0 {
        return Err(Error::InvalidArgument("the study needs at least one seed".into()));
    }
    if cfg.lr_grid.is_empty() || cfg.train_per_class.is_empty() {
        return Err(Error::InvalidArgument("the learning-rate grid and the sizing grid must not be empty".into()));
    }
    progress("generating the images", 0.0);
    let (v, t) = (cfg.source_validation, cfg.source_test);
    let source = TaskData::generate(DomainKind::Source, cfg.source_train, v, t, cfg.data_seed)?;
    let held_out = |kind, split, n| domain(kind, split, n, cfg.data_seed);
    let validation = cfg
        .domains
        .iter()
        .map(|&k| held_out(k, Split::Validation, cfg.target_validation))
        .collect::<Result<Vec<_>>>()?;

    let seeds: Vec<u64> = (0..cfg.seeds as u64).collect();
    let pretrained = parallel(
        seeds.clone(),
        |seed| pretrain(cfg, &source_cnn, &source, seed),
        "pre-training P",
        (0.0, 0.2),
        progress,
    )?;

    let sized = size_training_sets(cfg, &target_cnns, &validation, (0.2, 0.35), progress)?;
    let mut targets = Vec::with_capacity(cfg.domains.len());
    let mut rit_grid = Vec::with_capacity(cfg.domains.len());
    let mut sizing = Vec::with_capacity(cfg.domains.len());
    for ((chosen, train, models), validation) in sized.into_iter().zip(validation) {
        let kind = chosen.kind;
        targets.push(TaskData { kind, train, validation, test: held_out(kind, Split::Test, cfg.target_test)? });
        rit_grid.push(models);
        sizing.push(chosen);
    }

    // P-T's half of the grid: seed 0's first P-T at every rate, on every domain's chosen size
    // (RI-T's half is the sizing sweep's last step).
    let p0 = &pretrained[0].p.weights;
    let mut grid_jobs = Vec::new();
    for (d, (cnn, data)) in target_cnns.iter().zip(&targets).enumerate() {
        let ts = TargetSeeds::new(0, d);
        for &lr in &cfg.lr_grid {
            let pt = Job {
                cnn,
                init: with_fresh_head(cnn, p0, ts.pt_head[0])?,
                data: &data.train,
                options: target_options(cfg, lr, ts.pt_order[0]),
            };
            grid_jobs.push((d, pt));
        }
    }
    let pt_grid = parallel(
        grid_jobs,
        |(d, job)| {
            let trained = job.train()?;
            let validation = target_cnns[d].evaluate(&trained.weights, &targets[d].validation)?.accuracy;
            Ok((trained, validation))
        },
        "choosing the learning rates (seed 0, validation split)",
        (0.35, 0.45),
        progress,
    )?;
    let mut pt_grid = pt_grid.into_iter();
    let mut lrs = Vec::new();
    // Seed 0's first P-T and first RI-T per domain: the grid's models at the chosen rates.
    let mut chosen = Vec::new();
    for (data, rit_models) in targets.iter().zip(rit_grid) {
        let mut points = Vec::new();
        let mut best: [Option<(f64, Trained)>; 2] = [None, None];
        for (&lr, (rit, rit_validation)) in cfg.lr_grid.iter().zip(rit_models) {
            let (pt, pt_validation) = pt_grid.next().expect("one P-T grid model per rate");
            points.push(GridPoint {
                lr,
                pt_validation,
                rit_validation,
                pt_loss: pt.train_loss.clone(),
                rit_loss: rit.train_loss.clone(),
            });
            // Ascending rates and a strict comparison: ties go to the smaller rate.
            for (slot, (model, validation)) in best.iter_mut().zip([(pt, pt_validation), (rit, rit_validation)]) {
                if slot.as_ref().is_none_or(|(v, _)| validation > *v) {
                    *slot = Some((validation, model));
                }
            }
        }
        let [Some((_, pt)), Some((_, rit))] = best else {
            unreachable!("the learning-rate grid is not empty (checked above)");
        };
        lrs.push(LearningRates { kind: data.kind, pt: pt.options.lr, rit: rit.options.lr, grid: points });
        chosen.push([pt, rit]);
    }

    // Every other model of every seed, and the checkpoint sweep.
    let sweep_index = targets.iter().position(|t| t.kind == cfg.sweep_domain);
    let mut jobs = Vec::new();
    for (i, &seed) in seeds.iter().enumerate() {
        let p = &pretrained[i].p.weights;
        for (d, (cnn, data)) in target_cnns.iter().zip(&targets).enumerate() {
            let ts = TargetSeeds::new(seed, d);
            let (pt_lr, rit_lr) = (lrs[d].pt, lrs[d].rit);
            let job = |init: ParamSet, lr: f64, order: u64| Job {
                cnn,
                init,
                data: &data.train,
                options: target_options(cfg, lr, order),
            };
            let rit_init = cnn.init(ts.rit_init[0])?;
            if i != 0 {
                jobs.push((Slot::Target(i, d, 0), job(with_fresh_head(cnn, p, ts.pt_head[0])?, pt_lr, ts.pt_order[0])));
                jobs.push((Slot::Target(i, d, 2), job(rit_init.try_clone()?, rit_lr, ts.rit_order[0])));
            }
            jobs.push((Slot::Target(i, d, 1), job(with_fresh_head(cnn, p, ts.pt_head[1])?, pt_lr, ts.pt_order[1])));
            jobs.push((Slot::Target(i, d, 3), job(cnn.init(ts.rit_init[1])?, rit_lr, ts.rit_order[1])));
            jobs.push((Slot::Target(i, d, 4), job(rit_init.try_clone()?, rit_lr, ts.rit_same_order[0])));
            jobs.push((Slot::Target(i, d, 5), job(rit_init, rit_lr, ts.rit_same_order[1])));
            if Some(d) == sweep_index {
                let checkpoints = &pretrained[i].checkpoints;
                for (c, (_, weights)) in checkpoints.iter().enumerate().take(checkpoints.len() - 1) {
                    let init = with_fresh_head(cnn, weights, ts.pt_head[0])?;
                    jobs.push((Slot::Sweep(i, c), job(init, pt_lr, ts.pt_order[0])));
                }
            }
        }
    }
    let trained =
        parallel(jobs, |(slot, job)| Ok((slot, job.train()?)), "training the target models", (0.45, 0.7), progress)?;

    let mut target_slots: Vec<Vec<[Option<Trained>; 6]>> =
        seeds.iter().map(|_| targets.iter().map(|_| Default::default()).collect()).collect();
    let mut sweep_slots: Vec<Vec<Option<Trained>>> =
        pretrained.iter().map(|pre| pre.checkpoints.iter().map(|_| None).collect()).collect();
    for (d, [pt, rit]) in chosen.into_iter().enumerate() {
        target_slots[0][d][0] = Some(pt);
        target_slots[0][d][2] = Some(rit);
    }
    for (slot, model) in trained {
        match slot {
            Slot::Target(i, d, m) => target_slots[i][d][m] = Some(model),
            Slot::Sweep(i, c) => sweep_slots[i][c] = Some(model),
        }
    }
    let mut all = Vec::with_capacity(cfg.seeds);
    for ((i, Pretrained { ri, p, checkpoints: p_checkpoints }), slots) in
        pretrained.into_iter().enumerate().zip(target_slots)
    {
        let mut domains = Vec::with_capacity(targets.len());
        for (data, slot) in targets.iter().zip(slots) {
            let [Some(pt0), Some(pt1), Some(rit0), Some(rit1), Some(same0), Some(same1)] = slot else {
                unreachable!("every target model of every seed is trained above");
            };
            domains.push(DomainModels { kind: data.kind, pt: [pt0, pt1], rit: [rit0, rit1], rit_same: [same0, same1] });
        }
        let sweep = match sweep_index {
            Some(d) => {
                let mut sweep = Vec::with_capacity(p_checkpoints.len());
                let last = p_checkpoints.len() - 1;
                for (c, model) in sweep_slots[i].iter_mut().enumerate() {
                    let model =
                        if c == last { domains[d].pt[0].try_clone()? } else { model.take().expect("trained above") };
                    sweep.push((p_checkpoints[c].0, model));
                }
                sweep
            }
            None => Vec::new(),
        };
        all.push(SeedModels { seed: seeds[i], ri, p, p_checkpoints, domains, sweep });
    }
    Ok(Trainset { source_cnn, target_cnns, source, targets, seeds: all, lrs, sizing })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every weight of every model of a run, in a fixed order.
    fn all_weights(set: &Trainset) -> Vec<Vec<f32>> {
        let mut sets: Vec<&ParamSet> = Vec::new();
        for s in &set.seeds {
            sets.extend([&s.ri, &s.p.weights]);
            sets.extend(s.p_checkpoints.iter().map(|(_, w)| w));
            for m in &s.domains {
                sets.extend(m.pt.iter().chain(&m.rit).chain(&m.rit_same).map(|t| &t.weights));
            }
            sets.extend(s.sweep.iter().map(|(_, t)| &t.weights));
        }
        sets.iter().flat_map(|p| p.tensors().iter().map(|t| t.host().unwrap().to_f32().into_owned())).collect()
    }

    #[test]
    fn the_size_rule_picks_the_smallest_size_that_reaches_the_bar_and_else_the_cap() {
        // The second size is the first to reach the bar: chosen, though the third is better.
        assert_eq!(size_rule(&[0.2, 0.35, 0.5], 3, 0.3), Some((1, true)));
        // Reaching the bar exactly counts.
        assert_eq!(size_rule(&[0.3], 3, 0.3), Some((0, true)));
        // Below the bar so far, with sizes left: undecided.
        assert_eq!(size_rule(&[0.1, 0.2], 3, 0.3), None);
        // Below the bar at every size: the cap, marked as not reached.
        assert_eq!(size_rule(&[0.1, 0.2, 0.25], 3, 0.3), Some((2, false)));
        assert_eq!(size_rule(&[], 0, 0.3), None);
    }

    /// The sweep's figures are validation accuracies of the models the run keeps, its choice
    /// follows the rule, and the test split plays no part: a run with another test size sizes
    /// the same and trains the same models.
    #[test]
    fn the_sizing_sweep_reads_only_the_validation_split() {
        let cfg = Config { seeds: 1, ..Config::tiny() };
        let set = train_all(&cfg, &mut |_, _| {}).unwrap();
        for (d, sizing) in set.sizing.iter().enumerate() {
            let best: Vec<f64> = sizing.steps.iter().map(SizingStep::best).collect();
            let (index, reached) = size_rule(&best, cfg.train_per_class.len(), sizing.bar).unwrap();
            assert_eq!(index + 1, sizing.steps.len(), "the sweep stops at the chosen size");
            assert_eq!((sizing.per_class, sizing.reached), (cfg.train_per_class[index], reached));
            assert_eq!(sizing.bar, 3.0 / sizing.kind.classes() as f64);
            assert_eq!(set.targets[d].train.n, sizing.per_class * sizing.kind.classes());
            // Seed 0's first RI-T is the sweep's last model at the chosen rate.
            let rit = &set.seeds[0].domains[d].rit[0];
            let rate = cfg.lr_grid.iter().position(|&lr| lr == rit.options.lr).unwrap();
            let validation = set.target_cnns[d].evaluate(&rit.weights, &set.targets[d].validation).unwrap().accuracy;
            assert_eq!(sizing.steps.last().unwrap().validation[rate], validation);
        }
        let other_test = Config { target_test: 2 * cfg.target_test, ..cfg.clone() };
        let other = train_all(&other_test, &mut |_, _| {}).unwrap();
        assert_eq!(other.targets[0].test.n, 2 * cfg.target_test);
        for (a, b) in set.sizing.iter().zip(&other.sizing) {
            let validations = |s: &Sizing| s.steps.iter().map(|x| x.validation.clone()).collect::<Vec<_>>();
            assert_eq!((a.per_class, validations(a)), (b.per_class, validations(b)));
        }
        assert_eq!(all_weights(&set), all_weights(&other));
    }

    #[test]
    fn no_seeds_or_no_rates_is_an_invalid_argument() {
        let no_seeds = Config { seeds: 0, ..Config::tiny() };
        assert!(matches!(train_all(&no_seeds, &mut |_, _| {}), Err(Error::InvalidArgument(_))));
        let no_rates = Config { seeds: 1, lr_grid: vec![], ..Config::tiny() };
        assert!(matches!(train_all(&no_rates, &mut |_, _| {}), Err(Error::InvalidArgument(_))));
        let no_sizes = Config { seeds: 1, train_per_class: vec![], ..Config::tiny() };
        assert!(matches!(train_all(&no_sizes, &mut |_, _| {}), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn parallel_training_gives_the_models_of_a_serial_run() {
        let cfg = Config { seeds: 2, ..Config::tiny() };
        let on_threads = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| train_all(&cfg, &mut |_, _| {})).unwrap()
        };
        let (serial, parallel) = (on_threads(1), on_threads(4));
        assert_eq!(all_weights(&serial), all_weights(&parallel));
        assert_eq!(
            serial.lrs.iter().map(|l| (l.pt, l.rit)).collect::<Vec<_>>(),
            parallel.lrs.iter().map(|l| (l.pt, l.rit)).collect::<Vec<_>>()
        );
        // The grid's models at the chosen rates are seed 0's first P-T and first RI-T.
        for (d, lrs) in serial.lrs.iter().enumerate() {
            let m = &serial.seeds[0].domains[d];
            assert_eq!((m.pt[0].options.lr, m.rit[0].options.lr), (lrs.pt, lrs.rit));
            let point = lrs.grid.iter().find(|g| g.lr == lrs.pt).unwrap();
            assert_eq!(point.pt_loss, m.pt[0].train_loss);
        }
        // The sweep's last model is the first P-T of the sweep's domain, from P itself.
        let real = serial.target_index(cfg.sweep_domain).unwrap();
        for s in &serial.seeds {
            assert_eq!(s.sweep.len(), cfg.checkpoint_epochs.len());
            assert_eq!(s.sweep.last().unwrap().1.train_loss, s.domains[real].pt[0].train_loss);
            assert_ne!(s.sweep[0].1.train_loss, s.domains[real].pt[0].train_loss, "an earlier checkpoint differs");
        }
    }
}
