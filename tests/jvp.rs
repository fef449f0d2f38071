//! Forward mode and second order: the JVP of every op against central
//! finite differences and against its VJP (`uᵀ(J v) = (uᵀ J) v`), through
//! the interpreter and the JIT; loops against their unrolled graphs; the
//! seed's case 4 Jacobian both ways; Hessians of closed forms; HVPs against
//! finite differences of the gradient.

mod common;

use common::Rng;
use wengert::passes::jvp::jvp as jvp_graph;
use wengert::{
    autodiff, cases, hessian, hvp, interpret, jacobian, models, DType, Graph, GraphBuilder, JacobianMode, Options,
    Seed, Tensor, Var,
};

fn tensor(shape: &[usize], v: Vec<f64>) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

/// Inputs in [lo, hi) for every input of `g`.
fn inputs_in(g: &Graph, rng: &mut Rng, lo: f64, hi: f64) -> Vec<Tensor> {
    g.inputs()
        .iter()
        .map(|i| {
            let v = rng.vec(i.ty.num_elements(), lo, hi);
            tensor(&i.ty.shape, v).convert(i.ty.dtype)
        })
        .collect()
}

/// The JVP of `g` (every float input perturbed) at `x` along random `v`:
/// against central differences `(f(x + hv) − f(x − hv)) / 2h` of every
/// float output, against the VJP through `uᵀ(J v) = (uᵀ J) v` for random
/// seeds `u`, and compiled against interpreted.
fn check(g: &Graph, x: &[Tensor], tol: f64) {
    let name = &g.name;
    let wrt = g.differentiable_inputs();
    let t = jvp_graph(g, &wrt).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut rng = Rng::new(name.len() as u64 * 31 + 5);
    let v: Vec<Tensor> = wrt
        .iter()
        .map(|w| {
            let ty = &g.input(w).unwrap().ty;
            tensor(&ty.shape, rng.vec(ty.num_elements(), -1.0, 1.0))
        })
        .collect();
    let mut tin = x.to_vec();
    tin.extend(v.iter().cloned());
    let tout = interpret(&t.graph, &tin).unwrap();
    // Central differences along v.
    let h = 1e-6;
    let (up, down) = (
        interpret(g, &moved(g, x, &wrt, &v, h)).unwrap(),
        interpret(g, &moved(g, x, &wrt, &v, -h)).unwrap(),
    );
    for (k, oname) in t.tangent_outputs.iter().enumerate() {
        let o = g.outputs().iter().position(|o| &o.name == oname).unwrap();
        let fd: Vec<f64> = up[o]
            .to_f64_vec()
            .iter()
            .zip(down[o].to_f64_vec())
            .map(|(a, b)| (a - b) / (2.0 * h))
            .collect();
        common::assert_close(
            &tout[t.primal_outputs + k].to_f64_vec(),
            &fd,
            tol,
            &format!("{name}: {oname}"),
        );
    }
    // uᵀ(J v) = (uᵀ J) v.
    let seeds: Vec<(String, Tensor)> = g
        .outputs()
        .iter()
        .filter(|o| g.ty(o.node).dtype.is_float())
        .map(|o| {
            let ty = g.ty(o.node);
            (o.name.clone(), tensor(&ty.shape, rng.vec(ty.num_elements(), -1.0, 1.0)))
        })
        .collect();
    let seed_list: Vec<(&str, Seed)> = seeds
        .iter()
        .map(|(n, s)| (n.as_str(), Seed::Const(s.clone())))
        .collect();
    let grad = autodiff(g, &wrt, &seed_list).unwrap();
    let gout = interpret(&grad.graph, x).unwrap();
    let mut lhs = 0.0;
    for (k, oname) in t.tangent_outputs.iter().enumerate() {
        let u = &seeds.iter().find(|(n, _)| n == oname).unwrap().1;
        lhs += dot(&u.to_f64_vec(), &tout[t.primal_outputs + k].to_f64_vec());
    }
    let mut rhs = 0.0;
    for (k, vv) in v.iter().enumerate() {
        rhs += dot(&gout[grad.primal_outputs + k].to_f64_vec(), &vv.to_f64_vec());
    }
    assert!(
        (lhs - rhs).abs() <= 1e-10 * (1.0 + lhs.abs()),
        "{name}: uᵀ(Jv) = {lhs} but (uᵀJ)v = {rhs}"
    );
    // The compiled JVP gives the interpreter's tangents.
    let exe = wengert::jvp(g, &wrt, &Options::default()).unwrap();
    let refs: Vec<&Tensor> = tin.iter().collect();
    let got = exe.call(&refs).unwrap();
    for (k, (a, b)) in got.iter().zip(&tout).enumerate() {
        common::assert_close(
            &a.to_f64_vec(),
            &b.to_f64_vec(),
            1e-9,
            &format!("{name}: compiled output {k}"),
        );
    }
}

