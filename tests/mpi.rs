//! Data-parallel training over MPI, run under `mpiexec -n 2` (feature
//! `mpi`; `.ci/run` installs MPICH and runs these). Without `mpiexec` on
//! the machine each test says so and passes: the rest of the suite must
//! not depend on MPI.
//!
//! The driver is `examples/train_digits_mpi.rs`, built with the tests.
#![cfg(feature = "mpi")]

use std::process::Command;
use std::time::Duration;

/// The example binary next to this test's (target/<profile>/examples).
fn example() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("train_digits_mpi")
}

/// `mpiexec -n 2 <example> args…` with a timeout: (exit code, stdout,
/// stderr), or `None` when `mpiexec` is missing.
fn mpiexec(args: &[&str]) -> Option<(i32, String, String)> {
    if Command::new("mpiexec").arg("--version").output().is_err() {
        eprintln!("skipped: mpiexec not found (install libmpich-dev; .ci/run does)");
        return None;
    }
    let mut cmd = Command::new("timeout");
    cmd.arg("120")
        .arg("mpiexec")
        .arg("-n")
        .arg("2")
        .arg(example())
        .args(args);
    let out = cmd.output().unwrap();
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn the_averaged_gradient_equals_the_full_batch_gradient() {
    let Some((code, out, err)) = mpiexec(&["--check"]) else {
        return;
    };
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("check:"))
        .unwrap_or_else(|| panic!("{out}{err}"));
    let worst: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(worst <= 1e-12, "{line}");
}

#[test]
fn training_keeps_the_ranks_parameters_bitwise_equal_and_learns() {
    let Some((code, out, err)) = mpiexec(&["--epochs", "5"]) else {
        return;
    };
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("parameters identical on all 2 ranks: true"), "{out}");
    let acc: f64 = out
        .lines()
        .find_map(|l| l.split("test accuracy ").nth(1))
        .and_then(|s| s.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(acc > 90.0, "{out}");
}

#[test]
fn a_sweep_spread_over_ranks_equals_one_process() {
    let Some((code, out, err)) = mpiexec(&["--sweep", "5"]) else {
        return;
    };
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("sweep: 5 evaluations over 2 ranks, equal to one process's: true"),
        "{out}"
    );
}

#[test]
fn an_error_on_one_rank_ends_every_rank() {
    let start = std::time::Instant::now();
    let Some((code, out, err)) = mpiexec(&["--fail-on-rank", "1"]) else {
        return;
    };
    assert_ne!(code, 0, "{out}{err}");
    assert_ne!(code, 124, "timed out: a rank hung\n{out}{err}");
    // The failing rank's message names it and the input (when `mpiexec`
    // forwarded it before ending the job: under load it may not).
    if !err.is_empty() {
        assert!(
            err.contains("rank 1: error: input `x`") || err.contains("MPI_Abort"),
            "{err}"
        );
    }
    assert!(!out.contains("parameters identical"), "the run went on: {out}");
    assert!(start.elapsed() < Duration::from_secs(100));
}
