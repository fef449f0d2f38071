//! Binomial checkpointing (Griewank–Walther "Revolve") for loops: the
//! schedule, and the driver that runs a loop's adjoint under it.
//!
//! Reversing `l` steps with `c` slots for saved states (the slot of the
//! state the reversal starts from counts), the optimal schedule advances
//! `m` steps from the saved state, saves the state there, reverses the
//! last `l − m` steps with `c − 1` slots and then the first `m` with `c`.
//! With `r` the least integer such that `C(c+r, c) ≥ l`, it advances
//! `r·l − C(c+r, c+1)` steps in total, the fewest possible, when `m` obeys
//! the split rule of [`split`] (derived in `shared/research/scan.md`:
//! `O(c)` integer arithmetic, no table).

/// `C(n, k)`, saturating at `u64::MAX`.
pub fn binomial(n: u64, k: u64) -> u64 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut r: u128 = 1;
    for i in 0..k as u128 {
        r = r * (n as u128 - i) / (i + 1);
        if r > u64::MAX as u128 {
            return u64::MAX;
        }
    }
    r as u64
}

/// The repetition number: the least `r` with `C(c+r, c) ≥ l`.
pub fn repetitions(l: u64, c: u64) -> u64 {
    let c = c.max(1);
    let mut r = 0;
    while binomial(c + r, c) < l {
        r += 1;
    }
    r
}

/// The fewest steps a reversal of `l` steps with `c` slots advances:
/// `r·l − C(c+r, c+1)`.
pub fn min_advances(l: u64, c: u64) -> u64 {
    if l <= 1 {
        return 0;
    }
    let c = c.max(1);
    let r = repetitions(l, c);
    (r * l).saturating_sub(binomial(c + r, c + 1))
}

/// The first advance `m` of an optimal reversal of `l ≥ 2` steps with
/// `c ≥ 2` slots: the smallest `m` with
/// `max(l − C(c+r−1, c−1), C(c+r−2, c)) ≤ m ≤ min(C(c+r−1, c), l − C(c+r−2, c−1))`,
/// and 1 when `r < 2`.
pub fn split(l: u64, c: u64) -> u64 {
    let r = repetitions(l, c);
    if r < 2 || c < 2 {
        return 1;
    }
    let lo = l.saturating_sub(binomial(c + r - 1, c - 1)).max(binomial(c + r - 2, c));
    lo.clamp(1, l - 1)
}

/// Where a state is: a slot, or the working buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    Slot(usize),
    Work,
}

/// Runs the optimal reversal of steps `0..l` with `c` slots, whose slot 0
/// holds the state before step 0: `advance(from, t0, m, to)` runs steps
/// `t0..t0+m` from the state in slot `from` into `to`, and
/// `adjoint(t, at)` runs step `t`'s adjoint from its state at `at`, for
/// `t = l−1` down to 0, each once. No recursion (an explicit stack).
pub fn reverse<E>(
    l: usize,
    c: usize,
    mut advance: impl FnMut(usize, usize, usize, At) -> Result<(), E>,
    mut adjoint: impl FnMut(usize, At) -> Result<(), E>,
) -> Result<(), E> {
    // (t0, l, c, slot holding the state before step t0)
    let mut stack = vec![(0usize, l, c.max(1), 0usize)];
    while let Some((t0, l, c, slot)) = stack.pop() {
        match l {
            0 => {}
            1 => adjoint(t0, At::Slot(slot))?,
            _ if c == 1 => {
                for t in (t0 + 1..t0 + l).rev() {
                    advance(slot, t0, t - t0, At::Work)?;
                    adjoint(t, At::Work)?;
                }
                adjoint(t0, At::Slot(slot))?;
            }
            _ => {
                let m = split(l as u64, c as u64) as usize;
                advance(slot, t0, m, At::Slot(slot + 1))?;
                // The last l − m steps first (with one slot fewer), then
                // the first m.
                stack.push((t0, m, c, slot));
                stack.push((t0 + m, l - m, c - 1, slot + 1));
            }
        }
    }
    Ok(())
}

/// Words of the descriptor's header.
pub const HEADER: usize = 16;

