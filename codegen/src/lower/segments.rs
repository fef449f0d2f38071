//! What lowering carries between the segments of a large graph (each
//! segment one function), where each value lives, and which outputs are
//! computed in place.

use super::*;

/// Result of lowering one graph.
pub struct Lowered {
    /// The arena the function uses: the planned buffers, the workspace it
    /// used, and the spill area if values crossed segments.
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
/// the arena's spill area. That area, after the memory plan's arena, is
/// the one piece of storage code generation decides itself: how a graph
/// is cut into functions is its own business (like a stack frame's spill
/// slots), so the plan cannot know which register values cross a cut.
pub struct Segments {
    /// The first node of the next segment.
    pub(crate) next: usize,
    /// Per node: where its value is in the current segment.
    pub(crate) locs: Vec<Option<Loc>>,
    /// Per node: where its value is, for a later segment.
    pub(crate) carried: Vec<Option<Carried>>,
    /// The nodes given a location in the current segment.
    pub(crate) touched: Vec<NodeId>,
    /// Where the planned workspace starts (see `wengert_passes::memory`),
    /// the end of the planned buffers, and the most workspace a segment
    /// used so far.
    pub(crate) workspace_base: usize,
    pub(crate) buffers_end: usize,
    pub(crate) workspace_high: usize,
    /// Per node: the workspace the plan gives it.
    pub(crate) workspace: Vec<usize>,
    /// Per node: whether it is a `reshape` that copies (into its planned
    /// buffer).
    pub(crate) copies: Vec<bool>,
    /// Where the spill area starts (after the planned arena) and the
    /// bytes spilled so far.
    pub(crate) spill_base: usize,
    pub(crate) spill_bytes: usize,
    pub(crate) used_outside: Vec<bool>,
    /// Output buffers that nodes are computed into, and which outputs
    /// those cover.
    pub(crate) dest: Vec<Option<usize>>,
    pub(crate) written: Vec<bool>,
    /// The last node reading each node (`usize::MAX` for outputs).
    pub(crate) last_use: Vec<usize>,
    /// The most nodes one segment lowers.
    pub(crate) max_nodes: usize,
    /// When set (a loop body lowered into its loop), the last segment also
    /// gives each one-element output's value as a register here, so that
    /// the loop can carry it to the next step without a store and a
    /// reload on its critical path.
    pub(crate) output_regs: Option<Vec<Option<cranelift_codegen::ir::Value>>>,
    /// Per output, with `output_regs`: the loop takes the register and
    /// needs nothing in memory (a carry that only the next step reads),
    /// so the body does not store it.
    pub(crate) register_only: Vec<bool>,
    /// When set (a loop body lowered into its loop), the pointers of the
    /// body's inputs and outputs as values of the loop's own function:
    /// the body uses them directly rather than through a pointer array
    /// that the loop would store and the body reload every step.
    pub(crate) pointers: Option<Vec<cranelift_codegen::ir::Value>>,
}

/// The most nodes in one segment of a large graph (see [`Segments`]).
pub const SEGMENT_NODES: usize = 1024;

impl Segments {
    /// Lowering state for `g`, cut into segments of about `max_nodes`
    /// nodes (never inside a fused kernel).
    pub fn new(g: &Graph, max_nodes: usize) -> Segments {
        // The plan's arena: its buffers, then the workspace each node
        // uses while it runs; spills go after all of it.
        use wengert_passes::memory;
        let storage = memory::storage(g);
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
            workspace_base: storage.buffers_end.div_ceil(64) * 64,
            buffers_end: storage.buffers_end,
            workspace_high: 0,
            spill_base: storage.arena_bytes.div_ceil(64) * 64,
            spill_bytes: 0,
            workspace: storage.workspace,
            copies: storage.copies,
            used_outside: memory::used_outside_kernel(g),
            dest: storage.dest,
            written: storage.written,
            last_use,
            max_nodes: max_nodes.max(1),
            output_regs: None,
            register_only: Vec::new(),
            pointers: None,
        }
    }
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
