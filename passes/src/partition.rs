//! Partition: splits the joint graph of [`autodiff`](crate::autodiff::autodiff) into
//! a forward graph `inputs → outputs + saved values` and a backward graph
//! `saved values + seeds → gradients`.
//!
//! The one decision is *which values are saved* (the residuals). It is a
//! parameter: [`partition`] takes any set, and every value the backward
//! needs that is not saved is recomputed inside the backward graph from
//! saved values and constants (the checkpoint pass uses this to trade
//! memory for recomputation). [`default_saved`] is the default policy:
//! save the forward values the backward reads, except
//! - a ReLU-style mask `x > 0` (a `bool` computed from forward values) is
//!   computed in the forward and saved instead of `x` (1 byte per element
//!   instead of 4 or 8), unless `x` is saved anyway;
//! - a `broadcast` of a saved value is recomputed from the smaller value;
//! - constants, and anything computed only from constants, are never saved;
//! - inputs are never saved: the backward takes the primal inputs it reads
//!   as inputs of its own, so a step never copies its parameters.

use crate::autodiff::GradGraph;
use crate::error::PassError;
use std::collections::BTreeSet;
use wengert_ir::{DType, Graph, NodeId, Op, TensorType};

/// A value saved by the forward for the backward.
#[derive(Clone, Debug, PartialEq)]
pub struct Residual {
    /// Its name: an output of the forward and an input of the backward.
    pub name: String,
    /// The node of the joint graph it holds.
    pub node: NodeId,
    pub ty: TensorType,
}

impl Residual {
    pub fn size_bytes(&self) -> usize {
        self.ty.size_bytes()
    }
}

/// The two halves of a gradient computation.
#[derive(Clone, Debug)]
pub struct Partition {
    /// Inputs: the primal inputs. Outputs: the primal outputs, then the
    /// residuals in order.
    pub forward: Graph,
    /// Inputs: the primal inputs it reads (named as in the forward, listed
    /// in `backward_inputs`), then the residuals in order, then the seed
    /// inputs. Outputs: the gradients (`grad_<input>`).
    pub backward: Graph,
    /// Computed values the forward saves (inputs are never copied: the
    /// backward reads them directly).
    pub residuals: Vec<Residual>,
    /// Names of the primal inputs the backward reads, in input order.
    pub backward_inputs: Vec<String>,
}

impl Partition {
    /// Total bytes of saved values.
    pub fn saved_bytes(&self) -> usize {
        self.residuals.iter().map(Residual::size_bytes).sum()
    }
}

struct Classes {
    primal: Vec<bool>,
    seed: Vec<bool>,
    /// Computed only from constants: free to copy into any graph.
    constant: Vec<bool>,
    /// Depends on a seed input: only the backward can compute it.
    seed_dependent: Vec<bool>,
    /// A bool value computed by an adjoint rule from forward values only.
    mask: Vec<bool>,
}

fn classify(gg: &GradGraph) -> Classes {
    let j = &gg.graph;
    let n = j.len();
    let mut c = Classes {
        primal: gg.primal_mask(),
        seed: vec![false; n],
        constant: j.constant_nodes(),
        seed_dependent: vec![false; n],
        mask: vec![false; n],
    };
    for input in j.inputs() {
        if gg.seed_inputs.contains(&input.name) {
            c.seed[input.node.index()] = true;
        }
    }
    for id in j.node_ids() {
        let i = id.index();
        let args = j.args(id);
        c.seed_dependent[i] = c.seed[i] || args.iter().any(|a| c.seed_dependent[a.index()]);
        c.mask[i] = !c.primal[i]
            && !c.constant[i]
            && j.ty(id).dtype == DType::Bool
            // (A loop's buffer of results is typed bool but is no mask.)
            && !matches!(j.op(id), Op::Scan(_))
            && args.iter().all(|a| c.primal[a.index()] || c.constant[a.index()]);
    }
    c
}

fn gradient_outputs(gg: &GradGraph) -> impl Iterator<Item = &wengert_ir::Output> {
    gg.graph.outputs()[gg.primal_outputs..].iter()
}

