//! The closed set of primitive operations.
//!
//! Every concern (shape rule in `infer`, meaning in `interp`, derivative in
//! the passes crate's VJP rules, lowering in codegen) is one exhaustive
//! `match` over [`Op`] with no catch-all arm, so adding a variant makes the
//! compiler list every place to touch. Composite operations (square, mean,
//! sigmoid, softmax, linear layer) live in the builder and need no rules.
//!
//! The loop op `scan` holds its body graph (a region, see [`crate::scan`]);
//! its several results are read through `get` nodes.

use crate::scan::Scan;
use crate::tensor::Tensor;
use crate::types::{DType, TensorType};
use std::sync::Arc;

/// Declares the elementwise unary ops once: each entry's variant,
/// mnemonic and cost per element; `UnaryOp`, `UnaryOp::ALL` (the parser's
/// names and every "each op" test), `name` and `cost` are derived from it.
macro_rules! unary_ops {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:literal, cost $cost:literal; )*) => {
        /// Elementwise operations of one operand.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum UnaryOp {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl UnaryOp {
            /// Every unary op, in declaration order.
            pub const ALL: [UnaryOp; [$($name),*].len()] = [$(UnaryOp::$variant),*];

            /// The mnemonic of the text format.
            pub fn name(self) -> &'static str {
                match self {
                    $( UnaryOp::$variant => $name, )*
                }
            }

            /// Roughly the machine instructions per element (1: one
            /// instruction, cheap to recompute in a consumer's loop; 40:
            /// a transcendental function). Fusion, code generation (how
            /// much to unroll, when to call out of line) and the
            /// checkpoint cost model read it.
            pub fn cost(self) -> u32 {
                match self {
                    $( UnaryOp::$variant => $cost, )*
                }
            }
        }
    };
}

unary_ops! {
    Neg = "neg", cost 1;
    Exp = "exp", cost 40;
    /// Natural logarithm; `log(0) = -inf`, `log(x < 0) = NaN`.
    Log = "log", cost 40;
    Sin = "sin", cost 40;
    Cos = "cos", cost 40;
    Tanh = "tanh", cost 40;
    Sqrt = "sqrt", cost 4;
    Abs = "abs", cost 1;
    /// `max(x, 0)`, propagating NaN. Its derivative at 0 is 0.
    Relu = "relu", cost 1;
    /// The error function `2/√π ∫₀ˣ e^(−t²) dt`.
    Erf = "erf", cost 40;
    /// `eˣ − 1`, accurate where `x` is near 0 (where `exp(x) − 1` loses
    /// every digit).
    Expm1 = "expm1", cost 40;
    /// `ln(1 + x)`, accurate where `x` is near 0; `log1p(−1) = −inf`.
    Log1p = "log1p", cost 40;
}

/// Declares the elementwise binary ops once, as `unary_ops!` does.
macro_rules! binary_ops {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:literal, cost $cost:literal; )*) => {
        /// Elementwise operations of two operands of the same type.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum BinaryOp {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl BinaryOp {
            /// Every binary op, in declaration order.
            pub const ALL: [BinaryOp; [$($name),*].len()] = [$(BinaryOp::$variant),*];

            /// The mnemonic of the text format.
            pub fn name(self) -> &'static str {
                match self {
                    $( BinaryOp::$variant => $name, )*
                }
            }

            /// Roughly the machine instructions per element (see
            /// [`UnaryOp::cost`]).
            pub fn cost(self) -> u32 {
                match self {
                    $( BinaryOp::$variant => $cost, )*
                }
            }
        }
    };
}

binary_ops! {
    Add = "add", cost 1;
    Sub = "sub", cost 1;
    Mul = "mul", cost 1;
    Div = "div", cost 4;
    /// Larger operand, NaN if either is NaN. At a tie the gradient is split
    /// equally between the operands (as JAX and PyTorch do).
    Max = "max", cost 1;
    /// Smaller operand, NaN if either is NaN. Ties split like `Max`.
    Min = "min", cost 1;
}

