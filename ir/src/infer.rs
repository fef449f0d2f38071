//! Shape and type inference: one rule per op.
//!
//! `infer` is the single definition of which operand types an op accepts and
//! what type it produces. The graph calls it when a node is added, `verify`
//! calls it again on every node, and the parser reports its message at the
//! line of the offending statement.

use crate::op::Op;
use crate::types::{num_elements, DType, TensorType};

fn same_float(name: &str, a: &TensorType, b: &TensorType) -> Result<(), String> {
    if a.dtype != b.dtype {
        return Err(format!("`{name}` operands have different dtypes {a} and {b}"));
    }
    if !a.dtype.is_float() {
        return Err(format!("`{name}` needs float operands, not {a}"));
    }
    Ok(())
}

fn check_axes(name: &str, axes: &[usize], rank: usize) -> Result<(), String> {
    for w in axes.windows(2) {
        if w[0] >= w[1] {
            return Err(format!("`{name}` axes {axes:?} must be sorted and distinct"));
        }
    }
    if let Some(&a) = axes.iter().find(|&&a| a >= rank) {
        return Err(format!("`{name}` axis {a} is out of range for rank {rank}"));
    }
    Ok(())
}

/// Checks that `from` broadcasts to `to` under numpy rules (right-aligned,
/// extents equal or 1).
pub fn broadcast_compatible(from: &[usize], to: &[usize]) -> bool {
    from.len() <= to.len() && from.iter().rev().zip(to.iter().rev()).all(|(&f, &t)| f == t || f == 1)
}

/// Infers the result type of `op` applied to operands of types `args`,
/// rejecting results with more than [`crate::types::MAX_ELEMENTS`] elements.
pub fn infer(op: &Op, args: &[&TensorType]) -> Result<TensorType, String> {
    let ty = infer_unchecked(op, args)?;
    if crate::types::checked_elements(&ty.shape).is_none() {
        return Err(format!(
            "`{}` would produce {:?}, more elements than a tensor may hold",
            op.name(),
            ty.shape
        ));
    }
    Ok(ty)
}

