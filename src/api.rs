//! The compile API: `compile` a graph, or build a `value_and_grad`
//! function (autodiff → partition → JIT) in one call.

use std::sync::atomic::{AtomicU64, Ordering};
use wengert_codegen::{compile_graphs, CodegenError, CodegenOptions};
use wengert_ir::{Graph, IrError, Tensor};
use wengert_passes::{autodiff, partition, GradGraph, Partition, PassError, Seed};
pub use wengert_runtime::{Bound, Executable, MemoryReport, RuntimeError};

/// Every error of the facade, by the stage that raised it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ir(#[from] IrError),
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Compilation options.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub codegen: CodegenOptions,
}

/// Compiles a graph to native code.
pub fn compile(g: &Graph, options: &Options) -> Result<Executable, Error> {
    Ok(compile_graphs(&[g], &options.codegen)?.remove(0))
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Values saved by [`GradFn::forward`] for [`GradFn::backward`]; opaque,
/// and only accepted by the function that made them.
#[derive(Debug)]
pub struct Residuals {
    owner: u64,
    values: Vec<Tensor>,
}

impl Residuals {
    /// Total bytes saved.
    pub fn size_bytes(&self) -> usize {
        self.values.iter().map(|t| t.ty().size_bytes()).sum()
    }
}

/// A compiled gradient: the joint value-and-gradient function, and the
/// forward and backward halves of its partition.
pub struct GradFn {
    id: u64,
    grad: GradGraph,
    partition: Partition,
    joint: Executable,
    forward: Executable,
    backward: Executable,
}

impl std::fmt::Debug for GradFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradFn").field("joint", &self.joint).finish()
    }
}

/// Differentiates `g` with respect to `wrt` (scalar outputs seeded with 1,
/// others with `seed_<output>` inputs) and compiles the result.
pub fn value_and_grad(g: &Graph, wrt: &[&str], options: &Options) -> Result<GradFn, Error> {
    value_and_grad_with_seeds(g, wrt, &[], options)
}

/// [`value_and_grad`] with explicit seeds.
pub fn value_and_grad_with_seeds(
    g: &Graph,
    wrt: &[&str],
    seeds: &[(&str, Seed)],
    options: &Options,
) -> Result<GradFn, Error> {
    let grad = autodiff(g, wrt, seeds)?;
    let partition = partition(&grad, None)?;
    let mut exes = compile_graphs(
        &[&grad.graph, &partition.forward, &partition.backward],
        &options.codegen,
    )?
    .into_iter();
    let (Some(joint), Some(forward), Some(backward)) = (exes.next(), exes.next(), exes.next()) else {
        unreachable!("compile_graphs returns one executable per graph");
    };
    Ok(GradFn {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        grad,
        partition,
        joint,
        forward,
        backward,
    })
}

impl GradFn {
    /// The differentiated graph (outputs, then `grad_<input>`).
    pub fn graph(&self) -> &Graph {
        &self.grad.graph
    }

    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    /// The joint executable: inputs (then seed inputs) → outputs, then
    /// gradients.
    pub fn joint(&self) -> &Executable {
        &self.joint
    }

    pub fn forward_executable(&self) -> &Executable {
        &self.forward
    }

    pub fn backward_executable(&self) -> &Executable {
        &self.backward
    }

    /// Outputs then gradients, in one call.
    pub fn call(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, Error> {
        Ok(self.joint.call(inputs)?)
    }

    /// Like [`GradFn::call`], into caller-provided tensors (no allocation).
    pub fn call_into(&self, inputs: &[&Tensor], outputs: &mut [Tensor]) -> Result<(), Error> {
        Ok(self.joint.call_into(inputs, outputs)?)
    }

    /// Runs the forward half: returns the outputs and the saved values.
    pub fn forward(&self, inputs: &[&Tensor]) -> Result<(Vec<Tensor>, Residuals), Error> {
        let mut all = self.forward.call(inputs)?;
        let values = all.split_off(self.grad.primal_outputs);
        Ok((all, Residuals { owner: self.id, values }))
    }

    /// Runs the backward half on saved values and the seed inputs (none
    /// for a scalar loss); returns the gradients.
    pub fn backward(&self, residuals: &Residuals, seeds: &[&Tensor]) -> Result<Vec<Tensor>, Error> {
        if residuals.owner != self.id {
            return Err(RuntimeError::Other("these residuals were made by another gradient function".into()).into());
        }
        let mut inputs: Vec<&Tensor> = residuals.values.iter().collect();
        inputs.extend_from_slice(seeds);
        Ok(self.backward.call(&inputs)?)
    }
}
