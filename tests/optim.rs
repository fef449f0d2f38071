//! The training step compiled with its optimizer: each optimizer's update
//! against a reference written in plain Rust over the interpreter's
//! gradients (bit for bit in f64 on a model without matrix products, whose
//! gradients the JIT computes exactly as the interpreter; to 1e-12 on the
//! MLP, whose GEMMs sum in their own order), and a loss that falls.

mod common;

use common::Rng;
use wengert::{
    autodiff, interpret, models, DType, Graph, GraphBuilder, Optimizer, Options, StepConfig, Tensor, TrainStep,
};

fn tensor(shape: &[usize], v: Vec<f64>) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

/// `Σ (tanh(a·x + b) − y)² / n`: parameters `a`, `b` (f64[8]), data `x`,
/// `y`; elementwise only.
fn elementwise_model(shape: &[usize]) -> Graph {
    let g = GraphBuilder::new("fit");
    let a = g.input("a", DType::F64, shape);
    let b = g.input("b", DType::F64, shape);
    let x = g.data("x", DType::F64, shape);
    let y = g.data("y", DType::F64, shape);
    let r = (a * x + b).tanh() - y;
    g.build(&[("loss", (r * r).mean_all())]).unwrap()
}

/// The reference update, written from the optimizer's formulas in the
/// graph's order of operations.
struct Reference {
    config: StepConfig,
    params: Vec<Vec<f64>>,
    shapes: Vec<Vec<usize>>,
    state: Vec<Vec<Vec<f64>>>,
    t: f64,
}

impl Reference {
    fn step(&mut self, grads: &mut [Vec<f64>], lr: f64) {
        self.t += 1.0;
        if let Some(c) = self.config.clip_norm {
            let mut total = 0.0;
            for (k, g) in grads.iter().enumerate() {
                // A matrix (rank ≥ 2) is summed down its rows into one
                // row of partial sums, then along that row; a vector in
                // order.
                let shape = &self.shapes[k];
                let row = if shape.len() >= 2 { g.len() / shape[0] } else { g.len() };
                let mut partial = vec![0.0; row];
                for (i, v) in g.iter().enumerate() {
                    partial[i % row] += v * v;
                }
                let s = partial.iter().fold(0.0, |s, p| s + p);
                total = if k == 0 { s } else { total + s };
            }
            let scale = c / total.sqrt().max(c);
            for g in grads.iter_mut() {
                for v in g.iter_mut() {
                    *v *= scale;
                }
            }
        }
        for (k, (p, g)) in self.params.iter_mut().zip(grads.iter()).enumerate() {
            let st = &mut self.state[k];
            for i in 0..p.len() {
                match self.config.optimizer {
                    Optimizer::Sgd {
                        momentum,
                        nesterov,
                        weight_decay,
                    } => {
                        let g1 = if weight_decay != 0.0 {
                            g[i] + weight_decay * p[i]
                        } else {
                            g[i]
                        };
                        let d = if momentum != 0.0 {
                            let b1 = momentum * st[0][i] + g1;
                            st[0][i] = b1;
                            if nesterov {
                                g1 + momentum * b1
                            } else {
                                b1
                            }
                        } else {
                            g1
                        };
                        p[i] -= lr * d;
                    }
                    Optimizer::Adam {
                        beta1,
                        beta2,
                        eps,
                        weight_decay,
                        decoupled,
                    } => {
                        let g1 = if weight_decay != 0.0 && !decoupled {
                            g[i] + weight_decay * p[i]
                        } else {
                            g[i]
                        };
                        let m1 = beta1 * st[0][i] + (1.0 - beta1) * g1;
                        let v1 = beta2 * st[1][i] + (1.0 - beta2) * (g1 * g1);
                        let c1 = 1.0 - (beta1.ln() * self.t).exp();
                        let c2 = 1.0 - (beta2.ln() * self.t).exp();
                        let (s1, r2) = (lr / c1, 1.0 / c2.sqrt());
                        let mut upd = (s1 * m1) / (v1.sqrt() * r2 + eps);
                        if weight_decay != 0.0 && decoupled {
                            upd += (weight_decay * lr) * p[i];
                        }
                        p[i] -= upd;
                        st[0][i] = m1;
                        st[1][i] = v1;
                    }
                }
            }
        }
    }
}

