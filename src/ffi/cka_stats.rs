//! CKA's uncertainty through the C ABI: one call gives an interval (jackknife or bootstrap), the
//! permutation null and the most influential samples of CKA(x, y), each when asked for. The options and the
//! report are size-versioned like the criticality structs (see `criticality.rs`).

use super::boundary::{handle_ref, try_ref, try_slice_mut};
use super::cka::tl_matrix;
use super::criticality::{check_version_size, versioned};
use super::{guard, tl_context, RawEstimator};
use crate::cka::{self, Estimator, IntervalKind};
use crate::error::{fail, Result, Status};

/// Options of tl_cka_statistics. Fill the struct from tl_cka_stats_options_default() and keep
/// its `size`: fields added in later versions take their defaults for callers built against an
/// older, smaller struct.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tl_cka_stats_options {
    pub size: usize,
    /// The estimator (default TL_CKA_BIASED).
    pub estimator: RawEstimator,
    /// 0: no interval. Otherwise an interval of opts->interval's kind: for the bootstrap kinds
    /// (PERCENTILE, BCA) this many resamples, at least 2; the jackknife (JACKKNIFE, the
    /// default) draws none and takes any non-zero value as the request (default 1000).
    pub resamples: u64,
    /// The interval's level, strictly between 0 and 1 (default 0.95).
    pub level: f64,
    /// Blocks the samples are dealt into for the bootstrap (default 0: every sample its own
    /// block up to 64 samples, else 64 blocks; at most the number of samples).
    pub blocks: u64,
    /// Row permutations of y for the null (default 0: no null).
    pub permutations: u64,
    /// Seeds the blocks, the resamples and the permutations (default 0).
    pub seed: u64,
    /// How the interval is formed (default TL_CKA_INTERVAL_JACKKNIFE; callers built before this
    /// field existed get TL_CKA_INTERVAL_PERCENTILE, what they got then).
    pub interval: RawInterval,
}

/// How the interval is formed: `tl_cka_interval` as the header spells it; arguments arrive as
/// [`RawInterval`] and are checked.
///
/// cbindgen:prefix-with-name=false
/// cbindgen:rename-all=None
#[repr(C)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms, dead_code)]
pub enum CkaInterval {
    /// Bootstrap: the (1 - level) / 2 and (1 + level) / 2 quantiles of the resampled values.
    TL_CKA_INTERVAL_PERCENTILE = 0,
    /// Bootstrap, bias-corrected and accelerated (Efron 1987).
    TL_CKA_INTERVAL_BCA = 1,
    /// The jackknife interval around the bias-corrected estimate, from the n leave-one-out
    /// values (no resamples): the default, and the only kind that covers at its level on layers
    /// wide against n (docs/analyses.md, "Uncertainty").
    TL_CKA_INTERVAL_JACKKNIFE = 2,
}

/// A `tl_cka_interval` value as received from C.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct RawInterval(pub u32);

/// The interval a caller asked for: the jackknife's, or a bootstrap interval of a kind.
enum Interval {
    Jackknife,
    Bootstrap(IntervalKind),
}

impl RawInterval {
    fn interval(self) -> Result<Interval> {
        Ok(match self.0 {
            0 => Interval::Bootstrap(IntervalKind::Percentile),
            1 => Interval::Bootstrap(IntervalKind::Bca),
            2 => Interval::Jackknife,
            raw => fail!(
                InvalidArgument,
                "opts->interval: unknown interval value {raw} (expected 0 = PERCENTILE, 1 = BCA, 2 = JACKKNIFE)"
            ),
        })
    }
}

/// The defaults: biased estimator, a 0.95 jackknife interval, no null, seed 0 (1000 resamples in
/// automatic blocks for a bootstrap interval).
#[no_mangle]
pub extern "C" fn tl_cka_stats_options_default() -> tl_cka_stats_options {
    tl_cka_stats_options {
        size: std::mem::size_of::<tl_cka_stats_options>(),
        estimator: RawEstimator(Estimator::Biased as u32),
        resamples: 1000,
        level: 0.95,
        blocks: 0,
        permutations: 0,
        seed: 0,
        interval: RawInterval(CkaInterval::TL_CKA_INTERVAL_JACKKNIFE as u32),
    }
}

