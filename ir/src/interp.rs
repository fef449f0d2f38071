//! The reference interpreter: the meaning of every op.
//!
//! It evaluates a graph on host tensors, computing f32 ops in f32 and f64
//! ops in f64, one op at a time in topological order. It is written for
//! clarity, not speed; generated code must agree with it (to rounding, where
//! generated code reassociates sums or uses polynomial approximations).
//!
//! Conventions at awkward points are defined here and documented on [`Op`]:
//! `relu` and `max`/`min` propagate NaN; `log(0) = -inf`; `pow` with an
//! integer exponent is exact repeated multiplication (binary powering) so
//! that generated code can reproduce it bit for bit.

use crate::error::IrError;
use crate::graph::Graph;
use crate::op::{BinaryOp, Op, UnaryOp};
use crate::scan::Scan;
use crate::tensor::{Element, Tensor};
use crate::types::{num_elements, row_major_strides, DType, TensorType};
use crate::verify::verify;
use num_traits::{Float, Zero};

/// Checks inputs against the graph's declared inputs: count, dtype, shape.
/// Errors name the input.
pub fn check_inputs(g: &Graph, inputs: &[Tensor]) -> Result<(), IrError> {
    if inputs.len() != g.inputs().len() {
        let names: Vec<&str> = g.inputs().iter().map(|i| i.name.as_str()).collect();
        return Err(IrError::Graph(format!(
            "graph @{} takes {} input(s) ({}), got {}",
            g.name,
            names.len(),
            names.join(", "),
            inputs.len()
        )));
    }
    for (decl, t) in g.inputs().iter().zip(inputs) {
        if t.dtype() != decl.ty.dtype {
            return Err(IrError::Input {
                name: decl.name.clone(),
                message: format!("expected dtype {}, got {}", decl.ty.dtype, t.dtype()),
            });
        }
        if t.shape() != decl.ty.shape.as_slice() {
            return Err(IrError::Input {
                name: decl.name.clone(),
                message: format!("expected shape {:?}, got {:?}", decl.ty.shape, t.shape()),
            });
        }
    }
    Ok(())
}

