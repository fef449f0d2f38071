//! Products too small for the `gemm` crate: plain loops in unit-stride
//! order, compiled twice (baseline x86-64 and AVX2+FMA, chosen at run
//! time), and an eight-row AVX2 dot kernel for f32 matrix-vector steps.

use super::GemmParams;

/// `C = A·B` by plain loops in the order that makes the innermost loop
/// run over unit-stride memory: a dot product along `k` when A's rows and
/// B's columns are contiguous (eight partial sums, so that it vectorizes),
/// else an update of C's columns (or rows) by multiples of A's columns (or
/// B's rows).
///
/// # Safety
/// As for the GEMM entries: the strides address only valid elements.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn small_product<T: MulAdd>(
    m: usize,
    n: usize,
    k: usize,
    a: *const T,
    ars: isize,
    acs: isize,
    b: *const T,
    brs: isize,
    bcs: isize,
    c: *mut T,
    crs: isize,
    ccs: isize,
) {
    let at = |i: usize, p: usize| unsafe { *a.offset(i as isize * ars + p as isize * acs) };
    let bt = |p: usize, j: usize| unsafe { *b.offset(p as isize * brs + j as isize * bcs) };
    let cp = |i: usize, j: usize| unsafe { c.offset(i as isize * crs + j as isize * ccs) };
    // The form whose innermost loop is long and unit-stride.
    if acs == 1 && brs == 1 && k >= 8 {
        // Four rows at a time: four independent chains of fused
        // multiply-adds share each load of B's column.
        for j in 0..n {
            // SAFETY: column j of B and each row of A hold k contiguous elements.
            let bcol = unsafe { std::slice::from_raw_parts(b.offset(j as isize * bcs), k) };
            let mut i = 0;
            while i < m {
                let rows = (m - i).min(4);
                let mut arows: [&[T]; 4] = [&[]; 4];
                for (r, slot) in arows.iter_mut().enumerate().take(rows) {
                    *slot = unsafe { std::slice::from_raw_parts(a.offset((i + r) as isize * ars), k) };
                }
                let mut acc = [[T::default(); 8]; 4];
                let mut at_k = 0;
                while at_k + 8 <= k {
                    let y = &bcol[at_k..at_k + 8];
                    for r in 0..4 {
                        if r < rows {
                            let x = &arows[r][at_k..at_k + 8];
                            for ((acc, &x), &y) in acc[r].iter_mut().zip(x).zip(y) {
                                *acc = x.mul_add(y, *acc);
                            }
                        }
                    }
                    at_k += 8;
                }
                for r in 0..rows {
                    let mut sum = T::default();
                    for v in acc[r] {
                        sum = sum + v;
                    }
                    for p in at_k..k {
                        sum = arows[r][p].mul_add(bcol[p], sum);
                    }
                    unsafe { *cp(i + r, j) = sum };
                }
                i += rows;
            }
        }
    } else if ars == 1 && crs == 1 && m >= 8 {
        // Blocks of 64 rows of C stay in registers across the sum over k
        // (eight independent chains of fused multiply-adds; 32 rows left
        // four, latency-bound at twice the time).
        const BLOCK: usize = 64;
        for j in 0..n {
            // SAFETY: column j of C and each column of A hold m contiguous elements.
            let ccol = unsafe { std::slice::from_raw_parts_mut(c.offset(j as isize * ccs), m) };
            for (blk, cblock) in ccol.chunks_mut(BLOCK).enumerate() {
                let rows = cblock.len();
                let mut acc = [T::default(); BLOCK];
                for p in 0..k {
                    let y = bt(p, j);
                    let acol = unsafe {
                        std::slice::from_raw_parts(a.offset(p as isize * acs + (blk * BLOCK) as isize), rows)
                    };
                    if rows == BLOCK {
                        for (cv, &av) in acc.iter_mut().zip(acol) {
                            *cv = av.mul_add(y, *cv);
                        }
                    } else {
                        for (cv, &av) in acc[..rows].iter_mut().zip(acol) {
                            *cv = av.mul_add(y, *cv);
                        }
                    }
                }
                cblock.copy_from_slice(&acc[..rows]);
            }
        }
    } else if bcs == 1 && ccs == 1 && n >= 8 {
        for i in 0..m {
            // SAFETY: row i of C and each row of B hold n contiguous elements.
            let crow = unsafe { std::slice::from_raw_parts_mut(c.offset(i as isize * crs), n) };
            crow.fill(T::default());
            for p in 0..k {
                let x = at(i, p);
                let brow = unsafe { std::slice::from_raw_parts(b.offset(p as isize * brs), n) };
                for (cv, &bv) in crow.iter_mut().zip(brow) {
                    *cv = x.mul_add(bv, *cv);
                }
            }
        }
    } else {
        for i in 0..m {
            for j in 0..n {
                let mut sum = T::default();
                for p in 0..k {
                    sum = at(i, p).mul_add(bt(p, j), sum);
                }
                unsafe { *cp(i, j) = sum };
            }
        }
    }
}

/// The element types of [`small_product`]: fused multiply-add.
pub(super) trait MulAdd: Copy + Default + std::ops::Add<Output = Self> {
    fn mul_add(self, b: Self, c: Self) -> Self;
}

