//! Lowering a loop (`scan`) to one native loop.
//!
//! The body is compiled first as a function of its own (the JIT does this
//! before the function that holds the loop, see `jit.rs`), with the same
//! entry ABI as every graph: one pointer to `[inputs…, outputs…, arena]`.
//! The loop builds that array once in the arena, then per step writes the
//! four pointers that move (this step's carry in and out, row `t` of each
//! `xs` and `ys`) and calls the body. The carry lives in two buffers that
//! swap roles each step (block parameters of the loop header), so a step
//! never reads a carry it is writing. A small body is instead lowered
//! into the loop itself, taking those pointers as values (no array
//! written per step) and its one-element carries in registers. Compile
//! time is independent of the trip count.

use super::{Loc, Lowerer, View};
use crate::error::CodegenError;
use cranelift_codegen::ir::{condcodes::IntCC, types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::Module;
use wengert_ir::{row_major_strides, DType, Op, Scan};

/// A compiled loop body: its function and what a call of it needs.
#[derive(Clone, Copy, Debug)]
pub struct BodyFn {
    pub id: cranelift_module::FuncId,
    /// Bytes of arena the body uses (given to it as its own region).
    pub arena_bytes: usize,
    /// Whether the body runs work on the pool (`ModuleState::uses_pool`).
    pub pooled: bool,
}

/// Bodies of at most this many nodes are lowered into their loop rather
/// than called (the limit keeps one function from growing past what
/// Cranelift compiles in linear time, see `Segments`).
pub const INLINE_BODY_NODES: usize = 512;

/// An inlined body with at most this many inputs and outputs gets their
/// pointers as values of the loop (`Segments::pointers`); past it, the
/// loop writes them to the body's pointer array each step (one value per
/// pointer alive across the loop is what register allocation handles
/// well only in small numbers).
const INLINE_POINTERS: usize = 64;

/// Whether the loop's body is lowered into the loop (no call per step).
/// A loop that recomputes states runs its bodies from the runtime's
/// schedule, so those are always functions.
pub fn inline_body(scan: &Scan) -> bool {
    scan.regen.is_none() && scan.body.len() <= INLINE_BODY_NODES
}

/// Where a loop's carry goes each step (see `lower_scan`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CarryMode {
    /// Two buffers that swap roles.
    PingPong,
    /// The body's next carry is the carry: nothing moves.
    Same,
    /// The body's next carry is row `t` of its stacked input (by body
    /// input index): the carry points there.
    FromXs(usize),
    /// Stacked result `j` is the carry at each step (a trajectory): the
    /// carry lives in its rows, the last step writes the second buffer.
    Rows(usize),
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
        direct: &[Option<Value>],
        node: &str,
    ) -> Result<(), CodegenError> {
        if scan.regen.is_some() {
            return self.lower_scan_revolve(fb, scan, args, out, direct, node);
        }
        // A small body is lowered into the loop itself (`None`); a large
        // one is a function of its own that each step calls.
        let body = if inline_body(scan) {
            None
        } else {
            Some(
                self.state
                    .bodies
                    .get(&body_key(scan))
                    .copied()
                    .ok_or_else(|| CodegenError::Unsupported {
                        node: node.to_string(),
                        message: "internal error: the loop's body was not compiled".into(),
                    })?,
            )
        };
        // A called body's threaded work makes this function's too.
        self.state.uses_pool |= body.is_some_and(|b| b.pooled);
        let ins = scan.body.inputs();
        let (nc, nk) = (scan.n_consts, scan.n_carry);
        let n_in = ins.len();
        let (offsets, _) = scan.layout().ok_or_else(|| CodegenError::Unsupported {
            node: node.to_string(),
            message: "the loop's results are larger than memory".into(),
        })?;
        let result_types = scan.result_types();
        let out_base = self.address(fb, out);
        // Outputs that are the body's own inputs cost a copy per step; an
        // inlined body leaves three kinds of them to the loop: a next carry
        // that is the carry itself (nothing to do), a next carry that is
        // row `t` of an input (point at the row), and a stacked result
        // that is the carry (the trajectory: the carry's buffers are the
        // result's rows, so the carry is stored where it is read).
        let mut modes = vec![CarryMode::PingPong; nk];
        let outs = scan.body.outputs();
        let mut dropped = vec![false; outs.len()];
        if body.is_none() {
            for (oi, o) in outs.iter().enumerate() {
                let Op::Input { index: ii } = *scan.body.op(o.node) else {
                    continue;
                };
                if oi < nk {
                    if ii == nc + oi {
                        modes[oi] = CarryMode::Same;
                        dropped[oi] = true;
                    } else if ii >= nc + nk {
                        modes[oi] = CarryMode::FromXs(ii);
                        dropped[oi] = true;
                    }
                } else if (nc..nc + nk).contains(&ii) && scan.length > 0 && modes[ii - nc] == CarryMode::PingPong {
                    modes[ii - nc] = CarryMode::Rows(oi);
                    dropped[oi] = true;
                }
            }
        }
        let stripped;
        let lowered_body: &wengert_ir::Graph = if dropped.iter().any(|&d| d) {
            let mut b = scan.body.clone();
            b.clear_outputs();
            for (o, _) in outs.iter().zip(&dropped).filter(|(_, &d)| !d) {
                b.add_output(&o.name, o.node).map_err(|e| CodegenError::Unsupported {
                    node: node.to_string(),
                    message: format!("internal error: {e}"),
                })?;
            }
            stripped = b;
            &stripped
        } else {
            &scan.body
        };
        // The array slot of each body output the body still writes.
        let mut out_slot: Vec<Option<usize>> = vec![None; outs.len()];
        let mut kept = 0;
        for (oi, slot) in out_slot.iter_mut().enumerate() {
            if !dropped[oi] {
                *slot = Some(n_in + kept);
                kept += 1;
            }
        }
        let n_out = kept;
        // An inlined body with few enough pointers takes them as values:
        // the loop's per-step stores into the pointer array and the body's
        // reloads (half the instructions of seed case 8's backward step)
        // go away.
        let given = body.is_none() && n_in + n_out <= INLINE_POINTERS;
        // The body's pointer array and arena, in this function's arena.
        let array = self.alloc(fb, &[n_in + n_out + 1], DType::F64).ptr;
        let store = |fb: &mut FunctionBuilder, slot: usize, p: Value| {
            fb.ins().store(MemFlagsData::trusted(), p, array, (slot * 8) as i32);
        };
        // An inlined body's arena is placed once its lowering says how
        // large it is (see `pre` below).
        if let Some(body) = body {
            let body_arena = if body.arena_bytes > 0 {
                self.alloc(fb, &[body.arena_bytes], DType::Bool).ptr
            } else {
                fb.ins().iconst(types::I64, 0)
            };
            store(fb, n_in + n_out, body_arena);
        }
        // Consts: fixed for the whole loop.
        let mut const_ptrs = Vec::with_capacity(nc);
        for k in 0..nc {
            let v = self.contiguous(fb, &args[k], &ins[k].ty.shape, ins[k].ty.dtype)?;
            let p = self.address(fb, &v);
            if !given {
                store(fb, k, p);
            }
            const_ptrs.push(p);
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
        // Where result `j` goes: its output buffer, or its place in `out`.
        let result_at = |fb: &mut FunctionBuilder, j: usize| match direct.get(j).copied().flatten() {
            Some(p) => p,
            None => fb.ins().iadd_imm_s(out_base, offsets[j] as i64),
        };
        let mut ys = Vec::new();
        let mut ys_base: Vec<Option<(Value, i64)>> = vec![None; result_types.len()];
        for (j, ty) in result_types.iter().enumerate().skip(nk) {
            let p = result_at(fb, j);
            let row = ty.size_bytes().checked_div(scan.length).unwrap_or(0) as i64;
            ys_base[j] = Some((p, row));
            if let Some(slot) = out_slot[j] {
                ys.push((slot, p, row));
            }
        }
        let xs_row = |k: usize| xs.iter().find(|&&(slot, _, _)| slot == k).map(|&(_, p, row)| (p, row));
        // The row of step i (0 first) of a stacked value.
        let row_t = |fb: &mut FunctionBuilder, i: Value, plus: i64| -> Value {
            let ii = fb.ins().iadd_imm_s(i, plus);
            if scan.reverse {
                let last = fb.ins().iconst(types::I64, scan.length as i64 - 1);
                fb.ins().isub(last, ii)
            } else {
                ii
            }
        };
        // Carry: two buffers, the first holding the initial carry (a
        // trajectory carry starts in its first row; the second buffer
        // takes its value after the last step).
        let mut cur = Vec::with_capacity(nk);
        let mut nxt = Vec::with_capacity(nk);
        for k in 0..nk {
            let ty = &ins[nc + k].ty;
            let a = self.alloc(fb, &ty.shape, ty.dtype);
            let b = self.alloc(fb, &ty.shape, ty.dtype);
            let start = match modes[k] {
                CarryMode::Rows(j) => {
                    let (base, row) = ys_base[j].ok_or_else(|| CodegenError::Unsupported {
                        node: node.to_string(),
                        message: "internal error: a trajectory without rows".into(),
                    })?;
                    let zero = fb.ins().iconst(types::I64, 0);
                    let t0 = row_t(fb, zero, 0);
                    let off = fb.ins().imul_imm_s(t0, row);
                    fb.ins().iadd(base, off)
                }
                CarryMode::PingPong | CarryMode::Same | CarryMode::FromXs(_) => a.ptr,
            };
            let first = View {
                ptr: start,
                offset: 0,
                shape: ty.shape.clone(),
                strides: row_major_strides(&ty.shape).iter().map(|&s| s as isize).collect(),
                dtype: ty.dtype,
            };
            self.copy_into(fb, &args[nc + k], &first)?;
            cur.push(start);
            nxt.push(b.ptr);
        }
        let callee = body.map(|b| self.module.declare_func_in_func(b.id, fb.func));
        // One-element float carries of an inlined body also travel in a
        // register (a block parameter): the body reads the register, not
        // the buffer it also writes (the trajectory's rows and the final
        // carry still come from memory). Through memory, each step's
        // carry went store → reload on the loop's critical path: 8% of
        // seed case 8's gradient (1,000 dependent `tanh` steps).
        let reg: Vec<bool> = (0..nk)
            .map(|k| {
                let ty = &ins[nc + k].ty;
                callee.is_none()
                    && ty.num_elements() == 1
                    && matches!(ty.dtype, DType::F32 | DType::F64)
                    && matches!(modes[k], CarryMode::PingPong | CarryMode::Rows(_))
            })
            .collect();
        let reg_type = |k: usize| {
            if ins[nc + k].ty.dtype == DType::F32 {
                types::F32
            } else {
                types::F64
            }
        };
        let mut vals: Vec<Value> = Vec::new();
        for k in (0..nk).filter(|&k| reg[k]) {
            let ty = &ins[nc + k].ty;
            let first = View {
                ptr: cur[k],
                offset: 0,
                shape: ty.shape.clone(),
                strides: row_major_strides(&ty.shape).iter().map(|&s| s as isize).collect(),
                dtype: ty.dtype,
            };
            vals.push(self.load_at(fb, &first, 0));
        }
        let n_reg = vals.len();
        // A register carry that swaps buffers is read by the next step
        // from its register alone: the body need not store it, and the
        // loop writes the last one to the result after leaving.
        let register_only: Vec<bool> = {
            let mut r = vec![false; n_out];
            for k in (0..nk).filter(|&k| reg[k] && modes[k] == CarryMode::PingPong) {
                if let Some(slot) = out_slot[k] {
                    r[slot - n_in] = true;
                }
            }
            r
        };
        // The body's input node of each carry.
        let carry_node = |k: usize| lowered_body.inputs()[nc + k].node;

        // An unrolled loop runs `u` steps per iteration while at least `u`
        // remain, then the remainder loop one at a time:
        //   for i in (0..T).step_by(u) while i + u <= T: u × step(i + j)
        //   for i in i..T: step(i)
        // where step(i) is row t = reverse ? T-1-i : i, body(array).
        let u = scan.unroll.clamp(1, scan.length.max(1));
        let loops: Vec<usize> = if u > 1 { vec![u, 1] } else { vec![1] };
        let exit = fb.create_block();
        for _ in 0..nk {
            fb.append_block_param(exit, types::I64);
        }
        for k in (0..nk).filter(|&k| reg[k]) {
            fb.append_block_param(exit, reg_type(k));
        }
        let headers: Vec<_> = loops
            .iter()
            .map(|_| {
                let h = fb.create_block();
                for _ in 0..1 + 2 * nk {
                    fb.append_block_param(h, types::I64);
                }
                for k in (0..nk).filter(|&k| reg[k]) {
                    fb.append_block_param(h, reg_type(k));
                }
                h
            })
            .collect();
        let zero = fb.ins().iconst(types::I64, 0);
        let block_args = |i: Value, a: &[Value], b: &[Value], r: &[Value]| -> Vec<cranelift_codegen::ir::BlockArg> {
            std::iter::once(i)
                .chain(a.iter().copied())
                .chain(b.iter().copied())
                .chain(r.iter().copied())
                .map(cranelift_codegen::ir::BlockArg::from)
                .collect()
        };
        let entry_args = block_args(zero, &cur, &nxt, &vals);
        // With an inlined body, the loop is entered through `pre`, which
        // places the body's arena (filled in after the body is lowered).
        let pre = fb.create_block();
        fb.ins().jump(pre, &[]);
        let mut inline_arena = 0usize;
        for (n, (&steps, &header)) in loops.iter().zip(&headers).enumerate() {
            let step = fb.create_block();
            fb.switch_to_block(header);
            let params = fb.block_params(header).to_vec();
            let i = params[0];
            let (mut cur, mut nxt) = (params[1..1 + nk].to_vec(), params[1 + nk..1 + 2 * nk].to_vec());
            let mut vals = params[1 + 2 * nk..].to_vec();
            // Leave when fewer than `steps` steps remain: to the remainder
            // loop, or out.
            let last_ok = scan.length as i64 - steps as i64;
            let done = fb.ins().icmp_imm_s(IntCC::SignedGreaterThan, i, last_ok);
            let leave = block_args(i, &cur, &nxt, &vals);
            match headers.get(n + 1) {
                Some(&next) => fb.ins().brif(done, next, &leave, step, &[]),
                None => {
                    let to_exit: Vec<_> = leave[1..1 + nk].iter().chain(&leave[1 + 2 * nk..]).copied().collect();
                    fb.ins().brif(done, exit, &to_exit, step, &[])
                }
            };
            fb.switch_to_block(step);
            for j in 0..steps {
                let ij = if j == 0 { i } else { fb.ins().iadd_imm_s(i, j as i64) };
                let t = if scan.reverse {
                    let last = fb.ins().iconst(types::I64, scan.length as i64 - 1);
                    fb.ins().isub(last, ij)
                } else {
                    ij
                };
                // The body's pointers, when it takes them as values.
                let mut ptrs: Vec<Option<Value>> = Vec::new();
                if given {
                    ptrs = const_ptrs.iter().copied().map(Some).collect();
                    ptrs.resize(n_in + n_out, None);
                }
                // Where each carry goes this step.
                let mut next = Vec::with_capacity(nk);
                for k in 0..nk {
                    let to = match modes[k] {
                        CarryMode::PingPong => nxt[k],
                        CarryMode::Same => cur[k],
                        CarryMode::FromXs(input) => {
                            let (base, row) = xs_row(input).ok_or_else(|| CodegenError::Unsupported {
                                node: node.to_string(),
                                message: "internal error: a carry from an input that is not stacked".into(),
                            })?;
                            let off = fb.ins().imul_imm_s(t, row);
                            fb.ins().iadd(base, off)
                        }
                        CarryMode::Rows(jr) => {
                            let (base, row) = ys_base[jr].ok_or_else(|| CodegenError::Unsupported {
                                node: node.to_string(),
                                message: "internal error: a trajectory without rows".into(),
                            })?;
                            let tn = row_t(fb, ij, 1);
                            let off = fb.ins().imul_imm_s(tn, row);
                            let in_row = fb.ins().iadd(base, off);
                            let last = fb.ins().icmp_imm_s(IntCC::Equal, ij, scan.length as i64 - 1);
                            fb.ins().select(last, nxt[k], in_row)
                        }
                    };
                    if given {
                        ptrs[nc + k] = Some(cur[k]);
                        if let Some(slot) = out_slot[k] {
                            ptrs[slot] = Some(to);
                        }
                    } else {
                        store(fb, nc + k, cur[k]);
                        if let Some(slot) = out_slot[k] {
                            store(fb, slot, to);
                        }
                    }
                    next.push(to);
                }
                for &(slot, base, row) in xs.iter().chain(&ys) {
                    let off = fb.ins().imul_imm_s(t, row);
                    let p = fb.ins().iadd(base, off);
                    if given {
                        ptrs[slot] = Some(p);
                    } else {
                        store(fb, slot, p);
                    }
                }
                match callee {
                    Some(callee) => {
                        fb.ins().call(callee, &[array]);
                    }
                    None => {
                        // Each copy is lowered afresh; they run one after
                        // another in one arena region.
                        let mut seg = super::Segments::new(lowered_body, usize::MAX);
                        for (r, k) in (0..nk).filter(|&k| reg[k]).enumerate() {
                            seg.locs[carry_node(k).index()] = Some(Loc::Reg(vals[r]));
                        }
                        if n_reg > 0 {
                            seg.output_regs = Some(vec![None; lowered_body.outputs().len()]);
                            seg.register_only = register_only.clone();
                        }
                        if given {
                            let all: Option<Vec<Value>> = ptrs.iter().copied().collect();
                            seg.pointers = Some(all.ok_or_else(|| CodegenError::Unsupported {
                                node: node.to_string(),
                                message: "internal error: a loop body's pointer was not set".into(),
                            })?);
                        }
                        let lowered = super::lower_into(
                            &mut *self.module,
                            &mut *self.state,
                            fb,
                            lowered_body,
                            super::Abi::PointerArray,
                            &[array],
                            &mut seg,
                            true,
                        )?;
                        inline_arena = inline_arena.max(lowered.arena_bytes);
                        let regs = seg.output_regs.take().unwrap_or_default();
                        for (r, k) in (0..nk).filter(|&k| reg[k]).enumerate() {
                            let v = out_slot[k].and_then(|slot| regs.get(slot - n_in).copied().flatten());
                            vals[r] = v.ok_or_else(|| CodegenError::Unsupported {
                                node: node.to_string(),
                                message: "internal error: a register carry without its value".into(),
                            })?;
                        }
                    }
                }
                for k in 0..nk {
                    if modes[k] == CarryMode::PingPong {
                        nxt[k] = cur[k];
                    }
                    cur[k] = next[k];
                }
            }
            let next_i = fb.ins().iadd_imm_s(i, steps as i64);
            let back = block_args(next_i, &cur, &nxt, &vals);
            fb.ins().jump(header, &back);
        }

        fb.switch_to_block(pre);
        if callee.is_none() {
            let body_arena = if inline_arena > 0 {
                self.alloc(fb, &[inline_arena], DType::Bool).ptr
            } else {
                fb.ins().iconst(types::I64, 0)
            };
            store(fb, n_in + n_out, body_arena);
        }
        fb.ins().jump(headers[0], &entry_args);

        fb.switch_to_block(exit);
        let finals = fb.block_params(exit).to_vec();
        let mut final_regs = finals[nk..].iter();
        for k in 0..nk {
            let ty = &ins[nc + k].ty;
            let reg_value = if reg[k] { final_regs.next().copied() } else { None };
            if let (Some(v), CarryMode::PingPong) = (reg_value, modes[k]) {
                // Only the register holds the last carry.
                let dst = result_at(fb, k);
                fb.ins().store(MemFlagsData::trusted(), v, dst, 0);
                continue;
            }
            let strides: Vec<isize> = row_major_strides(&ty.shape).iter().map(|&s| s as isize).collect();
            let src = View {
                ptr: finals[k],
                offset: 0,
                shape: ty.shape.clone(),
                strides: strides.clone(),
                dtype: ty.dtype,
            };
            let dst_ptr = result_at(fb, k);
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

    /// Emits a backward loop that recomputes the forward's states under
    /// the binomial schedule: it lays out the slots, the work states, both
    /// bodies' pointer arrays and a descriptor in the arena, and calls
    /// `wengert_revolve` (`wengert_runtime::revolve`), which runs the
    /// schedule by calling the two compiled bodies.
    fn lower_scan_revolve(
        &mut self,
        fb: &mut FunctionBuilder,
        scan: &std::sync::Arc<Scan>,
        args: &[Loc],
        out: &View,
        direct: &[Option<Value>],
        node: &str,
    ) -> Result<(), CodegenError> {
        let unsupported = |message: &str| CodegenError::Unsupported {
            node: node.to_string(),
            message: message.to_string(),
        };
        let regen = scan
            .regen
            .as_ref()
            .ok_or_else(|| unsupported("internal error: no recomputed loop"))?;
        let f = &regen.forward;
        let bwd = self.state.bodies.get(&body_key(scan)).copied();
        let fwd = self.state.bodies.get(&body_key(f)).copied();
        let (Some(bwd), Some(fwd)) = (bwd, fwd) else {
            return Err(unsupported("internal error: the loop's bodies were not compiled"));
        };
        self.state.uses_pool |= bwd.pooled || fwd.pooled;
        let (layout, _) = scan
            .layout()
            .ok_or_else(|| unsupported("the loop's results are larger than memory"))?;
        let results = scan.result_types();
        let fresults = f.result_types();
        let out_base = self.address(fb, out);
        let fins = f.body.inputs();
        let bins = scan.body.inputs();
        let (nfc, nfk) = (f.n_consts, f.n_carry);
        let (nbc, nbk) = (scan.n_consts, scan.n_carry);
        let own = scan.n_operands() - f.n_operands();
        let fargs = &args[own..];
        let t_len = scan.length;
        let word = |fb: &mut FunctionBuilder, desc: Value, i: usize, v: Value| {
            fb.ins().store(MemFlagsData::trusted(), v, desc, (i * 8) as i32);
        };
        let imm = |fb: &mut FunctionBuilder, v: i64| fb.ins().iconst(types::I64, v);

        // The packed state: each forward carry at a 64-byte aligned offset.
        let mut offsets = Vec::with_capacity(nfk);
        let mut state_bytes = 0usize;
        for k in 0..nfk {
            offsets.push(state_bytes);
            state_bytes += fins[nfc + k].ty.size_bytes().div_ceil(64) * 64;
        }
        let state_bytes = state_bytes.max(64);
        let slots = regen.slot_count(t_len);
        let slot_base = self.alloc(fb, &[slots * state_bytes], DType::Bool).ptr;
        let work_a = self.alloc(fb, &[state_bytes], DType::Bool).ptr;
        let work_b = self.alloc(fb, &[state_bytes], DType::Bool).ptr;

        // The forward body's array: consts, arena; carries and rows per step.
        let fn_in = fins.len();
        let fn_out = f.n_results();
        let farray = self.alloc(fb, &[fn_in + fn_out + 1], DType::F64).ptr;
        let farena = if fwd.arena_bytes > 0 {
            self.alloc(fb, &[fwd.arena_bytes], DType::Bool).ptr
        } else {
            imm(fb, 0)
        };
        fb.ins()
            .store(MemFlagsData::trusted(), farena, farray, ((fn_in + fn_out) * 8) as i32);
        for k in 0..nfc {
            let v = self.contiguous(fb, &fargs[k], &fins[k].ty.shape, fins[k].ty.dtype)?;
            let p = self.address(fb, &v);
            fb.ins().store(MemFlagsData::trusted(), p, farray, (k * 8) as i32);
        }
        // The initial state into slot 0.
        for k in 0..nfk {
            let ty = &fins[nfc + k].ty;
            let p = fb.ins().iadd_imm_s(slot_base, offsets[k] as i64);
            let dst = View {
                ptr: p,
                offset: 0,
                shape: ty.shape.clone(),
                strides: row_major_strides(&ty.shape).iter().map(|&s| s as isize).collect(),
                dtype: ty.dtype,
            };
            self.copy_into(fb, &fargs[nfc + k], &dst)?;
        }
        // Forward rows: its xs, and scratch rows for its ys (not needed).
        let mut frows: Vec<(usize, Value, usize)> = Vec::new();
        for (k, input) in fins.iter().enumerate().skip(nfc + nfk) {
            let mut shape = vec![t_len];
            shape.extend_from_slice(&input.ty.shape);
            let v = self.contiguous(fb, &fargs[k], &shape, input.ty.dtype)?;
            let p = self.address(fb, &v);
            frows.push((k, p, input.ty.size_bytes()));
        }
        for (j, ty) in fresults.iter().enumerate().skip(nfk) {
            let row = ty.size_bytes().checked_div(t_len).unwrap_or(0);
            let scratch = self.alloc(fb, &[row.max(1)], DType::Bool).ptr;
            frows.push((fn_in + j, scratch, 0));
        }

        // The backward body's array: consts, arena; the rest per step.
        let bn_in = bins.len();
        let bn_out = scan.n_results();
        let barray = self.alloc(fb, &[bn_in + bn_out + 1], DType::F64).ptr;
        let barena = if bwd.arena_bytes > 0 {
            self.alloc(fb, &[bwd.arena_bytes], DType::Bool).ptr
        } else {
            imm(fb, 0)
        };
        fb.ins()
            .store(MemFlagsData::trusted(), barena, barray, ((bn_in + bn_out) * 8) as i32);
        for k in 0..nbc {
            let v = self.contiguous(fb, &args[k], &bins[k].ty.shape, bins[k].ty.dtype)?;
            let p = self.address(fb, &v);
            fb.ins().store(MemFlagsData::trusted(), p, barray, (k * 8) as i32);
        }
        // Backward carries: buffer A holds the initial value.
        let mut bcarries = Vec::with_capacity(nbk);
        for k in 0..nbk {
            let ty = &bins[nbc + k].ty;
            let a = self.alloc(fb, &ty.shape, ty.dtype);
            self.copy_into(fb, &args[nbc + k], &a)?;
            let b = self.alloc(fb, &ty.shape, ty.dtype);
            let result = match direct.get(k).copied().flatten() {
                Some(p) => p,
                None => fb.ins().iadd_imm_s(out_base, layout[k] as i64),
            };
            bcarries.push((nbc + k, bn_in + k, a.ptr, b.ptr, result, ty.size_bytes()));
        }
        // Backward rows: its own xs (after the recomputed states) and ys.
        let first_state = nbc + nbk;
        let n_states = nfk;
        let mut brows: Vec<(usize, Value, usize)> = Vec::new();
        for (k, input) in bins.iter().enumerate().skip(first_state + n_states) {
            let operand = k - n_states;
            let mut shape = vec![t_len];
            shape.extend_from_slice(&input.ty.shape);
            let v = self.contiguous(fb, &args[operand], &shape, input.ty.dtype)?;
            let p = self.address(fb, &v);
            brows.push((k, p, input.ty.size_bytes()));
        }
        for (j, ty) in results.iter().enumerate().skip(nbk) {
            let p = match direct.get(j).copied().flatten() {
                Some(p) => p,
                None => fb.ins().iadd_imm_s(out_base, layout[j] as i64),
            };
            let row = ty.size_bytes().checked_div(t_len).unwrap_or(0);
            brows.push((bn_in + j, p, row));
        }

        // The descriptor (see `wengert_runtime::revolve::wengert_revolve`).
        let fref = self.module.declare_func_in_func(fwd.id, fb.func);
        let bref = self.module.declare_func_in_func(bwd.id, fb.func);
        let faddr = fb.ins().func_addr(types::I64, fref);
        let baddr = fb.ins().func_addr(types::I64, bref);
        let mut words: Vec<Value> = vec![
            imm(fb, t_len as i64),
            imm(fb, slots as i64),
            imm(fb, f.reverse as i64),
            imm(fb, state_bytes as i64),
            slot_base,
            work_a,
            work_b,
            faddr,
            farray,
            baddr,
            barray,
            imm(fb, nfk as i64),
            imm(fb, frows.len() as i64),
            imm(fb, nbk as i64),
            imm(fb, brows.len() as i64),
            imm(fb, regen.every as i64),
        ];
        debug_assert_eq!(words.len(), wengert_runtime::revolve::HEADER);
        for (k, &offset) in offsets.iter().enumerate() {
            for v in [offset, nfc + k, fn_in + k, first_state + k] {
                words.push(imm(fb, v as i64));
            }
        }
        // A row: its array slot, base address and bytes.
        let rows = |fb: &mut FunctionBuilder, words: &mut Vec<Value>, rows: &[(usize, Value, usize)]| {
            for &(slot, base, bytes) in rows {
                words.extend([imm(fb, slot as i64), base, imm(fb, bytes as i64)]);
            }
        };
        rows(fb, &mut words, &frows);
        for &(cin, cout, a, b, result, bytes) in &bcarries {
            words.extend([
                imm(fb, cin as i64),
                imm(fb, cout as i64),
                a,
                b,
                result,
                imm(fb, bytes as i64),
            ]);
        }
        rows(fb, &mut words, &brows);
        let desc = self.alloc(fb, &[words.len()], DType::F64).ptr;
        for (i, &v) in words.iter().enumerate() {
            word(fb, desc, i, v);
        }
        let revolve = self.import(fb, wengert_runtime::functions::RuntimeFn::Revolve);
        fb.ins().call(revolve, &[desc]);
        Ok(())
    }
}
