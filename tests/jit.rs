//! Tests of the JIT: every op against the interpreter in f32 and f64 on odd
//! sizes (vector tails), broadcasting and every reduction axis; the inline
//! math's error bounds; the seed cases end to end; threads; bad input.

mod common;

use common::Rng;
use wengert::ir::{BinaryOp, CmpOp, UnaryOp};
use wengert::{
    cases, compile, interpret, value_and_grad, value_and_grad_with_seeds, CodegenOptions, DType, Graph, GraphBuilder,
    Options, Seed, Tensor, Var,
};

const SIZES: [usize; 10] = [0, 1, 3, 4, 5, 7, 8, 17, 1000, 4099];

/// Compares JIT and interpreter outputs: NaN where NaN, equal infinities,
/// and finite values within `tol·(1 + |reference|)`.
fn check_jit(g: &Graph, inputs: &[Tensor], tol: f64) {
    let exe = compile(g, &Options::default()).unwrap_or_else(|e| panic!("{}: {e}\n{g}", g.name));
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let got = exe.call(&refs).unwrap();
    let want = interpret(g, inputs).unwrap();
    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_eq!(a.ty(), b.ty());
        for (i, (x, y)) in a.to_f64_vec().iter().zip(b.to_f64_vec()).enumerate() {
            let ok = if y.is_nan() {
                x.is_nan()
            } else if y.is_infinite() {
                *x == y
            } else {
                (x - y).abs() <= tol * (1.0 + y.abs())
            };
            assert!(ok, "{}: output {k}[{i}]: jit {x} vs interpreter {y}\n{g}", g.name);
        }
    }
}

fn tol(d: DType) -> f64 {
    if d == DType::F32 {
        2e-5
    } else {
        1e-12
    }
}

fn random(shape: &[usize], d: DType, rng: &mut Rng, lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape.to_vec(), rng.vec(n, lo, hi)).unwrap().convert(d)
}

/// Builds a graph from `f` over inputs of the given shapes and checks it on
/// random inputs in [lo, hi).
fn check_op(name: &str, d: DType, shapes: &[&[usize]], lo: f64, hi: f64, f: impl for<'b> Fn(&[Var<'b>]) -> Var<'b>) {
    check_op_within(name, d, shapes, lo, hi, tol(d), f)
}

/// [`check_op`] bit for bit.
fn check_exact(name: &str, d: DType, shapes: &[&[usize]], f: impl for<'b> Fn(&[Var<'b>]) -> Var<'b>) {
    check_op_within(name, d, shapes, -1.0, 1.0, 0.0, f)
}

fn check_op_within(
    name: &str,
    d: DType,
    shapes: &[&[usize]],
    lo: f64,
    hi: f64,
    tol: f64,
    f: impl for<'b> Fn(&[Var<'b>]) -> Var<'b>,
) {
    let b = GraphBuilder::new(name);
    let xs: Vec<Var> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| b.input(&format!("x{i}"), d, s))
        .collect();
    let y = f(&xs);
    let g = b.build(&[("y", y)]).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut rng = Rng::new(shapes.iter().map(|s| s.iter().sum::<usize>() as u64).sum::<u64>() + 17);
    let inputs: Vec<Tensor> = shapes.iter().map(|s| random(s, d, &mut rng, lo, hi)).collect();
    check_jit(&g, &inputs, tol);
}

#[test]
fn unary_ops_match_the_interpreter_on_every_size() {
    for d in [DType::F32, DType::F64] {
        for n in SIZES {
            let s: &[&[usize]] = &[&[n]];
            for u in UnaryOp::ALL {
                let (lo, hi) = match u {
                    UnaryOp::Log | UnaryOp::Sqrt => (0.01, 50.0),
                    UnaryOp::Log1p => (-0.99, 50.0),
                    UnaryOp::Exp | UnaryOp::Expm1 => (-80.0, 80.0),
                    UnaryOp::Neg
                    | UnaryOp::Sin
                    | UnaryOp::Cos
                    | UnaryOp::Tanh
                    | UnaryOp::Abs
                    | UnaryOp::Relu
                    | UnaryOp::Erf => (-20.0, 20.0),
                };
                check_op(u.name(), d, s, lo, hi, move |x| unary(x[0], u));
            }
            for p in [2.0, 3.0, -1.0, 0.5, 1.5, 0.0] {
                check_op("pow", d, s, 0.1, 3.0, move |x| x[0].powf(p));
            }
        }
    }
}

fn unary<'b>(x: Var<'b>, u: UnaryOp) -> Var<'b> {
    match u {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.log(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Relu => x.relu(),
        UnaryOp::Erf => x.erf(),
        UnaryOp::Expm1 => x.expm1(),
        UnaryOp::Log1p => x.log1p(),
    }
}

fn binary<'b>(x: Var<'b>, y: Var<'b>, op: BinaryOp) -> Var<'b> {
    match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Max => x.max(y),
        BinaryOp::Min => x.min(y),
    }
}

