//! Builds the seed's nine case studies with the builder, prints each graph
//! as a Wengert list and evaluates it with the reference interpreter on
//! fixed inputs.
//!
//! Run with `cargo run --release --example seed_cases`.

use wengert::{cases, interpret, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for (file, build) in cases::ALL {
        let g = build()?;
        // Deterministic inputs: element i of input k is 0.1·(k + 1) + 0.05·i,
        // with alternating signs so that ReLU sees both sides.
        let inputs: Vec<Tensor> = g
            .inputs()
            .iter()
            .enumerate()
            .map(|(k, input)| {
                let n = input.ty.num_elements();
                let data: Vec<f64> = (0..n)
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
        println!("// examples/cases/{file}");
        print!("{g}");
        for (input, value) in g.inputs().iter().zip(&inputs) {
            println!("//   {} = {value}", input.name);
        }
        for (output, value) in g.outputs().iter().zip(interpret(&g, &inputs)?) {
            println!("//   => {} = {value}", output.name);
        }
        println!();
    }
    Ok(())
}
