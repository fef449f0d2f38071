//! The op cases that every derivative test runs (reverse mode in
//! `tests/autodiff.rs`, forward mode in `tests/jvp.rs`): one list, driven
//! by the op table (`OpKind::all`) through an exhaustive match, so a new
//! op is a compiler error here until it has its cases, and each case is
//! checked in both modes. Each case is `check(name, shapes, lo, hi, f)`:
//! `f` applied to f64 inputs of `shapes` with values in `[lo, hi)`.

use wengert::ir::{BinaryOp, CmpOp, OpKind, UnaryOp};
use wengert::{DType, Var};

/// What a derivative test does with one case.
pub type Check<'a> = dyn FnMut(&str, &[&[usize]], f64, f64, &dyn for<'b> Fn(&[Var<'b>]) -> Var<'b>) + 'a;

/// The three groups the tests run separately (each a test of its own, so a
/// failure names its group).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Unary,
    Binary,
    Shape,
}

/// Every elementwise unary op (away from kinks), powers and a composite.
pub fn unary_cases(check: &mut Check<'_>) {
    cases(Group::Unary, check);
    check("sigmoid", &[&[2, 3]], -3.0, 3.0, &|x| x[0].sigmoid());
}

/// Every binary op, comparison and `select`, under each kind of
/// broadcasting.
pub fn binary_cases(check: &mut Check<'_>) {
    cases(Group::Binary, check);
}

/// Shape ops, reductions over every axis set, contractions, copies, loops,
/// softmax and softmax cross-entropy.
pub fn shape_cases(check: &mut Check<'_>) {
    cases(Group::Shape, check);
    check("mean", &[&[2, 3, 4]], -1.0, 1.0, &|x| x[0].mean(&[0, 2]));
    check("softmax", &[&[2, 4]], -2.0, 2.0, &|x| x[0].softmax(1));
    check("linear", &[&[4, 3], &[3, 2], &[2]], -1.0, 1.0, &|x| {
        x[0].linear(x[1], x[2])
    });
}

fn cases(group: Group, check: &mut Check<'_>) {
    for kind in OpKind::all().filter(|&k| group_of(k) == Some(group)) {
        kind_cases(kind, check);
    }
}

/// Which test runs a kind's cases (`None`: leaves, which have no rule).
fn group_of(kind: OpKind) -> Option<Group> {
    match kind {
        OpKind::Input | OpKind::Const => None,
        OpKind::Unary(_) | OpKind::Pow | OpKind::Convert => Some(Group::Unary),
        OpKind::Binary(_) | OpKind::Compare(_) | OpKind::Select => Some(Group::Binary),
        OpKind::Broadcast
        | OpKind::Reshape
        | OpKind::Transpose
        | OpKind::Slice
        | OpKind::Get
        | OpKind::ReduceSum
        | OpKind::ReduceMax
        | OpKind::MatMul
        | OpKind::MatMulAcc
        | OpKind::Pad
        | OpKind::Concat
        | OpKind::SoftmaxCrossEntropy
        | OpKind::Scan => Some(Group::Shape),
    }
}

const BROADCASTS: [&[&[usize]]; 4] = [
    &[&[2, 3], &[2, 3]],
    &[&[2, 3], &[3]],
    &[&[2, 1], &[1, 3]],
    &[&[], &[2, 3]],
];

