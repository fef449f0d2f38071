//! `wengert-passes`: graph-to-graph passes.
//!
//! - [`autodiff`](autodiff::autodiff): reverse-mode differentiation, with
//!   the VJP rules in [`vjp`].
//! - [`partition`](partition::partition): splits a joint graph into forward
//!   and backward graphs around a chosen set of saved values.

pub mod autodiff;
pub mod binomial;
pub mod checkpoint;
pub mod cost;
pub mod emit;
pub mod error;
pub mod fuse;
pub mod jvp;
pub mod memory;
pub mod partition;
pub mod pipeline;
pub mod revolve;
pub mod scan_vjp;
pub mod simplify;
mod units;
pub mod vjp;

pub use autodiff::{autodiff, GradGraph, Seed};
pub use checkpoint::{choose_saved, explain, plan, CheckpointPolicy, Explanation, Plan};
pub use error::PassError;
pub use fuse::{fuse, kernel_count};
pub use memory::{memory_plan, memory_plan_with_stats, MemoryStats};
pub use partition::{partition, Partition, Residual};
pub use pipeline::{run_pipeline, Pass, PipelineOptions, PipelineResult, Stage};
pub use simplify::simplify;
