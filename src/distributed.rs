//! Data-parallel training and many independent evaluations over MPI (the
//! `mpi` crate; feature `mpi`). Every rank runs the same compiled
//! functions on its shard of the data:
//!
//! - [`Cluster::broadcast`]: parameters from rank 0, so every rank starts
//!   from the same values;
//! - [`Cluster::shard`]: the rows of a batch a rank computes;
//! - [`Cluster::all_reduce_mean`]: every gradient packed into one
//!   contiguous buffer per dtype, one collective per step (not one per
//!   tensor), scaled by 1/size — every rank then holds the same bits and
//!   runs the same compiled update, so the parameters stay bitwise equal;
//! - [`Cluster::evaluate_all`]: a compiled function over many independent
//!   inputs (sweeps, ensembles): rank 0 scatters the items round-robin to
//!   the ranks, each evaluates its share, the results are gathered on
//!   rank 0;
//! - [`Cluster::or_abort`]: an error on one rank ends every rank (no rank
//!   waits forever in a collective its peer will never enter).
//!
//! Threads: `pool::default_threads` divides the cores among the ranks MPI
//! starts on the machine (`MPI_LOCALNRANKS`, `OMPI_COMM_WORLD_LOCAL_SIZE`).

use crate::api::{Error, Executable};
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::time::{Duration, Instant};
use wengert_ir::{DType, Tensor};

/// This process's place among the ranks.
pub struct Cluster {
    // Finalizes MPI when dropped (after the communicator).
    world: SimpleCommunicator,
    _universe: mpi::environment::Universe,
}

fn mpi_error(message: impl Into<String>) -> Error {
    wengert_runtime::RuntimeError::Other(format!("MPI: {}", message.into())).into()
}

impl Cluster {
    /// Initializes MPI (once per process).
    pub fn init() -> Result<Cluster, Error> {
        let universe = mpi::initialize().ok_or_else(|| mpi_error("already initialized in this process"))?;
        Ok(Cluster {
            world: universe.world(),
            _universe: universe,
        })
    }

    pub fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    pub fn size(&self) -> usize {
        self.world.size() as usize
    }

    /// The rows `start..end` of `rows` this rank computes: contiguous
    /// shards as equal as possible, the first `rows % size` ranks one row
    /// more.
    pub fn shard(&self, rows: usize) -> std::ops::Range<usize> {
        let (r, n) = (self.rank(), self.size());
        let (base, extra) = (rows / n, rows % n);
        let start = r * base + r.min(extra);
        start..start + base + usize::from(r < extra)
    }

    /// Overwrites `tensors` on every rank with rank 0's values (their types
    /// must agree across ranks).
    pub fn broadcast(&self, tensors: &mut [Tensor]) {
        let root = self.world.process_at_rank(0);
        for t in tensors {
            root.broadcast_into(t.bytes_mut());
        }
    }

    /// Replaces each tensor by the mean of its values over all ranks: the
    /// tensors of each float dtype packed into one buffer, summed by one
    /// all-reduce, scaled by 1/size. Returns the time spent communicating.
    pub fn all_reduce_mean(&self, tensors: &mut [Tensor]) -> Result<Duration, Error> {
        let scale = 1.0 / self.size() as f64;
        let mut spent = Duration::ZERO;
        // Packed and unpacked in each dtype's own bytes (little-endian, as
        // `Tensor` holds them): no conversion of the whole gradient.
        macro_rules! reduce {
            ($t:ty, $dtype:expr) => {{
                let which: Vec<usize> = (0..tensors.len())
                    .filter(|&k| tensors[k].dtype() == $dtype)
                    .collect();
                if !which.is_empty() {
                    const W: usize = std::mem::size_of::<$t>();
                    let mut send: Vec<$t> = Vec::new();
                    for &k in &which {
                        send.extend(
                            tensors[k]
                                .bytes()
                                .chunks_exact(W)
                                .map(|c| <[u8; W]>::try_from(c).map_or(0.0, <$t>::from_le_bytes)),
                        );
                    }
                    let mut recv: Vec<$t> = vec![0.0; send.len()];
                    let t0 = Instant::now();
                    self.world
                        .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
                    spent += t0.elapsed();
                    let mut at = 0;
                    for &k in &which {
                        for c in tensors[k].bytes_mut().chunks_exact_mut(W) {
                            c.copy_from_slice(&((recv[at] as f64 * scale) as $t).to_le_bytes());
                            at += 1;
                        }
                    }
                }
            }};
        }
        reduce!(f32, DType::F32);
        reduce!(f64, DType::F64);
        Ok(spent)
    }

