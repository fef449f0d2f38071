//! Tests of the optimizing pipeline: golden files per pass under
//! `tests/filetests/<pass>/` (`UPDATE_EXPECT=1` rewrites the `.expected`
//! files), preservation of interpreter results, fusion counts, memory plans,
//! dumps and the `opt` command line.

mod common;

use common::{assert_close, random_inputs, Rng};
use proptest::prelude::*;
use std::path::Path;
use wengert::passes::{kernel_count, memory_plan_with_stats, run_pipeline, Pass, PipelineOptions, Stage};
use wengert::{cases, compile, interpret, models, parse, value_and_grad, DType, Graph, GraphBuilder, Options, Tensor};

/// Runs the passes named on the file's first line (`// passes: a,b`).
fn run_file(text: &str) -> (Graph, wengert::passes::PipelineResult) {
    let first = text.lines().next().unwrap_or("");
    let names = first
        .strip_prefix("// passes:")
        .expect("first line names the passes")
        .trim();
    let passes = names.split(',').map(|p| Pass::from_name(p.trim()).unwrap()).collect();
    let g = parse(text).unwrap();
    let result = run_pipeline(
        &g,
        &PipelineOptions {
            passes,
            ..PipelineOptions::default()
        },
    )
    .unwrap();
    (g, result)
}

fn render(stage: &Stage) -> String {
    match stage {
        Stage::One(g) => g.to_string(),
        Stage::Split {
            joint,
            forward,
            backward,
        } => {
            format!("// ----- joint ----- //\n{joint}// ----- forward ----- //\n{forward}// ----- backward ----- //\n{backward}")
        }
    }
}

/// Compares `actual` with the `.expected` file beside `path` (or rewrites
/// it when `update`), recording a mismatch in `failures`.
fn check_golden(path: &Path, actual: &str, update: bool, failures: &mut Vec<String>) {
    let expected_path = path.with_extension("expected");
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    if update {
        std::fs::write(&expected_path, actual).unwrap();
    } else if expected != actual {
        failures.push(format!(
            "{}:\n--- expected\n{expected}--- actual\n{actual}",
            path.display()
        ));
    }
}

#[test]
fn filetests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut count = 0;
    let mut failures = Vec::new();
    for pass in ["autodiff", "simplify", "partition", "fuse", "memory-plan"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(pass))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "wg")) {
            let text = std::fs::read_to_string(&path).unwrap();
            let (input, result) = run_file(&text);
            let actual = render(&result.stage);
            // The printed result parses back to itself.
            if let Stage::One(g) = &result.stage {
                assert_eq!(parse(&actual).unwrap().to_string(), actual, "{}", path.display());
                // Passes without autodiff preserve what the graph computes.
                if g.outputs().len() == input.outputs().len() {
                    let inputs = random_inputs(&input, &mut Rng::new(3), 0.1, 1.0);
                    for (a, b) in interpret(&input, &inputs)
                        .unwrap()
                        .iter()
                        .zip(interpret(g, &inputs).unwrap())
                    {
                        assert_close(&a.to_f64_vec(), &b.to_f64_vec(), 1e-5, &path.display().to_string());
                    }
                }
            }
            check_golden(&path, &actual, update, &mut failures);
            count += 1;
        }
    }
    assert!(count >= 10, "found only {count} filetests");
    assert!(
        failures.is_empty(),
        "run with UPDATE_EXPECT=1 to accept:\n{}",
        failures.join("\n")
    );
}

