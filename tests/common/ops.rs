//! The op cases that every derivative test runs (reverse mode in
//! `tests/autodiff.rs`, forward mode in `tests/jvp.rs`): one list, so an op
//! added here is checked in both modes. Each case is `check(name, shapes,
//! lo, hi, f)`: `f` applied to f64 inputs of `shapes` with values in
//! `[lo, hi)`.

use wengert::Var;

/// What a derivative test does with one case.
pub type Check<'a> = dyn FnMut(&str, &[&[usize]], f64, f64, &dyn for<'b> Fn(&[Var<'b>]) -> Var<'b>) + 'a;

/// Every elementwise unary op (away from kinks), powers and a composite.
pub fn unary_cases(check: &mut Check<'_>) {
    let s: &[&[usize]] = &[&[2, 3]];
    check("neg", s, -2.0, 2.0, &|x| -x[0]);
    check("exp", s, -2.0, 2.0, &|x| x[0].exp());
    check("log", s, 0.3, 3.0, &|x| x[0].log());
    check("sin", s, -3.0, 3.0, &|x| x[0].sin());
    check("cos", s, -3.0, 3.0, &|x| x[0].cos());
    check("tanh", s, -2.0, 2.0, &|x| x[0].tanh());
    check("sqrt", s, 0.3, 3.0, &|x| x[0].sqrt());
    check("erf", s, -2.0, 2.0, &|x| x[0].erf());
    check("expm1", s, -2.0, 2.0, &|x| x[0].expm1());
    check("log1p", s, -0.7, 3.0, &|x| x[0].log1p());
    // Away from the kink at 0: |x| ≥ 0.1 on both sides.
    check("abs+", s, 0.1, 2.0, &|x| x[0].abs());
    check("abs-", s, -2.0, -0.1, &|x| x[0].abs());
    check("relu+", s, 0.1, 2.0, &|x| x[0].relu());
    check("relu-", s, -2.0, -0.1, &|x| x[0].relu());
    for p in [2.0, 3.0, -1.0, 0.5, 1.5, -2.5] {
        check(&format!("pow{p}"), s, 0.3, 2.0, &move |x| x[0].powf(p));
    }
    check("sigmoid", s, -3.0, 3.0, &|x| x[0].sigmoid());
}

/// Every binary op and `select`, under each kind of broadcasting.
pub fn binary_cases(check: &mut Check<'_>) {
    let shapes: [&[&[usize]]; 4] = [
        &[&[2, 3], &[2, 3]],
        &[&[2, 3], &[3]],
        &[&[2, 1], &[1, 3]],
        &[&[], &[2, 3]],
    ];
    for s in shapes {
        check("add", s, -2.0, 2.0, &|x| x[0] + x[1]);
        check("sub", s, -2.0, 2.0, &|x| x[0] - x[1]);
        check("mul", s, -2.0, 2.0, &|x| x[0] * x[1]);
        check("div", s, 0.5, 2.0, &|x| x[0] / x[1]);
        check("max", s, -2.0, 2.0, &|x| x[0].max(x[1]));
        check("min", s, -2.0, 2.0, &|x| x[0].min(x[1]));
        check("select", s, -2.0, 2.0, &|x| {
            x[0].gt(x[1]).select(x[0] * x[1], x[0] - x[1])
        });
    }
}

/// Shape ops, reductions over every axis set, contractions, softmax and
/// softmax cross-entropy.
pub fn shape_cases(check: &mut Check<'_>) {
    check("broadcast", &[&[3, 1]], -1.0, 1.0, &|x| x[0].broadcast_to(&[2, 3, 4]));
    check("reshape", &[&[2, 3, 4]], -1.0, 1.0, &|x| x[0].reshape(&[4, 6]));
    check("transpose", &[&[2, 3, 4]], -1.0, 1.0, &|x| x[0].transpose(&[1, 2, 0]));
    for axes in [vec![0], vec![1], vec![2], vec![0, 2], vec![1, 2], vec![0, 1, 2]] {
        let a = axes.clone();
        check("reduce_sum", &[&[2, 3, 4]], -1.0, 1.0, &move |x| x[0].sum(&a));
        let a = axes.clone();
        check("reduce_max", &[&[2, 3, 4]], -1.0, 1.0, &move |x| x[0].max_over(&a));
        check("mean", &[&[2, 3, 4]], -1.0, 1.0, &move |x| x[0].mean(&axes));
    }
    check("matmul", &[&[2, 3], &[3, 4]], -1.0, 1.0, &|x| x[0].matmul(x[1]));
    check("matmul_t", &[&[3, 2], &[3, 4]], -1.0, 1.0, &|x| x[0].t().matmul(x[1]));
    check("batched_matmul", &[&[2, 2, 3], &[2, 3, 4]], -1.0, 1.0, &|x| {
        x[0].matmul(x[1])
    });
    check("slice", &[&[3, 4]], -1.0, 1.0, &|x| x[0].slice(&[1, 0], &[3, 3]));
    check("pad", &[&[2, 3]], -1.0, 1.0, &|x| x[0].pad(&[1, 0], &[0, 2]));
    check("concat0", &[&[2, 3], &[1, 3]], -1.0, 1.0, &|x| {
        x[0].builder().concat(&[x[0], x[1]], 0)
    });
    check("concat1", &[&[2, 3], &[2, 2]], -1.0, 1.0, &|x| {
        x[0].builder().concat(&[x[0], x[1], x[0]], 1)
    });
    check("softmax", &[&[2, 4]], -2.0, 2.0, &|x| x[0].softmax(1));
    check("linear", &[&[4, 3], &[3, 2], &[2]], -1.0, 1.0, &|x| {
        x[0].linear(x[1], x[2])
    });
    // Softmax cross-entropy against differentiable targets: both rules.
    check("softmax_cross_entropy", &[&[3, 4], &[3, 4]], 0.1, 1.0, &|x| {
        x[0].softmax_cross_entropy(x[1])
    });
}
