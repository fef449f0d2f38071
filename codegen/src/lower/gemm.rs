//! Matrix products: a call to the runtime's GEMM entry with a constant
//! parameter block of shapes and strides.

use super::*;
use wengert_runtime::gemm::GemmKernel;

impl Lowerer<'_> {
    /// `out = a·b` (2-D or batched) by a call to the GEMM kernel with the
    /// views' strides; `out` is contiguous.
    pub(crate) fn gemm(
        &mut self,
        fb: &mut FunctionBuilder,
        a: &View,
        b: &View,
        out: &View,
    ) -> Result<(), CodegenError> {
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
            kernel: 0,
            threads: wengert_runtime::gemm::threads_for(m, n, kk, self.state.threads) as i64,
            direct: 0,
        });
        let mut params = params;
        let choice = wengert_runtime::gemm::choose(&params, dtype == DType::F64).map_err(CodegenError::Environment)?;
        choice.apply(&mut params);
        if choice.kernel == GemmKernel::Loops {
            params.threads = 1;
        }
        if let Some(log) = &mut self.state.kernel_log {
            use std::fmt::Write;
            let _ = writeln!(
                log,
                "gemm [{m}, {kk}] x [{kk}, {n}]{} {dtype} kernel={} threads={}",
                if batch > 1 {
                    format!(" batch {batch}")
                } else {
                    String::new()
                },
                choice.name(),
                params.threads
            );
        }
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
}
