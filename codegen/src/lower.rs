//! Lowering of one graph to one Cranelift function.
//!
//! The function takes a pointer to `[inputs…, outputs…, arena]` and walks
//! the graph in topological order. Each value lives in one of three places:
//!
//! - a register (`Loc::Reg`): every one-element value, so a scalar graph
//!   (seed cases 1–4) becomes straight-line register code with no loops and
//!   no memory traffic but its inputs and outputs;
//! - a broadcast register (`Loc::Splat`): a one-element value broadcast to
//!   a shape, read with stride 0;
//! - a strided view of memory (`Loc::Mem`): an input, a constant, an arena
//!   slot or an output buffer, with an offset and one stride per axis.
//!
//! `broadcast`, `transpose`, `slice` and (contiguous) `reshape` only change
//! the view, so they cost nothing: elementwise kernels broadcast by index
//! arithmetic, and a transposed matmul operand is passed to GEMM with
//! swapped strides instead of being copied. Values computed into memory
//! that are graph outputs are computed straight into the output buffer.
//! Every `match` over `Op` here is exhaustive.
//!
//! This file is the driver (`lower_graph`, `lower_into`: the walk over the
//! nodes and the one `match` over ops); each concern is a module of its
//! own: `abi` (entry ABIs, where pointers come from), `segments` (state
//! carried between the functions of a large graph, outputs in place),
//! `place` (value placement and memory access), `ops` (op semantics on
//! registers, transcendental functions), `loops` (kernels to loop nests),
//! `gemm`, `fused` (fused kernels), `softmax` (softmax cross-entropy) and
//! `scan` (loops over a body graph).

use crate::error::CodegenError;
use crate::kernel::{Combine, KExpr, Kernel, Src};

/// A kernel bound to the Cranelift values of the function being built.
pub(crate) type BoundKernel = crate::kernel::Bound<Value>;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, AbiParam, Endianness, FuncRef, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::{FunctionBuilder, Variable};
use cranelift_jit::JITModule;
use cranelift_module::{FuncId, Linkage, Module};
use std::collections::HashMap;
use wengert_ir::interp::integer_exponent;
use wengert_ir::{row_major_strides, BinaryOp, CmpOp, DType, Graph, NodeId, Op, Tensor, UnaryOp};
use wengert_runtime::functions::{ArgType, RuntimeFn};
use wengert_runtime::gemm::GemmParams;

mod abi;
mod fused;
mod gemm;
mod loops;
mod math;
mod ops;
mod parallel;
mod place;
mod scan;
mod segments;
mod softmax;

pub use abi::Abi;
use abi::{Ptrs, PRELOAD_POINTERS};
use fused::lower_fused;
use ops::elementwise_expr;
pub use scan::{body_key, inline_body, BodyFn, INLINE_BODY_NODES};
use segments::{loop_result_dest, Carried};
pub use segments::{Base, Lowered, Segments, SEGMENT_NODES};
use softmax::lower_softmax_xent;

/// How many vectors the main loop of a kernel processes per iteration.
/// Cranelift does not unroll loops; unrolling in the emitted CLIF matched
/// LLVM's speed in measurements on this machine (DESIGN.md).
const UNROLL: usize = 4;

/// A strided view of memory.
#[derive(Clone, Debug)]
pub struct View {
    pub ptr: Value,
    pub offset: i64,
    pub shape: Vec<usize>,
    pub strides: Vec<isize>,
    pub dtype: DType,
}

impl View {
    fn is_contiguous(&self) -> bool {
        // The memory plan's rule, which its decisions assume.
        wengert_passes::memory::is_contiguous(&self.shape, &self.strides)
    }
}

/// Where a value lives.
#[derive(Clone, Debug)]
pub enum Loc {
    Reg(Value),
    Splat(Value, Vec<usize>),
    Mem(View),
}

