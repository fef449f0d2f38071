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

use crate::error::CodegenError;
use crate::kernel::{Combine, KExpr, Kernel, Src};
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

mod scan;
pub use scan::{body_key, inline_body, BodyFn, INLINE_BODY_NODES};

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
        let rm = row_major_strides(&self.shape);
        self.shape
            .iter()
            .zip(self.strides.iter().zip(&rm))
            .all(|(&d, (&s, &r))| d == 1 || s == r as isize)
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
    /// Compiled loop bodies, by [`body_key`].
    pub bodies: HashMap<usize, BodyFn>,
}

/// Lowers one graph into the current function.
/// The functions with an inline f32 version (`math.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum F32Math {
    Exp,
    Log,
    Sin,
    Cos,
    Tanh,
}

impl F32Math {
    fn name(self) -> &'static str {
        match self {
            F32Math::Exp => "exp",
            F32Math::Log => "log",
            F32Math::Sin => "sin",
            F32Math::Cos => "cos",
            F32Math::Tanh => "tanh",
        }
    }
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
    arena_bytes: usize,
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

fn float_cc(c: CmpOp) -> FloatCC {
    match c {
        CmpOp::Lt => FloatCC::LessThan,
        CmpOp::Le => FloatCC::LessThanOrEqual,
        CmpOp::Gt => FloatCC::GreaterThan,
        CmpOp::Ge => FloatCC::GreaterThanOrEqual,
        CmpOp::Eq => FloatCC::Equal,
        CmpOp::Ne => FloatCC::NotEqual,
    }
}

