//! The `wengert` command line: `print`, `dot`, `eval`.
//!
//! Every command returns its standard output as a `String` or a
//! [`CliError`] whose message names the file and place, so the binary only
//! prints and sets the exit code (and tests can call [`run`] directly).

use crate::api::{compile, value_and_grad_with_seeds, Executable, Options};
use crate::npy::read_npy;
use clap::{Parser, Subcommand};
use std::fmt::Write;
use std::io::Read;
use std::path::Path;
use wengert_codegen::CodegenOptions;
use wengert_ir::tensor::write_nested_list;
use wengert_ir::{interpret, parse, parse_literal, to_dot, verify, Graph, IrError, Tensor};
use wengert_passes::autodiff::LoopPolicy;
use wengert_passes::{run_pipeline, CheckpointPolicy, GradGraph, Pass, PipelineOptions, Seed, Stage};

/// An error of the command line, already formatted for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

#[derive(Parser, Debug)]
#[command(
    name = "wengert",
    version,
    about = "A static-graph compiler for reverse-mode automatic differentiation"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Parse, verify and print the canonical text of a graph.
    Print {
        /// A `.wg` file, or `-` for standard input.
        file: String,
    },
    /// Print a graph in Graphviz DOT format.
    Dot {
        /// A `.wg` file, or `-` for standard input.
        file: String,
    },
    /// Evaluate a graph with the reference interpreter.
    Eval {
        /// A `.wg` file, or `-` for standard input.
        file: String,
        /// An input value: `NAME=0.7`, `NAME=[[1,2],[3,4]]` or `NAME=@file.npy`.
        #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
        inputs: Vec<String>,
        /// Print one JSON object instead of `NAME = VALUE` lines.
        #[arg(long)]
        json: bool,
    },
    /// Differentiate a graph and print the gradient graph: the original
    /// outputs, then `grad_<input>` for each input in `--wrt`.
    Grad {
        /// A `.wg` file, or `-` for standard input.
        file: String,
        /// Inputs to differentiate with respect to, comma-separated
        /// (default: every differentiable input).
        #[arg(long, value_delimiter = ',')]
        wrt: Vec<String>,
        /// Make an output's seed an input of the gradient graph:
        /// `--seed y1=u1` (scalar outputs default to a seed of 1).
        #[arg(long = "seed", value_name = "OUTPUT=INPUT")]
        seeds: Vec<String>,
        /// Print the forward and backward graphs of the partition instead of
        /// the joint graph.
        #[arg(long)]
        split: bool,
        /// Checkpoint policy for the partition: all, sqrt, segments=K,
        /// budget=BYTES (e.g. budget=2MiB).
        #[arg(long, default_value = "all")]
        checkpoint: String,
        /// Print what is saved and what is recomputed, with bytes and FLOPs.
        #[arg(long)]
        explain: bool,
        /// What loops store for their backward: all (trajectory and
        /// residuals), carries (trajectory; steps recomputed) or
        /// binomial=C (C saved states, Revolve schedule), every=K (the state
        /// before every K-th step, segments recomputed), budget=BYTES (the
        /// first that fits).
        #[arg(long, default_value = "all")]
        loops: String,
    },
    /// Run passes over a graph and print the IR (by default the final IR;
    /// MLIR/LLVM-style `--print-after-all` and friends show each step).
    Opt {
        /// A `.wg` file, or `-` for standard input.
        file: String,
        /// Passes to run, comma-separated, in order: autodiff, simplify,
        /// checkpoint, partition, fuse, memory-plan (default: all).
        #[arg(long, value_delimiter = ',')]
        passes: Vec<String>,
        /// For autodiff: inputs to differentiate (default: all differentiable).
        #[arg(long, value_delimiter = ',')]
        wrt: Vec<String>,
        /// For autodiff: `--seed y1=u1` makes an output's seed an input.
        #[arg(long = "seed", value_name = "OUTPUT=INPUT")]
        seeds: Vec<String>,
        /// Print the IR before every pass.
        #[arg(long)]
        print_before_all: bool,
        /// Print the IR after every pass.
        #[arg(long)]
        print_after_all: bool,
        /// Print the IR after this pass (repeatable).
        #[arg(long, value_name = "PASS")]
        print_after: Vec<String>,
        /// Write one file per pass, DOT files and passes.txt here (also set by
        /// the environment variable WENGERT_DUMP).
        #[arg(long, value_name = "DIR")]
        dump: Option<String>,
        /// Checkpoint policy: all, sqrt, segments=K, budget=BYTES (e.g. 2MiB).
        #[arg(long, default_value = "all")]
        checkpoint: String,
        /// What loops store for their backward: all, carries, binomial=C, every=K,
        /// budget=BYTES.
        #[arg(long, default_value = "all")]
        loops: String,
    },
    /// Forward mode: print the tangent graph (the outputs, then
    /// `tangent_<output>` = J·v for tangent inputs `tangent_<input>`),
    /// which `eval` and `run` read.
    Jvp {
        /// A `.wg` file, or `-` for standard input.
        file: String,
        /// Inputs to perturb, comma-separated (default: every
        /// differentiable input).
        #[arg(long, value_delimiter = ',')]
        wrt: Vec<String>,
    },
    /// Print the Jacobian of one output with respect to some inputs at
    /// given input values, as an [outputs × inputs] matrix (forward mode
    /// when the output has more elements than the inputs, else reverse).
    Jacobian {
        /// A `.wg` file, or `-` for standard input.
        file: String,
        /// The output to differentiate (default: the first).
        #[arg(long)]
        of: Option<String>,
        /// Inputs, comma-separated (default: every differentiable input).
        #[arg(long, value_delimiter = ',')]
        wrt: Vec<String>,
        /// Force `forward` or `reverse` mode.
        #[arg(long)]
        mode: Option<String>,
        /// An input value: `NAME=0.7`, `NAME=[[1,2],[3,4]]` or `NAME=@file.npy`.
        #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
        inputs: Vec<String>,
    },
    /// Print the Hessian of a scalar output at given input values
    /// (forward over reverse).
    Hessian {
        /// A `.wg` file, or `-` for standard input.
        file: String,
        /// The scalar output (default: the first).
        #[arg(long)]
        of: Option<String>,
        /// Inputs, comma-separated (default: every differentiable input).
        #[arg(long, value_delimiter = ',')]
        wrt: Vec<String>,
        /// An input value: `NAME=0.7`, `NAME=[[1,2],[3,4]]` or `NAME=@file.npy`.
        #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
        inputs: Vec<String>,
    },
    /// Compile a graph with the JIT and run it (optionally its gradient).
    Run {
        /// A `.wg` file, or `-` for standard input.
        file: String,
        /// An input value: `NAME=0.7`, `NAME=[[1,2],[3,4]]` or `NAME=@file.npy`.
        #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
        inputs: Vec<String>,
        /// Differentiate first: print the outputs, then `grad_<input>`.
        #[arg(long)]
        grad: bool,
        /// With `--grad`: the inputs to differentiate with respect to
        /// (default: every differentiable input).
        #[arg(long, value_delimiter = ',')]
        wrt: Vec<String>,
        /// With `--grad`: `--seed y1=u1` makes an output's seed an input.
        #[arg(long = "seed", value_name = "OUTPUT=INPUT")]
        seeds: Vec<String>,
        /// Write the CLIF and the disassembly of each compiled function here.
        #[arg(long, value_name = "DIR")]
        dump: Option<String>,
        /// Print one JSON object instead of `NAME = VALUE` lines.
        #[arg(long)]
        json: bool,
    },
}

