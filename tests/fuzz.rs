//! The differential fuzzer: random graphs over every op of the IR (see
//! `common/gen.rs`), each checked end to end against the reference
//! interpreter:
//!
//! - `verify` passes, and the text format round-trips (the same text, the
//!   same results bit for bit);
//! - `simplify` preserves results (to rounding: it folds `Σ broadcast(x)`
//!   into `x·n`); `fuse` and `memory-plan` preserve them bit for bit;
//! - the JIT agrees with the interpreter: bit for bit in f64 unless a
//!   matmul sums in GEMM's order, else to that rounding and the f32 inline
//!   math's;
//! - value and gradient through the whole pipeline (autodiff, simplify,
//!   checkpoint, partition, fuse, memory plan, JIT) agree with the
//!   interpreter's gradient;
//! - under every checkpoint policy the JIT's gradients are bit-identical to
//!   save-all's;
//! - forward mode: `uᵀ(J v) = (uᵀ J) v` between the JVP and the gradient,
//!   and (one graph in four) the compiled JVP agrees with the interpreter.
//!
//! CI runs 2,000 graphs (1,000 in f64, 1,000 in f32, in two tests that run
//! in parallel); `PROPTEST_CASES=N` sets the count per test. Failures shrink
//! to a short program and are kept in `tests/fuzz.proptest-regressions`.

mod common;

use common::gen::{build, input_shape, Instr, OPS};
use common::Rng;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use wengert::ir::Op;
use wengert::passes::{fuse, memory_plan, simplify};
use wengert::{compile, interpret, parse, value_and_grad, verify, CodegenOptions, DType, Graph, Options, Tensor};

/// Random inputs in [-2, 2] for every input of `g` (bools: 0/1).
fn inputs_for(g: &Graph, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    g.inputs()
        .iter()
        .map(|i| {
            let n = i.ty.num_elements();
            let v: Vec<f64> = (0..n).map(|_| rng.uniform(-2.0, 2.0)).collect();
            Tensor::from_vec(i.ty.shape.clone(), v).unwrap().convert(i.ty.dtype)
        })
        .collect()
}

/// `inputs` with every float element scaled by 1 + ε (ε = 2⁻⁴⁰ in f64,
/// 2⁻¹⁸ in f32: more than the rounding the JIT may differ by).
/// Inputs scaled by `1 + ε` (uniformly), or by `1 ± ε` alternating per
/// element (`alternate`): two directions, since one can leave an
/// ill-conditioned result nearly where it was by chance (a loop iterating
/// `cos` of arguments near 10⁵ moved 0.01 under the uniform scaling and by
/// 1.5 under GEMM's rounding).
fn perturbed_by(inputs: &[Tensor], alternate: bool) -> Vec<Tensor> {
    inputs
        .iter()
        .map(|t| {
            let eps = match t.dtype() {
                DType::F64 => (-40f64).exp2(),
                DType::F32 => (-18f64).exp2(),
                DType::Bool => return t.clone(),
            };
            let v: Vec<f64> = t
                .to_f64_vec()
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    let sign = if alternate && i % 2 == 1 { -1.0 } else { 1.0 };
                    x * (1.0 + sign * eps)
                })
                .collect();
            Tensor::from_vec(t.shape().to_vec(), v).unwrap().convert(t.dtype())
        })
        .collect()
}

/// The interpreter of `g` on `inputs` perturbed both ways (see
/// `perturbed_by`), for `compare_conditioned`.
fn nearby_results(g: &Graph, inputs: &[Tensor]) -> [Vec<Tensor>; 2] {
    [
        interpret(g, &perturbed_by(inputs, false)).unwrap(),
        interpret(g, &perturbed_by(inputs, true)).unwrap(),
    ]
}

