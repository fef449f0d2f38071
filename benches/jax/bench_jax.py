#!/usr/bin/env python3
"""JAX (jax.jit, CPU) timings of the workloads of wengert's criterion benches,
for same-machine ratios in BENCHMARKS.md. Not part of CI; see README.md.

Each workload mirrors a bench in ../ (shapes, dtypes, what is differentiated,
what is returned); the values only need to be of the right scale (small, so
that tanh does not saturate), so they come from numpy, not the benches'
generators.

    python bench_jax.py suite            # the whole thing: spawns the runs below
    python bench_jax.py run --groups mlp,forward,train,char_rnn,chain,rnn,compile
    python bench_jax.py run --x64 --groups case8,seed
    python bench_jax.py run --groups threads

`suite` runs the first two under `taskset -c 0` with
XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
(one thread) and the third with neither (all cores).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ONE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
F32_GROUPS = "mlp,forward,train,char_rnn,chain,rnn,compile"
F64_GROUPS = "case8,seed"
THREAD_GROUPS = "threads"


# --------------------------------------------------------------------------
# timing


def _block(out):
    import jax

    jax.block_until_ready(out)
    return out


def fmt(s):
    if s >= 1.0:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    if s >= 1e-6:
        return f"{s * 1e6:.2f} µs"
    return f"{s * 1e9:.1f} ns"


def quartiles(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 4], statistics.median(xs), xs[(3 * n) // 4]


def time_calls(call, warmup=5, budget=1.5, min_calls=21, max_calls=5000):
    """Median (and quartiles) of single calls of `call()` (which must block),
    after `warmup` calls; at least `min_calls`, then until `budget` seconds."""
    budget *= BUDGET_SCALE
    for _ in range(warmup):
        call()
    ts = []
    start = time.perf_counter()
    while len(ts) < min_calls or (time.perf_counter() - start < budget and len(ts) < max_calls):
        t = time.perf_counter()
        call()
        ts.append(time.perf_counter() - t)
    return quartiles(ts), len(ts)


def alternating_ratio(a, b, n=21):
    """Median of n alternating timings of a() over b() (as the benches do)."""
    r = []
    for _ in range(n):
        t = time.perf_counter()
        a()
        ta = time.perf_counter() - t
        t = time.perf_counter()
        b()
        r.append(ta / (time.perf_counter() - t))
    return quartiles(r)


RESULTS = []
BUDGET_SCALE = 1.0  # `run --quick` sets 0 (21 calls each): a smoke test


def report(name, q, n=None, note=""):
    lo, med, hi = q
    RESULTS.append({"name": name, "median_s": med, "q1_s": lo, "q3_s": hi, "calls": n, "note": note})
    extra = f" ({n} calls)" if n else ""
    print(f"{name:<52} median {fmt(med):>11}   quartiles {fmt(lo)} .. {fmt(hi)}{extra} {note}", flush=True)


def report_ratio(name, q):
    lo, med, hi = q
    RESULTS.append({"name": name, "ratio_median": med, "ratio_q1": lo, "ratio_q3": hi})
    print(f"{name:<52} ratio  {med:.3f}   quartiles {lo:.3f} .. {hi:.3f} (21 alternating calls)", flush=True)


def report_compile(name, lower_s, compile_s, first_call_s=None):
    RESULTS.append({"name": name, "lower_s": lower_s, "compile_s": compile_s, "first_call_s": first_call_s})
    fc = f", first call of a fresh jit (trace+compile+run) {fmt(first_call_s)}" if first_call_s is not None else ""
    print(f"{name:<52} lower {fmt(lower_s)}, compile {fmt(compile_s)}{fc}", flush=True)


# --------------------------------------------------------------------------
# workloads


def rng_arrays(shapes, dtype, seed, scale_by_fan_in=False):
    import numpy as np

    rs = np.random.default_rng(seed)
    out = []
    for s in shapes:
        scale = 1.0 / np.sqrt(s[-1]) if (scale_by_fan_in and len(s) >= 2) else 0.1
        out.append(((rs.random(s) - 0.5) * scale).astype(dtype))
    return out


def one_hot_rows(rows, k, dtype):
    """benches/common.rs's one-hot: row r has its 1 at r % k."""
    import numpy as np

    t = np.zeros((rows, k), dtype=dtype)
    t[np.arange(rows), np.arange(rows) % k] = 1
    return t