/// A compiled loop body, called as every graph is: one pointer to its
/// array `[inputs…, outputs…, arena]`.
type BodyFn = unsafe extern "C" fn(*const *mut u8);

/// Reads the descriptor generated code writes for a binomially
/// checkpointed backward loop (all words `i64`):
///
/// ```text
/// 0 T   1 slots   2 forward runs reversed (0/1)   3 state bytes
/// 4 slots base    5 work A    6 work B
/// 7 forward body  8 its pointer array   9 backward body  10 its array
/// 11 forward carries nf   12 forward rows   13 backward carries nb   14 backward rows
/// 15 k of the every-k schedule (0: the binomial schedule over `slots`)
/// nf × [offset in the state, forward carry-in slot, carry-out slot, backward state slot]
/// forward rows × [array slot, base address, row bytes]
/// nb × [carry-in slot, carry-out slot, buffer A, buffer B, result address, bytes]
/// backward rows × [array slot, base address, row bytes]
/// ```
///
/// A "slot" of an array is an index into that body's pointer array; the
/// row of step `t` of a stacked input or output is at `base + t·bytes`
/// (a row of 0 bytes is a scratch row every step overwrites).
struct Desc<'a> {
    w: &'a [i64],
}

impl Desc<'_> {
    fn at(&self, i: usize) -> usize {
        self.w[i] as usize
    }
    fn ptr(&self, i: usize) -> *mut u8 {
        self.w[i] as usize as *mut u8
    }
}

