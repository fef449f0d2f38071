//! Threads: every thread count gives the same bits, and one executable
//! called from several threads at once, each call using the shared pool,
//! gives the serial results.
//!
//! The models are large enough that their matrix products run in parallel
//! (`gemm::PARALLEL_PRODUCT`); the seed cases are not, and must be
//! unaffected.

mod common;

use common::Rng;
use wengert::{cases, models, value_and_grad_with_seeds, DType, Graph, Options, Tensor};

/// Value and gradient of `g` at `inputs` compiled for `threads` threads.
fn run(g: &Graph, seeds: &[(&str, wengert::Seed)], inputs: &[Tensor], threads: usize) -> Vec<Tensor> {
    let wrt = g.differentiable_inputs();
    let f = value_and_grad_with_seeds(g, &wrt, seeds, &Options::default().with_threads(threads)).unwrap();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    f.call(&refs).unwrap()
}

/// A workload: its name, graph and output seeds.
type Workload = (String, Graph, Vec<(&'static str, wengert::Seed)>);

fn models() -> Vec<(&'static str, Graph)> {
    vec![
        ("mlp B=256", models::mlp(256, 784, 256, 10, DType::F32, false).unwrap()),
        (
            "mlp B=64 f64",
            models::mlp(64, 784, 256, 10, DType::F64, false).unwrap(),
        ),
        ("chain 4×512² B=64", models::tanh_chain(4, 64, 512, DType::F32).unwrap()),
        (
            "chain scan 3×512² B=64",
            models::tanh_chain_scan(3, 64, 512, DType::F32).unwrap(),
        ),
    ]
}

fn inputs_of(g: &Graph, seeds: &[(&str, wengert::Seed)], seed: u64) -> Vec<Tensor> {
    let wrt = g.differentiable_inputs();
    let f = value_and_grad_with_seeds(g, &wrt, seeds, &Options::default().with_threads(1)).unwrap();
    common::random_inputs(f.graph(), &mut Rng::new(seed), -0.1, 0.1)
}

#[test]
fn one_two_and_three_threads_give_identical_bits() {
    let mut all: Vec<Workload> = models()
        .into_iter()
        .map(|(n, g)| (n.to_string(), g, Vec::new()))
        .collect();
    for (file, build) in cases::ALL.iter() {
        all.push((file.to_string(), build().unwrap(), cases::seeds(file)));
    }
    for (name, g, seeds) in &all {
        let inputs = inputs_of(g, seeds, 7);
        let one = run(g, seeds, &inputs, 1);
        for threads in [2, 3] {
            let got = run(g, seeds, &inputs, threads);
            for (k, (a, b)) in one.iter().zip(&got).enumerate() {
                assert!(a == b, "{name}: output {k} differs between 1 and {threads} threads");
            }
        }
    }
}

#[test]
fn many_callers_share_the_pool_and_get_serial_results() {
    // The two MLPs and the chain, whose backward products run in
    // concurrent pairs.
    for (name, g) in models().into_iter().take(3) {
        let wrt = g.differentiable_inputs();
        let f = value_and_grad_with_seeds(&g, &wrt, &[], &Options::default().with_threads(2)).unwrap();
        let inputs: Vec<Vec<Tensor>> = (0..4).map(|k| inputs_of(&g, &[], 50 + k)).collect();
        let want: Vec<Vec<Tensor>> = inputs
            .iter()
            .map(|ins| f.call(&ins.iter().collect::<Vec<_>>()).unwrap())
            .collect();
        let f = &f;
        std::thread::scope(|s| {
            for (ins, want) in inputs.iter().zip(&want) {
                s.spawn(move || {
                    let refs: Vec<&Tensor> = ins.iter().collect();
                    for _ in 0..10 {
                        assert!(&f.call(&refs).unwrap() == want, "{name}: a concurrent call differs");
                    }
                });
            }
        });
    }
}

/// Large elementwise, row-reduction and softmax kernels run as parallel
/// chunks: 1, 2 and 3 threads give the same bits, and the interpreter's
/// values (to the f32 inline math's rounding).
#[test]
fn parallel_kernels_give_identical_bits_and_the_interpreters_values() {
    use wengert::GraphBuilder;
    let b = GraphBuilder::new("wide");
    // 2^20 + 5 elements: rows of the chunk length and a tail.
    let x = b.input("x", DType::F32, &[(1 << 20) + 5]);
    let m = b.input("m", DType::F32, &[1024, 1030]);
    let t = b.data("t", DType::F32, &[1024, 1030]);
    let y = (x * 1.5 + 0.25).tanh() * x.exp();
    let rows = (m.tanh() * m).sum(&[1]);
    let g = b
        .build(&[
            ("y", y),
            ("rows", rows),
            ("loss", m.softmax_cross_entropy(t)),
            ("total", y.sum(&[0])),
        ])
        .unwrap();
    let inputs = common::random_inputs(&g, &mut Rng::new(3), -1.0, 1.0);
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let want = wengert::interpret(&g, &inputs).unwrap();
    let mut first: Option<Vec<Tensor>> = None;
    for threads in [1, 2, 3] {
        let exe = wengert::compile(&g, &Options::default().with_threads(threads)).unwrap();
        let got = exe.call(&refs).unwrap();
        for (k, (a, w)) in got.iter().zip(&want).enumerate() {
            let (a, w) = (a.to_f64_vec(), w.to_f64_vec());
            let scale = w.iter().fold(1.0f64, |s, v| s.max(v.abs()));
            let worst = a.iter().zip(&w).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
            assert!(worst <= 1e-4 * scale, "output {k} at {threads} threads: off by {worst}");
        }
        match &first {
            None => first = Some(got),
            Some(one) => assert!(&got == one, "{threads} threads differ from one"),
        }
    }
    // The dump says which kernels went parallel.
    let exe = wengert::compile(
        &g,
        &Options {
            codegen: wengert::CodegenOptions {
                keep_text: true,
                threads: 2,
                ..Default::default()
            },
            ..Options::default()
        },
    )
    .unwrap();
    assert!(exe.kernels().contains("parallel: rows of axis 0"), "{}", exe.kernels());
}

/// Two independent large products in a row (the chain's backward: `Xᵀ·Ȳ`
/// and `Ȳ·Wᵀ`) run at once on two threads, and the step gives the bits
/// of the serial one and the interpreter's values.
#[test]
fn independent_products_run_in_pairs_with_the_serial_results() {
    let g = models::tanh_chain(3, 64, 256, DType::F32).unwrap();
    let wrt = g.differentiable_inputs();
    let grad = wengert::autodiff(&g, &wrt, &[]).unwrap().graph;
    let inputs = common::random_inputs(&grad, &mut Rng::new(3), -0.2, 0.2);
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let want = wengert::interpret(&grad, &inputs).unwrap();
    let compile = |threads: usize| {
        wengert::compile(
            &grad,
            &Options {
                codegen: wengert::CodegenOptions {
                    keep_text: true,
                    threads,
                    ..Default::default()
                },
                ..Options::default()
            },
        )
        .unwrap()
    };
    let serial = compile(1);
    let paired = compile(2);
    assert!(!serial.kernels().contains("concurrent"), "{}", serial.kernels());
    let pairs = paired.kernels().matches("(concurrent with the next)").count();
    assert!(
        pairs >= 2,
        "expected the backward products in pairs:\n{}",
        paired.kernels()
    );
    let one = serial.call(&refs).unwrap();
    for _ in 0..5 {
        assert!(
            paired.call(&refs).unwrap() == one,
            "paired products differ from serial ones"
        );
    }
    for (k, (a, w)) in one.iter().zip(&want).enumerate() {
        let (a, w) = (a.to_f64_vec(), w.to_f64_vec());
        let scale = w.iter().fold(1.0f64, |s, v| s.max(v.abs()));
        let worst = a.iter().zip(&w).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        assert!(
            worst <= 1e-4 * scale,
            "output {k}: off the interpreter by {worst} (scale {scale})"
        );
    }
}

/// The training step with its parameters and Adam's state donated (updated
/// in place) on two threads: after a few steps, the parameters are the
/// bits of the one-thread step's. Its products (64×512×512) run on two
/// threads; its weight-gradient products carry the update as their
/// epilogue, so they are not paired (only lone products wait for a
/// partner).
#[test]
fn a_donated_training_step_on_two_threads_matches_one_thread() {
    use wengert::{Optimizer, StepConfig, TrainStep};
    let g = models::tanh_chain(3, 64, 512, DType::F32).unwrap();
    let names = ["W1", "W2", "W3"];
    let mut rng = Rng::new(17);
    let init: Vec<(&str, Tensor)> = names
        .iter()
        .map(|n| {
            let ty = &g.input(n).unwrap().ty;
            let v: Vec<f64> = (0..ty.num_elements()).map(|_| rng.uniform(-0.1, 0.1)).collect();
            (*n, Tensor::from_vec(ty.shape.clone(), v).unwrap().convert(ty.dtype))
        })
        .collect();
    let x_ty = &g.input("x").unwrap().ty;
    let xv: Vec<f64> = (0..x_ty.num_elements()).map(|_| rng.uniform(-0.5, 0.5)).collect();
    let x = Tensor::from_vec(x_ty.shape.clone(), xv).unwrap().convert(x_ty.dtype);
    let config = StepConfig {
        clip_norm: Some(1.0),
        ..StepConfig::new(Optimizer::adam())
    };
    let run = |threads: usize| {
        let mut step = TrainStep::new(&g, "loss", &init, &config, &Options::default().with_threads(threads)).unwrap();
        let losses: Vec<f64> = (0..4).map(|_| step.step(&[&x], 1e-3).unwrap()).collect();
        let params: Vec<Tensor> = step.params().map(|(_, t)| t.clone()).collect();
        (losses, params)
    };
    let (losses1, params1) = run(1);
    let (losses2, params2) = run(2);
    assert_eq!(losses1, losses2);
    assert!(losses1[3] < losses1[0], "the loss falls: {losses1:?}");
    assert!(params1 == params2, "two threads changed the parameters' bits");
}

/// Two independent large products of different element types are not
/// paired (one entry computes a pair, in one type), and compute what they
/// compute on one thread.
#[test]
fn products_of_different_element_types_are_not_paired() {
    let b = wengert::GraphBuilder::new("mixed");
    let a = b.input("a", DType::F32, &[64, 256]);
    let w = b.input("w", DType::F32, &[256, 256]);
    let c = b.input("c", DType::F64, &[64, 256]);
    let v = b.input("v", DType::F64, &[256, 256]);
    let g = b.build(&[("y", a.matmul(w)), ("z", c.matmul(v))]).unwrap();
    let inputs = common::random_inputs(&g, &mut Rng::new(5), -1.0, 1.0);
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let compile = |threads: usize| {
        let options = Options {
            codegen: wengert::CodegenOptions {
                keep_text: true,
                threads,
                ..Default::default()
            },
            ..Options::default()
        };
        wengert::compile(&g, &options).unwrap()
    };
    let two = compile(2);
    assert!(!two.kernels().contains("concurrent"), "{}", two.kernels());
    assert!(two.call(&refs).unwrap() == compile(1).call(&refs).unwrap());
}

/// Code with parallel work runs on a worker of the pool
/// (`Executable::pooled`, with the other workers polling for its work);
/// code with none (one thread, or products below the parallel size) runs
/// on the caller's thread. Two such executables called at once from six
/// threads, where each call's pollers may land on a worker that another
/// call is waiting on, finish with the serial results.
#[test]
fn pooled_calls_from_many_threads_at_once_finish_with_serial_results() {
    let ms = models();
    let grad = |g: &Graph, threads: usize| {
        value_and_grad_with_seeds(
            g,
            &g.differentiable_inputs(),
            &[],
            &Options::default().with_threads(threads),
        )
        .unwrap()
    };
    let fs = [grad(&ms[0].1, 2), grad(&ms[2].1, 2)];
    assert!(fs.iter().all(|f| f.joint().pooled()));
    assert!(!grad(&ms[0].1, 1).joint().pooled());
    let small = cases::ALL[0].1().unwrap();
    assert!(!grad(&small, 2).joint().pooled());
    let inputs: Vec<Vec<Tensor>> = [&ms[0].1, &ms[2].1].iter().map(|g| inputs_of(g, &[], 90)).collect();
    let want: Vec<Vec<Tensor>> = fs
        .iter()
        .zip(&inputs)
        .map(|(f, ins)| f.call(&ins.iter().collect::<Vec<_>>()).unwrap())
        .collect();
    let (fs, inputs, want) = (&fs, &inputs, &want);
    std::thread::scope(|s| {
        for t in 0..6 {
            s.spawn(move || {
                for i in 0..8 {
                    let k = (t + i) % 2;
                    let refs: Vec<&Tensor> = inputs[k].iter().collect();
                    assert!(fs[k].call(&refs).unwrap() == want[k], "call {i} of thread {t} differs");
                }
            });
        }
    });
}

/// Callers that are themselves workers of the pool (user code inside
/// `pool::install`), several at once: a worker waiting inside one call
/// may pick up another caller's work and call from inside the first call
/// (it gets an arena of its own); every call gives the serial results.
#[test]
fn callers_inside_the_pool_get_serial_results() {
    let ms = models();
    let g = &ms[0].1;
    let f = value_and_grad_with_seeds(g, &g.differentiable_inputs(), &[], &Options::default().with_threads(2)).unwrap();
    let ins = inputs_of(g, &[], 91);
    let refs: Vec<&Tensor> = ins.iter().collect();
    let want = f.call(&refs).unwrap();
    let (f, refs, want) = (&f, &refs, &want);
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                wengert::runtime::pool::install(|| {
                    for i in 0..6 {
                        assert!(&f.call(refs).unwrap() == want, "call {i} of caller {t} differs");
                    }
                })
            });
        }
    });
}

