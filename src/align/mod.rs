//! Permutation alignment of two networks' hidden units (issue 18): a unit order for B that
//! matches A's, so that weight-space distances, interpolation curves and barriers compare the
//! two networks up to the order of their units (docs/align.md).
//!
//! - [`spec`]: which tensor axes share one permutation, inferred for the built-in MLP and CNN
//!   and for a chain of dense layers, or read from JSON;
//! - [`assignment`]: the exact linear assignment solver;
//! - [`matching`]: weight matching, coordinate descent over the groups;
//! - [`activations`]: activation matching, one assignment per group on the correlation of the
//!   two models' unit activations;
//! - [`apply`]: B rewritten in the matched order;
//! - [`layerwise`]: layer-wise connectivity, the curve and barrier with only some modules moved.
//!
//! ```
//! use transferlens::align::{apply, match_weights, MatchOptions, PermSpec};
//! use transferlens::model::Mlp;
//! let mlp = Mlp::new(&[6, 5, 4, 3])?;
//! let (a, b) = (mlp.init(1)?, mlp.init(2)?);
//! let spec = PermSpec::for_mlp(&mlp);
//! let found = match_weights(&spec, &a, &b, &MatchOptions::default())?;
//! let b_aligned = apply(&spec, &b, &found.perms)?; // computes what b computes
//! assert!(found.converged);
//! # Ok::<(), transferlens::Error>(())
//! ```

pub mod activations;
pub mod apply;
pub mod assignment;
pub mod layerwise;
pub mod matching;
pub mod spec;

pub use activations::{match_activations, ActivationMatcher};
pub use apply::{apply, invert};
pub use assignment::{Assignment, Objective};
pub use layerwise::{layerwise_barrier, layerwise_curve, Moving};
pub use matching::{match_weights, MatchOptions, Matching};
pub use spec::{PermGroup, PermSpec};
