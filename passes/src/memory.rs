//! `memory-plan`: liveness over the schedule, and arena offsets with reuse.
//!
//! The schedule is node order (a fused kernel runs where its first member
//! stands, so all its members are defined there and all its inputs are
//! read there). A value that code generation computes into memory and that
//! is not a graph output gets a byte offset in one arena
//! (`Node::arena`): buffers whose last reader has run are reused first-fit,
//! and an elementwise result takes over the buffer of an operand that dies
//! at that very node (same size, read with the same layout), which makes
//! the update in place. Views (`broadcast`, `transpose`, `slice`,
//! `reshape`) own no memory: they keep the value they view alive.

use crate::error::PassError;
use wengert_ir::{verify, DType, Graph, NodeId, Op, OpClass};

const ALIGN: usize = 64;

/// The arena layout chosen by [`memory_plan`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes of the arena (the high-water mark of the plan).
    pub arena_bytes: usize,
    /// Bytes the same values would take without reuse.
    pub unshared_bytes: usize,
    /// How many results were placed in the buffer of a dying operand.
    pub in_place: usize,
}

fn is_view(op: &Op) -> bool {
    op.class() == OpClass::View
}

fn is_elementwise(op: &Op) -> bool {
    op.class() == OpClass::Elementwise
}

/// Whether code generation computes this node into a memory buffer.
pub fn needs_buffer(g: &Graph, id: NodeId, used_outside_kernel: bool) -> bool {
    let big = g.ty(id).num_elements() > 1;
    let op = g.op(id);
    // Kernel members read only inside their kernel live in registers,
    // except a kernel's leading matmul: GEMM writes its result to memory,
    // which the kernel's loop then reads.
    if g.node(id).kernel.is_some() && !used_outside_kernel && !matches!(op, Op::MatMul) {
        return false;
    }
    match op.class() {
        // A loop's results are written into one buffer (see
        // `wengert_ir::scan`); `get` views it.
        OpClass::Reduction | OpClass::Contraction | OpClass::Copy | OpClass::Region => true,
        // One-element results live in registers.
        OpClass::Elementwise => big,
        // Views index their operand; softmax cross-entropy's scalar is a
        // register (its scratch is placed separately).
        OpClass::Leaf | OpClass::View | OpClass::Composite => false,
    }
}

/// Scratch memory code generation needs while computing `id` (dead once
/// it is computed): softmax cross-entropy keeps each row's max and sum
/// (`rows` elements each, 64-byte aligned) and the loss accumulator. The
/// memory plan places it (as the node's `arena` offset), so the planned
/// arena is the arena the code uses.
pub fn scratch_bytes(g: &Graph, id: NodeId) -> usize {
    match g.op(id) {
        Op::SoftmaxCrossEntropy => {
            let z = g.ty(g.args(id)[0]);
            let kdim = z.shape.last().copied().unwrap_or(1);
            let rows = z.num_elements().checked_div(kdim).unwrap_or(0);
            softmax_xent_scratch(rows, z.dtype).1
        }
        Op::Input { .. }
        | Op::Const { .. }
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Pow { .. }
        | Op::Compare(_)
        | Op::Select
        | Op::Convert { .. }
        | Op::Broadcast { .. }
        | Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::ReduceSum { .. }
        | Op::ReduceMax { .. }
        | Op::MatMul
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Concat { .. }
        | Op::Scan(_)
        | Op::Get { .. } => 0,
    }
}

/// Softmax cross-entropy's scratch for `rows` rows: the offsets of the row
/// maxima, the row sums, the row losses and the loss accumulator, and the
/// total bytes.
pub fn softmax_xent_scratch(rows: usize, dtype: DType) -> ([usize; 4], usize) {
    let e = dtype.size_bytes();
    let row_bytes = (rows * e).div_ceil(ALIGN) * ALIGN;
    ([0, row_bytes, 2 * row_bytes, 3 * row_bytes], 3 * row_bytes + e)
}

/// The bytes placed at a node's `arena` offset: its scratch if it has
/// any, else its value.
pub fn placed_bytes(g: &Graph, id: NodeId) -> usize {
    match scratch_bytes(g, id) {
        0 => g.ty(id).size_bytes(),
        scratch => scratch,
    }
}

/// Which values are read outside their fused kernel (by a node of
/// another kernel or of none), or are outputs.
pub fn used_outside_kernel(g: &Graph) -> Vec<bool> {
    let mut used = vec![false; g.len()];
    for id in g.node_ids() {
        for a in g.args(id) {
            if g.node(a).kernel.is_none() || g.node(a).kernel != g.node(id).kernel {
                used[a.index()] = true;
            }
        }
    }
    for o in g.outputs() {
        used[o.node.index()] = true;
    }
    used
}

