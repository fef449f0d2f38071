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
//!   inputs (sweeps, ensembles), items dealt round-robin to ranks and the
//!   results gathered on rank 0;
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

    /// Evaluates `exe` on every item of `items` (each a full input list):
    /// item `i` on rank `i mod size`; rank 0 returns every item's outputs
    /// in order, the other ranks `None`. Every rank passes the same items
    /// (cheap to build; only a rank's own are evaluated).
    pub fn evaluate_all(&self, exe: &Executable, items: &[Vec<Tensor>]) -> Result<Option<Vec<Vec<Tensor>>>, Error> {
        let (r, n) = (self.rank(), self.size());
        let types: Vec<_> = exe.outputs().iter().map(|(_, t)| t.clone()).collect();
        let per_item: usize = types.iter().map(|t| t.num_elements()).sum();
        let rounds = items.len().div_ceil(n);
        // Each rank fills `rounds` slots (zeros past the end), so that
        // every contribution has the same length.
        let mut mine = vec![0f64; rounds * per_item];
        for (slot, i) in (r..items.len()).step_by(n).enumerate() {
            let refs: Vec<&Tensor> = items[i].iter().collect();
            let outs = self.or_abort(exe.call(&refs));
            let flat: Vec<f64> = outs.iter().flat_map(|t| t.to_f64_vec()).collect();
            mine[slot * per_item..(slot + 1) * per_item].copy_from_slice(&flat);
        }
        let root = self.world.process_at_rank(0);
        if r != 0 {
            root.gather_into(&mine[..]);
            return Ok(None);
        }
        let mut all = vec![0f64; n * mine.len()];
        root.gather_into_root(&mine[..], &mut all[..]);
        let mut results = Vec::with_capacity(items.len());
        for i in 0..items.len() {
            let (owner, slot) = (i % n, i / n);
            let base = owner * mine.len() + slot * per_item;
            let mut at = base;
            let mut outs = Vec::with_capacity(types.len());
            for ty in &types {
                let k = ty.num_elements();
                outs.push(Tensor::from_vec(ty.shape.clone(), all[at..at + k].to_vec())?.convert(ty.dtype));
                at += k;
            }
            results.push(outs);
        }
        Ok(Some(results))
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
