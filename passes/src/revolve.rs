//! Binomial checkpointing (Griewank–Walther's Revolve) for chains.
//!
//! [`detect_chain`] finds a repeated block structurally: walking back from
//! the first output along the one operand that is a computed forward value,
//! it looks for the op sequence that repeats most (same op, attributes and
//! types), and returns the states `s_0 … s_l` between blocks and each
//! block's forward nodes.
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
//! for its own reversal.

use crate::autodiff::GradGraph;
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

fn signature(g: &Graph, id: NodeId) -> String {
    let mut s = String::new();
    let _ = wengert_ir::print::write_op_head(&mut s, g.op(id));
    format!("{s}:{}", g.ty(id))
}

/// Finds the longest repeated block along the first output's spine (see
/// the module documentation), if it repeats at least twice.
pub fn detect_chain(gg: &GradGraph) -> Option<Chain> {
    let g = &gg.graph;
    let primal = gg.primal_mask();
    let mut constant = vec![false; g.len()];
    for id in g.node_ids() {
        constant[id.index()] = match g.op(id) {
            Op::Const { .. } => true,
            Op::Input { .. } => false,
            _ => g.args(id).iter().all(|a| constant[a.index()]),
        };
    }
    let computed = |v: NodeId| primal[v.index()] && !constant[v.index()] && !matches!(g.op(v), Op::Input { .. });
    // The spine, from the output back to where it meets only inputs.
    let mut spine = vec![g.outputs().first()?.node];
    loop {
        let cur = *spine.last()?;
        let next: Vec<NodeId> = g.args(cur).into_iter().filter(|&a| computed(a)).collect();
        match next.as_slice() {
            [one] => spine.push(*one),
            _ => break,
        }
    }
    spine.reverse();
    let sigs: Vec<String> = spine.iter().map(|&v| signature(g, v)).collect();
    // Best (period, start, repeats) by nodes covered.
    let mut best: Option<(usize, usize, usize)> = None;
    for p in 1..=8.min(sigs.len() / 2) {
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
    let (p, start, l) = best?;
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
    // not inputs and not constants.
    let mut blocks = Vec::with_capacity(l);
    for i in 1..=l {
        let prev = g.ancestors([states[i - 1]]);
        let cur = g.ancestors([states[i]]);
        blocks.push(
            g.node_ids()
                .filter(|&v| {
                    cur[v.index()] && !prev[v.index()] && !constant[v.index()] && !matches!(g.op(v), Op::Input { .. })
                })
                .collect(),
        );
    }
    Some(Chain { states, blocks })
}

/// The dynamic program's table: `split[n][c]` is the optimal first advance
/// when reversing `n` steps with `c` slots.
fn splits(l: usize, c: usize) -> Vec<Vec<usize>> {
    let mut f = vec![vec![0u64; c + 1]; l + 1];
    let mut split = vec![vec![1usize; c + 1]; l + 1];
    for (n, row) in f.iter_mut().enumerate().skip(1) {
        row[1] = (n as u64) * (n as u64 - 1) / 2;
    }
    for slots in 2..=c {
        for n in 2..=l {
            let (j, v) = (1..n)
                .map(|j| (j, j as u64 + f[n - j][slots - 1] + f[j][slots]))
                .min_by_key(|&(_, v)| v)
                .unwrap_or((1, 0));
            f[n][slots] = v;
            split[n][slots] = j;
        }
    }
    split
}

struct Rewriter<'a> {
    g: &'a Graph,
    out: Graph,
    /// Map of the original nodes (forward and, later, adjoint).
    map: Vec<Option<NodeId>>,
    chain: &'a Chain,
    block_of: Vec<Option<usize>>,
    splits: Vec<Vec<usize>>,
    /// For each block (1-based), the copy map made for its reversal.
    youturn: Vec<Option<HashMap<NodeId, NodeId>>>,
    advances: usize,
}

