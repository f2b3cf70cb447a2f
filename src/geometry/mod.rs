//! Weight-space arithmetic: norms, distances, cosine, interpolation and rewind of modules.
//!
//! Figures are per module of the first set (its [`Grouping`](crate::params::Grouping)) and in
//! total; sums run in f64 whatever the storage dtype, and only weights (F32, F64, F16, BF16)
//! count. Interpolation computes `(1 - lambda) a + lambda b` as `fma(l, b, (1 - l) a)` in f32
//! for f32, f16 and bf16 tensors (f64 for f64 tensors), `l` being lambda rounded to that type,
//! and rounds once to the storage dtype: the same bits on the CPU and on a CUDA device;
//! `lambda = 0` and `lambda = 1` copy the endpoints bit for bit.
//!
//! The work is memory-bound: every tensor is cut into chunks that run in parallel (rayon), each
//! chunk in a tight vector loop (AVX2 intrinsics where the CPU has them, else loops the compiler
//! vectorises; the same bits either way). Partial sums are added in a fixed order, so a
//! result does not depend on the number of threads. The per-chunk loops are
//! [`crate::backend::cpu::weights`], the CPU twin of `kernels/weights.cu`. Sets wrapped over the
//! memory of a CUDA device are computed there, in place, by those kernels (with a CUDA context
//! for that device): distance, norms, interpolation and rewind; `compare` needs host sets.
//!
//! ```
//! use transferlens::{geometry, Context, ParamSet};
//! // A safetensors file holding fc.weight (F32 [2]) and fc.bias (F32 scalar).
//! fn file(w: [f32; 2], b: f32) -> Vec<u8> {
//!     let header = br#"{"fc.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"fc.bias":{"dtype":"F32","shape":[],"data_offsets":[8,12]}}"#;
//!     let mut f = (header.len() as u64).to_le_bytes().to_vec();
//!     f.extend_from_slice(header);
//!     for v in [w[0], w[1], b] {
//!         f.extend(v.to_le_bytes());
//!     }
//!     f
//! }
//! let a = ParamSet::from_bytes(&file([1.0, 2.0], 0.5), "a")?;
//! let b = ParamSet::from_bytes(&file([4.0, 6.0], 0.5), "b")?;
//! let ctx = Context::cpu();
//! let d = geometry::distance(&ctx, &a, &b)?;
//! assert_eq!(a.modules()[0].name, "fc"); // the first name component
//! assert_eq!(d.modules, [5.0]);
//! let mut mid = a.try_clone()?;
//! geometry::interpolate(&ctx, &a, &b, 0.5, &mut mid)?;
//! assert_eq!(geometry::distance(&ctx, &a, &mid)?.total, 2.5);
//! # Ok::<(), transferlens::Error>(())
//! ```

use crate::backend::cpu::weights::{self, Stores};
use crate::backend::Context;
use crate::error::{fail, Error, Result};
use crate::params::{match_all, match_weights, HostSliceMut, ParamSet};
use crate::tensor::{DType, HostSlice};
use device::Placement;
use rayon::prelude::*;

mod device;

/// Elements per parallel task: big enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 16;
/// Interpolations that write at least this much use non-temporal stores ([`Stores::Streaming`]):
/// with its two inputs such an output is past the last-level cache of most machines (or their
/// share of it), so caching it only costs a read of every line before it is written. Smaller
/// outputs stay in the cache for whoever reads them next (the study evaluates each one).
const STREAMING_MIN_BYTES: usize = 16 << 20;

/// One module's figures comparing sets `a` and `b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModuleGeometry {
    /// Elements of the module.
    pub numel: u64,
    /// ||a - b||_2.
    pub distance: f64,
    /// ||a||_2.
    pub norm_a: f64,
    /// ||b||_2.
    pub norm_b: f64,
    /// ||a - b|| / ||a||.
    pub relative: f64,
    /// <a, b> / (||a|| ||b||).
    pub cosine: f64,
}

/// Distances per module (of `a`'s grouping) and in total.
#[derive(Debug, Clone, PartialEq)]
pub struct Distances {
    pub modules: Vec<f64>,
    pub total: f64,
}

/// A task: a chunk of one tensor pair.
struct Task {
    module: usize,
    ia: usize,
    ib: usize,
    start: usize,
    end: usize,
}

