//! Loop emission: a `Kernel` becomes a nest of counted loops with a
//! vectorized, unrolled innermost loop and a scalar tail; reductions
//! initialize their output and accumulate into it.

use super::*;

impl Lowerer<'_> {
    /// Starts a reduction of expr `x` of kernel `k` (iterating over the
    /// reduction's input, of rank `rank`) into `out`: fills `out` with the
    /// identity now, and adds the accumulating store to `k`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reduce_into(
        &mut self,
        fb: &mut FunctionBuilder,
        k: &mut BoundKernel,
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

    /// Emits a counted loop header; returns the counter variable, its value
    /// in the body, and the exit block. The caller emits the body, then
    /// calls `end_loop`.
    pub(crate) fn begin_loop(
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
        let init = fb.ins().iconst(types::I64, start);
        Self::loop_header(fb, init, |fb, i| fb.ins().icmp_imm_s(IntCC::SignedLessThan, i, end))
    }

    /// [`Self::begin_loop`] with bounds known only at run time (a range
    /// function's `start..end`).
    pub(crate) fn begin_loop_between(
        fb: &mut FunctionBuilder,
        start: Value,
        end: Value,
    ) -> (
        Variable,
        Value,
        cranelift_codegen::ir::Block,
        cranelift_codegen::ir::Block,
    ) {
        Self::loop_header(fb, start, |fb, i| fb.ins().icmp(IntCC::SignedLessThan, i, end))
    }

    /// The header both forms share: the counter from `init`, the test
    /// `more(counter)`, the body and exit blocks.
    fn loop_header(
        fb: &mut FunctionBuilder,
        init: Value,
        more: impl FnOnce(&mut FunctionBuilder, Value) -> Value,
    ) -> (
        Variable,
        Value,
        cranelift_codegen::ir::Block,
        cranelift_codegen::ir::Block,
    ) {
        let var = fb.declare_var(types::I64);
        fb.def_var(var, init);
        let header = fb.create_block();
        let body = fb.create_block();
        let exit = fb.create_block();
        fb.ins().jump(header, &[]);
        fb.switch_to_block(header);
        let i = fb.use_var(var);
        let more = more(fb, i);
        fb.ins().brif(more, body, &[], exit, &[]);
        fb.switch_to_block(body);
        (var, i, header, exit)
    }

    pub(crate) fn end_loop(
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
    pub fn emit_kernel(&mut self, fb: &mut FunctionBuilder, mut k: BoundKernel) -> Result<(), CodegenError> {
        if k.shape.contains(&0) {
            return Ok(());
        }
        k.simplify();
        if self.state.kernel_log.is_some() {
            let text = k.describe(|buf| match self.bases.get(&k.bufs[buf]) {
                Some(Base::Input(i)) => format!("input{i}"),
                Some(Base::Output(j)) => format!("output{j}"),
                Some(Base::Arena(off)) => format!("arena+{off}"),
                Some(Base::Addr(_)) => "const".to_string(),
                // Computed in the function (a loop's row pointers).
                None => "ptr".to_string(),
            });
            if let Some(log) = &mut self.state.kernel_log {
                log.push_str(&text);
            }
        }
        let Some(k) = self.try_emit_parallel(fb, k)? else {
            return Ok(());
        };
        let mut idx = Vec::new();
        self.emit_outer(fb, &k, &mut idx);
        Ok(())
    }

    pub(crate) fn emit_outer(&mut self, fb: &mut FunctionBuilder, k: &BoundKernel, idx: &mut Vec<Value>) {
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
    pub(crate) fn base_addr(
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

    pub(crate) fn emit_inner(&mut self, fb: &mut FunctionBuilder, k: &BoundKernel, idx: &[Value]) {
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
                Src::Mem { buf, offset } => Some(self.base_addr(fb, k.bufs[buf], offset, &o.strides, o.dtype, idx)),
                Src::Splat(_) => None,
            })
            .collect();
        let st_base: Vec<Value> = k
            .stores
            .iter()
            .map(|s| self.base_addr(fb, k.bufs[s.buf], s.offset, &s.strides, s.dtype, idx))
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
        let cost = k.body_cost();
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
    pub(crate) fn emit_element_scalar(
        &mut self,
        fb: &mut FunctionBuilder,
        k: &BoundKernel,
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
    pub(crate) fn emit_element(
        &mut self,
        fb: &mut FunctionBuilder,
        k: &BoundKernel,
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
    pub(crate) fn load_mask_f32x4(&mut self, fb: &mut FunctionBuilder, addr: Value) -> Value {
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
    pub(crate) fn store_mask_f32x4(&mut self, fb: &mut FunctionBuilder, mask: Value, addr: Value) {
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
    pub(crate) fn eval_element(
        &mut self,
        fb: &mut FunctionBuilder,
        k: &BoundKernel,
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
                (Src::Splat(i), _) => k.scalars[i],
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
