//! The builder: write a graph the way the maths reads.
//!
//! ```
//! use wengert_ir::{DType, GraphBuilder};
//! let b = GraphBuilder::new("case3");
//! let x1 = b.input("x1", DType::F64, &[]);
//! let x2 = b.input("x2", DType::F64, &[]);
//! let y = x1 * x2 + x1.sin();
//! let g = b.build(&[("y", y)]).unwrap();
//! assert_eq!(g.len(), 5);
//! ```
//!
//! [`Var`] is a light `Copy` handle, so `x * x + 1.0` needs no `&` (though
//! `&x1 * &x2` works too). Binary operators broadcast numpy-style by
//! inserting explicit `broadcast` nodes; scalar literals become constants of
//! the other operand's dtype.
//!
//! **Errors.** Builder methods never panic and do not return `Result`: the
//! builder records the *first* error, with the user's source line (every
//! method is `#[track_caller]`), and [`GraphBuilder::build`] returns it. Handles
//! made after an error are poisoned and make no further nodes, so one
//! mistake gives one message: `src/main.rs:12:13: cannot broadcast f32[3]
//! and f32[4]`. This keeps expressions free of `?` at every operator.

use crate::error::IrError;
use crate::graph::{Graph, NodeId};
use crate::op::{BinaryOp, CmpOp, Op, UnaryOp};
use crate::tensor::Tensor;
use crate::types::{num_elements, DType, TensorType};
use crate::verify::verify;
use std::cell::RefCell;
use std::panic::Location;

struct State {
    graph: Option<Graph>,
    error: Option<IrError>,
    /// Whether this builder builds a loop's body (for the message when a
    /// value from outside is used in it).
    is_body: bool,
}

/// How a loop runs (see [`GraphBuilder::scan_opts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopOptions {
    /// Run the steps from last to first.
    pub reverse: bool,
    /// Steps per iteration of the compiled loop (JAX's `unroll`): the
    /// body's code repeated; results are the same.
    pub unroll: usize,
}

impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions {
            reverse: false,
            unroll: 1,
        }
    }
}

/// Builds a [`Graph`] through [`Var`] handles.
pub struct GraphBuilder {
    state: RefCell<State>,
}

/// A handle to a value being built. Cheap to copy.
#[derive(Clone, Copy)]
pub struct Var<'b> {
    b: &'b GraphBuilder,
    /// `None` once an error was recorded.
    id: Option<NodeId>,
}

impl std::fmt::Debug for Var<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.id, self.ty()) {
            (Some(id), Some(ty)) => write!(f, "Var(#{} : {ty})", id.index()),
            _ => f.write_str("Var(<error>)"),
        }
    }
}

/// The numpy broadcast of two shapes, if they are compatible.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

impl GraphBuilder {
    /// A builder for a graph named `name` (printed as `@name`).
    pub fn new(name: &str) -> GraphBuilder {
        GraphBuilder {
            state: RefCell::new(State {
                graph: Some(Graph::new(name)),
                error: None,
                is_body: false,
            }),
        }
    }

