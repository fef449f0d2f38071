//! `wengert-passes`: graph-to-graph passes.
//!
//! - [`autodiff`](autodiff::autodiff): reverse-mode differentiation, with
//!   the VJP rules in [`vjp`].
//! - [`partition`](partition::partition): splits a joint graph into forward
//!   and backward graphs around a chosen set of saved values.

pub mod autodiff;
pub mod emit;
pub mod error;
pub mod partition;
pub mod vjp;

pub use autodiff::{autodiff, GradGraph, Seed};
pub use error::PassError;
pub use partition::{partition, Partition, Residual};
