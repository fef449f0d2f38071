//! The loop op `scan`: its text form, builder, interpreter semantics,
//! derivatives and compiled code, each checked against the same loop
//! unrolled into a straight-line graph.

mod common;

use common::{assert_close, case_path, check_gradients, Rng};
use wengert::{interpret, parse, DType, Graph, GraphBuilder, Tensor, Var};

/// The vector RNN step `h' = tanh(W h + b + x)`, `y = h'` (or `h' · 2`
/// when `scaled`), built as a scan of `t` steps and unrolled.
fn rnn(t: usize, h: usize, dtype: DType, reverse: bool, as_scan: bool) -> Graph {
    let b = GraphBuilder::new(if as_scan { "rnn_scan" } else { "rnn_unrolled" });
    let w = b.input("W", dtype, &[h, h]);
    let bias = b.input("b", dtype, &[h]);
    let h0 = b.input("h0", dtype, &[h]);
    let xs = b.input("xs", dtype, &[t, h]);
    fn step<'a>(h: usize, w: Var<'a>, bias: Var<'a>, hh: Var<'a>, x: Var<'a>) -> (Var<'a>, Var<'a>) {
        let wh = w.matmul(hh.reshape(&[h, 1])).reshape(&[h]);
        let next = (wh + bias + x).tanh();
        (next, (next * next).sum_all())
    }
    let (h_t, ys) = if as_scan {
        let (carry, ys) = b.scan_with(t, reverse, &[w, bias], &[h0], &[xs], |_, c, carry, x| {
            let (next, y) = step(h, c[0], c[1], carry[0], x[0]);
            (vec![next], vec![y])
        });
        (carry[0], ys[0])
    } else {
        let mut hh = h0;
        let mut ys = vec![None; t];
        let order: Vec<usize> = if reverse {
            (0..t).rev().collect()
        } else {
            (0..t).collect()
        };
        for s in order {
            let x = xs.slice(&[s, 0], &[s + 1, h]).reshape(&[h]);
            let (next, y) = step(h, w, bias, hh, x);
            hh = next;
            ys[s] = Some(y.reshape(&[1]));
        }
        let ys: Vec<Var<'_>> = ys.into_iter().map(|y| y.unwrap()).collect();
        let stacked = if ys.is_empty() {
            b.constant(Tensor::try_zeros(wengert::TensorType::new(dtype, vec![0])).unwrap())
        } else {
            b.concat(&ys, 0)
        };
        (hh, stacked)
    };
    // A scalar loss of both results, for gradients.
    let loss = h_t.sum_all() + (ys * ys).sum_all() * 0.5;
    b.build(&[("loss", loss), ("h", h_t), ("ys", ys)]).unwrap()
}

/// The same graph with only its first output (the loss).
/// `H ← tanh(H·W + X_t)` over a batch of `batch` rows: the weight
/// gradient's per-step product `H_tᵀ·Ḡ_t` sums over the batch (k > 1).
fn batched_rnn(t: usize, h: usize, batch: usize, dtype: DType) -> Graph {
    let b = GraphBuilder::new("batched_rnn");
    let w = b.input("W", dtype, &[h, h]);
    let h0 = b.input("h0", dtype, &[batch, h]);
    let xs = b.input("xs", dtype, &[t, batch, h]);
    let (h_t, ys) = b.scan(t, &[w], &[h0], &[xs], |_, c, carry, x| {
        let next = (carry[0].matmul(c[0]) + x[0]).tanh();
        (vec![next], vec![(next * next).sum_all()])
    });
    let loss = h_t[0].sum_all() + ys[0].sum_all();
    b.build(&[("loss", loss)]).unwrap()
}

fn loss_only(g: &Graph) -> Graph {
    let mut g = g.clone();
    let loss = g.outputs()[0].node;
    g.clear_outputs();
    g.add_output("loss", loss).unwrap();
    g
}

fn inputs_for(g: &Graph, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    common::random_inputs(g, &mut rng, -0.5, 0.5)
}

#[test]
fn scan_matches_the_unrolled_graph_in_the_interpreter() {
    for dtype in [DType::F64, DType::F32] {
        for reverse in [false, true] {
            for t in [0, 1, 2, 7] {
                let looped = rnn(t, 3, dtype, reverse, true);
                let unrolled = rnn(t, 3, dtype, reverse, false);
                let inputs = inputs_for(&looped, 7 + t as u64);
                let a = interpret(&looped, &inputs).unwrap();
                let b = interpret(&unrolled, &inputs).unwrap();
                for (x, y) in a.iter().zip(&b) {
                    assert_eq!(x.to_f64_vec(), y.to_f64_vec(), "{dtype} reverse={reverse} T={t}");
                }
            }
        }
    }
}