/// Chunks of every weight of `a`'s modules, paired with `b` through `pairs`.
fn tasks(a: &ParamSet, pairs: &[usize], modules: Option<usize>) -> Vec<Task> {
    let mut out = Vec::new();
    for (m, module) in a.modules().iter().enumerate() {
        if modules.is_some_and(|only| only != m) {
            continue;
        }
        for &ia in &module.tensors {
            let n = a.tensors()[ia].numel();
            let mut start = 0;
            while start < n {
                let end = (start + CHUNK).min(n);
                out.push(Task { module: m, ia, ib: pairs[ia], start, end });
                start = end;
            }
        }
    }
    out
}

macro_rules! dispatch2 {
    ($a:expr, $b:expr, $f:ident) => {{
        use HostSlice as H;
        match ($a, $b) {
            (H::F32(x), H::F32(y)) => weights::$f(x, y),
            (H::F32(x), H::F64(y)) => weights::$f(x, y),
            (H::F32(x), H::F16(y)) => weights::$f(x, y),
            (H::F32(x), H::BF16(y)) => weights::$f(x, y),
            (H::F64(x), H::F32(y)) => weights::$f(x, y),
            (H::F64(x), H::F64(y)) => weights::$f(x, y),
            (H::F64(x), H::F16(y)) => weights::$f(x, y),
            (H::F64(x), H::BF16(y)) => weights::$f(x, y),
            (H::F16(x), H::F32(y)) => weights::$f(x, y),
            (H::F16(x), H::F64(y)) => weights::$f(x, y),
            (H::F16(x), H::F16(y)) => weights::$f(x, y),
            (H::F16(x), H::BF16(y)) => weights::$f(x, y),
            (H::BF16(x), H::F32(y)) => weights::$f(x, y),
            (H::BF16(x), H::F64(y)) => weights::$f(x, y),
            (H::BF16(x), H::F16(y)) => weights::$f(x, y),
            (H::BF16(x), H::BF16(y)) => weights::$f(x, y),
        }
    }};
}

fn sub(s: HostSlice<'_>, start: usize, end: usize) -> HostSlice<'_> {
    match s {
        HostSlice::F32(x) => HostSlice::F32(&x[start..end]),
        HostSlice::F64(x) => HostSlice::F64(&x[start..end]),
        HostSlice::F16(x) => HostSlice::F16(&x[start..end]),
        HostSlice::BF16(x) => HostSlice::BF16(&x[start..end]),
    }
}

/// Runs `f` on every task in parallel; returns the per-module sums of its results, added in
/// task order so that the result does not depend on scheduling.
fn reduce<const K: usize>(
    a: &ParamSet,
    b: &ParamSet,
    pairs: &[usize],
    f: impl Fn(HostSlice<'_>, HostSlice<'_>) -> [f64; K] + Sync,
) -> Result<Vec<[f64; K]>> {
    let tasks = tasks(a, pairs, None);
    let parts: Vec<[f64; K]> = tasks
        .par_iter()
        .map(|t| -> Result<[f64; K]> {
            let x = sub(a.tensors()[t.ia].host()?, t.start, t.end);
            let y = sub(b.tensors()[t.ib].host()?, t.start, t.end);
            Ok(f(x, y))
        })
        .collect::<Result<_>>()?;
    let mut sums = vec![[0f64; K]; a.modules().len()];
    for (t, p) in tasks.iter().zip(parts) {
        for k in 0..K {
            sums[t.module][k] += p[k];
        }
    }
    Ok(sums)
}

fn check_finite(module: &str, what: &str, v: f64) -> Result<f64> {
    if !v.is_finite() {
        fail!(NonFinite, "module {module:?}: {what} is not finite (the weights hold NaN or Inf, or overflow f64)");
    }
    Ok(v)
}

/// ||a_i - b_i||_2 for every module i of `a` and the total sqrt(sum_i ||a_i - b_i||^2).
pub fn distance(ctx: &Context, a: &ParamSet, b: &ParamSet) -> Result<Distances> {
    let place = device::placement(ctx, &[a, b])?;
    let pairs = match_weights(a, b, "a", "b")?;
    let sums = match place {
        Placement::Host => reduce(a, b, &pairs, |x, y| [dispatch2!(x, y, sum_sq_diff)])?,
        Placement::Device(dev) => device::module_sums(dev, a, Some((b, &pairs)))?.into_iter().map(|s| [s]).collect(),
    };
    let mut modules = Vec::with_capacity(sums.len());
    for (m, s) in a.modules().iter().zip(&sums) {
        modules.push(check_finite(&m.name, "the distance", s[0])?.sqrt());
    }
    let total = sums.iter().map(|s| s[0]).sum::<f64>().sqrt();
    Ok(Distances { modules, total })
}

/// The partial sums of (x - y)^2 over the chunks of one tensor pair, in chunk order: what
/// [`distance`] adds into a module's sum, for callers that stream tensor pairs one at a time
/// ([`crate::params::paired_distance`]).
pub(crate) fn sum_sq_diff_chunks(x: HostSlice<'_>, y: HostSlice<'_>) -> Result<Vec<f64>> {
    if x.len() != y.len() {
        fail!(ShapeMismatch, "{} elements against {}", x.len(), y.len());
    }
    let n = x.len();
    Ok((0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let (start, end) = (c * CHUNK, ((c + 1) * CHUNK).min(n));
            dispatch2!(sub(x, start, end), sub(y, start, end), sum_sq_diff)
        })
        .collect())
}