/// Declares the comparisons once, as `unary_ops!` does: each entry's
/// variant, mnemonic and Rust operator; `CmpOp`, `CmpOp::ALL`, `name` and
/// `apply` are derived from it.
macro_rules! cmp_ops {
    ($( $variant:ident = $name:literal, $op:tt; )*) => {
        /// Elementwise comparisons; they produce `bool`. NaN compares
        /// unequal to everything, as in IEEE 754.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum CmpOp {
            $( $variant, )*
        }

        impl CmpOp {
            /// Every comparison, in declaration order.
            pub const ALL: [CmpOp; [$($name),*].len()] = [$(CmpOp::$variant),*];

            /// The mnemonic of the text format.
            pub fn name(self) -> &'static str {
                match self {
                    $( CmpOp::$variant => $name, )*
                }
            }

            /// Applies the comparison with IEEE 754 semantics.
            pub fn apply<T: PartialOrd>(self, a: T, b: T) -> bool {
                match self {
                    $( CmpOp::$variant => a $op b, )*
                }
            }
        }
    };
}

cmp_ops! {
    Lt = "lt", <;
    Le = "le", <=;
    Gt = "gt", >;
    Ge = "ge", >=;
    Eq = "eq", ==;
    Ne = "ne", !=;
}

/// A primitive operation. Operands are the node's incoming edges, ordered by
/// operand position.
///
/// Ops are values: equal ops compute equal results from equal operands, so
/// `Op: Eq + Hash`, with floats compared by their bits (`pow[exponent=0.0]`
/// and `pow[exponent=-0.0]` differ, a NaN exponent equals itself) and
/// constants by type and content.
#[derive(Clone, Debug)]
pub enum Op {
    /// The graph input with this position in `Graph::inputs`.
    Input {
        index: usize,
    },
    /// A constant (a scalar or a small tensor).
    Const {
        value: Tensor,
    },
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// `x ^ exponent` for a constant exponent.
    Pow {
        exponent: f64,
    },
    Compare(CmpOp),
    /// `select(cond, a, b)`: `a` where `cond` is true, else `b`.
    Select,
    /// Changes the element type (bool becomes 0/1; float to bool is `!= 0`).
    Convert {
        to: DType,
    },
    /// Numpy-style broadcast to `shape`: operand axes align to the right and
    /// each has the output extent or 1; missing leading axes are added.
    Broadcast {
        shape: Vec<usize>,
    },
    /// Same elements in row-major order under another shape.
    Reshape {
        shape: Vec<usize>,
    },
    /// Output axis `i` is operand axis `perm[i]`.
    Transpose {
        perm: Vec<usize>,
    },
    /// Sum over `axes` (sorted, distinct); those axes are removed.
    ReduceSum {
        axes: Vec<usize>,
    },
    /// Maximum over `axes`, which are removed; NaN if any element is NaN;
    /// `-inf` over an empty axis. Ties share the gradient equally.
    ReduceMax {
        axes: Vec<usize>,
    },
    /// Matrix product `[m,k] x [k,n] -> [m,n]`, or batched
    /// `[b,m,k] x [b,k,n] -> [b,m,n]`.
    MatMul,
    /// Elements `start[i] .. end[i]` of each axis.
    Slice {
        start: Vec<usize>,
        end: Vec<usize>,
    },
    /// Zero padding: `low[i]` zeros before and `high[i]` after axis `i`.
    /// It is the transpose of `Slice` and so its VJP partner.
    Pad {
        low: Vec<usize>,
        high: Vec<usize>,
    },
    /// Joins the operands along `axis`; the other extents must agree.
    Concat {
        axis: usize,
    },
    /// Fused, stable softmax cross-entropy: `softmax_cross_entropy(z, t)`
    /// for logits `z` and targets `t` of shape `[..., K]` is the mean over
    /// the leading (batch) elements of `-sum_k t_k log softmax(z)_k`, a
    /// scalar. It is a primitive because its hand-written backward
    /// `(softmax(z)·Σt - t) / B` (that is `(P - T) / B` for targets whose
    /// rows sum to 1, such as one-hot labels) is cheaper and stable where
    /// the mechanical one is not: it stays finite for logits of magnitude
    /// 1e4, and a logit of `-inf` whose target is 0 contributes exactly 0.
    SoftmaxCrossEntropy,
    /// A loop over a body graph (see [`crate::scan`]); its value is the
    /// buffer of all its results, read through `get`.
    Scan(Arc<Scan>),
    /// Result `index` of the multi-result op that is its operand, of type
    /// `ty` (carried in the op so that inference needs only operand types;
    /// `verify` checks it against the operand).
    Get {
        index: usize,
        ty: TensorType,
    },
}

