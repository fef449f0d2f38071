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
//! `(h̄, c̄)` and whose stacked inputs are the forward's values at step
//! `t` and `ȳ_t`. Its body is built from the body's own reverse-mode
//! derivative (autodiff of the body graph, split by `partition` into the
//! body's forward and backward halves), so nested loops and grad of grad
//! work by the same rule.
//!
//! What the backward loop reads of step `t` ([`LoopPolicy`]):
//! - the carry `h_t`: before differentiating, autodiff replaces the loop by
//!   one with more stacked results ([`plan`]), the first of which is the
//!   trajectory `h_0 … h_{T−1}` (stored once);
//! - under [`LoopPolicy::SaveAll`], the residuals the body's backward half
//!   needs, stacked. A residual that *is* the next carry `h_{t+1}` is not
//!   stacked a second time: the backward loop carries it, starting from
//!   the final carry and stepping to `h_t` from the trajectory (JAX stores
//!   both `h_t` and `y_t = h_{t+1}`). A residual computed from consts
//!   alone is computed once, outside both loops (hoisted).
//! - under [`LoopPolicy::SaveCarries`], nothing more: the backward body
//!   recomputes the step from `h_t` (one extra forward evaluation per
//!   step, memory `T × carry`);
//! - under [`LoopPolicy::Binomial`] and [`LoopPolicy::Every`], not even
//!   the trajectory: the forward loop stays as it was, and the backward
//!   loop (`Scan::regen`) recomputes the states it needs from a few saved
//!   ones by the schedule (`wengert_runtime::revolve`), each step then
//!   recomputed in its adjoint as under SaveCarries.
//!
//! The recomputing schedules do not split the transpose (below): its
//! stacked factors are O(T) memory, which those schedules exist to avoid.
//! So their weight gradients are summed step by step (`matmul_acc` into
//! the accumulator, steps last to first), and the split's one product
//! after the loop sums in that same order (`matmul_acc` over the stacked
//! factors): every policy gives the same bits.
//!
//! **Split transpose.** A const's per-step adjoint that is one matrix
//! product `A_t · B_t` (the weight gradient `ḡ_t h_tᵀ` of `W h`) is not
//! accumulated by `T` small products in the serial loop: the loop stacks
//! `A_t` (and `B_t`, unless it is a view of what the loop already reads
//! stacked), and one product after the loop (`matmul_acc`, in the order the loop meets the steps) computes
//! `Σ_t A_t B_t = [A_0 … A_{T−1}] · [B_0; …; B_{T−1}]`.

use crate::autodiff::{autodiff, Seed};
use crate::emit::Emitter;
use crate::error::PassError;
use crate::partition::partition;
use std::sync::Arc;
use wengert_ir::{Graph, NodeId, Op, Scan, TensorType};

/// What the forward loop stores for the backward loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoopPolicy {
    /// The trajectory and each step's residuals (no recomputation).
    #[default]
    SaveAll,
    /// The trajectory only; the backward recomputes each step from it.
    SaveCarries,
    /// No trajectory: the backward loop recomputes the states it needs
    /// from this many saved states (the initial one counted) under the
    /// binomial schedule (Revolve), `r·T − C(c+r, c+1)` extra steps for
    /// memory `c × carry`; each step is then recomputed as under
    /// `SaveCarries`.
    Binomial(usize),
    /// No trajectory: the state before every k-th step is stored, and each
    /// segment of k steps is recomputed (its states kept) when the
    /// backward reaches it: memory `(T/k + k − 1) × carry`,
    /// `(⌈T/k⌉ − 1)·k + T − ⌈T/k⌉` extra steps (the forward loop stores no
    /// checkpoints: the backward places them).
    Every(usize),
    /// The first of SaveAll, SaveCarries, Binomial(c) whose stored bytes
    /// (stacked results the backward reads, or c saved states) fit in this
    /// many bytes, with the most slots that fit (at least one).
    Budget(usize),
}