/// Compares the JIT's results with the interpreter's to rounding, allowing
/// more where the result is ill-conditioned: `nearby` is the interpreter
/// on slightly perturbed inputs, and an element may differ by what the
/// perturbation moved it (sin of a large exp of a matmul turns GEMM's last
/// bit into any value in [−1, 1]), or anything if the perturbation made it
/// non-finite or finite.
fn compare_conditioned(
    what: &str,
    g: &Graph,
    want: &[Tensor],
    nearby: &[Vec<Tensor>; 2],
    got: &[Tensor],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(want.len(), got.len(), "{}: output count", what);
    for (k, (a, b)) in want.iter().zip(got).enumerate() {
        prop_assert_eq!(a.ty(), b.ty(), "{}: output {} type", what, k);
        let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
        let (n0, n1) = (nearby[0][k].to_f64_vec(), nearby[1][k].to_f64_vec());
        for i in 0..a.len() {
            let (x, y) = (a[i], b[i]);
            // The farther of the two perturbed results.
            let z = if (x - n0[i]).abs() >= (x - n1[i]).abs() || n1[i].is_nan() {
                n0[i]
            } else {
                n1[i]
            };
            if close(x, y, got[k].dtype()) || x.is_finite() != z.is_finite() || (x.is_nan() != z.is_nan()) {
                continue;
            }
            let ok = x.is_finite() && y.is_finite() && (x - y).abs() <= 8.0 * (x - z).abs();
            prop_assert!(
                ok,
                "{}: output {} element {}: {} vs {} (nearby {})\n{}",
                what,
                k,
                i,
                x,
                y,
                z,
                g
            );
        }
    }
    Ok(())
}

/// Compares `got` with the interpreter of `g` on `inputs`: bit for bit if
/// `exact`, else to rounding (conditioned, see `compare_conditioned`).
fn against(what: &str, g: &Graph, inputs: &[Tensor], got: &[Tensor], exact: bool) -> Result<(), TestCaseError> {
    let want = interpret(g, inputs).unwrap();
    if exact {
        compare(what, g, &want, got, true)
    } else {
        compare_conditioned(what, g, &want, &nearby_results(g, inputs), got)
    }
}

/// Whether two results agree: bit for bit, both NaN, or within the
/// rounding that GEMM's summation order (f64) or f32 inline math allow.
fn close(a: f64, b: f64, dtype: DType) -> bool {
    if a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) {
        return true;
    }
    let (rtol, atol) = match dtype {
        DType::F64 => (1e-9, 1e-12),
        _ => (2e-3, 1e-4),
    };
    (a - b).abs() <= rtol * a.abs().max(b.abs()) + atol
}

/// How closely the JIT must agree with the interpreter on `g`: in f64 bit
/// for bit (reductions accumulate in the interpreter's order, f64 math
/// calls the same libm), unless a matmul sums in GEMM's order; in f32 to
/// the inline math's rounding.
fn jit_exact(g: &Graph) -> bool {
    let f64_only = g.node_ids().all(|id| g.ty(id).dtype != DType::F32);
    f64_only && !g.node_ids().any(|id| matches!(g.op(id), wengert::Op::MatMul))
}

fn compare(what: &str, g: &Graph, want: &[Tensor], got: &[Tensor], exact: bool) -> Result<(), TestCaseError> {
    prop_assert_eq!(want.len(), got.len(), "{}: output count", what);
    for (k, (a, b)) in want.iter().zip(got).enumerate() {
        prop_assert_eq!(a.ty(), b.ty(), "{}: output {} type", what, k);
        for (i, (x, y)) in a.to_f64_vec().iter().zip(b.to_f64_vec()).enumerate() {
            let ok = if exact {
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
            } else {
                close(*x, y, a.dtype())
            };
            prop_assert!(ok, "{}: output {} element {}: {} vs {}\n{}", what, k, i, x, y, g);
        }
    }
    Ok(())
}