/// `x` with each input named in `wrt` moved by `s·v` (its tangent).
fn moved(g: &Graph, x: &[Tensor], wrt: &[&str], v: &[Tensor], s: f64) -> Vec<Tensor> {
    let mut ins = x.to_vec();
    for (w, vv) in wrt.iter().zip(v) {
        let k = g.inputs().iter().position(|i| i.name == *w).unwrap();
        let xs: Vec<f64> = ins[k]
            .to_f64_vec()
            .iter()
            .zip(vv.to_f64_vec())
            .map(|(a, b)| a + s * b)
            .collect();
        ins[k] = tensor(ins[k].shape(), xs);
    }
    ins
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `f(x₀, x₁, …)` on inputs of the given shapes, values in [lo, hi): in
/// f64 by [`check`]; in f32, the compiled JVP against the interpreted one
/// and `uᵀ(J v) = (uᵀ J) v` to f32 rounding (finite differences mean
/// little in f32).
fn check_op(name: &str, shapes: &[&[usize]], lo: f64, hi: f64, f: impl for<'b> Fn(&[Var<'b>]) -> Var<'b>) {
    for d in [DType::F64, DType::F32] {
        let b = GraphBuilder::new(name);
        let xs: Vec<Var> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| b.input(&format!("x{i}"), d, s))
            .collect();
        let y = f(&xs);
        let g = b.build(&[("y", y)]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut rng = Rng::new(name.len() as u64 * 7919 + shapes.len() as u64);
        let x = inputs_in(&g, &mut rng, lo, hi);
        if d == DType::F64 {
            check(&g, &x, 1e-6);
        } else {
            check_f32(&g, &x);
        }
    }
}

/// The f32 half of [`check_op`].
fn check_f32(g: &Graph, x: &[Tensor]) {
    let name = &g.name;
    let wrt = g.differentiable_inputs();
    let t = jvp_graph(g, &wrt).unwrap_or_else(|e| panic!("{name} f32: {e}"));
    let mut rng = Rng::new(7);
    let mut tin = x.to_vec();
    for w in &wrt {
        let ty = &g.input(w).unwrap().ty;
        tin.push(tensor(&ty.shape, rng.vec(ty.num_elements(), -1.0, 1.0)).convert(DType::F32));
    }
    let want = interpret(&t.graph, &tin).unwrap();
    let exe = wengert::jvp(g, &wrt, &Options::default()).unwrap();
    let got = exe.call(&tin.iter().collect::<Vec<_>>()).unwrap();
    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
        common::assert_close(
            &a.to_f64_vec(),
            &b.to_f64_vec(),
            1e-4,
            &format!("{name} f32: compiled output {k}"),
        );
    }
    let grad = autodiff(g, &wrt, &[("y", Seed::Const(Tensor::full(want[0].ty().clone(), 1.0)))]).unwrap();
    let gout = interpret(&grad.graph, x).unwrap();
    let lhs: f64 = want[t.primal_outputs].to_f64_vec().iter().sum();
    let mut rhs = 0.0;
    for (k, v) in tin[x.len()..].iter().enumerate() {
        rhs += dot(&gout[grad.primal_outputs + k].to_f64_vec(), &v.to_f64_vec());
    }
    assert!(
        (lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()),
        "{name} f32: uᵀ(Jv) = {lhs} but (uᵀJ)v = {rhs}"
    );
}

#[test]
fn unary_tangents_match_differences_and_their_vjps() {
    common::ops::unary_cases(&mut |n, s, lo, hi, f| check_op(n, s, lo, hi, f));
}

#[test]
fn binary_tangents_with_broadcasting() {
    common::ops::binary_cases(&mut |n, s, lo, hi, f| check_op(n, s, lo, hi, f));
}

#[test]
fn shape_ops_contractions_and_softmax_cross_entropy() {
    // (`convert` through f32 has no useful finite difference at h = 1e-6;
    // the fuzzer checks its rule by `uᵀ(J v) = (uᵀ J) v`.)
    common::ops::shape_cases(&mut |n, s, lo, hi, f| check_op(n, s, lo, hi, f));
}

