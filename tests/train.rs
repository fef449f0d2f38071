//! A short training run on the handwritten digits: the loss falls and test
//! accuracy passes 90%; bad data files give errors that say where and how.

use std::io::Write;
use wengert::digits::{load_digits, train, TrainConfig};

#[test]
fn a_few_epochs_learn_the_digits() {
    let config = TrainConfig {
        epochs: 4,
        ..TrainConfig::default()
    };
    let report = train(&config, |_| {}).unwrap();
    let (first, last) = (&report.epochs[0], report.epochs.last().unwrap());
    assert!(last.loss < first.loss, "loss {} → {}", first.loss, last.loss);
    let early: f32 = report.step_losses[..10].iter().sum::<f32>() / 10.0;
    let late: f32 = report.step_losses[report.step_losses.len() - 10..].iter().sum::<f32>() / 10.0;
    assert!(late < early / 2.0, "{early} → {late}");
    assert!(last.test_accuracy > 0.90, "test accuracy {}", last.test_accuracy);
    assert_eq!(report.train_rows + report.test_rows, 1797);
    // Deterministic for a seed.
    let again = train(&config, |_| {}).unwrap();
    assert_eq!(again.step_losses, report.step_losses);
}

#[test]
fn bad_data_files_are_clear_errors() {
    let missing = std::path::Path::new("/nonexistent/digits.csv.gz");
    let err = load_digits(missing).unwrap_err();
    assert!(err.starts_with("cannot open /nonexistent/digits.csv.gz:"), "{err}");
    assert!(
        err.ends_with("(pass --data PATH or set WENGERT_DIGITS=PATH to use another copy)"),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("wengert-digits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("plain.csv.gz");
    std::fs::write(&plain, "not gzip").unwrap();
    assert!(load_digits(&plain)
        .unwrap_err()
        .contains("is not a gzip-compressed text file"));
    let short = dir.join("short.csv.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&short).unwrap(), flate2::Compression::default());
    writeln!(enc, "{}", vec!["0"; 65].join(",")).unwrap();
    writeln!(enc, "1,2,3").unwrap();
    enc.finish().unwrap();
    let err = load_digits(&short).unwrap_err();
    assert!(
        err.contains("short.csv.gz:2: expected 65 comma-separated values, found 3"),
        "{err}"
    );
}