#[test]
fn binary_compare_and_select_with_broadcasting() {
    for d in [DType::F32, DType::F64] {
        for n in SIZES {
            let shapes: [&[&[usize]]; 4] = [&[&[n], &[n]], &[&[n], &[]], &[&[3, n], &[n]], &[&[n, 3], &[n, 1]]];
            for s in shapes {
                for op in BinaryOp::ALL {
                    check_op(op.name(), d, s, 0.5, 4.0, move |x| binary(x[0], x[1], op));
                }
                for c in CmpOp::ALL {
                    check_op(c.name(), d, s, -1.0, 1.0, move |x| {
                        let cond = match c {
                            CmpOp::Lt => x[0].lt(x[1]),
                            CmpOp::Le => x[0].le(x[1]),
                            CmpOp::Gt => x[0].gt(x[1]),
                            CmpOp::Ge => x[0].ge(x[1]),
                            CmpOp::Eq => x[0].eq(x[0]),
                            CmpOp::Ne => x[0].ne(x[1]),
                        };
                        cond.select(x[0] * 2.0, x[1] + x[0])
                    });
                }
            }
            // Bool outputs and conversions.
            check_op("gt_out", d, &[&[n], &[n]], -1.0, 1.0, |x| x[0].gt(x[1]));
            check_op("convert", d, &[&[n]], -3.0, 3.0, move |x| {
                let other = if d == DType::F32 { DType::F64 } else { DType::F32 };
                x[0].convert(other).convert(d) + x[0].gt_scalar(0.0).convert(d)
            });
        }
    }
}

#[test]
fn nan_and_infinity_semantics_match() {
    for d in [DType::F32, DType::F64] {
        let b = GraphBuilder::new("nan");
        let x = b.input("x", d, &[9]);
        let y = b.input("y", d, &[9]);
        let g = b
            .build(&[
                ("relu", x.relu()),
                ("max", x.max(y)),
                ("min", x.min(y)),
                ("log", x.log()),
                ("exp", x.exp()),
                ("rmax", x.max_over(&[0])),
                ("tanh", x.tanh()),
                ("sqrt", x.sqrt()),
            ])
            .unwrap();
        let nan = f64::NAN;
        let xs = vec![
            nan,
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.0,
            1.0,
            1e-40,
            100.0,
        ];
        let ys = vec![1.0, nan, 0.0, 1.0, nan, -2.0, 1.0, 0.0, f64::INFINITY];
        check_jit(
            &g,
            &[
                Tensor::from_vec(vec![9], xs).unwrap().convert(d),
                Tensor::from_vec(vec![9], ys).unwrap().convert(d),
            ],
            tol(d),
        );
    }
}

#[test]
fn reductions_over_every_axis() {
    for d in [DType::F32, DType::F64] {
        for n in [1, 3, 5, 17, 1000] {
            for axes in [
                vec![0],
                vec![1],
                vec![2],
                vec![0, 1],
                vec![0, 2],
                vec![1, 2],
                vec![0, 1, 2],
            ] {
                let a = axes.clone();
                check_op("reduce_sum", d, &[&[3, n, 2]], -1.0, 1.0, move |x| x[0].sum(&a));
                let a = axes.clone();
                check_op("reduce_max", d, &[&[3, n, 2]], -1.0, 1.0, move |x| x[0].max_over(&a));
                // A reduction of a transposed view.
                check_op("reduce_sum_t", d, &[&[n, 3]], -1.0, 1.0, |x| x[0].t().sum(&[1]));
            }
            check_op("sum_all", d, &[&[n]], -1.0, 1.0, |x| x[0].sum_all());
            check_op("sum_rows_4099", d, &[&[2, 4099]], -1.0, 1.0, |x| x[0].sum(&[1]));
        }
    }
}

#[test]
fn index_ops_matmul_and_softmax_cross_entropy() {
    for d in [DType::F32, DType::F64] {
        for n in [1, 3, 4, 5, 17, 64] {
            check_op("transpose", d, &[&[2, n, 3]], -1.0, 1.0, |x| {
                x[0].transpose(&[2, 0, 1]) * 1.0
            });
            check_op("transpose_out", d, &[&[2, n]], -1.0, 1.0, |x| x[0].t());
            check_op("reshape_of_transpose", d, &[&[2, n]], -1.0, 1.0, |x| {
                x[0].t().reshape(&[2 * n]) + 1.0
            });
            check_op("broadcast_out", d, &[&[n]], -1.0, 1.0, |x| x[0].broadcast_to(&[2, n]));
            check_op("slice", d, &[&[4, n + 2]], -1.0, 1.0, move |x| {
                x[0].slice(&[1, 1], &[3, n + 1]) * 2.0
            });
            check_op("pad", d, &[&[2, n]], -1.0, 1.0, |x| x[0].pad(&[1, 0], &[0, 2]));
            check_op("concat", d, &[&[2, n], &[1, n]], -1.0, 1.0, |x| {
                x[0].builder().concat(&[x[0], x[1], x[0]], 0)
            });
            check_op("concat1", d, &[&[2, n], &[2, 3]], -1.0, 1.0, |x| {
                x[0].builder().concat(&[x[1], x[0]], 1)
            });
            check_op("matmul", d, &[&[3, n], &[n, 5]], -1.0, 1.0, |x| x[0].matmul(x[1]));
            check_op("matmul_at", d, &[&[n, 3], &[n, 5]], -1.0, 1.0, |x| {
                x[0].t().matmul(x[1])
            });
            check_op("matmul_bt", d, &[&[3, n], &[5, n]], -1.0, 1.0, |x| {
                x[0].matmul(x[1].t())
            });
            check_op("batched", d, &[&[2, 3, n], &[2, n, 4]], -1.0, 1.0, |x| {
                x[0].matmul(x[1])
            });
            check_op("linear_relu", d, &[&[n, 6], &[6, 4], &[4]], -1.0, 1.0, |x| {
                x[0].linear(x[1], x[2]).relu()
            });
            check_op("softmax", d, &[&[3, n]], -5.0, 5.0, |x| x[0].softmax(1));
            check_op("xent", d, &[&[n, 7], &[n, 7]], 0.0, 1.0, |x| {
                x[0].softmax_cross_entropy(x[1])
            });
        }
    }
}