/// Evaluates `g` on `inputs` (in the order of `g.inputs()`); returns the
/// outputs in the order of `g.outputs()`.
pub fn interpret(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, IrError> {
    // Subnormals are kept or flushed as compiled code does.
    let _fp = crate::fpenv::scoped();
    verify(g)?;
    check_inputs(g, inputs)?;
    run(g, inputs)
}

/// Evaluates a verified graph on inputs of its declared types (a scan
/// runs its body through here once per step, verified once).
fn run(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, IrError> {
    let mut remaining = g.use_counts();
    for o in g.outputs() {
        remaining[o.node.index()] += 1;
    }
    let mut values: Vec<Option<Tensor>> = vec![None; g.len()];
    for id in g.node_ids() {
        let node = g.node(id);
        let args = g.args(id);
        let value = if let Op::Input { index } = &node.op {
            inputs[*index].try_clone()?
        } else {
            let arg_values: Vec<&Tensor> = args
                .iter()
                .map(|a| {
                    values[a.index()]
                        .as_ref()
                        .ok_or_else(|| internal(g, id, "operand freed too early"))
                })
                .collect::<Result<_, _>>()?;
            eval_node(g, id, &arg_values)?
        };
        values[id.index()] = Some(value);
        // Free operands whose last use this was.
        for a in args {
            remaining[a.index()] -= 1;
            if remaining[a.index()] == 0 {
                values[a.index()] = None;
            }
        }
    }
    g.outputs()
        .iter()
        .map(|o| {
            values[o.node.index()]
                .clone()
                .ok_or_else(|| internal(g, o.node, "output missing"))
        })
        .collect()
}

/// Evaluates node `id` (not an input) on its operands' values. A loop and
/// its `get`s are evaluated here, with the graph in hand (a `get` reads
/// its result's place in the loop's buffer); every other op by `eval_op`.
fn eval_node(g: &Graph, id: crate::graph::NodeId, args: &[&Tensor]) -> Result<Tensor, IrError> {
    let node = g.node(id);
    if let Op::Scan(scan) = &node.op {
        return run_scan(scan, args).map_err(|e| IrError::Node {
            node: g.value_name(id),
            message: format!("in the body of `scan`: {e}"),
        });
    }
    if let Op::Get { index, ty } = &node.op {
        let (Some(&scan_id), Some(buffer)) = (g.args(id).first(), args.first()) else {
            return Err(internal(g, id, "`get` without operand"));
        };
        let Op::Scan(scan) = g.op(scan_id) else {
            return Err(internal(g, id, "`get` of a value that is not a scan"));
        };
        let offsets = scan.layout().ok_or_else(|| internal(g, id, "scan layout overflows"))?.0;
        let at = offsets
            .get(*index)
            .copied()
            .ok_or_else(|| internal(g, id, "no such result"))?;
        let bytes = buffer
            .bytes()
            .get(at..at + ty.size_bytes())
            .ok_or_else(|| internal(g, id, "result outside the scan's buffer"))?;
        return Tensor::try_from_bytes(ty.clone(), bytes);
    }
    eval_op(&node.op, args, &node.ty).map_err(|message| IrError::Node {
        node: g.value_name(id),
        message,
    })
}

/// Runs a scan: the body once per step, carrying the carry, reading row
/// `t` of each `xs` and writing row `t` of each `ys` into the scan's buffer
/// of results (see [`crate::scan`]).
fn run_scan(scan: &Scan, args: &[&Tensor]) -> Result<Tensor, IrError> {
    if let Some(regen) = &scan.regen {
        // Recomputed states mean the same as stored ones: run the forward
        // loop recording its carries, then this loop over them.
        let f = &regen.forward;
        let own = args.len().saturating_sub(f.n_operands());
        let mut recording = (**f).clone();
        for k in 0..f.n_carry {
            let node = recording.body.inputs()[f.n_consts + k].node;
            let mut name = format!("state{k}");
            while recording.body.output(&name).is_some() {
                name.push('_');
            }
            recording.body.add_output(&name, node)?;
        }
        let buffer = run_scan(&recording, &args[own..])?;
        let (offsets, _) = recording
            .layout()
            .ok_or_else(|| IrError::Tensor("`scan` results are larger than memory".into()))?;
        let types = recording.result_types();
        let mut states = Vec::new();
        for k in 0..f.n_carry {
            let index = f.n_results() + k;
            let ty = types[index].clone();
            let at = offsets[index];
            states.push(Tensor::try_from_bytes(
                ty.clone(),
                &buffer.bytes()[at..at + ty.size_bytes()],
            )?);
        }
        let mut full: Vec<&Tensor> = Vec::with_capacity(scan.body.inputs().len());
        let mut next_state = states.iter();
        for operand in scan.operand_of_input() {
            match operand {
                Some(i) => full.push(args[i]),
                None => full.push(
                    next_state
                        .next()
                        .ok_or_else(|| IrError::Tensor("missing state".into()))?,
                ),
            }
        }
        let plain = Scan {
            regen: None,
            ..scan.clone()
        };
        return run_scan(&plain, &full);
    }
    let body = &scan.body;
    let (nc, nk) = (scan.n_consts, scan.n_carry);
    let (offsets, total) = scan
        .layout()
        .ok_or_else(|| IrError::Tensor("`scan` results are larger than memory".into()))?;
    let mut out = Tensor::try_zeros(TensorType::new(DType::Bool, vec![total]))?;
    let mut inputs: Vec<Tensor> = Vec::with_capacity(args.len());
    for a in args.iter().take(nc + nk) {
        inputs.push(a.try_clone()?);
    }
    // Placeholders for this step's rows, replaced each step.
    for input in &body.inputs()[nc + nk..] {
        inputs.push(Tensor::try_zeros(input.ty.clone())?);
    }
    for step in 0..scan.length {
        let t = if scan.reverse { scan.length - 1 - step } else { step };
        for (k, input) in body.inputs().iter().enumerate().skip(nc + nk) {
            let row = input.ty.size_bytes();
            let bytes = args[k]
                .bytes()
                .get(t * row..(t + 1) * row)
                .ok_or_else(|| IrError::Tensor(format!("stacked operand {k} has no row {t}")))?;
            inputs[k] = Tensor::try_from_bytes(input.ty.clone(), bytes)?;
        }
        let results = run(body, &inputs)?;
        let mut results = results.into_iter();
        for k in 0..nk {
            if let Some(next) = results.next() {
                inputs[nc + k] = next;
            }
        }
        for (j, y) in results.enumerate() {
            let row = y.bytes().len();
            let at = offsets[nk + j] + t * row;
            out.bytes_mut()[at..at + row].copy_from_slice(y.bytes());
        }
    }
    for k in 0..nk {
        let carry = inputs[nc + k].bytes();
        out.bytes_mut()[offsets[k]..offsets[k] + carry.len()].copy_from_slice(carry);
    }
    Ok(out)
}

/// Evaluates `g` with inputs given by name; returns `(output name, value)`.
pub fn interpret_named(g: &Graph, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>, IrError> {
    for (name, _) in inputs {
        if g.input(name).is_none() {
            return Err(IrError::Input {
                name: name.to_string(),
                message: format!("graph @{} has no such input", g.name),
            });
        }
    }
    let mut ordered = Vec::with_capacity(g.inputs().len());
    for decl in g.inputs() {
        let mut given = inputs.iter().filter(|(n, _)| *n == decl.name);
        match (given.next(), given.next()) {
            (Some((_, t)), None) => ordered.push(t.clone()),
            (None, _) => {
                return Err(IrError::Input {
                    name: decl.name.clone(),
                    message: format!("missing (expected {})", decl.ty),
                })
            }
            (Some(_), Some(_)) => {
                return Err(IrError::Input {
                    name: decl.name.clone(),
                    message: "given more than once".into(),
                })
            }
        }
    }
    let outs = interpret(g, &ordered)?;
    Ok(g.outputs().iter().map(|o| o.name.clone()).zip(outs).collect())
}

fn internal(g: &Graph, id: crate::graph::NodeId, msg: &str) -> IrError {
    IrError::Node {
        node: g.value_name(id),
        message: format!("internal interpreter error: {msg}"),
    }
}

/// `x^n` for an integer `n` by binary powering, in a fixed order of
/// multiplications that generated code reproduces exactly.
pub fn powi_exact<T: Float>(x: T, n: i64) -> T {
    let mut base = x;
    let mut e = n.unsigned_abs();
    let mut acc = T::one();
    let mut first = true;
    while e > 0 {
        if e & 1 == 1 {
            acc = if first { base } else { acc * base };
            first = false;
        }
        e >>= 1;
        if e > 0 {
            base = base * base;
        }
    }
    if n < 0 {
        T::one() / acc
    } else {
        acc
    }
}

/// Whether a `pow` exponent is treated as an integer (exact powering).
pub fn integer_exponent(p: f64) -> Option<i64> {
    (p.fract() == 0.0 && p.abs() <= 64.0).then_some(p as i64)
}

/// The scalar semantics of a unary op.
pub fn unary_scalar<T: Float>(op: UnaryOp, x: T) -> T {
    // Library functions see a flushed operand as compiled code does
    // (`crate::fpenv::flushed`; a no-op unless subnormals are flushed).
    // The others are single instructions that follow the hardware mode
    // like compiled code's (negation and `abs` are bit operations, which
    // no mode flushes).
    let lib = crate::fpenv::flushed(x);
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => lib.exp(),
        UnaryOp::Log => lib.ln(),
        UnaryOp::Sin => lib.sin(),
        UnaryOp::Cos => lib.cos(),
        // f64: the project's own definition (`crate::math`), which
        // compiled code calls too; f32: the platform's `tanhf` (compiled
        // code inlines a form within 2 ulp of it).
        UnaryOp::Tanh => {
            if std::mem::size_of::<T>() == 8 {
                via_f64(lib, crate::math::tanh_f64)
            } else {
                lib.tanh()
            }
        }
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Relu => {
            if x > T::zero() || x.is_nan() {
                x
            } else {
                T::zero()
            }
        }
        // Computed in f64 and rounded once, for f32 too: generated code
        // calls the same functions, so the two agree bit for bit.
        UnaryOp::Erf => via_f64(lib, libm::erf),
        UnaryOp::Expm1 => via_f64(lib, f64::exp_m1),
        UnaryOp::Log1p => via_f64(lib, f64::ln_1p),
    }
}

/// `f` applied to `x` in f64, rounded to `T`.
fn via_f64<T: Float>(x: T, f: fn(f64) -> f64) -> T {
    x.to_f64().map(f).and_then(T::from).unwrap_or_else(T::nan)
}

/// The scalar semantics of a binary op.
pub fn binary_scalar<T: Float>(op: BinaryOp, a: T, b: T) -> T {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => {
            if a.is_nan() || b.is_nan() {
                T::nan()
            } else if a >= b {
                a
            } else {
                b
            }
        }
        BinaryOp::Min => {
            if a.is_nan() || b.is_nan() {
                T::nan()
            } else if a <= b {
                a
            } else {
                b
            }
        }
    }
}

/// The scalar semantics of `pow` with a constant exponent.
pub fn pow_scalar<T: Float>(x: T, p: f64) -> T {
    match integer_exponent(p) {
        Some(n) => powi_exact(x, n),
        None if p == 0.5 => x.sqrt(),
        // A library function: it sees a flushed operand (see above).
        None => crate::fpenv::flushed(x).powf(T::from(p).unwrap_or_else(T::nan)),
    }
}

/// Calls `f(out_index, in_offset)` for every element of a strided view of
/// `shape` (row-major over `shape`), without recursion.
fn for_each_offset(shape: &[usize], strides: &[isize], base: usize, mut f: impl FnMut(usize, usize)) {
    let n = num_elements(shape);
    if n == 0 {
        return;
    }
    let rank = shape.len();
    let mut idx = vec![0usize; rank];
    let mut off = base as isize;
    for out in 0..n {
        f(out, off as usize);
        let mut axis = rank;
        while axis > 0 {
            axis -= 1;
            idx[axis] += 1;
            off += strides[axis];
            if idx[axis] < shape[axis] {
                break;
            }
            off -= strides[axis] * shape[axis] as isize;
            idx[axis] = 0;
        }
    }
}

/// Gathers a strided view into a new row-major tensor.
fn gather<T: Element>(x: &[T], ty: &TensorType, strides: &[isize], base: usize) -> Result<Tensor, String> {
    let mut out = alloc(ty)?;
    {
        let o = out.data_mut::<T>();
        for_each_offset(&ty.shape, strides, base, |i, off| o[i] = x[off]);
    }
    Ok(out)
}

/// A zero tensor of type `ty`, or an error naming the bytes asked for:
/// shapes come from users, and a failed allocation must not abort.
fn alloc(ty: &TensorType) -> Result<Tensor, String> {
    Tensor::try_zeros(ty.clone()).map_err(|e| e.to_string())
}

fn signed(v: &[usize]) -> Vec<isize> {
    v.iter().map(|&s| s as isize).collect()
}

macro_rules! any_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            DType::Bool => {
                type $T = u8;
                $body
            }
        }
    };
}

