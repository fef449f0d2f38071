//! Benchmarks of loops (`scan`) against the same computation unrolled.
//!
//! - `rnn/*`: value and gradient of `h ← tanh(W h + b + x_t)`, H = 64,
//!   f32, T = 100 and 1000, as one loop and unrolled.
//! - `case8/*`: seed case 8's scalar recurrence, f64, T = 1000.
//! - `chain/*`: the 64-layer 512² tanh chain (batch 64) as a loop over
//!   stacked weights and unrolled.
//! - `compile/*`: compile time of value_and_grad of the loops at
//!   T = 100, 1,000 and 100,000 (and of the unrolled RNN at T = 100, 1000).
//!
//! Run with `cargo bench --bench scan`. Single-threaded by construction.
//! Subnormals are flushed to zero, as JAX does (`common::flush_denormals_as_jax_does`).

#[allow(dead_code)]
mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use wengert::{models, value_and_grad, DType, Graph, Options, Tensor};

fn inputs(g: &Graph) -> Vec<Tensor> {
    // Deterministic values in [-0.5, 0.5), small enough that tanh does not
    // saturate over long runs.
    let mut state = 0x2545f4914f6cdd1du64;
    g.inputs()
        .iter()
        .map(|i| {
            let n = i.ty.num_elements();
            let scale = if i.ty.rank() >= 2 {
                1.0 / (i.ty.shape[i.ty.rank() - 1] as f64).sqrt()
            } else {
                1.0
            };
            let v: Vec<f64> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * scale
                })
                .collect();
            Tensor::from_vec(i.ty.shape.clone(), v).unwrap().convert(i.ty.dtype)
        })
        .collect()
}

fn wrt(g: &Graph) -> Vec<String> {
    g.differentiable_inputs().iter().map(|s| s.to_string()).collect()
}

fn bench_step(c: &mut Criterion, group: &str, name: &str, g: &Graph) {
    let names = wrt(g);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let f = value_and_grad(g, &refs, &Options::default().with_threads(1)).unwrap();
    let ins = inputs(g);
    let ins: Vec<&Tensor> = ins.iter().collect();
    let mut out = f.joint().new_outputs().unwrap();
    let mut grp = c.benchmark_group(group);
    grp.bench_function(name, |b| b.iter(|| f.call_into(black_box(&ins), &mut out).unwrap()));
    grp.finish();
}

fn loops(c: &mut Criterion) {
    common::flush_denormals_as_jax_does();
    for t in [100, 1000] {
        bench_step(
            c,
            "rnn",
            &format!("scan_T{t}"),
            &models::rnn(t, 64, DType::F32, true).unwrap(),
        );
        bench_step(
            c,
            "rnn",
            &format!("unrolled_T{t}"),
            &models::rnn(t, 64, DType::F32, false).unwrap(),
        );
    }
    bench_step(
        c,
        "case8",
        "scan_T1000",
        &models::scalar_recurrence(1000, true).unwrap(),
    );
    bench_step(
        c,
        "case8",
        "unrolled_T1000",
        &models::scalar_recurrence(1000, false).unwrap(),
    );
    bench_step(
        c,
        "chain",
        "scan_64x512",
        &models::tanh_chain_scan(64, 64, 512, DType::F32).unwrap(),
    );
    bench_step(
        c,
        "chain",
        "unrolled_64x512",
        &models::tanh_chain(64, 64, 512, DType::F32).unwrap(),
    );
}

fn compile(c: &mut Criterion) {
    let mut grp = c.benchmark_group("compile");
    grp.sample_size(10);
    let cases: Vec<(String, Graph)> = [100, 1000, 100_000]
        .iter()
        .flat_map(|&t| {
            [
                (format!("rnn_scan_T{t}"), models::rnn(t, 64, DType::F32, true).unwrap()),
                (format!("case8_scan_T{t}"), models::scalar_recurrence(t, true).unwrap()),
            ]
        })
        .chain([100, 1000].iter().map(|&t| {
            (
                format!("rnn_unrolled_T{t}"),
                models::rnn(t, 64, DType::F32, false).unwrap(),
            )
        }))
        .collect();
    for (name, g) in &cases {
        let names = wrt(g);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        grp.bench_with_input(BenchmarkId::from_parameter(name), g, |b, g| {
            b.iter(|| value_and_grad(black_box(g), &refs, &Options::default()).unwrap())
        });
    }
    grp.finish();
}

criterion_group!(benches, loops, compile);
criterion_main!(benches);
