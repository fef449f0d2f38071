//! Matrix multiplication kernels that generated code calls.
//!
//! Generated code passes a pointer to a constant parameter block (shapes,
//! strides, the kernel family and the thread count are known at compile
//! time) and the three data pointers. Strides are in elements and may be
//! anything the `gemm` crate accepts, so a transposed operand (the linear
//! layer's `Xᵀ Ȳ` and `Ȳ Wᵀ`) is read in place, never copied.
//!
//! Which code computes a product is decided once, at compile time, by
//! [`choose`]: tiny products by plain loops ([`small`]), the rest by one of
//! the `gemm` crate's kernel families ([`family`]), picked for this
//! machine by a one-time measurement ([`machine_family`]) or forced with
//! `WENGERT_GEMM`. Large products run on the shared pool
//! ([`crate::pool`]); the `gemm` crate splits the output among threads,
//! never the sum over `k`, so every thread count gives the same bits.

mod copy;
mod family;
pub mod ordered;
mod small;

use gemm_common::Parallelism;
pub use small::try_dot_rows8;
use std::sync::OnceLock;

/// Shapes and strides of one (batched) product `C = A·B`, laid out as the
/// generated code stores it: fifteen `i64`s.
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
    /// The [`GemmKernel`] that computes it, as its `i64` code.
    pub kernel: i64,
    /// Threads to use (1: the caller's thread only).
    pub threads: i64,
    /// 1: a row-major C is computed as written, the microkernels storing
    /// its tiles by rows; 0: as `Cᵀ = Bᵀ·Aᵀ` (the `gemm` crate's own
    /// choice). Which is faster depends on the operands' layouts: the
    /// chain's `Ȳ·Wᵀ` took 1.36× less time as written on a Xeon (the
    /// transposed form must repack all of `W` by rows, as written only
    /// `Ȳ`), other products 1.2× to 5.5× more (`mlp32_xt_dh`). See
    /// [`GemmChoice`].
    pub direct: i64,
    /// Operands first copied by rows into a scratch buffer: 1 for A, 2
    /// for B, 3 for both. The crate's packing of an operand whose rows are
    /// not contiguous can be slow: on AMD Zen 5 the AVX-512 family took
    /// about 2× longer for the chain's `Ȳ·Wᵀ` (310–330 µs) than for `X·W`
    /// of the same sizes (153–171 µs), in either orientation, far more
    /// than copying `Wᵀ` by rows costs (~40 µs). See [`GemmChoice`].
    pub copy: i64,
}

/// What [`choose`] decides for one product: the kernel family and, for
/// the `gemm` crate's families, whether a row-major C is computed as
/// written ([`GemmParams::direct`]) and which operands are first copied
/// by rows ([`GemmParams::copy`]: 1 for A, 2 for B).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmChoice {
    pub kernel: GemmKernel,
    pub direct: bool,
    pub copy: u8,
}

impl GemmChoice {
    /// The family in its default orientation, reading its operands in
    /// place.
    pub fn of(kernel: GemmKernel) -> GemmChoice {
        GemmChoice {
            kernel,
            direct: false,
            copy: 0,
        }
    }

    /// `avx512`, `avx512 direct` when computed as written, `avx512 copy
    /// B` when B is first copied by rows.
    pub fn name(self) -> String {
        let mut s = self.kernel.name().to_string();
        if self.direct {
            s.push_str(" direct");
        }
        match self.copy {
            0 => {}
            1 => s.push_str(" copy A"),
            2 => s.push_str(" copy B"),
            _ => s.push_str(" copy A B"),
        }
        s
    }

    /// The choice written in `p` (see [`GemmChoice::apply`]).
    pub fn of_params(p: &GemmParams) -> GemmChoice {
        GemmChoice {
            kernel: GemmKernel::from_code(p.kernel),
            direct: p.direct != 0,
            copy: (p.copy & 3) as u8,
        }
    }

    /// Writes the choice into `p`'s kernel, orientation and copies.
    pub fn apply(self, p: &mut GemmParams) {
        p.kernel = self.kernel.code();
        p.direct = i64::from(self.direct);
        p.copy = i64::from(self.copy & 3);
    }
}

