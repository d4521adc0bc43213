"""Training-step time with and without D's matching-aware term, in one process.

    python docs/experiments/step_time.py mismatch

Batch 256, 9,066 items, 2 threads, the default config: ``gan.train_step`` plus the weight
average (``ganrec_dist.bench.common.random_step``), alternating 5 rounds of 30 steps per variant;
prints the median round's ms per step. The vector game against the item game (`items`) needs the
variants patch, at the commit it applies to, whose copy of this script has that variant:

    git worktree add ../variants 9f98ef4 && cd ../variants
    git apply docs/experiments/adversarial-variants.patch
    python docs/experiments/step_time.py items
"""

import sys
import time

import torch

from ganrec_dist.bench.common import random_step
from ganrec_dist.core.config import TrainConfig, build

N_ITEMS, N_USERS = 9066, 671


def variant(d_mismatch: float = 0.0):
    """A step function of a fresh default model; ``d_mismatch`` the weight of D's term."""
    return random_step(build(TrainConfig, {"d_mismatch": d_mismatch}), N_USERS, N_ITEMS)


def main(which: str) -> None:
    torch.set_num_threads(2)
    if which == "mismatch":
        steps = {
            "D without mismatch term": variant(),
            "D with mismatch term": variant(d_mismatch=1.0),
        }
    else:
        sys.exit(__doc__)
    for step in steps.values():
        for _ in range(5):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(5):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(30):
                step()
            times[name].append((time.perf_counter() - start) / 30 * 1000)
    for name, values in times.items():
        print(f"{name}: {sorted(values)[2]:.1f} ms/step")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) == 2 else "")
