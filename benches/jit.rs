//! Benchmarks of the JIT (issue: Cranelift JIT and runtime).
//!
//! - `seed_grad/*`: value-and-gradient latency of seed cases 1–4, against
//!   a hand-written closed form (inlined, and out of line through the
//!   packed entry's ABI), the cost of an out-of-line call that does no
//!   math (`call_floor`), and a dynamic tape engine built like the seed's
//!   case 10.
//! - `mlp_step/*`: 784 → 256 ReLU → 10 softmax cross-entropy, f32, value
//!   and gradient of all four parameters, batch 32 / 128 / 1024, and the
//!   time its GEMM calls alone take (the same products as a graph).
//! - `compile/*`: compile time of the MLP's value_and_grad.
//!
//! Run with `cargo bench --bench jit`. Single-threaded by construction.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::cell::RefCell;
use std::hint::black_box;
use std::rc::Rc;
use wengert::{
    cases, models, value_and_grad, value_and_grad_with_seeds, DType, GradFn, GraphBuilder, Options, Seed, Tensor,
};

// ----- a dynamic tape engine, as in the seed's case 10 -----

/// Maps the adjoint of a node to its contribution to one parent.
type Pullback = Box<dyn Fn(f64) -> f64>;

struct VarInner {
    value: f64,
    grad: RefCell<f64>,
    parents: Vec<(Var, Pullback)>,
}

#[derive(Clone)]
struct Var(Rc<VarInner>);

impl Var {
    fn new(value: f64) -> Var {
        Var(Rc::new(VarInner {
            value,
            grad: RefCell::new(0.0),
            parents: vec![],
        }))
    }
    fn value(&self) -> f64 {
        self.0.value
    }
    fn grad(&self) -> f64 {
        *self.0.grad.borrow()
    }
    fn backward(&self) {
        let mut topo: Vec<Var> = Vec::new();
        let mut seen: Vec<*const VarInner> = Vec::new();
        fn visit(v: &Var, topo: &mut Vec<Var>, seen: &mut Vec<*const VarInner>) {
            let p = Rc::as_ptr(&v.0);
            if seen.contains(&p) {
                return;
            }
            seen.push(p);
            for (parent, _) in &v.0.parents {
                visit(parent, topo, seen);
            }
            topo.push(v.clone());
        }
        visit(self, &mut topo, &mut seen);
        *self.0.grad.borrow_mut() = 1.0;
        for v in topo.iter().rev() {
            let g = v.grad();
            for (parent, pullback) in &v.0.parents {
                *parent.0.grad.borrow_mut() += pullback(g);
            }
        }
    }
}

fn t_add(a: &Var, b: &Var) -> Var {
    Var(Rc::new(VarInner {
        value: a.value() + b.value(),
        grad: RefCell::new(0.0),
        parents: vec![(a.clone(), Box::new(|g| g)), (b.clone(), Box::new(|g| g))],
    }))
}

fn t_mul(a: &Var, b: &Var) -> Var {
    let (av, bv) = (a.value(), b.value());
    Var(Rc::new(VarInner {
        value: av * bv,
        grad: RefCell::new(0.0),
        parents: vec![
            (a.clone(), Box::new(move |g| g * bv)),
            (b.clone(), Box::new(move |g| g * av)),
        ],
    }))
}

fn t_unary(a: &Var, f: fn(f64) -> f64, df: fn(f64) -> f64) -> Var {
    let av = a.value();
    Var(Rc::new(VarInner {
        value: f(av),
        grad: RefCell::new(0.0),
        parents: vec![(a.clone(), Box::new(move |g| g * df(av)))],
    }))
}

fn t_const(v: f64) -> Var {
    Var::new(v)
}

/// Tape versions of cases 1–4: (value, gradients).
fn tape_case(case: usize, x1: f64, x2: f64) -> (f64, f64, f64) {
    let a = Var::new(x1);
    let b = Var::new(x2);
    let y = match case {
        1 => {
            let v1 = t_mul(&a, &a);
            let v2 = t_add(&t_const(1.0), &v1);
            t_unary(&v2, f64::ln, |v| 1.0 / v)
        }
        2 => {
            let v1 = t_mul(&a, &a);
            t_add(&v1, &t_unary(&v1, f64::sin, f64::cos))
        }
        3 => t_add(&t_mul(&a, &b), &t_unary(&a, f64::sin, f64::cos)),
        _ => {
            // u·f with u = (1, 1): y1 + y2 as one scalar.
            let y1 = t_mul(&a, &b);
            let y2 = t_add(&a, &t_mul(&b, &b));
            t_add(&y1, &y2)
        }
    };
    y.backward();
    (y.value(), a.grad(), b.grad())
}