/// The cases of one op kind.
fn kind_cases(kind: OpKind, check: &mut Check<'_>) {
    let s: &[&[usize]] = &[&[2, 3]];
    match kind {
        // Leaves have no rule of their own: every case reads inputs, and
        // constants appear in `pow`, `sigmoid` and `convert` below.
        OpKind::Input | OpKind::Const => {}
        OpKind::Unary(u) => {
            let name = u.name();
            match u {
                UnaryOp::Neg => check(name, s, -2.0, 2.0, &|x| -x[0]),
                UnaryOp::Exp => check(name, s, -2.0, 2.0, &|x| x[0].exp()),
                UnaryOp::Log => check(name, s, 0.3, 3.0, &|x| x[0].log()),
                UnaryOp::Sin => check(name, s, -3.0, 3.0, &|x| x[0].sin()),
                UnaryOp::Cos => check(name, s, -3.0, 3.0, &|x| x[0].cos()),
                UnaryOp::Tanh => check(name, s, -2.0, 2.0, &|x| x[0].tanh()),
                UnaryOp::Sqrt => check(name, s, 0.3, 3.0, &|x| x[0].sqrt()),
                UnaryOp::Erf => check(name, s, -2.0, 2.0, &|x| x[0].erf()),
                UnaryOp::Expm1 => check(name, s, -2.0, 2.0, &|x| x[0].expm1()),
                UnaryOp::Log1p => check(name, s, -0.7, 3.0, &|x| x[0].log1p()),
                // Away from the kink at 0: |x| ≥ 0.1 on both sides.
                UnaryOp::Abs => {
                    check("abs+", s, 0.1, 2.0, &|x| x[0].abs());
                    check("abs-", s, -2.0, -0.1, &|x| x[0].abs());
                }
                UnaryOp::Relu => {
                    check("relu+", s, 0.1, 2.0, &|x| x[0].relu());
                    check("relu-", s, -2.0, -0.1, &|x| x[0].relu());
                }
            }
        }
        OpKind::Pow => {
            for p in [2.0, 3.0, -1.0, 0.5, 1.5, -2.5] {
                check(&format!("pow{p}"), s, 0.3, 2.0, &move |x| x[0].powf(p));
            }
        }
        // A conversion of a comparison (whose derivative is zero) scales
        // the value: the rule must pass no adjoint through the bool.
        OpKind::Convert => {
            check("convert", s, 0.1, 2.0, &|x| {
                let dtype = x[0].ty().map_or(DType::F64, |t| t.dtype);
                x[0] * x[0].gt_scalar(1.0).convert(dtype)
            });
        }
        OpKind::Binary(op) => {
            for s in BROADCASTS {
                match op {
                    BinaryOp::Add => check("add", s, -2.0, 2.0, &|x| x[0] + x[1]),
                    BinaryOp::Sub => check("sub", s, -2.0, 2.0, &|x| x[0] - x[1]),
                    BinaryOp::Mul => check("mul", s, -2.0, 2.0, &|x| x[0] * x[1]),
                    BinaryOp::Div => check("div", s, 0.5, 2.0, &|x| x[0] / x[1]),
                    BinaryOp::Max => check("max", s, -2.0, 2.0, &|x| x[0].max(x[1])),
                    BinaryOp::Min => check("min", s, -2.0, 2.0, &|x| x[0].min(x[1])),
                }
            }
        }
        // A comparison picks the branch of a `select`: its own derivative
        // is zero, and the select's flows through the branch taken.
        OpKind::Compare(c) => {
            check(c.name(), s, -2.0, 2.0, &move |x| {
                let y = x[0] * 0.5 + 0.25;
                let cond = match c {
                    CmpOp::Lt => x[0].lt(y),
                    CmpOp::Le => x[0].le(y),
                    CmpOp::Gt => x[0].gt(y),
                    CmpOp::Ge => x[0].ge(y),
                    CmpOp::Eq => x[0].eq(y),
                    CmpOp::Ne => x[0].ne(y),
                };
                cond.select(x[0] * x[0], x[0] - y)
            });
        }
        OpKind::Select => {
            for s in BROADCASTS {
                check("select", s, -2.0, 2.0, &|x| {
                    x[0].gt(x[1]).select(x[0] * x[1], x[0] - x[1])
                });
            }
        }
        OpKind::Broadcast => {
            check("broadcast", &[&[3, 1]], -1.0, 1.0, &|x| x[0].broadcast_to(&[2, 3, 4]));
        }
        OpKind::Reshape => {
            check("reshape", &[&[2, 3, 4]], -1.0, 1.0, &|x| x[0].reshape(&[4, 6]));
        }
        OpKind::Transpose => {
            check("transpose", &[&[2, 3, 4]], -1.0, 1.0, &|x| x[0].transpose(&[1, 2, 0]));
            check("matmul_t", &[&[3, 2], &[3, 4]], -1.0, 1.0, &|x| x[0].t().matmul(x[1]));
        }
        OpKind::ReduceSum | OpKind::ReduceMax => {
            for axes in [vec![0], vec![1], vec![2], vec![0, 2], vec![1, 2], vec![0, 1, 2]] {
                if kind == OpKind::ReduceSum {
                    check("reduce_sum", &[&[2, 3, 4]], -1.0, 1.0, &move |x| x[0].sum(&axes));
                } else {
                    check("reduce_max", &[&[2, 3, 4]], -1.0, 1.0, &move |x| x[0].max_over(&axes));
                }
            }
        }
        OpKind::MatMul => {
            check("matmul", &[&[2, 3], &[3, 4]], -1.0, 1.0, &|x| x[0].matmul(x[1]));
            check("batched_matmul", &[&[2, 2, 3], &[2, 3, 4]], -1.0, 1.0, &|x| {
                x[0].matmul(x[1])
            });
        }
        OpKind::MatMulAcc => {
            check("matmul_acc", &[&[2, 4], &[2, 6], &[6, 4]], -1.0, 1.0, &|x| {
                x[0].matmul_acc(x[1], x[2], 3)
            });
        }
        OpKind::Slice => {
            check("slice", &[&[3, 4]], -1.0, 1.0, &|x| x[0].slice(&[1, 0], &[3, 3]));
        }
        OpKind::Pad => {
            check("pad", &[&[2, 3]], -1.0, 1.0, &|x| x[0].pad(&[1, 0], &[0, 2]));
        }
        OpKind::Concat => {
            check("concat0", &[&[2, 3], &[1, 3]], -1.0, 1.0, &|x| {
                x[0].builder().concat(&[x[0], x[1]], 0)
            });
            check("concat1", &[&[2, 3], &[2, 2]], -1.0, 1.0, &|x| {
                x[0].builder().concat(&[x[0], x[1], x[0]], 1)
            });
        }
        // Softmax cross-entropy against differentiable targets: both rules.
        OpKind::SoftmaxCrossEntropy => {
            check("softmax_cross_entropy", &[&[3, 4], &[3, 4]], -1.0, 1.0, &|x| {
                x[0].softmax_cross_entropy(x[1].exp())
            });
        }
        // A loop (read through `get`): a recurrence over stacked inputs
        // with a const, a carry and a stacked result, differentiated with
        // respect to all three.
        OpKind::Scan => {
            check("scan", &[&[3], &[3], &[4, 3]], -1.0, 1.0, &|x| {
                let b = x[0].builder();
                let (carry, ys) = b.scan(4, &[x[0]], &[x[1]], &[x[2]], |_, c, h, xt| {
                    let next = (h[0] * c[0] + xt[0]).tanh();
                    (vec![next], vec![next * xt[0]])
                });
                carry[0] + ys[0].sum(&[0])
            });
        }
        // `get` reads a loop's results: the loop's case covers it.
        OpKind::Get => {}
    }
}
