//! Products summed in one defined order (the `matmul_acc` op): each
//! element of `C` adds its `K` products one fused multiply-add at a time,
//! starting from its own value, over the contraction index taken as
//! `blocks` equal runs, last run first, each run ascending.
//!
//! That order is what a backward loop meets when it accumulates a weight
//! gradient step by step (`acc += A_t·B_t`, steps last to first), so the
//! one product a stored-trajectory gradient computes after its loop over
//! the stacked factors gives the same bits as the step-by-step sum of a
//! recomputing schedule. A library GEMM cannot: it sums a tile from zero
//! and then adds the tile to `C`.
//!
//! Only the order of each element's chain is fixed, so the kernel may
//! tile, cut the contraction into chunks (an element's partial sum is
//! stored and reloaded unchanged between chunks), vectorize across
//! elements and split `C` among threads: every path computes every
//! element by the same chain and gives the same bits.

use super::small::{has_avx2_fma, MulAdd};

/// Shapes and element strides of `C += A·B` in the defined order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderedParams {
    pub m: i64,
    pub n: i64,
    /// The contraction extent `K`, a multiple of `blocks`.
    pub k: i64,
    /// Runs of the contraction index, summed last run first.
    pub blocks: i64,
    pub a_rs: i64,
    pub a_cs: i64,
    pub b_rs: i64,
    pub b_cs: i64,
    pub c_rs: i64,
    pub c_cs: i64,
    /// Threads the product may use (each takes whole columns of tiles).
    pub threads: i64,
}

/// Contraction indices per chunk: a chunk's slices of A and B stay in
/// cache while every tile of `C` passes over them.
const CHUNK: usize = 256;
/// Rows of a register tile.
const MR: usize = 4;

/// The contraction index's chunks in the defined order: runs last to
/// first, each cut into ascending chunks of at most [`CHUNK`].
fn chunks(k: usize, blocks: usize) -> impl Iterator<Item = (usize, usize)> {
    let run = k.checked_div(blocks).unwrap_or(0);
    (0..blocks).rev().flat_map(move |blk| {
        let (lo, hi) = (blk * run, (blk + 1) * run);
        (lo..hi).step_by(CHUNK).map(move |q| (q, (q + CHUNK).min(hi)))
    })
}

/// Columns `j0..j1` of `C` over contraction indices `q0..q1`.
///
/// # Safety
/// The strides address only valid elements; no other thread writes these
/// columns of `C`.
#[inline(always)]
unsafe fn columns<T: MulAdd, const NR: usize>(
    p: &OrderedParams,
    a: *const T,
    b: *const T,
    c: *mut T,
    (j0, j1): (usize, usize),
    (q0, q1): (usize, usize),
) {
    let m = p.m as usize;
    let (ars, acs, brs, bcs, crs, ccs) = (
        p.a_rs as isize,
        p.a_cs as isize,
        p.b_rs as isize,
        p.b_cs as isize,
        p.c_rs as isize,
        p.c_cs as isize,
    );
    let at = |i: usize, q: usize| unsafe { *a.offset(i as isize * ars + q as isize * acs) };
    let cp = |i: usize, j: usize| unsafe { c.offset(i as isize * crs + j as isize * ccs) };
    let mut j = j0;
    // Register tiles of MR × NR where B's rows are contiguous.
    if bcs == 1 {
        while j + NR <= j1 {
            let mut i = 0;
            while i + MR <= m {
                let mut acc = [[T::default(); NR]; MR];
                for (r, row) in acc.iter_mut().enumerate() {
                    for (s, v) in row.iter_mut().enumerate() {
                        *v = unsafe { *cp(i + r, j + s) };
                    }
                }
                for q in q0..q1 {
                    // SAFETY: row q of B holds NR contiguous elements from j.
                    let brow = unsafe { std::slice::from_raw_parts(b.offset(q as isize * brs + j as isize), NR) };
                    for (r, row) in acc.iter_mut().enumerate() {
                        let x = at(i + r, q);
                        for (v, &y) in row.iter_mut().zip(brow) {
                            *v = x.mul_add(y, *v);
                        }
                    }
                }
                for (r, row) in acc.iter().enumerate() {
                    for (s, v) in row.iter().enumerate() {
                        unsafe { *cp(i + r, j + s) = *v };
                    }
                }
                i += MR;
            }
            // Leftover rows: one row of NR at a time.
            while i < m {
                let mut acc = [T::default(); NR];
                for (s, v) in acc.iter_mut().enumerate() {
                    *v = unsafe { *cp(i, j + s) };
                }
                for q in q0..q1 {
                    let brow = unsafe { std::slice::from_raw_parts(b.offset(q as isize * brs + j as isize), NR) };
                    let x = at(i, q);
                    for (v, &y) in acc.iter_mut().zip(brow) {
                        *v = x.mul_add(y, *v);
                    }
                }
                for (s, v) in acc.iter().enumerate() {
                    unsafe { *cp(i, j + s) = *v };
                }
                i += 1;
            }
            j += NR;
        }
    }
    // Leftover columns (or strided B): element by element, the same chain.
    for jj in j..j1 {
        for i in 0..m {
            let mut v = unsafe { *cp(i, jj) };
            for q in q0..q1 {
                v = at(i, q).mul_add(unsafe { *b.offset(q as isize * brs + jj as isize * bcs) }, v);
            }
            unsafe { *cp(i, jj) = v };
        }
    }
}

