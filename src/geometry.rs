//! Weight-space arithmetic: norms, distances, cosine, interpolation and rewind of modules.
//!
//! Figures are per module of the first set (its [`Grouping`](crate::params::Grouping)) and in
//! total; sums run in f64 whatever the storage dtype, and only weights (F32, F64, F16, BF16)
//! count. Interpolation computes `(1 - lambda) a + lambda b` in f32 for f32, f16 and bf16 tensors
//! (f64 for f64 tensors) and rounds once to the storage dtype; `lambda = 0` and `lambda = 1`
//! copy the endpoints bit for bit.
//!
//! The work is memory-bound: every tensor is cut into chunks that run in parallel (rayon), each
//! chunk in a tight loop the compiler vectorises. Partial sums are added in a fixed order, so a
//! result does not depend on the number of threads. The per-chunk loops ([`kernels`]) work on
//! host slices and are what a device backend replaces.

use crate::backend::Context;
use crate::error::{fail, Error, Result};
use crate::params::{match_all, match_weights, HostSliceMut, ParamSet};
use crate::tensor::HostSlice;
use rayon::prelude::*;

/// Elements per parallel task: big enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 16;

/// Per-element kernels on host slices: the primitives a device backend would replace.
pub mod kernels {
    use half::slice::HalfFloatSliceExt;
    use half::{bf16, f16};

    /// Elements converted per block into stack scratch.
    const BLOCK: usize = 256;

