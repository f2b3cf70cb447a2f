//! Linear CKA: `tl_matrix`, `tl_cka_linear`, `tl_cka_matrix` and the streaming accumulator.

use super::boundary::{
    destroy, element_count, hand_out, handle_mut, handle_ref, to_usize, try_mut, try_ref, try_slice, try_slice_mut,
    Handle,
};
use super::context::tl_context;
use super::{guard, guard_value, RawDType, RawEstimator};
use crate::cka::{self, CkaAccumulator, Estimator};
use crate::error::{fail, Result, Status};
use crate::tensor::{DType, HostSlice, Matrix};
use crate::Context;
use std::ffi::c_void;

/// The HSIC estimator: `tl_cka_estimator` as the header spells it. The Rust API's
/// [`Estimator`] has the same values; arguments arrive as [`RawEstimator`] and are checked.
///
/// cbindgen:prefix-with-name=false
/// cbindgen:rename-all=None
#[repr(C)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms, dead_code)]
pub enum CkaEstimator {
    /// ||Y~^T X~||_F^2 of the column-centered features (Kornblith et al. 2019).
    TL_CKA_BIASED = 0,
    /// The unbiased U-statistic of Song et al. (2012): needs at least 4 samples; can be
    /// slightly negative.
    TL_CKA_DEBIASED = 1,
}

/// A row-major matrix view: rows = samples, cols = features. Not owned: the memory stays the
/// caller's and must stay valid during the call that receives the view.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tl_matrix {
    /// The first element; aligned for `dtype`.
    pub data: *const c_void,
    pub dtype: RawDType,
    pub rows: u64,
    pub cols: u64,
    /// Elements between row starts; 0 means `cols`.
    pub row_stride: u64,
    /// -1: host memory; k >= 0: memory of CUDA device k.
    pub device: i32,
}

impl tl_matrix {
    /// A checked view of the caller's memory.
    ///
    /// # Safety
    /// `data` must point to `(rows - 1) * row_stride + cols` elements of `dtype` (host memory, or
    /// device memory of `device`) that nothing writes while `'a` lasts.
    pub(super) unsafe fn view<'a>(&self, name: &str) -> Result<Matrix<'a>> {
        let dtype = DType::from_raw(self.dtype.0, &format!("{name}.dtype"))?;
        let rows = to_usize(self.rows, &format!("{name}.rows"))?;
        let cols = to_usize(self.cols, &format!("{name}.cols"))?;
        let stride =
            if self.row_stride == 0 { cols } else { to_usize(self.row_stride, &format!("{name}.row_stride"))? };
        if cols == 0 {
            fail!(InvalidArgument, "{name}.cols is 0: a matrix needs at least one feature");
        }
        if stride < cols {
            fail!(InvalidArgument, "{name}.row_stride ({stride}) is smaller than {name}.cols ({cols})");
        }
        let len = if rows == 0 {
            0
        } else {
            (rows - 1)
                .checked_mul(stride)
                .and_then(|v| v.checked_add(cols))
                .filter(|&v| v.checked_mul(dtype.size()).is_some_and(|b| b <= isize::MAX as usize))
                .ok_or_else(|| {
                    crate::Error::InvalidArgument(format!(
                        "{name}: {rows} x {cols} with row_stride {stride} is too large"
                    ))
                })?
        };
        if self.device < -1 {
            fail!(InvalidArgument, "{name}.device is {}: use -1 for host memory or a CUDA device ordinal", self.device);
        }
        if self.device >= 0 {
            // SAFETY: forwarded from the caller's contract; the CUDA backend validates the pointer.
            return unsafe { Matrix::from_device(self.data as u64, dtype, self.device, rows, cols, stride) }
                .map_err(|e| prefix(e, name));
        }
        if len > 0 && self.data.is_null() {
            fail!(NullArgument, "{name}.data is NULL");
        }
        if !(self.data as usize).is_multiple_of(dtype.size()) {
            fail!(InvalidArgument, "{name}.data is not aligned to {} bytes for {}", dtype.size(), dtype.name());
        }
        // SAFETY: aligned (checked above), and `len` elements of `dtype` unwritten for 'a by this
        // function's contract; every bit pattern is a valid value of these float types.
        let slice = unsafe {
            match dtype {
                DType::F32 => HostSlice::F32(try_slice(self.data.cast::<f32>(), len, name)?),
                DType::F64 => HostSlice::F64(try_slice(self.data.cast::<f64>(), len, name)?),
                DType::F16 => HostSlice::F16(try_slice(self.data.cast::<half::f16>(), len, name)?),
                DType::BF16 => HostSlice::BF16(try_slice(self.data.cast::<half::bf16>(), len, name)?),
            }
        };
        Matrix::from_host(slice, rows, cols, stride).map_err(|e| prefix(e, name))
    }
}

