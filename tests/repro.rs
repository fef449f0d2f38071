//! Regression tests built from the reproductions of known defects (the
//! hardening issue; inputs copied into `tests/repro/`): each gives the right
//! answer or a clear error, never a panic, a signal or a wrong number.

use std::process::Command;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn repro(file: &str) -> String {
    format!("{}/tests/repro/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs the `wengert` binary; asserts it exited normally (no signal) and
/// did not panic.
fn wengert(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_wengert"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        matches!(run.code, Some(0 | 1)),
        "{args:?}: exit {:?} (a signal or a panic)\n{}",
        run.code,
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{args:?}: {}", run.stderr);
    run
}

fn ok(args: &[&str]) -> String {
    let r = wengert(args);
    assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
    r.stdout
}

fn err(args: &[&str]) -> String {
    let r = wengert(args);
    assert_eq!(r.code, Some(1), "{args:?} should fail: {}", r.stdout);
    r.stderr
}

#[test]
fn pad_amounts_that_overflow_are_shape_errors() {
    for file in ["pad_wrap.wg", "pad_shrink.wg"] {
        let f = repro(file);
        for cmd in [
            &["print", &f][..],
            &["eval", &f, "-i", "x=[1,2]"],
            &["run", &f, "-i", "x=[1,2]"],
            &["grad", &f],
        ] {
            let e = err(cmd);
            assert!(e.contains("`pad` of axis 0") && e.contains("overflows"), "{e}");
        }
    }
}

#[test]
fn malformed_npy_headers_are_errors_naming_the_file() {
    let case = format!("{}/examples/cases/case05_linear.wg", env!("CARGO_MANIFEST_DIR"));
    for file in ["b_shape_paren.npy", "b_shape_utf8.npy"] {
        let b = format!("b=@{}", repro(file));
        for cmd in ["eval", "run"] {
            let e = err(&[
                cmd,
                &case,
                "-i",
                "X=[[1,2,3],[4,5,6],[7,8,9],[1,0,0]]",
                "-i",
                "W=[[1,0],[0,1],[1,1]]",
                "-i",
                &b,
            ]);
            assert!(e.contains(file) && e.contains("malformed shape"), "{e}");
        }
    }
}

#[test]
fn huge_shapes_are_allocation_errors_not_aborts() {
    let e = err(&["eval", &repro("broadcast_1e12.wg"), "-i", "s=0.5"]);
    assert!(e.contains("cannot allocate 4000000000000 bytes"), "{e}");
    // The JIT folds Σ broadcast(s) to s·n and needs no buffer: right answer.
    assert_eq!(
        ok(&["run", &repro("broadcast_1e12.wg"), "-i", "s=0.5"]),
        "y = 500000000000.0\n"
    );
    let e = err(&["eval", &repro("pad_2pow40.wg"), "-i", "v=[1,2]"]);
    assert!(e.contains("cannot allocate 4398046511104 bytes"), "{e}");
    let e = err(&["run", &repro("pad_2pow40.wg"), "-i", "v=[1,2]"]);
    assert!(e.contains("cannot allocate") && e.contains("bytes"), "{e}");
}

#[test]
fn softmax_cross_entropy_reads_strided_operands() {
    let t = repro("xent_transpose.wg");
    let args = ["-i", "z=[[1,2,3],[4,5,6]]", "-i", "t=[[1,0,0],[0,1,0]]"];
    let eval = ok(&[&["eval", &t][..], &args].concat());
    assert_eq!(eval, "L = 1.032391567715828\n");
    assert_eq!(ok(&[&["run", &t][..], &args].concat()), eval);
    assert!(ok(&[&["run", "--grad", &t][..], &args].concat()).starts_with(&eval));
    let s = repro("xent_slice.wg");
    let args = ["-i", "z=[[9,1,2,3,9],[9,4,5,6,9]]", "-i", "t=[[1,0,0],[0,1,0]]"];
    let eval = ok(&[&["eval", &s][..], &args].concat());
    assert_eq!(eval, "L = 1.9076059644443806\n");
    assert_eq!(ok(&[&["run", &s][..], &args].concat()), eval);
}

#[test]
fn multiplication_by_zero_is_not_folded() {
    let f = repro("mul_zero.wg");
    let want = "y = [NaN, NaN, -0.0]\nz = [inf, NaN, -1.0]\nw = [NaN, NaN, 0.0]\n";
    assert_eq!(ok(&["eval", &f, "-i", "x=[inf,nan,-1]"]), want);
    assert_eq!(ok(&["run", &f, "-i", "x=[inf,nan,-1]"]), want);
    assert!(ok(&["opt", &f, "--passes", "simplify"]).contains("mul"));
}

#[test]
fn f32_tanh_keeps_negative_zero() {
    let f = repro("tanh_negzero.wg");
    let args = [
        "-i",
        "x=-0.0",
        "-i",
        "v=[-0.0,-0.0,-0.0,-0.0,-0.0,-0.0,-0.0,-0.0,-0.0]",
        "--json",
    ];
    let eval = ok(&[&["eval", &f][..], &args].concat());
    assert!(eval.contains("\"s\": -0.0, \"inv\": \"-inf\""), "{eval}");
    assert_eq!(ok(&[&["run", &f][..], &args].concat()), eval);
}

#[test]
fn zero_size_tensors_round_trip_the_text_format() {
    for (file, literal) in [("const_3x0.wg", "[[], [], []]"), ("const_0x3.wg", "[]")] {
        let printed = ok(&["print", &repro(file)]);
        assert!(printed.contains(&format!("= const {literal}")), "{printed}");
        let dir = std::env::temp_dir().join(format!("wengert-repro-{}-{file}", std::process::id()));
        std::fs::write(&dir, &printed).unwrap();
        assert_eq!(ok(&["print", dir.to_str().unwrap()]), printed);
        std::fs::remove_file(&dir).unwrap();
    }
    let a = format!("a=@{}", repro("zero_a.npy"));
    let b = format!("b=@{}", repro("zero_b.npy"));
    // numpy's `tolist` convention: [3,0] is [[], [], []], [0,4] is [].
    assert_eq!(
        ok(&["eval", &repro("out_3x0.wg"), "-i", &a, "-i", &b, "--json"]),
        "{\"a2\": [[], [], []], \"b2\": []}\n"
    );
    assert_eq!(
        ok(&["run", &repro("out_3x0.wg"), "-i", &a, "-i", &b, "--json"]),
        "{\"a2\": [[], [], []], \"b2\": []}\n"
    );
}

#[test]
fn grad_with_a_checkpoint_policy_alone_prints_the_gradient_graph() {
    let case = format!(
        "{}/examples/cases/case09_checkpoint_chain.wg",
        env!("CARGO_MANIFEST_DIR")
    );
    for policy in ["sqrt", "slots=2"] {
        let out = ok(&["grad", &case, "--checkpoint", policy]);
        assert!(out.contains("graph @case09_checkpoint_chain.grad("), "{out}");
        assert!(out.contains("grad_W8"), "{out}");
    }
}

#[test]
fn fusion_never_closes_a_cycle() {
    let f = repro("fuse_cycle_node_prune.wg");
    let want = ok(&["eval", &f, "--input", "x=0.5"]);
    assert_eq!(want, "y = [0.0, 0.0]\nz = -1.5\n");
    assert_eq!(ok(&["run", &f, "--input", "x=0.5"]), want);
    let f = repro("fuse_cycle_group_prune.wg");
    let args = ["-i", "p=[0.5,1.5]", "-i", "q=[0.25,-1]"];
    let want = ok(&[&["eval", &f][..], &args].concat());
    assert_eq!(ok(&[&["run", &f][..], &args].concat()), want);
    let f = repro("fuse_cycle_group_prune_grad.wg");
    let args = [
        "-i",
        "x=[1,2]",
        "-i",
        "c=[0.5,-0.5]",
        "-i",
        "z=[0.3,0.7]",
        "-i",
        "w=[2,3]",
    ];
    let out = ok(&[&["run", "--grad", &f][..], &args].concat());
    assert!(
        out.starts_with("l = 5.928571428571429\ngrad_x = [0.5, 0.3333333333333333]\n"),
        "{out}"
    );
    let f = repro("fuse_cycle_node_prune_grad.wg");
    let out = ok(&["run", "--grad", &f, "--input", "x=0.5"]);
    assert!(out.contains("grad_x = 3.75516512378074"), "{out}");
    let f = repro("log_reduce_max.wg");
    let out = ok(&["run", "--grad", &f, "-i", "x=[1,2,3,4]", "-i", "seed_o=[1,1,1,1]"]);
    assert!(out.ends_with("grad_x = [1.0, 1.0, 1.0, 2.0]\n"), "{out}");
    ok(&["grad", &f, "--split"]);
    ok(&["opt", &f]);
    ok(&["opt", &repro("ddmin_gen31_case1743.wg")]);
}

#[test]
fn run_grad_with_nothing_to_differentiate_says_so() {
    let f = repro("all_nodiff.wg");
    assert!(ok(&["grad", &f]).contains("graph @t.grad"));
    let e = err(&["run", "--grad", &f, "-i", "x=[[1,2,3],[4,5,6]]"]);
    assert!(e.contains("nothing to differentiate"), "{e}");
}

/// The many-inputs reproduction: one `add` of two of 20,000 inputs.
/// Compile time is measured in `benches/pipeline.rs`; this checks the
/// answer and that inputs beyond the two read cost nothing but checks.
#[test]
fn a_graph_with_many_inputs_compiles_and_runs() {
    let n = 20_000;
    let mut g = wengert::Graph::new("wide");
    let ids: Vec<_> = (0..n)
        .map(|i| {
            g.add_input(&format!("x{i}"), wengert::TensorType::scalar(wengert::DType::F64), true)
                .unwrap()
        })
        .collect();
    let y = g
        .add(wengert::Op::Binary(wengert::ir::BinaryOp::Add), &[ids[0], ids[1]])
        .unwrap();
    g.add_output("y", y).unwrap();
    let exe = wengert::compile(&g, &wengert::Options::default()).unwrap();
    let inputs: Vec<wengert::Tensor> = (0..n).map(|i| wengert::Tensor::scalar_f64(i as f64 + 1.0)).collect();
    let refs: Vec<&wengert::Tensor> = inputs.iter().collect();
    assert_eq!(exe.call(&refs).unwrap()[0].scalar_value(), Some(3.0));
    let f = wengert::value_and_grad(&g, &["x0", "x1", "x7"], &wengert::Options::default()).unwrap();
    let out = f.call(&refs).unwrap();
    assert_eq!(
        out.iter().map(|t| t.scalar_value().unwrap()).collect::<Vec<_>>(),
        [3.0, 1.0, 1.0, 0.0]
    );
}

/// Large graphs compile as segments (functions of about 1,024 nodes the
/// entry calls in turn), so no frame grows with the graph (the
/// 100,000-node reproduction's single function needed more than the main
/// thread's 8 MiB). Called from a thread with a 256 KiB stack, a graph
/// that keeps 20,000 values alive gives the interpreter's answer. (A frame
/// too large for the caller's stack runs on a thread of its own: tested in
/// `runtime/src/executable.rs`.)
#[test]
fn huge_functions_never_overflow_the_stack() {
    let n = 20_000;
    let mut g = wengert::Graph::new("sums");
    let ids: Vec<_> = (0..n)
        .map(|i| {
            g.add_input(&format!("x{i}"), wengert::TensorType::scalar(wengert::DType::F64), true)
                .unwrap()
        })
        .collect();
    // Partial sums forward, then summed again backward: every partial sum
    // is alive at once, so a single function spills them all.
    let add = wengert::Op::Binary(wengert::ir::BinaryOp::Add);
    let mut partial = vec![ids[0]];
    for &x in &ids[1..] {
        let last = *partial.last().unwrap();
        partial.push(g.add(add.clone(), &[last, x]).unwrap());
    }
    let mut acc = partial[n - 1];
    for &p in partial[..n - 1].iter().rev() {
        acc = g.add(add.clone(), &[acc, p]).unwrap();
    }
    g.add_output("y", acc).unwrap();
    let inputs: Vec<wengert::Tensor> = (0..n).map(|i| wengert::Tensor::scalar_f64((i % 7) as f64)).collect();
    let want = wengert::interpret(&g, &inputs).unwrap();
    let exe = wengert::compile(&g, &wengert::Options::default()).unwrap();
    let frame = exe.frame_bytes();
    assert!(frame <= 64 << 10, "frame {frame}");
    let got = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            let refs: Vec<&wengert::Tensor> = inputs.iter().collect();
            exe.call(&refs).unwrap()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(got, want);
}

/// The full reproduction of the binomial schedule on a 100,000-node chain
/// (`--checkpoint slots=5`, 19,999 blocks, a 1.3M-node rewritten graph):
/// it crashed after 63 s at 7.3 GB (the measurement); it now
/// answers (46 s and 2.6 GB in release, measured in the fourth session on
/// an AMD EPYC while another build ran). Slow tier:
/// `cargo test --release --test repro -- --ignored`.
#[test]
#[ignore]
fn binomial_schedule_on_a_100k_node_chain() {
    let ops = ["sin", "tanh", "add", "neg", "cos"];
    let mut text = String::from("graph @chain(%x: f64[4]) -> (L: f64[]) {\n");
    let mut prev = "%x".to_string();
    for i in 0..99_999 {
        let op = ops[i % ops.len()];
        if op == "add" {
            text.push_str(&format!("  %v{i}: f64[4] = add {prev}, %x\n"));
        } else {
            text.push_str(&format!("  %v{i}: f64[4] = {op} {prev}\n"));
        }
        prev = format!("%v{i}");
    }
    text.push_str(&format!("  %L: f64[] = reduce_sum[axes=(0)] {prev}\n  return %L\n}}\n"));
    let file = std::env::temp_dir().join(format!("wengert-chain100k-{}.wg", std::process::id()));
    std::fs::write(&file, &text).unwrap();
    let out = ok(&[
        "grad",
        file.to_str().unwrap(),
        "--wrt",
        "x",
        "--checkpoint",
        "slots=5",
        "--explain",
    ]);
    std::fs::remove_file(&file).unwrap();
    assert!(out.contains("a chain of 19999 blocks, 5 slot(s)"), "{out}");
}
