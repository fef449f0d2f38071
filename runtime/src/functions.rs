//! The runtime functions generated code calls, declared once: each
//! variant of [`RuntimeFn`] has its symbol name, its signature and its
//! address, so code generation and the runtime cannot disagree on a name
//! or a signature (a new function is a new table entry, and the JIT
//! registers exactly the table).

use crate::gemm::ordered::{wengert_matmul_acc_f32, wengert_matmul_acc_f64};
use crate::gemm::{wengert_gemm_f32, wengert_gemm_f64, wengert_gemm_pair_f32, wengert_gemm_pair_f64};

/// A machine type of a runtime function's parameter or result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgType {
    I64,
    F32,
    F64,
}

macro_rules! runtime_fns {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:literal, ($($p:ident),*) -> ($($r:ident),*), $addr:expr; )*) => {
        /// A function of the runtime that generated code may call.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum RuntimeFn {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl RuntimeFn {
            /// Every runtime function (what the JIT registers).
            pub const ALL: [RuntimeFn; [$($name),*].len()] = [$(RuntimeFn::$variant),*];

            /// The symbol generated code imports.
            pub fn name(self) -> &'static str {
                match self {
                    $( RuntimeFn::$variant => $name, )*
                }
            }

            /// Parameter types, in order.
            pub fn params(self) -> &'static [ArgType] {
                match self {
                    $( RuntimeFn::$variant => &[$(ArgType::$p),*], )*
                }
            }

            /// Result types.
            pub fn returns(self) -> &'static [ArgType] {
                match self {
                    $( RuntimeFn::$variant => &[$(ArgType::$r),*], )*
                }
            }

            /// The function's address (an `extern "C"` function of exactly
            /// that signature).
            pub fn address(self) -> *const u8 {
                match self {
                    $( RuntimeFn::$variant => $addr as *const u8, )*
                }
            }
        }
    };
}

runtime_fns! {
    /// `C = A·B` over the strided parameter block (`gemm::GemmParams`).
    GemmF32 = "wengert_gemm_f32", (I64, I64, I64, I64) -> (), wengert_gemm_f32;
    GemmF64 = "wengert_gemm_f64", (I64, I64, I64, I64) -> (), wengert_gemm_f64;
    /// Two independent products at once, one thread each: the first's
    /// parameter block and pointers, then the second's.
    GemmPairF32 = "wengert_gemm_pair_f32", (I64, I64, I64, I64, I64, I64, I64, I64) -> (), wengert_gemm_pair_f32;
    GemmPairF64 = "wengert_gemm_pair_f64", (I64, I64, I64, I64, I64, I64, I64, I64) -> (), wengert_gemm_pair_f64;
    /// `C += A·B` summed in the defined order of `matmul_acc` over the
    /// parameter block (`gemm::ordered::OrderedParams`).
    MatMulAccF32 = "wengert_matmul_acc_f32", (I64, I64, I64, I64) -> (), wengert_matmul_acc_f32;
    MatMulAccF64 = "wengert_matmul_acc_f64", (I64, I64, I64, I64) -> (), wengert_matmul_acc_f64;
    ExpF64 = "wengert_exp_f64", (F64) -> (F64), libm_f64::exp;
    LogF64 = "wengert_log_f64", (F64) -> (F64), libm_f64::log;
    TanhF64 = "wengert_tanh_f64", (F64) -> (F64), libm_f64::tanh;
    PowF64 = "wengert_pow_f64", (F64, F64) -> (F64), libm_f64::pow;
    /// Both sin and cos of one value, written through two pointers.
    SincosF64 = "wengert_sincos_f64", (F64, I64, I64) -> (), libm_f64::sincos_flushed;
    ErfF64 = "wengert_erf_f64", (F64) -> (F64), libm_f64::erf;
    Expm1F64 = "wengert_expm1_f64", (F64) -> (F64), libm_f64::expm1;
    Log1pF64 = "wengert_log1p_f64", (F64) -> (F64), libm_f64::log1p;
    /// Large-argument fallbacks of the inline f32 sin and cos.
    SinF32 = "wengert_sin_f32", (F32) -> (F32), libm_f32::sin;
    CosF32 = "wengert_cos_f32", (F32) -> (F32), libm_f32::cos;
    PowF32 = "wengert_pow_f32", (F32, F32) -> (F32), libm_f32::pow;
    /// A kernel's chunks on the shared pool (function, slots, rows, rows
    /// per chunk, threads).
    ParallelFor = "wengert_parallel_for", (I64, I64, I64, I64, I64) -> (), crate::pool::wengert_parallel_for;
    /// A loop's adjoint under the binomial schedule (`revolve`).
    Revolve = "wengert_revolve", (I64) -> (), crate::revolve::wengert_revolve;
}

