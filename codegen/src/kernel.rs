//! Loop kernels: the unit of generated loop code.
//!
//! A kernel iterates over a static `shape`; each operand and each store is
//! addressed with one stride per axis (0 for broadcasting, any value for a
//! transposed or sliced view), and the body is a straight-line expression
//! DAG over scalars of the operands. One node of the graph lowers to one
//! kernel (or a few, for reductions and softmax cross-entropy); fusion will
//! merge several nodes' bodies into one kernel with no intermediate buffer.
//!
//! Stores either overwrite (`Combine::Store`) or accumulate
//! (`Combine::Add`, `Combine::Max`); an accumulating store with stride 0
//! on the innermost axis is a reduction, kept in vector registers across
//! the inner loop.
//!
//! A kernel is backend-neutral: it names its memory by *buffer slots* and
//! its broadcast scalars by *scalar slots*, never by a backend's values.
//! [`Bound`] pairs a kernel with what its slots stand for in one function
//! (Cranelift values, for the CLIF emitter in `lower/loops.rs`), so the
//! same kernel can be emitted inline, or as a function of its own whose
//! slots are loaded from an argument array.

use wengert_ir::{BinaryOp, CmpOp, DType, UnaryOp};

/// Where an operand's elements come from.
#[derive(Clone, Copy, Debug)]
pub enum Src {
    /// Memory at `buffer + offset·size_of(dtype)`, addressed with strides.
    Mem { buf: usize, offset: i64 },
    /// One scalar, the same for every element (a broadcast register):
    /// scalar slot `i`.
    Splat(usize),
}

#[derive(Clone, Debug)]
pub struct KOperand {
    pub src: Src,
    /// Element strides per kernel axis.
    pub strides: Vec<isize>,
    pub dtype: DType,
}

/// One scalar operation of a kernel body; operands index earlier exprs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KExpr {
    /// Element of operand `i`.
    Operand(usize),
    Const(f64),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    Pow(f64, usize),
    Cmp(CmpOp, usize, usize),
    Select(usize, usize, usize),
    Convert(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    Store,
    Add,
    /// Maximum, propagating NaN.
    Max,
}

#[derive(Clone, Debug)]
pub struct KStore {
    /// The buffer slot written.
    pub buf: usize,
    pub offset: i64,
    pub strides: Vec<isize>,
    pub dtype: DType,
    /// The expr whose value is stored.
    pub expr: usize,
    pub combine: Combine,
}

#[derive(Clone, Debug, Default)]
pub struct Kernel {
    pub shape: Vec<usize>,
    pub operands: Vec<KOperand>,
    /// Each expr with the dtype of its value.
    pub exprs: Vec<(KExpr, DType)>,
    pub stores: Vec<KStore>,
}