/// Where a value the backward loop reads comes from.
#[derive(Clone, Debug)]
enum Source {
    /// Operand `i` of the forward loop (a const, or stacked xs).
    Operand(usize),
    /// Result `i` of the (extended) forward loop.
    Result(usize),
    /// A residual computed from consts alone: node of the body's forward
    /// half, copied out of the loop.
    Hoisted(NodeId),
    /// The adjoint of the forward loop's result `i` (zeros if none).
    Cotangent(usize),
    /// Zeros of a type (a fresh accumulator).
    Zeros(TensorType),
    /// A state the backward loop recomputes (not an operand).
    Regen,
}

/// What the backward loop's stacked results are.
#[derive(Clone, Debug)]
enum Stacked {
    /// The adjoint of xs operand `i`.
    XsAdjoint(usize),
    /// Factor `A_t` of const `i`'s split transpose.
    SplitA(usize),
    /// Factor `B_t` of const `i`'s split transpose.
    SplitB(usize),
}

/// A const's adjoint assembled after the loop: `Σ_t A_t B_t`, with `B`
/// stacked by the loop or a view of a stacked operand.
#[derive(Clone, Debug)]
struct Split {
    /// The const's operand index.
    operand: usize,
    /// Ops turning a stacked operand (by source) into `[T, k, n]`, when
    /// `B_t` is a view of a value the loop reads stacked.
    b_view: Option<(Source, Vec<Op>)>,
}

/// How to differentiate one loop: decided before the reverse sweep (the
/// forward loop is replaced by [`LoopPlan::forward`]), carried out by
/// [`emit_backward`].
#[derive(Clone, Debug)]
pub struct LoopPlan {
    /// The forward loop with its extra stacked results.
    pub forward: Scan,
    /// The backward loop's body, with its operands' sources.
    body: Graph,
    /// The body's forward half, from which hoisted residuals are copied.
    hoist_from: Graph,
    n_consts: usize,
    n_carry: usize,
    sources: Vec<Source>,
    /// Per backward carry: the operand it gives the adjoint of (the
    /// initial carry's or a const's), if any.
    carry_adjoint: Vec<Option<usize>>,
    stacked: Vec<Stacked>,
    splits: Vec<Split>,
    /// Slots of the binomial schedule, when the states are recomputed.
    slots: Option<usize>,
    /// The every-k schedule's k instead, when non-zero.
    every: usize,
}

fn unique(g: &Graph, base: &str) -> String {
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
    copy_into(g, &mut out, &mut map, |_| true)?;
    for o in g.outputs() {
        out.add_output(&o.name, mapped(&map, o.node)?)?;
    }
    Ok(out)
}

fn mapped(map: &[Option<NodeId>], id: NodeId) -> Result<NodeId, PassError> {
    map[id.index()].ok_or_else(|| PassError::Internal {
        node: format!("#{}", id.index()),
        message: "a loop body's node was used before it was copied".into(),
    })
}

/// Copies every node of `src` selected by `keep` that is not mapped yet
/// (inputs must be mapped by the caller), in order.
fn copy_into(
    src: &Graph,
    out: &mut Graph,
    map: &mut [Option<NodeId>],
    keep: impl Fn(NodeId) -> bool,
) -> Result<(), PassError> {
    for id in src.node_ids() {
        if map[id.index()].is_some() || matches!(src.op(id), Op::Input { .. }) || !keep(id) {
            continue;
        }
        let args: Vec<NodeId> = src.args(id).iter().map(|&a| mapped(map, a)).collect::<Result<_, _>>()?;
        let new = out.copy_node(src, id, &args)?;
        out.set_mark(new, src.node(id).mark);
        map[id.index()] = Some(new);
    }
    Ok(())
}

