//! exactem: exact likelihoods, posteriors and EM for deep generative networks whose decoder
//! is continuous piecewise affine (ReLU, leaky-ReLU, absolute-value MLPs).
//!
//! The engine is pure Rust; the Python bindings live in `python/` behind the `python` feature.
//! See `docs/design.md` for the mathematics.

pub mod cancel;
pub mod error;
pub mod gauss;
pub mod inference;
pub mod learning;
pub mod linalg;
pub mod memory;
pub mod model;
pub mod parallel;
pub mod partition;

#[cfg(feature = "python")]
mod python;

pub use cancel::Cancel;
pub use error::{Error, Result};
pub use gauss::IntegrationSettings;
pub use model::Decoder;