/// `(name, address)` of every runtime function, for the JIT to register.
pub fn symbols() -> Vec<(&'static str, *const u8)> {
    RuntimeFn::ALL.iter().map(|f| (f.name(), f.address())).collect()
}

/// f64 transcendental functions: generated code calls these thin wrappers
/// over Rust's `f64::exp` and friends (the platform libm, accurate to about
/// 1 ulp; the interpreter calls the same, so both agree bit for bit).
/// Calling glibc's symbols directly measured slower here (case 1's
/// gradient: 20 ns against 13 ns through the wrapper).
pub mod libm_f64 {
    use wengert_ir::fpenv::flushed;
    pub extern "C" fn exp(x: f64) -> f64 {
        flushed(x).exp()
    }
    pub extern "C" fn log(x: f64) -> f64 {
        flushed(x).ln()
    }
    pub extern "C" fn sin(x: f64) -> f64 {
        flushed(x).sin()
    }
    pub extern "C" fn cos(x: f64) -> f64 {
        flushed(x).cos()
    }
    /// The project's `tanh` (`wengert_ir::math`), as the interpreter's.
    pub extern "C" fn tanh(x: f64) -> f64 {
        wengert_ir::math::tanh_f64(flushed(x))
    }
    pub extern "C" fn pow(x: f64, p: f64) -> f64 {
        flushed(x).powf(p)
    }
    /// The `libm` crate's `erf` (Rust's standard library has none); f32
    /// values come widened, as the interpreter computes them.
    pub extern "C" fn erf(x: f64) -> f64 {
        libm::erf(flushed(x))
    }
    pub extern "C" fn expm1(x: f64) -> f64 {
        flushed(x).exp_m1()
    }
    pub extern "C" fn log1p(x: f64) -> f64 {
        flushed(x).ln_1p()
    }
    // glibc's `sincos` (both at the cost of about one; what LLVM calls for
    // Rust's `sin` and `cos` of one value). Called directly: a Rust wrapper
    // around `f64::sin_cos` measured twice as slow.
    unsafe extern "C" {
        pub fn sincos(x: f64, sin: *mut f64, cos: *mut f64);
    }
    /// glibc's `sincos` of the operand as the interpreter sees it (a
    /// subnormal flushed when the process flushes; see `fpenv::flushed`).
    ///
    /// # Safety
    /// `sin` and `cos` point to writable f64s (generated code passes two
    /// stack slots).
    pub unsafe extern "C" fn sincos_flushed(x: f64, sin: *mut f64, cos: *mut f64) {
        // SAFETY: per the caller.
        unsafe { sincos(flushed(x), sin, cos) }
    }
}

/// f32 fallbacks: the inline sin/cos polynomials cover |x| ≤ 8192; larger
/// arguments (rare) call these, which reduce exactly.
pub mod libm_f32 {
    use wengert_ir::fpenv::flushed;
    pub extern "C" fn sin(x: f32) -> f32 {
        flushed(x).sin()
    }
    pub extern "C" fn cos(x: f32) -> f32 {
        flushed(x).cos()
    }
    pub extern "C" fn pow(x: f32, p: f32) -> f32 {
        flushed(x).powf(p)
    }
}
