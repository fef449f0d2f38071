//! `wengert-ir`: the graph intermediate representation of wengert.
//!
//! A [`Graph`] is a static dataflow graph of primitive [`Op`]s over tensors
//! of static [`TensorType`]. It is built with the [`GraphBuilder`], printed
//! and parsed as a Wengert list ([`print`](mod@print), [`parse()`]), checked by
//! [`verify()`], exported to Graphviz ([`to_dot`]) and given meaning by the
//! reference interpreter ([`interpret`]).
//!
//! No panics on user input: outside tests, `unwrap`, `expect` and `panic!`
//! are denied (each exception is an `#[allow]` that says why it cannot
//! fail), so a malformed file, shape or tensor becomes an error.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod builder;
pub mod dot;
pub mod error;
pub mod fpenv;
pub mod graph;
pub mod infer;
pub mod interp;
pub mod math;
pub mod op;
pub mod parse;
pub mod print;
pub mod scan;
pub mod tensor;
pub mod types;
pub mod verify;

pub use builder::{broadcast_shapes, GraphBuilder, LoopOptions, Var};
pub use dot::to_dot;
pub use error::{IrError, ParseError, Problem};
pub use graph::{is_identifier, Graph, Input, Mark, Node, NodeId, Output};
pub use infer::infer;
pub use interp::{interpret, interpret_named};
pub use op::{Attr, BinaryOp, CmpOp, Op, OpClass, OpFacts, OpKind, UnaryOp};
pub use parse::{parse, parse_literal};
pub use scan::Scan;
pub use tensor::{Element, Tensor};
pub use types::{num_elements, row_major_strides, DType, Shape, TensorType};
pub use verify::verify;