/// Products of at most this many multiply-adds are computed by plain
/// loops instead of the `gemm` crate, whose fixed cost (kernel dispatch,
/// packing) is several hundred nanoseconds: a loop step's 64×64
/// matrix-vector product took 0.4 µs through it.
pub const SMALL_PRODUCT: i64 = 32 * 1024;

/// Products of fewer multiply-adds than this run on the caller's thread
/// even when the executable may use more. Waking the pool's sleeping
/// workers costs tens of microseconds on a shared machine: the MLP step at
/// B = 32 (two 6.4M multiply-add products of ~130 µs each, ~88 µs on two
/// threads when called back to back) took 1.28× *longer* on two threads
/// with a threshold of 1M; at 16M it runs serially and B = 128 (25.7M)
/// and the chain (16.8M) still split.
pub const PARALLEL_PRODUCT: i64 = 1 << 24;

/// The environment variable that forces a kernel family for every product
/// above [`SMALL_PRODUCT`]: `loops`, `scalar`, `fma` or `avx512`.
pub const GEMM_ENV: &str = "WENGERT_GEMM";

/// Who computes a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmKernel {
    /// Plain loops in unit-stride order (AVX2+FMA where the CPU has it).
    Loops,
    /// The `gemm` crate's portable kernels.
    Scalar,
    /// The `gemm` crate's AVX2+FMA kernels (256-bit).
    Fma,
    /// The `gemm` crate's AVX-512 kernels.
    Avx512,
}

impl GemmKernel {
    pub const ALL: [GemmKernel; 4] = [
        GemmKernel::Loops,
        GemmKernel::Scalar,
        GemmKernel::Fma,
        GemmKernel::Avx512,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GemmKernel::Loops => "loops",
            GemmKernel::Scalar => "scalar",
            GemmKernel::Fma => "fma",
            GemmKernel::Avx512 => "avx512",
        }
    }

    pub fn from_name(name: &str) -> Option<GemmKernel> {
        GemmKernel::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The code stored in [`GemmParams::kernel`].
    pub fn code(self) -> i64 {
        GemmKernel::ALL.iter().position(|&k| k == self).unwrap_or(0) as i64
    }

    fn from_code(code: i64) -> GemmKernel {
        GemmKernel::ALL.get(code as usize).copied().unwrap_or(GemmKernel::Loops)
    }

    /// Whether this CPU runs the family.
    pub fn available(self) -> bool {
        match self {
            GemmKernel::Loops | GemmKernel::Scalar => true,
            GemmKernel::Fma => {
                #[cfg(target_arch = "x86_64")]
                {
                    small::has_avx2_fma()
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    false
                }
            }
            GemmKernel::Avx512 => {
                #[cfg(target_arch = "x86_64")]
                {
                    small::has_avx2_fma() && std::arch::is_x86_feature_detected!("avx512f")
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    false
                }
            }
        }
    }
}

/// The family forced by `WENGERT_GEMM`, if set: `Err` names a value that
/// is not a family or a family this CPU cannot run.
pub fn forced_kernel() -> Result<Option<GemmKernel>, String> {
    let Ok(v) = std::env::var(GEMM_ENV) else {
        return Ok(None);
    };
    match GemmKernel::from_name(v.trim()) {
        Some(k) if k.available() => Ok(Some(k)),
        Some(k) => Err(format!("{GEMM_ENV}={v}: this CPU cannot run the {} kernels", k.name())),
        None => Err(format!(
            "{GEMM_ENV}={v}: expected one of {}",
            GemmKernel::ALL.map(|k| k.name()).join(", ")
        )),
    }
}

/// The kernel family for products too large for loops on this machine,
/// measured once per process: the AVX-512 family where it beats the
/// AVX2+FMA family by more than 25% on a probe product (a square 256³
/// f32 product, best of seven alternating runs each), else AVX2+FMA; the portable
/// kernels where neither runs. The margin keeps the choice stable on a
/// noisy machine (on Zen 4 the probe has read AVX-512 1.16× faster and,
/// in another process, 1.08× slower). On an Intel Xeon AVX-512 measured about 2× faster; on
/// AMD Zen 4 (512-bit instructions as two 256-bit halves) the two are
/// within a few percent on this probe and far apart on some shapes, which
/// is why products below [`CALIBRATED_PRODUCT`] are timed one by one.
pub fn machine_family() -> GemmKernel {
    machine().0
}

