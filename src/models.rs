//! Small models built with the builder, shared by examples, tests and
//! benchmarks.

use wengert_ir::{DType, Graph, GraphBuilder, IrError};

/// A two-layer perceptron `x → ReLU(x W1 + b1) W2 + b2 → softmax
/// cross-entropy against one-hot targets t`, averaged over the batch.
/// Inputs: `x` and `t` (data), `W1`, `b1`, `W2`, `b2` (parameters); output
/// `loss`, and `logits` when `with_logits` is set.
pub fn mlp(
    batch: usize,
    input: usize,
    hidden: usize,
    classes: usize,
    dtype: DType,
    with_logits: bool,
) -> Result<Graph, IrError> {
    let b = GraphBuilder::new("mlp");
    let x = b.data("x", dtype, &[batch, input]);
    let t = b.data("t", dtype, &[batch, classes]);
    let w1 = b.input("W1", dtype, &[input, hidden]);
    let b1 = b.input("b1", dtype, &[hidden]);
    let w2 = b.input("W2", dtype, &[hidden, classes]);
    let b2 = b.input("b2", dtype, &[classes]);
    let h = x.linear(w1, b1).relu();
    let logits = h.linear(w2, b2);
    let loss = logits.softmax_cross_entropy(t);
    if with_logits {
        b.build(&[("loss", loss), ("logits", logits)])
    } else {
        b.build(&[("loss", loss)])
    }
}

/// The names of [`mlp`]'s parameters, in input order.
pub const MLP_PARAMS: [&str; 4] = ["W1", "b1", "W2", "b2"];

/// A chain of `layers` layers `h ← tanh(h W_i)` from `x` (`[batch, width]`)
/// with loss `Σ h`; parameters `W1…W{layers}`.
pub fn tanh_chain(layers: usize, batch: usize, width: usize, dtype: DType) -> Result<Graph, IrError> {
    let b = GraphBuilder::new("tanh_chain");
    let mut h = b.data("x", dtype, &[batch, width]);
    let ws: Vec<_> = (1..=layers)
        .map(|i| b.input(&format!("W{i}"), dtype, &[width, width]))
        .collect();
    for w in ws {
        h = h.matmul(w).tanh();
    }
    b.build(&[("loss", h.sum_all())])
}