fn configs() -> Vec<(&'static str, StepConfig)> {
    let plain = StepConfig::new;
    vec![
        ("sgd", plain(Optimizer::sgd())),
        ("momentum", plain(Optimizer::momentum(0.9, false))),
        ("nesterov", plain(Optimizer::momentum(0.9, true))),
        (
            "sgd_wd",
            plain(Optimizer::Sgd {
                momentum: 0.5,
                nesterov: false,
                weight_decay: 0.01,
            }),
        ),
        ("adam", plain(Optimizer::adam())),
        (
            "adam_l2",
            plain(Optimizer::Adam {
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-6,
                weight_decay: 0.1,
                decoupled: false,
            }),
        ),
        ("adamw", plain(Optimizer::adamw(0.05))),
        (
            "adam_clipped",
            StepConfig {
                optimizer: Optimizer::adam(),
                clip_norm: Some(0.01),
                loops: Default::default(),
            },
        ),
        (
            "momentum_clipped",
            StepConfig {
                optimizer: Optimizer::momentum(0.9, true),
                clip_norm: Some(0.05),
                loops: Default::default(),
            },
        ),
    ]
}

/// Runs `steps` compiled steps and the reference side by side.
fn run(g: &Graph, params: &[&str], data: &[Tensor], config: StepConfig, steps: usize, exact: bool, what: &str) {
    let mut rng = Rng::new(what.len() as u64 + 3);
    let init: Vec<(&str, Tensor)> = params
        .iter()
        .map(|p| {
            let ty = &g.input(p).unwrap().ty;
            (*p, tensor(&ty.shape, rng.vec(ty.num_elements(), -0.5, 0.5)))
        })
        .collect();
    let mut step = TrainStep::new(g, "loss", &init, &config, &Options::default()).unwrap();
    let mut reference = Reference {
        config,
        params: init.iter().map(|(_, t)| t.to_f64_vec()).collect(),
        shapes: init.iter().map(|(_, t)| t.shape().to_vec()).collect(),
        state: init.iter().map(|(_, t)| vec![vec![0.0; t.len()]; 2]).collect(),
        t: 0.0,
    };
    let grad = autodiff(g, params, &[]).unwrap();
    let data_refs: Vec<&Tensor> = data.iter().collect();
    for s in 0..steps {
        let lr = 0.1 / (1.0 + s as f64);
        // The reference's gradients at its parameters, by the interpreter.
        let mut ins = Vec::new();
        let mut d = data.iter();
        for i in g.inputs() {
            match params.iter().position(|p| *p == i.name) {
                Some(k) => ins.push(tensor(&i.ty.shape, reference.params[k].clone())),
                None => ins.push(d.next().unwrap().clone()),
            }
        }
        let out = interpret(&grad.graph, &ins).unwrap();
        let loss_ref = out[0].to_f64_vec()[0];
        let mut grads: Vec<Vec<f64>> = out[grad.primal_outputs..].iter().map(|t| t.to_f64_vec()).collect();
        reference.step(&mut grads, lr);
        let loss = step.step(&data_refs, lr).unwrap();
        if exact {
            assert_eq!(
                loss.to_bits(),
                loss_ref.to_bits(),
                "{what} step {s}: loss {loss} vs {loss_ref}"
            );
        }
        for (k, p) in params.iter().enumerate() {
            let got = step.param(p).unwrap().to_f64_vec();
            if exact {
                assert_eq!(got, reference.params[k], "{what} step {s}: {p}");
            } else {
                common::assert_close(&got, &reference.params[k], 1e-12, &format!("{what} step {s}: {p}"));
            }
        }
    }
}

#[test]
fn every_optimizer_matches_its_formula_bit_for_bit() {
    // Vectors and matrices (whose squares clipping sums down the rows
    // first), compiled in one kernel or as several.
    for shape in [vec![8], vec![7, 9], vec![3, 2, 5], vec![300, 40]] {
        let g = elementwise_model(&shape);
        let n: usize = shape.iter().product();
        let mut rng = Rng::new(5);
        let data = vec![
            tensor(&shape, rng.vec(n, -1.0, 1.0)),
            tensor(&shape, rng.vec(n, -0.5, 0.5)),
        ];
        for (name, config) in configs() {
            run(&g, &["a", "b"], &data, config, 4, true, &format!("{name} {shape:?}"));
        }
    }
}