/// What kind of computation an op is: the one place passes learn whether
/// an op fuses, needs a buffer, may be recomputed, or what it costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// Inputs and constants: no computation.
    Leaf,
    /// Each result element from the operands' elements at the same index.
    Elementwise,
    /// A new view of the operand's elements: generated code only changes
    /// how it indexes them.
    View,
    /// Combines elements along axes.
    Reduction,
    /// A matrix product (a library GEMM).
    Contraction,
    /// Moves elements into a new buffer of another layout (pad, concat).
    Copy,
    /// A fused composite with a hand-written derivative (softmax
    /// cross-entropy).
    Composite,
    /// An op with a body graph (a loop): a unit of its own for every pass.
    Region,
}

/// What distinguishes one op from another of the same variant, in a form
/// that compares and hashes exactly (floats as bits).
#[derive(PartialEq, Eq, Hash)]
enum Payload<'a> {
    None,
    Index(usize),
    Tensor(&'a Tensor),
    Unary(UnaryOp),
    Binary(BinaryOp),
    Compare(CmpOp),
    Bits(u64),
    DType(DType),
    Ints(&'a [usize]),
    Pair(&'a [usize], &'a [usize]),
    /// A body, by address (see [`Scan`]).
    Body(usize),
    Get(usize, &'a TensorType),
}

impl Op {
    fn payload(&self) -> Payload<'_> {
        match self {
            Op::Input { index } => Payload::Index(*index),
            Op::Const { value } => Payload::Tensor(value),
            Op::Unary(u) => Payload::Unary(*u),
            Op::Binary(b) => Payload::Binary(*b),
            Op::Pow { exponent } => Payload::Bits(exponent.to_bits()),
            Op::Compare(c) => Payload::Compare(*c),
            Op::Convert { to } => Payload::DType(*to),
            Op::Broadcast { shape } | Op::Reshape { shape } => Payload::Ints(shape),
            Op::Transpose { perm } => Payload::Ints(perm),
            Op::ReduceSum { axes } | Op::ReduceMax { axes } => Payload::Ints(axes),
            Op::Slice { start, end } => Payload::Pair(start, end),
            Op::Pad { low, high } => Payload::Pair(low, high),
            Op::Concat { axis } => Payload::Index(*axis),
            Op::Select | Op::MatMul | Op::SoftmaxCrossEntropy => Payload::None,
            Op::Scan(scan) => Payload::Body(Arc::as_ptr(scan) as usize),
            Op::Get { index, ty } => Payload::Get(*index, ty),
        }
    }
}

/// Everything the passes need to know about an op besides its meaning:
/// its mnemonic, class, cost and operand count. [`Op::facts`] declares
/// them together, one line per op; `name`, `class`, `cost`, `arity` and
/// `recomputable` read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpFacts {
    /// The mnemonic of the text format.
    pub name: &'static str,
    pub class: OpClass,
    /// Roughly the machine instructions per result element of an
    /// elementwise op (1: cheap enough to recompute inside a consumer's
    /// loop; 40: a transcendental function); 1 for other ops, whose cost
    /// is not per element.
    pub cost: u32,
    /// Operands, or `None` for a variable count.
    pub arity: Option<usize>,
    /// Whether the backward may recompute the value from its operands
    /// rather than have it saved: not contractions, reductions and
    /// composites, which cost more than a buffer (as PyTorch's partitioner
    /// decides), and not a loop or its `get` (a loop's buffer of results
    /// is never a value of its own to save: the `get` is what is saved).
    pub recomputable: bool,
}

