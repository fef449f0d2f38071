//! `wengert-runtime`: what compiled code runs against.
//!
//! - [`Tensor`]: the IR's owned, 64-byte aligned host tensor.
//! - [`Executable`]: compiled code with input validation, per-thread arenas
//!   and caller-provided outputs.
//! - [`gemm`]: the matrix-multiplication kernels generated code calls.
//! - [`functions`]: every runtime function generated code may call, as
//!   one table of names, signatures and addresses.

pub mod error;
pub mod executable;
pub mod functions;
pub mod gemm;
pub mod pool;
pub mod revolve;

pub use error::RuntimeError;
pub use executable::{Bound, CodeOwner, EntryFn, Executable, MemoryReport, PackedFn, ScalarFn};
pub use wengert_ir::Tensor;