/// The checks of the module documentation on one random graph.
fn check(f64: bool, shapes: &[Vec<usize>], program: &[Instr], outputs: usize, seed: u64) -> Result<(), TestCaseError> {
    let g = build(f64, shapes, program, outputs);
    let text = g.to_string();
    prop_assert!(verify(&g).is_ok(), "verify: {:?}\n{}", verify(&g), text);
    let inputs = inputs_for(&g, seed);
    let want = interpret(&g, &inputs).map_err(|e| TestCaseError::fail(format!("interpret: {e}\n{text}")))?;
    // The text format round-trips.
    let back = parse(&text).map_err(|e| TestCaseError::fail(format!("parse: {e}\n{text}")))?;
    prop_assert_eq!(back.to_string(), text.clone());
    compare("parse(print(g))", &g, &want, &interpret(&back, &inputs).unwrap(), true)?;
    // Passes preserve results.
    let s = simplify(&g).map_err(|e| TestCaseError::fail(format!("simplify: {e}\n{text}")))?;
    compare("simplify", &s, &want, &interpret(&s, &inputs).unwrap(), false)?;
    let f = fuse(&g).map_err(|e| TestCaseError::fail(format!("fuse: {e}\n{text}")))?;
    compare("fuse", &f, &want, &interpret(&f, &inputs).unwrap(), true)?;
    let m = memory_plan(&f).map_err(|e| TestCaseError::fail(format!("memory-plan: {e}\n{text}")))?;
    compare("memory-plan", &m, &want, &interpret(&m, &inputs).unwrap(), true)?;
    // The JIT agrees with the interpreter: with the original graph to the
    // rounding of simplify's Σ broadcast(x) = x·n, and with the graph it
    // compiled (after simplify, fuse and memory-plan) bit for bit in f64.
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let exe = compile(&g, &Options::default()).map_err(|e| TestCaseError::fail(format!("compile: {e}\n{text}")))?;
    let jit = exe.call(&refs).unwrap();
    let nearby = nearby_results(&g, &inputs);
    compare_conditioned("jit", &g, &want, &nearby, &jit)?;
    let compiled = memory_plan(&fuse(&s).unwrap()).unwrap();
    against("jit vs its graph", &compiled, &inputs, &jit, jit_exact(&g))?;
    // Cut into segments of a few nodes (see `codegen::lower::Segments`),
    // every value crosses functions in memory, on 1, 2 or 3 threads: the
    // same bits. (These graphs are too small for threads to be used; the
    // parallel paths are checked bit for bit in `tests/threads.rs`.)
    let tiny = Options {
        codegen: CodegenOptions {
            segment_nodes: 1 + (seed % 5) as usize,
            threads: 1 + (seed % 3) as usize,
            ..CodegenOptions::default()
        },
        ..Options::default()
    };
    let cut = compile(&g, &tiny).map_err(|e| TestCaseError::fail(format!("compile in segments: {e}\n{text}")))?;
    compare("jit in segments", &g, &jit, &cut.call(&refs).unwrap(), true)?;
    // Donation: each output takes the buffer of the first unused input of
    // its type where the check allows it; updated in place, the results are
    // those of separate buffers, bit for bit.
    let mut pairs: Vec<(String, String)> = Vec::new();
    for o in g.outputs() {
        let ty = g.ty(o.node);
        if let Some(i) = g
            .inputs()
            .iter()
            .find(|i| &i.ty == ty && !pairs.iter().any(|(n, _)| n == &i.name))
        {
            pairs.push((i.name.clone(), o.name.clone()));
        }
    }
    for pair in &pairs {
        let named = [(pair.0.as_str(), pair.1.as_str())];
        match compile(&g, &tiny.clone().with_donations(&named)) {
            Err(wengert::Error::Codegen(wengert::codegen::CodegenError::Donation { .. })) => {}
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "compile with donation {named:?}: {e}\n{text}"
                )))
            }
            Ok(exe) => {
                let (i, j) = exe.donations()[0];
                let mut donated = vec![inputs[i].clone()];
                let rest: Vec<&Tensor> = inputs
                    .iter()
                    .enumerate()
                    .filter(|&(k, _)| k != i)
                    .map(|(_, t)| t)
                    .collect();
                let mut outs: Vec<Tensor> = exe.new_outputs().unwrap();
                outs.remove(j);
                exe.call_donated(&rest, &mut donated, &mut outs).unwrap();
                outs.insert(j, donated.pop().unwrap());
                compare(&format!("donating {named:?}"), &g, &jit, &outs, true)?;
            }
        }
    }
    // Gradients: the whole pipeline against the interpreter's gradient.
    let wrt = g.differentiable_inputs();
    let grad = wengert::autodiff(&g, &wrt, &[]).map_err(|e| TestCaseError::fail(format!("autodiff: {e}\n{text}")))?;
    let ginputs = inputs_for(&grad.graph, seed ^ 0x5eed);
    let gwant = interpret(&grad.graph, &ginputs).unwrap();
    let save_all = value_and_grad(&g, &wrt, &Options::default())
        .map_err(|e| TestCaseError::fail(format!("value_and_grad: {e}\n{text}")))?;
    // The compiled function takes the same inputs (primal, then seeds).
    let names: Vec<&str> = save_all.graph().inputs().iter().map(|i| i.name.as_str()).collect();
    let gnames: Vec<&str> = grad.graph.inputs().iter().map(|i| i.name.as_str()).collect();
    prop_assert_eq!(&names, &gnames);
    let grefs: Vec<&Tensor> = ginputs.iter().collect();
    let gjit = save_all.call(&grefs).unwrap();
    let gnearby = nearby_results(&grad.graph, &ginputs);
    compare_conditioned("value_and_grad", &grad.graph, &gwant, &gnearby, &gjit)?;
    if let wengert::passes::Stage::Split { joint, .. } = &save_all.pipeline().stage {
        against("value_and_grad vs its graph", joint, &ginputs, &gjit, jit_exact(joint))?;
    }
    // Forward mode: uᵀ(J v) = (uᵀ J) v between the JVP and the gradient,
    // by the interpreter, at the same point (u: the gradient's seeds, v:
    // random tangents).
    check_jvp_transposes_vjp(&g, &grad, &ginputs, &gwant, seed)
        .map_err(|m| TestCaseError::fail(format!("{m}\n{text}")))?;
    // The compiled JVP against the interpreted tangent graph (one graph in
    // four: compiling is most of a case's time).
    if seed.is_multiple_of(4) && !wrt.is_empty() {
        let t = wengert::passes::jvp::jvp(&g, &wrt).map_err(|e| TestCaseError::fail(format!("jvp: {e}\n{text}")))?;
        let tinputs = inputs_for(&t.graph, seed ^ 0x71);
        let twant = interpret(&t.graph, &tinputs).unwrap();
        let exe = wengert::jvp(&g, &wrt, &Options::default())
            .map_err(|e| TestCaseError::fail(format!("jvp: {e}\n{text}")))?;
        let tgot = exe.call(&tinputs.iter().collect::<Vec<_>>()).unwrap();
        compare_conditioned(
            "compiled jvp",
            &t.graph,
            &twant,
            &nearby_results(&t.graph, &tinputs),
            &tgot,
        )?;
    }
    // Loops that recompute their states (the runtime's schedule calling
    // compiled bodies, cut into segments of a few nodes): the gradients of
    // storing the trajectory, bit for bit (a split-transposed weight
    // gradient and its step-by-step sum are both `matmul_acc`).
    if g.has_regions() {
        for loops in [wengert::LoopPolicy::Binomial(2), wengert::LoopPolicy::Every(2)] {
            let options = Options { loops, ..tiny.clone() };
            let f = value_and_grad(&g, &wrt, &options)
                .map_err(|e| TestCaseError::fail(format!("{loops:?}: {e}\n{text}")))?;
            compare(
                &format!("{loops:?}"),
                &grad.graph,
                &gjit,
                &f.call(&grefs).unwrap(),
                true,
            )?;
        }
    }
    // Every checkpoint policy: the same gradients bit for bit.
    for policy in ["sqrt", "segments=2", "mincut", "slots=2", "budget=1KiB"] {
        let options = Options {
            checkpoint: wengert::cli::parse_checkpoint_policy(policy).unwrap(),
            ..Options::default()
        };
        // (A binomial schedule on a graph without a chain falls back to
        // save-all.)
        let f =
            value_and_grad(&g, &wrt, &options).map_err(|e| TestCaseError::fail(format!("{policy}: {e}\n{text}")))?;
        compare(policy, &grad.graph, &gjit, &f.call(&grefs).unwrap(), true)?;
    }
    Ok(())
}

