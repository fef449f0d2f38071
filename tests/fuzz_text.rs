//! Fuzzing of everything that reads user bytes: mutations of the example
//! and test graphs (byte flips, deleted, duplicated and swapped lines, huge,
//! negative and non-finite numbers in shapes, attributes and constants,
//! unicode, truncation, empty input, very long lines) go through `parse`,
//! `verify`, `compile`, `value_and_grad` and the interpreter and JIT on
//! zero inputs; mutated `--input` values through the CLI's reader; mutated
//! `.npy` files through the `.npy` reader. Every input must give `Ok` or
//! an `Err`: a panic fails the test and prints the input.
//!
//! CI runs 3,000 mutated graphs; `WENGERT_FUZZ_TEXT=N` runs N (and
//! `WENGERT_FUZZ_SEED=S` another sequence), e.g. overnight:
//! `WENGERT_FUZZ_TEXT=1000000 cargo test --release --test fuzz_text`.

mod common;

use common::Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use wengert::{compile, interpret, parse, value_and_grad, verify, Options, Tensor};

/// The seed corpus: every `.wg` file of the examples and tests.
fn corpus() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let mut dirs = vec![
        root.join("examples/cases"),
        root.join("tests/filetests"),
        root.join("tests/repro"),
    ];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "wg") {
                files.push(std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    files.sort();
    assert!(files.len() >= 20, "corpus of {} files", files.len());
    files
}

const NUMBERS: [&str; 14] = [
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "0",
    "4294967296",
    "1099511627776",
    "99999999999999999999999",
    "1e400",
    "-1e400",
    "nan",
    "inf",
    "-inf",
    "-0.0",
    "65536",
];

const UNICODE: [&str; 7] = ["é", "∞", "🙂", "\u{0}", "\u{feff}", "Ω(", "％"];

/// One mutation of `text`, chosen by `rng`.
fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let pick = |rng: &mut Rng, n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    match rng.next_u64() % 10 {
        0 => {
            // Flip bytes (the result may not be UTF-8: read lossily, as a
            // file with bad bytes would be by anything that gets this far).
            let mut bytes = text.as_bytes().to_vec();
            for _ in 0..1 + pick(rng, 4) {
                if !bytes.is_empty() {
                    let i = pick(rng, bytes.len());
                    bytes[i] ^= 1 << pick(rng, 8);
                }
            }
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        1 if !lines.is_empty() => {
            let i = pick(rng, lines.len());
            lines.remove(i);
        }
        2 if !lines.is_empty() => {
            let i = pick(rng, lines.len());
            let l = lines[i].clone();
            lines.insert(i, l);
        }
        3 if lines.len() >= 2 => {
            let (i, j) = (pick(rng, lines.len()), pick(rng, lines.len()));
            lines.swap(i, j);
        }
        4 | 5 => {
            // Replace a number (an extent, an attribute, a constant).
            let spans: Vec<(usize, usize)> = number_spans(text);
            if let Some(&(a, b)) = spans.get(pick(rng, spans.len())) {
                let n = NUMBERS[pick(rng, NUMBERS.len())];
                return format!("{}{n}{}", &text[..a], &text[b..]);
            }
        }
        6 => {
            let at = char_boundary(text, pick(rng, text.len() + 1));
            let u = UNICODE[pick(rng, UNICODE.len())];
            return format!("{}{u}{}", &text[..at], &text[at..]);
        }
        7 => {
            let at = char_boundary(text, pick(rng, text.len() + 1));
            return text[..at].to_string();
        }
        8 => {
            // A very long line: a statement repeated, or a huge name.
            let at = lines.len().min(1);
            if rng.next_u64().is_multiple_of(2) {
                let l = lines.get(1).cloned().unwrap_or_default();
                lines.insert(at, l.repeat(2000));
            } else {
                lines.insert(at, format!("  %{}: f32[] = const 1.0", "a".repeat(100_000)));
            }
        }
        _ => return String::new(),
    }
    lines.join("\n")
}

fn char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Byte ranges of the decimal numbers in `text`.
fn number_spans(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    spans
}

/// The body evaluations of all loops of `g`, nested loops multiplied
/// (saturating).
fn loop_steps(g: &wengert::Graph) -> usize {
    g.node_ids()
        .map(|id| {
            if let wengert::Op::Scan(s) = g.op(id) {
                s.length.saturating_mul(1 + loop_steps(&s.body))
            } else {
                0
            }
        })
        .fold(0usize, usize::saturating_add)
}

/// Everything a user can do with a graph file, on one text: each step
/// may fail with an error, none may panic.
fn exercise(text: &str, full: bool) -> bool {
    let Ok(g) = parse(text) else { return false };
    assert!(verify(&g).is_ok(), "parse accepted a graph verify rejects:\n{text}");
    // (A valid loop of 2^64 − 1 steps that touch no memory is as
    // legitimate as a huge tensor, and as unfit for a test: run only
    // graphs whose loops take few steps.)
    let small = g.inputs().iter().map(|i| i.ty.num_elements()).sum::<usize>() <= 1 << 16
        && g.node_ids().all(|id| g.ty(id).num_elements() <= 1 << 20)
        && loop_steps(&g) <= 1 << 20;
    let zeros: Vec<Tensor> = if small {
        g.inputs().iter().map(|i| Tensor::zeros(i.ty.clone())).collect()
    } else {
        Vec::new()
    };
    if small {
        let _ = interpret(&g, &zeros);
    }
    let _ = g.to_string();
    let _ = wengert::to_dot(&g);
    if let Ok(exe) = compile(&g, &Options::default()) {
        if small {
            let refs: Vec<&Tensor> = zeros.iter().collect();
            let _ = exe.call(&refs);
        }
    }
    if full {
        let wrt = g.differentiable_inputs();
        if !wrt.is_empty() {
            if let Ok(f) = value_and_grad(&g, &wrt, &Options::default()) {
                if small {
                    let ins: Vec<Tensor> = f.graph().inputs().iter().map(|i| Tensor::zeros(i.ty.clone())).collect();
                    let refs: Vec<&Tensor> = ins.iter().collect();
                    let _ = f.call(&refs);
                }
            }
        }
    }
    true
}

fn count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[test]
fn mutated_graph_files_give_results_or_errors_never_panics() {
    let corpus = corpus();
    let n = count("WENGERT_FUZZ_TEXT", 3000);
    let mut rng = Rng::new(count("WENGERT_FUZZ_SEED", 1) as u64);
    let mut valid = 0;
    for i in 0..n {
        let base = &corpus[i % corpus.len()];
        let mut text = mutate(base, &mut rng);
        // Sometimes two mutations on top of each other.
        if rng.next_u64().is_multiple_of(4) {
            text = mutate(&text, &mut rng);
        }
        let full = i % 4 == 0;
        match catch_unwind(AssertUnwindSafe(|| exercise(&text, full))) {
            Ok(parsed) => valid += usize::from(parsed),
            Err(_) => panic!("mutation {i} panicked; its text:\n{text}"),
        }
    }
    eprintln!("{n} mutated graphs, {valid} of them valid");
    // Most mutations break the text, but enough must stay valid graphs
    // for compilation and execution to be exercised.
    assert!(valid * 10 >= n, "only {valid} of {n} mutated graphs parsed");
}

#[test]
fn mutated_input_values_and_npy_files_give_results_or_errors() {
    let case = std::fs::read_to_string(format!(
        "{}/examples/cases/case05_linear.wg",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let g = parse(&case).unwrap();
    let values = [
        "[[1,2,3],[4,5,6],[7,8,9],[1,0,0]]",
        "[1, 2]",
        "3.5",
        "[[1,0],[0,1],[1,1]]",
    ];
    let mut rng = Rng::new(7);
    for i in 0..count("WENGERT_FUZZ_TEXT", 3000) {
        let v = mutate(values[i % values.len()], &mut rng);
        let name = ["X", "W", "b", "nope", ""][i % 5];
        let args = vec![format!("{name}={v}")];
        if catch_unwind(AssertUnwindSafe(|| wengert::cli::parse_inputs(&g, &args))).is_err() {
            panic!("--input `{}` panicked", args[0]);
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/repro");
    let npys: Vec<Vec<u8>> = ["zero_a.npy", "zero_b.npy", "b_shape_paren.npy"]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    for i in 0..count("WENGERT_FUZZ_TEXT", 3000) {
        let mut bytes = npys[i % npys.len()].clone();
        match rng.next_u64() % 4 {
            0 => {
                let k = (rng.next_u64() % bytes.len() as u64) as usize;
                bytes[k] ^= 1 << (rng.next_u64() % 8);
            }
            1 => bytes.truncate((rng.next_u64() % bytes.len() as u64) as usize),
            2 => {
                // A header claiming another shape.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let n = NUMBERS[(rng.next_u64() % NUMBERS.len() as u64) as usize];
                bytes = text.replacen("(3, 0)", &format!("({n}, 2)"), 1).into_bytes();
            }
            _ => bytes.extend(std::iter::repeat_n(0u8, (rng.next_u64() % 64) as usize)),
        }
        if catch_unwind(AssertUnwindSafe(|| wengert::npy::parse_npy(&bytes))).is_err() {
            panic!("npy mutation {i} panicked: {bytes:?}");
        }
    }
}