macro_rules! float_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            DType::Bool => return Err("a float op was given a bool operand".to_string()),
        }
    };
}

fn map_float<T: Element + Float>(x: &Tensor, ty: &TensorType, f: impl Fn(T) -> T) -> Result<Tensor, String> {
    let mut out = alloc(ty)?;
    for (o, &v) in out.data_mut::<T>().iter_mut().zip(x.data::<T>()) {
        *o = f(v);
    }
    Ok(out)
}

fn softmax_cross_entropy<T: Element + Float>(z: &[T], t: &[T], k: usize) -> T {
    let rows = z.len().checked_div(k).unwrap_or(0);
    let mut total = T::zero();
    for r in 0..rows {
        let zr = &z[r * k..(r + 1) * k];
        let tr = &t[r * k..(r + 1) * k];
        let m = zr
            .iter()
            .fold(T::neg_infinity(), |m, &v| if v > m || v.is_nan() { v } else { m });
        let s = zr.iter().fold(T::zero(), |s, &v| s + (v - m).exp());
        let lse = m + s.ln();
        // A zero target contributes exactly zero, even where the logit is
        // -inf and `lse - z` is +inf.
        let row = zr.iter().zip(tr).fold(
            T::zero(),
            |acc, (&zv, &tv)| if tv == T::zero() { acc } else { acc + tv * (lse - zv) },
        );
        total = total + row;
    }
    total / T::from(rows.max(1)).unwrap_or_else(T::one)
}