def mlp_setup(batch, seed=1):
    """models::mlp(batch, 784, 256, 10, f32): loss = mean softmax CE of
    ReLU(x W1 + b1) W2 + b2 against one-hot t; params (W1, b1, W2, b2)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    w1, b1, w2, b2 = rng_arrays([(784, 256), (256,), (256, 10), (10,)], np.float32, seed)
    (x,) = rng_arrays([(batch, 784)], np.float32, seed + 1)
    t = one_hot_rows(batch, 10, np.float32)
    params = tuple(jax.device_put(a) for a in (w1, b1, w2, b2))
    x, t = jax.device_put(x), jax.device_put(t)

    def loss(p, x, t):
        W1, B1, W2, B2 = p
        h = jax.nn.relu(x @ W1 + B1)
        logits = h @ W2 + B2
        return jnp.mean(-jnp.sum(t * jax.nn.log_softmax(logits, axis=-1), axis=-1))

    return loss, params, x, t


def g_mlp(batches=(32, 128, 1024), prefix="mlp_step/value_and_grad"):
    import jax

    for b in batches:
        loss, p, x, t = mlp_setup(b)
        f = jax.jit(jax.value_and_grad(loss))
        q, n = time_calls(lambda: _block(f(p, x, t)))
        report(f"{prefix}/{b}", q, n)


def g_forward():
    """benches/forward.rs: JVP along one direction of all four params beside
    the forward value; HVP (forward over reverse: outputs grad and H·v)
    beside value_and_grad. B = 32, 128."""
    import jax
    import numpy as np

    for b in (32, 128):
        loss, p, x, t = mlp_setup(b)
        v = tuple(jax.device_put(a) for a in rng_arrays([a.shape for a in p], np.float32, 7))
        value = jax.jit(loss)
        tangent = jax.jit(lambda p, v, x, t: jax.jvp(lambda q: loss(q, x, t), (p,), (v,)))
        grad = jax.jit(jax.value_and_grad(loss))
        hvp = jax.jit(lambda p, v, x, t: jax.jvp(lambda q: jax.grad(loss)(q, x, t), (p,), (v,)))
        cv = lambda: _block(value(p, x, t))
        cj = lambda: _block(tangent(p, v, x, t))
        cg = lambda: _block(grad(p, x, t))
        ch = lambda: _block(hvp(p, v, x, t))
        for c in (cv, cj, cg, ch):
            for _ in range(5):
                c()
        report_ratio(f"forward_mode/jvp_over_value/mlp_{b}", alternating_ratio(cj, cv))
        report_ratio(f"forward_mode/hvp_over_value_and_grad/mlp_{b}", alternating_ratio(ch, cg))
        for name, c in (("value", cv), ("jvp", cj), ("grad", cg), ("hvp", ch)):
            q, n = time_calls(c)
            report(f"forward_mode/{name}/mlp_{b}", q, n)


def adam_bench(name, loss, params, data, budget=1.5):
    """benches/train.rs: the jitted step (value_and_grad, clip by global
    norm 1.0, Adam lr 1e-4, params and state donated) against the gradient
    alone; ratio as the median of 21 alternating calls."""
    import jax
    import optax

    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-4))

    def step(p, s, *d):
        l, g = jax.value_and_grad(loss)(p, *d)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, l

    step = jax.jit(step, donate_argnums=(0, 1))
    grad = jax.jit(jax.value_and_grad(loss))
    gp = jax.tree_util.tree_map(lambda a: a.copy(), params)  # the gradient's own copy
    state = {"p": params, "s": opt.init(params)}

    def cs():
        p, s, l = step(state["p"], state["s"], *data)
        state["p"], state["s"] = p, s
        _block((p, s, l))

    cg = lambda: _block(grad(gp, *data))
    for _ in range(5):
        cs()
        cg()
    report_ratio(f"train_step/{name}/adam_step_over_grad", alternating_ratio(cs, cg))
    q, n = time_calls(cg, budget=budget)
    report(f"train_step/{name}/grad", q, n)
    q, n = time_calls(cs, budget=budget)
    report(f"train_step/{name}/adam_step", q, n)


def g_train():
    loss, p, x, t = mlp_setup(128)
    adam_bench("mlp_128", loss, p, (x, t))


def g_char_rnn():
    """models::char_rnn(256, 32, 63, 256): h <- tanh(x W_xh + h W_hh + b_h),
    logits h W_hy + b_y, softmax CE per step, mean over steps and batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    T, B, V, H = 256, 32, 63, 256
    params = tuple(
        jax.device_put(a) for a in rng_arrays([(V, H), (H, H), (H,), (H, V), (V,)], np.float32, 3)
    )
    xs = np.zeros((T, B, V), np.float32)
    for s in range(T):
        xs[s] = one_hot_rows(B, V, np.float32)  # as common.rs: position-based one-hot
    xs = jax.device_put(xs)
    ts = jax.device_put(np.roll(np.asarray(xs), 1, axis=-1))
    h0 = jax.device_put(np.zeros((B, H), np.float32))

    def loss(p, h0, xs, ts):
        wxh, whh, bh, why, by = p

        def body(h, xt):
            x, t = xt
            h1 = jnp.tanh(x @ wxh + h @ whh + bh)
            logits = h1 @ why + by
            ce = jnp.mean(-jnp.sum(t * jax.nn.log_softmax(logits, axis=-1), axis=-1))
            return h1, ce

        _, ces = jax.lax.scan(body, h0, (xs, ts))
        return jnp.mean(ces)

    adam_bench("char_rnn", loss, params, (h0, xs, ts), budget=3.0)


