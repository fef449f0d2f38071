//! Trains a 64 → 128 ReLU → 10 MLP on the handwritten-digits data, end to
//! end through the compiler: the graph is built with the builder, its
//! value-and-gradient compiled once, and each step runs the native code;
//! SGD with momentum updates the parameters in Rust, in place.
//!
//! ```text
//! cargo run --release --example train_digits [-- --data PATH --epochs N --seed S --out DIR]
//! ```
//!
//! Prints one line per epoch, and writes `loss.csv` and `loss.svg` (the
//! loss of every step, plotted with plotters) to `--out` (default
//! `target/train_digits`).

use std::io::Write;
use std::path::PathBuf;
use wengert::digits::{train, TrainConfig, TrainReport};

fn parse_args() -> Result<(TrainConfig, PathBuf), String> {
    let mut config = TrainConfig::default();
    let mut out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/train_digits"));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--data" => config.data = Some(PathBuf::from(value("--data")?)),
            "--epochs" => config.epochs = value("--epochs")?.parse().map_err(|_| "--epochs takes a number")?,
            "--seed" => config.seed = value("--seed")?.parse().map_err(|_| "--seed takes a number")?,
            "--out" => out = PathBuf::from(value("--out")?),
            other => {
                return Err(format!(
                    "unknown argument `{other}` (use --data PATH, --epochs N, --seed S, --out DIR)"
                ))
            }
        }
    }
    Ok((config, out))
}

/// Writes the per-step loss as CSV.
fn write_csv(report: &TrainReport, path: &std::path::Path) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "step,loss")?;
    for (i, l) in report.step_losses.iter().enumerate() {
        writeln!(f, "{},{l}", i + 1)?;
    }
    Ok(())
}

/// Draws the loss curve with plotters as SVG (no font files needed):
/// steps on x, loss on a log scale on y, labelled axes, the per-step loss
/// in grey and its 20-step moving average in blue.
fn write_svg(report: &TrainReport, path: &std::path::Path) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
    let losses: Vec<f64> = report.step_losses.iter().map(|&l| (l as f64).max(1e-4)).collect();
    let (lo, hi) = losses
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &l| (a.min(l), b.max(l)));
    let (lo, hi) = (
        10f64.powf(lo.log10().floor()),
        10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0)),
    );
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("MLP on handwritten digits: training loss", ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0usize..losses.len().max(1), (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("training step")
        .y_desc("softmax cross-entropy (log scale)")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            losses.iter().enumerate().map(|(i, &l)| (i, l)),
            RGBColor(170, 170, 170),
        ))
        .map_err(|e| err(&e))?
        .label("loss of each step")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(170, 170, 170)));
    let window = 20;
    let avg = (0..losses.len()).map(|i| {
        let s = i.saturating_sub(window - 1);
        (i, losses[s..=i].iter().sum::<f64>() / (i - s + 1) as f64)
    });
    chart
        .draw_series(LineSeries::new(avg, BLUE.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label("moving average of 20 steps")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

fn main() {
    let run = || -> Result<(), String> {
        let (config, out) = parse_args()?;
        println!(
            "training 64 → {} ReLU → 10 on handwritten digits, batch {}, SGD lr {} momentum {}, seed {}",
            config.hidden, config.batch, config.learning_rate, config.momentum, config.seed
        );
        let report = train(&config, |e| {
            println!(
                "epoch {:>3}  loss {:.4}  train {:>6.2}%  test {:>6.2}%  {:>8.0} steps/s",
                e.epoch,
                e.loss,
                100.0 * e.train_accuracy,
                100.0 * e.test_accuracy,
                e.steps_per_second
            );
        })?;
        std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
        write_csv(&report, &out.join("loss.csv")).map_err(|e| format!("cannot write loss.csv: {e}"))?;
        write_svg(&report, &out.join("loss.svg"))?;
        let last = report.epochs.last().ok_or("no epochs were run")?;
        println!(
            "{} train / {} test rows; compiled in {:.1} ms; {} steps in {:.2} s; final test accuracy {:.2}%",
            report.train_rows,
            report.test_rows,
            report.compile_ms,
            report.step_losses.len(),
            report.seconds,
            100.0 * last.test_accuracy
        );
        println!(
            "wrote {} and {}",
            out.join("loss.csv").display(),
            out.join("loss.svg").display()
        );
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
