//! The compile API: `compile` a graph, or build a `value_and_grad`
//! function (autodiff → partition → JIT) in one call.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use wengert_codegen::{compile_graphs, CodegenError, CodegenOptions};
use wengert_ir::{Graph, IrError, Tensor};
use wengert_passes::autodiff::LoopPolicy;
use wengert_passes::{
    run_pipeline, CheckpointPolicy, GradGraph, Partition, Pass, PassError, PipelineOptions, PipelineResult, Seed, Stage,
};
pub use wengert_runtime::{Bound, Executable, MemoryReport, RuntimeError, ScalarFn};

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
    /// A file could not be read or written, or holds what it should not.
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// The subnormal mode was already fixed otherwise.
    #[error("cannot {asked} subnormal numbers: this process already {fixed} them (WENGERT_DENORMALS, or a computation that ran first); set the mode before anything runs")]
    Denormals { asked: &'static str, fixed: &'static str },
}

/// Compilation options.
#[derive(Clone, Debug)]
pub struct Options {
    pub codegen: CodegenOptions,
    /// The passes to run, in order (default: all of [`Pass::ALL`]).
    /// `compile` runs the ones that apply to a plain graph (simplify, fuse,
    /// memory-plan); `value_and_grad` always differentiates and partitions.
    pub passes: Vec<Pass>,
    /// Write one IR file per pass, DOT files, `passes.txt`, and the CLIF and
    /// disassembly of each compiled function here. The environment variable
    /// `WENGERT_DUMP=DIR` sets it when unset.
    pub dump_dir: Option<PathBuf>,
    /// What the backward gets saved and what it recomputes.
    pub checkpoint: CheckpointPolicy,
    /// What loops store for their backward loops (default: the trajectory
    /// and each step's residuals).
    pub loops: LoopPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            codegen: CodegenOptions::default(),
            passes: Pass::ALL.to_vec(),
            dump_dir: None,
            checkpoint: CheckpointPolicy::SaveAll,
            loops: LoopPolicy::default(),
        }
    }
}

impl Options {
    /// These options with calls using at most `threads` threads of the
    /// shared pool (`CodegenOptions::threads`; 1 runs everything on the
    /// caller's thread). Results are the same for every count.
    pub fn with_threads(mut self, threads: usize) -> Options {
        self.codegen.threads = threads.max(1);
        self
    }

    /// These options with inputs donated to outputs, by name (input,
    /// output): the compiled function updates them in place through
    /// `Executable::call_donated`, and compiling fails, naming the pair,
    /// if the graph reads an input after its output overwrites it.
    pub fn with_donations(mut self, pairs: &[(&str, &str)]) -> Options {
        self.codegen.donate = pairs.iter().map(|&(i, o)| (i.to_string(), o.to_string())).collect();
        self
    }

    /// These options with `WENGERT_DUMP` applied (read once per compile).
    fn resolved(&self) -> Options {
        Options {
            dump_dir: self
                .dump_dir
                .clone()
                .or_else(|| std::env::var_os("WENGERT_DUMP").map(PathBuf::from)),
            ..self.clone()
        }
    }

    fn codegen(&self) -> CodegenOptions {
        CodegenOptions {
            keep_text: self.codegen.keep_text || self.dump_dir.is_some(),
            ..self.codegen.clone()
        }
    }
}

fn dump_code(options: &Options, exes: &[&Executable]) -> Result<(), Error> {
    if let Some(dir) = &options.dump_dir {
        for exe in exes {
            exe.write_text(dir)?;
        }
    }
    Ok(())
}