/// The default set of saved values (see the module documentation).
pub fn default_saved(gg: &GradGraph) -> Vec<NodeId> {
    let j = &gg.graph;
    let c = classify(gg);
    let mut needed = vec![false; j.len()];
    for o in gradient_outputs(gg) {
        needed[o.node.index()] = true;
    }
    let mut saved = BTreeSet::new();
    for id in j.node_ids().rev() {
        let i = id.index();
        if !needed[i] || c.constant[i] || c.seed[i] {
            continue;
        }
        if c.primal[i] || c.mask[i] {
            saved.insert(id);
            continue;
        }
        for a in j.args(id) {
            needed[a.index()] = true;
        }
    }
    // A mask whose operands are saved anyway is cheaper to recompute.
    let redundant: Vec<NodeId> = saved
        .iter()
        .copied()
        .filter(|&m| c.mask[m.index()] && j.args(m).iter().all(|a| c.constant[a.index()] || saved.contains(a)))
        .collect();
    for m in redundant {
        saved.remove(&m);
    }
    // Save the operand of a broadcast, reshape or transpose rather than
    // the view (looking through chains of them), in one pass: the view
    // costs nothing to recompute, and its operand is no larger (a loop
    // body's `reshape` of its carry is then read from the trajectory, not
    // stored a second time). Slices are saved as they are (their operand
    // is larger).
    let mut out = BTreeSet::new();
    for s in saved {
        let mut v = s;
        while matches!(
            j.op(v),
            Op::Broadcast { .. } | Op::Reshape { .. } | Op::Transpose { .. }
        ) && c.primal[v.index()]
        {
            v = j.args(v)[0];
        }
        if !c.constant[v.index()] {
            out.insert(v);
        }
    }
    out.into_iter().collect()
}

/// Splits `gg` into forward and backward graphs that communicate through
/// the values in `saved` (ids of `gg.graph`), or through
/// [`default_saved`] when `saved` is `None`.
pub fn partition(gg: &GradGraph, saved: Option<&[NodeId]>) -> Result<Partition, PassError> {
    let j = &gg.graph;
    let c = classify(gg);
    let saved: Vec<NodeId> = match saved {
        Some(s) => {
            // A loop's buffer of results is not a value to save: a policy
            // that picks it saves the loop's `get`s instead.
            let mut s: Vec<NodeId> = s
                .iter()
                .flat_map(|&v| if let Op::Scan(_) = j.op(v) { j.users(v) } else { vec![v] })
                .collect();
            s.sort();
            s.dedup();
            s
        }
        None => default_saved(gg),
    };
    let mut is_saved = vec![false; j.len()];
    for &s in &saved {
        if !j.contains(s) {
            return Err(PassError::Partition(format!(
                "saved value #{} is not a node of the graph",
                s.index()
            )));
        }
        if c.seed_dependent[s.index()] {
            return Err(PassError::Partition(format!(
                "{} depends on a seed, so the forward cannot compute it to save it",
                j.value_name(s)
            )));
        }
        is_saved[s.index()] = true;
    }
    // What the backward computes: everything the gradients need, down to
    // saved values, seeds and constants.
    let mut in_backward = vec![false; j.len()];
    for o in gradient_outputs(gg) {
        in_backward[o.node.index()] = true;
    }
    for id in j.node_ids().rev() {
        let i = id.index();
        if !in_backward[i] || is_saved[i] {
            continue;
        }
        if let Op::Input { .. } = j.op(id) {
            // Inputs (primal or seeds) are inputs of the backward.
            continue;
        }
        for a in j.args(id) {
            in_backward[a.index()] = true;
        }
    }
    // What the forward computes: the primal outputs and the saved values.
    let in_forward = j.ancestors(
        j.outputs()[..gg.primal_outputs]
            .iter()
            .map(|o| o.node)
            .chain(saved.iter().copied()),
    );

    // Inputs need no saving: the backward takes them directly.
    let residuals: Vec<Residual> = saved
        .iter()
        .filter(|&&s| !matches!(j.op(s), Op::Input { .. }))
        .enumerate()
        .map(|(k, &s)| Residual {
            name: format!("saved{k}"),
            node: s,
            ty: j.ty(s).clone(),
        })
        .collect();

    // Forward graph.
    let base = j.name.strip_suffix(".grad").unwrap_or(&j.name);
    let mut fwd = Graph::new(format!("{base}.forward"));
    let mut map: Vec<Option<NodeId>> = vec![None; j.len()];
    for input in j.inputs().iter().filter(|i| !c.seed[i.node.index()]) {
        map[input.node.index()] = Some(fwd.add_input(&input.name, input.ty.clone(), input.differentiable)?);
    }
    copy_nodes(j, &mut fwd, &mut map, &in_forward)?;
    for o in &j.outputs()[..gg.primal_outputs] {
        fwd.add_output(&o.name, mapped(j, &map, o.node)?)?;
    }
    for r in &residuals {
        fwd.add_output(&r.name, mapped(j, &map, r.node)?)?;
    }

    // Backward graph.
    let mut bwd = Graph::new(format!("{base}.backward"));
    let mut map: Vec<Option<NodeId>> = vec![None; j.len()];
    let mut backward_inputs = Vec::new();
    for input in j
        .inputs()
        .iter()
        .filter(|i| !c.seed[i.node.index()] && in_backward[i.node.index()])
    {
        map[input.node.index()] = Some(bwd.add_input(&input.name, input.ty.clone(), input.differentiable)?);
        backward_inputs.push(input.name.clone());
    }
    for r in &residuals {
        map[r.node.index()] = Some(bwd.add_input(&r.name, r.ty.clone(), true)?);
    }
    for input in j.inputs().iter().filter(|i| c.seed[i.node.index()]) {
        map[input.node.index()] = Some(bwd.add_input(&input.name, input.ty.clone(), true)?);
    }
    let mut compute = in_backward.clone();
    for &s in &saved {
        compute[s.index()] = false;
    }
    copy_on_demand(j, &mut bwd, &mut map, &compute, &c.primal)?;
    for o in gradient_outputs(gg) {
        bwd.add_output(&o.name, mapped(j, &map, o.node)?)?;
    }
    wengert_ir::verify(&fwd)?;
    wengert_ir::verify(&bwd)?;
    Ok(Partition {
        forward: fwd,
        backward: bwd,
        residuals,
        backward_inputs,
    })
}