#[test]
fn matmul_acc_is_the_interpreter_bit_for_bit_in_every_layout() {
    // The ordered product's result is defined to the bit (one fused
    // multiply-add per product, runs of the contraction last first), in
    // f32 as in f64: transposed operands read in place, an accumulator
    // that is a view, a broadcast or a dying temporary (computed in
    // place), a fused epilogue, and a product large enough to split
    // its columns among threads.
    for d in [DType::F32, DType::F64] {
        for n in [1, 3, 17, 64] {
            let k = 2 * n;
            check_exact("acc", d, &[&[3, 5], &[3, k], &[k, 5]], move |x| {
                x[0].matmul_acc(x[1], x[2], 1)
            });
            check_exact("acc_runs", d, &[&[3, 5], &[3, k], &[k, 5]], move |x| {
                x[0].matmul_acc(x[1], x[2], k / 2)
            });
            check_exact("acc_views", d, &[&[5, 3], &[k, 3], &[5, k]], move |x| {
                x[0].t().matmul_acc(x[1].t(), x[2].t(), 2)
            });
            check_exact("acc_broadcast", d, &[&[], &[n, k], &[k, n]], move |x| {
                x[0].broadcast_to(&[n, n]).matmul_acc(x[1], x[2], k)
            });
            check_exact("acc_in_place", d, &[&[n, 4], &[n, k], &[k, 4]], move |x| {
                // (The memory plan puts the result in the temporary's buffer:
                // a transposed reader does not fuse.)
                (x[0] * 3.0).matmul_acc(x[1], x[2], 1).t() * 0.5
            });
            check_exact("acc_epilogue", d, &[&[4, n], &[4, k], &[k, n]], move |x| {
                x[0].matmul_acc(x[1], x[2], 1).relu() * 2.0 + x[0]
            });
        }
        check_exact("acc_threads", d, &[&[64, 130], &[64, 512], &[512, 130]], |x| {
            x[0].matmul_acc(x[1], x[2], 8)
        });
    }
}

#[test]
fn matmul_acc_operands_are_checked_with_the_users_line() {
    let b = GraphBuilder::new("bad_acc");
    let c = b.input("c", DType::F32, &[2, 3]);
    let a = b.input("a", DType::F32, &[2, 4]);
    let m = b.input("m", DType::F32, &[4, 3]);
    let y = c.matmul_acc(a, m, 3);
    let err = b.build(&[("y", y)]).unwrap_err().to_string();
    assert!(
        err.contains("`blocks` ≥ 1 dividing the contraction extent 4 (1 if it is 0), got 3"),
        "{err}"
    );
    // Many runs of an empty contraction: refused, not a long loop.
    let b = GraphBuilder::new("empty_runs");
    let c = b.input("c", DType::F32, &[2, 3]);
    let a = b.input("a", DType::F32, &[2, 0]);
    let m = b.input("m", DType::F32, &[0, 3]);
    let err = b.build(&[("y", c.matmul_acc(a, m, 1 << 60))]).unwrap_err().to_string();
    assert!(err.contains("extent 0 (1 if it is 0)"), "{err}");
    assert!(err.contains("jit.rs"), "{err}");
    let text = "graph @g(%c: f32[2,3], %a: f32[2,4], %b: f32[4,2]) -> (y: f32[2,3]) {\n  %y: f32[2,3] = matmul_acc[blocks=1] %c, %a, %b\n  return %y\n}\n";
    let err = wengert::ir::parse(text).unwrap_err().to_string();
    assert!(
        err.starts_with("2:") && err.contains("`matmul_acc` needs [m,n], [m,k] x [k,n]"),
        "{err}"
    );
}

// ----- the inline math -----

fn ulp_distance(a: f32, b: f32) -> u64 {
    let ord = |x: f32| {
        let bits = x.to_bits() as i32;
        if bits < 0 {
            -((bits & 0x7fff_ffff) as i64)
        } else {
            bits as i64
        }
    };
    (ord(a) - ord(b)).unsigned_abs()
}

fn math_inputs() -> Vec<f32> {
    let mut rng = Rng::new(2024);
    let mut xs: Vec<f32> = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
        1e-40,
        88.72,
        88.73,
        -87.3,
        -103.0,
        -104.0,
        1e-30,
        0.625,
        -0.625,
        8192.0,
        8193.0,
        -9000.5,
        1e10,
        std::f32::consts::PI,
        std::f32::consts::FRAC_PI_2,
    ];
    // Random bit patterns cover every exponent; uniform draws cover the
    // ranges where the functions are most used.
    for _ in 0..40_000 {
        xs.push(f32::from_bits(rng.next_u64() as u32));
    }
    for _ in 0..40_000 {
        xs.push(rng.uniform(-100.0, 100.0) as f32);
    }
    xs
}

