//! Benchmarks of the optimizing pipeline (issue: optimizing pipeline).
//!
//! - `elementwise_chain/{unfused,fused}/K`: a chain of K elementwise ops
//!   over 16M f32, compiled without and with the `fuse` pass; throughput in
//!   bytes of the one input read and one output written.
//! - `compile_mixed_chain/N`: compile time of value_and_grad of a mixed
//!   chain of N nodes (products with a broadcast scalar, unary ops, sums
//!   with broadcast constants, squares) on f32[64];
//!   `compile_wide_sum/N`: of a sum of N scalar inputs.
//! - `checkpoint_chain64/POLICY` (issue: checkpoint scheduling): one
//!   forward + backward step of 64 tanh layers (512×512, batch 64) under
//!   each checkpoint policy, with planned and measured peaks on stderr,
//!   and √n's time over save-all's measured step by step in alternation.
//!
//! Run with `cargo bench --bench pipeline`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use wengert::passes::Pass;
use wengert::{compile, value_and_grad, DType, Graph, GraphBuilder, Options, Tensor};

const N: usize = 16 << 20;

/// `y = f_K(…f_1(x))` with cheap ops (mul, add, sub, mul, …) so the chain is
/// memory bound.
fn chain(k: usize, n: usize) -> Graph {
    let b = GraphBuilder::new("chain");
    let x = b.input("x", DType::F32, &[n]);
    let mut h = x;
    for i in 0..k {
        h = match i % 3 {
            0 => h * 1.0001,
            1 => h + 0.5,
            _ => h - 0.25,
        };
    }
    b.build(&[("y", h)]).unwrap()
}

