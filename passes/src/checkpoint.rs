//! `checkpoint`: chooses which forward values the backward gets saved and
//! which it recomputes, under a policy, and explains the choice.
//!
//! The partition accepts any saved set and recomputes the rest inside the
//! backward graph just before first use (see `partition`), so a policy is
//! only a choice of saved set:
//!
//! - `SaveAll`: the partition default (every forward value the backward
//!   reads).
//! - `Segments(k)` / `Sqrt`: the forward values the backward reads
//!   ("activations": not inputs, not constants) in topological order are
//!   the states of the computation; every `len`-th is kept and the others
//!   are recomputed segment by segment from the last kept one (Chen et
//!   al.). `Sqrt` takes ⌊√n⌋ segments of ⌈n/⌊√n⌋⌉ states: for the seed's
//!   eight-layer chain it keeps h0 (an input), h4 and h8, as in case 9.
//! - `MinCut`: a minimum cut of the joint graph weighted by bytes, with
//!   matmuls and reductions never recomputed ([`min_cut_saved`]).
//! - `Budget(bytes)`: of save-all, the min cut and every len-th activation
//!   for growing lengths, the plan with the fewest extra FLOPs whose peak
//!   (saved values plus the larger planned arena of forward and backward,
//!   found by partitioning, fusing and planning each candidate:
//!   [`simulate`]) fits in `bytes`; if none fits, the lowest peak
//!   (`wengert grad --explain` says whether it fits). On a chain, [`plan`]
//!   (what the pipeline runs) then falls back to the binomial schedule with
//!   the most slots that fits, among schedules of at most 16 extra forward
//!   sweeps (fewer slots would trade little memory for a blow-up in time
//!   and graph size).
//!
//! Recomputed values are bit-identical to the forward's (the same ops on
//! the same values, compiled by the same code generator), and CSE runs
//! before partition, so it cannot merge a recomputation back.
//!
//! Griewank–Walther's binomial schedule (Revolve), optimal for a chain with
//! `c` slots, is counted by [`revolve_extra_steps`] and
//! [`revolve_min_extra_steps`]; `revolve.rs` rewrites the graph to follow
//! it (policy `Slots(c)`).

use crate::autodiff::GradGraph;
pub use crate::binomial::{revolve_extra_steps, revolve_min_extra_steps};
pub use crate::cost::node_flops;
use crate::error::PassError;
use crate::fuse::fuse;
use crate::memory::memory_plan_with_stats;
use crate::partition::{default_saved, partition, Partition};
use crate::revolve::Binomial;
use std::fmt::Write;
use wengert_ir::{Graph, Mark, NodeId, Op};

/// A checkpointing policy.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum CheckpointPolicy {
    #[default]
    SaveAll,
    Sqrt,
    Segments(usize),
    Budget(usize),
    /// Saved values chosen by a minimum cut of the joint graph weighted by
    /// bytes (see [`min_cut_saved`]).
    MinCut,
    /// Griewank–Walther's binomial schedule with this many checkpoint
    /// slots on a chain detected structurally (see `revolve`); graphs
    /// without a chain fall back to `SaveAll`.
    Slots(usize),
}

/// The forward values the default partition saves that are activations
/// (computed, not inputs or constants), in topological order.
fn activations(gg: &GradGraph, saved: &[NodeId]) -> Vec<NodeId> {
    let g = &gg.graph;
    let mut acts: Vec<NodeId> = saved
        .iter()
        .copied()
        .filter(|&s| !matches!(g.op(s), Op::Input { .. } | Op::Const { .. }))
        .collect();
    acts.sort();
    acts
}

/// The peak activation memory and extra FLOPs of saving `saved`: the
/// partition, fused and memory-planned as the pipeline does, run as forward
/// then backward (saved values plus the larger arena: the peak that
/// `GradFn::measure_memory` measures).
pub fn simulate(gg: &GradGraph, saved: &[NodeId]) -> Result<(usize, u64), PassError> {
    let p = partition(gg, Some(saved))?;
    Ok((partition_peak(&p)?, extra_flops(gg, &p)))
}

