//! `wengert-codegen`: graphs to native code through Cranelift.
//!
//! - [`kernel`]: loop kernels (strided operands, straight-line bodies,
//!   accumulating stores), the unit of generated loop code.
//! - [`lower`]: one graph to one Cranelift function; values live in
//!   registers, broadcast registers or strided memory views (its `math`
//!   module: inline vectorized f32 exp, log, sin, cos, tanh).
//! - [`jit`]: ISA settings, the JIT module and the code owner.
//! - [`donate`]: which inputs may share their buffer with an output (an
//!   update in place), proven on the final graph.

pub mod donate;
pub mod error;
pub mod jit;
pub mod kernel;
pub mod lower;

pub use error::CodegenError;
pub use jit::{compile_graph, compile_graphs, CodegenOptions};
