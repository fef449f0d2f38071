//! A small helper for passes that append nodes to a graph: typed shortcuts
//! for each op, constants, and the folding of multiplications by a known
//! one, so rules read like their formulas and their output stays short.

use crate::error::PassError;
use wengert_ir::{BinaryOp, CmpOp, DType, Graph, NodeId, Op, Tensor, UnaryOp};

/// Appends nodes to a graph; errors name the node being processed.
pub struct Emitter<'a> {
    pub g: &'a mut Graph,
    /// The node whose rule is running, named in errors.
    pub at: NodeId,
}

impl Emitter<'_> {
    /// Adds a node; a type error here is a bug in the calling pass.
    pub fn op(&mut self, op: Op, args: &[NodeId]) -> Result<NodeId, PassError> {
        match self.g.add(op, args) {
            Ok(id) => Ok(id),
            Err(e) => Err(PassError::Internal {
                node: self.g.value_name(self.at),
                message: e.to_string(),
            }),
        }
    }

    /// Result `index` of the loop `lp` (a `get` of it).
    pub fn get(&mut self, lp: NodeId, index: usize) -> Result<NodeId, PassError> {
        let ty = if let Op::Scan(scan) = self.g.op(lp) {
            scan.result_types().get(index).cloned()
        } else {
            None
        };
        let ty = ty.ok_or_else(|| PassError::Internal {
            node: self.g.value_name(self.at),
            message: format!("{} is not a loop with a result {index}", self.g.value_name(lp)),
        })?;
        self.op(Op::Get { index, ty }, &[lp])
    }

    pub fn dtype(&self, x: NodeId) -> DType {
        self.g.ty(x).dtype
    }

    pub fn shape(&self, x: NodeId) -> Vec<usize> {
        self.g.ty(x).shape.clone()
    }

    /// A scalar constant.
    pub fn scalar(&mut self, dtype: DType, v: f64) -> NodeId {
        self.g.add_const(Tensor::scalar(dtype, v))
    }

    /// A constant `v` of the dtype and shape of `like` (a scalar constant,
    /// broadcast if `like` is not a scalar).
    pub fn full_like(&mut self, like: NodeId, v: f64) -> Result<NodeId, PassError> {
        let (dtype, shape) = (self.dtype(like), self.shape(like));
        let c = self.scalar(dtype, v);
        self.broadcast(c, &shape)
    }

    /// The value of a constant all of whose elements are equal, looking
    /// through broadcasts and reshapes.
    pub fn uniform_const(&self, mut x: NodeId) -> Option<f64> {
        loop {
            let op = self.g.op(x);
            if let Op::Const { value } = op {
                let v = value.to_f64_vec();
                let first = *v.first()?;
                return v.iter().all(|&e| e.to_bits() == first.to_bits()).then_some(first);
            }
            if !matches!(op, Op::Broadcast { .. } | Op::Reshape { .. }) {
                return None;
            }
            x = self.g.args(x)[0];
        }
    }

    pub fn is_one(&self, x: NodeId) -> bool {
        self.uniform_const(x) == Some(1.0)
    }

    /// Whether `x` is a constant that is nowhere zero.
    pub fn is_nonzero_const(&self, x: NodeId) -> bool {
        self.uniform_const(x).is_some_and(|v| v != 0.0)
    }

    pub fn unary(&mut self, u: UnaryOp, x: NodeId) -> Result<NodeId, PassError> {
        self.op(Op::Unary(u), &[x])
    }

    pub fn binary(&mut self, b: BinaryOp, x: NodeId, y: NodeId) -> Result<NodeId, PassError> {
        self.op(Op::Binary(b), &[x, y])
    }

    pub fn neg(&mut self, x: NodeId) -> Result<NodeId, PassError> {
        self.unary(UnaryOp::Neg, x)
    }

    pub fn add(&mut self, x: NodeId, y: NodeId) -> Result<NodeId, PassError> {
        self.binary(BinaryOp::Add, x, y)
    }

    pub fn sub(&mut self, x: NodeId, y: NodeId) -> Result<NodeId, PassError> {
        self.binary(BinaryOp::Sub, x, y)
    }

    /// `x · y`, folding a factor known to be one.
    pub fn mul(&mut self, x: NodeId, y: NodeId) -> Result<NodeId, PassError> {
        if self.is_one(x) && self.g.ty(x) == self.g.ty(y) {
            return Ok(y);
        }
        if self.is_one(y) && self.g.ty(x) == self.g.ty(y) {
            return Ok(x);
        }
        self.binary(BinaryOp::Mul, x, y)
    }

    pub fn div(&mut self, x: NodeId, y: NodeId) -> Result<NodeId, PassError> {
        self.binary(BinaryOp::Div, x, y)
    }

    /// `c · x` for a number `c` (broadcast to `x`'s shape).
    pub fn mul_scalar(&mut self, c: f64, x: NodeId) -> Result<NodeId, PassError> {
        if c == 1.0 {
            return Ok(x);
        }
        let k = self.full_like(x, c)?;
        self.binary(BinaryOp::Mul, k, x)
    }

    pub fn cmp(&mut self, c: CmpOp, x: NodeId, y: NodeId) -> Result<NodeId, PassError> {
        self.op(Op::Compare(c), &[x, y])
    }

    pub fn select(&mut self, c: NodeId, a: NodeId, b: NodeId) -> Result<NodeId, PassError> {
        self.op(Op::Select, &[c, a, b])
    }

    /// Broadcasts to `shape` (no node if already that shape).
    pub fn broadcast(&mut self, x: NodeId, shape: &[usize]) -> Result<NodeId, PassError> {
        if self.g.ty(x).shape == shape {
            return Ok(x);
        }
        self.op(Op::Broadcast { shape: shape.to_vec() }, &[x])
    }

    /// Reshapes to `shape` (no node if already that shape).
    pub fn reshape(&mut self, x: NodeId, shape: &[usize]) -> Result<NodeId, PassError> {
        if self.g.ty(x).shape == shape {
            return Ok(x);
        }
        self.op(Op::Reshape { shape: shape.to_vec() }, &[x])
    }

    /// Sums over `axes` (no node if there are none).
    pub fn reduce_sum(&mut self, x: NodeId, axes: Vec<usize>) -> Result<NodeId, PassError> {
        if axes.is_empty() {
            return Ok(x);
        }
        self.op(Op::ReduceSum { axes }, &[x])
    }

    /// Inverse of a reduction's shape change: puts back the reduced `axes`
    /// of `shape` and broadcasts `x` over them.
    pub fn expand_reduced(&mut self, x: NodeId, axes: &[usize], shape: &[usize]) -> Result<NodeId, PassError> {
        // Reduced axes that all lead need no reshape: numpy broadcasting
        // adds leading axes by itself.
        let leading = axes.iter().enumerate().all(|(i, &a)| a == i);
        let x = if leading {
            x
        } else {
            let kept: Vec<usize> = (0..shape.len())
                .map(|a| if axes.contains(&a) { 1 } else { shape[a] })
                .collect();
            self.reshape(x, &kept)?
        };
        self.broadcast(x, shape)
    }

    /// `value` where `ybar` is nonzero, else 0. Rules whose local derivative
    /// can be infinite or NaN (log, sqrt, div, exp, fractional powers) wrap
    /// their contribution in this, so that a zero adjoint (for example from
    /// the branch of a `select` that was not taken) stays exactly zero
    /// instead of becoming `0 · inf = NaN`. Skipped when `ybar` is a
    /// constant known to be nonzero.
    pub fn guard(&mut self, ybar: NodeId, value: NodeId) -> Result<NodeId, PassError> {
        if self.is_nonzero_const(ybar) {
            return Ok(value);
        }
        let zero = self.full_like(value, 0.0)?;
        let is_zero = self.cmp(CmpOp::Eq, ybar, zero)?;
        self.select(is_zero, zero, value)
    }
}