    /// Conversion of a storage dtype to f64 in blocks.
    pub trait Load: Copy + Send + Sync {
        fn load(src: &[Self], dst: &mut [f64]);
    }
    impl Load for f64 {
        #[inline]
        fn load(src: &[f64], dst: &mut [f64]) {
            dst.copy_from_slice(src);
        }
    }
    impl Load for f32 {
        #[inline]
        fn load(src: &[f32], dst: &mut [f64]) {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = *s as f64;
            }
        }
    }
    impl Load for f16 {
        #[inline]
        fn load(src: &[f16], dst: &mut [f64]) {
            // half converts slices with F16C where the CPU has it.
            let mut tmp = [0f32; BLOCK];
            let tmp = &mut tmp[..src.len()];
            src.convert_to_f32_slice(tmp);
            for (d, s) in dst.iter_mut().zip(tmp.iter()) {
                *d = *s as f64;
            }
        }
    }
    impl Load for bf16 {
        #[inline]
        fn load(src: &[bf16], dst: &mut [f64]) {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = bf16_to_f32(s.to_bits()) as f64;
            }
        }
    }

    /// bf16 to f32 is exact: the bf16 bits are the top half of the f32.
    #[inline(always)]
    pub fn bf16_to_f32(bits: u16) -> f32 {
        f32::from_bits((bits as u32) << 16)
    }

    /// f32 to bf16, rounding to nearest even; NaN stays NaN (quietened).
    #[inline(always)]
    pub fn f32_to_bf16(x: f32) -> u16 {
        let b = x.to_bits();
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        let nan = ((b >> 16) as u16) | 0x0040;
        if x.is_nan() {
            nan
        } else {
            rounded
        }
    }

    /// Sums of a*a, b*b, a*b and (a-b)^2 over f64 blocks, with 4 independent accumulators each.
    #[inline]
    fn stats_f64(a: &[f64], b: &[f64], acc: &mut [[f64; 4]; 4]) {
        let (ca, ra) = (a.chunks_exact(4), a.len() % 4);
        let cb = b.chunks_exact(4);
        for (x, y) in ca.zip(cb) {
            for k in 0..4 {
                let d = x[k] - y[k];
                acc[0][k] += x[k] * x[k];
                acc[1][k] += y[k] * y[k];
                acc[2][k] += x[k] * y[k];
                acc[3][k] += d * d;
            }
        }
        let n = a.len();
        for i in n - ra..n {
            let d = a[i] - b[i];
            acc[0][0] += a[i] * a[i];
            acc[1][0] += b[i] * b[i];
            acc[2][0] += a[i] * b[i];
            acc[3][0] += d * d;
        }
    }

    #[inline]
    fn sq_diff_f64(a: &[f64], b: &[f64], acc: &mut [f64; 8]) {
        for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
            for k in 0..8 {
                let d = x[k] - y[k];
                acc[k] += d * d;
            }
        }
        let n = a.len();
        for i in n - n % 8..n {
            let d = a[i] - b[i];
            acc[0] += d * d;
        }
    }

    #[inline]
    fn sq_f64(a: &[f64], acc: &mut [f64; 8]) {
        for x in a.chunks_exact(8) {
            for k in 0..8 {
                acc[k] += x[k] * x[k];
            }
        }
        let n = a.len();
        for v in &a[n - n % 8..] {
            acc[0] += v * v;
        }
    }

    /// Sum of (a - b)^2 in f64.
    pub fn sum_sq_diff<A: Load, B: Load>(a: &[A], b: &[B]) -> f64 {
        assert_eq!(a.len(), b.len());
        let mut acc = [0f64; 8];
        let (mut xa, mut xb) = ([0f64; BLOCK], [0f64; BLOCK]);
        for (sa, sb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
            let n = sa.len();
            A::load(sa, &mut xa[..n]);
            B::load(sb, &mut xb[..n]);
            sq_diff_f64(&xa[..n], &xb[..n], &mut acc);
        }
        acc.iter().sum()
    }

    /// Sum of a^2 in f64.
    pub fn sum_sq<A: Load>(a: &[A]) -> f64 {
        let mut acc = [0f64; 8];
        let mut xa = [0f64; BLOCK];
        for sa in a.chunks(BLOCK) {
            let n = sa.len();
            A::load(sa, &mut xa[..n]);
            sq_f64(&xa[..n], &mut acc);
        }
        acc.iter().sum()
    }

    /// `[sum a^2, sum b^2, sum a b, sum (a - b)^2]` in f64.
    pub fn stats<A: Load, B: Load>(a: &[A], b: &[B]) -> [f64; 4] {
        assert_eq!(a.len(), b.len());
        let mut acc = [[0f64; 4]; 4];
        let (mut xa, mut xb) = ([0f64; BLOCK], [0f64; BLOCK]);
        for (sa, sb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
            let n = sa.len();
            A::load(sa, &mut xa[..n]);
            B::load(sb, &mut xb[..n]);
            stats_f64(&xa[..n], &xb[..n], &mut acc);
        }
        acc.map(|r| r.iter().sum())
    }

    /// out = wa a + wb b in f32 (f32 storage).
    pub fn lerp_f32(a: &[f32], b: &[f32], wa: f32, wb: f32, out: &mut [f32]) {
        assert!(a.len() == out.len() && b.len() == out.len());
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = wa * *x + wb * *y;
        }
    }

    /// out = wa a + wb b in f64 (f64 storage).
    pub fn lerp_f64(a: &[f64], b: &[f64], wa: f64, wb: f64, out: &mut [f64]) {
        assert!(a.len() == out.len() && b.len() == out.len());
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = wa * *x + wb * *y;
        }
    }

    /// out = wa a + wb b computed in f32, rounded once to f16.
    pub fn lerp_f16(a: &[f16], b: &[f16], wa: f32, wb: f32, out: &mut [f16]) {
        assert!(a.len() == out.len() && b.len() == out.len());
        let (mut xa, mut xb) = ([0f32; BLOCK], [0f32; BLOCK]);
        for ((sa, sb), so) in a
            .chunks(BLOCK)
            .zip(b.chunks(BLOCK))
            .zip(out.chunks_mut(BLOCK))
        {
            let n = sa.len();
            sa.convert_to_f32_slice(&mut xa[..n]);
            sb.convert_to_f32_slice(&mut xb[..n]);
            for (x, y) in xa[..n].iter_mut().zip(&xb[..n]) {
                *x = wa * *x + wb * *y;
            }
            so.convert_from_f32_slice(&xa[..n]);
        }
    }

    /// out = wa a + wb b computed in f32, rounded once to bf16.
    pub fn lerp_bf16(a: &[bf16], b: &[bf16], wa: f32, wb: f32, out: &mut [bf16]) {
        assert!(a.len() == out.len() && b.len() == out.len());
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            let v = wa * bf16_to_f32(x.to_bits()) + wb * bf16_to_f32(y.to_bits());
            *o = bf16::from_bits(f32_to_bf16(v));
        }
    }
}

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

