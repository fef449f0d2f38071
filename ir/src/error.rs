//! The error type of the IR crate.
//!
//! Every error names its place: a source location for builder errors, a
//! line and column for parse errors, a value (`%3`, `%x`) for graph errors,
//! an input name for bad arguments.

use std::fmt;

/// One problem found at a line and column of IR text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

/// One problem found in a graph, at a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The value as printed (`%3`, `%x`), or `graph` for graph-wide problems.
    pub node: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.node, self.message)
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n")
}

/// Errors of the IR crate.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum IrError {
    /// A builder call failed; `location` is the user's source line.
    #[error("{location}: {message}")]
    Build { location: String, message: String },
    /// IR text did not parse; every problem found, in order.
    #[error("{}", join(.0))]
    Parse(Vec<ParseError>),
    /// `verify` found problems; all of them, in node order.
    #[error("{}", join(.0))]
    Verify(Vec<Problem>),
    /// An operation on a graph node failed.
    #[error("{node}: {message}")]
    Node { node: String, message: String },
    /// An input given to the interpreter (or another consumer) is wrong.
    #[error("input `{name}`: {message}")]
    Input { name: String, message: String },
    /// A tensor could not be made as asked.
    #[error("{0}")]
    Tensor(String),
    /// A graph-wide problem (a duplicate name, a missing output).
    #[error("{0}")]
    Graph(String),
}

impl IrError {
    pub(crate) fn parse(line: usize, col: usize, message: impl Into<String>) -> IrError {
        IrError::Parse(vec![ParseError {
            line,
            col,
            message: message.into(),
        }])
    }
}