/// How [`machine_family`] was chosen, for `--explain` and dumps.
pub fn machine_report() -> String {
    let (family, probe) = machine();
    let forced = match forced_kernel() {
        Ok(Some(k)) => format!("; {GEMM_ENV} forces {}", k.name()),
        Ok(None) => String::new(),
        Err(e) => format!("; {e}"),
    };
    match probe {
        Some((fma, wide)) => format!(
            "{}: probe 256³ f32 product {:.1} µs with fma, {:.1} µs with avx512{forced}",
            family.name(),
            fma * 1e6,
            wide * 1e6
        ),
        None => format!("{}: the only family this CPU runs{forced}", family.name()),
    }
}

/// The family and, if both ran, the probe's seconds (fma, avx512).
fn machine() -> (GemmKernel, Option<(f64, f64)>) {
    static FAMILY: OnceLock<(GemmKernel, Option<(f64, f64)>)> = OnceLock::new();
    *FAMILY.get_or_init(|| {
        if !GemmKernel::Fma.available() {
            return (GemmKernel::Scalar, None);
        }
        if !GemmKernel::Avx512.available() {
            return (GemmKernel::Fma, None);
        }
        let (fma, wide) = probe_seconds();
        let family = if wide < fma / 1.25 {
            GemmKernel::Avx512
        } else {
            GemmKernel::Fma
        };
        (family, Some((fma, wide)))
    })
}

/// The best of seven timings of a 256³ f32 product with the AVX2 and the
/// AVX-512 family, alternating (timing one family's runs, then the
/// other's, once made AVX2 look 1.5× slower: the machine had a slow
/// moment during its runs).
fn probe_seconds() -> (f64, f64) {
    const S: usize = 256;
    let a: Vec<f32> = (0..S * S).map(|i| (i % 17) as f32 * 0.25 - 2.0).collect();
    let b: Vec<f32> = (0..S * S).map(|i| (i % 13) as f32 * 0.5 - 3.0).collect();
    let mut c = vec![0f32; S * S];
    let params = [GemmKernel::Fma, GemmKernel::Avx512].map(|k| GemmParams::contiguous(S, S, S, k, 1));
    let mut best = [f64::INFINITY; 2];
    for round in 0..8 {
        for (i, p) in params.iter().enumerate() {
            let t = std::time::Instant::now();
            // SAFETY: the parameters describe the three contiguous
            // buffers; both families are available (checked by the
            // caller).
            unsafe { wengert_gemm_f32(p, a.as_ptr(), b.as_ptr(), c.as_mut_ptr()) };
            // The first round warms caches.
            if round > 0 {
                best[i] = best[i].min(t.elapsed().as_secs_f64());
            }
        }
    }
    std::hint::black_box(&c);
    (best[0], best[1])
}

/// Products below this many multiply-adds that are not small enough for
/// loops outright are timed under each candidate when first compiled (a
/// run takes under ~0.7 ms here, so timing costs a few milliseconds, once
/// per shape per process): which family is fastest depends on the shape.
/// On Zen 4 (BENCHMARKS.md's GEMM table): AVX-512 took 0.89× AVX2's time
/// for the chain's `X·W` (64×512×512) but 2.04× for its `Ȳ·Wᵀ` (same
/// sizes, B transposed); 0.81× for the MLP's `Ȳ·W2ᵀ` (k = 10, B = 1024);
/// for the MLP's large 1024-row products the two were within 7%. Larger products take the machine's
/// family (their timing would cost tens of milliseconds of compile time).
pub const CALIBRATED_PRODUCT: i64 = 1 << 25;

