//! The error type of the passes crate.

use wengert_ir::IrError;

/// Errors of graph passes. Each names the input, output or node at fault.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PassError {
    #[error("cannot differentiate with respect to `{name}`: {reason}")]
    BadWrt { name: String, reason: String },
    #[error("seed for output `{output}`: {reason}")]
    BadSeed { output: String, reason: String },
    #[error("partition: {0}")]
    Partition(String),
    #[error("pipeline: {0}")]
    Pipeline(String),
    /// A checkpoint policy that cannot be carried out on this graph.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error(transparent)]
    Ir(#[from] IrError),
    /// A pass built an ill-typed node: a bug in the pass, reported rather
    /// than panicking.
    #[error("internal error at {node}: {message}")]
    Internal { node: String, message: String },
}
