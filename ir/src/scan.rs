//! The loop op's region: a body graph and how the loop runs it.
//!
//! `scan` takes operands `consts…, carry_init…, xs…` and runs its body
//! `(consts, carry, x_t) → (carry', y_t)` once per step `t` of `length`
//! (from `length − 1` down to 0 when `reverse`), where `x_t` is row `t` of
//! each `xs` (stacked on a leading axis of `length`). Its results are
//! `carry_final…, ys…`, each `ys` stacking the steps' `y_t` at row `t`.
//! With `length = 0` the results are the initial carry and empty stacks.
//!
//! A graph node produces one value, and a scan produces several: the scan
//! node's value is one byte buffer (typed `bool[n]`, `n` its size in bytes)
//! holding every result at a 64-byte aligned offset ([`Scan::layout`]), and
//! `get[index=i]` nodes are views of result `i` in it. Printing shows the
//! scan's type as the tuple of its results, never the buffer.

use crate::graph::Graph;
use crate::types::{DType, TensorType};
use std::sync::Arc;

/// Results are packed at offsets of this alignment (a cache line, and
/// every SIMD width).
pub const RESULT_ALIGN: usize = 64;

/// How deeply loops may nest. Printing, verifying, interpreting and
/// compiling recurse once per level, so the depth is bounded where a loop
/// is made (`Scan::check`, which every graph's inference runs), and a
/// hostile program cannot overflow the stack with a tower of loops.
pub const MAX_NESTING: usize = 64;

/// A loop: its body and its trip count. Held by `Op::Scan` behind an `Arc`,
/// so copying a node copies a pointer, and two scan ops are the same op
/// exactly when they share a body (pointer identity is sound for common
/// subexpressions: equal pointers run equal loops).
#[derive(Clone, Debug)]
pub struct Scan {
    /// `(consts…, carry…, x_t…) → (carry'…, y_t…)`.
    pub body: Graph,
    /// The number of steps `T`.
    pub length: usize,
    /// Run the steps from `T − 1` down to 0 (row `t` of the `xs` and `ys`
    /// still belongs to step `t`).
    pub reverse: bool,
    /// How many of the body's leading inputs are loop-invariant operands.
    pub n_consts: usize,
    /// How many inputs after the consts are the carry (and how many of the
    /// body's leading outputs are the next carry).
    pub n_carry: usize,
    /// How many steps one iteration of the compiled loop runs (the body's
    /// code repeated, then a loop for the remaining steps); 1 (or 0) for
    /// none. It changes nothing but speed (JAX's `unroll`).
    pub unroll: usize,
    /// For the backward loop of a binomially checkpointed loop: the body's
    /// first stacked inputs are the carries of `forward` at each step,
    /// recomputed from checkpoints rather than stored (see [`Regen`]).
    pub regen: Option<Regen>,
}

/// States a loop reads that another loop computes again on demand: the
/// body's first `forward.n_carry` stacked inputs are `forward`'s carry
/// at the start of each step, not operands; `forward`'s operands
/// (consts, initial carry, xs) follow this loop's own. The loop runs in
/// the other direction from `forward`. The compiled loop keeps `slots`
/// states and recomputes the rest under the binomial schedule
/// (`wengert_runtime::revolve`); its results are those of the loop that
/// reads a stored trajectory, bit for bit.
#[derive(Clone, Debug)]
pub struct Regen {
    pub forward: Arc<Scan>,
    /// Saved states, counting the initial one (at least 1).
    pub slots: usize,
    /// When non-zero, the schedule stores the state before every
    /// `every`-th step instead (and the states of the segment being
    /// reversed): `slots` is then unused.
    pub every: usize,
}

impl Regen {
    /// The states a schedule over `length` steps keeps at once: `slots`,
    /// or under `every` the checkpoints before every `every`-th step and
    /// the states of the segment being reversed, `⌈T/k⌉ + k − 1`.
    pub fn slot_count(&self, length: usize) -> usize {
        if self.every > 0 {
            every_slots(length, self.every)
        } else {
            self.slots.max(1)
        }
    }
}