#[test]
fn inline_f32_math_is_within_2_ulp() {
    let xs = math_inputs();
    let n = xs.len();
    type Case = (&'static str, fn(f64) -> f64, fn(Var) -> Var);
    let funcs: [Case; 5] = [
        ("exp", f64::exp, |x| x.exp()),
        ("log", f64::ln, |x| x.log()),
        ("sin", f64::sin, |x| x.sin()),
        ("cos", f64::cos, |x| x.cos()),
        ("tanh", f64::tanh, |x| x.tanh()),
    ];
    for (name, reference, build) in funcs {
        // Vector path (n is not a multiple of 16, so the tail runs too) and
        // the scalar path of a one-element graph.
        let b = GraphBuilder::new(name);
        let x = b.input("x", DType::F32, &[n]);
        let g = b.build(&[("y", build(x))]).unwrap();
        let exe = compile(&g, &Options::default()).unwrap();
        let out = exe.call(&[&Tensor::from_vec(vec![n], xs.clone()).unwrap()]).unwrap();
        let got = out[0].as_slice::<f32>().unwrap();
        let b = GraphBuilder::new(name);
        let x = b.input("x", DType::F32, &[]);
        let scalar_exe = compile(&b.build(&[("y", build(x))]).unwrap(), &Options::default()).unwrap();
        let mut worst = (0u64, 0.0f32);
        for (i, (&x, &y)) in xs.iter().zip(got).enumerate() {
            // Subnormal operands and results are zero when the process
            // flushes them (`WENGERT_DENORMALS=flush`).
            let flushed = wengert::ir::fpenv::flushed::<f32>;
            let want = flushed(reference(flushed(x) as f64) as f32);
            if want.is_nan() {
                assert!(y.is_nan(), "{name}({x:e}) = {y:e}, want NaN");
            } else {
                let d = ulp_distance(y, want);
                assert!(d <= 2, "{name}({x:e}) = {y:e}, want {want:e}: {d} ulp");
                if d > worst.0 {
                    worst = (d, x);
                }
            }
            if i < 200 {
                let s = scalar_exe.call(&[&Tensor::scalar_f32(x)]).unwrap()[0]
                    .as_slice::<f32>()
                    .unwrap()[0];
                assert!(
                    s.to_bits() == y.to_bits() || (s.is_nan() && y.is_nan()),
                    "{name}({x:e}): scalar {s:e} vs vector {y:e}"
                );
            }
        }
    }
}

/// f64 `tanh` is the project's definition (`wengert_ir::math::tanh_f64`,
/// inlined by code generation, its large branch calling `exp`): compiled
/// code equals the interpreter bit for bit on both branches, their
/// boundary, signed zeros, subnormals, the limits and NaN — in a kernel
/// over many elements and as a one-element value.
#[test]
fn f64_tanh_is_the_interpreters_bit_for_bit() {
    let mut rng = Rng::new(65);
    let mut xs: Vec<f64> = vec![
        0.0,
        -0.0,
        f64::from_bits(1),
        -f64::from_bits(12345),
        f64::MIN_POSITIVE,
        0.625,
        -0.625,
        0.624_999_999_999_999_9,
        0.625_000_000_000_000_1,
        19.0,
        22.0,
        400.0,
        -800.0,
        f64::MAX,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    xs.extend((0..3000).map(|_| rng.uniform(-25.0, 25.0)));
    xs.extend((0..3000).map(|_| rng.uniform(-0.7, 0.7)));
    xs.extend((0..2000).map(|_| f64::from_bits(rng.next_u64())));
    // Repeated past the size that runs a kernel in chunks on the pool.
    let xs: Vec<f64> = xs.iter().cycle().take(xs.len() * 40).copied().collect();
    let n = xs.len();
    let b = GraphBuilder::new("tanh64");
    let x = b.input("x", DType::F64, &[n]);
    let g = b.build(&[("t", x.tanh())]).unwrap();
    let input = Tensor::from_vec(vec![n], xs.clone()).unwrap();
    let got = compile(&g, &Options::default().with_threads(2))
        .unwrap()
        .call(&[&input])
        .unwrap();
    let want = interpret(&g, &[input]).unwrap();
    let b = GraphBuilder::new("tanh64_scalar");
    let x = b.input("x", DType::F64, &[]);
    let scalar = compile(&b.build(&[("t", x.tanh())]).unwrap(), &Options::default()).unwrap();
    for (i, ((y, w), &x)) in got[0]
        .as_slice::<f64>()
        .unwrap()
        .iter()
        .zip(want[0].as_slice::<f64>().unwrap())
        .zip(&xs)
        .enumerate()
    {
        let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        assert!(same(*y, *w), "tanh({x:e}): compiled {y:e} vs interpreter {w:e}");
        if i < 500 {
            let s = scalar.call(&[&Tensor::scalar_f64(x)]).unwrap()[0].to_f64_vec()[0];
            assert!(same(s, *w), "tanh({x:e}): one-element {s:e} vs interpreter {w:e}");
        }
    }
}

#[test]
fn f64_math_is_within_1e14_relative() {
    let mut rng = Rng::new(64);
    let xs: Vec<f64> = (0..5000).map(|_| rng.uniform(-30.0, 30.0)).collect();
    let b = GraphBuilder::new("f64math");
    let x = b.input("x", DType::F64, &[xs.len()]);
    let g = b
        .build(&[
            ("e", x.exp()),
            ("l", x.abs().log()),
            ("s", x.sin()),
            ("c", x.cos()),
            ("t", x.tanh()),
        ])
        .unwrap();
    let out = compile(&g, &Options::default())
        .unwrap()
        .call(&[&Tensor::from_vec(vec![xs.len()], xs.clone()).unwrap()])
        .unwrap();
    let refs: [fn(f64) -> f64; 5] = [f64::exp, |v| v.abs().ln(), f64::sin, f64::cos, f64::tanh];
    for (o, f) in out.iter().zip(refs) {
        for (y, &x) in o.as_slice::<f64>().unwrap().iter().zip(&xs) {
            assert!((y - f(x)).abs() <= 1e-14 * f(x).abs(), "{x}: {y} vs {}", f(x));
        }
    }
}

// ----- the seed cases end to end -----

#[test]
fn seed_cases_value_and_grad_through_the_jit() {
    for (file, build) in cases::ALL.iter().take(8) {
        let g = build().unwrap();
        let wrt = g.differentiable_inputs();
        let seeds = cases::seeds(file);
        let f = value_and_grad_with_seeds(&g, &wrt, &seeds, &Options::default()).unwrap();
        let joint = f.graph();
        let inputs = common::random_inputs(joint, &mut Rng::new(8), -1.0, 1.0);
        check_jit(joint, &inputs, 1e-12);
        // The forward and backward halves give the joint's numbers.
        let n_primal = g.inputs().len();
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let all = f.call(&refs).unwrap();
        let (outs, saved) = f.forward(&refs[..n_primal]).unwrap();
        let grads = f.backward(&refs[..n_primal], &saved, &refs[n_primal..]).unwrap();
        for (a, b) in outs.iter().chain(&grads).zip(&all) {
            assert_eq!(a, b, "{file}");
        }
    }
}

#[test]
fn case_gradients_through_the_jit_match_the_seed_formulas() {
    let f = value_and_grad(&cases::case01_scalar().unwrap(), &["x"], &Options::default()).unwrap();
    for x in [-2.0, 0.5, 3.0] {
        let out = f.call(&[&Tensor::scalar_f64(x)]).unwrap();
        assert!((out[1].scalar_value().unwrap() - 2.0 * x / (1.0 + x * x)).abs() < 1e-15);
    }
    let f = value_and_grad(&cases::case03_two_inputs().unwrap(), &["x1", "x2"], &Options::default()).unwrap();
    let out = f.call(&[&Tensor::scalar_f64(2.0), &Tensor::scalar_f64(3.0)]).unwrap();
    assert_eq!(out[1].scalar_value(), Some(3.0 + 2f64.cos()));
    assert_eq!(out[2].scalar_value(), Some(2.0));
}

#[test]
fn scalar_graphs_are_straight_line_register_code() {
    let opts = Options {
        codegen: CodegenOptions {
            keep_text: true,
            ..CodegenOptions::default()
        },
        ..Options::default()
    };
    for build in [
        cases::case01_scalar,
        cases::case02_shared,
        cases::case03_two_inputs,
        cases::case04_vjp,
    ] {
        let g = build().unwrap();
        let wrt: Vec<&str> = g.inputs().iter().map(|i| i.name.as_str()).collect();
        let seeds: Vec<(&str, Seed)> = g.outputs().iter().map(|o| (o.name.as_str(), Seed::One)).collect();
        let f = value_and_grad_with_seeds(&g, &wrt, &seeds, &opts).unwrap();
        let clif = f.joint().clif();
        assert_eq!(f.joint().memory().arena_bytes, 0, "{clif}");
        // One block (f64 transcendentals are calls, not loops): no loops.
        assert_eq!(clif.matches("block").count(), clif.matches("block0").count(), "{clif}");
        assert!(!clif.contains("brif"), "{clif}");
    }
}

#[test]
fn transposed_matmul_operands_are_not_copied() {
    let b = GraphBuilder::new("t");
    let x = b.input("x", DType::F32, &[64, 32]);
    let y = b.input("y", DType::F32, &[64, 16]);
    let w = b.input("w", DType::F32, &[32, 16]);
    let g = b.build(&[("xty", x.t().matmul(y)), ("ywt", y.matmul(w.t()))]).unwrap();
    let exe = compile(&g, &Options::default()).unwrap();
    assert_eq!(exe.memory().arena_bytes, 0, "no copy of a transposed operand");
    let mut rng = Rng::new(1);
    let inputs = common::random_inputs(&g, &mut rng, -1.0, 1.0);
    check_jit(&g, &inputs, 1e-5);
}

#[test]
fn one_executable_called_from_many_threads() {
    let b = GraphBuilder::new("mlp");
    let x = b.data("x", DType::F32, &[16, 8]);
    let t = b.data("t", DType::F32, &[16, 4]);
    let w = b.input("w", DType::F32, &[8, 4]);
    let g = b
        .build(&[("loss", x.matmul(w).tanh().softmax_cross_entropy(t))])
        .unwrap();
    let f = value_and_grad(&g, &["w"], &Options::default()).unwrap();
    let f = &f;
    std::thread::scope(|s| {
        for k in 0..4u64 {
            s.spawn(move || {
                let mut rng = Rng::new(100 + k);
                let inputs = common::random_inputs(f.graph(), &mut rng, -1.0, 1.0);
                let refs: Vec<&Tensor> = inputs.iter().collect();
                let want = interpret(f.graph(), &inputs).unwrap();
                for _ in 0..200 {
                    let got = f.call(&refs).unwrap();
                    for (a, b) in got.iter().zip(&want) {
                        let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
                        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5));
                    }
                }
            });
        }
    });
}

