//! The handwritten-digits training run: loading the data, standardizing,
//! splitting, and mini-batch SGD with momentum on an MLP compiled once with
//! `value_and_grad`. The parameter update runs in Rust on the runtime's
//! tensors (in place, no allocation per step); the loss and gradients come
//! from the compiled function.

use crate::api::{compile, value_and_grad, Error, Options};
use crate::models;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;
use wengert_ir::{DType, Tensor, TensorType};

/// Pixels per image and classes.
pub const FEATURES: usize = 64;
pub const CLASSES: usize = 10;

/// The environment variable that points at another copy of the data.
pub const DATA_ENV: &str = "WENGERT_DIGITS";

/// The data set: `images[i]` has 64 pixel values, `labels[i]` is 0..=9.
#[derive(Clone, Debug)]
pub struct Digits {
    pub images: Vec<[f32; FEATURES]>,
    pub labels: Vec<u8>,
}

/// Where the data is looked for: `explicit`, else `$WENGERT_DIGITS`, else
/// the copy shipped in `examples/data/`.
pub fn data_path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(DATA_ENV).map(PathBuf::from))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/digits.csv.gz"))
}

/// Loads `digits.csv.gz`. Errors say which file, which line, and how to
/// point at another copy.
pub fn load_digits(path: &Path) -> Result<Digits, String> {
    let hint = format!("(pass --data PATH or set {DATA_ENV}=PATH to use another copy)");
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e} {hint}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .map_err(|e| format!("{} is not a gzip-compressed text file: {e} {hint}", path.display()))?;
    let mut digits = Digits {
        images: Vec::new(),
        labels: Vec::new(),
    };
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |what: String| format!("{}:{}: {what} {hint}", path.display(), n + 1);
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != FEATURES + 1 {
            return Err(bad(format!(
                "expected {} comma-separated values, found {}",
                FEATURES + 1,
                fields.len()
            )));
        }
        let mut image = [0f32; FEATURES];
        for (i, f) in fields[..FEATURES].iter().enumerate() {
            let v: f32 = f
                .parse()
                .map_err(|_| bad(format!("pixel {} is `{f}`, not a number", i + 1)))?;
            image[i] = v;
        }
        let label: u8 = fields[FEATURES]
            .parse::<f32>()
            .ok()
            .filter(|v| v.fract() == 0.0 && (0.0..10.0).contains(v))
            .map(|v| v as u8)
            .ok_or_else(|| bad(format!("the label is `{}`, not a digit 0..=9", fields[FEATURES])))?;
        digits.images.push(image);
        digits.labels.push(label);
    }
    if digits.labels.is_empty() {
        return Err(format!("{} holds no rows {hint}", path.display()));
    }
    Ok(digits)
}

/// A small deterministic generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    /// A random permutation of 0..n (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            p.swap(i, j);
        }
        p
    }
}

/// Training settings.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub data: Option<PathBuf>,
    pub seed: u64,
    pub epochs: usize,
    pub batch: usize,
    pub hidden: usize,
    pub learning_rate: f32,
    pub momentum: f32,
    /// Fraction of the rows held out for testing.
    pub test_fraction: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: None,
            seed: 42,
            epochs: 30,
            batch: 32,
            hidden: 128,
            learning_rate: 0.05,
            momentum: 0.9,
            test_fraction: 0.2,
        }
    }
}

/// One epoch's numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochReport {
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub loss: f64,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    pub steps_per_second: f64,
}

/// The whole run.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub epochs: Vec<EpochReport>,
    /// The loss of every step, in order.
    pub step_losses: Vec<f32>,
    pub train_rows: usize,
    pub test_rows: usize,
    pub compile_ms: f64,
    pub seconds: f64,
}

/// The rows split into training and test sets, standardized.
pub struct Split {
    pub train_x: Vec<[f32; FEATURES]>,
    pub train_y: Vec<u8>,
    pub test_x: Vec<[f32; FEATURES]>,
    pub test_y: Vec<u8>,
}

