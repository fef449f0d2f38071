//! Binomial checkpointing (Griewank–Walther's Revolve) for chains.
//!
//! [`detect_chain`] finds a repeated block structurally: walking back from
//! each output along the computed forward operand with the longest path
//! behind it (the spine), it looks for the op sequence that repeats most
//! (same op, attributes and types; a block of up to 16 spine nodes), and
//! returns the states `s_0 … s_l` between blocks and each block's forward
//! nodes. A block may read anything besides its input state (inputs,
//! constants, values of earlier blocks): the rewrite reads values of other
//! blocks from the forward, which partition then saves, so the result is
//! exact for any graph and saves the least on true chains.
//!
//! [`revolve`] rewrites a joint graph so that its backward half follows the
//! binomial schedule with `c` slots: it adds copies of blocks (the
//! recomputations) chained from checkpoint copies, as the recursion
//! `reverse(a, b, c)` prescribes — advance to the split point `m` of the
//! dynamic program, reverse `m..b` with one slot fewer, then `a..m` — and
//! points each block's adjoint nodes at the copy made for its reversal.
//! Partition, saving nothing, then recomputes each copy just before its
//! first use. The number of advance copies is exactly
//! `r·l − C(c+r, c+1)` (the optimum); each block is also copied once more
//! for its own reversal. Split points come from a binary search on the
//! closed form (see `split`): the checkpoint pass with 10 slots on 12,500
//! blocks took 0.17 s (BENCHMARKS.md). A rewrite that would copy more than [`MAX_COPIED_NODES`]
//! nodes is refused with the number of slots that would do.

use crate::autodiff::GradGraph;
use crate::binomial::{revolve_min_extra_steps, split};
use crate::error::PassError;
use std::collections::HashMap;
use wengert_ir::{Graph, NodeId, Op};

/// A chain of `l` blocks: `states[0]` feeds block 1, `states[i]` is the
/// output of block `i`; `blocks[i - 1]` lists block `i`'s forward nodes in
/// topological order.
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    pub states: Vec<NodeId>,
    pub blocks: Vec<Vec<NodeId>>,
}

/// Signatures of nodes: equal signatures mark the same step of a repeated
/// block. A signature stands for a node's op (with its attributes; a
/// constant's value does not count, each block copies its own) and type,
/// numbered as first seen, so equal signatures are equal ops, never a hash
/// collision.
#[derive(Default)]
struct Signatures {
    ids: HashMap<(Option<wengert_ir::Op>, wengert_ir::TensorType), u64>,
}

impl Signatures {
    fn of(&mut self, g: &Graph, id: NodeId) -> u64 {
        let op = match g.op(id) {
            wengert_ir::Op::Const { .. } => None,
            op => Some(op.clone()),
        };
        let next = self.ids.len() as u64;
        *self.ids.entry((op, g.ty(id).clone())).or_insert(next)
    }
}

/// The longest repeated period of `sigs`: (period, start, repeats), by
/// nodes covered, if some period repeats at least twice.
fn best_period(sigs: &[u64]) -> Option<(usize, usize, usize)> {
    let mut best: Option<(usize, usize, usize)> = None;
    for p in 1..=MAX_PERIOD.min(sigs.len() / 2) {
        for start in 0..p.min(sigs.len()) {
            let mut reps = 1;
            while start + (reps + 1) * p <= sigs.len()
                && sigs[start + reps * p..start + (reps + 1) * p] == sigs[start..start + p]
            {
                reps += 1;
            }
            if reps >= 2 && best.is_none_or(|(bp, _, br)| reps * p > bp * br) {
                best = Some((p, start, reps));
            }
        }
    }
    best
}

/// The most spine nodes one block may have.
const MAX_PERIOD: usize = 16;

