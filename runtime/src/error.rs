//! The error type of the runtime.

/// Errors of calling an executable. Each names the input or output.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("{graph} takes {expected} input(s) ({names}), got {got}")]
    InputCount {
        graph: String,
        expected: usize,
        names: String,
        got: usize,
    },
    #[error("input `{name}`: {message}")]
    Input { name: String, message: String },
    #[error("{graph} has {expected} output(s), got {got} output buffers")]
    OutputCount { graph: String, expected: usize, got: usize },
    #[error("output `{name}`: {message}")]
    Output { name: String, message: String },
    #[error("cannot allocate {bytes} bytes for {what}")]
    Alloc { what: String, bytes: usize },
    #[error("{0}")]
    Other(String),
}
