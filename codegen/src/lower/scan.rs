//! Lowering a loop (`scan`) to one native loop.
//!
//! The body is compiled first as a function of its own (the JIT does this
//! before the function that holds the loop, see `jit.rs`), with the same
//! entry ABI as every graph: one pointer to `[inputs…, outputs…, arena]`.
//! The loop builds that array once in the arena, then per step writes the
//! four pointers that move (this step's carry in and out, row `t` of each
//! `xs` and `ys`) and calls the body. The carry lives in two buffers that
//! swap roles each step (block parameters of the loop header), so a step
//! never reads a carry it is writing. Compile time is independent of the
//! trip count.

use super::{Loc, Lowerer, View};
use crate::error::CodegenError;
use cranelift_codegen::ir::{condcodes::IntCC, types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::Module;
use wengert_ir::{row_major_strides, DType, Scan};

/// A compiled loop body: its function and what a call of it needs.
#[derive(Clone, Copy, Debug)]
pub struct BodyFn {
    pub id: cranelift_module::FuncId,
    /// Bytes of arena the body uses (given to it as its own region).
    pub arena_bytes: usize,
}

/// The key of a body in `ModuleState::bodies`: its address (a scan op's
/// body is shared by every copy of the op).
pub fn body_key(scan: &std::sync::Arc<Scan>) -> usize {
    std::sync::Arc::as_ptr(scan) as usize
}

impl Lowerer<'_> {
    /// `loc` as contiguous row-major memory (copied to the arena if it is
    /// a register, a splat or a strided view).
    fn contiguous(
        &mut self,
        fb: &mut FunctionBuilder,
        loc: &Loc,
        shape: &[usize],
        dtype: DType,
    ) -> Result<View, CodegenError> {
        if let Loc::Mem(v) = loc {
            if v.is_contiguous() {
                return Ok(v.clone());
            }
        }
        let dst = self.alloc(fb, shape, dtype);
        self.copy_into(fb, loc, &dst)?;
        Ok(dst)
    }

    /// The address of a view's first element.
    fn address(&mut self, fb: &mut FunctionBuilder, v: &View) -> Value {
        let bytes = v.offset * v.dtype.size_bytes() as i64;
        if bytes == 0 {
            v.ptr
        } else {
            fb.ins().iadd_imm_s(v.ptr, bytes)
        }
    }

    /// Emits the loop of `scan` over operands `args` (consts, initial
    /// carry, xs), writing its results into `out` (the scan's buffer).
    pub(crate) fn lower_scan(
        &mut self,
        fb: &mut FunctionBuilder,
        scan: &std::sync::Arc<Scan>,
        args: &[Loc],
        out: &View,
        node: &str,
    ) -> Result<(), CodegenError> {
        let body = self
            .state
            .bodies
            .get(&body_key(scan))
            .copied()
            .ok_or_else(|| CodegenError::Unsupported {
                node: node.to_string(),
                message: "internal error: the loop's body was not compiled".into(),
            })?;
        let ins = scan.body.inputs();
        let (nc, nk) = (scan.n_consts, scan.n_carry);
        let n_in = ins.len();
        let n_out = scan.n_results();
        let (offsets, _) = scan.layout().ok_or_else(|| CodegenError::Unsupported {
            node: node.to_string(),
            message: "the loop's results are larger than memory".into(),
        })?;
        let result_types = scan.result_types();
        let out_base = self.address(fb, out);
        // The body's pointer array and arena, in this function's arena.
        let array = self.alloc(fb, &[n_in + n_out + 1], DType::F64).ptr;
        let body_arena = if body.arena_bytes > 0 {
            self.alloc(fb, &[body.arena_bytes], DType::Bool).ptr
        } else {
            fb.ins().iconst(types::I64, 0)
        };
        let store = |fb: &mut FunctionBuilder, slot: usize, p: Value| {
            fb.ins().store(MemFlagsData::trusted(), p, array, (slot * 8) as i32);
        };
        store(fb, n_in + n_out, body_arena);
        // Consts: fixed for the whole loop.
        for k in 0..nc {
            let v = self.contiguous(fb, &args[k], &ins[k].ty.shape, ins[k].ty.dtype)?;
            let p = self.address(fb, &v);
            store(fb, k, p);
        }
        // Carry: two buffers, the first holding the initial carry.
        let mut cur = Vec::with_capacity(nk);
        let mut nxt = Vec::with_capacity(nk);
        for k in 0..nk {
            let ty = &ins[nc + k].ty;
            let a = self.alloc(fb, &ty.shape, ty.dtype);
            self.copy_into(fb, &args[nc + k], &a)?;
            let b = self.alloc(fb, &ty.shape, ty.dtype);
            cur.push(a.ptr);
            nxt.push(b.ptr);
        }
        // Stacked inputs and outputs: base addresses and row sizes.
        let mut xs = Vec::new();
        for (k, input) in ins.iter().enumerate().skip(nc + nk) {
            let mut shape = vec![scan.length];
            shape.extend_from_slice(&input.ty.shape);
            let v = self.contiguous(fb, &args[k], &shape, input.ty.dtype)?;
            let p = self.address(fb, &v);
            xs.push((k, p, input.ty.size_bytes() as i64));
        }
        let mut ys = Vec::new();
        for (j, ty) in result_types.iter().enumerate().skip(nk) {
            let p = fb.ins().iadd_imm_s(out_base, offsets[j] as i64);
            let row = ty.size_bytes().checked_div(scan.length).unwrap_or(0) as i64;
            ys.push((n_in + j, p, row));
        }
        let callee = self.module.declare_func_in_func(body.id, fb.func);

        // for i in 0..T: t = reverse ? T-1-i : i; body(array)
        let header = fb.create_block();
        let step = fb.create_block();
        let exit = fb.create_block();
        fb.append_block_param(header, types::I64);
        for _ in 0..2 * nk {
            fb.append_block_param(header, types::I64);
        }
        for _ in 0..nk {
            fb.append_block_param(exit, types::I64);
        }
        let zero = fb.ins().iconst(types::I64, 0);
        let mut entry_args: Vec<cranelift_codegen::ir::BlockArg> = vec![zero.into()];
        entry_args.extend(
            cur.iter()
                .chain(&nxt)
                .map(|&v| cranelift_codegen::ir::BlockArg::from(v)),
        );
        fb.ins().jump(header, &entry_args);

        fb.switch_to_block(header);
        let params = fb.block_params(header).to_vec();
        let i = params[0];
        let (cur, nxt) = (params[1..1 + nk].to_vec(), params[1 + nk..].to_vec());
        let done = fb.ins().icmp_imm_s(IntCC::Equal, i, scan.length as i64);
        let cur_args: Vec<cranelift_codegen::ir::BlockArg> = cur.iter().map(|&v| v.into()).collect();
        fb.ins().brif(done, exit, &cur_args, step, &[]);

        fb.switch_to_block(step);
        let t = if scan.reverse {
            let last = fb.ins().iconst(types::I64, scan.length as i64 - 1);
            fb.ins().isub(last, i)
        } else {
            i
        };
        for k in 0..nk {
            store(fb, nc + k, cur[k]);
            store(fb, n_in + k, nxt[k]);
        }
        for &(slot, base, row) in xs.iter().chain(&ys) {
            let off = fb.ins().imul_imm_s(t, row);
            let p = fb.ins().iadd(base, off);
            store(fb, slot, p);
        }
        fb.ins().call(callee, &[array]);
        let next_i = fb.ins().iadd_imm_s(i, 1);
        let mut back: Vec<cranelift_codegen::ir::BlockArg> = vec![next_i.into()];
        back.extend(
            nxt.iter()
                .chain(&cur)
                .map(|&v| cranelift_codegen::ir::BlockArg::from(v)),
        );
        fb.ins().jump(header, &back);

        fb.switch_to_block(exit);
        let finals = fb.block_params(exit).to_vec();
        for k in 0..nk {
            let ty = &ins[nc + k].ty;
            let strides: Vec<isize> = row_major_strides(&ty.shape).iter().map(|&s| s as isize).collect();
            let src = View {
                ptr: finals[k],
                offset: 0,
                shape: ty.shape.clone(),
                strides: strides.clone(),
                dtype: ty.dtype,
            };
            let dst_ptr = fb.ins().iadd_imm_s(out_base, offsets[k] as i64);
            let dst = View {
                ptr: dst_ptr,
                offset: 0,
                shape: ty.shape.clone(),
                strides,
                dtype: ty.dtype,
            };
            self.copy_into(fb, &Loc::Mem(src), &dst)?;
        }
        Ok(())
    }
}