#[test]
fn mlp_steps_match_the_reference_and_the_loss_falls() {
    let g = models::mlp(16, 6, 8, 3, DType::F64, false).unwrap();
    let mut rng = Rng::new(9);
    let x = tensor(&[16, 6], rng.vec(96, -1.0, 1.0));
    let t = tensor(
        &[16, 3],
        (0..48).map(|i| if i % 3 == (i / 3) % 3 { 1.0 } else { 0.0 }).collect(),
    );
    for (name, config) in configs() {
        run(&g, &models::MLP_PARAMS, &[x.clone(), t.clone()], config, 3, false, name);
    }
    // Adam on the MLP: the loss falls over 50 steps.
    let init: Vec<(&str, Tensor)> = models::MLP_PARAMS
        .iter()
        .map(|p| {
            let ty = &g.input(p).unwrap().ty;
            (*p, tensor(&ty.shape, rng.vec(ty.num_elements(), -0.3, 0.3)))
        })
        .collect();
    let config = StepConfig {
        optimizer: Optimizer::adam(),
        clip_norm: Some(1.0),
        loops: Default::default(),
    };
    let mut step = TrainStep::new(&g, "loss", &init, &config, &Options::default()).unwrap();
    let first = step.step(&[&x, &t], 0.01).unwrap();
    let mut last = first;
    for _ in 0..50 {
        last = step.step(&[&x, &t], 0.01).unwrap();
    }
    assert!(last < 0.5 * first, "loss {first} → {last}");
    assert_eq!(step.steps, 51);
}

