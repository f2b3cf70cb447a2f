//! The native module of the `transferlens` Python package, `transferlens._native`: the Rust
//! library's API for numpy, PyTorch and JAX arrays (see the package's README for the design).

mod analyses;
mod arrays;
mod cka;
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
    Ok(())
}
