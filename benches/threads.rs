//! Threads (issue: fast on the machine it runs on): value and gradient per
//! step on 1 and 2 threads of the shared pool, for the table:
//!
//! - `step/mlp_B/t{1,2}`: MLP 784-256-10 (softmax cross-entropy), f32,
//!   B = 32, 128, 1024, the joint value-and-gradient call;
//! - `step/chain64/t{1,2}`: 64 layers `h ← tanh(h W_i)`, 512², batch 64,
//!   f32, gradients of every `W_i`;
//! - the seed cases' calls are in `benches/jit.rs` (their products are too
//!   small to use threads).
//!
//! Before criterion's figures, each workload's 2-thread over 1-thread time
//! is printed as the median ratio of 21 alternating calls (this machine's
//! speed drifts more between minutes than the ratio itself).
//!
//! Run with `cargo bench --bench threads`.

mod common;

use common::values;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::Instant;
use wengert::{models, value_and_grad, DType, GradFn, Graph, Options, Tensor};

fn workloads() -> Vec<(String, Graph)> {
    let mut v: Vec<(String, Graph)> = [32, 128, 1024]
        .into_iter()
        .map(|b| {
            (
                format!("mlp_{b}"),
                models::mlp(b, 784, 256, 10, DType::F32, false).unwrap(),
            )
        })
        .collect();
    v.push(("chain64".into(), models::tanh_chain(64, 64, 512, DType::F32).unwrap()));
    v
}

fn steps(c: &mut Criterion) {
    common::flush_denormals_as_jax_does();
    eprintln!(
        "pool: {} thread(s); gemm {}",
        wengert::runtime::pool::default_threads(),
        wengert::runtime::gemm::machine_report()
    );
    let mut group = c.benchmark_group("step");
    group.sample_size(20);
    for (name, g) in workloads() {
        let wrt = g.differentiable_inputs();
        let fs: Vec<GradFn> = [1, 2]
            .into_iter()
            .map(|t| value_and_grad(&g, &wrt, &Options::default().with_threads(t)).unwrap())
            .collect();
        let ins = values(fs[0].graph(), &[], 12345);
        let refs: Vec<&Tensor> = ins.iter().collect();
        let mut outs: Vec<Vec<Tensor>> = fs.iter().map(|f| f.call(&refs).unwrap()).collect();
        let mut time = |k: usize| {
            let t = Instant::now();
            fs[k].call_into(&refs, &mut outs[k]).unwrap();
            t.elapsed().as_secs_f64()
        };
        let mut ratios: Vec<f64> = (0..21).map(|_| time(1) / time(0)).collect();
        ratios.sort_by(f64::total_cmp);
        eprintln!(
            "step/{name}: 2 threads / 1 thread, 21 alternating calls: median {:.3} (quartiles {:.3}, {:.3})",
            ratios[10], ratios[5], ratios[15]
        );
        for (k, f) in fs.iter().enumerate() {
            let mut out = f.call(&refs).unwrap();
            group.bench_function(format!("{name}/t{}", k + 1), |b| {
                b.iter(|| f.call_into(black_box(&refs), &mut out).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, steps);
criterion_main!(benches);