impl Kernel {
    /// The kernel as text, with each buffer slot named by `buffer`:
    ///
    /// ```text
    /// kernel [64, 10] f32
    ///   in0 = input1 +0 strides (10, 1)
    ///   in1 = splat f32
    ///   e2 = mul e0, e1
    ///   arena+256 +0 strides (10, 1) = e2
    /// ```
    pub fn describe(&self, buffer: impl Fn(usize) -> String) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let ints = |v: &[isize]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            out,
            "kernel {:?}{}",
            self.shape,
            self.vector_dtype().map(|d| format!(" {d} vectors")).unwrap_or_default()
        );
        for (i, o) in self.operands.iter().enumerate() {
            let _ = match o.src {
                Src::Mem { buf, offset } => writeln!(
                    out,
                    "  in{i}: {} = {} +{offset} strides ({})",
                    o.dtype,
                    buffer(buf),
                    ints(&o.strides)
                ),
                Src::Splat(_) => writeln!(out, "  in{i}: {} = splat", o.dtype),
            };
        }
        for (i, (e, d)) in self.exprs.iter().enumerate() {
            let rhs = match e {
                KExpr::Operand(k) => format!("in{k}"),
                KExpr::Const(v) => format!("const {v:?}"),
                KExpr::Unary(u, a) => format!("{} e{a}", u.name()),
                KExpr::Binary(b, x, y) => format!("{} e{x}, e{y}", b.name()),
                KExpr::Pow(p, a) => format!("pow[exponent={p:?}] e{a}"),
                KExpr::Cmp(c, x, y) => format!("{} e{x}, e{y}", c.name()),
                KExpr::Select(c, x, y) => format!("select e{c}, e{x}, e{y}"),
                KExpr::Convert(a) => format!("convert e{a}"),
            };
            let _ = writeln!(out, "  e{i}: {d} = {rhs}");
        }
        for s in &self.stores {
            let how = match s.combine {
                Combine::Store => "=",
                Combine::Add => "+=",
                Combine::Max => "max=",
            };
            let _ = writeln!(
                out,
                "  {} +{} strides ({}) {how} e{}",
                buffer(s.buf),
                s.offset,
                ints(&s.strides),
                s.expr
            );
        }
        out
    }

    pub fn new(shape: &[usize]) -> Kernel {
        Kernel {
            shape: shape.to_vec(),
            ..Kernel::default()
        }
    }

    pub fn operand(&mut self, src: Src, strides: Vec<isize>, dtype: DType) -> usize {
        self.operands.push(KOperand { src, strides, dtype });
        self.expr(KExpr::Operand(self.operands.len() - 1), dtype)
    }

    pub fn expr(&mut self, e: KExpr, dtype: DType) -> usize {
        self.exprs.push((e, dtype));
        self.exprs.len() - 1
    }

    pub fn store(&mut self, buf: usize, offset: i64, strides: Vec<isize>, dtype: DType, expr: usize, combine: Combine) {
        self.stores.push(KStore {
            buf,
            offset,
            strides,
            dtype,
            expr,
            combine,
        });
    }

    /// Drops axes of extent 1 and merges adjacent axes that every access
    /// walks contiguously (stride of the outer = stride·extent of the
    /// inner), so a contiguous elementwise kernel is one flat loop.
    pub fn simplify(&mut self) {
        let keep: Vec<usize> = (0..self.shape.len()).filter(|&a| self.shape[a] != 1).collect();
        if keep.len() != self.shape.len() {
            self.shape = keep.iter().map(|&a| self.shape[a]).collect();
            for o in &mut self.operands {
                o.strides = keep.iter().map(|&a| o.strides[a]).collect();
            }
            for s in &mut self.stores {
                s.strides = keep.iter().map(|&a| s.strides[a]).collect();
            }
        }
        let mut a = 0;
        while a + 1 < self.shape.len() {
            let inner = self.shape[a + 1] as isize;
            let mergeable = self.operands.iter().all(|o| o.strides[a] == o.strides[a + 1] * inner)
                && self.stores.iter().all(|s| s.strides[a] == s.strides[a + 1] * inner);
            if mergeable {
                self.shape[a] *= self.shape[a + 1];
                self.shape.remove(a + 1);
                for o in &mut self.operands {
                    o.strides.remove(a);
                }
                for s in &mut self.stores {
                    s.strides.remove(a);
                }
            } else {
                a += 1;
            }
        }
        if self.shape.is_empty() {
            self.shape.push(1);
            for o in &mut self.operands {
                o.strides.push(0);
            }
            for s in &mut self.stores {
                s.strides.push(0);
            }
        }
    }

    /// The body's cost per element: 1 per expr, inline f32 math by the
    /// op's declared cost (it is long). Decides unrolling and whether the
    /// kernel pays for threads.
    pub fn body_cost(&self) -> usize {
        self.exprs
            .iter()
            .map(|(e, d)| match e {
                KExpr::Unary(u, _) if *d == DType::F32 => u.cost() as usize,
                KExpr::Unary(..)
                | KExpr::Operand(_)
                | KExpr::Const(_)
                | KExpr::Binary(..)
                | KExpr::Pow(..)
                | KExpr::Cmp(..)
                | KExpr::Select(..)
                | KExpr::Convert(..) => 1,
            })
            .sum()
    }

    /// Whether an expr calls out of line (f64 transcendentals, fractional
    /// powers), which keeps the kernel scalar.
    pub fn calls_out(e: &KExpr, dtype: DType) -> bool {
        match e {
            KExpr::Unary(u, _) => match u {
                UnaryOp::Exp | UnaryOp::Log | UnaryOp::Sin | UnaryOp::Cos | UnaryOp::Tanh => dtype == DType::F64,
                // No inline version in either precision.
                UnaryOp::Erf | UnaryOp::Expm1 | UnaryOp::Log1p => true,
                UnaryOp::Neg | UnaryOp::Sqrt | UnaryOp::Abs | UnaryOp::Relu => false,
            },
            KExpr::Pow(p, _) => wengert_ir::interp::integer_exponent(*p).is_none() && *p != 0.5,
            KExpr::Operand(_)
            | KExpr::Const(_)
            | KExpr::Binary(..)
            | KExpr::Cmp(..)
            | KExpr::Select(..)
            | KExpr::Convert(_) => false,
        }
    }

    /// The float type the kernel can be vectorized over, if any: every
    /// memory access and float value of one float dtype (or, with f32, bool
    /// masks stored one byte per lane), innermost strides 0 or 1, no
    /// conversions, no out-of-line calls.
    pub fn vector_dtype(&self) -> Option<DType> {
        let last = self.shape.len() - 1;
        let dt = self
            .stores
            .iter()
            .map(|s| s.dtype)
            .chain(self.operands.iter().map(|o| o.dtype))
            .find(|d| d.is_float())?;
        let mem_ok = |d: DType| d == dt || (d == DType::Bool && dt == DType::F32);
        if !dt.is_float() {
            return None;
        }
        let ok_operands = self
            .operands
            .iter()
            .all(|o| mem_ok(o.dtype) && matches!(o.strides[last], 0 | 1));
        let ok_stores = self.stores.iter().all(|s| {
            mem_ok(s.dtype)
                && (s.strides[last] == 1 || (s.strides[last] == 0 && s.combine != Combine::Store && s.dtype == dt))
                && (s.dtype == dt || s.combine == Combine::Store)
        });
        let ok_exprs = self.exprs.iter().all(|(e, d)| {
            (*d == dt || *d == DType::Bool)
                && !Self::calls_out(e, *d)
                && match e {
                    KExpr::Convert(_) => false,
                    KExpr::Const(_) => *d == dt,
                    KExpr::Cmp(_, a, _) => self.exprs[*a].1 == dt,
                    KExpr::Operand(_) | KExpr::Unary(..) | KExpr::Binary(..) | KExpr::Pow(..) | KExpr::Select(..) => {
                        true
                    }
                }
        });
        (ok_operands && ok_stores && ok_exprs).then_some(dt)
    }
}