#[test]
fn wrong_inputs_are_errors_naming_the_input() {
    let f = value_and_grad(&cases::case05_linear().unwrap(), &["X", "W", "b"], &Options::default()).unwrap();
    let x = Tensor::zeros(wengert::TensorType::new(DType::F64, vec![4, 3]));
    let w = Tensor::zeros(wengert::TensorType::new(DType::F64, vec![3, 2]));
    let b = Tensor::zeros(wengert::TensorType::new(DType::F64, vec![2]));
    let seed = Tensor::zeros(wengert::TensorType::new(DType::F64, vec![4, 2]));
    assert!(f.call(&[&x, &w, &b, &seed]).is_ok());
    assert_eq!(
        f.call(&[&x, &w, &b]).unwrap_err().to_string(),
        "case05_linear.grad takes 4 input(s) (X, W, b, seed_Y), got 3"
    );
    assert_eq!(
        f.call(&[&x, &x, &b, &seed]).unwrap_err().to_string(),
        "input `W`: expected shape [3, 2], got [4, 3]"
    );
    let b32 = b.convert(DType::F32);
    assert_eq!(
        f.call(&[&x, &w, &b32, &seed]).unwrap_err().to_string(),
        "input `b`: expected dtype f64, got f32"
    );
    let mut outs = vec![Tensor::zeros(wengert::TensorType::new(DType::F64, vec![1]))];
    assert_eq!(
        f.call_into(&[&x, &w, &b, &seed], &mut outs).unwrap_err().to_string(),
        "case05_linear.grad has 4 output(s), got 1 output buffers"
    );
    // Iterators of unknown length are counted as they are consumed.
    let joint = f.joint();
    let mut outs = f.call(&[&x, &w, &b, &seed]).unwrap();
    let unsized_inputs = |n: usize| [&x, &w, &b, &seed, &x].into_iter().take(n).filter(|_| true);
    assert!(joint.call_into_iter(unsized_inputs(4), &mut outs).is_ok());
    assert_eq!(
        joint
            .call_into_iter(unsized_inputs(5), &mut outs)
            .unwrap_err()
            .to_string(),
        "case05_linear.grad takes 4 input(s) (X, W, b, seed_Y), got 5"
    );
    assert_eq!(
        joint
            .call_into_iter(unsized_inputs(2), &mut outs)
            .unwrap_err()
            .to_string(),
        "case05_linear.grad takes 4 input(s) (X, W, b, seed_Y), got 2"
    );
    assert_eq!(
        joint
            .call_into_iter(unsized_inputs(4), outs.iter_mut().filter(|_| true).take(3))
            .unwrap_err()
            .to_string(),
        "case05_linear.grad has 4 output(s), got 3 output buffers"
    );
    let other = value_and_grad(&cases::case05_linear().unwrap(), &["X"], &Options::default()).unwrap();
    let (_, saved) = other.forward(&[&x, &w, &b]).unwrap();
    assert!(
        f.backward(&[&x, &w, &b], &saved, &[&seed]).is_err(),
        "residuals of another function are refused"
    );
}

