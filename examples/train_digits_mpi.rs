//! The digits MLP trained data-parallel over MPI (feature `mpi`):
//!
//! ```sh
//! cargo build --release --features mpi --example train_digits_mpi
//! mpiexec -n 2 target/release/examples/train_digits_mpi
//! ```
//!
//! Rank 0 broadcasts the initial parameters; every step each rank computes
//! the gradient of its shard of the batch with the compiled
//! value-and-gradient, one all-reduce averages loss and gradients, and
//! every rank runs the same compiled SGD-with-momentum update, so the
//! parameters stay bitwise equal (checked at the end). Rank 0 prints
//! progress.
//!
//! For the tests: `--check` (f64) compares the averaged gradient with the
//! full-batch gradient of one process; `--sweep N` evaluates the loss at N
//! perturbed parameter sets spread over the ranks; `--fail-on-rank R`
//! gives rank R a malformed input, which must end every rank.

#[cfg(feature = "mpi")]
fn main() {
    if let Err(e) = run::run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(feature = "mpi"))]
fn main() {
    eprintln!("build with `--features mpi`");
    std::process::exit(1);
}

#[cfg(feature = "mpi")]
mod run {
    use clap::Parser;
    use std::time::{Duration, Instant};
    use wengert::digits::{split, Rng, TrainConfig, CLASSES, FEATURES};
    use wengert::distributed::Cluster;
    use wengert::{compile, models, value_and_grad, DType, Optimizer, Options, StepConfig, Tensor, UpdateStep};