def chain_setup(stacked):
    """models::tanh_chain(64, 64, 512, f32) (64 separate W_i) or
    tanh_chain_scan (stacked W [64, 512, 512], lax.scan); loss = sum(h);
    gradient of the weights (x is data)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    L, B, W = 64, 64, 512
    (x,) = rng_arrays([(B, W)], np.float32, 11, scale_by_fan_in=True)
    ws = rng_arrays([(W, W)] * L, np.float32, 12, scale_by_fan_in=True)
    x = jax.device_put(x)
    if stacked:
        p = jax.device_put(np.stack(ws))

        def loss(p, x):
            h, _ = jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, p)
            return jnp.sum(h)

    else:
        p = tuple(jax.device_put(w) for w in ws)

        def loss(p, x):
            h = x
            for w in p:
                h = jnp.tanh(h @ w)
            return jnp.sum(h)

    return loss, p, x


def g_chain(prefix="chain"):
    import jax

    for stacked, name in ((False, "unrolled_64x512"), (True, "scan_64x512")):
        loss, p, x = chain_setup(stacked)
        f = jax.jit(jax.value_and_grad(loss))
        q, n = time_calls(lambda: _block(f(p, x)), warmup=3, budget=3.0)
        report(f"{prefix}/{name}", q, n)


def rnn_setup(T, H=64):
    """models::rnn(T, 64, f32, looped): h <- tanh(W h + b + x_t) from h0 over
    xs [T, H] (data), loss = sum(h_T); gradient of W, b, h0."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    w, b, h0 = rng_arrays([(H, H), (H,), (H,)], np.float32, 21, scale_by_fan_in=True)
    (xs,) = rng_arrays([(T, H)], np.float32, 22, scale_by_fan_in=True)
    p = tuple(jax.device_put(a) for a in (w, b, h0))
    xs = jax.device_put(xs)

    def loss(p, xs):
        W, B, h0 = p
        h, _ = jax.lax.scan(lambda h, x: (jnp.tanh(W @ h + B + x), None), h0, xs)
        return jnp.sum(h)

    return loss, p, xs