/// Runs a loop's adjoint under the binomial schedule: slot 0 of the
/// slots holds the forward's initial state (generated code put it
/// there), and each backward carry's buffer A its initial value. Calls the
/// forward body to advance and the backward body for each step's adjoint
/// (steps in reverse order), then copies the backward carries to their
/// results.
///
/// # Safety
/// `desc` is a descriptor as documented above, written by generated code
/// for bodies with exactly these pointer arrays; every address covers what
/// the strides and counts say.
pub unsafe extern "C" fn wengert_revolve(desc: *const i64) {
    // The header says how long the descriptor is.
    let head = unsafe { std::slice::from_raw_parts(desc, HEADER) };
    let (nf, nfr, nb, nbr) = (
        head[11] as usize,
        head[12] as usize,
        head[13] as usize,
        head[14] as usize,
    );
    let len = HEADER + 4 * nf + 3 * nfr + 6 * nb + 3 * nbr;
    let d = Desc {
        w: unsafe { std::slice::from_raw_parts(desc, len) },
    };
    let t_len = d.at(0);
    let slots = d.at(1).max(1);
    let fwd_reversed = d.at(2) != 0;
    let state_bytes = d.at(3);
    let slot_base = d.ptr(4);
    let work = [d.ptr(5), d.ptr(6)];
    // SAFETY: generated code wrote the addresses of two compiled bodies.
    let (fwd, bwd) = unsafe {
        (
            std::mem::transmute::<*mut u8, BodyFn>(d.ptr(7)),
            std::mem::transmute::<*mut u8, BodyFn>(d.ptr(9)),
        )
    };
    let (fwd_array, bwd_array) = (d.ptr(8) as *mut *mut u8, d.ptr(10) as *mut *mut u8);
    let every = d.at(15);
    let fc = HEADER;
    let fr = fc + 4 * nf;
    let bc = fr + 3 * nfr;
    let br = bc + 6 * nb;
    let slot_ptr = |s: usize| unsafe { slot_base.add(s * state_bytes) };
    // Step order `i` (0 first) to row index `t`.
    let row = |i: usize| if fwd_reversed { t_len - 1 - i } else { i };
    let set = |array: *mut *mut u8, slot: usize, p: *mut u8| unsafe { *array.add(slot) = p };
    // One forward step `i` from state `src` into state `dst`.
    let step = |i: usize, src: *mut u8, dst: *mut u8| {
        let t = row(i);
        for k in 0..nf {
            let off = d.at(fc + 4 * k);
            set(fwd_array, d.at(fc + 4 * k + 1), unsafe { src.add(off) });
            set(fwd_array, d.at(fc + 4 * k + 2), unsafe { dst.add(off) });
        }
        for r in 0..nfr {
            let (slot, base, bytes) = (d.at(fr + 3 * r), d.ptr(fr + 3 * r + 1), d.at(fr + 3 * r + 2));
            set(fwd_array, slot, unsafe { base.add(t * bytes) });
        }
        unsafe { fwd(fwd_array as *const *mut u8) };
    };
    let state_at = |at: At| match at {
        At::Slot(s) => slot_ptr(s),
        At::Work => work[0],
    };
    let mut adjoints_done = 0usize;
    let schedule = |advance: &mut dyn FnMut(usize, usize, usize, At) -> Result<(), ()>,
                    adjoint: &mut dyn FnMut(usize, At) -> Result<(), ()>| {
        if every > 0 {
            reverse_every(t_len, every, advance, adjoint)
        } else {
            reverse(t_len, slots, advance, adjoint)
        }
    };
    let _ = schedule(
        &mut |from, t0, m, to| {
            // Advance m steps from slot `from` through the two work
            // buffers, then keep the state where it is wanted.
            unsafe { std::ptr::copy_nonoverlapping(slot_ptr(from), work[0], state_bytes) };
            for i in 0..m {
                step(t0 + i, work[0], work[1]);
                unsafe { std::ptr::copy_nonoverlapping(work[1], work[0], state_bytes) };
            }
            if let At::Slot(s) = to {
                unsafe { std::ptr::copy_nonoverlapping(work[0], slot_ptr(s), state_bytes) };
            }
            Ok(())
        },
        &mut |i, at| {
            let t = row(i);
            let state = state_at(at);
            for k in 0..nf {
                set(bwd_array, d.at(fc + 4 * k + 3), unsafe { state.add(d.at(fc + 4 * k)) });
            }
            // The backward carries alternate between their two buffers.
            let (cur, next) = if adjoints_done.is_multiple_of(2) {
                (2, 3)
            } else {
                (3, 2)
            };
            for k in 0..nb {
                let w = bc + 6 * k;
                set(bwd_array, d.at(w), d.ptr(w + cur));
                set(bwd_array, d.at(w + 1), d.ptr(w + next));
            }
            for r in 0..nbr {
                let (slot, base, bytes) = (d.at(br + 3 * r), d.ptr(br + 3 * r + 1), d.at(br + 3 * r + 2));
                set(bwd_array, slot, unsafe { base.add(t * bytes) });
            }
            unsafe { bwd(bwd_array as *const *mut u8) };
            adjoints_done += 1;
            Ok(())
        },
    );
    let last = if adjoints_done.is_multiple_of(2) { 2 } else { 3 };
    for k in 0..nb {
        let w = bc + 6 * k;
        unsafe { std::ptr::copy_nonoverlapping(d.ptr(w + last), d.ptr(w + 4), d.at(w + 5)) };
    }
}

/// How many states [`reverse_every`] keeps for `l` steps: one per
/// segment of `k` steps, and `k − 1` for the states inside the segment
/// being reversed.
///
/// It advances `(⌈T/k⌉ − 1)·k` steps to place the checkpoints (the forward
/// loop itself stores none) and `T − ⌈T/k⌉` inside the segments:
/// [`every_advances`].
pub use wengert_ir::scan::every_slots;

/// The steps [`reverse_every`] advances for `l` steps and segments of `k`.
pub fn every_advances(l: usize, k: usize) -> u64 {
    let k = k.max(1);
    let segments = l.div_ceil(k);
    (segments.saturating_sub(1) * k + l - segments) as u64
}

