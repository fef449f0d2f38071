//! Reverse-mode automatic differentiation as a graph pass.
//!
//! `autodiff(f)` returns a joint graph that computes f's outputs and the
//! vector-Jacobian product uᵀJ for output seeds u. The forward nodes are
//! copied unchanged (same ids); adjoint nodes are appended while walking the
//! forward nodes in reverse topological order, as the seed's case studies do
//! by hand. An adjoint reached along several paths is the sum of its
//! contributions (case 2); operands that do not depend on a differentiated
//! input get no adjoint; contributions known to be zero are never built
//! (symbolic zeros), and multiplications by a seed of one are folded away.

use crate::emit::Emitter;
use crate::error::PassError;
pub use crate::scan_vjp::LoopPolicy;
use crate::vjp::{differentiable_dtype, vjp};
use wengert_ir::{verify, Graph, NodeId, Op, Tensor};

/// The seed (output adjoint) of one output.
#[derive(Clone, Debug, PartialEq)]
pub enum Seed {
    /// A constant one in every element; the default for scalar outputs.
    One,
    /// A new input of the gradient graph with this name, of the output's
    /// type (case 4's `u1`, `u2`); the default for non-scalar outputs is
    /// `seed_<output>`.
    Input(String),
    /// A constant seed; its type must equal the output's.
    Const(Tensor),
    /// The output is not differentiated (an auxiliary output).
    Zero,
}

/// The result of [`autodiff`]: the joint graph and how to read it.
#[derive(Clone, Debug)]
pub struct GradGraph {
    /// Inputs: the original inputs, then the seed inputs. Outputs: the
    /// original outputs, then `grad_<input>` for each input in `wrt`.
    pub graph: Graph,
    /// How many of the outputs are the original (primal) outputs.
    pub primal_outputs: usize,
    /// Names of the inputs that are seeds.
    pub seed_inputs: Vec<String>,
    /// The inputs differentiated, in output order.
    pub wrt: Vec<String>,
}

/// Differentiates `g` with respect to the inputs named in `wrt`. `seeds`
/// sets the seed of some outputs; the others get [`Seed::One`] if scalar,
/// else a seed input named `seed_<output>` (bool outputs get none).
pub fn autodiff(g: &Graph, wrt: &[&str], seeds: &[(&str, Seed)]) -> Result<GradGraph, PassError> {
    autodiff_with(g, wrt, seeds, LoopPolicy::default())
}

