//! # transferlens
//!
//! What is being transferred in transfer learning? This crate measures it: linear CKA between
//! the features of two networks, distances and interpolation in weight space, performance
//! barriers, module criticality and the study's other analyses (Neyshabur, Sedghi, Zhang,
//! NeurIPS 2020), on the CPU or on a CUDA device.
//!
//! The same API is offered to C, C++, Julia and Go through the C ABI in [`ffi`]
//! (`include/transferlens.h`), and to the command line as `tlens`.
//!
//! ```
//! use transferlens::{cka, Context, Matrix};
//! let ctx = Context::cpu();
//! let x: Vec<f64> = (0..40).map(|i| ((i * 7919) % 97) as f64).collect(); // 10 samples x 4
//! let y: Vec<f64> = x.iter().map(|v| 2.0 * v + 1.0).collect();            // a scaled copy
//! let cka = cka::linear_cka(
//!     &ctx,
//!     &Matrix::contiguous(&x, 10, 4)?,
//!     &Matrix::contiguous(&y, 10, 4)?,
//!     cka::Estimator::Biased,
//! )?;
//! assert!((cka - 1.0).abs() < 1e-12);
//! # Ok::<(), transferlens::Error>(())
//! ```

mod aliasing;
pub mod align;
mod atomic_write;
pub mod backend;
pub mod cka;
pub mod criticality;
pub mod data;
pub mod error;
pub mod eval;
pub mod ffi;
pub mod geometry;
pub mod landscape;
pub mod model;
pub mod params;
pub mod rng;
pub mod study;
pub mod tensor;

pub use backend::{Backend, BackendChoice, Context};
pub use error::{Error, Result, Status};
pub use params::{Grouping, ParamSet};
pub use tensor::{DType, Element, Matrix};

/// The crate version, `"MAJOR.MINOR.PATCH"`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version of the C ABI: bumped when a change breaks binary compatibility with older callers.
pub const ABI_VERSION: u32 = 1;
