//! Layer-wise connectivity (Adilova et al., ICLR 2024): the interpolation curve and barrier when
//! only some modules move from A to B and every other weight stays at A. One module moved shows
//! which layer carries a barrier; the first k (or last k) modules moved show how far up (or
//! down) the network two models can be mixed without one.
//!
//! Point `lambda` is A with each moving module at `(1 - lambda) A + lambda B`, written as
//! [`geometry::interpolate`] writes it; the weights of the other modules are A's bit for bit.
//! Modules are A's (its grouping); align B first ([`super::apply`]) for the curve after alignment.

use crate::aliasing::ensure_disjoint;
use crate::backend::Context;
use crate::error::{fail, Result};
use crate::eval::{evaluate_points, Evaluator, Metric, Metrics};
use crate::geometry;
use crate::landscape::{curve_barrier, Barrier};
use crate::params::ParamSet;

/// Which of A's modules move (indices into `a.modules()`, in A's module order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moving {
    /// One module.
    Module(usize),
    /// The first k modules (k >= 1).
    First(usize),
    /// The last k modules (k >= 1).
    Last(usize),
    /// Modules `first .. first + count` (count >= 1): the C ABI's form of all of the above.
    Range { first: usize, count: usize },
}

impl Moving {
    /// The moving modules of a set with `count` modules, in order.
    pub fn modules(self, count: usize) -> Result<Vec<usize>> {
        match self {
            Moving::Module(m) if m < count => Ok(vec![m]),
            Moving::Module(m) => fail!(NotFound, "module index {m} is out of range: the set has {count} modules"),
            Moving::First(k) | Moving::Last(k) if k == 0 || k > count => {
                fail!(InvalidArgument, "{self:?}: k must be between 1 and the set's {count} modules")
            }
            Moving::First(k) => Ok((0..k).collect()),
            Moving::Last(k) => Ok((count - k..count).collect()),
            Moving::Range { first, count: k } if k == 0 || first.checked_add(k).is_none_or(|end| end > count) => {
                fail!(InvalidArgument, "modules {first} .. {first} + {k}: need 1 or more of the set's {count} modules")
            }
            Moving::Range { first, count: k } => Ok((first..first + k).collect()),
        }
    }
}

/// The metrics at each lambda of the layer-wise path from A (lambda = 0) to A with the `moving`
/// modules at B (lambda = 1); see the module docs. `live` receives the weights (the host's
/// wrapped model for a callback evaluator): it must hold the weights of `a` and share no memory
/// with `a` or `b`. The held modules are copied from A byte for byte in host memory, so when
/// some modules are held, a held tensor of `a` or `live` in CUDA device memory is
/// [`Error::DeviceUnavailable`](crate::Error::DeviceUnavailable) naming it, before anything is
/// evaluated; moving every module has nothing to hold and runs wherever interpolation runs.
pub fn layerwise_curve(
    ctx: &Context,
    ev: &mut dyn Evaluator,
    a: &ParamSet,
    b: &ParamSet,
    live: &mut ParamSet,
    lambdas: &[f64],
    moving: Moving,
) -> Result<Vec<Metrics>> {
    if lambdas.is_empty() {
        fail!(InvalidArgument, "the lambda grid is empty");
    }
    if let Some(l) = lambdas.iter().find(|l| !l.is_finite()) {
        fail!(InvalidArgument, "the lambda grid holds a non-finite value {l}");
    }
    let moved = moving.modules(a.modules().len())?;
    ensure_disjoint("live", live, &[("a", a), ("b", b)])?;
    // A's weights outside the moving modules, by name.
    let held: Vec<&str> = a
        .modules()
        .iter()
        .enumerate()
        .filter(|(m, _)| !moved.contains(m))
        .flat_map(|(_, module)| module.tensors.iter().map(|&t| a.tensors()[t].name()))
        .collect();
    ensure_held_on_host(&held, a, live)?;
    let mut extra = Vec::new();
    evaluate_points(ctx, ev, live, &mut extra, lambdas.len(), |k, out| {
        geometry::interpolate(ctx, a, b, lambdas[k], out)?;
        for name in &held {
            let t = out.tensor_index(name).expect("out holds a's weights (checked by interpolate)");
            let source = a.tensor(name).expect("a's own tensor").bytes()?;
            out.tensors_mut()[t].bytes_mut()?.copy_from_slice(source);
        }
        Ok(())
    })
}

/// Fails, naming the tensor, unless the held tensors of `a` (the source of the copies) and of
/// `live` (their destination) are in host memory: on a device set the copy would fail only after
/// the first point's interpolation, with a message about interpolation.
fn ensure_held_on_host(held: &[&str], a: &ParamSet, live: &ParamSet) -> Result<()> {
    for (set, which) in [(a, "a"), (live, "live")] {
        let on_device = held.iter().filter_map(|name| set.tensor(name)).find(|t| t.nbytes() > 0 && t.device() >= 0);
        if let Some(t) = on_device {
            fail!(
                DeviceUnavailable,
                "tensor {:?} of {which} lives on CUDA device {}, but the layer-wise curve holds the modules that do not move at A by copying them in host memory: use sets in host memory, or move every module (which runs on the device)",
                t.name(),
                t.device()
            );
        }
    }
    Ok(())
}

/// [`layerwise_curve`] and the barrier of `metric` on it (the grid must contain 0 and 1).
#[allow(clippy::too_many_arguments)]
pub fn layerwise_barrier(
    ctx: &Context,
    ev: &mut dyn Evaluator,
    a: &ParamSet,
    b: &ParamSet,
    live: &mut ParamSet,
    lambdas: &[f64],
    moving: Moving,
    metric: Metric,
    tolerance: f64,
) -> Result<(Vec<Metrics>, Barrier)> {
    let curve = layerwise_curve(ctx, ev, a, b, live, lambdas, moving)?;
    let barrier = curve_barrier(lambdas, &curve, metric, tolerance)?;
    Ok((curve, barrier))
}
