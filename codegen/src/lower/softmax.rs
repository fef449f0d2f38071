//! Softmax cross-entropy's fused, stable lowering (row maxima, row sums,
//! the mean loss).

use super::*;

/// Softmax cross-entropy of logits `z` and targets `t` of shape `[…, K]`:
/// row maxima `m`, row sums `s = Σ exp(z − m)`, then the mean over rows of
/// `Σₖ tₖ·(log s + m − zₖ)`, where a zero target contributes exactly 0.
pub(crate) fn lower_softmax_xent(
    lw: &mut Lowerer,
    fb: &mut FunctionBuilder,
    g: &Graph,
    id: NodeId,
    arg_locs: &[Loc],
) -> Result<Loc, CodegenError> {
    let args = g.args(id);
    let zt = g.ty(args[0]).clone();
    let dt = zt.dtype;
    let kdim = *zt.shape.last().unwrap_or(&1);
    let rows = zt.num_elements().checked_div(kdim).unwrap_or(0);
    // The kernels run over the operands' own shape [..., K] and read them
    // through their own strides (a transposed or sliced operand is not
    // contiguous); the row buffers are indexed by the leading axes.
    let shape = zt.shape.clone();
    let rank = shape.len();
    let mut row_strides: Vec<isize> = row_major_strides(&shape[..rank.saturating_sub(1)])
        .iter()
        .map(|&s| s as isize)
        .collect();
    row_strides.push(0);
    let nd = |l: &Loc| -> Loc {
        match l {
            Loc::Mem(v) => Loc::Mem(v.clone()),
            Loc::Reg(v) | Loc::Splat(v, _) => Loc::Splat(*v, shape.clone()),
        }
    };
    let z = nd(&arg_locs[0]);
    let t = nd(&arg_locs[1]);
    // Row maxima, row sums and the loss accumulator: in the scratch the
    // memory plan placed (`memory::softmax_xent_scratch`).
    let (m, s, r, loss) = match g.node(id).arena {
        Some(off) => {
            let ([m_at, s_at, r_at, loss_at], _) = wengert_passes::memory::softmax_xent_scratch(rows, dt);
            let mut at = |fb: &mut FunctionBuilder, at: usize, n: usize| View {
                ptr: lw.arena_at(fb, off + at),
                offset: 0,
                shape: vec![n],
                strides: vec![1],
                dtype: dt,
            };
            (
                at(fb, m_at, rows),
                at(fb, s_at, rows),
                at(fb, r_at, rows),
                at(fb, loss_at, 1),
            )
        }
        None => {
            lw.unplanned
                .get_or_insert_with(|| "softmax cross-entropy without its planned scratch".into());
            (
                lw.alloc(fb, &[rows], dt),
                lw.alloc(fb, &[rows], dt),
                lw.alloc(fb, &[rows], dt),
                lw.alloc(fb, &[1], dt),
            )
        }
    };
    let row_view = |v: &View| {
        Loc::Mem(View {
            shape: shape.clone(),
            strides: row_strides.clone(),
            ..v.clone()
        })
    };
    for (buf, init) in [(&m, f64::NEG_INFINITY), (&s, 0.0), (&r, 0.0), (&loss, 0.0)] {
        lw.fill(fb, buf, init)?;
    }
    // m = max over the row.
    let mut k = BoundKernel::new(&shape);
    let zi = lw.operand(&mut k, &z, dt);
    k.store(m.ptr, 0, row_strides.clone(), dt, zi, Combine::Max);
    lw.emit_kernel(fb, k)?;
    // s = Σ exp(z − m).
    let mut k = BoundKernel::new(&shape);
    let zi = lw.operand(&mut k, &z, dt);
    let mi = lw.operand(&mut k, &row_view(&m), dt);
    let d = k.expr(KExpr::Binary(BinaryOp::Sub, zi, mi), dt);
    let e = k.expr(KExpr::Unary(UnaryOp::Exp, d), dt);
    k.store(s.ptr, 0, row_strides.clone(), dt, e, Combine::Add);
    lw.emit_kernel(fb, k)?;
    // r = Σ select(t = 0, 0, t·(log s + m − z)) per row, then loss = Σ r:
    // the interpreter's association, so that f64 results agree bit for bit
    // (adding +0 where the interpreter skips a zero target changes no sum
    // that starts at +0).
    let mut k = BoundKernel::new(&shape);
    let zi = lw.operand(&mut k, &z, dt);
    let ti = lw.operand(&mut k, &t, dt);
    let mi = lw.operand(&mut k, &row_view(&m), dt);
    let si = lw.operand(&mut k, &row_view(&s), dt);
    let ls = k.expr(KExpr::Unary(UnaryOp::Log, si), dt);
    let lse = k.expr(KExpr::Binary(BinaryOp::Add, mi, ls), dt);
    let diff = k.expr(KExpr::Binary(BinaryOp::Sub, lse, zi), dt);
    let prod = k.expr(KExpr::Binary(BinaryOp::Mul, ti, diff), dt);
    let zero = k.expr(KExpr::Const(0.0), dt);
    let is0 = k.expr(KExpr::Cmp(CmpOp::Eq, ti, zero), DType::Bool);
    let v = k.expr(KExpr::Select(is0, zero, prod), dt);
    k.store(r.ptr, 0, row_strides.clone(), dt, v, Combine::Add);
    lw.emit_kernel(fb, k)?;
    let mut k = BoundKernel::new(&[rows]);
    let ri = lw.operand(&mut k, &Loc::Mem(r.clone()), dt);
    k.store(loss.ptr, 0, vec![0], dt, ri, Combine::Add);
    lw.emit_kernel(fb, k)?;
    let total = lw.load_at(fb, &loss, 0);
    let b = lw.scalar_const(fb, dt, rows.max(1) as f64);
    Ok(Loc::Reg(fb.ins().fdiv(total, b)))
}