#[test]
fn max_ties_split_the_tangent_evenly_and_relu_prime_of_zero_is_zero() {
    let b = GraphBuilder::new("ties");
    let x = b.input("x", DType::F64, &[3]);
    let y = b.input("y", DType::F64, &[3]);
    let g = b
        .build(&[("m", x.max(y)), ("r", x.relu()), ("top", x.max_over(&[0]))])
        .unwrap();
    let t = jvp_graph(&g, &["x", "y"]).unwrap();
    let out = interpret(
        &t.graph,
        &[
            tensor(&[3], vec![1.0, 0.0, 1.0]),
            tensor(&[3], vec![1.0, 2.0, 0.0]),
            tensor(&[3], vec![1.0, 1.0, 1.0]),
            tensor(&[3], vec![3.0, 3.0, 3.0]),
        ],
    )
    .unwrap();
    // max: a tie at 0 takes ½ of each tangent; relu′(0) = 0; the tied
    // maxima x[0] = x[2] = 1 share evenly.
    assert_eq!(out[3].to_f64_vec(), vec![2.0, 3.0, 1.0]);
    assert_eq!(out[4].to_f64_vec(), vec![1.0, 0.0, 1.0]);
    assert_eq!(out[5].to_f64_vec(), vec![1.0]);
}

#[test]
fn jvp_through_a_loop_equals_the_unrolled_graphs() {
    for t in [0, 1, 7] {
        let looped = models::rnn(t, 5, DType::F64, true).unwrap();
        let unrolled = models::rnn(t, 5, DType::F64, false).unwrap();
        let x = inputs_in(&looped, &mut Rng::new(t as u64 + 1), -0.5, 0.5);
        let wrt = looped.differentiable_inputs();
        let (a, b) = (jvp_graph(&looped, &wrt).unwrap(), jvp_graph(&unrolled, &wrt).unwrap());
        let v = inputs_in(&a.graph, &mut Rng::new(99), -1.0, 1.0);
        let mut tin = x.clone();
        tin.extend(v[x.len()..].iter().cloned());
        let (oa, ob) = (interpret(&a.graph, &tin).unwrap(), interpret(&b.graph, &tin).unwrap());
        for (p, q) in oa.iter().zip(&ob) {
            common::assert_close(&p.to_f64_vec(), &q.to_f64_vec(), 1e-12, &format!("rnn T = {t}"));
        }
        if t > 0 {
            check(&looped, &x, 1e-6);
        }
    }
}

#[test]
fn case04_jacobian_forward_and_reverse() {
    let g = cases::case04_vjp().unwrap();
    let (x1, x2) = (0.7, 1.3);
    let ins = [Tensor::scalar(DType::F64, x1), Tensor::scalar(DType::F64, x2)];
    let refs: Vec<&Tensor> = ins.iter().collect();
    // Rows: y1, y2; columns: x1, x2. Case 4: [[x2, x1], [1, 2·x2]].
    let want = [[x2, x1], [1.0, 2.0 * x2]];
    for (row, of) in ["y1", "y2"].into_iter().enumerate() {
        for mode in [JacobianMode::Forward, JacobianMode::Reverse] {
            let j = jacobian(&g, of, &["x1", "x2"], Some(mode), &Options::default()).unwrap();
            assert_eq!(j.mode, mode);
            let m = j.call(&refs).unwrap().to_f64_vec();
            assert_eq!(m, want[row].to_vec(), "{of} {mode:?}");
        }
    }
    // A tall map chooses forward mode, a wide one reverse.
    let b = GraphBuilder::new("tall");
    let x = b.input("x", DType::F64, &[2]);
    let w = b.data("w", DType::F64, &[2, 50]);
    let g = b.build(&[("y", x.reshape(&[1, 2]).matmul(w).tanh())]).unwrap();
    let j = jacobian(&g, "y", &["x"], None, &Options::default()).unwrap();
    assert_eq!(j.mode, JacobianMode::Forward);
    let r = jacobian(&g, "y", &["x"], Some(JacobianMode::Reverse), &Options::default()).unwrap();
    let ins = inputs_in(&g, &mut Rng::new(4), -1.0, 1.0);
    let refs: Vec<&Tensor> = ins.iter().collect();
    common::assert_close(
        &j.call(&refs).unwrap().to_f64_vec(),
        &r.call(&refs).unwrap().to_f64_vec(),
        1e-14,
        "tall Jacobian both ways",
    );
}