impl Rewriter<'_> {
    /// Copies block `i` starting from `state` (the copy of `s_{i-1}`);
    /// returns the copy map of the block's nodes.
    fn copy_block(&mut self, i: usize, state: NodeId) -> Result<HashMap<NodeId, NodeId>, PassError> {
        let mut local: HashMap<NodeId, NodeId> = HashMap::new();
        local.insert(self.chain.states[i - 1], state);
        for &v in &self.chain.blocks[i - 1] {
            let args: Vec<NodeId> = self
                .g
                .args(v)
                .iter()
                .map(|a| local.get(a).copied().or(self.map[a.index()]))
                .collect::<Option<_>>()
                .ok_or_else(|| PassError::Internal {
                    node: self.g.value_name(v),
                    message: "a block reads a value outside the chain that is not available".into(),
                })?;
            let node = self.g.node(v);
            let copy = self.out.add_typed(node.op.clone(), &args, node.ty.clone());
            local.insert(v, copy);
        }
        Ok(local)
    }

    fn advance(&mut self, from: usize, to: usize, mut state: NodeId) -> Result<NodeId, PassError> {
        for k in from + 1..=to {
            let local = self.copy_block(k, state)?;
            state = local[&self.chain.states[k]];
            self.advances += 1;
        }
        Ok(state)
    }

    /// Reverses blocks `a+1 ..= b` from the copy `state` of `s_a` with `c`
    /// slots (the recursion of the module documentation).
    fn reverse(&mut self, a: usize, b: usize, c: usize, state: NodeId) -> Result<(), PassError> {
        if b == a + 1 {
            let local = self.copy_block(b, state)?;
            self.youturn[b] = Some(local);
            return Ok(());
        }
        if c <= 1 {
            for i in (a + 1..=b).rev() {
                let st = self.advance(a, i - 1, state)?;
                let local = self.copy_block(i, st)?;
                self.youturn[i] = Some(local);
            }
            return Ok(());
        }
        let m = a + self.splits[b - a][c];
        let st = self.advance(a, m, state)?;
        self.reverse(m, b, c - 1, st)?;
        self.reverse(a, m, c, state)
    }
}

/// Rewrites `gg` for the binomial schedule with `slots` checkpoints on the
/// detected chain; returns the new gradient graph and the number of advance
/// copies (recomputed block evaluations besides each block's own reversal).
pub fn revolve(gg: &GradGraph, slots: usize) -> Result<Option<(GradGraph, usize)>, PassError> {
    let Some(chain) = detect_chain(gg) else { return Ok(None) };
    let g = &gg.graph;
    let primal = gg.primal_mask();
    let l = chain.blocks.len();
    let mut block_of = vec![None; g.len()];
    for (i, b) in chain.blocks.iter().enumerate() {
        for &v in b {
            block_of[v.index()] = Some(i + 1);
        }
    }
    let mut r = Rewriter {
        g,
        out: Graph::new(g.name.clone()),
        map: vec![None; g.len()],
        chain: &chain,
        block_of,
        splits: splits(l, slots.max(1)),
        youturn: vec![None; l + 1],
        advances: 0,
    };
    for input in g.inputs() {
        r.map[input.node.index()] = Some(r.out.add_input(&input.name, input.ty.clone(), input.differentiable)?);
    }
    // The forward nodes as they are.
    for id in g
        .node_ids()
        .filter(|id| primal[id.index()] && !matches!(g.op(*id), Op::Input { .. }))
    {
        let args: Vec<NodeId> = g
            .args(id)
            .iter()
            .map(|a| r.map[a.index()].expect("forward operands precede"))
            .collect();
        let node = g.node(id);
        let new = r.out.add_typed(node.op.clone(), &args, node.ty.clone());
        r.out.set_mark(new, node.mark);
        r.map[id.index()] = Some(new);
    }
    // The recomputations, from s_0.
    let s0 = r.map[chain.states[0].index()].expect("s_0 is a forward value");
    r.reverse(0, l, slots.max(1), s0)?;
    // The adjoint nodes, reading each block's values from the copy made for
    // its reversal (and the block's input state from the state that copy
    // started from). An adjoint node belongs to the latest block it reads.
    for id in g
        .node_ids()
        .filter(|id| !primal[id.index()] && !matches!(g.op(*id), Op::Input { .. }))
    {
        let args = g.args(id);
        let block = args.iter().filter_map(|a| r.block_of[a.index()]).max();
        let new_args: Vec<NodeId> = args
            .iter()
            .map(|&a| {
                let from_block = block.and_then(|b| {
                    let turn = r.youturn[b].as_ref()?;
                    turn.get(&a).copied()
                });
                from_block.or(r.map[a.index()]).expect("operands precede")
            })
            .collect();
        let node = g.node(id);
        r.map[id.index()] = Some(r.out.add_typed(node.op.clone(), &new_args, node.ty.clone()));
    }
    for o in g.outputs() {
        r.out.add_output(&o.name, r.map[o.node.index()].expect("mapped"))?;
    }
    wengert_ir::verify(&r.out)?;
    let advances = r.advances;
    Ok(Some((
        GradGraph {
            graph: r.out,
            primal_outputs: gg.primal_outputs,
            primal_nodes: gg.primal_nodes,
            seed_inputs: gg.seed_inputs.clone(),
            wrt: gg.wrt.clone(),
        },
        advances,
    )))
}