/// Columns `j0..j1` of `C` over the whole contraction, chunk by chunk.
///
/// # Safety
/// As for [`columns`].
#[inline(always)]
unsafe fn column_range<T: MulAdd, const NR: usize>(
    p: &OrderedParams,
    a: *const T,
    b: *const T,
    c: *mut T,
    j0: usize,
    j1: usize,
) {
    for (q0, q1) in chunks(p.k as usize, p.blocks as usize) {
        unsafe { columns::<T, NR>(p, a, b, c, (j0, j1), (q0, q1)) };
    }
}

/// [`column_range`] compiled for AVX2 with FMA.
///
/// # Safety
/// The CPU has AVX2 and FMA; as for [`columns`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn column_range_avx2<T: MulAdd, const NR: usize>(
    p: &OrderedParams,
    a: *const T,
    b: *const T,
    c: *mut T,
    j0: usize,
    j1: usize,
) {
    unsafe { column_range::<T, NR>(p, a, b, c, j0, j1) }
}

/// Columns `j0..j1` in the best form this CPU runs (the same bits in
/// every form: one fused multiply-add per product).
///
/// # Safety
/// As for [`columns`].
unsafe fn column_range_dispatch<T: MulAdd, const NR: usize>(
    p: &OrderedParams,
    a: *const T,
    b: *const T,
    c: *mut T,
    j0: usize,
    j1: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { column_range_avx2::<T, NR>(p, a, b, c, j0, j1) };
    }
    unsafe { column_range::<T, NR>(p, a, b, c, j0, j1) }
}

/// Multiply-adds below which a product runs on one thread.
const PARALLEL_MACS: usize = 1 << 21;

struct SendPtr<T>(*mut T);
// SAFETY: shared only with threads that `pool::install` joins before the
// entry returns, each writing its own columns of C.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// `C += A·B` in the defined order: columns of tiles split among threads
/// (a fixed split by size, though no split changes a bit).
///
/// # Safety
/// `p`'s strides address only valid elements of `a`, `b` and `c`; `c`
/// does not overlap `a` or `b`.
unsafe fn ordered<T: MulAdd + Send + Sync, const NR: usize>(p: &OrderedParams, a: *const T, b: *const T, c: *mut T) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    if m == 0 || n == 0 || k == 0 || p.blocks <= 0 {
        return;
    }
    let macs = m.saturating_mul(n).saturating_mul(k);
    let panels = n.div_ceil(NR);
    if p.threads <= 1 || macs < PARALLEL_MACS || panels < 2 || crate::pool::pool().is_none() {
        return unsafe { column_range_dispatch::<T, NR>(p, a, b, c, 0, n) };
    }
    // Pieces of whole NR-column panels, a few per thread.
    let pieces = panels.min(4 * p.threads as usize);
    let per = panels.div_ceil(pieces);
    let (ap, bp, cp) = (SendPtr(a as *mut T), SendPtr(b as *mut T), SendPtr(c));
    let (ap, bp, cp) = (&ap, &bp, &cp);
    crate::pool::install(|| {
        use rayon::prelude::*;
        (0..panels.div_ceil(per)).into_par_iter().for_each(|piece| {
            let j0 = piece * per * NR;
            let j1 = ((piece + 1) * per * NR).min(n);
            // SAFETY: pieces write disjoint columns of C.
            unsafe { column_range_dispatch::<T, NR>(p, ap.0, bp.0, cp.0, j0, j1) };
        });
    });
}