/// Compiles a graph to native code (after simplify, fuse and memory-plan,
/// as far as `options.passes` lists them).
pub fn compile(g: &Graph, options: &Options) -> Result<Executable, Error> {
    let options = &options.resolved();
    let pipeline = PipelineOptions {
        passes: options
            .passes
            .iter()
            .copied()
            .filter(|p| matches!(p, Pass::Simplify | Pass::Fuse | Pass::MemoryPlan))
            .collect(),
        dump_dir: options.dump_dir.clone(),
        ..PipelineOptions::default()
    };
    let result = run_pipeline(g, &pipeline)?;
    let Stage::One(optimized) = &result.stage else {
        unreachable!("no partition ran");
    };
    let exe = compile_graphs(&[optimized], &options.codegen())?.remove(0);
    dump_code(options, &[&exe])?;
    Ok(exe)
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
    /// The pipeline's result, which holds the gradient graph and the
    /// partition (see `grad_graph`, `partition`).
    pipeline: PipelineResult,
    /// For each primal input the backward reads, its index among the
    /// primal inputs (those given to the forward).
    backward_primal: Vec<usize>,
    /// Names of the primal inputs, for errors.
    primal_names: Vec<String>,
    joint: Executable,
    /// The halves are compiled on first use: most callers only need the
    /// joint function, and compiling is most of `value_and_grad`'s time.
    forward: std::sync::OnceLock<Executable>,
    backward: std::sync::OnceLock<Executable>,
    codegen: CodegenOptions,
    dump: Option<PathBuf>,
    /// The checkpoint policy it was compiled under (for `explain`).
    policy: CheckpointPolicy,
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
    let options = &options.resolved();
    // Autodiff and partition always run; the other passes as listed.
    let mut passes: Vec<Pass> = vec![Pass::Autodiff];
    passes.extend(
        options
            .passes
            .iter()
            .copied()
            .filter(|p| matches!(p, Pass::Simplify | Pass::Checkpoint)),
    );
    passes.push(Pass::Partition);
    passes.extend(
        options
            .passes
            .iter()
            .copied()
            .filter(|p| matches!(p, Pass::Fuse | Pass::MemoryPlan)),
    );
    let pipeline = PipelineOptions {
        passes,
        wrt: wrt.iter().map(|s| s.to_string()).collect(),
        seeds: seeds.iter().map(|(n, s)| (n.to_string(), s.clone())).collect(),
        checkpoint: options.checkpoint.clone(),
        loops: options.loops,
        dump_dir: options.dump_dir.clone(),
        ..PipelineOptions::default()
    };
    let result = run_pipeline(g, &pipeline)?;
    let (Some(grad), Some(partition)) = (&result.grad, &result.partition) else {
        return Err(
            RuntimeError::Other("internal error: the pipeline did not differentiate and partition".into()).into(),
        );
    };
    let primal_names: Vec<String> = grad
        .graph
        .inputs()
        .iter()
        .filter(|i| !grad.seed_inputs.contains(&i.name))
        .map(|i| i.name.clone())
        .collect();
    let backward_primal = partition
        .backward_inputs
        .iter()
        .map(|n| primal_names.iter().position(|m| m == n))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| RuntimeError::Other("internal error: a backward input is not a primal input".into()))?;
    let Stage::Split { joint, .. } = &result.stage else {
        return Err(RuntimeError::Other("internal error: the pipeline did not partition".into()).into());
    };
    let joint = compile_graphs(&[joint], &options.codegen())?.remove(0);
    dump_code(options, &[&joint])?;
    let f = GradFn {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        pipeline: result,
        backward_primal,
        primal_names,
        joint,
        forward: std::sync::OnceLock::new(),
        backward: std::sync::OnceLock::new(),
        codegen: options.codegen(),
        dump: options.dump_dir.clone(),
        policy: options.checkpoint.clone(),
    };
    // The dump's checkpoint table (written by the pipeline) gets the
    // measured arenas too.
    if let Some(dir) = &f.dump {
        let path = dir.join("checkpoint.txt");
        std::fs::write(&path, f.explain()?)
            .map_err(|e| RuntimeError::Other(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(f)
}

/// What a compiled gradient needs in memory, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GradMemory {
    /// Values the forward saves for the backward.
    pub saved_bytes: usize,
    /// Scratch arena of the joint function (one call, value and gradient).
    pub joint_arena_bytes: usize,
    /// Outputs of the joint function (loss and gradients).
    pub joint_output_bytes: usize,
    /// Peak of running the halves separately: the larger of the forward's
    /// arena plus what it saves, and the saved values plus the backward's
    /// arena (as planned by `memory-plan`).
    pub split_peak_bytes: usize,
}

/// An arena's size as planned by `memory-plan` and as measured on the
/// compiled code ([`Executable::measure_arena`]), in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaCheck {
    pub planned: usize,
    pub measured: usize,
}

