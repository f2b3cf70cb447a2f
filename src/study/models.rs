//! The study's models: RI, P, two P-T, two RI-T and two RI-T from one init, trained on the CPU.

use super::tasks::Task;
use super::{Config, Progress};
use crate::backend::Context;
use crate::error::Result;
use crate::geometry;
use crate::model::{Mlp, TrainOptions};
use crate::params::ParamSet;

/// The trained models, and the initial weights the analyses rewind to.
pub(super) struct Models {
    pub ri: ParamSet,
    pub p: ParamSet,
    pub pt: [ParamSet; 2],
    pub rit: [ParamSet; 2],
    pub rit_same: [ParamSet; 2],
    /// The initial weights of P-T (P with a fresh head) and of the RI-T models.
    pub pt_init: ParamSet,
    pub rit_init: [ParamSet; 2],
}

fn source_opts(cfg: &Config) -> TrainOptions {
    TrainOptions {
        epochs: cfg.source_epochs,
        batch: 32,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 0.0,
        seed: 100,
        ..Default::default()
    }
}
fn target_opts(cfg: &Config, pretrained: bool, seed: u64) -> TrainOptions {
    // Fine-tuning uses a smaller step, as the study's fine-tuning does.
    let lr = if pretrained { 0.01 } else { 0.05 };
    TrainOptions {
        epochs: cfg.target_epochs,
        batch: 16,
        lr,
        momentum: 0.9,
        weight_decay: 0.0,
        seed,
        ..Default::default()
    }
}

/// The sweep trains P-T and RI-T alike, so that their training losses compare optimisation
/// speed rather than step sizes.
pub(super) fn sweep_opts(cfg: &Config, seed: u64) -> TrainOptions {
    target_opts(cfg, false, seed)
}

/// P with a fresh head (the last layer re-initialised from `seed`).
fn with_fresh_head(ctx: &Context, mlp: &Mlp, p: &ParamSet, seed: u64) -> Result<ParamSet> {
    let fresh = mlp.init(seed)?;
    let head = mlp.layers() - 1;
    let mut out = p.try_clone()?;
    // Module `head` at the fresh init, the rest at P: a rewind of P's head to `fresh`.
    geometry::rewind(ctx, &fresh, p, head, 0.0, &mut out)?;
    Ok(out)
}

/// Trains every model of the study, reporting progress.
pub(super) fn train_models(
    ctx: &Context,
    mlp: &Mlp,
    cfg: &Config,
    src: &Task,
    tgt: &Task,
    progress: Progress,
) -> Result<Models> {
    let ri = mlp.init(1)?;
    let mut p = ri.try_clone()?;
    progress("training P on the source task", 0.02);
    mlp.train(&mut p, &src.train, &source_opts(cfg))?;
    let pt_init = with_fresh_head(ctx, mlp, &p, 7)?;
    let mut pt = [pt_init.try_clone()?, pt_init.try_clone()?];
    for (k, m) in pt.iter_mut().enumerate() {
        progress("fine-tuning P-T models", 0.08 + 0.02 * k as f64);
        mlp.train(m, &tgt.train, &target_opts(cfg, true, 200 + k as u64))?;
    }
    let rit_init = [mlp.init(2)?, mlp.init(3)?];
    let mut rit = [rit_init[0].try_clone()?, rit_init[1].try_clone()?];
    for (k, m) in rit.iter_mut().enumerate() {
        progress("training RI-T models", 0.12 + 0.02 * k as f64);
        mlp.train(m, &tgt.train, &target_opts(cfg, false, 300 + k as u64))?;
    }
    let mut rit_same = [rit_init[0].try_clone()?, rit_init[0].try_clone()?];
    for (k, m) in rit_same.iter_mut().enumerate() {
        // Same init as RI-T #1, other data orders.
        mlp.train(m, &tgt.train, &target_opts(cfg, false, 400 + k as u64))?;
    }
    Ok(Models { ri, p, pt, rit, rit_same, pt_init, rit_init })
}