/// Plans the arena of `g`; returns the annotated graph and its statistics.
pub fn memory_plan_with_stats(g: &Graph) -> Result<(Graph, MemoryStats), PassError> {
    // A loop body gets a plan of its own: the loop gives it its own
    // region of the arena.
    let with_bodies;
    let g = if g.has_regions() {
        with_bodies = g.map_bodies(memory_plan)?;
        &with_bodies
    } else {
        g
    };
    let n = g.len();
    // Schedule position: a kernel member is at its kernel's first member.
    let mut pos = vec![0usize; n];
    let mut first_of_kernel: std::collections::HashMap<u32, usize> = Default::default();
    for id in g.node_ids() {
        pos[id.index()] = match g.node(id).kernel {
            Some(k) => *first_of_kernel.entry(k).or_insert(id.index()),
            None => id.index(),
        };
    }
    // The buffer each value lives in (views share their operand's).
    let mut owner: Vec<NodeId> = g.node_ids().collect();
    for id in g.node_ids() {
        if is_view(g.op(id)) {
            owner[id.index()] = owner[g.args(id)[0].index()];
        }
    }
    let used_outside = used_outside_kernel(g);
    let mut last_use = vec![0usize; n];
    for id in g.node_ids() {
        for a in g.args(id) {
            let o = owner[a.index()].index();
            last_use[o] = last_use[o].max(pos[id.index()]);
        }
    }
    let mut is_output = vec![false; n];
    for o in g.outputs() {
        is_output[o.node.index()] = true;
        last_use[owner[o.node.index()].index()] = usize::MAX;
    }
    let mut stats = MemoryStats::default();
    let mut offset: Vec<Option<usize>> = vec![None; n];
    // Live buffers by last use (a min-heap), so releasing is not a scan.
    let mut live: std::collections::BinaryHeap<std::cmp::Reverse<(usize, NodeId)>> = Default::default();
    let mut released = vec![false; n];
    let mut free: Vec<(usize, usize)> = Vec::new(); // (offset, size)
    let mut end = 0usize;
    // Bytes of each placed buffer, to free the same amount.
    let mut placed = vec![0usize; n];
    for id in g.node_ids() {
        let p = pos[id.index()];
        let scratch = scratch_bytes(g, id);
        // A node's buffer lives until its last reader; scratch only while
        // the node itself runs.
        let (size, last) = if scratch > 0 {
            (scratch.div_ceil(ALIGN) * ALIGN, p)
        } else if needs_buffer(g, id, used_outside[id.index()]) && !is_output[id.index()] {
            (g.ty(id).size_bytes().div_ceil(ALIGN) * ALIGN, last_use[id.index()])
        } else {
            continue;
        };
        placed[id.index()] = size;
        stats.unshared_bytes += size;
        // Release buffers whose last reader ran before this position.
        while let Some(&std::cmp::Reverse((last, o))) = live.peek() {
            if last >= p {
                break;
            }
            live.pop();
            if !std::mem::replace(&mut released[o.index()], true) {
                if let Some(off) = offset[o.index()] {
                    free.push((off, placed[o.index()]));
                }
            }
        }
        // In place: an operand buffer of the same size that dies here,
        // read with the same layout (a direct operand, not a view).
        let mut chosen = None;
        // Only a node outside any kernel (its reads at this position are its
        // own operands), and only if no other operand views the same buffer.
        if is_elementwise(g.op(id)) && g.node(id).kernel.is_none() {
            let args = g.args(id);
            for &a in &args {
                let same_layout = owner[a.index()] == a && g.ty(a) == g.ty(id);
                let viewed_elsewhere = args.iter().any(|&b| b != a && owner[b.index()] == a);
                if same_layout
                    && !viewed_elsewhere
                    && last_use[a.index()] == p
                    && offset[a.index()].is_some()
                    && !released[a.index()]
                {
                    // The operand's buffer passes to this node; its heap
                    // entry is skipped when it comes up.
                    released[a.index()] = true;
                    chosen = offset[a.index()];
                    stats.in_place += 1;
                    break;
                }
            }
        }
        let off = match chosen {
            Some(off) => off,
            None => match free.iter().position(|&(_, s)| s >= size) {
                Some(i) => {
                    let (off, s) = free.remove(i);
                    if s > size {
                        free.push((off + size, s - size));
                    }
                    off
                }
                None => {
                    end += size;
                    end - size
                }
            },
        };
        offset[id.index()] = Some(off);
        live.push(std::cmp::Reverse((last, id)));
        // The high-water mark counts the bytes really used (the last
        // buffer's size, not its alignment padding).
        stats.arena_bytes = stats.arena_bytes.max(off + placed_bytes(g, id));
    }
    let mut out = g.clone();
    for id in g.node_ids() {
        let kernel = g.node(id).kernel;
        out.annotate(id, kernel, offset[id.index()]);
    }
    verify(&out)?;
    Ok((out, stats))
}

/// Plans the arena of `g` (see the module documentation).
pub fn memory_plan(g: &Graph) -> Result<Graph, PassError> {
    Ok(memory_plan_with_stats(g)?.0)
}