/// Who computes the product `p` (its shapes, layout and `threads`) of f32
/// (`f64 == false`) or f64 elements on this machine:
/// - `WENGERT_GEMM`'s family if set;
/// - loops up to [`SMALL_PRODUCT`] multiply-adds;
/// - below [`CALIBRATED_PRODUCT`], the fastest of loops (up to four times
///   [`SMALL_PRODUCT`]) and the families this CPU runs, each in both
///   orientations ([`GemmParams::direct`]), timed on this shape and
///   layout once per process; another choice than [`machine_family`] in
///   its default orientation must win by 5% (so that noise rarely flips
///   a choice between runs: which code computes a product decides its
///   last bits);
/// - else [`machine_family`].
pub fn choose(p: &GemmParams, f64: bool) -> Result<GemmChoice, String> {
    if let Some(k) = forced_kernel()? {
        return Ok(GemmChoice::of(k));
    }
    let macs = p.m.saturating_mul(p.n).saturating_mul(p.k);
    if macs <= SMALL_PRODUCT {
        return Ok(GemmChoice::of(GemmKernel::Loops));
    }
    if macs >= CALIBRATED_PRODUCT {
        return Ok(GemmChoice::of(machine_family()));
    }
    // The layout that matters is which stride of each operand is 1. The
    // thread count is not part of the key, and timing runs on one thread:
    // the family must not depend on the thread count, since it decides
    // the product's last bits.
    let key: Key = (f64, p.m, p.n, p.k, p.a_cs == 1, p.b_cs == 1);
    static CHOSEN: OnceLock<std::sync::Mutex<std::collections::HashMap<Key, GemmChoice>>> = OnceLock::new();
    let table = CHOSEN.get_or_init(Default::default);
    // Held while timing, so that two compiles of the same shape at once
    // agree (the second waits and reads the first's choice).
    let mut chosen = table.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&k) = chosen.get(&key) {
        return Ok(k);
    }
    let k = if f64 {
        calibrate::<f64>(&key)
    } else {
        calibrate::<f32>(&key)
    };
    chosen.insert(key, k);
    Ok(k)
}

/// What calibration tells apart: element type, shape, and which operands
/// have unit column stride.
type Key = (bool, i64, i64, i64, bool, bool);

/// The fastest candidate for the product `key` describes (see [`choose`]).
fn calibrate<T: Element + From<f32>>(key: &Key) -> GemmChoice {
    let &(_, m, n, k, a_rows, b_rows) = key;
    let (mu, nu, ku) = (m as usize, n as usize, k as usize);
    let default = GemmChoice::of(machine_family());
    let mut candidates = vec![default];
    for kernel in [GemmKernel::Loops, GemmKernel::Fma, GemmKernel::Avx512] {
        let fits = kernel != GemmKernel::Loops || m * n * k <= 4 * SMALL_PRODUCT;
        // Orientation means something only to the crate's families, and
        // only for a C of more than one column (C is row-major here).
        let directs: &[bool] = if kernel == GemmKernel::Loops || n == 1 {
            &[false]
        } else {
            &[false, true]
        };
        for &direct in directs {
            let c = GemmChoice {
                kernel,
                direct,
                copy: 0,
            };
            if c != default && kernel.available() && fits {
                candidates.push(c);
            }
        }
        // Operands whose rows are not contiguous, copied by rows first
        // (then laid out as the row-major case, whose best orientation is
        // the crate's own).
        let copies = u8::from(!a_rows) | (u8::from(!b_rows) << 1);
        if kernel != GemmKernel::Loops && copies != 0 && kernel.available() {
            for copy in 1..=3 {
                if copy & copies == copy {
                    candidates.push(GemmChoice {
                        kernel,
                        direct: false,
                        copy,
                    });
                }
            }
        }
    }
    // Timing allocates the three operands: not for products whose
    // operands are large (a skinny product can have few multiply-adds and
    // big matrices), so that compiling never risks an allocation failure.
    let bytes = (mu * ku + ku * nu + mu * nu).saturating_mul(std::mem::size_of::<T>());
    if candidates.len() == 1 || bytes > 64 << 20 {
        return default;
    }
    let a: Vec<T> = (0..mu * ku).map(|i| T::from((i % 17) as f32 * 0.25 - 2.0)).collect();
    let b: Vec<T> = (0..ku * nu).map(|i| T::from((i % 13) as f32 * 0.5 - 3.0)).collect();
    let mut c = vec![T::default(); mu * nu];
    let (a_rs, a_cs) = if a_rows { (k, 1) } else { (1, m) };
    let (b_rs, b_cs) = if b_rows { (n, 1) } else { (1, k) };
    let params: Vec<GemmParams> = candidates
        .iter()
        .map(|&c| {
            let mut q = GemmParams {
                a_rs,
                a_cs,
                b_rs,
                b_cs,
                ..GemmParams::contiguous(mu, nu, ku, c.kernel, 1)
            };
            c.apply(&mut q);
            q
        })
        .collect();
    let mut best = vec![f64::INFINITY; candidates.len()];
    // Round robin, so that a slow moment of the machine hits every
    // candidate alike; the first round warms caches and is not counted.
    // Fewer rounds for larger products bound the compile time spent;
    // more for products of a few microseconds, where one slow moment of
    // the machine is larger than the gap between candidates (a Xeon chose
    // a kernel 1.37× slower than the best for a 2 µs product with five
    // timed rounds). Twenty-one rounds of such products cost well under 1 ms.
    let rounds = if m * n * k <= 1 << 18 {
        21
    } else if m * n * k <= 1 << 22 {
        6
    } else {
        4
    };
    for round in 0..rounds {
        for (i, q) in params.iter().enumerate() {
            let t = std::time::Instant::now();
            // SAFETY: the parameters describe the three buffers; every
            // candidate is available.
            unsafe { product::<T>(q, a.as_ptr(), b.as_ptr(), c.as_mut_ptr()) };
            if round > 0 {
                best[i] = best[i].min(t.elapsed().as_secs_f64());
            }
        }
    }
    std::hint::black_box(&c);
    let (fastest, &time) = best
        .iter()
        .enumerate()
        .min_by(|x, y| x.1.total_cmp(y.1))
        .unwrap_or((0, &best[0]));
    if time < best[0] / 1.05 {
        candidates[fastest]
    } else {
        default
    }
}

