//! Inline f32 math in CLIF: exp, log, sin, cos, tanh as polynomial
//! approximations (Cephes), emitted for scalars (`f32`) and vectors
//! (`f32x4`) from the same instruction sequence, so that a value recomputed
//! by a scalar tail or a different kernel is bit-identical.
//!
//! Error bounds (checked in `tests/jit.rs` against f64 references over
//! random bit patterns and special values): exp, log, tanh ≤ 2 ulp over the
//! whole f32 range, with IEEE results for NaN, ±inf, overflow and
//! underflow (including subnormal results of exp and subnormal inputs of
//! log); sin and cos ≤ 2 ulp for |x| ≤ 8192 by Cody–Waite reduction, and
//! exact libm results beyond (a cold call per vector, rare in practice).
//! f64 transcendentals call the runtime's functions (the platform libm's,
//! or the project's own `tanh`, `wengert_ir::math`; see `lower/ops.rs`),
//! except `tanh`'s polynomial branch, which is inlined here operation for
//! operation (`tanh_f64`).

use super::Lowerer;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;
use wengert_ir::math::{tanh_small, Arith, TANH_SMALL};
use wengert_runtime::functions::RuntimeFn;

/// The definitions' arithmetic (`wengert_ir::math::Arith`) as f64
/// instructions: code generation runs a definition written once for the
/// interpreter and emits its operations in its order.
struct Emit<'a, 'l, 'f> {
    l: &'a mut Lowerer<'l>,
    fb: &'a mut FunctionBuilder<'f>,
}

impl Arith for Emit<'_, '_, '_> {
    type V = Value;
    fn k(&mut self, c: f64) -> Value {
        self.l.fconst(self.fb, types::F64, c)
    }
    fn mul(&mut self, a: Value, b: Value) -> Value {
        self.fb.ins().fmul(a, b)
    }
    fn add(&mut self, a: Value, b: Value) -> Value {
        self.fb.ins().fadd(a, b)
    }
    fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        self.fb.ins().fma(a, b, c)
    }
}

/// The integer type with the lanes of a float type.
pub fn int_type(ty: Type) -> Type {
    if ty.is_vector() {
        types::I32X4
    } else {
        types::I32
    }
}

