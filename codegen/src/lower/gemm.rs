//! Matrix products: a call to the runtime's GEMM entry with a constant
//! parameter block of shapes and strides.
//!
//! Two independent large products in a row run concurrently, one thread
//! each (`wengert_gemm_pair_*`), when the executable may use threads: the
//! backward of a linear layer computes `Xᵀ·Ȳ` and `Ȳ·Wᵀ` from the same
//! `Ȳ`, and a 64-row product splits badly over two threads (on a Xeon the
//! chain's pair took 340 µs concurrently against 440 µs one after the
//! other on two threads). A lone product is therefore *deferred*
//! ([`Lowerer::gemm_deferrable`]): its call is emitted when the next
//! product comes, as a pair if the two are independent, or before any
//! other code ([`Lowerer::flush_gemm`]). Each product of a pair runs on
//! one thread; which thread never changes its bits.

use super::*;
use wengert_runtime::gemm::ordered::{wide_tiles, OrderedParams};
use wengert_runtime::gemm::GemmKernel;

/// A product whose call has not been emitted yet.
pub(crate) struct PendingGemm {
    params: Box<GemmParams>,
    a: View,
    b: View,
    out: View,
}

/// Products of at least this many multiply-adds may wait to pair with
/// the next one: below, a worker's wake-up (tens of microseconds on a
/// shared machine) costs more than the overlap gains.
pub const PAIRED_PRODUCT: usize = 1 << 22;

/// Whether an operand location is read by GEMM where it is (no copy, so
/// no code that writes memory; see `Lowerer::materialize`).
pub(crate) fn in_place(loc: &Loc) -> bool {
    matches!(loc, Loc::Mem(v) if v.strides.iter().zip(&v.shape).all(|(&s, &d)| s != 0 || d == 1))
}

/// Where a view's elements lie: its base and the byte range it spans.
fn extent(bases: &HashMap<Value, Base>, v: &View) -> Option<(Base, i64, i64)> {
    let base = *bases.get(&v.ptr)?;
    let size = v.dtype.size_bytes() as i64;
    let (mut lo, mut hi) = (v.offset, v.offset);
    for (&d, &s) in v.shape.iter().zip(&v.strides) {
        let span = (d as i64 - 1) * s as i64;
        if span < 0 {
            lo += span;
        } else {
            hi += span;
        }
    }
    Some((base, lo * size, (hi + 1) * size))
}