/// The peak of a partition run as forward then backward: saved values plus
/// the larger arena of the two halves, fused and planned.
fn partition_peak(p: &Partition) -> Result<usize, PassError> {
    let arena = |g: &Graph| -> Result<usize, PassError> { Ok(memory_plan_with_stats(&fuse(g)?)?.1.arena_bytes) };
    Ok(p.saved_bytes() + arena(&p.forward)?.max(arena(&p.backward)?))
}

/// The saved set for `policy` (ids of `gg.graph`), then the user's marks:
/// a value marked `save` that the backward reads is saved, a value marked
/// `recompute` is not (see [`Var::save`](wengert_ir::Var::save)).
///
/// For `Budget` this is one level of recomputation; [`plan`], which the
/// pipeline runs, falls back to the binomial schedule on a chain when that
/// does not fit. For `Slots` it is save-all (the schedule is a rewrite of
/// the graph, which only [`plan`] makes).
pub fn choose_saved(gg: &GradGraph, policy: &CheckpointPolicy) -> Result<Vec<NodeId>, PassError> {
    let saved = match policy {
        CheckpointPolicy::Budget(bytes) => budget_choice(gg, *bytes)?.0,
        other => choose_by_policy(gg, other)?,
    };
    Ok(apply_marks(gg, saved))
}

/// What the checkpoint pass decided.
#[derive(Clone, Debug)]
pub enum Plan {
    /// Save these values (ids of the graph as it was) and recompute the
    /// rest.
    Saved(Vec<NodeId>),
    /// The graph rewritten for the binomial schedule; it saves nothing.
    Binomial(Box<GradGraph>, Binomial),
}

/// The checkpoint pass: the saved set of `policy` ([`choose_saved`]), or,
/// for `Slots(c)` on a chain, the binomial rewrite with `c` slots, and for
/// `Budget(bytes)`, when no plan of one level of recomputation fits, the
/// binomial rewrite with the most slots that fits on a chain (with one slot
/// if none fits but that still lowers the peak).
pub fn plan(gg: &GradGraph, policy: &CheckpointPolicy) -> Result<Plan, PassError> {
    Ok(match policy {
        CheckpointPolicy::Slots(c) => match crate::revolve::revolve(gg, *c)? {
            Some((rewritten, schedule)) => Plan::Binomial(Box::new(rewritten), schedule),
            None => Plan::Saved(choose_saved(gg, &CheckpointPolicy::SaveAll)?),
        },
        CheckpointPolicy::Budget(bytes) => {
            let (chosen, peak) = budget_choice(gg, *bytes)?;
            let marked = apply_marks(gg, chosen.clone());
            // Marks may change the peak; simulate again only then.
            let peak = if marked == chosen {
                peak
            } else {
                simulate(gg, &marked)?.0
            };
            match binomial_within(gg, peak, *bytes)? {
                Some((rewritten, schedule)) => Plan::Binomial(Box::new(rewritten), schedule),
                None => Plan::Saved(marked),
            }
        }
        policy => Plan::Saved(choose_saved(gg, policy)?),
    })
}

/// When `peak` (that of one level of recomputation) is above `bytes` and
/// the graph is a chain, the binomial schedule with the most slots whose
/// simulated peak fits (slots are searched by bisection: fewer slots,
/// lower peak), else with the fewest slots considered if that still lowers
/// the peak: the rewritten graph and its schedule.
fn binomial_within(gg: &GradGraph, peak: usize, bytes: usize) -> Result<Option<(GradGraph, Binomial)>, PassError> {
    if peak <= bytes {
        return Ok(None);
    }
    let Some(chain) = crate::revolve::detect_chain(gg) else {
        return Ok(None);
    };
    let at = |c: usize| -> Result<(GradGraph, Binomial, usize), PassError> {
        let (rewritten, schedule) = crate::revolve::revolve_chain(gg, &chain, c)?;
        let (peak, _) = simulate(&rewritten, &[])?;
        Ok((rewritten, schedule, peak))
    };
    // The largest c in [fewest, l - 1] that fits, by bisection. Fewer
    // slots than `fewest` would recompute more than 16 forward sweeps
    // (or copy more nodes than a rewrite may): a budget below what that
    // reaches gets that schedule, the lowest peak offered.
    let l = chain.blocks.len();
    let fewest = (1..l.max(2))
        .find(|&c| crate::checkpoint::revolve_min_extra_steps(l as u64, c as u64) <= 16 * l as u64)
        .unwrap_or(1)
        .max(crate::revolve::fewest_slots(&chain, crate::revolve::MAX_COPIED_NODES));
    let (mut lo, mut hi) = (fewest, l.saturating_sub(1).max(fewest));
    let (mut fitting, mut lowest) = (None, None);
    while lo <= hi {
        let mid = (lo + hi) / 2;
        match at(mid)? {
            (g, schedule, p) if p <= bytes => {
                fitting = Some((g, schedule));
                lo = mid + 1;
            }
            // A bisection that never fits ends here, having tried `fewest`.
            other if mid == fewest => {
                lowest = Some(other);
                break;
            }
            _ => hi = mid - 1,
        }
    }
    if fitting.is_some() {
        return Ok(fitting);
    }
    // Nothing fits: the fewest slots, the lowest binomial peak, if it beats
    // `peak`.
    Ok(lowest
        .filter(|(_, _, p)| *p < peak)
        .map(|(g, schedule, _)| (g, schedule)))
}