fn check_host(ctx: &Context, sets: &[&ParamSet]) -> Result<()> {
    let _ = ctx; // host memory is computed on the CPU whatever the backend
    for s in sets {
        for t in s.tensors() {
            if t.device() >= 0 {
                fail!(
                    DeviceUnavailable,
                    "tensor {:?} lives on CUDA device {}; weight-space arithmetic on device memory is not available in this version",
                    t.name(),
                    t.device()
                );
            }
        }
    }
    Ok(())
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
                out.push(Task {
                    module: m,
                    ia,
                    ib: pairs[ia],
                    start,
                    end,
                });
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
            (H::F32(x), H::F32(y)) => kernels::$f(x, y),
            (H::F32(x), H::F64(y)) => kernels::$f(x, y),
            (H::F32(x), H::F16(y)) => kernels::$f(x, y),
            (H::F32(x), H::BF16(y)) => kernels::$f(x, y),
            (H::F64(x), H::F32(y)) => kernels::$f(x, y),
            (H::F64(x), H::F64(y)) => kernels::$f(x, y),
            (H::F64(x), H::F16(y)) => kernels::$f(x, y),
            (H::F64(x), H::BF16(y)) => kernels::$f(x, y),
            (H::F16(x), H::F32(y)) => kernels::$f(x, y),
            (H::F16(x), H::F64(y)) => kernels::$f(x, y),
            (H::F16(x), H::F16(y)) => kernels::$f(x, y),
            (H::F16(x), H::BF16(y)) => kernels::$f(x, y),
            (H::BF16(x), H::F32(y)) => kernels::$f(x, y),
            (H::BF16(x), H::F64(y)) => kernels::$f(x, y),
            (H::BF16(x), H::F16(y)) => kernels::$f(x, y),
            (H::BF16(x), H::BF16(y)) => kernels::$f(x, y),
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
        fail!(
            NonFinite,
            "module {module:?}: {what} is not finite (the weights hold NaN or Inf, or overflow f64)"
        );
    }
    Ok(v)
}

/// ||a_i - b_i||_2 for every module i of `a` and the total sqrt(sum_i ||a_i - b_i||^2).
pub fn distance(ctx: &Context, a: &ParamSet, b: &ParamSet) -> Result<Distances> {
    check_host(ctx, &[a, b])?;
    let pairs = match_weights(a, b, "a", "b")?;
    let sums = reduce(a, b, &pairs, |x, y| [dispatch2!(x, y, sum_sq_diff)])?;
    let mut modules = Vec::with_capacity(sums.len());
    for (m, s) in a.modules().iter().zip(&sums) {
        modules.push(check_finite(&m.name, "the distance", s[0])?.sqrt());
    }
    let total = sums.iter().map(|s| s[0]).sum::<f64>().sqrt();
    Ok(Distances { modules, total })
}

/// ||p_i||_2 for every module i of `p`, and the norm of all weights.
pub fn norms(ctx: &Context, p: &ParamSet) -> Result<Distances> {
    check_host(ctx, &[p])?;
    let pairs: Vec<usize> = (0..p.tensors().len()).collect();
    let sums = reduce(p, p, &pairs, |x, _| {
        [match x {
            HostSlice::F32(x) => kernels::sum_sq(x),
            HostSlice::F64(x) => kernels::sum_sq(x),
            HostSlice::F16(x) => kernels::sum_sq(x),
            HostSlice::BF16(x) => kernels::sum_sq(x),
        }]
    })?;
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
pub fn compare(
    ctx: &Context,
    a: &ParamSet,
    b: &ParamSet,
) -> Result<(Vec<ModuleGeometry>, ModuleGeometry)> {
    check_host(ctx, &[a, b])?;
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
        fail!(
            InvalidArgument,
            "{name} must be a finite number, got {lambda}"
        );
    }
    Ok(())
}