/// Planned and measured memory of a compiled gradient (see
/// [`GradFn::measure_memory`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeasuredMemory {
    pub joint: ArenaCheck,
    pub forward: ArenaCheck,
    pub backward: ArenaCheck,
    /// Values the forward saves for the backward.
    pub saved_bytes: usize,
}

impl MeasuredMemory {
    /// Peak activation memory of a step run as forward then backward: the
    /// saved values plus the larger arena, as planned.
    pub fn planned_peak(&self) -> usize {
        self.saved_bytes + self.forward.planned.max(self.backward.planned)
    }

    /// The same peak with the measured arenas.
    pub fn measured_peak(&self) -> usize {
        self.saved_bytes + self.forward.measured.max(self.backward.measured)
    }
}

impl GradFn {
    /// Runs each compiled function once on zero inputs to measure the
    /// arena its code really writes, beside what `memory-plan` planned
    /// (compiles the forward and backward halves if not yet compiled).
    pub fn measure_memory(&self) -> Result<MeasuredMemory, Error> {
        let check = |i: usize, exe: &Executable| -> Result<ArenaCheck, Error> {
            Ok(ArenaCheck {
                planned: self.planned_arena(i),
                measured: exe.measure_arena()?,
            })
        };
        Ok(MeasuredMemory {
            joint: check(0, &self.joint)?,
            forward: check(1, self.forward_executable()?)?,
            backward: check(2, self.backward_executable()?)?,
            saved_bytes: self.partition().saved_bytes(),
        })
    }

    /// The checkpoint table: what is saved and what is recomputed, bytes
    /// saved, extra FLOPs, the binomial schedule if one was chosen, and the
    /// planned and measured arenas and peak (see
    /// [`measure_memory`](Self::measure_memory), which this runs), and
    /// under a budget whether it fits. `wengert grad --explain` prints it;
    /// with a dump directory it is written there as `checkpoint.txt`.
    pub fn explain(&self) -> Result<String, Error> {
        use std::fmt::Write;
        let mut out = String::new();
        if let Some(expl) = &self.pipeline.explanation {
            let _ = write!(out, "{expl}");
        }
        if let Some(b) = self.pipeline.binomial {
            let (l, c, n) = (b.blocks, b.slots, b.recomputed_blocks);
            let _ = writeln!(
                out,
                "binomial schedule: a chain of {l} blocks, {c} slot(s): {n} recomputed block evaluations besides each block's reversal (optimum r·l − C(c+r, c+1) = {})",
                wengert_passes::checkpoint::revolve_min_extra_steps(l as u64, c as u64)
            );
        }
        for l in wengert_passes::scan_vjp::loop_report(self.graph()) {
            match l.slots {
                Some(c) => {
                    let schedule = if l.every > 0 {
                        format!("every-{} schedule", l.every)
                    } else {
                        "binomial schedule (r·T − C(c+r, c+1) extra steps)".to_string()
                    };
                    let _ = writeln!(
                        out,
                        "loop {} (T = {}): {schedule}, {c} slot(s) of {} bytes ({} bytes), {} extra step evaluations, each step then recomputed once in its adjoint",
                        l.node, l.length, l.state_bytes, c * l.state_bytes, l.extra_steps
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "loop {} (T = {}): reads {} stored bytes of the forward loop (trajectory and residuals); no state recomputed",
                        l.node, l.length, l.stored_bytes
                    );
                }
            }
        }
        let m = self.measure_memory()?;
        let _ = writeln!(
            out,
            "planned arena bytes (joint, forward, backward): {}, {}, {}",
            m.joint.planned, m.forward.planned, m.backward.planned
        );
        let _ = writeln!(
            out,
            "measured arena bytes (joint, forward, backward): {}, {}, {}",
            m.joint.measured, m.forward.measured, m.backward.measured
        );
        let _ = writeln!(
            out,
            "peak activation bytes, forward then backward (saved + larger arena): planned {}, measured {}",
            m.planned_peak(),
            m.measured_peak()
        );
        if let CheckpointPolicy::Budget(b) = self.policy {
            // Judged on the measured peak: without `memory-plan` nothing is
            // planned, and the budget's simulation assumed a plan.
            let verdict = if m.measured_peak() <= b { "fits" } else { "over budget" };
            let _ = writeln!(out, "budget {b} bytes: {verdict}");
        }
        Ok(out)
    }