#[test]
fn seed_gradients_are_as_short_as_the_hand_written_backward() {
    // After simplify, case 1's gradient needs one constant 1 (shared by
    // 1 + x² and 1/v2), as in the seed: v̄2 = 1/v2, x̄ = v̄2 · 2x.
    let g = cases::case01_scalar().unwrap();
    let result = run_pipeline(
        &g,
        &PipelineOptions {
            passes: vec![Pass::Autodiff, Pass::Simplify],
            ..PipelineOptions::default()
        },
    )
    .unwrap();
    let Stage::One(out) = &result.stage else { panic!() };
    expect_test::expect![[r#"
        graph @case01_scalar.grad(%x: f64[]) -> (y: f64[], grad_x: f64[]) {
          %0: f64[] = pow[exponent=2.0] %x
          %1: f64[] = const 1.0
          %2: f64[] = add %1, %0
          %3: f64[] = log %2
          %4: f64[] = div %1, %2
          %5: f64[] = const 2.0
          %6: f64[] = mul %5, %x
          %7: f64[] = mul %4, %6
          return %3, %7
        }
    "#]]
    .assert_eq(&out.to_string());
}

#[test]
fn fusion_counts() {
    // A chain of eight elementwise ops is one kernel.
    let b = GraphBuilder::new("chain");
    let x = b.input("x", DType::F32, &[1000]);
    let mut h = x;
    for i in 0..8 {
        h = if i % 2 == 0 { h.sin() } else { h * 1.5 };
    }
    let g = wengert::passes::fuse(&b.build(&[("y", h)]).unwrap()).unwrap();
    assert_eq!(kernel_count(&g), 1, "{g}");
    // The forward and the backward of case 1 are one kernel each.
    let result = run_pipeline(&cases::case01_scalar().unwrap(), &PipelineOptions::default()).unwrap();
    let Stage::Split { forward, backward, .. } = &result.stage else {
        panic!()
    };
    assert_eq!(kernel_count(forward), 1, "{forward}");
    assert_eq!(kernel_count(backward), 1, "{backward}");
    // Softmax cross-entropy forward and backward of the MLP: a couple of
    // kernels besides the matmuls.
    let g = models::mlp(32, 64, 32, 10, DType::F32, false).unwrap();
    let result = run_pipeline(&g, &PipelineOptions::default()).unwrap();
    let Stage::Split { backward, .. } = &result.stage else {
        panic!()
    };
    assert!(kernel_count(backward) <= 6, "{backward}");
}

#[test]
fn every_pass_preserves_results_on_the_seed_cases() {
    for (file, build) in cases::ALL {
        let g = build().unwrap();
        let inputs = random_inputs(&g, &mut Rng::new(5), -1.0, 1.0);
        let want = interpret(&g, &inputs).unwrap();
        let result = run_pipeline(
            &g,
            &PipelineOptions {
                passes: vec![Pass::Simplify, Pass::Fuse, Pass::MemoryPlan],
                ..PipelineOptions::default()
            },
        )
        .unwrap();
        let Stage::One(opt) = &result.stage else { panic!() };
        let got = interpret(opt, &inputs).unwrap();
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let jit = compile(&g, &Options::default()).unwrap().call(&refs).unwrap();
        for ((a, b), c) in want.iter().zip(&got).zip(&jit) {
            assert_close(&b.to_f64_vec(), &a.to_f64_vec(), 1e-12, file);
            assert_close(&c.to_f64_vec(), &a.to_f64_vec(), 1e-12, file);
        }
    }
}

fn random_graph(program: &[(u8, u8, u8)]) -> Graph {
    let b = GraphBuilder::new("random");
    let mut pool = vec![b.input("a", DType::F32, &[3, 5]), b.input("c", DType::F32, &[3, 5])];
    let w = b.input("w", DType::F32, &[5, 5]);
    for &(op, i, j) in program {
        let x = pool[i as usize % pool.len()];
        let y = pool[j as usize % pool.len()];
        let v = match op % 12 {
            0 => x + y,
            1 => x * y,
            2 => (x - y).tanh(),
            3 => x.exp().min(y),
            4 => x.sum(&[1]).expand_reduced(&[1], &[3, 5]) * 0.1,
            5 => x.matmul(w).relu(),
            6 => x.max_over(&[0]).expand_reduced(&[0], &[3, 5]) - y,
            7 => x.gt(y).select(x, y * 2.0),
            8 => x.t().t() * 1.0 + 0.0,
            9 => x.softmax(1),
            10 => -(-x.sin()),
            _ => (x.square() + 1.0).log(),
        };
        pool.push(v);
    }
    let outs: Vec<(String, wengert::Var)> = pool
        .iter()
        .rev()
        .take(2)
        .enumerate()
        .map(|(i, v)| (format!("o{i}"), *v))
        .collect();
    let outs: Vec<(&str, wengert::Var)> = outs.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    b.build(&outs).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn passes_and_jit_preserve_results_on_random_graphs(program in prop::collection::vec((0u8..12, 0u8..16, 0u8..16), 1..12), seed in 0u64..1000) {
        let g = random_graph(&program);
        let inputs = random_inputs(&g, &mut Rng::new(seed), -1.0, 1.0);
        let want = interpret(&g, &inputs).unwrap();
        let result = run_pipeline(&g, &PipelineOptions { passes: vec![Pass::Simplify, Pass::Fuse, Pass::MemoryPlan], ..PipelineOptions::default() }).unwrap();
        let Stage::One(opt) = &result.stage else { panic!() };
        let got = interpret(opt, &inputs).unwrap();
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let jit = compile(&g, &Options::default()).unwrap().call(&refs).unwrap();
        for ((a, b), c) in want.iter().zip(&got).zip(&jit) {
            let (a, b, c) = (a.to_f64_vec(), b.to_f64_vec(), c.to_f64_vec());
            for i in 0..a.len() {
                let tol = 1e-4 * (1.0 + a[i].abs());
                prop_assert!((a[i] - b[i]).abs() <= tol || (a[i].is_nan() && b[i].is_nan()), "interp {} vs {}\n{}", a[i], b[i], opt);
                prop_assert!((a[i] - c[i]).abs() <= tol || (a[i].is_nan() && c[i].is_nan()), "jit {} vs {}\n{}", a[i], c[i], opt);
            }
        }
    }
}

#[test]
fn memory_plan_reuses_buffers_and_the_executable_reports_memory() {
    let g = models::tanh_chain(8, 16, 32, DType::F32).unwrap();
    let fused = wengert::passes::fuse(&g).unwrap();
    let (_, stats) = memory_plan_with_stats(&fused).unwrap();
    assert!(stats.arena_bytes * 3 <= stats.unshared_bytes, "{stats:?}");
    let f = value_and_grad(&g, &["W1", "W2"], &Options::default()).unwrap();
    let mem = f.joint().memory();
    assert!(mem.arena_bytes > 0 && mem.output_bytes > 0);
    // The joint function writes exactly the arena the plan laid out.
    let planned = f.pipeline().memory[0].arena_bytes;
    assert_eq!(f.joint().measure_arena().unwrap(), planned);
    assert!(planned <= mem.arena_bytes);
    assert!(f.partition().saved_bytes() > 0);
    let report = f.memory();
    assert_eq!(report.saved_bytes, f.partition().saved_bytes());
    // The split peak is the one measured on the compiled halves.
    assert_eq!(report.split_peak_bytes, f.measure_memory().unwrap().measured_peak());
    assert_eq!(report.joint_output_bytes, 4 + 2 * 32 * 32 * 4);
}

#[test]
fn dumps_write_one_file_per_pass() {
    let dir = std::env::temp_dir().join(format!("wengert-dumps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = Options {
        dump_dir: Some(dir.clone()),
        ..Options::default()
    };
    let f = value_and_grad(&cases::case03_two_inputs().unwrap(), &["x1", "x2"], &options).unwrap();
    // The halves compile on first use, and dump their code then.
    f.backward_executable().unwrap();
    for f in [
        "00-input.wg",
        "01-after-autodiff.wg",
        "02-after-simplify.wg",
        "03-after-checkpoint.wg",
        "04-after-partition.wg",
        "04-after-partition.forward.wg",
        "04-after-partition.backward.dot",
        "05-after-fuse.backward.wg",
        "06-after-memory-plan.wg",
        "passes.txt",
        "checkpoint.txt",
        "case03_two_inputs.grad.clif",
        "case03_two_inputs.backward.s",
    ] {
        assert!(dir.join(f).exists(), "{f} missing in {}", dir.display());
    }
    let table = std::fs::read_to_string(dir.join("passes.txt")).unwrap();
    assert!(
        table.starts_with("pass          time (µs)   nodes before   nodes after\nautodiff"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 7);
    // The checkpoint table carries the arenas measured on the compiled code,
    // as `GradFn::explain` gives them.
    let checkpoint = std::fs::read_to_string(dir.join("checkpoint.txt")).unwrap();
    assert_eq!(checkpoint, f.explain().unwrap());
    let m = f.measure_memory().unwrap();
    assert!(
        checkpoint.contains(&format!(
            "peak activation bytes, forward then backward (saved + larger arena): planned {}, measured {}\n",
            m.planned_peak(),
            m.measured_peak()
        )),
        "{checkpoint}"
    );
    assert!(checkpoint.starts_with("saved ("), "{checkpoint}");
}

#[test]
fn opt_prints_after_each_pass() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wengert"))
        .args([
            "opt",
            &common::case_path("case03_two_inputs.wg"),
            "--passes",
            "autodiff,simplify,fuse",
            "--print-after-all",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let headers: Vec<&str> = text.lines().filter(|l| l.starts_with("// -----")).collect();
    assert_eq!(
        headers,
        [
            "// ----- IR after autodiff ----- //",
            "// ----- IR after simplify ----- //",
            "// ----- IR after fuse ----- //"
        ]
    );
    assert!(text.contains("  kernel 0 {\n"), "{text}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wengert"))
        .args([
            "opt",
            &common::case_path("case03_two_inputs.wg"),
            "--passes",
            "autodiff,frobnicate",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown pass `frobnicate`"));
}

#[test]
fn the_whole_pipeline_handles_a_100k_node_graph() {
    let b = GraphBuilder::new("chain");
    let x = b.input("x", DType::F32, &[4]);
    let mut h = x;
    for _ in 0..50_000 {
        h = (h * 0.999).sin();
    }
    let g = b.build(&[("y", h.sum_all())]).unwrap();
    assert!(g.len() > 100_000);
    let result = run_pipeline(&g, &PipelineOptions::default()).unwrap();
    let Stage::Split { joint, backward, .. } = &result.stage else {
        panic!()
    };
    assert!(kernel_count(joint) > 0 && kernel_count(backward) > 0);
}

/// Checkpointing is a graph → graph pass: its decision is written into
/// the graph as `save`/`recompute` marks, which partition reads, so a pass
/// between the two keeps it; in an order where it cannot apply it is an
/// error, not a silent no-op.
#[test]
fn the_checkpoint_decision_lives_in_the_graph() {
    let g = cases::case09_checkpoint_chain().unwrap();
    let wrt: Vec<String> = (1..=8).map(|i| format!("W{i}")).collect();
    let run = |passes: Vec<Pass>| {
        run_pipeline(
            &g,
            &PipelineOptions {
                passes,
                wrt: wrt.clone(),
                checkpoint: wengert::cli::parse_checkpoint_policy("sqrt").unwrap(),
                ..PipelineOptions::default()
            },
        )
    };
    let direct = run(vec![Pass::Autodiff, Pass::Simplify, Pass::Checkpoint, Pass::Partition]).unwrap();
    let between = run(vec![
        Pass::Autodiff,
        Pass::Simplify,
        Pass::Checkpoint,
        Pass::Simplify,
        Pass::Partition,
    ])
    .unwrap();
    let names = |r: &wengert::passes::PipelineResult| -> Vec<String> {
        r.partition
            .as_ref()
            .unwrap()
            .residuals
            .iter()
            .map(|r| r.ty.to_string())
            .collect()
    };
    let all = run(vec![Pass::Autodiff, Pass::Simplify, Pass::Partition]).unwrap();
    assert!(
        direct.partition.as_ref().unwrap().saved_bytes() < all.partition.as_ref().unwrap().saved_bytes(),
        "√n saves less than save-all"
    );
    assert_eq!(names(&direct), names(&between));
    assert_eq!(
        direct.partition.as_ref().unwrap().saved_bytes(),
        between.partition.as_ref().unwrap().saved_bytes()
    );
    // The marks print: the decision can be read (and edited) as text.
    let Stage::One(marked) = &run(vec![Pass::Autodiff, Pass::Simplify, Pass::Checkpoint])
        .unwrap()
        .stage
    else {
        panic!("one graph before partition")
    };
    let text = marked.to_string();
    assert!(text.contains(" save = ") && text.contains(" recompute = "), "{text}");
    let e = run(vec![Pass::Simplify, Pass::Checkpoint]).unwrap_err().to_string();
    assert!(e.contains("`checkpoint` needs `autodiff` before it"), "{e}");
    let e = run(vec![Pass::Autodiff, Pass::Partition, Pass::Checkpoint])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`checkpoint` must run before `partition`"), "{e}");
}

/// The kernels code generation emits for each file of
/// `tests/filetests/kernels/` after the whole pipeline (the graph compiled
/// with `compile`), as golden files (`UPDATE_EXPECT=1` rewrites them).
#[test]
fn kernel_filetests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests/kernels");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut files: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut failures = Vec::new();
    let mut count = 0;
    for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "wg")) {
        let g = parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let options = Options {
            codegen: wengert::CodegenOptions {
                keep_text: true,
                threads: 1,
                ..Default::default()
            },
            ..Options::default()
        };
        // Which GEMM family computes a product is the machine's choice
        // (`gemm::choose`), not the compiler's: the golden files do not
        // record it.
        let actual: String = compile(&g, &options)
            .unwrap()
            .kernels()
            .lines()
            .map(|l| {
                let words: Vec<&str> = l
                    .split(' ')
                    .map(|w| if w.starts_with("kernel=") { "kernel=*" } else { w })
                    .collect();
                words.join(" ") + "\n"
            })
            .collect();
        assert!(!actual.is_empty(), "{}: no kernels recorded", path.display());
        check_golden(&path, &actual, update, &mut failures);
        count += 1;
    }
    assert!(count >= 3, "found only {count} kernel filetests");
    assert!(
        failures.is_empty(),
        "run with UPDATE_EXPECT=1 to accept:\n{}",
        failures.join("\n")
    );
}
