//! Scalar and vector op semantics: one kernel expression (`eval`) on values
//! in registers, the f32 inline/out-of-line transcendental functions and
//! f64 runtime calls, combining stores, and the kernel expression of each
//! elementwise op.

use super::*;

/// The kernel expression of an elementwise op on operand exprs `xs`;
/// `None` for ops that are not elementwise.
pub(crate) fn elementwise_expr(op: &Op, xs: &[usize]) -> Option<KExpr> {
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
        | Op::MatMulAcc { .. }
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Concat { .. }
        | Op::SoftmaxCrossEntropy
        | Op::Scan(_)
        | Op::Get { .. } => None,
    }
}

pub(crate) fn float_cc(c: CmpOp) -> FloatCC {
    match c {
        CmpOp::Lt => FloatCC::LessThan,
        CmpOp::Le => FloatCC::LessThanOrEqual,
        CmpOp::Gt => FloatCC::GreaterThan,
        CmpOp::Ge => FloatCC::GreaterThanOrEqual,
        CmpOp::Eq => FloatCC::Equal,
        CmpOp::Ne => FloatCC::NotEqual,
    }
}

pub(crate) fn int_cc(c: CmpOp) -> IntCC {
    match c {
        CmpOp::Lt => IntCC::UnsignedLessThan,
        CmpOp::Le => IntCC::UnsignedLessThanOrEqual,
        CmpOp::Gt => IntCC::UnsignedGreaterThan,
        CmpOp::Ge => IntCC::UnsignedGreaterThanOrEqual,
        CmpOp::Eq => IntCC::Equal,
        CmpOp::Ne => IntCC::NotEqual,
    }
}

/// The functions with an inline f32 version (`lower/math.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum F32Math {
    Exp,
    Log,
    Sin,
    Cos,
    Tanh,
}

impl F32Math {
    pub(crate) fn name(self) -> &'static str {
        match self {
            F32Math::Exp => "exp",
            F32Math::Log => "log",
            F32Math::Sin => "sin",
            F32Math::Cos => "cos",
            F32Math::Tanh => "tanh",
        }
    }
}

impl Lowerer<'_> {
    /// A transcendental function with an inline f32 version: f32 values
    /// run the inline polynomial (or its out-of-line copy in large
    /// kernels), f64 values call `f64_fn` (scalar kernels only) — but for
    /// `tanh`, whose f64 definition is the project's own and whose common
    /// branch is inlined (`Lowerer::tanh_f64`).
    pub(crate) fn transcendental(
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
        if m == F32Math::Tanh && xt == types::F64 {
            return self.tanh_f64(fb, x);
        }
        let f = self.import(fb, f64_fn);
        let call = fb.ins().call(f, &[x]);
        fb.inst_results(call)[0]
    }

    /// An f32 function inline, or through its out-of-line copy in a
    /// kernel too large to inline it (`outline_math`).
    pub(crate) fn inline_or_outline_f32(&mut self, fb: &mut FunctionBuilder, m: F32Math, xt: Type, x: Value) -> Value {
        if self.outline_math {
            let f = self.math_helper(fb, m, xt);
            let call = fb.ins().call(f, &[x]);
            return fb.inst_results(call)[0];
        }
        self.inline_f32(fb, m, xt, x)
    }

    /// An f32 function's inline instruction sequence.
    pub(crate) fn inline_f32(&mut self, fb: &mut FunctionBuilder, m: F32Math, ty: Type, x: Value) -> Value {
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
    pub(crate) fn via_f64(&mut self, fb: &mut FunctionBuilder, rf: RuntimeFn, dtype: DType, x: Value) -> Value {
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

    /// A reference to the out-of-line helper computing `m` on lanes of
    /// type `ty`, defining the helper in the module on first use. Its body
    /// is the same instruction sequence the inline path emits.
    pub(crate) fn math_helper(&mut self, fb: &mut FunctionBuilder, m: F32Math, ty: Type) -> FuncRef {
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

    /// Evaluates one kernel expr on already-evaluated arguments, for lane
    /// type `ty` (a float scalar, or a vector when vectorizing).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn eval(
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

    pub(crate) fn expr_args(e: &KExpr) -> Vec<usize> {
        match *e {
            KExpr::Operand(_) | KExpr::Const(_) => vec![],
            KExpr::Unary(_, a) | KExpr::Pow(_, a) | KExpr::Convert(a) => vec![a],
            KExpr::Binary(_, a, b) | KExpr::Cmp(_, a, b) => vec![a, b],
            KExpr::Select(c, a, b) => vec![c, a, b],
        }
    }

    pub(crate) fn combine(&mut self, fb: &mut FunctionBuilder, c: Combine, acc: Value, v: Value) -> Value {
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
}
