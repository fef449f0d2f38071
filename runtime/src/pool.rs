//! The process's one thread pool, which every executable shares.
//!
//! Work that pays for threads (large matrix products) runs inside this
//! pool, never in a pool of its own: several executables, or one
//! executable called from several user threads at once, then share the
//! same workers instead of each starting as many threads as there are
//! cores. A caller outside the pool waits while the pool works
//! (`ThreadPool::install`), so at most the pool's threads plus the
//! blocked callers exist: no oversubscription.
//!
//! How many threads a *call* uses is the executable's choice
//! ([`default_threads`] unless its options say otherwise); how work is cut
//! into chunks never depends on it, so results are the same for every
//! thread count.

use std::sync::OnceLock;

/// The environment variable that sets the default thread count.
pub const THREADS_ENV: &str = "WENGERT_THREADS";

/// The default number of threads an executable uses: `WENGERT_THREADS`
/// if it is set to a positive integer, else the cores available to this
/// process (its affinity mask and CPU quota included) divided among the
/// MPI ranks started on this machine (MPICH's `MPI_LOCALNRANKS`, Open
/// MPI's `OMPI_COMM_WORLD_LOCAL_SIZE`), at least one. Read once.
pub fn default_threads() -> usize {
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let positive = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n > 0)
        };
        positive(THREADS_ENV).unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let ranks = positive("MPI_LOCALNRANKS")
                .or_else(|| positive("OMPI_COMM_WORLD_LOCAL_SIZE"))
                .unwrap_or(1);
            (cores / ranks).max(1)
        })
    })
}

/// The pool: [`default_threads`] workers, started on first use. `None` if
/// the operating system refused to start threads; callers then run on
/// their own thread (the same results, serially).
pub fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(default_threads())
            .thread_name(|i| format!("wengert-{i}"))
            // Workers run only wengert's work: they keep the process's
            // subnormal mode for good (`wengert_ir::fpenv`).
            .start_handler(|_| wengert_ir::fpenv::enter_for_thread())
            // Executables with parallel work run on a worker
            // (`run_in_pool`): as much stack as a caller's frame may need.
            .stack_size(crate::executable::INLINE_FRAME_LIMIT + (8 << 20))
            .build()
            .ok()
    })
    .as_ref()
}

/// Runs `f` inside the pool (`ThreadPool::install`: from any thread,
/// including a worker of another rayon pool, whose parallel iterators
/// would otherwise run on that pool). Callers check [`pool`] first: with
/// no pool they take their serial path, never rayon's global pool.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match pool() {
        Some(p) => p.install(f),
        None => f(),
    }
}

/// Pauses between a poller's looks at an empty pool (see [`run_in_pool`]).
const POLL_PAUSES: usize = 16;

std::thread_local! {
    /// Whether this thread is running a call of [`run_in_pool`].
    static IN_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` on a worker of the pool while the other workers poll the
/// pool for work until `f` returns, rather than going to sleep between
/// its parallel regions (as OpenMP runtimes spin for a while before
/// sleeping). With `f` in the pool, a region is a `join` on the
/// worker's own deque, not a job handed over by a sleeping caller; with
/// the others polling, no region waits for a thread to wake. The
/// 64-layer chain's two-thread step: −17 to −20% on Zen 5.
///
/// A poller that starts on a thread already running such a call or
/// poller (its own, or another caller's: it may have been stolen while
/// that call waited in a `join`) returns at once: polling there would hold that
/// call below it on the stack until this one ends, and two calls doing
/// so to each other would wait for ever. With no pool, `f` runs here.
pub fn run_in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(p) = pool() else { return f() };
    p.install(|| {
        let done = AtomicBool::new(false);
        let outer = IN_CALL.replace(true);
        let r = rayon::scope(|s| {
            for _ in 1..p.current_num_threads() {
                s.spawn(|_| {
                    // A poller counts as a call too, so that another
                    // poller never nests inside it.
                    if IN_CALL.replace(true) {
                        return;
                    }
                    while !done.load(Ordering::Acquire) {
                        if rayon::yield_now() != Some(rayon::Yield::Executed) {
                            // Between looks at the pool, pause (a
                            // `yield_now` that finds nothing walks every
                            // deque): the poller takes less from a
                            // hardware thread sharing its core.
                            for _ in 0..POLL_PAUSES {
                                std::hint::spin_loop();
                            }
                        }
                    }
                    IN_CALL.set(false);
                });
            }
            let r = f();
            done.store(true, Ordering::Release);
            r
        });
        IN_CALL.set(outer);
        r
    })
}

/// A kernel compiled as a function over a range of its outer axis:
/// `(slots, start, end)`, `slots` the kernel's buffer pointers and scalars.
type RangeFn = unsafe extern "C" fn(i64, i64, i64);

/// Runs the kernel `f` over rows `0..rows` of its outer axis in chunks of
/// `chunk` rows, on up to `threads` threads of the pool. Chunk `c` covers
/// rows `c·chunk .. min((c+1)·chunk, rows)` and goes to thread
/// `c mod threads`; chunks write disjoint memory (code generation only
/// calls this for such kernels), so the result does not depend on the
/// thread count or on which thread runs which chunk.
///
/// # Safety
/// `f` is a compiled range function and `slots` the slot array it reads,
/// alive for the duration of the call (generated code passes its own
/// stack slot and waits here).
pub unsafe extern "C" fn wengert_parallel_for(f: i64, slots: i64, rows: i64, chunk: i64, threads: i64) {
    // SAFETY: generated code passes the address of a function of this
    // signature.
    let f: RangeFn = unsafe { std::mem::transmute::<usize, RangeFn>(f as usize) };
    let chunk = chunk.max(1);
    let chunks = (rows + chunk - 1) / chunk;
    let threads = threads.clamp(1, chunks.max(1));
    if threads == 1 || pool().is_none() {
        // SAFETY: as for the caller.
        unsafe { f(slots, 0, rows) };
        return;
    }
    install(move || {
        use rayon::prelude::*;
        (0..threads).into_par_iter().for_each(|t| {
            let mut c = t;
            while c < chunks {
                // SAFETY: as for the caller; chunks are disjoint.
                unsafe { f(slots, c * chunk, ((c + 1) * chunk).min(rows)) };
                c += threads;
            }
        });
    });
}