#[test]
fn scan_gradients_match_the_unrolled_graph_and_finite_differences() {
    for reverse in [false, true] {
        for t in [0, 1, 2, 7] {
            let looped = loss_only(&rnn(t, 3, DType::F64, reverse, true));
            let unrolled = loss_only(&rnn(t, 3, DType::F64, reverse, false));
            let inputs = inputs_for(&looped, 11 + t as u64);
            let wrt = ["W", "b", "h0", "xs"];
            let a = common::autodiff_gradients(&looped, &inputs, &wrt);
            let b = common::autodiff_gradients(&unrolled, &inputs, &wrt);
            for ((x, y), name) in a.iter().zip(&b).zip(wrt) {
                assert_close(x, y, 1e-12, &format!("grad_{name} reverse={reverse} T={t}"));
            }
            check_gradients(&looped, &inputs, 1e-6);
        }
    }
}

#[test]
fn seed_case_8_as_a_loop_agrees_with_the_unrolled_file_and_the_formulas() {
    let looped = parse(&std::fs::read_to_string(case_path("case08_recurrence_scan.wg")).unwrap()).unwrap();
    let unrolled = parse(&std::fs::read_to_string(case_path("case08_recurrence.wg")).unwrap()).unwrap();
    let (a, b, x) = (0.7, -0.2, 0.4);
    let inputs = vec![Tensor::scalar_f64(a), Tensor::scalar_f64(b), Tensor::scalar_f64(x)];
    assert_eq!(
        interpret(&looped, &inputs).unwrap()[0].to_f64_vec(),
        interpret(&unrolled, &inputs).unwrap()[0].to_f64_vec()
    );
    // The seed's backward through time: z̄_t = h̄_{t+1}(1 − h_{t+1}²),
    // ā = Σ z̄_t h_t, b̄ = Σ z̄_t, h̄_t = z̄_t a, x̄ = h̄_0.
    let mut h = vec![x];
    for t in 0..4 {
        h.push((a * h[t] + b).tanh());
    }
    let (mut abar, mut bbar, mut hbar) = (0.0, 0.0, 1.0);
    for t in (0..4).rev() {
        let zbar = hbar * (1.0 - h[t + 1] * h[t + 1]);
        abar += zbar * h[t];
        bbar += zbar;
        hbar = zbar * a;
    }
    let grads = common::autodiff_gradients(&looped, &inputs, &["a", "b", "x"]);
    assert_close(&grads[0], &[abar], 1e-14, "ā");
    assert_close(&grads[1], &[bbar], 1e-14, "b̄");
    assert_close(&grads[2], &[hbar], 1e-14, "x̄");
}

#[test]
fn scan_prints_and_parses_back_identically() {
    let g = rnn(5, 2, DType::F32, true, true);
    let text = g.to_string();
    assert!(text.contains("scan[carry=1, consts=2, length=5, reverse=1]"), "{text}");
    let back = parse(&text).unwrap();
    assert_eq!(back.to_string(), text);
    let inputs = inputs_for(&g, 3);
    assert_eq!(
        interpret(&g, &inputs).unwrap()[1].to_f64_vec(),
        interpret(&back, &inputs).unwrap()[1].to_f64_vec()
    );
    // The gradient graph (a forward loop and a backward loop) too.
    let grad = wengert::autodiff(&loss_only(&g), &["W", "b"], &[]).unwrap().graph;
    let text = grad.to_string();
    assert_eq!(parse(&text).unwrap().to_string(), text);
    let dot = wengert::ir::to_dot(&grad);
    assert!(dot.contains("subgraph cluster_"), "{dot}");
}