/// ||p_i||_2 for every module i of `p`, and the norm of all weights.
pub fn norms(ctx: &Context, p: &ParamSet) -> Result<Distances> {
    let sums = match device::placement(ctx, &[p])? {
        Placement::Host => {
            let pairs: Vec<usize> = (0..p.tensors().len()).collect();
            reduce(p, p, &pairs, |x, _| {
                [match x {
                    HostSlice::F32(x) => weights::sum_sq(x),
                    HostSlice::F64(x) => weights::sum_sq(x),
                    HostSlice::F16(x) => weights::sum_sq(x),
                    HostSlice::BF16(x) => weights::sum_sq(x),
                }]
            })?
        }
        Placement::Device(dev) => device::module_sums(dev, p, None)?.into_iter().map(|s| [s]).collect(),
    };
    let mut modules = Vec::with_capacity(sums.len());
    for (m, s) in p.modules().iter().zip(&sums) {
        modules.push(check_finite(&m.name, "the norm", s[0])?.sqrt());
    }
    let total = sums.iter().map(|s| s[0]).sum::<f64>().sqrt();
    Ok(Distances { modules, total })
}

fn geometry_of(name: &str, numel: u64, s: [f64; 4]) -> Result<ModuleGeometry> {
    for (v, what) in s.iter().zip(["||a||", "||b||", "<a, b>", "||a - b||"]) {
        check_finite(name, what, *v)?;
    }
    let (aa, bb, ab, dd) = (s[0], s[1], s[2], s[3]);
    if aa == 0.0 || bb == 0.0 {
        fail!(
            DegenerateInput,
            "module {name:?}: {} is all zeros, so the relative distance and cosine are undefined",
            if aa == 0.0 { "a" } else { "b" }
        );
    }
    Ok(ModuleGeometry {
        numel,
        distance: dd.sqrt(),
        norm_a: aa.sqrt(),
        norm_b: bb.sqrt(),
        relative: dd.sqrt() / aa.sqrt(),
        cosine: (ab / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0),
    })
}

/// Distance, norms, relative distance and cosine for every module of `a`, and over all weights.
/// A module that is all zeros in either set is [`Error::DegenerateInput`].
pub fn compare(ctx: &Context, a: &ParamSet, b: &ParamSet) -> Result<(Vec<ModuleGeometry>, ModuleGeometry)> {
    if let Placement::Device(dev) = device::placement(ctx, &[a, b])? {
        fail!(
            DeviceUnavailable,
            "compare needs inner products, which CUDA device {} does not compute yet; use distance and norms there, or compare host copies",
            dev.ordinal()
        );
    }
    let pairs = match_weights(a, b, "a", "b")?;
    let sums = reduce(a, b, &pairs, |x, y| dispatch2!(x, y, stats))?;
    let mut out = Vec::with_capacity(sums.len());
    let mut total = [0f64; 4];
    for (m, s) in a.modules().iter().zip(&sums) {
        out.push(geometry_of(&m.name, m.numel, *s)?);
        for k in 0..4 {
            total[k] += s[k];
        }
    }
    let total = geometry_of("(all weights)", a.weight_numel(), total)?;
    Ok((out, total))
}

/// Which tensors an interpolation moves.
#[derive(Debug, Clone, Copy)]
enum Moving {
    All,
    Module(usize),
}

fn check_lambda(lambda: f64, name: &str) -> Result<()> {
    if !lambda.is_finite() {
        fail!(InvalidArgument, "{name} must be a finite number, got {lambda}");
    }
    Ok(())
}