    #[track_caller]
    fn fail(&self, message: impl Into<String>) -> Var<'_> {
        let mut st = self.state.borrow_mut();
        if st.error.is_none() {
            let loc = Location::caller();
            st.error = Some(IrError::Build {
                location: format!("{}:{}:{}", loc.file(), loc.line(), loc.column()),
                message: message.into(),
            });
        }
        Var { b: self, id: None }
    }

    fn var(&self, id: NodeId) -> Var<'_> {
        Var { b: self, id: Some(id) }
    }

    fn poisoned(&self) -> Var<'_> {
        Var { b: self, id: None }
    }

    /// Adds a node, recording the error at the caller on failure.
    #[track_caller]
    fn node(&self, op: Op, args: &[Var<'_>]) -> Var<'_> {
        let mut ids = Vec::with_capacity(args.len());
        for a in args {
            if !std::ptr::eq(a.b, self) {
                if self.state.borrow().is_body {
                    return self
                        .fail("a value from outside this loop body was used here; pass it to `scan` among its consts");
                }
                return self.fail("a value from another builder was used here");
            }
            match a.id {
                Some(id) => ids.push(id),
                None => return self.poisoned(),
            }
        }
        let name = op.name();
        let result = {
            let mut st = self.state.borrow_mut();
            match st.graph.as_mut() {
                Some(g) => g.add(op, &ids).map_err(|e| match e {
                    IrError::Node { message, .. } => message,
                    other => other.to_string(),
                }),
                None => Err("the builder was already built".to_string()),
            }
        };
        match result {
            Ok(id) => self.var(id),
            Err(message) => self.fail(format!("{name}: {message}")),
        }
    }

    fn ty_of(&self, id: NodeId) -> Option<TensorType> {
        self.state.borrow().graph.as_ref().map(|g| g.ty(id).clone())
    }

    #[track_caller]
    fn add_input(&self, name: &str, dtype: DType, shape: &[usize], differentiable: bool) -> Var<'_> {
        let result = {
            let mut st = self.state.borrow_mut();
            match st.graph.as_mut() {
                Some(g) => g.add_input(name, TensorType::new(dtype, shape.to_vec()), differentiable),
                None => Err(IrError::Graph("the builder was already built".into())),
            }
        };
        match result {
            Ok(id) => self.var(id),
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// A differentiable input (a parameter, or `x`).
    #[track_caller]
    pub fn input(&self, name: &str, dtype: DType, shape: &[usize]) -> Var<'_> {
        self.add_input(name, dtype, shape, true)
    }

    /// A non-differentiable input (data, such as one-hot targets).
    #[track_caller]
    pub fn data(&self, name: &str, dtype: DType, shape: &[usize]) -> Var<'_> {
        self.add_input(name, dtype, shape, false)
    }

    /// A constant tensor.
    #[track_caller]
    pub fn constant(&self, value: Tensor) -> Var<'_> {
        self.node(Op::Const { value }, &[])
    }

    /// A scalar constant of the given dtype.
    #[track_caller]
    pub fn scalar(&self, dtype: DType, v: f64) -> Var<'_> {
        self.constant(Tensor::scalar(dtype, v))
    }

    /// `select(cond, a, b)`: `a` where `cond` is true, else `b`; the three
    /// broadcast to a common shape.
    #[track_caller]
    pub fn select(&self, cond: Var<'_>, a: Var<'_>, b: Var<'_>) -> Var<'_> {
        let (Some(ct), Some(at), Some(bt)) = (cond.ty(), a.ty(), b.ty()) else {
            return self.poisoned();
        };
        let Some(shape) = broadcast_shapes(&ct.shape, &at.shape).and_then(|s| broadcast_shapes(&s, &bt.shape)) else {
            return self.fail(format!("select: shapes {ct}, {at} and {bt} do not broadcast"));
        };
        let (c, a, b) = (
            cond.broadcast_to(&shape),
            a.broadcast_to(&shape),
            b.broadcast_to(&shape),
        );
        self.node(Op::Select, &[c, a, b])
    }

    /// Joins values along `axis`.
    #[track_caller]
    pub fn concat(&self, values: &[Var<'_>], axis: usize) -> Var<'_> {
        self.node(Op::Concat { axis }, values)
    }

    /// A loop: `(carry_final, ys) = scan(length, consts, init, xs, body)`
    /// runs `body(consts, carry, x_t) -> (carry', y_t)` for `t` in
    /// `0..length`, where `x_t` is row `t` of each of `xs` (each
    /// `[length, …]`), starting from `init`; it returns the last carry and
    /// each `y` stacked into `[length, …]`. The body is built with its own
    /// builder (the closure's first argument) from the handles it is given;
    /// using a value of the enclosing graph in it is an error naming the
    /// line (pass such values among `consts`, as loop invariants).
    ///
    /// ```
    /// use wengert_ir::{DType, GraphBuilder};
    /// let b = GraphBuilder::new("rnn");
    /// let a = b.input("a", DType::F64, &[]);
    /// let h0 = b.input("h0", DType::F64, &[]);
    /// let xs = b.input("xs", DType::F64, &[5]);
    /// let (h, ys) = b.scan(5, &[a], &[h0], &[xs], |_, c, h, x| {
    ///     let next = (c[0] * h[0] + x[0]).tanh();
    ///     (vec![next], vec![next])
    /// });
    /// let g = b.build(&[("h", h[0]), ("ys", ys[0])]).unwrap();
    /// assert_eq!(g.ty(g.outputs()[1].node).shape, vec![5]);
    /// ```
    ///
    /// The body's handles live only as long as the body, so a value of the
    /// enclosing graph used in it is a compile-time error, not a silently
    /// captured constant (pass it among `consts`):
    ///
    /// ```compile_fail
    /// use wengert_ir::{DType, GraphBuilder};
    /// let b = GraphBuilder::new("captured");
    /// let w = b.input("w", DType::F64, &[]);
    /// let h0 = b.input("h0", DType::F64, &[]);
    /// let h = b.fori_loop(3, &[], &[h0], |_, _, h| vec![h[0] * w]);
    /// ```
    #[track_caller]
    pub fn scan<'s, F>(
        &'s self,
        length: usize,
        consts: &[Var<'s>],
        init: &[Var<'s>],
        xs: &[Var<'s>],
        body: F,
    ) -> (Vec<Var<'s>>, Vec<Var<'s>>)
    where
        F: for<'c> FnOnce(&'c GraphBuilder, &[Var<'c>], &[Var<'c>], &[Var<'c>]) -> (Vec<Var<'c>>, Vec<Var<'c>>),
    {
        self.scan_with(length, false, consts, init, xs, body)
    }

    /// [`GraphBuilder::scan`] with the steps run from `length − 1` down to 0
    /// (`reverse = true`; row `t` of `xs` and `ys` still belongs to step `t`).
    #[track_caller]
    pub fn scan_with<'s, F>(
        &'s self,
        length: usize,
        reverse: bool,
        consts: &[Var<'s>],
        init: &[Var<'s>],
        xs: &[Var<'s>],
        body: F,
    ) -> (Vec<Var<'s>>, Vec<Var<'s>>)
    where
        F: for<'c> FnOnce(&'c GraphBuilder, &[Var<'c>], &[Var<'c>], &[Var<'c>]) -> (Vec<Var<'c>>, Vec<Var<'c>>),
    {
        self.scan_opts(length, LoopOptions { reverse, unroll: 1 }, consts, init, xs, body)
    }

    /// [`GraphBuilder::scan`] with every option (see [`LoopOptions`]).
    #[track_caller]
    pub fn scan_opts<'s, F>(
        &'s self,
        length: usize,
        options: LoopOptions,
        consts: &[Var<'s>],
        init: &[Var<'s>],
        xs: &[Var<'s>],
        body: F,
    ) -> (Vec<Var<'s>>, Vec<Var<'s>>)
    where
        F: for<'c> FnOnce(&'c GraphBuilder, &[Var<'c>], &[Var<'c>], &[Var<'c>]) -> (Vec<Var<'c>>, Vec<Var<'c>>),
    {
        let LoopOptions { reverse, unroll } = options;
        let poisoned = |n_carry: usize| (vec![self.poisoned(); n_carry], Vec::new());
        let mut types = Vec::new();
        for (role, vars) in [("const", consts), ("initial carry", init), ("xs", xs)] {
            for (k, v) in vars.iter().enumerate() {
                if !std::ptr::eq(v.b, self) {
                    self.fail(format!("scan: {role} {k} comes from another builder"));
                    return poisoned(init.len());
                }
                let Some(ty) = v.ty() else {
                    return poisoned(init.len());
                };
                types.push((role, k, ty));
            }
        }
        let inner = GraphBuilder::new("body");
        inner.state.borrow_mut().is_body = true;
        let mut body_args: [Vec<Var<'_>>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for (role, k, ty) in &types {
            let (slot, name, ty) = match *role {
                "const" => (0, format!("c{k}"), ty.clone()),
                "initial carry" => (1, format!("carry{k}"), ty.clone()),
                _ => {
                    if ty.shape.first() != Some(&length) {
                        self.fail(format!(
                            "scan: xs {k} is {ty}, but a stacked input needs a leading axis of length {length}"
                        ));
                        return poisoned(init.len());
                    }
                    (2, format!("x{k}"), TensorType::new(ty.dtype, ty.shape[1..].to_vec()))
                }
            };
            body_args[slot].push(inner.input(&name, ty.dtype, &ty.shape));
        }
        let (next, ys) = body(&inner, &body_args[0], &body_args[1], &body_args[2]);
        if next.len() != init.len() {
            self.fail(format!(
                "scan: the body returns {} carries for an initial carry of {}",
                next.len(),
                init.len()
            ));
            return poisoned(init.len());
        }
        let outputs: Vec<(String, Var<'_>)> = next
            .iter()
            .enumerate()
            .map(|(k, v)| (format!("next{k}"), *v))
            .chain(ys.iter().enumerate().map(|(k, v)| (format!("y{k}"), *v)))
            .collect();
        let named: Vec<(&str, Var<'_>)> = outputs.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        let graph = match inner.build(&named) {
            Ok(g) => g,
            Err(e) => {
                // The body's first error carries the user's line already.
                let mut st = self.state.borrow_mut();
                if st.error.is_none() {
                    st.error = Some(e);
                }
                return poisoned(init.len());
            }
        };
        let scan = crate::scan::Scan {
            body: graph,
            length,
            reverse,
            unroll: unroll.max(1),
            n_consts: consts.len(),
            n_carry: init.len(),
            regen: None,
        };
        let results = scan.result_types();
        let operands: Vec<Var<'s>> = consts.iter().chain(init).chain(xs).copied().collect();
        let node = self.node(Op::Scan(std::sync::Arc::new(scan)), &operands);
        let mut gets: Vec<Var<'s>> = results
            .into_iter()
            .enumerate()
            .map(|(index, ty)| self.node(Op::Get { index, ty }, &[node]))
            .collect();
        let ys = gets.split_off(init.len());
        (gets, ys)
    }

    /// A loop without stacked inputs or outputs: `n` times
    /// `carry = body(consts, carry)`, starting from `init`; returns the
    /// last carry (like `jax.lax.fori_loop` with static bounds).
    #[track_caller]
    pub fn fori_loop<'s, F>(&'s self, n: usize, consts: &[Var<'s>], init: &[Var<'s>], body: F) -> Vec<Var<'s>>
    where
        F: for<'c> FnOnce(&'c GraphBuilder, &[Var<'c>], &[Var<'c>]) -> Vec<Var<'c>>,
    {
        self.scan(n, consts, init, &[], |s, c, h, _| (body(s, c, h), Vec::new()))
            .0
    }

    /// The first error recorded, if any.
    pub fn error(&self) -> Option<IrError> {
        self.state.borrow().error.clone()
    }

    /// Finishes the graph with the given named outputs, verifies it and
    /// returns it, or returns the first error recorded while building.
    #[track_caller]
    pub fn build(&self, outputs: &[(&str, Var<'_>)]) -> Result<Graph, IrError> {
        for (_, v) in outputs {
            if !std::ptr::eq(v.b, self) {
                self.fail("an output comes from another builder");
            }
        }
        let mut st = self.state.borrow_mut();
        if let Some(e) = st.error.clone() {
            return Err(e);
        }
        let mut g = st
            .graph
            .take()
            .ok_or_else(|| IrError::Graph("the builder was already built".into()))?;
        for (name, v) in outputs {
            let id = v.id.ok_or_else(|| IrError::Graph("an output has no value".into()))?;
            g.add_output(name, id)?;
        }
        verify(&g)?;
        Ok(g)
    }
}

impl<'b> Var<'b> {
    /// The type of the value (`None` after an error).
    pub fn ty(&self) -> Option<TensorType> {
        self.id.and_then(|id| self.b.ty_of(id))
    }

    /// Marks this value to be saved for the backward pass whatever the
    /// checkpoint policy (like naming it in `jax.ad_checkpoint`'s
    /// `save_only_these_names`). Returns the same value.
    pub fn save(self) -> Var<'b> {
        self.mark(crate::graph::Mark::Save)
    }

    /// Marks this value to be recomputed in the backward pass rather than
    /// saved, whatever the checkpoint policy. Returns the same value.
    pub fn recompute(self) -> Var<'b> {
        self.mark(crate::graph::Mark::Recompute)
    }

    fn mark(self, mark: crate::graph::Mark) -> Var<'b> {
        if let Some(id) = self.id {
            if let Some(g) = self.b.state.borrow_mut().graph.as_mut() {
                g.set_mark(id, Some(mark));
            }
        }
        self
    }

    /// The node id in the graph under construction.
    pub fn id(&self) -> Option<NodeId> {
        self.id
    }

    pub fn builder(&self) -> &'b GraphBuilder {
        self.b
    }

    #[track_caller]
    fn unary(self, op: UnaryOp) -> Var<'b> {
        self.b.node(Op::Unary(op), &[self])
    }

    #[track_caller]
    pub fn exp(self) -> Var<'b> {
        self.unary(UnaryOp::Exp)
    }
    /// Natural logarithm.
    #[track_caller]
    pub fn log(self) -> Var<'b> {
        self.unary(UnaryOp::Log)
    }
    #[track_caller]
    pub fn sin(self) -> Var<'b> {
        self.unary(UnaryOp::Sin)
    }
    #[track_caller]
    pub fn cos(self) -> Var<'b> {
        self.unary(UnaryOp::Cos)
    }
    #[track_caller]
    pub fn tanh(self) -> Var<'b> {
        self.unary(UnaryOp::Tanh)
    }
    #[track_caller]
    pub fn sqrt(self) -> Var<'b> {
        self.unary(UnaryOp::Sqrt)
    }
    /// The error function.
    #[track_caller]
    pub fn erf(self) -> Var<'b> {
        self.unary(UnaryOp::Erf)
    }
    /// `eˣ − 1`, accurate near 0.
    #[track_caller]
    pub fn expm1(self) -> Var<'b> {
        self.unary(UnaryOp::Expm1)
    }
    /// `ln(1 + x)`, accurate near 0.
    #[track_caller]
    pub fn log1p(self) -> Var<'b> {
        self.unary(UnaryOp::Log1p)
    }
    #[track_caller]
    pub fn abs(self) -> Var<'b> {
        self.unary(UnaryOp::Abs)
    }
    #[track_caller]
    pub fn relu(self) -> Var<'b> {
        self.unary(UnaryOp::Relu)
    }
    /// `x ^ p` for a constant `p`.
    #[track_caller]
    pub fn powf(self, p: f64) -> Var<'b> {
        self.b.node(Op::Pow { exponent: p }, &[self])
    }
    /// `x²`, as `pow[exponent=2]`.
    #[track_caller]
    pub fn square(self) -> Var<'b> {
        self.powf(2.0)
    }
    /// `1 / (1 + exp(-x))`.
    #[track_caller]
    pub fn sigmoid(self) -> Var<'b> {
        1.0 / ((-self).exp() + 1.0)
    }

    /// A scalar constant of this value's dtype.
    #[track_caller]
    fn literal(self, v: f64) -> Var<'b> {
        match self.ty() {
            Some(t) if t.dtype.is_float() => self.b.scalar(t.dtype, v),
            Some(t) => self.b.fail(format!("a number cannot be combined with {t}")),
            None => self.b.poisoned(),
        }
    }

    /// Broadcasts numpy-style to `shape` (no node if already that shape).
    #[track_caller]
    pub fn broadcast_to(self, shape: &[usize]) -> Var<'b> {
        match self.ty() {
            Some(t) if t.shape == shape => self,
            Some(_) => self.b.node(Op::Broadcast { shape: shape.to_vec() }, &[self]),
            None => self,
        }
    }

    #[track_caller]
    fn binary(self, op: BinaryOp, other: Var<'b>) -> Var<'b> {
        let (Some(a), Some(b)) = (self.ty(), other.ty()) else {
            return self.b.poisoned();
        };
        let Some(shape) = broadcast_shapes(&a.shape, &b.shape) else {
            return self.b.fail(format!("{}: cannot broadcast {a} and {b}", op.name()));
        };
        let (x, y) = (self.broadcast_to(&shape), other.broadcast_to(&shape));
        self.b.node(Op::Binary(op), &[x, y])
    }

    #[track_caller]
    fn compare(self, op: CmpOp, other: Var<'b>) -> Var<'b> {
        let (Some(a), Some(b)) = (self.ty(), other.ty()) else {
            return self.b.poisoned();
        };
        let Some(shape) = broadcast_shapes(&a.shape, &b.shape) else {
            return self.b.fail(format!("{}: cannot broadcast {a} and {b}", op.name()));
        };
        let (x, y) = (self.broadcast_to(&shape), other.broadcast_to(&shape));
        self.b.node(Op::Compare(op), &[x, y])
    }

    /// Elementwise maximum (broadcasting).
    #[track_caller]
    pub fn max(self, other: Var<'b>) -> Var<'b> {
        self.binary(BinaryOp::Max, other)
    }
    /// Elementwise minimum (broadcasting).
    #[track_caller]
    pub fn min(self, other: Var<'b>) -> Var<'b> {
        self.binary(BinaryOp::Min, other)
    }
    #[track_caller]
    pub fn lt(self, other: Var<'b>) -> Var<'b> {
        self.compare(CmpOp::Lt, other)
    }
    #[track_caller]
    pub fn le(self, other: Var<'b>) -> Var<'b> {
        self.compare(CmpOp::Le, other)
    }
    #[track_caller]
    pub fn gt(self, other: Var<'b>) -> Var<'b> {
        self.compare(CmpOp::Gt, other)
    }
    #[track_caller]
    pub fn ge(self, other: Var<'b>) -> Var<'b> {
        self.compare(CmpOp::Ge, other)
    }
    #[track_caller]
    pub fn eq(self, other: Var<'b>) -> Var<'b> {
        self.compare(CmpOp::Eq, other)
    }
    #[track_caller]
    pub fn ne(self, other: Var<'b>) -> Var<'b> {
        self.compare(CmpOp::Ne, other)
    }
    /// Compares with a number of this value's dtype, e.g. `x.gt_scalar(0.0)`.
    #[track_caller]
    pub fn gt_scalar(self, v: f64) -> Var<'b> {
        let c = self.literal(v);
        self.gt(c)
    }
    /// Compares with a number of this value's dtype.
    #[track_caller]
    pub fn lt_scalar(self, v: f64) -> Var<'b> {
        let c = self.literal(v);
        self.lt(c)
    }
    /// `a` where this boolean value is true, else `b`.
    #[track_caller]
    pub fn select(self, a: Var<'b>, b: Var<'b>) -> Var<'b> {
        self.b.select(self, a, b)
    }

    #[track_caller]
    pub fn convert(self, to: DType) -> Var<'b> {
        self.b.node(Op::Convert { to }, &[self])
    }
    #[track_caller]
    pub fn reshape(self, shape: &[usize]) -> Var<'b> {
        self.b.node(Op::Reshape { shape: shape.to_vec() }, &[self])
    }
    #[track_caller]
    pub fn transpose(self, perm: &[usize]) -> Var<'b> {
        self.b.node(Op::Transpose { perm: perm.to_vec() }, &[self])
    }
    /// Swaps the last two axes.
    #[track_caller]
    pub fn t(self) -> Var<'b> {
        let Some(ty) = self.ty() else { return self };
        if ty.rank() < 2 {
            return self.b.fail(format!("t: {ty} has fewer than two axes"));
        }
        let r = ty.rank();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.transpose(&perm)
    }
    /// Sum over `axes`, which are removed.
    #[track_caller]
    pub fn sum(self, axes: &[usize]) -> Var<'b> {
        let mut axes = axes.to_vec();
        axes.sort_unstable();
        self.b.node(Op::ReduceSum { axes }, &[self])
    }
    /// Sum of all elements (a scalar).
    #[track_caller]
    pub fn sum_all(self) -> Var<'b> {
        let Some(ty) = self.ty() else { return self };
        self.sum(&(0..ty.rank()).collect::<Vec<_>>())
    }
    /// Maximum over `axes`, which are removed.
    #[track_caller]
    pub fn max_over(self, axes: &[usize]) -> Var<'b> {
        let mut axes = axes.to_vec();
        axes.sort_unstable();
        self.b.node(Op::ReduceMax { axes }, &[self])
    }
    /// Mean over `axes`, which are removed.
    #[track_caller]
    pub fn mean(self, axes: &[usize]) -> Var<'b> {
        let Some(ty) = self.ty() else { return self };
        let count: usize = axes.iter().filter_map(|&a| ty.shape.get(a)).product();
        self.sum(axes) / count as f64
    }
    /// Mean of all elements (a scalar).
    #[track_caller]
    pub fn mean_all(self) -> Var<'b> {
        let Some(ty) = self.ty() else { return self };
        self.sum_all() / num_elements(&ty.shape) as f64
    }
    /// Reinserts the reduced `axes` (as extent 1) and broadcasts back to
    /// `shape`: the inverse shape move of a reduction.
    #[track_caller]
    pub fn expand_reduced(self, axes: &[usize], shape: &[usize]) -> Var<'b> {
        let kept: Vec<usize> = (0..shape.len())
            .map(|a| if axes.contains(&a) { 1 } else { shape[a] })
            .collect();
        self.reshape(&kept).broadcast_to(shape)
    }
    /// Numerically stable softmax along `axis`.
    #[track_caller]
    pub fn softmax(self, axis: usize) -> Var<'b> {
        let Some(ty) = self.ty() else { return self };
        let m = self.max_over(&[axis]).expand_reduced(&[axis], &ty.shape);
        let e = (self - m).exp();
        let s = e.sum(&[axis]).expand_reduced(&[axis], &ty.shape);
        e / s
    }
    /// Matrix product (2-D or batched 3-D).
    #[track_caller]
    pub fn matmul(self, other: Var<'b>) -> Var<'b> {
        self.b.node(Op::MatMul, &[self, other])
    }
    /// `self + a·b` for `self: [m,n]`, `a: [m,k]`, `b: [k,n]`, summed in
    /// a defined order, bit for bit the same on every path: from `self`,
    /// one fused multiply-add per product, the contraction axis as
    /// `blocks` equal runs taken last run first (`Op::MatMulAcc`).
    #[track_caller]
    pub fn matmul_acc(self, a: Var<'b>, b: Var<'b>, blocks: usize) -> Var<'b> {
        self.b.node(Op::MatMulAcc { blocks }, &[self, a, b])
    }
    /// A linear layer `x W + b`, with `b` broadcast over the batch.
    #[track_caller]
    pub fn linear(self, w: Var<'b>, b: Var<'b>) -> Var<'b> {
        self.matmul(w) + b
    }
    #[track_caller]
    pub fn slice(self, start: &[usize], end: &[usize]) -> Var<'b> {
        self.b.node(
            Op::Slice {
                start: start.to_vec(),
                end: end.to_vec(),
            },
            &[self],
        )
    }
    #[track_caller]
    pub fn pad(self, low: &[usize], high: &[usize]) -> Var<'b> {
        self.b.node(
            Op::Pad {
                low: low.to_vec(),
                high: high.to_vec(),
            },
            &[self],
        )
    }
    /// Fused softmax cross-entropy against `targets` (same shape `[..., K]`),
    /// averaged over the batch: a scalar.
    #[track_caller]
    pub fn softmax_cross_entropy(self, targets: Var<'b>) -> Var<'b> {
        self.b.node(Op::SoftmaxCrossEntropy, &[self, targets])
    }
}