/// How many threads an `m×k · k×n` product uses when its executable may
/// use `threads`: one below [`PARALLEL_PRODUCT`] multiply-adds (per batch
/// item), else `threads`.
pub fn threads_for(m: usize, n: usize, k: usize, threads: usize) -> usize {
    let macs = (m as i64).saturating_mul(n as i64).saturating_mul(k as i64);
    if macs < PARALLEL_PRODUCT {
        1
    } else {
        threads.max(1)
    }
}

impl GemmParams {
    /// Row-major contiguous A, B and C, one batch item.
    pub fn contiguous(m: usize, n: usize, k: usize, kernel: GemmKernel, threads: usize) -> GemmParams {
        GemmParams {
            m: m as i64,
            n: n as i64,
            k: k as i64,
            batch: 1,
            a_rs: k as i64,
            a_cs: 1,
            b_rs: n as i64,
            b_cs: 1,
            c_rs: n as i64,
            c_cs: 1,
            a_bs: (m * k) as i64,
            b_bs: (k * n) as i64,
            kernel: kernel.code(),
            threads: threads as i64,
            direct: 0,
            copy: 0,
        }
    }
}

/// The element types of the entries, with their families.
trait Element: small::MulAdd + copy::Transpose + Send + Sync {
    const SIZE: usize;
    fn family(kernel: GemmKernel) -> family::FamilyFn<Self>;
}

impl Element for f32 {
    const SIZE: usize = 4;
    fn family(kernel: GemmKernel) -> family::FamilyFn<f32> {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Fma => family::fma_f32,
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Avx512 => family::avx512_f32,
            #[cfg(not(target_arch = "x86_64"))]
            GemmKernel::Fma | GemmKernel::Avx512 => family::scalar_f32,
            GemmKernel::Scalar | GemmKernel::Loops => family::scalar_f32,
        }
    }
}

impl Element for f64 {
    const SIZE: usize = 8;
    fn family(kernel: GemmKernel) -> family::FamilyFn<f64> {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Fma => family::fma_f64,
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Avx512 => family::avx512_f64,
            #[cfg(not(target_arch = "x86_64"))]
            GemmKernel::Fma | GemmKernel::Avx512 => family::scalar_f64,
            GemmKernel::Scalar | GemmKernel::Loops => family::scalar_f64,
        }
    }
}

/// A raw pointer that may cross into the pool (the caller keeps the
/// buffers alive and unaliased for the duration of the call).
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: only moved into (or shared with) closures that `install` runs
// to completion before the entry returns, which write disjoint elements;
// the elements are plain floats.
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Sync> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer. A method, so that a closure calling it captures the
    /// whole (sendable) wrapper, not its raw pointer field.
    fn get(self) -> *mut T {
        self.0
    }
}

