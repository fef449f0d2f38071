//! Elementary functions whose f64 results the project defines itself,
//! rather than taking them from the platform's libm: the interpreter and
//! compiled code call the same function, so they agree bit for bit, and
//! the definition can be chosen for speed where libm's is slow.
//!
//! `tanh` is the one so far. glibc's f64 `tanh` took ~32 ns per call in a
//! dependent chain on AMD Zen 5 (seed case 8 is 1,000 such calls in a row,
//! forward); Cephes' form below ~12 ns, within 2 ulp of glibc's.

/// Below this |x|, [`tanh_f64`] takes its rational form.
pub const TANH_SMALL: f64 = 0.625;

/// Numerator of Cephes' `tanh` rational approximation on |x| < 0.625
/// (highest power first), in `s = x²`. Compiled code emits the same
/// operations on these (`codegen`'s `lower/math.rs`).
pub const TANH_P: [f64; 3] = [
    -9.643_991_794_250_523e-1,
    -9.928_772_310_019_186e1,
    -1.614_687_684_417_084_5e3,
];
/// Its denominator, a monic cubic in `s` (the leading 1 implied).
pub const TANH_Q: [f64; 3] = [
    1.128_116_784_916_329_3e2,
    2.235_488_390_601_004_6e3,
    4.844_063_053_251_255e3,
];

/// tanh x in f64, as Cephes computes it (with plain multiplications and
/// additions, in its order, so that every target computes the same bits
/// without a fused multiply-add):
/// - |x| < 0.625: `x + x·s·P(s)/Q(s)`, `s = x²`, with the sign of x (odd
///   in x exactly; a subnormal x gives x, −0 gives −0);
/// - otherwise `1 − 2/(e^{2|x|} + 1)` with the sign of x (`exp` from the
///   platform's libm; ±1 where `e^{2|x|}` overflows, NaN for NaN).
///
/// Within 2 ulp of glibc's `tanh` (tested over [−20, 20]).
pub fn tanh_f64(x: f64) -> f64 {
    let z = x.abs();
    if z < TANH_SMALL {
        let s = x * x;
        let p = (TANH_P[0] * s + TANH_P[1]) * s + TANH_P[2];
        let q = ((s + TANH_Q[0]) * s + TANH_Q[1]) * s + TANH_Q[2];
        // `x·s·P/Q` is +0 for x = −0 (P < 0), and `x + r` always has the
        // sign of x otherwise (|r| < |x|): the sign restores tanh(−0) = −0.
        (x + x * s * p / q).copysign(x)
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