    /// Memory of the compiled functions (see [`GradMemory`]).
    pub fn memory(&self) -> GradMemory {
        let saved = self.partition().saved_bytes();
        let joint = self.joint.memory();
        GradMemory {
            saved_bytes: saved,
            joint_arena_bytes: joint.arena_bytes,
            joint_output_bytes: joint.output_bytes,
            split_peak_bytes: saved + self.planned_arena(1).max(self.planned_arena(2)),
        }
    }

    /// The arena `memory-plan` planned for the joint function (0), the
    /// forward (1) or the backward (2); 0 if the pass did not run.
    fn planned_arena(&self, i: usize) -> usize {
        self.pipeline.memory.get(i).map_or(0, |m| m.arena_bytes)
    }

    /// The compiled joint graph (outputs, then `grad_<input>`), after all
    /// passes.
    pub fn graph(&self) -> &Graph {
        match &self.pipeline.stage {
            Stage::Split { joint, .. } => joint,
            Stage::One(g) => g,
        }
    }

    /// What each pass did (timing, node counts, memory statistics).
    pub fn pipeline(&self) -> &PipelineResult {
        &self.pipeline
    }

    // `value_and_grad_with_seeds` returns an error unless the pipeline
    // produced both, and nothing takes them out since.
    #[allow(clippy::expect_used)]
    pub fn partition(&self) -> &Partition {
        self.pipeline.partition.as_ref().expect("value_and_grad partitions")
    }

    /// The differentiated graph (before fusion and memory planning).
    #[allow(clippy::expect_used)]
    fn grad_graph(&self) -> &GradGraph {
        self.pipeline.grad.as_ref().expect("value_and_grad differentiates")
    }

    /// The joint executable: inputs (then seed inputs) → outputs, then
    /// gradients.
    pub fn joint(&self) -> &Executable {
        &self.joint
    }

    /// Compiles one half of the partition on first use (racing threads may
    /// both compile; one result is kept).
    fn half<'a>(&'a self, cell: &'a std::sync::OnceLock<Executable>, forward: bool) -> Result<&'a Executable, Error> {
        if let Some(exe) = cell.get() {
            return Ok(exe);
        }
        let Stage::Split {
            forward: f,
            backward: b,
            ..
        } = &self.pipeline.stage
        else {
            unreachable!("partition ran");
        };
        let exe = compile_graphs(&[if forward { f } else { b }], &self.codegen)?.remove(0);
        if let Some(dir) = &self.dump {
            exe.write_text(dir)?;
        }
        Ok(cell.get_or_init(|| exe))
    }

    /// The forward half (inputs → outputs and saved values), compiled on
    /// first use.
    pub fn forward_executable(&self) -> Result<&Executable, Error> {
        self.half(&self.forward, true)
    }

    /// The backward half (saved values and seeds → gradients), compiled on
    /// first use.
    pub fn backward_executable(&self) -> Result<&Executable, Error> {
        self.half(&self.backward, false)
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
        let mut all = self.forward_executable()?.call(inputs)?;
        let values = all.split_off(self.grad_graph().primal_outputs);
        Ok((all, Residuals { owner: self.id, values }))
    }