/// Finds the longest repeated block along the spine of one of the eight
/// deepest outputs (see
/// the module documentation), if it repeats at least twice. The spine
/// follows, from each node, the computed operand with the longest path
/// behind it, so a residual step `h + f(h)` is followed through `f`.
pub fn detect_chain(gg: &GradGraph) -> Option<Chain> {
    let g = &gg.graph;
    let primal = gg.primal_mask();
    let constant = g.constant_nodes();
    let computed = |v: NodeId| primal[v.index()] && !constant[v.index()] && !matches!(g.op(v), Op::Input { .. });
    // Longest path of computed nodes ending at each node (node order is
    // topological).
    let mut depth = vec![0usize; g.len()];
    for v in g.node_ids().filter(|&v| computed(v)) {
        depth[v.index()] = 1 + g
            .args(v)
            .iter()
            .filter(|&&a| computed(a))
            .map(|a| depth[a.index()])
            .max()
            .unwrap_or(0);
    }
    // The deepest few outputs (each spine costs its length).
    let mut outputs: Vec<NodeId> = g.outputs().iter().map(|o| o.node).filter(|&v| computed(v)).collect();
    outputs.sort_by_key(|v| (std::cmp::Reverse(depth[v.index()]), v.index()));
    outputs.dedup();
    outputs.truncate(8);
    let mut best: Option<(Vec<NodeId>, (usize, usize, usize))> = None;
    let mut signatures = Signatures::default();
    for o in outputs {
        // The spine, from the output back to where it meets only inputs.
        let mut spine = vec![o];
        while let Some(&cur) = spine.last() {
            let next = g
                .args(cur)
                .into_iter()
                .filter(|&a| computed(a))
                .max_by_key(|a| (depth[a.index()], std::cmp::Reverse(a.index())));
            match next {
                Some(one) => spine.push(one),
                None => break,
            }
        }
        spine.reverse();
        let sigs: Vec<u64> = spine.iter().map(|&v| signatures.of(g, v)).collect();
        if let Some(found) = best_period(&sigs) {
            if best.as_ref().is_none_or(|(_, (bp, _, br))| found.0 * found.2 > bp * br) {
                best = Some((spine, found));
            }
        }
    }
    let (spine, (p, start, l)) = best?;
    // s_0 is whatever feeds the first block's first spine node.
    let first = spine[start];
    let s0 = if start > 0 {
        spine[start - 1]
    } else {
        *g.args(first)
            .iter()
            .find(|a| !constant[a.index()] && g.ty(**a) == g.ty(spine[start + p - 1]))?
    };
    let mut states = vec![s0];
    for i in 1..=l {
        states.push(spine[start + i * p - 1]);
    }
    // Block i's nodes: ancestors of s_i that are not ancestors of s_{i-1},
    // not inputs and not constants. The states lie on one path, so the
    // ancestor sets nest, and a node is in block i exactly when s_i is the
    // first state it reaches: one backward sweep over the forward nodes
    // finds that for all (an ancestor set per state took O(l·n)).
    let mut reach = vec![usize::MAX; g.len()];
    for (i, &s) in states.iter().enumerate() {
        reach[s.index()] = reach[s.index()].min(i);
    }
    for v in g.node_ids().collect::<Vec<_>>().into_iter().rev() {
        if !primal[v.index()] || reach[v.index()] == usize::MAX {
            continue;
        }
        for a in g.args(v) {
            reach[a.index()] = reach[a.index()].min(reach[v.index()]);
        }
    }
    let mut blocks = vec![Vec::new(); l];
    for v in g.node_ids() {
        let r = reach[v.index()];
        if (1..=l).contains(&r) && !constant[v.index()] && !matches!(g.op(v), Op::Input { .. }) {
            blocks[r - 1].push(v);
        }
    }
    Some(Chain { states, blocks })
}

/// Where a block copy starts: `s_0` itself, or the state produced by an
/// earlier action.
#[derive(Clone, Copy, Debug)]
enum From {
    S0,
    Action(usize),
}

/// One copy of block `block` made from `from`; `turn` if it is the copy
/// that block's reversal reads.
#[derive(Clone, Copy, Debug)]
struct Action {
    block: usize,
    from: From,
    turn: bool,
}

/// The schedule as a list of block copies, in the order the recursion
/// `reverse(a, b, c)` makes them.
struct Schedule {
    actions: Vec<Action>,
}