fn mapped(j: &Graph, map: &[Option<NodeId>], id: NodeId) -> Result<NodeId, PassError> {
    map[id.index()].ok_or_else(|| PassError::Internal {
        node: j.value_name(id),
        message: "partition lost a value".into(),
    })
}

/// Copies the marked nodes into the backward graph so that each
/// recomputed forward value is computed just before its first use: adjoint
/// nodes go in order, and each pulls in the recomputations it needs
/// (post-order, without recursion). On a chain checkpointed in segments
/// this recomputes the last segment, runs its backward, then recomputes
/// the segment before it, so only one segment's values are alive at a time.
fn copy_on_demand(
    j: &Graph,
    out: &mut Graph,
    map: &mut [Option<NodeId>],
    marked: &[bool],
    primal: &[bool],
) -> Result<(), PassError> {
    let needs = |id: NodeId, map: &[Option<NodeId>]| {
        marked[id.index()] && map[id.index()].is_none() && !matches!(j.op(id), Op::Input { .. })
    };
    for root in j.node_ids().filter(|id| !primal[id.index()]) {
        if !needs(root, map) {
            continue;
        }
        let mut stack = vec![(root, false)];
        while let Some((id, expanded)) = stack.pop() {
            if !needs(id, map) {
                continue;
            }
            if expanded {
                copy_node(j, out, map, id)?;
            } else {
                stack.push((id, true));
                for a in j.args(id).into_iter().rev() {
                    if needs(a, map) {
                        stack.push((a, false));
                    }
                }
            }
        }
    }
    // Anything left (recomputations no adjoint node uses, e.g. a gradient
    // output that is itself a forward value).
    copy_nodes(j, out, map, marked)
}

/// Copies the marked non-input nodes of `j` into `out` in topological order.
fn copy_nodes(j: &Graph, out: &mut Graph, map: &mut [Option<NodeId>], marked: &[bool]) -> Result<(), PassError> {
    for id in j.node_ids() {
        if !marked[id.index()] || map[id.index()].is_some() || matches!(j.op(id), Op::Input { .. }) {
            continue;
        }
        copy_node(j, out, map, id)?;
    }
    Ok(())
}