impl Lowerer<'_> {
    /// Whether the views may share memory (unknown bases may).
    fn may_overlap(&self, x: &View, y: &View) -> bool {
        let (Some((bx, lx, hx)), Some((by, ly, hy))) = (extent(&self.bases, x), extent(&self.bases, y)) else {
            return true;
        };
        match (bx, by) {
            (Base::Arena(ox), Base::Arena(oy)) => {
                let (lx, hx, ly, hy) = (ox as i64 + lx, ox as i64 + hx, oy as i64 + ly, oy as i64 + hy);
                lx < hy && ly < hx
            }
            (Base::Input(i), Base::Input(j)) | (Base::Output(i), Base::Output(j)) => i == j,
            (Base::Addr(p), Base::Addr(q)) => p == q,
            // An output may share its buffer with a donated input.
            (Base::Input(i), Base::Output(_)) | (Base::Output(_), Base::Input(i)) => {
                self.state.donated_inputs.contains(&i)
            }
            (Base::Arena(_), _) | (Base::Input(_), _) | (Base::Output(_), _) | (Base::Addr(_), _) => false,
        }
    }

    /// `out = a·b` (2-D or batched) by a call to the GEMM kernel with the
    /// views' strides; `out` is contiguous. A deferred product runs first,
    /// or with this one if the two are independent.
    pub(crate) fn gemm(
        &mut self,
        fb: &mut FunctionBuilder,
        a: &View,
        b: &View,
        out: &View,
    ) -> Result<(), CodegenError> {
        let Some(params) = self.gemm_params(fb, a, b, out)? else {
            return Ok(());
        };
        let Some(first) = self.pending_gemm.take() else {
            return self.call_gemm(fb, params, a, b, out);
        };
        // Independent: neither writes what the other reads or writes (the
        // memory plan assumed they run in order: this one's output may
        // reuse memory the first one read last).
        let independent = !self.may_overlap(&first.out, a)
            && !self.may_overlap(&first.out, b)
            && !self.may_overlap(&first.out, out)
            && !self.may_overlap(out, &first.a)
            && !self.may_overlap(out, &first.b)
            // One entry serves both: one element type.
            && first.out.dtype == out.dtype
            && pairable(&params)
            && balanced(macs(&first.params), macs(&params));
        if !independent {
            let PendingGemm {
                params: p,
                a: fa,
                b: fbv,
                out: fo,
            } = first;
            self.call_gemm(fb, p, &fa, &fbv, &fo)?;
            return self.call_gemm(fb, params, a, b, out);
        }
        let (mut p1, mut p2) = (first.params, params);
        p1.threads = 1;
        p2.threads = 1;
        let dtype = out.dtype;
        self.log_gemm(&p1, dtype, " (concurrent with the next)");
        self.log_gemm(&p2, dtype, " (concurrent with the previous)");
        let rf = if dtype == DType::F32 {
            RuntimeFn::GemmPairF32
        } else {
            RuntimeFn::GemmPairF64
        };
        let f = self.import(fb, rf);
        let mut args = Vec::with_capacity(8);
        for (p, a, b, c) in [(&p1, &first.a, &first.b, &first.out), (&p2, a, b, out)] {
            args.extend(self.product_args(fb, &**p as *const GemmParams as i64, a, b, c));
        }
        self.state.gemm_params.push(p1);
        self.state.gemm_params.push(p2);
        self.state.uses_pool = true;
        fb.ins().call(f, &args);
        Ok(())
    }

    /// As [`Self::gemm`], but a large product on more than one thread
    /// waits for the next product, to run with it (see the module
    /// documentation). Its caller makes sure its operands are read in
    /// place (`in_place`): a copy would sit in workspace the next node
    /// reuses.
    pub(crate) fn gemm_deferrable(
        &mut self,
        fb: &mut FunctionBuilder,
        a: &View,
        b: &View,
        out: &View,
    ) -> Result<(), CodegenError> {
        if self.pending_gemm.is_some() || self.state.threads < 2 {
            return self.gemm(fb, a, b, out);
        }
        let Some(params) = self.gemm_params(fb, a, b, out)? else {
            return Ok(());
        };
        if !pairable(&params) {
            return self.call_gemm(fb, params, a, b, out);
        }
        self.pending_gemm = Some(PendingGemm {
            params,
            a: a.clone(),
            b: b.clone(),
            out: out.clone(),
        });
        Ok(())
    }

    /// Emits the deferred product's call, if any.
    pub(crate) fn flush_gemm(&mut self, fb: &mut FunctionBuilder) -> Result<(), CodegenError> {
        match self.pending_gemm.take() {
            Some(PendingGemm { params, a, b, out }) => self.call_gemm(fb, params, &a, &b, &out),
            None => Ok(()),
        }
    }

    /// The parameter block of `out = a·b`, its kernel chosen; `None` when
    /// there is nothing to multiply (an empty output, or `k = 0`, which
    /// fills `out` with zeros here).
    fn gemm_params(
        &mut self,
        fb: &mut FunctionBuilder,
        a: &View,
        b: &View,
        out: &View,
    ) -> Result<Option<Box<GemmParams>>, CodegenError> {
        let r = a.shape.len();
        let (m, kk, n) = (a.shape[r - 2], a.shape[r - 1], b.shape[r - 1]);
        let batch = if r == 3 { a.shape[0] } else { 1 };
        let dtype = out.dtype;
        if m * n == 0 {
            return Ok(None);
        }
        if kk == 0 {
            // Code that writes memory: a deferred product runs first.
            self.flush_gemm(fb)?;
            self.fill(fb, out, 0.0)?;
            return Ok(None);
        }
        let mut params = Box::new(GemmParams {
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
            kernel: 0,
            threads: wengert_runtime::gemm::threads_for(m, n, kk, self.state.threads) as i64,
            direct: 0,
            copy: 0,
        });
        let choice = wengert_runtime::gemm::choose(&params, dtype == DType::F64).map_err(CodegenError::Environment)?;
        choice.apply(&mut params);
        if choice.kernel == GemmKernel::Loops {
            params.threads = 1;
        }
        Ok(Some(params))
    }

    /// Emits one product's call.
    fn call_gemm(
        &mut self,
        fb: &mut FunctionBuilder,
        params: Box<GemmParams>,
        a: &View,
        b: &View,
        out: &View,
    ) -> Result<(), CodegenError> {
        self.log_gemm(&params, out.dtype, "");
        let rf = if out.dtype == DType::F32 {
            RuntimeFn::GemmF32
        } else {
            RuntimeFn::GemmF64
        };
        let f = self.import(fb, rf);
        let args = self.product_args(fb, &*params as *const GemmParams as i64, a, b, out);
        self.state.uses_pool |= params.threads > 1;
        self.state.gemm_params.push(params);
        fb.ins().call(f, &args);
        Ok(())
    }

    /// A product call's arguments: the parameter block's address (a boxed
    /// block's, which stays put when the box moves into the module state)
    /// and the three data pointers.
    fn product_args(&mut self, fb: &mut FunctionBuilder, block: i64, a: &View, b: &View, out: &View) -> [Value; 4] {
        let size = out.dtype.size_bytes() as i64;
        let pv = fb.ins().iconst(types::I64, block);
        let ap = fb.ins().iadd_imm_s(a.ptr, a.offset * size);
        let bp = fb.ins().iadd_imm_s(b.ptr, b.offset * size);
        let cp = fb.ins().iadd_imm_s(out.ptr, out.offset * size);
        [pv, ap, bp, cp]
    }

    /// `out = c + a·b` summed in `matmul_acc`'s defined order: `c` copied
    /// into `out` (unless it is `out` itself, when the memory plan put the
    /// result in place), then the runtime's ordered kernel adds the
    /// products to it. `out` is contiguous and overlaps neither `a` nor
    /// `b` (the plan gives a contraction a buffer of its own).
    pub(crate) fn ordered_product(
        &mut self,
        fb: &mut FunctionBuilder,
        c: &Loc,
        a: &View,
        b: &View,
        out: &View,
        blocks: usize,
    ) -> Result<(), CodegenError> {
        // Code that writes memory: a deferred product runs first.
        self.flush_gemm(fb)?;
        // (Each read of an arena buffer is a fresh pointer value: compare
        // what the pointers are, not the values.)
        let same = matches!(c, Loc::Mem(v) if v.offset == out.offset && v.strides == out.strides
            && (v.ptr == out.ptr || matches!((self.bases.get(&v.ptr), self.bases.get(&out.ptr)), (Some(x), Some(y)) if x == y)));
        if !same {
            self.copy_into(fb, c, out)?;
        }
        let (m, kk, n) = (a.shape[0], a.shape[1], b.shape[1]);
        if m == 0 || n == 0 || kk == 0 {
            return Ok(());
        }
        let params = Box::new(OrderedParams {
            m: m as i64,
            n: n as i64,
            k: kk as i64,
            blocks: blocks as i64,
            a_rs: a.strides[0] as i64,
            a_cs: a.strides[1] as i64,
            b_rs: b.strides[0] as i64,
            b_cs: b.strides[1] as i64,
            c_rs: out.strides[0] as i64,
            c_cs: out.strides[1] as i64,
            // One thread below the size where products pay for a second
            // one, as for GEMM (`threads_for`): the H = 64 RNN's
            // 64×1000×64 sum took 47.9 µs on one thread and 43.6 on two,
            // and threading it made the whole loop run as a pooled call,
            // ~10% slower at two threads than at one.
            threads: wengert_runtime::gemm::threads_for(m, n, kk, self.state.threads) as i64,
            wide: wide_tiles() as i64,
        });
        self.state.uses_pool |= params.threads > 1;
        if let Some(log) = &mut self.state.kernel_log {
            use std::fmt::Write;
            let _ = writeln!(
                log,
                "matmul_acc [{m}, {kk}] x [{kk}, {n}] {} blocks={blocks} threads={}{}",
                out.dtype,
                params.threads,
                if params.wide != 0 { " avx512" } else { "" }
            );
        }
        let rf = if out.dtype == DType::F32 {
            RuntimeFn::MatMulAccF32
        } else {
            RuntimeFn::MatMulAccF64
        };
        let f = self.import(fb, rf);
        let args = self.product_args(fb, &*params as *const OrderedParams as i64, a, b, out);
        self.state.ordered_params.push(params);
        fb.ins().call(f, &args);
        Ok(())
    }

    fn log_gemm(&mut self, p: &GemmParams, dtype: DType, note: &str) {
        if let Some(log) = &mut self.state.kernel_log {
            use std::fmt::Write;
            let choice = wengert_runtime::gemm::GemmChoice::of_params(p);
            let (m, kk, n) = (p.m, p.k, p.n);
            let _ = writeln!(
                log,
                "gemm [{m}, {kk}] x [{kk}, {n}]{} {dtype} kernel={} threads={}{note}",
                if p.batch > 1 {
                    format!(" batch {}", p.batch)
                } else {
                    String::new()
                },
                choice.name(),
                p.threads
            );
        }
    }
}

/// Whether a product is worth running beside another: one of the
/// `gemm` crate's families, and large enough to pay for a worker.
fn pairable(p: &GemmParams) -> bool {
    p.kernel != GemmKernel::Loops.code() && macs(p) >= PAIRED_PRODUCT
}

/// Whether two products are close enough in size to gain from running at
/// once, one thread each: the pair takes as long as the larger one alone,
/// while one after the other on `s` threads they take `(t₁ + t₂)/s`; with
/// `s` ≈ 1.4–1.8 here, the larger may be at most 1.25× the smaller (the
/// chain's backward pairs equal products; the char-RNN's weight
/// gradients after its loop, 537M and 132M multiply-adds, would take
/// longer paired).
fn balanced(x: usize, y: usize) -> bool {
    let (lo, hi) = (x.min(y), x.max(y));
    hi.saturating_mul(4) <= lo.saturating_mul(5)
}

/// A product's multiply-adds.
fn macs(p: &GemmParams) -> usize {
    (p.m as usize)
        .saturating_mul(p.n as usize)
        .saturating_mul(p.k as usize)
        .saturating_mul(p.batch as usize)
}
