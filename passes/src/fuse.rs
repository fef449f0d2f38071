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
//! - a group holds at most [`MAX_GROUP`] nodes.
//!
//! A group can be emitted where its first member stands only if every
//! operand from outside the group is computed before that member; every
//! join and merge checks this, and the output graph is reordered so that
//! each group's members are contiguous (marked with `Node::kernel`).

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
    let big = g.ty(id).num_elements() > 1;
    match g.op(id) {
        Op::Unary(_) | Op::Binary(_) | Op::Pow { .. } | Op::Compare(_) | Op::Select | Op::Convert { .. } if big => Kind::Elementwise,
        Op::ReduceSum { .. } | Op::ReduceMax { .. } if g.ty(g.args(id)[0]).num_elements() > 1 => Kind::Reduction,
        Op::MatMul => Kind::MatMul,
        Op::Unary(_)
        | Op::Binary(_)
        | Op::Pow { .. }
        | Op::Compare(_)
        | Op::Select
        | Op::Convert { .. }
        | Op::ReduceSum { .. }
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

/// Whether every operand of `nodes` from outside `group` precedes `first`.
fn inputs_precede(g: &Graph, group_of: &[Option<usize>], group: usize, nodes: &[NodeId], first: usize) -> bool {
    nodes
        .iter()
        .flat_map(|&n| g.args(n))
        .all(|a| group_of[a.index()] == Some(group) || a.index() < first)
}

/// Groups nodes into kernels (see the module documentation).
pub fn fuse(g: &Graph) -> Result<Graph, PassError> {
    let n = g.len();
    let mut group_of: Vec<Option<usize>> = vec![None; n];
    let mut groups: Vec<Group> = Vec::new();
    for id in g.node_ids() {
        let k = kind(g, id);
        let args = g.args(id);
        match k {
            Kind::Elementwise => {
                let shape = g.ty(id).shape.clone();
                let target = args.iter().filter_map(|a| group_of[a.index()]).find(|&gi| {
                    let gr = &groups[gi];
                    !gr.closed && gr.shape == shape && gr.members.len() < MAX_GROUP && inputs_precede(g, &group_of, gi, &[id], gr.first())
                });
                let target = target.or_else(|| {
                    // A matmul operand without a group takes this as epilogue.
                    let m = args.iter().copied().find(|&a| kind(g, a) == Kind::MatMul && group_of[a.index()].is_none() && g.ty(a).shape == shape)?;
                    let first = m.index();
                    let others_ok = args.iter().all(|&a| a == m || a.index() < first);
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
    // neither starting with a matmul.
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
        for i in 0..j {
            if !groups[i].alive || groups[i].matmul || groups[i].shape != groups[j].shape {
                continue;
            }
            if groups[i].members.len() + groups[j].members.len() > MAX_GROUP {
                continue;
            }
            let shares = groups[i].members.iter().flat_map(|&m| g.args(m)).any(|a| inputs_j.contains(&a));
            let first = groups[i].first();
            let members_j = groups[j].members.clone();
            if shares && inputs_precede(g, &group_of, j, &members_j, first) {
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
    // Single elementwise nodes stay unmarked: a group of one is just a node.
    // Reorder so that each group is contiguous at its first member.
    let mut out = Graph::new(g.name.clone());
    let mut map: Vec<Option<NodeId>> = vec![None; n];
    for input in g.inputs() {
        map[input.node.index()] = Some(out.add_input(&input.name, input.ty.clone(), input.differentiable)?);
    }
    let mut next_kernel = 0u32;
    let copy = |out: &mut Graph, map: &mut Vec<Option<NodeId>>, id: NodeId, kernel: Option<u32>| -> Result<(), PassError> {
        let args = g
            .args(id)
            .iter()
            .map(|a| map[a.index()])
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| PassError::Internal {
                node: g.value_name(id),
                message: "fusion reordered a node before its operand".into(),
            })?;
        let node = g.node(id);
        let new = out.add_typed(node.op.clone(), &args, node.ty.clone());
        out.annotate(new, kernel, None);
        map[id.index()] = Some(new);
        Ok(())
    };
    for id in g.node_ids() {
        if map[id.index()].is_some() {
            continue;
        }
        match group_of[id.index()] {
            Some(gi) if groups[gi].members.len() > 1 => {
                let k = next_kernel;
                next_kernel += 1;
                for &m in &groups[gi].members {
                    copy(&mut out, &mut map, m, Some(k))?;
                }
            }
            Some(_) | None => copy(&mut out, &mut map, id, None)?,
        }
    }
    for o in g.outputs() {
        out.add_output(&o.name, map[o.node.index()].expect("every node was copied"))?;
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