#[test]
fn scalar_fns_equal_the_validated_call_and_check_their_types_once() {
    // Case 3: f(x1, x2) = x1·x2 + sin x1 with its gradient (x2 + cos x1, x1).
    let f = value_and_grad(&cases::case03_two_inputs().unwrap(), &["x1", "x2"], &Options::default()).unwrap();
    let sf = f.joint().scalar_fn::<f64, 2, 3>().unwrap();
    for (x1, x2) in [(0.7, 1.7), (-2.0, 0.25), (1e3, -1e-3)] {
        let [y, g1, g2] = sf.call([x1, x2]);
        let outs = f.call(&[&Tensor::scalar_f64(x1), &Tensor::scalar_f64(x2)]).unwrap();
        assert_eq!(
            [y, g1, g2].map(f64::to_bits),
            [0, 1, 2].map(|k| outs[k].scalar_value().unwrap().to_bits())
        );
        assert_eq!((g1, g2), (x2 + x1.cos(), x1));
    }
    // Case 4's VJP with seed inputs: four inputs, four outputs.
    let g = cases::case04_vjp().unwrap();
    let seeds = [("y1", Seed::Input("u1".into())), ("y2", Seed::Input("u2".into()))];
    let f4 = value_and_grad_with_seeds(&g, &["x1", "x2"], &seeds, &Options::default()).unwrap();
    let [y1, y2, gx1, gx2] = f4.joint().scalar_fn::<f64, 4, 4>().unwrap().call([2.0, 3.0, 1.0, 10.0]);
    // uᵀJ with J = [[x2, x1], [1, 2·x2]] and u = (1, 10).
    assert_eq!([y1, y2, gx1, gx2], [6.0, 11.0, 3.0 + 10.0, 2.0 + 10.0 * 6.0]);
    // Counts and dtype are checked when the function is made.
    let err = |r: Result<(), wengert::api::RuntimeError>| r.expect_err("an error").to_string();
    assert_eq!(
        err(f.joint().scalar_fn::<f64, 1, 3>().map(|_| ())),
        "case03_two_inputs.grad takes 2 input(s) (x1, x2), got 1"
    );
    assert_eq!(
        err(f.joint().scalar_fn::<f64, 2, 2>().map(|_| ())),
        "case03_two_inputs.grad has 3 output(s), got 2 output buffers"
    );
    assert_eq!(
        err(f.joint().scalar_fn::<f32, 2, 3>().map(|_| ())),
        "input `x1`: expected f64[], got f32 (the scalar function's element type)"
    );
    // A graph with a tensor input has no scalar entry.
    let m = value_and_grad(&cases::case05_linear().unwrap(), &["W"], &Options::default()).unwrap();
    assert_eq!(
        err(m.joint().scalar_fn::<f64, 3, 2>().map(|_| ())),
        "case05_linear.grad: no scalar entry, `X` is f64[4,3], not a f64 scalar"
    );
}

