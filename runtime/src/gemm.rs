//! Matrix multiplication kernels that generated code calls.
//!
//! Generated code passes a pointer to a constant parameter block (shapes
//! and strides are known at compile time) and the three data pointers.
//! Strides are in elements and may be anything the `gemm` crate accepts, so
//! a transposed operand (the linear layer's `Xᵀ Ȳ` and `Ȳ Wᵀ`) is read in
//! place, never copied. Single-threaded: the executable is called from many
//! threads by the user, not by us.

use gemm::{gemm, Parallelism};

/// Shapes and strides of one (batched) product `C = A·B`, laid out as the
/// generated code stores it: eleven `i64`s.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmParams {
    pub m: i64,
    pub n: i64,
    pub k: i64,
    pub batch: i64,
    /// Row and column strides of A, B and C, in elements.
    pub a_rs: i64,
    pub a_cs: i64,
    pub b_rs: i64,
    pub b_cs: i64,
    pub c_rs: i64,
    pub c_cs: i64,
    /// Distance between batch items of A, B and C, in elements (C is
    /// contiguous, so its batch stride is `m·n`).
    pub a_bs: i64,
    pub b_bs: i64,
}

macro_rules! gemm_entry {
    ($name:ident, $t:ty) => {
        /// C = A·B for the parameter block `p`.
        ///
        /// # Safety
        /// `p` must point to valid parameters and `a`, `b`, `c` to buffers
        /// covering every element the strides address; generated code
        /// guarantees both.
        pub unsafe extern "C" fn $name(p: *const GemmParams, a: *const $t, b: *const $t, c: *mut $t) {
            let p = unsafe { &*p };
            for i in 0..p.batch as isize {
                unsafe {
                    gemm(
                        p.m as usize,
                        p.n as usize,
                        p.k as usize,
                        c.offset(i * (p.m * p.n) as isize),
                        p.c_cs as isize,
                        p.c_rs as isize,
                        false,
                        a.offset(i * p.a_bs as isize),
                        p.a_cs as isize,
                        p.a_rs as isize,
                        b.offset(i * p.b_bs as isize),
                        p.b_cs as isize,
                        p.b_rs as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
        }
    };
}

gemm_entry!(wengert_gemm_f32, f32);
gemm_entry!(wengert_gemm_f64, f64);