impl Op {
    /// The op's facts, one declaration per op (the elementwise families
    /// take theirs from their own tables, `unary_ops!` and friends).
    pub fn facts(&self) -> OpFacts {
        use OpClass::*;
        // (name, class, cost, arity); recomputability follows the class.
        let (name, class, cost, arity) = match self {
            Op::Input { .. } => ("input", Leaf, 1, Some(0)),
            Op::Const { .. } => ("const", Leaf, 1, Some(0)),
            Op::Unary(u) => (u.name(), Elementwise, u.cost(), Some(1)),
            Op::Binary(b) => (b.name(), Elementwise, b.cost(), Some(2)),
            // Repeated multiplication, or a library call.
            Op::Pow { .. } => ("pow", Elementwise, 8, Some(1)),
            // A comparison, and the select or conversion it feeds.
            Op::Compare(c) => (c.name(), Elementwise, 2, Some(2)),
            Op::Select => ("select", Elementwise, 2, Some(3)),
            Op::Convert { .. } => ("convert", Elementwise, 2, Some(1)),
            Op::Broadcast { .. } => ("broadcast", View, 1, Some(1)),
            Op::Reshape { .. } => ("reshape", View, 1, Some(1)),
            Op::Transpose { .. } => ("transpose", View, 1, Some(1)),
            Op::Slice { .. } => ("slice", View, 1, Some(1)),
            Op::Get { .. } => ("get", View, 1, Some(1)),
            Op::ReduceSum { .. } => ("reduce_sum", Reduction, 1, Some(1)),
            Op::ReduceMax { .. } => ("reduce_max", Reduction, 1, Some(1)),
            Op::MatMul => ("matmul", Contraction, 1, Some(2)),
            Op::Pad { .. } => ("pad", Copy, 1, Some(1)),
            Op::Concat { .. } => ("concat", Copy, 1, None),
            Op::SoftmaxCrossEntropy => ("softmax_cross_entropy", Composite, 1, Some(2)),
            Op::Scan(_) => ("scan", Region, 1, None),
        };
        let recomputable = match class {
            Leaf | Elementwise | Copy => true,
            View => !matches!(self, Op::Get { .. }),
            Reduction | Contraction | Composite | Region => false,
        };
        OpFacts {
            name,
            class,
            cost,
            arity,
            recomputable,
        }
    }

    /// The op's class (see [`OpClass`]).
    pub fn class(&self) -> OpClass {
        self.facts().class
    }

    /// See [`OpFacts::cost`].
    pub fn cost(&self) -> u32 {
        self.facts().cost
    }

    /// See [`OpFacts::recomputable`].
    pub fn recomputable(&self) -> bool {
        self.facts().recomputable
    }

    /// The mnemonic used in the text format.
    pub fn name(&self) -> &'static str {
        self.facts().name
    }

    /// Number of operands, or `None` for a variable count (concat, scan).
    pub fn arity(&self) -> Option<usize> {
        self.facts().arity
    }
}

impl PartialEq for Op {
    fn eq(&self, other: &Op) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other) && self.payload() == other.payload()
    }
}

impl Eq for Op {}

impl std::hash::Hash for Op {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        self.payload().hash(state);
    }
}

/// An attribute value in the text format.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Float(f64),
    Int(usize),
    Ints(Vec<usize>),
    DType(DType),
}

