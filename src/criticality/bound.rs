//! The PAC-Bayes bound of the criticality theorem, and the plain held-out estimate beside it.

use super::NetworkCriticality;
use crate::error::{fail, Result};

/// The bound and what to read beside it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    /// The bound (+inf when a module is infeasible).
    pub value: f64,
    /// value > 1: says nothing about a 0-1 error.
    pub vacuous: bool,
    /// The held-out estimate error + sqrt(log(1 / delta) / (2 n)) when test data were given.
    pub held_out: Option<f64>,
}

/// A held-out evaluation: the 0-1 error on `n` samples not used for training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeldOut {
    pub error: f64,
    pub n: u64,
}

/// k log(1 + mu / k): one module's term of the bound's KL sum (+inf when mu is).
pub fn pac_bayes_term(mu: f64, numel: u64) -> f64 {
    numel as f64 * (mu / numel as f64).ln_1p()
}

/// The sum over modules of k_i log(1 + mu_i / k_i) (+inf when a module is infeasible); an error
/// for a module of no elements or a NaN or negative value.
pub fn kl_sum(net: &NetworkCriticality) -> Result<f64> {
    for c in &net.modules {
        if c.numel == 0 {
            fail!(InvalidArgument, "{}: the module has no elements (numel = 0)", c.module);
        }
        if c.value.is_nan() || c.value < 0.0 {
            fail!(InvalidArgument, "{}: criticality {} is not >= 0", c.module, c.value);
        }
    }
    Ok(net.modules.iter().map(|c| pac_bayes_term(c.value, c.numel)).sum())
}

/// The PAC-Bayes bound of the theorem, with the O~(1) term left out:
/// E + sqrt((1/4 sum_i k_i log(1 + mu_i / k_i) + log(m / delta)) / (m - 1)), with E the mean
/// metric under the joint perturbation ([`NetworkCriticality::joint_expected`]) and
/// alpha_i^2 ||theta_i^F - theta_i^0||^2 / (k_i sigma_i^2) = mu_i / k_i. m is the number of
/// samples the criticality was measured on (the training sample S of the theorem). +inf when a
/// module is infeasible; an error for NaN, negative or otherwise out-of-domain inputs.
pub fn pac_bayes_bound(net: &NetworkCriticality, m: u64, delta: f64) -> Result<f64> {
    bound_from_kl(kl_sum(net)?, net.joint_expected, m, delta)
}

/// The bound from the KL sum ([`kl_sum`]) and the expected metric under the joint perturbation.
pub fn bound_from_kl(kl: f64, expected: f64, m: u64, delta: f64) -> Result<f64> {
    check_bound_args(m, delta)?;
    if kl.is_nan() || kl < 0.0 || expected.is_nan() || expected < 0.0 {
        fail!(InvalidArgument, "the bound needs a KL sum and an expected metric >= 0, got {kl} and {expected}");
    }
    if kl.is_infinite() {
        return Ok(f64::INFINITY);
    }
    if expected.is_infinite() {
        fail!(InvalidArgument, "the expected metric is infinite while every module is feasible");
    }
    let b = expected + ((0.25 * kl + (m as f64 / delta).ln()) / (m as f64 - 1.0)).sqrt();
    if !b.is_finite() {
        fail!(NonFinite, "the bound overflowed (KL sum {kl})");
    }
    Ok(b)
}

/// The bound with its reading: vacuous or not, and the held-out estimate when `held_out` is given.
pub fn pac_bayes(net: &NetworkCriticality, m: u64, delta: f64, held_out: Option<HeldOut>) -> Result<Bound> {
    pac_bayes_from_kl(kl_sum(net)?, net.joint_expected, m, delta, held_out)
}

/// [`pac_bayes`] from the KL sum and the expected metric under the joint perturbation.
pub fn pac_bayes_from_kl(kl: f64, expected: f64, m: u64, delta: f64, held_out: Option<HeldOut>) -> Result<Bound> {
    let value = bound_from_kl(kl, expected, m, delta)?;
    let held_out = held_out.map(|h| held_out_estimate(h.error, h.n, delta)).transpose()?;
    Ok(Bound { value, vacuous: value > 1.0, held_out })
}

/// error + sqrt(log(1 / delta) / (2 n)): Hoeffding's bound on the true error from `n` held-out
/// samples, for comparison with the PAC-Bayes bound.
pub fn held_out_estimate(error: f64, n: u64, delta: f64) -> Result<f64> {
    if !(error.is_finite() && (0.0..=1.0).contains(&error)) {
        fail!(InvalidArgument, "the held-out error must be in [0, 1], got {error}");
    }
    if n == 0 || !(delta > 0.0 && delta < 1.0) {
        fail!(InvalidArgument, "the held-out estimate needs n >= 1 and 0 < delta < 1, got n = {n}, delta = {delta}");
    }
    Ok(error + ((1.0 / delta).ln() / (2.0 * n as f64)).sqrt())
}

/// The short form: eps + sqrt((mu(eps) / 4 + log(m / delta)) / m), O~(1) left out.
pub fn pac_bayes_short(eps: f64, mu: f64, m: u64, delta: f64) -> Result<f64> {
    check_bound_args(m, delta)?;
    if !eps.is_finite() || mu.is_nan() || mu < 0.0 {
        fail!(InvalidArgument, "the short bound needs a finite eps and mu >= 0, got eps = {eps}, mu = {mu}");
    }
    if mu.is_infinite() {
        return Ok(f64::INFINITY);
    }
    Ok(eps + ((mu / 4.0 + (m as f64 / delta).ln()) / m as f64).sqrt())
}

fn check_bound_args(m: u64, delta: f64) -> Result<()> {
    if m < 2 || !(delta > 0.0 && delta < 1.0) {
        fail!(InvalidArgument, "the bound needs m >= 2 samples and 0 < delta < 1, got m = {m}, delta = {delta}");
    }
    Ok(())
}
