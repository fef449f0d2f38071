//! `simplify`: constant folding, algebraic identities, common
//! subexpression elimination and dead code elimination, to a fixed point.
//!
//! Autodiff output is full of `x·1`, duplicated constants, sums of
//! broadcasts and dead seeds; after this pass the seed cases' gradient
//! graphs read like the hand-written backward propagation.
//!
//! Identities used (each only when the types allow the replacement, and
//! each exact in IEEE arithmetic for every input, NaN, infinities and
//! signed zeros included, with the one exception below):
//! `x·1 = 1·x = x`, `x/1 = x`, `x+(−0) = (−0)+x = x`, `x−(+0) = x`,
//! `(−0)−x = −x`, `−(−x) = x`, `pow(x, 1) = x`, `select(c, x, x) = x`,
//! `transpose(transpose(x)) = transpose(x, composed)` (or `x`),
//! `broadcast(broadcast(x)) = broadcast(x)`, `reshape(reshape(x)) =
//! reshape(x)`, identity broadcasts/reshapes/transposes vanish, a
//! broadcast of a scalar constant stays symbolic (never folded into a
//! tensor),
//! and `Σ broadcast(x)` over only broadcast axes `= x·n + 0` (`+0` over
//! none). That last one is the one rewrite that changes results: it keeps
//! NaN, infinities and signed zeros as the sum does, but `x·n` rounds once
//! where the interpreter's `n − 1` additions round each time, so they
//! differ in the last bits, and for large `n` by more: an f32 sum of 2²⁵
//! ones stops growing at 2²⁴ where `x·n` gives 2²⁵ (and `x·n` overflows to
//! inf where the stalled sum does not; `n` itself is rounded to f32 beyond
//! 2²⁴). It stays because the alternative is a loop of `n` additions (`n`
//! can be 10¹² for a broadcast that is never stored) whose result is less
//! accurate. The JIT agrees bit for bit with the interpreter of the graph
//! it compiled, that is after this rewrite. Constants of at most
//! [`FOLD_LIMIT`] elements are folded by the interpreter, so folding is
//! exactly what the program would have computed.
//!
//! Not used, because they are not exact: `x·0 = 0` (0·inf and 0·NaN are
//! NaN, 0·(−1) is −0; XLA does not fold it for floats either), `x+0 = x`
//! (−0 + 0 is +0) and `0−x = −x` (0 − 0 is +0, −0 is −0). Autodiff's
//! symbolic zeros are a different thing: an adjoint that does not exist is
//! never materialized, so no multiplication by zero is emitted for it.

use crate::error::PassError;
use std::collections::HashMap;
use wengert_ir::interp::eval_op;
use wengert_ir::{verify, BinaryOp, Graph, NodeId, Op, Tensor, UnaryOp};

/// Largest constant (in elements) that folding creates.
pub const FOLD_LIMIT: usize = 64;

/// Runs the simplifications until nothing changes (at most 8 rounds).
pub fn simplify(g: &Graph) -> Result<Graph, PassError> {
    // Loop bodies are simplified as graphs of their own.
    let mut current = if g.has_regions() {
        g.map_bodies(simplify)?
    } else {
        g.clone()
    };
    for _ in 0..8 {
        let (next, changed) = simplify_once(&current)?;
        current = next;
        if !changed {
            break;
        }
    }
    verify(&current)?;
    Ok(current)
}

/// A value during rewriting: a node of the new graph.
struct Rewriter {
    out: Graph,
    /// CSE table: op and operands.
    table: HashMap<CseKey, NodeId>,
}

/// The CSE key of a node: its op (compared exactly: `Op: Eq + Hash`, floats
/// by bits, constants by type and content) and its operands. Equal keys
/// compute equal values.
pub(crate) type CseKey = (Op, Vec<NodeId>);

pub(crate) fn cse_key(op: &Op, args: &[NodeId]) -> CseKey {
    (op.clone(), args.to_vec())
}

impl Rewriter {
    /// Adds a node unless an identical one exists (CSE).
    fn add(&mut self, op: Op, args: &[NodeId]) -> Result<NodeId, PassError> {
        let key = cse_key(&op, args);
        if let Some(&id) = self.table.get(&key) {
            return Ok(id);
        }
        let id = self.out.add(op, args)?;
        self.table.insert(key, id);
        Ok(id)
    }

    fn constant(&self, id: NodeId) -> Option<&Tensor> {
        if let Op::Const { value } = self.out.op(id) {
            Some(value)
        } else {
            None
        }
    }

