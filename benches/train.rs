//! The whole training step with its optimizer inside (issue: the whole
//! training step as one compiled function), against the gradient alone:
//!
//! - `train_step/mlp_128/{grad,adam_step}`: MLP 784-256-10, f32, B = 128;
//! - `train_step/char_rnn/{grad,adam_step}`: the char-RNN, hidden 256,
//!   T = 256, B = 32, vocabulary 63 (one-hot), f32.
//!
//! The step's time over the gradient's is printed first as the median of
//! 21 alternating calls. One thread. Run with `cargo bench --bench train`.

mod common;

use common::values;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::Instant;
use wengert::{models, value_and_grad, DType, Graph, Optimizer, Options, StepConfig, Tensor, TrainStep};

fn bench(c: &mut Criterion, name: &str, g: &Graph, params: &[&str]) {
    let opts = Options::default().with_threads(1);
    let data: Vec<&str> = g
        .inputs()
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !params.contains(n))
        .collect();
    let p = values(g, params, 1);
    let d = values(g, &data, 2);
    let init: Vec<(&str, Tensor)> = params.iter().copied().zip(p.iter().cloned()).collect();
    let config = StepConfig {
        clip_norm: Some(1.0),
        ..StepConfig::new(Optimizer::adam())
    };
    let mut step = TrainStep::new(g, "loss", &init, &config, &opts).unwrap();
    // Memory: one set of parameters and state (donated to the step's
    // outputs), the arena, the loss.
    let m = step.memory();
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    eprintln!(
        "train_step/{name}: memory {:.2} MiB = params {:.2} + Adam state {:.2} + arena {:.2} (written: {:.2}) + loss {} B; \
         separate output buffers would add {:.2} MiB",
        mib(m.total()),
        mib(m.params),
        mib(m.state),
        mib(m.arena),
        mib(step.executable().measure_arena().unwrap()),
        m.outputs,
        mib(m.params + m.state),
    );
    let grad = value_and_grad(g, params, &opts).unwrap();
    let all: Vec<Tensor> = g
        .inputs()
        .iter()
        .map(|i| match params.iter().position(|n| *n == i.name) {
            Some(k) => p[k].clone(),
            None => d[data.iter().position(|n| *n == i.name).unwrap()].clone(),
        })
        .collect();
    let refs: Vec<&Tensor> = all.iter().collect();
    let drefs: Vec<&Tensor> = d.iter().collect();
    let mut out = grad.call(&refs).unwrap();
    let mut r: Vec<f64> = (0..21)
        .map(|_| {
            let t = Instant::now();
            step.step(&drefs, 1e-4).unwrap();
            let a = t.elapsed().as_secs_f64();
            let t = Instant::now();
            grad.call_into(&refs, &mut out).unwrap();
            a / t.elapsed().as_secs_f64()
        })
        .collect();
    r.sort_by(f64::total_cmp);
    eprintln!(
        "train_step/{name}: Adam step (with clipping) / gradient alone, 21 alternating calls: median {:.3} (quartiles {:.3}, {:.3})",
        r[10], r[5], r[15]
    );
    let mut group = c.benchmark_group(format!("train_step/{name}"));
    group.sample_size(20);
    group.bench_function("grad", |b| {
        b.iter(|| grad.call_into(black_box(&refs), &mut out).unwrap())
    });
    group.bench_function("adam_step", |b| b.iter(|| step.step(black_box(&drefs), 1e-4).unwrap()));
    group.finish();
}

fn steps(c: &mut Criterion) {
    common::flush_denormals_as_jax_does();
    let mlp = models::mlp(128, 784, 256, 10, DType::F32, false).unwrap();
    bench(c, "mlp_128", &mlp, &models::MLP_PARAMS);
    let rnn = models::char_rnn(256, 32, 63, 256).unwrap();
    bench(c, "char_rnn", &rnn, &models::CHAR_RNN_PARAMS);
}

criterion_group!(benches, steps);
criterion_main!(benches);