fn int_cc(c: CmpOp) -> IntCC {
    match c {
        CmpOp::Lt => IntCC::UnsignedLessThan,
        CmpOp::Le => IntCC::UnsignedLessThanOrEqual,
        CmpOp::Gt => IntCC::UnsignedGreaterThan,
        CmpOp::Ge => IntCC::UnsignedGreaterThanOrEqual,
        CmpOp::Eq => IntCC::Equal,
        CmpOp::Ne => IntCC::NotEqual,
    }
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

    /// A reference to the out-of-line helper computing `u` on lanes of
    /// type `ty`, defining the helper in the module on first use. Its body
    /// is the same instruction sequence the inline path emits.
    /// A transcendental function with an inline f32 version: f32 values
    /// run the inline polynomial (or its out-of-line copy in large
    /// kernels), f64 values call `f64_name` (scalar kernels only).
    fn transcendental(
        &mut self,
        fb: &mut FunctionBuilder,
        m: F32Math,
        f64_fn: RuntimeFn,
        dtype: DType,
        xt: Type,
        x: Value,
    ) -> Value {
        if dtype == DType::F32 {
            return self.inline_or_outline_f32(fb, m, xt, x);
        }
        let f = self.import(fb, f64_fn);
        let call = fb.ins().call(f, &[x]);
        fb.inst_results(call)[0]
    }

    /// An f32 function inline, or through its out-of-line copy in a
    /// kernel too large to inline it (`outline_math`).
    fn inline_or_outline_f32(&mut self, fb: &mut FunctionBuilder, m: F32Math, xt: Type, x: Value) -> Value {
        if self.outline_math {
            let f = self.math_helper(fb, m, xt);
            let call = fb.ins().call(f, &[x]);
            return fb.inst_results(call)[0];
        }
        self.inline_f32(fb, m, xt, x)
    }

    /// An f32 function's inline instruction sequence.
    fn inline_f32(&mut self, fb: &mut FunctionBuilder, m: F32Math, ty: Type, x: Value) -> Value {
        match m {
            F32Math::Exp => self.exp_f32(fb, ty, x),
            F32Math::Log => self.log_f32(fb, ty, x),
            F32Math::Sin => self.sincos_f32(fb, ty, x, false),
            F32Math::Cos => self.sincos_f32(fb, ty, x, true),
            F32Math::Tanh => self.tanh_f32(fb, ty, x),
        }
    }

    /// A scalar through an f64 runtime function: f32 is widened, the result
    /// rounded once (kernels that call out stay scalar).
    fn via_f64(&mut self, fb: &mut FunctionBuilder, rf: RuntimeFn, dtype: DType, x: Value) -> Value {
        let f = self.import(fb, rf);
        let wide = if dtype == DType::F32 {
            fb.ins().fpromote(types::F64, x)
        } else {
            x
        };
        let call = fb.ins().call(f, &[wide]);
        let r = fb.inst_results(call)[0];
        if dtype == DType::F32 {
            fb.ins().fdemote(types::F32, r)
        } else {
            r
        }
    }

    fn math_helper(&mut self, fb: &mut FunctionBuilder, m: F32Math, ty: Type) -> FuncRef {
        let name = m.name();
        if let Some(&f) = self.helper_refs.get(&(name, ty)) {
            return f;
        }
        let id = match self.state.math_helpers.get(&(name, ty)) {
            Some(&id) => id,
            None => {
                let mut sig = self.module.make_signature();
                sig.params.push(AbiParam::new(ty));
                sig.returns.push(AbiParam::new(ty));
                let id = self
                    .module
                    .declare_anonymous_function(&sig)
                    .expect("anonymous declarations do not conflict");
                let mut ctx = self.module.make_context();
                ctx.func.signature = sig;
                let mut fctx = cranelift_frontend::FunctionBuilderContext::new();
                // The helper has its own imports.
                let saved = std::mem::take(&mut self.func_imports);
                {
                    let mut hb = FunctionBuilder::new(&mut ctx.func, &mut fctx);
                    let block = hb.create_block();
                    hb.append_block_params_for_function_params(block);
                    hb.switch_to_block(block);
                    let x = hb.block_params(block)[0];
                    let y = self.inline_f32(&mut hb, m, ty, x);
                    hb.ins().return_(&[y]);
                    hb.seal_all_blocks();
                    hb.finalize(self.module.target_config());
                }
                self.func_imports = saved;
                self.module
                    .define_function(id, &mut ctx)
                    .expect("math helpers are valid functions");
                self.state.math_helpers.insert((name, ty), id);
                id
            }
        };
        let f = self.module.declare_func_in_func(id, fb.func);
        self.helper_refs.insert((name, ty), f);
        f
    }

    /// A pointer `off` bytes into the arena. Each call loads the arena
    /// pointer afresh (an ordinary load, which Cranelift keeps where it is
    /// and does not merge across the stores between kernels): a pure
    /// `arena + off` would be shared by every kernel that uses the same
    /// planned offset, one value alive across all of them, and a
    /// 100,000-node graph then has thousands of such values competing for
    /// registers (register allocation was superlinear in them).
    fn arena_at(&mut self, fb: &mut FunctionBuilder, off: usize) -> Value {
        let base = match self.arena_slot {
            Some((array, slot)) => fb.ins().load(types::I64, MemFlagsData::trusted(), array, slot),
            None => fb.ins().iconst(types::I64, 0),
        };
        let ptr = fb.ins().iadd_imm_s(base, off as i64);
        self.bases.insert(ptr, Base::Arena(off));
        ptr
    }

    /// A fresh pointer to `base` in this function.
    fn pointer(&mut self, fb: &mut FunctionBuilder, ptrs: &Ptrs, n_in: usize, base: Base) -> Value {
        let ptr = match base {
            Base::Input(i) => ptrs.get(fb, i, false, n_in),
            Base::Output(j) => ptrs.get(fb, j, true, n_in),
            Base::Arena(off) => return self.arena_at(fb, off),
            Base::Addr(a) => fb.ins().iconst(types::I64, a),
        };
        self.bases.insert(ptr, base);
        ptr
    }

    /// A fresh contiguous arena slot of the given shape.
    fn alloc(&mut self, fb: &mut FunctionBuilder, shape: &[usize], dtype: DType) -> View {
        let bytes = wengert_ir::num_elements(shape) * dtype.size_bytes();
        let off = self.arena_bytes;
        self.arena_bytes += bytes.div_ceil(64) * 64;
        let ptr = self.arena_at(fb, off);
        View {
            ptr,
            offset: 0,
            shape: shape.to_vec(),
            strides: row_major_strides(shape).iter().map(|&s| s as isize).collect(),
            dtype,
        }
    }

    fn scalar_const(&mut self, fb: &mut FunctionBuilder, dtype: DType, v: f64) -> Value {
        match dtype {
            DType::F32 => fb.ins().f32const(v as f32),
            DType::F64 => fb.ins().f64const(v),
            DType::Bool => fb.ins().iconst(types::I8, (v != 0.0) as i64),
        }
    }

    /// Loads one element of a view at the given element index.
    fn load_at(&mut self, fb: &mut FunctionBuilder, v: &View, index: i64) -> Value {
        self.load_with(fb, v, index, flags())
    }

    /// A scalar input's value. Input buffers are never written while the
    /// function runs and are valid throughout, so the load is `readonly`,
    /// `notrap` and `can_move`, which Cranelift treats as pure: it places
    /// the load at its first use like any pure value. (A side-effecting load
    /// stays where it is while the pure arithmetic on it is placed before
    /// its first side-effecting user: a sum of 10,000 scalar inputs kept
    /// all 10,000 loaded values alive to the final store, and register
    /// allocation took seconds.)
    fn load_input(&mut self, fb: &mut FunctionBuilder, v: &View) -> Value {
        self.load_with(fb, v, 0, flags().with_readonly().with_can_move())
    }

    fn load_with(&mut self, fb: &mut FunctionBuilder, v: &View, index: i64, flags: MemFlagsData) -> Value {
        // An offset beyond ±2 GiB does not fit the load's immediate (a
        // truncated one would read outside the buffer): add it first.
        let bytes = (v.offset + index) * v.dtype.size_bytes() as i64;
        let x = match i32::try_from(bytes) {
            Ok(off) => fb.ins().load(mem_type(v.dtype), flags, v.ptr, off),
            Err(_) => {
                let at = fb.ins().iadd_imm_s(v.ptr, bytes);
                fb.ins().load(mem_type(v.dtype), flags, at, 0)
            }
        };
        if v.dtype == DType::Bool {
            fb.ins().icmp_imm_s(IntCC::NotEqual, x, 0)
        } else {
            x
        }
    }

    /// The scalar value of a one-element location.
    fn scalar_of(&mut self, fb: &mut FunctionBuilder, loc: &Loc) -> Value {
        match loc {
            Loc::Reg(v) | Loc::Splat(v, _) => *v,
            Loc::Mem(view) => {
                let view = view.clone();
                self.load_at(fb, &view, 0)
            }
        }
    }

    /// Adds `loc` (of the kernel's shape) as an operand of `k`.
    fn operand(&mut self, k: &mut Kernel, loc: &Loc, dtype: DType) -> usize {
        let rank = k.shape.len();
        match loc {
            Loc::Reg(v) | Loc::Splat(v, _) => k.operand(Src::Splat(*v), vec![0; rank], dtype),
            Loc::Mem(view) => k.operand(
                Src::Mem {
                    ptr: view.ptr,
                    offset: view.offset,
                },
                view.strides.clone(),
                dtype,
            ),
        }
    }

    /// Copies (or fills) `loc` into `dst`, both of `dst`'s shape.
    fn copy_into(&mut self, fb: &mut FunctionBuilder, loc: &Loc, dst: &View) -> Result<(), CodegenError> {
        let mut k = Kernel::new(&dst.shape);
        let x = self.operand(&mut k, loc, dst.dtype);
        k.store(dst.ptr, dst.offset, dst.strides.clone(), dst.dtype, x, Combine::Store);
        self.emit_kernel(fb, k)
    }

    /// A view of `loc` as memory of the given shape, copying into the arena
    /// when it is not already memory with usable strides.
    fn materialize(
        &mut self,
        fb: &mut FunctionBuilder,
        loc: &Loc,
        shape: &[usize],
        dtype: DType,
        allow_zero_strides: bool,
    ) -> Result<View, CodegenError> {
        if let Loc::Mem(v) = loc {
            if allow_zero_strides || v.strides.iter().zip(&v.shape).all(|(&s, &d)| s != 0 || d == 1) {
                return Ok(v.clone());
            }
        }
        let dst = self.alloc(fb, shape, dtype);
        self.copy_into(fb, loc, &dst)?;
        Ok(dst)
    }

    /// Fills a view with one value.
    fn fill(&mut self, fb: &mut FunctionBuilder, out: &View, value: f64) -> Result<(), CodegenError> {
        let mut fill = Kernel::new(&out.shape);
        let c = fill.expr(KExpr::Const(value), out.dtype);
        fill.store(out.ptr, out.offset, out.strides.clone(), out.dtype, c, Combine::Store);
        self.emit_kernel(fb, fill)
    }

    /// Starts a reduction of expr `x` of kernel `k` (iterating over the
    /// reduction's input, of rank `rank`) into `out`: fills `out` with the
    /// identity now, and adds the accumulating store to `k`.
    #[allow(clippy::too_many_arguments)]
    fn reduce_into(
        &mut self,
        fb: &mut FunctionBuilder,
        k: &mut Kernel,
        x: usize,
        rank: usize,
        axes: &[usize],
        out: &View,
        is_max: bool,
    ) -> Result<(), CodegenError> {
        self.fill(fb, out, if is_max { f64::NEG_INFINITY } else { 0.0 })?;
        let mut kept = 0;
        let strides = (0..rank)
            .map(|a| {
                if axes.contains(&a) {
                    0
                } else {
                    kept += 1;
                    out.strides[kept - 1]
                }
            })
            .collect();
        k.store(
            out.ptr,
            out.offset,
            strides,
            out.dtype,
            x,
            if is_max { Combine::Max } else { Combine::Add },
        );
        Ok(())
    }

    /// `out = a·b` (2-D or batched) by a call to the GEMM kernel with the
    /// views' strides; `out` is contiguous.
    fn gemm(&mut self, fb: &mut FunctionBuilder, a: &View, b: &View, out: &View) -> Result<(), CodegenError> {
        let r = a.shape.len();
        let (m, kk, n) = (a.shape[r - 2], a.shape[r - 1], b.shape[r - 1]);
        let batch = if r == 3 { a.shape[0] } else { 1 };
        let dtype = out.dtype;
        if m * n == 0 {
            return Ok(());
        }
        if kk == 0 {
            return self.fill(fb, out, 0.0);
        }
        let params = Box::new(GemmParams {
            m: m as i64,
            n: n as i64,
            k: kk as i64,
            batch: batch as i64,
            // The stride of an axis of extent 1 is never used to address
            // anything, but GEMM may choose its path by the layout: give
            // such axes their row-major stride, so that the same values
            // take the same path (and give the same bits, signed zeros
            // included) however the operands were placed.
            a_rs: if m == 1 { kk as i64 } else { a.strides[r - 2] as i64 },
            a_cs: if kk == 1 { 1 } else { a.strides[r - 1] as i64 },
            b_rs: if kk == 1 { n as i64 } else { b.strides[r - 2] as i64 },
            b_cs: if n == 1 { 1 } else { b.strides[r - 1] as i64 },
            c_rs: n as i64,
            c_cs: 1,
            a_bs: if r == 3 && batch > 1 {
                a.strides[0] as i64
            } else {
                (m * kk) as i64
            },
            b_bs: if r == 3 && batch > 1 {
                b.strides[0] as i64
            } else {
                (kk * n) as i64
            },
        });
        let paddr = &*params as *const GemmParams as i64;
        self.state.gemm_params.push(params);
        let rf = if dtype == DType::F32 {
            RuntimeFn::GemmF32
        } else {
            RuntimeFn::GemmF64
        };
        let f = self.import(fb, rf);
        let size = dtype.size_bytes() as i64;
        let pv = fb.ins().iconst(types::I64, paddr);
        let ap = fb.ins().iadd_imm_s(a.ptr, a.offset * size);
        let bp = fb.ins().iadd_imm_s(b.ptr, b.offset * size);
        let cp = fb.ins().iadd_imm_s(out.ptr, out.offset * size);
        fb.ins().call(f, &[pv, ap, bp, cp]);
        Ok(())
    }

    /// Evaluates one kernel expr on already-evaluated arguments, for lane
    /// type `ty` (a float scalar, or a vector when vectorizing).
    #[allow(clippy::too_many_arguments)]
    fn eval(
        &mut self,
        fb: &mut FunctionBuilder,
        e: KExpr,
        dtype: DType,
        arg_dtypes: &[DType],
        args: &[Value],
        ty: Type,
    ) -> Value {
        let lanes_ty = |d: DType| if ty.is_vector() { vector_type(d) } else { mem_type(d) };
        match e {
            KExpr::Operand(_) => args[0],
            KExpr::Const(v) => {
                let s = self.scalar_const(fb, dtype, v);
                if ty.is_vector() {
                    fb.ins().splat(lanes_ty(dtype), s)
                } else {
                    s
                }
            }
            KExpr::Unary(u, _) => {
                let x = args[0];
                let xt = lanes_ty(dtype);
                match u {
                    UnaryOp::Neg => fb.ins().fneg(x),
                    UnaryOp::Abs => fb.ins().fabs(x),
                    UnaryOp::Sqrt => fb.ins().sqrt(x),
                    UnaryOp::Relu => {
                        // x where x > 0 or x is NaN, else +0.
                        let zero = self.fconst(fb, xt, 0.0);
                        let keep = fb.ins().fcmp(FloatCC::UnorderedOrGreaterThan, x, zero);
                        self.sel(fb, keep, x, zero)
                    }
                    UnaryOp::Exp => self.transcendental(fb, F32Math::Exp, RuntimeFn::ExpF64, dtype, xt, x),
                    UnaryOp::Log => self.transcendental(fb, F32Math::Log, RuntimeFn::LogF64, dtype, xt, x),
                    UnaryOp::Tanh => self.transcendental(fb, F32Math::Tanh, RuntimeFn::TanhF64, dtype, xt, x),
                    UnaryOp::Sin | UnaryOp::Cos if dtype == DType::F32 => {
                        let m = if u == UnaryOp::Sin { F32Math::Sin } else { F32Math::Cos };
                        self.inline_or_outline_f32(fb, m, xt, x)
                    }
                    UnaryOp::Sin | UnaryOp::Cos => {
                        // One sincos call serves both (as LLVM does for
                        // Rust's f64::sin and f64::cos of one value).
                        let block = fb.current_block().expect("inside a block");
                        let (s, c) = match self.sincos_cache.get(&(block, x)) {
                            Some(&pair) => pair,
                            None => {
                                let slot = fb.create_sized_stack_slot(cranelift_codegen::ir::StackSlotData::new(
                                    cranelift_codegen::ir::StackSlotKind::ExplicitSlot,
                                    16,
                                    3,
                                ));
                                let ps = fb.ins().stack_addr(types::I64, slot, 0);
                                let pc = fb.ins().stack_addr(types::I64, slot, 8);
                                let f = self.import(fb, RuntimeFn::SincosF64);
                                fb.ins().call(f, &[x, ps, pc]);
                                let s = fb.ins().load(types::F64, MemFlagsData::trusted(), ps, 0);
                                let c = fb.ins().load(types::F64, MemFlagsData::trusted(), pc, 0);
                                self.sincos_cache.insert((block, x), (s, c));
                                (s, c)
                            }
                        };
                        if u == UnaryOp::Sin {
                            s
                        } else {
                            c
                        }
                    }
                    // No inline version in either precision: the f64
                    // function, f32 values widened and the result rounded
                    // once (as the interpreter defines them).
                    UnaryOp::Erf => self.via_f64(fb, RuntimeFn::ErfF64, dtype, x),
                    UnaryOp::Expm1 => self.via_f64(fb, RuntimeFn::Expm1F64, dtype, x),
                    UnaryOp::Log1p => self.via_f64(fb, RuntimeFn::Log1pF64, dtype, x),
                }
            }
            KExpr::Binary(b, _, _) => {
                let (a, c) = (args[0], args[1]);
                match b {
                    BinaryOp::Add => fb.ins().fadd(a, c),
                    BinaryOp::Sub => fb.ins().fsub(a, c),
                    BinaryOp::Mul => fb.ins().fmul(a, c),
                    BinaryOp::Div => fb.ins().fdiv(a, c),
                    BinaryOp::Max | BinaryOp::Min => {
                        let cc = if b == BinaryOp::Max {
                            FloatCC::GreaterThanOrEqual
                        } else {
                            FloatCC::LessThanOrEqual
                        };
                        let pick = fb.ins().fcmp(cc, a, c);
                        let m = self.sel(fb, pick, a, c);
                        // NaN in either operand: a + c is NaN.
                        let nan = fb.ins().fcmp(FloatCC::Unordered, a, c);
                        let s = fb.ins().fadd(a, c);
                        self.sel(fb, nan, s, m)
                    }
                }
            }
            KExpr::Pow(p, _) => {
                let x = args[0];
                if let Some(n) = integer_exponent(p) {
                    // Binary powering in the interpreter's exact order.
                    let mut base = x;
                    let mut e = n.unsigned_abs();
                    let mut acc: Option<Value> = None;
                    while e > 0 {
                        if e & 1 == 1 {
                            acc = Some(match acc {
                                None => base,
                                Some(a) => fb.ins().fmul(a, base),
                            });
                        }
                        e >>= 1;
                        if e > 0 {
                            base = fb.ins().fmul(base, base);
                        }
                    }
                    let one = self.fconst(fb, lanes_ty(dtype), 1.0);
                    let r = acc.unwrap_or(one);
                    if n < 0 {
                        fb.ins().fdiv(one, r)
                    } else {
                        r
                    }
                } else if p == 0.5 {
                    fb.ins().sqrt(x)
                } else {
                    let rf = if dtype == DType::F32 {
                        RuntimeFn::PowF32
                    } else {
                        RuntimeFn::PowF64
                    };
                    let f = self.import(fb, rf);
                    let pv = self.scalar_const(fb, dtype, p);
                    let call = fb.ins().call(f, &[x, pv]);
                    fb.inst_results(call)[0]
                }
            }
            KExpr::Cmp(c, _, _) => {
                if arg_dtypes[0] == DType::Bool {
                    fb.ins().icmp(int_cc(c), args[0], args[1])
                } else {
                    fb.ins().fcmp(float_cc(c), args[0], args[1])
                }
            }
            KExpr::Select(..) => self.sel(fb, args[0], args[1], args[2]),
            KExpr::Convert(_) => {
                let (from, x) = (arg_dtypes[0], args[0]);
                match (from, dtype) {
                    (DType::F32, DType::F64) => fb.ins().fpromote(types::F64, x),
                    (DType::F64, DType::F32) => fb.ins().fdemote(types::F32, x),
                    (DType::Bool, DType::F32 | DType::F64) => {
                        let one = self.scalar_const(fb, dtype, 1.0);
                        let zero = self.scalar_const(fb, dtype, 0.0);
                        fb.ins().select(x, one, zero)
                    }
                    (DType::F32 | DType::F64, DType::Bool) => {
                        let zero = self.scalar_const(fb, from, 0.0);
                        fb.ins().fcmp(FloatCC::NotEqual, x, zero)
                    }
                    (DType::F32, DType::F32) | (DType::F64, DType::F64) | (DType::Bool, DType::Bool) => x,
                }
            }
        }
    }

    fn expr_args(e: &KExpr) -> Vec<usize> {
        match *e {
            KExpr::Operand(_) | KExpr::Const(_) => vec![],
            KExpr::Unary(_, a) | KExpr::Pow(_, a) | KExpr::Convert(a) => vec![a],
            KExpr::Binary(_, a, b) | KExpr::Cmp(_, a, b) => vec![a, b],
            KExpr::Select(c, a, b) => vec![c, a, b],
        }
    }

    fn combine(&mut self, fb: &mut FunctionBuilder, c: Combine, acc: Value, v: Value) -> Value {
        match c {
            Combine::Store => v,
            Combine::Add => fb.ins().fadd(acc, v),
            Combine::Max => {
                let ty = fb.func.dfg.value_type(acc);
                let _ = ty;
                let gt = fb.ins().fcmp(FloatCC::GreaterThan, v, acc);
                let m = self.sel(fb, gt, v, acc);
                let nan = fb.ins().fcmp(FloatCC::Unordered, acc, v);
                let s = fb.ins().fadd(acc, v);
                self.sel(fb, nan, s, m)
            }
        }
    }

    /// Emits a counted loop header; returns the counter variable, its value
    /// in the body, and the exit block. The caller emits the body, then
    /// calls `end_loop`.
    fn begin_loop(
        &mut self,
        fb: &mut FunctionBuilder,
        start: i64,
        end: i64,
    ) -> (
        Variable,
        Value,
        cranelift_codegen::ir::Block,
        cranelift_codegen::ir::Block,
    ) {
        let var = fb.declare_var(types::I64);
        let init = fb.ins().iconst(types::I64, start);
        fb.def_var(var, init);
        let header = fb.create_block();
        let body = fb.create_block();
        let exit = fb.create_block();
        fb.ins().jump(header, &[]);
        fb.switch_to_block(header);
        let i = fb.use_var(var);
        let more = fb.ins().icmp_imm_s(IntCC::SignedLessThan, i, end);
        fb.ins().brif(more, body, &[], exit, &[]);
        fb.switch_to_block(body);
        (var, i, header, exit)
    }

    fn end_loop(
        &mut self,
        fb: &mut FunctionBuilder,
        var: Variable,
        i: Value,
        step: i64,
        header: cranelift_codegen::ir::Block,
        exit: cranelift_codegen::ir::Block,
    ) {
        let next = fb.ins().iadd_imm_s(i, step);
        fb.def_var(var, next);
        fb.ins().jump(header, &[]);
        fb.switch_to_block(exit);
    }

    /// Emits a kernel as a loop nest.
    pub fn emit_kernel(&mut self, fb: &mut FunctionBuilder, mut k: Kernel) -> Result<(), CodegenError> {
        if k.shape.contains(&0) {
            return Ok(());
        }
        k.simplify();
        let mut idx = Vec::new();
        self.emit_outer(fb, &k, &mut idx);
        Ok(())
    }

    fn emit_outer(&mut self, fb: &mut FunctionBuilder, k: &Kernel, idx: &mut Vec<Value>) {
        let axis = idx.len();
        if axis + 1 == k.shape.len() {
            self.emit_inner(fb, k, idx);
            return;
        }
        let (var, i, header, exit) = self.begin_loop(fb, 0, k.shape[axis] as i64);
        idx.push(i);
        self.emit_outer(fb, k, idx);
        idx.pop();
        self.end_loop(fb, var, i, 1, header, exit);
    }

    /// Base address of an access for the current outer indices.
    fn base_addr(
        &mut self,
        fb: &mut FunctionBuilder,
        ptr: Value,
        offset: i64,
        strides: &[isize],
        dtype: DType,
        idx: &[Value],
    ) -> Value {
        let size = dtype.size_bytes() as i64;
        let mut addr = fb.ins().iadd_imm_s(ptr, offset * size);
        for (&i, &s) in idx.iter().zip(strides) {
            if s != 0 {
                let scaled = fb.ins().imul_imm_s(i, s as i64 * size);
                addr = fb.ins().iadd(addr, scaled);
            }
        }
        addr
    }

    fn emit_inner(&mut self, fb: &mut FunctionBuilder, k: &Kernel, idx: &[Value]) {
        let last = k.shape.len() - 1;
        let len = k.shape[last] as i64;
        let vdt = k.vector_dtype();
        let width = match vdt {
            Some(DType::F32) => 4,
            Some(DType::F64) => 2,
            Some(DType::Bool) | None => 1,
        };
        // Per-access base addresses for this inner loop.
        let op_base: Vec<Option<Value>> = k
            .operands
            .iter()
            .map(|o| match o.src {
                Src::Mem { ptr, offset } => Some(self.base_addr(fb, ptr, offset, &o.strides, o.dtype, idx)),
                Src::Splat(_) => None,
            })
            .collect();
        let st_base: Vec<Value> = k
            .stores
            .iter()
            .map(|s| self.base_addr(fb, s.ptr, s.offset, &s.strides, s.dtype, idx))
            .collect();
        // Loop-invariant exprs (constants, stride-0 operands and what only
        // depends on them) are evaluated once, before the loop.
        let n = k.exprs.len();
        let mut invariant = vec![false; n];
        for (i, (e, _)) in k.exprs.iter().enumerate() {
            invariant[i] = match e {
                KExpr::Operand(o) => matches!(k.operands[*o].src, Src::Splat(_)) || k.operands[*o].strides[last] == 0,
                KExpr::Const(_) => true,
                other => Self::expr_args(other).iter().all(|&a| invariant[a]),
            } && !Kernel::calls_out(e, k.exprs[i].1);
        }
        let mut inv_scalar: Vec<Option<Value>> = vec![None; n];
        let mut inv_vector: Vec<Option<Value>> = vec![None; n];
        for i in 0..n {
            if !invariant[i] {
                continue;
            }
            let (e, d) = k.exprs[i];
            let s = self.eval_element(fb, k, &op_base, i, e, d, &inv_scalar, None, width, false);
            inv_scalar[i] = Some(s);
            if width > 1 {
                let v = self.eval_element(fb, k, &op_base, i, e, d, &inv_vector, None, width, true);
                inv_vector[i] = Some(v);
            }
        }
        // Reductions along the inner axis accumulate in one scalar, in
        // the order of the elements (vectors are split into their lanes,
        // added one by one), continuing from the value in memory: the
        // order of the interpreter, whatever the kernel around the
        // reduction. Partial sums per lane or per unrolled copy would
        // depend on the kernel (its width, unroll factor and merged axes
        // all change with what is fused in), and a recomputed value (a
        // checkpoint policy) or a reduction fused differently must be
        // bit-identical to the original.
        let red: Vec<usize> = (0..k.stores.len())
            .filter(|&s| k.stores[s].strides[last] == 0 && k.stores[s].combine != Combine::Store)
            .collect();
        let mut acc_s: HashMap<usize, Variable> = HashMap::new();
        let mut acc_v: HashMap<usize, Vec<Variable>> = HashMap::new();
        for &s in &red {
            let st = &k.stores[s];
            let var = fb.declare_var(mem_type(st.dtype));
            let old = fb.ins().load(mem_type(st.dtype), flags(), st_base[s], 0);
            fb.def_var(var, old);
            acc_s.insert(s, var);
            acc_v.insert(s, vec![var]);
        }
        // Unroll small bodies ×4 (Cranelift does not unroll; it pays off
        // for memory-bound loops) but not large ones, whose copies would
        // cost compile time for no speed.
        let cost: usize = k
            .exprs
            .iter()
            .map(|(e, d)| match e {
                // Inline f32 math is long; by the op's declared cost.
                KExpr::Unary(u, _) if *d == DType::F32 => u.cost() as usize,
                KExpr::Unary(..)
                | KExpr::Operand(_)
                | KExpr::Const(_)
                | KExpr::Binary(..)
                | KExpr::Pow(..)
                | KExpr::Cmp(..)
                | KExpr::Select(..)
                | KExpr::Convert(..) => 1,
            })
            .sum();
        let unroll = if cost <= 64 {
            UNROLL
        } else if cost <= 256 {
            2
        } else {
            1
        };
        let outline_before = self.outline_math;
        self.outline_math = cost > 256;
        let step = (width * unroll) as i64;
        let mut done = 0i64;
        if width > 1 && len >= step {
            let main_end = len - len % step;
            let (var, j, header, exit) = self.begin_loop(fb, 0, main_end);
            for u in 0..unroll {
                let at = fb.ins().iadd_imm_s(j, (u * width) as i64);
                self.emit_element(fb, k, &op_base, &st_base, at, width, true, &inv_vector, &acc_v, u);
            }
            self.end_loop(fb, var, j, step, header, exit);
            done = main_end;
        }
        if width > 1 {
            while done + width as i64 <= len {
                let at = fb.ins().iconst(types::I64, done);
                self.emit_element(fb, k, &op_base, &st_base, at, width, true, &inv_vector, &acc_v, 0);
                done += width as i64;
            }
        }
        // Scalar remainder: straight-line when short, else a loop.
        let rest = len - done;
        if rest > 0 && rest * cost as i64 <= 64 {
            for e in done..len {
                let at = fb.ins().iconst(types::I64, e);
                self.emit_element_scalar(fb, k, &op_base, &st_base, at, &inv_scalar, &acc_s);
            }
        } else if rest > 0 {
            let (var, j, header, exit) = self.begin_loop(fb, done, len);
            self.emit_element_scalar(fb, k, &op_base, &st_base, j, &inv_scalar, &acc_s);
            self.end_loop(fb, var, j, 1, header, exit);
        }
        self.outline_math = outline_before;
        // Reductions: back to memory once per inner loop.
        for &s in &red {
            let acc = fb.use_var(acc_s[&s]);
            fb.ins().store(flags(), acc, st_base[s], 0);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit_element_scalar(
        &mut self,
        fb: &mut FunctionBuilder,
        k: &Kernel,
        op_base: &[Option<Value>],
        st_base: &[Value],
        at: Value,
        inv: &[Option<Value>],
        acc_s: &HashMap<usize, Variable>,
    ) {
        let n = k.exprs.len();
        let mut vals: Vec<Option<Value>> = inv.to_vec();
        for i in 0..n {
            if vals[i].is_some() {
                continue;
            }
            let (e, d) = k.exprs[i];
            let v = self.eval_element(fb, k, op_base, i, e, d, &vals, Some(at), 1, false);
            vals[i] = Some(v);
        }
        let last = k.shape.len() - 1;
        for (s, st) in k.stores.iter().enumerate() {
            let v = vals[st.expr].expect("evaluated");
            if let Some(&var) = acc_s.get(&s) {
                let acc = fb.use_var(var);
                let c = self.combine(fb, st.combine, acc, v);
                fb.def_var(var, c);
                continue;
            }
            let size = st.dtype.size_bytes() as i64;
            let off = fb.ins().imul_imm_s(at, st.strides[last] as i64 * size);
            let addr = fb.ins().iadd(st_base[s], off);
            let v = if st.combine == Combine::Store {
                v
            } else {
                let old = fb.ins().load(mem_type(st.dtype), flags(), addr, 0);
                self.combine(fb, st.combine, old, v)
            };
            fb.ins().store(flags(), v, addr, 0);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit_element(
        &mut self,
        fb: &mut FunctionBuilder,
        k: &Kernel,
        op_base: &[Option<Value>],
        st_base: &[Value],
        at: Value,
        width: usize,
        vector: bool,
        inv: &[Option<Value>],
        acc_v: &HashMap<usize, Vec<Variable>>,
        unroll_slot: usize,
    ) {
        let n = k.exprs.len();
        let mut vals: Vec<Option<Value>> = inv.to_vec();
        for i in 0..n {
            if vals[i].is_some() {
                continue;
            }
            let (e, d) = k.exprs[i];
            let v = self.eval_element(fb, k, op_base, i, e, d, &vals, Some(at), width, vector);
            vals[i] = Some(v);
        }
        for (s, st) in k.stores.iter().enumerate() {
            let v = vals[st.expr].expect("evaluated");
            if let Some(vars) = acc_v.get(&s) {
                // Lane by lane, in element order (see `emit_inner`).
                let var = vars[unroll_slot.min(vars.len() - 1)];
                let mut acc = fb.use_var(var);
                for lane in 0..width as u8 {
                    let x = fb.ins().extractlane(v, lane);
                    acc = self.combine(fb, st.combine, acc, x);
                }
                fb.def_var(var, acc);
                continue;
            }
            let size = st.dtype.size_bytes() as i64;
            let off = fb.ins().imul_imm_s(at, size);
            let addr = fb.ins().iadd(st_base[s], off);
            if st.dtype == DType::Bool {
                self.store_mask_f32x4(fb, v, addr);
                continue;
            }
            let v = if st.combine == Combine::Store {
                v
            } else {
                let old = fb.ins().load(vector_type(st.dtype), flags(), addr, 0);
                self.combine(fb, st.combine, old, v)
            };
            fb.ins().store(flags(), v, addr, 0);
        }
    }

    /// Loads four bool bytes as an i32x4 lane mask (all ones where the
    /// byte is nonzero).
    fn load_mask_f32x4(&mut self, fb: &mut FunctionBuilder, addr: Value) -> Value {
        let word = fb.ins().load(types::I32, flags(), addr, 0);
        let v = fb.ins().scalar_to_vector(types::I32X4, word);
        let bytes = fb.ins().bitcast(types::I8X16, self.vflags(), v);
        let halves = fb.ins().uwiden_low(bytes);
        let words = fb.ins().uwiden_low(halves);
        let zero = fb.ins().iconst(types::I32, 0);
        let zeros = fb.ins().splat(types::I32X4, zero);
        fb.ins().icmp(IntCC::NotEqual, words, zeros)
    }

    /// Stores an i32x4 lane mask as four bool bytes (0 or 1).
    fn store_mask_f32x4(&mut self, fb: &mut FunctionBuilder, mask: Value, addr: Value) {
        let mask = if fb.func.dfg.value_type(mask) == types::I32X4 {
            mask
        } else {
            fb.ins().bitcast(types::I32X4, self.vflags(), mask)
        };
        let one = fb.ins().iconst(types::I32, 1);
        let ones = fb.ins().splat(types::I32X4, one);
        let bits = fb.ins().band(mask, ones);
        let halves = fb.ins().snarrow(bits, bits);
        let bytes = fb.ins().unarrow(halves, halves);
        let words = fb.ins().bitcast(types::I32X4, self.vflags(), bytes);
        let word = fb.ins().extractlane(words, 0);
        fb.ins().store(flags(), word, addr, 0);
    }

    /// Evaluates expr `i` at element `at` of the inner axis (or, with
    /// `at = None`, as a loop invariant).
    #[allow(clippy::too_many_arguments)]
    fn eval_element(
        &mut self,
        fb: &mut FunctionBuilder,
        k: &Kernel,
        op_base: &[Option<Value>],
        _i: usize,
        e: KExpr,
        d: DType,
        vals: &[Option<Value>],
        at: Option<Value>,
        width: usize,
        vector: bool,
    ) -> Value {
        let last = k.shape.len() - 1;
        let lane_ty = if vector { vector_type(d) } else { mem_type(d) };
        if let KExpr::Operand(o) = e {
            let op = &k.operands[o];
            let scalar = match (op.src, at) {
                (Src::Splat(v), _) => v,
                (Src::Mem { .. }, None) => {
                    let x = fb
                        .ins()
                        .load(mem_type(op.dtype), flags(), op_base[o].expect("memory operand"), 0);
                    if op.dtype == DType::Bool {
                        fb.ins().icmp_imm_s(IntCC::NotEqual, x, 0)
                    } else {
                        x
                    }
                }
                (Src::Mem { .. }, Some(at)) => {
                    let size = op.dtype.size_bytes() as i64;
                    let stride = op.strides[last] as i64;
                    let base = op_base[o].expect("memory operand");
                    if vector && stride == 1 {
                        let off = fb.ins().imul_imm_s(at, size);
                        let addr = fb.ins().iadd(base, off);
                        if op.dtype == DType::Bool {
                            return self.load_mask_f32x4(fb, addr);
                        }
                        return fb.ins().load(vector_type(op.dtype), flags(), addr, 0);
                    }
                    let off = fb.ins().imul_imm_s(at, stride * size);
                    let addr = fb.ins().iadd(base, off);
                    let x = fb.ins().load(mem_type(op.dtype), flags(), addr, 0);
                    if op.dtype == DType::Bool {
                        fb.ins().icmp_imm_s(IntCC::NotEqual, x, 0)
                    } else {
                        x
                    }
                }
            };
            return if vector && op.dtype == DType::Bool {
                // A 0/1 byte becomes an all-zeros or all-ones i32x4 lane mask.
                let wide = fb.ins().uextend(types::I32, scalar);
                let m = fb.ins().ineg(wide);
                fb.ins().splat(types::I32X4, m)
            } else if vector {
                fb.ins().splat(vector_type(op.dtype), scalar)
            } else {
                scalar
            };
        }
        let _ = width;
        let arg_ids = Self::expr_args(&e);
        let args: Vec<Value> = arg_ids.iter().map(|&a| vals[a].expect("arguments precede")).collect();
        let arg_dtypes: Vec<DType> = arg_ids.iter().map(|&a| k.exprs[a].1).collect();
        self.eval(fb, e, d, &arg_dtypes, &args, lane_ty)
    }
}

/// The kernel expression of an elementwise op on operand exprs `xs`;
/// `None` for ops that are not elementwise.
fn elementwise_expr(op: &Op, xs: &[usize]) -> Option<KExpr> {
    match op {
        Op::Unary(u) => Some(KExpr::Unary(*u, xs[0])),
        Op::Binary(b) => Some(KExpr::Binary(*b, xs[0], xs[1])),
        Op::Pow { exponent } => Some(KExpr::Pow(*exponent, xs[0])),
        Op::Compare(c) => Some(KExpr::Cmp(*c, xs[0], xs[1])),
        Op::Select => Some(KExpr::Select(xs[0], xs[1], xs[2])),
        Op::Convert { .. } => Some(KExpr::Convert(xs[0])),
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
        | Op::SoftmaxCrossEntropy
        | Op::Scan(_)
        | Op::Get { .. } => None,
    }
}

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
struct Carried {
    base: Base,
    offset: i64,
    shape: Vec<usize>,
    strides: Vec<isize>,
    dtype: DType,
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
    next: usize,
    /// Per node: where its value is in the current segment.
    locs: Vec<Option<Loc>>,
    /// Per node: where its value is, for a later segment.
    carried: Vec<Option<Carried>>,
    /// The nodes given a location in the current segment.
    touched: Vec<NodeId>,
    /// The arena's bump pointer (after the memory plan's region).
    arena_bytes: usize,
    used_outside: Vec<bool>,
    /// Output buffers that nodes are computed into, and which outputs
    /// those cover.
    dest: Vec<Option<usize>>,
    written: Vec<bool>,
    /// The last node reading each node (`usize::MAX` for outputs).
    last_use: Vec<usize>,
    /// The most nodes one segment lowers.
    max_nodes: usize,
}

/// Functions with at most this many inputs and outputs load all their
/// pointers at entry (see `Ptrs::Preloaded`).
const PRELOAD_POINTERS: usize = 16;

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
        // computes fresh memory.
        let mut dest: Vec<Option<usize>> = vec![None; g.len()];
        let mut written = vec![false; g.outputs().len()];
        for (j, o) in g.outputs().iter().enumerate() {
            if dest[o.node.index()].is_none() && (computes_fresh_memory(g, o.node) || is_loop_result(g, o.node)) {
                dest[o.node.index()] = Some(j);
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
fn computes_fresh_memory(g: &Graph, id: NodeId) -> bool {
    wengert_passes::memory::needs_buffer(g, id, true)
}

/// Whether `id` is a `get` of a loop's result: the loop writes that result
/// straight into the output buffer when the `get` is an output (a stacked
/// gradient of 64 MiB was otherwise written to the arena and copied).
fn is_loop_result(g: &Graph, id: NodeId) -> bool {
    matches!(g.op(id), Op::Get { .. }) && g.args(id).first().is_some_and(|&s| matches!(g.op(s), Op::Scan(_)))
}

/// The output buffer result `index` of loop `scan` is written to, if a
/// `get` of it is computed into one.
fn loop_result_dest(g: &Graph, dest: &[Option<usize>], scan: NodeId, index: usize) -> Option<usize> {
    g.users(scan).into_iter().find_map(|u| match g.op(u) {
        Op::Get { index: i, .. } if *i == index => dest[u.index()],
        Op::Get { .. } => None,
        // `verify` allows only `get`s to read a loop.
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
        | Op::SoftmaxCrossEntropy
        | Op::Scan(_) => None,
    })
}

/// How a compiled function receives its buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    /// One parameter: an array of pointers to the inputs, then the
    /// outputs, then the arena.
    PointerArray,
    /// Two parameters: a packed array of the scalar inputs and one of the
    /// scalar outputs, each element at `index · size_of(dtype)`. The arena
    /// pointer is null: the caller keeps such a function only if its
    /// lowering needed no arena. This is the latency path for all-scalar
    /// graphs: no pointer array to load.
    PackedScalars,
}

/// Where a function finds its input and output buffers.
enum Ptrs {
    /// `[inputs…, outputs…, arena]` pointers in one array.
    Array(Value),
    /// The same, for a function with few inputs and outputs: their
    /// pointers are loaded once at entry, in order (a handful of values;
    /// loading them where used instead interleaves pointer loads with
    /// output stores: seed case 4's bound call measured 12.8 ns that way
    /// against 8.4 ns preloaded).
    Preloaded(Vec<Value>),
    /// All-scalar graphs: inputs packed in one array, outputs in another,
    /// every element `size` bytes.
    Packed { ins: Value, outs: Value, size: usize },
}

impl Ptrs {
    /// The pointer to input `k` (or output `k`), emitted where it is used.
    fn get(&self, fb: &mut FunctionBuilder, k: usize, output: bool, n_in: usize) -> Value {
        let slot = if output { n_in + k } else { k };
        match self {
            Ptrs::Array(array) => fb.ins().load(
                types::I64,
                MemFlagsData::trusted().with_readonly().with_can_move(),
                *array,
                (slot * 8) as i32,
            ),
            Ptrs::Preloaded(ptrs) => ptrs[slot],
            Ptrs::Packed { ins, outs, size } => fb
                .ins()
                .iadd_imm_s(if output { *outs } else { *ins }, (k * size) as i64),
        }
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
    let lowered = lower_into(module, state, fb, g, abi, &params, seg)?;
    fb.ins().return_(&[]);
    Ok(lowered)
}

/// Lowers the next segment of `g` at the builder's current position, its
/// buffers found through `params` (the parameters of `abi`: the pointer
/// array, or the packed scalar arrays), leaving the builder where the
/// graph's code ends (no return): the body of a function, or a loop body
/// inlined into its loop.
pub(crate) fn lower_into(
    module: &mut JITModule,
    state: &mut ModuleState,
    fb: &mut FunctionBuilder,
    g: &Graph,
    abi: Abi,
    params: &[Value],
    seg: &mut Segments,
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
        Abi::PointerArray => {
            let array = params[0];
            let ptrs = if n_in + n_out <= PRELOAD_POINTERS {
                // Ordinary loads (not movable), so that they stay at entry.
                let flags = MemFlagsData::trusted().with_readonly();
                Ptrs::Preloaded(
                    (0..n_in + n_out)
                        .map(|slot| fb.ins().load(types::I64, flags, array, (slot * 8) as i32))
                        .collect(),
                )
            } else {
                Ptrs::Array(array)
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
        arena_bytes: seg.arena_bytes,
    };
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
            (None, None) => return lw.alloc(fb, &ty.shape, ty.dtype),
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
            lower_fused(&mut lw, fb, g, &members, &mut locs, &used_outside, &place, &materialize)?;
            continue;
        }
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
                    let mut k = Kernel::new(&ty.shape);
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
            Op::Reshape { shape } => match &arg_locs[0] {
                Loc::Reg(v) => Loc::Reg(*v),
                Loc::Splat(v, _) => Loc::Splat(*v, shape.clone()),
                Loc::Mem(view) => {
                    let view = if view.is_contiguous() {
                        view.clone()
                    } else {
                        let dst = lw.alloc(fb, &view.shape, view.dtype);
                        lw.copy_into(fb, &Loc::Mem(view.clone()), &dst)?;
                        dst
                    };
                    Loc::Mem(View {
                        shape: shape.clone(),
                        strides: row_major_strides(shape).iter().map(|&s| s as isize).collect(),
                        ..view
                    })
                }
            },
            Op::ReduceSum { axes } | Op::ReduceMax { axes } => {
                let is_max = matches!(g.op(id), Op::ReduceMax { .. });
                let out = fresh(&mut lw, fb);
                let in_ty = g.ty(args[0]).clone();
                // Initialize, then accumulate over the input.
                let mut k = Kernel::new(&in_ty.shape);
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
                let a = lw.materialize(fb, &arg_locs[0], &a_ty.shape, a_ty.dtype, false)?;
                let b = lw.materialize(fb, &arg_locs[1], &b_ty.shape, b_ty.dtype, false)?;
                let out = fresh(&mut lw, fb);
                lw.gemm(fb, &a, &b, &out)?;
                // A one-element result stays in memory and is loaded where it
                // is read (see `materialize`): loaded here, it would sit in
                // a register until its last reader, perhaps the backward's
                // end.
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
    }
    let done = at >= g.len();
    if done {
        // Outputs not computed in place.
        for (j, o) in g.outputs().iter().enumerate() {
            if seg.written[j] && dest[o.node.index()] == Some(j) {
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
            let slot = lw.alloc(fb, &[1], ty.dtype);
            fb.ins().store(flags(), v, slot.ptr, 0);
            slot.ptr
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
    seg.arena_bytes = lw.arena_bytes;
    seg.used_outside = used_outside;
    seg.dest = dest;
    seg.locs = locs;
    seg.carried = carried;
    Ok(Lowered {
        arena_bytes: lw.arena_bytes,
        done,
    })
}

/// Makes a node's location in the current function (an input read for the
/// first time, a value carried from an earlier segment) or re-points an
/// arena buffer (see `lower_graph`).
type Materialize<'a> = dyn Fn(&mut Lowerer, &mut FunctionBuilder, &mut [Option<Loc>], NodeId) + 'a;

/// Lowers a fused kernel: an optional leading matmul (a GEMM call), then
/// one loop nest computing every elementwise member and reduction root,
/// storing only the members read outside the kernel.
#[allow(clippy::too_many_arguments)]
fn lower_fused(
    lw: &mut Lowerer,
    fb: &mut FunctionBuilder,
    g: &Graph,
    members: &[NodeId],
    locs: &mut [Option<Loc>],
    used_outside: &[bool],
    place: &dyn Fn(&mut Lowerer, &mut FunctionBuilder, NodeId) -> View,
    materialize: &Materialize,
) -> Result<(), CodegenError> {
    let mut rest = members;
    if let Some((&first, tail)) = members.split_first() {
        if let Op::MatMul = g.op(first) {
            let args = g.args(first);
            for &a in &args {
                materialize(lw, fb, locs, a);
            }
            let (a_ty, b_ty) = (g.ty(args[0]).clone(), g.ty(args[1]).clone());
            let a_loc = locs[args[0].index()].clone().expect("operands precede");
            let b_loc = locs[args[1].index()].clone().expect("operands precede");
            let a = lw.materialize(fb, &a_loc, &a_ty.shape, a_ty.dtype, false)?;
            let b = lw.materialize(fb, &b_loc, &b_ty.shape, b_ty.dtype, false)?;
            // Its planned buffer (the memory plan gives a leading matmul
            // one even when only the kernel reads it).
            let out = place(lw, fb, first);
            lw.gemm(fb, &a, &b, &out)?;
            locs[first.index()] = Some(Loc::Mem(out));
            rest = tail;
        }
    }
    if rest.is_empty() {
        return Ok(());
    }
    // The iteration shape: that of the elementwise members (a reduction's
    // input).
    let shape = rest
        .iter()
        .find(|&&m| !matches!(g.op(m), Op::ReduceSum { .. } | Op::ReduceMax { .. }))
        .map(|&m| g.ty(m).shape.clone())
        .unwrap_or_else(|| g.ty(g.args(rest[0])[0]).shape.clone());
    if wengert_ir::num_elements(&shape) == 1 {
        // A scalar kernel: straight-line register code, no loop, no memory.
        for &m in rest {
            let args = g.args(m);
            for &a in &args {
                materialize(lw, fb, locs, a);
            }
            let arg_locs: Vec<Loc> = args
                .iter()
                .map(|a| locs[a.index()].clone().expect("operands precede"))
                .collect();
            let vals: Vec<Value> = arg_locs.iter().map(|l| lw.scalar_of(fb, l)).collect();
            let arg_dtypes: Vec<DType> = args.iter().map(|&a| g.ty(a).dtype).collect();
            let ty = g.ty(m);
            let xs: Vec<usize> = (0..vals.len()).collect();
            let e = elementwise_expr(g.op(m), &xs).ok_or_else(|| CodegenError::Unsupported {
                node: g.value_name(m),
                message: format!("`{}` cannot be a member of a scalar kernel", g.op(m).name()),
            })?;
            let v = lw.eval(fb, e, ty.dtype, &arg_dtypes, &vals, mem_type(ty.dtype));
            locs[m.index()] = Some(Loc::Reg(v));
        }
        return Ok(());
    }
    let mut k = Kernel::new(&shape);
    let mut expr_of: HashMap<NodeId, usize> = HashMap::new();
    let mut outputs: Vec<(NodeId, View)> = Vec::new();
    for &m in rest {
        let args = g.args(m);
        let mut xs = Vec::with_capacity(args.len());
        for &a in &args {
            let e = match expr_of.get(&a) {
                Some(&e) => e,
                None => {
                    materialize(lw, fb, locs, a);
                    let loc = locs[a.index()].clone().expect("operands precede");
                    let e = lw.operand(&mut k, &loc, g.ty(a).dtype);
                    expr_of.insert(a, e);
                    e
                }
            };
            xs.push(e);
        }
        let ty = g.ty(m).clone();
        let e = match (g.op(m), elementwise_expr(g.op(m), &xs)) {
            (_, Some(e)) => Some(e),
            (Op::ReduceSum { axes } | Op::ReduceMax { axes }, None) => {
                let is_max = matches!(g.op(m), Op::ReduceMax { .. });
                let out = place(lw, fb, m);
                lw.reduce_into(fb, &mut k, xs[0], shape.len(), axes, &out, is_max)?;
                outputs.push((m, out));
                None
            }
            (op, None) => {
                return Err(CodegenError::Unsupported {
                    node: g.value_name(m),
                    message: format!("`{}` cannot be a member of a fused kernel", op.name()),
                })
            }
        };
        if let Some(e) = e {
            let id = k.expr(e, ty.dtype);
            expr_of.insert(m, id);
            if used_outside[m.index()] {
                let out = place(lw, fb, m);
                k.store(out.ptr, 0, out.strides.clone(), ty.dtype, id, Combine::Store);
                outputs.push((m, out));
            }
        }
    }
    lw.emit_kernel(fb, k)?;
    for (m, out) in outputs {
        // One-element members too stay in memory until read (see
        // `lower_graph`'s reductions).
        locs[m.index()] = Some(Loc::Mem(out));
    }
    Ok(())
}

/// Softmax cross-entropy of logits `z` and targets `t` of shape `[…, K]`:
/// row maxima `m`, row sums `s = Σ exp(z − m)`, then the mean over rows of
/// `Σₖ tₖ·(log s + m − zₖ)`, where a zero target contributes exactly 0.
fn lower_softmax_xent(
    lw: &mut Lowerer,
    fb: &mut FunctionBuilder,
    g: &Graph,
    id: NodeId,
    arg_locs: &[Loc],
) -> Result<Loc, CodegenError> {
    let args = g.args(id);
    let zt = g.ty(args[0]).clone();
    let dt = zt.dtype;
    let kdim = *zt.shape.last().unwrap_or(&1);
    let rows = zt.num_elements().checked_div(kdim).unwrap_or(0);
    // The kernels run over the operands' own shape [..., K] and read them
    // through their own strides (a transposed or sliced operand is not
    // contiguous); the row buffers are indexed by the leading axes.
    let shape = zt.shape.clone();
    let rank = shape.len();
    let mut row_strides: Vec<isize> = row_major_strides(&shape[..rank.saturating_sub(1)])
        .iter()
        .map(|&s| s as isize)
        .collect();
    row_strides.push(0);
    let nd = |l: &Loc| -> Loc {
        match l {
            Loc::Mem(v) => Loc::Mem(v.clone()),
            Loc::Reg(v) | Loc::Splat(v, _) => Loc::Splat(*v, shape.clone()),
        }
    };
    let z = nd(&arg_locs[0]);
    let t = nd(&arg_locs[1]);
    // Row maxima, row sums and the loss accumulator: in the scratch the
    // memory plan placed (`memory::softmax_xent_scratch`), else
    // bump-allocated.
    let (m, s, r, loss) = match g.node(id).arena {
        Some(off) => {
            let ([m_at, s_at, r_at, loss_at], _) = wengert_passes::memory::softmax_xent_scratch(rows, dt);
            let mut at = |fb: &mut FunctionBuilder, at: usize, n: usize| View {
                ptr: lw.arena_at(fb, off + at),
                offset: 0,
                shape: vec![n],
                strides: vec![1],
                dtype: dt,
            };
            (
                at(fb, m_at, rows),
                at(fb, s_at, rows),
                at(fb, r_at, rows),
                at(fb, loss_at, 1),
            )
        }
        None => (
            lw.alloc(fb, &[rows], dt),
            lw.alloc(fb, &[rows], dt),
            lw.alloc(fb, &[rows], dt),
            lw.alloc(fb, &[1], dt),
        ),
    };
    let row_view = |v: &View| {
        Loc::Mem(View {
            shape: shape.clone(),
            strides: row_strides.clone(),
            ..v.clone()
        })
    };
    for (buf, init) in [(&m, f64::NEG_INFINITY), (&s, 0.0), (&r, 0.0), (&loss, 0.0)] {
        lw.fill(fb, buf, init)?;
    }
    // m = max over the row.
    let mut k = Kernel::new(&shape);
    let zi = lw.operand(&mut k, &z, dt);
    k.store(m.ptr, 0, row_strides.clone(), dt, zi, Combine::Max);
    lw.emit_kernel(fb, k)?;
    // s = Σ exp(z − m).
    let mut k = Kernel::new(&shape);
    let zi = lw.operand(&mut k, &z, dt);
    let mi = lw.operand(&mut k, &row_view(&m), dt);
    let d = k.expr(KExpr::Binary(BinaryOp::Sub, zi, mi), dt);
    let e = k.expr(KExpr::Unary(UnaryOp::Exp, d), dt);
    k.store(s.ptr, 0, row_strides.clone(), dt, e, Combine::Add);
    lw.emit_kernel(fb, k)?;
    // r = Σ select(t = 0, 0, t·(log s + m − z)) per row, then loss = Σ r:
    // the interpreter's association, so that f64 results agree bit for bit
    // (adding +0 where the interpreter skips a zero target changes no sum
    // that starts at +0).
    let mut k = Kernel::new(&shape);
    let zi = lw.operand(&mut k, &z, dt);
    let ti = lw.operand(&mut k, &t, dt);
    let mi = lw.operand(&mut k, &row_view(&m), dt);
    let si = lw.operand(&mut k, &row_view(&s), dt);
    let ls = k.expr(KExpr::Unary(UnaryOp::Log, si), dt);
    let lse = k.expr(KExpr::Binary(BinaryOp::Add, mi, ls), dt);
    let diff = k.expr(KExpr::Binary(BinaryOp::Sub, lse, zi), dt);
    let prod = k.expr(KExpr::Binary(BinaryOp::Mul, ti, diff), dt);
    let zero = k.expr(KExpr::Const(0.0), dt);
    let is0 = k.expr(KExpr::Cmp(CmpOp::Eq, ti, zero), DType::Bool);
    let v = k.expr(KExpr::Select(is0, zero, prod), dt);
    k.store(r.ptr, 0, row_strides.clone(), dt, v, Combine::Add);
    lw.emit_kernel(fb, k)?;
    let mut k = Kernel::new(&[rows]);
    let ri = lw.operand(&mut k, &Loc::Mem(r.clone()), dt);
    k.store(loss.ptr, 0, vec![0], dt, ri, Combine::Add);
    lw.emit_kernel(fb, k)?;
    let total = lw.load_at(fb, &loss, 0);
    let b = lw.scalar_const(fb, dt, rows.max(1) as f64);
    Ok(Loc::Reg(fb.ins().fdiv(total, b)))
}