/// `C = A·B` for every batch item of `p`.
///
/// # Safety
/// `p`'s strides address only valid elements of `a`, `b` and `c`; its
/// kernel is one this CPU runs.
unsafe fn product<T: Element>(p: &GemmParams, a: *const T, b: *const T, c: *mut T) {
    let kernel = GemmKernel::from_code(p.kernel);
    for i in 0..p.batch as isize {
        let (ai, bi, ci) = unsafe {
            (
                a.offset(i * p.a_bs as isize),
                b.offset(i * p.b_bs as isize),
                c.offset(i * (p.m * p.n) as isize),
            )
        };
        if kernel == GemmKernel::Loops {
            // SAFETY: as for the caller.
            let done = unsafe { try_dot_rows8(p, i, a as *const u8, b as *const u8, c as *mut u8, T::SIZE) };
            if !done {
                unsafe {
                    small::small_product_dispatch::<T>(
                        p.m as usize,
                        p.n as usize,
                        p.k as usize,
                        ai,
                        p.a_rs as isize,
                        p.a_cs as isize,
                        bi,
                        p.b_rs as isize,
                        p.b_cs as isize,
                        ci,
                        p.c_rs as isize,
                        p.c_cs as isize,
                    )
                };
            }
            continue;
        }
        let f = T::family(kernel);
        let (m, k, n) = (p.m as usize, p.k as usize, p.n as usize);
        let copy_a = p.copy & 1 != 0;
        let copy_b = p.copy & 2 != 0;
        let scratch = if copy_a { m * k } else { 0 } + if copy_b { k * n } else { 0 };
        copy::with_scratch::<T, _>(scratch, |buf| {
            let (buf_a, buf_b) = buf.split_at_mut(if copy_a { m * k } else { 0 });
            let mut q = *p;
            let (mut ai, mut bi) = (ai, bi);
            if copy_a {
                // SAFETY: `p`'s strides address valid elements of A.
                unsafe { copy::by_rows_on(p.threads, m, k, ai, p.a_rs as isize, p.a_cs as isize, buf_a) };
                (ai, q.a_rs, q.a_cs) = (buf_a.as_ptr(), k as i64, 1);
            }
            if copy_b {
                // SAFETY: as for A.
                unsafe { copy::by_rows_on(p.threads, k, n, bi, p.b_rs as isize, p.b_cs as isize, buf_b) };
                (bi, q.b_rs, q.b_cs) = (buf_b.as_ptr(), n as i64, 1);
            }
            // SAFETY: as for the caller, with copied operands in `buf`,
            // which outlives the call.
            unsafe { crate_product(&q, f, ai, bi, ci) }
        });
    }
}

/// One product by one of the `gemm` crate's families, on the pool when
/// `p.threads > 1`.
///
/// # Safety
/// As for [`product`], for one batch item.
unsafe fn crate_product<T: Element>(p: &GemmParams, f: family::FamilyFn<T>, ai: *const T, bi: *const T, ci: *mut T) {
    // The microkernels write C by columns: a row-major C is computed as
    // `Cᵀ = Bᵀ·Aᵀ` (what the crate's front door does; without it the MLP
    // step measured 10–30% slower), unless calibration found the product
    // faster as written (`direct`).
    let (m, n, c_cs, c_rs, l, l_cs, l_rs, r, r_cs, r_rs) = if p.c_cs.abs() < p.c_rs.abs() && p.direct == 0 {
        (p.n, p.m, p.c_rs, p.c_cs, bi, p.b_rs, p.b_cs, ai, p.a_rs, p.a_cs)
    } else {
        (p.m, p.n, p.c_cs, p.c_rs, ai, p.a_cs, p.a_rs, bi, p.b_cs, p.b_rs)
    };
    let (k, l, r, ci) = (p.k, SendPtr(l as *mut T), SendPtr(r as *mut T), SendPtr(ci));
    let run = move |par: Parallelism| {
        let (l, r, ci) = (l, r, ci);
        // SAFETY: as for the caller; when in the pool, `install` runs
        // this to the end before returning.
        unsafe {
            f(
                m as usize,
                n as usize,
                k as usize,
                ci.0,
                c_cs as isize,
                c_rs as isize,
                l.0,
                l_cs as isize,
                l_rs as isize,
                r.0,
                r_cs as isize,
                r_rs as isize,
                par,
            )
        }
    };
    if p.threads > 1 && crate::pool::pool().is_some() {
        let threads = p.threads as usize;
        crate::pool::install(move || run(Parallelism::Rayon(threads)));
    } else {
        run(Parallelism::None);
    }
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
            unsafe { product::<$t>(&*p, a, b, c) }
        }
    };
}

