//! The pass pipeline: named passes run in order, with `verify` after each,
//! timing, node counts, printing for the CLI and dump files.
//!
//! The state is one graph until `partition`, then three: the joint graph
//! (one call computes outputs and gradients), the forward graph and the
//! backward graph; later passes run on each.
//!
//! Dumps (`PipelineOptions::dump_dir`): `00-input.wg`, then one
//! `NN-after-PASS.wg` per pass (`NN-after-PASS.forward.wg` and
//! `.backward.wg` after partition) with stable numbering, so `diff` between
//! two files shows what one pass did; a `.dot` beside each; `passes.txt`
//! with each pass's wall time and node counts before and after; and
//! `checkpoint.txt`, what the partition saves and recomputes.

use crate::autodiff::{autodiff_with, GradGraph, Seed};
use crate::checkpoint::{explain, plan, CheckpointPolicy, Explanation, Plan};
use crate::error::PassError;
use crate::fuse::fuse;
use crate::memory::{memory_plan_with_stats, MemoryStats};
use crate::partition::{partition, rejoin, Partition};
use crate::revolve::Binomial;
use crate::simplify::simplify;
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Instant;
use wengert_ir::{to_dot, verify, Graph};

/// Declares the passes once, in pipeline order: each variant and its
/// kebab-case name; `Pass`, `Pass::ALL` (the default pipeline, the CLI's
/// names) and `Pass::name` are derived from it.
macro_rules! passes {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:literal; )*) => {
        /// A pass of the pipeline, by its kebab-case name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Pass {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl Pass {
            /// Every pass, in pipeline order.
            pub const ALL: [Pass; [$($name),*].len()] = [$(Pass::$variant),*];

            pub fn name(self) -> &'static str {
                match self {
                    $( Pass::$variant => $name, )*
                }
            }
        }
    };
}

passes! {
    Autodiff = "autodiff";
    Simplify = "simplify";
    /// Chooses what to save for the backward under
    /// `PipelineOptions::checkpoint` (see the `checkpoint` module).
    Checkpoint = "checkpoint";
    Partition = "partition";
    Fuse = "fuse";
    MemoryPlan = "memory-plan";
}

impl Pass {
    pub fn from_name(name: &str) -> Result<Pass, PassError> {
        Pass::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Pass::ALL.iter().map(|p| p.name()).collect();
            PassError::Pipeline(format!("unknown pass `{name}` (passes: {})", names.join(", ")))
        })
    }
}

/// What to run and what to show.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    pub passes: Vec<Pass>,
    /// Inputs to differentiate (for `autodiff`).
    pub wrt: Vec<String>,
    pub seeds: Vec<(String, Seed)>,
    /// What the `checkpoint` pass saves for the backward.
    pub checkpoint: CheckpointPolicy,
    /// What loops store for their backward loops (autodiff).
    pub loops: crate::scan_vjp::LoopPolicy,
    pub dump_dir: Option<PathBuf>,
    pub print_before_all: bool,
    pub print_after_all: bool,
    pub print_after: Vec<Pass>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            passes: Pass::ALL.to_vec(),
            wrt: Vec::new(),
            seeds: Vec::new(),
            checkpoint: CheckpointPolicy::SaveAll,
            loops: Default::default(),
            dump_dir: None,
            print_before_all: false,
            print_after_all: false,
            print_after: Vec::new(),
        }
    }
}

/// One pass's record for `passes.txt`.
#[derive(Clone, Debug, PartialEq)]
pub struct PassRecord {
    pub pass: Pass,
    pub micros: u128,
    pub nodes_before: usize,
    pub nodes_after: usize,
}

/// The graphs after the pipeline.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // one value per pipeline run
pub enum Stage {
    One(Graph),
    Split {
        joint: Graph,
        forward: Graph,
        backward: Graph,
    },
}

impl Stage {
    fn graphs(&self) -> Vec<(&'static str, &Graph)> {
        match self {
            Stage::One(g) => vec![("", g)],
            Stage::Split {
                joint,
                forward,
                backward,
            } => vec![("", joint), (".forward", forward), (".backward", backward)],
        }
    }

    fn len(&self) -> usize {
        self.graphs().iter().map(|(_, g)| g.len()).sum()
    }

    fn map(self, f: impl Fn(&Graph) -> Result<Graph, PassError>) -> Result<Stage, PassError> {
        Ok(match self {
            Stage::One(g) => Stage::One(f(&g)?),
            Stage::Split {
                joint,
                forward,
                backward,
            } => Stage::Split {
                joint: f(&joint)?,
                forward: f(&forward)?,
                backward: f(&backward)?,
            },
        })
    }
}