#[test]
fn hessians_of_closed_forms() {
    // f = x1²·x2 + sin x1 + x2³:
    // H = [[2·x2 − sin x1, 2·x1], [2·x1, 6·x2]].
    let b = GraphBuilder::new("closed");
    let x1 = b.input("x1", DType::F64, &[]);
    let x2 = b.input("x2", DType::F64, &[]);
    let f = x1.square() * x2 + x1.sin() + x2.powf(3.0);
    let g = b.build(&[("f", f)]).unwrap();
    let h = hessian(&g, "f", &["x1", "x2"], &Options::default()).unwrap();
    let (a, c) = (0.4, -1.1);
    let ins = [Tensor::scalar(DType::F64, a), Tensor::scalar(DType::F64, c)];
    let got = h.call(&ins.iter().collect::<Vec<_>>()).unwrap().to_f64_vec();
    let want = [2.0 * c - a.sin(), 2.0 * a, 2.0 * a, 6.0 * c];
    common::assert_close(&got, &want, 1e-14, "closed-form Hessian");
    // A vector input: f = ½ xᵀA x (A symmetric) has H = A.
    let b = GraphBuilder::new("quadratic");
    let x = b.input("x", DType::F64, &[3]);
    let am = b.data("A", DType::F64, &[3, 3]);
    let q = x.reshape(&[1, 3]).matmul(am).matmul(x.reshape(&[3, 1])).sum_all() * 0.5;
    let g = b.build(&[("q", q)]).unwrap();
    let sym = vec![2.0, 0.5, -1.0, 0.5, 3.0, 0.25, -1.0, 0.25, 1.5];
    let ins = [tensor(&[3], vec![0.3, -0.2, 0.9]), tensor(&[3, 3], sym.clone())];
    let h = hessian(&g, "q", &["x"], &Options::default()).unwrap();
    common::assert_close(
        &h.call(&ins.iter().collect::<Vec<_>>()).unwrap().to_f64_vec(),
        &sym,
        1e-14,
        "H = A",
    );
}

#[test]
fn hvp_matches_differences_of_the_gradient() {
    let g = models::mlp(4, 6, 5, 3, DType::F64, false).unwrap();
    let wrt = ["W1", "b1", "W2", "b2"];
    let exe = hvp(&g, "loss", &wrt, &Options::default()).unwrap();
    let mut rng = Rng::new(21);
    let mut x = inputs_in(&g, &mut rng, -0.5, 0.5);
    // One-hot targets.
    let t = g.inputs().iter().position(|i| i.name == "t").unwrap();
    x[t] = tensor(
        &[4, 3],
        (0..12).map(|i| if i % 3 == (i / 3) % 3 { 1.0 } else { 0.0 }).collect(),
    );
    let v: Vec<Tensor> = wrt
        .iter()
        .map(|w| {
            let ty = &g.input(w).unwrap().ty;
            tensor(&ty.shape, rng.vec(ty.num_elements(), -1.0, 1.0))
        })
        .collect();
    let mut args: Vec<&Tensor> = x.iter().collect();
    args.extend(v.iter());
    let out = exe.call(&args).unwrap();
    // (∇f(x + hv) − ∇f(x − hv)) / 2h.
    let gg = autodiff(&g, &wrt, &[]).unwrap();
    let grad_at = |s: f64| interpret(&gg.graph, &moved(&g, &x, &wrt, &v, s)).unwrap()[gg.primal_outputs..].to_vec();
    let h = 1e-5;
    let (up, down) = (grad_at(h), grad_at(-h));
    for (k, w) in wrt.iter().enumerate() {
        let fd: Vec<f64> = up[k]
            .to_f64_vec()
            .iter()
            .zip(down[k].to_f64_vec())
            .map(|(a, b)| (a - b) / (2.0 * h))
            .collect();
        common::assert_close(&out[wrt.len() + k].to_f64_vec(), &fd, 1e-6, &format!("hvp_{w}"));
    }
}

