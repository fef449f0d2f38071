//! The seed's case studies 1–9, built with the builder.
//!
//! Each function builds the same graph as the matching text file in
//! `examples/cases/` (the tests check that both print identically), with the
//! seed's input names.

use wengert_ir::{DType, Graph, GraphBuilder, IrError};
use wengert_passes::Seed;

/// Number of unrolled steps of case 8's recurrence.
pub const CASE08_STEPS: usize = 4;
/// Number of layers of case 9's chain.
pub const CASE09_LAYERS: usize = 8;

/// Case 1: `y = log(1 + x²)`.
pub fn case01_scalar() -> Result<Graph, IrError> {
    let b = GraphBuilder::new("case01_scalar");
    let x = b.input("x", DType::F64, &[]);
    let v1 = x.square();
    let y = (1.0 + v1).log();
    b.build(&[("y", y)])
}

/// Case 2: `y = x² + sin(x²)` with the shared intermediate `x²`.
pub fn case02_shared() -> Result<Graph, IrError> {
    let b = GraphBuilder::new("case02_shared");
    let x = b.input("x", DType::F64, &[]);
    let v1 = x.square();
    let y = v1 + v1.sin();
    b.build(&[("y", y)])
}

/// Case 3: `y = x1·x2 + sin(x1)`.
pub fn case03_two_inputs() -> Result<Graph, IrError> {
    let b = GraphBuilder::new("case03_two_inputs");
    let x1 = b.input("x1", DType::F64, &[]);
    let x2 = b.input("x2", DType::F64, &[]);
    let y = x1 * x2 + x1.sin();
    b.build(&[("y", y)])
}

/// Case 4: `f(x1, x2) = (x1·x2, x1 + x2²)`.
pub fn case04_vjp() -> Result<Graph, IrError> {
    let b = GraphBuilder::new("case04_vjp");
    let x1 = b.input("x1", DType::F64, &[]);
    let x2 = b.input("x2", DType::F64, &[]);
    let y1 = x1 * x2;
    let y2 = x1 + x2.square();
    b.build(&[("y1", y1), ("y2", y2)])
}

/// Case 5: the linear layer `Y = X W + b` for `B = 4, d_in = 3, d_out = 2`.
pub fn case05_linear() -> Result<Graph, IrError> {
    let bld = GraphBuilder::new("case05_linear");
    let x = bld.input("X", DType::F64, &[4, 3]);
    let w = bld.input("W", DType::F64, &[3, 2]);
    let b = bld.input("b", DType::F64, &[2]);
    let y = x.linear(w, b);
    bld.build(&[("Y", y)])
}

/// Case 6: `Y = ReLU(X)` on a 2 × 3 input.
pub fn case06_relu() -> Result<Graph, IrError> {
    let b = GraphBuilder::new("case06_relu");
    let x = b.input("X", DType::F64, &[2, 3]);
    b.build(&[("Y", x.relu())])
}

/// Case 7: mean softmax cross-entropy of 4 rows of 3 logits.
pub fn case07_softmax_xent() -> Result<Graph, IrError> {
    let b = GraphBuilder::new("case07_softmax_xent");
    let z = b.input("Z", DType::F64, &[4, 3]);
    let t = b.data("T", DType::F64, &[4, 3]);
    b.build(&[("L", z.softmax_cross_entropy(t))])
}

/// Case 8: `h0 = x, h_{t+1} = tanh(a·h_t + b)`, unrolled for
/// [`CASE08_STEPS`] steps; `L = h_T`.
pub fn case08_recurrence() -> Result<Graph, IrError> {
    let bld = GraphBuilder::new("case08_recurrence");
    let a = bld.input("a", DType::F64, &[]);
    let b = bld.input("b", DType::F64, &[]);
    let mut h = bld.input("x", DType::F64, &[]);
    for _ in 0..CASE08_STEPS {
        h = (a * h + b).tanh();
    }
    bld.build(&[("L", h)])
}

/// Case 9: eight layers `h_i = tanh(h_{i-1} W_i)` from `h0 = x` (2 × 4),
/// loss `L = Σ h8`.
pub fn case09_checkpoint_chain() -> Result<Graph, IrError> {
    let b = GraphBuilder::new("case09_checkpoint_chain");
    let mut h = b.input("x", DType::F64, &[2, 4]);
    let ws: Vec<_> = (1..=CASE09_LAYERS)
        .map(|i| b.input(&format!("W{i}"), DType::F64, &[4, 4]))
        .collect();
    for w in ws {
        h = h.matmul(w).tanh();
    }
    b.build(&[("L", h.sum_all())])
}

/// The output seeds a case is differentiated with: case 4 computes a
/// vector-Jacobian product with seed inputs `u1`, `u2`; the others seed
/// their scalar loss with 1.
pub fn seeds(file: &str) -> Vec<(&'static str, Seed)> {
    if file == "case04_vjp.wg" {
        vec![("y1", Seed::Input("u1".into())), ("y2", Seed::Input("u2".into()))]
    } else {
        vec![]
    }
}

/// A function that builds one case.
pub type CaseBuilder = fn() -> Result<Graph, IrError>;

/// Every case: its file name under `examples/cases/` and its builder.
pub const ALL: [(&str, CaseBuilder); 9] = [
    ("case01_scalar.wg", case01_scalar),
    ("case02_shared.wg", case02_shared),
    ("case03_two_inputs.wg", case03_two_inputs),
    ("case04_vjp.wg", case04_vjp),
    ("case05_linear.wg", case05_linear),
    ("case06_relu.wg", case06_relu),
    ("case07_softmax_xent.wg", case07_softmax_xent),
    ("case08_recurrence.wg", case08_recurrence),
    ("case09_checkpoint_chain.wg", case09_checkpoint_chain),
];
