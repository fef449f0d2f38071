//! A fused kernel: an optional leading matmul, then one loop nest over the
//! elementwise members and reduction roots.

use super::*;

/// Makes a node's location in the current function (an input read for the
/// first time, a value carried from an earlier segment) or re-points an
/// arena buffer (see `lower_graph`).
pub(crate) type Materialize<'a> = dyn Fn(&mut Lowerer, &mut FunctionBuilder, &mut [Option<Loc>], NodeId) + 'a;

/// Lowers a fused kernel: an optional leading matmul (a GEMM call), then
/// one loop nest computing every elementwise member and reduction root,
/// storing only the members read outside the kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lower_fused(
    lw: &mut Lowerer,
    fb: &mut FunctionBuilder,
    g: &Graph,
    members: &[NodeId],
    locs: &mut [Option<Loc>],
    used_outside: &[bool],
    place: &dyn Fn(&mut Lowerer, &mut FunctionBuilder, NodeId) -> View,
    materialize: &Materialize,
) -> Result<(), CodegenError> {
    let mut rest = members;
    if let Some((&first, tail)) = members.split_first() {
        // A leading product: `matmul`, or `matmul_acc` (whose factors
        // follow its accumulator).
        let factors = if matches!(g.op(first), Op::MatMul) {
            Some(0)
        } else if matches!(g.op(first), Op::MatMulAcc { .. }) {
            Some(1)
        } else {
            None
        };
        if let Some(f) = factors {
            let args = g.args(first);
            for &a in &args {
                materialize(lw, fb, locs, a);
            }
            let loc = |i: usize| locs[args[i].index()].clone().expect("operands precede");
            let (a_ty, b_ty) = (g.ty(args[f]).clone(), g.ty(args[f + 1]).clone());
            let (a_loc, b_loc) = (loc(f), loc(f + 1));
            // Copying an operand would write memory a deferred product may
            // still read: call that one first.
            if !gemm::in_place(&a_loc) || !gemm::in_place(&b_loc) {
                lw.flush_gemm(fb)?;
            }
            let a = lw.materialize(fb, &a_loc, &a_ty.shape, a_ty.dtype, false)?;
            let b = lw.materialize(fb, &b_loc, &b_ty.shape, b_ty.dtype, false)?;
            // Its planned buffer (the memory plan gives a leading product
            // one even when only the kernel reads it).
            let out = place(lw, fb, first);
            if let Op::MatMulAcc { blocks } = g.op(first) {
                lw.ordered_product(fb, &loc(0), &a, &b, &out, *blocks)?;
            } else {
                lw.gemm(fb, &a, &b, &out)?;
            }
            locs[first.index()] = Some(Loc::Mem(out));
            rest = tail;
        }
    }
    if rest.is_empty() {
        return Ok(());
    }
    // The iteration shape: that of the elementwise members (a reduction's
    // input).
    let shape = rest
        .iter()
        .find(|&&m| !matches!(g.op(m), Op::ReduceSum { .. } | Op::ReduceMax { .. }))
        .map(|&m| g.ty(m).shape.clone())
        .unwrap_or_else(|| g.ty(g.args(rest[0])[0]).shape.clone());
    if wengert_ir::num_elements(&shape) == 1 {
        // A scalar kernel: straight-line register code, no loop, no memory.
        for &m in rest {
            let args = g.args(m);
            for &a in &args {
                materialize(lw, fb, locs, a);
            }
            let arg_locs: Vec<Loc> = args
                .iter()
                .map(|a| locs[a.index()].clone().expect("operands precede"))
                .collect();
            let vals: Vec<Value> = arg_locs.iter().map(|l| lw.scalar_of(fb, l)).collect();
            let arg_dtypes: Vec<DType> = args.iter().map(|&a| g.ty(a).dtype).collect();
            let ty = g.ty(m);
            let xs: Vec<usize> = (0..vals.len()).collect();
            let e = elementwise_expr(g.op(m), &xs).ok_or_else(|| CodegenError::Unsupported {
                node: g.value_name(m),
                message: format!("`{}` cannot be a member of a scalar kernel", g.op(m).name()),
            })?;
            let v = lw.eval(fb, e, ty.dtype, &arg_dtypes, &vals, mem_type(ty.dtype));
            locs[m.index()] = Some(Loc::Reg(v));
        }
        return Ok(());
    }
    let mut k = BoundKernel::new(&shape);
    let mut expr_of: HashMap<NodeId, usize> = HashMap::new();
    let mut outputs: Vec<(NodeId, View)> = Vec::new();
    for &m in rest {
        let args = g.args(m);
        let mut xs = Vec::with_capacity(args.len());
        for &a in &args {
            let e = match expr_of.get(&a) {
                Some(&e) => e,
                None => {
                    materialize(lw, fb, locs, a);
                    let loc = locs[a.index()].clone().expect("operands precede");
                    let e = lw.operand(&mut k, &loc, g.ty(a).dtype);
                    expr_of.insert(a, e);
                    e
                }
            };
            xs.push(e);
        }
        let ty = g.ty(m).clone();
        let e = match (g.op(m), elementwise_expr(g.op(m), &xs)) {
            (_, Some(e)) => Some(e),
            (Op::ReduceSum { axes } | Op::ReduceMax { axes }, None) => {
                let is_max = matches!(g.op(m), Op::ReduceMax { .. });
                let out = place(lw, fb, m);
                lw.reduce_into(fb, &mut k, xs[0], shape.len(), axes, &out, is_max)?;
                outputs.push((m, out));
                None
            }
            (op, None) => {
                return Err(CodegenError::Unsupported {
                    node: g.value_name(m),
                    message: format!("`{}` cannot be a member of a fused kernel", op.name()),
                })
            }
        };
        if let Some(e) = e {
            let id = k.expr(e, ty.dtype);
            expr_of.insert(m, id);
            if used_outside[m.index()] {
                let out = place(lw, fb, m);
                k.store(out.ptr, 0, out.strides.clone(), ty.dtype, id, Combine::Store);
                outputs.push((m, out));
            }
        }
    }
    lw.emit_kernel(fb, k)?;
    for (m, out) in outputs {
        // One-element members too stay in memory until read (see
        // `lower_graph`'s reductions).
        locs[m.index()] = Some(Loc::Mem(out));
    }
    Ok(())
}