fn prefix(e: crate::Error, name: &str) -> crate::Error {
    use crate::Error as E;
    match e {
        E::InvalidArgument(m) => E::InvalidArgument(format!("{name}: {m}")),
        E::ShapeMismatch(m) => E::ShapeMismatch(format!("{name}: {m}")),
        other => other,
    }
}

/// Views of `count` matrices at `ptr`, named `name[i]` in messages.
///
/// # Safety
/// `ptr` is NULL or points to `count` matrix descriptions, each valid as [`tl_matrix::view`]
/// requires, that nothing writes while `'a` lasts.
pub(super) unsafe fn views<'a>(ptr: *const tl_matrix, count: usize, name: &str) -> Result<Vec<Matrix<'a>>> {
    if count == 0 {
        fail!(InvalidArgument, "{name}: the count of matrices is 0");
    }
    // SAFETY: the caller's contract covers the descriptions and the memory they describe.
    unsafe { try_slice(ptr, count, name)?.iter().enumerate().map(|(i, m)| m.view(&format!("{name}[{i}]"))).collect() }
}

/// Linear CKA of `x` and `y` (rows are the same samples) with the given estimator, into *out.
/// Degenerate input (too few rows for the estimator, a layer with no variance) is
/// TL_STATUS_DEGENERATE_INPUT; NaN or Inf in the data is TL_STATUS_NON_FINITE.
#[no_mangle]
pub unsafe extern "C" fn tl_cka_linear(
    ctx: *mut tl_context,
    x: *const tl_matrix,
    y: *const tl_matrix,
    estimator: RawEstimator,
    out: *mut f64,
) -> Status {
    guard(|| {
        // SAFETY: ctx is NULL or a live context, x and y NULL or valid matrix descriptions of
        // readable memory, out NULL or valid for a write (the C contract).
        let (ctx, x, y, out) = unsafe {
            (handle_ref(ctx, "ctx")?, try_ref(x, "x")?.view("x")?, try_ref(y, "y")?.view("y")?, try_mut(out, "out")?)
        };
        let estimator = Estimator::from_raw(estimator.0, "estimator")?;
        *out = cka::linear_cka(ctx, &x, &y, estimator)?;
        Ok(())
    })
}

/// CKA of every pair: out[i * ny + j] = CKA(xs[i], ys[j]); `out` holds nx * ny values. Each
/// layer's Gram is formed once.
#[no_mangle]
pub unsafe extern "C" fn tl_cka_matrix(
    ctx: *mut tl_context,
    xs: *const tl_matrix,
    nx: usize,
    ys: *const tl_matrix,
    ny: usize,
    estimator: RawEstimator,
    out: *mut f64,
) -> Status {
    guard(|| {
        let pairs = element_count(&[("nx", nx), ("ny", ny)])?;
        // SAFETY: ctx is NULL or a live context, xs and ys NULL or nx and ny valid matrix
        // descriptions, out NULL or nx * ny writable values (the C contract).
        let (ctx, xs, ys, out) = unsafe {
            (handle_ref(ctx, "ctx")?, views(xs, nx, "xs")?, views(ys, ny, "ys")?, try_slice_mut(out, pairs, "out")?)
        };
        let estimator = Estimator::from_raw(estimator.0, "estimator")?;
        out.copy_from_slice(&cka::cka_matrix(ctx, &xs, &ys, estimator)?);
        Ok(())
    })
}

/// Exact streaming CKA of nx x ny layer pairs: feeding batches gives the same result as the
/// concatenated data, whatever the batch sizes. The first update fixes each layer's feature
/// count; a later batch with other counts is TL_STATUS_SHAPE_MISMATCH.
///
/// All-reduce across processes: state = a shift (tl_cka_accumulator_state_size's shift_len
/// values) and moments (moments_len values). Moments add up between accumulators with equal
/// shifts, so: every process updates; one broadcasts its exported shift; every process calls
/// tl_cka_accumulator_rebase with it; the moments are summed (MPI_Allreduce, NCCL); every process
/// calls tl_cka_accumulator_import with the shift and the summed moments.
///
/// Thread safety: one accumulator must not be used from two threads at once; separate
/// accumulators are independent.
pub struct tl_cka_accumulator {
    _opaque: [u8; 0],
}

