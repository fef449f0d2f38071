//! Where values live and how they are read and written: arena slots and
//! buffer pointers, loads of elements, kernel operands, copies, fills and
//! materialization into memory.

use super::*;

impl Lowerer<'_> {
    /// A pointer `off` bytes into the arena. Each call loads the arena
    /// pointer afresh (an ordinary load, which Cranelift keeps where it is
    /// and does not merge across the stores between kernels): a pure
    /// `arena + off` would be shared by every kernel that uses the same
    /// planned offset, one value alive across all of them, and a
    /// 100,000-node graph then has thousands of such values competing for
    /// registers (register allocation was superlinear in them).
    pub(crate) fn arena_at(&mut self, fb: &mut FunctionBuilder, off: usize) -> Value {
        let base = match self.arena_slot {
            Some((array, slot)) => fb.ins().load(types::I64, MemFlagsData::trusted(), array, slot),
            None => fb.ins().iconst(types::I64, 0),
        };
        let ptr = fb.ins().iadd_imm_s(base, off as i64);
        self.bases.insert(ptr, Base::Arena(off));
        ptr
    }

    /// A fresh pointer to `base` in this function.
    pub(crate) fn pointer(&mut self, fb: &mut FunctionBuilder, ptrs: &Ptrs, n_in: usize, base: Base) -> Value {
        let ptr = match base {
            Base::Input(i) => ptrs.get(fb, i, false, n_in),
            Base::Output(j) => ptrs.get(fb, j, true, n_in),
            Base::Arena(off) => return self.arena_at(fb, off),
            Base::Addr(a) => fb.ins().iconst(types::I64, a),
        };
        self.bases.insert(ptr, base);
        ptr
    }

    /// Starts a node (or a fused kernel) that the plan gives `limit`
    /// bytes of workspace.
    pub(crate) fn begin_node(&mut self, limit: usize) {
        self.workspace_used = 0;
        self.workspace_limit = limit;
    }

    /// Ends the node begun last: an error if it took storage the plan did
    /// not give it (code generation obeys the plan, it does not allocate).
    pub(crate) fn end_node(&mut self, g: &Graph, id: NodeId) -> Result<(), CodegenError> {
        let over = self.workspace_used > self.workspace_limit;
        if let Some(message) = self.unplanned.take() {
            return Err(CodegenError::Unsupported {
                node: g.value_name(id),
                message: format!("internal error: {message}"),
            });
        }
        if over {
            return Err(CodegenError::Unsupported {
                node: g.value_name(id),
                message: format!(
                    "internal error: {} bytes of workspace where the memory plan gives {}",
                    self.workspace_used, self.workspace_limit
                ),
            });
        }
        Ok(())
    }

    /// A contiguous piece of the current node's workspace (64-byte
    /// aligned), valid until the node is done.
    pub(crate) fn alloc(&mut self, fb: &mut FunctionBuilder, shape: &[usize], dtype: DType) -> View {
        let bytes = wengert_ir::num_elements(shape) * dtype.size_bytes();
        let off = self.workspace_base + self.workspace_used;
        self.workspace_used += bytes.div_ceil(64) * 64;
        self.workspace_high = self.workspace_high.max(self.workspace_used);
        let ptr = self.arena_at(fb, off);
        View {
            ptr,
            offset: 0,
            shape: shape.to_vec(),
            strides: row_major_strides(shape).iter().map(|&s| s as isize).collect(),
            dtype,
        }
    }

    /// A slot of the spill area for one register value that crosses into
    /// a later segment (see `Segments`).
    pub(crate) fn spill_slot(&mut self, fb: &mut FunctionBuilder) -> Value {
        let off = self.spill_base + self.spill_bytes;
        self.spill_bytes += 64;
        self.arena_at(fb, off)
    }

    /// One past the last arena byte this function uses: the planned
    /// buffers (which end at `buffers_end`), the workspace it used, the
    /// spill area.
    pub(crate) fn arena_end(&self, buffers_end: usize) -> usize {
        if self.spill_bytes > 0 {
            self.spill_base + self.spill_bytes
        } else if self.workspace_high > 0 {
            self.workspace_base + self.workspace_high
        } else {
            buffers_end
        }
    }

    pub(crate) fn scalar_const(&mut self, fb: &mut FunctionBuilder, dtype: DType, v: f64) -> Value {
        match dtype {
            DType::F32 => fb.ins().f32const(v as f32),
            DType::F64 => fb.ins().f64const(v),
            DType::Bool => fb.ins().iconst(types::I8, (v != 0.0) as i64),
        }
    }

    /// Loads one element of a view at the given element index.
    pub(crate) fn load_at(&mut self, fb: &mut FunctionBuilder, v: &View, index: i64) -> Value {
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
    ///
    /// A donated input is overwritten by its output during the call: its
    /// load is an ordinary one, which stays before the store.
    pub(crate) fn load_input(&mut self, fb: &mut FunctionBuilder, v: &View) -> Value {
        let unchanging =
            matches!(self.bases.get(&v.ptr), Some(Base::Input(i)) if !self.state.donated_inputs.contains(i));
        if unchanging {
            self.load_with(fb, v, 0, flags().with_readonly().with_can_move())
        } else {
            self.load_with(fb, v, 0, flags())
        }
    }

    pub(crate) fn load_with(&mut self, fb: &mut FunctionBuilder, v: &View, index: i64, flags: MemFlagsData) -> Value {
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
    pub(crate) fn scalar_of(&mut self, fb: &mut FunctionBuilder, loc: &Loc) -> Value {
        match loc {
            Loc::Reg(v) | Loc::Splat(v, _) => *v,
            Loc::Mem(view) => {
                let view = view.clone();
                self.load_at(fb, &view, 0)
            }
        }
    }

    /// Adds `loc` (of the kernel's shape) as an operand of `k`.
    pub(crate) fn operand(&mut self, k: &mut BoundKernel, loc: &Loc, dtype: DType) -> usize {
        let rank = k.shape.len();
        match loc {
            Loc::Reg(v) | Loc::Splat(v, _) => k.splat(*v, vec![0; rank], dtype),
            Loc::Mem(view) => k.mem(view.ptr, view.offset, view.strides.clone(), dtype),
        }
    }

    /// Copies (or fills) `loc` into `dst`, both of `dst`'s shape.
    pub(crate) fn copy_into(&mut self, fb: &mut FunctionBuilder, loc: &Loc, dst: &View) -> Result<(), CodegenError> {
        let mut k = BoundKernel::new(&dst.shape);
        let x = self.operand(&mut k, loc, dst.dtype);
        k.store(dst.ptr, dst.offset, dst.strides.clone(), dst.dtype, x, Combine::Store);
        self.emit_kernel(fb, k)
    }

    /// A view of `loc` as memory of the given shape, copying into the arena
    /// when it is not already memory with usable strides.
    pub(crate) fn materialize(
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
    pub(crate) fn fill(&mut self, fb: &mut FunctionBuilder, out: &View, value: f64) -> Result<(), CodegenError> {
        let mut fill = BoundKernel::new(&out.shape);
        let c = fill.expr(KExpr::Const(value), out.dtype);
        fill.store(out.ptr, out.offset, out.strides.clone(), out.dtype, c, Combine::Store);
        self.emit_kernel(fb, fill)
    }
}
