//! Tests of the IR: the seed cases through the builder and the text files,
//! the printer/parser round trip, the interpreter's semantics, and errors.

mod common;

use common::{assert_close, case_path, Rng};
use expect_test::{expect, Expect};
use wengert::cases;
use wengert::ir::{parse_literal, BinaryOp, Op, TensorType, UnaryOp};
use wengert::{interpret, parse, to_dot, verify, DType, Graph, GraphBuilder, IrError, Tensor};

fn load_case(file: &str) -> Graph {
    let text = std::fs::read_to_string(case_path(file)).unwrap();
    parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn scalar(v: f64) -> Tensor {
    Tensor::scalar_f64(v)
}

fn tensor(shape: &[usize], v: Vec<f64>) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

fn eval(g: &Graph, inputs: &[Tensor]) -> Vec<Vec<f64>> {
    interpret(g, inputs).unwrap().iter().map(|t| t.to_f64_vec()).collect()
}

#[test]
fn builder_and_text_files_give_the_same_graphs() {
    for (file, build) in cases::ALL {
        let built = build().unwrap();
        let parsed = load_case(file);
        assert_eq!(built.to_string(), parsed.to_string(), "{file}");
    }
}

#[test]
fn print_parse_round_trip_for_every_case() {
    for (file, build) in cases::ALL {
        let g = build().unwrap();
        let printed = g.to_string();
        let reparsed = parse(&printed).unwrap_or_else(|e| panic!("{file}: {e}\n{printed}"));
        verify(&reparsed).unwrap();
        assert_eq!(reparsed.to_string(), printed, "{file}");
    }
}

/// Evaluates a case both from the builder and from its text file and checks
/// both against `expected` (computed from the seed's formulas).
fn check_case(file: &str, inputs: &[Tensor], expected: &[Vec<f64>]) {
    let build = cases::ALL.iter().find(|(f, _)| *f == file).unwrap().1;
    for g in [build().unwrap(), load_case(file)] {
        let got = eval(&g, inputs);
        assert_eq!(got.len(), expected.len());
        for (i, (a, b)) in got.iter().zip(expected).enumerate() {
            assert_close(a, b, 1e-14, &format!("{file} output {i}"));
        }
    }
}

#[test]
fn case01_to_04_scalar_values_match_the_seed_formulas() {
    for &x in &[-1.5, 0.0, 0.3, 2.0] {
        check_case("case01_scalar.wg", &[scalar(x)], &[vec![(1.0 + x * x).ln()]]);
        check_case("case02_shared.wg", &[scalar(x)], &[vec![x * x + (x * x).sin()]]);
    }
    for &(x1, x2) in &[(2.0, 3.0), (-0.5, 1.25), (0.0, 0.0)] {
        check_case(
            "case03_two_inputs.wg",
            &[scalar(x1), scalar(x2)],
            &[vec![x1 * x2 + x1.sin()]],
        );
        check_case(
            "case04_vjp.wg",
            &[scalar(x1), scalar(x2)],
            &[vec![x1 * x2], vec![x1 + x2 * x2]],
        );
    }
}

#[test]
fn case05_linear_layer_matches_xw_plus_b() {
    let mut rng = Rng::new(5);
    let (x, w, b) = (rng.vec(12, -1.0, 1.0), rng.vec(6, -1.0, 1.0), rng.vec(2, -1.0, 1.0));
    let mut y = vec![0.0; 8];
    for i in 0..4 {
        for j in 0..2 {
            y[i * 2 + j] = (0..3).map(|k| x[i * 3 + k] * w[k * 2 + j]).sum::<f64>() + b[j];
        }
    }
    check_case(
        "case05_linear.wg",
        &[tensor(&[4, 3], x), tensor(&[3, 2], w), tensor(&[2], b)],
        &[y],
    );
}

#[test]
fn case06_relu_is_max_of_zero() {
    let x = vec![-1.0, 0.0, 2.0, -0.0, 3.5, -7.0];
    let y: Vec<f64> = x.iter().map(|&v: &f64| v.max(0.0)).collect();
    check_case("case06_relu.wg", &[tensor(&[2, 3], x)], &[y]);
}

fn softmax_xent_reference(z: &[f64], t: &[f64], k: usize) -> f64 {
    let rows = z.len() / k;
    let mut total = 0.0;
    for r in 0..rows {
        let zr = &z[r * k..(r + 1) * k];
        let sum: f64 = zr.iter().map(|v| v.exp()).sum();
        for c in 0..k {
            total -= t[r * k + c] * (zr[c].exp() / sum).ln();
        }
    }
    total / rows as f64
}

#[test]
fn case07_softmax_cross_entropy_matches_the_definition() {
    let mut rng = Rng::new(7);
    let z = rng.vec(12, -3.0, 3.0);
    let mut t = vec![0.0; 12];
    for (r, c) in [(0, 2), (1, 0), (2, 1), (3, 2)] {
        t[r * 3 + c] = 1.0;
    }
    let l = softmax_xent_reference(&z, &t, 3);
    check_case(
        "case07_softmax_xent.wg",
        &[tensor(&[4, 3], z), tensor(&[4, 3], t)],
        &[vec![l]],
    );
}

#[test]
fn case08_recurrence_unrolls_tanh_steps() {
    let (a, b, x) = (0.7, -0.2, 0.9);
    let mut h: f64 = x;
    for _ in 0..cases::CASE08_STEPS {
        h = (a * h + b).tanh();
    }
    check_case("case08_recurrence.wg", &[scalar(a), scalar(b), scalar(x)], &[vec![h]]);
}

#[test]
fn case09_chain_of_tanh_matmul_layers() {
    let mut rng = Rng::new(9);
    let x = rng.vec(8, -1.0, 1.0);
    let ws: Vec<Vec<f64>> = (0..8).map(|_| rng.vec(16, -0.8, 0.8)).collect();
    let mut h = x.clone();
    for w in &ws {
        let mut next = vec![0.0; 8];
        for i in 0..2 {
            for j in 0..4 {
                next[i * 4 + j] = (0..4).map(|k| h[i * 4 + k] * w[k * 4 + j]).sum::<f64>().tanh();
            }
        }
        h = next;
    }
    let mut inputs = vec![tensor(&[2, 4], x)];
    inputs.extend(ws.into_iter().map(|w| tensor(&[4, 4], w)));
    check_case("case09_checkpoint_chain.wg", &inputs, &[vec![h.iter().sum()]]);
}

fn check_print(g: &Graph, expect: Expect) {
    expect.assert_eq(&g.to_string());
}

#[test]
fn printed_ir_snapshots() {
    check_print(
        &cases::case02_shared().unwrap(),
        expect![[r#"
            graph @case02_shared(%x: f64[]) -> (y: f64[]) {
              %0: f64[] = pow[exponent=2.0] %x
              %1: f64[] = sin %0
              %2: f64[] = add %0, %1
              return %2
            }
        "#]],
    );
    check_print(
        &cases::case05_linear().unwrap(),
        expect![[r#"
            graph @case05_linear(%X: f64[4,3], %W: f64[3,2], %b: f64[2]) -> (Y: f64[4,2]) {
              %0: f64[4,2] = matmul %X, %W
              %1: f64[4,2] = broadcast[shape=(4, 2)] %b
              %2: f64[4,2] = add %0, %1
              return %2
            }
        "#]],
    );
    check_print(
        &cases::case07_softmax_xent().unwrap(),
        expect![[r#"
            graph @case07_softmax_xent(%Z: f64[4,3], %T: f64[4,3] nodiff) -> (L: f64[]) {
              %0: f64[] = softmax_cross_entropy %Z, %T
              return %0
            }
        "#]],
    );
    // Composite helpers expand into primitives; attributes print sorted.
    let b = GraphBuilder::new("composites");
    let x = b.input("x", DType::F32, &[2, 3]);
    let y = x.softmax(1).slice(&[0, 1], &[2, 3]).mean_all();
    check_print(
        &b.build(&[("y", y)]).unwrap(),
        expect![[r#"
            graph @composites(%x: f32[2,3]) -> (y: f32[]) {
              %0: f32[2] = reduce_max[axes=(1)] %x
              %1: f32[2,1] = reshape[shape=(2, 1)] %0
              %2: f32[2,3] = broadcast[shape=(2, 3)] %1
              %3: f32[2,3] = sub %x, %2
              %4: f32[2,3] = exp %3
              %5: f32[2] = reduce_sum[axes=(1)] %4
              %6: f32[2,1] = reshape[shape=(2, 1)] %5
              %7: f32[2,3] = broadcast[shape=(2, 3)] %6
              %8: f32[2,3] = div %4, %7
              %9: f32[2,2] = slice[end=(2, 3), start=(0, 1)] %8
              %10: f32[] = reduce_sum[axes=(0, 1)] %9
              %11: f32[] = const 4.0
              %12: f32[] = div %10, %11
              return %12
            }
        "#]],
    );
}

#[test]
fn every_op_round_trips_through_text() {
    let text = r#"
graph @all(%x: f32[2,3], %y: f32[2,3], %m: f32[3,4], %t: f32[2,3] nodiff) -> (a: f32[2,3], b: bool[2,3], c: f32[3,2], d: f32[2], e: f32[2,4], f: f32[2,5], g: f32[4,3], h: f32[], i: f64[2,3], j: f32[6], k: f32[2,3], l: f32[3,2], n: f32[1,2]) {
  %0 = neg %x
  %1 = exp %0
  %2 = log %1
  %3 = sin %2
  %4 = cos %3
  %5 = tanh %4
  %6 = sqrt %5
  %7 = abs %6
  %8 = relu %7
  %e1 = erf %8
  %e2 = expm1 %e1
  %e3 = log1p %e2
  %9 = add %e3, %y
  %10 = sub %9, %y
  %11 = mul %10, %y
  %12 = div %11, %y
  %13 = max %12, %y
  %14 = min %13, %y
  %15 = pow[exponent=-1.5] %14
  %16 = lt %15, %y
  %17 = le %15, %y
  %18 = gt %15, %y
  %19 = ge %15, %y
  %20 = eq %15, %y
  %21 = ne %15, %y
  %22 = select %16, %15, %y
  %23 = transpose[perm=(1, 0)] %22
  %24 = reduce_sum[axes=(1)] %22
  %25 = reduce_max[axes=(0)] %23
  %26 = matmul %x, %m
  %27 = pad[high=(0, 1), low=(0, 1)] %x
  %28 = concat[axis=0] %x, %y
  %29 = reshape[shape=(4, 3)] %28
  %30 = softmax_cross_entropy %x, %t
  %31 = convert[to=f64] %x
  %32 = reshape[shape=(6)] %x
  %33: f32[2,3] = const [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
  %34 = broadcast[shape=(3, 2)] %25
  %35 = slice[end=(2, 3), start=(1, 1)] %x
  return %22, %17, %23, %24, %26, %27, %29, %30, %31, %32, %33, %34, %35
}
"#;
    let g = parse(text).unwrap();
    verify(&g).unwrap();
    let printed = g.to_string();
    assert_eq!(parse(&printed).unwrap().to_string(), printed);
    // Every op variant appears.
    let mut names: Vec<&str> = g.node_ids().map(|id| g.op(id).name()).collect();
    names.sort();
    names.dedup();
    for u in UnaryOp::ALL {
        assert!(names.contains(&u.name()), "{}", u.name());
    }
    for b in BinaryOp::ALL {
        assert!(names.contains(&b.name()), "{}", b.name());
    }
    assert!(interpret(&g, &common::random_inputs(&g, &mut Rng::new(1), 0.1, 1.0)).is_ok());
}

#[test]
fn float_constants_round_trip_bit_exactly() {
    for v in [
        0.1,
        -1e-300,
        1e300,
        f64::MIN_POSITIVE,
        1.0 / 3.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ] {
        let b = GraphBuilder::new("c");
        let c = b.scalar(DType::F64, v);
        let g = b.build(&[("c", c)]).unwrap();
        let back = parse(&g.to_string()).unwrap();
        assert_eq!(interpret(&back, &[]).unwrap()[0].to_f64_vec()[0].to_bits(), v.to_bits());
    }
    let t = parse_literal("[1e-45, 3.4028235e38, 0.1]", DType::F32).unwrap();
    let text = t.to_string();
    assert_eq!(parse_literal(&text, DType::F32).unwrap(), t);
    assert!(parse_literal("nan", DType::F64).unwrap().to_f64_vec()[0].is_nan());
}

// ----- interpreter semantics -----

fn run1(text: &str, inputs: &[Tensor]) -> Vec<f64> {
    let g = parse(text).unwrap_or_else(|e| panic!("{e}"));
    interpret(&g, inputs).unwrap()[0].to_f64_vec()
}

#[test]
fn interpreter_index_ops() {
    let x = tensor(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let cases: &[(&str, &str, Vec<f64>)] = &[
        (
            "f64[3,2]",
            "transpose[perm=(1, 0)] %x",
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0],
        ),
        ("f64[3]", "reduce_sum[axes=(0)] %x", vec![5.0, 7.0, 9.0]),
        ("f64[2]", "reduce_sum[axes=(1)] %x", vec![6.0, 15.0]),
        ("f64[]", "reduce_sum[axes=(0, 1)] %x", vec![21.0]),
        ("f64[2]", "reduce_max[axes=(1)] %x", vec![3.0, 6.0]),
        ("f64[1,2]", "slice[end=(2, 3), start=(1, 1)] %x", vec![5.0, 6.0]),
        (
            "f64[3,4]",
            "pad[high=(0, 1), low=(1, 0)] %x",
            vec![0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 4.0, 5.0, 6.0, 0.0],
        ),
        (
            "f64[2,6]",
            "concat[axis=1] %x, %x",
            vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 4.0, 5.0, 6.0],
        ),
        (
            "f64[4,3]",
            "concat[axis=0] %x, %x",
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        ),
        (
            "f64[3,2]",
            "reshape[shape=(3, 2)] %x",
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        ),
        (
            "f64[2,2,3]",
            "broadcast[shape=(2, 2, 3)] %x",
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        ),
        ("f64[2,2]", "matmul %x, %xt", vec![14.0, 32.0, 32.0, 77.0]),
    ];
    for (ty, body, expected) in cases {
        let text = format!(
            "graph @t(%x: f64[2,3]) -> (y: {ty}) {{\n  %xt = transpose[perm=(1, 0)] %x\n  %y = {body}\n  return %y\n}}"
        );
        assert_eq!(&run1(&text, std::slice::from_ref(&x)), expected, "{body}");
    }
    // Broadcasting an axis of extent 1 in the middle.
    let col = tensor(&[2, 1], vec![1.0, 2.0]);
    let text = "graph @t(%c: f64[2,1]) -> (y: f64[2,3]) {\n  %y = broadcast[shape=(2, 3)] %c\n  return %y\n}";
    assert_eq!(run1(text, &[col]), vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
}

#[test]
fn interpreter_conventions_at_awkward_points() {
    let text = "graph @t(%x: f64[4]) -> (r: f64[4], l: f64[4], m: f64[4], p: f64[4]) {
  %r = relu %x
  %l = log %x
  %z: f64[4] = const [0.0, 0.0, 0.0, 0.0]
  %m = max %x, %z
  %p = pow[exponent=3.0] %x
  return %r, %l, %m, %p
}";
    let g = parse(text).unwrap();
    let out = interpret(&g, &[tensor(&[4], vec![0.0, -2.0, f64::NAN, 1.5])]).unwrap();
    let r = out[0].to_f64_vec();
    assert_eq!(&r[..2], &[0.0, 0.0]);
    assert!(r[2].is_nan(), "relu propagates NaN");
    let l = out[1].to_f64_vec();
    assert_eq!(l[0], f64::NEG_INFINITY);
    assert!(l[1].is_nan());
    assert!(out[2].to_f64_vec()[2].is_nan(), "max propagates NaN");
    assert_eq!(out[3].to_f64_vec()[3], 1.5 * 1.5 * 1.5);
}

#[test]
fn softmax_cross_entropy_is_stable_for_huge_and_infinite_logits() {
    let text = "graph @t(%z: f64[2,3], %t: f64[2,3] nodiff) -> (l: f64[]) {\n  %l = softmax_cross_entropy %z, %t\n  return %l\n}";
    // Logits of magnitude 1e4: the naive exp overflows; the fused op does not.
    let z = tensor(&[2, 3], vec![1e4, -1e4, 0.0, 1e4, 1e4 - 1.0, -1e4]);
    let t = tensor(&[2, 3], vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    let l = run1(text, &[z, t.clone()])[0];
    let expected = (0.0 + (1.0 + (-1.0f64).exp()).ln() + 1.0) / 2.0;
    assert!((l - expected).abs() < 1e-12, "{l} vs {expected}");
    // A logit of -inf whose target is 0 contributes exactly 0.
    let z = tensor(&[2, 3], vec![0.0, f64::NEG_INFINITY, 0.0, 1.0, 2.0, f64::NEG_INFINITY]);
    let l = run1(text, &[z, t])[0];
    let expected = (2f64.ln() + (-(2.0 - (1f64.exp() + 2f64.exp()).ln()))) / 2.0;
    assert!((l - expected).abs() < 1e-12, "{l} vs {expected}");
}

#[test]
fn f32_graphs_compute_in_f32() {
    let b = GraphBuilder::new("f32");
    let x = b.input("x", DType::F32, &[3]);
    let y = (x * 0.1 + 0.2).sin();
    let g = b.build(&[("y", y)]).unwrap();
    let xs = [1.0f32, 2.0, 3.0];
    let out = interpret(&g, &[Tensor::from_vec(vec![3], xs.to_vec()).unwrap()]).unwrap();
    let got = out[0].as_slice::<f32>().unwrap();
    for (g, x) in got.iter().zip(xs) {
        assert_eq!(*g, (x * 0.1f32 + 0.2f32).sin());
    }
}

// ----- errors -----

#[test]
fn builder_shape_error_names_the_users_line() {
    let b = GraphBuilder::new("bad");
    let x = b.input("x", DType::F32, &[3]);
    let y = b.input("y", DType::F32, &[4]);
    let line = line!() + 1;
    let z = x + y;
    let w = z.exp() * 2.0; // poisoned: no second error
    let err = b.build(&[("w", w)]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&format!("tests/ir.rs:{line}:13")), "{msg}");
    assert!(msg.ends_with("add: cannot broadcast f32[3] and f32[4]"), "{msg}");
    assert!(matches!(err, IrError::Build { .. }));
}

#[test]
fn builder_errors_for_matmul_reshape_and_reuse() {
    let b = GraphBuilder::new("bad");
    let x = b.input("x", DType::F64, &[2, 3]);
    let err = {
        let _ = x.matmul(x);
        b.build(&[("x", x)]).unwrap_err().to_string()
    };
    assert!(
        err.contains("matmul: `matmul` needs [m,k] x [k,n] or [b,m,k] x [b,k,n], got f64[2,3] x f64[2,3]"),
        "{err}"
    );
    let b = GraphBuilder::new("bad");
    let x = b.input("x", DType::F64, &[2, 3]);
    let _ = x.reshape(&[5]);
    assert!(b
        .build(&[("x", x)])
        .unwrap_err()
        .to_string()
        .contains("cannot reshape f64[2,3] (6 elements) to [5] (5 elements)"));
    let b = GraphBuilder::new("twice");
    let x = b.input("x", DType::F64, &[]);
    assert!(b.build(&[("x", x)]).is_ok());
    assert!(b.build(&[("x", x)]).is_err());
    let b = GraphBuilder::new("dup");
    let _ = b.input("x", DType::F64, &[]);
    let x2 = b.input("x", DType::F64, &[]);
    assert!(b
        .build(&[("x", x2)])
        .unwrap_err()
        .to_string()
        .contains("input `x` is declared twice"));
}

fn check_parse_error(text: &str, expect: Expect) {
    let err = parse(text).unwrap_err();
    assert!(matches!(err, IrError::Parse(_)));
    expect.assert_eq(&err.to_string());
}

#[test]
fn parse_errors_give_line_and_column() {
    check_parse_error(
        "graph @f(%x: f32[3]) -> (y: f32[3]) {\n  %y = frobnicate %x\n  return %y\n}",
        expect!["2:8: unknown op `frobnicate`"],
    );
    check_parse_error(
        "graph @f(%x: f32[3]) -> (y: f32[3]) {\n  %y = exp %z\n  return %y\n}",
        expect!["2:12: `%z` is not defined"],
    );
    check_parse_error(
        "graph @f(%x: f32[3]) -> (y: f32[3]) {\n  %a = add %b, %x\n  %b = exp %a\n  return %a\n}",
        expect!["2:3: the values %a, %b depend on each other in a cycle"],
    );
    check_parse_error(
        "graph @f(%x: f32[3], %w: f32[4]) -> (y: f32[3]) {\n  %y = add %x, %w\n  return %y\n}",
        expect!["2:8: `%y`: `add` operands have different shapes f32[3] and f32[4]; broadcast one first"],
    );
    check_parse_error(
        "graph @f(%x: f32[3]) -> (y: f32[3]) {\n  %y = exp %x,\n  return %y\n}",
        expect!["3:3: expected an operand (like `%x`), found `return`"],
    );
    check_parse_error(
        "graph @f(%x: f32[3) -> (y: f32[3]) {}",
        expect!["1:19: expected `,`, found `)`"],
    );
    check_parse_error(
        "graph @f(%x: i32[3]) -> () {}",
        expect!["1:14: unknown element type `i32` (expected f32, f64 or bool)"],
    );
    check_parse_error(
        "graph @f(%x: f32[3]) -> (y: f32[3]) {\n  %c = const 1.0\n  %y: f32[2] = exp %x\n  %y = neg %x\n  return %y\n}",
        expect![[r#"
            2:8: `%c`: a `const` needs a type annotation like `: f32[]`
            3:7: `%y` is declared f32[2] but `exp` computes f32[3]
            4:3: `%y` is defined twice"#]],
    );
    check_parse_error(
        "graph @f(%x: f32[3]) -> (y: f32[3], z: f32[3]) {\n  return %x\n}",
        expect!["2:3: the header declares 2 output(s) but `return` gives 1"],
    );
    check_parse_error(
        "graph @f() -> (y: f32[2,2]) {\n  %c: f32[2,2] = const [[1, 2], [3]]\n  return %c\n}",
        expect!["2:35: ragged list: 1 elements where its siblings have 2"],
    );
    check_parse_error(
        "graph @f(%x: f32[3]) -> (y: f32[3]) {\n  %y = reduce_sum[axis=(0)] %x\n  return %y\n}",
        expect!["2:8: `reduce_sum` needs the attribute `axes`"],
    );
    check_parse_error(
        "graph @f(%x: f32[3]) -> (y: f32[3]) {\n  %y = exp %x\n  return %y\n} trailing",
        expect!["4:3: expected the end of the input after `}`, found `trailing`"],
    );
}

#[test]
fn verify_reports_every_problem_at_once() {
    let mut g = Graph::new("broken");
    let x = g.add_input("x", TensorType::new(DType::F32, vec![3]), true).unwrap();
    // Two nodes whose declared types disagree with inference.
    let a = g.add_typed(Op::Unary(UnaryOp::Exp), &[x], TensorType::new(DType::F32, vec![4]));
    let _ = g.add_typed(Op::Binary(BinaryOp::Add), &[x, a], TensorType::new(DType::F32, vec![3]));
    let err = verify(&g).unwrap_err();
    expect![[r#"
        %0: `exp` is declared as f32[4] but computes f32[3]
        %1: `add` operands have different shapes f32[3] and f32[4]; broadcast one first
        graph: the graph has no outputs"#]]
    .assert_eq(&err.to_string());
}

#[test]
fn interpreter_rejects_bad_inputs_by_name() {
    let g = cases::case05_linear().unwrap();
    let good = || {
        vec![
            tensor(&[4, 3], vec![0.0; 12]),
            tensor(&[3, 2], vec![0.0; 6]),
            tensor(&[2], vec![0.0; 2]),
        ]
    };
    let mut wrong_shape = good();
    wrong_shape[1] = tensor(&[2, 3], vec![0.0; 6]);
    assert_eq!(
        interpret(&g, &wrong_shape).unwrap_err().to_string(),
        "input `W`: expected shape [3, 2], got [2, 3]"
    );
    let mut wrong_dtype = good();
    wrong_dtype[2] = wrong_dtype[2].convert(DType::F32);
    assert_eq!(
        interpret(&g, &wrong_dtype).unwrap_err().to_string(),
        "input `b`: expected dtype f64, got f32"
    );
    assert_eq!(
        interpret(&g, &good()[..2]).unwrap_err().to_string(),
        "graph @case05_linear takes 3 input(s) (X, W, b), got 2"
    );
    let named = wengert::interpret_named(&g, &[("X", good()[0].clone()), ("W", good()[1].clone())]);
    assert_eq!(named.unwrap_err().to_string(), "input `b`: missing (expected f64[2])");
}

// ----- scale -----

#[test]
fn a_100k_node_chain_prints_parses_verifies_and_evaluates() {
    let n = 100_000;
    let b = GraphBuilder::new("chain");
    let x = b.input("x", DType::F64, &[]);
    let mut h = x;
    for i in 0..n {
        h = if i % 2 == 0 { h.sin() } else { h * 0.5 + 1.0 };
    }
    let g = b.build(&[("y", h)]).unwrap();
    let text = g.to_string();
    let back = parse(&text).unwrap();
    verify(&back).unwrap();
    assert_eq!(back.len(), g.len());
    let mut expected: f64 = 0.25;
    for i in 0..n {
        expected = if i % 2 == 0 {
            expected.sin()
        } else {
            expected * 0.5 + 1.0
        };
    }
    let got = interpret(&back, &[scalar(0.25)]).unwrap()[0].to_f64_vec()[0];
    assert_eq!(got, expected);
    assert!(to_dot(&back).len() > text.len() / 2);
}

#[test]
fn dot_export_names_ops_and_shapes() {
    let dot = to_dot(&cases::case05_linear().unwrap());
    assert!(dot.starts_with("digraph \"case05_linear\" {"));
    assert!(dot.contains("n3 [label=\"%0 = matmul\\nf64[4,2]\"];"), "{dot}");
    assert!(
        dot.contains("n4 [label=\"%1 = broadcast[shape=(4, 2)]\\nf64[4,2]\"];"),
        "{dot}"
    );
    assert!(dot.contains("n0 -> n3 [label=\"0\"];"));
    assert!(dot.contains("\"out:Y\""));
}

#[test]
fn huge_shapes_are_errors_not_crashes() {
    let err = parse(
        "graph @f(%x: f32[99999999999,99999999999]) -> (y: f32[]) {\n  %y = reduce_sum[axes=(0, 1)] %x\n  return %y\n}",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("1:14: f32[99999999999,99999999999] has more elements"),
        "{err}"
    );
    let b = GraphBuilder::new("huge");
    let x = b.input("x", DType::F32, &[1 << 30, 1 << 30]);
    assert!(b
        .build(&[("x", x)])
        .unwrap_err()
        .to_string()
        .contains("more elements than a tensor may hold"));
    let b = GraphBuilder::new("huge");
    let x = b.input("x", DType::F32, &[4]);
    let y = x.broadcast_to(&[1 << 30, 1 << 30, 4]);
    assert!(b
        .build(&[("y", y)])
        .unwrap_err()
        .to_string()
        .contains("more elements than a tensor may hold"));
}

#[test]
fn eval_op_checks_operand_types() {
    // Mismatched operands are an error, never a read past a buffer.
    let a = Tensor::from_vec(vec![2], vec![1.0f32, 2.0]).unwrap();
    let b = Tensor::from_vec(vec![2], vec![1.0f64, 2.0]).unwrap();
    let ty = TensorType::new(DType::F64, vec![2]);
    let err = wengert::ir::interp::eval_op(&Op::Binary(BinaryOp::Add), &[&a, &b], &ty).unwrap_err();
    assert!(err.contains("different dtypes"), "{err}");
}
