//! Forward mode and second order (issue: forward mode and higher
//! derivatives):
//!
//! - `jvp/mlp_B`: the JVP of the MLP (784-256-10, f32) along one direction
//!   of all four parameters, beside `value/mlp_B`, the forward value alone;
//! - `hvp/mlp_B`: the HVP of the MLP loss (forward over reverse), beside
//!   `grad/mlp_B`, the value and gradient;
//! - `jacobian_tall/{forward,reverse}`: the Jacobian of `tanh(x W)`, 4
//!   inputs → 1,000 outputs, f64, both ways (the automatic choice is
//!   printed);
//! - `compile_hessian/*`: compile time of `hessian` (one compiled function
//!   computing the whole matrix) for the seed cases 1–4 and a small MLP.
//!
//! Ratios in the same run are printed first (median of 21 alternating
//! calls). Run with `cargo bench --bench forward`.

mod common;

use common::values;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::Instant;
use wengert::{cases, compile, hessian, hvp, jacobian, jvp, models, value_and_grad, DType, Options, Tensor};

/// Median of 21 alternating timings of `a` over `b`.
fn ratio(mut a: impl FnMut(), mut b: impl FnMut()) -> f64 {
    let mut r: Vec<f64> = (0..21)
        .map(|_| {
            let t = Instant::now();
            a();
            let ta = t.elapsed().as_secs_f64();
            let t = Instant::now();
            b();
            ta / t.elapsed().as_secs_f64()
        })
        .collect();
    r.sort_by(f64::total_cmp);
    r[10]
}

fn mlp(c: &mut Criterion) {
    common::flush_denormals_as_jax_does();
    let opts = Options::default().with_threads(1);
    let params = models::MLP_PARAMS;
    let mut group = c.benchmark_group("forward_mode");
    group.sample_size(20);
    for b in [32, 128] {
        let g = models::mlp(b, 784, 256, 10, DType::F32, false).unwrap();
        let value = compile(&g, &opts).unwrap();
        let tangent = jvp(&g, &params, &opts).unwrap();
        let grad = value_and_grad(&g, &params, &opts).unwrap();
        let second = hvp(&g, "loss", &params, &opts).unwrap();
        let x = values(&g, &[], 1);
        let xr: Vec<&Tensor> = x.iter().collect();
        let mut v = x.clone();
        let tin_graph = wengert::passes::jvp::jvp(&g, &params).unwrap().graph;
        v.extend(values(&tin_graph, &[], 2)[x.len()..].iter().cloned());
        let vr: Vec<&Tensor> = v.iter().collect();
        let mut o_value = value.call(&xr).unwrap();
        let mut o_tangent = tangent.call(&vr).unwrap();
        let mut o_grad = grad.call(&xr).unwrap();
        let mut o_hvp = second.call(&vr).unwrap();
        let r_jvp = ratio(
            || tangent.call_into(&vr, &mut o_tangent).unwrap(),
            || value.call_into(&xr, &mut o_value).unwrap(),
        );
        let r_hvp = ratio(
            || second.call_into(&vr, &mut o_hvp).unwrap(),
            || grad.call_into(&xr, &mut o_grad).unwrap(),
        );
        eprintln!(
            "mlp B = {b}: jvp / value {r_jvp:.2}, hvp / value_and_grad {r_hvp:.2} (median of 21 alternating calls)"
        );
        group.bench_function(format!("value/mlp_{b}"), |bch| {
            bch.iter(|| value.call_into(black_box(&xr), &mut o_value).unwrap())
        });
        group.bench_function(format!("jvp/mlp_{b}"), |bch| {
            bch.iter(|| tangent.call_into(black_box(&vr), &mut o_tangent).unwrap())
        });
        group.bench_function(format!("grad/mlp_{b}"), |bch| {
            bch.iter(|| grad.call_into(black_box(&xr), &mut o_grad).unwrap())
        });
        group.bench_function(format!("hvp/mlp_{b}"), |bch| {
            bch.iter(|| second.call_into(black_box(&vr), &mut o_hvp).unwrap())
        });
    }
    group.finish();
}

fn tall(c: &mut Criterion) {
    let opts = Options::default().with_threads(1);
    let b = wengert::GraphBuilder::new("tall");
    let x = b.input("x", DType::F64, &[4]);
    let w = b.data("w", DType::F64, &[4, 1000]);
    let g = b.build(&[("y", x.reshape(&[1, 4]).matmul(w).tanh())]).unwrap();
    let auto = jacobian(&g, "y", &["x"], None, &opts).unwrap();
    let fwd = jacobian(&g, "y", &["x"], Some(wengert::JacobianMode::Forward), &opts).unwrap();
    let rev = jacobian(&g, "y", &["x"], Some(wengert::JacobianMode::Reverse), &opts).unwrap();
    let ins = values(&g, &[], 3);
    let refs: Vec<&Tensor> = ins.iter().collect();
    eprintln!(
        "jacobian_tall (4 → 1000): automatic choice {:?}; forward / reverse {:.3} (median of 21 alternating calls)",
        auto.mode,
        ratio(|| drop(fwd.call(&refs).unwrap()), || drop(rev.call(&refs).unwrap()))
    );
    let mut group = c.benchmark_group("jacobian_tall");
    group.sample_size(20);
    group.bench_function("forward", |bch| bch.iter(|| fwd.call(black_box(&refs)).unwrap()));
    group.bench_function("reverse", |bch| bch.iter(|| rev.call(black_box(&refs)).unwrap()));
    group.finish();
}

fn compile_hessian(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile_hessian");
    group.sample_size(20);
    for (file, build) in cases::ALL.iter().take(4) {
        let g = build().unwrap();
        let of = g.outputs()[0].name.clone();
        // Case 4 has a vector-valued map; its first output is a scalar.
        let wrt = g.differentiable_inputs();
        let wrt: Vec<String> = wrt.iter().map(|s| s.to_string()).collect();
        group.bench_function(*file, |bch| {
            bch.iter(|| {
                let w: Vec<&str> = wrt.iter().map(String::as_str).collect();
                hessian(black_box(&g), &of, &w, &Options::default()).unwrap()
            })
        });
    }
    // A small MLP (6-5-3, B = 8: 53 parameters, a 53×53 Hessian; the
    // 784-256-10 one has 203,530 parameters, a matrix of 166 GB).
    let g = models::mlp(8, 6, 5, 3, DType::F64, false).unwrap();
    group.bench_function("mlp_6_5_3", |bch| {
        bch.iter(|| hessian(black_box(&g), "loss", &models::MLP_PARAMS, &Options::default()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, mlp, tall, compile_hessian);
criterion_main!(benches);