    #[derive(Parser, Debug)]
    struct Args {
        #[arg(long, default_value_t = 10)]
        epochs: usize,
        /// The global batch (split among the ranks).
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 0.05)]
        lr: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Compare the averaged gradient with the full batch's (f64), then stop.
        #[arg(long)]
        check: bool,
        /// Evaluate the loss at this many perturbed parameter sets over the ranks.
        #[arg(long)]
        sweep: Option<usize>,
        /// Give this rank a malformed input.
        #[arg(long)]
        fail_on_rank: Option<usize>,
        /// Time this many steps (the global batch split over the ranks)
        /// instead of training.
        #[arg(long)]
        bench_steps: Option<usize>,
        /// What `--bench-steps` times: `mlp` (the benchmarks' 784-256-10)
        /// or `digits` (this example's 64-128-10).
        #[arg(long, default_value = "mlp")]
        bench_model: String,
    }

    /// Rows `rows` of the split as model inputs `x` and one-hot `t`.
    fn batch(x: &[[f32; FEATURES]], y: &[u8], rows: &[usize], dtype: DType) -> Result<(Tensor, Tensor), String> {
        let xs: Vec<f64> = rows.iter().flat_map(|&i| x[i].iter().map(|&v| v as f64)).collect();
        let ts: Vec<f64> = rows
            .iter()
            .flat_map(|&i| (0..CLASSES).map(move |c| if y[i] as usize == c { 1.0 } else { 0.0 }))
            .collect();
        let xt = Tensor::from_vec(vec![rows.len(), FEATURES], xs).map_err(|e| e.to_string())?;
        let tt = Tensor::from_vec(vec![rows.len(), CLASSES], ts).map_err(|e| e.to_string())?;
        Ok((xt.convert(dtype), tt.convert(dtype)))
    }

    pub fn run() -> Result<(), Box<dyn std::error::Error>> {
        let args = Args::parse();
        let cluster = Cluster::init()?;
        let (rank, size) = (cluster.rank(), cluster.size());
        if args.batch % size != 0 {
            return Err(format!("the batch ({}) must divide among {size} ranks", args.batch).into());
        }
        let dtype = if args.check { DType::F64 } else { DType::F32 };
        let config = TrainConfig::default();
        let mut rng = Rng::new(args.seed);
        let data = split(&config, &mut rng)?;
        let hidden = config.hidden;
        let shard = args.batch / size;
        let opts = Options::default();
        let g = models::mlp(shard, FEATURES, hidden, CLASSES, dtype, false)?;
        let grad = value_and_grad(&g, &models::MLP_PARAMS, &opts)?;
        let types: Vec<(&str, wengert::TensorType)> = models::MLP_PARAMS
            .iter()
            .map(|n| {
                (
                    *n,
                    g.input(n)
                        .map(|i| i.ty.clone())
                        .unwrap_or_else(|| unreachable_type(dtype)),
                )
            })
            .collect();
        let step_config = StepConfig::new(Optimizer::momentum(0.9, false));
        let mut update = UpdateStep::new(&types, &step_config, &opts)?;
        // Initial parameters: each rank draws its own (different seeds),
        // then rank 0's are broadcast: the ranks must agree after it.
        let mut init_rng = Rng::new(args.seed ^ ((rank as u64 + 1) * 0x9e37));
        let mut params: Vec<Tensor> = types
            .iter()
            .map(|(_, ty)| {
                let fan_in = ty.shape[0] as f64;
                let v: Vec<f64> = (0..ty.num_elements())
                    .map(|_| {
                        if ty.rank() == 2 {
                            init_rng.normal() * (2.0 / fan_in).sqrt()
                        } else {
                            0.0
                        }
                    })
                    .collect();
                Tensor::from_vec(ty.shape.clone(), v).map(|t| t.convert(dtype))
            })
            .collect::<Result<_, _>>()?;
        cluster.broadcast(&mut params);

        if let Some(steps) = args.bench_steps {
            let dims = match args.bench_model.as_str() {
                "mlp" => (784, 256, 10),
                "digits" => (FEATURES, hidden, CLASSES),
                other => return Err(format!("--bench-model {other}: expected mlp or digits").into()),
            };
            return bench(&cluster, args.batch, steps, dims);
        }
        let n_train = data.train_x.len();
        let mut order_rng = Rng::new(args.seed + 7);
        if args.check {
            // One batch: the ranks' averaged gradient against the full
            // batch's gradient computed here alone.
            let rows: Vec<usize> = order_rng.permutation(n_train)[..args.batch].to_vec();
            let mine = &rows[cluster.shard(args.batch)];
            let (x, t) = batch(&data.train_x, &data.train_y, mine, dtype)?;
            let out = grad.call(&[&x, &t, &params[0], &params[1], &params[2], &params[3]])?;
            let mut averaged: Vec<Tensor> = out.clone();
            cluster.all_reduce_mean(&mut averaged)?;
            let full_g = models::mlp(args.batch, FEATURES, hidden, CLASSES, dtype, false)?;
            let full = value_and_grad(&full_g, &models::MLP_PARAMS, &opts)?;
            let (fx, ft) = batch(&data.train_x, &data.train_y, &rows, dtype)?;
            let want = full.call(&[&fx, &ft, &params[0], &params[1], &params[2], &params[3]])?;
            let mut worst = 0f64;
            for (a, b) in averaged.iter().zip(&want) {
                let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
                let scale = b.iter().fold(1e-300f64, |m, v| m.max(v.abs()));
                for (p, q) in a.iter().zip(&b) {
                    worst = worst.max((p - q).abs() / scale);
                }
            }
            if rank == 0 {
                println!(
                    "check: averaged gradient over {size} ranks vs full batch: max relative difference {worst:.3e}"
                );
            }
            return Ok(());
        }
        if let Some(n) = args.sweep {
            // The loss at n parameter sets (the weights scaled by 1 + i/n).
            let eval_g = models::mlp(args.batch, FEATURES, hidden, CLASSES, dtype, false)?;
            let exe = compile(&eval_g, &opts)?;
            let rows: Vec<usize> = (0..args.batch).collect();
            let (x, t) = batch(&data.train_x, &data.train_y, &rows, dtype)?;
            // The items exist on rank 0 only; `evaluate_all` scatters them.
            let items: Vec<Vec<Tensor>> = (0..if rank == 0 { n } else { 0 })
                .map(|i| {
                    let f = 1.0 + i as f64 / n as f64;
                    let mut v = vec![x.clone(), t.clone()];
                    for p in &params {
                        let scaled: Vec<f64> = p.to_f64_vec().iter().map(|w| w * f).collect();
                        let t = Tensor::from_vec(p.shape().to_vec(), scaled).map(|t| t.convert(dtype));
                        v.push(cluster.or_abort(t));
                    }
                    v
                })
                .collect();
            let results = cluster.evaluate_all(&exe, &items)?;
            if let Some(results) = results {
                // The same losses computed here alone.
                let mut same = true;
                for (item, got) in items.iter().zip(&results) {
                    let refs: Vec<&Tensor> = item.iter().collect();
                    same &= exe.call(&refs)? == *got;
                }
                println!("sweep: {n} evaluations over {size} ranks, equal to one process's: {same}");
            }
            return Ok(());
        }

        let steps_per_epoch = n_train / args.batch;
        let start = Instant::now();
        let mut comm = Duration::ZERO;
        for epoch in 1..=args.epochs {
            let order = order_rng.permutation(n_train);
            let mut loss_sum = 0.0;
            for s in 0..steps_per_epoch {
                let rows = &order[s * args.batch..(s + 1) * args.batch];
                let mine = &rows[cluster.shard(args.batch)];
                let (mut x, t) = batch(&data.train_x, &data.train_y, mine, dtype)?;
                if args.fail_on_rank == Some(rank) {
                    x = Tensor::zeros(wengert::TensorType::new(dtype, vec![shard + 1, FEATURES]));
                }
                let out = cluster.or_abort(grad.call(&[&x, &t, &params[0], &params[1], &params[2], &params[3]]));
                // Loss and gradients, averaged in one all-reduce.
                let mut reduced = out;
                comm += cluster.all_reduce_mean(&mut reduced)?;
                loss_sum += reduced[0].to_f64_vec()[0];
                let grads: Vec<&Tensor> = reduced[1..].iter().collect();
                update.apply(&mut params, &grads, args.lr)?;
            }
            if rank == 0 {
                println!(
                    "epoch {epoch:>3}  loss {:.4}  ({} ranks, {} rows each per step)",
                    loss_sum / steps_per_epoch as f64,
                    size,
                    shard
                );
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        // Test accuracy on rank 0.
        if rank == 0 {
            let infer = compile(
                &models::mlp(data.test_x.len(), FEATURES, hidden, CLASSES, dtype, true)?,
                &opts,
            )?;
            let rows: Vec<usize> = (0..data.test_x.len()).collect();
            let (x, t) = batch(&data.test_x, &data.test_y, &rows, dtype)?;
            let out = infer.call(&[&x, &t, &params[0], &params[1], &params[2], &params[3]])?;
            let logits = out[1].to_f64_vec();
            let correct = (0..rows.len())
                .filter(|&i| {
                    let row = &logits[i * CLASSES..(i + 1) * CLASSES];
                    let best = (0..CLASSES).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0);
                    best == data.test_y[i] as usize
                })
                .count();
            println!(
                "{} steps in {elapsed:.2} s ({:.2} ms in all-reduce); test accuracy {:.2}%",
                steps_per_epoch * args.epochs,
                comm.as_secs_f64() * 1e3,
                100.0 * correct as f64 / rows.len() as f64
            );
        }
        let same = cluster.identical_everywhere(&params);
        if rank == 0 {
            println!("parameters identical on all {size} ranks: {same}");
        }
        if !same {
            return Err("the ranks' parameters differ".into());
        }
        Ok(())
    }

    /// Mean step time (gradient of this rank's shard, the all-reduce, the
    /// update) and mean all-reduce time of an MLP `dims` = (inputs,
    /// hidden, classes) over `steps` steps, after a warm-up, printed by
    /// rank 0.
    fn bench(
        cluster: &Cluster,
        batch_rows: usize,
        steps: usize,
        dims: (usize, usize, usize),
    ) -> Result<(), Box<dyn std::error::Error>> {
        let (size, shard) = (cluster.size(), batch_rows / cluster.size());
        let opts = Options::default();
        let g = models::mlp(shard, dims.0, dims.1, dims.2, DType::F32, false)?;
        let grad = value_and_grad(&g, &models::MLP_PARAMS, &opts)?;
        let inputs: Vec<Tensor> = g.inputs().iter().map(|i| Tensor::full(i.ty.clone(), 0.01)).collect();
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let types: Vec<(&str, wengert::TensorType)> = models::MLP_PARAMS
            .iter()
            .filter_map(|n| g.input(n).map(|i| (*n, i.ty.clone())))
            .collect();
        let mut update = UpdateStep::new(&types, &StepConfig::new(Optimizer::momentum(0.9, false)), &opts)?;
        let mut params: Vec<Tensor> = inputs[2..].to_vec();
        let mut out = grad.call(&refs)?;
        let (mut total, mut comm) = (Duration::ZERO, Duration::ZERO);
        for s in 0..steps + 5 {
            cluster.barrier();
            let t0 = Instant::now();
            grad.call_into(&refs, &mut out)?;
            let c = cluster.all_reduce_mean(&mut out)?;
            let grads: Vec<&Tensor> = out[1..].iter().collect();
            update.apply(&mut params, &grads, 1e-6)?;
            if s >= 5 {
                total += t0.elapsed();
                comm += c;
            }
        }
        if cluster.rank() == 0 {
            let bytes: usize = types.iter().map(|(_, t)| t.num_elements() * 4).sum();
            println!(
                "bench: MLP {}-{}-{}, batch {batch_rows} over {size} rank(s) ({shard} rows each, {} thread(s) each): step {:.3} ms, all-reduce {:.3} ms of {} bytes",
                dims.0,
                dims.1,
                dims.2,
                wengert::runtime::pool::default_threads(),
                total.as_secs_f64() * 1e3 / steps as f64,
                comm.as_secs_f64() * 1e3 / steps as f64,
                bytes + 4
            );
        }
        Ok(())
    }

    fn unreachable_type(dtype: DType) -> wengert::TensorType {
        wengert::TensorType::new(dtype, vec![])
    }
}
