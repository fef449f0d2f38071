"""Writes tanh_reference.txt: x and tanh(x) to 40 digits as a double-double
(hi, lo: hi = tanh(x) rounded to f64, lo the rest rounded), for x in the
polynomial branch of `wengert_ir::math::tanh_f64` (0 < x < 0.625: uniform,
near 0.625, near 0) and the exponential branch (0.625 ≤ x < 20). Run with
mpmath installed: `python3 tanh_reference.py > tanh_reference.txt`."""
import random
import mpmath as mp

mp.mp.dps = 40
rng = random.Random(2026)
xs = [rng.uniform(0, 0.625) for _ in range(900)]
xs += [0.625 - rng.uniform(0, 1e-3) for _ in range(100)]
xs += [10 ** rng.uniform(-12, -1) for _ in range(100)]
xs += [rng.uniform(0.625, 20) for _ in range(400)]
for x in xs:
    t = mp.tanh(mp.mpf(x))
    hi = float(t)
    lo = float(t - mp.mpf(hi))
    print(repr(x), repr(hi), repr(lo))
