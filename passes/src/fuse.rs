//! `fuse`: groups nodes into kernels that code generation compiles as one
//! loop nest of straight-line code, with no intermediate buffers.
//!
//! Rules (after XLA's loop fusion and TVM's op patterns):
//! - elementwise ops (`Unary`, `Binary`, `Pow`, `Compare`, `Select`,
//!   `Convert`) of one shape fuse; their operands may be any view
//!   (broadcast, transpose, slice, reshape) of values computed elsewhere,
//!   which the kernel reads by index arithmetic;
//! - a reduction may be a root of a group: its elementwise producers are
//!   computed inside the reduction loop; later elementwise members and
//!   more reductions may join, but no member may read a reduction of its
//!   own group (it is complete only after the loop);
//! - a matmul takes an elementwise epilogue (bias add, ReLU) applied in one
//!   pass over the GEMM output;
//! - sibling groups of one shape that read a common input merge into one
//!   multi-output kernel;
//! - an elementwise node that reads the results of several groups of its
//!   shape merges them all (when none reads a reduction of another), so a
//!   value one of them hands another is never stored: Adam's update of a
//!   weight is one pass over it, not one per operand chain;
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
//! A node joins a group, and two groups merge, only if the groups stay
//! acyclic: no operand from outside a group may depend on a member of it
//! (otherwise the group would have to run both before and after that
//! operand). Dependence is between whole groups, and [`crate::units`]
//! keeps a topological order of the groups under merges, which bounds
//! each check's search (sound for any graph, linear in its size).
//! The output graph is then a topological order of nodes and whole groups
//! (Kahn's algorithm, earliest original position first), so each group's
//! members are contiguous (marked with `Node::kernel`).

use crate::error::PassError;
use crate::units::Units;
use wengert_ir::{verify, Graph, NodeId, Op, OpClass};

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
    match g.op(id).class() {
        OpClass::Elementwise => Kind::Elementwise,
        // A reduction of one element is a copy: nothing to fuse.
        OpClass::Reduction if g.ty(g.args(id)[0]).num_elements() > 1 => Kind::Reduction,
        OpClass::Contraction => Kind::MatMul,
        OpClass::Reduction | OpClass::Leaf | OpClass::View | OpClass::Copy | OpClass::Composite | OpClass::Region => {
            Kind::Other
        }
    }
}

/// Whether an elementwise op costs about one instruction per element, so
/// that computing it in its consumer's loop instead of storing it is free
/// (by the op's declared cost).
fn cheap(op: &Op) -> bool {
    op.class() == OpClass::Elementwise && op.cost() == 1
}

/// What a unit that is a fusion group is (units of lone nodes that are not
/// elementwise have none).
#[derive(Clone)]
struct Group {
    /// The iteration shape.
    shape: Vec<usize>,
    /// Starts with a matmul.
    matmul: bool,
}

