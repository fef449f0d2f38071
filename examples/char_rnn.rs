//! A character-level recurrent language model on the King James Bible,
//! trained through one compiled step function (gradient through the loop,
//! Adam with clipping, all native code):
//!
//! ```sh
//! cargo run --release --example char_rnn                        # ~3 minutes
//! cargo run --release --example char_rnn -- --seconds 30 --hidden 128
//! cargo run --release --example char_rnn -- --seq 2000 --checkpoint 8 --seconds 60
//! ```
//!
//! Shows a progress bar (loss, characters per second), evaluates held-out
//! loss in bits per character and prints a sample at intervals, then saves
//! the parameters (`params.safetensors`), the loss curve (`loss.csv`) and
//! a plot of it (`loss.svg`) in `--out` (default `target/char_rnn`).
//! `--checkpoint C` trains under the binomial schedule with C saved states
//! (memory independent of the sequence length) and reports the step's
//! arena against the stored-trajectory step.

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use std::path::PathBuf;
use std::time::Instant;
use wengert::char_rnn::{Config, Corpus, Trainer};
use wengert::{LoopPolicy, Options};

#[derive(Parser, Debug)]
#[command(about = "Train a character-level RNN on the King James Bible")]
struct Args {
    /// The text (gzipped if it ends in .gz).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/kjv.txt.gz"))]
    data: PathBuf,
    /// Training time in seconds (evaluation and sampling not counted).
    #[arg(long, default_value_t = 180.0)]
    seconds: f64,
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Characters per training sequence.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Train under the binomial loop schedule with this many saved states.
    #[arg(long)]
    checkpoint: Option<usize>,
    /// Evaluate and sample every this many steps.
    #[arg(long, default_value_t = 250)]
    every: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads of the shared pool a step may use (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/char_rnn"))]
    out: PathBuf,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Subnormals flushed, as JAX does, unless WENGERT_DENORMALS says
    // otherwise: gradients that vanish through the recurrence turn
    // subnormal, and x86 arithmetic on subnormals is many times slower.
    if std::env::var_os(wengert::ir::fpenv::DENORMALS_ENV).is_none() {
        wengert::set_flush_denormals(true)?;
    }
    std::fs::create_dir_all(&args.out)?;
    let corpus = Corpus::load(&args.data, 0.05)?;
    println!(
        "{}: {} training and {} held-out characters, {} distinct",
        args.data.display(),
        corpus.train.len(),
        corpus.held_out.len(),
        corpus.vocab.len()
    );
    let config = Config {
        hidden: args.hidden,
        seq: args.seq,
        batch: args.batch,
        lr: args.lr,
        seed: args.seed,
        loops: args.checkpoint.map_or(LoopPolicy::SaveAll, LoopPolicy::Binomial),
        ..Config::default()
    };
    let mut options = Options::default();
    if let Some(t) = args.threads {
        options = options.with_threads(t);
    }
    let t0 = Instant::now();
    let mut trainer = Trainer::new(corpus, config.clone(), &options)?;
    println!(
        "compiled the step (gradient through a {}-step loop, Adam, clipping) in {:.0} ms; step arena {:.1} MiB",
        args.seq,
        t0.elapsed().as_secs_f64() * 1e3,
        trainer.step_arena_bytes() as f64 / (1 << 20) as f64
    );
    if args.checkpoint.is_some() {
        // The same model storing its trajectory, for comparison.
        let plain = Trainer::new(
            Corpus::load(&args.data, 0.05)?,
            Config {
                loops: LoopPolicy::SaveAll,
                ..config.clone()
            },
            &options,
        )?;
        println!(
            "binomial schedule: step arena {:.1} MiB against {:.1} MiB storing the trajectory",
            trainer.step_arena_bytes() as f64 / (1 << 20) as f64,
            plain.step_arena_bytes() as f64 / (1 << 20) as f64
        );
    }
    let chars_per_step = (args.seq * args.batch) as f64;
    let bar = ProgressBar::new((args.seconds * 10.0) as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {elapsed_precise} {msg}")?);
    let mut curve: Vec<(usize, f64)> = Vec::new();
    let mut held: Vec<(usize, f64)> = Vec::new();
    let mut trained = 0.0;
    let mut step = 0;
    let mut smooth = f64::NAN;
    while trained < args.seconds {
        let t = Instant::now();
        let bpc = trainer.train_step()?;
        trained += t.elapsed().as_secs_f64();
        step += 1;
        smooth = if smooth.is_nan() {
            bpc
        } else {
            0.98 * smooth + 0.02 * bpc
        };
        curve.push((step, bpc));
        bar.set_position((trained * 10.0) as u64);
        bar.set_message(format!(
            "step {step}  loss {smooth:.3} bits/char  {:.0} chars/s",
            step as f64 * chars_per_step / trained
        ));
        if step % args.every == 0 {
            let h = trainer.held_out_bpc(4)?;
            held.push((step, h));
            let sample = trainer.sample("And ", 160, 0.8)?;
            let line = format!(
                "step {step}: held-out {h:.3} bits/char\n  {}",
                sample.replace('\n', "\n  ")
            );
            // A hidden bar (output not a terminal) drops its `println`.
            if bar.is_hidden() {
                println!("{line}");
            } else {
                bar.println(line);
            }
        }
    }
    bar.finish_and_clear();
    let h = trainer.held_out_bpc(16)?;
    held.push((step, h));
    println!(
        "{step} steps in {trained:.0} s ({:.0} chars/s); held-out loss {h:.3} bits/char (a unigram model: ~4.3)",
        step as f64 * chars_per_step / trained
    );
    println!("sample:\n{}", trainer.sample("And God said", 300, 0.7)?);
    trainer.step().save(&args.out.join("params.safetensors"))?;
    let mut csv = String::from("step,train_bpc,held_out_bpc\n");
    for &(s, l) in &curve {
        let held_here = held
            .iter()
            .find(|(hs, _)| *hs == s)
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        csv.push_str(&format!("{s},{l},{held_here}\n"));
    }
    std::fs::write(args.out.join("loss.csv"), csv)?;
    plot(&args.out.join("loss.svg"), &curve, &held)?;
    println!(
        "wrote {}, loss.csv and loss.svg",
        args.out.join("params.safetensors").display()
    );
    Ok(())
}

/// The loss curve with axes, numbers and labels (SVG: no font files).
fn plot(
    path: &std::path::Path,
    curve: &[(usize, f64)],
    held: &[(usize, f64)],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let steps = curve.last().map_or(1, |c| c.0).max(1);
    let top = curve.iter().map(|c| c.1).fold(0.0, f64::max).clamp(1.0, 8.0);
    let mut chart = ChartBuilder::on(&root)
        .caption("char-RNN on the King James Bible", ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0usize..steps, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("training step")
        .y_desc("loss (bits per character)")
        .draw()?;
    // A running mean of 50 steps, for a readable training curve.
    let mut smoothed = Vec::with_capacity(curve.len());
    let mut window = std::collections::VecDeque::new();
    let mut sum = 0.0;
    for &(s, l) in curve {
        window.push_back(l);
        sum += l;
        if window.len() > 50 {
            sum -= window.pop_front().unwrap_or(0.0);
        }
        smoothed.push((s, sum / window.len() as f64));
    }
    chart
        .draw_series(LineSeries::new(smoothed, &BLUE))?
        .label("training (mean of 50 steps)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(held.iter().map(|&(s, l)| Circle::new((s, l), 4, RED.filled())))?
        .label("held out")
        .legend(|(x, y)| Circle::new((x + 10, y), 4, RED.filled()));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
