//! wengert: a static-graph compiler for reverse-mode automatic differentiation.
//!
//! This facade re-exports the IR ([`ir`]) and the passes, and holds the
//! seed case studies ([`cases`]) used by the examples, tests and benchmarks.
//!
//! No panics on user input: outside tests, `unwrap`, `expect` and `panic!`
//! are denied (each exception is an `#[allow]` that says why it cannot
//! fail), so a malformed file, shape or tensor becomes an error.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod cases;
pub mod char_rnn;
pub mod digits;
#[cfg(feature = "mpi")]
pub mod distributed;
pub mod forward;
pub mod models;
pub mod optim;
pub mod weights;

pub use api::{
    compile, set_flush_denormals, value_and_grad, value_and_grad_with_seeds, ArenaCheck, Bound, Error, Executable,
    GradFn, MeasuredMemory, Options, Residuals, ScalarFn, StepBuffers,
};
pub use forward::{hessian, hessian_graph, hvp, hvp_graph, jacobian, jvp, Hessian, Jacobian, JacobianMode};
pub use optim::{step_graph, update_graph, Optimizer, StepConfig, StepGraph, StepMemory, TrainStep, UpdateStep};
pub use weights::{load_safetensors, save_safetensors};
pub use wengert_codegen as codegen;
pub use wengert_codegen::CodegenOptions;
pub use wengert_ir as ir;
pub use wengert_ir::{
    interpret, interpret_named, parse, to_dot, verify, DType, Graph, GraphBuilder, IrError, Op, Tensor, TensorType, Var,
};
pub use wengert_passes as passes;
pub use wengert_passes::autodiff::LoopPolicy;
pub use wengert_passes::{autodiff, partition, CheckpointPolicy, GradGraph, PassError, Seed};
pub use wengert_runtime as runtime;
pub mod cli;
pub mod npy;

/// The README's code blocks, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
