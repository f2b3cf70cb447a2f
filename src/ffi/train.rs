//! Training the built-in models through the C ABI: the size-versioned `tl_train_options`, shared
//! by the MLP (`tl_mlp_train`, here) and the CNN (`tl_cnn_train`, in `cnn.rs`).

use super::analysis::mlp_of;
use super::boundary::{element_count, handle_mut, to_usize, try_slice, try_slice_mut};
use super::criticality::check_version_size;
use super::{guard, tl_params};
use crate::error::{fail, Result, Status};
use crate::model::{Dataset, LrSchedule, TrainOptions};

/// How the learning rate changes from epoch to epoch. The values are fixed forever.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrScheduleKind {
    /// `lr` in every epoch.
    Constant = 0,
    /// `lr * step_factor^(epoch / step_every)`: multiplied by `step_factor` every `step_every`
    /// epochs.
    Step = 1,
    /// `lr * (1 + cos(pi * epoch / epochs)) / 2`: from `lr` down towards 0 over the run.
    Cosine = 2,
}

/// A `tl_lr_schedule` value as received from C.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct RawLrSchedule(pub u32);

/// Options of tl_mlp_train and tl_cnn_train. Fill the struct from tl_train_options_default()
/// and keep its `size`: fields added in later versions take their defaults for callers built
/// against an older, smaller struct (a `size` that ends inside a field is refused). Out-of-range
/// values are TL_STATUS_INVALID_ARGUMENT.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tl_train_options {
    pub size: usize,
    /// Passes over the data (default 10; 0 trains nothing).
    pub epochs: u64,
    /// Rows per minibatch (>= 1; default 32).
    pub batch: u64,
    /// The learning rate (finite, > 0; default 0.05).
    pub lr: f64,
    /// SGD momentum, in [0, 1) (default 0.9).
    pub momentum: f64,
    /// L2 weight decay added to the gradient (>= 0; default 0).
    pub weight_decay: f64,
    /// Seeds the order in which rows are visited each epoch (default 0).
    pub seed: u64,
    /// The learning-rate schedule (default TL_LR_SCHEDULE_CONSTANT).
    pub schedule: RawLrSchedule,
    /// TL_LR_SCHEDULE_STEP only: epochs between steps (>= 1; default 30) and the factor of each
    /// step (finite, > 0; default 0.1).
    pub step_every: u64,
    pub step_factor: f64,
}

super::criticality::versioned!(tl_train_options {
    size,
    epochs,
    batch,
    lr,
    momentum,
    weight_decay,
    seed,
    schedule,
    step_every,
    step_factor,
});

/// The step schedule's fields when another schedule is chosen.
const DEFAULT_STEP: (u64, f64) = (30, 0.1);

/// The defaults: 10 epochs, batch 32, lr 0.05, momentum 0.9, no weight decay, seed 0, a constant
/// learning rate.
#[no_mangle]
pub extern "C" fn tl_train_options_default() -> tl_train_options {
    let o = TrainOptions::default();
    let (schedule, (step_every, step_factor)) = match o.schedule {
        LrSchedule::Constant => (LrScheduleKind::Constant, DEFAULT_STEP),
        LrSchedule::Step { every, factor } => (LrScheduleKind::Step, (every as u64, factor)),
        LrSchedule::Cosine => (LrScheduleKind::Cosine, DEFAULT_STEP),
    };
    tl_train_options {
        size: std::mem::size_of::<tl_train_options>(),
        epochs: o.epochs as u64,
        batch: o.batch as u64,
        lr: o.lr,
        momentum: o.momentum,
        weight_decay: o.weight_decay,
        seed: o.seed,
        schedule: RawLrSchedule(schedule as u32),
        step_every,
        step_factor,
    }
}

