"""Where a training step's time goes, beside the machine's matrix-product rate, in one process.

    python docs/experiments/profile_step.py [--threads 2]

1. The machine's fp32 GEMM rate: a large square product, and the catalogue softmax's three
   products at batch 256, 9,066 items, dimension 64 (forward ``v @ E.T``, backward ``g @ E`` and
   ``g.T @ v``), each as GFLOP/s.
2. ms per step of the default configuration (`ganrec_dist.bench.common.random_step`: the
   project's G and D, ``gan.train_step`` and the weight average, random batches) and of the same
   step without the game (``adv_weight 0``) and with the game on every row (``d_rows 0``),
   alternating, median of 5 rounds of 20 steps.
3. torch.profiler's top ops by their own CPU time over 30 default steps.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from ganrec_dist.bench.common import cpu_model, random_step
from ganrec_dist.core.config import TrainConfig, build

N_ITEMS, N_USERS, BATCH, DIM = 9066, 671, 256, 64


def gflops(flops: float, fn, repeats: int = 20) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return flops * repeats / (time.perf_counter() - start) / 1e9


def gemm_rates() -> dict[str, float]:
    big = torch.randn(2048, 2048)
    v, table, g = torch.randn(BATCH, DIM), torch.randn(N_ITEMS, DIM), torch.randn(BATCH, N_ITEMS)
    softmax = 2.0 * BATCH * DIM * N_ITEMS
    return {
        "2048 x 2048 x 2048": gflops(2.0 * 2048**3, lambda: big @ big),
        "forward v @ E.T": gflops(softmax, lambda: v @ table.T),
        "backward g @ E": gflops(softmax, lambda: g @ table),
        "backward g.T @ v": gflops(softmax, lambda: g.T @ v),
    }


def step_times(rounds: int = 5, steps: int = 20) -> dict[str, float]:
    variants = {
        "default": {},
        "no game (adv_weight 0)": {"adv_weight": 0.0},
        "game on every row (d_rows 0)": {"d_rows": 0},
    }
    from step_time import alternating_ms  # this directory's script

    fns = {k: random_step(build(TrainConfig, v), N_USERS, N_ITEMS) for k, v in variants.items()}
    times = alternating_ms(fns, rounds=rounds, per_round=steps)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_model()}, {args.threads} torch threads")
    for name, rate in gemm_rates().items():
        print(f"GEMM {name}: {rate:.0f} GFLOP/s")
    for name, ms in step_times().items():
        print(f"step, {name}: {ms:.1f} ms ({BATCH / ms * 1000:,.0f} rows/s)")
    step = random_step(build(TrainConfig, {}), N_USERS, N_ITEMS)
    for _ in range(10):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(30):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