/// What a `tl_cka_accumulator` handle points at: the accumulator and the backend it runs on.
pub(crate) struct AccumulatorOnContext {
    ctx: Context,
    acc: CkaAccumulator,
}

// SAFETY: tl_cka_accumulator is never instantiated; its pointers come from hand_out of an
// AccumulatorOnContext.
unsafe impl Handle for tl_cka_accumulator {
    type Target = AccumulatorOnContext;
}

/// Makes an accumulator for nx layers of x and ny layers of y on ctx's backend. The
/// accumulator keeps its own reference to the backend: ctx may be destroyed before it.
#[no_mangle]
pub unsafe extern "C" fn tl_cka_accumulator_create(
    ctx: *mut tl_context,
    nx: usize,
    ny: usize,
    estimator: RawEstimator,
    out: *mut *mut tl_cka_accumulator,
) -> Status {
    guard(|| {
        // SAFETY: out is NULL or valid for a write (the C contract).
        let out = unsafe { try_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: ctx is NULL or a live context (the C contract).
        let ctx = unsafe { handle_ref(ctx, "ctx") }?;
        let estimator = Estimator::from_raw(estimator.0, "estimator")?;
        let acc = CkaAccumulator::new(nx, ny, estimator)?;
        hand_out(AccumulatorOnContext { ctx: ctx.clone(), acc }, out);
        Ok(())
    })
}

/// Adds a batch: xs holds the accumulator's nx matrices, ys its ny, all with the same rows.
#[no_mangle]
pub unsafe extern "C" fn tl_cka_accumulator_update(
    acc: *mut tl_cka_accumulator,
    xs: *const tl_matrix,
    ys: *const tl_matrix,
) -> Status {
    guard(|| {
        // SAFETY: acc is NULL or a live accumulator used by this call alone (the C contract).
        let acc = unsafe { handle_mut(acc, "acc") }?;
        let (nx, ny) = acc.acc.layer_counts();
        // SAFETY: xs and ys are NULL or the accumulator's nx and ny valid matrix descriptions.
        let (xs, ys) = unsafe { (views(xs, nx, "xs")?, views(ys, ny, "ys")?) };
        acc.acc.update(&acc.ctx, &xs, &ys)
    })
}

/// Adds the state of `from` to `into` (same layer counts and feature counts).
#[no_mangle]
pub unsafe extern "C" fn tl_cka_accumulator_merge(
    into: *mut tl_cka_accumulator,
    from: *const tl_cka_accumulator,
) -> Status {
    guard(|| {
        // The state of `from` is copied before `into` is borrowed, so into == from is sound.
        // SAFETY: from is NULL or a live accumulator (the C contract).
        let from = unsafe { handle_ref(from, "from") }?.acc.clone();
        // SAFETY: into is NULL or a live accumulator, used by this call alone (the C contract).
        let into = unsafe { handle_mut(into, "into") }?;
        into.acc.merge(&from)
    })
}

/// Writes the CKA of every pair, out[i * ny + j], from the data seen so far (nx * ny values).
#[no_mangle]
pub unsafe extern "C" fn tl_cka_accumulator_result(acc: *const tl_cka_accumulator, out: *mut f64) -> Status {
    guard(|| {
        // SAFETY: acc is NULL or a live accumulator (the C contract).
        let acc = unsafe { handle_ref(acc, "acc") }?;
        let (nx, ny) = acc.acc.layer_counts();
        let pairs = element_count(&[("nx", nx), ("ny", ny)])?;
        // SAFETY: out is NULL or holds nx * ny writable values (the C contract).
        let out = unsafe { try_slice_mut(out, pairs, "out") }?;
        out.copy_from_slice(&acc.acc.result()?);
        Ok(())
    })
}

/// Frees an accumulator; NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn tl_cka_accumulator_destroy(acc: *mut tl_cka_accumulator) {
    // SAFETY: acc is NULL or an accumulator made by this library, destroyed once (the C contract).
    guard_value((), || unsafe { destroy(acc) })
}