impl Schedule {
    fn advance(&mut self, from_block: usize, to_block: usize, mut from: From) -> From {
        for k in from_block + 1..=to_block {
            self.actions.push(Action {
                block: k,
                from,
                turn: false,
            });
            from = From::Action(self.actions.len() - 1);
        }
        from
    }

    fn reverse(&mut self, a: usize, b: usize, c: usize, state: From) {
        if b == a + 1 {
            self.actions.push(Action {
                block: b,
                from: state,
                turn: true,
            });
            return;
        }
        if c <= 1 {
            for i in (a + 1..=b).rev() {
                let st = self.advance(a, i - 1, state);
                self.actions.push(Action {
                    block: i,
                    from: st,
                    turn: true,
                });
            }
            return;
        }
        let m = a + split(b - a, c);
        let st = self.advance(a, m, state);
        self.reverse(m, b, c - 1, st);
        self.reverse(a, m, c, state);
    }
}

/// A binomial schedule applied to a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binomial {
    /// Blocks of the chain.
    pub blocks: usize,
    pub slots: usize,
    /// Block evaluations the backward recomputes besides each block's own
    /// reversal (the advance copies).
    pub recomputed_blocks: usize,
    /// FLOPs of every block copy (the advances and each block's reversal
    /// copy): what the schedule computes beyond the forward.
    pub extra_flops: u64,
}

/// The most nodes the binomial rewrite may copy (the recomputations and
/// each block's reversal copy): slots=1 on 10⁴ blocks would copy 5·10⁷
/// blocks, a graph nothing could compile.
pub const MAX_COPIED_NODES: u64 = 2_000_000;

/// Nodes the rewrite with `slots` slots copies: (recomputed blocks + one
/// reversal copy per block) × the largest block.
pub fn copied_nodes(chain: &Chain, slots: usize) -> u64 {
    let l = chain.blocks.len() as u64;
    let block = chain.blocks.iter().map(Vec::len).max().unwrap_or(1) as u64;
    (revolve_min_extra_steps(l, slots.max(1) as u64) + l).saturating_mul(block)
}