/// Groups nodes into kernels (see the module documentation).
pub fn fuse(g: &Graph) -> Result<Graph, PassError> {
    // Loop bodies are fused as graphs of their own.
    let with_bodies;
    let g = if g.has_regions() {
        with_bodies = g.map_bodies(fuse)?;
        &with_bodies
    } else {
        g
    };
    let n = g.len();
    let mut units = Units::new(g);
    // The group of each unit, by unit id (a merge keeps the first unit's id).
    let mut group: Vec<Option<Group>> = vec![None; n];
    let mut uses = g.use_counts();
    for o in g.outputs() {
        uses[o.node.index()] += 1;
    }
    let kinds: Vec<Kind> = g.node_ids().map(|id| kind(g, id)).collect();
    // Whether group `u` can take a node of iteration shape `shape` that
    // reads `args`: a member may not read a reduction of its own kernel
    // (the reduction is finished only after the loop that computes the
    // member), but other elementwise members and more reductions may
    // follow one.
    let open = |group: &[Option<Group>], units: &Units, u: usize, shape: &[usize], args: &[NodeId]| {
        group[u]
            .as_ref()
            .is_some_and(|gr| gr.shape == shape && units.members(u).len() < MAX_GROUP)
            && args
                .iter()
                .all(|&a| kinds[a.index()] != Kind::Reduction || units.unit(a) != u)
    };
    for id in g.node_ids() {
        let args = units.args(id).to_vec();
        match kinds[id.index()] {
            Kind::Elementwise => {
                let shape = g.ty(id).shape.clone();
                let me = units.unit(id);
                // The first operand's group that can take this node.
                let mut target = None;
                for &a in &args {
                    let ga = units.unit(a);
                    if open(&group, &units, ga, &shape, &args) && units.try_merge(ga, me) {
                        target = Some(ga);
                        break;
                    }
                }
                if target.is_none() {
                    // A matmul operand without a group takes this node as
                    // its epilogue.
                    let m = args.iter().copied().find(|&a| {
                        kinds[a.index()] == Kind::MatMul && group[units.unit(a)].is_none() && g.ty(a).shape == shape
                    });
                    if let Some(m) = m {
                        let gm = units.unit(m);
                        if units.try_merge(gm, me) {
                            group[gm] = Some(Group {
                                shape: shape.clone(),
                                matmul: true,
                            });
                            target = Some(gm);
                        }
                    }
                }
                let Some(gi) = target else {
                    group[me] = Some(Group { shape, matmul: false });
                    continue;
                };
                // The other operands' groups of this shape join too: a node
                // that reads two kernels' results makes them one loop, so
                // what one hands the other is never stored (Adam's update
                // of a weight was four passes over it, one per operand
                // chain: the scaled gradient, the second moment, the
                // denominator, the first moment and the parameter).
                if !group[gi].as_ref().is_some_and(|gr| gr.matmul) {
                    for &a in &args {
                        let ai = units.unit(a);
                        let joins = ai != gi
                            && group[ai].as_ref().is_some_and(|gr| !gr.matmul && gr.shape == shape)
                            && units.members(ai).len() + units.members(gi).len() <= MAX_GROUP
                            && !reads_reduction_of(&units, &kinds, gi, ai)
                            && !reads_reduction_of(&units, &kinds, ai, gi);
                        if joins && units.try_merge(gi, ai) {
                            group[ai] = None;
                        }
                    }
                }
                // Pull in operands that are lone elementwise nodes of the
                // same shape used only here (not into a matmul group: the
                // matmul must stay its first member).
                for &a in &args {
                    let ai = units.unit(a);
                    let lone = ai != gi
                        && units.members(ai) == [a]
                        && group[ai].as_ref().is_some_and(|gr| !gr.matmul && gr.shape == shape)
                        && !group[gi].as_ref().is_some_and(|gr| gr.matmul)
                        && uses[a.index()] == 1
                        && units.members(gi).len() < MAX_GROUP
                        && units
                            .args(a)
                            .iter()
                            .all(|&b| kinds[b.index()] != Kind::Reduction || units.unit(b) != gi);
                    if lone && units.try_merge(gi, ai) {
                        group[ai] = None;
                    }
                }
            }
            Kind::Reduction => {
                let x = args[0];
                let gx = units.unit(x);
                if open(&group, &units, gx, &g.ty(x).shape, &args) {
                    units.try_merge(gx, units.unit(id));
                }
            }
            Kind::MatMul | Kind::Other => {}
        }
    }
    // Sibling merge: groups of one shape that read a common outside input,
    // neither starting with a matmul. Candidates come from an index of the
    // groups reading each value, so this is not quadratic in the groups.
    let groups: Vec<usize> = (0..n).filter(|&u| group[u].is_some()).collect();
    let mut readers: std::collections::HashMap<NodeId, Vec<usize>> = Default::default();
    for &gi in &groups {
        for &m in units.members(gi) {
            for &a in units.args(m) {
                if units.unit(a) != gi {
                    let list = readers.entry(a).or_default();
                    if list.last() != Some(&gi) {
                        list.push(gi);
                    }
                }
            }
        }
    }
    for &j in &groups {
        let Some(gj) = group[j].clone() else { continue };
        if gj.matmul {
            continue;
        }
        let inputs_j: Vec<NodeId> = units
            .members(j)
            .iter()
            .flat_map(|&m| units.args(m))
            .copied()
            .filter(|&a| units.unit(a) != j)
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
            let Some(gi) = group[i].as_ref() else { continue };
            if gi.matmul || gi.shape != gj.shape {
                continue;
            }
            if units.members(i).len() + units.members(j).len() > MAX_GROUP {
                continue;
            }
            let shares = units
                .members(i)
                .iter()
                .flat_map(|&m| units.args(m))
                .any(|a| inputs_j.contains(a));
            // Siblings, not producer and consumer: neither reads the other
            // (a member reading a reduction root of its own kernel would
            // need the reduction finished inside the loop that computes it).
            let reads = |units: &Units, a: usize, b: usize| {
                units
                    .members(a)
                    .iter()
                    .flat_map(|&m| units.args(m))
                    .any(|&x| units.unit(x) == b)
            };
            if shares && !reads(&units, i, j) && !reads(&units, j, i) && units.try_merge(i, j) {
                group[j] = None;
                break;
            }
        }
    }
    sink_cheap_tails(g, &mut units, &group, &kinds);
    debug_assert!(units.is_topological(), "fusion groups must stay acyclic");
    // Units: each group of two or more nodes, and every other node. Order
    // them topologically, earliest original position first (the units are
    // acyclic by construction; Kahn's order keeps the output close to the
    // input's order, which the memory plan's liveness follows).
    let unit_of: Vec<usize> = g
        .node_ids()
        .map(|id| {
            let members = units.members(units.unit(id));
            if members.len() > 1 {
                members[0].index()
            } else {
                id.index()
            }
        })
        .collect();
    let mut unit_members: Vec<Vec<NodeId>> = vec![Vec::new(); n];
    for id in g.node_ids() {
        unit_members[unit_of[id.index()]].push(id);
    }
    // A kernel's leading matmul is emitted first even when a sunk tail
    // has a smaller index (neither depends on the other).
    for members in &mut unit_members {
        if let Some(pos) = members.iter().position(|&m| kinds[m.index()] == Kind::MatMul) {
            if pos > 0 && group[units.unit(members[pos])].as_ref().is_some_and(|gr| gr.matmul) {
                let m = members.remove(pos);
                members.insert(0, m);
            }
        }
    }
    let mut indegree = vec![0usize; n];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for id in g.node_ids() {
        let u = unit_of[id.index()];
        for a in units.args(id) {
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
            let args = units
                .args(id)
                .iter()
                .map(|a| map[a.index()])
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| PassError::Internal {
                    node: g.value_name(id),
                    message: "fusion ordered a node before its operand".into(),
                })?;
            let new = out.copy_node(g, id, &args)?;
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

/// Whether a member of unit `a` reads a reduction computed in unit `b`
/// (then the two cannot be one loop: the reduction is complete only after
/// it).
fn reads_reduction_of(units: &Units, kinds: &[Kind], a: usize, b: usize) -> bool {
    units
        .members(a)
        .iter()
        .flat_map(|&m| units.args(m))
        .any(|&x| kinds[x.index()] == Kind::Reduction && units.unit(x) == b)
}

/// Moves cheap elementwise tails into the kernel that reads them (see the
/// module documentation). A tail is a member `x` of group `G` whose readers
/// all sit in one other group `H` of the same shape, together with the
/// cheap members of `G` only it reads; it moves when every value it reads
/// from `G` is stored anyway (read outside `G`, a graph output, or `G`'s
/// leading matmul). `G` precedes `H` (H reads x), so `H` may read
/// anything `G` stores, and the tail's other operands were already before
/// `G`: no cycle can form, and the units' order stays topological.
fn sink_cheap_tails(g: &Graph, units: &mut Units, group: &[Option<Group>], kinds: &[Kind]) {
    let n = g.len();
    let mut is_output = vec![false; n];
    for o in g.outputs() {
        is_output[o.node.index()] = true;
    }
    for gi in 0..n {
        if group[gi].is_none() || units.members(gi).len() < 2 {
            continue;
        }
        // Members in reverse order, so a tail's end is met before its body.
        let mut k = units.members(gi).len();
        while k > 0 {
            k -= 1;
            let Some(&x) = units.members(gi).get(k) else { continue };
            let Some(&first_user) = units.users(x).first() else {
                continue;
            };
            if !cheap(g.op(x)) || is_output[x.index()] {
                continue;
            }
            let hi = units.unit(first_user);
            let target_ok = hi != gi
                && group[hi].as_ref().is_some_and(|h| h.shape == g.ty(x).shape)
                && units
                    .users(x)
                    .iter()
                    .all(|u| units.unit(*u) == hi && kinds[u.index()] == Kind::Elementwise);
            if !target_ok {
                continue;
            }
            // The tail: x and the cheap members of G read only by the tail.
            let mut tail = vec![x];
            let mut i = 0;
            while i < tail.len() {
                for &a in units.args(tail[i]) {
                    let only_tail = units.users(a).iter().all(|u| tail.contains(u));
                    if units.unit(a) == gi && !tail.contains(&a) && cheap(g.op(a)) && !is_output[a.index()] && only_tail
                    {
                        tail.push(a);
                    }
                }
                i += 1;
            }
            // Everything else the tail reads from G must be stored anyway.
            let stored = |a: NodeId| {
                is_output[a.index()]
                    || kinds[a.index()] == Kind::MatMul
                    || units.users(a).iter().any(|u| units.unit(*u) != gi)
            };
            let reads_ok = tail
                .iter()
                .flat_map(|&t| units.args(t))
                .all(|&a| units.unit(a) != gi || tail.contains(&a) || stored(a));
            if !reads_ok || units.members(hi).len() + tail.len() > MAX_GROUP {
                continue;
            }
            units.move_members(&tail, gi, hi);
            k = k.min(units.members(gi).len());
        }
    }
}

/// The number of fused kernels in a graph.
pub fn kernel_count(g: &Graph) -> usize {
    let mut ks: Vec<u32> = g.node_ids().filter_map(|id| g.node(id).kernel).collect();
    ks.dedup();
    ks.len()
}