gemm_entry!(wengert_gemm_f32, f32);
gemm_entry!(wengert_gemm_f64, f64);

/// Two independent products at once on the pool (one on the caller's
/// thread, one stolen by a worker), or one after the other without a
/// pool. Code generation pairs only products that neither read nor write
/// each other's memory, each with `threads = 1`, so the results are those
/// of the two calls in order.
///
/// # Safety
/// As for two calls of the single entry, and the two products must not
/// touch each other's outputs.
unsafe fn pair<T: Element>(p: [&GemmParams; 2], a: [*const T; 2], b: [*const T; 2], c: [*mut T; 2]) {
    let job = |i: usize| {
        let (a, b, c) = (SendPtr(a[i] as *mut T), SendPtr(b[i] as *mut T), SendPtr(c[i]));
        let p = p[i];
        move || {
            let (a, b, c) = (a, b, c);
            // SAFETY: per the caller.
            unsafe { product::<T>(p, a.0, b.0, c.0) }
        }
    };
    match crate::pool::pool() {
        Some(pool) => {
            pool.join(job(0), job(1));
        }
        None => {
            job(0)();
            job(1)();
        }
    }
}

macro_rules! gemm_pair_entry {
    ($name:ident, $t:ty) => {
        /// `C1 = A1·B1` and `C2 = A2·B2` at once (see [`pair`]).
        ///
        /// # Safety
        /// As [`pair`]: generated code passes valid parameter blocks and
        /// buffers, and independent products.
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "C" fn $name(
            p1: *const GemmParams,
            a1: *const $t,
            b1: *const $t,
            c1: *mut $t,
            p2: *const GemmParams,
            a2: *const $t,
            b2: *const $t,
            c2: *mut $t,
        ) {
            unsafe { pair::<$t>([&*p1, &*p2], [a1, a2], [b1, b2], [c1, c2]) }
        }
    };
}