/// The user's marks applied to `saved`: a value marked `save` that the
/// backward reads is saved, a value marked `recompute` is not; every input
/// is available to recomputation.
/// What partition saves for a graph as its marks say: the default saved
/// set, plus values marked `save`, minus values marked `recompute` (and
/// every input, which the backward reads in place). The checkpoint pass
/// writes its decision as marks, so this is what it chose, whatever ran
/// in between.
pub fn saved_by_marks(gg: &GradGraph) -> Vec<NodeId> {
    apply_marks(gg, default_saved(gg))
}

/// `g` with the decision to save exactly `chosen` written as marks: `save`
/// on each chosen value, `recompute` on every other value the default
/// would save or that was marked `save` (so that [`saved_by_marks`] gives
/// `chosen`, with the inputs).
pub fn mark_decision(gg: &GradGraph, chosen: &[NodeId]) -> Graph {
    let mut g = gg.graph.clone();
    let mut is_chosen = vec![false; g.len()];
    for &c in chosen {
        is_chosen[c.index()] = true;
    }
    let candidates = default_saved(gg)
        .into_iter()
        .chain(g.node_ids().filter(|&id| g.node(id).mark == Some(Mark::Save)))
        .collect::<Vec<_>>();
    for id in candidates {
        if !is_chosen[id.index()] && !matches!(g.op(id), Op::Input { .. }) {
            g.set_mark(id, Some(Mark::Recompute));
        }
    }
    for &c in chosen {
        if !matches!(g.op(c), Op::Input { .. }) {
            g.set_mark(c, Some(Mark::Save));
        }
    }
    g
}

fn apply_marks(gg: &GradGraph, saved: Vec<NodeId>) -> Vec<NodeId> {
    let g = &gg.graph;
    let marked: Vec<(NodeId, Mark)> = g.node_ids().filter_map(|id| g.node(id).mark.map(|m| (id, m))).collect();
    if marked.is_empty() {
        return saved;
    }
    // What the gradients read, transitively, if nothing were saved.
    let needed = g.ancestors(g.outputs()[gg.primal_outputs..].iter().map(|o| o.node));
    let seeds: Vec<NodeId> = g
        .inputs()
        .iter()
        .filter(|i| gg.seed_inputs.contains(&i.name))
        .map(|i| i.node)
        .collect();
    // Membership by mask, not by searching the list (graphs may have
    // 100,000 inputs).
    let mut is_saved = vec![false; g.len()];
    let mut is_seed = vec![false; g.len()];
    for &s in &saved {
        is_saved[s.index()] = true;
    }
    for &s in &seeds {
        is_seed[s.index()] = true;
    }
    for (id, mark) in marked {
        match mark {
            Mark::Save if needed[id.index()] && !is_seed[id.index()] => is_saved[id.index()] = true,
            Mark::Recompute => is_saved[id.index()] = false,
            Mark::Save => {}
        }
    }
    // Recomputation may reach any input.
    for input in g.inputs().iter().filter(|i| !gg.seed_inputs.contains(&i.name)) {
        is_saved[input.node.index()] = true;
    }
    g.node_ids().filter(|id| is_saved[id.index()]).collect()
}