/// What tl_cka_statistics found. Set `size` to sizeof(tl_cka_stats_report) before the call:
/// the library writes only the bytes the caller's struct holds. Values of a statistic that was
/// not asked for are NaN (counts 0).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tl_cka_stats_report {
    pub size: usize,
    /// CKA of all the data.
    pub cka: f64,
    /// The interval (of opts->interval's kind) and its standard error: the standard deviation
    /// of the resampled values, or the jackknife's.
    pub lower: f64,
    pub upper: f64,
    pub std_error: f64,
    /// Resamples left out because a layer had no variance in them (very small n only).
    pub degenerate_resamples: u64,
    /// Blocks the samples were dealt into, and the largest block's size.
    pub blocks: u64,
    pub block_size: u64,
    /// The permutation p-value (1 + #{null >= cka}) / (1 + permutations), the null's mean and
    /// standard deviation.
    pub p_value: f64,
    pub null_mean: f64,
    pub null_std: f64,
    /// Entries written to top_samples and top_deltas: min(top_count, rows).
    pub top_written: u64,
    /// BCa's bias correction z0 (for either bootstrap interval) and acceleration a (BCa only:
    /// NaN for a percentile interval, which does not compute it); see the Rust
    /// `BootstrapInterval`. NaN for the jackknife interval.
    pub bias_correction: f64,
    pub acceleration: f64,
    /// The jackknife interval's centre, the bias-corrected estimate
    /// n cka - (n - 1) mean_i CKA(without i); NaN for the bootstrap intervals.
    pub jackknife_estimate: f64,
}

versioned!(tl_cka_stats_options { size, estimator, resamples, level, blocks, permutations, seed, interval });
versioned!(tl_cka_stats_report {
    size,
    cka,
    lower,
    upper,
    std_error,
    degenerate_resamples,
    blocks,
    block_size,
    p_value,
    null_mean,
    null_std,
    top_written,
    bias_correction,
    acceleration,
    jackknife_estimate,
});

/// The caller's options over the defaults, for the first `size` bytes the caller knows.
///
/// # Safety
/// `opts` is NULL or points to a struct of at least `opts->size` readable bytes, starting with
/// its `size` field.
unsafe fn read_options(opts: *const tl_cka_stats_options) -> Result<tl_cka_stats_options> {
    let mut o = tl_cka_stats_options_default();
    if !opts.is_null() {
        // SAFETY: the caller's struct holds at least its `size` field, first.
        let size = unsafe { std::ptr::read_unaligned(opts.cast::<usize>()) };
        check_version_size::<tl_cka_stats_options>(size, "opts")?;
        let n = size.min(std::mem::size_of::<tl_cka_stats_options>());
        // SAFETY: the caller's struct has `size` readable bytes and ours `n` <= size writable
        // ones; every field is a plain integer or float, so any bytes are a valid value.
        unsafe {
            std::ptr::copy_nonoverlapping(opts.cast::<u8>(), (&mut o as *mut tl_cka_stats_options).cast::<u8>(), n)
        };
        if n < std::mem::offset_of!(tl_cka_stats_options, interval) + std::mem::size_of::<RawInterval>() {
            // Built before `interval` existed: the percentile interval those callers got then.
            o.interval = RawInterval(CkaInterval::TL_CKA_INTERVAL_PERCENTILE as u32);
        }
    }
    Ok(o)
}

fn to_usize(v: u64, what: &str) -> Result<usize> {
    usize::try_from(v).or_else(|_| fail!(InvalidArgument, "{what} = {v} does not fit in this machine's size_t"))
}