/// A loop body compiled as a function of its own (over 512 nodes) runs
/// its large product on the pool: the graph calling it is pooled, and so
/// is a second graph of the module that calls the body compiled for the
/// first without lowering it again (`BodyFn::pooled`); both give one
/// thread's bits.
#[test]
fn a_shared_loop_body_with_a_threaded_product_pools_every_caller() {
    let b = wengert::GraphBuilder::new("big_body");
    let h0 = b.input("h", DType::F32, &[64, 512]);
    let w = b.input("W", DType::F32, &[512, 512]);
    let out = b.fori_loop(2, &[w], &[h0], |_, c, h| {
        // 64·512·512 multiply-adds: above the parallel threshold.
        let mut y = h[0].matmul(c[0]);
        for _ in 0..520 {
            y = y * 0.999;
        }
        vec![y]
    })[0];
    // Planned once, so that both graphs below hold the same loop (one
    // body, compiled for the first and called by the second).
    let g = wengert::passes::memory::memory_plan(&b.build(&[("y", out)]).unwrap()).unwrap();
    let codegen = |threads: usize| wengert::CodegenOptions {
        threads,
        ..Default::default()
    };
    let both = wengert::codegen::compile_graphs(&[&g, &g], &codegen(2)).unwrap();
    assert!(
        both.iter().all(|e| e.pooled()),
        "{:?}",
        both.iter().map(|e| e.pooled()).collect::<Vec<_>>()
    );
    let inputs = common::random_inputs(&g, &mut Rng::new(92), -0.1, 0.1);
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let one = wengert::codegen::compile_graphs(&[&g], &codegen(1)).unwrap().remove(0);
    assert!(!one.pooled());
    let want = one.call(&refs).unwrap();
    for e in &both {
        assert!(e.call(&refs).unwrap() == want, "a pooled copy differs from one thread");
    }
}