def g_rnn():
    import jax

    for T in (100, 1000):
        loss, p, xs = rnn_setup(T)
        f = jax.jit(jax.value_and_grad(loss))
        q, n = time_calls(lambda: _block(f(p, xs)))
        report(f"rnn/scan_T{T}", q, n)


def compile_times(name, make, reps=3):
    """Lower and compile a fresh jit of a fresh closure `reps` times (a new
    closure each time, so no tracing or executable cache is hit); medians.
    Also the first call of another fresh jit (trace + compile + run)."""
    import jax

    lows, comps = [], []
    for _ in range(reps):
        f, args = make()
        t = time.perf_counter()
        lowered = jax.jit(f).lower(*args)
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
        lows.append(t1 - t)
        comps.append(t2 - t1)
    f, args = make()
    t = time.perf_counter()
    _block(jax.jit(f)(*args))
    first = time.perf_counter() - t
    report_compile(name, statistics.median(lows), statistics.median(comps), first)


def g_compile():
    import jax

    def mlp_make():
        loss, p, x, t = mlp_setup(128)
        return (lambda p, x, t: jax.value_and_grad(loss)(p, x, t)), (p, x, t)

    compile_times("compile/mlp_value_and_grad (B = 128)", mlp_make)
    for T in (100, 1000, 100_000):

        def rnn_make(T=T):
            loss, p, xs = rnn_setup(T)
            return (lambda p, xs: jax.value_and_grad(loss)(p, xs)), (p, xs)

        compile_times(f"compile/rnn_scan_T{T}", rnn_make)
    # The long loop's run time too (the loop_memory example's SaveAll row).
    loss, p, xs = rnn_setup(100_000)
    f = jax.jit(jax.value_and_grad(loss))
    q, n = time_calls(lambda: _block(f(p, xs)), warmup=2, budget=2.0, min_calls=7)
    report("rnn/scan_T100000 (value and gradient)", q, n)


# ----- f64 (run with --x64) -----


def case8_setup(T):
    """models::scalar_recurrence(T, looped): h_0 = x, h <- tanh(a h + b),
    L = h_T, f64 scalars; gradient of a, b, x."""
    import jax
    import jax.numpy as jnp

    a, b, x = (jnp.asarray(v, dtype=jnp.float64) for v in (0.3, 0.1, 0.2))

    def loss(a, b, x):
        h, _ = jax.lax.scan(lambda h, _: (jnp.tanh(a * h + b), None), x, None, length=T)
        return h

    return loss, (a, b, x)


def g_case8():
    import jax

    loss, args = case8_setup(1000)
    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    q, n = time_calls(lambda: _block(f(*args)))
    report("case8/scan_T1000", q, n)
    for T in (100, 1000, 100_000):

        def make(T=T):
            l, a = case8_setup(T)
            return (lambda *a: jax.value_and_grad(l, argnums=(0, 1, 2))(*a)), a

        compile_times(f"compile/case8_scan_T{T}", make)