#[test]
fn nested_scans_agree_with_the_unrolled_loops() {
    // An outer loop of 3 steps whose body runs an inner loop of 4 steps:
    // h ← tanh(a·h + x_t) four times per outer step, then h ← h·c.
    let build = |nested: bool| {
        let b = GraphBuilder::new("nested");
        let a = b.input("a", DType::F64, &[]);
        let c = b.input("c", DType::F64, &[]);
        let h0 = b.input("h0", DType::F64, &[]);
        let xs = b.input("xs", DType::F64, &[3, 4]);
        let h = if nested {
            let (h, _) = b.scan(3, &[a, c], &[h0], &[xs], |s, k, h, x| {
                let (inner, _) = s.scan(4, &[k[0]], &[h[0]], &[x[0]], |_, k, h, x| {
                    (vec![(k[0] * h[0] + x[0]).tanh()], vec![])
                });
                (vec![inner[0] * k[1]], vec![])
            });
            h[0]
        } else {
            let mut h = h0;
            for i in 0..3 {
                for j in 0..4 {
                    let x = xs.slice(&[i, j], &[i + 1, j + 1]).reshape(&[]);
                    h = (a * h + x).tanh();
                }
                h = h * c;
            }
            h
        };
        b.build(&[("h", h)]).unwrap()
    };
    let (looped, unrolled) = (build(true), build(false));
    let inputs = inputs_for(&looped, 5);
    assert_eq!(
        interpret(&looped, &inputs).unwrap()[0].to_f64_vec(),
        interpret(&unrolled, &inputs).unwrap()[0].to_f64_vec()
    );
    let wrt = ["a", "c", "h0", "xs"];
    let ga = common::autodiff_gradients(&looped, &inputs, &wrt);
    let gb = common::autodiff_gradients(&unrolled, &inputs, &wrt);
    for ((x, y), name) in ga.iter().zip(&gb).zip(wrt) {
        assert_close(x, y, 1e-12, &format!("grad_{name}"));
    }
    let text = looped.to_string();
    assert_eq!(parse(&text).unwrap().to_string(), text);
}

#[test]
fn grad_of_grad_through_a_loop_is_a_hessian_vector_product() {
    // f(a) = h_T of case 8 with T = 6; d/da of (df/da · v) against central
    // differences of df/da.
    let g = {
        let b = GraphBuilder::new("f");
        let a = b.input("a", DType::F64, &[]);
        let bias = b.input("b", DType::F64, &[]);
        let x = b.input("x", DType::F64, &[]);
        let h = b.fori_loop(6, &[a, bias], &[x], |_, c, h| vec![(c[0] * h[0] + c[1]).tanh()]);
        b.build(&[("L", h[0])]).unwrap()
    };
    let gg = wengert::autodiff(&g, &["a"], &[]).unwrap();
    // Keep only the gradient as the output to differentiate again.
    let mut first = gg.graph.clone();
    let grad_node = first.output("grad_a").unwrap().node;
    first.clear_outputs();
    first.add_output("da", grad_node).unwrap();
    let second = wengert::autodiff(&first, &["a"], &[]).unwrap();
    let at = |a: f64| vec![Tensor::scalar_f64(a), Tensor::scalar_f64(0.1), Tensor::scalar_f64(0.3)];
    let hess = interpret(&second.graph, &at(0.8)).unwrap()[1].to_f64_vec()[0];
    let d = 1e-5;
    let ga = |a: f64| interpret(&first, &at(a)).unwrap()[0].to_f64_vec()[0];
    let fd = (ga(0.8 + d) - ga(0.8 - d)) / (2.0 * d);
    assert_close(&[hess], &[fd], 1e-7, "d²L/da²");
}

#[test]
fn loop_errors_name_the_place() {
    // A body whose next carry has the wrong type: the builder's error names
    // this file and line.
    let b = GraphBuilder::new("bad");
    let h0 = b.input("h0", DType::F32, &[3]);
    let line = line!() + 1;
    let _ = b.fori_loop(4, &[], &[h0], |_, _, h| vec![h[0].sum_all()]);
    let err = b.build(&[("h", h0)]).unwrap_err().to_string();
    assert!(err.contains(&format!("scan.rs:{line}")), "{err}");
    assert!(err.contains("next carry 0"), "{err}");

    // (A value of the enclosing graph used inside the body does not
    // compile: see the `compile_fail` example on `GraphBuilder::scan`.)

    // Text: a malformed body is reported at its line.
    let text = "graph @f(%h: f32[]) -> (y: f32[]) {\n  %l: (f32[]) = scan[carry=1, consts=0, length=3] %h {\n    graph @b(%h: f32[]) -> (n: f32[4]) {\n      %n: f32[4] = broadcast[shape=(4)] %h\n      return %n\n    }\n  }\n  %y: f32[] = get[index=0] %l\n  return %y\n}\n";
    let err = parse(text).unwrap_err().to_string();
    assert!(err.contains("line 2") || err.contains("2:"), "{err}");
    assert!(err.contains("next carry 0"), "{err}");
    // A `get` out of range, and a loop read without `get`.
    let text = "graph @f(%h: f32[]) -> (y: f32[]) {\n  %l: (f32[]) = scan[carry=1, consts=0, length=3] %h {\n    graph @b(%h: f32[]) -> (n: f32[]) {\n      %n: f32[] = neg %h\n      return %n\n    }\n  }\n  %y: f32[] = get[index=1] %l\n  return %y\n}\n";
    let err = parse(text)
        .and_then(|g| wengert::ir::verify(&g).map(|_| g))
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 results") || err.contains("index=1"), "{err}");
}