/// Hand-written closed forms of cases 1–4.
fn closed_form(case: usize, x: f64, x2: f64) -> (f64, f64, f64) {
    match case {
        1 => {
            let v2 = 1.0 + x * x;
            (v2.ln(), 2.0 * x / v2, 0.0)
        }
        2 => {
            let v1 = x * x;
            (v1 + v1.sin(), 2.0 * x * (1.0 + v1.cos()), 0.0)
        }
        3 => (x * x2 + x.sin(), x2 + x.cos(), x),
        _ => (x * x2 + x + x2 * x2, x2 + 1.0, x + 2.0 * x2),
    }
}

/// The closed forms behind the packed entry's ABI (`fn(*const f64, *mut
/// f64)`, called through a pointer): what LLVM makes of the derivative
/// when, like JIT code, it cannot be inlined into the caller.
mod closed_out_of_line {
    macro_rules! packed {
        ($name:ident, $case:literal, $n:literal, $m:literal) => {
            pub unsafe extern "C" fn $name(x: *const f64, out: *mut f64) {
                // SAFETY: the caller passes $n inputs and room for $m outputs.
                let (x, out) = unsafe {
                    (
                        std::slice::from_raw_parts(x, $n),
                        std::slice::from_raw_parts_mut(out, $m),
                    )
                };
                let (y, g1, g2) = super::closed_form($case, x[0], x[$n - 1]);
                out[0] = y;
                match $case {
                    // Case 4 returns y1, y2 and the two gradient entries.
                    4 => {
                        out[0] = x[0] * x[1];
                        out[1] = x[0] + x[1] * x[1];
                        out[2] = g1;
                        out[3] = g2;
                    }
                    _ => {
                        out[1] = g1;
                        if $m > 2 {
                            out[2] = g2;
                        }
                    }
                }
            }
        };
    }
    /// No math at all, the same ABI: the cost of the out-of-line call
    /// itself, a floor under any JIT entry point.
    pub unsafe extern "C" fn floor(x: *const f64, out: *mut f64) {
        for i in 0..4 {
            // SAFETY: the caller passes two inputs and room for four outputs.
            unsafe { *out.add(i) = *x.add(i.min(1)) };
        }
    }
    packed!(case1, 1, 1, 2);
    packed!(case2, 2, 1, 2);
    packed!(case3, 3, 2, 3);
    packed!(case4, 4, 2, 4);
}

fn seed_grad(c: &mut Criterion) {
    let builders = [
        cases::case01_scalar,
        cases::case02_shared,
        cases::case03_two_inputs,
        cases::case04_vjp,
    ];
    for (i, build) in builders.iter().enumerate() {
        let case = i + 1;
        let g = build().unwrap();
        let wrt: Vec<&str> = g.inputs().iter().map(|i| i.name.as_str()).collect();
        let seeds: Vec<(&str, Seed)> = g.outputs().iter().map(|o| (o.name.as_str(), Seed::One)).collect();
        let f = value_and_grad_with_seeds(&g, &wrt, &seeds, &Options::default()).unwrap();
        let inputs: Vec<Tensor> = g
            .inputs()
            .iter()
            .enumerate()
            .map(|(k, _)| Tensor::scalar_f64(0.7 + k as f64))
            .collect();
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let mut outs = f.call(&refs).unwrap();
        let mut group = c.benchmark_group(format!("seed_grad/case{case}"));
        group.bench_function("jit_call_into", |b| {
            b.iter(|| f.call_into(black_box(&refs), &mut outs).unwrap())
        });
        let mut bound = f.joint().bind(inputs.clone()).unwrap();
        group.bench_function("jit_bound", |b| {
            b.iter(|| {
                bound.input_mut::<f64>(0).unwrap()[0] = black_box(0.7);
                bound.run().unwrap();
                black_box(bound.outputs()[1].as_slice::<f64>().unwrap()[0])
            })
        });
        // The packed scalar entry: `[f64; N] -> [f64; M]`, checked once.
        macro_rules! bench_scalar {
            ($n:literal, $m:literal) => {{
                let sf = f.joint().scalar_fn::<f64, $n, $m>().unwrap();
                group.bench_function("jit_scalar_fn", |b| {
                    b.iter(|| {
                        let mut x = [0.0; $n];
                        x[0] = black_box(0.7);
                        if $n > 1 {
                            x[$n - 1] = black_box(1.7);
                        }
                        // Read each output as a scalar (a caller reading the
                        // whole array with vector loads would stall on
                        // store forwarding from the callee's scalar stores).
                        let out = sf.call(x);
                        for v in out {
                            black_box(v);
                        }
                    })
                });
            }};
        }
        match (g.inputs().len(), f.joint().outputs().len()) {
            (1, 2) => bench_scalar!(1, 2),
            (2, 3) => bench_scalar!(2, 3),
            (2, 4) => bench_scalar!(2, 4),
            (n, m) => panic!("case {case}: add a scalar_fn arity ({n} inputs, {m} outputs)"),
        }
        let packed: unsafe extern "C" fn(*const f64, *mut f64) = match case {
            1 => closed_out_of_line::case1,
            2 => closed_out_of_line::case2,
            3 => closed_out_of_line::case3,
            _ => closed_out_of_line::case4,
        };
        let m = f.joint().outputs().len();
        let floor: unsafe extern "C" fn(*const f64, *mut f64) = closed_out_of_line::floor;
        for (label, entry) in [("closed_form_out_of_line", packed), ("call_floor", floor)] {
            group.bench_function(label, |b| {
                let entry = black_box(entry);
                b.iter(|| {
                    let x = [black_box(0.7), black_box(1.7)];
                    let mut out = [0.0f64; 4];
                    // SAFETY: two inputs (cases with one read only the
                    // first) and room for four outputs.
                    unsafe { entry(x.as_ptr(), out.as_mut_ptr()) };
                    for v in &out[..m] {
                        black_box(*v);
                    }
                })
            });
        }
        group.bench_function("closed_form", |b| {
            b.iter(|| closed_form(case, black_box(0.7), black_box(1.7)))
        });
        group.bench_function("tape", |b| b.iter(|| tape_case(case, black_box(0.7), black_box(1.7))));
        group.finish();
    }
}

