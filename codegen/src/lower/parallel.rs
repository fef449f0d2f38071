//! Parallel kernels: a kernel whose outer axis can be cut into chunks that
//! write disjoint memory is emitted as a function of its own over a range
//! of that axis (its slots loaded from an array the caller fills), and the
//! function being built calls the runtime's `parallel_for`, which runs the
//! chunks on the shared pool (`wengert_runtime::pool`).
//!
//! Chunks are cut by the data size, never by the thread count, and each
//! output element is written by exactly one chunk, in the order a serial
//! kernel would write it: results are the same for every thread count.

use super::*;
use crate::kernel::Bound;
use cranelift_codegen::ir::{StackSlotData, StackSlotKind};

/// Kernels of less work than this (elements × `Kernel::body_cost`) stay
/// inline and serial: waking the pool's workers costs microseconds to tens
/// of microseconds.
pub const PARALLEL_KERNEL_WORK: usize = 1 << 19;

/// Work per chunk (elements × `Kernel::body_cost`): a chunk's call and
/// loop set-up are cheap beside it, and a kernel just above the threshold
/// still makes eight chunks.
const CHUNK_WORK: usize = PARALLEL_KERNEL_WORK / 8;

/// Elements per row a rank-1 kernel is cut into (a rank-1 kernel becomes rows
/// of this length): large enough that a chunk's call is cheap beside its
/// work, small enough to balance two to a few dozen threads.
const CHUNK_ELEMENTS: usize = 1 << 15;

impl Lowerer<'_> {
    /// Emits `k` (simplified) in parallel if it pays and is safe; returns
    /// the kernel back if it is to be emitted serially.
    pub(crate) fn try_emit_parallel(
        &mut self,
        fb: &mut FunctionBuilder,
        k: BoundKernel,
    ) -> Result<Option<BoundKernel>, CodegenError> {
        let elements: usize = k.shape.iter().product();
        let work = elements.saturating_mul(k.body_cost().max(1));
        // Every store must move with the outer axis (a store of stride 0
        // there accumulates across rows: a reduction over that axis, which
        // chunks would race on).
        // And an operand that reads a buffer a store writes (in place)
        // must read exactly the elements it writes, so that no chunk reads
        // what another writes (the memory plan only works in place with
        // equal layouts; this keeps the condition local).
        let disjoint = k.stores.iter().all(|s| s.strides[0] != 0)
            && k.operands.iter().all(|o| match o.src {
                Src::Mem { buf, offset } => k
                    .stores
                    .iter()
                    .filter(|s| s.buf == buf)
                    .all(|s| s.offset == offset && s.strides == o.strides),
                Src::Splat(_) => true,
            });
        if self.state.threads <= 1 || work < PARALLEL_KERNEL_WORK || !disjoint {
            return Ok(Some(k));
        }
        let (main, tail) = if k.shape.len() == 1 {
            match row_length(k.shape[0]) {
                Some(len) => split_rows(k, len),
                None => return Ok(Some(k)),
            }
        } else if k.shape[0] >= 2 {
            (k, None)
        } else {
            return Ok(Some(k));
        };
        let inner: usize = main.shape[1..].iter().product();
        let rows = main.shape[0];
        let cost = main.body_cost().max(1);
        let chunk = CHUNK_WORK.div_ceil(inner.max(1) * cost).clamp(1, rows);
        let id = self.define_range_fn(fb, &main)?;
        if let Some(log) = &mut self.state.kernel_log {
            use std::fmt::Write;
            let _ = writeln!(
                log,
                "  parallel: rows of axis 0 in {} chunks of {chunk}, up to {} threads",
                rows.div_ceil(chunk),
                self.state.threads
            );
        }
        // The slot array: buffer pointers, then scalars, 8 bytes each.
        let n = main.bufs.len() + main.scalars.len();
        let slot = fb.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (8 * n.max(1)) as u32,
            3,
        ));
        for (i, &v) in main.bufs.iter().chain(&main.scalars).enumerate() {
            fb.ins().stack_store(types::I64, v, slot, (8 * i) as i32);
        }
        let slots = fb.ins().stack_addr(types::I64, slot, 0);
        let fref = self.module.declare_func_in_func(id, fb.func);
        let faddr = fb.ins().func_addr(types::I64, fref);
        let rows_v = fb.ins().iconst(types::I64, rows as i64);
        let chunk_v = fb.ins().iconst(types::I64, chunk as i64);
        let threads_v = fb.ins().iconst(types::I64, self.state.threads as i64);
        let pf = self.import(fb, RuntimeFn::ParallelFor);
        self.state.uses_pool = true;
        fb.ins().call(pf, &[faddr, slots, rows_v, chunk_v, threads_v]);
        if let Some(t) = tail {
            let mut idx = Vec::new();
            self.emit_outer(fb, &t, &mut idx);
        }
        Ok(None)
    }

    /// Defines `k` as a function `(slots, start, end)` running rows
    /// `start..end` of its outer axis, its slots loaded from `slots` (the
    /// types of the scalar slots are those of `k`'s values in `fb`).
    fn define_range_fn(&mut self, fb: &FunctionBuilder, k: &BoundKernel) -> Result<FuncId, CodegenError> {
        let mut sig = self.module.make_signature();
        sig.params.extend([AbiParam::new(types::I64); 3]);
        let id = self
            .module
            .declare_anonymous_function(&sig)
            .map_err(|e| CodegenError::Cranelift(e.to_string()))?;
        let scalar_types: Vec<Type> = k.scalars.iter().map(|&v| fb.func.dfg.value_type(v)).collect();
        let mut ctx = self.module.make_context();
        ctx.func.signature = sig;
        let mut fctx = cranelift_frontend::FunctionBuilderContext::new();
        // The function has its own imports and caches.
        let imports = std::mem::take(&mut self.func_imports);
        let helpers = std::mem::take(&mut self.helper_refs);
        let sincos = std::mem::take(&mut self.sincos_cache);
        {
            let mut kb = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let block = kb.create_block();
            kb.append_block_params_for_function_params(block);
            kb.switch_to_block(block);
            let params = kb.block_params(block).to_vec();
            let (slots, start, end) = (params[0], params[1], params[2]);
            let trusted = MemFlagsData::trusted();
            let bufs: Vec<Value> = (0..k.bufs.len())
                .map(|i| kb.ins().load(types::I64, trusted, slots, (8 * i) as i32))
                .collect();
            let scalars: Vec<Value> = scalar_types
                .iter()
                .enumerate()
                .map(|(j, &ty)| kb.ins().load(ty, trusted, slots, (8 * (k.bufs.len() + j)) as i32))
                .collect();
            let bound = Bound {
                kernel: k.kernel.clone(),
                bufs,
                scalars,
            };
            let (var, i, header, exit) = Self::begin_loop_between(&mut kb, start, end);
            let mut idx = vec![i];
            self.emit_outer(&mut kb, &bound, &mut idx);
            self.end_loop(&mut kb, var, i, 1, header, exit);
            kb.ins().return_(&[]);
            kb.seal_all_blocks();
            kb.finalize(self.module.target_config());
        }
        self.func_imports = imports;
        self.helper_refs = helpers;
        self.sincos_cache = sincos;
        self.module
            .define_function(id, &mut ctx)
            .map_err(|e| CodegenError::Cranelift(format!("parallel kernel: {e:?}")))?;
        Ok(id)
    }
}