/// The reversal that stores the state before every `k`-th step (slot `s`
/// for step `s·k`), then per segment, last first, advances through the
/// segment keeping each state and runs its adjoints: memory
/// `(T/k + k − 1) × state`, [`every_advances`] steps advanced. The
/// callbacks are those of [`reverse`].
pub fn reverse_every<E>(
    l: usize,
    k: usize,
    mut advance: impl FnMut(usize, usize, usize, At) -> Result<(), E>,
    mut adjoint: impl FnMut(usize, At) -> Result<(), E>,
) -> Result<(), E> {
    let k = k.max(1);
    let segments = l.div_ceil(k);
    for s in 1..segments {
        advance(s - 1, (s - 1) * k, k, At::Slot(s))?;
    }
    for s in (0..segments).rev() {
        let t0 = s * k;
        let len = k.min(l - t0);
        // The state before step t0 + i (i ≥ 1) goes to slot segments + i − 1.
        let at = |i: usize| {
            if i == 0 {
                At::Slot(s)
            } else {
                At::Slot(segments + i - 1)
            }
        };
        for i in 1..len {
            let from = if i == 1 { s } else { segments + i - 2 };
            advance(from, t0 + i - 1, 1, at(i))?;
        }
        for i in (0..len).rev() {
            adjoint(t0 + i, at(i))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the advanced steps of a schedule and checks it: every
    /// adjoint once, in reverse order, from the right state.
    fn run(l: usize, c: usize) -> u64 {
        let slots = std::cell::RefCell::new(vec![None; c.max(1) + 1]);
        slots.borrow_mut()[0] = Some(0);
        let work = std::cell::Cell::new(None);
        let mut advanced = 0u64;
        let mut next_adjoint = l;
        reverse::<()>(
            l,
            c,
            |from, t0, m, to| {
                assert_eq!(
                    slots.borrow()[from],
                    Some(t0),
                    "advance from a slot that does not hold step {t0}"
                );
                advanced += m as u64;
                match to {
                    At::Slot(s) => slots.borrow_mut()[s] = Some(t0 + m),
                    At::Work => work.set(Some(t0 + m)),
                }
                Ok(())
            },
            |t, at| {
                let state = match at {
                    At::Slot(s) => slots.borrow()[s],
                    At::Work => work.get(),
                };
                assert_eq!(state, Some(t), "adjoint of step {t} from the wrong state");
                assert_eq!(t + 1, next_adjoint, "adjoints out of order");
                next_adjoint = t;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(next_adjoint, 0);
        advanced
    }

    #[test]
    fn every_k_keeps_its_slots_and_advances_each_step_at_most_twice() {
        for l in 0..60 {
            for k in 1..9 {
                let slots = std::cell::RefCell::new(vec![None; every_slots(l, k) + 1]);
                slots.borrow_mut()[0] = Some(0);
                let mut advanced = 0;
                let mut next = l;
                reverse_every::<()>(
                    l,
                    k,
                    |from, t0, m, to| {
                        assert_eq!(slots.borrow()[from], Some(t0));
                        let At::Slot(s) = to else {
                            panic!("every-k uses slots only")
                        };
                        assert!(s < every_slots(l, k), "slot {s} beyond {}", every_slots(l, k));
                        slots.borrow_mut()[s] = Some(t0 + m);
                        advanced += m;
                        Ok(())
                    },
                    |t, at| {
                        let At::Slot(s) = at else {
                            panic!("every-k uses slots only")
                        };
                        assert_eq!(slots.borrow()[s], Some(t));
                        assert_eq!(t + 1, next);
                        next = t;
                        Ok(())
                    },
                )
                .unwrap();
                assert_eq!(next, 0);
                assert_eq!(advanced as u64, every_advances(l, k), "l={l} k={k}");
                assert!(advanced <= 2 * l, "l={l} k={k}");
            }
        }
    }

    #[test]
    fn the_schedule_advances_exactly_the_closed_form() {
        for (l, c, expect) in [
            (1000, 10, 3636),
            (1000, 31, 2439),
            (1000, 44, 1954),
            (10, 2, 20),
            (7, 1, 21),
            (5, 5, 4),
            (1, 1, 0),
            (0, 3, 0),
        ] {
            assert_eq!(run(l, c), expect, "l={l} c={c}");
            assert_eq!(min_advances(l as u64, c as u64), expect, "closed form l={l} c={c}");
        }
        for c in 1..=12 {
            for l in 0..400 {
                assert_eq!(run(l, c), min_advances(l as u64, c as u64), "l={l} c={c}");
            }
        }
        for c in [2, 5, 10, 20] {
            assert_eq!(run(100_000, c), min_advances(100_000, c as u64), "l=100000 c={c}");
        }
    }
}
