//! The reverse-mode rule of `scan`: a loop's VJP is a loop.
//!
//! For `(h_T, ys) = scan(body, c, h_0, xs)` with `body(c, h, x) = (h', y)`,
//! the adjoints follow the steps backwards:
//!
//! ```text
//! h̄_T = ct(h_T);  c̄ = 0
//! for t = T−1 … 0:   (c̄_t, h̄_t, x̄_t) = body_vjp(c, h_t, x_t; h̄_{t+1}, ȳ_t)
//!                    c̄ += c̄_t
//! adjoints: c̄ (consts), h̄_0 (initial carry), x̄ stacked (xs)
//! ```
//!
//! which is itself a `scan` running the other way, whose carry is
//! `(h̄, c̄)`, whose stacked inputs are `(h_t, x_t, ȳ_t)` and whose stacked
//! outputs are `x̄_t`. Its body is the body's own reverse-mode derivative
//! (autodiff of the body graph), so nested loops and grad of grad work by
//! the same rule.
//!
//! The carries `h_t` the backward loop reads are the forward loop's
//! trajectory: before differentiating, autodiff replaces each loop that
//! needs adjoints by one with extra stacked results, the carry at the start
//! of each step ([`with_trajectory`]). This is the "save the carries"
//! schedule: memory `T × carry`, and each step's other residuals are
//! recomputed from its carry inside the backward body (one extra forward
//! evaluation of the body per step).

use crate::autodiff::{autodiff, Seed};
use crate::emit::Emitter;
use crate::error::PassError;
use std::sync::Arc;
use wengert_ir::{Graph, NodeId, Op, Scan};

/// The loop with one more stacked result per carry: the carry at the start
/// of each step (results `n_results()..` of the new loop; the old results
/// keep their indices).
pub fn with_trajectory(scan: &Scan) -> Result<Scan, PassError> {
    let mut body = scan.body.clone();
    for k in 0..scan.n_carry {
        let input = body.inputs()[scan.n_consts + k].clone();
        let name = unique_output(&body, &format!("traj{k}"));
        body.add_output(&name, input.node)?;
    }
    Ok(Scan { body, ..scan.clone() })
}

fn unique_output(g: &Graph, base: &str) -> String {
    let mut name = base.to_string();
    while g.output(&name).is_some() || g.input(&name).is_some() {
        name.push('_');
    }
    name
}

fn unique_input(g: &Graph, base: &str) -> String {
    let mut name = base.to_string();
    while g.input(&name).is_some() || g.output(&name).is_some() {
        name.push('_');
    }
    name
}

/// A copy of `g` whose inputs are all differentiable (a body's `nodiff`
/// marks are about its own callers; the loop decides what it needs).
fn all_differentiable(g: &Graph) -> Result<Graph, PassError> {
    let mut out = Graph::new(g.name.clone());
    let mut map: Vec<Option<NodeId>> = vec![None; g.len()];
    for input in g.inputs() {
        map[input.node.index()] = Some(out.add_input(&input.name, input.ty.clone(), true)?);
    }
    for id in g.node_ids() {
        if map[id.index()].is_some() {
            continue;
        }
        let args: Vec<NodeId> = g.args(id).iter().filter_map(|a| map[a.index()]).collect();
        let new = out.copy_node(g, id, &args)?;
        out.set_mark(new, g.node(id).mark);
        map[id.index()] = Some(new);
    }
    for o in g.outputs() {
        let node = map[o.node.index()].ok_or_else(|| PassError::Internal {
            node: o.name.clone(),
            message: "a body output was not copied".into(),
        })?;
        out.add_output(&o.name, node)?;
    }
    Ok(out)
}