/// Rejects an output that shares memory with an input: the writes would race the reads.
fn check_disjoint(out: &ParamSet, inputs: &[&ParamSet]) -> Result<()> {
    let mut spans: Vec<(usize, usize, &str)> = out
        .tensors()
        .iter()
        .filter(|t| t.nbytes() > 0)
        .map(|t| {
            let (s, e) = t.addr_range();
            (s, e, t.name())
        })
        .collect();
    spans.sort();
    for set in inputs {
        for t in set.tensors().iter().filter(|t| t.nbytes() > 0) {
            let (s, e) = t.addr_range();
            // The first out span that ends after s.
            let k = spans.partition_point(|x| x.1 <= s);
            if let Some(x) = spans.get(k) {
                if x.0 < e {
                    fail!(
                        InvalidArgument,
                        "out tensor {:?} shares memory with input tensor {:?}; write into a separate set",
                        x.2,
                        t.name()
                    );
                }
            }
        }
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
    check_host(ctx, &[a, b, out])?;
    let pairs = match_weights(a, b, "a", "b")?;
    let out_of = match_all(a, out, "a", "out")?;
    check_disjoint(out, &[a, b])?;
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
    // Non-weights are copied from a; weights outside the moving module are copied from b.
    let tasks = tasks(a, &pairs, None);
    let moving_module = match moving {
        Moving::All => None,
        Moving::Module(m) => Some(m),
    };
    // Hand each task its own disjoint piece of out.
    let mut pieces: Vec<Option<HostSliceMut<'_>>> = Vec::new();
    let mut copies: Vec<(&[u8], &mut [u8])> = Vec::new();
    {
        let mut slots: Vec<Option<&mut crate::params::Tensor>> =
            out.tensors_mut().iter_mut().map(Some).collect();
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
    let wa = 1.0 - lambda;
    let wb = lambda;
    let mut jobs: Vec<(&Task, HostSliceMut<'_>)> = tasks
        .iter()
        .zip(pieces.into_iter().map(|p| p.expect("one piece per task")))
        .collect();
    jobs.par_iter_mut()
        .try_for_each(|(task, o)| -> Result<()> {
            let x = sub(a.tensors()[task.ia].host()?, task.start, task.end);
            let y = sub(b.tensors()[task.ib].host()?, task.start, task.end);
            let moves = moving_module.is_none_or(|m| m == task.module);
            let l = if moves { lambda } else { 1.0 };
            lerp_slice(
                x,
                y,
                l,
                if moves { wa } else { 0.0 },
                if moves { wb } else { 1.0 },
                o,
            )
        })?;
    copies
        .par_iter_mut()
        .for_each(|(src, dst)| dst.copy_from_slice(src));
    Ok(())
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
fn lerp_slice(
    a: HostSlice<'_>,
    b: HostSlice<'_>,
    lambda: f64,
    wa: f64,
    wb: f64,
    out: &mut HostSliceMut<'_>,
) -> Result<()> {
    use HostSlice as H;
    use HostSliceMut as M;
    let endpoint = if lambda == 0.0 {
        Some(a)
    } else if lambda == 1.0 {
        Some(b)
    } else {
        None
    };
    match (a, b, out) {
        (H::F32(x), H::F32(y), M::F32(o)) => match endpoint {
            Some(H::F32(e)) => o.copy_from_slice(e),
            _ => kernels::lerp_f32(x, y, wa as f32, wb as f32, o),
        },
        (H::F64(x), H::F64(y), M::F64(o)) => match endpoint {
            Some(H::F64(e)) => o.copy_from_slice(e),
            _ => kernels::lerp_f64(x, y, wa, wb, o),
        },
        (H::F16(x), H::F16(y), M::F16(o)) => match endpoint {
            Some(H::F16(e)) => o.copy_from_slice(e),
            _ => kernels::lerp_f16(x, y, wa as f32, wb as f32, o),
        },
        (H::BF16(x), H::BF16(y), M::BF16(o)) => match endpoint {
            Some(H::BF16(e)) => o.copy_from_slice(e),
            _ => kernels::lerp_bf16(x, y, wa as f32, wb as f32, o),
        },
        _ => {
            return Err(Error::Panic(
                "interpolation reached mixed dtypes after the dtype check".into(),
            ))
        }
    }
    Ok(())
}

/// Writes `(1 - lambda) a + lambda b` into `out` for any finite `lambda` (outside [0, 1] it
/// extrapolates). `out` must hold the weights of `a` (names, dtypes, shapes) and share no
/// memory with `a` or `b`; non-weight tensors of `a` are copied into `out` where it holds them.
pub fn interpolate(
    ctx: &Context,
    a: &ParamSet,
    b: &ParamSet,
    lambda: f64,
    out: &mut ParamSet,
) -> Result<()> {
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
        fail!(
            NotFound,
            "module index {module} is out of range: the set has {} modules",
            a.modules().len()
        );
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
            p.modules()
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
        ))
    })
}