    /// The value of a constant all of whose elements are equal, looking
    /// through broadcasts and reshapes.
    fn uniform(&self, mut id: NodeId) -> Option<f64> {
        loop {
            let op = self.out.op(id);
            if let Op::Const { value } = op {
                let v = value.to_f64_vec();
                let first = *v.first()?;
                return v.iter().all(|e| e.to_bits() == first.to_bits()).then_some(first);
            }
            if !matches!(op, Op::Broadcast { .. } | Op::Reshape { .. }) {
                return None;
            }
            id = self.out.args(id)[0];
        }
    }

    /// Whether `id` is a constant whose every element is `v`, bit for bit
    /// (so +0 and −0 differ).
    fn is(&self, id: NodeId, v: f64) -> bool {
        self.uniform(id).map(f64::to_bits) == Some(v.to_bits())
    }

    /// A scalar constant `v` broadcast to the type of `like`.
    fn full_like(&mut self, like: NodeId, v: f64) -> Result<NodeId, PassError> {
        let ty = self.out.ty(like).clone();
        let c = self.add(
            Op::Const {
                value: Tensor::scalar(ty.dtype, v),
            },
            &[],
        )?;
        if ty.shape.is_empty() {
            Ok(c)
        } else {
            self.add(Op::Broadcast { shape: ty.shape }, &[c])
        }
    }

