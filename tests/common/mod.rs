//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod gen;
pub mod ops;

use wengert::{Graph, Tensor};

/// A small deterministic generator (xorshift64*), so tests need no RNG crate
/// and every run sees the same numbers.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// Random f64 inputs for every input of `g`, uniform in [lo, hi).
pub fn random_inputs(g: &Graph, rng: &mut Rng, lo: f64, hi: f64) -> Vec<Tensor> {
    g.inputs()
        .iter()
        .map(|i| {
            let n = i.ty.num_elements();
            let t = Tensor::from_vec(i.ty.shape.clone(), rng.vec(n, lo, hi)).unwrap();
            t.convert(i.ty.dtype)
        })
        .collect()
}

/// The path of a seed case file.
pub fn case_path(file: &str) -> String {
    format!("{}/examples/cases/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// Asserts `|a - b| <= tol * max(1, |b|)` elementwise.
pub fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let scale = y.abs().max(1.0);
        assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y} (tol {tol})");
    }
}

/// Central finite differences of the first output (a scalar) of `g` with
/// respect to every element of the inputs named in `wrt`.
pub fn finite_differences(g: &Graph, inputs: &[Tensor], wrt: &[&str], h: f64) -> Vec<Vec<f64>> {
    let f = |ins: &[Tensor]| wengert::interpret(g, ins).unwrap()[0].to_f64_vec()[0];
    wrt.iter()
        .map(|name| {
            let k = g.inputs().iter().position(|i| i.name == *name).unwrap();
            (0..inputs[k].len())
                .map(|i| {
                    let shifted = |d: f64| {
                        let mut ins = inputs.to_vec();
                        let mut v = ins[k].to_f64_vec();
                        v[i] += d;
                        ins[k] = Tensor::from_vec(ins[k].shape().to_vec(), v)
                            .unwrap()
                            .convert(ins[k].dtype());
                        ins
                    };
                    (f(&shifted(h)) - f(&shifted(-h))) / (2.0 * h)
                })
                .collect()
        })
        .collect()
}

/// Gradients of the first output of `g` from autodiff and the interpreter.
pub fn autodiff_gradients(g: &Graph, inputs: &[Tensor], wrt: &[&str]) -> Vec<Vec<f64>> {
    let gg = wengert::autodiff(g, wrt, &[]).unwrap();
    let outs = wengert::interpret(&gg.graph, inputs).unwrap();
    outs[gg.primal_outputs..].iter().map(|t| t.to_f64_vec()).collect()
}

/// Checks autodiff against central finite differences for every
/// differentiable input.
pub fn check_gradients(g: &Graph, inputs: &[Tensor], tol: f64) {
    let wrt = g.differentiable_inputs();
    let ad = autodiff_gradients(g, inputs, &wrt);
    let fd = finite_differences(g, inputs, &wrt, 1e-6);
    for ((name, a), f) in wrt.iter().zip(&ad).zip(&fd) {
        assert_close(a, f, tol, &format!("{}: grad_{name}", g.name));
    }
}

/// The inputs of a partition's backward graph: the primal inputs it reads
/// (picked by name from `inputs`, the primal graph's inputs in order), the
/// residuals, the seeds.
pub fn backward_inputs(
    g: &Graph,
    p: &wengert::passes::Partition,
    inputs: &[Tensor],
    residuals: &[Tensor],
    seeds: &[Tensor],
) -> Vec<Tensor> {
    let mut out: Vec<Tensor> = p
        .backward_inputs
        .iter()
        .map(|n| inputs[g.inputs().iter().position(|i| &i.name == n).unwrap()].clone())
        .collect();
    out.extend(residuals.iter().cloned());
    out.extend(seeds.iter().cloned());
    out
}
