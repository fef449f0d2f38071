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

/// The symbols generated code may import, with their addresses.
pub fn symbols() -> Vec<(&'static str, *const u8)> {
    vec![
        ("wengert_gemm_f32", wengert_gemm_f32 as *const u8),
        ("wengert_gemm_f64", wengert_gemm_f64 as *const u8),
        ("wengert_exp_f64", libm_f64::exp as *const u8),
        ("wengert_log_f64", libm_f64::log as *const u8),
        ("wengert_sin_f64", libm_f64::sin as *const u8),
        ("wengert_cos_f64", libm_f64::cos as *const u8),
        ("wengert_tanh_f64", libm_f64::tanh as *const u8),
        ("wengert_pow_f64", libm_f64::pow as *const u8),
        ("wengert_sincos_f64", libm_f64::sincos as *const u8),
        ("wengert_erf_f64", libm_f64::erf as *const u8),
        ("wengert_expm1_f64", libm_f64::expm1 as *const u8),
        ("wengert_log1p_f64", libm_f64::log1p as *const u8),
        ("wengert_sin_f32", libm_f32::sin as *const u8),
        ("wengert_cos_f32", libm_f32::cos as *const u8),
        ("wengert_pow_f32", libm_f32::pow as *const u8),
    ]
}

/// f64 transcendental functions: generated code calls these thin wrappers
/// over Rust's `f64::exp` and friends (the platform libm, accurate to about
/// 1 ulp; the interpreter calls the same, so both agree bit for bit).
/// Calling glibc's symbols directly measured slower here (case 1's
/// gradient: 20 ns against 13 ns through the wrapper).
pub mod libm_f64 {
    pub extern "C" fn exp(x: f64) -> f64 {
        x.exp()
    }
    pub extern "C" fn log(x: f64) -> f64 {
        x.ln()
    }
    pub extern "C" fn sin(x: f64) -> f64 {
        x.sin()
    }
    pub extern "C" fn cos(x: f64) -> f64 {
        x.cos()
    }
    pub extern "C" fn tanh(x: f64) -> f64 {
        x.tanh()
    }
    pub extern "C" fn pow(x: f64, p: f64) -> f64 {
        x.powf(p)
    }
    /// The `libm` crate's `erf` (Rust's standard library has none); f32
    /// values come widened, as the interpreter computes them.
    pub extern "C" fn erf(x: f64) -> f64 {
        libm::erf(x)
    }
    pub extern "C" fn expm1(x: f64) -> f64 {
        x.exp_m1()
    }
    pub extern "C" fn log1p(x: f64) -> f64 {
        x.ln_1p()
    }
    // glibc's `sincos` (both at the cost of about one; what LLVM calls for
    // Rust's `sin` and `cos` of one value). Called directly: a Rust wrapper
    // around `f64::sin_cos` measured twice as slow.
    unsafe extern "C" {
        pub fn sincos(x: f64, sin: *mut f64, cos: *mut f64);
    }
}

/// f32 fallbacks: the inline sin/cos polynomials cover |x| ≤ 8192; larger
/// arguments (rare) call these, which reduce exactly.
pub mod libm_f32 {
    pub extern "C" fn sin(x: f32) -> f32 {
        x.sin()
    }
    pub extern "C" fn cos(x: f32) -> f32 {
        x.cos()
    }
    pub extern "C" fn pow(x: f32, p: f32) -> f32 {
        x.powf(p)
    }
}