fn mlp_inputs(f: &GradFn) -> Vec<Tensor> {
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5
    };
    f.graph()
        .inputs()
        .iter()
        .map(|i| {
            let n = i.ty.num_elements();
            let data: Vec<f32> = if i.name == "t" {
                (0..n)
                    .map(|j| if j % 10 == (j / 10) % 10 { 1.0 } else { 0.0 })
                    .collect()
            } else {
                (0..n).map(|_| (next() * 0.1) as f32).collect()
            };
            Tensor::from_vec(i.ty.shape.clone(), data).unwrap()
        })
        .collect()
}

fn mlp_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("mlp_step");
    group.sample_size(30);
    for batch in [32, 128, 1024] {
        let g = models::mlp(batch, 784, 256, 10, DType::F32, false).unwrap();
        let f = value_and_grad(&g, &models::MLP_PARAMS, &Options::default().with_threads(1)).unwrap();
        let inputs = mlp_inputs(&f);
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let mut outs = f.call(&refs).unwrap();
        group.bench_with_input(BenchmarkId::new("value_and_grad", batch), &batch, |b, _| {
            b.iter(|| f.call_into(black_box(&refs), &mut outs).unwrap())
        });
        // The step's three GEMMs of real size, alone: X·W1 [B,784]x[784,256],
        // Xᵀ·Ḡ1 [784,B]x[B,256], and the small ones of layer 2.
        let gb = GraphBuilder::new("gemms");
        let x = gb.input("x", DType::F32, &[batch, 784]);
        let w1 = gb.input("W1", DType::F32, &[784, 256]);
        let g1 = gb.input("g1", DType::F32, &[batch, 256]);
        let w2 = gb.input("W2", DType::F32, &[256, 10]);
        let g2 = gb.input("g2", DType::F32, &[batch, 10]);
        let gg = gb
            .build(&[
                ("h", x.matmul(w1)),
                ("dw1", x.t().matmul(g1)),
                ("z", g1.matmul(w2)),
                ("dw2", g1.t().matmul(g2)),
                ("dh", g2.matmul(w2.t())),
            ])
            .unwrap();
        let exe = wengert::compile(&gg, &Options::default().with_threads(1)).unwrap();
        let ginputs: Vec<Tensor> = gg.inputs().iter().map(|i| Tensor::full(i.ty.clone(), 0.01)).collect();
        let grefs: Vec<&Tensor> = ginputs.iter().collect();
        let mut gouts = exe.call(&grefs).unwrap();
        group.bench_with_input(BenchmarkId::new("gemms_only", batch), &batch, |b, _| {
            b.iter(|| exe.call_into(black_box(&grefs), &mut gouts).unwrap())
        });
    }
    group.finish();
}

fn compile_time(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(20);
    let g = models::mlp(128, 784, 256, 10, DType::F32, false).unwrap();
    group.bench_function("mlp_value_and_grad", |b| {
        b.iter(|| value_and_grad(black_box(&g), &models::MLP_PARAMS, &Options::default()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, seed_grad, mlp_step, compile_time);
criterion_main!(benches);