gemm_pair_entry!(wengert_gemm_pair_f32, f32);
gemm_pair_entry!(wengert_gemm_pair_f64, f64);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout of A and B (row- or column-major) and sizes that take
    /// each path (the small forms, the eight-row dot, the `gemm` crate),
    /// against a plain sum in f64.
    #[test]
    fn products_match_a_plain_sum_in_every_layout() {
        let mut seed = 1u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        for &(m, n, k) in &[
            (64, 1, 64),
            (1, 64, 64),
            (64, 64, 1),
            (5, 3, 7),
            (8, 8, 8),
            (16, 2, 24),
            (9, 1, 3),
            (40, 40, 40),
        ] {
            let orientations = [false, true];
            let choices = GemmKernel::ALL
                .into_iter()
                .filter(|k| k.available())
                .flat_map(|kernel| {
                    orientations
                        .map(|direct| GemmChoice {
                            kernel,
                            direct,
                            copy: 0,
                        })
                        .into_iter()
                        .chain((1..=3).map(move |copy| GemmChoice {
                            kernel,
                            direct: false,
                            copy,
                        }))
                });
            for choice in choices {
                let kernel = choice.kernel;
                for a_row_major in [true, false] {
                    for b_row_major in [true, false] {
                        let av: Vec<f32> = (0..m * k).map(|_| next() as f32).collect();
                        let bv: Vec<f32> = (0..k * n).map(|_| next() as f32).collect();
                        let (a_rs, a_cs) = if a_row_major { (k as i64, 1) } else { (1, m as i64) };
                        let (b_rs, b_cs) = if b_row_major { (n as i64, 1) } else { (1, k as i64) };
                        let p = GemmParams {
                            m: m as i64,
                            n: n as i64,
                            k: k as i64,
                            batch: 1,
                            a_rs,
                            a_cs,
                            b_rs,
                            b_cs,
                            c_rs: n as i64,
                            c_cs: 1,
                            a_bs: 0,
                            b_bs: 0,
                            kernel: kernel.code(),
                            threads: 1,
                            direct: i64::from(choice.direct),
                            copy: i64::from(choice.copy),
                        };
                        let mut c = vec![0f32; m * n];
                        unsafe { wengert_gemm_f32(&p, av.as_ptr(), bv.as_ptr(), c.as_mut_ptr()) };
                        for i in 0..m {
                            for j in 0..n {
                                let want: f64 = (0..k)
                                    .map(|q| {
                                        av[(i as i64 * a_rs + q as i64 * a_cs) as usize] as f64
                                            * bv[(q as i64 * b_rs + j as i64 * b_cs) as usize] as f64
                                    })
                                    .sum();
                                let got = c[i * n + j] as f64;
                                assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{m}x{n}x{k} {choice:?} a_row={a_row_major} b_row={b_row_major} [{i},{j}]: {got} vs {want}"
                            );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The `gemm` crate cuts the output among threads, never the sum over
    /// `k`: 1, 2 and 3 threads (and the serial path) give the same bits,
    /// for every family and layout, f32 and f64.
    #[test]
    fn every_thread_count_gives_the_same_bits() {
        fn check<T: Element + From<f32> + PartialEq + std::fmt::Debug>(
            f: unsafe fn(&GemmParams, *const T, *const T, *mut T),
        ) {
            for &(m, n, k) in &[(64, 512, 512), (300, 10, 700), (784, 256, 33), (7, 1000, 1000)] {
                let a: Vec<T> = (0..m * k)
                    .map(|i| T::from(((i * 7919) % 1001) as f32 * 1e-3 - 0.5))
                    .collect();
                let b: Vec<T> = (0..k * n)
                    .map(|i| T::from(((i * 104729) % 997) as f32 * 1e-3 - 0.5))
                    .collect();
                for kernel in [GemmKernel::Scalar, GemmKernel::Fma, GemmKernel::Avx512] {
                    if !kernel.available() || (kernel == GemmKernel::Scalar && m * n * k > 1 << 22) {
                        continue;
                    }
                    for (a_rows, b_rows, direct, copy) in [
                        (true, true, 0, 0),
                        (false, true, 0, 0),
                        (true, false, 0, 0),
                        (true, false, 1, 0),
                        (true, false, 0, 2),
                        (false, false, 0, 3),
                    ] {
                        let run = |threads: usize| {
                            let p = GemmParams {
                                a_rs: if a_rows { k as i64 } else { 1 },
                                a_cs: if a_rows { 1 } else { m as i64 },
                                b_rs: if b_rows { n as i64 } else { 1 },
                                b_cs: if b_rows { 1 } else { k as i64 },
                                direct,
                                copy,
                                ..GemmParams::contiguous(m, n, k, kernel, threads)
                            };
                            let mut c = vec![T::default(); m * n];
                            unsafe { f(&p, a.as_ptr(), b.as_ptr(), c.as_mut_ptr()) };
                            c
                        };
                        let one = run(1);
                        for threads in [2, 3] {
                            assert!(
                                run(threads) == one,
                                "{m}x{n}x{k} {kernel:?} rows {a_rows}/{b_rows} direct {direct} copy {copy}: {threads} threads differ from one"
                            );
                        }
                    }
                }
            }
        }
        check::<f32>(|p, a, b, c| unsafe { wengert_gemm_f32(p, a, b, c) });
        check::<f64>(|p, a, b, c| unsafe { wengert_gemm_f64(p, a, b, c) });
    }

    /// A calibrated choice is one of the candidates and is remembered.
    #[test]
    fn calibration_picks_an_available_family_and_keeps_it() {
        let p = GemmParams::contiguous(256, 10, 256, GemmKernel::Loops, 1);
        let first = choose(&p, false).unwrap();
        assert!(first.kernel.available());
        for _ in 0..3 {
            assert_eq!(choose(&p, false).unwrap(), first);
        }
        let tiny = GemmParams::contiguous(8, 8, 8, GemmKernel::Fma, 1);
        if forced_kernel().unwrap().is_none() {
            assert_eq!(choose(&tiny, true).unwrap(), GemmChoice::of(GemmKernel::Loops));
        }
    }
}
