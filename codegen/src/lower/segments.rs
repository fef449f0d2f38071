//! What lowering carries between the segments of a large graph (each
//! segment one function), where each value lives, and which outputs are
//! computed in place.

use super::*;

/// Result of lowering one graph.
pub struct Lowered {
    pub arena_bytes: usize,
    /// Whether the graph's last node was lowered (else the next segment
    /// starts where this one stopped).
    pub done: bool,
}

/// Where a buffer lives, in terms no function owns: how a segment finds a
/// value that an earlier segment computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    Input(usize),
    Output(usize),
    /// A byte offset in the arena.
    Arena(usize),
    /// A constant's address (owned by the module state).
    Addr(i64),
}

/// A `View` of a `Base`, carried from one segment to the next.
#[derive(Clone, Debug)]
pub(crate) struct Carried {
    pub(crate) base: Base,
    pub(crate) offset: i64,
    pub(crate) shape: Vec<usize>,
    pub(crate) strides: Vec<isize>,
    pub(crate) dtype: DType,
}

/// What lowering carries from one segment of a graph to the next. A graph
/// of more than `max_nodes` nodes is lowered as several functions
/// (segments) that the entry calls in turn: Cranelift's compile time
/// grows faster than linearly with a function's size (its dominator tree
/// of one loop after another is as deep as the function is long, and its
/// register allocators walk the values live into each block), and a huge
/// function's frame can outgrow a thread's stack. Values cross segments
/// in memory: buffers by their base, scalars in registers by a store to
/// the arena.
pub struct Segments {
    /// The first node of the next segment.
    pub(crate) next: usize,
    /// Per node: where its value is in the current segment.
    pub(crate) locs: Vec<Option<Loc>>,
    /// Per node: where its value is, for a later segment.
    pub(crate) carried: Vec<Option<Carried>>,
    /// The nodes given a location in the current segment.
    pub(crate) touched: Vec<NodeId>,
    /// The arena's bump pointer (after the memory plan's region).
    pub(crate) arena_bytes: usize,
    pub(crate) used_outside: Vec<bool>,
    /// Output buffers that nodes are computed into, and which outputs
    /// those cover.
    pub(crate) dest: Vec<Option<usize>>,
    pub(crate) written: Vec<bool>,
    /// The last node reading each node (`usize::MAX` for outputs).
    pub(crate) last_use: Vec<usize>,
    /// The most nodes one segment lowers.
    pub(crate) max_nodes: usize,
}

/// The most nodes in one segment of a large graph (see [`Segments`]).
pub const SEGMENT_NODES: usize = 1024;

impl Segments {
    /// Lowering state for `g`, cut into segments of about `max_nodes`
    /// nodes (never inside a fused kernel).
    pub fn new(g: &Graph, max_nodes: usize) -> Segments {
        // Values placed by the memory plan occupy the start of the arena;
        // temporaries of the lowering itself are bump-allocated after them.
        let planned_end = g
            .node_ids()
            .filter_map(|id| {
                g.node(id)
                    .arena
                    .map(|off| off + wengert_passes::memory::placed_bytes(g, id))
            })
            .max()
            .unwrap_or(0);
        // Outputs computed in place: the first output naming a node that
        // computes fresh memory, or a reshape of one (a reshape of fresh,
        // contiguous memory is the same bytes: a loop body's `reshape` of
        // a matrix-vector product was computed in the arena and copied to
        // its output every step).
        let mut dest: Vec<Option<usize>> = vec![None; g.len()];
        let mut written = vec![false; g.outputs().len()];
        for (j, o) in g.outputs().iter().enumerate() {
            let mut chain = vec![o.node];
            let mut v = o.node;
            while let (Op::Reshape { .. }, Some(&a)) = (g.op(v), g.args(v).first()) {
                v = a;
                chain.push(v);
            }
            let fresh = computes_fresh_memory(g, v) || is_loop_result(g, v);
            if fresh && chain.iter().all(|c| dest[c.index()].is_none()) {
                for c in chain {
                    dest[c.index()] = Some(j);
                }
                written[j] = true;
            }
        }
        let mut last_use = vec![0usize; g.len()];
        for id in g.node_ids() {
            for a in g.args(id) {
                last_use[a.index()] = last_use[a.index()].max(id.index());
            }
        }
        for o in g.outputs() {
            last_use[o.node.index()] = usize::MAX;
        }
        Segments {
            next: 0,
            locs: vec![None; g.len()],
            carried: vec![None; g.len()],
            touched: Vec::new(),
            arena_bytes: planned_end.div_ceil(64) * 64,
            used_outside: wengert_passes::memory::used_outside_kernel(g),
            dest,
            written,
            last_use,
            max_nodes: max_nodes.max(1),
        }
    }
}

/// Whether a node's result is computed into fresh memory (so that, if it is
/// an output, it can be computed straight into the output buffer): the
/// memory plan's own rule, for a value read outside any kernel.
pub(crate) fn computes_fresh_memory(g: &Graph, id: NodeId) -> bool {
    wengert_passes::memory::needs_buffer(g, id, true)
}

/// Whether `id` is a `get` of a loop's result: the loop writes that result
/// straight into the output buffer when the `get` is an output (a stacked
/// gradient of 64 MiB was otherwise written to the arena and copied).
pub(crate) fn is_loop_result(g: &Graph, id: NodeId) -> bool {
    matches!(g.op(id), Op::Get { .. }) && g.args(id).first().is_some_and(|&s| matches!(g.op(s), Op::Scan(_)))
}

/// The output buffer result `index` of loop `scan` is written to, if a
/// `get` of it is computed into one.
pub(crate) fn loop_result_dest(g: &Graph, dest: &[Option<usize>], scan: NodeId, index: usize) -> Option<usize> {
    // (`verify` lets only `get`s read a loop.)
    g.users(scan).into_iter().find_map(|u| {
        let Op::Get { index: i, .. } = g.op(u) else { return None };
        if *i == index {
            dest[u.index()]
        } else {
            None
        }
    })
}
