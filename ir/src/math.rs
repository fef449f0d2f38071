//! Elementary functions whose f64 results the project defines itself,
//! rather than taking them from the platform's libm: the interpreter and
//! compiled code call the same function, so they agree bit for bit, and
//! the definition can be chosen for speed where libm's is slow.
//!
//! `tanh` is the one so far. glibc's f64 `tanh` took ~32 ns per call in a
//! dependent chain on AMD Zen 5 (seed case 8 is 1,000 such calls in a row,
//! forward); Cephes' rational form ~12.5 ns; the polynomial below ~8.8 ns,
//! all within 2 ulp of glibc's.
//!
//! The polynomial's operations are written once, in [`tanh_small`], over
//! the [`Arith`] trait: the interpreter instantiates it with `f64`, code
//! generation with instructions it emits, so the two cannot drift apart.

/// Below this |x| (and above 0), [`tanh_f64`] takes its polynomial form.
pub const TANH_SMALL: f64 = 0.625;

/// `R(s) = (tanh(√s)/√s − 1)/s` on `s ∈ [0, 0.625²]`, lowest power first:
/// a degree-11 Chebyshev fit (mpmath's `chebyfit`, 60 digits: within
/// 3.9·10⁻¹⁸ of `R`, |R| ≈ 0.3), coefficients rounded to f64 (then within
/// 1.9·10⁻¹⁷), before the evaluation's own rounding. `tanh x = x + x·s·R(s)` with `s = x²`.
pub const TANH_R: [f64; 12] = [
    -0.333_333_333_333_333_3,
    0.133_333_333_333_330_42,
    -0.053_968_253_967_896_99,
    0.021_869_488_519_008_305,
    -0.008_863_235_103_240_878,
    0.003_592_121_751_154_962_2,
    -0.001_455_775_412_047_805_5,
    0.000_589_660_657_775_704_3,
    -0.000_237_590_649_605_556_2,
    9.257_116_129_556_769e-5,
    -3.120_110_142_579_74e-5,
    6.485_163_482_793_113e-6,
];

/// The arithmetic [`tanh_small`] is written in: constants, rounded
/// products and sums, and fused multiply-adds (one rounding; every
/// target computes the same bits, by an instruction or libm's `fma`).
pub trait Arith {
    type V: Copy;
    fn k(&mut self, c: f64) -> Self::V;
    fn mul(&mut self, a: Self::V, b: Self::V) -> Self::V;
    fn add(&mut self, a: Self::V, b: Self::V) -> Self::V;
    /// `a·b + c`, rounded once.
    fn fma(&mut self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
}

/// tanh x for `0 < |x| < 0.625`: `x + t` with `t = x·s·R(s)` evaluated as
/// `(x·s·s⁴)·B(s) + (x·s)·A(s)`, where `A` holds `R`'s four lowest
/// coefficients and `B` the other eight (Estrin's scheme in each). The
/// split shortens the dependent chain from x to the result to `s`, three
/// levels of multiply-adds and two operations (seed case 8 is a chain of
/// these); `t` is rounded twice, but |t| ≤ 0.13·|tanh x|, so its error
/// reaches the result much reduced. x + t keeps the sign of x (|t| < |x|),
/// so no sign needs restoring; x = ±0 never gets here.
#[inline(always)]
pub fn tanh_small<A: Arith>(m: &mut A, x: A::V) -> A::V {
    let c = TANH_R.map(|c| m.k(c));
    let s = m.mul(x, x);
    let s2 = m.mul(s, s);
    let s4 = m.mul(s2, s2);
    let xs = m.mul(x, s);
    // A(s) = (c0 + c1·s) + s²·(c2 + c3·s).
    let a0 = m.fma(c[1], s, c[0]);
    let a1 = m.fma(c[3], s, c[2]);
    let a = m.fma(a1, s2, a0);
    // B(s) = (c4 + c5·s) + s²·(c6 + c7·s) + s⁴·((c8 + c9·s) + s²·(c10 + c11·s)).
    let l = [0, 1, 2, 3].map(|i| m.fma(c[5 + 2 * i], s, c[4 + 2 * i]));
    let lo = m.fma(l[1], s2, l[0]);
    let hi = m.fma(l[3], s2, l[2]);
    let b = m.fma(hi, s4, lo);
    let xs4 = m.mul(xs, s4);
    let xsa = m.mul(xs, a);
    let t = m.fma(xs4, b, xsa);
    m.add(x, t)
}

/// Plain f64 arithmetic for [`tanh_small`]; `fma` is `f64::mul_add`
/// (correctly rounded on every target).
struct Plain;

impl Arith for Plain {
    type V = f64;
    fn k(&mut self, c: f64) -> f64 {
        c
    }
    fn mul(&mut self, a: f64, b: f64) -> f64 {
        a * b
    }
    fn add(&mut self, a: f64, b: f64) -> f64 {
        a + b
    }
    fn fma(&mut self, a: f64, b: f64, c: f64) -> f64 {
        a.mul_add(b, c)
    }
}

/// [`tanh_small`] compiled with FMA instructions. Without them,
/// `mul_add` is a call to libm's `fma` per operation; the bits are the
/// same either way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn tanh_small_fma(x: f64) -> f64 {
    tanh_small(&mut Plain, x)
}