/// Writes the lengths of the exported state: *shift_len values of shift and *moments_len of
/// moments. Both are 0 until the first update (or tl_cka_accumulator_set_widths) fixes the
/// layers' feature counts.
#[no_mangle]
pub unsafe extern "C" fn tl_cka_accumulator_state_size(
    acc: *const tl_cka_accumulator,
    shift_len: *mut usize,
    moments_len: *mut usize,
) -> Status {
    guard(|| {
        // SAFETY: acc is NULL or a live accumulator, the lengths NULL or valid for a write (the C
        // contract).
        let (acc, shift_len, moments_len) = unsafe {
            (handle_ref(acc, "acc")?, try_mut(shift_len, "shift_len")?, try_mut(moments_len, "moments_len")?)
        };
        (*shift_len, *moments_len) = acc.acc.state_len();
        Ok(())
    })
}

/// Exports the state: the shift and the moments (whose first value is the sample count).
#[no_mangle]
pub unsafe extern "C" fn tl_cka_accumulator_export(
    acc: *const tl_cka_accumulator,
    shift: *mut f64,
    shift_len: usize,
    moments: *mut f64,
    moments_len: usize,
) -> Status {
    guard(|| {
        // SAFETY: acc is NULL or a live accumulator, shift and moments NULL or writable for their
        // lengths (the C contract).
        let (acc, shift, moments) = unsafe {
            (
                handle_ref(acc, "acc")?,
                try_slice_mut(shift, shift_len, "shift")?,
                try_slice_mut(moments, moments_len, "moments")?,
            )
        };
        acc.acc.export(shift, moments)
    })
}

/// Re-expresses the accumulated moments relative to another shift (exactly, up to rounding);
/// later updates use it too. Use it to align processes before summing their moments.
#[no_mangle]
pub unsafe extern "C" fn tl_cka_accumulator_rebase(
    acc: *mut tl_cka_accumulator,
    shift: *const f64,
    shift_len: usize,
) -> Status {
    guard(|| {
        // SAFETY: acc is NULL or a live accumulator used by this call alone, shift NULL or
        // readable for its length (the C contract).
        let (acc, shift) = unsafe { (handle_mut(acc, "acc")?, try_slice(shift, shift_len, "shift")?) };
        acc.acc.rebase(shift)
    })
}

/// Replaces the state with an exported (possibly all-reduced) one. The layers' feature counts
/// must be fixed: by an update, or by tl_cka_accumulator_set_widths.
#[no_mangle]
pub unsafe extern "C" fn tl_cka_accumulator_import(
    acc: *mut tl_cka_accumulator,
    shift: *const f64,
    shift_len: usize,
    moments: *const f64,
    moments_len: usize,
) -> Status {
    guard(|| {
        // SAFETY: acc is NULL or a live accumulator used by this call alone, shift and moments
        // NULL or readable for their lengths (the C contract).
        let (acc, shift, moments) = unsafe {
            (
                handle_mut(acc, "acc")?,
                try_slice(shift, shift_len, "shift")?,
                try_slice(moments, moments_len, "moments")?,
            )
        };
        acc.acc.import(shift, moments)
    })
}

/// Fixes the feature counts of an accumulator that has seen no data (nx + ny values: x layers,
/// then y layers), so that an exported state can be imported into it.
#[no_mangle]
pub unsafe extern "C" fn tl_cka_accumulator_set_widths(
    acc: *mut tl_cka_accumulator,
    widths: *const u64,
    len: usize,
) -> Status {
    guard(|| {
        // SAFETY: acc is NULL or a live accumulator used by this call alone, widths NULL or
        // readable for `len` values (the C contract).
        let (acc, widths) = unsafe { (handle_mut(acc, "acc")?, try_slice(widths, len, "widths")?) };
        let widths = widths
            .iter()
            .enumerate()
            .map(|(i, &w)| to_usize(w, &format!("widths[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        acc.acc.set_widths(&widths)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_estimator_values_match_the_rust_api() {
        assert_eq!(Estimator::from_raw(CkaEstimator::TL_CKA_BIASED as u32, "e").unwrap(), Estimator::Biased);
        assert_eq!(Estimator::from_raw(CkaEstimator::TL_CKA_DEBIASED as u32, "e").unwrap(), Estimator::Debiased);
    }
}
