//! `fuse`: groups nodes into kernels that code generation compiles as one
//! loop nest of straight-line code, with no intermediate buffers.
//!
//! Rules (after XLA's loop fusion and TVM's op patterns):
//! - elementwise ops (`Unary`, `Binary`, `Pow`, `Compare`, `Select`,
//!   `Convert`) of one shape fuse; their operands may be any view
//!   (broadcast, transpose, slice, reshape) of values computed elsewhere,
//!   which the kernel reads by index arithmetic;
//! - a reduction may be the root of a group: its elementwise producers are
//!   computed inside the reduction loop, and the group closes;
//! - a matmul takes an elementwise epilogue (bias add, ReLU) applied in one
//!   pass over the GEMM output;
//! - sibling groups of one shape that read a common input merge into one
//!   multi-output kernel;
//! - nothing is ever duplicated, so an expensive producer (exp, log, tanh,
//!   matmul) is computed once however many consumers it has;
//! - a cheap elementwise tail (one instruction per element, such as the
//!   `1 − h²` of a tanh derivative) whose only readers are in one later
//!   kernel moves into that kernel when everything it reads is stored
//!   anyway: computing it there costs nothing, while computing it in the
//!   producer costs a buffer that stays alive until the consumer runs (the
//!   recomputed segments of a checkpointed chain held twice the
//!   activations because of this);
//! - a group holds at most [`MAX_GROUP`] nodes;
//! - one-element (scalar) ops fuse too: their kernel is straight-line
//!   register code with no loop.
//!
//! A node joins a group only if none of its operands from outside the group
//! depends on a member of the group (otherwise the group would have to run
//! both before and after that operand); merges check the same both ways.
//! The output graph is then a topological order of nodes and whole groups
//! (Kahn's algorithm, earliest original position first), so each group's
//! members are contiguous (marked with `Node::kernel`).

use crate::error::PassError;
use wengert_ir::{verify, BinaryOp, Graph, NodeId, Op, UnaryOp};

/// Largest number of nodes in one fused kernel.
pub const MAX_GROUP: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Elementwise,
    Reduction,
    MatMul,
    Other,
}

fn kind(g: &Graph, id: NodeId) -> Kind {
    match g.op(id) {
        Op::Unary(_) | Op::Binary(_) | Op::Pow { .. } | Op::Compare(_) | Op::Select | Op::Convert { .. } => {
            Kind::Elementwise
        }
        Op::ReduceSum { .. } | Op::ReduceMax { .. } if g.ty(g.args(id)[0]).num_elements() > 1 => Kind::Reduction,
        Op::MatMul => Kind::MatMul,
        Op::ReduceSum { .. }
        | Op::ReduceMax { .. }
        | Op::Input { .. }
        | Op::Const { .. }
        | Op::Broadcast { .. }
        | Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Concat { .. }
        | Op::SoftmaxCrossEntropy => Kind::Other,
    }
}

/// Whether an elementwise op costs about one instruction per element, so
/// that computing it in its consumer's loop instead of storing it is free.
fn cheap(op: &Op) -> bool {
    match op {
        Op::Unary(u) => match u {
            UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu => true,
            UnaryOp::Exp | UnaryOp::Log | UnaryOp::Sin | UnaryOp::Cos | UnaryOp::Tanh | UnaryOp::Sqrt => false,
        },
        Op::Binary(b) => match b {
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Max | BinaryOp::Min => true,
            BinaryOp::Div => false,
        },
        Op::Pow { .. } | Op::Compare(_) | Op::Select | Op::Convert { .. } => false,
        Op::Input { .. }
        | Op::Const { .. }
        | Op::Broadcast { .. }
        | Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::ReduceSum { .. }
        | Op::ReduceMax { .. }
        | Op::MatMul
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Concat { .. }
        | Op::SoftmaxCrossEntropy => false,
    }
}

struct Group {
    members: Vec<NodeId>,
    /// The iteration shape.
    shape: Vec<usize>,
    /// Closed by a reduction root.
    closed: bool,
    /// Starts with a matmul.
    matmul: bool,
    alive: bool,
}

impl Group {
    fn first(&self) -> usize {
        self.members[0].index()
    }
}