/// Plans the VJP of `scan` for operands of which `wants` need adjoints.
pub fn plan(scan: &Scan, wants: &[bool], policy: LoopPolicy) -> Result<LoopPlan, PassError> {
    if let LoopPolicy::Budget(bytes) = policy {
        return plan_within(scan, wants, bytes);
    }
    let internal = |message: String| PassError::Internal {
        node: format!("loop body @{}", scan.body.name),
        message,
    };
    let (nc, nk, nx, ny) = (scan.n_consts, scan.n_carry, scan.n_xs(), scan.n_ys());
    let body = all_differentiable(&scan.body)?;
    let ins = body.inputs().to_vec();
    let outs = body.outputs().to_vec();
    let float_in = |k: usize| ins[k].ty.dtype.is_float();
    let want = |k: usize| wants.get(k).copied().unwrap_or(false) && float_in(k);
    let float_carry: Vec<usize> = (0..nk).filter(|&k| float_in(nc + k)).collect();
    let want_c: Vec<usize> = (0..nc).filter(|&i| want(i)).collect();
    let want_x: Vec<usize> = (0..nx).filter(|&j| want(nc + nk + j)).collect();
    let float_y: Vec<usize> = (0..ny)
        .filter(|&j| body.ty(outs[nk + j].node).dtype.is_float())
        .collect();

    // The body's derivative, seeded at the next carry and every float y.
    let mut seeds: Vec<(String, Seed)> = Vec::new();
    let mut seed_of: Vec<Option<String>> = vec![None; outs.len()];
    for (o, out) in outs.iter().enumerate() {
        let seeded = if o < nk {
            float_carry.contains(&o)
        } else {
            float_y.contains(&(o - nk))
        };
        let seed = if seeded {
            let name = unique(&body, &format!("ct_{}", out.name));
            seed_of[o] = Some(name.clone());
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
    let gg = autodiff(&body, &wrt_refs, &seed_refs)?;
    let saved = match policy {
        LoopPolicy::SaveAll | LoopPolicy::Budget(_) => None,
        LoopPolicy::SaveCarries | LoopPolicy::Binomial(_) | LoopPolicy::Every(_) => Some(Vec::new()),
    };
    // (slots, every): how the backward recomputes states, if it does.
    let schedule = match policy {
        LoopPolicy::Binomial(c) => Some((c.max(1), 0)),
        LoopPolicy::Every(k) => Some((0, k.max(1))),
        LoopPolicy::SaveAll | LoopPolicy::SaveCarries | LoopPolicy::Budget(_) => None,
    };
    let slots = schedule.map(|(s, _)| s);
    let part = partition(&gg, saved.as_deref())?;
    let (fwd, bwd) = (&part.forward, &part.backward);

    // Classify the residuals: the next carry itself, consts-only, stacked.
    let joint = &gg.graph;
    let const_inputs: Vec<NodeId> = ins[..nc].iter().map(|i| i.node).collect();
    let mut depends_on_step = vec![false; joint.len()];
    for id in joint.node_ids() {
        let is_step_input = joint.inputs().iter().any(|i| i.node == id) && !const_inputs.contains(&id);
        depends_on_step[id.index()] = is_step_input || joint.args(id).iter().any(|a| depends_on_step[a.index()]);
    }
    enum ResKind {
        NextCarry(usize),
        Hoisted,
        Stacked,
    }
    let kinds: Vec<ResKind> = part
        .residuals
        .iter()
        .map(|r| {
            if let Some(k) = (0..nk).find(|&k| joint.outputs()[k].node == r.node) {
                ResKind::NextCarry(k)
            } else if !depends_on_step[r.node.index()] {
                ResKind::Hoisted
            } else {
                ResKind::Stacked
            }
        })
        .collect();

    // The forward loop's body: the primal results, the trajectory, the
    // stacked residuals.
    let mut fbody = fwd.clone();
    fbody.clear_outputs();
    for o in &outs {
        let node = fwd
            .output(&o.name)
            .ok_or_else(|| internal(format!("the forward half lost output `{}`", o.name)))?;
        fbody.add_output(&o.name, node.node)?;
    }
    let n_results = outs.len();
    let mut next_result = n_results;
    let mut traj_result = vec![0usize; nk];
    for (k, slot) in traj_result.iter_mut().enumerate() {
        let input = fbody.inputs()[nc + k].clone();
        fbody.add_output(&unique(&fbody, &format!("traj{k}")), input.node)?;
        *slot = next_result;
        next_result += 1;
    }
    let mut residual_source: Vec<Option<Source>> = Vec::new();
    for (r, kind) in part.residuals.iter().zip(&kinds) {
        residual_source.push(match kind {
            ResKind::Stacked => {
                let node = fwd
                    .output(&r.name)
                    .ok_or_else(|| internal(format!("no residual `{}`", r.name)))?
                    .node;
                fbody.add_output(&unique(&fbody, &format!("res_{}", r.name)), node)?;
                next_result += 1;
                Some(Source::Result(next_result - 1))
            }
            ResKind::Hoisted => {
                let node = fwd
                    .output(&r.name)
                    .ok_or_else(|| internal(format!("no residual `{}`", r.name)))?
                    .node;
                Some(Source::Hoisted(node))
            }
            ResKind::NextCarry(_) => None,
        });
    }
    let live = fbody.live_nodes();
    let (fbody, _) = fbody.retain(&live)?;
    // Under the binomial schedule the forward loop stays as it was: the
    // backward recomputes the states.
    let forward = match slots {
        Some(_) => scan.clone(),
        None => Scan {
            body: fbody,
            ..scan.clone()
        },
    };

    // The backward loop's body.
    let mut w = Graph::new(format!("{}.vjp", body.name));
    let mut wmap: Vec<Option<NodeId>> = vec![None; bwd.len()];
    let mut sources: Vec<Source> = Vec::new();
    let bwd_input = |name: &str| bwd.input(name).map(|i| i.node);
    // Consts: those the backward half reads, then hoisted residuals.
    for (i, input) in ins[..nc].iter().enumerate() {
        if let Some(node) = bwd_input(&input.name) {
            wmap[node.index()] = Some(w.add_input(&input.name, input.ty.clone(), true)?);
            sources.push(Source::Operand(i));
        }
    }
    for ((r, kind), src) in part.residuals.iter().zip(&kinds).zip(&residual_source) {
        if let (ResKind::Hoisted, Some(src)) = (kind, src) {
            let node = bwd_input(&r.name).ok_or_else(|| internal(format!("no residual input `{}`", r.name)))?;
            wmap[node.index()] = Some(w.add_input(&r.name, r.ty.clone(), true)?);
            sources.push(src.clone());
        }
    }
    let n_consts_w = sources.len();
    // Carry: h̄ per float carry, the next carry where it is a residual,
    // and an accumulator per wanted const (unless split).
    let mut carry_adjoint = Vec::new();
    for &k in &float_carry {
        let name = seed_of[k]
            .clone()
            .ok_or_else(|| internal("a carry has no seed".into()))?;
        let id = w.add_input(&name, ins[nc + k].ty.clone(), true)?;
        if let Some(node) = bwd_input(&name) {
            wmap[node.index()] = Some(id);
        }
        sources.push(Source::Cotangent(k));
        carry_adjoint.push(Some(nc + k));
    }
    let mut next_carry_in: Vec<(usize, NodeId)> = Vec::new();
    for (r, kind) in part.residuals.iter().zip(&kinds) {
        if let &ResKind::NextCarry(k) = kind {
            let node = bwd_input(&r.name).ok_or_else(|| internal(format!("no residual input `{}`", r.name)))?;
            let id = w.add_input(&unique(&w, &format!("next{k}")), r.ty.clone(), true)?;
            wmap[node.index()] = Some(id);
            next_carry_in.push((k, id));
            sources.push(Source::Result(k));
            carry_adjoint.push(None);
        }
    }
    // Which const gradients split: one matmul of step values.
    let grad_node = |name: &str| -> Result<NodeId, PassError> {
        bwd.output(&format!("grad_{name}"))
            .map(|o| o.node)
            .ok_or_else(|| internal(format!("the body's derivative has no gradient for `{name}`")))
    };
    // (Not under the binomial schedule: its point is memory independent
    // of T, and the stacked factors are O(T).)
    let mut split_c: Vec<usize> = Vec::new();
    for &i in want_c.iter().filter(|_| slots.is_none()) {
        let g = grad_node(&ins[i].name)?;
        if let (Op::MatMul, 2) = (bwd.op(g), bwd.ty(g).rank()) {
            split_c.push(i);
        }
    }
    let accumulated: Vec<usize> = want_c.iter().copied().filter(|i| !split_c.contains(i)).collect();
    let mut acc_in = Vec::new();
    for &i in &accumulated {
        let id = w.add_input(&unique(&w, &format!("acc_{}", ins[i].name)), ins[i].ty.clone(), true)?;
        acc_in.push(id);
        sources.push(Source::Zeros(ins[i].ty.clone()));
        carry_adjoint.push(Some(i));
    }
    let n_carry_w = sources.len() - n_consts_w;
    // Stacked inputs: the trajectory, the xs read, stacked residuals, ȳ.
    let mut traj_in: Vec<Option<NodeId>> = vec![None; nk];
    for k in 0..nk {
        // (Recomputed states are all the forward's carries, in order.)
        let needed =
            slots.is_some() || bwd_input(&ins[nc + k].name).is_some() || next_carry_in.iter().any(|&(kk, _)| kk == k);
        if needed {
            let id = w.add_input(&ins[nc + k].name, ins[nc + k].ty.clone(), true)?;
            if let Some(node) = bwd_input(&ins[nc + k].name) {
                wmap[node.index()] = Some(id);
            }
            traj_in[k] = Some(id);
            sources.push(match slots {
                Some(_) => Source::Regen,
                None => Source::Result(traj_result[k]),
            });
        }
    }
    for j in 0..nx {
        let input = &ins[nc + nk + j];
        if let Some(node) = bwd_input(&input.name) {
            wmap[node.index()] = Some(w.add_input(&input.name, input.ty.clone(), true)?);
            sources.push(Source::Operand(nc + nk + j));
        }
    }
    for ((r, kind), src) in part.residuals.iter().zip(&kinds).zip(&residual_source) {
        if let (ResKind::Stacked, Some(src)) = (kind, src) {
            let node = bwd_input(&r.name).ok_or_else(|| internal(format!("no residual input `{}`", r.name)))?;
            wmap[node.index()] = Some(w.add_input(&r.name, r.ty.clone(), true)?);
            sources.push(src.clone());
        }
    }
    for &j in &float_y {
        let name = seed_of[nk + j]
            .clone()
            .ok_or_else(|| internal("a y has no seed".into()))?;
        if let Some(node) = bwd_input(&name) {
            wmap[node.index()] = Some(w.add_input(&name, body.ty(outs[nk + j].node).clone(), true)?);
            sources.push(Source::Cotangent(nk + j));
        }
    }
    // Seeds the backward half does not read (a carry whose adjoint nothing
    // needs) still have their carry inputs above; inputs never read are
    // simply unused.
    copy_into(bwd, &mut w, &mut wmap, |_| true)?;

    // Outputs: the next carry (h̄, the carried residuals, accumulators),
    // then the stacked results.
    for &k in &float_carry {
        let g = mapped(&wmap, grad_node(&ins[nc + k].name)?)?;
        w.add_output(&format!("hbar{k}"), g)?;
    }
    for &(k, _) in &next_carry_in {
        let h = traj_in[k].ok_or_else(|| internal("the trajectory of a carried residual is not read".into()))?;
        w.add_output(&format!("prev{k}"), h)?;
    }
    for (n, &i) in accumulated.iter().enumerate() {
        let g = mapped(&wmap, grad_node(&ins[i].name)?)?;
        // A per-step product is added in `matmul_acc`'s order, the one
        // the split transpose's product after the loop follows: every
        // policy then gives the same bits.
        let sum = match (w.op(g), w.ty(g).rank()) {
            (Op::MatMul, 2) => {
                let (a, b) = (w.args(g)[0], w.args(g)[1]);
                Emitter { g: &mut w, at: g }.op(Op::MatMulAcc { blocks: 1 }, &[acc_in[n], a, b])?
            }
            _ => Emitter { g: &mut w, at: g }.add(acc_in[n], g)?,
        };
        w.add_output(&format!("cbar{i}"), sum)?;
    }
    let mut stacked = Vec::new();
    for &j in &want_x {
        let g = mapped(&wmap, grad_node(&ins[nc + nk + j].name)?)?;
        w.add_output(&format!("xbar{j}"), g)?;
        stacked.push(Stacked::XsAdjoint(nc + nk + j));
    }
    let mut splits = Vec::new();
    for &i in &split_c {
        let g = grad_node(&ins[i].name)?;
        let (a, b) = (bwd.args(g)[0], bwd.args(g)[1]);
        w.add_output(&format!("splitA{i}"), mapped(&wmap, a)?)?;
        stacked.push(Stacked::SplitA(i));
        // B_t as a view of a stacked input, when it is one.
        let mut ops = Vec::new();
        let mut v = b;
        while let Op::Reshape { .. } | Op::Transpose { .. } = bwd.op(v) {
            ops.push(bwd.op(v).clone());
            v = bwd.args(v)[0];
        }
        ops.reverse();
        // (A recomputed state is not stored: stack B then.)
        let stacked_source =
            w_source_of_stacked(&w, &wmap, v, &sources, n_consts_w + n_carry_w).filter(|s| !matches!(s, Source::Regen));
        let b_view = match stacked_source {
            Some(src) => Some((src, ops)),
            None => {
                w.add_output(&format!("splitB{i}"), mapped(&wmap, b)?)?;
                stacked.push(Stacked::SplitB(i));
                None
            }
        };
        splits.push(Split { operand: i, b_view });
    }
    let live = w.live_nodes();
    let (w, _) = w.retain(&live)?;
    Ok(LoopPlan {
        forward,
        body: w,
        hoist_from: fwd.clone(),
        n_consts: n_consts_w,
        n_carry: n_carry_w,
        sources,
        carry_adjoint,
        stacked,
        splits,
        slots,
        every: schedule.map_or(0, |(_, k)| k),
    })
}

/// The plan under [`LoopPolicy::Budget`]: the stored bytes of SaveAll and
/// SaveCarries are those of the forward loop's extra stacked results; the
/// binomial schedule stores `c` states.
fn plan_within(scan: &Scan, wants: &[bool], budget: usize) -> Result<LoopPlan, PassError> {
    let stored = |p: &LoopPlan| -> usize {
        p.forward.result_types()[scan.n_results()..]
            .iter()
            .map(|t| t.size_bytes())
            .sum()
    };
    for policy in [LoopPolicy::SaveAll, LoopPolicy::SaveCarries] {
        let p = plan(scan, wants, policy)?;
        if stored(&p) <= budget {
            return Ok(p);
        }
    }
    let state: usize = scan.body.inputs()[scan.n_consts..scan.n_consts + scan.n_carry]
        .iter()
        .map(|i| i.ty.size_bytes().div_ceil(64) * 64)
        .sum();
    plan(scan, wants, LoopPolicy::Binomial((budget / state.max(1)).max(1)))
}

/// If `v` (a node of the backward half) was mapped to a stacked input of
/// the backward body, that input's source.
fn w_source_of_stacked(
    w: &Graph,
    wmap: &[Option<NodeId>],
    v: NodeId,
    sources: &[Source],
    first_stacked: usize,
) -> Option<Source> {
    let node = wmap[v.index()]?;
    let k = w.inputs().iter().position(|i| i.node == node)?;
    if k < first_stacked {
        return None;
    }
    sources.get(k).cloned()
}

/// Emits the backward loop planned by `plan` for the (already extended)
/// forward loop `y`, whose first results have the adjoints `cotangents`
/// (`None`: zero); returns the adjoints of `y`'s operands.
pub fn emit_backward(
    e: &mut Emitter<'_>,
    y: NodeId,
    plan: &LoopPlan,
    cotangents: &[Option<NodeId>],
) -> Result<Vec<Option<NodeId>>, PassError> {
    let Op::Scan(forward) = e.g.op(y).clone() else {
        return Err(PassError::Internal {
            node: e.g.value_name(y),
            message: "the loop rule was applied to a node that is not a loop".into(),
        });
    };
    let internal = |message: String| PassError::Internal {
        node: format!("loop body @{}", forward.body.name),
        message,
    };
    let args = e.g.args(y);
    let n_operands = forward.n_operands();
    // Hoisted residuals: the consts-only part of the forward half, once.
    let fbody = &plan.hoist_from;
    let mut hoist_map: Vec<Option<NodeId>> = vec![None; fbody.len()];
    for (i, input) in fbody.inputs().iter().enumerate().take(forward.n_consts) {
        hoist_map[input.node.index()] = Some(args[i]);
    }
    let mut operands = Vec::with_capacity(plan.sources.len());
    for src in &plan.sources {
        operands.push(match src {
            Source::Operand(i) => args[*i],
            Source::Result(i) => e.get(y, *i)?,
            Source::Hoisted(node) => {
                let roots = fbody.ancestors([*node]);
                copy_into(fbody, e.g, &mut hoist_map, |id| roots[id.index()])?;
                mapped(&hoist_map, *node)?
            }
            Source::Cotangent(i) => match cotangents.get(*i).copied().flatten() {
                Some(ct) => ct,
                None => {
                    let like = e.get(y, *i)?;
                    e.full_like(like, 0.0)?
                }
            },
            Source::Zeros(t) => {
                let c = e.scalar(t.dtype, 0.0);
                e.broadcast(c, &t.shape)?
            }
            Source::Regen => continue,
        });
    }
    // Recomputed states: the forward loop's operands follow.
    let regen = if let (Some(slots), Op::Scan(f)) = (plan.slots, e.g.op(y)) {
        let forward = f.clone();
        operands.extend_from_slice(&args);
        Some(wengert_ir::scan::Regen {
            forward,
            slots,
            every: plan.every,
        })
    } else {
        None
    };
    let back = Scan {
        body: plan.body.clone(),
        length: forward.length,
        reverse: !forward.reverse,
        unroll: forward.unroll,
        n_consts: plan.n_consts,
        n_carry: plan.n_carry,
        regen,
    };
    let node = e.op(Op::Scan(Arc::new(back)), &operands)?;
    let mut adjoints: Vec<Option<NodeId>> = vec![None; n_operands];
    for (k, of) in plan.carry_adjoint.iter().enumerate() {
        if let Some(i) = *of {
            adjoints[i] = Some(e.get(node, k)?);
        }
    }
    let mut split_a: Vec<Option<NodeId>> = vec![None; n_operands];
    let mut split_b: Vec<Option<NodeId>> = vec![None; n_operands];
    for (n, s) in plan.stacked.iter().enumerate() {
        let v = e.get(node, plan.n_carry + n)?;
        match *s {
            Stacked::XsAdjoint(i) => adjoints[i] = Some(v),
            Stacked::SplitA(i) => split_a[i] = Some(v),
            Stacked::SplitB(i) => split_b[i] = Some(v),
        }
    }
    // Σ_t A_t B_t as one product: [m, T·k] · [T·k, n].
    let t = forward.length;
    for s in &plan.splits {
        let a = split_a[s.operand].ok_or_else(|| internal("a split has no A".into()))?;
        let b = match (&s.b_view, split_b[s.operand]) {
            (_, Some(b)) => b,
            (Some((src, ops)), None) => {
                let mut v = match src {
                    Source::Operand(i) => args[*i],
                    Source::Result(i) => e.get(y, *i)?,
                    Source::Hoisted(_) | Source::Cotangent(_) | Source::Zeros(_) | Source::Regen => {
                        return Err(internal("a split's B is not stacked".into()))
                    }
                };
                for op in ops {
                    let lifted = match op {
                        Op::Reshape { shape } => Op::Reshape {
                            shape: std::iter::once(t).chain(shape.iter().copied()).collect(),
                        },
                        Op::Transpose { perm } => Op::Transpose {
                            perm: std::iter::once(0).chain(perm.iter().map(|p| p + 1)).collect(),
                        },
                        other => return Err(internal(format!("cannot lift `{}` over the steps", other.name()))),
                    };
                    v = e.op(lifted, &[v])?;
                }
                v
            }
            (None, None) => return Err(internal("a split has no B".into())),
        };
        let (a_shape, b_shape) = (e.shape(a), e.shape(b));
        let (m, k, n) = (a_shape[1], a_shape[2], b_shape[2]);
        // [T, m, k] → [m, T·k]: for k = 1 (outer products, the common
        // case) a transposed view the GEMM reads in place; else a copy.
        let a2 = if k == 1 {
            let flat = e.reshape(a, &[t, m])?;
            e.op(Op::Transpose { perm: vec![1, 0] }, &[flat])?
        } else {
            let at = e.op(Op::Transpose { perm: vec![1, 0, 2] }, &[a])?;
            e.reshape(at, &[m, t * k])?
        };
        let b2 = e.reshape(b, &[t * k, n])?;
        // Summed as the backward loop meets the steps (last first, unless
        // the forward ran in reverse), which is the order a recomputing
        // schedule accumulates them in (`matmul_acc`).
        let blocks = if forward.reverse || t * k == 0 { 1 } else { t };
        let zero = e.scalar(e.dtype(a2), 0.0);
        let zeros = e.broadcast(zero, &[m, n])?;
        adjoints[s.operand] = Some(e.op(Op::MatMulAcc { blocks }, &[zeros, a2, b2])?);
    }
    Ok(adjoints)
}

/// What one backward loop of a gradient graph keeps and recomputes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopReport {
    /// The backward loop's value name.
    pub node: String,
    pub length: usize,
    /// Bytes of the forward's stacked results the backward loop reads
    /// (trajectory and residuals), 0 when it recomputes the states.
    pub stored_bytes: usize,
    /// Saved states of the schedule that recomputes them (`None`: all
    /// stored).
    pub slots: Option<usize>,
    /// The every-k schedule's k (0: the binomial schedule).
    pub every: usize,
    /// Bytes of one state (the forward's carries).
    pub state_bytes: usize,
    /// Forward steps the binomial schedule advances beyond the forward
    /// loop itself (`r·T − C(c+r, c+1)`); 0 when states are stored.
    pub extra_steps: u64,
}

/// The backward loops of `g` (top level), with their memory and
/// recomputation: what `--explain` prints for loops.
pub fn loop_report(g: &Graph) -> Vec<LoopReport> {
    let mut out = Vec::new();
    for id in g.node_ids() {
        let Op::Scan(scan) = g.op(id) else { continue };
        let reads_forward_results: Vec<NodeId> = g
            .args(id)
            .into_iter()
            .filter(|&a| matches!(g.op(a), Op::Get { .. }) && scan.length > 0)
            .filter(|&a| {
                g.args(a)
                    .first()
                    .is_some_and(|&s| matches!(g.op(s), Op::Scan(f) if f.reverse != scan.reverse))
            })
            .collect();
        let stacked: usize = reads_forward_results
            .iter()
            .filter(|&&a| g.ty(a).shape.first() == Some(&scan.length))
            .map(|&a| g.ty(a).size_bytes())
            .sum();
        let (slots, state_bytes, extra) = match &scan.regen {
            Some(r) => {
                let state: usize = r.forward.body.inputs()[r.forward.n_consts..r.forward.n_consts + r.forward.n_carry]
                    .iter()
                    .map(|i| i.ty.size_bytes())
                    .sum();
                if r.every > 0 {
                    let t = scan.length;
                    (
                        Some(t.div_ceil(r.every) + r.every - 1),
                        state,
                        (t.div_ceil(r.every).saturating_sub(1) * r.every + t - t.div_ceil(r.every)) as u64,
                    )
                } else {
                    (
                        Some(r.slots),
                        state,
                        crate::binomial::revolve_min_extra_steps(scan.length as u64, r.slots as u64),
                    )
                }
            }
            None => (None, 0, 0),
        };
        if stacked == 0 && slots.is_none() {
            continue; // a forward loop, or a loop that is no backward
        }
        out.push(LoopReport {
            node: g.value_name(id),
            length: scan.length,
            stored_bytes: stacked,
            slots,
            every: scan.regen.as_ref().map_or(0, |r| r.every),
            state_bytes,
            extra_steps: extra,
        });
    }
    out
}