/// [`autodiff`] with a choice of what loops store for their backward
/// loops (see [`LoopPolicy`]).
pub fn autodiff_with(
    g: &Graph,
    wrt: &[&str],
    seeds: &[(&str, Seed)],
    loops: LoopPolicy,
) -> Result<GradGraph, PassError> {
    verify(g)?;
    // Check what was asked for before building anything.
    let wrt_nodes = wrt_nodes(g, wrt)?;
    for (name, seed) in seeds {
        let output = g.output(name).ok_or_else(|| PassError::BadSeed {
            output: name.to_string(),
            reason: "the graph has no such output".into(),
        })?;
        let ty = g.ty(output.node);
        match seed {
            Seed::Const(t) if t.ty() != ty => {
                return Err(PassError::BadSeed {
                    output: name.to_string(),
                    reason: format!("the seed has type {} but the output is {ty}", t.ty()),
                })
            }
            Seed::Input(input) if g.input(input).is_some() || seeds.iter().filter(|(_, s)| *s == *seed).count() > 1 => {
                return Err(PassError::BadSeed {
                    output: name.to_string(),
                    reason: format!("the seed input name `{input}` is already taken"),
                })
            }
            Seed::One | Seed::Input(_) | Seed::Zero | Seed::Const(_) => {}
        }
        if !ty.dtype.is_float() && *seed != Seed::Zero {
            return Err(PassError::BadSeed {
                output: name.to_string(),
                reason: format!("the output has type {ty}, which carries no gradient"),
            });
        }
    }

    let n = g.len();
    let mut joint = g.clone();
    joint.clear_outputs();
    joint.name = format!("{}.grad", g.name);

    // requires[v]: v depends on a differentiated input, so it needs an adjoint.
    let mut requires = vec![false; n];
    for &w in &wrt_nodes {
        requires[w.index()] = true;
    }
    for id in g.node_ids() {
        // A loop's own value is the buffer of its results (not a float),
        // but it carries adjoints to its operands through its `get`s.
        let carries = differentiable_dtype(g.ty(id).dtype) || matches!(g.op(id), Op::Scan(_));
        if !requires[id.index()] && carries {
            requires[id.index()] = g.args(id).iter().any(|a| requires[a.index()]);
        }
    }

    // Loops that need adjoints also keep their trajectory (the carry at the
    // start of each step) for the backward loop to read; their old results
    // keep their indices, so the forward computes what it did.
    let mut plans: std::collections::HashMap<NodeId, crate::scan_vjp::LoopPlan> = Default::default();
    for id in g.node_ids() {
        if let (Op::Scan(scan), true) = (g.op(id), requires[id.index()]) {
            if scan.regen.is_some() {
                return Err(PassError::Pipeline(format!(
                    "{} recomputes its states under the binomial schedule and cannot be differentiated again; \
                     take higher derivatives with the SaveAll or SaveCarries loop policy",
                    g.value_name(id)
                )));
            }
            let wants: Vec<bool> = g.args(id).iter().map(|a| requires[a.index()]).collect();
            let plan = crate::scan_vjp::plan(scan, &wants, loops)?;
            joint.replace_op(id, Op::Scan(std::sync::Arc::new(plan.forward.clone())))?;
            plans.insert(id, plan);
        }
    }
    // The adjoints of each loop's results, gathered from its `get`s.
    let mut result_adj: std::collections::HashMap<NodeId, Vec<Option<NodeId>>> = Default::default();

    let mut adj: Vec<Option<NodeId>> = vec![None; n];
    let mut seed_inputs = Vec::new();
    for output in g.outputs() {
        let ty = g.ty(output.node).clone();
        let seed = match seeds.iter().find(|(name, _)| *name == output.name) {
            Some((_, s)) => s.clone(),
            None if !ty.dtype.is_float() => Seed::Zero,
            None if ty.is_scalar() => Seed::One,
            None => Seed::Input(format!("seed_{}", output.name)),
        };
        let seed_node = match seed {
            Seed::Zero => None,
            Seed::One => {
                let mut e = Emitter {
                    g: &mut joint,
                    at: output.node,
                };
                let one = e.scalar(ty.dtype, 1.0);
                Some(e.broadcast(one, &ty.shape)?)
            }
            Seed::Const(t) => Some(joint.add_const(t)),
            Seed::Input(name) => {
                let id = joint
                    .add_input(&name, ty.clone(), true)
                    .map_err(|e| PassError::BadSeed {
                        output: output.name.clone(),
                        reason: e.to_string(),
                    })?;
                seed_inputs.push(name);
                Some(id)
            }
        };
        if let Some(s) = seed_node {
            if requires[output.node.index()] {
                accumulate(&mut joint, &mut adj, output.node, s)?;
            }
        }
    }

    // The reverse sweep.
    for id in g.node_ids().rev() {
        let Some(ybar) = adj[id.index()] else { continue };
        if let Op::Input { .. } = g.op(id) {
            continue;
        }
        let args = g.args(id);
        let wants: Vec<bool> = args.iter().map(|a| requires[a.index()]).collect();
        if !wants.iter().any(|&w| w) {
            continue;
        }
        // A `get` hands its adjoint to its loop's result; the loop runs
        // its rule once, with the adjoints of all its results.
        if let Op::Get { index, .. } = g.op(id) {
            let scan = args[0];
            let n = if let Op::Scan(s) = g.op(scan) { s.n_results() } else { 0 };
            let slots = result_adj.entry(scan).or_insert_with(|| vec![None; n]);
            if let Some(slot) = slots.get_mut(*index) {
                *slot = Some(match *slot {
                    None => ybar,
                    Some(prev) => Emitter { g: &mut joint, at: id }.add(prev, ybar)?,
                });
            }
            // The loop's own "adjoint" only marks it as reached.
            adj[scan.index()] = Some(scan);
            continue;
        }
        let contributions = if let Some(plan) = plans.get(&id) {
            let cotangents = result_adj.remove(&id).unwrap_or_default();
            crate::scan_vjp::emit_backward(&mut Emitter { g: &mut joint, at: id }, id, plan, &cotangents)?
        } else {
            vjp(&mut Emitter { g: &mut joint, at: id }, id, ybar, &wants)?
        };
        for ((&arg, want), contribution) in args.iter().zip(wants).zip(contributions) {
            if let (true, Some(c)) = (want, contribution) {
                if joint.ty(c) != joint.ty(arg) {
                    return Err(PassError::Internal {
                        node: joint.value_name(id),
                        message: format!(
                            "the `{}` rule gave an adjoint of type {} for an operand of type {}",
                            g.op(id).name(),
                            joint.ty(c),
                            joint.ty(arg)
                        ),
                    });
                }
                accumulate(&mut joint, &mut adj, arg, c)?;
            }
        }
    }

    // Outputs: the primal ones, then one gradient per differentiated input
    // (zeros, materialized only here, where nothing reached the input).
    for output in g.outputs() {
        joint.add_output(&output.name, output.node)?;
    }
    for (&name, &node) in wrt.iter().zip(&wrt_nodes) {
        let grad = match adj[node.index()] {
            Some(a) => a,
            None => Emitter {
                g: &mut joint,
                at: node,
            }
            .full_like(node, 0.0)?,
        };
        joint.add_output(&format!("grad_{name}"), grad)?;
    }

    // Drop adjoint nodes that no output uses (such as an unused seed
    // constant); forward nodes are all kept.
    let mut keep = joint.live_nodes();
    keep[..n].iter_mut().for_each(|k| *k = true);
    let (graph, _) = joint.retain(&keep)?;
    verify(&graph)?;
    Ok(GradGraph {
        graph,
        primal_outputs: g.outputs().len(),
        seed_inputs,
        wrt: wrt.iter().map(|s| s.to_string()).collect(),
    })
}