macro_rules! binary_operator {
    ($Trait:ident, $method:ident, $op:expr) => {
        impl<'b> std::ops::$Trait<Var<'b>> for Var<'b> {
            type Output = Var<'b>;
            #[track_caller]
            fn $method(self, rhs: Var<'b>) -> Var<'b> {
                self.binary($op, rhs)
            }
        }
        impl<'b> std::ops::$Trait<&Var<'b>> for &Var<'b> {
            type Output = Var<'b>;
            #[track_caller]
            fn $method(self, rhs: &Var<'b>) -> Var<'b> {
                (*self).binary($op, *rhs)
            }
        }
        impl<'b> std::ops::$Trait<&Var<'b>> for Var<'b> {
            type Output = Var<'b>;
            #[track_caller]
            fn $method(self, rhs: &Var<'b>) -> Var<'b> {
                self.binary($op, *rhs)
            }
        }
        impl<'b> std::ops::$Trait<Var<'b>> for &Var<'b> {
            type Output = Var<'b>;
            #[track_caller]
            fn $method(self, rhs: Var<'b>) -> Var<'b> {
                (*self).binary($op, rhs)
            }
        }
        impl<'b> std::ops::$Trait<f64> for Var<'b> {
            type Output = Var<'b>;
            #[track_caller]
            fn $method(self, rhs: f64) -> Var<'b> {
                let c = self.literal(rhs);
                self.binary($op, c)
            }
        }
        impl<'b> std::ops::$Trait<f64> for &Var<'b> {
            type Output = Var<'b>;
            #[track_caller]
            fn $method(self, rhs: f64) -> Var<'b> {
                let c = self.literal(rhs);
                (*self).binary($op, c)
            }
        }
        impl<'b> std::ops::$Trait<Var<'b>> for f64 {
            type Output = Var<'b>;
            #[track_caller]
            fn $method(self, rhs: Var<'b>) -> Var<'b> {
                let c = rhs.literal(self);
                c.binary($op, rhs)
            }
        }
        impl<'b> std::ops::$Trait<&Var<'b>> for f64 {
            type Output = Var<'b>;
            #[track_caller]
            fn $method(self, rhs: &Var<'b>) -> Var<'b> {
                let c = rhs.literal(self);
                c.binary($op, *rhs)
            }
        }
    };
}

binary_operator!(Add, add, BinaryOp::Add);
binary_operator!(Sub, sub, BinaryOp::Sub);
binary_operator!(Mul, mul, BinaryOp::Mul);
binary_operator!(Div, div, BinaryOp::Div);

impl<'b> std::ops::Neg for Var<'b> {
    type Output = Var<'b>;
    #[track_caller]
    fn neg(self) -> Var<'b> {
        self.unary(UnaryOp::Neg)
    }
}

impl<'b> std::ops::Neg for &Var<'b> {
    type Output = Var<'b>;
    #[track_caller]
    fn neg(self) -> Var<'b> {
        (*self).unary(UnaryOp::Neg)
    }
}