#[test]
fn scalar_fns_check_output_dtypes_and_need_no_scratch() {
    // No inputs: the dtype is known only from the output, which must be
    // checked (a f32 function would get 8-byte f64 stores into 4 bytes).
    let b = GraphBuilder::new("constant");
    let y = b.scalar(DType::F64, 2.5).exp();
    let exe = compile(&b.build(&[("y", y)]).unwrap(), &Options::default()).unwrap();
    assert_eq!(exe.scalar_fn::<f64, 0, 1>().unwrap().call([]), [2.5f64.exp()]);
    assert_eq!(
        exe.scalar_fn::<f32, 0, 1>().map(|_| ()).unwrap_err().to_string(),
        "output `y`: expected f64[], got f32 (the scalar function's element type)"
    );
    // Scalar inputs and outputs with a tensor kept in memory inside (a
    // matmul's result): the packed entry would need an arena, so there is
    // none, and the validated call still works.
    let b = GraphBuilder::new("spread");
    let x = b.input("x", DType::F64, &[]);
    let row = x.broadcast_to(&[1, 100]).exp();
    let s = row.matmul(x.broadcast_to(&[100, 1])).sum_all();
    let spread = b.build(&[("s", s)]).unwrap();
    let exe = compile(&spread, &Options::default()).unwrap();
    assert!(exe.memory().arena_bytes > 0);
    assert_eq!(
        exe.scalar_fn::<f64, 1, 1>().map(|_| ()).unwrap_err().to_string(),
        "spread: no scalar entry (the graph needs scratch memory)"
    );
    let out = exe.call(&[&Tensor::scalar_f64(0.5)]).unwrap();
    assert!((out[0].scalar_value().unwrap() - 100.0 * 0.5 * 0.5f64.exp()).abs() < 1e-12);
    // A rejected packed entry leaves the module clean for the next graph.
    let case1 = cases::case01_scalar().unwrap();
    let both = wengert::codegen::compile_graphs(&[&spread, &case1], &CodegenOptions::default()).unwrap();
    assert_eq!(both[1].scalar_fn::<f64, 1, 1>().unwrap().call([2.0]), [5f64.ln()]);
}

#[test]
fn bound_executables_run_without_per_call_checks() {
    let f = value_and_grad(&cases::case03_two_inputs().unwrap(), &["x1", "x2"], &Options::default()).unwrap();
    let mut bound = f
        .joint()
        .bind(vec![Tensor::scalar_f64(2.0), Tensor::scalar_f64(3.0)])
        .unwrap();
    bound.run().unwrap();
    assert_eq!(bound.outputs()[1].scalar_value(), Some(3.0 + 2f64.cos()));
    bound.input_mut::<f64>(0).unwrap()[0] = 0.5;
    bound.run().unwrap();
    assert_eq!(bound.outputs()[0].scalar_value(), Some(0.5 * 3.0 + 0.5f64.sin()));
    assert!(bound.input_mut::<f32>(0).is_none(), "wrong element type");
    assert_eq!(
        bound.set_input(1, &Tensor::scalar_f32(1.0)).unwrap_err().to_string(),
        "input `x2`: expected f64[], got f32[]"
    );
    bound.set_input(1, &Tensor::scalar_f64(-1.0)).unwrap();
    bound.run().unwrap();
    assert_eq!(bound.outputs()[2].scalar_value(), Some(0.5));
    assert!(f.joint().bind(vec![Tensor::scalar_f64(2.0)]).is_err());
}

#[test]
fn large_fused_kernels_call_out_of_line_math_with_the_same_results() {
    // Enough transcendentals in one kernel that the math is outlined.
    for d in [DType::F32, DType::F64] {
        check_op("long_chain", d, &[&[37]], -1.0, 1.0, |x| {
            let mut h = x[0];
            for i in 0..40 {
                h = match i % 4 {
                    0 => h.sin(),
                    1 => h * 0.9 + 0.05,
                    2 => h.tanh(),
                    _ => (h.exp() + 1.0).log() - h.cos(),
                };
            }
            h
        });
    }
}

/// Signed zeros, infinities and NaN through every unary op, every binary
/// op and integer and fractional powers, in f32 and f64, on the scalar
/// (register) path, the vector path with its tail, and a kernel large
/// enough to call the out-of-line math helpers: the JIT matches the
/// interpreter bit for bit (any NaN for NaN).
#[test]
fn special_values_match_the_interpreter_bit_for_bit() {
    let specials = [0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN];
    let pairs: Vec<(f64, f64)> = specials
        .iter()
        .flat_map(|&a| specials.iter().map(move |&b| (a, b)))
        .collect();
    for d in [DType::F32, DType::F64] {
        for copies in [1, 3] {
            for n in [1usize, 13] {
                // x and y hold every ordered pair of specials, n times over.
                let len = pairs.len() * n;
                let xs: Vec<f64> = (0..len).map(|i| pairs[i % pairs.len()].0).collect();
                let ys: Vec<f64> = (0..len).map(|i| pairs[i % pairs.len()].1).collect();
                let b = GraphBuilder::new("specials");
                let shape: Vec<usize> = if n == 1 && len == 1 { vec![] } else { vec![len] };
                let x = b.input("x", d, &shape);
                let y = b.input("y", d, &shape);
                let mut outs: Vec<(String, Var)> = Vec::new();
                // `copies` repeats make one kernel too large to inline math.
                for c in 0..copies {
                    let xc = if c == 0 { x } else { x * 1.0 };
                    for u in UnaryOp::ALL {
                        outs.push((format!("{}{c}", u.name()), unary(xc, u)));
                    }
                    for e in [2.0, 3.0, -1.0, 0.5, 1.5] {
                        outs.push((format!("pow{}_{c}", outs.len()), xc.powf(e)));
                    }
                }
                for op in BinaryOp::ALL {
                    outs.push((op.name().to_string(), binary(x, y, op)));
                }
                let named: Vec<(&str, Var)> = outs.iter().map(|(s, v)| (s.as_str(), *v)).collect();
                let g = b.build(&named).unwrap();
                let inputs = [
                    Tensor::from_vec(shape.clone(), xs.clone()).unwrap().convert(d),
                    Tensor::from_vec(shape.clone(), ys.clone()).unwrap().convert(d),
                ];
                let refs: Vec<&Tensor> = inputs.iter().collect();
                let got = compile(&g, &Options::default()).unwrap().call(&refs).unwrap();
                let want = interpret(&g, &inputs).unwrap();
                for ((name, _), (a, w)) in outs.iter().zip(got.iter().zip(&want)) {
                    for (i, (p, q)) in a.to_f64_vec().iter().zip(w.to_f64_vec()).enumerate() {
                        let same = p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan());
                        assert!(
                            same,
                            "{d} {name}({}, {}) [n={n}, copies={copies}]: jit {p:?}, interpreter {q:?}",
                            xs[i], ys[i]
                        );
                    }
                }
            }
        }
    }
}