/// Writes the CLIF and disassembly of executables into `dir`.
pub fn dump_executables(dir: &str, exes: &[&Executable]) -> Result<(), CliError> {
    for exe in exes {
        exe.write_text(Path::new(dir)).map_err(|e| CliError(e.to_string()))?;
    }
    Ok(())
}

/// The inputs to differentiate: those named, or every differentiable one.
fn wrt_names<'g>(g: &'g Graph, wrt: &'g [String]) -> Vec<&'g str> {
    if wrt.is_empty() {
        g.differentiable_inputs()
    } else {
        wrt.iter().map(String::as_str).collect()
    }
}

/// Parses `--seed OUTPUT=INPUT` arguments.
fn parse_seeds(seeds: &[String]) -> Result<Vec<(&str, Seed)>, CliError> {
    seeds
        .iter()
        .map(|s| {
            let (out, input) = s
                .split_once('=')
                .ok_or_else(|| CliError(format!("--seed `{s}` must look like OUTPUT=INPUT")))?;
            Ok((out.trim(), Seed::Input(input.trim().to_string())))
        })
        .collect()
}

/// Differentiates `g` as the `grad` command does.
pub fn grad_graph(
    file: &str,
    g: &Graph,
    wrt: &[String],
    seeds: &[String],
    loops: LoopPolicy,
) -> Result<GradGraph, CliError> {
    let specs = parse_seeds(seeds)?;
    wengert_passes::autodiff::autodiff_with(g, &wrt_names(g, wrt), &specs, loops)
        .map_err(|e| CliError(format!("{file}: {e}")))
}