/// The row length a rank-1 kernel of `n` elements is cut into:
/// [`CHUNK_ELEMENTS`], or less for a shorter kernel (a multiple of 16, for
/// about 8 rows); `None` if that leaves fewer than two rows.
fn row_length(n: usize) -> Option<usize> {
    let len = CHUNK_ELEMENTS.min((n / 8).next_multiple_of(16)).max(16);
    (n / len >= 2).then_some(len)
}

/// A rank-1 kernel as rows of `len` elements, and a tail kernel for the
/// elements left over.
fn split_rows(k: BoundKernel, len: usize) -> (BoundKernel, Option<BoundKernel>) {
    let n = k.shape[0];
    let (rows, rest) = (n / len, n % len);
    let c = len as isize;
    let mut main = k.clone();
    main.kernel.shape = vec![rows, len];
    for o in &mut main.kernel.operands {
        o.strides = vec![o.strides[0] * c, o.strides[0]];
    }
    for s in &mut main.kernel.stores {
        s.strides = vec![s.strides[0] * c, s.strides[0]];
    }
    if rest == 0 {
        return (main, None);
    }
    let done = (rows * len) as i64;
    let mut tail = k;
    tail.kernel.shape = vec![rest];
    for o in &mut tail.kernel.operands {
        if let Src::Mem { offset, .. } = &mut o.src {
            *offset += done * o.strides[0] as i64;
        }
    }
    for s in &mut tail.kernel.stores {
        s.offset += done * s.strides[0] as i64;
    }
    (main, Some(tail))
}