impl MulAdd for f32 {
    #[inline(always)]
    fn mul_add(self, b: f32, c: f32) -> f32 {
        f32::mul_add(self, b, c)
    }
}

impl MulAdd for f64 {
    #[inline(always)]
    fn mul_add(self, b: f64, c: f64) -> f64 {
        f64::mul_add(self, b, c)
    }
}

/// [`small_product`] compiled for AVX2 with FMA (eight f32 lanes and a
/// fused multiply-add instruction), chosen at run time where the CPU has
/// them; the build itself assumes nothing beyond x86-64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn small_product_avx2<T: MulAdd>(
    m: usize,
    n: usize,
    k: usize,
    a: *const T,
    ars: isize,
    acs: isize,
    b: *const T,
    brs: isize,
    bcs: isize,
    c: *mut T,
    crs: isize,
    ccs: isize,
) {
    unsafe { small_product(m, n, k, a, ars, acs, b, brs, bcs, c, crs, ccs) }
}

/// Whether this CPU has AVX2 and FMA (asked once; `std` caches it).
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `C[i, j] = A[i, :] · B[:, j]` for f32 rows of A and columns of B that
/// are contiguous, `m` and `k` multiples of 8: eight rows at a time in
/// eight AVX registers that share each load of B, reduced to eight sums by
/// a tree of horizontal adds. (The generic loops left the reduction to the
/// stack and ran a step's 64×64 matrix-vector product at ~280 ns.)
///
/// # Safety
/// The CPU has AVX2 and FMA; the strides address only valid elements; A's
/// rows and B's columns have unit stride.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_rows8_f32(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    ars: isize,
    b: *const f32,
    bcs: isize,
    c: *mut f32,
    crs: isize,
    ccs: isize,
) {
    use std::arch::x86_64::*;
    for j in 0..n {
        let bcol = unsafe { b.offset(j as isize * bcs) };
        for i in (0..m).step_by(8) {
            let rows: [*const f32; 8] = std::array::from_fn(|r| unsafe { a.offset((i + r) as isize * ars) });
            let mut acc = [_mm256_setzero_ps(); 8];
            for p in (0..k).step_by(8) {
                let y = unsafe { _mm256_loadu_ps(bcol.add(p)) };
                for r in 0..8 {
                    acc[r] = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(rows[r].add(p)) }, y, acc[r]);
                }
            }
            let t0 = _mm256_hadd_ps(acc[0], acc[1]);
            let t1 = _mm256_hadd_ps(acc[2], acc[3]);
            let t2 = _mm256_hadd_ps(acc[4], acc[5]);
            let t3 = _mm256_hadd_ps(acc[6], acc[7]);
            let u0 = _mm256_hadd_ps(t0, t1);
            let u1 = _mm256_hadd_ps(t2, t3);
            let lo = _mm256_permute2f128_ps(u0, u1, 0x20);
            let hi = _mm256_permute2f128_ps(u0, u1, 0x31);
            let sums = _mm256_add_ps(lo, hi);
            let dst = unsafe { c.offset(i as isize * crs + j as isize * ccs) };
            if crs == 1 {
                // Eight consecutive elements of C's column.
                unsafe { _mm256_storeu_ps(dst, sums) };
            } else {
                let mut out = [0f32; 8];
                unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sums) };
                for (r, v) in out.iter().enumerate() {
                    unsafe { *dst.offset(r as isize * crs) = *v };
                }
            }
        }
    }
}

/// [`small_product`] in the best form this CPU runs.
///
/// # Safety
/// As for [`small_product`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn small_product_dispatch<T: MulAdd>(
    m: usize,
    n: usize,
    k: usize,
    a: *const T,
    ars: isize,
    acs: isize,
    b: *const T,
    brs: isize,
    bcs: isize,
    c: *mut T,
    crs: isize,
    ccs: isize,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { small_product_avx2(m, n, k, a, ars, acs, b, brs, bcs, c, crs, ccs) };
    }
    // Without hardware FMA, `mul_add` is a (slow, exact) library call;
    // such CPUs are rare among those this runs on.
    unsafe { small_product(m, n, k, a, ars, acs, b, brs, bcs, c, crs, ccs) }
}

/// Runs batch item `i` of `p` through [`dot_rows8_f32`] if the elements
/// are f32 (`size` 4), the layout fits and the CPU has AVX2 and FMA;
/// returns whether it did.
#[doc(hidden)]
pub unsafe fn try_dot_rows8(p: &GemmParams, i: isize, a: *const u8, b: *const u8, c: *mut u8, size: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if size == 4 && p.a_cs == 1 && p.b_rs == 1 && p.m % 8 == 0 && p.k % 8 == 0 && has_avx2_fma() {
        let (a, b, c) = (a as *const f32, b as *const f32, c as *mut f32);
        // SAFETY: the CPU has the features; the layout is what the
        // function needs; the caller's strides address valid elements.
        unsafe {
            dot_rows8_f32(
                p.m as usize,
                p.n as usize,
                p.k as usize,
                a.offset(i * p.a_bs as isize),
                p.a_rs as isize,
                b.offset(i * p.b_bs as isize),
                p.b_cs as isize,
                c.offset(i * (p.m * p.n) as isize),
                p.c_rs as isize,
                p.c_cs as isize,
            )
        };
        return true;
    }
    let _ = (p, i, a, b, c, size);
    false
}