/// Parses a checkpoint policy: `all`, `sqrt`, `mincut`, `slots=C`,
/// `segments=K`, `budget=BYTES` (with an optional `KiB`, `MiB` or `GiB`
/// suffix). (The policy is a `passes` enum; its spelling is the command
/// line's.)
pub fn parse_checkpoint_policy(text: &str) -> Result<CheckpointPolicy, CliError> {
    let bad = || {
        CliError(format!(
            "unknown checkpoint policy `{text}` (use all, sqrt, mincut, slots=C, segments=K or budget=BYTES like budget=2MiB)"
        ))
    };
    let t = text.trim();
    match t {
        "all" => return Ok(CheckpointPolicy::SaveAll),
        "sqrt" => return Ok(CheckpointPolicy::Sqrt),
        "mincut" | "min-cut" => return Ok(CheckpointPolicy::MinCut),
        _ if t.starts_with("slots=") => {
            return t["slots=".len()..]
                .parse()
                .ok()
                .filter(|&c| c > 0)
                .map(CheckpointPolicy::Slots)
                .ok_or_else(bad)
        }
        _ => {}
    }
    if let Some(k) = t.strip_prefix("segments=") {
        return k
            .parse()
            .ok()
            .filter(|&k| k > 0)
            .map(CheckpointPolicy::Segments)
            .ok_or_else(bad);
    }
    if let Some(b) = t.strip_prefix("budget=") {
        let (num, scale) = [("GiB", 1usize << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1)]
            .iter()
            .find_map(|(suffix, scale)| b.strip_suffix(suffix).map(|n| (n, *scale)))
            .unwrap_or((b, 1));
        return num
            .trim()
            .parse::<f64>()
            .ok()
            .map(|v| CheckpointPolicy::Budget((v * scale as f64) as usize))
            .ok_or_else(bad);
    }
    Err(bad())
}

