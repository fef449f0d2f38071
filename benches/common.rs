//! Deterministic inputs shared by the benchmarks.

use wengert::{Graph, Tensor};

/// Values for the inputs of `g` named in `names`, in that order (all of
/// them, in input order, when `names` is empty):
/// `t`, `xs` and `ts` one-hot along their last axis, the rest uniform in
/// ±0.05 from a generator seeded with `seed`.
pub fn values(g: &Graph, names: &[&str], seed: u64) -> Vec<Tensor> {
    let mut state = seed;
    let chosen: Vec<&wengert::ir::Input> = if names.is_empty() {
        g.inputs().iter().collect()
    } else {
        names.iter().map(|n| g.input(n).unwrap()).collect()
    };
    chosen
        .into_iter()
        .map(|i| {
            let ty = &i.ty;
            let one_hot = matches!(i.name.as_str(), "t" | "xs" | "ts");
            let v: Vec<f64> = (0..ty.num_elements())
                .map(|j| {
                    if one_hot {
                        let k = ty.shape.last().copied().unwrap_or(1).max(1);
                        return if j % k == (j / k) % k { 1.0 } else { 0.0 };
                    }
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5) * 0.1
                })
                .collect();
            Tensor::from_vec(ty.shape.clone(), v).unwrap().convert(ty.dtype)
        })
        .collect()
}

/// Puts the process in JAX's floating-point mode, subnormals flushed to
/// zero (XLA's CPU runtime always flushes), for the benchmarks whose
/// figures BENCHMARKS.md sets beside JAX's; with them kept, vanishing
/// gradients (the RNN's, the deep chain's) turn subnormal and Intel CPUs
/// slow down many times over (the default-mode figures are in
/// BENCHMARKS.md). Call first, before anything computes.
#[allow(dead_code)]
pub fn flush_denormals_as_jax_does() {
    wengert::set_flush_denormals(true).unwrap();
    eprintln!("subnormals flushed to zero (as JAX does)");
}