/// Function-level state shared with the module: imports, and data the
/// code points into (constants, GEMM parameter blocks), which the
/// executable keeps alive.
pub struct ModuleState {
    pub imports: HashMap<&'static str, FuncId>,
    /// Out-of-line f32 math helpers defined in this module, by function and
    /// lane type.
    pub math_helpers: HashMap<(&'static str, Type), FuncId>,
    pub consts: Vec<Tensor>,
    pub gemm_params: Vec<Box<GemmParams>>,
    /// Parameter blocks of `matmul_acc` calls (kept alive as GEMM's are).
    pub ordered_params: Vec<Box<wengert_runtime::gemm::ordered::OrderedParams>>,
    /// Compiled loop bodies, by [`body_key`].
    pub bodies: HashMap<usize, BodyFn>,
    /// The kernels emitted, as text (`Kernel::describe`), when dumps are
    /// kept.
    pub kernel_log: Option<String>,
    /// Threads a call may use (`CodegenOptions::threads`).
    pub threads: usize,
    /// Inputs of the function being lowered that share their buffer with
    /// an output (`crate::donate`): their loads are not `readonly`.
    pub donated_inputs: Vec<usize>,
    /// Whether the graph being compiled (its entry or a loop body) runs
    /// anything on more than one thread: such an executable is called on
    /// a worker of the pool (`Executable::with_pool`).
    pub uses_pool: bool,
}

pub struct Lowerer<'m> {
    pub module: &'m mut JITModule,
    pub state: &'m mut ModuleState,
    func_imports: HashMap<&'static str, FuncRef>,
    helper_refs: HashMap<(&'static str, Type), FuncRef>,
    /// f64 sin and cos already computed of a value in a block.
    sincos_cache: HashMap<(cranelift_codegen::ir::Block, Value), (Value, Value)>,
    /// Call the math helpers instead of inlining polynomials (set for
    /// kernels whose inline body would be large: compile time grows with
    /// code size, and such kernels gain little from inlining).
    outline_math: bool,
    /// Where the arena pointer is: the pointer array and the slot's byte
    /// offset in it (`None` for the packed entry, which has no arena).
    arena_slot: Option<(Value, i32)>,
    /// Where every buffer pointer this function made points (an input, an
    /// output, an arena offset, a constant's address), so that a buffer
    /// read long after it was written, or in a later segment, gets a fresh
    /// pointer then (see `lower_graph`'s `materialize`).
    bases: HashMap<Value, Base>,
    /// The workspace of the node being lowered (see
    /// `wengert_passes::memory::workspace_bytes`): where it starts in the
    /// arena, how much of it is taken, how much the plan gives.
    workspace_base: usize,
    workspace_used: usize,
    workspace_limit: usize,
    /// The most workspace any node of this function used.
    workspace_high: usize,
    /// The spill area (see `Segments`): its start and the bytes taken.
    spill_base: usize,
    spill_bytes: usize,
    /// The first node that needed storage the plan did not give it (the
    /// lowering goes on so that it can end cleanly, then fails).
    unplanned: Option<String>,
    /// A large product not yet called, which may run concurrently with
    /// the next one (see `lower/gemm.rs`).
    pending_gemm: Option<gemm::PendingGemm>,
}

fn mem_type(d: DType) -> Type {
    match d {
        DType::F32 => types::F32,
        DType::F64 => types::F64,
        DType::Bool => types::I8,
    }
}

fn vector_type(d: DType) -> Type {
    match d {
        DType::F32 => types::F32X4,
        DType::F64 => types::F64X2,
        DType::Bool => types::I8X16,
    }
}

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

impl<'m> Lowerer<'m> {
    /// Flags for lane-preserving vector bitcasts.
    pub fn vflags(&self) -> MemFlagsData {
        MemFlagsData::new().with_endianness(Endianness::Little)
    }