#[test]
fn errors_name_what_is_wrong() {
    let g = cases::case04_vjp().unwrap();
    let e = hvp(&g, "y9", &["x1"], &Options::default()).err().unwrap().to_string();
    assert!(e.contains("y9") && e.contains("no such output"), "{e}");
    let e = jvp_graph(&g, &["x3"]).unwrap_err().to_string();
    assert!(e.contains("x3"), "{e}");
    let b = GraphBuilder::new("vec");
    let x = b.input("x", DType::F64, &[2]);
    let g = b.build(&[("y", x * 2.0)]).unwrap();
    let e = hessian(&g, "y", &["x"], &Options::default()).err().unwrap().to_string();
    assert!(e.contains("float scalar output"), "{e}");
    let big = models::mlp(4, 20, 16, 3, DType::F64, false).unwrap();
    let e = hessian(&big, "loss", &["W1"], &Options::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("320 elements") && e.contains("hvp"), "{e}");
}

/// The Hessian of a small MLP's loss is one compiled function, symmetric,
/// and its columns are the HVPs of the unit vectors.
#[test]
fn mlp_hessian_is_one_function_and_matches_its_hvps() {
    let g = models::mlp(4, 3, 4, 2, DType::F64, false).unwrap();
    let wrt = ["W1", "b1", "W2", "b2"];
    let h = hessian(&g, "loss", &wrt, &Options::default()).unwrap();
    assert_eq!(h.executable().outputs().len(), 1);
    let mut x = inputs_in(&g, &mut Rng::new(12), -0.8, 0.8);
    let t = g.inputs().iter().position(|i| i.name == "t").unwrap();
    x[t] = tensor(&[4, 2], vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
    let refs: Vec<&Tensor> = x.iter().collect();
    let m = h.call(&refs).unwrap();
    let n = 3 * 4 + 4 + 4 * 2 + 2;
    assert_eq!(m.shape(), &[n, n]);
    let m = m.to_f64_vec();
    for i in 0..n {
        for j in 0..n {
            assert!((m[i * n + j] - m[j * n + i]).abs() < 1e-12, "H[{i},{j}] ≠ H[{j},{i}]");
        }
    }
    let f = hvp(&g, "loss", &wrt, &Options::default()).unwrap();
    let types: Vec<_> = wrt.iter().map(|w| g.input(w).unwrap().ty.clone()).collect();
    let mut col = 0;
    for (b, ty) in types.iter().enumerate() {
        for k in 0..ty.num_elements() {
            let v: Vec<Tensor> = types
                .iter()
                .enumerate()
                .map(|(c, t)| {
                    let mut e = vec![0.0; t.num_elements()];
                    if c == b {
                        e[k] = 1.0;
                    }
                    tensor(&t.shape, e)
                })
                .collect();
            let mut args = refs.clone();
            args.extend(v.iter());
            let out = f.call(&args).unwrap();
            let hv: Vec<f64> = out[wrt.len()..].iter().flat_map(|t| t.to_f64_vec()).collect();
            let column: Vec<f64> = (0..n).map(|r| m[r * n + col]).collect();
            common::assert_close(&column, &hv, 1e-13, &format!("column {col}"));
            col += 1;
        }
    }
}

/// Forward over reverse (`jvp ∘ autodiff`, what `hvp` compiles) and reverse
/// over forward (`autodiff ∘ jvp`: the gradient of `ḟ = ∇f·v` with respect
/// to x is `H v`) agree.
#[test]
fn forward_over_reverse_equals_reverse_over_forward() {
    let g = models::mlp(3, 4, 5, 2, DType::F64, false).unwrap();
    let wrt = ["W1", "b1", "W2", "b2"];
    let fwd_rev = wengert::forward::hvp_graph(&g, "loss", &wrt).unwrap();
    let t = jvp_graph(&g, &wrt).unwrap();
    let rev_fwd = autodiff(&t.graph, &wrt, &[("loss", Seed::Zero), ("tangent_loss", Seed::One)]).unwrap();
    let mut rng = Rng::new(8);
    let ins = inputs_in(&fwd_rev, &mut rng, -0.5, 0.5);
    let a = interpret(&fwd_rev, &ins).unwrap();
    let b = interpret(&rev_fwd.graph, &ins).unwrap();
    for (k, w) in wrt.iter().enumerate() {
        let hv_a = a[wrt.len() + k].to_f64_vec();
        let hv_b = b[rev_fwd.primal_outputs + k].to_f64_vec();
        common::assert_close(&hv_a, &hv_b, 1e-12, &format!("H·v for {w}"));
    }
}

/// A maximum over an empty axis, or of a group holding NaN, has a zero
/// tangent (as its VJP gives a zero adjoint), not 0/0; a Jacobian or
/// Hessian with nothing to differentiate by is an error, not a panic.
#[test]
fn empty_and_nan_maxima_have_zero_tangents_and_empty_wrt_is_an_error() {
    let b = GraphBuilder::new("empty_max");
    let x = b.input("x", DType::F64, &[3, 0]);
    let z = b.input("z", DType::F64, &[2]);
    let g = b.build(&[("m", x.max_over(&[1])), ("n", z.max_over(&[0]))]).unwrap();
    let t = jvp_graph(&g, &["x", "z"]).unwrap();
    let out = interpret(
        &t.graph,
        &[
            tensor(&[3, 0], vec![]),
            tensor(&[2], vec![f64::NAN, 1.0]),
            tensor(&[3, 0], vec![]),
            tensor(&[2], vec![1.0, 1.0]),
        ],
    )
    .unwrap();
    assert_eq!(out[2].to_f64_vec(), vec![0.0; 3]);
    assert_eq!(out[3].to_f64_vec(), vec![0.0]);
    let b = GraphBuilder::new("data_only");
    let x = b.data("x", DType::F64, &[2]);
    let g = b.build(&[("y", x * 2.0)]).unwrap();
    for mode in [None, Some(JacobianMode::Reverse), Some(JacobianMode::Forward)] {
        let e = jacobian(&g, "y", &[], mode, &Options::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no inputs to differentiate"), "{e}");
    }
    let b = GraphBuilder::new("scalar");
    let x = b.data("x", DType::F64, &[]);
    let g = b.build(&[("y", x * 2.0)]).unwrap();
    let e = hessian(&g, "y", &[], &Options::default()).err().unwrap().to_string();
    assert!(e.contains("no inputs to differentiate"), "{e}");
}

/// The names forward mode adds (`tangent_<input>`, `tangent_<output>`)
/// must be free, and an error says which one is taken; the Jacobian's
/// reverse-mode seed takes a free name of its own.
#[test]
fn name_collisions_are_errors_naming_the_name_or_avoided() {
    let b = GraphBuilder::new("taken");
    let x = b.input("x", DType::F64, &[]);
    let t = b.input("tangent_x", DType::F64, &[]);
    let g = b.build(&[("y", x * t)]).unwrap();
    let e = jvp_graph(&g, &["x"]).unwrap_err().to_string();
    assert!(e.contains("`tangent_x`") && e.contains("rename"), "{e}");

    let b = GraphBuilder::new("taken_out");
    let x = b.input("x", DType::F64, &[]);
    let g = b.build(&[("y", x * 2.0), ("tangent_y", x * 3.0)]).unwrap();
    let e = jvp_graph(&g, &["x"]).unwrap_err().to_string();
    assert!(e.contains("`tangent_y`") && e.contains("output `y`"), "{e}");

    // An input already called `jacobian_seed`: reverse mode still works.
    let b = GraphBuilder::new("seeded");
    let x = b.input("x", DType::F64, &[2]);
    let s = b.input("jacobian_seed", DType::F64, &[]);
    let g = b.build(&[("y", (x * s).sum_all())]).unwrap();
    let j = jacobian(&g, "y", &["x"], Some(JacobianMode::Reverse), &Options::default()).unwrap();
    let ins = [tensor(&[2], vec![1.0, 2.0]), Tensor::scalar(DType::F64, 3.0)];
    let refs: Vec<&Tensor> = ins.iter().collect();
    assert_eq!(j.call(&refs).unwrap().to_f64_vec(), vec![3.0, 3.0]);
}

/// The Hessian graph holds only what its output needs: nothing of the
/// gradient outputs or of unused tangents is copied into its columns.
#[test]
fn the_hessian_graph_has_no_dead_nodes() {
    let g = models::mlp(2, 3, 2, 2, DType::F64, false).unwrap();
    let h = wengert::hessian_graph(&g, "loss", &["W1", "b1"]).unwrap();
    let mut live = vec![false; h.len()];
    for o in h.outputs() {
        live[o.node.index()] = true;
    }
    for id in h.node_ids().rev() {
        if live[id.index()] {
            for a in h.args(id) {
                live[a.index()] = true;
            }
        }
    }
    let dead: Vec<String> = h
        .node_ids()
        .filter(|&id| !live[id.index()] && !matches!(h.op(id), wengert::Op::Input { .. }))
        .map(|id| h.value_name(id))
        .collect();
    assert!(dead.is_empty(), "dead nodes: {dead:?}");
}
