//! The main job: for each of the seed's case studies 1–8, build the graph
//! with the builder, differentiate it, compile the value-and-gradient
//! function with the JIT, call it, and print the values and gradients next
//! to the reference interpreter's.
//!
//! Run with `cargo run --release --example seed_cases`.

use std::time::Instant;
use wengert::{cases, interpret, value_and_grad_with_seeds, Options, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for (file, build) in cases::ALL.iter().take(8) {
        let g = build()?;
        let wrt = g.differentiable_inputs();
        let seeds = cases::seeds(file);
        let t0 = Instant::now();
        let f = value_and_grad_with_seeds(&g, &wrt, &seeds, &Options::default())?;
        let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
        // Deterministic inputs: element i of input k is ±(0.1·(k + 1) + 0.05·i).
        let inputs: Vec<Tensor> = f
            .graph()
            .inputs()
            .iter()
            .enumerate()
            .map(|(k, input)| {
                let data: Vec<f64> = (0..input.ty.num_elements())
                    .map(|i| {
                        let v = 0.1 * (k + 1) as f64 + 0.05 * i as f64;
                        if i % 2 == 1 {
                            -v
                        } else {
                            v
                        }
                    })
                    .collect();
                Tensor::from_vec(input.ty.shape.clone(), data).map(|t| t.convert(input.ty.dtype))
            })
            .collect::<Result<_, _>>()?;
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let t0 = Instant::now();
        let jit = f.call(&refs)?;
        let call_us = t0.elapsed().as_secs_f64() * 1e6;
        let reference = interpret(f.graph(), &inputs)?;
        println!("// examples/cases/{file}: compiled in {compile_ms:.2} ms, first call {call_us:.1} µs");
        for (input, value) in f.graph().inputs().iter().zip(&inputs) {
            println!("//   {} = {value}", input.name);
        }
        for ((output, value), want) in f.graph().outputs().iter().zip(&jit).zip(&reference) {
            let diff = value
                .to_f64_vec()
                .iter()
                .zip(want.to_f64_vec())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            println!("//   => {} = {value}   (|jit − interpreter| ≤ {diff:.1e})", output.name);
        }
        println!();
    }
    Ok(())
}