/// A kernel and what its slots stand for in one function: `bufs[i]` is
/// buffer slot `i`'s base pointer, `scalars[i]` scalar slot `i`'s value.
/// Kernels are built through this (slots are assigned as values come:
/// the same value, the same slot) and dereference to the kernel.
#[derive(Clone, Debug)]
pub struct Bound<V> {
    pub kernel: Kernel,
    pub bufs: Vec<V>,
    pub scalars: Vec<V>,
}

impl<V: Copy + PartialEq> Bound<V> {
    pub fn new(shape: &[usize]) -> Bound<V> {
        Bound {
            kernel: Kernel::new(shape),
            bufs: Vec::new(),
            scalars: Vec::new(),
        }
    }

    fn slot(slots: &mut Vec<V>, v: V) -> usize {
        slots.iter().position(|&s| s == v).unwrap_or_else(|| {
            slots.push(v);
            slots.len() - 1
        })
    }

    /// A memory operand at `ptr + offset` elements; returns its expr.
    pub fn mem(&mut self, ptr: V, offset: i64, strides: Vec<isize>, dtype: DType) -> usize {
        let buf = Self::slot(&mut self.bufs, ptr);
        self.kernel.operand(Src::Mem { buf, offset }, strides, dtype)
    }

    /// A broadcast scalar operand; returns its expr.
    pub fn splat(&mut self, v: V, strides: Vec<isize>, dtype: DType) -> usize {
        let i = Self::slot(&mut self.scalars, v);
        self.kernel.operand(Src::Splat(i), strides, dtype)
    }

    /// Stores expr `expr` at `ptr + offset` elements.
    pub fn store(&mut self, ptr: V, offset: i64, strides: Vec<isize>, dtype: DType, expr: usize, combine: Combine) {
        let buf = Self::slot(&mut self.bufs, ptr);
        self.kernel.store(buf, offset, strides, dtype, expr, combine);
    }
}

impl<V> std::ops::Deref for Bound<V> {
    type Target = Kernel;
    fn deref(&self) -> &Kernel {
        &self.kernel
    }
}

impl<V> std::ops::DerefMut for Bound<V> {
    fn deref_mut(&mut self) -> &mut Kernel {
        &mut self.kernel
    }
}