impl Lowerer<'_> {
    /// A float constant of type `ty` (splatted for vectors).
    pub fn fconst(&mut self, fb: &mut FunctionBuilder, ty: Type, v: f64) -> Value {
        let lane = ty.lane_type();
        let s = if lane == types::F32 {
            fb.ins().f32const(v as f32)
        } else {
            fb.ins().f64const(v)
        };
        if ty.is_vector() {
            fb.ins().splat(ty, s)
        } else {
            s
        }
    }

    /// An i32 constant of type `ty` (`i32` or `i32x4`).
    pub fn iconst32(&mut self, fb: &mut FunctionBuilder, ty: Type, v: i64) -> Value {
        let s = fb.ins().iconst(types::I32, v);
        if ty.is_vector() {
            fb.ins().splat(ty, s)
        } else {
            s
        }
    }

    /// `cond ? a : b` where `cond` is a comparison result (an `i8` for
    /// scalars, a lane mask for vectors).
    pub fn sel(&mut self, fb: &mut FunctionBuilder, cond: Value, a: Value, b: Value) -> Value {
        let ty = fb.func.dfg.value_type(a);
        if ty.is_vector() {
            let cty = fb.func.dfg.value_type(cond);
            let mask = if cty == ty {
                cond
            } else {
                fb.ins().bitcast(ty, self.vflags(), cond)
            };
            fb.ins().bitselect(mask, a, b)
        } else {
            fb.ins().select(cond, a, b)
        }
    }

    /// Horner evaluation `((c0·x + c1)·x + c2)…` with fused multiply-adds.
    fn horner(&mut self, fb: &mut FunctionBuilder, ty: Type, x: Value, coeffs: &[f64]) -> Value {
        let mut y = self.fconst(fb, ty, coeffs[0]);
        for &c in &coeffs[1..] {
            let k = self.fconst(fb, ty, c);
            y = fb.ins().fma(y, x, k);
        }
        y
    }

    /// `2^n` for an integer `n` in the normal exponent range.
    fn pow2i(&mut self, fb: &mut FunctionBuilder, ty: Type, n: Value) -> Value {
        let ity = int_type(ty);
        let bias = self.iconst32(fb, ity, 127);
        let e = fb.ins().iadd(n, bias);
        let bits = fb.ins().ishl_imm_u(e, 23);
        fb.ins().bitcast(ty, self.vflags(), bits)
    }

    /// e^(x − n·ln2) for an integer-valued `n` near x·log₂e (Cephes expf's
    /// core): r = x − n·ln2 in two parts, then 1 + r + r²·P(r) with a
    /// degree-5 polynomial. `exp_f32` and `tanh_f32` scale it by 2ⁿ.
    fn exp_reduced(&mut self, fb: &mut FunctionBuilder, ty: Type, x: Value, n: Value) -> Value {
        let c1 = self.fconst(fb, ty, -0.693359375);
        let c2 = self.fconst(fb, ty, 2.12194440e-4);
        let r = fb.ins().fma(n, c1, x);
        let r = fb.ins().fma(n, c2, r);
        let z = fb.ins().fmul(r, r);
        let p = self.horner(
            fb,
            ty,
            r,
            &[
                1.9875691500E-4,
                1.3981999507E-3,
                8.3334519073E-3,
                4.1665795894E-2,
                1.6666665459E-1,
                5.0000001201E-1,
            ],
        );
        let y = fb.ins().fma(p, z, r);
        let one = self.fconst(fb, ty, 1.0);
        fb.ins().fadd(y, one)
    }

    /// eˣ (Cephes expf): n = round(x·log₂e), r = x − n·ln2 in two parts, a
    /// degree-5 polynomial, and scaling by 2ⁿ in two halves so that
    /// subnormal results round once.
    pub fn exp_f32(&mut self, fb: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
        let ity = int_type(ty);
        let hi = self.fconst(fb, ty, 89.0);
        let lo = self.fconst(fb, ty, -104.0);
        let over = fb.ins().fcmp(FloatCC::GreaterThan, x, hi);
        let xc = self.sel(fb, over, hi, x);
        let under = fb.ins().fcmp(FloatCC::LessThan, xc, lo);
        let xc = self.sel(fb, under, lo, xc);
        let log2e = self.fconst(fb, ty, std::f64::consts::LOG2_E);
        let t = fb.ins().fmul(xc, log2e);
        let fx = fb.ins().nearest(t);
        let y = self.exp_reduced(fb, ty, xc, fx);
        let n = fb.ins().fcvt_to_sint_sat(ity, fx);
        let n1 = fb.ins().sshr_imm_u(n, 1);
        let n2 = fb.ins().isub(n, n1);
        let s1 = self.pow2i(fb, ty, n1);
        let s2 = self.pow2i(fb, ty, n2);
        let y = fb.ins().fmul(y, s1);
        let y = fb.ins().fmul(y, s2);
        let nan = fb.ins().fcmp(FloatCC::Unordered, x, x);
        self.sel(fb, nan, x, y)
    }

    /// ln x (Cephes logf): split x = m·2ᵉ with m in [√½, √2), a degree-8
    /// polynomial in m − 1, and e·ln2 in two parts. Subnormal inputs are
    /// scaled by 2²³ first; x < 0 gives NaN, 0 gives −inf, inf gives inf.
    pub fn log_f32(&mut self, fb: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
        let ity = int_type(ty);
        let min_normal = self.fconst(fb, ty, f32::MIN_POSITIVE as f64);
        let den = fb.ins().fcmp(FloatCC::LessThan, x, min_normal);
        let scale = self.fconst(fb, ty, 8388608.0);
        let xs_scaled = fb.ins().fmul(x, scale);
        let xs = self.sel(fb, den, xs_scaled, x);
        let bits = fb.ins().bitcast(ity, self.vflags(), xs);
        let ex = fb.ins().ushr_imm_u(bits, 23);
        let ff = self.iconst32(fb, ity, 0xff);
        let ex = fb.ins().band(ex, ff);
        let bias = self.iconst32(fb, ity, 126);
        let e = fb.ins().isub(ex, bias);
        let adj23 = self.iconst32(fb, ity, 23);
        let zero_i = self.iconst32(fb, ity, 0);
        let adj = if ty.is_vector() {
            fb.ins().bitselect(den, adj23, zero_i)
        } else {
            fb.ins().select(den, adj23, zero_i)
        };
        let e = fb.ins().isub(e, adj);
        let mant_mask = self.iconst32(fb, ity, 0x807fffff);
        let half_bits = self.iconst32(fb, ity, 0x3f000000);
        let mb = fb.ins().band(bits, mant_mask);
        let mb = fb.ins().bor(mb, half_bits);
        let m = fb.ins().bitcast(ty, self.vflags(), mb);
        let sqrthf = self.fconst(fb, ty, std::f64::consts::FRAC_1_SQRT_2);
        let small = fb.ins().fcmp(FloatCC::LessThan, m, sqrthf);
        let one = self.fconst(fb, ty, 1.0);
        let t = fb.ins().fsub(m, one);
        let t2 = fb.ins().fadd(t, m);
        let xm = self.sel(fb, small, t2, t);
        let one_i = self.iconst32(fb, ity, 1);
        let dec = if ty.is_vector() {
            fb.ins().bitselect(small, one_i, zero_i)
        } else {
            fb.ins().select(small, one_i, zero_i)
        };
        let e = fb.ins().isub(e, dec);
        let z = fb.ins().fmul(xm, xm);
        let p = self.horner(
            fb,
            ty,
            xm,
            &[
                7.0376836292E-2,
                -1.1514610310E-1,
                1.1676998740E-1,
                -1.2420140846E-1,
                1.4249322787E-1,
                -1.6668057665E-1,
                2.0000714765E-1,
                -2.4999993993E-1,
                3.3333331174E-1,
            ],
        );
        let y = fb.ins().fmul(p, xm);
        let y = fb.ins().fmul(y, z);
        let ef = fb.ins().fcvt_from_sint(ty, e);
        let c2 = self.fconst(fb, ty, -2.12194440e-4);
        let y = fb.ins().fma(ef, c2, y);
        let mhalf = self.fconst(fb, ty, -0.5);
        let y = fb.ins().fma(z, mhalf, y);
        let r = fb.ins().fadd(xm, y);
        let c1 = self.fconst(fb, ty, 0.693359375);
        let r = fb.ins().fma(ef, c1, r);
        // Special values.
        let zero = self.fconst(fb, ty, 0.0);
        let ninf = self.fconst(fb, ty, f64::NEG_INFINITY);
        let pinf = self.fconst(fb, ty, f64::INFINITY);
        let nan = self.fconst(fb, ty, f64::NAN);
        let is_zero = fb.ins().fcmp(FloatCC::Equal, x, zero);
        let r = self.sel(fb, is_zero, ninf, r);
        let is_inf = fb.ins().fcmp(FloatCC::Equal, x, pinf);
        let r = self.sel(fb, is_inf, pinf, r);
        let bad = fb.ins().fcmp(FloatCC::UnorderedOrLessThan, x, zero);
        self.sel(fb, bad, nan, r)
    }

    /// tanh x in f64, scalar: `wengert_ir::math::tanh_f64` (the
    /// interpreter's definition, so the two agree bit for bit), with
    /// branches: for 0 < |x| < [`TANH_SMALL`] the polynomial inline, its
    /// operations emitted by the definition's own [`tanh_small`] over
    /// [`Emit`]; ±0 gives x (the sign of x on zero: also a subnormal x
    /// that the flush mode makes compare equal to zero comes out as the
    /// interpreter's flushed ±0); otherwise a call of the runtime's copy
    /// of the whole definition (its large branch, `1 − 2/(e^{2|x|}+1)`).
    /// Inline, seed case 8's chain of 1,000 `tanh`s pays no call per step,
    /// and since nothing after the call reads x, x is not spilled around
    /// it on the inline path. The zero and large blocks are cold, so the
    /// polynomial falls through.
    pub fn tanh_f64(&mut self, fb: &mut FunctionBuilder, x: Value) -> Value {
        let ty = types::F64;
        let z = fb.ins().fabs(x);
        let small_limit = self.fconst(fb, ty, TANH_SMALL);
        let small = fb.ins().fcmp(FloatCC::LessThan, z, small_limit);
        let (nonzero, poly, zero, large, merge) = (
            fb.create_block(),
            fb.create_block(),
            fb.create_block(),
            fb.create_block(),
            fb.create_block(),
        );
        fb.append_block_param(merge, ty);
        fb.set_cold_block(zero);
        fb.set_cold_block(large);
        fb.ins().brif(small, nonzero, &[], large, &[]);

        fb.switch_to_block(nonzero);
        let zero_c = self.fconst(fb, ty, 0.0);
        let is_zero = fb.ins().fcmp(FloatCC::Equal, z, zero_c);
        fb.ins().brif(is_zero, zero, &[], poly, &[]);

        fb.switch_to_block(poly);
        let y = tanh_small(&mut Emit { l: self, fb }, x);
        fb.ins().jump(merge, &[y.into()]);

        fb.switch_to_block(zero);
        let y = fb.ins().fcopysign(zero_c, x);
        fb.ins().jump(merge, &[y.into()]);

        fb.switch_to_block(large);
        let f = self.import(fb, RuntimeFn::TanhF64);
        let call = fb.ins().call(f, &[x]);
        let y = fb.inst_results(call)[0];
        fb.ins().jump(merge, &[y.into()]);

        fb.switch_to_block(merge);
        fb.block_params(merge)[0]
    }

    /// tanh x (Cephes tanhf): an odd polynomial for |x| < 0.625, else
    /// 1 − 2/(e²ˡˣˡ + 1) with the sign of x. The exponential here is
    /// `exp_f32` cut down to what tanh needs: 2|x| is clamped to 20 (tanh
    /// is 1 in f32 from |x| ≈ 9), so 2ⁿ needs one scaling, no overflow or
    /// underflow handling, and n = round(2|x|·log₂e) comes from adding and
    /// subtracting 1.5·2²³ (round to nearest even, as `nearest`) instead of
    /// a saturating conversion; a NaN input falls through every step as
    /// NaN. About half the instructions of going through `exp_f32`: 2.7 →
    /// 1.7 ns per element over f32[64, 512] in cache (before, the forward's
    /// generated code, mostly this loop, was 6% of a profile of the 64-layer
    /// chain's step). Worst error 1 ulp over every 37th f32
    /// in [−20, 20] (59.5M values, against f64 tanh).
    pub fn tanh_f32(&mut self, fb: &mut FunctionBuilder, ty: Type, x: Value) -> Value {
        let ity = int_type(ty);
        let ax = fb.ins().fabs(x);
        let z = fb.ins().fmul(x, x);
        let p = self.horner(
            fb,
            ty,
            z,
            &[
                -5.70498872745E-3,
                2.06390887954E-2,
                -5.37397155531E-2,
                1.33314422036E-1,
                -3.33332819422E-1,
            ],
        );
        // tanh |x| ≈ |x| + |x|·z·p(z) for |x| < 0.625; the sign of x is
        // put on at the end (an fma on x itself gives +0 for x = −0).
        let pz = fb.ins().fmul(p, z);
        let small_v = fb.ins().fma(pz, ax, ax);
        // e = exp(u), u = min(2|x|, 20).
        let u = fb.ins().fadd(ax, ax);
        let hi = self.fconst(fb, ty, 20.0);
        let over = fb.ins().fcmp(FloatCC::GreaterThan, u, hi);
        let u = self.sel(fb, over, hi, u);
        let log2e = self.fconst(fb, ty, std::f64::consts::LOG2_E);
        let magic = self.fconst(fb, ty, 12582912.0);
        let k = fb.ins().fma(u, log2e, magic);
        let fx = fb.ins().fsub(k, magic);
        let y = self.exp_reduced(fb, ty, u, fx);
        // 2ⁿ: n sits in the low mantissa bits of k (k = 1.5·2²³ + n).
        let kb = fb.ins().bitcast(ity, self.vflags(), k);
        let mb = fb.ins().bitcast(ity, self.vflags(), magic);
        let n = fb.ins().isub(kb, mb);
        let scale = self.pow2i(fb, ty, n);
        let e = fb.ins().fmul(y, scale);
        let one = self.fconst(fb, ty, 1.0);
        let two = self.fconst(fb, ty, 2.0);
        let ep1 = fb.ins().fadd(e, one);
        let q = fb.ins().fdiv(two, ep1);
        let big = fb.ins().fsub(one, q);
        let lim = self.fconst(fb, ty, 0.625);
        let small = fb.ins().fcmp(FloatCC::LessThan, ax, lim);
        let r = self.sel(fb, small, small_v, big);
        // The sign of x (r ≥ 0, as q ≤ 1 and |x|·z·p(z) > −|x|): (x & sign
        // bit) | r, so tanh(−0) = −0 and tanh(−inf) = −1.
        let xb = fb.ins().bitcast(ity, self.vflags(), x);
        let sign_bit = self.iconst32(fb, ity, 0x8000_0000);
        let sign = fb.ins().band(xb, sign_bit);
        let rb = fb.ins().bitcast(ity, self.vflags(), r);
        let rb = fb.ins().bor(rb, sign);
        fb.ins().bitcast(ty, self.vflags(), rb)
    }

    /// sin x or cos x (Cephes sinf/cosf): quadrant from |x|·4/π, a
    /// three-part Cody–Waite reduction to [−π/4, π/4], and the sine or
    /// cosine polynomial by quadrant. Lanes with |x| > 8192 (or infinite)
    /// are recomputed by a cold call to libm.
    pub fn sincos_f32(&mut self, fb: &mut FunctionBuilder, ty: Type, x: Value, cos: bool) -> Value {
        let ity = int_type(ty);
        let ax = fb.ins().fabs(x);
        let fopi = self.fconst(fb, ty, 4.0 / std::f64::consts::PI);
        let t = fb.ins().fmul(ax, fopi);
        let j = fb.ins().fcvt_to_sint_sat(ity, t);
        let one_i = self.iconst32(fb, ity, 1);
        let j = fb.ins().iadd(j, one_i);
        let not1 = self.iconst32(fb, ity, !1);
        let j = fb.ins().band(j, not1);
        let y = fb.ins().fcvt_from_sint(ty, j);
        let dp1 = self.fconst(fb, ty, -0.78515625);
        let dp2 = self.fconst(fb, ty, -2.418_756_484_985_351_6e-4);
        let dp3 = self.fconst(fb, ty, -3.774_894_977_445_941e-8);
        let r = fb.ins().fma(y, dp1, ax);
        let r = fb.ins().fma(y, dp2, r);
        let r = fb.ins().fma(y, dp3, r);
        let z = fb.ins().fmul(r, r);
        // sin r = r + r·z·P(z); cos r = 1 − z/2 + z²·Q(z).
        let ps = self.horner(fb, ty, z, &[-1.9515295891E-4, 8.3321608736E-3, -1.6666654611E-1]);
        let rz = fb.ins().fmul(r, z);
        let sin_r = fb.ins().fma(ps, rz, r);
        let pc = self.horner(
            fb,
            ty,
            z,
            &[2.443315711809948E-005, -1.388731625493765E-003, 4.166664568298827E-002],
        );
        let zz = fb.ins().fmul(z, z);
        let mhalf = self.fconst(fb, ty, -0.5);
        let one = self.fconst(fb, ty, 1.0);
        let c = fb.ins().fma(z, mhalf, one);
        let cos_r = fb.ins().fma(pc, zz, c);
        // Quadrant q = j/2: sin(|x|) = [s, c, −s, −c][q mod 4];
        // cos(|x|) = [c, −s, −c, s][q mod 4].
        let q = fb.ins().sshr_imm_u(j, 1);
        let q = if cos { fb.ins().iadd(q, one_i) } else { q };
        let bit0 = fb.ins().band(q, one_i);
        let two_i = self.iconst32(fb, ity, 2);
        let bit1 = fb.ins().band(q, two_i);
        let zero_i = self.iconst32(fb, ity, 0);
        let use_cos = fb.ins().icmp(IntCC::NotEqual, bit0, zero_i);
        let negate = fb.ins().icmp(IntCC::NotEqual, bit1, zero_i);
        let v = self.sel(fb, use_cos, cos_r, sin_r);
        let nv = fb.ins().fneg(v);
        let v = self.sel(fb, negate, nv, v);
        // sin is odd: give the result the sign of x (so sin(−0) = −0).
        let v = if cos {
            v
        } else {
            let sign = self.iconst32(fb, ity, i32::MIN as i64);
            let xb = fb.ins().bitcast(ity, self.vflags(), x);
            let sx = fb.ins().band(xb, sign);
            let vb = fb.ins().bitcast(ity, self.vflags(), v);
            let flipped = fb.ins().bxor(vb, sx);
            fb.ins().bitcast(ty, self.vflags(), flipped)
        };
        // Large or infinite arguments: a cold exact path.
        let limit = self.fconst(fb, ty, 8192.0);
        let big = fb.ins().fcmp(FloatCC::GreaterThan, ax, limit);
        let any_big = if ty.is_vector() { fb.ins().vany_true(big) } else { big };
        let cold = fb.create_block();
        let join = fb.create_block();
        fb.append_block_param(join, ty);
        fb.set_cold_block(cold);
        fb.ins()
            .brif(any_big, cold, &[], join, &[cranelift_codegen::ir::BlockArg::Value(v)]);
        fb.switch_to_block(cold);
        let f = self.import(fb, if cos { RuntimeFn::CosF32 } else { RuntimeFn::SinF32 });
        let fixed = if ty.is_vector() {
            let mut acc = v;
            for lane in 0..4u8 {
                let xl = fb.ins().extractlane(x, lane);
                let call = fb.ins().call(f, &[xl]);
                let rl = fb.inst_results(call)[0];
                acc = fb.ins().insertlane(acc, rl, lane);
            }
            acc
        } else {
            let call = fb.ins().call(f, &[x]);
            fb.inst_results(call)[0]
        };
        fb.ins().jump(join, &[cranelift_codegen::ir::BlockArg::Value(fixed)]);
        fb.switch_to_block(join);
        // Only the large lanes take the libm value, so every lane's result
        // depends on that lane alone (scalar and vector code agree bit for
        // bit).
        let exact = fb.block_params(join)[0];
        self.sel(fb, big, exact, v)
    }
}
