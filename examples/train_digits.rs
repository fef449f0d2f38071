//! Trains a 64 → 128 ReLU → 10 MLP on the handwritten-digits data, end to
//! end through the compiler: the graph is built with the builder, its
//! value-and-gradient compiled once, and each step runs the native code;
//! SGD with momentum updates the parameters in Rust, in place.
//!
//! ```text
//! cargo run --release --example train_digits [-- --data PATH --epochs N --seed S --out DIR]
//! ```
//!
//! Prints one line per epoch, and writes `loss.csv` and `loss.png` (the
//! loss of every step) to `--out` (default `target/train_digits`).

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

/// Draws the loss curve (steps on x, loss on y, log scale) into a PNG:
/// axes, light grid lines at each decade, the per-step loss in grey and
/// its moving average in blue.
fn write_png(report: &TrainReport, path: &std::path::Path) -> Result<(), String> {
    let (w, h) = (800usize, 480usize);
    let (left, right, top, bottom) = (60usize, 20usize, 20usize, 40usize);
    let mut px = vec![255u8; w * h * 3];
    let mut put = |x: usize, y: usize, c: [u8; 3]| {
        if x < w && y < h {
            px[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
        }
    };
    let losses: Vec<f64> = report.step_losses.iter().map(|&l| (l as f64).max(1e-4)).collect();
    let (lo, hi) = losses
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &l| (a.min(l.log10()), b.max(l.log10())));
    let (lo, hi) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let to_xy = |i: usize, l: f64| {
        let x = left + i * (plot_w - 1) / losses.len().max(2).saturating_sub(1);
        let y = top + ((hi - l.log10()) / (hi - lo) * (plot_h - 1) as f64).round() as usize;
        (x, y)
    };
    // Grid at each decade, then axes.
    let mut decade = lo;
    while decade <= hi {
        let y = top + ((hi - decade) / (hi - lo) * (plot_h - 1) as f64).round() as usize;
        for x in left..w - right {
            put(x, y, [225, 225, 225]);
        }
        decade += 1.0;
    }
    for x in left..w - right {
        put(x, top + plot_h, [0, 0, 0]);
    }
    for y in top..=top + plot_h {
        put(left, y, [0, 0, 0]);
    }
    let mut line = |a: (usize, usize), b: (usize, usize), c: [u8; 3]| {
        let steps = a.0.abs_diff(b.0).max(a.1.abs_diff(b.1)).max(1);
        for s in 0..=steps {
            let x = a.0 as f64 + (b.0 as f64 - a.0 as f64) * s as f64 / steps as f64;
            let y = a.1 as f64 + (b.1 as f64 - a.1 as f64) * s as f64 / steps as f64;
            put(x.round() as usize, y.round() as usize, c);
        }
    };
    for i in 1..losses.len() {
        line(to_xy(i - 1, losses[i - 1]), to_xy(i, losses[i]), [170, 170, 170]);
    }
    let window = 20;
    let avg: Vec<f64> = (0..losses.len())
        .map(|i| {
            let s = i.saturating_sub(window - 1);
            losses[s..=i].iter().sum::<f64>() / (i - s + 1) as f64
        })
        .collect();
    for i in 1..avg.len() {
        let (a, b) = (to_xy(i - 1, avg[i - 1]), to_xy(i, avg[i]));
        line(a, b, [31, 90, 200]);
        line((a.0, a.1 + 1), (b.0, b.1 + 1), [31, 90, 200]);
    }
    let file = std::fs::File::create(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&px).map_err(|e| e.to_string())
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
        write_png(&report, &out.join("loss.png"))?;
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
            out.join("loss.png").display()
        );
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
