#!/usr/bin/env python3
"""PyTorch (CPU) timings of issue #15's workloads, for same-machine ratios
in BENCHMARKS.md. Not part of CI: nothing in the crate depends on it.

    pip install torch            # the PyPI wheel (it brings ~3 GB of CUDA
                                 # libraries it needs to import; CPU is used)
    python benches/torch/bench_torch.py

Workloads, as in benches/threads.rs and ../jax/bench_jax.py (`threads`):
value and gradient per step of
- the MLP 784-256-10, ReLU, mean softmax cross-entropy, f32, gradient of
  W1, b1, W2, b2, B = 32, 128, 1024;
- the 64-layer chain h <- tanh(h W_i), 512², batch 64, loss sum(h),
  gradient of the 64 weights;
each in eager mode (`loss.backward()`) and under `torch.compile` (Inductor;
its forward and backward graphs through AOTAutograd), with
`torch.set_num_threads(1)` and `(2)`. Medians of single calls after warm-up.
"""

import json
import os
import platform
import sys

import numpy as np
import torch

# Timing, formatting and the workloads' data are the JAX script's, so the
# two measure alike.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "jax"))
from bench_jax import fmt, one_hot_rows, rng_arrays, time_calls  # noqa: E402


def arrays(shapes, seed, scale_by_fan_in=False):
    return [torch.from_numpy(a) for a in rng_arrays(shapes, np.float32, seed, scale_by_fan_in)]


def mlp(batch):
    w1, b1, w2, b2 = arrays([(784, 256), (256,), (256, 10), (10,)], 1)
    (x,) = arrays([(batch, 784)], 2)
    t = torch.from_numpy(one_hot_rows(batch, 10, np.float32))
    params = [p.requires_grad_() for p in (w1, b1, w2, b2)]

    def loss(W1, B1, W2, B2, x, t):
        h = torch.relu(x @ W1 + B1)
        logits = h @ W2 + B2
        return torch.mean(-torch.sum(t * torch.log_softmax(logits, dim=-1), dim=-1))

    return loss, params, (x, t)


def chain():
    (x,) = arrays([(64, 512)], 11, True)
    ws = [w.requires_grad_() for w in arrays([(512, 512)] * 64, 12, True)]

    def loss(*args):
        *ws, x = args
        h = x
        for w in ws:
            h = torch.tanh(h @ w)
        return torch.sum(h)

    return loss, ws, (x,)


def step(f, params, data):
    def call():
        for p in params:
            p.grad = None
        out = f(*params, *data)
        out.backward()
        return out

    return call


def main():
    env = {
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }
    print("# " + json.dumps(env), flush=True)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for mode in ("eager", "compile"):
            cases = [(f"mlp_{b}", *mlp(b)) for b in (32, 128, 1024)] + [("chain64", *chain())]
            for name, loss, params, data in cases:
                f = torch.compile(loss) if mode == "compile" else loss
                (q1, med, q3), n = time_calls(step(f, params, data), warmup=5 if mode == "eager" else 8, budget=2.0)
                print(
                    f"{threads}T {mode:<8} {name:<10} median {fmt(med):>10}   quartiles {fmt(q1)} .. {fmt(q3)} ({n} calls)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
