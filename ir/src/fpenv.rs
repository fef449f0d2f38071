//! The floating-point environment wengert computes in: whether subnormal
//! numbers are kept (IEEE 754, the default) or flushed to zero.
//!
//! Subnormal operands make x86 arithmetic slow (a microcode assist of a
//! hundred cycles or more per operation). They appear in training as the
//! loss falls: the MLP step on one batch slowed from 1.1 to 2.0 ms over
//! 6,000 Adam steps (loss 0.77 → 6e-4), and ran at 1.1 ms throughout with
//! subnormals flushed. XLA's CPU runtime, which JAX uses, always flushes
//! (its executions run under `ScopedFlushDenormal`); PyTorch keeps them
//! unless `torch.set_flush_denormal(True)`.
//!
//! The mode is one per process, set by [`set_flush_denormals`] before
//! anything runs or else read once from `WENGERT_DENORMALS` (`keep` or
//! `flush`), because the thread pool is shared by every
//! executable: a mode per executable could not be given to the pool's
//! workers that run part of a product. Under `flush`, compiled code (on
//! the caller's thread and the pool's workers) and the reference
//! interpreter alike run with the x86 MXCSR bits FTZ (results that would
//! be subnormal are zero) and DAZ (subnormal inputs read as zero), so the
//! two still agree bit for bit; the caller's own mode is restored when a
//! call returns. Under `keep` nothing is touched. On other architectures
//! the setting is accepted and has no effect.

use std::sync::OnceLock;

/// The environment variable that sets the process's mode.
pub const DENORMALS_ENV: &str = "WENGERT_DENORMALS";

/// Whether this process flushes subnormal numbers to zero (see the
/// module documentation). An unrecognized value keeps them: the mode
/// changes results, so only an explicit `flush` turns it on.
pub fn flush_denormals() -> bool {
    *FLUSH.get_or_init(|| std::env::var(DENORMALS_ENV).is_ok_and(|v| v.trim().eq_ignore_ascii_case("flush")))
}

static FLUSH: OnceLock<bool> = OnceLock::new();

/// Fixes the process's mode (`true`: flush) if nothing has read it yet;
/// then `WENGERT_DENORMALS` is not consulted. `Err(mode)` gives the mode
/// already fixed when it differs (by the environment variable or an
/// earlier computation: the pool's workers may already run in it).
pub fn set_flush_denormals(flush: bool) -> Result<(), bool> {
    let _ = FLUSH.set(flush);
    let now = flush_denormals();
    if now == flush {
        Ok(())
    } else {
        Err(now)
    }
}

/// `x`, or zero of its sign if `x` is subnormal and this process flushes:
/// what DAZ makes of an operand, applied by hand before a library
/// function whose code reads the operand's bits (glibc's `log` rescales
/// a subnormal by a multiplication that DAZ turns into zero, then reads
/// the exponent of the result: `logf` of 2⁻¹⁴⁹ came out as ln 2⁻¹⁵⁰, where
/// compiled code, whose `log` reads the operand as zero, gave −∞).
#[inline]
pub fn flushed<T: num_traits::Float>(x: T) -> T {
    if x.is_subnormal() && flush_denormals() {
        if x.is_sign_negative() {
            -T::zero()
        } else {
            T::zero()
        }
    } else {
        x
    }
}

/// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6) bits.
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

#[cfg(target_arch = "x86_64")]
fn read_mxcsr() -> u32 {
    let mut v: u32 = 0;
    // SAFETY: `stmxcsr` stores the 32-bit control register to the
    // local; it has no other effect.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack, preserves_flags)) };
    v
}

#[cfg(target_arch = "x86_64")]
fn write_mxcsr(v: u32) {
    // SAFETY: `v` is a value read from MXCSR with at most FTZ and DAZ
    // changed, both valid on every x86-64 CPU with SSE2 (DAZ since the
    // Pentium 4's SSE2 steppings that x86-64 requires); it changes only
    // how later SSE/AVX arithmetic treats subnormals.
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &v, options(nostack, readonly, preserves_flags)) };
}

/// The process's mode on this thread until the guard is dropped, which
/// restores the thread's previous mode. Free under `keep`.
#[must_use = "the mode lasts only while the guard lives"]
pub struct Scoped {
    #[cfg(target_arch = "x86_64")]
    saved: Option<u32>,
}

/// Enters the process's mode on this thread (see [`Scoped`]).
#[inline]
pub fn scoped() -> Scoped {
    #[cfg(target_arch = "x86_64")]
    {
        if !flush_denormals() {
            return Scoped { saved: None };
        }
        let old = read_mxcsr();
        if old & FTZ_DAZ == FTZ_DAZ {
            return Scoped { saved: None };
        }
        write_mxcsr(old | FTZ_DAZ);
        Scoped { saved: Some(old) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Scoped {}
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if let Some(old) = self.saved {
            write_mxcsr(old);
        }
    }
}

/// Puts this thread in the process's mode for good (the pool's workers,
/// which run only wengert's work).
pub fn enter_for_thread() {
    std::mem::forget(scoped());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard restores the caller's register exactly, whatever the
    /// process's mode.
    #[test]
    fn the_callers_mode_is_restored() {
        #[cfg(target_arch = "x86_64")]
        {
            let before = read_mxcsr();
            {
                let _g = scoped();
                if flush_denormals() {
                    assert_eq!(read_mxcsr() & FTZ_DAZ, FTZ_DAZ);
                } else {
                    assert_eq!(read_mxcsr(), before);
                }
            }
            assert_eq!(read_mxcsr(), before);
        }
    }
}