/// Whether `start` depends (transitively) on a node for which `hit` holds,
/// where every such node has an index of at least `first`. Dependence is
/// between units, not nodes: reaching any member of a fused group reaches
/// all of its operands, because the group runs as one unit. (Checking
/// nodes only let two groups each read the other: `{a+a, (a+a)+(c+a)}`
/// and `{c+a, (c+a)+(a+a)}`.)
fn depends_on(
    g: &Graph,
    group_of: &[Option<usize>],
    groups: &[Group],
    start: NodeId,
    first: usize,
    hit: &dyn Fn(NodeId) -> bool,
) -> bool {
    let mut stack = vec![start];
    let mut seen = std::collections::HashSet::new();
    let mut seen_groups = std::collections::HashSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        if hit(v) {
            return true;
        }
        match group_of[v.index()] {
            // Members are kept sorted, so the last is the latest.
            Some(gj) if groups[gj].members.len() > 1 => {
                let last = groups[gj].members.last().map_or(0, |m| m.index());
                if last >= first && seen_groups.insert(gj) {
                    stack.extend(groups[gj].members.iter().flat_map(|&m| g.args(m)));
                }
            }
            _ => {
                if v.index() >= first {
                    stack.extend(g.args(v));
                }
            }
        }
    }
    false
}

/// Whether `start` depends on a member of group `gi`.
fn depends_on_group(g: &Graph, group_of: &[Option<usize>], groups: &[Group], gi: usize, start: NodeId) -> bool {
    depends_on(g, group_of, groups, start, groups[gi].first(), &|v| {
        group_of[v.index()] == Some(gi)
    })
}

/// Whether `nodes` can be in group `gi`: no operand from outside the group
/// depends on a member of it.
fn can_join(g: &Graph, group_of: &[Option<usize>], groups: &[Group], gi: usize, nodes: &[NodeId]) -> bool {
    nodes
        .iter()
        .flat_map(|&n| g.args(n))
        .all(|a| group_of[a.index()] == Some(gi) || !depends_on_group(g, group_of, groups, gi, a))
}