/// Parses a loop policy: `all`, `carries`, `binomial=C`, `every=K` or
/// `budget=BYTES`.
pub fn parse_loop_policy(s: &str) -> Result<LoopPolicy, CliError> {
    match s.trim() {
        "all" => Ok(LoopPolicy::SaveAll),
        "carries" => Ok(LoopPolicy::SaveCarries),
        other => {
            if let Some(b) = other.strip_prefix("budget=") {
                return match parse_checkpoint_policy(&format!("budget={b}")) {
                    Ok(CheckpointPolicy::Budget(bytes)) => Ok(LoopPolicy::Budget(bytes)),
                    _ => Err(CliError(format!(
                        "loop policy `{other}`: expected a byte count like budget=2MiB"
                    ))),
                };
            }
            if let Some(k) = other.strip_prefix("every=") {
                return match k.trim().parse::<usize>() {
                    Ok(k) if k >= 1 => Ok(LoopPolicy::Every(k)),
                    _ => Err(CliError(format!("loop policy `{other}`: expected every=K with K >= 1"))),
                };
            }
            match other.strip_prefix("binomial=").map(|c| c.trim().parse::<usize>()) {
                Some(Ok(c)) if c >= 1 => Ok(LoopPolicy::Binomial(c)),
                _ => Err(CliError(format!(
                    "unknown loop policy `{other}` (expected all, carries, binomial=C with C >= 1, every=K, or budget=BYTES)"
                ))),
            }
        }
    }
}

/// Reads the text of `file` (`-` is standard input).
pub fn read_source(file: &str) -> Result<String, CliError> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError(format!("cannot read standard input: {e}")))?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).map_err(|e| CliError(format!("cannot read {file}: {e}")))
    }
}

/// Formats an IR error with the file name in front of each place.
pub fn located(file: &str, e: &IrError) -> CliError {
    let file = if file == "-" { "<stdin>" } else { file };
    match e {
        IrError::Parse(errors) => CliError(
            errors
                .iter()
                .map(|p| format!("{file}:{p}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        other => CliError(format!("{file}: {other}")),
    }
}

/// Reads, parses and verifies a graph.
pub fn load_graph(file: &str) -> Result<Graph, CliError> {
    let text = read_source(file)?;
    let g = parse(&text).map_err(|e| located(file, &e))?;
    verify(&g).map_err(|e| located(file, &e))?;
    Ok(g)
}

/// Parses `NAME=VALUE` arguments into the graph's inputs, in the graph's
/// order. Missing, unknown, repeated and ill-shaped inputs are errors that
/// name the input.
pub fn parse_inputs(g: &Graph, args: &[String]) -> Result<Vec<Tensor>, CliError> {
    let mut given: Vec<Option<Tensor>> = vec![None; g.inputs().len()];
    for arg in args {
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| CliError(format!("--input `{arg}` must look like NAME=VALUE")))?;
        let name = name.trim();
        let index = g.inputs().iter().position(|i| i.name == name).ok_or_else(|| {
            let names: Vec<&str> = g.inputs().iter().map(|i| i.name.as_str()).collect();
            CliError(format!(
                "--input {name}: the graph has no input `{name}` (its inputs: {})",
                names.join(", ")
            ))
        })?;
        let decl = &g.inputs()[index];
        if given[index].is_some() {
            return Err(CliError(format!("--input {name}: given more than once")));
        }
        let tensor = if let Some(path) = value.strip_prefix('@') {
            let t = read_npy(Path::new(path)).map_err(|e| CliError(format!("--input {name}: {e}")))?;
            if t.dtype() == decl.ty.dtype {
                t
            } else {
                t.convert(decl.ty.dtype)
            }
        } else {
            parse_literal(value, decl.ty.dtype)
                .map_err(|e| CliError(format!("--input {name}: cannot read `{value}`: {e}")))?
        };
        if tensor.shape() != decl.ty.shape.as_slice() {
            return Err(CliError(format!(
                "--input {name}: expected a value of shape {:?} ({}), got shape {:?}",
                decl.ty.shape,
                decl.ty,
                tensor.shape()
            )));
        }
        given[index] = Some(tensor);
    }
    given
        .into_iter()
        .zip(g.inputs())
        .map(|(t, decl)| {
            t.ok_or_else(|| CliError(format!("missing --input {}=VALUE (expected {})", decl.name, decl.ty)))
        })
        .collect()
}

/// Writes a tensor as JSON (nested arrays; non-finite numbers as strings).
pub fn tensor_json(t: &Tensor) -> String {
    let items: Vec<String> = t
        .to_f64_vec()
        .into_iter()
        .map(|v| {
            if v.is_finite() {
                format!("{v:?}")
            } else {
                format!("\"{v}\"")
            }
        })
        .collect();
    let mut out = String::new();
    let _ = write_nested_list(&mut out, t.shape(), &items);
    out
}

/// Formats named outputs as `NAME = VALUE` lines or one JSON object.
pub fn format_outputs(outputs: &[(String, Tensor)], json: bool) -> String {
    let mut out = String::new();
    if json {
        out.push('{');
        for (i, (name, t)) in outputs.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "\"{name}\": {}", tensor_json(t));
        }
        out.push_str("}\n");
    } else {
        for (name, t) in outputs {
            let _ = writeln!(out, "{name} = {t}");
        }
    }
    out
}