/// Every input the backward might need when recomputing (all but seeds).
fn recomputation_inputs(gg: &GradGraph) -> Vec<NodeId> {
    gg.graph
        .inputs()
        .iter()
        .filter(|i| !gg.seed_inputs.contains(&i.name))
        .map(|i| i.node)
        .collect()
}

/// Every `len`-th activation (and the last), plus `inputs`.
fn every_len_th(acts: &[NodeId], inputs: &[NodeId], len: usize) -> Vec<NodeId> {
    let mut saved: Vec<NodeId> = acts
        .iter()
        .enumerate()
        .filter(|(i, _)| (i + 1) % len == 0 || i + 1 == acts.len())
        .map(|(_, &a)| a)
        .collect();
    saved.extend(inputs.iter().copied());
    saved
}

fn choose_by_policy(gg: &GradGraph, policy: &CheckpointPolicy) -> Result<Vec<NodeId>, PassError> {
    let default = default_saved(gg);
    let all_inputs = recomputation_inputs(gg);
    let acts = activations(gg, &default);
    let segments = |len: usize| every_len_th(&acts, &all_inputs, len);
    Ok(match policy {
        CheckpointPolicy::SaveAll => default,
        CheckpointPolicy::Segments(k) => {
            let k = (*k).clamp(1, acts.len().max(1));
            segments(acts.len().div_ceil(k).max(1))
        }
        CheckpointPolicy::Sqrt => {
            let n = acts.len().max(1);
            let k = ((n as f64).sqrt().floor() as usize).max(1);
            segments(n.div_ceil(k))
        }
        CheckpointPolicy::MinCut => min_cut_saved(gg),
        // The pipeline rewrites the graph for the binomial schedule before
        // choosing; on its own this policy saves what the backward reads.
        CheckpointPolicy::Slots(_) => default,
        CheckpointPolicy::Budget(bytes) => budget_choice(gg, *bytes)?.0,
    })
}

/// `Budget(bytes)` with one level of recomputation: the chosen saved set
/// and its simulated peak.
fn budget_choice(gg: &GradGraph, bytes: usize) -> Result<(Vec<NodeId>, usize), PassError> {
    let default = default_saved(gg);
    let all_inputs = recomputation_inputs(gg);
    let acts = activations(gg, &default);
    let segments = |len: usize| every_len_th(&acts, &all_inputs, len);
    // Candidates from least to most recomputation: save-all, the
    // byte-weighted min cut (recomputes only cheap elementwise
    // work), then every len-th activation for growing segment
    // lengths. Each is checked by its real peak, simulated by
    // planning both halves as the pipeline will (the cut minimizes
    // saved bytes, not peak memory); the cheapest that fits wins,
    // else the one with the lowest peak.
    // Lengths 2, 3, 4, 6, 9, … and the √n one, each once (length 1
    // would save every activation, as save-all does).
    let n = acts.len().max(1);
    let mut lens = vec![n.div_ceil(((n as f64).sqrt().floor() as usize).max(1))];
    let mut len = 2;
    while len <= acts.len() {
        lens.push(len);
        len = if len < 4 { len + 1 } else { len + len / 2 };
    }
    lens.sort_unstable();
    lens.dedup();
    let mut candidates = vec![default.clone(), min_cut_saved(gg)];
    candidates.extend(lens.into_iter().map(segments));
    // Partition each (cheap) for its extra FLOPs, then simulate peaks
    // (fuse and plan: the expensive part) from the fewest FLOPs up: once
    // one fits, only candidates of equal FLOPs can still win. (Partitions
    // are made again when simulated rather than all held at once: on a
    // 100k-node graph each is two graphs of that size.)
    let mut ranked = candidates
        .into_iter()
        .map(|saved| Ok((extra_flops(gg, &partition(gg, Some(&saved))?), saved)))
        .collect::<Result<Vec<_>, PassError>>()?;
    ranked.sort_by_key(|(flops, _)| *flops);
    let mut best: Option<(bool, u64, usize, Vec<NodeId>)> = None;
    for (flops, saved) in ranked {
        if best.as_ref().is_some_and(|(fits, bflops, ..)| *fits && flops > *bflops) {
            break;
        }
        let peak = partition_peak(&partition(gg, Some(&saved))?)?;
        let fits = peak <= bytes;
        let better = match &best {
            None => true,
            Some((bfits, bflops, bpeak, _)) => match (fits, *bfits) {
                (true, false) => true,
                (false, true) => false,
                (true, true) => (flops, peak) < (*bflops, *bpeak),
                (false, false) => (peak, flops) < (*bpeak, *bflops),
            },
        };
        if better {
            best = Some((fits, flops, peak, saved));
        }
    }
    // (Save-all is always a candidate, so there is a best.)
    Ok(best.map(|(_, _, peak, saved)| (saved, peak)).unwrap_or_default())
}