    /// The backward's inputs: the primal inputs it reads (picked from the
    /// `inputs` given to the forward), the saved values, the seeds.
    fn backward_args<'a>(
        &'a self,
        inputs: &'a [&'a Tensor],
        residuals: &'a Residuals,
        seeds: &'a [&'a Tensor],
    ) -> Result<impl Iterator<Item = &'a Tensor>, Error> {
        if residuals.owner != self.id {
            return Err(RuntimeError::Other("these residuals were made by another gradient function".into()).into());
        }
        if inputs.len() != self.primal_names.len() {
            return Err(RuntimeError::Other(format!(
                "backward takes the {} primal input(s) given to the forward ({}), got {}",
                self.primal_names.len(),
                self.primal_names.join(", "),
                inputs.len()
            ))
            .into());
        }
        let primal = self.backward_primal.iter().map(|&k| inputs[k]);
        Ok(primal.chain(&residuals.values).chain(seeds.iter().copied()))
    }

    /// Runs the backward half on the primal inputs given to the forward,
    /// the values it saved, and the seed inputs (none for a scalar loss);
    /// returns the gradients. Inputs are read in place, never saved.
    pub fn backward(&self, inputs: &[&Tensor], residuals: &Residuals, seeds: &[&Tensor]) -> Result<Vec<Tensor>, Error> {
        let exe = self.backward_executable()?;
        let mut grads = exe.new_outputs()?;
        exe.call_into_iter(self.backward_args(inputs, residuals, seeds)?, &mut grads)?;
        Ok(grads)
    }

    /// Buffers for [`GradFn::forward_into`] and [`GradFn::backward_into`]:
    /// the outputs, the residuals and the gradients, allocated once.
    pub fn buffers(&self) -> Result<StepBuffers, Error> {
        let fwd = self.forward_executable()?;
        let mut outputs = fwd.new_outputs()?;
        let values = outputs.split_off(self.grad_graph().primal_outputs);
        Ok(StepBuffers {
            outputs,
            residuals: Residuals { owner: self.id, values },
            grads: self.backward_executable()?.new_outputs()?,
        })
    }

    /// The forward half into preallocated buffers (no allocation).
    pub fn forward_into(&self, inputs: &[&Tensor], buffers: &mut StepBuffers) -> Result<(), Error> {
        if buffers.residuals.owner != self.id {
            return Err(RuntimeError::Other("these buffers were made by another gradient function".into()).into());
        }
        // The forward writes outputs then residuals.
        let outputs = buffers.outputs.iter_mut().chain(&mut buffers.residuals.values);
        Ok(self
            .forward_executable()?
            .call_into_iter(inputs.iter().copied(), outputs)?)
    }

    /// The backward half from the buffers' residuals into their gradients
    /// (no allocation); `inputs` are the primal inputs given to the forward.
    pub fn backward_into(&self, inputs: &[&Tensor], seeds: &[&Tensor], buffers: &mut StepBuffers) -> Result<(), Error> {
        let exe = self.backward_executable()?;
        let args = self.backward_args(inputs, &buffers.residuals, seeds)?;
        Ok(exe.call_into_iter(args, &mut buffers.grads)?)
    }
}

/// Preallocated outputs, residuals and gradients of a [`GradFn`] step.
#[derive(Debug)]
pub struct StepBuffers {
    pub outputs: Vec<Tensor>,
    pub residuals: Residuals,
    pub grads: Vec<Tensor>,
}

/// Makes this process flush subnormal numbers to zero (`true`, as XLA and
/// so JAX do on the CPU) or keep them (`false`, IEEE 754, the default),
/// in compiled code and the interpreter alike (`wengert_ir::fpenv`).
/// Training wants `true`: vanishing gradients and Adam's second moment
/// become subnormal, and x86 arithmetic on subnormals is slow (the scan
/// benchmark's RNN gradient took 12× longer on an Intel Xeon with them
/// kept). Call it before anything runs; the mode is one per process.
pub fn set_flush_denormals(flush: bool) -> Result<(), Error> {
    let word = |f: bool| if f { "flush" } else { "keep" };
    let fixed = |f: bool| if f { "flushes" } else { "keeps" };
    wengert_ir::fpenv::set_flush_denormals(flush).map_err(|now| Error::Denormals {
        asked: word(flush),
        fixed: fixed(now),
    })
}