/// The output named `of`, or the graph's first.
fn output_or_first(g: &Graph, of: Option<String>) -> Result<String, CliError> {
    match of {
        Some(o) => Ok(o),
        None => g
            .outputs()
            .first()
            .map(|o| o.name.clone())
            .ok_or_else(|| CliError("the graph has no outputs".into())),
    }
}

/// Runs one command and returns what it prints.
pub fn run(cli: Cli) -> Result<String, CliError> {
    match cli.command {
        Command::Print { file } => Ok(load_graph(&file)?.to_string()),
        Command::Dot { file } => Ok(to_dot(&load_graph(&file)?)),
        Command::Eval { file, inputs, json } => {
            let g = load_graph(&file)?;
            let values = parse_inputs(&g, &inputs)?;
            let outs = interpret(&g, &values).map_err(|e| located(&file, &e))?;
            let named: Vec<(String, Tensor)> = g.outputs().iter().map(|o| o.name.clone()).zip(outs).collect();
            Ok(format_outputs(&named, json))
        }
        Command::Grad {
            file,
            wrt,
            seeds,
            split,
            checkpoint,
            explain,
            loops,
        } => {
            let g = load_graph(&file)?;
            let loops = parse_loop_policy(&loops)?;
            if !split && !explain && checkpoint == "all" {
                return Ok(grad_graph(&file, &g, &wrt, &seeds, loops)?.graph.to_string());
            }
            let wrt_list = wrt_names(&g, &wrt);
            let seed_list = parse_seeds(&seeds)?;
            let policy = parse_checkpoint_policy(&checkpoint)?;
            let located = |e: &dyn std::fmt::Display| CliError(format!("{file}: {e}"));
            if !split && !explain {
                // A policy alone: print the gradient graph as the policy
                // computes it (the forward and backward halves rejoined,
                // recomputation included), which `eval` and `run` read.
                let options = PipelineOptions {
                    passes: vec![Pass::Autodiff, Pass::Simplify, Pass::Checkpoint, Pass::Partition],
                    wrt: wrt_list.iter().map(|s| s.to_string()).collect(),
                    seeds: seed_list.into_iter().map(|(o, s)| (o.to_string(), s)).collect(),
                    checkpoint: policy,
                    loops,
                    ..PipelineOptions::default()
                };
                let result = run_pipeline(&g, &options).map_err(|e| located(&e))?;
                let Stage::Split { joint, .. } = &result.stage else {
                    return Err(CliError("internal error: the pipeline did not partition".into()));
                };
                return Ok(format!(
                    "// the gradient graph under --checkpoint {checkpoint} (simplified; the backward's \
                     recomputation included); --split prints the forward and backward, --explain what is \
                     saved and recomputed\n{joint}"
                ));
            }
            // `--explain` compiles (to measure what the code writes);
            // otherwise differentiate, simplify, checkpoint and partition.
            let compiled = if explain {
                let options = Options {
                    checkpoint: policy.clone(),
                    loops,
                    ..Options::default()
                };
                Some(value_and_grad_with_seeds(&g, &wrt_list, &seed_list, &options).map_err(|e| located(&e))?)
            } else {
                None
            };
            let owned;
            let result = match &compiled {
                Some(f) => f.pipeline(),
                None => {
                    let options = PipelineOptions {
                        passes: Pass::ALL.to_vec(),
                        wrt: wrt_list.iter().map(|s| s.to_string()).collect(),
                        seeds: seed_list.into_iter().map(|(o, s)| (o.to_string(), s)).collect(),
                        checkpoint: policy.clone(),
                        loops,
                        ..PipelineOptions::default()
                    };
                    owned = run_pipeline(&g, &options).map_err(|e| located(&e))?;
                    &owned
                }
            };
            let Some(p) = &result.partition else {
                return Err(CliError("internal error: the pipeline did not partition".into()));
            };
            let mut out = String::new();
            if split {
                let _ = writeln!(out, "// ----- forward ----- //\n{}", p.forward);
                let _ = writeln!(out, "// ----- backward ----- //\n{}", p.backward);
                let _ = writeln!(
                    out,
                    "// saved: {} value(s), {} bytes",
                    p.residuals.len(),
                    p.saved_bytes()
                );
                for r in &p.residuals {
                    let _ = writeln!(
                        out,
                        "//   {}: {} = {}",
                        r.name,
                        r.ty,
                        result
                            .grad
                            .as_ref()
                            .map(|gg| gg.graph.value_name(r.node))
                            .unwrap_or_default()
                    );
                }
            }
            if let Some(f) = &compiled {
                let _ = write!(out, "{}", f.explain().map_err(|e| located(&e))?);
                // The machine's part of the compilation (not golden-tested
                // with the rest: it differs between machines).
                let _ = writeln!(
                    out,
                    "matrix products: up to {} thread(s); kernels {}",
                    wengert_runtime::pool::default_threads(),
                    wengert_runtime::gemm::machine_report()
                );
            }
            Ok(out)
        }
        Command::Opt {
            file,
            passes,
            wrt,
            seeds,
            print_before_all,
            print_after_all,
            print_after,
            dump,
            checkpoint,
            loops,
        } => {
            let g = load_graph(&file)?;
            let fail = |e: wengert_passes::PassError| CliError(format!("{file}: {e}"));
            let passes = if passes.is_empty() {
                Pass::ALL.to_vec()
            } else {
                passes
                    .iter()
                    .map(|p| Pass::from_name(p.trim()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| CliError(e.to_string()))?
            };
            let print_after = print_after
                .iter()
                .map(|p| Pass::from_name(p.trim()))
                .collect::<Result<_, _>>()
                .map_err(|e| CliError(e.to_string()))?;
            let options = PipelineOptions {
                passes,
                wrt,
                seeds: parse_seeds(&seeds)?
                    .into_iter()
                    .map(|(o, s)| (o.to_string(), s))
                    .collect(),
                dump_dir: dump
                    .map(Into::into)
                    .or_else(|| std::env::var_os("WENGERT_DUMP").map(Into::into)),
                print_before_all,
                print_after_all,
                print_after,
                checkpoint: parse_checkpoint_policy(&checkpoint)?,
                loops: parse_loop_policy(&loops)?,
            };
            let quiet = !options.print_before_all && !options.print_after_all && options.print_after.is_empty();
            let result = run_pipeline(&g, &options).map_err(fail)?;
            if !quiet {
                return Ok(result.printed);
            }
            Ok(match &result.stage {
                Stage::One(g) => g.to_string(),
                Stage::Split { joint, forward, backward } => format!(
                    "// ----- joint ----- //\n{joint}// ----- forward ----- //\n{forward}// ----- backward ----- //\n{backward}"
                ),
            })
        }
        Command::Jvp { file, wrt } => {
            let g = load_graph(&file)?;
            let t = wengert_passes::jvp::jvp(&g, &wrt_names(&g, &wrt)).map_err(|e| CliError(format!("{file}: {e}")))?;
            Ok(t.graph.to_string())
        }
        Command::Jacobian {
            file,
            of,
            wrt,
            mode,
            inputs,
        } => {
            let g = load_graph(&file)?;
            let of = output_or_first(&g, of)?;
            let force = match mode.as_deref() {
                None => None,
                Some("forward") => Some(crate::forward::JacobianMode::Forward),
                Some("reverse") => Some(crate::forward::JacobianMode::Reverse),
                Some(m) => return Err(CliError(format!("--mode {m}: expected forward or reverse"))),
            };
            let fail = |e: crate::api::Error| CliError(format!("{file}: {e}"));
            let j =
                crate::forward::jacobian(&g, &of, &wrt_names(&g, &wrt), force, &Options::default()).map_err(fail)?;
            let values = parse_inputs(&g, &inputs)?;
            let m = j.call(&values.iter().collect::<Vec<_>>()).map_err(fail)?;
            Ok(format!(
                "// d{of}/d({}), {:?} mode\n{}\n",
                wrt_names(&g, &wrt).join(", "),
                j.mode,
                m
            ))
        }
        Command::Hessian { file, of, wrt, inputs } => {
            let g = load_graph(&file)?;
            let of = output_or_first(&g, of)?;
            let fail = |e: crate::api::Error| CliError(format!("{file}: {e}"));
            let h = crate::forward::hessian(&g, &of, &wrt_names(&g, &wrt), &Options::default()).map_err(fail)?;
            let values = parse_inputs(&g, &inputs)?;
            let m = h.call(&values.iter().collect::<Vec<_>>()).map_err(fail)?;
            Ok(format!(
                "// Hessian of {of} in ({})\n{}\n",
                wrt_names(&g, &wrt).join(", "),
                m
            ))
        }
        Command::Run {
            file,
            inputs,
            grad,
            wrt,
            seeds,
            dump,
            json,
        } => {
            let g = load_graph(&file)?;
            let options = Options {
                codegen: CodegenOptions {
                    keep_text: dump.is_some(),
                    ..CodegenOptions::default()
                },
                ..Options::default()
            };
            let fail = |e: crate::api::Error| CliError(format!("{file}: {e}"));
            if grad {
                let specs = parse_seeds(&seeds)?;
                let f = value_and_grad_with_seeds(&g, &wrt_names(&g, &wrt), &specs, &options).map_err(fail)?;
                if let Some(dir) = &dump {
                    let fail2 = |e: crate::api::Error| CliError(format!("{file}: {e}"));
                    dump_executables(
                        dir,
                        &[
                            f.joint(),
                            f.forward_executable().map_err(fail2)?,
                            f.backward_executable().map_err(fail2)?,
                        ],
                    )?;
                }
                let values = parse_inputs(f.graph(), &inputs)?;
                let refs: Vec<&Tensor> = values.iter().collect();
                let outs = f.call(&refs).map_err(fail)?;
                let named: Vec<(String, Tensor)> =
                    f.graph().outputs().iter().map(|o| o.name.clone()).zip(outs).collect();
                Ok(format_outputs(&named, json))
            } else {
                let exe = compile(&g, &options).map_err(fail)?;
                if let Some(dir) = &dump {
                    dump_executables(dir, &[&exe])?;
                }
                let values = parse_inputs(&g, &inputs)?;
                let refs: Vec<&Tensor> = values.iter().collect();
                let outs = exe.call(&refs).map_err(|e| CliError(format!("{file}: {e}")))?;
                let named: Vec<(String, Tensor)> = g.outputs().iter().map(|o| o.name.clone()).zip(outs).collect();
                Ok(format_outputs(&named, json))
            }
        }
    }
}
