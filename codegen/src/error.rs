//! The error type of code generation.

use wengert_ir::IrError;

/// Errors of compiling a graph to native code.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    #[error(transparent)]
    Ir(#[from] IrError),
    /// Cranelift rejected the generated function (a bug in lowering) or the
    /// host (no supported ISA).
    #[error("cranelift: {0}")]
    Cranelift(String),
    /// A node this backend does not lower.
    #[error("{node}: {message}")]
    Unsupported { node: String, message: String },
    /// An environment variable asks for something this machine cannot do
    /// (`WENGERT_GEMM=avx512` on a CPU without AVX-512).
    #[error("{0}")]
    Environment(String),
    /// An input cannot share its buffer with the output it is donated to.
    #[error("donating input `{input}` to output `{output}`: {message}")]
    Donation {
        input: String,
        output: String,
        message: String,
    },
    #[error("cannot write dumps to {path}: {message}")]
    Dump { path: String, message: String },
}