#[test]
fn step_errors_name_the_problem() {
    let g = elementwise_model(&[8]);
    let config = StepConfig {
        optimizer: Optimizer::sgd(),
        clip_norm: None,
        loops: Default::default(),
    };
    let a = tensor(&[8], vec![0.0; 8]);
    let e = TrainStep::new(
        &g,
        "loss",
        &[("a", tensor(&[4], vec![0.0; 4]))],
        &config,
        &Options::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("parameter `a`") && e.contains("[4]"), "{e}");
    let e = TrainStep::new(&g, "nope", &[("a", a.clone())], &config, &Options::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    let mut s = TrainStep::new(&g, "loss", &[("a", a)], &config, &Options::default()).unwrap();
    let e = s.step(&[], 0.1).unwrap_err().to_string();
    assert!(e.contains("3 data input(s) (b, x, y), got 0"), "{e}");
}

#[test]
fn safetensors_round_trip_and_errors_name_the_tensor() {
    use wengert::{load_safetensors, save_safetensors, TensorType};
    let dir = std::env::temp_dir().join(format!("wengert-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.safetensors");
    let w = tensor(&[2, 3], vec![1.0, -2.0, 3.5, 0.25, -0.0, 7.0]).convert(DType::F32);
    let b = tensor(&[3], vec![0.1, 0.2, 0.3]);
    let m = tensor(&[2], vec![1.0, 0.0]).convert(DType::Bool);
    save_safetensors(&path, &[("w", &w), ("b", &b), ("mask", &m)]).unwrap();
    let expected = [
        ("w", TensorType::new(DType::F32, vec![2, 3])),
        ("b", TensorType::new(DType::F64, vec![3])),
        ("mask", TensorType::new(DType::Bool, vec![2])),
    ];
    let back = load_safetensors(&path, &expected).unwrap();
    assert_eq!(back, vec![w.clone(), b.clone(), m.clone()]);
    let err = |exp: &[(&str, TensorType)]| load_safetensors(&path, exp).unwrap_err().to_string();
    let e = err(&[
        ("w", TensorType::new(DType::F64, vec![2, 3])),
        ("b", TensorType::new(DType::F64, vec![3])),
        ("mask", TensorType::new(DType::Bool, vec![2])),
    ]);
    assert!(
        e.contains("tensor `w` is f32[2,3] but the model expects f64[2,3]"),
        "{e}"
    );
    let e = err(&[
        ("w", TensorType::new(DType::F32, vec![3, 2])),
        ("b", TensorType::new(DType::F64, vec![3])),
        ("mask", TensorType::new(DType::Bool, vec![2])),
    ]);
    assert!(
        e.contains("tensor `w` is f32[2,3] but the model expects f32[3,2]"),
        "{e}"
    );
    let e = err(&[
        ("w", TensorType::new(DType::F32, vec![2, 3])),
        ("b", TensorType::new(DType::F64, vec![3])),
    ]);
    assert!(e.contains("no parameter for: mask"), "{e}");
    let e = err(&[
        ("w", TensorType::new(DType::F32, vec![2, 3])),
        ("b", TensorType::new(DType::F64, vec![3])),
        ("mask", TensorType::new(DType::Bool, vec![2])),
        ("c", TensorType::new(DType::F64, vec![1])),
    ]);
    assert!(e.contains("has no tensor `c`"), "{e}");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    let e = err(&expected);
    assert!(e.contains("p.safetensors"), "{e}");
    let e = load_safetensors(&dir.join("missing.safetensors"), &expected)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.safetensors"), "{e}");
    // A training step saves and loads its parameters.
    let g = elementwise_model(&[8]);
    let config = StepConfig {
        optimizer: Optimizer::adam(),
        clip_norm: None,
        loops: Default::default(),
    };
    let init = [("a", tensor(&[8], vec![0.5; 8])), ("b", tensor(&[8], vec![-0.5; 8]))];
    let mut s = TrainStep::new(&g, "loss", &init, &config, &Options::default()).unwrap();
    let data = [tensor(&[8], vec![0.3; 8]), tensor(&[8], vec![0.1; 8])];
    s.step(&[&data[0], &data[1]], 0.1).unwrap();
    let saved = dir.join("step.safetensors");
    s.save(&saved).unwrap();
    let after: Vec<Tensor> = s.params().map(|(_, t)| t.clone()).collect();
    let mut fresh = TrainStep::new(&g, "loss", &init, &config, &Options::default()).unwrap();
    fresh.load(&saved).unwrap();
    let loaded: Vec<Tensor> = fresh.params().map(|(_, t)| t.clone()).collect();
    assert_eq!(loaded, after);
    std::fs::remove_dir_all(&dir).ok();
}

/// The update alone (`UpdateStep`, for gradients computed elsewhere: the
/// distributed training's averaged ones) gives the whole step's
/// parameters bit for bit.
#[test]
fn the_update_alone_equals_the_whole_step() {
    use wengert::{value_and_grad, TensorType, UpdateStep};
    let g = elementwise_model(&[8]);
    let config = StepConfig {
        clip_norm: Some(0.05),
        ..StepConfig::new(Optimizer::adamw(0.01))
    };
    let init = [("a", tensor(&[8], vec![0.3; 8])), ("b", tensor(&[8], vec![-0.2; 8]))];
    let mut whole = TrainStep::new(&g, "loss", &init, &config, &Options::default()).unwrap();
    let types: Vec<(&str, TensorType)> = init.iter().map(|(n, t)| (*n, t.ty().clone())).collect();
    let mut update = UpdateStep::new(&types, &config, &Options::default()).unwrap();
    let grad = value_and_grad(&g, &["a", "b"], &Options::default()).unwrap();
    let mut params: Vec<Tensor> = init.iter().map(|(_, t)| t.clone()).collect();
    let mut rng = Rng::new(2);
    for _ in 0..4 {
        let (x, y) = (tensor(&[8], rng.vec(8, -1.0, 1.0)), tensor(&[8], rng.vec(8, -1.0, 1.0)));
        whole.step(&[&x, &y], 0.05).unwrap();
        let out = grad.call(&[&params[0], &params[1], &x, &y]).unwrap();
        update.apply(&mut params, &[&out[1], &out[2]], 0.05).unwrap();
        assert_eq!(&params[0], whole.param("a").unwrap());
        assert_eq!(&params[1], whole.param("b").unwrap());
    }
}

/// Donation: the step reads and writes one set of buffers. After each
/// step every parameter and state tensor is still the buffer it was
/// (pointer identity), its values are bit for bit those of the same step
/// compiled without donation (separate output buffers), and the step's
/// memory is parameters + state + arena + loss.
#[test]
fn the_step_updates_parameters_and_state_in_place() {
    use wengert::{compile, step_graph};
    let g = models::mlp(16, 6, 8, 3, DType::F32, false).unwrap();
    let mut rng = Rng::new(21);
    let x = tensor(&[16, 6], rng.vec(96, -1.0, 1.0)).convert(DType::F32);
    let t = tensor(
        &[16, 3],
        (0..48).map(|i| if i % 3 == (i / 3) % 3 { 1.0 } else { 0.0 }).collect(),
    )
    .convert(DType::F32);
    for (name, config) in configs() {
        let init: Vec<(&str, Tensor)> = models::MLP_PARAMS
            .iter()
            .map(|p| {
                let ty = &g.input(p).unwrap().ty;
                (
                    *p,
                    tensor(&ty.shape, rng.vec(ty.num_elements(), -0.3, 0.3)).convert(DType::F32),
                )
            })
            .collect();
        let mut step = TrainStep::new(&g, "loss", &init, &config, &Options::default()).unwrap();
        let n_state = step.graph().state.len();
        assert_eq!(
            step.executable().donations().len(),
            models::MLP_PARAMS.len() + n_state,
            "{name}"
        );
        let pointers =
            |s: &TrainStep| -> Vec<*const u8> { s.params().chain(s.state()).map(|(_, t)| t.as_ptr()).collect() };
        let before = pointers(&step);
        // The same step with separate buffers, swapped after each call.
        let sg = step_graph(&g, "loss", &models::MLP_PARAMS, &config).unwrap();
        let plain = compile(&sg.graph, &Options::default()).unwrap();
        assert!(plain.donations().is_empty());
        let mut values: Vec<Tensor> = init.iter().map(|(_, t)| t.clone()).collect();
        values.extend(sg.zero_state().unwrap());
        let data_before = (x.to_f64_vec(), t.to_f64_vec());
        for s in 1..=3 {
            let lr = 0.05 / s as f64;
            let loss = step.step(&[&x, &t], lr).unwrap();
            let lr_t = Tensor::scalar(DType::F32, lr);
            let s_t = Tensor::scalar(DType::F32, s as f64);
            // The step graph's inputs: the model's (parameters and data in
            // its order), the state, `lr`, `step`.
            let mut ordered: Vec<&Tensor> = Vec::new();
            let mut data = [&x, &t].into_iter();
            for i in g.inputs() {
                match models::MLP_PARAMS.iter().position(|p| *p == i.name) {
                    Some(k) => ordered.push(&values[k]),
                    None => ordered.push(data.next().unwrap()),
                }
            }
            ordered.extend(values[models::MLP_PARAMS.len()..].iter());
            ordered.push(&lr_t);
            ordered.push(&s_t);
            let out = plain.call(&ordered).unwrap();
            assert_eq!(
                loss.to_bits(),
                out[0].to_f64_vec()[0].to_bits(),
                "{name} step {s}: loss"
            );
            for (k, (label, got)) in step.params().chain(step.state()).enumerate() {
                assert_eq!(got.to_f64_vec(), out[1 + k].to_f64_vec(), "{name} step {s}: {label}");
            }
            values = out[1..].to_vec();
            assert_eq!(pointers(&step), before, "{name} step {s}: a buffer moved");
        }
        assert_eq!((x.to_f64_vec(), t.to_f64_vec()), data_before, "{name}: data written");
        let m = step.memory();
        let bytes = |ts: &[(&str, &Tensor)]| ts.iter().map(|(_, t)| t.len() * 4).sum::<usize>();
        assert_eq!(m.params, bytes(&step.params().collect::<Vec<_>>()));
        assert_eq!(m.state, bytes(&step.state().collect::<Vec<_>>()));
        assert_eq!(m.outputs, 4, "{name}: only the loss besides the donated buffers");
        assert_eq!(m.arena, step.executable().memory().arena_bytes);
    }
}

/// The update alone (`UpdateStep`) updates the caller's parameters in
/// their own buffers.
#[test]
fn the_update_alone_writes_the_callers_buffers() {
    use wengert::{TensorType, UpdateStep};
    let types = [
        ("w", TensorType::new(DType::F64, vec![3, 2])),
        ("c", TensorType::new(DType::F64, vec![])),
    ];
    let named: Vec<(&str, TensorType)> = types.iter().map(|(n, t)| (*n, t.clone())).collect();
    let mut update = UpdateStep::new(&named, &StepConfig::new(Optimizer::adam()), &Options::default()).unwrap();
    let mut params = vec![tensor(&[3, 2], vec![1.0; 6]), Tensor::scalar(DType::F64, 2.0)];
    let grads = [tensor(&[3, 2], vec![0.5; 6]), Tensor::scalar(DType::F64, -1.0)];
    let before: Vec<*const u8> = params.iter().map(|t| t.as_ptr()).collect();
    update.apply(&mut params, &[&grads[0], &grads[1]], 0.1).unwrap();
    assert_eq!(params.iter().map(|t| t.as_ptr()).collect::<Vec<_>>(), before);
    // Adam's first step moves each parameter by lr against its gradient's
    // sign (m̂ / √v̂ = ±1, up to ε).
    for (v, g) in params[0].to_f64_vec().iter().zip([0.5; 6]) {
        assert!((v - (1.0 - 0.1 * f64::signum(g))).abs() < 1e-6, "{v}");
    }
    assert!((params[1].to_f64_vec()[0] - 2.1).abs() < 1e-6);
    // A wrong count is an error, and the parameters are left as they were.
    let e = update
        .apply(&mut params[..1], &[&grads[0]], 0.1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 parameters"), "{e}");
}