/// The saved set of a minimum cut (as PyTorch's partitioner does): every
/// forward value `v` becomes an edge `v_in → v_out` whose capacity is its
/// size in bytes (the cost of saving it; 0 for inputs, which exist
/// anyway); uses are infinite edges; the source feeds the inputs and every
/// value the backward may not recompute (matmuls, reductions); every value
/// the backward reads feeds the sink. The cut edges are the values to
/// save; everything on the sink side is recomputed from them. ReLU-style
/// masks count as forward values of one byte per element, so the cut
/// prefers them to their float operands.
pub fn min_cut_saved(gg: &GradGraph) -> Vec<NodeId> {
    use petgraph::algo::dinics;
    let g = &gg.graph;
    let n = g.len();
    let default = default_saved(gg);
    // Forward values: needed by the primal outputs; plus masks the default
    // policy would compute in the forward.
    let primal = gg.primal_mask();
    let constant = g.constant_nodes();
    let mut forward = primal.clone();
    for &d in &default {
        forward[d.index()] = true; // masks computed in the forward
    }
    let seeds: Vec<NodeId> = g
        .inputs()
        .iter()
        .filter(|i| gg.seed_inputs.contains(&i.name))
        .map(|i| i.node)
        .collect();
    const INF: u64 = u64::MAX / 4;
    let mut net: petgraph::Graph<(), u64> = petgraph::Graph::new();
    let source = net.add_node(());
    let sink = net.add_node(());
    let mut port: Vec<Option<(petgraph::graph::NodeIndex, petgraph::graph::NodeIndex)>> = vec![None; n];
    let mut cut_edge = Vec::new();
    for id in g.node_ids() {
        if !forward[id.index()] || constant[id.index()] || seeds.contains(&id) {
            continue;
        }
        let (vin, vout) = (net.add_node(()), net.add_node(()));
        let is_input = matches!(g.op(id), Op::Input { .. });
        let cost = if is_input { 0 } else { g.ty(id).size_bytes() as u64 };
        cut_edge.push((id, net.add_edge(vin, vout, cost)));
        if is_input || !g.op(id).recomputable() {
            net.add_edge(source, vin, INF);
        }
        for a in g.args(id) {
            if let Some((_, aout)) = port[a.index()] {
                net.add_edge(aout, vin, INF);
            }
        }
        port[id.index()] = Some((vin, vout));
    }
    // What the backward reads: forward values used by non-forward nodes.
    for id in g.node_ids().filter(|id| !forward[id.index()]) {
        for a in g.args(id) {
            if let Some((_, aout)) = port[a.index()] {
                net.add_edge(aout, sink, INF);
            }
        }
    }
    let (_, flows) = dinics(&net, source, sink);
    // Residual reachability from the source.
    let mut reach = vec![false; net.node_count()];
    let mut stack = vec![source];
    reach[source.index()] = true;
    while let Some(v) = stack.pop() {
        use petgraph::visit::EdgeRef;
        for e in net.edges_directed(v, petgraph::Direction::Outgoing) {
            if flows[e.id().index()] < *e.weight() && !reach[e.target().index()] {
                reach[e.target().index()] = true;
                stack.push(e.target());
            }
        }
        for e in net.edges_directed(v, petgraph::Direction::Incoming) {
            if flows[e.id().index()] > 0 && !reach[e.source().index()] {
                reach[e.source().index()] = true;
                stack.push(e.source());
            }
        }
    }
    let mut saved: Vec<NodeId> = cut_edge
        .into_iter()
        .filter(|&(_, e)| {
            let (a, b) = net.edge_endpoints(e).expect("edge exists");
            reach[a.index()] && !reach[b.index()]
        })
        .map(|(id, _)| id)
        .collect();
    // Inputs cut at no cost are simply available.
    saved.extend(
        g.inputs()
            .iter()
            .filter(|i| !gg.seed_inputs.contains(&i.name))
            .map(|i| i.node),
    );
    saved.sort();
    saved.dedup();
    saved
}

