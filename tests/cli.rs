//! Tests of the `wengert` binary: output formats, exit codes and error
//! messages (never a panic).

mod common;

use common::case_path;
use std::io::Write;
use std::process::{Command, Stdio};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn wengert(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wengert"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    assert!(!run.stderr.contains("panicked"), "panic: {}", run.stderr);
    run
}

#[test]
fn print_canonicalizes_a_case_file() {
    let r = wengert(&["print", &case_path("case03_two_inputs.wg")], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "graph @case03_two_inputs(%x1: f64[], %x2: f64[]) -> (y: f64[]) {\n  %0: f64[] = mul %x1, %x2\n  %1: f64[] = sin %x1\n  %2: f64[] = add %0, %1\n  return %2\n}\n"
    );
    // Printing the printed text from standard input gives the same text.
    let again = wengert(&["print", "-"], Some(&r.stdout));
    assert_eq!(again.stdout, r.stdout);
}

#[test]
fn dot_prints_graphviz() {
    let r = wengert(&["dot", &case_path("case01_scalar.wg")], None);
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with("digraph \"case01_scalar\" {"));
    assert!(r.stdout.contains("label=\"%3 = log\\nf64[]\""), "{}", r.stdout);
}

#[test]
fn eval_prints_one_line_per_output() {
    let r = wengert(
        &[
            "eval",
            &case_path("case04_vjp.wg"),
            "--input",
            "x1=2",
            "--input",
            "x2=3",
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "y1 = 6.0\ny2 = 11.0\n");
    let r = wengert(
        &[
            "eval",
            &case_path("case05_linear.wg"),
            "-i",
            "X=[[1,2,3],[4,5,6],[7,8,9],[1,0,0]]",
            "-i",
            "W=[[1,0],[0,1],[1,1]]",
            "-i",
            "b=[0.5,-0.5]",
            "--json",
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "{\"Y\": [[4.5, 4.5], [10.5, 10.5], [16.5, 16.5], [1.5, -0.5]]}\n"
    );
}

#[test]
fn eval_reads_npy_inputs() {
    // A hand-made .npy v1.0 file holding a little-endian f8 array of shape (2, 3).
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }";
    let mut h = header.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((h.len() as u16).to_le_bytes());
    bytes.extend(h.as_bytes());
    for v in [-1.0f64, 2.0, -3.0, 4.0, 0.0, -0.5] {
        bytes.extend(v.to_le_bytes());
    }
    let dir = std::env::temp_dir().join(format!("wengert-npy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("x.npy");
    std::fs::write(&path, bytes).unwrap();
    let r = wengert(
        &[
            "eval",
            &case_path("case06_relu.wg"),
            "--input",
            &format!("X=@{}", path.display()),
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "Y = [[0.0, 2.0, 0.0], [4.0, 0.0, 0.0]]\n");
}

fn assert_fails(args: &[&str], stdin: Option<&str>, message: &str) {
    let r = wengert(args, stdin);
    assert_eq!(r.code, 1, "expected failure for {args:?}: {}", r.stdout);
    assert_eq!(r.stderr.trim_end(), message);
}

#[test]
fn bad_input_gives_one_clear_error_and_a_nonzero_exit() {
    let case5 = case_path("case05_linear.wg");
    assert_fails(
        &["eval", &case_path("case03_two_inputs.wg"), "--input", "x1=2"],
        None,
        "error: missing --input x2=VALUE (expected f64[])",
    );
    assert_fails(
        &[
            "eval",
            &case_path("case03_two_inputs.wg"),
            "--input",
            "x1=2",
            "--input",
            "x2=3",
            "--input",
            "x3=1",
        ],
        None,
        "error: --input x3: the graph has no input `x3` (its inputs: x1, x2)",
    );
    assert_fails(
        &["eval", &case5, "-i", "X=[[1,2],[3,4]]", "-i", "W=1", "-i", "b=2"],
        None,
        "error: --input X: expected a value of shape [4, 3] (f64[4,3]), got shape [2, 2]",
    );
    assert_fails(
        &["eval", &case_path("case01_scalar.wg"), "-i", "x=abc"],
        None,
        "error: --input x: cannot read `abc`: 1:1: expected a number or a list like [1, 2], found `abc`",
    );
    assert_fails(
        &["print", "/nonexistent/file.wg"],
        None,
        "error: cannot read /nonexistent/file.wg: No such file or directory (os error 2)",
    );
    assert_fails(
        &["print", "-"],
        Some("graph @f(%x: f32[3]) -> (y: f32[3]) {\n  %y = exp %q\n  return %y\n}\n"),
        "error: <stdin>:2:12: `%q` is not defined",
    );
}

#[test]
fn grad_prints_the_gradient_graph_and_pipes_into_eval() {
    let r = wengert(&["grad", &case_path("case03_two_inputs.wg"), "--wrt", "x1,x2"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with(
        "graph @case03_two_inputs.grad(%x1: f64[], %x2: f64[]) -> (y: f64[], grad_x1: f64[], grad_x2: f64[]) {"
    ));
    let e = wengert(&["eval", "-", "--input", "x1=2", "--input", "x2=3"], Some(&r.stdout));
    assert_eq!(e.code, 0, "{}", e.stderr);
    let expected = format!(
        "y = {:?}\ngrad_x1 = {:?}\ngrad_x2 = 2.0\n",
        6.0 + 2f64.sin(),
        3.0 + 2f64.cos()
    );
    assert_eq!(e.stdout, expected);
}

#[test]
fn grad_with_seed_inputs_and_split() {
    let r = wengert(
        &[
            "grad",
            &case_path("case04_vjp.wg"),
            "--wrt",
            "x1,x2",
            "--seed",
            "y1=u1",
            "--seed",
            "y2=u2",
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let e = wengert(
        &[
            "eval", "-", "-i", "x1=1.5", "-i", "x2=-0.5", "-i", "u1=2", "-i", "u2=10",
        ],
        Some(&r.stdout),
    );
    assert_eq!(e.stdout, "y1 = -0.75\ny2 = 1.75\ngrad_x1 = 9.0\ngrad_x2 = -7.0\n");
    let s = wengert(&["grad", &case_path("case06_relu.wg"), "--split"], None);
    assert_eq!(s.code, 0, "{}", s.stderr);
    assert!(
        s.stdout.contains(
            "// ----- forward ----- //\ngraph @case06_relu.forward(%X: f64[2,3]) -> (Y: f64[2,3], saved0: bool[2,3]) {"
        ),
        "{}",
        s.stdout
    );
    assert!(s.stdout.contains("// saved: 1 value(s), 6 bytes"), "{}", s.stdout);
}

#[test]
fn grad_errors_name_the_input() {
    assert_fails(
        &["grad", &case_path("case07_softmax_xent.wg"), "--wrt", "T"],
        None,
        &format!(
            "error: {}: cannot differentiate with respect to `T`: the input is marked `nodiff` (data, not a parameter)",
            case_path("case07_softmax_xent.wg")
        ),
    );
    assert_fails(
        &["grad", &case_path("case03_two_inputs.wg"), "--wrt", "x1", "--seed", "y"],
        None,
        "error: --seed `y` must look like OUTPUT=INPUT",
    );
}

#[test]
fn run_compiles_and_prints_like_eval() {
    let r = wengert(
        &["run", &case_path("case04_vjp.wg"), "--input", "x1=2", "--input", "x2=3"],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "y1 = 6.0\ny2 = 11.0\n");
    let dir = std::env::temp_dir().join(format!("wengert-dump-{}", std::process::id()));
    let r = wengert(
        &[
            "run",
            &case_path("case03_two_inputs.wg"),
            "-i",
            "x1=2",
            "-i",
            "x2=3",
            "--grad",
            "--wrt",
            "x1,x2",
            "--dump",
            dir.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let expected = format!(
        "y = {:?}\ngrad_x1 = {:?}\ngrad_x2 = 2.0\n",
        6.0 + 2f64.sin(),
        3.0 + 2f64.cos()
    );
    assert_eq!(r.stdout, expected);
    for f in [
        "case03_two_inputs.grad.clif",
        "case03_two_inputs.grad.s",
        "case03_two_inputs.forward.clif",
        "case03_two_inputs.backward.s",
    ] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(!text.is_empty(), "{f}");
    }
    let r = wengert(
        &[
            "run",
            &case_path("case04_vjp.wg"),
            "-i",
            "x1=2",
            "-i",
            "x2=3",
            "-i",
            "u1=1",
            "-i",
            "u2=0",
            "--grad",
            "--seed",
            "y1=u1",
            "--seed",
            "y2=u2",
            "--json",
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "{\"y1\": 6.0, \"y2\": 11.0, \"grad_x1\": 3.0, \"grad_x2\": 2.0}\n"
    );
    assert_fails(
        &["run", &case_path("case04_vjp.wg"), "-i", "x1=2"],
        None,
        "error: missing --input x2=VALUE (expected f64[])",
    );
}

#[test]
fn grad_explain_reports_planned_and_measured_memory_against_the_budget() {
    let file = case_path("case09_checkpoint_chain.wg");
    let wrt = "W1,W2,W3,W4,W5,W6,W7,W8";
    let explain = |policy: &str| {
        let run = wengert(
            &["grad", &file, "--wrt", wrt, "--checkpoint", policy, "--explain"],
            None,
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        run.stdout
    };
    // 500 bytes: one level of recomputation peaks at 576, so the binomial
    // schedule with the most slots that fits (2) is chosen.
    let out = explain("budget=500");
    for line in [
        "binomial schedule: a chain of 8 blocks, 2 slot(s): 14 recomputed block evaluations besides each block's reversal (optimum r·l − C(c+r, c+1) = 14)",
        "planned arena bytes (joint, forward, backward): 448, 192, 448",
        "measured arena bytes (joint, forward, backward): 448, 192, 448",
        "peak activation bytes, forward then backward (saved + larger arena): planned 448, measured 448",
        "budget 500 bytes: fits",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    // Below every plan's peak: the lowest one, reported over budget.
    assert!(explain("budget=300").contains("budget 300 bytes: over budget"));
    // √n names what it saves and recomputes.
    let out = explain("sqrt");
    assert!(
        out.contains("saved (2 values):") && out.contains("recomputed in the backward"),
        "{out}"
    );
}

#[test]
fn loops_on_the_command_line() {
    let file = case_path("case08_recurrence_scan.wg");
    // `grad` prints the forward and the backward loop, bodies nested, and
    // the result pipes into `eval` (the seed's x̄ for case 8 at these
    // values is checked in tests/scan.rs; here: it evaluates).
    let grad = wengert(&["grad", &file], None);
    assert_eq!(grad.code, 0, "{}", grad.stderr);
    assert_eq!(grad.stdout.matches("= scan[").count(), 2, "{}", grad.stdout);
    assert!(grad.stdout.contains("reverse=1"), "{}", grad.stdout);
    let eval = wengert(
        &["eval", "-", "-i", "a=0.7", "-i", "b=-0.2", "-i", "x=0.4"],
        Some(&grad.stdout),
    );
    assert_eq!(eval.code, 0, "{}", eval.stderr);
    assert!(eval.stdout.contains("grad_a"), "{}", eval.stdout);
    // The schedules, with --explain's account of each loop.
    for (policy, says) in [
        ("all", "stored bytes"),
        ("carries", "stored bytes"),
        ("binomial=2", "binomial schedule"),
        ("every=2", "every-2 schedule"),
        ("budget=16", "slot(s)"),
    ] {
        let run = wengert(&["grad", &file, "--loops", policy, "--explain"], None);
        assert_eq!(run.code, 0, "{policy}: {}", run.stderr);
        assert!(run.stdout.contains(says), "{policy}: {}", run.stdout);
    }
    for bad in ["binomial=0", "sometimes"] {
        assert_fails(
            &["grad", &file, "--loops", bad],
            None,
            &format!("error: unknown loop policy `{bad}` (expected all, carries, binomial=C with C >= 1, every=K, or budget=BYTES)"),
        );
    }
    // `opt --print-after-all` shows the bodies after every pass, and a dump
    // directory holds them.
    let opt = wengert(&["opt", &file, "--print-after-all"], None);
    assert_eq!(opt.code, 0, "{}", opt.stderr);
    assert!(opt.stdout.contains("graph @step.forward"), "{}", opt.stdout);
    assert!(opt.stdout.contains("graph @step.vjp"), "{}", opt.stdout);
    let dir = std::env::temp_dir().join(format!("wengert-loop-dump-{}", std::process::id()));
    let dump = wengert(&["opt", &file, "--dump", dir.to_str().unwrap()], None);
    assert_eq!(dump.code, 0, "{}", dump.stderr);
    let after_fuse = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("after-fuse.wg"))
        .expect("a dump after fuse");
    assert!(std::fs::read_to_string(after_fuse).unwrap().contains("graph @step.vjp"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn jvp_jacobian_and_hessian_commands() {
    // The tangent graph pipes into eval: case 4 along x1 gives the first
    // column of [[x2, x1], [1, 2·x2]].
    let t = wengert(&["jvp", &case_path("case04_vjp.wg")], None);
    assert_eq!(t.code, 0, "{}", t.stderr);
    let e = wengert(
        &[
            "eval",
            "-",
            "-i",
            "x1=0.7",
            "-i",
            "x2=1.3",
            "-i",
            "tangent_x1=1",
            "-i",
            "tangent_x2=0",
        ],
        Some(&t.stdout),
    );
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert!(e.stdout.contains("tangent_y1 = 1.3\ntangent_y2 = 1.0"), "{}", e.stdout);
    let j = wengert(
        &[
            "jacobian",
            &case_path("case04_vjp.wg"),
            "--of",
            "y2",
            "-i",
            "x1=0.7",
            "-i",
            "x2=1.3",
        ],
        None,
    );
    assert_eq!(j.code, 0, "{}", j.stderr);
    assert_eq!(j.stdout, "// dy2/d(x1, x2), Reverse mode\n[[1.0, 2.6]]\n");
    let j = wengert(
        &[
            "jacobian",
            &case_path("case04_vjp.wg"),
            "--of",
            "y1",
            "--mode",
            "forward",
            "-i",
            "x1=0.7",
            "-i",
            "x2=1.3",
        ],
        None,
    );
    assert_eq!(j.stdout, "// dy1/d(x1, x2), Forward mode\n[[1.3, 0.7]]\n");
    // log(1 + x²)'' = (2 − 2x²)/(1 + x²)² = 0.96 at 0.5.
    let h = wengert(&["hessian", &case_path("case01_scalar.wg"), "-i", "x=0.5"], None);
    assert_eq!(h.stdout, "// Hessian of y in (x)\n[[0.96]]\n", "{}", h.stderr);
    let bad = wengert(&["jacobian", &case_path("case04_vjp.wg"), "--mode", "sideways"], None);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("--mode sideways: expected forward or reverse"),
        "{}",
        bad.stderr
    );
    let bad = wengert(
        &[
            "hessian",
            &case_path("case04_vjp.wg"),
            "--of",
            "nope",
            "-i",
            "x1=1",
            "-i",
            "x2=1",
        ],
        None,
    );
    assert!(bad.stderr.contains("nope"), "{}", bad.stderr);
}

/// `WENGERT_DENORMALS=flush` makes the interpreter and compiled code alike
/// flush subnormal results to zero; by default (and with `keep`) they are
/// kept, and both paths agree either way.
#[test]
fn the_denormal_mode_applies_to_the_interpreter_and_the_jit() {
    let dir = std::env::temp_dir().join(format!("wengert-denormals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tiny.wg");
    // 1e-20² = 1e-40 is below f32's least normal number (1.18e-38).
    std::fs::write(
        &file,
        "graph @tiny(%x: f32[]) -> (y: f32[]) {\n  %y = mul %x, %x\n  return %y\n}\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let run = |mode: Option<&str>, cmd: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_wengert"));
        c.args([cmd, file, "-i", "x=1e-20"]);
        match mode {
            Some(m) => c.env("WENGERT_DENORMALS", m),
            None => c.env_remove("WENGERT_DENORMALS"),
        };
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let v: f32 = text.trim().trim_start_matches("y = ").parse().unwrap();
        v
    };
    for cmd in ["eval", "run"] {
        for mode in [None, Some("keep")] {
            let y = run(mode, cmd);
            assert!(y > 0.0 && y < f32::MIN_POSITIVE, "{cmd} {mode:?}: {y}");
        }
        assert_eq!(run(Some("flush"), cmd).to_bits(), 0, "{cmd} flush");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The mode is fixed once per process: asking for the other one later is
/// an error that says which mode holds.
#[test]
fn a_late_change_of_the_denormal_mode_is_an_error_naming_the_mode() {
    let now = wengert::ir::fpenv::flush_denormals();
    assert!(wengert::set_flush_denormals(now).is_ok());
    let e = wengert::set_flush_denormals(!now).unwrap_err().to_string();
    let held = if now { "flushes" } else { "keeps" };
    assert!(e.contains("already") && e.contains(held), "{e}");
}

/// In either mode the interpreter and compiled code agree on a subnormal
/// operand: negation and `abs` are bit operations that keep it, library
/// functions (`log`) see it as zero when flushing, as the compiled code's
/// inline math does.
#[test]
fn subnormal_operands_agree_between_interpreter_and_jit_in_both_modes() {
    let dir = std::env::temp_dir().join(format!("wengert-subnormal-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ops.wg");
    std::fs::write(
        &file,
        "graph @ops(%x: f32[]) -> (n: f32[], a: f32[], l: f32[]) {\n  %n = neg %x\n  %a = abs %n\n  %l = log %x\n  return %n, %a, %l\n}\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let run = |mode: &str, cmd: &str| -> Vec<f32> {
        let out = Command::new(env!("CARGO_BIN_EXE_wengert"))
            .args([cmd, file, "-i", "x=1e-40"])
            .env("WENGERT_DENORMALS", mode)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split(" = ").nth(1).unwrap().trim().parse().unwrap())
            .collect()
    };
    for mode in ["keep", "flush"] {
        let (interp, jit) = (run(mode, "eval"), run(mode, "run"));
        assert_eq!(
            interp.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            jit.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{mode}: interpreter {interp:?}, compiled {jit:?}"
        );
        assert!(
            interp[0] < 0.0 && interp[0] > -f32::MIN_POSITIVE,
            "{mode}: neg keeps the bits: {interp:?}"
        );
        if mode == "flush" {
            assert_eq!(interp[2], f32::NEG_INFINITY, "flush: log sees zero");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
