//! Vector-Jacobian product rules: one per primitive, in one exhaustive
//! `match` with no catch-all arm.
//!
//! A rule receives the adjoint `ȳ` of a node `y = op(x₁, …)` and returns the
//! contribution `x̄ᵢ` for each operand (or `None`, a symbolic zero). Rules
//! emit ordinary ops of the IR into the same graph, so the result can be
//! differentiated again (grad of grad). Each arm states its derivative.

use crate::emit::Emitter;
use crate::error::PassError;
use wengert_ir::interp::integer_exponent;
use wengert_ir::{BinaryOp, CmpOp, DType, NodeId, Op, UnaryOp};

/// The contributions of `ȳ` (adjoint of `y`) to `y`'s operands. `wants[i]`
/// says whether operand `i` needs an adjoint at all; unwanted ones may be
/// returned as `None` without emitting anything.
pub fn vjp(e: &mut Emitter<'_>, y: NodeId, ybar: NodeId, wants: &[bool]) -> Result<Vec<Option<NodeId>>, PassError> {
    let op = e.g.op(y).clone();
    let args = e.g.args(y);
    let want = |i: usize| wants.get(i).copied().unwrap_or(false);
    let x = args.first().copied().unwrap_or(y);
    Ok(match op {
        // Leaves have no operands.
        Op::Input { .. } | Op::Const { .. } => vec![],

        // Elementwise with one operand: x̄ = ȳ·f′(x) (see `unary_rule`).
        Op::Unary(u) => vec![Some(unary_rule(e, u, x, y, ybar)?)],

        Op::Binary(b) => {
            let (a, c) = (args[0], args[1]);
            match b {
                // y = a + b: ā = ȳ, b̄ = ȳ
                BinaryOp::Add => vec![Some(ybar), Some(ybar)],
                // y = a − b: ā = ȳ, b̄ = −ȳ
                BinaryOp::Sub => vec![Some(ybar), if want(1) { Some(e.neg(ybar)?) } else { None }],
                // y = a·b: ā = ȳ·b, b̄ = ȳ·a
                BinaryOp::Mul => vec![
                    if want(0) { Some(e.mul(ybar, c)?) } else { None },
                    if want(1) { Some(e.mul(ybar, a)?) } else { None },
                ],
                // y = a / b: ā = ȳ / b, b̄ = −ȳ·a/b² = −ā·y (both guarded)
                BinaryOp::Div => {
                    let abar_raw = e.div(ybar, c)?;
                    let abar = e.guard(ybar, abar_raw)?;
                    let bbar = if want(1) {
                        let t = e.mul(abar, y)?;
                        let n = e.neg(t)?;
                        Some(e.guard(ybar, n)?)
                    } else {
                        None
                    };
                    vec![if want(0) { Some(abar) } else { None }, bbar]
                }
                // y = max(a, b): ā = ȳ·[a > b] + ½ȳ·[a = b], b̄ likewise; a
                // tie splits the adjoint equally (as JAX and PyTorch do).
                // y = min(a, b): the same with <.
                BinaryOp::Max | BinaryOp::Min => {
                    let wins = if b == BinaryOp::Max { CmpOp::Gt } else { CmpOp::Lt };
                    let zero = e.full_like(ybar, 0.0)?;
                    let half = e.mul_scalar(0.5, ybar)?;
                    let tie = e.cmp(CmpOp::Eq, a, c)?;
                    let tie_share = e.select(tie, half, zero)?;
                    let mut out = Vec::new();
                    for (i, (p, q)) in [(a, c), (c, a)].into_iter().enumerate() {
                        out.push(if want(i) {
                            let w = e.cmp(wins, p, q)?;
                            Some(e.select(w, ybar, tie_share)?)
                        } else {
                            None
                        });
                    }
                    out
                }
            }
        }

        // y = xᵖ: x̄ = ȳ·p·xᵖ⁻¹ (see `pow_rule`).
        Op::Pow { exponent: p } => vec![pow_rule(e, p, x, ybar)?],

        // Comparisons are piecewise constant: no gradient.
        Op::Compare(_) => vec![None, None],

        // y = select(c, a, b): ā = select(c, ȳ, 0), b̄ = select(c, 0, ȳ).
        // The untaken branch gets an exact zero, never NaN.
        Op::Select => {
            let cond = args[0];
            let zero = e.full_like(ybar, 0.0)?;
            vec![
                None,
                if want(1) {
                    Some(e.select(cond, ybar, zero)?)
                } else {
                    None
                },
                if want(2) {
                    Some(e.select(cond, zero, ybar)?)
                } else {
                    None
                },
            ]
        }

        // y = convert(x): x̄ = convert(ȳ) back to x's type between floats;
        // nothing flows through bool.
        Op::Convert { .. } => {
            let from = e.dtype(x);
            if from.is_float() && e.dtype(ybar).is_float() {
                vec![Some(if from == e.dtype(ybar) {
                    ybar
                } else {
                    e.op(Op::Convert { to: from }, &[ybar])?
                })]
            } else {
                vec![None]
            }
        }

        // y = broadcast(x): x̄ = Σ of ȳ over the broadcast axes, reshaped to x.
        Op::Broadcast { shape } => {
            let xs = e.shape(x);
            let lead = shape.len() - xs.len();
            let axes: Vec<usize> = (0..shape.len())
                .filter(|&a| a < lead || (xs[a - lead] == 1 && shape[a] != 1))
                .collect();
            let s = e.reduce_sum(ybar, axes)?;
            vec![Some(e.reshape(s, &xs)?)]
        }

        // y = reshape(x): x̄ = reshape(ȳ) to x's shape.
        Op::Reshape { .. } => {
            let xs = e.shape(x);
            vec![Some(e.reshape(ybar, &xs)?)]
        }

        // y = transpose(x, perm): x̄ = transpose(ȳ, perm⁻¹).
        Op::Transpose { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            vec![Some(e.op(Op::Transpose { perm: inv }, &[ybar])?)]
        }

        // y = Σ_axes x: x̄ = ȳ broadcast back over the reduced axes.
        Op::ReduceSum { axes } => {
            let xs = e.shape(x);
            vec![Some(e.expand_reduced(ybar, &axes, &xs)?)]
        }

        // y = max_axes x: x̄ = ȳ·[x = y] / #ties, so tied maxima share the
        // adjoint equally.
        Op::ReduceMax { axes } => {
            let xs = e.shape(x);
            let yb = e.expand_reduced(y, &axes, &xs)?;
            let hit = e.cmp(CmpOp::Eq, x, yb)?;
            let hit_f = e.op(Op::Convert { to: e.dtype(x) }, &[hit])?;
            let count = e.op(Op::ReduceSum { axes: axes.clone() }, &[hit_f])?;
            let share = e.div(ybar, count)?;
            let share_b = e.expand_reduced(share, &axes, &xs)?;
            let zero = e.full_like(x, 0.0)?;
            vec![Some(e.select(hit, share_b, zero)?)]
        }

        // Y = A·B: Ā = Ȳ·Bᵀ, B̄ = Aᵀ·Ȳ (last two axes transposed when batched).
        Op::MatMul => {
            let (a, b) = (args[0], args[1]);
            let perm: Vec<usize> = if e.shape(a).len() == 3 {
                vec![0, 2, 1]
            } else {
                vec![1, 0]
            };
            let abar = if want(0) {
                let bt = e.op(Op::Transpose { perm: perm.clone() }, &[b])?;
                Some(e.op(Op::MatMul, &[ybar, bt])?)
            } else {
                None
            };
            let bbar = if want(1) {
                let at = e.op(Op::Transpose { perm }, &[a])?;
                Some(e.op(Op::MatMul, &[at, ybar])?)
            } else {
                None
            };
            vec![abar, bbar]
        }

        // Y = C + A·B (in a fixed order): C̄ = Ȳ, Ā = Ȳ·Bᵀ, B̄ = Aᵀ·Ȳ. The
        // order only fixes rounding; the adjoints are plain products.
        Op::MatMulAcc { .. } => {
            let (a, b) = (args[1], args[2]);
            let cbar = want(0).then_some(ybar);
            let abar = if want(1) {
                let bt = e.op(Op::Transpose { perm: vec![1, 0] }, &[b])?;
                Some(e.op(Op::MatMul, &[ybar, bt])?)
            } else {
                None
            };
            let bbar = if want(2) {
                let at = e.op(Op::Transpose { perm: vec![1, 0] }, &[a])?;
                Some(e.op(Op::MatMul, &[at, ybar])?)
            } else {
                None
            };
            vec![cbar, abar, bbar]
        }

        // y = x[start..end]: x̄ = ȳ padded with zeros back to x's shape.
        Op::Slice { start, end } => {
            let xs = e.shape(x);
            let high = xs.iter().zip(&end).map(|(d, e)| d - e).collect();
            vec![Some(e.op(Op::Pad { low: start, high }, &[ybar])?)]
        }

        // y = pad(x): x̄ = the slice of ȳ where x sits.
        Op::Pad { low, .. } => {
            let xs = e.shape(x);
            let end = low.iter().zip(&xs).map(|(l, d)| l + d).collect();
            vec![Some(e.op(Op::Slice { start: low, end }, &[ybar])?)]
        }

        // y = concat(x₁, …, axis): x̄ᵢ = the slice of ȳ where xᵢ sits.
        Op::Concat { axis } => {
            let ys = e.shape(y);
            let mut at = 0;
            let mut out = Vec::with_capacity(args.len());
            for (i, &a) in args.iter().enumerate() {
                let extent = e.shape(a)[axis];
                out.push(if want(i) {
                    let mut start = vec![0; ys.len()];
                    let mut end = ys.clone();
                    start[axis] = at;
                    end[axis] = at + extent;
                    Some(e.op(Op::Slice { start, end }, &[ybar])?)
                } else {
                    None
                });
                at += extent;
            }
            out
        }

        // L = mean over B rows of −Σₖ tₖ·log softmax(z)ₖ:
        //   z̄ = ȳ·(softmax(z)·Σₖtₖ − t)/B, which is the fused, stable rule
        //       (P − T)/B of case 7 when each target row sums to 1
        //   t̄ = −ȳ·log softmax(z)/B = ȳ·(logsumexp(z) − z)/B
        // softmax is emitted from primitives, shifted by the row maximum, so
        // logits of ±1e4 stay finite and a −inf logit gives p = 0 exactly.
        Op::SoftmaxCrossEntropy => {
            let (z, t) = (args[0], args[1]);
            let SoftmaxParts {
                zs,
                last,
                rows,
                shifted,
                ex,
                s,
            } = softmax_parts(e, z)?;
            let scale = if e.is_one(ybar) {
                e.scalar(e.dtype(z), 1.0 / rows as f64)
            } else {
                let b = e.scalar(e.dtype(z), rows as f64);
                e.div(ybar, b)?
            };
            let scale_b = e.broadcast(scale, &zs)?;
            let zbar = if want(0) {
                // p·Σt = e·(Σt / Σe): one division per row.
                let tsum = e.reduce_sum(t, vec![last])?;
                let ratio = e.div(tsum, s)?;
                let rb = e.expand_reduced(ratio, &[last], &zs)?;
                let p_scaled = e.binary(BinaryOp::Mul, ex, rb)?;
                let diff = e.sub(p_scaled, t)?;
                Some(e.binary(BinaryOp::Mul, diff, scale_b)?)
            } else {
                None
            };
            let tbar = if want(1) {
                let ls = e.unary(UnaryOp::Log, s)?;
                let lsb = e.expand_reduced(ls, &[last], &zs)?;
                let neg_logp = e.sub(lsb, shifted)?;
                Some(e.binary(BinaryOp::Mul, neg_logp, scale_b)?)
            } else {
                None
            };
            vec![zbar, tbar]
        }

        // A loop's rule needs the adjoints of all its results at once:
        // autodiff gathers them from the `get`s and calls
        // `scan_vjp::scan_vjp` (a loop's VJP is a loop running the other
        // way over the body's VJP).
        Op::Scan(_) | Op::Get { .. } => {
            return Err(crate::error::PassError::Internal {
                node: e.g.value_name(y),
                message: "loops are differentiated by `scan_vjp`, through autodiff".into(),
            })
        }
    })
}