/// The caller's options over the defaults, for the first `size` bytes the caller knows; NULL is
/// the defaults. The ranges are checked.
///
/// # Safety
/// `opts` is NULL or points to a struct of at least `opts->size` readable bytes (an older caller's
/// struct may be smaller than ours), starting with its `size` field.
pub(super) unsafe fn read_train_options(opts: *const tl_train_options) -> Result<TrainOptions> {
    let mut o = tl_train_options_default();
    if !opts.is_null() {
        // SAFETY: the caller's struct holds at least its `size` field, first.
        let size = unsafe { std::ptr::read_unaligned(opts.cast::<usize>()) };
        check_version_size::<tl_train_options>(size, "opts")?;
        let n = size.min(std::mem::size_of::<tl_train_options>());
        // SAFETY: the caller's struct has `size` readable bytes and ours `n` <= size writable ones;
        // every field is a plain integer or float (the enum field is a RawLrSchedule), so any
        // bytes are a valid value, checked below.
        unsafe { std::ptr::copy_nonoverlapping(opts.cast::<u8>(), (&mut o as *mut tl_train_options).cast::<u8>(), n) };
    }
    let schedule = match o.schedule.0 {
        0 => LrSchedule::Constant,
        1 => LrSchedule::Step { every: to_usize(o.step_every, "opts->step_every")?, factor: o.step_factor },
        2 => LrSchedule::Cosine,
        v => fail!(InvalidArgument, "opts->schedule: unknown value {v} (expected 0 = CONSTANT, 1 = STEP, 2 = COSINE)"),
    };
    let opts = TrainOptions {
        epochs: to_usize(o.epochs, "opts->epochs")?,
        batch: to_usize(o.batch, "opts->batch")?,
        lr: o.lr,
        momentum: o.momentum,
        weight_decay: o.weight_decay,
        seed: o.seed,
        schedule,
    };
    opts.check()?;
    Ok(opts)
}

/// Refuses an epoch_losses array of another length than the epochs (0: the caller wants none).
pub(super) fn check_losses_len(len: usize, opts: &TrainOptions) -> Result<()> {
    if len != 0 && len != opts.epochs {
        fail!(
            InvalidArgument,
            "n_epoch_losses is {len}: pass opts->epochs ({}) for the loss of each epoch, or 0 for none",
            opts.epochs
        );
    }
    Ok(())
}

/// Copies the epochs' losses into the caller's array (empty: none wanted).
pub(super) fn write_losses(losses: &[f64], out: &mut [f64]) {
    if !out.is_empty() {
        out.copy_from_slice(losses);
    }
}

/// Trains `params`, a set with the tensors of tl_mlp_init for widths `sizes` (f32 storage), in
/// place by minibatch SGD with momentum and weight decay on `rows` samples (`x` rows x sizes[0]
/// floats, row major; `labels` one class per row). `opts` NULL means tl_train_options_default().
/// The mean training loss of each epoch goes to epoch_losses, which holds opts->epochs values, or
/// is NULL with n_epoch_losses = 0. On failure the weights may be partly trained.
#[no_mangle]
pub unsafe extern "C" fn tl_mlp_train(
    sizes: *const u64,
    n_sizes: usize,
    params: *mut tl_params,
    x: *const f32,
    labels: *const u32,
    rows: u64,
    opts: *const tl_train_options,
    epoch_losses: *mut f64,
    n_epoch_losses: usize,
) -> Status {
    guard(|| {
        // SAFETY: sizes is NULL or n_sizes values; params NULL or a live set used by this call
        // alone; opts NULL or a struct of opts->size bytes (the C contract).
        let (mlp, p, opts) =
            unsafe { (mlp_of(sizes, n_sizes)?, handle_mut(params, "params")?, read_train_options(opts)?) };
        // SAFETY: epoch_losses is NULL or n_epoch_losses writable values (the C contract).
        let losses = unsafe { try_slice_mut(epoch_losses, n_epoch_losses, "epoch_losses") }?;
        check_losses_len(losses.len(), &opts)?;
        let rows = to_usize(rows, "rows")?;
        let dim = mlp.sizes()[0];
        let n = element_count(&[("rows", rows), ("sizes[0]", dim)])?;
        // SAFETY: x is NULL or rows x sizes[0] values, labels NULL or rows values (the C contract).
        let (x, y) = unsafe { (try_slice(x, n, "x")?.to_vec(), try_slice(labels, rows, "labels")?.to_vec()) };
        let data = Dataset::new(x, y, dim, mlp.classes())?;
        let got = mlp.train(p, &data, &opts)?;
        write_losses(&got, losses);
        Ok(())
    })
}
