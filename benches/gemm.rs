//! Every matrix product of the MLP (784-256-10 at B = 32, 128, 1024) and
//! of the 64-layer 512² tanh chain (B = 64), forward and backward with the
//! transposed operands read in place, under each GEMM kernel family this
//! CPU runs in both orientations (`-direct`: a row-major C computed as
//! written rather than as `Cᵀ = Bᵀ·Aᵀ`), one thread and two; and what
//! `gemm::choose` picks.
//!
//! `gemm/<shape>/<kernel>-t<threads>`; the chosen family is printed before
//! the measurements. Run with `cargo bench --bench gemm`.
//!
//! `ordered/<shape>/{gemm,ordered}-t<threads>`: the products a backward
//! loop's split transpose computes after the loop (the RNN of the scan
//! benchmark, the char-RNN's recurrent and input weights), by the chosen
//! GEMM and by `matmul_acc`'s ordered kernel, which sums in the loop's
//! order so that every checkpoint policy gives the same bits.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::Duration;
use wengert_runtime::gemm::ordered::{wengert_matmul_acc_f32, wide_tiles, OrderedParams};
use wengert_runtime::gemm::{self, GemmChoice, GemmKernel, GemmParams};

/// `(name, m, k, n, A transposed, B transposed)`: `C[m,n] = A·B` with A
/// read as the transpose of a row-major `[k, m]` when transposed, B as the
/// transpose of a row-major `[n, k]`.
fn shapes() -> Vec<(String, usize, usize, usize, bool, bool)> {
    let mut v = Vec::new();
    for b in [32, 128, 1024] {
        v.push((format!("mlp{b}_x_w1"), b, 784, 256, false, false));
        v.push((format!("mlp{b}_h_w2"), b, 256, 10, false, false));
        v.push((format!("mlp{b}_dy_w2t"), b, 10, 256, false, true));
        v.push((format!("mlp{b}_ht_dy"), 256, b, 10, true, false));
        v.push((format!("mlp{b}_xt_dh"), 784, b, 256, true, false));
    }
    v.push(("chain_x_w".into(), 64, 512, 512, false, false));
    v.push(("chain_dy_wt".into(), 64, 512, 512, false, true));
    v.push(("chain_xt_dy".into(), 512, 64, 512, true, false));
    v
}

fn params(m: usize, k: usize, n: usize, at: bool, bt: bool, kernel: GemmKernel, threads: usize) -> GemmParams {
    let (a_rs, a_cs) = if at { (1, m as i64) } else { (k as i64, 1) };
    let (b_rs, b_cs) = if bt { (1, k as i64) } else { (n as i64, 1) };
    GemmParams {
        a_rs,
        a_cs,
        b_rs,
        b_cs,
        ..GemmParams::contiguous(m, n, k, kernel, threads)
    }
}

fn products(c: &mut Criterion) {
    let kernels: Vec<GemmKernel> = [GemmKernel::Loops, GemmKernel::Fma, GemmKernel::Avx512]
        .into_iter()
        .filter(|k| k.available())
        .collect();
    eprintln!(
        "machine family: {} ({})",
        gemm::machine_family().name(),
        gemm::machine_report()
    );
    let mut grp = c.benchmark_group("gemm");
    grp.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for (name, m, k, n, at, bt) in shapes() {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 * 1e-3 - 0.5).collect();
        let mut out = vec![0f32; m * n];
        for threads in [1, 2] {
            let p = params(m, k, n, at, bt, GemmKernel::Loops, gemm::threads_for(m, n, k, threads));
            let chosen = gemm::choose(&p, false).unwrap();
            eprintln!(
                "{name}: [{m},{k}]x[{k},{n}] at {threads} thread(s): {} on {} thread(s)",
                chosen.name(),
                p.threads
            );
        }
        for choice in kernels.iter().flat_map(|&kernel| {
            let directs: &[bool] = if kernel == GemmKernel::Loops {
                &[false]
            } else {
                &[false, true]
            };
            // Copies only of operands whose rows are not contiguous (the
            // others are copied as they are: nothing to learn).
            let copies: Vec<u8> = if kernel == GemmKernel::Loops {
                vec![]
            } else {
                (1..=3u8)
                    .filter(|&c| (c & 1 == 0 || at) && (c & 2 == 0 || bt))
                    .collect()
            };
            directs
                .iter()
                .map(move |&direct| GemmChoice {
                    kernel,
                    direct,
                    copy: 0,
                })
                .chain(copies.into_iter().map(move |copy| GemmChoice {
                    kernel,
                    direct: false,
                    copy,
                }))
        }) {
            // Loops on the large products take seconds and teach nothing.
            if choice.kernel == GemmKernel::Loops && m * n * k > 4 * gemm::SMALL_PRODUCT as usize {
                continue;
            }
            for threads in [1, 2] {
                let mut p = params(m, k, n, at, bt, choice.kernel, threads);
                choice.apply(&mut p);
                let label = choice.name().replace(' ', "-");
                grp.bench_function(format!("{name}/{label}-t{threads}"), |bch| {
                    bch.iter(|| unsafe { gemm::wengert_gemm_f32(&p, a.as_ptr(), b.as_ptr(), out.as_mut_ptr()) });
                });
                black_box(&out);
            }
        }
    }
    grp.finish();
}

/// `(name, m, K, n, blocks, A transposed)` of split-transpose products.
fn split_shapes() -> Vec<(&'static str, usize, usize, usize, usize, bool)> {
    vec![
        ("rnn_h64_t1000", 64, 1000, 64, 1000, true),
        ("charrnn_whh", 256, 256 * 32, 256, 256, false),
        ("charrnn_wxh", 65, 256 * 32, 256, 256, false),
    ]
}

fn ordered_products(c: &mut Criterion) {
    let mut grp = c.benchmark_group("ordered");
    grp.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for (name, m, k, n, blocks, at) in split_shapes() {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 * 1e-3 - 0.5).collect();
        let mut out = vec![0f32; m * n];
        for threads in [1, 2] {
            let mut p = params(
                m,
                k,
                n,
                at,
                false,
                GemmKernel::Loops,
                gemm::threads_for(m, n, k, threads),
            );
            gemm::choose(&p, false).unwrap().apply(&mut p);
            grp.bench_function(format!("{name}/gemm-t{threads}"), |bch| {
                bch.iter(|| unsafe { gemm::wengert_gemm_f32(&p, a.as_ptr(), b.as_ptr(), out.as_mut_ptr()) });
            });
            let q = OrderedParams {
                m: m as i64,
                n: n as i64,
                k: k as i64,
                blocks: blocks as i64,
                a_rs: p.a_rs,
                a_cs: p.a_cs,
                b_rs: n as i64,
                b_cs: 1,
                c_rs: n as i64,
                c_cs: 1,
                threads: threads as i64,
                wide: wide_tiles() as i64,
            };
            grp.bench_function(format!("{name}/ordered-t{threads}"), |bch| {
                bch.iter(|| {
                    out.fill(0.0);
                    unsafe { wengert_matmul_acc_f32(&q, a.as_ptr(), b.as_ptr(), out.as_mut_ptr()) }
                });
            });
            black_box(&out);
        }
    }
    grp.finish();
}

criterion_group!(benches, products, ordered_products);
criterion_main!(benches);
