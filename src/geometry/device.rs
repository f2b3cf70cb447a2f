//! Weight-space arithmetic on sets whose tensors live in the memory of the context's CUDA device
//! (wrapped in place from PyTorch, libtorch, CUDA.jl, ... through [`ParamSet::wrap`] or
//! `tl_params_wrap`): where the tensors live, and the walk over the sets' tensors; the kernels of
//! `kernels/weights.cu` (host code in `backend/cuda/weights.rs`) run on that memory, and only
//! the per-tensor sums travel to the host. The semantics are the host path's: sums of squares in
//! f64, interpolation in f32 (f64 for f64 data) rounded once to the storage type, lambda 0 and 1
//! copying an endpoint bit for bit. Host sets are computed on the host whatever the backend: a
//! copy to the device and back would cost more than the arithmetic.

use crate::backend::cuda::device::{addr_mut, alloc_zeros, device_err, download, AnyBuffer, CudaDevice};
use crate::backend::cuda::weights;
use crate::backend::{Backend, Context};
use crate::error::{fail, Error, Result};
use crate::params::{ParamSet, Tensor};

/// Where the tensors of one call live.
pub(super) enum Placement<'c> {
    Host,
    Device(&'c CudaDevice),
}

/// All tensors of `sets` (those that hold elements) in host memory, or all on the CUDA device of
/// `ctx`; anything else is an error that says where each side lives.
pub(super) fn placement<'c>(ctx: &'c Context, sets: &[&ParamSet]) -> Result<Placement<'c>> {
    let tensors = || sets.iter().flat_map(|s| s.tensors()).filter(|t| t.nbytes() > 0);
    let Some(on_device) = tensors().find(|t| t.device() >= 0) else {
        return Ok(Placement::Host);
    };
    let ordinal = on_device.device();
    if let Some(t) = tensors().find(|t| t.device() != ordinal) {
        let place = |t: &Tensor| match t.device() {
            -1 => "host memory".to_string(),
            d => format!("CUDA device {d}"),
        };
        fail!(
            InvalidArgument,
            "tensor {:?} is in {} but tensor {:?} in {}; the sets of one call must live in one place",
            on_device.name(),
            place(on_device),
            t.name(),
            place(t)
        );
    }
    match (ctx.backend(), ctx.cuda_device()) {
        (Backend::Cuda, Some(dev)) if dev.ordinal() as i32 == ordinal => {
            dev.context()
                .bind_to_thread()
                .map_err(device_err("cuCtxSetCurrent"))?;
            Ok(Placement::Device(dev))
        }
        (Backend::Cuda, Some(dev)) => fail!(
            InvalidArgument,
            "the tensors live on CUDA device {ordinal}, but the context runs on CUDA device {}",
            dev.ordinal()
        ),
        _ => fail!(
            DeviceUnavailable,
            "tensor {:?} lives on CUDA device {ordinal}; computing on it needs a CUDA context for that device (TL_BACKEND_CUDA, or AUTO where the device works)",
            on_device.name()
        ),
    }
}

/// The tensor's memory as a typed device buffer, in place.
fn wrap(dev: &CudaDevice, t: &Tensor) -> Result<AnyBuffer> {
    let Some(dtype) = t.dtype().weight() else {
        fail!(UnsupportedDtype, "tensor {:?} is {}, not a float weight", t.name(), t.dtype().name())
    };
    // SAFETY: ParamSet::wrap's contract: numel elements of dtype at the address, on this device,
    // valid for reads and writes while the set lives, which outlasts the call.
    unsafe { AnyBuffer::wrap(dev, t.address(), dtype, t.numel()) }.map_err(|e| match e {
        Error::InvalidArgument(m) | Error::NullArgument(m) => {
            Error::InvalidArgument(format!("tensor {:?}: {m}", t.name()))
        }
        other => other,
    })
}

fn mixed(a: &Tensor, b: &Tensor) -> Error {
    Error::UnsupportedDtype(format!(
        "tensor {:?} is {} in one set and {} in the other; on a CUDA device both must have one dtype",
        a.name(),
        a.dtype().name(),
        b.dtype().name()
    ))
}

/// Per module of `a`: the sum over its weights of `(a - b)^2`, `b`'s tensors paired through
/// `pairs` (an index into `b` per tensor of `a`), or of `a^2` without `b`.
pub(super) fn module_sums(dev: &CudaDevice, a: &ParamSet, b: Option<(&ParamSet, &[usize])>) -> Result<Vec<f64>> {
    let mut sums = vec![0f64; a.modules().len()];
    for (m, module) in a.modules().iter().enumerate() {
        for &ia in &module.tensors {
            let ta = &a.tensors()[ia];
            if ta.numel() == 0 {
                continue;
            }
            let x = wrap(dev, ta)?;
            let y = match b {
                Some((b, pairs)) => {
                    let tb = &b.tensors()[pairs[ia]];
                    let y = wrap(dev, tb)?;
                    if y.dtype() != x.dtype() {
                        return Err(mixed(ta, tb));
                    }
                    Some(y)
                }
                None => None,
            };
            sums[m] += weights::sum_sq(dev, &x, y.as_ref())?;
        }
    }
    Ok(sums)
}

/// `out = (1 - lambda) a + lambda b` for the weights of module `moving` (every module when
/// `None`), `out = b` for the other weights, `out = a` for tensors that are not weights; `pairs`
/// maps `a`'s tensors to `b`'s, `out_of` to `out`'s. Waits for the kernels before returning, so
/// the caller's framework sees the results. Returns the index in `a` of the first weight whose
/// result holds a NaN or an Inf (each launch flags its own), as the host path checks.
#[allow(clippy::too_many_arguments)]
pub(super) fn interpolate(
    dev: &CudaDevice,
    a: &ParamSet,
    b: &ParamSet,
    pairs: &[usize],
    out: &ParamSet,
    out_of: &[Option<usize>],
    lambda: f64,
    moving: Option<usize>,
) -> Result<Option<usize>> {
    let mut flags = alloc_zeros::<i32>(dev, a.tensors().len().max(1), "non-finite flags")?;
    let pflags = addr_mut(dev, &mut flags);
    let mut module_of = vec![usize::MAX; a.tensors().len()];
    for (m, module) in a.modules().iter().enumerate() {
        for &t in &module.tensors {
            module_of[t] = m;
        }
    }
    for (i, ta) in a.tensors().iter().enumerate() {
        let Some(j) = out_of[i] else { continue };
        if ta.numel() == 0 {
            continue;
        }
        let (tb, l) = if ta.is_weight() {
            let moves = moving.is_none_or(|m| m == module_of[i]);
            (&b.tensors()[pairs[i]], if moves { lambda } else { 1.0 })
        } else {
            (ta, 0.0)
        };
        let to = &out.tensors()[j];
        let (x, y, mut o) = (wrap(dev, ta)?, wrap(dev, tb)?, wrap(dev, to)?);
        if y.dtype() != x.dtype() {
            return Err(mixed(ta, tb));
        }
        if o.dtype() != x.dtype() {
            return Err(mixed(ta, to));
        }
        // Non-weights are copies the host path does not check either.
        let flag = if ta.is_weight() { pflags + 4 * i as u64 } else { 0 };
        // SAFETY: the flag is 0 or tensor i's i32 in `flags`, which lives until the download
        // below has waited for every kernel.
        unsafe { weights::lerp(dev, &x, &y, l, &mut o, flag) }?;
    }
    let flags = download(dev, &flags, a.tensors().len(), "non-finite flags")?;
    dev.synchronize()?;
    Ok(flags.iter().position(|&f| f != 0))
}
