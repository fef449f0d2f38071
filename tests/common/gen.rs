//! A random graph generator for the differential fuzzer: a program of
//! small integers (which proptest draws and shrinks) is read as a list of
//! instructions, each adding one op of the IR to a pool of values. Operands
//! are adapted to what the op needs (converted, broadcast, reshaped or
//! reduced), so every program gives a valid graph. Every op of the IR is
//! reachable (see `OPS`), with transposed and sliced operands, shapes with
//! 1s, odd extents (vector tails) and zero-size axes, in f32 and f64.
#![allow(dead_code)]

use wengert::ir::{BinaryOp, CmpOp, NodeId, UnaryOp};
use wengert::{DType, Graph, Op, Tensor};

/// One instruction: the op family, two operand picks and a parameter.
pub type Instr = (u8, u8, u8, u8);

/// The number of op families `build` knows (instruction `k` uses `k % OPS`).
pub const OPS: u8 = 21;

/// Extents drawn for input shapes; 0 is rare (see `input_shape`).
const DIMS: [usize; 6] = [1, 2, 3, 5, 7, 4];

/// An input shape from a parameter: rank 0–3, extents from `DIMS`, and a
/// zero extent when `p` says so (one shape in 16).
pub fn input_shape(p: u16) -> Vec<usize> {
    let rank = (p % 4) as usize;
    let mut shape: Vec<usize> = (0..rank)
        .map(|i| DIMS[(p as usize >> (2 + 3 * i)) % DIMS.len()])
        .collect();
    if p >> 12 == 15 && rank > 0 {
        shape[0] = 0;
    }
    shape
}

struct Builder {
    g: Graph,
    pool: Vec<NodeId>,
    dt: DType,
}

impl Builder {
    fn add(&mut self, op: Op, args: &[NodeId]) -> NodeId {
        match self.g.add(op.clone(), args) {
            Ok(id) => id,
            Err(e) => panic!("generator made an invalid `{}`: {e}\n{}", op.name(), self.g),
        }
    }

    fn shape(&self, v: NodeId) -> Vec<usize> {
        self.g.ty(v).shape.clone()
    }

    fn pick(&self, i: u8) -> NodeId {
        self.pool[i as usize % self.pool.len()]
    }

    /// `v` as a float of the graph's dtype.
    fn float(&mut self, v: NodeId) -> NodeId {
        if self.g.ty(v).dtype == self.dt {
            v
        } else {
            self.add(Op::Convert { to: self.dt }, &[v])
        }
    }

    /// `v` as a float of shape `shape`: itself, a broadcast, a reshape, or
    /// its sum broadcast.
    fn adapt(&mut self, v: NodeId, shape: &[usize]) -> NodeId {
        let v = self.float(v);
        let vs = self.shape(v);
        if vs == shape {
            return v;
        }
        if wengert::ir::infer::broadcast_compatible(&vs, shape) {
            return self.add(Op::Broadcast { shape: shape.to_vec() }, &[v]);
        }
        if wengert::ir::num_elements(&vs) == wengert::ir::num_elements(shape) {
            return self.add(Op::Reshape { shape: shape.to_vec() }, &[v]);
        }
        let s = self.add(
            Op::ReduceSum {
                axes: (0..vs.len()).collect(),
            },
            &[v],
        );
        if shape.is_empty() {
            s
        } else {
            self.add(Op::Broadcast { shape: shape.to_vec() }, &[s])
        }
    }

    /// `v` with rank at least 1 (a scalar becomes `[1]`).
    fn at_least_1d(&mut self, v: NodeId) -> NodeId {
        if self.g.ty(v).rank() == 0 {
            self.add(Op::Reshape { shape: vec![1] }, &[v])
        } else {
            v
        }
    }

    /// `v` as a matrix: itself if 2-D, else its elements as one row.
    fn matrix(&mut self, v: NodeId) -> NodeId {
        let v = self.float(v);
        let s = self.shape(v);
        if s.len() == 2 {
            v
        } else {
            let n = wengert::ir::num_elements(&s);
            self.add(Op::Reshape { shape: vec![1, n] }, &[v])
        }
    }

    /// A permutation of `rank` axes chosen by `p`.
    fn perm(rank: usize, p: u8) -> Vec<usize> {
        let mut perm: Vec<usize> = (0..rank).collect();
        let mut q = p as usize;
        for i in (1..rank).rev() {
            perm.swap(i, q % (i + 1));
            q /= i + 1;
        }
        perm
    }