impl GradGraph {
    /// The forward nodes: those the original (primal) outputs depend on,
    /// indexed by node. This holds however later passes renumber the graph.
    ///
    /// A `get` of a forward loop's result is a forward node too, even when
    /// only the backward reads it (a loop's trajectory): it is a view of
    /// what the forward computed, and saving it saves that result.
    pub fn primal_mask(&self) -> Vec<bool> {
        let g = &self.graph;
        let mut primal = g.ancestors(g.outputs()[..self.primal_outputs].iter().map(|o| o.node));
        for id in g.node_ids() {
            if let (Op::Get { .. }, Some(&scan)) = (g.op(id), g.args(id).first()) {
                primal[id.index()] |= primal[scan.index()];
            }
        }
        primal
    }
}

/// `adj[v] += c`: the first contribution is taken as is, later ones added.
fn accumulate(joint: &mut Graph, adj: &mut [Option<NodeId>], v: NodeId, c: NodeId) -> Result<(), PassError> {
    adj[v.index()] = Some(match adj[v.index()] {
        None => c,
        Some(prev) => Emitter { g: joint, at: v }.add(prev, c)?,
    });
    Ok(())
}

/// The input nodes named in `wrt`, checked: each exists once, is
/// differentiable (not `nodiff`) and of a float type.
pub(crate) fn wrt_nodes(g: &Graph, wrt: &[&str]) -> Result<Vec<NodeId>, PassError> {
    let mut wrt_nodes = Vec::with_capacity(wrt.len());
    let mut seen = std::collections::HashSet::with_capacity(wrt.len());
    for &name in wrt {
        let bad = |reason: &str| PassError::BadWrt {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        if !seen.insert(name) {
            return Err(bad("it is listed twice"));
        }
        let input = g.input(name).ok_or_else(|| {
            let names: Vec<&str> = g.inputs().iter().map(|i| i.name.as_str()).collect();
            bad(&format!(
                "the graph has no input `{name}` (its inputs: {})",
                names.join(", ")
            ))
        })?;
        if !input.differentiable {
            return Err(bad("the input is marked `nodiff` (data, not a parameter)"));
        }
        if !differentiable_dtype(input.ty.dtype) {
            return Err(bad(&format!("its type {} is not a float type", input.ty)));
        }
        wrt_nodes.push(input.node);
    }
    Ok(wrt_nodes)
}