fn infer_unchecked(op: &Op, args: &[&TensorType]) -> Result<TensorType, String> {
    if let Some(n) = op.arity() {
        if args.len() != n {
            return Err(format!("`{}` takes {n} operand(s), got {}", op.name(), args.len()));
        }
    }
    let name = op.name();
    match op {
        Op::Input { .. } => Err("inputs take their type from the graph header".into()),
        Op::Const { value } => Ok(value.ty().clone()),
        Op::Unary(_) | Op::Pow { .. } => {
            if !args[0].dtype.is_float() {
                return Err(format!("`{name}` needs a float operand, not {}", args[0]));
            }
            Ok(args[0].clone())
        }
        Op::Binary(_) => {
            same_float(name, args[0], args[1])?;
            if args[0].shape != args[1].shape {
                return Err(format!(
                    "`{name}` operands have different shapes {} and {}; broadcast one first",
                    args[0], args[1]
                ));
            }
            Ok(args[0].clone())
        }
        Op::Compare(_) => {
            if args[0] != args[1] {
                return Err(format!(
                    "`{name}` operands have different types {} and {}",
                    args[0], args[1]
                ));
            }
            Ok(TensorType::new(DType::Bool, args[0].shape.clone()))
        }
        Op::Select => {
            if args[0].dtype != DType::Bool {
                return Err(format!("`select` condition must be bool, not {}", args[0]));
            }
            if args[1] != args[2] {
                return Err(format!(
                    "`select` branches have different types {} and {}",
                    args[1], args[2]
                ));
            }
            if args[0].shape != args[1].shape {
                return Err(format!(
                    "`select` condition {} and branches {} have different shapes",
                    args[0], args[1]
                ));
            }
            Ok(args[1].clone())
        }
        Op::Convert { to } => Ok(TensorType::new(*to, args[0].shape.clone())),
        Op::Broadcast { shape } => {
            if !broadcast_compatible(&args[0].shape, shape) {
                return Err(format!("cannot broadcast {} to {:?}", args[0], shape));
            }
            Ok(TensorType::new(args[0].dtype, shape.clone()))
        }
        Op::Reshape { shape } => {
            if crate::types::checked_elements(shape) != Some(args[0].num_elements()) {
                return Err(format!(
                    "cannot reshape {} ({} elements) to {:?} ({} elements)",
                    args[0],
                    args[0].num_elements(),
                    shape,
                    num_elements(shape)
                ));
            }
            Ok(TensorType::new(args[0].dtype, shape.clone()))
        }
        Op::Transpose { perm } => {
            let rank = args[0].rank();
            let mut seen = vec![false; rank];
            if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
                return Err(format!("{perm:?} is not a permutation of the axes of {}", args[0]));
            }
            let shape = perm.iter().map(|&p| args[0].shape[p]).collect::<Vec<_>>();
            Ok(TensorType::new(args[0].dtype, shape))
        }
        Op::ReduceSum { axes } | Op::ReduceMax { axes } => {
            if !args[0].dtype.is_float() {
                return Err(format!("`{name}` needs a float operand, not {}", args[0]));
            }
            check_axes(name, axes, args[0].rank())?;
            let shape = (0..args[0].rank())
                .filter(|a| !axes.contains(a))
                .map(|a| args[0].shape[a])
                .collect::<Vec<_>>();
            Ok(TensorType::new(args[0].dtype, shape))
        }
        Op::MatMul => {
            let (a, b) = (args[0], args[1]);
            same_float(name, a, b)?;
            match (a.shape.as_slice(), b.shape.as_slice()) {
                ([m, k1], [k2, n]) if k1 == k2 => Ok(TensorType::new(a.dtype, vec![*m, *n])),
                ([b1, m, k1], [b2, k2, n]) if k1 == k2 && b1 == b2 => Ok(TensorType::new(a.dtype, vec![*b1, *m, *n])),
                _ => Err(format!(
                    "`matmul` needs [m,k] x [k,n] or [b,m,k] x [b,k,n], got {a} x {b}"
                )),
            }
        }
        Op::MatMulAcc { blocks } => {
            let (c, a, b) = (args[0], args[1], args[2]);
            same_float(name, a, b)?;
            same_float(name, c, a)?;
            match (c.shape.as_slice(), a.shape.as_slice(), b.shape.as_slice()) {
                ([m0, n0], [m, k1], [k2, n]) if k1 == k2 && m0 == m && n0 == n => {
                    // (An empty contraction has one run: a count of empty
                    // runs would only be a loop to nowhere.)
                    let fits = if *k1 == 0 {
                        *blocks == 1
                    } else {
                        *blocks >= 1 && k1 % blocks == 0
                    };
                    if !fits {
                        return Err(format!(
                            "`matmul_acc` needs `blocks` ≥ 1 dividing the contraction extent {k1} (1 if it is 0), got {blocks}"
                        ));
                    }
                    Ok(c.clone())
                }
                _ => Err(format!("`matmul_acc` needs [m,n], [m,k] x [k,n], got {c}, {a} x {b}")),
            }
        }
        Op::Slice { start, end } => {
            let t = args[0];
            if start.len() != t.rank() || end.len() != t.rank() {
                return Err(format!("`slice` of {t} needs {} starts and ends", t.rank()));
            }
            for (axis, ((&s, &e), &d)) in start.iter().zip(end).zip(&t.shape).enumerate() {
                if s > e || e > d {
                    return Err(format!(
                        "`slice` range {s}..{e} is out of bounds for axis {axis} of {t}"
                    ));
                }
            }
            let shape = start.iter().zip(end).map(|(s, e)| e - s).collect::<Vec<_>>();
            Ok(TensorType::new(t.dtype, shape))
        }
        Op::Pad { low, high } => {
            let t = args[0];
            if low.len() != t.rank() || high.len() != t.rank() {
                return Err(format!("`pad` of {t} needs {} low and high amounts", t.rank()));
            }
            // Checked: `low` and `high` come from the user, and a wrapped
            // sum would let a shape through that the buffers do not have.
            let shape = t
                .shape
                .iter()
                .zip(low.iter().zip(high))
                .enumerate()
                .map(|(axis, (d, (l, h)))| {
                    d.checked_add(*l)
                        .and_then(|s| s.checked_add(*h))
                        .ok_or_else(|| format!("`pad` of axis {axis} of {t} by {l} and {h} overflows the extent"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(TensorType::new(t.dtype, shape))
        }
        Op::Concat { axis } => {
            let first = args.first().ok_or("`concat` needs at least one operand")?;
            if *axis >= first.rank() {
                return Err(format!("`concat` axis {axis} is out of range for {first}"));
            }
            let mut shape = first.shape.clone();
            shape[*axis] = 0;
            for (i, t) in args.iter().enumerate() {
                let compatible = t.dtype == first.dtype
                    && t.rank() == first.rank()
                    && (0..t.rank()).all(|a| a == *axis || t.shape[a] == first.shape[a]);
                if !compatible {
                    return Err(format!(
                        "`concat` operand {i} ({t}) does not match operand 0 ({first}) off axis {axis}"
                    ));
                }
                shape[*axis] = shape[*axis]
                    .checked_add(t.shape[*axis])
                    .ok_or_else(|| format!("`concat` along axis {axis} overflows the extent at operand {i}"))?;
            }
            Ok(TensorType::new(first.dtype, shape))
        }
        Op::SoftmaxCrossEntropy => {
            let (z, t) = (args[0], args[1]);
            same_float(name, z, t)?;
            if z.shape != t.shape || z.rank() == 0 {
                return Err(format!(
                    "`softmax_cross_entropy` needs logits and targets of one shape [..., K], got {z} and {t}"
                ));
            }
            Ok(TensorType::scalar(z.dtype))
        }
        Op::Scan(scan) => {
            scan.check(args)?;
            scan.value_type()
                .ok_or_else(|| "`scan` results are larger than memory".to_string())
        }
        // The operand is a scan's result buffer; which result, and whether
        // `ty` is its type, `verify` checks with the operand's op in hand.
        Op::Get { ty, .. } => {
            if args[0].dtype != DType::Bool || args[0].rank() != 1 {
                return Err(format!(
                    "`get` reads the results of a `scan`, not a value of type {}",
                    args[0]
                ));
            }
            Ok(ty.clone())
        }
    }
}