/// The adjoints of a loop's operands. `y` is the loop in the joint graph
/// (already carrying its trajectory: results from `traj_start` on),
/// `cotangents` the adjoints of its first `traj_start` results (`None`: a
/// zero), `wants` which operands need one.
pub fn scan_vjp(
    e: &mut Emitter<'_>,
    y: NodeId,
    traj_start: usize,
    cotangents: &[Option<NodeId>],
    wants: &[bool],
) -> Result<Vec<Option<NodeId>>, PassError> {
    let Op::Scan(scan) = e.g.op(y).clone() else {
        return Err(PassError::Internal {
            node: e.g.value_name(y),
            message: "the loop rule was applied to a node that is not a loop".into(),
        });
    };
    let internal = |message: String| PassError::Internal {
        node: format!("scan body @{}", scan.body.name),
        message,
    };
    let (nc, nk, nx) = (scan.n_consts, scan.n_carry, scan.n_xs());
    let ny = traj_start.saturating_sub(nk);
    let args = e.g.args(y);
    let body = all_differentiable(&scan.body)?;
    let ins = body.inputs().to_vec();
    let outs = body.outputs().to_vec();
    let is_float = |k: usize| ins[k].ty.dtype.is_float();
    let want = |k: usize| wants.get(k).copied().unwrap_or(false) && is_float(k);
    // Carries that carry adjoints; consts and xs whose adjoints are wanted;
    // ys whose adjoints are given.
    let float_carry: Vec<usize> = (0..nk).filter(|&k| is_float(nc + k)).collect();
    let want_c: Vec<usize> = (0..nc).filter(|&i| want(i)).collect();
    let want_x: Vec<usize> = (0..nx).filter(|&j| want(nc + nk + j)).collect();
    let given_y: Vec<usize> = (0..ny)
        .filter(|&j| cotangents.get(nk + j).copied().flatten().is_some())
        .collect();

    // The body's VJP: seeds for the next carry and the given ys.
    let mut seeds: Vec<(String, Seed)> = Vec::new();
    let mut seed_names: Vec<Option<String>> = vec![None; outs.len()];
    // (The trajectory results, after the ys, get no seed.)
    for (o, out) in outs.iter().enumerate() {
        let has = if o < nk {
            float_carry.contains(&o)
        } else if o < nk + ny {
            given_y.contains(&(o - nk))
        } else {
            false
        };
        let seed = if has {
            let name = unique_input(&body, &format!("ct_{}", out.name));
            seed_names[o] = Some(name.clone());
            Seed::Input(name)
        } else {
            Seed::Zero
        };
        seeds.push((out.name.clone(), seed));
    }
    let wrt: Vec<String> = want_c
        .iter()
        .map(|&i| ins[i].name.clone())
        .chain(float_carry.iter().map(|&k| ins[nc + k].name.clone()))
        .chain(want_x.iter().map(|&j| ins[nc + nk + j].name.clone()))
        .collect();
    let wrt_refs: Vec<&str> = wrt.iter().map(String::as_str).collect();
    let seed_refs: Vec<(&str, Seed)> = seeds.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
    let joint = autodiff(&body, &wrt_refs, &seed_refs)?.graph;

    // The backward body: consts c; carry (h̄, c̄); xs (h_t, x_t, ȳ_t).
    let mut w = Graph::new(format!("{}.vjp", body.name));
    let mut map: Vec<Option<NodeId>> = vec![None; joint.len()];
    let joint_input = |name: &str| {
        joint
            .input(name)
            .map(|i| i.node)
            .ok_or_else(|| internal(format!("the body's derivative has no input `{name}`")))
    };
    for input in &ins[..nc] {
        let id = w.add_input(&input.name, input.ty.clone(), true)?;
        map[joint_input(&input.name)?.index()] = Some(id);
    }
    let mut hbar_in = Vec::new();
    for &k in &float_carry {
        let name = seed_names[k]
            .clone()
            .ok_or_else(|| internal("a carry has no seed".into()))?;
        let id = w.add_input(&name, ins[nc + k].ty.clone(), true)?;
        map[joint_input(&name)?.index()] = Some(id);
        hbar_in.push(id);
    }
    let mut cacc_in = Vec::new();
    for &i in &want_c {
        let id = w.add_input(
            &unique_input(&joint, &format!("acc_{}", ins[i].name)),
            ins[i].ty.clone(),
            true,
        )?;
        cacc_in.push(id);
    }
    for input in &ins[nc..] {
        let id = w.add_input(&input.name, input.ty.clone(), true)?;
        map[joint_input(&input.name)?.index()] = Some(id);
    }
    for &j in &given_y {
        let name = seed_names[nk + j]
            .clone()
            .ok_or_else(|| internal("a y has no seed".into()))?;
        let ty = body.ty(outs[nk + j].node).clone();
        let id = w.add_input(&name, ty, true)?;
        map[joint_input(&name)?.index()] = Some(id);
    }
    for id in joint.node_ids() {
        if map[id.index()].is_some() || matches!(joint.op(id), Op::Input { .. }) {
            continue;
        }
        let args: Vec<NodeId> = joint
            .args(id)
            .iter()
            .map(|a| map[a.index()].ok_or_else(|| internal("an operand was not copied".into())))
            .collect::<Result<_, _>>()?;
        let new = w.copy_node(&joint, id, &args)?;
        map[id.index()] = Some(new);
    }
    let grad = |name: &str| -> Result<NodeId, PassError> {
        let o = joint
            .output(&format!("grad_{name}"))
            .ok_or_else(|| internal(format!("the body's derivative has no gradient for `{name}`")))?;
        map[o.node.index()].ok_or_else(|| internal("a gradient was not copied".into()))
    };
    for &k in &float_carry {
        let g = grad(&ins[nc + k].name)?;
        w.add_output(&format!("hbar{k}"), g)?;
    }
    for (n, &i) in want_c.iter().enumerate() {
        let g = grad(&ins[i].name)?;
        let sum = Emitter { g: &mut w, at: g }.add(cacc_in[n], g)?;
        w.add_output(&format!("cbar{i}"), sum)?;
    }
    for &j in &want_x {
        let g = grad(&ins[nc + nk + j].name)?;
        w.add_output(&format!("xbar{j}"), g)?;
    }
    // Only what the adjoints need (the body's own results are dead here
    // unless its derivative reads them).
    let live = w.live_nodes();
    let (w, _) = w.retain(&live)?;

    // The backward loop's operands in the joint graph.
    let results = scan.result_types();
    let mut operands: Vec<NodeId> = args[..nc].to_vec();
    for &k in &float_carry {
        operands.push(match cotangents.get(k).copied().flatten() {
            Some(ct) => ct,
            None => e.full_like(args[nc + k], 0.0)?,
        });
    }
    for &i in &want_c {
        operands.push(e.full_like(args[i], 0.0)?);
    }
    for k in 0..nk {
        let index = traj_start + k;
        let ty = results
            .get(index)
            .cloned()
            .ok_or_else(|| internal(format!("the loop has no trajectory result {index}")))?;
        operands.push(e.op(Op::Get { index, ty }, &[y])?);
    }
    operands.extend_from_slice(&args[nc + nk..nc + nk + nx]);
    for &j in &given_y {
        operands.push(cotangents[nk + j].ok_or_else(|| internal("a given cotangent disappeared".into()))?);
    }
    let back = Scan {
        body: w,
        length: scan.length,
        reverse: !scan.reverse,
        n_consts: nc,
        n_carry: float_carry.len() + want_c.len(),
    };
    let back_results = back.result_types();
    let node = e.op(Op::Scan(Arc::new(back)), &operands)?;
    let get = |e: &mut Emitter<'_>, index: usize| -> Result<NodeId, PassError> {
        let ty = back_results
            .get(index)
            .cloned()
            .ok_or_else(|| internal(format!("the backward loop has no result {index}")))?;
        e.op(Op::Get { index, ty }, &[node])
    };
    let mut adjoints: Vec<Option<NodeId>> = vec![None; nc + nk + nx];
    for (n, &k) in float_carry.iter().enumerate() {
        if want(nc + k) {
            adjoints[nc + k] = Some(get(e, n)?);
        }
    }
    for (n, &i) in want_c.iter().enumerate() {
        adjoints[i] = Some(get(e, float_carry.len() + n)?);
    }
    let n_carry_back = float_carry.len() + want_c.len();
    for (n, &j) in want_x.iter().enumerate() {
        adjoints[nc + nk + j] = Some(get(e, n_carry_back + n)?);
    }
    Ok(adjoints)
}