fn tanh_small_f64(x: f64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the FMA instructions this copy uses.
        return unsafe { tanh_small_fma(x) };
    }
    tanh_small(&mut Plain, x)
}

/// tanh x in f64:
/// - `0 < |x| < 0.625`: [`tanh_small`]'s polynomial (a subnormal x gives
///   x);
/// - x = ±0: x;
/// - otherwise `1 − 2/(e^{2|x|} + 1)` with the sign of x (`exp` from the
///   platform's libm; ±1 where `e^{2|x|}` overflows, NaN for NaN).
///
/// Within 2 ulp of glibc's `tanh` (tested over [−20, 20]); under 1 ulp
/// of the true value on the polynomial branch, 1.5 on the other (tested
/// against 40 digits).
pub fn tanh_f64(x: f64) -> f64 {
    let z = x.abs();
    if z < TANH_SMALL {
        if z == 0.0 {
            x
        } else {
            tanh_small_f64(x)
        }
    } else {
        let e = (2.0 * z).exp();
        (1.0 - 2.0 / (e + 1.0)).copysign(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f64, b: f64) -> u64 {
        // Distance in representable values (both finite, same sign here).
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
    }

    /// Within 2 ulp of glibc's `tanh` over [−20, 20] (and in the small
    /// branch's range at finer steps, where the rational form is used).
    #[test]
    fn tanh_is_within_two_ulp_of_libm() {
        let mut worst = (0u64, 0.0);
        let n = 400_000;
        for i in 0..=n {
            for x in [-20.0 + 40.0 * i as f64 / n as f64, 0.625 * i as f64 / n as f64] {
                let d = ulps(tanh_f64(x), x.tanh());
                if d > worst.0 {
                    worst = (d, x);
                }
            }
        }
        assert!(worst.0 <= 2, "{} ulp at {}", worst.0, worst.1);
    }

    /// Against tanh to 40 digits (mpmath; `testdata/tanh_reference.py`),
    /// in ulps of the true value: the polynomial branch is faithfully
    /// rounded (under 1 ulp: 0.68 here, 0.85 over 60,000 random points,
    /// where glibc's `tanh` was off by up to 2.1 ulp), the exponential
    /// branch within 1.5 ulp (1.0 here).
    #[test]
    fn tanh_against_forty_digits() {
        let mut worst = [(0.0f64, 0.0f64); 2];
        for line in include_str!("testdata/tanh_reference.txt").lines() {
            let v: Vec<f64> = line.split(' ').map(|w| w.parse().unwrap()).collect();
            let (x, hi, lo) = (v[0], v[1], v[2]);
            for x in [x, -x] {
                let (hi, lo) = if x < 0.0 { (-hi, -lo) } else { (hi, lo) };
                // y − hi is exact (they are a few ulps apart).
                let err = ((tanh_f64(x) - hi) - lo).abs() / (hi.abs().next_up() - hi.abs());
                let branch = usize::from(x.abs() >= TANH_SMALL);
                if err > worst[branch].0 {
                    worst[branch] = (err, x);
                }
            }
        }
        assert!(worst[0].0 < 1.0, "polynomial: {} ulp at {}", worst[0].0, worst[0].1);
        assert!(worst[1].0 < 1.5, "exponential: {} ulp at {}", worst[1].0, worst[1].1);
    }

    /// The copy compiled with FMA instructions and the portable one (libm's
    /// `fma` where the build target has no FMA) give the same bits.
    #[test]
    fn tanh_small_is_the_same_with_and_without_fma_instructions() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Uniform in (−0.625, 0.625), then tiny magnitudes near 0.
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            let x = if i % 4 == 3 {
                (u - 0.5) * 1e-6
            } else {
                (2.0 * u - 1.0) * TANH_SMALL
            };
            if x == 0.0 {
                continue;
            }
            let plain = tanh_small(&mut Plain, x);
            assert_eq!(tanh_small_f64(x).to_bits(), plain.to_bits(), "{x:e}");
        }
    }

    /// Odd, signed zeros kept, subnormals returned as they are, the limits
    /// and NaN.
    #[test]
    fn tanh_special_values() {
        for x in [1e-300, 0.3, 0.624_999_999, 0.625, 1.5, 19.0, 400.0] {
            assert_eq!(tanh_f64(-x), -tanh_f64(x), "{x}");
        }
        assert_eq!(tanh_f64(0.0).to_bits(), 0.0f64.to_bits());
        assert_eq!(tanh_f64(-0.0).to_bits(), (-0.0f64).to_bits());
        let sub = f64::from_bits(3);
        assert_eq!(tanh_f64(sub), sub);
        assert_eq!(tanh_f64(f64::INFINITY), 1.0);
        assert_eq!(tanh_f64(f64::NEG_INFINITY), -1.0);
        assert_eq!(tanh_f64(800.0), 1.0);
        assert_eq!(tanh_f64(-25.0), -1.0);
        assert!(tanh_f64(f64::NAN).is_nan());
        assert!(tanh_f64(0.625) > tanh_f64(0.624_999_999_999_999_9));
    }
}