/// Compiles `g` (all passes) and runs it.
fn jit(g: &Graph, inputs: &[Tensor]) -> Vec<Tensor> {
    let exe = wengert::compile(g, &wengert::Options::default()).unwrap();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    exe.call(&refs).unwrap()
}

#[test]
fn compiled_loops_match_the_interpreter() {
    for dtype in [DType::F64, DType::F32] {
        for reverse in [false, true] {
            for t in [0, 1, 2, 7, 1000] {
                let g = rnn(t, 3, dtype, reverse, true);
                let inputs = inputs_for(&g, 21 + t as u64);
                let want = interpret(&g, &inputs).unwrap();
                let got = jit(&g, &inputs);
                for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                    // The matrix-vector product is a library GEMM (its own
                    // summation order); everything else is exact.
                    assert_close(
                        &a.to_f64_vec(),
                        &b.to_f64_vec(),
                        1e-5,
                        &format!("{dtype} reverse={reverse} T={t} output {k}"),
                    );
                }
            }
        }
    }
}

#[test]
fn compiled_loop_gradients_match_the_interpreter() {
    for dtype in [DType::F64, DType::F32] {
        for reverse in [false, true] {
            for t in [0, 1, 2, 7, 1000] {
                let g = loss_only(&rnn(t, 4, dtype, reverse, true));
                let inputs = inputs_for(&g, 31 + t as u64);
                let wrt = ["W", "b", "h0", "xs"];
                let want = common::autodiff_gradients(&g, &inputs, &wrt);
                let f = wengert::value_and_grad(&g, &wrt, &wengert::Options::default()).unwrap();
                let refs: Vec<&Tensor> = inputs.iter().collect();
                let got = f.call(&refs).unwrap();
                let tol = if dtype == DType::F32 { 1e-4 } else { 1e-10 };
                for (k, name) in wrt.iter().enumerate() {
                    assert_close(
                        &got[1 + k].to_f64_vec(),
                        &want[k],
                        tol,
                        &format!("{dtype} reverse={reverse} T={t} grad_{name}"),
                    );
                }
            }
        }
    }
}

#[test]
fn compiled_scalar_recurrence_is_bit_exact() {
    // Case 8 with T = 1000 in f64: no GEMM, so the compiled loop computes
    // exactly what the interpreter does, forward and backward.
    let b = GraphBuilder::new("case8");
    let a = b.input("a", DType::F64, &[]);
    let bias = b.input("b", DType::F64, &[]);
    let x = b.input("x", DType::F64, &[]);
    let h = b.fori_loop(1000, &[a, bias], &[x], |_, c, h| vec![(c[0] * h[0] + c[1]).tanh()]);
    let g = b.build(&[("L", h[0])]).unwrap();
    let inputs = vec![
        Tensor::scalar_f64(0.9),
        Tensor::scalar_f64(0.05),
        Tensor::scalar_f64(0.3),
    ];
    assert_eq!(
        jit(&g, &inputs)[0].to_f64_vec(),
        interpret(&g, &inputs).unwrap()[0].to_f64_vec()
    );
    let wrt = ["a", "b", "x"];
    let want = common::autodiff_gradients(&g, &inputs, &wrt);
    let f = wengert::value_and_grad(&g, &wrt, &wengert::Options::default()).unwrap();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let got = f.call(&refs).unwrap();
    for (k, name) in wrt.iter().enumerate() {
        assert_eq!(got[1 + k].to_f64_vec(), want[k], "grad_{name}");
    }
}

