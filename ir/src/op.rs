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
    /// `c + a·b` for `c: [m,n]`, `a: [m,K]`, `b: [K,n]`, summed in one
    /// fixed order: each result element starts from `c` and adds the `K`
    /// products one fused multiply-add at a time, the contraction axis
    /// taken as `blocks` equal runs, last run first, each run in
    /// ascending order (`blocks = 1`: ascending). A backward loop that
    /// accumulates a weight gradient step by step (`acc += A_t·B_t`, the
    /// steps last to first) and one product over all the steps' stacked
    /// factors after the loop then give the same bits: what makes every
    /// checkpoint policy's gradient identical (`scan_vjp`). Unlike
    /// `matmul`, whose summation order is the library's, its result is
    /// defined to the bit.
    MatMulAcc {
        blocks: usize,
    },
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
            Op::MatMulAcc { blocks } => Payload::Index(*blocks),
            Op::Select | Op::MatMul | Op::SoftmaxCrossEntropy => Payload::None,
            Op::Scan(scan) => Payload::Body(Arc::as_ptr(scan) as usize),
            Op::Get { index, ty } => Payload::Get(*index, ty),
        }
    }
}

/// Everything the passes need to know about an op besides its meaning:
/// its mnemonic, class, cost and operand count, declared once per op kind
/// in the `op_kinds!` table; `name`, `class`, `cost`, `arity` and
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

/// Declares every op kind once: the elementwise families take their
/// entries from their own tables (`unary_ops!`, `binary_ops!`,
/// `cmp_ops!`); every other kind is one line here with its mnemonic,
/// class, cost and operand count. `OpKind`, `OpKind::all` (the parser's
/// names and the table-driven tests) and `OpKind::facts` are derived from
/// it; `Op::kind` and `Op::from_parts` are exhaustive matches over it, so
/// a new variant of [`Op`] is reported by the compiler in each.
macro_rules! op_kinds {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:literal, $class:ident, cost $cost:literal, arity $arity:expr; )*) => {
        /// An op without its payload: which variant it is (and, for the
        /// elementwise families, which member).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum OpKind {
            Unary(UnaryOp),
            Binary(BinaryOp),
            Compare(CmpOp),
            $( $(#[doc = $doc])* $variant, )*
        }

        impl OpKind {
            const OTHERS: [OpKind; [$($name),*].len()] = [$(OpKind::$variant),*];

            /// Every op kind: the families' members, then the others in
            /// declaration order.
            pub fn all() -> impl Iterator<Item = OpKind> {
                UnaryOp::ALL
                    .into_iter()
                    .map(OpKind::Unary)
                    .chain(BinaryOp::ALL.into_iter().map(OpKind::Binary))
                    .chain(CmpOp::ALL.into_iter().map(OpKind::Compare))
                    .chain(Self::OTHERS)
            }

            /// The kind's facts (see [`OpFacts`]).
            pub fn facts(self) -> OpFacts {
                let (name, class, cost, arity) = match self {
                    OpKind::Unary(u) => (u.name(), OpClass::Elementwise, u.cost(), Some(1)),
                    OpKind::Binary(b) => (b.name(), OpClass::Elementwise, b.cost(), Some(2)),
                    // A comparison, and the select or conversion it feeds.
                    OpKind::Compare(c) => (c.name(), OpClass::Elementwise, 2, Some(2)),
                    $( OpKind::$variant => ($name, OpClass::$class, $cost, $arity), )*
                };
                let recomputable = match class {
                    OpClass::Leaf | OpClass::Elementwise | OpClass::Copy => true,
                    OpClass::View => self != OpKind::Get,
                    OpClass::Reduction | OpClass::Contraction | OpClass::Composite | OpClass::Region => false,
                };
                OpFacts {
                    name,
                    class,
                    cost,
                    arity,
                    recomputable,
                }
            }

            /// The mnemonic of the text format.
            pub fn name(self) -> &'static str {
                self.facts().name
            }
        }
    };
}

op_kinds! {
    Input = "input", Leaf, cost 1, arity Some(0);
    Const = "const", Leaf, cost 1, arity Some(0);
    /// Repeated multiplication, or a library call.
    Pow = "pow", Elementwise, cost 8, arity Some(1);
    Select = "select", Elementwise, cost 2, arity Some(3);
    Convert = "convert", Elementwise, cost 2, arity Some(1);
    Broadcast = "broadcast", View, cost 1, arity Some(1);
    Reshape = "reshape", View, cost 1, arity Some(1);
    Transpose = "transpose", View, cost 1, arity Some(1);
    Slice = "slice", View, cost 1, arity Some(1);
    Get = "get", View, cost 1, arity Some(1);
    ReduceSum = "reduce_sum", Reduction, cost 1, arity Some(1);
    ReduceMax = "reduce_max", Reduction, cost 1, arity Some(1);
    MatMul = "matmul", Contraction, cost 1, arity Some(2);
    MatMulAcc = "matmul_acc", Contraction, cost 1, arity Some(3);
    Pad = "pad", Copy, cost 1, arity Some(1);
    Concat = "concat", Copy, cost 1, arity None;
    SoftmaxCrossEntropy = "softmax_cross_entropy", Composite, cost 1, arity Some(2);
    Scan = "scan", Region, cost 1, arity None;
}

