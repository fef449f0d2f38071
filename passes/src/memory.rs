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
//! `reshape`) own no memory: they keep the value they view alive, except
//! a `reshape` of a value that is not contiguous in memory, which is a
//! copy with a buffer of its own.
//!
//! The plan decides all storage, and code generation obeys it (it fails
//! rather than allocate on its own): the buffers of values (`Node::arena`,
//! or an output buffer, [`output_dests`]), and one *workspace* region after
//! them, as large as the largest node's [`workspace_bytes`], which each node
//! uses while it runs (copies of GEMM operands, a loop's pointer arrays,
//! carries and its body's own arena). [`arena_bytes`] is the whole. The
//! rules that decide how code generation holds a value ([`forms`]) live
//! here, beside the plan that depends on them.

use crate::error::PassError;
use wengert_ir::{row_major_strides, verify, DType, Graph, NodeId, Op, OpClass, Scan};

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
    // (An empty value is memory of no bytes, as code generation makes it.)
    let big = g.ty(id).num_elements() != 1;
    let op = g.op(id);
    // Kernel members read only inside their kernel live in registers,
    // except a kernel's leading matmul: GEMM writes its result to memory,
    // which the kernel's loop then reads.
    if g.node(id).kernel.is_some() && !used_outside_kernel && !matches!(op, Op::MatMul | Op::MatMulAcc { .. }) {
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
        | Op::MatMulAcc { .. }
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
    // The buffer each value lives in (views share their operand's; a
    // reshape that copies has its own).
    let forms = forms(g);
    let copies = copies_of(g, &forms);
    let mut owner: Vec<NodeId> = g.node_ids().collect();
    for id in g.node_ids() {
        if is_view(g.op(id)) && !copies[id.index()] {
            owner[id.index()] = owner[g.args(id)[0].index()];
        }
    }
    let (dest, _) = dests_of(g, &copies);
    let used_outside = used_outside_kernel(g);
    let mut last_use = vec![0usize; n];
    for id in g.node_ids() {
        for a in g.args(id) {
            let o = owner[a.index()].index();
            last_use[o] = last_use[o].max(pos[id.index()]);
        }
    }
    for o in g.outputs() {
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
        } else if (needs_buffer(g, id, used_outside[id.index()]) || copies[id.index()]) && dest[id.index()].is_none() {
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
        // `matmul_acc` adds to its accumulator (operand 0) element by
        // element: that one operand may pass its buffer on.
        let candidates = match g.op(id) {
            Op::MatMulAcc { .. } => 1,
            op if is_elementwise(op) => usize::MAX,
            _ => 0,
        };
        if candidates > 0 && g.node(id).kernel.is_none() {
            let args = g.args(id);
            for &a in args.iter().take(candidates) {
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
    // The workspace after the buffers: the plan's whole arena.
    stats.arena_bytes = arena_of(&out, &forms);
    Ok((out, stats))
}

/// How code generation holds a value (its `Loc`), as far as storage
/// depends on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Form {
    /// One element in a register.
    Reg,
    /// One register value broadcast to a shape. (If it crosses into a
    /// later segment of a large graph, it is spilled and becomes memory
    /// with zero strides: the rules below treat it as memory that is not
    /// contiguous.)
    Splat,
    /// Memory with these element strides.
    Mem(Vec<isize>),
}

/// Whether memory of `shape` with `strides` is row-major contiguous (axes
/// of extent 1 may have any stride; an empty view is contiguous, as a
/// spilled empty register value is memory with zero strides).
pub fn is_contiguous(shape: &[usize], strides: &[isize]) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let rm = row_major_strides(shape);
    shape
        .iter()
        .zip(strides.iter().zip(&rm))
        .all(|(&d, (&s, &r))| d == 1 || s == r as isize)
}

/// How code generation holds each value of `g`: one-element values in
/// registers (a reduction's or a product's stay in memory), views as
/// strides over their operand's memory, every other value in row-major
/// memory. Code generation follows the same rules (`codegen::lower`).
pub fn forms(g: &Graph) -> Vec<Form> {
    let mut forms: Vec<Form> = Vec::with_capacity(g.len());
    for id in g.node_ids() {
        let ty = g.ty(id);
        let one = ty.num_elements() == 1;
        let row_major = || Form::Mem(row_major_strides(&ty.shape).iter().map(|&s| s as isize).collect());
        let arg = |k: usize| &forms[g.args(id)[k].index()];
        let form = match g.op(id) {
            Op::Input { .. }
            | Op::Const { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Pow { .. }
            | Op::Compare(_)
            | Op::Select
            | Op::Convert { .. } => {
                if one {
                    Form::Reg
                } else {
                    row_major()
                }
            }
            Op::ReduceSum { .. }
            | Op::ReduceMax { .. }
            | Op::MatMul
            | Op::MatMulAcc { .. }
            | Op::Pad { .. }
            | Op::Concat { .. } => row_major(),
            Op::Scan(_) | Op::Get { .. } => row_major(),
            Op::SoftmaxCrossEntropy => Form::Reg,
            Op::Broadcast { shape } => match arg(0) {
                Form::Reg | Form::Splat if one => Form::Reg,
                Form::Reg | Form::Splat => Form::Splat,
                Form::Mem(strides) => {
                    let from = &g.ty(g.args(id)[0]).shape;
                    let lead = shape.len() - from.len();
                    Form::Mem(
                        (0..shape.len())
                            .map(|a| {
                                if a < lead || (from[a - lead] == 1 && shape[a] != 1) {
                                    0
                                } else {
                                    strides[a - lead]
                                }
                            })
                            .collect(),
                    )
                }
            },
            Op::Transpose { perm } => match arg(0) {
                Form::Reg => Form::Reg,
                Form::Splat => Form::Splat,
                Form::Mem(strides) => Form::Mem(perm.iter().map(|&p| strides[p]).collect()),
            },
            Op::Slice { .. } => match arg(0) {
                Form::Reg => Form::Reg,
                Form::Splat if one => Form::Reg,
                Form::Splat => Form::Splat,
                Form::Mem(strides) => Form::Mem(strides.clone()),
            },
            // Contiguous memory is viewed under the new shape; anything
            // else is copied into the reshape's own buffer
            // ([`reshape_copies`]).
            Op::Reshape { .. } => match arg(0) {
                Form::Reg => Form::Reg,
                Form::Splat | Form::Mem(_) => row_major(),
            },
        };
        forms.push(form);
    }
    forms
}

/// Which `reshape`s copy their operand into a buffer of their own: those
/// of a value not contiguous in memory (a transposed, sliced or broadcast
/// view, or a broadcast register).
pub fn reshape_copies(g: &Graph) -> Vec<bool> {
    copies_of(g, &forms(g))
}

fn copies_of(g: &Graph, forms: &[Form]) -> Vec<bool> {
    g.node_ids()
        .map(|id| {
            let Op::Reshape { .. } = g.op(id) else { return false };
            let a = g.args(id)[0];
            match &forms[a.index()] {
                Form::Reg => false,
                Form::Splat => true,
                Form::Mem(strides) => !is_contiguous(&g.ty(a).shape, strides),
            }
        })
        .collect()
}

/// Whether `id` is a `get` of a loop's result: the loop writes that result
/// straight into the output buffer when the `get` is an output.
pub fn is_loop_result(g: &Graph, id: NodeId) -> bool {
    matches!(g.op(id), Op::Get { .. }) && g.args(id).first().is_some_and(|&s| matches!(g.op(s), Op::Scan(_)))
}

/// The output buffer each node is computed into, if any, and which outputs
/// are so computed (the others are copied into theirs after every node):
/// the first output naming a node that computes fresh memory, or a chain
/// of reshapes of one that view it (a reshape of fresh, contiguous memory
/// is the same bytes: a loop body's `reshape` of a matrix-vector product
/// was computed in the arena and copied to its output every step).
pub fn output_dests(g: &Graph) -> (Vec<Option<usize>>, Vec<bool>) {
    dests_of(g, &reshape_copies(g))
}

fn dests_of(g: &Graph, copies: &[bool]) -> (Vec<Option<usize>>, Vec<bool>) {
    let mut dest: Vec<Option<usize>> = vec![None; g.len()];
    let mut written = vec![false; g.outputs().len()];
    for (j, o) in g.outputs().iter().enumerate() {
        let mut chain = vec![o.node];
        let mut v = o.node;
        while let (Op::Reshape { .. }, Some(&a), false) = (g.op(v), g.args(v).first(), copies[v.index()]) {
            v = a;
            chain.push(v);
        }
        let fresh = needs_buffer(g, v, true) || copies[v.index()] || is_loop_result(g, v);
        if fresh && chain.iter().all(|c| dest[c.index()].is_none()) {
            for c in chain {
                dest[c.index()] = Some(j);
            }
            written[j] = true;
        }
    }
    (dest, written)
}

/// Bytes of a value that code generation copies into the workspace
/// (64-byte aligned, as every workspace piece is).
fn piece(bytes: usize) -> usize {
    bytes.div_ceil(ALIGN) * ALIGN
}

/// The bytes of workspace a node needs while it runs (nothing after): for
/// a matrix product, copies of operands a GEMM cannot read in place (a
/// register, or a broadcast view); for a loop, what [`loop_workspace`]
/// says. Code generation takes its temporaries from this and fails if they
/// would not fit.
pub fn workspace_bytes(g: &Graph, forms: &[Form], id: NodeId) -> usize {
    match g.op(id) {
        // (`matmul_acc` copies its accumulator into its own buffer.)
        Op::MatMul | Op::MatMulAcc { .. } => g
            .args(id)
            .iter()
            .skip(matches!(g.op(id), Op::MatMulAcc { .. }) as usize)
            .map(|&a| {
                let ty = g.ty(a);
                let copied = match &forms[a.index()] {
                    Form::Reg | Form::Splat => true,
                    Form::Mem(strides) => strides.iter().zip(&ty.shape).any(|(&s, &d)| s == 0 && d != 1),
                };
                if copied {
                    piece(ty.size_bytes())
                } else {
                    0
                }
            })
            .sum(),
        Op::Scan(scan) => loop_workspace(g, forms, id, scan),
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
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Concat { .. }
        | Op::SoftmaxCrossEntropy
        | Op::Get { .. } => 0,
    }
}

/// A loop's workspace (`codegen::lower::scan`): its body's pointer array
/// (a word per input and output and one for the body's arena), the body's
/// arena ([`arena_bytes`] of the body), two buffers per carry, and a
/// contiguous copy of each const and stacked input that is not contiguous
/// memory; a loop that recomputes states (`regen`) adds its slots, two
/// work states, the forward body's array, arena and result rows, and the
/// schedule's descriptor.
fn loop_workspace(g: &Graph, forms: &[Form], id: NodeId, scan: &Scan) -> usize {
    let args = g.args(id);
    let copy = |a: NodeId| {
        let contiguous = match &forms[a.index()] {
            Form::Reg | Form::Splat => false,
            Form::Mem(strides) => is_contiguous(&g.ty(a).shape, strides),
        };
        if contiguous {
            0
        } else {
            piece(g.ty(a).size_bytes())
        }
    };
    let array = |s: &Scan| piece((s.body.inputs().len() + s.body.outputs().len() + 1) * 8);
    let carries = |s: &Scan| -> usize {
        s.body.inputs()[s.n_consts..s.n_consts + s.n_carry]
            .iter()
            .map(|i| 2 * piece(i.ty.size_bytes()))
            .sum()
    };
    // Every operand may be copied (consts and stacked inputs; the initial
    // carries are copied into the carry buffers counted above).
    let operands: usize = args
        .iter()
        .enumerate()
        .filter(|&(k, _)| k < scan.n_consts || k >= scan.n_consts + scan.n_carry)
        .map(|(_, &a)| copy(a))
        .sum();
    let own = array(scan) + piece(arena_bytes(&scan.body)) + carries(scan) + operands;
    let Some(regen) = &scan.regen else {
        return own;
    };
    let f = &regen.forward;
    let mut state = 0;
    for i in &f.body.inputs()[f.n_consts..f.n_consts + f.n_carry] {
        state += piece(i.ty.size_bytes());
    }
    let state = state.max(ALIGN);
    let rows: usize = f
        .result_types()
        .iter()
        .skip(f.n_carry)
        .map(|t| piece(t.size_bytes().checked_div(scan.length).unwrap_or(0).max(1)))
        .sum();
    let frows = f.body.inputs().len() - f.n_consts - f.n_carry + f.result_types().len() - f.n_carry;
    let brows = scan.body.inputs().len() + scan.result_types().len();
    let words = 16 + 4 * f.n_carry + 3 * frows + 6 * scan.n_carry + 3 * brows;
    own + (regen.slot_count(scan.length) + 2) * state + array(f) + piece(arena_bytes(&f.body)) + rows + piece(words * 8)
}

/// One past the last byte of the planned buffers (the workspace starts at
/// the next 64-byte boundary).
pub fn buffers_end(g: &Graph) -> usize {
    g.node_ids()
        .filter_map(|id| g.node(id).arena.map(|off| off + placed_bytes(g, id)))
        .max()
        .unwrap_or(0)
}

/// The whole arena of a planned graph: its buffers, then a workspace as
/// large as its largest node's ([`workspace_bytes`]).
pub fn arena_bytes(g: &Graph) -> usize {
    arena_of(g, &forms(g))
}

fn arena_of(g: &Graph, forms: &[Form]) -> usize {
    let workspace = g.node_ids().map(|id| workspace_bytes(g, forms, id)).max().unwrap_or(0);
    match workspace {
        0 => buffers_end(g),
        w => piece(buffers_end(g)) + w,
    }
}

/// Everything code generation needs to obey the plan of `g`, computed
/// once: per node whether a reshape copies, its output buffer, its
/// workspace; which outputs are computed in place; the buffers' end and
/// the whole arena.
pub struct Storage {
    pub copies: Vec<bool>,
    pub dest: Vec<Option<usize>>,
    pub written: Vec<bool>,
    pub workspace: Vec<usize>,
    pub buffers_end: usize,
    pub arena_bytes: usize,
}

/// The [`Storage`] of a planned graph.
pub fn storage(g: &Graph) -> Storage {
    let forms = forms(g);
    let copies = copies_of(g, &forms);
    let (dest, written) = dests_of(g, &copies);
    let workspace: Vec<usize> = g.node_ids().map(|id| workspace_bytes(g, &forms, id)).collect();
    let buffers_end = buffers_end(g);
    let arena_bytes = match workspace.iter().copied().max().unwrap_or(0) {
        0 => buffers_end,
        w => piece(buffers_end) + w,
    };
    Storage {
        copies,
        dest,
        written,
        workspace,
        buffers_end,
        arena_bytes,
    }
}

/// Plans the arena of `g` (see the module documentation).
pub fn memory_plan(g: &Graph) -> Result<Graph, PassError> {
    Ok(memory_plan_with_stats(g)?.0)
}