/// Evaluates one op on its operand values; `ty` is the node's type. The
/// operands' types are checked against the op's shape rule first.
pub fn eval_op(op: &Op, args: &[&Tensor], ty: &TensorType) -> Result<Tensor, String> {
    // Constant folding calls this at compile time: it must compute what
    // the compiled code would (`crate::fpenv`).
    let _fp = crate::fpenv::scoped();
    if !matches!(op, Op::Input { .. }) {
        let tys: Vec<&TensorType> = args.iter().map(|t| t.ty()).collect();
        let inferred = crate::infer::infer(op, &tys)?;
        if inferred != *ty {
            return Err(format!("`{}` computes {inferred}, not {ty}", op.name()));
        }
    }
    Ok(match op {
        Op::Input { .. } => return Err("inputs are not evaluated by eval_op".into()),
        Op::Const { value } => value.try_clone().map_err(|e| e.to_string())?,
        Op::Unary(u) => float_dtype!(ty.dtype, T => map_float::<T>(args[0], ty, |x| unary_scalar(*u, x))?),
        Op::Pow { exponent } => float_dtype!(ty.dtype, T => map_float::<T>(args[0], ty, |x| pow_scalar(x, *exponent))?),
        Op::Binary(b) => float_dtype!(ty.dtype, T => {
            let mut out = alloc(ty)?;
            let (x, y) = (args[0].data::<T>(), args[1].data::<T>());
            for ((o, &a), &c) in out.data_mut::<T>().iter_mut().zip(x).zip(y) {
                *o = binary_scalar(*b, a, c);
            }
            out
        }),
        Op::Compare(c) => any_dtype!(args[0].dtype(), T => {
            let mut out = alloc(ty)?;
            let (x, y) = (args[0].data::<T>(), args[1].data::<T>());
            for ((o, &a), &b) in out.data_mut::<u8>().iter_mut().zip(x).zip(y) {
                *o = c.apply(a, b) as u8;
            }
            out
        }),
        Op::Select => any_dtype!(ty.dtype, T => {
            let mut out = alloc(ty)?;
            let (c, a, b) = (args[0].data::<u8>(), args[1].data::<T>(), args[2].data::<T>());
            for (i, o) in out.data_mut::<T>().iter_mut().enumerate() {
                *o = if c[i] != 0 { a[i] } else { b[i] };
            }
            out
        }),
        Op::Convert { to } => args[0].try_convert(*to).map_err(|e| e.to_string())?,
        Op::Broadcast { shape } => {
            let x = args[0];
            let in_strides = row_major_strides(x.shape());
            let lead = shape.len() - x.shape().len();
            let strides: Vec<isize> = (0..shape.len())
                .map(|a| {
                    if a < lead || x.shape()[a - lead] == 1 {
                        0
                    } else {
                        in_strides[a - lead] as isize
                    }
                })
                .collect();
            any_dtype!(ty.dtype, T => gather(x.data::<T>(), ty, &strides, 0)?)
        }
        Op::Reshape { shape } => args[0]
            .try_clone()
            .and_then(|t| t.reshaped(shape.clone()))
            .map_err(|e| e.to_string())?,
        Op::Transpose { perm } => {
            let x = args[0];
            let in_strides = row_major_strides(x.shape());
            let strides: Vec<isize> = perm.iter().map(|&p| in_strides[p] as isize).collect();
            any_dtype!(ty.dtype, T => gather(x.data::<T>(), ty, &strides, 0)?)
        }
        Op::ReduceSum { axes } | Op::ReduceMax { axes } => {
            let x = args[0];
            // Walk the input in row-major order; the output offset of each
            // element drops the reduced axes (stride 0).
            let out_strides = row_major_strides(&ty.shape);
            let mut k = 0;
            let strides: Vec<isize> = (0..x.shape().len())
                .map(|a| {
                    if axes.contains(&a) {
                        0
                    } else {
                        k += 1;
                        out_strides[k - 1] as isize
                    }
                })
                .collect();
            let is_max = matches!(op, Op::ReduceMax { .. });
            float_dtype!(ty.dtype, T => {
                let init = if is_max { T::neg_infinity() } else { T::zero() };
                let mut out = alloc(ty)?;
                out.data_mut::<T>().fill(init);
                let xs = x.data::<T>();
                let o = out.data_mut::<T>();
                for_each_offset(x.shape(), &strides, 0, |i, off| {
                    let v = xs[i];
                    o[off] = if is_max {
                        if o[off].is_nan() || v.is_nan() {
                            T::nan()
                        } else if v > o[off] {
                            v
                        } else {
                            o[off]
                        }
                    } else {
                        o[off] + v
                    };
                });
                out
            })
        }
        Op::MatMul => float_dtype!(ty.dtype, T => {
            let (a, b) = (args[0], args[1]);
            let (batch, m, k, n) = match (a.shape(), b.shape()) {
                ([m, k], [_, n]) => (1, *m, *k, *n),
                ([bt, m, k], [_, _, n]) => (*bt, *m, *k, *n),
                _ => return Err("matmul operands of unexpected rank".into()),
            };
            let mut out = alloc(ty)?;
            let (x, y) = (a.data::<T>(), b.data::<T>());
            let o = out.data_mut::<T>();
            for bi in 0..batch {
                for i in 0..m {
                    for p in 0..k {
                        let av = x[bi * m * k + i * k + p];
                        for j in 0..n {
                            let idx = bi * m * n + i * n + j;
                            o[idx] += av * y[bi * k * n + p * n + j];
                        }
                    }
                }
            }
            out
        }),
        Op::MatMulAcc { blocks } => float_dtype!(ty.dtype, T => {
            let (c, a, b) = (args[0], args[1], args[2]);
            let (m, kk, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
            let run = kk / (*blocks).max(1);
            let mut out = c.clone();
            let (x, y) = (a.data::<T>(), b.data::<T>());
            let o = out.data_mut::<T>();
            for i in 0..m {
                for j in 0..n {
                    let mut acc = o[i * n + j];
                    for blk in (0..*blocks).rev() {
                        for p in blk * run..(blk + 1) * run {
                            acc = x[i * kk + p].mul_add(y[p * n + j], acc);
                        }
                    }
                    o[i * n + j] = acc;
                }
            }
            out
        }),
        Op::Slice { start, .. } => {
            let x = args[0];
            let in_strides = row_major_strides(x.shape());
            let base: usize = start.iter().zip(&in_strides).map(|(s, st)| s * st).sum();
            any_dtype!(ty.dtype, T => gather(x.data::<T>(), ty, &signed(&in_strides), base)?)
        }
        Op::Pad { low, .. } => {
            let x = args[0];
            let out_strides = row_major_strides(&ty.shape);
            let base: usize = low.iter().zip(&out_strides).map(|(l, st)| l * st).sum();
            any_dtype!(ty.dtype, T => {
                let mut out = alloc(ty)?;
                let (xs, o) = (x.data::<T>(), out.data_mut::<T>());
                for_each_offset(x.shape(), &signed(&out_strides), base, |i, off| o[off] = xs[i]);
                out
            })
        }
        Op::Concat { axis } => {
            let out_strides = row_major_strides(&ty.shape);
            any_dtype!(ty.dtype, T => {
                let mut out = alloc(ty)?;
                let mut at = 0;
                for x in args {
                    let (xs, o) = (x.data::<T>(), out.data_mut::<T>());
                    for_each_offset(x.shape(), &signed(&out_strides), at * out_strides[*axis], |i, off| o[off] = xs[i]);
                    at += x.shape()[*axis];
                }
                out
            })
        }
        Op::SoftmaxCrossEntropy => float_dtype!(ty.dtype, T => {
            let k = *args[0].shape().last().unwrap_or(&1);
            let mut out = alloc(ty)?;
            out.data_mut::<T>()[0] = softmax_cross_entropy(args[0].data::<T>(), args[1].data::<T>(), k);
            out
        }),
        Op::Scan(scan) => run_scan(scan, args).map_err(|e| e.to_string())?,
        // A result's place in the buffer is the scan's to say; `interpret`
        // reads it with the scan in hand.
        Op::Get { .. } => return Err("`get` is evaluated with its scan, by `interpret`".into()),
    })
}
