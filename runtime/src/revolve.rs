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
    let lo = l
        .saturating_sub(binomial(c + r - 1, c - 1))
        .max(binomial(c + r - 2, c));
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
                assert_eq!(slots.borrow()[from], Some(t0), "advance from a slot that does not hold step {t0}");
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
    fn the_schedule_advances_exactly_the_closed_form() {
        for (l, c, expect) in [(1000, 10, 3636), (1000, 31, 2439), (1000, 44, 1954), (10, 2, 20), (7, 1, 21), (5, 5, 4), (1, 1, 0), (0, 3, 0)] {
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
