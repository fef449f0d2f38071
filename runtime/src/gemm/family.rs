//! The `gemm` crate's kernel families, callable one by one.
//!
//! The crate's front door (`gemm::gemm`) picks its kernels itself: the
//! AVX-512 family whenever the CPU has `avx512f` (if built with it), else
//! AVX2+FMA. That choice is not the fastest everywhere (on AMD Zen 4 the
//! 512-bit kernels run as two 256-bit halves and measured slower on our
//! shapes), so we call the crate's generic driver with the microkernels of
//! the family that [`super::choose`] picked for this machine and shape.

use gemm_common::simd::MixedSimd;
use gemm_common::Parallelism;

/// One family's entry: `gemm_basic` of the crate, minus the arguments we
/// always pass the same way (C is overwritten: `alpha = 0`, `beta = 1`, no
/// conjugation).
pub(super) type FamilyFn<T> =
    unsafe fn(usize, usize, usize, *mut T, isize, isize, *const T, isize, isize, *const T, isize, isize, Parallelism);

macro_rules! family {
    ($name:ident, $t:ty, $simd:ty, $lanes:expr, $($uk:ident)::+) => {
        /// `C = A·B` with this family's microkernels; strides as the
        /// `gemm` crate takes them (column stride first).
        ///
        /// # Safety
        /// The CPU has the family's features (checked by the caller with
        /// [`super::available`]); the strides address only valid elements.
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name(
            m: usize,
            n: usize,
            k: usize,
            dst: *mut $t,
            dst_cs: isize,
            dst_rs: isize,
            lhs: *const $t,
            lhs_cs: isize,
            lhs_rs: isize,
            rhs: *const $t,
            rhs_cs: isize,
            rhs_rs: isize,
            parallelism: Parallelism,
        ) {
            use $($uk)::+ as uk;
            const N: usize = $lanes;
            let Some(simd) = <$simd as MixedSimd<$t, $t, $t, $t>>::try_new() else {
                // Unreachable through `choose`, which offers only the
                // families this CPU runs; a wrong forced choice is refused
                // there, so this is a no-op rather than undefined behaviour.
                return;
            };
            unsafe {
                gemm_common::gemm::gemm_basic_generic::<
                    _,
                    $t,
                    N,
                    { uk::MR_DIV_N * N },
                    { uk::NR },
                    { uk::MR_DIV_N },
                    { uk::H_M },
                    { uk::H_N },
                >(
                    simd,
                    m,
                    n,
                    k,
                    dst,
                    dst_cs,
                    dst_rs,
                    false,
                    lhs,
                    lhs_cs,
                    lhs_rs,
                    rhs,
                    rhs_cs,
                    rhs_rs,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    |a, b, c| a * b + c,
                    &uk::UKR,
                    &uk::H_UKR,
                    false,
                    parallelism,
                )
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
family!(fma_f32, f32, gemm_common::simd::V3, 8, gemm_f32::microkernel::fma::f32);
#[cfg(target_arch = "x86_64")]
family!(fma_f64, f64, gemm_common::simd::V3, 4, gemm_f64::microkernel::fma::f64);
#[cfg(target_arch = "x86_64")]
family!(
    avx512_f32,
    f32,
    gemm_common::simd::V4,
    16,
    gemm_f32::microkernel::avx512f::f32
);
#[cfg(target_arch = "x86_64")]
family!(
    avx512_f64,
    f64,
    gemm_common::simd::V4,
    8,
    gemm_f64::microkernel::avx512f::f64
);
family!(
    scalar_f32,
    f32,
    gemm_common::simd::Scalar,
    1,
    gemm_f32::microkernel::scalar::f32
);
family!(
    scalar_f64,
    f64,
    gemm_common::simd::Scalar,
    1,
    gemm_f64::microkernel::scalar::f64
);