impl Op {
    /// Which kind of op this is.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Input { .. } => OpKind::Input,
            Op::Const { .. } => OpKind::Const,
            Op::Unary(u) => OpKind::Unary(*u),
            Op::Binary(b) => OpKind::Binary(*b),
            Op::Pow { .. } => OpKind::Pow,
            Op::Compare(c) => OpKind::Compare(*c),
            Op::Select => OpKind::Select,
            Op::Convert { .. } => OpKind::Convert,
            Op::Broadcast { .. } => OpKind::Broadcast,
            Op::Reshape { .. } => OpKind::Reshape,
            Op::Transpose { .. } => OpKind::Transpose,
            Op::ReduceSum { .. } => OpKind::ReduceSum,
            Op::ReduceMax { .. } => OpKind::ReduceMax,
            Op::MatMul => OpKind::MatMul,
            Op::MatMulAcc { .. } => OpKind::MatMulAcc,
            Op::Slice { .. } => OpKind::Slice,
            Op::Pad { .. } => OpKind::Pad,
            Op::Concat { .. } => OpKind::Concat,
            Op::SoftmaxCrossEntropy => OpKind::SoftmaxCrossEntropy,
            Op::Scan(_) => OpKind::Scan,
            Op::Get { .. } => OpKind::Get,
        }
    }

    /// The op's facts (see [`OpFacts`]), from its kind's declaration.
    pub fn facts(&self) -> OpFacts {
        self.kind().facts()
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
            Op::MatMulAcc { blocks } => vec![("blocks", Attr::Int(*blocks))],
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
        let Some(kind) = OpKind::all().find(|k| k.name() == name) else {
            return Err(format!("unknown op `{name}`"));
        };
        let op = match kind {
            OpKind::Unary(u) => Op::Unary(u),
            OpKind::Binary(b) => Op::Binary(b),
            OpKind::Compare(c) => Op::Compare(c),
            OpKind::Pow => match get("exponent") {
                Some(Attr::Float(e)) => Op::Pow { exponent: *e },
                Some(Attr::Int(e)) => Op::Pow { exponent: *e as f64 },
                _ => return Err("`pow` needs a numeric attribute `exponent`".into()),
            },
            OpKind::Select => Op::Select,
            OpKind::Convert => match get("to") {
                Some(Attr::DType(d)) => Op::Convert { to: *d },
                _ => return Err("`convert` needs the attribute `to` naming f32, f64 or bool".into()),
            },
            OpKind::Broadcast => Op::Broadcast { shape: ints("shape")? },
            OpKind::Reshape => Op::Reshape { shape: ints("shape")? },
            OpKind::Transpose => Op::Transpose { perm: ints("perm")? },
            OpKind::ReduceSum => Op::ReduceSum { axes: ints("axes")? },
            OpKind::ReduceMax => Op::ReduceMax { axes: ints("axes")? },
            OpKind::MatMul => Op::MatMul,
            OpKind::MatMulAcc => match get("blocks") {
                Some(Attr::Int(b)) => Op::MatMulAcc { blocks: *b },
                _ => return Err("`matmul_acc` needs an integer attribute `blocks`".into()),
            },
            OpKind::Slice => Op::Slice {
                start: ints("start")?,
                end: ints("end")?,
            },
            OpKind::Pad => Op::Pad {
                low: ints("low")?,
                high: ints("high")?,
            },
            OpKind::Concat => match get("axis") {
                Some(Attr::Int(a)) => Op::Concat { axis: *a },
                _ => return Err("`concat` needs an integer attribute `axis`".into()),
            },
            OpKind::SoftmaxCrossEntropy => Op::SoftmaxCrossEntropy,
            OpKind::Scan => return Err("`scan` needs a body: `scan[…] %operands { graph … }`".into()),
            OpKind::Get => return Err("`get` is built by the parser from its declared type".into()),
            OpKind::Input => return Err("inputs are declared in the graph header, not with `input`".into()),
            OpKind::Const => return Err("`const` takes a literal, not operands".into()),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The op table is the parser's name list: every kind has its own
    /// mnemonic, and every kind the text format spells with a mnemonic
    /// parses back to itself (inputs, constants, loops and `get` have
    /// syntax of their own and are refused with a message saying so).
    #[test]
    fn every_kind_has_a_unique_name_that_parses_back_to_it() {
        let candidates: Vec<Vec<(String, Attr)>> = [
            vec![],
            vec![("exponent", Attr::Float(2.0))],
            vec![("to", Attr::DType(DType::F32))],
            vec![("shape", Attr::Ints(vec![2, 3]))],
            vec![("perm", Attr::Ints(vec![1, 0]))],
            vec![("axes", Attr::Ints(vec![0]))],
            vec![("start", Attr::Ints(vec![0])), ("end", Attr::Ints(vec![1]))],
            vec![("low", Attr::Ints(vec![0])), ("high", Attr::Ints(vec![1]))],
            vec![("axis", Attr::Int(0))],
            vec![("blocks", Attr::Int(1))],
        ]
        .into_iter()
        .map(|attrs| attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        .collect();
        let mut names = std::collections::HashSet::new();
        for kind in OpKind::all() {
            assert!(names.insert(kind.name()), "`{}` named twice", kind.name());
            let built: Vec<Op> = candidates
                .iter()
                .filter_map(|attrs| Op::from_parts(kind.name(), attrs).ok())
                .collect();
            if matches!(kind, OpKind::Input | OpKind::Const | OpKind::Scan | OpKind::Get) {
                assert!(built.is_empty(), "{kind:?} has syntax of its own");
                continue;
            }
            assert_eq!(built.len(), 1, "{kind:?}: exactly one attribute set fits");
            assert_eq!(built[0].kind(), kind);
            assert_eq!(built[0].facts(), kind.facts());
            let attrs: Vec<(String, Attr)> = built[0].attrs().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            assert_eq!(Op::from_parts(kind.name(), &attrs).as_ref(), Ok(&built[0]));
        }
        assert!(Op::from_parts("frobnicate", &[])
            .unwrap_err()
            .contains("unknown op `frobnicate`"));
    }
}