    /// A subset of `rank` axes chosen by `p` (sorted).
    fn axes(rank: usize, p: u8) -> Vec<usize> {
        (0..rank).filter(|a| p >> a & 1 == 1).collect()
    }

    /// A sliced or transposed view of `v` chosen by `p` (or `v` itself).
    fn view(&mut self, v: NodeId, p: u8) -> NodeId {
        let s = self.shape(v);
        match p % 3 {
            0 if s.len() >= 2 => self.add(
                Op::Transpose {
                    perm: Self::perm(s.len(), p / 3 + 1).into_iter().rev().collect(),
                },
                &[v],
            ),
            1 if s.iter().any(|&d| d >= 2) => {
                let start: Vec<usize> = s.iter().map(|&d| usize::from(d >= 2)).collect();
                let end: Vec<usize> = s.clone();
                self.add(Op::Slice { start, end }, &[v])
            }
            _ => v,
        }
    }

    fn step(&mut self, (kind, a, b, p): Instr) {
        let x = self.pick(a);
        let y = self.pick(b);
        let new = match kind % OPS {
            0 | 19 => {
                let u = UnaryOp::ALL[p as usize % UnaryOp::ALL.len()];
                let x = self.float(x);
                self.add(Op::Unary(u), &[x])
            }
            1 => {
                let op = BinaryOp::ALL[p as usize % BinaryOp::ALL.len()];
                let x = self.float(x);
                let s = self.shape(x);
                let y = self.adapt(y, &s);
                self.add(Op::Binary(op), &[x, y])
            }
            2 => {
                let exponent = [2.0, 3.0, -1.0, 0.5, 1.5, -2.0, 0.0, 1.0][p as usize % 8];
                let x = self.float(x);
                self.add(Op::Pow { exponent }, &[x])
            }
            3 => {
                let c = CmpOp::ALL[p as usize % CmpOp::ALL.len()];
                let x = self.float(x);
                let s = self.shape(x);
                let y = self.adapt(y, &s);
                let cond = self.add(Op::Compare(c), &[x, y]);
                self.pool.push(cond);
                let other = if p & 8 != 0 {
                    y
                } else {
                    self.add(Op::Unary(UnaryOp::Neg), &[x])
                };
                self.add(Op::Select, &[cond, x, other])
            }
            4 => {
                let to = match (self.g.ty(x).dtype, p % 3) {
                    (DType::Bool, _) => self.dt,
                    (_, 0) => DType::Bool,
                    (DType::F32, _) => DType::F64,
                    (_, _) => DType::F32,
                };
                self.add(Op::Convert { to }, &[x])
            }
            5 => {
                let s = self.shape(x);
                let lead = [1usize, 2, 3][p as usize % 3];
                let mut shape = vec![lead];
                shape.extend(s.iter().map(|&d| if d == 1 && p & 4 != 0 { 3 } else { d }));
                self.add(Op::Broadcast { shape }, &[x])
            }
            6 => {
                let s = self.shape(x);
                let n = wengert::ir::num_elements(&s);
                let shape = match p % 3 {
                    0 => vec![n],
                    1 if n.is_multiple_of(2) && n > 0 => vec![n / 2, 2],
                    1 => vec![1, n],
                    _ => vec![n, 1],
                };
                self.add(Op::Reshape { shape }, &[x])
            }
            7 => {
                let rank = self.g.ty(x).rank();
                self.add(
                    Op::Transpose {
                        perm: Self::perm(rank, p),
                    },
                    &[x],
                )
            }
            8 | 9 => {
                let x = self.float(x);
                let axes = Self::axes(self.g.ty(x).rank(), p);
                if kind % OPS == 8 {
                    self.add(Op::ReduceSum { axes }, &[x])
                } else {
                    self.add(Op::ReduceMax { axes }, &[x])
                }
            }
            10 => {
                // [m,k] x [k,n], either operand possibly a transposed view.
                let xm = self.matrix(x);
                let xm = if p & 1 != 0 {
                    let t = self.add(Op::Transpose { perm: vec![1, 0] }, &[xm]);
                    self.add(Op::Transpose { perm: vec![1, 0] }, &[t])
                } else {
                    xm
                };
                let k = self.shape(xm)[1];
                let n = [1usize, 2, 3, 5][(p as usize >> 1) % 4];
                let ym = if p & 8 != 0 {
                    let yt = self.adapt(y, &[n, k]);
                    self.add(Op::Transpose { perm: vec![1, 0] }, &[yt])
                } else {
                    self.adapt(y, &[k, n])
                };
                if p & 16 != 0 {
                    // The ordered product, onto an accumulator, its
                    // contraction summed in one run or in runs of one.
                    let m = self.shape(xm)[0];
                    let c = self.adapt(y, &[m, n]);
                    let blocks = if p & 32 != 0 && k > 0 { k } else { 1 };
                    self.add(Op::MatMulAcc { blocks }, &[c, xm, ym])
                } else {
                    self.add(Op::MatMul, &[xm, ym])
                }
            }
            11 => {
                // Batched [b,m,k] x [b,k,n].
                let bt = [1usize, 2, 3][p as usize % 3];
                let xs = self.shape(x);
                let k = xs.last().copied().unwrap_or(1).max(1);
                let xb = self.adapt(x, &[bt, 2, k]);
                let n = [1usize, 3][(p as usize >> 2) % 2];
                let yb = self.adapt(y, &[bt, k, n]);
                self.add(Op::MatMul, &[xb, yb])
            }
            12 => {
                let s = self.shape(x);
                let start: Vec<usize> = s.iter().map(|&d| (p as usize) % (d + 1)).collect();
                let end: Vec<usize> = s
                    .iter()
                    .zip(&start)
                    .map(|(&d, &st)| st + (p as usize >> 3) % (d - st + 1))
                    .collect();
                self.add(Op::Slice { start, end }, &[x])
            }
            13 => {
                let rank = self.g.ty(x).rank();
                let low: Vec<usize> = (0..rank).map(|i| (p as usize >> i) % 3).collect();
                let high: Vec<usize> = (0..rank).map(|i| (p as usize >> (i + 2)) % 2).collect();
                let x = self.float(x);
                self.add(Op::Pad { low, high }, &[x])
            }
            14 => {
                let x = self.float(x);
                let x = self.at_least_1d(x);
                let s = self.shape(x);
                let axis = p as usize % s.len();
                let mut ys = s.clone();
                ys[axis] = [1usize, 2, 0][(p as usize >> 2) % 3];
                let y = self.adapt(y, &ys);
                self.add(Op::Concat { axis }, &[x, y])
            }
            15 => {
                // Softmax cross-entropy of logits read through a view.
                let x = self.float(x);
                let x = self.at_least_1d(x);
                let z = self.view(x, p);
                let s = self.shape(z);
                let t = self.adapt(y, &s);
                let t = if p & 16 != 0 {
                    self.add(Op::Unary(UnaryOp::Abs), &[t])
                } else {
                    t
                };
                self.add(Op::SoftmaxCrossEntropy, &[z, t])
            }
            16 => {
                // A small constant tensor of x's shape, or a scalar.
                let s = self.shape(x);
                let n = wengert::ir::num_elements(&s);
                let value = if n <= 16 && p & 1 == 0 {
                    let data: Vec<f64> = (0..n)
                        .map(|i| [0.5, -1.25, 2.0, -0.0, 3.0][(i + p as usize) % 5])
                        .collect();
                    Tensor::from_vec(s, data)
                        .expect("shape and data agree")
                        .convert(self.dt)
                } else {
                    let v = [0.0, -0.0, 1.0, 2.5, -3.0, 1e-3, 1e4][p as usize % 7];
                    Tensor::scalar(self.dt, v)
                };
                let c = self.add(Op::Const { value }, &[]);
                let cs = self.shape(c);
                let x = self.adapt(x, &cs);
                let op = BinaryOp::ALL[(p as usize >> 1) % BinaryOp::ALL.len()];
                self.add(Op::Binary(op), &[x, c])
            }
            17 => {
                // Select on a bool already in the pool, if any.
                let cond = self
                    .pool
                    .iter()
                    .rev()
                    .copied()
                    .find(|&v| self.g.ty(v).dtype == DType::Bool);
                match cond {
                    Some(c) => {
                        let s = self.shape(c);
                        let a = self.adapt(x, &s);
                        let b2 = self.adapt(y, &s);
                        self.add(Op::Select, &[c, a, b2])
                    }
                    None => {
                        let x = self.float(x);
                        self.add(Op::Unary(UnaryOp::Relu), &[x])
                    }
                }
            }
            18 => {
                // A view (transpose or slice) then an elementwise op on it.
                let x = self.float(x);
                let v = self.view(x, p);
                let s = self.shape(v);
                let y = self.adapt(y, &s);
                self.add(Op::Binary(BinaryOp::ALL[p as usize % BinaryOp::ALL.len()]), &[v, y])
            }
            20 => {
                // A loop of 0, 1 or 3 steps, forward or reversed:
                // h' = u(h·c + x_t), y_t = Σ h' (u a unary op), carry and
                // const of x's shape, xs stacked.
                let length = [0usize, 1, 3][p as usize % 3];
                let reverse = p & 4 != 0;
                let h = self.float(x);
                let hs = self.shape(h);
                let c = self.adapt(y, &hs);
                let mut stacked = vec![length];
                stacked.extend_from_slice(&hs);
                let xs = self.adapt(x, &stacked);
                let ty = wengert::TensorType::new(self.dt, hs.clone());
                let mut body = Graph::new("step");
                let bc = body.add_input("c", ty.clone(), true).expect("fresh names");
                // Up to 7 more consts (the same operand), each `h·cᵢ` added
                // in: their adjoints make the backward body's buffers
                // outnumber what a function preloads (16), the case where
                // an inlined body's pointer loads were once hoisted out of
                // the loop.
                let extra = (b as usize >> 5) % 8;
                let extra_consts: Vec<NodeId> = (0..extra)
                    .map(|i| body.add_input(&format!("c{i}"), ty.clone(), true).expect("fresh names"))
                    .collect();
                let bh = body.add_input("h", ty.clone(), true).expect("fresh names");
                let bx = body.add_input("x", ty.clone(), true).expect("fresh names");
                // Not sin or cos: a loop iterating them on arguments near
                // 10⁵ (the const can be a large sum) turns GEMM's last bit
                // into any value in [−1, 1] three times over, past what
                // the perturbed reference can bound (such graphs without
                // loops are generated and checked).
                let tame: Vec<UnaryOp> = UnaryOp::ALL
                    .into_iter()
                    .filter(|u| !matches!(u, UnaryOp::Sin | UnaryOp::Cos))
                    .collect();
                let u = tame[(p as usize >> 3) % tame.len()];
                let mut m = body.add(Op::Binary(BinaryOp::Mul), &[bh, bc]).expect("valid");
                for &ci in &extra_consts {
                    let mi = body.add(Op::Binary(BinaryOp::Mul), &[bh, ci]).expect("valid");
                    m = body.add(Op::Binary(BinaryOp::Add), &[m, mi]).expect("valid");
                }
                let s2 = body.add(Op::Binary(BinaryOp::Add), &[m, bx]).expect("valid");
                let n = body.add(Op::Unary(u), &[s2]).expect("valid");
                let axes: Vec<usize> = (0..hs.len()).collect();
                let yt = body.add(Op::ReduceSum { axes }, &[n]).expect("valid");
                body.add_output("next", n).expect("fresh names");
                body.add_output("y", yt).expect("fresh names");
                let scan = wengert::ir::Scan {
                    body,
                    length,
                    reverse,
                    unroll: 1 + (p as usize >> 6) % 3,
                    n_consts: 1 + extra,
                    n_carry: 1,
                    regen: None,
                };
                let results = scan.result_types();
                let mut operands = vec![c; 1 + extra];
                operands.extend([h, xs]);
                let node = self.add(Op::Scan(std::sync::Arc::new(scan)), &operands);
                let last = self.add(
                    Op::Get {
                        index: 0,
                        ty: results[0].clone(),
                    },
                    &[node],
                );
                self.pool.push(last);
                self.add(
                    Op::Get {
                        index: 1,
                        ty: results[1].clone(),
                    },
                    &[node],
                )
            }
            _ => unreachable!("kind % OPS < OPS"),
        };
        self.pool.push(new);
    }
}

/// Builds the graph of a program: inputs of the given shapes (f64 or f32),
/// one node or a few per instruction, and the last `outputs` values (all
/// float) as outputs.
pub fn build(f64: bool, shapes: &[Vec<usize>], program: &[Instr], outputs: usize) -> Graph {
    let dt = if f64 { DType::F64 } else { DType::F32 };
    let mut b = Builder {
        g: Graph::new("random"),
        pool: Vec::new(),
        dt,
    };
    for (i, s) in shapes.iter().enumerate() {
        let id =
            b.g.add_input(&format!("x{i}"), wengert::TensorType::new(dt, s.clone()), true)
                .expect("fresh input names");
        b.pool.push(id);
    }
    for &instr in program {
        b.step(instr);
    }
    let mut outs: Vec<NodeId> = Vec::new();
    for v in b.pool.clone().into_iter().rev() {
        if outs.len() >= outputs.max(1) {
            break;
        }
        let v = b.float(v);
        if !outs.contains(&v) {
            outs.push(v);
        }
    }
    for (i, &v) in outs.iter().enumerate() {
        b.g.add_output(&format!("o{i}"), v).expect("fresh output names");
    }
    b.g
}
