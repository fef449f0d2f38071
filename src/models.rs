//! Small models built with the builder, shared by examples, tests and
//! benchmarks.

use wengert_ir::{DType, Graph, GraphBuilder, IrError, Var};

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

/// The recurrent network `h_{t+1} = tanh(W h_t + b + x_t)` over `t` steps
/// from `h0`, with loss `Σ h_T` (inputs `W: [h,h]`, `b`, `h0: [h]`, data
/// `xs: [t, h]`), as one `scan` (`looped`) or unrolled into `t` copies of
/// the step.
pub fn rnn(t: usize, h: usize, dtype: DType, looped: bool) -> Result<Graph, IrError> {
    let b = GraphBuilder::new(if looped { "rnn_scan" } else { "rnn_unrolled" });
    let w = b.input("W", dtype, &[h, h]);
    let bias = b.input("b", dtype, &[h]);
    let h0 = b.input("h0", dtype, &[h]);
    let xs = b.data("xs", dtype, &[t, h]);
    fn step<'a>(h: usize, w: Var<'a>, bias: Var<'a>, hh: Var<'a>, x: Var<'a>) -> Var<'a> {
        (w.matmul(hh.reshape(&[h, 1])).reshape(&[h]) + bias + x).tanh()
    }
    let last = if looped {
        b.scan(t, &[w, bias], &[h0], &[xs], |_, c, carry, x| {
            (vec![step(h, c[0], c[1], carry[0], x[0])], vec![])
        })
        .0[0]
    } else {
        let mut hh = h0;
        for s in 0..t {
            let x = xs.slice(&[s, 0], &[s + 1, h]).reshape(&[h]);
            hh = step(h, w, bias, hh, x);
        }
        hh
    };
    b.build(&[("loss", last.sum_all())])
}

/// Seed case 8 over `t` steps: `h_0 = x`, `h_{t+1} = tanh(a h_t + b)`,
/// `L = h_T` (f64 scalars `a`, `b`, `x`), looped or unrolled.
pub fn scalar_recurrence(t: usize, looped: bool) -> Result<Graph, IrError> {
    let b = GraphBuilder::new(if looped { "case8_scan" } else { "case8_unrolled" });
    let a = b.input("a", DType::F64, &[]);
    let bias = b.input("b", DType::F64, &[]);
    let x = b.input("x", DType::F64, &[]);
    let last = if looped {
        b.fori_loop(t, &[a, bias], &[x], |_, c, h| vec![(c[0] * h[0] + c[1]).tanh()])[0]
    } else {
        let mut h = x;
        for _ in 0..t {
            h = (a * h + bias).tanh();
        }
        h
    };
    b.build(&[("L", last)])
}

/// [`tanh_chain`] as a loop over stacked weights `W: [layers, width,
/// width]` (scanning over layers, as deep networks do).
pub fn tanh_chain_scan(layers: usize, batch: usize, width: usize, dtype: DType) -> Result<Graph, IrError> {
    let b = GraphBuilder::new("tanh_chain_scan");
    let x = b.data("x", dtype, &[batch, width]);
    let ws = b.input("W", dtype, &[layers, width, width]);
    let (h, _) = b.scan(layers, &[], &[x], &[ws], |_, _, h, w| {
        (vec![h[0].matmul(w[0]).tanh()], vec![])
    });
    b.build(&[("loss", h[0].sum_all())])
}

/// The names of [`char_rnn`]'s parameters, in input order.
pub const CHAR_RNN_PARAMS: [&str; 5] = ["W_xh", "W_hh", "b_h", "W_hy", "b_y"];

/// A character-level recurrent language model over `t` steps: one-hot
/// characters `xs: [t, batch, vocab]` (data), targets `ts` (the next
/// characters, one-hot, same shape), `h ← tanh(x W_xh + h W_hh + b_h)` as
/// the body of a loop, logits `h W_hy + b_y` and softmax cross-entropy at
/// every step; `loss` is the mean over steps and batch, in nats per
/// character. The state starts at zero (`h0`, data). f32.
pub fn char_rnn(t: usize, batch: usize, vocab: usize, hidden: usize) -> Result<Graph, IrError> {
    let d = DType::F32;
    let b = GraphBuilder::new("char_rnn");
    let w_xh = b.input("W_xh", d, &[vocab, hidden]);
    let w_hh = b.input("W_hh", d, &[hidden, hidden]);
    let b_h = b.input("b_h", d, &[hidden]);
    let w_hy = b.input("W_hy", d, &[hidden, vocab]);
    let b_y = b.input("b_y", d, &[vocab]);
    let h0 = b.data("h0", d, &[batch, hidden]);
    let xs = b.data("xs", d, &[t, batch, vocab]);
    let ts = b.data("ts", d, &[t, batch, vocab]);
    let (_, ys) = b.scan(t, &[w_xh, w_hh, b_h, w_hy, b_y], &[h0], &[xs, ts], |_, c, h, x| {
        let h1 = (x[0].matmul(c[0]) + h[0].matmul(c[1]) + c[2]).tanh();
        let logits = h1.matmul(c[3]) + c[4];
        (vec![h1], vec![logits.softmax_cross_entropy(x[1])])
    });
    b.build(&[("loss", ys[0].mean_all())])
}

/// One step of [`char_rnn`] for sampling: inputs the parameters, `h:
/// [1, hidden]` and a one-hot `x: [1, vocab]`; outputs `h_next` and
/// `logits: [1, vocab]`.
pub fn char_rnn_cell(vocab: usize, hidden: usize) -> Result<Graph, IrError> {
    let d = DType::F32;
    let b = GraphBuilder::new("char_rnn_cell");
    let w_xh = b.input("W_xh", d, &[vocab, hidden]);
    let w_hh = b.input("W_hh", d, &[hidden, hidden]);
    let b_h = b.input("b_h", d, &[hidden]);
    let w_hy = b.input("W_hy", d, &[hidden, vocab]);
    let b_y = b.input("b_y", d, &[vocab]);
    let h = b.data("h", d, &[1, hidden]);
    let x = b.data("x", d, &[1, vocab]);
    let h1 = (x.matmul(w_xh) + h.matmul(w_hh) + b_h).tanh();
    b.build(&[("h_next", h1), ("logits", h1.matmul(w_hy) + b_y)])
}