/// How far to trust CKA(x, y) (docs/analyses.md, section 1, "Uncertainty"): with
/// opts->resamples > 0 an interval (jackknife, or bootstrap BCa or percentile: opts->interval); with opts->permutations > 0 a
/// permutation null; with top_count > 0 the top_count samples whose removal changes CKA most,
/// largest |change| first, their row indices into top_samples and CKA(without) - CKA(all) into
/// top_deltas (both NULL when top_count is 0). `opts` NULL means tl_cka_stats_options_default().
/// Runs on the CPU whatever the context's backend; x and y must be in host memory. Errors:
/// TL_STATUS_INVALID_ARGUMENT for an option out of range (named), TL_STATUS_DEGENERATE_INPUT
/// for too few samples or a layer without variance, TL_STATUS_NON_FINITE for NaN or Inf.
#[no_mangle]
pub unsafe extern "C" fn tl_cka_statistics(
    ctx: *mut tl_context,
    x: *const tl_matrix,
    y: *const tl_matrix,
    opts: *const tl_cka_stats_options,
    out: *mut tl_cka_stats_report,
    top_samples: *mut u64,
    top_deltas: *mut f64,
    top_count: u64,
) -> Status {
    guard(|| {
        let top_count = to_usize(top_count, "top_count")?;
        // SAFETY: ctx is NULL or a live context, x and y NULL or valid matrix descriptions of
        // readable memory, opts NULL or a struct of opts->size bytes, out NULL or a struct of
        // out->size writable bytes, the top buffers NULL or top_count writable values (the C
        // contract).
        let (ctx, x, y, o, out_size) = unsafe {
            if out.is_null() {
                fail!(NullArgument, "out is NULL");
            }
            let out_size = std::ptr::read_unaligned(out.cast::<usize>());
            check_version_size::<tl_cka_stats_report>(out_size, "out")?;
            (
                handle_ref(ctx, "ctx")?,
                try_ref(x, "x")?.view("x")?,
                try_ref(y, "y")?.view("y")?,
                read_options(opts)?,
                out_size,
            )
        };
        let estimator = Estimator::from_raw(o.estimator.0, "opts->estimator")?;
        let (resamples, blocks) = (to_usize(o.resamples, "opts->resamples")?, to_usize(o.blocks, "opts->blocks")?);
        let permutations = to_usize(o.permutations, "opts->permutations")?;
        let interval = o.interval.interval()?;
        let mut report = tl_cka_stats_report {
            size: std::mem::size_of::<tl_cka_stats_report>(),
            cka: f64::NAN,
            lower: f64::NAN,
            upper: f64::NAN,
            std_error: f64::NAN,
            degenerate_resamples: 0,
            blocks: 0,
            block_size: 0,
            p_value: f64::NAN,
            null_mean: f64::NAN,
            null_std: f64::NAN,
            top_written: 0,
            bias_correction: f64::NAN,
            acceleration: f64::NAN,
            jackknife_estimate: f64::NAN,
        };
        // The jackknife interval and the top samples share the leave-one-out values.
        let wants_jackknife = resamples > 0 && matches!(interval, Interval::Jackknife);
        let left_out = (wants_jackknife || top_count > 0).then(|| cka::influence(&x, &y, estimator)).transpose()?;
        if resamples > 0 {
            match interval {
                Interval::Jackknife => {
                    let ci = left_out.as_ref().expect("computed above").jackknife(o.level)?;
                    report.cka = ci.cka;
                    (report.lower, report.upper, report.std_error) = (ci.lower, ci.upper, ci.std_error);
                    report.jackknife_estimate = ci.estimate;
                }
                Interval::Bootstrap(kind) => {
                    let ci = cka::bootstrap(&x, &y, estimator, o.level, kind, resamples, blocks, o.seed)?;
                    report.cka = ci.cka;
                    (report.lower, report.upper, report.std_error) = (ci.lower, ci.upper, ci.std_error);
                    report.degenerate_resamples = ci.degenerate as u64;
                    (report.blocks, report.block_size) = (ci.blocks as u64, ci.block_size as u64);
                    (report.bias_correction, report.acceleration) =
                        (ci.bias_correction, ci.acceleration.unwrap_or(f64::NAN));
                }
            }
        }
        if permutations > 0 {
            let null = cka::permutation_null(&x, &y, estimator, permutations, o.seed)?;
            report.cka = null.cka;
            (report.p_value, report.null_mean, report.null_std) = (null.p_value, null.mean, null.std);
        }
        if let Some(influence) = left_out.as_ref().filter(|_| top_count > 0) {
            // SAFETY: top_samples and top_deltas are NULL or hold top_count writable values (the
            // C contract).
            let (samples, deltas) = unsafe {
                (
                    try_slice_mut(top_samples, top_count, "top_samples")?,
                    try_slice_mut(top_deltas, top_count, "top_deltas")?,
                )
            };
            report.cka = influence.cka;
            let top = influence.top(top_count);
            for (k, (i, d)) in top.iter().enumerate() {
                (samples[k], deltas[k]) = (*i as u64, *d);
            }
            report.top_written = top.len() as u64;
        }
        if report.cka.is_nan() {
            // No statistic asked for: the CKA alone.
            report.cka = cka::linear_cka(ctx, &x, &y, estimator)?;
        }
        let n = out_size.min(std::mem::size_of::<tl_cka_stats_report>());
        report.size = n;
        // SAFETY: `out` is non-NULL (checked above) with out->size >= n writable bytes; `report`
        // has size_of >= n readable ones; distinct objects.
        unsafe {
            std::ptr::copy_nonoverlapping((&report as *const tl_cka_stats_report).cast::<u8>(), out.cast::<u8>(), n)
        };
        Ok(())
    })
}
