//! The maths of Griewank and Walther's binomial checkpointing (Revolve):
//! the minimal number of extra forward steps for a chain of `l` steps
//! and `c` slots, in closed form and by the dynamic program, and the
//! optimal first split. `revolve` (the rewrite) and `checkpoint` (the
//! policies) both use it; it uses neither.

/// Binomial coefficient C(n, k), saturating.
fn binomial(n: u64, k: u64) -> u64 {
    let k = k.min(n - k.min(n));
    let mut r: u64 = 1;
    for i in 0..k {
        r = r.saturating_mul(n - i) / (i + 1);
    }
    r
}

/// The minimum number of extra forward steps to reverse a chain of `l`
/// steps with `c` checkpoint slots (Griewank–Walther): with `r` the least
/// integer such that C(c+r, c) ≥ l, it is `r·l − C(c+r, c+1)`.
pub fn revolve_min_extra_steps(l: u64, c: u64) -> u64 {
    if l <= 1 {
        return 0;
    }
    let c = c.max(1);
    let mut r = 0;
    while binomial(c + r, c) < l {
        r += 1;
    }
    r * l - binomial(c + r, c + 1)
}

/// The same number by the dynamic program F(l, c) = min over j of
/// [j + F(l−j, c−1) + F(j, c)], F(l, 1) = l(l−1)/2, F(1, c) = 0, which also
/// yields the split points of the schedule.
pub fn revolve_extra_steps(l: usize, c: usize) -> u64 {
    let c = c.max(1);
    let mut f = vec![vec![0u64; c + 1]; l + 1];
    for (n, row) in f.iter_mut().enumerate().skip(1) {
        row[1] = (n as u64) * (n as u64 - 1) / 2;
    }
    for slots in 2..=c {
        for n in 2..=l {
            f[n][slots] = (1..n)
                .map(|j| j as u64 + f[n - j][slots - 1] + f[j][slots])
                .min()
                .unwrap_or(0);
        }
    }
    f[l][c]
}

/// The optimal first advance when reversing `n` steps with `c ≥ 2` slots:
/// the first j in 1..n minimizing g(j) = j + F(n − j, c − 1) + F(j, c), F
/// the optimal extra-step count ([`revolve_min_extra_steps`], the dynamic
/// program's closed form). F(·, c) is convex (piecewise linear, its slope
/// the repetition number, which only grows), so g is convex and a binary
/// search on g(j + 1) − g(j) finds that j in O(log n) evaluations, where
/// the dynamic program's table took O(c·l²) time and O(c·l) memory. The
/// first minimizer is also what the table chose.
pub fn split(n: usize, c: usize) -> usize {
    let f = |n: usize, c: usize| revolve_min_extra_steps(n as u64, c as u64);
    let g = |j: usize| j as u64 + f(n - j, c - 1) + f(j, c);
    let (mut lo, mut hi) = (1, n.saturating_sub(1).max(1));
    while lo < hi {
        let mid = (lo + hi) / 2;
        if g(mid + 1) >= g(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}
