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

#[cfg(target_arch = "x86_64")]
use super::small::has_avx2_fma;
use super::small::MulAdd;
use super::SendPtr;

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
    /// 1: AVX-512 tiles (twice as wide), where the CPU runs them; what
    /// [`wide_tiles`] says when the product is compiled. No choice
    /// changes a bit.
    pub wide: i64,
}

/// Whether products should use AVX-512 tiles on this machine: where the
/// calibrated GEMM family is the AVX-512 one (on Zen 4, whose 512-bit
/// instructions are two 256-bit halves, it usually is not), or
/// `WENGERT_GEMM` forces it.
pub fn wide_tiles() -> bool {
    match super::forced_kernel() {
        Ok(Some(k)) => k == super::GemmKernel::Avx512,
        Ok(None) | Err(_) => super::machine_family() == super::GemmKernel::Avx512,
    }
}

/// Whether this CPU runs AVX-512F (what the GEMM family's check says).
fn has_avx512() -> bool {
    super::GemmKernel::Avx512.available()
}

/// Contraction indices per chunk: a chunk's rows of A's columns and its
/// packed panel of B stay in cache while every tile of `C` passes over
/// them.
const CHUNK: usize = 256;
/// Rows of a register tile.
const MR: usize = 6;

/// The contraction indices in the defined order (runs last to first,
/// each ascending), cut into chunks of at most [`CHUNK`] indices, each
/// chunk a list of ascending ranges.
fn chunks(k: usize, blocks: usize) -> Vec<Vec<(usize, usize)>> {
    let run = k.checked_div(blocks).unwrap_or(0);
    let mut out: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut filled = CHUNK;
    for blk in (0..blocks).rev() {
        let (mut lo, hi) = (blk * run, (blk + 1) * run);
        while lo < hi {
            if filled == CHUNK {
                out.push(Vec::new());
                filled = 0;
            }
            let take = (hi - lo).min(CHUNK - filled);
            if let Some(last) = out.last_mut() {
                last.push((lo, lo + take));
            }
            filled += take;
            lo += take;
        }
    }
    out
}

/// Where one tile's operands are: its rows of A (read where they are),
/// the panel of B packed in the chunk's order (`NR` elements per
/// contraction index), and C's tile, `width ≤ NR` columns of it valid.
struct Tile<T> {
    a: *const T,
    ars: isize,
    acs: isize,
    packed: *const T,
    c: *mut T,
    crs: isize,
    ccs: isize,
    width: usize,
}

/// `R` rows × `NR` columns of C over one chunk, element by element: each
/// a chain of fused multiply-adds in the chunk's order (the kernel for
/// CPUs without AVX2, and the definition the vector kernels follow).
///
/// # Safety
/// The tile's pointers address valid elements for `R` rows, `width`
/// columns and the contraction indices of `runs`.
#[inline(always)]
unsafe fn tile_scalar<T: MulAdd, const R: usize, const NR: usize>(t: &Tile<T>, runs: &[(usize, usize)]) {
    for r in 0..R {
        for s in 0..t.width {
            let cp = unsafe { t.c.offset(r as isize * t.crs + s as isize * t.ccs) };
            let mut v = unsafe { *cp };
            let mut u = 0;
            for &(q0, q1) in runs {
                for q in q0..q1 {
                    let x = unsafe { *t.a.offset(r as isize * t.ars + q as isize * t.acs) };
                    v = x.mul_add(unsafe { *t.packed.add(u * NR + s) }, v);
                    u += 1;
                }
            }
            unsafe { *cp = v };
        }
    }
}

