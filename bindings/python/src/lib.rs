//! The native module of the `transferlens` Python package, `transferlens._native`: the Rust
//! library's API for numpy, PyTorch and JAX arrays (see the package's README for the design).

mod align;
mod analyses;
mod arrays;
mod cka;
mod cka_stats;
mod dlpack;
mod errors;
mod params;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add("__version__", transferlens::VERSION)?;
    m.add_function(wrap_pyfunction!(cka::linear_cka, m)?)?;
    m.add_function(wrap_pyfunction!(cka::cka_matrix, m)?)?;
    m.add_class::<cka::CkaAccumulator>()?;
    m.add_function(wrap_pyfunction!(cka_stats::cka_statistics, m)?)?;
    m.add_class::<cka_stats::CkaStatistics>()?;
    m.add_class::<params::ParamSet>()?;
    m.add_function(wrap_pyfunction!(params::distance, m)?)?;
    m.add_function(wrap_pyfunction!(params::interpolate, m)?)?;
    m.add_class::<analyses::Evaluator>()?;
    m.add_function(wrap_pyfunction!(analyses::interpolation_curve, m)?)?;
    m.add_function(wrap_pyfunction!(analyses::barrier, m)?)?;
    m.add_function(wrap_pyfunction!(analyses::module_criticality, m)?)?;
    m.add_function(wrap_pyfunction!(analyses::network_criticality, m)?)?;
    m.add_function(wrap_pyfunction!(analyses::rewind_curve, m)?)?;
    m.add_function(wrap_pyfunction!(analyses::pac_bayes_bound, m)?)?;
    m.add_function(wrap_pyfunction!(analyses::prediction_agreement, m)?)?;
    m.add_function(wrap_pyfunction!(analyses::block_shuffle, m)?)?;
    m.add_class::<align::PermSpec>()?;
    m.add_function(wrap_pyfunction!(align::align_weights, m)?)?;
    m.add_function(wrap_pyfunction!(align::align_activations, m)?)?;
    m.add_class::<align::ActivationMatcher>()?;
    m.add_function(wrap_pyfunction!(align::apply_permutation, m)?)?;
    m.add_function(wrap_pyfunction!(align::layerwise_curve, m)?)?;
    m.add_function(wrap_pyfunction!(align::layerwise_barrier, m)?)?;
    Ok(())
}