/// The fewest slots whose rewrite copies at most `max_nodes` nodes (the
/// count falls as slots grow; with l − 1 slots every block is copied
/// twice at most).
pub fn fewest_slots(chain: &Chain, max_nodes: u64) -> usize {
    let l = chain.blocks.len().max(2);
    let (mut lo, mut hi) = (1, l - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if copied_nodes(chain, mid) <= max_nodes {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Rewrites `gg` for the binomial schedule with `slots` checkpoints on the
/// chain it detects ([`revolve_chain`]); `None` without a chain.
pub fn revolve(gg: &GradGraph, slots: usize) -> Result<Option<(GradGraph, Binomial)>, PassError> {
    match detect_chain(gg) {
        Some(chain) => Ok(Some(revolve_chain(gg, &chain, slots)?)),
        None => Ok(None),
    }
}

/// Rewrites `gg` for the binomial schedule with `slots` checkpoints on
/// `chain` (detected in `gg`); returns the new gradient graph and the
/// schedule.
pub fn revolve_chain(gg: &GradGraph, chain: &Chain, slots: usize) -> Result<(GradGraph, Binomial), PassError> {
    let g = &gg.graph;
    let primal = gg.primal_mask();
    let l = chain.blocks.len();
    if copied_nodes(chain, slots) > MAX_COPIED_NODES {
        return Err(PassError::Checkpoint(format!(
            "{} slot(s) on a chain of {l} blocks would recompute {} blocks ({} nodes, more than {MAX_COPIED_NODES}); use at least {} slots",
            slots.max(1),
            revolve_min_extra_steps(l as u64, slots.max(1) as u64),
            copied_nodes(chain, slots),
            fewest_slots(chain, MAX_COPIED_NODES)
        )));
    }
    let mut block_of: Vec<Option<usize>> = vec![None; g.len()];
    for (i, b) in chain.blocks.iter().enumerate() {
        for &v in b {
            block_of[v.index()] = Some(i + 1);
        }
    }
    let mut schedule = Schedule { actions: Vec::new() };
    schedule.reverse(0, l, slots.max(1), From::S0);
    let advances = schedule.actions.iter().filter(|a| !a.turn).count();
    let mut out = Graph::new(g.name.clone());
    let mut map: Vec<Option<NodeId>> = vec![None; g.len()];
    for input in g.inputs() {
        map[input.node.index()] = Some(out.add_input(&input.name, input.ty.clone(), input.differentiable)?);
    }
    // The forward nodes as they are.
    for id in g
        .node_ids()
        .filter(|id| primal[id.index()] && !matches!(g.op(*id), Op::Input { .. }))
    {
        let args: Vec<NodeId> = g
            .args(id)
            .iter()
            .map(|a| map[a.index()].expect("forward operands precede"))
            .collect();
        let new = out.copy_node(g, id, &args)?;
        out.set_mark(new, g.node(id).mark);
        map[id.index()] = Some(new);
    }
    // Block copies are emitted lazily, just before the first adjoint node
    // of the block whose reversal they serve, so that node order follows
    // the schedule and partition keeps it.
    let s0 = map[chain.states[0].index()].expect("s_0 is a forward value");
    // Every action copies one block.
    let block_flops: Vec<u64> = chain
        .blocks
        .iter()
        .map(|b| b.iter().map(|&v| crate::cost::node_flops(g, v)).sum())
        .collect();
    let copied_flops: u64 = schedule.actions.iter().map(|a| block_flops[a.block - 1]).sum();
    let mut made: Vec<HashMap<NodeId, NodeId>> = Vec::with_capacity(schedule.actions.len());
    let mut youturn: Vec<Option<usize>> = vec![None; l + 1];
    let emit_next = |out: &mut Graph,
                     made: &mut Vec<HashMap<NodeId, NodeId>>,
                     youturn: &mut Vec<Option<usize>>,
                     map: &[Option<NodeId>]|
     -> Result<(), PassError> {
        let k = made.len();
        let act = schedule.actions[k];
        let state = match act.from {
            From::S0 => s0,
            From::Action(i) => made[i][&chain.states[schedule.actions[i].block]],
        };
        let mut local: HashMap<NodeId, NodeId> = HashMap::new();
        local.insert(chain.states[act.block - 1], state);
        for &v in &chain.blocks[act.block - 1] {
            let args: Vec<NodeId> = g
                .args(v)
                .iter()
                .map(|a| local.get(a).copied().or(map[a.index()]))
                .collect::<Option<_>>()
                .ok_or_else(|| PassError::Internal {
                    node: g.value_name(v),
                    message: "a block reads a value outside the chain that is not available".into(),
                })?;
            let copy = out.copy_node(g, v, &args)?;
            local.insert(v, copy);
        }
        if act.turn {
            youturn[act.block] = Some(k);
        }
        made.push(local);
        Ok(())
    };
    // The adjoint nodes, reading each block's values from the copy made for
    // its reversal (and the block's input state from the state that copy
    // started from). An adjoint node belongs to the latest block it reads.
    for id in g
        .node_ids()
        .filter(|id| !primal[id.index()] && !matches!(g.op(*id), Op::Input { .. }))
    {
        let args = g.args(id);
        let block = args.iter().filter_map(|a| block_of[a.index()]).max();
        if let Some(b) = block {
            while youturn[b].is_none() {
                emit_next(&mut out, &mut made, &mut youturn, &map)?;
            }
        }
        let new_args: Vec<NodeId> = args
            .iter()
            .map(|&a| {
                let from_block = block.and_then(|b| made[youturn[b]?].get(&a).copied());
                from_block.or(map[a.index()]).expect("operands precede")
            })
            .collect();
        map[id.index()] = Some(out.copy_node(g, id, &new_args)?);
    }
    for o in g.outputs() {
        out.add_output(&o.name, map[o.node.index()].expect("mapped"))?;
    }
    wengert_ir::verify(&out)?;
    Ok((
        GradGraph {
            graph: out,
            primal_outputs: gg.primal_outputs,
            seed_inputs: gg.seed_inputs.clone(),
            wrt: gg.wrt.clone(),
        },
        Binomial {
            blocks: l,
            slots: slots.max(1),
            recomputed_blocks: advances,
            extra_flops: copied_flops,
        },
    ))
}
