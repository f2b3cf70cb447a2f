//! Evaluators: the metrics (loss, 0-1 error, accuracy) of a parameter set on an evaluation set.
//!
//! Two implementations sit behind [`Evaluator`]: the built-in MLP on a data set
//! ([`MlpEvaluator`]), and a host function ([`FnEvaluator`] in Rust; a C function pointer through
//! the C ABI) that evaluates the host's own model after the library has written the weights into
//! a wrapped (live) set. A host whose model has batch-norm layers recomputes their running
//! statistics inside the callback (a pass over some training batches in train mode) before it
//! evaluates, since interpolated or perturbed weights invalidate them.
//!
//! The analyses write each point into scratch sets and ask the evaluator for their metrics,
//! up to [`Evaluator::batch`] sets per call: the MLP evaluates them in parallel, a host callback
//! sees one live set at a time.

use crate::error::{fail, Result};
use crate::model::{Dataset, Mlp};
use crate::params::ParamSet;
use std::cell::RefCell;

pub use crate::model::Metrics;

/// Which metric an analysis reads from [`Metrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Loss,
    Error,
    Accuracy,
}

impl Metric {
    pub fn of(self, m: &Metrics) -> f64 {
        match self {
            Metric::Loss => m.loss,
            Metric::Error => m.error,
            Metric::Accuracy => m.accuracy,
        }
    }
    /// Whether a larger value is worse (loss, error) rather than better (accuracy).
    pub fn larger_is_worse(self) -> bool {
        !matches!(self, Metric::Accuracy)
    }
    pub fn name(self) -> &'static str {
        match self {
            Metric::Loss => "loss",
            Metric::Error => "error",
            Metric::Accuracy => "accuracy",
        }
    }
}

/// Something that gives the metrics of parameter sets.
pub trait Evaluator {
    /// The metrics of each set, in order.
    fn evaluate(&mut self, sets: &[&ParamSet]) -> Result<Vec<Metrics>>;
    /// How many sets one call should receive (1 for a host that owns one live model).
    fn batch(&self) -> usize {
        1
    }
}

/// The built-in MLP on a data set.
#[derive(Debug, Clone)]
pub struct MlpEvaluator {
    pub mlp: Mlp,
    pub data: Dataset,
    /// Sets evaluated per call, in parallel.
    pub batch: usize,
}

impl MlpEvaluator {
    pub fn new(mlp: Mlp, data: Dataset) -> Self {
        MlpEvaluator { mlp, data, batch: 10 }
    }
}

impl Evaluator for MlpEvaluator {
    fn evaluate(&mut self, sets: &[&ParamSet]) -> Result<Vec<Metrics>> {
        self.mlp.evaluate_many(sets, &self.data)
    }
    fn batch(&self) -> usize {
        self.batch.max(1)
    }
}

/// A host function as an evaluator; an `Err` aborts the analysis.
pub struct FnEvaluator<F: FnMut(&ParamSet) -> Result<Metrics>>(pub F);

impl<F: FnMut(&ParamSet) -> Result<Metrics>> Evaluator for FnEvaluator<F> {
    fn evaluate(&mut self, sets: &[&ParamSet]) -> Result<Vec<Metrics>> {
        sets.iter().map(|s| (self.0)(s)).collect()
    }
}

thread_local! {
    static CALLBACK_MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records the host's description of a callback failure (read once by the library).
pub fn set_callback_error(message: &str) {
    CALLBACK_MESSAGE.with(|m| *m.borrow_mut() = Some(message.to_string()));
}

/// Takes the recorded callback message, if any.
pub fn take_callback_error() -> Option<String> {
    CALLBACK_MESSAGE.with(|m| m.borrow_mut().take())
}

/// Checks that metrics are finite: an analysis never turns a NaN into a figure.
pub fn check_metrics(m: &Metrics, what: &str) -> Result<()> {
    if !(m.loss.is_finite() && m.error.is_finite() && m.accuracy.is_finite()) {
        fail!(NonFinite, "{what}: the evaluator returned a non-finite metric ({m:?})");
    }
    Ok(())
}

/// Evaluates `n` points: `write(k, set)` writes point k into a scratch set, which is then
/// evaluated; points go to the evaluator in batches of up to [`Evaluator::batch`]. The first
/// scratch set is `live` (the host's wrapped model); further ones are clones, kept in `extra`
/// across calls.
pub fn evaluate_points(
    ev: &mut dyn Evaluator,
    live: &mut ParamSet,
    extra: &mut Vec<ParamSet>,
    n: usize,
    mut write: impl FnMut(usize, &mut ParamSet) -> Result<()>,
) -> Result<Vec<Metrics>> {
    let batch = ev.batch().max(1);
    while extra.len() + 1 < batch.min(n) {
        extra.push(live.try_clone()?);
    }
    let mut out = Vec::with_capacity(n);
    let mut k = 0;
    while k < n {
        let m = batch.min(n - k);
        write(k, live)?;
        for j in 1..m {
            write(k + j, &mut extra[j - 1])?;
        }
        let sets: Vec<&ParamSet> = std::iter::once(&*live).chain(extra[..m - 1].iter()).collect();
        let got = ev.evaluate(&sets)?;
        if got.len() != m {
            fail!(Panic, "the evaluator returned {} results for {m} sets", got.len());
        }
        for g in &got {
            check_metrics(g, "evaluation")?;
        }
        out.extend(got);
        k += m;
    }
    Ok(out)
}
