//! A character-level recurrent language model trained on real text (the
//! King James Bible, `examples/data/kjv.txt.gz`): the corpus and its
//! batches, training through one compiled step function (the model's
//! gradient and Adam with clipping, `optim::TrainStep`), held-out loss in
//! bits per character, and sampling. `examples/char_rnn.rs` drives it.

use crate::api::{compile, Error, Executable, Options};
use crate::models::{char_rnn, char_rnn_cell};
use crate::optim::{Optimizer, StepConfig, TrainStep};
use std::io::Read;
use std::path::Path;
use wengert_ir::{DType, Tensor, TensorType};
use wengert_passes::autodiff::LoopPolicy;

/// A text as character indices, split into training and held-out parts.
pub struct Corpus {
    /// The distinct characters, sorted; a character's index is its
    /// position here.
    pub vocab: Vec<char>,
    pub train: Vec<u16>,
    pub held_out: Vec<u16>,
}

impl Corpus {
    /// `text` with its last `held_out_fraction` held out.
    pub fn from_text(text: &str, held_out_fraction: f64) -> Result<Corpus, Error> {
        let mut vocab: Vec<char> = text.chars().collect();
        vocab.sort_unstable();
        vocab.dedup();
        if vocab.len() < 2 || vocab.len() > u16::MAX as usize {
            return Err(Error::File {
                path: "<text>".into(),
                message: format!("{} distinct characters: a language model needs 2 to 65535", vocab.len()),
            });
        }
        let ids: Vec<u16> = text
            .chars()
            .map(|c| vocab.binary_search(&c).unwrap_or(0) as u16)
            .collect();
        let cut = ((ids.len() as f64) * (1.0 - held_out_fraction.clamp(0.0, 0.5))) as usize;
        Ok(Corpus {
            vocab,
            train: ids[..cut].to_vec(),
            held_out: ids[cut..].to_vec(),
        })
    }

    /// Reads a text file, gzipped if its name ends in `.gz`.
    pub fn load(path: &Path, held_out_fraction: f64) -> Result<Corpus, Error> {
        let file_err = |m: String| Error::File {
            path: path.display().to_string(),
            message: m,
        };
        let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
        let text = if path.extension().is_some_and(|e| e == "gz") {
            let mut s = String::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_string(&mut s)
                .map_err(|e| file_err(format!("not gzipped UTF-8 text: {e}")))?;
            s
        } else {
            String::from_utf8(bytes).map_err(|e| file_err(format!("not UTF-8 text: {e}")))?
        };
        Corpus::from_text(&text, held_out_fraction)
    }

    /// One-hot inputs and next-character targets `[t, starts.len(),
    /// vocab]` for sequences of `data` beginning at `starts`.
    pub fn batch(&self, data: &[u16], starts: &[usize], t: usize) -> Result<(Tensor, Tensor), Error> {
        let (b, v) = (starts.len(), self.vocab.len());
        if let Some(&s) = starts.iter().find(|&&s| s.saturating_add(t) >= data.len()) {
            return Err(Error::File {
                path: "<text>".into(),
                message: format!(
                    "a sequence of {t} characters (and its next) from {s} runs past the text's {} characters",
                    data.len()
                ),
            });
        }

        let ty = TensorType::new(DType::F32, vec![t, b, v]);
        let mut xs = Tensor::try_zeros(ty.clone())?;
        let mut ts = Tensor::try_zeros(ty)?;
        for (j, &s) in starts.iter().enumerate() {
            for step in 0..t {
                let (x, y) = (data[s + step] as usize, data[s + step + 1] as usize);
                if x.max(y) >= v {
                    return Err(Error::File {
                        path: "<text>".into(),
                        message: format!("character index {} is outside the vocabulary of {v}", x.max(y)),
                    });
                }
                let at = (step * b + j) * v;
                xs.bytes_mut()[4 * (at + x)..4 * (at + x) + 4].copy_from_slice(&1f32.to_le_bytes());
                ts.bytes_mut()[4 * (at + y)..4 * (at + y) + 4].copy_from_slice(&1f32.to_le_bytes());
            }
        }
        Ok((xs, ts))
    }
}

/// The model's size and training settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub hidden: usize,
    /// Characters per sequence (steps of the loop).
    pub seq: usize,
    pub batch: usize,
    pub lr: f64,
    /// Clipping by global gradient norm.
    pub clip: f64,
    pub seed: u64,
    /// What the loop stores for its backward (`Binomial(c)` for long
    /// sequences).
    pub loops: LoopPolicy,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            hidden: 256,
            seq: 128,
            batch: 32,
            lr: 3e-3,
            clip: 1.0,
            seed: 1,
            loops: LoopPolicy::default(),
        }
    }
}

/// A model in training: the compiled step, the compiled loss (held-out
/// evaluation) and the compiled cell (sampling).
pub struct Trainer {
    pub corpus: Corpus,
    pub config: Config,
    step: TrainStep,
    eval: Executable,
    cell: Executable,
    h0: Tensor,
    rng: u64,
}

/// A small deterministic generator (xorshift).
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn uniform(state: &mut u64) -> f64 {
    (next(state) >> 11) as f64 / (1u64 << 53) as f64
}