/// `C += A·B` (f32) in the defined order of the parameter block.
///
/// # Safety
/// `p` points to valid parameters whose strides address only valid
/// elements of `a`, `b` and `c`; `c` overlaps neither `a` nor `b`.
/// Generated code guarantees both.
pub unsafe extern "C" fn wengert_matmul_acc_f32(p: *const OrderedParams, a: *const f32, b: *const f32, c: *mut f32) {
    unsafe { ordered::<f32, 16>(&*p, a, b, c) }
}

/// `C += A·B` (f64) in the defined order; as [`wengert_matmul_acc_f32`].
///
/// # Safety
/// As for [`wengert_matmul_acc_f32`].
pub unsafe extern "C" fn wengert_matmul_acc_f64(p: *const OrderedParams, a: *const f64, b: *const f64, c: *mut f64) {
    unsafe { ordered::<f64, 8>(&*p, a, b, c) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, element by element.
    fn reference(m: usize, n: usize, k: usize, blocks: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
        let run = k / blocks;
        for i in 0..m {
            for j in 0..n {
                let mut v = c[i * n + j];
                for blk in (0..blocks).rev() {
                    for q in blk * run..(blk + 1) * run {
                        v = a[i * k + q].mul_add(b[q * n + j], v);
                    }
                }
                c[i * n + j] = v;
            }
        }
    }

    #[test]
    fn every_shape_and_thread_count_follows_the_definition_bit_for_bit() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        for &(m, n, k, blocks) in &[
            (1, 1, 1, 1),
            (5, 19, 12, 3),
            (64, 64, 600, 600),
            (9, 33, 520, 2),
            (3, 8, 0, 1),
        ] {
            let a: Vec<f64> = (0..m * k).map(|_| next()).collect();
            let b: Vec<f64> = (0..k * n).map(|_| next()).collect();
            let c0: Vec<f64> = (0..m * n).map(|_| next()).collect();
            let mut want = c0.clone();
            reference(m, n, k, blocks, &a, &b, &mut want);
            for threads in [1, 2, 3] {
                let p = OrderedParams {
                    m: m as i64,
                    n: n as i64,
                    k: k as i64,
                    blocks: blocks as i64,
                    a_rs: k as i64,
                    a_cs: 1,
                    b_rs: n as i64,
                    b_cs: 1,
                    c_rs: n as i64,
                    c_cs: 1,
                    threads,
                };
                let mut got = c0.clone();
                unsafe { wengert_matmul_acc_f64(&p, a.as_ptr(), b.as_ptr(), got.as_mut_ptr()) };
                assert_eq!(got, want, "{m}x{n}x{k}/{blocks}, {threads} threads");
                // f32, and B read by columns (the strided path).
                let (a32, b32): (Vec<f32>, Vec<f32>) = (
                    a.iter().map(|&x| x as f32).collect(),
                    b.iter().map(|&x| x as f32).collect(),
                );
                let bt: Vec<f32> = (0..n * k).map(|t| b32[(t % k) * n + t / k]).collect();
                let mut want32: Vec<f32> = c0.iter().map(|&x| x as f32).collect();
                let run = k.checked_div(blocks).unwrap_or(0);
                for i in 0..m {
                    for j in 0..n {
                        let mut v = want32[i * n + j];
                        for blk in (0..blocks).rev() {
                            for q in blk * run..(blk + 1) * run {
                                v = a32[i * k + q].mul_add(b32[q * n + j], v);
                            }
                        }
                        want32[i * n + j] = v;
                    }
                }
                for (bb, b_rs, b_cs) in [(&b32, n as i64, 1), (&bt, 1, k as i64)] {
                    let mut got32: Vec<f32> = c0.iter().map(|&x| x as f32).collect();
                    let p = OrderedParams { b_rs, b_cs, ..p };
                    unsafe { wengert_matmul_acc_f32(&p, a32.as_ptr(), bb.as_ptr(), got32.as_mut_ptr()) };
                    assert_eq!(
                        got32, want32,
                        "f32 {m}x{n}x{k}/{blocks}, b_cs {b_cs}, {threads} threads"
                    );
                }
            }
        }
    }
}