    /// A reference to runtime function `rf` in the current function,
    /// declared (with the table's signature) on first use.
    pub(crate) fn import(&mut self, fb: &mut FunctionBuilder, rf: RuntimeFn) -> FuncRef {
        let name = rf.name();
        if let Some(&f) = self.func_imports.get(name) {
            return f;
        }
        let id = match self.state.imports.get(name) {
            Some(&id) => id,
            None => {
                let clif = |a: &ArgType| match a {
                    ArgType::I64 => types::I64,
                    ArgType::F32 => types::F32,
                    ArgType::F64 => types::F64,
                };
                let mut sig = self.module.make_signature();
                sig.params.extend(rf.params().iter().map(|a| AbiParam::new(clif(a))));
                sig.returns.extend(rf.returns().iter().map(|a| AbiParam::new(clif(a))));
                // The JIT registers every `RuntimeFn`, so the declaration
                // always resolves.
                let id = self
                    .module
                    .declare_function(name, Linkage::Import, &sig)
                    .expect("import declarations are consistent");
                self.state.imports.insert(name, id);
                id
            }
        };
        let f = self.module.declare_func_in_func(id, fb.func);
        self.func_imports.insert(name, f);
        f
    }
}

/// Lowers the next segment of `g` (all of it, if small) into the function
/// being built by `fb`, whose parameters are those of `abi`.
pub fn lower_graph(
    module: &mut JITModule,
    state: &mut ModuleState,
    fb: &mut FunctionBuilder,
    g: &Graph,
    abi: Abi,
    seg: &mut Segments,
) -> Result<Lowered, CodegenError> {
    let entry = fb.create_block();
    fb.append_block_params_for_function_params(entry);
    fb.switch_to_block(entry);
    let params = fb.block_params(entry).to_vec();
    let lowered = lower_into(module, state, fb, g, abi, &params, seg, false)?;
    fb.ins().return_(&[]);
    Ok(lowered)
}

/// Lowers the next segment of `g` at the builder's current position, its
/// buffers found through `params` (the parameters of `abi`: the pointer
/// array, or the packed scalar arrays), leaving the builder where the
/// graph's code ends (no return): the body of a function, or a loop body
/// inlined into its loop (`in_loop`: its pointer array changes between
/// steps).
#[allow(clippy::too_many_arguments)]
pub(crate) fn lower_into(
    module: &mut JITModule,
    state: &mut ModuleState,
    fb: &mut FunctionBuilder,
    g: &Graph,
    abi: Abi,
    params: &[Value],
    seg: &mut Segments,
    in_loop: bool,
) -> Result<Lowered, CodegenError> {
    let n_in = g.inputs().len();
    let n_out = g.outputs().len();
    // Input and output pointers are loaded (or computed) where they are
    // first needed, and scalar inputs are loaded where they are first
    // read: loading all of them at entry kept one value per input alive
    // across the function, and register allocation is superlinear in
    // such values (10,000 inputs of which two were used took 1 s to
    // compile, 100,000 took minutes).
    let (arena_slot, ptrs) = match abi {
        // A body inlined into its loop: pointers given by the loop (the
        // arena's base is still in the array, stored once before the loop).
        Abi::PointerArray if seg.pointers.is_some() => {
            let given = seg.pointers.take().unwrap_or_default();
            (Some((params[0], ((n_in + n_out) * 8) as i32)), Ptrs::Preloaded(given))
        }
        Abi::PointerArray => {
            let array = params[0];
            // A body inlined into its loop reads an array the loop rewrites
            // every step: its loads must stay where they are (not
            // `readonly`, which lets Cranelift reuse an earlier load, nor
            // `can_move`, which lets it hoist them out of the loop).
            let (flags, movable) = if in_loop {
                (MemFlagsData::trusted(), MemFlagsData::trusted())
            } else {
                (
                    MemFlagsData::trusted().with_readonly(),
                    MemFlagsData::trusted().with_readonly().with_can_move(),
                )
            };
            let ptrs = if n_in + n_out <= PRELOAD_POINTERS {
                // Ordinary loads (not movable), so that they stay at entry.
                Ptrs::Preloaded(
                    (0..n_in + n_out)
                        .map(|slot| fb.ins().load(types::I64, flags, array, (slot * 8) as i32))
                        .collect(),
                )
            } else {
                Ptrs::Array(array, movable)
            };
            (Some((array, ((n_in + n_out) * 8) as i32)), ptrs)
        }
        Abi::PackedScalars => {
            // Every input and output is a scalar of one dtype (checked by
            // the caller): element i sits at i · size_of(dtype).
            let (ins, outs) = (params[0], params[1]);
            let dtype = g.inputs().first().map(|i| i.ty.dtype);
            let size = dtype
                .or_else(|| g.outputs().first().map(|o| g.ty(o.node).dtype))
                .map_or(8, DType::size_bytes);
            (None, Ptrs::Packed { ins, outs, size })
        }
    };
    let mut lw = Lowerer {
        module,
        state,
        func_imports: HashMap::new(),
        helper_refs: HashMap::new(),
        sincos_cache: HashMap::new(),
        outline_math: false,
        arena_slot,
        bases: HashMap::new(),
        workspace_base: seg.workspace_base,
        workspace_used: 0,
        workspace_limit: 0,
        workspace_high: seg.workspace_high,
        spill_base: seg.spill_base,
        spill_bytes: seg.spill_bytes,
        unplanned: None,
        pending_gemm: None,
    };
    let workspace = std::mem::take(&mut seg.workspace);
    let copies = std::mem::take(&mut seg.copies);
    let used_outside = std::mem::take(&mut seg.used_outside);
    let dest = std::mem::take(&mut seg.dest);
    let mut locs = std::mem::take(&mut seg.locs);
    let carried = std::mem::take(&mut seg.carried);
    // Where a value computed into memory goes: its output buffer, its
    // planned arena slot, or a fresh bump slot.
    let place = |lw: &mut Lowerer, fb: &mut FunctionBuilder, id: NodeId| {
        let ty = g.ty(id);
        let ptr = match (dest[id.index()], g.node(id).arena) {
            (Some(j), _) => lw.pointer(fb, &ptrs, n_in, Base::Output(j)),
            (None, Some(off)) => lw.arena_at(fb, off),
            (None, None) => {
                // The plan gave no buffer: an error once the node is done.
                lw.unplanned
                    .get_or_insert_with(|| format!("{} has no planned buffer", g.value_name(id)));
                return lw.alloc(fb, &ty.shape, ty.dtype);
            }
        };
        View {
            ptr,
            offset: 0,
            shape: ty.shape.clone(),
            strides: row_major_strides(&ty.shape).iter().map(|&s| s as isize).collect(),
            dtype: ty.dtype,
        }
    };
    // An input's location is made when it is first read (see above), and
    // so is that of a value an earlier segment computed. A buffer in the
    // arena gets a fresh pointer each time it is read: the forward's
    // activations are read by the backward thousands of instructions
    // later, and keeping each one's pointer in a register that long made
    // register allocation superlinear in the graph's size.
    let materialize = |lw: &mut Lowerer, fb: &mut FunctionBuilder, locs: &mut [Option<Loc>], id: NodeId| {
        if let Some(Loc::Mem(view)) = &mut locs[id.index()] {
            if let Some(&Base::Arena(off)) = lw.bases.get(&view.ptr) {
                view.ptr = lw.arena_at(fb, off);
            }
            return;
        }
        if locs[id.index()].is_some() {
            return;
        }
        if let Some(c) = &carried[id.index()] {
            let ptr = lw.pointer(fb, &ptrs, n_in, c.base);
            locs[id.index()] = Some(Loc::Mem(View {
                ptr,
                offset: c.offset,
                shape: c.shape.clone(),
                strides: c.strides.clone(),
                dtype: c.dtype,
            }));
            return;
        }
        if let Op::Input { index } = g.op(id) {
            let ty = g.ty(id);
            let view = View {
                ptr: lw.pointer(fb, &ptrs, n_in, Base::Input(*index)),
                offset: 0,
                shape: ty.shape.clone(),
                strides: row_major_strides(&ty.shape).iter().map(|&s| s as isize).collect(),
                dtype: ty.dtype,
            };
            locs[id.index()] = Some(if ty.num_elements() == 1 {
                Loc::Reg(lw.load_input(fb, &view))
            } else {
                Loc::Mem(view)
            });
        }
    };
    let start = seg.next;
    let mut at = start;
    let mut lowered_nodes = 0usize;
    while at < g.len() {
        // Cut here (between nodes or whole kernels) when this segment is
        // full; the packed entry is never cut.
        if lowered_nodes >= seg.max_nodes && abi == Abi::PointerArray {
            break;
        }
        let id = NodeId::new(at);
        at += 1;
        lowered_nodes += 1;
        if matches!(g.op(id), Op::Input { .. }) {
            continue;
        }
        // A deferred product is called before any node that emits code,
        // except a view (no code) and another product, which may pair
        // with it.
        let leads_with_product = matches!(g.op(id), Op::MatMul);
        if !leads_with_product && !matches!(g.op(id), Op::Transpose { .. } | Op::Slice { .. }) {
            lw.flush_gemm(fb)?;
        }
        if let Some(k) = g.node(id).kernel {
            // A fused kernel: this node and the following ones with the same mark.
            let mut members = vec![id];
            while at < g.len() && g.node(NodeId::new(at)).kernel == Some(k) {
                members.push(NodeId::new(at));
                at += 1;
                lowered_nodes += 1;
            }
            for &m in &members {
                for a in g.args(m) {
                    seg.touched.push(a);
                }
            }
            seg.touched.extend(&members);
            lw.begin_node(members.iter().map(|m| workspace[m.index()]).sum());
            lower_fused(&mut lw, fb, g, &members, &mut locs, &used_outside, &place, &materialize)?;
            lw.end_node(g, id)?;
            continue;
        }
        lw.begin_node(workspace[id.index()]);
        let args = g.args(id);
        for &a in &args {
            materialize(&mut lw, fb, &mut locs, a);
            seg.touched.push(a);
        }
        seg.touched.push(id);
        let arg_locs: Vec<Loc> = args
            .iter()
            .map(|a| locs[a.index()].clone().expect("operands precede"))
            .collect();
        let ty = g.ty(id).clone();
        let fresh = |lw: &mut Lowerer, fb: &mut FunctionBuilder| place(lw, fb, id);
        let one = ty.num_elements() == 1;
        let loc = match g.op(id) {
            Op::Input { .. } => unreachable!("inputs are materialized where they are read"),
            Op::Const { value } => {
                if one {
                    let v = value.to_f64_vec().first().copied().unwrap_or(0.0);
                    Loc::Reg(lw.scalar_const(fb, ty.dtype, v))
                } else {
                    let t = value.clone();
                    let addr = t.as_ptr() as i64;
                    lw.state.consts.push(t);
                    let ptr = lw.pointer(fb, &ptrs, n_in, Base::Addr(addr));
                    Loc::Mem(View {
                        ptr,
                        offset: 0,
                        shape: ty.shape.clone(),
                        strides: row_major_strides(&ty.shape).iter().map(|&s| s as isize).collect(),
                        dtype: ty.dtype,
                    })
                }
            }
            op @ (Op::Unary(_) | Op::Binary(_) | Op::Pow { .. } | Op::Compare(_) | Op::Select | Op::Convert { .. }) => {
                let kexpr = |xs: &[usize]| elementwise_expr(op, xs).expect("an elementwise op");
                let arg_dtypes: Vec<DType> = args.iter().map(|&a| g.ty(a).dtype).collect();
                if one {
                    let vals: Vec<Value> = arg_locs.iter().map(|l| lw.scalar_of(fb, l)).collect();
                    let xs: Vec<usize> = (0..vals.len()).collect();
                    Loc::Reg(lw.eval(fb, kexpr(&xs), ty.dtype, &arg_dtypes, &vals, mem_type(ty.dtype)))
                } else {
                    let out = fresh(&mut lw, fb);
                    let mut k = BoundKernel::new(&ty.shape);
                    let xs: Vec<usize> = arg_locs
                        .iter()
                        .zip(&arg_dtypes)
                        .map(|(l, &d)| lw.operand(&mut k, l, d))
                        .collect();
                    let e = k.expr(kexpr(&xs), ty.dtype);
                    k.store(out.ptr, 0, out.strides.clone(), ty.dtype, e, Combine::Store);
                    lw.emit_kernel(fb, k)?;
                    Loc::Mem(out)
                }
            }
            Op::Broadcast { shape } => match &arg_locs[0] {
                Loc::Reg(v) | Loc::Splat(v, _) => {
                    if one {
                        Loc::Reg(*v)
                    } else {
                        Loc::Splat(*v, shape.clone())
                    }
                }
                Loc::Mem(view) => {
                    let lead = shape.len() - view.shape.len();
                    let strides = (0..shape.len())
                        .map(|a| {
                            if a < lead || (view.shape[a - lead] == 1 && shape[a] != 1) {
                                0
                            } else {
                                view.strides[a - lead]
                            }
                        })
                        .collect();
                    Loc::Mem(View {
                        shape: shape.clone(),
                        strides,
                        ..view.clone()
                    })
                }
            },
            Op::Transpose { perm } => match &arg_locs[0] {
                Loc::Reg(v) => Loc::Reg(*v),
                Loc::Splat(v, _) => Loc::Splat(*v, ty.shape.clone()),
                Loc::Mem(view) => Loc::Mem(View {
                    shape: perm.iter().map(|&p| view.shape[p]).collect(),
                    strides: perm.iter().map(|&p| view.strides[p]).collect(),
                    ..view.clone()
                }),
            },
            Op::Slice { start, .. } => match &arg_locs[0] {
                Loc::Reg(v) => Loc::Reg(*v),
                Loc::Splat(v, _) => {
                    if one {
                        Loc::Reg(*v)
                    } else {
                        Loc::Splat(*v, ty.shape.clone())
                    }
                }
                Loc::Mem(view) => {
                    let extra: isize = start.iter().zip(&view.strides).map(|(&s, &st)| s as isize * st).sum();
                    let v = View {
                        offset: view.offset + extra as i64,
                        shape: ty.shape.clone(),
                        ..view.clone()
                    };
                    Loc::Mem(v)
                }
            },
            // A copy where the plan says so (`memory::reshape_copies`: a
            // broadcast register or memory that is not contiguous), into the
            // buffer it gave; else a view of contiguous memory, or the
            // register itself.
            Op::Reshape { shape } => {
                let row_major = |v: View| View {
                    shape: shape.clone(),
                    strides: row_major_strides(shape).iter().map(|&s| s as isize).collect(),
                    ..v
                };
                match &arg_locs[0] {
                    Loc::Reg(v) => Loc::Reg(*v),
                    from if copies[id.index()] => {
                        let from_shape = g.ty(args[0]).shape.clone();
                        let dst = place(&mut lw, fb, id);
                        let dst = View {
                            strides: row_major_strides(&from_shape).iter().map(|&s| s as isize).collect(),
                            shape: from_shape,
                            ..dst
                        };
                        lw.copy_into(fb, from, &dst)?;
                        Loc::Mem(row_major(dst))
                    }
                    Loc::Mem(view) if view.is_contiguous() => Loc::Mem(row_major(view.clone())),
                    Loc::Splat(..) | Loc::Mem(_) => {
                        return Err(CodegenError::Unsupported {
                            node: g.value_name(id),
                            message: "internal error: a reshape of strided memory the plan did not copy".into(),
                        });
                    }
                }
            }
            Op::ReduceSum { axes } | Op::ReduceMax { axes } => {
                let is_max = matches!(g.op(id), Op::ReduceMax { .. });
                let out = fresh(&mut lw, fb);
                let in_ty = g.ty(args[0]).clone();
                // Initialize, then accumulate over the input.
                let mut k = BoundKernel::new(&in_ty.shape);
                let x = lw.operand(&mut k, &arg_locs[0], in_ty.dtype);
                lw.reduce_into(fb, &mut k, x, in_ty.rank(), axes, &out, is_max)?;
                lw.emit_kernel(fb, k)?;
                // A one-element result stays in memory and is loaded where it
                // is read (see `materialize`): loaded here, it would sit in
                // a register until its last reader, perhaps the backward's
                // end.
                Loc::Mem(out)
            }
            Op::MatMul => {
                let (a_ty, b_ty) = (g.ty(args[0]).clone(), g.ty(args[1]).clone());
                if !gemm::in_place(&arg_locs[0]) || !gemm::in_place(&arg_locs[1]) {
                    lw.flush_gemm(fb)?;
                }
                let a = lw.materialize(fb, &arg_locs[0], &a_ty.shape, a_ty.dtype, false)?;
                let b = lw.materialize(fb, &arg_locs[1], &b_ty.shape, b_ty.dtype, false)?;
                let out = fresh(&mut lw, fb);
                lw.gemm_deferrable(fb, &a, &b, &out)?;
                // A one-element result stays in memory and is loaded where it
                // is read (see `materialize`): loaded here, it would sit in
                // a register until its last reader, perhaps the backward's
                // end.
                Loc::Mem(out)
            }
            Op::MatMulAcc { blocks } => {
                let (a_ty, b_ty) = (g.ty(args[1]).clone(), g.ty(args[2]).clone());
                let a = lw.materialize(fb, &arg_locs[1], &a_ty.shape, a_ty.dtype, false)?;
                let b = lw.materialize(fb, &arg_locs[2], &b_ty.shape, b_ty.dtype, false)?;
                let out = fresh(&mut lw, fb);
                lw.ordered_product(fb, &arg_locs[0], &a, &b, &out, *blocks)?;
                Loc::Mem(out)
            }
            Op::Pad { low, .. } => {
                let out = fresh(&mut lw, fb);
                lw.fill(fb, &out, 0.0)?;
                let in_shape = g.ty(args[0]).shape.clone();
                let offset: isize = low.iter().zip(&out.strides).map(|(&l, &s)| l as isize * s).sum();
                let interior = View {
                    offset: offset as i64,
                    shape: in_shape,
                    ..out.clone()
                };
                lw.copy_into(fb, &arg_locs[0], &interior)?;
                // A one-element result stays in memory and is loaded where it
                // is read (see `materialize`): loaded here, it would sit in
                // a register until its last reader, perhaps the backward's
                // end.
                Loc::Mem(out)
            }
            Op::Concat { axis } => {
                let out = fresh(&mut lw, fb);
                let mut at = 0usize;
                for (a, l) in args.iter().zip(&arg_locs) {
                    let shape = g.ty(*a).shape.clone();
                    let part = View {
                        offset: (at as isize * out.strides[*axis]) as i64,
                        shape: shape.clone(),
                        ..out.clone()
                    };
                    at += shape[*axis];
                    lw.copy_into(fb, l, &part)?;
                }
                // A one-element result stays in memory and is loaded where it
                // is read (see `materialize`): loaded here, it would sit in
                // a register until its last reader, perhaps the backward's
                // end.
                Loc::Mem(out)
            }
            Op::SoftmaxCrossEntropy => lower_softmax_xent(&mut lw, fb, g, id, &arg_locs)?,
            Op::Scan(scan) => {
                let out = fresh(&mut lw, fb);
                // Results that are outputs go straight to their buffers.
                let direct: Vec<Option<Value>> = (0..scan.n_results())
                    .map(|r| loop_result_dest(g, &dest, id, r).map(|j| lw.pointer(fb, &ptrs, n_in, Base::Output(j))))
                    .collect();
                lw.lower_scan(fb, scan, &arg_locs, &out, &direct, &g.value_name(id))?;
                Loc::Mem(out)
            }
            // A view of one result in its loop's buffer.
            Op::Get { index, ty } => {
                let (Loc::Mem(buffer), Op::Scan(scan)) = (&arg_locs[0], g.op(args[0])) else {
                    return Err(CodegenError::Unsupported {
                        node: g.value_name(id),
                        message: "internal error: `get` of a value that is not a loop's buffer".into(),
                    });
                };
                let strides: Vec<isize> = row_major_strides(&ty.shape).iter().map(|&s| s as isize).collect();
                match loop_result_dest(g, &dest, args[0], *index) {
                    // The loop wrote this result into an output buffer.
                    Some(j) => Loc::Mem(View {
                        ptr: lw.pointer(fb, &ptrs, n_in, Base::Output(j)),
                        offset: 0,
                        shape: ty.shape.clone(),
                        strides,
                        dtype: ty.dtype,
                    }),
                    None => {
                        let at = scan
                            .layout()
                            .and_then(|(offsets, _)| offsets.get(*index).copied())
                            .unwrap_or(0);
                        let bytes = buffer.offset + at as i64;
                        Loc::Mem(View {
                            ptr: buffer.ptr,
                            offset: bytes / ty.dtype.size_bytes() as i64,
                            shape: ty.shape.clone(),
                            strides,
                            dtype: ty.dtype,
                        })
                    }
                }
            }
        };
        locs[id.index()] = Some(loc);
        lw.end_node(g, id)?;
    }
    lw.flush_gemm(fb)?;
    let done = at >= g.len();
    if done {
        // Outputs not computed in place.
        for (j, o) in g.outputs().iter().enumerate() {
            if let Some(slot) = seg.output_regs.as_mut().and_then(|r| r.get_mut(j)) {
                if g.ty(o.node).num_elements() == 1 {
                    materialize(&mut lw, fb, &mut locs, o.node);
                    let loc = locs[o.node.index()].clone().expect("computed");
                    *slot = Some(lw.scalar_of(fb, &loc));
                }
            }
            if seg.written[j] && dest[o.node.index()] == Some(j) || seg.register_only.get(j) == Some(&true) {
                continue;
            }
            let ty = g.ty(o.node).clone();
            materialize(&mut lw, fb, &mut locs, o.node);
            let loc = locs[o.node.index()].clone().expect("computed");
            let ptr = lw.pointer(fb, &ptrs, n_in, Base::Output(j));
            let dst = View {
                ptr,
                offset: 0,
                shape: ty.shape.clone(),
                strides: row_major_strides(&ty.shape).iter().map(|&s| s as isize).collect(),
                dtype: ty.dtype,
            };
            match loc {
                Loc::Reg(v) if ty.num_elements() == 1 => {
                    fb.ins().store(flags(), v, ptr, 0);
                }
                other => lw.copy_into(fb, &other, &dst)?,
            }
        }
    }
    // Hand what later segments read over in memory, and forget this
    // function's values.
    let mut carried = carried;
    let touched = std::mem::take(&mut seg.touched);
    for id in touched {
        let Some(loc) = locs[id.index()].take() else { continue };
        if done || seg.last_use[id.index()] < at || matches!(g.op(id), Op::Input { .. }) {
            continue;
        }
        let ty = g.ty(id);
        let spill = |lw: &mut Lowerer, fb: &mut FunctionBuilder, v: Value| {
            let ptr = lw.spill_slot(fb);
            fb.ins().store(flags(), v, ptr, 0);
            ptr
        };
        let (ptr, offset, strides) = match loc {
            Loc::Mem(view) => (view.ptr, view.offset, view.strides),
            Loc::Reg(v) | Loc::Splat(v, _) => (spill(&mut lw, fb, v), 0, vec![0; ty.rank()]),
        };
        let base = *lw.bases.get(&ptr).ok_or_else(|| CodegenError::Unsupported {
            node: g.value_name(id),
            message: "internal error: a buffer of unknown origin crosses a segment".into(),
        })?;
        carried[id.index()] = Some(Carried {
            base,
            offset,
            shape: ty.shape.clone(),
            strides,
            dtype: ty.dtype,
        });
    }
    seg.next = at;
    seg.workspace_high = lw.workspace_high;
    seg.spill_bytes = lw.spill_bytes;
    seg.workspace = workspace;
    seg.copies = copies;
    seg.used_outside = used_outside;
    seg.dest = dest;
    seg.locs = locs;
    seg.carried = carried;
    Ok(Lowered {
        arena_bytes: lw.arena_end(seg.buffers_end),
        done,
    })
}
