//! Forward-mode automatic differentiation (Jacobian-vector products) as a
//! graph pass.
//!
//! `jvp(f, wrt)` returns a graph that computes f's outputs and, for tangent
//! inputs `tangent_<x>` (one per input in `wrt`, of its type), the
//! directional derivatives `tangent_<y> = J·v` of every float output, in one
//! forward sweep. The primal nodes are copied unchanged (same ids); each
//! node's tangent is built from its operands' tangents right after it.
//! Tangents known to be zero are not built (symbolic zeros); a float output
//! whose tangent is zero gets an explicit zero.
//!
//! One rule per op, in one exhaustive `match` ([`jvp_rule`]), each the
//! transpose of its VJP rule in `vjp.rs` (`uᵀ(J v) = (uᵀ J) v` is tested for
//! every op): the same conventions hold — ReLU′(0) = 0, `max` ties split
//! evenly, the untaken branch of a `select` contributes an exact zero, and
//! rules whose local derivative can be infinite are guarded so that a zero
//! tangent stays zero. A loop's tangent is a loop over the body's JVP,
//! carrying the primal and tangent carries together (memory O(1) in T).
//!
//! Composed with `autodiff` (`jvp` of a gradient graph) it gives
//! Hessian-vector products in one pass (forward over reverse).

use crate::autodiff::wrt_nodes;
use crate::emit::Emitter;
use crate::error::PassError;
use crate::vjp::{pow_rule, softmax_parts, unary_rule, SoftmaxParts};
use std::sync::Arc;
use wengert_ir::scan::Scan;
use wengert_ir::{verify, BinaryOp, CmpOp, Graph, NodeId, Op, UnaryOp};

/// The result of [`jvp`].
#[derive(Clone, Debug)]
pub struct TangentGraph {
    /// Inputs: the original inputs, then `tangent_<x>` for each input in
    /// `wrt`. Outputs: the original outputs, then `tangent_<y>` for each
    /// float output `y`.
    pub graph: Graph,
    /// How many of the outputs are the original (primal) outputs.
    pub primal_outputs: usize,
    /// The inputs perturbed, in tangent-input order.
    pub wrt: Vec<String>,
    /// The outputs that have a tangent output, in order.
    pub tangent_outputs: Vec<String>,
}

/// The name of the tangent input or output of `name`.
pub fn tangent_name(name: &str) -> String {
    format!("tangent_{name}")
}