impl Trainer {
    /// Builds and compiles the model for `corpus`; parameters are drawn
    /// uniformly in ±1/√fan-in, biases zero.
    pub fn new(corpus: Corpus, config: Config, options: &Options) -> Result<Trainer, Error> {
        let (v, h) = (corpus.vocab.len(), config.hidden);
        if corpus.train.len() < config.seq + 2 || corpus.held_out.len() < config.seq + 2 {
            return Err(Error::File {
                path: "<text>".into(),
                message: format!("too short for sequences of {} characters", config.seq),
            });
        }
        let g = char_rnn(config.seq, config.batch, v, h)?;
        let mut rng = config.seed.max(1);
        let mut init = |shape: &[usize], fan_in: usize| -> Result<Tensor, Error> {
            let a = if fan_in == 0 { 0.0 } else { 1.0 / (fan_in as f64).sqrt() };
            let n: usize = shape.iter().product();
            let vals: Vec<f64> = (0..n).map(|_| (2.0 * uniform(&mut rng) - 1.0) * a).collect();
            Ok(Tensor::from_vec(shape.to_vec(), vals)?.convert(DType::F32))
        };
        let params = [
            ("W_xh", init(&[v, h], v)?),
            ("W_hh", init(&[h, h], h)?),
            ("b_h", init(&[h], 0)?),
            ("W_hy", init(&[h, v], h)?),
            ("b_y", init(&[v], 0)?),
        ];
        let step_config = StepConfig {
            optimizer: Optimizer::adam(),
            clip_norm: Some(config.clip),
            loops: config.loops,
        };
        let step = TrainStep::new(&g, "loss", &params, &step_config, options)?;
        let eval = compile(&g, options)?;
        let cell = compile(&char_rnn_cell(v, h)?, options)?;
        let h0 = Tensor::try_zeros(TensorType::new(DType::F32, vec![config.batch, h]))?;
        Ok(Trainer {
            corpus,
            config,
            step,
            eval,
            cell,
            h0,
            rng,
        })
    }

    /// One training step on random sequences of the training text; returns
    /// its loss in bits per character (before the update).
    pub fn train_step(&mut self) -> Result<f64, Error> {
        let (t, b) = (self.config.seq, self.config.batch);
        let last = self.corpus.train.len() - t - 1;
        let starts: Vec<usize> = (0..b).map(|_| next(&mut self.rng) as usize % last).collect();
        let (xs, ts) = self.corpus.batch(&self.corpus.train, &starts, t)?;
        let nats = self.step.step(&[&self.h0, &xs, &ts], self.config.lr)?;
        Ok(nats / std::f64::consts::LN_2)
    }

    /// Loss on the held-out text in bits per character, over `batches`
    /// batches of consecutive sequences from its start.
    pub fn held_out_bpc(&self, batches: usize) -> Result<f64, Error> {
        let (t, b) = (self.config.seq, self.config.batch);
        let data = &self.corpus.held_out;
        let mut total = 0.0;
        let mut count = 0;
        for k in 0..batches {
            let starts: Vec<usize> = (0..b).map(|j| ((k * b + j) * t) % (data.len() - t - 1)).collect();
            let (xs, ts) = self.corpus.batch(data, &starts, t)?;
            let mut inputs: Vec<&Tensor> = self.step.params().map(|(_, p)| p).collect();
            inputs.extend([&self.h0, &xs, &ts]);
            total += self.eval.call(&inputs)?[0].to_f64_vec()[0];
            count += 1;
        }
        Ok(total / count.max(1) as f64 / std::f64::consts::LN_2)
    }

    /// `n` characters sampled after `prompt` at `temperature`.
    pub fn sample(&mut self, prompt: &str, n: usize, temperature: f64) -> Result<String, Error> {
        let (v, h) = (self.corpus.vocab.len(), self.config.hidden);
        let mut state = Tensor::try_zeros(TensorType::new(DType::F32, vec![1, h]))?;
        let one_hot = |c: usize| -> Result<Tensor, Error> {
            let mut x = vec![0.0; v];
            x[c] = 1.0;
            Ok(Tensor::from_vec(vec![1, v], x)?.convert(DType::F32))
        };
        let index = |c: char| self.corpus.vocab.binary_search(&c).unwrap_or(0);
        let mut out = String::from(prompt);
        let mut logits = Tensor::try_zeros(TensorType::new(DType::F32, vec![1, v]))?;
        let mut feed: Vec<usize> = prompt.chars().map(index).collect();
        if feed.is_empty() {
            feed.push(index('\n'));
        }
        let params: Vec<Tensor> = self.step.params().map(|(_, p)| p.clone()).collect();
        let cell = &self.cell;
        let run = |c: usize, state: &mut Tensor, logits: &mut Tensor| -> Result<(), Error> {
            let x = one_hot(c)?;
            let mut inputs: Vec<&Tensor> = params.iter().collect();
            inputs.extend([&*state, &x]);
            let o = cell.call(&inputs)?;
            let [h_next, l] = <[Tensor; 2]>::try_from(o)
                .map_err(|_| wengert_runtime::RuntimeError::Other("internal error: the cell has two outputs".into()))?;
            (*state, *logits) = (h_next, l);
            Ok(())
        };
        for &c in &feed {
            run(c, &mut state, &mut logits)?;
        }
        for _ in 0..n {
            let l = logits.to_f64_vec();
            let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = l.iter().map(|x| ((x - m) / temperature.max(1e-3)).exp()).collect();
            let total: f64 = w.iter().sum();
            let mut u = uniform(&mut self.rng) * total;
            let mut c = w.len() - 1;
            for (i, wi) in w.iter().enumerate() {
                if u < *wi {
                    c = i;
                    break;
                }
                u -= wi;
            }
            out.push(self.corpus.vocab[c]);
            run(c, &mut state, &mut logits)?;
        }
        Ok(out)
    }

    /// The training step (parameters, saving and loading).
    pub fn step(&self) -> &TrainStep {
        &self.step
    }

    /// Bytes of the compiled training step's arena (its activations and
    /// the loop's stored states, as planned).
    pub fn step_arena_bytes(&self) -> usize {
        self.step.executable().memory().arena_bytes
    }
}