/// The states the "every `k` steps" reversal of `l` steps keeps at once
/// (see `wengert_runtime::revolve::reverse_every`): `⌈l/k⌉ + k − 1`.
pub fn every_slots(l: usize, k: usize) -> usize {
    let k = k.max(1);
    (l.div_ceil(k) + k - 1).max(1)
}

impl Scan {
    /// How many stacked inputs the body reads (including recomputed
    /// states, see [`Regen`]).
    pub fn n_xs(&self) -> usize {
        self.body.inputs().len().saturating_sub(self.n_consts + self.n_carry)
    }

    /// How many of the body's stacked inputs are recomputed states.
    pub fn n_regen(&self) -> usize {
        self.regen.as_ref().map_or(0, |r| r.forward.n_carry)
    }

    /// How many stacked results (`ys`) the loop writes.
    pub fn n_ys(&self) -> usize {
        self.body.outputs().len().saturating_sub(self.n_carry)
    }

    /// The number of operands: consts, initial carry, xs (then, with
    /// [`Regen`], the forward loop's operands).
    pub fn n_operands(&self) -> usize {
        self.body.inputs().len() - self.n_regen().min(self.body.inputs().len())
            + self.regen.as_ref().map_or(0, |r| r.forward.n_operands())
    }

    /// For each body input, the operand that feeds it (`None` for a
    /// recomputed state).
    pub fn operand_of_input(&self) -> Vec<Option<usize>> {
        let first_regen = self.n_consts + self.n_carry;
        let n = self.n_regen();
        (0..self.body.inputs().len())
            .map(|k| {
                if k < first_regen {
                    Some(k)
                } else if k < first_regen + n {
                    None
                } else {
                    Some(k - n)
                }
            })
            .collect()
    }

    /// The number of results: final carry, then ys.
    pub fn n_results(&self) -> usize {
        self.body.outputs().len()
    }

    /// The type of each result: the carry's types, then each `y_t`'s type
    /// stacked on a leading axis of `length`.
    pub fn result_types(&self) -> Vec<TensorType> {
        let outs = self.body.outputs();
        outs.iter()
            .enumerate()
            .map(|(i, o)| {
                let ty = self.body.ty(o.node);
                if i < self.n_carry {
                    ty.clone()
                } else {
                    let mut shape = vec![self.length];
                    shape.extend_from_slice(&ty.shape);
                    TensorType::new(ty.dtype, shape)
                }
            })
            .collect()
    }

    /// The byte offset of each result in the scan's value and the value's
    /// size in bytes, or `None` if it overflows.
    pub fn layout(&self) -> Option<(Vec<usize>, usize)> {
        let mut offsets = Vec::new();
        let mut end = 0usize;
        for ty in self.result_types() {
            offsets.push(end);
            let bytes = crate::types::checked_elements(&ty.shape)?.checked_mul(ty.dtype.size_bytes())?;
            end = end.checked_add(bytes.checked_next_multiple_of(RESULT_ALIGN)?)?;
        }
        Some((offsets, end))
    }

    /// The type of the scan node's own value: the byte buffer holding
    /// every result (see the module documentation).
    pub fn value_type(&self) -> Option<TensorType> {
        Some(TensorType::new(DType::Bool, vec![self.layout()?.1]))
    }

    /// How many levels of loops this loop holds, itself included (a loop
    /// whose body has no loop: 1), found without recursion.
    pub fn nesting_depth(&self) -> usize {
        let mut deepest = 1;
        let mut stack: Vec<(&Graph, usize)> = vec![(&self.body, 1)];
        if let Some(r) = &self.regen {
            stack.push((&r.forward.body, 1));
        }
        while let Some((g, depth)) = stack.pop() {
            deepest = deepest.max(depth);
            if depth > MAX_NESTING {
                break;
            }
            for id in g.node_ids() {
                if let crate::op::Op::Scan(inner) = g.op(id) {
                    stack.push((&inner.body, depth + 1));
                    if let Some(r) = &inner.regen {
                        stack.push((&r.forward.body, depth + 1));
                    }
                }
            }
        }
        deepest
    }