impl Op {
    /// Attributes as `(key, value)` pairs sorted by key; constants' values
    /// and input positions are not attributes.
    pub fn attrs(&self) -> Vec<(&'static str, Attr)> {
        match self {
            Op::Input { .. }
            | Op::Const { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Compare(_)
            | Op::Select
            | Op::MatMul
            | Op::SoftmaxCrossEntropy => vec![],
            Op::Pow { exponent } => vec![("exponent", Attr::Float(*exponent))],
            Op::Convert { to } => vec![("to", Attr::DType(*to))],
            Op::Broadcast { shape } | Op::Reshape { shape } => vec![("shape", Attr::Ints(shape.clone()))],
            Op::Transpose { perm } => vec![("perm", Attr::Ints(perm.clone()))],
            Op::ReduceSum { axes } | Op::ReduceMax { axes } => vec![("axes", Attr::Ints(axes.clone()))],
            Op::Slice { start, end } => vec![("end", Attr::Ints(end.clone())), ("start", Attr::Ints(start.clone()))],
            Op::Pad { low, high } => vec![("high", Attr::Ints(high.clone())), ("low", Attr::Ints(low.clone()))],
            Op::Concat { axis } => vec![("axis", Attr::Int(*axis))],
            Op::Scan(scan) => {
                let mut attrs = vec![
                    ("carry", Attr::Int(scan.n_carry)),
                    ("consts", Attr::Int(scan.n_consts)),
                    ("length", Attr::Int(scan.length)),
                ];
                if scan.reverse {
                    attrs.push(("reverse", Attr::Int(1)));
                }
                if scan.unroll > 1 {
                    attrs.push(("unroll", Attr::Int(scan.unroll)));
                }
                if let Some(regen) = &scan.regen {
                    if regen.every > 0 {
                        attrs.push(("every", Attr::Int(regen.every)));
                    } else {
                        attrs.push(("slots", Attr::Int(regen.slots)));
                    }
                }
                attrs.sort_by_key(|(k, _)| *k);
                attrs
            }
            Op::Get { index, .. } => vec![("index", Attr::Int(*index))],
        }
    }

    /// Builds an op from its mnemonic and attributes (the parser's half of
    /// the text format). Constants and inputs are not built here.
    pub fn from_parts(name: &str, attrs: &[(String, Attr)]) -> Result<Op, String> {
        let get = |key: &str| attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let ints = |key: &str| match get(key) {
            Some(Attr::Ints(v)) => Ok(v.clone()),
            Some(Attr::Int(v)) => Ok(vec![*v]),
            Some(other) => Err(format!(
                "attribute `{key}` of `{name}` must be a list like (0, 1), not {other:?}"
            )),
            None => Err(format!("`{name}` needs the attribute `{key}`")),
        };
        let op = if let Some(u) = UnaryOp::ALL.into_iter().find(|u| u.name() == name) {
            Op::Unary(u)
        } else if let Some(b) = BinaryOp::ALL.into_iter().find(|b| b.name() == name) {
            Op::Binary(b)
        } else if let Some(c) = CmpOp::ALL.into_iter().find(|c| c.name() == name) {
            Op::Compare(c)
        } else {
            match name {
                "pow" => match get("exponent") {
                    Some(Attr::Float(e)) => Op::Pow { exponent: *e },
                    Some(Attr::Int(e)) => Op::Pow { exponent: *e as f64 },
                    _ => return Err("`pow` needs a numeric attribute `exponent`".into()),
                },
                "select" => Op::Select,
                "convert" => match get("to") {
                    Some(Attr::DType(d)) => Op::Convert { to: *d },
                    _ => return Err("`convert` needs the attribute `to` naming f32, f64 or bool".into()),
                },
                "broadcast" => Op::Broadcast { shape: ints("shape")? },
                "reshape" => Op::Reshape { shape: ints("shape")? },
                "transpose" => Op::Transpose { perm: ints("perm")? },
                "reduce_sum" => Op::ReduceSum { axes: ints("axes")? },
                "reduce_max" => Op::ReduceMax { axes: ints("axes")? },
                "matmul" => Op::MatMul,
                "slice" => Op::Slice {
                    start: ints("start")?,
                    end: ints("end")?,
                },
                "pad" => Op::Pad {
                    low: ints("low")?,
                    high: ints("high")?,
                },
                "concat" => match get("axis") {
                    Some(Attr::Int(a)) => Op::Concat { axis: *a },
                    _ => return Err("`concat` needs an integer attribute `axis`".into()),
                },
                "softmax_cross_entropy" => Op::SoftmaxCrossEntropy,
                "scan" => return Err("`scan` needs a body: `scan[…] %operands { graph … }`".into()),
                "get" => return Err("`get` is built by the parser from its declared type".into()),
                "input" => return Err("inputs are declared in the graph header, not with `input`".into()),
                "const" => return Err("`const` takes a literal, not operands".into()),
                _ => return Err(format!("unknown op `{name}`")),
            }
        };
        let known = op.attrs();
        for (k, _) in attrs {
            if !known.iter().any(|(key, _)| key == k) {
                return Err(format!("`{name}` has no attribute `{k}`"));
            }
        }
        Ok(op)
    }
}