    /// Evaluates `exe` on many independent items (each a full input list),
    /// spread over the ranks: rank 0 holds `items` (the other ranks pass an
    /// empty slice) and scatters them, item `i` to rank `i mod size`; every
    /// rank evaluates its share; the outputs are gathered back, and rank 0
    /// returns them in item order (the other ranks `None`). An item whose
    /// inputs do not fit `exe` ends every rank with an error naming it.
    pub fn evaluate_all(&self, exe: &Executable, items: &[Vec<Tensor>]) -> Result<Option<Vec<Vec<Tensor>>>, Error> {
        let (r, n) = (self.rank(), self.size());
        let root = self.world.process_at_rank(0);
        let in_types: Vec<_> = exe.inputs().iter().map(|(_, t)| t.clone()).collect();
        let out_types: Vec<_> = exe.outputs().iter().map(|(_, t)| t.clone()).collect();
        let per_in: usize = in_types.iter().map(|t| t.num_elements()).sum();
        let per_out: usize = out_types.iter().map(|t| t.num_elements()).sum();
        let mut count = items.len() as u64;
        root.broadcast_into(&mut count);
        let count = count as usize;
        let rounds = count.div_ceil(n);
        // Inputs travel as f64 (exact for every dtype), `rounds` slots per
        // rank (zeros past the end), rank-major.
        let mut mine_in = vec![0f64; rounds * per_in];
        if r == 0 {
            let mut send = vec![0f64; n * rounds * per_in];
            for (i, item) in items.iter().enumerate() {
                let fits = item.len() == in_types.len() && item.iter().zip(&in_types).all(|(t, ty)| t.ty() == ty);
                if !fits {
                    self.or_abort::<(), _>(Err(format!("item {i}: its inputs do not match the function's")));
                }
                let at = ((i % n) * rounds + i / n) * per_in;
                let flat: Vec<f64> = item.iter().flat_map(|t| t.to_f64_vec()).collect();
                send[at..at + per_in].copy_from_slice(&flat);
            }
            root.scatter_into_root(&send[..], &mut mine_in[..]);
        } else {
            root.scatter_into(&mut mine_in[..]);
        }
        let unpack = |flat: &[f64], types: &[wengert_ir::TensorType]| -> Result<Vec<Tensor>, Error> {
            let mut at = 0;
            types
                .iter()
                .map(|ty| {
                    let k = ty.num_elements();
                    let t = Tensor::from_vec(ty.shape.clone(), flat[at..at + k].to_vec())?.convert(ty.dtype);
                    at += k;
                    Ok(t)
                })
                .collect()
        };
        let mut mine_out = vec![0f64; rounds * per_out];
        for (slot, _) in (r..count).step_by(n).enumerate() {
            let inputs = unpack(&mine_in[slot * per_in..(slot + 1) * per_in], &in_types)?;
            let refs: Vec<&Tensor> = inputs.iter().collect();
            let outs = self.or_abort(exe.call(&refs));
            let flat: Vec<f64> = outs.iter().flat_map(|t| t.to_f64_vec()).collect();
            mine_out[slot * per_out..(slot + 1) * per_out].copy_from_slice(&flat);
        }
        if r != 0 {
            root.gather_into(&mine_out[..]);
            return Ok(None);
        }
        let mut all = vec![0f64; n * mine_out.len()];
        root.gather_into_root(&mine_out[..], &mut all[..]);
        (0..count)
            .map(|i| {
                let at = ((i % n) * rounds + i / n) * per_out;
                unpack(&all[at..at + per_out], &out_types)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The value, or on error: print it with this rank's number and abort
    /// every rank (MPI_Abort), so that no rank waits forever for a peer
    /// that has stopped.
    pub fn or_abort<T, E: std::fmt::Display>(&self, r: Result<T, E>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                eprintln!("rank {}: error: {e}", self.rank());
                // `mpiexec` forwards each rank's output through a pipe and
                // may kill everything as soon as the abort arrives: a moment
                // lets the message through first.
                std::thread::sleep(std::time::Duration::from_millis(200));
                self.world.abort(2)
            }
        }
    }

    /// Waits for every rank.
    pub fn barrier(&self) {
        self.world.barrier();
    }

    /// Whether every rank holds the same bytes in `tensors` (gathered to
    /// and compared on rank 0; every rank gets the answer).
    pub fn identical_everywhere(&self, tensors: &[Tensor]) -> bool {
        let mine: Vec<u8> = tensors.iter().flat_map(|t| t.bytes().to_vec()).collect();
        let mut first = mine.clone();
        self.world.process_at_rank(0).broadcast_into(&mut first[..]);
        let same = i32::from(first == mine);
        let mut all = 0i32;
        self.world.all_reduce_into(&same, &mut all, SystemOperation::min());
        all == 1
    }
}