fn interpolate_impl(
    ctx: &Context,
    a: &ParamSet,
    b: &ParamSet,
    lambda: f64,
    moving: Moving,
    out: &mut ParamSet,
) -> Result<()> {
    check_lambda(lambda, "lambda")?;
    let place = device::placement(ctx, &[a, b, out])?;
    let pairs = match_weights(a, b, "a", "b")?;
    let out_of = match_all(a, out, "a", "out")?;
    crate::aliasing::ensure_disjoint("out", out, &[("a", a), ("b", b)])?;
    for (i, t) in a.tensors().iter().enumerate() {
        if t.is_weight() && t.dtype() != b.tensors()[pairs[i]].dtype() {
            fail!(
                UnsupportedDtype,
                "tensor {:?} is {} in a but {} in b; interpolation needs one dtype per tensor",
                t.name(),
                t.dtype().name(),
                b.tensors()[pairs[i]].dtype().name()
            );
        }
    }
    let moving_module = match moving {
        Moving::All => None,
        Moving::Module(m) => Some(m),
    };
    if let Placement::Device(dev) = place {
        return match device::interpolate(dev, a, b, &pairs, out, &out_of, lambda, moving_module)? {
            Some(i) => Err(non_finite_result(&a.tensors()[i], lambda)),
            None => Ok(()),
        };
    }
    // Non-weights are copied from a; weights outside the moving module are copied from b.
    let tasks = tasks(a, &pairs, None);
    // Hand each task its own disjoint piece of out.
    let mut pieces: Vec<Option<HostSliceMut<'_>>> = Vec::new();
    let mut copies: Vec<(&[u8], &mut [u8])> = Vec::new();
    {
        let mut slots: Vec<Option<&mut crate::params::Tensor>> = out.tensors_mut().iter_mut().map(Some).collect();
        let mut rest: Vec<Option<HostSliceMut<'_>>> = Vec::with_capacity(slots.len());
        for (i, t) in a.tensors().iter().enumerate() {
            let Some(j) = out_of[i] else {
                rest.push(None); // a non-weight that out does not hold
                continue;
            };
            let o = slots[j].take().expect("out tensors are distinct");
            if t.is_weight() {
                rest.push(Some(o.host_mut()?));
            } else {
                rest.push(None);
                copies.push((t.bytes()?, o.bytes_mut()?));
            }
        }
        for task in &tasks {
            let whole = rest[task.ia].take().expect("a weight has an out slice");
            let len = task.end - task.start;
            let (head, tail) = split_mut(whole, len);
            pieces.push(Some(head));
            rest[task.ia] = Some(tail);
        }
    }
    let written: usize =
        tasks.iter().map(|t| (t.end - t.start) * a.tensors()[t.ia].dtype().weight().map_or(0, DType::size)).sum();
    let stores = if written >= STREAMING_MIN_BYTES { Stores::Streaming } else { Stores::Cached };
    let mut jobs: Vec<(&Task, HostSliceMut<'_>)> =
        tasks.iter().zip(pieces.into_iter().map(|p| p.expect("one piece per task"))).collect();
    let finite: Vec<bool> = jobs
        .par_iter_mut()
        .map(|(task, o)| -> Result<bool> {
            let x = sub(a.tensors()[task.ia].host()?, task.start, task.end);
            let y = sub(b.tensors()[task.ib].host()?, task.start, task.end);
            let moves = moving_module.is_none_or(|m| m == task.module);
            lerp_slice(x, y, if moves { lambda } else { 1.0 }, o, stores)
        })
        .collect::<Result<_>>()?;
    // Non-finite results are an error, naming the first tensor (in a's order) that holds one.
    if let Some(k) = finite.iter().position(|&f| !f) {
        return Err(non_finite_result(&a.tensors()[tasks[k].ia], lambda));
    }
    copies.par_iter_mut().for_each(|(src, dst)| dst.copy_from_slice(src));
    Ok(())
}

/// The error for an interpolation whose result for tensor `t` (of `a`) holds a NaN or an Inf.
fn non_finite_result(t: &crate::params::Tensor, lambda: f64) -> Error {
    Error::NonFinite(format!(
        "tensor {:?}: (1 - lambda) a + lambda b is not finite at lambda = {lambda:e} (an input holds NaN or Inf, or the result overflows {})",
        t.name(),
        t.dtype().name()
    ))
}

fn split_mut(s: HostSliceMut<'_>, at: usize) -> (HostSliceMut<'_>, HostSliceMut<'_>) {
    match s {
        HostSliceMut::F32(x) => {
            let (h, t) = x.split_at_mut(at);
            (HostSliceMut::F32(h), HostSliceMut::F32(t))
        }
        HostSliceMut::F64(x) => {
            let (h, t) = x.split_at_mut(at);
            (HostSliceMut::F64(h), HostSliceMut::F64(t))
        }
        HostSliceMut::F16(x) => {
            let (h, t) = x.split_at_mut(at);
            (HostSliceMut::F16(h), HostSliceMut::F16(t))
        }
        HostSliceMut::BF16(x) => {
            let (h, t) = x.split_at_mut(at);
            (HostSliceMut::BF16(h), HostSliceMut::BF16(t))
        }
    }
}

/// out = (1 - lambda) a + lambda b on one chunk; lambda 0 and 1 copy an endpoint exactly.
/// Returns whether every result is finite.
fn lerp_slice(
    a: HostSlice<'_>,
    b: HostSlice<'_>,
    lambda: f64,
    out: &mut HostSliceMut<'_>,
    stores: Stores,
) -> Result<bool> {
    use HostSlice as H;
    use HostSliceMut as M;
    /// The endpoint `lambda` names exactly, copied, or else the interpolation `lerp`.
    fn endpoint_or<T: weights::Finite>(
        lambda: f64,
        (x, y): (&[T], &[T]),
        o: &mut [T],
        lerp: impl FnOnce(&mut [T]) -> bool,
    ) -> bool {
        let endpoint = if lambda == 0.0 {
            x
        } else if lambda == 1.0 {
            y
        } else {
            return lerp(o);
        };
        o.copy_from_slice(endpoint);
        weights::all_finite(o)
    }
    let l32 = lambda as f32;
    Ok(match (a, b, out) {
        (H::F32(x), H::F32(y), M::F32(o)) => endpoint_or(lambda, (x, y), o, |o| weights::lerp32(x, y, l32, o, stores)),
        (H::F64(x), H::F64(y), M::F64(o)) => {
            endpoint_or(lambda, (x, y), o, |o| weights::lerp_f64(x, y, lambda, o, stores))
        }
        (H::F16(x), H::F16(y), M::F16(o)) => endpoint_or(lambda, (x, y), o, |o| weights::lerp32(x, y, l32, o, stores)),
        (H::BF16(x), H::BF16(y), M::BF16(o)) => {
            endpoint_or(lambda, (x, y), o, |o| weights::lerp32(x, y, l32, o, stores))
        }
        _ => return Err(Error::Panic("interpolation reached mixed dtypes after the dtype check".into())),
    })
}

/// Writes `(1 - lambda) a + lambda b` into `out` for any finite `lambda` (outside [0, 1] it
/// extrapolates). `out` must hold the weights of `a` (names, dtypes, shapes) and share no
/// memory with `a` or `b`; non-weight tensors of `a` are copied into `out` where it holds them.
/// A result holding NaN or Inf (a non-finite input, or an overflow at a large `lambda`) is
/// [`Error::NonFinite`] naming the first such tensor; `out` then holds partial results.
pub fn interpolate(ctx: &Context, a: &ParamSet, b: &ParamSet, lambda: f64, out: &mut ParamSet) -> Result<()> {
    interpolate_impl(ctx, a, b, lambda, Moving::All, out)
}

/// Moves module `module` (an index into `a`'s modules) to `(1 - lambda) a + lambda b` and keeps
/// every other weight at `b`; non-weight tensors are copied from `a`.
pub fn interpolate_module(
    ctx: &Context,
    a: &ParamSet,
    b: &ParamSet,
    lambda: f64,
    module: usize,
    out: &mut ParamSet,
) -> Result<()> {
    if module >= a.modules().len() {
        fail!(NotFound, "module index {module} is out of range: the set has {} modules", a.modules().len());
    }
    interpolate_impl(ctx, a, b, lambda, Moving::Module(module), out)
}

/// Rewinds module `module` of `final_` toward its value in `initial`:
/// theta_i = (1 - alpha) initial_i + alpha final_i, every other weight at `final_`. alpha = 1
/// gives the final weights, alpha = 0 the module at its initial value (the path of module
/// criticality and rewind curves). Non-weight tensors are copied from `initial`.
pub fn rewind(
    ctx: &Context,
    initial: &ParamSet,
    final_: &ParamSet,
    module: usize,
    alpha: f64,
    out: &mut ParamSet,
) -> Result<()> {
    check_lambda(alpha, "alpha")?;
    interpolate_module(ctx, initial, final_, alpha, module, out)
}

/// The module called `name` of `p`.
pub fn module_named(p: &ParamSet, name: &str) -> Result<usize> {
    p.module_index(name).ok_or_else(|| {
        Error::NotFound(format!(
            "no module {name:?}; the modules are {:?}",
            p.modules().iter().map(|m| m.name.as_str()).collect::<Vec<_>>()
        ))
    })
}