#[test]
fn compiled_nested_loops_match_the_interpreter() {
    let b = GraphBuilder::new("nested");
    let a = b.input("a", DType::F64, &[]);
    let h0 = b.input("h0", DType::F64, &[2]);
    let xs = b.input("xs", DType::F64, &[3, 5, 2]);
    let (h, ys) = b.scan(3, &[a], &[h0], &[xs], |s, k, h, x| {
        let (inner, ys) = s.scan(5, &[k[0]], &[h[0]], &[x[0]], |_, k, h, x| {
            let n = (h[0] * k[0] + x[0]).tanh();
            (vec![n], vec![n.sum_all()])
        });
        (vec![inner[0]], vec![ys[0]])
    });
    let loss = h[0].sum_all() + ys[0].sum_all();
    let g = b.build(&[("loss", loss)]).unwrap();
    let inputs = inputs_for(&g, 9);
    assert_eq!(
        jit(&g, &inputs)[0].to_f64_vec(),
        interpret(&g, &inputs).unwrap()[0].to_f64_vec()
    );
    let wrt = ["a", "h0", "xs"];
    let want = common::autodiff_gradients(&g, &inputs, &wrt);
    let f = wengert::value_and_grad(&g, &wrt, &wengert::Options::default()).unwrap();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let got = f.call(&refs).unwrap();
    for (k, name) in wrt.iter().enumerate() {
        assert_close(&got[1 + k].to_f64_vec(), &want[k], 1e-13, &format!("grad_{name}"));
    }
}

#[test]
fn every_loop_policy_gives_the_same_gradients_bit_for_bit() {
    // The RNN (with a GEMM) and case 8 in f64, T = 0, 1, 7, 100, compiled
    // and interpreted, and the RNN in f32 and run in reverse: every
    // policy gives the same bits, including the weight gradient that
    // SaveAll sums with one product after the loop (the split transpose)
    // and the recomputing schedules step by step (`matmul_acc` in the
    // same order).
    use wengert::LoopPolicy;
    for (g, wrt) in [
        (
            loss_only(&rnn(7, 4, DType::F64, false, true)),
            vec!["W", "b", "h0", "xs"],
        ),
        (
            wengert::models::scalar_recurrence(100, true).unwrap(),
            vec!["a", "b", "x"],
        ),
        (
            wengert::models::scalar_recurrence(1, true).unwrap(),
            vec!["a", "b", "x"],
        ),
        (
            wengert::models::scalar_recurrence(0, true).unwrap(),
            vec!["a", "b", "x"],
        ),
        (
            loss_only(&rnn(100, 3, DType::F64, true, true)),
            vec!["W", "b", "h0", "xs"],
        ),
        (
            loss_only(&rnn(30, 20, DType::F32, false, true)),
            vec!["W", "b", "h0", "xs"],
        ),
        (batched_rnn(9, 4, 3, DType::F32), vec!["W", "h0", "xs"]),
        (batched_rnn(9, 4, 3, DType::F64), vec!["W", "h0", "xs"]),
    ] {
        let inputs = inputs_for(&g, 41);
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let run = |loops: LoopPolicy| {
            let options = wengert::Options {
                loops,
                ..Default::default()
            };
            let f = wengert::value_and_grad(&g, &wrt, &options).unwrap();
            let compiled: Vec<Vec<f64>> = f.call(&refs).unwrap().iter().map(|t| t.to_f64_vec()).collect();
            let gg = wengert::passes::autodiff::autodiff_with(&g, &wrt, &[], loops).unwrap();
            let interpreted: Vec<Vec<f64>> = interpret(&gg.graph, &inputs)
                .unwrap()
                .iter()
                .map(|t| t.to_f64_vec())
                .collect();
            // The text form of the gradient graph reads back.
            let text = gg.graph.to_string();
            assert_eq!(parse(&text).unwrap().to_string(), text);
            (compiled, interpreted)
        };
        let save_all = run(LoopPolicy::SaveAll);
        assert_eq!(run(LoopPolicy::SaveCarries), save_all, "{}: SaveCarries", g.name);
        let binomial = run(LoopPolicy::Binomial(1));
        for c in [2, 3, 10] {
            assert_eq!(run(LoopPolicy::Binomial(c)), binomial, "{}: Binomial({c})", g.name);
        }
        for k in [1, 2, 3, 10] {
            assert_eq!(run(LoopPolicy::Every(k)), binomial, "{}: Every({k})", g.name);
        }
        for (k, name) in std::iter::once("value").chain(wrt.iter().copied()).enumerate() {
            for (a, b) in [(&binomial.0, &save_all.0), (&binomial.1, &save_all.1)] {
                assert_eq!(a[k], b[k], "{}: {name}", g.name);
            }
        }
    }
}