    /// Rewrites one node; returns its replacement.
    fn rewrite(&mut self, op: &Op, args: &[NodeId]) -> Result<NodeId, PassError> {
        let same = |r: &Rewriter, a: NodeId, b: NodeId| r.out.ty(a) == r.out.ty(b);
        match op {
            Op::Binary(BinaryOp::Mul) => {
                let (a, b) = (args[0], args[1]);
                if self.is(b, 1.0) && same(self, a, b) {
                    return Ok(a);
                }
                if self.is(a, 1.0) && same(self, a, b) {
                    return Ok(b);
                }
            }
            Op::Binary(BinaryOp::Div) if self.is(args[1], 1.0) => return Ok(args[0]),
            Op::Binary(BinaryOp::Add) => {
                if self.is(args[1], -0.0) {
                    return Ok(args[0]);
                }
                if self.is(args[0], -0.0) {
                    return Ok(args[1]);
                }
            }
            Op::Binary(BinaryOp::Sub) => {
                if self.is(args[1], 0.0) {
                    return Ok(args[0]);
                }
                if self.is(args[0], -0.0) {
                    return self.add(Op::Unary(UnaryOp::Neg), &[args[1]]);
                }
            }
            Op::Unary(UnaryOp::Neg) => {
                if let Op::Unary(UnaryOp::Neg) = self.out.op(args[0]) {
                    return Ok(self.out.args(args[0])[0]);
                }
            }
            Op::Pow { exponent } if *exponent == 1.0 => return Ok(args[0]),
            Op::Select if args[1] == args[2] => return Ok(args[1]),
            Op::Transpose { perm } => {
                if perm.iter().enumerate().all(|(i, &p)| i == p) {
                    return Ok(args[0]);
                }
                if let Op::Transpose { perm: inner } = self.out.op(args[0]).clone() {
                    let composed: Vec<usize> = perm.iter().map(|&p| inner[p]).collect();
                    let x = self.out.args(args[0])[0];
                    return self.rewrite(&Op::Transpose { perm: composed }, &[x]);
                }
            }
            Op::Broadcast { shape } | Op::Reshape { shape } => {
                if self.out.ty(args[0]).shape == *shape {
                    return Ok(args[0]);
                }
                let inner = self.out.op(args[0]).clone();
                let nested = matches!(
                    (op, &inner),
                    (Op::Broadcast { .. }, Op::Broadcast { .. }) | (Op::Reshape { .. }, Op::Reshape { .. })
                );
                if nested {
                    let x = self.out.args(args[0])[0];
                    return self.rewrite(op, &[x]);
                }
            }
            Op::ReduceSum { axes } => {
                // Σ over leading axes that a broadcast added (the source is
                // not stretched elsewhere): broadcast(x)·count.
                if let Op::Broadcast { shape } = self.out.op(args[0]).clone() {
                    let x = self.out.args(args[0])[0];
                    let xs = self.out.ty(x).shape.clone();
                    let lead = shape.len() - xs.len();
                    if shape[lead..] == xs[..] && axes.iter().all(|&a| a < lead) {
                        let count: usize = axes.iter().map(|&a| shape[a]).product();
                        let kept: Vec<usize> = (0..shape.len())
                            .filter(|a| !axes.contains(a))
                            .map(|a| shape[a])
                            .collect();
                        let xb = self.rewrite(&Op::Broadcast { shape: kept }, &[x])?;
                        // A sum starts at +0: over nothing it is +0 (even
                        // of inf or NaN), and adding +0 last turns a −0
                        // product into +0 as the sum would. (x·n rounds
                        // once where the interpreter's n − 1 additions
                        // round each time: see the module documentation.)
                        if count == 0 {
                            return self.full_like(xb, 0.0);
                        }
                        let xn = if count == 1 {
                            xb
                        } else {
                            let n = self.full_like(xb, count as f64)?;
                            self.rewrite(&Op::Binary(BinaryOp::Mul), &[xb, n])?
                        };
                        let zero = self.full_like(xb, 0.0)?;
                        return self.rewrite(&Op::Binary(BinaryOp::Add), &[xn, zero]);
                    }
                }
            }
            // No identity rewrites these (an op added to the IR lands here
            // only by being listed).
            Op::Input { .. }
            | Op::Const { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Pow { .. }
            | Op::Compare(_)
            | Op::Select
            | Op::Convert { .. }
            | Op::ReduceMax { .. }
            | Op::MatMul
            | Op::MatMulAcc { .. }
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Concat { .. }
            | Op::SoftmaxCrossEntropy
            | Op::Scan(_)
            | Op::Get { .. } => {}
        }
        // Constant folding of small results. A broadcast of a constant stays
        // a broadcast: it is free in generated code and reads better.
        // Loops are not folded: a `get` reads a scan, never a constant.
        let foldable = !matches!(
            op,
            Op::Const { .. } | Op::Input { .. } | Op::Broadcast { .. } | Op::Scan(_) | Op::Get { .. }
        );
        if foldable && !args.is_empty() {
            let consts: Option<Vec<&Tensor>> = args.iter().map(|&a| self.constant(a)).collect();
            if let Some(values) = consts {
                let tys: Vec<&wengert_ir::TensorType> = args.iter().map(|&a| self.out.ty(a)).collect();
                let ty = wengert_ir::infer(op, &tys).map_err(|m| PassError::Internal {
                    node: format!("`{}`", op.name()),
                    message: m,
                })?;
                if ty.num_elements() <= FOLD_LIMIT {
                    if let Ok(value) = eval_op(op, &values, &ty) {
                        return self.add(Op::Const { value }, &[]);
                    }
                }
            }
        }
        self.add(op.clone(), args)
    }
}

/// One round of rewriting; also says whether anything changed.
fn simplify_once(g: &Graph) -> Result<(Graph, bool), PassError> {
    let mut changed = false;
    let mut r = Rewriter {
        out: Graph::new(g.name.clone()),
        table: HashMap::new(),
    };
    let mut map: Vec<Option<NodeId>> = vec![None; g.len()];
    for input in g.inputs() {
        map[input.node.index()] = Some(r.out.add_input(&input.name, input.ty.clone(), input.differentiable)?);
    }
    for id in g.node_ids() {
        if map[id.index()].is_some() {
            continue;
        }
        let args: Vec<NodeId> = g
            .args(id)
            .iter()
            .map(|a| map[a.index()].expect("operands precede"))
            .collect();
        let before = r.out.len();
        let new = r.rewrite(g.op(id), &args)?;
        // Unchanged: exactly one new node, the same op on the same operands.
        let same =
            r.out.len() == before + 1 && new.index() == before && r.out.op(new) == g.op(id) && r.out.args(new) == args;
        changed |= !same;
        // A user's checkpointing mark stays with the value.
        if let Some(mark) = g.node(id).mark {
            if !matches!(r.out.op(new), Op::Input { .. } | Op::Const { .. }) {
                r.out.set_mark(new, Some(mark));
            }
        }
        map[id.index()] = Some(new);
    }
    for o in g.outputs() {
        r.out.add_output(&o.name, map[o.node.index()].expect("mapped"))?;
    }
    // Dead code elimination.
    let live = r.out.live_nodes();
    changed |= live
        .iter()
        .zip(r.out.node_ids())
        .any(|(&l, id)| !l && !matches!(r.out.op(id), Op::Input { .. }));
    let (out, _) = r.out.retain(&live)?;
    Ok((out, changed))
}
