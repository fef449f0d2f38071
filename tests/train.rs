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

/// The character-level RNN on a slice of the King James Bible: a few
/// hundred compiled training steps (gradient through a 32-step loop, Adam,
/// clipping) take the held-out loss from about log2(63) ≈ 6 bits per
/// character to well under the unigram model's ~4.3, and a sample comes
/// out of the trained cell.
#[test]
fn a_short_char_rnn_run_learns_the_text() {
    use wengert::char_rnn::{Config, Corpus, Trainer};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/kjv.txt.gz");
    let full = Corpus::load(&path, 0.05).unwrap();
    // A slice: the first 200,000 training characters, the held-out part
    // as it is.
    let corpus = Corpus {
        vocab: full.vocab.clone(),
        train: full.train[..200_000].to_vec(),
        held_out: full.held_out.clone(),
    };
    let config = Config {
        hidden: 64,
        seq: 32,
        batch: 16,
        lr: 1e-2,
        ..Config::default()
    };
    let mut t = Trainer::new(corpus, config, &wengert::Options::default()).unwrap();
    let before = t.held_out_bpc(2).unwrap();
    assert!((5.5..6.5).contains(&before), "untrained: {before} bits/char");
    for _ in 0..300 {
        let bpc = t.train_step().unwrap();
        assert!(bpc.is_finite());
    }
    let after = t.held_out_bpc(2).unwrap();
    assert!(after < 3.6, "after 300 steps: {after} bits/char (before: {before})");
    let s = t.sample("And ", 40, 0.8).unwrap();
    assert_eq!(s.chars().count(), 44);
    assert!(s.starts_with("And "));
}

/// Checkpointing changes memory and time, never the training run: the
/// char-RNN trained under SaveAll, Binomial(3) and Every(4) gives the same
/// losses and the same parameters bit for bit (the loop's weight
/// gradients are `matmul_acc`, summed in one order, under every policy).
#[test]
fn the_char_rnn_trains_identically_under_every_loop_policy() {
    use wengert::char_rnn::{Config, Corpus, Trainer};
    use wengert::LoopPolicy;
    let text = "In the beginning God created the heaven and the earth. ".repeat(40);
    let run = |loops: LoopPolicy| {
        let corpus = Corpus::from_text(&text, 0.1).unwrap();
        let config = Config {
            hidden: 16,
            seq: 24,
            batch: 4,
            loops,
            ..Config::default()
        };
        let mut t = Trainer::new(corpus, config, &wengert::Options::default()).unwrap();
        let losses: Vec<u64> = (0..4).map(|_| t.train_step().unwrap().to_bits()).collect();
        let params: Vec<(String, Vec<f64>)> = t
            .step()
            .params()
            .map(|(name, p)| (name.to_string(), p.to_f64_vec()))
            .collect();
        (losses, params)
    };
    let save_all = run(LoopPolicy::SaveAll);
    assert!(!save_all.1.is_empty());
    assert_eq!(run(LoopPolicy::Binomial(3)), save_all, "Binomial(3)");
    assert_eq!(run(LoopPolicy::Every(4)), save_all, "Every(4)");
}

/// Batches that run past the text, or a text whose indices fall outside
/// the vocabulary, are errors, not panics.
#[test]
fn char_rnn_batches_check_their_bounds() {
    use wengert::char_rnn::Corpus;
    let c = Corpus::from_text("in the beginning god created the heaven and the earth", 0.2).unwrap();
    let n = c.train.len();
    assert!(c.batch(&c.train, &[0, 3], 5).is_ok());
    let e = c.batch(&c.train, &[n - 3], 5).unwrap_err().to_string();
    assert!(e.contains("runs past the text"), "{e}");
    let e = c.batch(&[0, 1, 99, 2, 3], &[0], 3).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    assert!(Corpus::from_text("aaaa", 0.1).is_err());
}
