//! Runs the value and gradient of a loop many times (for `perf`): the
//! H = 64 RNN over T = 1000 steps, or seed case 8 with `case8`.
use wengert::{models, value_and_grad, DType, Options, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let case8 = std::env::args().any(|a| a == "case8");
    let g = if case8 {
        models::scalar_recurrence(1000, true)?
    } else {
        models::rnn(1000, 64, DType::F32, true)?
    };
    let names: Vec<String> = g.differentiable_inputs().iter().map(|s| s.to_string()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let f = value_and_grad(&g, &refs, &Options::default())?;
    let ins: Vec<Tensor> = g.inputs().iter().map(|i| Tensor::full(i.ty.clone(), 0.01)).collect();
    let ins: Vec<&Tensor> = ins.iter().collect();
    let mut out = f.joint().new_outputs()?;
    let start = std::time::Instant::now();
    let n = if case8 { 20000 } else { 1000 };
    for _ in 0..n {
        f.call_into(&ins, &mut out)?;
    }
    println!("{:?} per call", start.elapsed() / n);
    Ok(())
}