/// Loads the data named by `config`, splits it by a permutation drawn from
/// `rng` (`config.test_fraction` held out) and standardizes the features
/// with the training rows' statistics.
pub fn split(config: &TrainConfig, rng: &mut Rng) -> Result<Split, String> {
    let digits = load_digits(&data_path(config.data.as_deref()))?;
    let order = rng.permutation(digits.labels.len());
    let n_test = ((digits.labels.len() as f64) * config.test_fraction).round() as usize;
    let (test_idx, train_idx) = order.split_at(n_test);
    let mut train_x: Vec<[f32; FEATURES]> = train_idx.iter().map(|&i| digits.images[i]).collect();
    let train_y: Vec<u8> = train_idx.iter().map(|&i| digits.labels[i]).collect();
    let mut test_x: Vec<[f32; FEATURES]> = test_idx.iter().map(|&i| digits.images[i]).collect();
    let test_y: Vec<u8> = test_idx.iter().map(|&i| digits.labels[i]).collect();
    standardize(&mut train_x, &mut test_x);
    Ok(Split {
        train_x,
        train_y,
        test_x,
        test_y,
    })
}

/// Standardizes features with the training rows' mean and deviation.
fn standardize(train: &mut [[f32; FEATURES]], test: &mut [[f32; FEATURES]]) {
    for f in 0..FEATURES {
        let n = train.len() as f64;
        let mean = train.iter().map(|r| r[f] as f64).sum::<f64>() / n;
        let var = train.iter().map(|r| (r[f] as f64 - mean).powi(2)).sum::<f64>() / n;
        let sd = if var > 1e-12 { var.sqrt() } else { 1.0 };
        for r in train.iter_mut().chain(test.iter_mut()) {
            r[f] = ((r[f] as f64 - mean) / sd) as f32;
        }
    }
}

fn one_hot(labels: &[u8]) -> Vec<f32> {
    let mut t = vec![0f32; labels.len() * CLASSES];
    for (i, &l) in labels.iter().enumerate() {
        t[i * CLASSES + l as usize] = 1.0;
    }
    t
}