#[test]
fn seed_case_9_as_a_loop_over_stacked_weights_agrees_with_the_chain() {
    let looped = parse(&std::fs::read_to_string(case_path("case09_chain_scan.wg")).unwrap()).unwrap();
    let chain = parse(&std::fs::read_to_string(case_path("case09_checkpoint_chain.wg")).unwrap()).unwrap();
    let mut rng = Rng::new(99);
    let x = Tensor::from_vec(vec![2, 4], rng.vec(8, -1.0, 1.0)).unwrap();
    let ws: Vec<Vec<f64>> = (0..8).map(|_| rng.vec(16, -0.6, 0.6)).collect();
    let stacked = Tensor::from_vec(vec![8, 4, 4], ws.concat()).unwrap();
    let mut chain_inputs = vec![x.clone()];
    chain_inputs.extend(ws.iter().map(|w| Tensor::from_vec(vec![4, 4], w.clone()).unwrap()));
    let loop_inputs = vec![x, stacked];
    let want = interpret(&chain, &chain_inputs).unwrap()[0].to_f64_vec();
    assert_eq!(interpret(&looped, &loop_inputs).unwrap()[0].to_f64_vec(), want);
    // Gradients: the stacked weights' gradient is the chain's eight.
    let names: Vec<String> = (1..=8).map(|i| format!("W{i}")).collect();
    let mut wrt: Vec<&str> = vec!["x"];
    wrt.extend(names.iter().map(String::as_str));
    let chain_grads = common::autodiff_gradients(&chain, &chain_inputs, &wrt);
    for loops in [wengert::LoopPolicy::SaveAll, wengert::LoopPolicy::Binomial(3)] {
        let f = wengert::value_and_grad(
            &looped,
            &["x", "W"],
            &wengert::Options {
                loops,
                ..Default::default()
            },
        )
        .unwrap();
        let refs: Vec<&Tensor> = loop_inputs.iter().collect();
        let got = f.call(&refs).unwrap();
        assert_close(&got[0].to_f64_vec(), &want, 1e-14, "L");
        assert_close(&got[1].to_f64_vec(), &chain_grads[0], 1e-13, "grad_x");
        assert_close(&got[2].to_f64_vec(), &chain_grads[1..].concat(), 1e-13, "grad_W");
    }
}

#[test]
fn a_byte_budget_picks_the_loop_policy_and_the_slots() {
    use wengert::LoopPolicy;
    let g = wengert::models::scalar_recurrence(100, true).unwrap();
    let grad = |loops| {
        wengert::passes::autodiff::autodiff_with(&g, &["a", "b", "x"], &[], loops)
            .unwrap()
            .graph
            .to_string()
    };
    // Plenty: SaveAll (the trajectory of 100 f64 is 800 bytes).
    assert_eq!(grad(LoopPolicy::Budget(1 << 20)), grad(LoopPolicy::SaveAll));
    // Too little for the trajectory: the binomial schedule with as many
    // 64-byte states as fit, at least one.
    assert!(grad(LoopPolicy::Budget(200)).contains("slots=3"));
    assert!(grad(LoopPolicy::Budget(1)).contains("slots=1"));
}

