//! Operands copied by rows before a product ([`super::GemmParams::copy`]):
//! a per-thread scratch buffer and a tiled copy whose common case, a
//! column-major operand (a transposed weight matrix), transposes 8×8
//! (f32) or 4×4 (f64) blocks in vector registers.
//!
//! Why copy at all: the `gemm` crate packs an operand whose rows are not
//! contiguous slowly in some families. On AMD Zen 5 its AVX-512 kernels
//! took 310 µs for the chain's `Ȳ·Wᵀ` (64×512×512) against 171 µs for
//! `X·W` of the same sizes; a scalar copy of `Wᵀ` by rows cost ~70 µs,
//! the vector one ~38 µs (copy and product 191 µs). Calibration decides
//! per shape.

use std::cell::RefCell;

std::thread_local! {
    /// Each thread's buffer, kept between calls so that a product called
    /// once per step does not allocate (and fault in fresh pages) every
    /// time. Words of 8 bytes, aligned for both element types.
    static SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` elements of scratch: the thread's buffer, or a fresh
/// one while that is in use (a thread waiting in the pool may run another
/// product in the middle of its own).
pub(super) fn with_scratch<T: Transpose, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    if len == 0 {
        return f(&mut []);
    }
    let words = (len * std::mem::size_of::<T>()).div_ceil(8);
    let run = |v: &mut Vec<u64>| {
        if v.len() < words {
            v.resize(words, 0);
        }
        // SAFETY: the buffer holds at least `len` elements of `T` (a
        // float, for which every bit pattern is valid), is aligned for
        // it (8 bytes), and is borrowed for the duration of `f` only.
        f(unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut T, len) })
    };
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut v) => run(&mut v),
        Err(_) => run(&mut Vec::new()),
    })
}

/// Element types with an in-register block transpose.
pub(super) trait Transpose: Copy {
    /// Block edge of [`Transpose::block`].
    const EDGE: usize;
    /// Whether this CPU runs [`Transpose::block`].
    fn vector() -> bool;
    /// Writes the transpose of the `EDGE × EDGE` block whose rows start
    /// `src_stride` elements apart at `src` to rows `dst_stride` apart at
    /// `dst`.
    ///
    /// # Safety
    /// [`Transpose::vector`] holds; both blocks are valid.
    unsafe fn block(src: *const Self, src_stride: usize, dst: *mut Self, dst_stride: usize);
}

/// The [`Transpose`] of an element type: its block edge and x86_64
/// kernel (elsewhere, and where the CPU lacks AVX2, `vector` is false
/// and `block` copies element by element, never reached by `by_rows`).
macro_rules! transpose_impl {
    ($t:ty, $edge:literal, $kernel:ident) => {
        impl Transpose for $t {
            const EDGE: usize = $edge;
            fn vector() -> bool {
                super::small::has_avx2_fma()
            }
            unsafe fn block(src: *const $t, src_stride: usize, dst: *mut $t, dst_stride: usize) {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: per the caller (AVX is part of AVX2).
                unsafe {
                    $kernel(src, src_stride, dst, dst_stride)
                }
                #[cfg(not(target_arch = "x86_64"))]
                for i in 0..$edge {
                    for j in 0..$edge {
                        // SAFETY: per the caller, both blocks are valid.
                        unsafe { *dst.add(j * dst_stride + i) = *src.add(i * src_stride + j) };
                    }
                }
            }
        }
    };
}

transpose_impl!(f32, 8, transpose8_f32);
transpose_impl!(f64, 4, transpose4_f64);

/// 8×8 f32 transpose: pairs interleaved, then quads, then 128-bit halves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8_f32(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    // SAFETY: per the caller, every row read and written is valid.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        for i in 0..4 {
            _mm256_storeu_ps(dst.add(i * ds), _mm256_permute2f128_ps::<0x20>(u[i], u[i + 4]));
            _mm256_storeu_ps(dst.add((i + 4) * ds), _mm256_permute2f128_ps::<0x31>(u[i], u[i + 4]));
        }
    }
}

/// 4×4 f64 transpose: pairs interleaved, then 128-bit halves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose4_f64(src: *const f64, ss: usize, dst: *mut f64, ds: usize) {
    use std::arch::x86_64::*;
    // SAFETY: per the caller, every row read and written is valid.
    unsafe {
        let r: [__m256d; 4] = std::array::from_fn(|i| _mm256_loadu_pd(src.add(i * ss)));
        let t = [
            _mm256_unpacklo_pd(r[0], r[1]),
            _mm256_unpackhi_pd(r[0], r[1]),
            _mm256_unpacklo_pd(r[2], r[3]),
            _mm256_unpackhi_pd(r[2], r[3]),
        ];
        for i in 0..2 {
            _mm256_storeu_pd(dst.add(i * ds), _mm256_permute2f128_pd::<0x20>(t[i], t[i + 2]));
            _mm256_storeu_pd(dst.add((i + 2) * ds), _mm256_permute2f128_pd::<0x31>(t[i], t[i + 2]));
        }
    }
}

/// Asks for the cache line at `p` to be brought into the cache (a hint:
/// it never faults, whatever `p` is).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Copies the `rows × cols` matrix at `src` (element `(i, j)` at
/// `i·rs + j·cs`) into `dst` by rows. A column-major source (`rs = 1`,
/// `cs ≥ rows`) goes by vector blocks; anything else, and the edges, by
/// square tiles of scalars.
///
/// # Safety
/// The strides address valid elements of `src`; `dst` holds `rows·cols`.
pub(super) unsafe fn by_rows<T: Transpose>(
    rows: usize,
    cols: usize,
    src: *const T,
    rs: isize,
    cs: isize,
    dst: &mut [T],
) {
    let dst = &mut dst[..rows * cols];
    let e = T::EDGE;
    let (mut rows_done, mut cols_done) = (0, 0);
    if rs == 1 && cs >= rows as isize && T::vector() {
        (rows_done, cols_done) = (rows - rows % e, cols - cols % e);
        let out = dst.as_mut_ptr();
        // Along the destination's rows, so that each written line is
        // completed by consecutive blocks: with the other order, a
        // 512-wide matrix's rows 2 KiB apart fell into two L1 sets and
        // the copy of `Wᵀ` took longer than the product.
        // Two blocks down each column at once use a source line (64
        // bytes: 16 f32 or 8 f64 of a column) whole before it is evicted.
        // Each pass over the columns reads one line of every source
        // column, 2 KiB apart for a 512-wide matrix: a stride the
        // hardware does not run ahead of. A weight read for the first time
        // in a step comes from memory (the chain's 64 MiB of weights do not
        // fit in a cache), so each pass asks for the lines it will read
        // two passes later: a cold 512² copy took ~71 µs so, ~92–120 µs
        // without.
        for i0 in (0..rows_done).step_by(2 * e) {
            let ahead = i0 + 4 * e;
            for j in (0..cols_done).step_by(e) {
                if ahead < rows_done {
                    for jj in j..j + e {
                        prefetch(src.wrapping_offset(ahead as isize + jj as isize * cs));
                    }
                }
                for i in (i0..rows_done.min(i0 + 2 * e)).step_by(e) {
                    // SAFETY: the block's source columns `j..j+e` hold
                    // rows `i..i+e` (per the caller), and the destination
                    // block is inside `dst`.
                    unsafe {
                        T::block(
                            src.offset(i as isize + j as isize * cs),
                            cs as usize,
                            out.add(i * cols + j),
                            cols,
                        )
                    };
                }
            }
        }
    }
    // What the blocks left: the rows below them, then the columns to
    // their right.
    let mut scalar = |r0: usize, r1: usize, c0: usize, c1: usize| {
        const TILE: usize = 16;
        for i0 in (r0..r1).step_by(TILE) {
            for j0 in (c0..c1).step_by(TILE) {
                for j in j0..(j0 + TILE).min(c1) {
                    for i in i0..(i0 + TILE).min(r1) {
                        // SAFETY: per the caller.
                        dst[i * cols + j] = unsafe { *src.offset(i as isize * rs + j as isize * cs) };
                    }
                }
            }
        }
    };
    scalar(rows_done, rows, 0, cols);
    scalar(0, rows_done, cols_done, cols);
}

/// [`by_rows`] on up to `threads` threads of the pool, in bands of rows
/// (a copy of 1 MiB took ~40 µs on one thread, against ~85 µs for the
/// product that follows it on two). Every band is copied exactly as the
/// whole would be: threads never change the result.
///
/// # Safety
/// As for [`by_rows`].
pub(super) unsafe fn by_rows_on<T: Transpose + Send + Sync>(
    threads: i64,
    rows: usize,
    cols: usize,
    src: *const T,
    rs: isize,
    cs: isize,
    dst: &mut [T],
) {
    use rayon::prelude::*;
    const PARALLEL_ELEMENTS: usize = 1 << 16;
    let threads = threads.max(1) as usize;
    if threads == 1 || rows * cols < PARALLEL_ELEMENTS || crate::pool::pool().is_none() {
        // SAFETY: per the caller.
        return unsafe { by_rows(rows, cols, src, rs, cs, dst) };
    }
    // Bands of whole pairs of blocks (see `by_rows`).
    let band = rows.div_ceil(threads).next_multiple_of(2 * T::EDGE);
    let src = super::SendPtr(src as *mut T);
    crate::pool::install(|| {
        dst[..rows * cols]
            .par_chunks_mut(band * cols)
            .enumerate()
            .for_each(|(b, d)| {
                let r0 = b * band;
                // SAFETY: the band's rows `r0..r0 + d.len() / cols` are
                // rows of the source (per the caller).
                unsafe { by_rows(d.len() / cols, cols, src.get().offset(r0 as isize * rs), rs, cs, d) };
            });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout (row-major, column-major with and without padding,
    /// both negative strides) and edge sizes around the block edges give
    /// the plain element-by-element copy.
    #[test]
    fn copies_match_the_definition() {
        fn check<T: Transpose + PartialEq + std::fmt::Debug + From<u16>>() {
            for (rows, cols) in [(1, 1), (3, 5), (8, 8), (9, 17), (16, 4), (33, 40), (64, 7)] {
                for (rs, cs) in [
                    (1, rows as isize),
                    (1, rows as isize + 3),
                    (cols as isize, 1),
                    (2, 2 * rows as isize),
                    (-1, -(rows as isize)),
                ] {
                    let len = (rows + 3) * (cols + 3) * 2 + 8;
                    let base: Vec<T> = (0..len).map(|x| T::from(x as u16)).collect();
                    // Start where negative strides stay inside the buffer.
                    let origin = if rs < 0 { len - 1 } else { 0 };
                    let src = unsafe { base.as_ptr().add(origin) };
                    let mut got = vec![T::from(0); rows * cols];
                    unsafe { by_rows(rows, cols, src, rs, cs, &mut got) };
                    for i in 0..rows {
                        for j in 0..cols {
                            let at = origin as isize + i as isize * rs + j as isize * cs;
                            assert_eq!(
                                got[i * cols + j],
                                base[at as usize],
                                "{rows}x{cols} ({rs},{cs}) [{i},{j}]"
                            );
                        }
                    }
                }
            }
        }
        check::<f32>();
        check::<f64>();
    }

    /// Bands on the pool give the copy of one thread.
    #[test]
    fn bands_on_threads_give_the_same_copy() {
        let (rows, cols) = (300, 517);
        let src: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let one = {
            let mut d = vec![0f32; rows * cols];
            unsafe { by_rows_on(1, rows, cols, src.as_ptr(), 1, rows as isize, &mut d) };
            d
        };
        for threads in [2, 3] {
            let mut d = vec![0f32; rows * cols];
            unsafe { by_rows_on(threads, rows, cols, src.as_ptr(), 1, rows as isize, &mut d) };
            assert!(d == one, "{threads} threads");
        }
        assert_eq!(one[cols + 2], src[2 * rows + 1]);
    }

    /// The scratch buffer is lent once per thread at a time; a nested use
    /// gets a buffer of its own.
    #[test]
    fn nested_scratch_is_a_separate_buffer() {
        with_scratch::<f32, _>(10, |outer| {
            outer.fill(1.0);
            with_scratch::<f32, _>(10, |inner| inner.fill(2.0));
            assert!(outer.iter().all(|&x| x == 1.0));
        });
    }
}