/// Trains the MLP and reports each epoch; `on_epoch` sees each report as it
/// comes (for progress output).
pub fn train(config: &TrainConfig, mut on_epoch: impl FnMut(&EpochReport)) -> Result<TrainReport, String> {
    let err = |e: Error| e.to_string();
    let start = Instant::now();
    let mut rng = Rng::new(config.seed);
    let Split {
        train_x,
        train_y,
        test_x,
        test_y,
    } = split(config, &mut rng)?;

    // Compile once: the training step, and inference over each split.
    let t0 = Instant::now();
    let b = config.batch;
    let step_graph = models::mlp(b, FEATURES, config.hidden, CLASSES, DType::F32, false).map_err(|e| e.to_string())?;
    let step = value_and_grad(&step_graph, &models::MLP_PARAMS, &Options::default()).map_err(err)?;
    let infer = |rows: usize| -> Result<_, String> {
        let g = models::mlp(rows, FEATURES, config.hidden, CLASSES, DType::F32, true).map_err(|e| e.to_string())?;
        compile(&g, &Options::default()).map_err(err)
    };
    let infer_train = infer(train_x.len())?;
    let infer_test = infer(test_x.len())?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;

    // He initialization for the weights, zeros for the biases.
    let init = |rng: &mut Rng, fan_in: usize, shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let scale = (2.0 / fan_in as f64).sqrt();
        let data: Vec<f32> = (0..n).map(|_| (rng.normal() * scale) as f32).collect();
        Tensor::from_vec(shape, data)
    };
    let h = config.hidden;
    let mut params = vec![
        init(&mut rng, FEATURES, vec![FEATURES, h]).map_err(|e| e.to_string())?,
        Tensor::zeros(TensorType::new(DType::F32, vec![h])),
        init(&mut rng, h, vec![h, CLASSES]).map_err(|e| e.to_string())?,
        Tensor::zeros(TensorType::new(DType::F32, vec![CLASSES])),
    ];
    let mut velocity: Vec<Vec<f32>> = params.iter().map(|p| vec![0f32; p.len()]).collect();
    let mut x = Tensor::zeros(TensorType::new(DType::F32, vec![b, FEATURES]));
    let mut t = Tensor::zeros(TensorType::new(DType::F32, vec![b, CLASSES]));
    let mut outs: Vec<Tensor> = step
        .joint()
        .outputs()
        .iter()
        .map(|(_, ty)| Tensor::zeros(ty.clone()))
        .collect();
    let train_flat: Vec<f32> = train_x.iter().flatten().copied().collect();
    let test_flat: Vec<f32> = test_x.iter().flatten().copied().collect();
    let train_in = Tensor::from_vec(vec![train_x.len(), FEATURES], train_flat).map_err(|e| e.to_string())?;
    let test_in = Tensor::from_vec(vec![test_x.len(), FEATURES], test_flat).map_err(|e| e.to_string())?;
    let train_t = Tensor::from_vec(vec![train_x.len(), CLASSES], one_hot(&train_y)).map_err(|e| e.to_string())?;
    let test_t = Tensor::from_vec(vec![test_x.len(), CLASSES], one_hot(&test_y)).map_err(|e| e.to_string())?;

    let accuracy = |exe: &crate::api::Executable,
                    xs: &Tensor,
                    ts: &Tensor,
                    labels: &[u8],
                    params: &[Tensor]|
     -> Result<f64, String> {
        let out = exe
            .call(&[xs, ts, &params[0], &params[1], &params[2], &params[3]])
            .map_err(|e| e.to_string())?;
        let logits = out[1].as_slice::<f32>().ok_or("logits are f32")?;
        let correct = labels
            .iter()
            .enumerate()
            .filter(|&(i, &l)| {
                let row = &logits[i * CLASSES..(i + 1) * CLASSES];
                let best = (0..CLASSES).fold(0, |b, c| if row[c] > row[b] { c } else { b });
                best == l as usize
            })
            .count();
        Ok(correct as f64 / labels.len() as f64)
    };

    let mut report = TrainReport {
        epochs: Vec::new(),
        step_losses: Vec::new(),
        train_rows: train_x.len(),
        test_rows: test_x.len(),
        compile_ms,
        seconds: 0.0,
    };
    for epoch in 1..=config.epochs {
        let t_epoch = Instant::now();
        let perm = rng.permutation(train_x.len());
        let mut loss_sum = 0.0;
        let mut steps = 0;
        for chunk in perm.chunks_exact(b) {
            {
                let xs = x.as_mut_slice::<f32>().ok_or("x is f32")?;
                let ts = t.as_mut_slice::<f32>().ok_or("t is f32")?;
                ts.fill(0.0);
                for (r, &i) in chunk.iter().enumerate() {
                    xs[r * FEATURES..(r + 1) * FEATURES].copy_from_slice(&train_x[i]);
                    ts[r * CLASSES + train_y[i] as usize] = 1.0;
                }
            }
            step.call_into(&[&x, &t, &params[0], &params[1], &params[2], &params[3]], &mut outs)
                .map_err(err)?;
            let loss = outs[0].as_slice::<f32>().ok_or("loss is f32")?[0];
            loss_sum += loss as f64;
            report.step_losses.push(loss);
            steps += 1;
            // SGD with momentum: v ← μ·v − η·g; w ← w + v.
            for (k, p) in params.iter_mut().enumerate() {
                let g = outs[1 + k].as_slice::<f32>().ok_or("gradients are f32")?;
                let v = &mut velocity[k];
                let w = p.as_mut_slice::<f32>().ok_or("parameters are f32")?;
                for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g) {
                    *v = config.momentum * *v - config.learning_rate * g;
                    *w += *v;
                }
            }
        }
        let elapsed = t_epoch.elapsed().as_secs_f64();
        let e = EpochReport {
            epoch,
            loss: loss_sum / steps.max(1) as f64,
            train_accuracy: accuracy(&infer_train, &train_in, &train_t, &train_y, &params)?,
            test_accuracy: accuracy(&infer_test, &test_in, &test_t, &test_y, &params)?,
            steps_per_second: steps as f64 / elapsed.max(1e-9),
        };
        on_epoch(&e);
        report.epochs.push(e);
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}
