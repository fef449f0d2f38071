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
use wengert_ir::{verify, Graph, NodeId, Op};

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

/// Whether `start` depends (transitively) on a member of group `gi`, whose
/// first member has index `first`. Only nodes at or after `first` can.
fn depends_on_group(g: &Graph, group_of: &[Option<usize>], gi: usize, start: NodeId, first: usize) -> bool {
    let mut stack = vec![start];
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = stack.pop() {
        if v.index() < first || !seen.insert(v) {
            continue;
        }
        if group_of[v.index()] == Some(gi) {
            return true;
        }
        stack.extend(g.args(v));
    }
    false
}

/// Whether `nodes` can be in group `gi`: no operand from outside the group
/// depends on a member of it.
fn can_join(g: &Graph, group_of: &[Option<usize>], gi: usize, nodes: &[NodeId], first: usize) -> bool {
    nodes
        .iter()
        .flat_map(|&n| g.args(n))
        .all(|a| group_of[a.index()] == Some(gi) || !depends_on_group(g, group_of, gi, a, first))
}

/// Whether `start` depends (transitively) on `target`.
fn depends_on_node(g: &Graph, start: NodeId, target: NodeId) -> bool {
    let mut stack = vec![start];
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = stack.pop() {
        if v == target {
            return true;
        }
        if v.index() < target.index() || !seen.insert(v) {
            continue;
        }
        stack.extend(g.args(v));
    }
    false
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
                        && can_join(g, &group_of, gi, &[id], gr.first())
                });
                let target = target.or_else(|| {
                    // A matmul operand without a group takes this as epilogue.
                    let m = args.iter().copied().find(|&a| {
                        kind(g, a) == Kind::MatMul && group_of[a.index()].is_none() && g.ty(a).shape == shape
                    })?;
                    // A fresh matmul has no group yet, so nothing depends on it
                    // but through m itself: the other operands must not.
                    let others_ok = args.iter().all(|&a| a == m || !depends_on_node(g, a, m));
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
                                && can_join(g, &group_of, gi, &[a], groups[gi].first())
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
                && inputs_j
                    .iter()
                    .all(|&a| !depends_on_group(g, &group_of, i, a, groups[i].first()))
                && members_i
                    .iter()
                    .flat_map(|&m| g.args(m))
                    .filter(|a| group_of[a.index()] != Some(i))
                    .all(|a| !depends_on_group(g, &group_of, j, a, groups[j].first()));
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

/// The number of fused kernels in a graph.
pub fn kernel_count(g: &Graph) -> usize {
    let mut ks: Vec<u32> = g.node_ids().filter_map(|id| g.node(id).kernel).collect();
    ks.dedup();
    ks.len()
}