/// The result of a pipeline run.
#[derive(Clone, Debug)]
pub struct PipelineResult {
    pub stage: Stage,
    /// The autodiff result as it came out of `autodiff`, if it ran.
    pub grad: Option<GradGraph>,
    /// The partition, if it ran (residual names, types and sizes).
    pub partition: Option<Partition>,
    /// What `checkpoint` and `partition` chose, explained.
    pub explanation: Option<Explanation>,
    /// The binomial schedule the graph follows, if one was applied
    /// (`Slots(c)`, or the one a budget chose).
    pub binomial: Option<Binomial>,
    pub records: Vec<PassRecord>,
    /// Arena statistics per graph (joint, forward, backward), if planned.
    pub memory: Vec<MemoryStats>,
    /// The text requested by the print options.
    pub printed: String,
}

fn header(out: &mut String, when: &str, pass: Pass, stage: &Stage) {
    for (suffix, g) in stage.graphs() {
        let _ = writeln!(out, "// ----- IR {when} {}{} ----- //", pass.name(), suffix);
        let _ = write!(out, "{g}");
    }
}

/// Runs the pipeline on `g`.
pub fn run_pipeline(g: &Graph, options: &PipelineOptions) -> Result<PipelineResult, PassError> {
    let mut result = PipelineResult {
        stage: Stage::One(g.clone()),
        grad: None,
        partition: None,
        explanation: None,
        binomial: None,
        records: Vec::new(),
        memory: Vec::new(),
        printed: String::new(),
    };
    let dump = |stage: &Stage, step: usize, label: &str| -> Result<(), PassError> {
        let Some(dir) = &options.dump_dir else { return Ok(()) };
        std::fs::create_dir_all(dir)
            .map_err(|e| PassError::Pipeline(format!("cannot create {}: {e}", dir.display())))?;
        for (suffix, g) in stage.graphs() {
            for (ext, text) in [("wg", g.to_string()), ("dot", to_dot(g))] {
                let path = dir.join(format!("{step:02}-{label}{suffix}.{ext}"));
                std::fs::write(&path, text)
                    .map_err(|e| PassError::Pipeline(format!("cannot write {}: {e}", path.display())))?;
            }
        }
        Ok(())
    };
    dump(&result.stage, 0, "input")?;
    let mut save_all_before: Option<usize> = None;
    // What autodiff says about the joint graph (its primal outputs, seed
    // inputs, the inputs differentiated). The joint graph itself lives in
    // the stage and only there: checkpoint and partition assemble a
    // `GradGraph` from the two where they need one, so there is no second
    // copy to keep in step (`graph` here is an empty placeholder).
    let mut meta: Option<GradGraph> = None;
    for (i, &pass) in options.passes.iter().enumerate() {
        if options.print_before_all {
            header(&mut result.printed, "before", pass, &result.stage);
        }
        let before = result.stage.len();
        let t0 = Instant::now();
        let stage = std::mem::replace(&mut result.stage, Stage::One(Graph::new("")));
        result.stage = match (pass, stage) {
            (Pass::Autodiff, Stage::One(g)) => {
                let wrt: Vec<&str> = if options.wrt.is_empty() {
                    g.differentiable_inputs()
                } else {
                    options.wrt.iter().map(String::as_str).collect()
                };
                let seeds: Vec<(&str, Seed)> = options.seeds.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
                let mut gg = autodiff_with(&g, &wrt, &seeds, options.loops)?;
                let joint = std::mem::replace(&mut gg.graph, Graph::new(""));
                meta = Some(gg);
                Stage::One(joint)
            }
            (Pass::Autodiff, Stage::Split { .. }) => {
                return Err(PassError::Pipeline("`autodiff` must run before `partition`".into()))
            }
            (Pass::Simplify, stage) => stage.map(simplify)?,
            (Pass::Checkpoint, Stage::One(joint)) => {
                let info = meta
                    .as_mut()
                    .ok_or_else(|| PassError::Pipeline("`checkpoint` needs `autodiff` before it".into()))?;
                let mut assembled = GradGraph {
                    graph: joint,
                    ..info.clone()
                };
                let grad = &mut assembled;
                // Either a saved set, or a graph rewritten to follow the
                // binomial schedule (its slots and recomputed block
                // count), which then saves nothing. The decision is
                // written into the graph as `save`/`recompute` marks,
                // which `partition` reads (and every pass between keeps).
                let (chosen, binomial) = match plan(grad, &options.checkpoint)? {
                    Plan::Saved(chosen) => (chosen, None),
                    Plan::Binomial(rewritten, schedule) => (Vec::new(), Some((*rewritten, schedule))),
                };
                if let Some((rewritten, schedule)) = binomial {
                    // The rewritten graph's own save-all saves nothing:
                    // compare with the graph as it was.
                    save_all_before = Some(crate::checkpoint::save_all_activation_bytes(grad));
                    *grad = rewritten;
                    result.binomial = Some(schedule);
                }
                let marked = crate::checkpoint::mark_decision(grad, &chosen);
                // (The binomial rewrite may have changed what the joint
                // graph's metadata says.)
                *info = GradGraph {
                    graph: Graph::new(""),
                    ..assembled
                };
                Stage::One(marked)
            }
            (Pass::Checkpoint, Stage::Split { .. }) => {
                return Err(PassError::Pipeline("`checkpoint` must run before `partition`".into()))
            }
            (Pass::Partition, Stage::One(joint)) => {
                let info = meta
                    .as_ref()
                    .ok_or_else(|| PassError::Pipeline("`partition` needs `autodiff` before it".into()))?;
                // Partition the graph as the earlier passes left it, saving
                // what its marks say (the checkpoint pass's decision).
                let assembled = GradGraph {
                    graph: joint,
                    ..info.clone()
                };
                let grad = &assembled;
                if grad.graph.outputs().len() == grad.primal_outputs {
                    return Err(PassError::Pipeline(
                        "nothing to differentiate: no input is differentiated (every input of the graph is \
                         `nodiff` or bool, or none was asked for), so there is no backward to split off"
                            .into(),
                    ));
                }
                let saved = crate::checkpoint::saved_by_marks(grad);
                let p = partition(grad, Some(&saved))?;
                let mut explanation = explain(grad, &p);
                if let Some(b) = result.binomial {
                    // Under the binomial rewrite the recomputation is the
                    // block copies, which the partition sees as backward
                    // nodes of their own.
                    explanation.extra_flops += b.extra_flops;
                    explanation.default_activation_bytes =
                        save_all_before.unwrap_or(explanation.default_activation_bytes);
                }
                result.explanation = Some(explanation);
                // The joint function follows the partition too.
                let joint = rejoin(&grad.graph, &p)?;
                let stage = Stage::Split {
                    joint,
                    forward: p.forward.clone(),
                    backward: p.backward.clone(),
                };
                result.partition = Some(p);
                result.grad = Some(assembled);
                stage
            }
            (Pass::Partition, Stage::Split { .. }) => return Err(PassError::Pipeline("`partition` runs once".into())),
            (Pass::Fuse, stage) => stage.map(fuse)?,
            (Pass::MemoryPlan, stage) => {
                let mut stats = Vec::new();
                let stage = match stage {
                    Stage::One(g) => {
                        let (g, s) = memory_plan_with_stats(&g)?;
                        stats.push(s);
                        Stage::One(g)
                    }
                    Stage::Split {
                        joint,
                        forward,
                        backward,
                    } => {
                        let mut plan = |g: &Graph| -> Result<Graph, PassError> {
                            let (g, s) = memory_plan_with_stats(g)?;
                            stats.push(s);
                            Ok(g)
                        };
                        Stage::Split {
                            joint: plan(&joint)?,
                            forward: plan(&forward)?,
                            backward: plan(&backward)?,
                        }
                    }
                };
                result.memory = stats;
                stage
            }
        };
        if cfg!(debug_assertions) {
            for (_, g) in result.stage.graphs() {
                verify(g)?;
            }
        }
        result.records.push(PassRecord {
            pass,
            micros: t0.elapsed().as_micros(),
            nodes_before: before,
            nodes_after: result.stage.len(),
        });
        if options.print_after_all || options.print_after.contains(&pass) {
            header(&mut result.printed, "after", pass, &result.stage);
        }
        dump(&result.stage, i + 1, &format!("after-{}", pass.name()))?;
    }
    if let (Some(dir), Some(explanation)) = (&options.dump_dir, &result.explanation) {
        let path = dir.join("checkpoint.txt");
        std::fs::write(&path, explanation.to_string())
            .map_err(|e| PassError::Pipeline(format!("cannot write {}: {e}", path.display())))?;
    }
    if let Some(dir) = &options.dump_dir {
        let path = dir.join("passes.txt");
        std::fs::write(&path, format_records(&result.records))
            .map_err(|e| PassError::Pipeline(format!("cannot write {}: {e}", path.display())))?;
    }
    // Without a partition, the result's gradient graph is the stage's
    // joint graph as the passes left it.
    if let (None, Some(info), Stage::One(joint)) = (&result.grad, meta, &result.stage) {
        result.grad = Some(GradGraph {
            graph: joint.clone(),
            ..info
        });
    }
    Ok(result)
}

/// The `passes.txt` table.
pub fn format_records(records: &[PassRecord]) -> String {
    let mut out = String::from("pass          time (µs)   nodes before   nodes after\n");
    for r in records {
        let _ = writeln!(
            out,
            "{:<12} {:>10} {:>14} {:>13}",
            r.pass.name(),
            r.micros,
            r.nodes_before,
            r.nodes_after
        );
    }
    out
}