/// `uᵀ(J v) = (uᵀ J) v`: the JVP of `g` (tangents v random) against the
/// gradient graph's values `gwant` at inputs `ginputs` (primal inputs,
/// then seeds u).
fn check_jvp_transposes_vjp(
    g: &Graph,
    grad: &wengert::GradGraph,
    ginputs: &[Tensor],
    gwant: &[Tensor],
    seed: u64,
) -> Result<(), String> {
    let wrt: Vec<&str> = grad.wrt.iter().map(String::as_str).collect();
    let t = wengert::passes::jvp::jvp(g, &wrt).map_err(|e| format!("jvp: {e}"))?;
    let n = g.inputs().len();
    let mut rng = Rng::new(seed ^ 0x7a9);
    let tangents: Vec<Tensor> = wrt
        .iter()
        .map(|w| {
            let ty = &g.input(w).unwrap().ty;
            let v: Vec<f64> = (0..ty.num_elements()).map(|_| rng.uniform(-1.0, 1.0)).collect();
            Tensor::from_vec(ty.shape.clone(), v).unwrap().convert(ty.dtype)
        })
        .collect();
    let mut tin: Vec<Tensor> = ginputs[..n].to_vec();
    tin.extend(tangents.iter().cloned());
    // What conversions to f32 round (primal values and tangents alike)
    // are extra outputs: the rounding error of a large tangent survives a
    // cancellation downstream (`f64(f32(h)) − h`, whose derivative the
    // two modes round differently), so the tolerance follows their size.
    let mut probe = t.graph.clone();
    for id in t.graph.node_ids() {
        if let Op::Convert { to: DType::F32 } = t.graph.op(id) {
            let arg = t.graph.args(id)[0];
            if t.graph.ty(arg).dtype == DType::F64 {
                probe
                    .add_output(&format!("rounded_{}", id.index()), arg)
                    .map_err(|e| format!("probe: {e}"))?;
            }
        }
    }
    let tout = interpret(&probe, &tin).map_err(|e| format!("interpret jvp: {e}"))?;
    let n_out = t.graph.outputs().len();
    let rounded: f64 = tout[n_out..]
        .iter()
        .flat_map(|x| x.to_f64_vec())
        .map(f64::abs)
        .filter(|x| x.is_finite())
        .sum();
    // Σ over outputs of u · Jv.
    let mut lhs = 0.0;
    let mut scale = 0.0;
    for (k, name) in t.tangent_outputs.iter().enumerate() {
        let jv = tout[t.primal_outputs + k].to_f64_vec();
        let u: Vec<f64> = match grad.graph.input(&format!("seed_{name}")) {
            Some(i) => {
                let pos = grad.graph.inputs().iter().position(|x| x.node == i.node).unwrap();
                ginputs[pos].to_f64_vec()
            }
            None => vec![1.0; jv.len()],
        };
        for (a, b) in u.iter().zip(&jv) {
            lhs += a * b;
            scale += (a * b).abs();
        }
    }
    // Σ over inputs of (uᵀJ) · v.
    let mut rhs = 0.0;
    for (k, v) in tangents.iter().enumerate() {
        let gx = gwant[grad.primal_outputs + k].to_f64_vec();
        for (a, b) in gx.iter().zip(v.to_f64_vec()) {
            rhs += a * b;
            scale += (a * b).abs();
        }
    }
    if !lhs.is_finite() || !rhs.is_finite() || !scale.is_finite() {
        return Ok(());
    }
    // f32 anywhere (an input, or a conversion through f32) rounds the
    // tangents and adjoints differently.
    let u_max = grad
        .graph
        .inputs()
        .iter()
        .enumerate()
        .filter(|(_, i)| i.name.starts_with("seed_"))
        .flat_map(|(pos, _)| ginputs[pos].to_f64_vec())
        .map(f64::abs)
        .fold(1.0, f64::max);
    let (tol, scale) = if g.node_ids().any(|id| g.ty(id).dtype == DType::F32) {
        (1e-3, scale + rounded * u_max)
    } else {
        (1e-9, scale)
    };
    if (lhs - rhs).abs() > tol * (1.0 + scale) {
        return Err(format!("uᵀ(Jv) = {lhs} but (uᵀJ)v = {rhs}"));
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

fn program() -> impl Strategy<Value = Vec<Instr>> {
    prop::collection::vec((0u8..OPS, any::<u8>(), any::<u8>(), any::<u8>()), 1..10)
}

fn shapes() -> impl Strategy<Value = Vec<Vec<usize>>> {
    prop::collection::vec(any::<u16>().prop_map(input_shape), 1..4)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/fuzz.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_f64_graphs_agree_everywhere(shapes in shapes(), program in program(), outputs in 1usize..3, seed in any::<u64>()) {
        check(true, &shapes, &program, outputs, seed)?;
    }

    #[test]
    fn random_f32_graphs_agree_everywhere(shapes in shapes(), program in program(), outputs in 1usize..3, seed in any::<u64>()) {
        check(false, &shapes, &program, outputs, seed)?;
    }
}