    /// Checks the body against the operand types `args` and itself: the
    /// counts add up, consts and carry have the body's input types, each
    /// `xs` is `[length, …x_t]`, and the next carry has exactly the carry's
    /// types (the message names the mismatching entry).
    pub fn check(&self, args: &[&TensorType]) -> Result<(), String> {
        let ins = self.body.inputs();
        let outs = self.body.outputs();
        if self.nesting_depth() > MAX_NESTING {
            return Err(format!("loops nest more than {MAX_NESTING} deep"));
        }
        if self.n_consts + self.n_carry > ins.len() {
            return Err(format!(
                "`scan` declares {} consts and {} carries but its body has {} inputs",
                self.n_consts,
                self.n_carry,
                ins.len()
            ));
        }
        if self.n_carry > outs.len() {
            return Err(format!(
                "`scan` declares {} carries but its body has {} outputs",
                self.n_carry,
                outs.len()
            ));
        }
        let own = ins.len() - self.n_regen().min(ins.len());
        if args.len() != self.n_operands() {
            return Err(format!(
                "`scan` takes {} operands (consts, initial carry, xs: the body's inputs{}), got {}",
                self.n_operands(),
                if self.regen.is_some() {
                    ", then the recomputed loop's operands"
                } else {
                    ""
                },
                args.len()
            ));
        }
        if let Some(regen) = &self.regen {
            let f = &regen.forward;
            if f.length != self.length || f.reverse == self.reverse {
                return Err("`scan` recomputes the states of a loop of another length or the same direction".into());
            }
            if regen.slots == 0 && regen.every == 0 {
                return Err("`scan` recomputing states needs at least one slot".into());
            }
            if self.n_consts + self.n_carry + f.n_carry > ins.len() {
                return Err("`scan` body has fewer stacked inputs than recomputed states".into());
            }
            f.check(&args[own..])?;
            for k in 0..f.n_carry {
                let (state, input) = (
                    &f.body.inputs()[f.n_consts + k].ty,
                    &ins[self.n_consts + self.n_carry + k],
                );
                if *state != input.ty {
                    return Err(format!(
                        "`scan` body input %{} ({}) reads recomputed carry {k} of type {state}",
                        input.name, input.ty
                    ));
                }
            }
        }
        for (k, (input, operand)) in ins.iter().zip(self.operand_of_input()).enumerate() {
            let Some(operand) = operand else { continue };
            let arg = args[operand];
            let expected = if k < self.n_consts + self.n_carry {
                input.ty.clone()
            } else {
                let mut shape = vec![self.length];
                shape.extend_from_slice(&input.ty.shape);
                TensorType::new(input.ty.dtype, shape)
            };
            if *arg != expected {
                let role = if k < self.n_consts {
                    "const"
                } else if k < self.n_consts + self.n_carry {
                    "initial carry"
                } else {
                    "stacked xs"
                };
                return Err(format!(
                    "`scan` operand {operand} ({role} for body input %{}) is {arg}, expected {expected}",
                    input.name
                ));
            }
        }
        for k in 0..self.n_carry {
            let carry = &ins[self.n_consts + k];
            let next = &outs[k];
            let next_ty = self.body.ty(next.node);
            if *next_ty != carry.ty {
                return Err(format!(
                    "`scan` body's next carry {k} (output `{}`) is {next_ty}, but carry %{} is {}",
                    next.name, carry.name, carry.ty
                ));
            }
        }
        if self.layout().is_none() {
            return Err("`scan` results are larger than memory".into());
        }
        Ok(())
    }
}