/// [`tile_scalar`] in vector registers (AVX2, or AVX-512 for the wide
/// panels): `R` rows of two vectors each, one vector fused multiply-add
/// per product lane (the scalar chain lane by lane, so the same bits).
#[cfg(target_arch = "x86_64")]
macro_rules! simd_tile {
    ($name:ident, $features:literal, $t:ty, $v:ty, $lanes:literal, $set1:ident, $fma:ident, $load:ident, $store:ident) => {
        /// # Safety
        /// The CPU has the features; as for [`tile_scalar`].
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize>(t: &Tile<$t>, runs: &[(usize, usize)]) {
            use std::arch::x86_64::*;
            const NR: usize = 2 * $lanes;
            let mut acc: [[$v; 2]; R] = [[$set1(0.0); 2]; R];
            let mut row = [0 as $t; NR];
            let direct = t.ccs == 1 && t.width == NR;
            for (r, regs) in acc.iter_mut().enumerate() {
                let cr = unsafe { t.c.offset(r as isize * t.crs) };
                if direct {
                    *regs = unsafe { [$load(cr), $load(cr.add($lanes))] };
                    continue;
                }
                for (s, x) in row.iter_mut().enumerate().take(t.width) {
                    *x = unsafe { *cr.offset(s as isize * t.ccs) };
                }
                *regs = unsafe { [$load(row.as_ptr()), $load(row.as_ptr().add($lanes))] };
            }
            let mut bp = t.packed;
            for &(q0, q1) in runs {
                let mut ap = unsafe { t.a.offset(q0 as isize * t.acs) };
                for _ in q0..q1 {
                    let (b0, b1) = unsafe { ($load(bp), $load(bp.add($lanes))) };
                    for (r, regs) in acc.iter_mut().enumerate() {
                        let x = $set1(unsafe { *ap.offset(r as isize * t.ars) });
                        regs[0] = $fma(x, b0, regs[0]);
                        regs[1] = $fma(x, b1, regs[1]);
                    }
                    bp = unsafe { bp.add(NR) };
                    ap = unsafe { ap.offset(t.acs) };
                }
            }
            for (r, regs) in acc.iter().enumerate() {
                if direct {
                    let cr = unsafe { t.c.offset(r as isize * t.crs) };
                    unsafe {
                        $store(cr, regs[0]);
                        $store(cr.add($lanes), regs[1]);
                    }
                    continue;
                }
                unsafe {
                    $store(row.as_mut_ptr(), regs[0]);
                    $store(row.as_mut_ptr().add($lanes), regs[1]);
                }
                for (s, x) in row.iter().enumerate().take(t.width) {
                    unsafe { *t.c.offset(r as isize * t.crs + s as isize * t.ccs) = *x };
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
simd_tile!(
    tile_avx2_f32,
    "avx2,fma",
    f32,
    __m256,
    8,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps
);
#[cfg(target_arch = "x86_64")]
simd_tile!(
    tile_avx2_f64,
    "avx2,fma",
    f64,
    __m256d,
    4,
    _mm256_set1_pd,
    _mm256_fmadd_pd,
    _mm256_loadu_pd,
    _mm256_storeu_pd
);
#[cfg(target_arch = "x86_64")]
simd_tile!(
    tile_avx512_f32,
    "avx512f,avx2,fma",
    f32,
    __m512,
    16,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps
);
#[cfg(target_arch = "x86_64")]
simd_tile!(
    tile_avx512_f64,
    "avx512f,avx2,fma",
    f64,
    __m512d,
    8,
    _mm512_set1_pd,
    _mm512_fmadd_pd,
    _mm512_loadu_pd,
    _mm512_storeu_pd
);

/// The element types of the ordered product: the tile in the best form
/// this CPU runs (every form computes every element by the same chain).
trait Ordered: MulAdd + Send + Sync {
    /// Lanes of an AVX2 vector; a panel is two vectors wide, or four
    /// AVX2 vectors' worth for AVX-512 tiles.
    const LANES: usize;

    /// Columns of a packed panel.
    fn nr(wide: bool) -> usize {
        if wide {
            4 * Self::LANES
        } else {
            2 * Self::LANES
        }
    }

    /// # Safety
    /// As for [`tile_scalar`]; `wide` only where the CPU runs AVX-512,
    /// and the panel `nr(wide)` columns wide.
    unsafe fn tile<const R: usize>(t: &Tile<Self>, runs: &[(usize, usize)], wide: bool);
}

macro_rules! ordered_type {
    ($t:ty, $avx2:ident, $avx512:ident, $lanes:literal) => {
        impl Ordered for $t {
            const LANES: usize = $lanes;

            unsafe fn tile<const R: usize>(t: &Tile<$t>, runs: &[(usize, usize)], wide: bool) {
                #[cfg(target_arch = "x86_64")]
                {
                    if wide {
                        // SAFETY: the caller checked the CPU runs AVX-512.
                        return unsafe { $avx512::<R>(t, runs) };
                    }
                    if has_avx2_fma() {
                        // SAFETY: the CPU has the features the kernel was compiled for.
                        return unsafe { $avx2::<R>(t, runs) };
                    }
                }
                let _ = wide;
                // Without hardware FMA, `mul_add` is a (slow, exact)
                // library call; such CPUs are rare among those this runs on.
                unsafe { tile_scalar::<$t, R, { 2 * $lanes }>(t, runs) }
            }
        }
    };
}

ordered_type!(f32, tile_avx2_f32, tile_avx512_f32, 8);
ordered_type!(f64, tile_avx2_f64, tile_avx512_f64, 4);

/// Columns `j0..j1` of `C` over the whole contraction: chunk by chunk
/// (in the defined order), panel by panel of `NR` columns with B's panel
/// packed contiguously in the chunk's order (packing copies values: the
/// bits stay; unpacked, a row stride of 1 KiB put a panel's rows in a
/// few cache sets), then every tile of rows, reading A where it is.
///
/// # Safety
/// `p`'s strides address only valid elements; no other thread writes
/// these columns of C.
unsafe fn column_range<T: Ordered>(p: &OrderedParams, a: *const T, b: *const T, c: *mut T, j0: usize, j1: usize) {
    let m = p.m as usize;
    let wide = p.wide != 0 && has_avx512();
    let nr = T::nr(wide);
    let (ars, acs, brs, bcs, crs, ccs) = (
        p.a_rs as isize,
        p.a_cs as isize,
        p.b_rs as isize,
        p.b_cs as isize,
        p.c_rs as isize,
        p.c_cs as isize,
    );
    // Buffers for the longest chunk this product has: a loop's
    // step-by-step accumulation calls this once per step with a short
    // contraction, and must not clear a whole chunk's worth each time.
    let chunk = (p.k as usize).min(CHUNK);
    let mut packed = vec![T::default(); chunk * nr];
    // Long rows of A (a row-major A of many steps: 32 KiB apart in the
    // char-RNN) are copied per chunk into rows of `chunk` elements; then
    // A, like B, is read in the chunk's order, as one run.
    let pack_a = acs == 1 && ars.unsigned_abs() > CHUNK;
    let mut packed_a = vec![T::default(); if pack_a { m * chunk } else { 0 }];
    for chunk_runs in chunks(p.k as usize, p.blocks as usize) {
        let len: usize = chunk_runs.iter().map(|&(q0, q1)| q1 - q0).sum();
        let whole = [(0, len)];
        let (a, ars, acs, runs) = if pack_a {
            for (i, dst) in packed_a.chunks_exact_mut(chunk).enumerate() {
                let mut u = 0;
                for &(q0, q1) in &chunk_runs {
                    // SAFETY: row i of A holds elements q0..q1 contiguously.
                    let src = unsafe { std::slice::from_raw_parts(a.offset(i as isize * ars + q0 as isize), q1 - q0) };
                    dst[u..u + (q1 - q0)].copy_from_slice(src);
                    u += q1 - q0;
                }
            }
            (packed_a.as_ptr(), chunk as isize, 1, &whole[..])
        } else {
            (a, ars, acs, &chunk_runs[..])
        };
        let mut j = j0;
        while j < j1 {
            let width = (j1 - j).min(nr);
            let mut rows = packed.chunks_exact_mut(nr);
            for &(q0, q1) in &chunk_runs {
                for q in q0..q1 {
                    let (Some(dst), src) = (rows.next(), unsafe { b.offset(q as isize * brs + j as isize * bcs) })
                    else {
                        break;
                    };
                    if bcs == 1 && width == nr {
                        // A copy of constant size, inlined (a call to
                        // `memmove` per row of a panel took 8% of the
                        // char-RNN's step).
                        // SAFETY: row q of B holds nr contiguous elements from j.
                        let row = unsafe { std::slice::from_raw_parts(src, nr) };
                        if nr == 2 * T::LANES {
                            dst[..2 * T::LANES].copy_from_slice(&row[..2 * T::LANES]);
                        } else {
                            dst[..4 * T::LANES].copy_from_slice(&row[..4 * T::LANES]);
                        }
                    } else {
                        for (s, x) in dst[..width].iter_mut().enumerate() {
                            *x = unsafe { *src.offset(s as isize * bcs) };
                        }
                    }
                }
            }
            let mut i = 0;
            while i < m {
                let t = Tile {
                    a: unsafe { a.offset(i as isize * ars) },
                    ars,
                    acs,
                    packed: packed.as_ptr(),
                    c: unsafe { c.offset(i as isize * crs + j as isize * ccs) },
                    crs,
                    ccs,
                    width,
                };
                // Leftover rows in one tile of their own height.
                let rows = (m - i).min(MR);
                unsafe {
                    match rows {
                        6 => T::tile::<6>(&t, runs, wide),
                        5 => T::tile::<5>(&t, runs, wide),
                        4 => T::tile::<4>(&t, runs, wide),
                        3 => T::tile::<3>(&t, runs, wide),
                        2 => T::tile::<2>(&t, runs, wide),
                        _ => T::tile::<1>(&t, runs, wide),
                    }
                }
                i += rows;
            }
            j += width;
        }
    }
}

/// Multiply-adds below which a product runs on one thread.
const PARALLEL_MACS: usize = 1 << 21;

/// `C += A·B` in the defined order: columns of tiles split among threads
/// (a fixed split by size, though no split changes a bit).
///
/// # Safety
/// `p`'s strides address only valid elements of `a`, `b` and `c`; `c`
/// does not overlap `a` or `b`.
unsafe fn ordered<T: Ordered>(p: &OrderedParams, a: *const T, b: *const T, c: *mut T) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    if m == 0 || n == 0 || k == 0 || p.blocks <= 0 {
        return;
    }
    let macs = m.saturating_mul(n).saturating_mul(k);
    let nr = T::nr(p.wide != 0 && has_avx512());
    let panels = n.div_ceil(nr);
    if p.threads <= 1 || macs < PARALLEL_MACS || panels < 2 || crate::pool::pool().is_none() {
        return unsafe { column_range::<T>(p, a, b, c, 0, n) };
    }
    // One piece of whole NR-column panels per thread: each piece packs
    // A's chunks again, so more pieces would cost more than they balance.
    let pieces = panels.min(p.threads as usize);
    let per = panels.div_ceil(pieces);
    let (ap, bp, cp) = (SendPtr(a as *mut T), SendPtr(b as *mut T), SendPtr(c));
    // (By reference: a closure naming `ap.0` would capture the bare
    // pointer.)
    let (ap, bp, cp) = (&ap, &bp, &cp);
    crate::pool::install(|| {
        use rayon::prelude::*;
        (0..panels.div_ceil(per)).into_par_iter().for_each(|piece| {
            let j0 = piece * per * nr;
            let j1 = ((piece + 1) * per * nr).min(n);
            // SAFETY: pieces write disjoint columns of C.
            unsafe { column_range::<T>(p, ap.0, bp.0, cp.0, j0, j1) };
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
    unsafe { ordered::<f32>(&*p, a, b, c) }
}

/// `C += A·B` (f64) in the defined order; as [`wengert_matmul_acc_f32`].
///
/// # Safety
/// As for [`wengert_matmul_acc_f32`].
pub unsafe extern "C" fn wengert_matmul_acc_f64(p: *const OrderedParams, a: *const f64, b: *const f64, c: *mut f64) {
    unsafe { ordered::<f64>(&*p, a, b, c) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, element by element.
    fn reference<T: MulAdd>(m: usize, n: usize, k: usize, blocks: usize, a: &[T], b: &[T], c: &mut [T]) {
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
            // f32, and B read by columns (the strided path).
            let (a32, b32): (Vec<f32>, Vec<f32>) = (
                a.iter().map(|&x| x as f32).collect(),
                b.iter().map(|&x| x as f32).collect(),
            );
            let bt: Vec<f32> = (0..n * k).map(|t| b32[(t % k) * n + t / k]).collect();
            let mut want32: Vec<f32> = c0.iter().map(|&x| x as f32).collect();
            reference(m, n, k, blocks, &a32, &b32, &mut want32);
            for (threads, wide) in [(1, 0), (2, 0), (3, 0), (1, 1), (2, 1)] {
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
                    wide,
                };
                let mut got = c0.clone();
                unsafe { wengert_matmul_acc_f64(&p, a.as_ptr(), b.as_ptr(), got.as_mut_ptr()) };
                assert_eq!(got, want, "{m}x{n}x{k}/{blocks}, {threads} threads, wide {wide}");
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