def g_seed():
    """Seed cases 1-4 (f64 scalars) through jax.jit(value_and_grad): the
    per-call dispatch floor, for context against jit_call_into."""
    import jax
    import jax.numpy as jnp

    x1, x2 = jnp.asarray(0.7), jnp.asarray(1.7)
    cases = {
        1: (lambda a: jnp.log(1 + a * a), (x1,)),
        2: (lambda a: a * a + jnp.sin(a * a), (x1,)),
        3: (lambda a, b: a * b + jnp.sin(a), (x1, x2)),
    }
    for k, (fn, args) in cases.items():
        f = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(args)))))
        q, n = time_calls(lambda: _block(f(*args)), budget=1.0)
        report(f"seed_grad/case{k}", q, n)

    # Case 4: outputs y1 = x1 x2, y2 = x1 + x2², and their VJP with u = (1, 1).
    def case4(a, b):
        y, vjp = jax.vjp(lambda a, b: (a * b, a + b * b), a, b)
        return y, vjp((jnp.ones_like(a), jnp.ones_like(a)))

    f = jax.jit(case4)
    q, n = time_calls(lambda: _block(f(x1, x2)), budget=1.0)
    report("seed_grad/case4", q, n)


def g_threads():
    """benches/threads.rs's workloads (run with all cores)."""
    g_mlp(prefix="step/mlp")
    import jax

    loss, p, x = chain_setup(False)
    f = jax.jit(jax.value_and_grad(loss))
    q, n = time_calls(lambda: _block(f(p, x)), warmup=3, budget=3.0)
    report("step/chain64", q, n)
    loss, p, x = chain_setup(True)
    f = jax.jit(jax.value_and_grad(loss))
    q, n = time_calls(lambda: _block(f(p, x)), warmup=3, budget=3.0)
    report("step/chain64 as lax.scan", q, n)


GROUPS = {
    "mlp": g_mlp,
    "forward": g_forward,
    "train": g_train,
    "char_rnn": g_char_rnn,
    "chain": g_chain,
    "rnn": g_rnn,
    "compile": g_compile,
    "case8": g_case8,
    "seed": g_seed,
    "threads": g_threads,
}


def environment():
    import jax
    import jaxlib
    import numpy
    import optax

    model, avx512 = "?", False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "?":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    avx512 = " avx512f " in f" {line.split(':', 1)[1]} "
    except OSError:
        pass
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "optax": optax.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "cpu": model,
        "avx512f": avx512,
        "os_cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "x64": bool(jax.config.jax_enable_x64),
        "devices": [str(d) for d in jax.devices()],
    }


def run(args):
    if args.x64:
        import jax

        jax.config.update("jax_enable_x64", True)
    global BUDGET_SCALE
    if args.quick:
        BUDGET_SCALE = 0.0
    env = environment()
    print("# " + json.dumps(env), flush=True)
    for g in args.groups.split(","):
        GROUPS[g]()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": RESULTS}, f, indent=1)


def suite(args):
    me = os.path.abspath(__file__)
    one = dict(os.environ, XLA_FLAGS=ONE_THREAD_FLAGS)
    many = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    runs = [
        ("one thread, f32", ["taskset", "-c", "0", sys.executable, me, "run", "--groups", F32_GROUPS], one),
        ("one thread, f64", ["taskset", "-c", "0", sys.executable, me, "run", "--x64", "--groups", F64_GROUPS], one),
        ("all cores", [sys.executable, me, "run", "--groups", THREAD_GROUPS], many),
    ]
    for label, cmd, env in runs:
        print(f"\n## {label}: {' '.join(cmd)}" + (f"  (XLA_FLAGS={env['XLA_FLAGS']!r})" if "XLA_FLAGS" in env else ""), flush=True)
        subprocess.run(cmd, env=env, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run some groups in this process")
    r.add_argument("--groups", default=F32_GROUPS, help=f"comma-separated, of: {', '.join(GROUPS)}")
    r.add_argument("--x64", action="store_true", help="enable jax_enable_x64 (case8, seed)")
    r.add_argument("--json", help="also write the results here")
    r.add_argument("--quick", action="store_true", help="21 timed calls per workload, a smoke test")
    sub.add_parser("suite", help="the one-thread f32 and f64 runs and the all-cores run")
    args = ap.parse_args()
    (run if args.cmd == "run" else suite)(args)


if __name__ == "__main__":
    main()