// ----- donation (inputs updated in place) -----

/// A graph whose outputs `new_p` and `new_q` may take the buffers of
/// inputs `p` and `q`: `s` reads all of `p` before `new_p` is written.
fn donation_graph() -> Graph {
    let b = GraphBuilder::new("donate");
    let p = b.input("p", DType::F64, &[5, 3]);
    let q = b.input("q", DType::F64, &[]);
    let x = b.input("x", DType::F64, &[5, 3]);
    let s = p.matmul(p.t()).sum_all();
    let new_p = (p * 2.0 + x).tanh();
    let new_q = q.exp() + s;
    b.build(&[("s", s), ("new_p", new_p), ("new_q", new_q)]).unwrap()
}

#[test]
fn donated_buffers_are_updated_in_place_as_separate_buffers_would_be() {
    let g = donation_graph();
    let pairs = [("p", "new_p"), ("q", "new_q")];
    let exe = compile(&g, &Options::default().with_donations(&pairs)).unwrap();
    assert_eq!(exe.donations(), &[(0, 1), (1, 2)]);
    let mut rng = Rng::new(77);
    let p = Tensor::from_vec(vec![5, 3], rng.vec(15, -1.0, 1.0)).unwrap();
    let q = Tensor::scalar(DType::F64, 0.25);
    let x = Tensor::from_vec(vec![5, 3], rng.vec(15, -1.0, 1.0)).unwrap();
    // Separate buffers (an executable with donations still takes them).
    let want = exe.call(&[&p, &q, &x]).unwrap();
    let mut state = vec![p.clone(), q.clone()];
    let at = [state[0].as_ptr(), state[1].as_ptr()];
    let mut s = vec![Tensor::scalar(DType::F64, 0.0)];
    exe.call_donated(&[&x], &mut state, &mut s).unwrap();
    assert_eq!([state[0].as_ptr(), state[1].as_ptr()], at);
    assert_eq!(s[0].to_f64_vec(), want[0].to_f64_vec());
    assert_eq!(state[0].to_f64_vec(), want[1].to_f64_vec());
    assert_eq!(state[1].to_f64_vec(), want[2].to_f64_vec());
    // Wrong counts and types are errors, not calls.
    let e = exe
        .call_donated(&[&x], &mut state[..1], &mut s)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 buffer(s) in place, got 1"), "{e}");
    let mut wrong = vec![q.clone(), q.clone()];
    let e = exe.call_donated(&[&x], &mut wrong, &mut s).unwrap_err().to_string();
    assert!(e.contains("p") && e.contains("donated buffer 0"), "{e}");
}

#[test]
fn unsafe_donations_are_refused_naming_the_pair_and_the_reader() {
    let refused = |g: &Graph, pairs: &[(&str, &str)], want: &[&str]| {
        let e = compile(g, &Options::default().with_donations(pairs))
            .unwrap_err()
            .to_string();
        for w in want {
            assert!(e.contains(w), "expected `{w}` in: {e}\n{g}");
        }
    };
    let g = donation_graph();
    refused(&g, &[("x", "s")], &["donating input `x` to output `s`", "types differ"]);
    refused(&g, &[("nope", "s")], &["no input `nope`"]);
    refused(&g, &[("p", "new_p"), ("p", "new_q")], &["already donated"]);
    // Read after the write: the product runs after `new_p`.
    let b = GraphBuilder::new("late");
    let p = b.input("p", DType::F64, &[3, 3]);
    let new_p = p * 2.0;
    let late = p.matmul(p.t());
    let g = b.build(&[("new_p", new_p), ("late", late)]).unwrap();
    refused(&g, &[("p", "new_p")], &["reads the input after", "matmul"]);
    // The output is the input transposed: a copy over itself.
    let b = GraphBuilder::new("view");
    let p = b.input("p", DType::F64, &[3, 3]);
    let g = b.build(&[("new_p", p.t())]).unwrap();
    refused(&g, &[("p", "new_p")], &["view"]);
    // The old value is an output too.
    let b = GraphBuilder::new("old");
    let p = b.input("p", DType::F64, &[3, 3]);
    let g = b.build(&[("old", p), ("new_p", p + 1.0)]).unwrap();
    refused(&g, &[("p", "new_p")], &["output `old` is the input's old value"]);
    // An elementwise update reading another element (a transposed view)
    // in the kernel that writes it.
    let b = GraphBuilder::new("shifted");
    let p = b.input("p", DType::F64, &[3, 3]);
    let g = b.build(&[("new_p", p + p.t())]).unwrap();
    refused(&g, &[("p", "new_p")], &["reads other elements"]);
}