#[test]
fn unrolled_loops_compute_what_the_plain_loop_does() {
    // Unrolled 2, 3 and 8 times over T = 0, 1, 7 and 20 steps (remainders
    // of every size), forward and reversed: values and gradients equal the
    // plain loop's bit for bit (f64, no GEMM: a scalar recurrence with an
    // output per step).
    for reverse in [false, true] {
        for t in [0usize, 1, 7, 20] {
            let build = |unroll: usize| {
                let b = GraphBuilder::new("unrolled");
                let a = b.input("a", DType::F64, &[]);
                let h0 = b.input("h0", DType::F64, &[]);
                let xs = b.input("xs", DType::F64, &[t]);
                let (h, ys) = b.scan_opts(
                    t,
                    wengert::ir::LoopOptions { reverse, unroll },
                    &[a],
                    &[h0],
                    &[xs],
                    |_, c, h, x| {
                        let n = (c[0] * h[0] + x[0]).tanh();
                        (vec![n], vec![n * n])
                    },
                );
                b.build(&[("loss", h[0] + ys[0].sum_all())]).unwrap()
            };
            let plain = build(1);
            let inputs = inputs_for(&plain, 3 + t as u64);
            let refs: Vec<&Tensor> = inputs.iter().collect();
            let want = wengert::value_and_grad(&plain, &["a", "h0", "xs"], &wengert::Options::default())
                .unwrap()
                .call(&refs)
                .unwrap();
            // The plain loop (its one-element carries in registers) is the
            // interpreter's, bit for bit.
            assert_eq!(
                want[0].to_f64_vec(),
                interpret(&plain, &inputs).unwrap()[0].to_f64_vec()
            );
            let grads = common::autodiff_gradients(&plain, &inputs, &["a", "h0", "xs"]);
            for (k, g) in grads.iter().enumerate() {
                assert_eq!(
                    &want[1 + k].to_f64_vec(),
                    g,
                    "T = {t}, reverse = {reverse}: gradient {k}"
                );
            }
            for unroll in [2, 3, 8] {
                let g = build(unroll);
                let text = g.to_string();
                assert!(t <= 1 || text.contains(&format!("unroll={unroll}")), "{text}");
                assert_eq!(parse(&text).unwrap().to_string(), text);
                let got = wengert::value_and_grad(&g, &["a", "h0", "xs"], &wengert::Options::default())
                    .unwrap()
                    .call(&refs)
                    .unwrap();
                for (x, y) in got.iter().zip(&want) {
                    assert_eq!(
                        x.to_f64_vec(),
                        y.to_f64_vec(),
                        "unroll {unroll}, T = {t}, reverse = {reverse}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_tower_of_loops_is_refused_past_the_nesting_limit() {
    // Loops nested 64 deep are fine; the 65th level is an error naming the
    // limit (every tool recurses once per level, so depth is bounded where
    // a loop is made).
    fn tower<'a>(b: &'a GraphBuilder, h: Var<'a>, levels: usize) -> Var<'a> {
        if levels == 0 {
            return h.tanh();
        }
        b.fori_loop(1, &[], &[h], |s, _, h| vec![tower(s, h[0], levels - 1)])[0]
    }
    let ok = {
        let b = GraphBuilder::new("deep");
        let h = b.input("h", DType::F64, &[]);
        let out = tower(&b, h, 64);
        b.build(&[("y", out)])
    };
    let g = ok.unwrap();
    let inputs = vec![Tensor::scalar_f64(0.5)];
    // f64 tanh is the project's own definition, not the platform's.
    let tanh = wengert::ir::math::tanh_f64(0.5);
    assert_eq!(interpret(&g, &inputs).unwrap()[0].to_f64_vec(), vec![tanh]);
    assert_eq!(parse(&g.to_string()).unwrap().to_string(), g.to_string());
    let b = GraphBuilder::new("too_deep");
    let h = b.input("h", DType::F64, &[]);
    let out = tower(&b, h, 65);
    let err = b.build(&[("y", out)]).unwrap_err().to_string();
    assert!(err.contains("nest more than 64"), "{err}");
}

#[test]
fn loops_whose_outputs_are_their_inputs_compile_to_what_they_mean() {
    // Three carries: one the body passes through unchanged, one replaced
    // by this step's input row, one halved and also stacked as a result
    // (its trajectory). The compiled loop moves pointers instead of
    // copying for all three; values must equal the interpreter's.
    for reverse in [false, true] {
        for unroll in [1, 3] {
            for t in [0usize, 1, 5] {
                let b = GraphBuilder::new("identities");
                let a = b.input("a", DType::F64, &[3]);
                let c = b.input("c", DType::F64, &[3]);
                let d = b.input("d", DType::F64, &[3]);
                let xs = b.input("xs", DType::F64, &[t, 3]);
                let (carry, ys) = b.scan_opts(
                    t,
                    wengert::ir::LoopOptions { reverse, unroll },
                    &[],
                    &[a, c, d],
                    &[xs],
                    |_, _, h, x| (vec![h[0], x[0], h[2] * 0.5], vec![h[2], h[0] + h[1]]),
                );
                let g = b
                    .build(&[
                        ("a", carry[0]),
                        ("c", carry[1]),
                        ("d", carry[2]),
                        ("traj", ys[0]),
                        ("sums", ys[1]),
                    ])
                    .unwrap();
                let inputs = inputs_for(&g, 50 + t as u64);
                let want = interpret(&g, &inputs).unwrap();
                let got = jit(&g, &inputs);
                for (k, (x, y)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        x.to_f64_vec(),
                        y.to_f64_vec(),
                        "output {k}, T = {t}, reverse = {reverse}, unroll = {unroll}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_body_too_large_to_inline_is_called_and_computes_the_same() {
    // A body of more than `INLINE_BODY_NODES` nodes is compiled as a
    // function each step calls (the inlined path is tested above): values
    // and gradients equal the interpreter's, forward and reversed.
    const { assert!(wengert::codegen::lower::INLINE_BODY_NODES < 700) };
    for reverse in [false, true] {
        let b = GraphBuilder::new("large_body");
        let a = b.input("a", DType::F64, &[]);
        let h0 = b.input("h0", DType::F64, &[2]);
        let xs = b.input("xs", DType::F64, &[4, 2]);
        let (h, ys) = b.scan_with(4, reverse, &[a], &[h0], &[xs], |_, c, h, x| {
            let mut v = h[0] + x[0];
            for _ in 0..300 {
                v = (v * c[0]).tanh() + x[0];
            }
            (vec![v], vec![v.sum_all()])
        });
        let g = b.build(&[("loss", h[0].sum_all() + ys[0].sum_all())]).unwrap();
        let inputs = inputs_for(&g, 61);
        assert_eq!(
            jit(&g, &inputs)[0].to_f64_vec(),
            interpret(&g, &inputs).unwrap()[0].to_f64_vec()
        );
        let wrt = ["a", "h0", "xs"];
        let want = common::autodiff_gradients(&g, &inputs, &wrt);
        let f = wengert::value_and_grad(&g, &wrt, &wengert::Options::default()).unwrap();
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let got = f.call(&refs).unwrap();
        for (k, name) in wrt.iter().enumerate() {
            assert_eq!(got[1 + k].to_f64_vec(), want[k], "grad_{name}, reverse = {reverse}");
        }
    }
}

/// A loop body with more buffers than the entry preloads (the char-RNN's
/// backward body: 5 consts, their adjoints, the carry, stacked inputs and
/// residuals), inlined into its loop: its pointer array changes every
/// step, so its pointer loads must not be hoisted out of the loop (they
/// were, and read the array before the loop had written it: a null
/// pointer dereference).
#[test]
fn inlined_loop_bodies_with_many_buffers_read_each_steps_pointers() {
    for t in [1, 3] {
        let g = wengert::models::char_rnn(t, 2, 5, 3).unwrap();
        let mut inputs = inputs_for(&g, 77 + t as u64);
        // One-hot targets (rows of `ts` sum to 1).
        let ts = g.inputs().iter().position(|i| i.name == "ts").unwrap();
        inputs[ts] = Tensor::from_vec(
            vec![t, 2, 5],
            (0..t * 10)
                .map(|i| if i % 5 == (i / 5) % 5 { 1.0 } else { 0.0 })
                .collect(),
        )
        .unwrap()
        .convert(DType::F32);
        let wrt = wengert::models::CHAR_RNN_PARAMS;
        let want = common::autodiff_gradients(&g, &inputs, &wrt);
        let f = wengert::value_and_grad(&g, &wrt, &wengert::Options::default()).unwrap();
        let got = f.call(&inputs.iter().collect::<Vec<_>>()).unwrap();
        for (k, name) in wrt.iter().enumerate() {
            assert_close(&got[1 + k].to_f64_vec(), &want[k], 1e-5, &format!("T={t} grad_{name}"));
        }
    }
}

/// The memory plan decides all storage, loops included: a loop's pointer
/// arrays, carries, copies and its body's arena are workspace the plan
/// reserves. The code never writes past the planned arena, and the arena
/// it is given is no larger, for the joint function and both halves,
/// storing the trajectory and recomputing it.
#[test]
fn the_planned_arena_bounds_what_loops_use() {
    use wengert::{models, value_and_grad, LoopPolicy, Options};
    let graphs = [
        (models::scalar_recurrence(100, true).unwrap(), vec!["a", "b", "x"]),
        (models::rnn(50, 16, DType::F32, true).unwrap(), vec!["W", "b"]),
        (models::tanh_chain_scan(8, 4, 16, DType::F32).unwrap(), vec!["W"]),
        (
            models::char_rnn(12, 4, 10, 8).unwrap(),
            models::CHAR_RNN_PARAMS.to_vec(),
        ),
    ];
    for (g, wrt) in &graphs {
        for loops in [LoopPolicy::SaveAll, LoopPolicy::Binomial(3), LoopPolicy::Every(4)] {
            let options = Options {
                loops,
                ..Options::default()
            };
            let f = value_and_grad(g, wrt, &options).unwrap_or_else(|e| panic!("{} {loops:?}: {e}", g.name));
            let m = f.measure_memory().unwrap();
            let exes = [
                f.joint(),
                f.forward_executable().unwrap(),
                f.backward_executable().unwrap(),
            ];
            for ((what, c), exe) in [("joint", m.joint), ("forward", m.forward), ("backward", m.backward)]
                .into_iter()
                .zip(exes)
            {
                let at = format!("{} {loops:?} {what}: {c:?}", g.name);
                assert!(c.measured <= c.planned, "{at}: wrote past the plan");
                assert!(exe.memory().arena_bytes <= c.planned, "{at}: given more than the plan");
                assert!(c.planned > 0, "{at}");
            }
        }
    }
}