/// The machine's streaming bandwidth for the chain's access pattern: a
/// scale `y = 1.0001·x` over the same 16M f32 by plain Rust on `threads`
/// threads (halves of the arrays), best of 7: the reference for the
/// fraction of the machine's bandwidth a kernel reaches.
fn stream_scale_seconds(threads: usize) -> f64 {
    let x = vec![1.0f32; N];
    let mut y = vec![0.0f32; N];
    let mut best = f64::INFINITY;
    for _ in 0..7 {
        let t = std::time::Instant::now();
        std::thread::scope(|s| {
            for (xs, ys) in x.chunks(N.div_ceil(threads)).zip(y.chunks_mut(N.div_ceil(threads))) {
                s.spawn(move || {
                    for (o, i) in ys.iter_mut().zip(xs) {
                        *o = i * 1.0001;
                    }
                });
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    black_box(&y);
    best
}

fn elementwise_chain(c: &mut Criterion) {
    let mut group = c.benchmark_group("elementwise_chain");
    group.sample_size(10);
    group.throughput(Throughput::Bytes((2 * N * 4) as u64));
    let x = Tensor::full(wengert::TensorType::new(DType::F32, vec![N]), 1.0);
    let (s1, s2) = (stream_scale_seconds(1), stream_scale_seconds(2));
    let gbs = |secs: f64| (2 * N * 4) as f64 / secs / 1e9;
    eprintln!(
        "elementwise_chain: stream scale by plain Rust: 1 thread {:.1} GB/s, 2 threads {:.1} GB/s",
        gbs(s1),
        gbs(s2)
    );
    for k in [2, 4, 8] {
        let g = chain(k, N);
        for (label, passes, threads) in [
            ("unfused", vec![Pass::Simplify, Pass::MemoryPlan], 1),
            ("fused", vec![Pass::Simplify, Pass::Fuse, Pass::MemoryPlan], 1),
            ("fused_t2", vec![Pass::Simplify, Pass::Fuse, Pass::MemoryPlan], 2),
        ] {
            let exe = compile(
                &g,
                &Options {
                    passes,
                    ..Options::default().with_threads(threads)
                },
            )
            .unwrap();
            let mut out = exe.call(&[&x]).unwrap();
            if label == "fused_t2" {
                let mut best = f64::INFINITY;
                for _ in 0..7 {
                    let t = std::time::Instant::now();
                    exe.call_into(&[&x], &mut out).unwrap();
                    best = best.min(t.elapsed().as_secs_f64());
                }
                eprintln!(
                    "elementwise_chain/fused_t2/{k}: best of 7 {:.1} GB/s = {:.0}% of the 2-thread stream scale",
                    gbs(best),
                    100.0 * s2 / best
                );
            }
            group.bench_with_input(BenchmarkId::new(label, k), &k, |b, _| {
                b.iter(|| exe.call_into(black_box(&[&x]), &mut out).unwrap())
            });
        }
    }
    group.finish();
}

/// A mixed elementwise chain of about `n` nodes on f32[64]: products with
/// a broadcast scalar input, unary ops (sin, tanh, exp, cos, neg, abs),
/// sums with broadcast constants and squares, then a sum.
fn mixed_chain(n: usize) -> Graph {
    let b = GraphBuilder::new("mixed");
    let x = b.input("x", DType::F32, &[64]);
    let s = b.input("s", DType::F32, &[]);
    let mut h = x;
    let mut nodes = 0;
    let mut i = 0;
    while nodes < n {
        h = match i % 4 {
            0 => {
                nodes += 2;
                h * s
            }
            1 => {
                nodes += 1;
                match i % 6 {
                    1 => h.sin(),
                    3 => h.tanh(),
                    5 => h.cos(),
                    _ => h.exp(),
                }
            }
            2 => {
                nodes += 3;
                h + 0.5
            }
            _ => {
                nodes += 1;
                h * h
            }
        };
        i += 1;
    }
    b.build(&[("y", h.sum_all())]).unwrap()
}

/// `y = x_0 + x_1 + … + x_{n−1}` over `n` scalar inputs.
fn wide_sum(n: usize) -> Graph {
    let mut g = Graph::new("wide");
    let xs: Vec<_> = (0..n)
        .map(|i| {
            g.add_input(&format!("x{i}"), wengert::TensorType::scalar(DType::F64), true)
                .unwrap()
        })
        .collect();
    let mut acc = xs[0];
    for &x in &xs[1..] {
        acc = g
            .add(wengert::Op::Binary(wengert::ir::BinaryOp::Add), &[acc, x])
            .unwrap();
    }
    g.add_output("y", acc).unwrap();
    g
}

/// Compile time of value_and_grad (the whole pipeline and the joint
/// function) against size: a mixed chain of N nodes, and a sum of N
/// scalar inputs.
fn compile_chain(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile_mixed_chain");
    group.sample_size(10);
    for n in [250, 2000, 10_000, 100_000] {
        let g = mixed_chain(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |bch, _| {
            bch.iter(|| value_and_grad(black_box(&g), &["x", "s"], &Options::default()).unwrap())
        });
    }
    group.finish();
    let mut group = c.benchmark_group("compile_wide_sum");
    group.sample_size(10);
    for n in [1000, 10_000, 100_000] {
        let g = wide_sum(n);
        let wrt: Vec<String> = (0..n).map(|i| format!("x{i}")).collect();
        let wrt: Vec<&str> = wrt.iter().map(String::as_str).collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |bch, _| {
            bch.iter(|| value_and_grad(black_box(&g), &wrt, &Options::default()).unwrap())
        });
    }
    group.finish();
}

/// 64 layers h ← tanh(h W_i), W_i 512×512, batch 64, f32, gradients of all
/// W_i: one forward + backward step (the split halves, which is where
/// checkpointing applies) under several policies; the peak activation
/// memory of each (planned, and measured on the compiled code) is printed
/// once to stderr.
fn checkpoint_chain(c: &mut Criterion) {
    let mut group = c.benchmark_group("checkpoint_chain64");
    group.sample_size(10);
    let g = wengert::models::tanh_chain(64, 64, 512, DType::F32).unwrap();
    let wrt: Vec<String> = (1..=64).map(|i| format!("W{i}")).collect();
    let wrt: Vec<&str> = wrt.iter().map(String::as_str).collect();
    let inputs: Vec<Tensor> = g
        .inputs()
        .iter()
        .map(|i| Tensor::full(i.ty.clone(), if i.name == "x" { 0.5 } else { 0.02 }))
        .collect();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let policies = [
        ("all", wengert::CheckpointPolicy::SaveAll),
        ("sqrt", wengert::CheckpointPolicy::Sqrt),
        ("budget_6MiB", wengert::CheckpointPolicy::Budget(6 << 20)),
        ("budget_4MiB", wengert::CheckpointPolicy::Budget(4 << 20)),
        ("budget_2MiB", wengert::CheckpointPolicy::Budget(2 << 20)),
        ("budget_1MiB", wengert::CheckpointPolicy::Budget(1 << 20)),
        ("slots_8", wengert::CheckpointPolicy::Slots(8)),
    ];
    let mut compiled = Vec::new();
    for (label, policy) in policies {
        let f = value_and_grad(
            &g,
            &wrt,
            &Options {
                checkpoint: policy,
                ..Options::default().with_threads(1)
            },
        )
        .unwrap();
        let m = f.measure_memory().unwrap();
        eprintln!(
            "checkpoint_chain64/{label}: saved {} B, peak (saved + larger arena) planned {} B, measured {} B; binomial slots {:?}",
            m.saved_bytes,
            m.planned_peak(),
            m.measured_peak(),
            f.pipeline().binomial.map(|b| b.slots)
        );
        let buffers = f.buffers().unwrap();
        compiled.push((label, f, buffers));
    }
    // √n against save-all, step by step in alternation: this machine's
    // speed drifts by ±15% over minutes, which moves two medians taken
    // minutes apart more than the ratio itself.
    {
        let [(_, all, all_buf), (_, sqrt, sqrt_buf), ..] = &mut compiled[..] else {
            unreachable!("the first two policies are all and sqrt")
        };
        let step = |f: &wengert::GradFn, buffers: &mut wengert::StepBuffers| {
            let t0 = std::time::Instant::now();
            f.forward_into(&refs, buffers).unwrap();
            f.backward_into(&refs, &[], buffers).unwrap();
            t0.elapsed().as_secs_f64()
        };
        let mut ratios: Vec<f64> = (0..31).map(|_| step(sqrt, sqrt_buf) / step(all, all_buf)).collect();
        ratios.sort_by(f64::total_cmp);
        eprintln!(
            "checkpoint_chain64: sqrt / all, 31 alternating steps: median {:.3} (quartiles {:.3}, {:.3})",
            ratios[15], ratios[7], ratios[23]
        );
    }
    for (label, f, buffers) in &mut compiled {
        group.bench_function(*label, |b| {
            b.iter(|| {
                f.forward_into(black_box(&refs), buffers).unwrap();
                f.backward_into(&refs, &[], buffers).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, elementwise_chain, compile_chain, checkpoint_chain);
criterion_main!(benches);