/// Forward-mode differentiation of `g` along the inputs named in `wrt` (see
/// the module documentation).
pub fn jvp(g: &Graph, wrt: &[&str]) -> Result<TangentGraph, PassError> {
    verify(g)?;
    let wrt_ids = wrt_nodes(g, wrt)?;
    // The names this pass adds must be free: say which one is taken
    // rather than fail later on a duplicate.
    for &name in wrt {
        let t = tangent_name(name);
        if g.input(&t).is_some() {
            return Err(PassError::BadWrt {
                name: name.to_string(),
                reason: format!(
                    "the graph already has an input named `{t}`, the name of its tangent input; rename that input"
                ),
            });
        }
    }
    for o in g.outputs() {
        let t = tangent_name(&o.name);
        if g.ty(o.node).dtype.is_float() && g.outputs().iter().any(|p| p.name == t) {
            return Err(PassError::BadWrt {
                name: wrt.join(", "),
                reason: format!("the graph already has an output named `{t}`, the name of output `{}`'s tangent; rename that output", o.name),
            });
        }
    }
    let mut out = g.clone();
    out.clear_outputs();
    out.name = format!("{}.jvp", g.name);
    let mut tangent: Vec<Option<NodeId>> = vec![None; g.len()];
    for (&name, &id) in wrt.iter().zip(&wrt_ids) {
        let tname = tangent_name(name);
        let t = out
            .add_input(&tname, g.ty(id).clone(), true)
            .map_err(|e| PassError::BadWrt {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        tangent[id.index()] = Some(t);
    }
    for id in g.node_ids() {
        if tangent[id.index()].is_some() {
            continue;
        }
        let args = g.args(id);
        let dots: Vec<Option<NodeId>> = args.iter().map(|a| tangent[a.index()]).collect();
        if dots.iter().all(Option::is_none) {
            continue;
        }
        let mut e = Emitter { g: &mut out, at: id };
        tangent[id.index()] = jvp_rule(&mut e, id, &args, &dots, &tangent)?;
    }
    let primal_outputs = g.outputs().len();
    for o in g.outputs() {
        out.add_output(&o.name, o.node)?;
    }
    let mut tangent_outputs = Vec::new();
    for o in g.outputs() {
        if !g.ty(o.node).dtype.is_float() {
            continue;
        }
        let t = match tangent[o.node.index()] {
            Some(t) => t,
            None => Emitter {
                g: &mut out,
                at: o.node,
            }
            .full_like(o.node, 0.0)?,
        };
        out.add_output(&tangent_name(&o.name), t)?;
        tangent_outputs.push(o.name.clone());
    }
    verify(&out)?;
    Ok(TangentGraph {
        graph: out,
        primal_outputs,
        wrt: wrt.iter().map(|s| s.to_string()).collect(),
        tangent_outputs,
    })
}

/// The tangent of `y = op(args)` given its operands' tangents `dots`
/// (`None`: zero); `None` if it is zero. `all` holds every tangent built so
/// far (a loop result's `get` reads its loop's tangent loop).
pub fn jvp_rule(
    e: &mut Emitter<'_>,
    y: NodeId,
    args: &[NodeId],
    dots: &[Option<NodeId>],
    all: &[Option<NodeId>],
) -> Result<Option<NodeId>, PassError> {
    let op = e.g.op(y).clone();
    let x = args.first().copied().unwrap_or(y);
    let xdot = dots.first().copied().flatten();
    // A zero of y's type, for operands without a tangent.
    let zero_like = |e: &mut Emitter<'_>, like: NodeId| e.full_like(like, 0.0);
    Ok(match op {
        // Leaves: an input's tangent is set by `jvp` itself.
        Op::Input { .. } | Op::Const { .. } => None,

        // Elementwise with one operand: ẏ = ẋ·f′(x), the same rule as the
        // VJP's (a diagonal Jacobian is its own transpose).
        Op::Unary(u) => match xdot {
            Some(xd) => Some(unary_rule(e, u, x, y, xd)?),
            None => None,
        },

        Op::Binary(b) => {
            let (a, c) = (args[0], args[1]);
            let (ad, cd) = (dots[0], dots[1]);
            match b {
                // y = a + b: ẏ = ȧ + ḃ
                BinaryOp::Add => sum(e, ad, cd)?,
                // y = a − b: ẏ = ȧ − ḃ
                BinaryOp::Sub => match (ad, cd) {
                    (Some(p), Some(q)) => Some(e.sub(p, q)?),
                    (Some(p), None) => Some(p),
                    (None, Some(q)) => Some(e.neg(q)?),
                    (None, None) => None,
                },
                // y = a·b: ẏ = ȧ·b + a·ḃ
                BinaryOp::Mul => {
                    let l = ad.map(|p| e.mul(p, c)).transpose()?;
                    let r = cd.map(|q| e.mul(a, q)).transpose()?;
                    sum(e, l, r)?
                }
                // y = a / b: ẏ = ȧ/b − y·ḃ/b (each term guarded by its
                // tangent, as the VJP guards by the adjoint)
                BinaryOp::Div => {
                    let l = match ad {
                        Some(p) => {
                            let v = e.div(p, c)?;
                            Some(e.guard(p, v)?)
                        }
                        None => None,
                    };
                    let r = match cd {
                        Some(q) => {
                            let qb = e.div(q, c)?;
                            let v = e.mul(qb, y)?;
                            let v = e.neg(v)?;
                            Some(e.guard(q, v)?)
                        }
                        None => None,
                    };
                    sum(e, l, r)?
                }
                // y = max(a, b): ẏ = ȧ·([a > b] + ½[a = b]) + ḃ·([b > a] +
                // ½[a = b]), the transpose of the VJP's even tie split;
                // min likewise with <.
                BinaryOp::Max | BinaryOp::Min => {
                    let wins = if b == BinaryOp::Max { CmpOp::Gt } else { CmpOp::Lt };
                    let tie = e.cmp(CmpOp::Eq, a, c)?;
                    let mut parts = Vec::new();
                    for (p, q, d) in [(a, c, ad), (c, a, cd)] {
                        let Some(d) = d else { continue };
                        let zero = e.full_like(d, 0.0)?;
                        let half = e.mul_scalar(0.5, d)?;
                        let tie_share = e.select(tie, half, zero)?;
                        let w = e.cmp(wins, p, q)?;
                        parts.push(e.select(w, d, tie_share)?);
                    }
                    let mut it = parts.into_iter();
                    let first = it.next();
                    match (first, it.next()) {
                        (Some(p), Some(q)) => Some(e.add(p, q)?),
                        (p, _) => p,
                    }
                }
            }
        }

        // y = xᵖ: ẏ = ẋ·p·xᵖ⁻¹, the VJP's rule (`pow_rule`).
        Op::Pow { exponent: p } => match xdot {
            Some(xd) => pow_rule(e, p, x, xd)?,
            None => None,
        },

        // Comparisons are piecewise constant: no tangent.
        Op::Compare(_) => None,

        // y = select(c, a, b): ẏ = select(c, ȧ, ḃ); the untaken branch's
        // tangent never reaches y.
        Op::Select => {
            let (ad, bd) = (dots[1], dots[2]);
            if ad.is_none() && bd.is_none() {
                return Ok(None);
            }
            let a = match ad {
                Some(a) => a,
                None => zero_like(e, y)?,
            };
            let b = match bd {
                Some(b) => b,
                None => zero_like(e, y)?,
            };
            Some(e.select(args[0], a, b)?)
        }

        // y = convert(x): between floats, ẏ = convert(ẋ); nothing flows
        // through bool.
        Op::Convert { to } => match xdot {
            Some(xd) if to.is_float() => Some(e.op(Op::Convert { to }, &[xd])?),
            Some(_) | None => None,
        },

        // Linear ops: the tangent goes through the same op.
        Op::Broadcast { .. } | Op::Reshape { .. } | Op::Transpose { .. } | Op::ReduceSum { .. } | Op::Slice { .. } => {
            let Some(xd) = xdot else { return Ok(None) };
            Some(e.op(op, &[xd])?)
        }
        // y = pad(x) with zeros: ẏ = pad(ẋ).
        Op::Pad { .. } => {
            let Some(xd) = xdot else { return Ok(None) };
            Some(e.op(op, &[xd])?)
        }
        // y = concat(x₁, …): ẏ = concat(ẋ₁, …), zeros where xᵢ has none.
        Op::Concat { .. } => {
            let mut parts = Vec::with_capacity(args.len());
            for (&a, d) in args.iter().zip(dots) {
                parts.push(match d {
                    Some(d) => *d,
                    None => zero_like(e, a)?,
                });
            }
            Some(e.op(op, &parts)?)
        }

        // y = max_axes x: ẏ = Σ_axes(ẋ·[x = y]) / #ties, the transpose of
        // the VJP's even split among tied maxima.
        Op::ReduceMax { axes } => {
            let Some(xd) = xdot else { return Ok(None) };
            let xs = e.shape(x);
            let yb = e.expand_reduced(y, &axes, &xs)?;
            let hit = e.cmp(CmpOp::Eq, x, yb)?;
            let hit_f = e.op(Op::Convert { to: e.dtype(x) }, &[hit])?;
            let count = e.op(Op::ReduceSum { axes: axes.clone() }, &[hit_f])?;
            let zero = e.full_like(x, 0.0)?;
            let picked = e.select(hit, xd, zero)?;
            let s = e.op(Op::ReduceSum { axes }, &[picked])?;
            // No element equals the maximum when the reduced axis is empty
            // or the maximum is NaN: the tangent is then 0 (as the VJP's
            // adjoint is), not 0/0.
            let q = e.div(s, count)?;
            let none = e.full_like(count, 0.0)?;
            let empty = e.cmp(CmpOp::Eq, count, none)?;
            Some(e.select(empty, none, q)?)
        }

        // Y = A·B: Ẏ = Ȧ·B + A·Ḃ.
        Op::MatMul => {
            let (a, b) = (args[0], args[1]);
            let l = dots[0].map(|ad| e.op(Op::MatMul, &[ad, b])).transpose()?;
            let r = dots[1].map(|bd| e.op(Op::MatMul, &[a, bd])).transpose()?;
            sum(e, l, r)?
        }

        // Y = C + A·B: Ẏ = Ċ + Ȧ·B + A·Ḃ.
        Op::MatMulAcc { .. } => {
            let (a, b) = (args[1], args[2]);
            let l = dots[1].map(|ad| e.op(Op::MatMul, &[ad, b])).transpose()?;
            let r = dots[2].map(|bd| e.op(Op::MatMul, &[a, bd])).transpose()?;
            let ab = sum(e, l, r)?;
            sum(e, dots[0], ab)?
        }

        // L = mean over B rows of −Σₖ tₖ·log pₖ, p = softmax(z):
        //   L̇ = Σ ((p·Σt − t)·ż + (logsumexp(z) − z)·ṫ) / B,
        // the transpose of the fused VJP, from the row-max-shifted
        // exponentials (stable for logits of ±1e4).
        Op::SoftmaxCrossEntropy => {
            let (z, t) = (args[0], args[1]);
            let SoftmaxParts {
                zs,
                last,
                rows,
                shifted,
                ex,
                s,
            } = softmax_parts(e, z)?;
            let mut terms = Vec::new();
            if let Some(zd) = dots[0] {
                let tsum = e.reduce_sum(t, vec![last])?;
                let ratio = e.div(tsum, s)?;
                let rb = e.expand_reduced(ratio, &[last], &zs)?;
                let p_scaled = e.binary(BinaryOp::Mul, ex, rb)?;
                let diff = e.sub(p_scaled, t)?;
                terms.push(e.binary(BinaryOp::Mul, diff, zd)?);
            }
            if let Some(td) = dots[1] {
                let ls = e.unary(UnaryOp::Log, s)?;
                let lsb = e.expand_reduced(ls, &[last], &zs)?;
                let neg_logp = e.sub(lsb, shifted)?;
                terms.push(e.binary(BinaryOp::Mul, neg_logp, td)?);
            }
            let mut total = None;
            for term in terms {
                total = sum(e, total, Some(term))?;
            }
            let Some(total) = total else { return Ok(None) };
            let all_axes: Vec<usize> = (0..zs.len()).collect();
            let s = e.reduce_sum(total, all_axes)?;
            let b = e.scalar(e.dtype(z), rows as f64);
            Some(e.div(s, b)?)
        }

        // A loop's tangent: a loop over the body's JVP (see `scan_jvp`),
        // whose value holds the primal and tangent results.
        Op::Scan(scan) => Some(scan_jvp(e, y, &scan, args, dots)?),

        // Result `index` of a loop: the matching tangent result of the
        // loop's tangent loop (`None` for a result without a tangent).
        Op::Get { index, .. } => {
            let Some(tl) = all[x.index()] else { return Ok(None) };
            let Op::Scan(scan) = e.g.op(x).clone() else {
                return Err(PassError::Internal {
                    node: e.g.value_name(y),
                    message: "`get` of a value that is not a loop".into(),
                });
            };
            match tangent_result_index(&scan, index) {
                Some(k) => Some(e.get(tl, k)?),
                None => None,
            }
        }
    })
}

/// `a + b` over optional (zero) tangents.
fn sum(e: &mut Emitter<'_>, a: Option<NodeId>, b: Option<NodeId>) -> Result<Option<NodeId>, PassError> {
    Ok(match (a, b) {
        (Some(p), Some(q)) => Some(e.add(p, q)?),
        (p, None) => p,
        (None, q) => q,
    })
}

/// The body outputs (next carry, then ys) that carry tangents: the float
/// ones, as positions.
fn float_positions(g: &Graph, nodes: impl Iterator<Item = NodeId>) -> Vec<usize> {
    nodes
        .enumerate()
        .filter(|(_, n)| g.ty(*n).dtype.is_float())
        .map(|(i, _)| i)
        .collect()
}

/// The index, among the tangent loop's results, of the tangent of the
/// primal loop's result `index` (`None` for a bool result). The tangent
/// loop's results are: carries, tangent carries (of the float ones), ys,
/// tangent ys (of the float ones).
fn tangent_result_index(scan: &Scan, index: usize) -> Option<usize> {
    let outs: Vec<NodeId> = scan.body.outputs().iter().map(|o| o.node).collect();
    let (nc, ny) = (scan.n_carry, scan.n_ys());
    let fc = float_positions(&scan.body, outs[..nc].iter().copied());
    let fy = float_positions(&scan.body, outs[nc..].iter().copied());
    if index < nc {
        fc.iter().position(|&p| p == index).map(|k| nc + k)
    } else {
        let j = index - nc;
        fy.iter().position(|&p| p == j).map(|k| nc + fc.len() + ny + k)
    }
}

/// The tangent loop of `y = scan(args)`: a loop whose body is the body's
/// JVP with respect to every float body input, reordered so that each
/// tangent sits in its group — consts (primal, then tangents), carries
/// (primal, then tangents), xs (primal, then tangents); operands without a
/// tangent get zeros. It recomputes the primal results alongside (the
/// primal loop is left as it is, so the primal outputs keep their nodes).
fn scan_jvp(
    e: &mut Emitter<'_>,
    y: NodeId,
    scan: &Scan,
    args: &[NodeId],
    dots: &[Option<NodeId>],
) -> Result<NodeId, PassError> {
    if scan.regen.is_some() {
        return Err(PassError::Pipeline(format!(
            "{} recomputes its states under the binomial schedule; forward mode through it is not built \
             (use the SaveAll or SaveCarries loop policy for higher derivatives)",
            e.g.value_name(y)
        )));
    }
    let body = &scan.body;
    let ins: Vec<(String, NodeId)> = body.inputs().iter().map(|i| (i.name.clone(), i.node)).collect();
    let (nk, nc) = (scan.n_consts, scan.n_carry);
    let float_in: Vec<bool> = ins.iter().map(|(_, n)| body.ty(*n).dtype.is_float()).collect();
    // Differentiate the body along every float input (marked
    // differentiable for the purpose).
    let mut b = body.clone();
    b.set_all_inputs_differentiable();
    let names: Vec<&str> = ins
        .iter()
        .zip(&float_in)
        .filter(|(_, f)| **f)
        .map(|((n, _), _)| n.as_str())
        .collect();
    let tb = jvp(&b, &names)?;
    let tg = &tb.graph;
    // Group boundaries of inputs: consts [0, nk), carries [nk, nk+nc), xs.
    let groups = [(0, nk), (nk, nk + nc), (nk + nc, ins.len())];
    let mut order: Vec<NodeId> = Vec::new();
    let mut operands: Vec<NodeId> = Vec::new();
    let mut counts = [0usize; 3];
    for (gi, &(lo, hi)) in groups.iter().enumerate() {
        for k in lo..hi {
            order.push(tg.input(&ins[k].0).map(|i| i.node).unwrap_or(ins[k].1));
            operands.push(args[k]);
            counts[gi] += 1;
        }
        for k in lo..hi {
            if !float_in[k] {
                continue;
            }
            let t = tg
                .input(&tangent_name(&ins[k].0))
                .map(|i| i.node)
                .ok_or_else(|| PassError::Internal {
                    node: e.g.value_name(y),
                    message: format!("the body's JVP has no tangent input for `{}`", ins[k].0),
                })?;
            order.push(t);
            operands.push(match dots[k] {
                Some(d) => d,
                None => e.full_like(args[k], 0.0)?,
            });
            counts[gi] += 1;
        }
    }
    // Outputs: carries, tangent carries, ys, tangent ys.
    let outs: Vec<NodeId> = tg.outputs()[..tb.primal_outputs].iter().map(|o| o.node).collect();
    let touts: Vec<NodeId> = tg.outputs()[tb.primal_outputs..].iter().map(|o| o.node).collect();
    let fc = float_positions(tg, outs[..nc].iter().copied()).len();
    let mut out_order: Vec<NodeId> = Vec::new();
    out_order.extend(&outs[..nc]);
    out_order.extend(&touts[..fc]);
    out_order.extend(&outs[nc..]);
    out_order.extend(&touts[fc..]);
    let new_body = tg.with_interface(&format!("{}.jvp", body.name), &order, &out_order)?;
    let tangent_loop = Scan {
        body: new_body,
        length: scan.length,
        reverse: scan.reverse,
        unroll: scan.unroll,
        n_consts: counts[0],
        n_carry: counts[1],
        regen: None,
    };
    e.op(Op::Scan(Arc::new(tangent_loop)), &operands)
}