/// What a partition saves and recomputes.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    /// Saved values: name, printed value in the joint graph, type, bytes.
    pub saved: Vec<(String, String, String, usize)>,
    /// Forward values the backward recomputes: value, op, FLOPs.
    pub recomputed: Vec<(String, String, u64)>,
    /// Bytes of saved activations (inputs excluded: they exist anyway).
    pub saved_activation_bytes: usize,
    /// The same under the default partition.
    pub default_activation_bytes: usize,
    pub extra_flops: u64,
}

/// The forward nodes with work (FLOPs) that the backward of `p`
/// recomputes: those the gradients need, not saved, primal.
fn recomputed_nodes<'g>(gg: &'g GradGraph, p: &Partition) -> impl Iterator<Item = NodeId> + 'g {
    let g = &gg.graph;
    let primal = gg.primal_mask();
    let mut is_saved = vec![false; g.len()];
    for r in &p.residuals {
        is_saved[r.node.index()] = true;
    }
    let mut needed = vec![false; g.len()];
    for o in &g.outputs()[gg.primal_outputs..] {
        needed[o.node.index()] = true;
    }
    for id in g.node_ids().rev() {
        if needed[id.index()] && !is_saved[id.index()] {
            for a in g.args(id) {
                needed[a.index()] = true;
            }
        }
    }
    g.node_ids()
        .filter(move |&id| needed[id.index()] && primal[id.index()] && !is_saved[id.index()] && node_flops(g, id) > 0)
}

/// FLOPs the backward of `p` spends recomputing forward values.
pub fn extra_flops(gg: &GradGraph, p: &Partition) -> u64 {
    recomputed_nodes(gg, p).map(|id| node_flops(&gg.graph, id)).sum()
}

/// Bytes of the activations (not inputs, not constants) among `saved`.
fn activation_bytes(gg: &GradGraph, saved: &[NodeId]) -> usize {
    activations(gg, saved)
        .iter()
        .map(|&n| gg.graph.ty(n).size_bytes())
        .sum()
}

/// Bytes of the activations the default partition (save-all) saves.
pub fn save_all_activation_bytes(gg: &GradGraph) -> usize {
    activation_bytes(gg, &default_saved(gg))
}

/// Explains `p`, a partition of `gg`.
pub fn explain(gg: &GradGraph, p: &Partition) -> Explanation {
    let g = &gg.graph;
    let saved_nodes: Vec<NodeId> = p.residuals.iter().map(|r| r.node).collect();
    let names = g.value_names();
    let recomputed: Vec<(String, String, u64)> = recomputed_nodes(gg, p)
        .map(|id| {
            (
                names[id.index()].clone(),
                g.op(id).name().to_string(),
                node_flops(g, id),
            )
        })
        .collect();
    Explanation {
        saved: p
            .residuals
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    names[r.node.index()].clone(),
                    r.ty.to_string(),
                    r.size_bytes(),
                )
            })
            .collect(),
        extra_flops: recomputed.iter().map(|r| r.2).sum(),
        recomputed,
        saved_activation_bytes: activation_bytes(gg, &saved_nodes),
        default_activation_bytes: save_all_activation_bytes(gg),
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        let _ = writeln!(out, "saved ({} values):", self.saved.len());
        for (name, value, ty, bytes) in &self.saved {
            let _ = writeln!(out, "  {name:<10} {value:<8} {ty:<16} {bytes:>12} B");
        }
        let _ = writeln!(out, "recomputed in the backward ({} values):", self.recomputed.len());
        for (value, op, flops) in &self.recomputed {
            let _ = writeln!(out, "  {value:<8} {op:<22} {flops:>12} FLOP");
        }
        let _ = writeln!(
            out,
            "saved activations: {} B (save-all: {} B, {} B less); extra FLOPs: {}",
            self.saved_activation_bytes,
            self.default_activation_bytes,
            self.default_activation_bytes
                .saturating_sub(self.saved_activation_bytes),
            self.extra_flops
        );
        f.write_str(&out)
    }
}