/// The row-wise pieces of softmax cross-entropy's derivative, shared by
/// its VJP and JVP: `z`'s shape, its last axis, the number of rows, `z`
/// shifted by its row maximum, the shifted exponentials and their row
/// sums (stable for logits of ±1e4; a −inf logit gives p = 0 exactly).
pub(crate) struct SoftmaxParts {
    pub zs: Vec<usize>,
    pub last: usize,
    pub rows: usize,
    pub shifted: NodeId,
    pub ex: NodeId,
    pub s: NodeId,
}

pub(crate) fn softmax_parts(e: &mut Emitter<'_>, z: NodeId) -> Result<SoftmaxParts, PassError> {
    let zs = e.shape(z);
    let last = zs.len() - 1;
    let rows = (zs[..last].iter().product::<usize>()).max(1);
    let m = e.op(Op::ReduceMax { axes: vec![last] }, &[z])?;
    let mb = e.expand_reduced(m, &[last], &zs)?;
    let shifted = e.sub(z, mb)?;
    let ex = e.unary(UnaryOp::Exp, shifted)?;
    let s = e.reduce_sum(ex, vec![last])?;
    Ok(SoftmaxParts {
        zs,
        last,
        rows,
        shifted,
        ex,
        s,
    })
}

/// `g·f′(x)` for the elementwise unary op `y = f(x)`: the VJP of `y`
/// (`g` = ȳ, giving x̄) and its JVP (`g` = ẋ, giving ẏ) alike, since a
/// unary elementwise op's Jacobian is diagonal. Rules whose local
/// derivative can be infinite are guarded by `g`, so that a zero `g`
/// (an untaken `select` branch) stays exactly zero.
pub(crate) fn unary_rule(
    e: &mut Emitter<'_>,
    u: UnaryOp,
    x: NodeId,
    y: NodeId,
    g: NodeId,
) -> Result<NodeId, PassError> {
    Ok(match u {
        // y = −x: g·f′(x) = −g
        UnaryOp::Neg => e.neg(g)?,
        // y = eˣ: g·f′(x) = g·y (guarded: y overflows to inf)
        UnaryOp::Exp => {
            let v = e.mul(g, y)?;
            e.guard(g, v)?
        }
        // y = ln x: g·f′(x) = g / x (guarded: 1/0 = inf)
        UnaryOp::Log => {
            let v = e.div(g, x)?;
            e.guard(g, v)?
        }
        // y = sin x: g·f′(x) = g·cos x
        UnaryOp::Sin => {
            let c = e.unary(UnaryOp::Cos, x)?;
            e.mul(g, c)?
        }
        // y = cos x: g·f′(x) = −g·sin x
        UnaryOp::Cos => {
            let s = e.unary(UnaryOp::Sin, x)?;
            let v = e.mul(g, s)?;
            e.neg(v)?
        }
        // y = tanh x: g·f′(x) = g·(1 − y²)
        UnaryOp::Tanh => {
            let yy = e.binary(BinaryOp::Mul, y, y)?;
            let one = e.full_like(y, 1.0)?;
            let d = e.sub(one, yy)?;
            e.mul(g, d)?
        }
        // y = √x: g·f′(x) = g / (2y) (guarded: infinite at 0)
        UnaryOp::Sqrt => {
            let two_y = e.mul_scalar(2.0, y)?;
            let v = e.div(g, two_y)?;
            e.guard(g, v)?
        }
        // y = |x|: g·f′(x) = g·sign(x), with sign(0) = 0
        UnaryOp::Abs => {
            let zero = e.full_like(x, 0.0)?;
            let pos = e.cmp(CmpOp::Gt, x, zero)?;
            let neg = e.cmp(CmpOp::Lt, x, zero)?;
            let minus = e.neg(g)?;
            let inner = e.select(neg, minus, zero)?;
            e.select(pos, g, inner)?
        }
        // y = max(x, 0): g·f′(x) = g·[x > 0], so ReLU′(0) = 0. Only the
        // mask [x > 0] is needed, which partition saves in place of x.
        UnaryOp::Relu => {
            let zero = e.full_like(x, 0.0)?;
            let mask = e.cmp(CmpOp::Gt, x, zero)?;
            e.select(mask, g, zero)?
        }
        // y = erf x: g·f′(x) = g·(2/√π)·e^(−x²) (at most 2/√π: no guard)
        UnaryOp::Erf => {
            let xx = e.binary(BinaryOp::Mul, x, x)?;
            let m = e.neg(xx)?;
            let gauss = e.unary(UnaryOp::Exp, m)?;
            let d = e.mul_scalar(std::f64::consts::FRAC_2_SQRT_PI, gauss)?;
            e.mul(g, d)?
        }
        // y = eˣ − 1: g·f′(x) = g·(y + 1) (guarded: y overflows to inf)
        UnaryOp::Expm1 => {
            let one = e.full_like(y, 1.0)?;
            let d = e.add(y, one)?;
            let v = e.mul(g, d)?;
            e.guard(g, v)?
        }
        // y = ln(1 + x): g·f′(x) = g / (1 + x) (guarded: 1/0 at x = −1)
        UnaryOp::Log1p => {
            let one = e.full_like(x, 1.0)?;
            let d = e.add(x, one)?;
            let v = e.div(g, d)?;
            e.guard(g, v)?
        }
    })
}

/// `g·p·xᵖ⁻¹` for `y = xᵖ` (`None` for p = 0), guarded when xᵖ⁻¹ is
/// infinite at 0 (p − 1 < 0 or fractional): the VJP and the JVP alike.
pub(crate) fn pow_rule(e: &mut Emitter<'_>, p: f64, x: NodeId, g: NodeId) -> Result<Option<NodeId>, PassError> {
    Ok(if p == 0.0 {
        None
    } else if p == 1.0 {
        Some(g)
    } else if p == 2.0 {
        let two_x = e.mul_scalar(2.0, x)?;
        Some(e.mul(g, two_x)?)
    } else {
        let xp = e.op(Op::Pow { exponent: p - 1.0 }, &[x])?;
        let d = e.mul_scalar(p, xp)?;
        let v = e.mul(g, d)?;
        let singular = p - 1.0 < 0.0 || integer_exponent(p - 1.0).is_none();
        Some(if singular { e.guard(g, v)? } else { v })
    })
}

/// Whether values of this type carry adjoints.
pub fn differentiable_dtype(d: DType) -> bool {
    d.is_float()
}