/// Copies node `id` of `j` into `out`, its operands mapped through `map`.
fn copy_node(j: &Graph, out: &mut Graph, map: &mut [Option<NodeId>], id: NodeId) -> Result<(), PassError> {
    let args = j
        .args(id)
        .iter()
        .map(|&a| mapped(j, map, a))
        .collect::<Result<Vec<_>, _>>()?;
    map[id.index()] = Some(out.copy_node(j, id, &args)?);
    Ok(())
}

/// The forward followed by the backward as one graph with the inputs and
/// outputs of `joint` (the graph `p` partitions): the saved values pass
/// from one half to the other inside it, and what the backward recomputes
/// is recomputed here too. The pipeline compiles this as the joint
/// function, so one call of it follows the checkpoint policy (its memory
/// plan keeps only the saved values alive across the two halves) and
/// computes bit for bit what the two halves compute.
pub fn rejoin(joint: &Graph, p: &Partition) -> Result<Graph, PassError> {
    let internal = |message: &str| PassError::Internal {
        node: joint.name.clone(),
        message: message.into(),
    };
    let mut out = Graph::new(joint.name.clone());
    let mut by_name = std::collections::HashMap::new();
    for input in joint.inputs() {
        let id = out.add_input(&input.name, input.ty.clone(), input.differentiable)?;
        by_name.insert(input.name.clone(), id);
    }
    // Values computed from constants only are shared by the two halves
    // (each half has its own copies); nothing else is merged, so no
    // recomputation folds back into the forward.
    let mut constants: std::collections::HashMap<crate::simplify::CseKey, NodeId> = Default::default();
    let mut constant_node: Vec<bool> = vec![false; out.len()];
    // Copies the nodes of `half` into `out`, its inputs mapped by `input`.
    let mut copy = |half: &Graph, input: &dyn Fn(usize, &str) -> Option<NodeId>| -> Result<Vec<NodeId>, PassError> {
        let mut map: Vec<Option<NodeId>> = vec![None; half.len()];
        for (i, inp) in half.inputs().iter().enumerate() {
            map[inp.node.index()] = Some(input(i, &inp.name).ok_or_else(|| internal("a half reads an unknown input"))?);
        }
        for id in half.node_ids() {
            if map[id.index()].is_some() {
                continue;
            }
            let args = half
                .args(id)
                .iter()
                .map(|a| map[a.index()])
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| internal("a node precedes its operand"))?;
            let node = half.node(id);
            let is_constant = !matches!(node.op, Op::Input { .. }) && args.iter().all(|a| constant_node[a.index()]);
            let key = is_constant.then(|| crate::simplify::cse_key(&node.op, &args));
            if let Some(&shared) = key.as_ref().and_then(|k| constants.get(k)) {
                map[id.index()] = Some(shared);
                continue;
            }
            let new = out.copy_node(half, id, &args)?;
            out.set_mark(new, node.mark);
            constant_node.push(is_constant);
            if let Some(k) = key {
                constants.insert(k, new);
            }
            map[id.index()] = Some(new);
        }
        half.outputs()
            .iter()
            .map(|o| map[o.node.index()].ok_or_else(|| internal("an output was not copied")))
            .collect()
    };
    let forward_out = copy(&p.forward, &|_, name| by_name.get(name).copied())?;
    let n_primal = forward_out
        .len()
        .checked_sub(p.residuals.len())
        .ok_or_else(|| internal("the forward has fewer outputs than residuals"))?;
    let residuals = &forward_out[n_primal..];
    let n_read = p.backward_inputs.len();
    let backward_out = copy(&p.backward, &|i, name| {
        if (n_read..n_read + residuals.len()).contains(&i) {
            Some(residuals[i - n_read])
        } else {
            by_name.get(name).copied()
        }
    })?;
    let names = p.forward.outputs()[..n_primal]
        .iter()
        .chain(p.backward.outputs())
        .map(|o| &o.name);
    let results = forward_out[..n_primal].iter().chain(&backward_out);
    if !joint.outputs().iter().map(|o| &o.name).eq(names) {
        return Err(internal("the halves' outputs are not the joint's"));
    }
    for (o, &node) in joint.outputs().iter().zip(results) {
        out.add_output(&o.name, node)?;
    }
    wengert_ir::verify(&out)?;
    Ok(out)
}