/// Groups nodes into kernels (see the module documentation).
pub fn fuse(g: &Graph) -> Result<Graph, PassError> {
    let n = g.len();
    let mut group_of: Vec<Option<usize>> = vec![None; n];
    let mut groups: Vec<Group> = Vec::new();
    let mut uses = g.use_counts();
    for o in g.outputs() {
        uses[o.node.index()] += 1;
    }
    for id in g.node_ids() {
        let k = kind(g, id);
        let args = g.args(id);
        match k {
            Kind::Elementwise => {
                let shape = g.ty(id).shape.clone();
                let target = args.iter().filter_map(|a| group_of[a.index()]).find(|&gi| {
                    let gr = &groups[gi];
                    !gr.closed
                        && gr.shape == shape
                        && gr.members.len() < MAX_GROUP
                        && can_join(g, &group_of, &groups, gi, &[id])
                });
                let target = target.or_else(|| {
                    // A matmul operand without a group takes this as epilogue.
                    let m = args.iter().copied().find(|&a| {
                        kind(g, a) == Kind::MatMul && group_of[a.index()].is_none() && g.ty(a).shape == shape
                    })?;
                    // A fresh matmul has no group yet, so nothing depends on it
                    // but through m itself: the other operands must not.
                    let others_ok = args
                        .iter()
                        .all(|&a| a == m || !depends_on(g, &group_of, &groups, a, m.index(), &|v| v == m));
                    others_ok.then(|| {
                        groups.push(Group {
                            members: vec![m],
                            shape: shape.clone(),
                            closed: false,
                            matmul: true,
                            alive: true,
                        });
                        group_of[m.index()] = Some(groups.len() - 1);
                        groups.len() - 1
                    })
                });
                match target {
                    Some(gi) => {
                        groups[gi].members.push(id);
                        group_of[id.index()] = Some(gi);
                        // Pull in operands that are lone elementwise nodes of
                        // the same shape used only here.
                        for &a in &args {
                            let Some(ai) = group_of[a.index()] else { continue };
                            // (Not into a matmul group: the matmul must stay its first member.)
                            let lone = ai != gi
                                && groups[ai].alive
                                && groups[ai].members == [a]
                                && !groups[ai].matmul
                                && !groups[gi].matmul;
                            if lone
                                && uses[a.index()] == 1
                                && groups[gi].members.len() < MAX_GROUP
                                && can_join(g, &group_of, &groups, gi, &[a])
                            {
                                groups[ai].alive = false;
                                groups[ai].members.clear();
                                group_of[a.index()] = Some(gi);
                                groups[gi].members.push(a);
                                groups[gi].members.sort();
                            }
                        }
                    }
                    None => {
                        groups.push(Group {
                            members: vec![id],
                            shape,
                            closed: false,
                            matmul: false,
                            alive: true,
                        });
                        group_of[id.index()] = Some(groups.len() - 1);
                    }
                }
            }
            Kind::Reduction => {
                let x = args[0];
                let shape = g.ty(x).shape.clone();
                if let Some(gi) = group_of[x.index()] {
                    let gr = &groups[gi];
                    if !gr.closed && gr.shape == shape && gr.members.len() < MAX_GROUP {
                        groups[gi].members.push(id);
                        groups[gi].closed = true;
                        group_of[id.index()] = Some(gi);
                    }
                }
            }
            Kind::MatMul | Kind::Other => {}
        }
    }
    // Sibling merge: groups of one shape that read a common outside input,
    // neither starting with a matmul. Candidates come from an index of the
    // groups reading each value, so this is not quadratic in the groups.
    let mut readers: std::collections::HashMap<NodeId, Vec<usize>> = Default::default();
    for (gi, gr) in groups.iter().enumerate() {
        for a in gr.members.iter().flat_map(|&m| g.args(m)) {
            if group_of[a.index()] != Some(gi) {
                let list = readers.entry(a).or_default();
                if list.last() != Some(&gi) {
                    list.push(gi);
                }
            }
        }
    }
    for j in 0..groups.len() {
        if !groups[j].alive || groups[j].matmul {
            continue;
        }
        let inputs_j: Vec<NodeId> = groups[j]
            .members
            .iter()
            .flat_map(|&m| g.args(m))
            .filter(|a| group_of[a.index()] != Some(j))
            .collect();
        // The nearest earlier readers of each input (a value read by every
        // group, such as a shared constant, would otherwise make this
        // quadratic).
        let mut candidates: Vec<usize> = inputs_j
            .iter()
            .flat_map(|a| {
                let list = readers.get(a).map(Vec::as_slice).unwrap_or(&[]);
                let end = list.partition_point(|&i| i < j);
                list[end.saturating_sub(8)..end].iter().copied()
            })
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        for i in candidates {
            if !groups[i].alive || groups[i].matmul || groups[i].shape != groups[j].shape {
                continue;
            }
            if groups[i].members.len() + groups[j].members.len() > MAX_GROUP {
                continue;
            }
            let shares = groups[i]
                .members
                .iter()
                .flat_map(|&m| g.args(m))
                .any(|a| inputs_j.contains(&a));
            let members_i = groups[i].members.clone();
            let members_j = groups[j].members.clone();
            // Neither group may reach the other through outside nodes.
            let independent = shares
                && inputs_j.iter().all(|&a| !depends_on_group(g, &group_of, &groups, i, a))
                && members_i
                    .iter()
                    .flat_map(|&m| g.args(m))
                    .filter(|a| group_of[a.index()] != Some(i))
                    .all(|a| !depends_on_group(g, &group_of, &groups, j, a));
            if independent {
                for &m in &members_j {
                    group_of[m.index()] = Some(i);
                }
                groups[i].members.extend(members_j);
                groups[i].members.sort();
                groups[i].closed |= groups[j].closed;
                groups[j].alive = false;
                break;
            }
        }
    }
    sink_cheap_tails(g, &mut group_of, &mut groups);
    // Units: each group of two or more nodes, and every other node. Order
    // them topologically, earliest original position first.
    let unit_of: Vec<usize> = g
        .node_ids()
        .map(|id| match group_of[id.index()] {
            Some(gi) if groups[gi].members.len() > 1 => groups[gi].first(),
            _ => id.index(),
        })
        .collect();
    let mut unit_members: Vec<Vec<NodeId>> = vec![Vec::new(); n];
    for id in g.node_ids() {
        unit_members[unit_of[id.index()]].push(id);
    }
    // A kernel's leading matmul is emitted first even when a sunk tail
    // has a smaller index (neither depends on the other).
    for members in &mut unit_members {
        if let Some(pos) = members.iter().position(|&m| kind(g, m) == Kind::MatMul) {
            if pos > 0 && group_of[members[pos].index()].is_some_and(|gi| groups[gi].matmul) {
                let m = members.remove(pos);
                members.insert(0, m);
            }
        }
    }
    let mut indegree = vec![0usize; n];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for id in g.node_ids() {
        let u = unit_of[id.index()];
        for a in g.args(id) {
            let ua = unit_of[a.index()];
            if ua != u {
                indegree[u] += 1;
                users[ua].push(u);
            }
        }
    }
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
        .filter(|&u| !unit_members[u].is_empty() && indegree[u] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut out = Graph::new(g.name.clone());
    let mut map: Vec<Option<NodeId>> = vec![None; n];
    for input in g.inputs() {
        map[input.node.index()] = Some(out.add_input(&input.name, input.ty.clone(), input.differentiable)?);
    }
    let mut next_kernel = 0u32;
    while let Some(std::cmp::Reverse(u)) = ready.pop() {
        let members = &unit_members[u];
        let kernel = if members.len() > 1 {
            next_kernel += 1;
            Some(next_kernel - 1)
        } else {
            None
        };
        for &id in members {
            if map[id.index()].is_some() {
                continue;
            }
            let args = g
                .args(id)
                .iter()
                .map(|a| map[a.index()])
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| PassError::Internal {
                    node: g.value_name(id),
                    message: "fusion ordered a node before its operand".into(),
                })?;
            let node = g.node(id);
            let new = out.add_typed(node.op.clone(), &args, node.ty.clone());
            out.annotate(new, kernel, None);
            map[id.index()] = Some(new);
        }
        for &v in &users[u] {
            indegree[v] -= 1;
            if indegree[v] == 0 {
                ready.push(std::cmp::Reverse(v));
            }
        }
    }
    for o in g.outputs() {
        let node = map[o.node.index()].ok_or_else(|| PassError::Internal {
            node: g.value_name(o.node),
            message: "fused kernels depend on each other in a cycle".into(),
        })?;
        out.add_output(&o.name, node)?;
    }
    verify(&out)?;
    Ok(out)
}

