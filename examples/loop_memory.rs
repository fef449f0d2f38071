//! Time and memory of the gradient of a long loop under each loop policy:
//! the H = 64 RNN (f32) over T = 100,000 steps.
//! `cargo run --release --example loop_memory`
use wengert::{models, value_and_grad, DType, LoopPolicy, Options, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t = 100_000;
    let g = models::rnn(t, 64, DType::F32, true)?;
    let wrt = ["W", "b", "h0"];
    let ins: Vec<Tensor> = g.inputs().iter().map(|i| Tensor::full(i.ty.clone(), 0.01)).collect();
    let ins: Vec<&Tensor> = ins.iter().collect();
    println!("policy           compile   step      joint arena");
    for loops in [
        LoopPolicy::SaveAll,
        LoopPolicy::SaveCarries,
        LoopPolicy::Binomial(4),
        LoopPolicy::Binomial(10),
        LoopPolicy::Binomial(40),
        LoopPolicy::Every(316),
    ] {
        let start = std::time::Instant::now();
        let f = value_and_grad(
            &g,
            &wrt,
            &Options {
                loops,
                ..Default::default()
            },
        )?;
        let compile = start.elapsed();
        let mut out = f.joint().new_outputs()?;
        f.call_into(&ins, &mut out)?;
        let start = std::time::Instant::now();
        let n = 3;
        for _ in 0..n {
            f.call_into(&ins, &mut out)?;
        }
        let step = start.elapsed() / n;
        println!(
            "{:<16} {:>7.1?} {:>9.1?} {:>10.2} MiB",
            format!("{loops:?}"),
            compile,
            step,
            f.memory().joint_arena_bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