/// Moves cheap elementwise tails into the kernel that reads them (see the
/// module documentation). A tail is a member `x` of group `G` whose readers
/// all sit in one other group `H` of the same shape, together with the
/// cheap members of `G` only it reads; it moves when every value it reads
/// from `G` is stored anyway (read outside `G`, a graph output, or `G`'s
/// leading matmul). `G` precedes `H` (H reads x), so `H` may read
/// anything `G` stores, and the tail's other operands were already before
/// `G`: no cycle can form.
fn sink_cheap_tails(g: &Graph, group_of: &mut [Option<usize>], groups: &mut [Group]) {
    let n = g.len();
    let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); n];
    for id in g.node_ids() {
        for a in g.args(id) {
            users[a.index()].push(id);
        }
    }
    let mut is_output = vec![false; n];
    for o in g.outputs() {
        is_output[o.node.index()] = true;
    }
    for gi in 0..groups.len() {
        if !groups[gi].alive || groups[gi].members.len() < 2 {
            continue;
        }
        // Members in reverse order, so a tail's end is met before its body.
        let mut k = groups[gi].members.len();
        while k > 0 {
            k -= 1;
            let Some(&x) = groups[gi].members.get(k) else { continue };
            if !cheap(g.op(x)) || is_output[x.index()] || users[x.index()].is_empty() {
                continue;
            }
            let Some(hi) = group_of[users[x.index()][0].index()] else {
                continue;
            };
            let target_ok = hi != gi
                && groups[hi].alive
                && groups[hi].shape == g.ty(x).shape
                && users[x.index()]
                    .iter()
                    .all(|u| group_of[u.index()] == Some(hi) && kind(g, *u) == Kind::Elementwise);
            if !target_ok {
                continue;
            }
            // The tail: x and the cheap members of G read only by the tail.
            let mut tail = vec![x];
            let mut i = 0;
            while i < tail.len() {
                for a in g.args(tail[i]) {
                    let only_tail = users[a.index()].iter().all(|u| tail.contains(u));
                    if group_of[a.index()] == Some(gi)
                        && !tail.contains(&a)
                        && cheap(g.op(a))
                        && !is_output[a.index()]
                        && only_tail
                    {
                        tail.push(a);
                    }
                }
                i += 1;
            }
            // Everything else the tail reads from G must be stored anyway.
            let stored = |a: NodeId| {
                is_output[a.index()]
                    || kind(g, a) == Kind::MatMul
                    || users[a.index()].iter().any(|u| group_of[u.index()] != Some(gi))
            };
            let reads_ok = tail
                .iter()
                .flat_map(|&t| g.args(t))
                .all(|a| group_of[a.index()] != Some(gi) || tail.contains(&a) || stored(a));
            if !reads_ok || groups[hi].members.len() + tail.len() > MAX_GROUP {
                continue;
            }
            groups[gi].members.retain(|m| !tail.contains(m));
            for &t in &tail {
                group_of[t.index()] = Some(hi);
            }
            groups[hi].members.extend(&tail);
            groups[hi].members.sort();
            k = k.min(groups[gi].members.len());
        }
    }
}

/// The number of fused kernels in a graph.
pub fn kernel_count(g: &Graph) -> usize {
    let mut ks: Vec<u32> = g.node_ids().filter_map(|id| g.node(id).kernel).collect();
    ks.dedup();
    ks.len()
}
