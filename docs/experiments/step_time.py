"""Training-step time with and without D's matching-aware term, in one process.

    python docs/experiments/step_time.py mismatch
    python docs/experiments/step_time.py tower DATA   # DATA: the embedded sample with content

Batch 256, 9,066 items, 2 threads, the default config: ``gan.train_step`` plus the weight
average (``ganrec_dist.bench.common.random_step``), alternating 5 rounds of 30 steps per variant;
prints the median round's ms per step. ``tower``: the GAN's default step against one step of
the content tower (``training.tower.step``, ``regress``, its batch of 512 train pairs with their
content read from DATA, as the tower phase runs it), and the ms per row of each. The vector game against the item game (`items`) needs the
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


def tower_step(data: str):
    """One content-tower step on random pairs of DATA's items, as the tower phase runs it."""
    import numpy as np

    from ganrec_dist.data.layout import DataDir
    from ganrec_dist.model.content import ContentTower
    from ganrec_dist.training import tower

    content = DataDir(data).content()
    torch.manual_seed(0)
    net = ContentTower(DataDir(data).manifest["content"]["features"], dim=64)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    b = tower.TowerSettings.batch

    def step() -> None:
        items = rng.integers(0, content.n_items, b)
        batch = tower.Pairs(torch.randn(b, 64), torch.randn(b, 64), content.batch(items))
        tower.step(net, opt, batch, "regress")

    return step


def alternating_ms(steps: dict, rounds: int = 5, per_round: int = 30) -> dict[str, list[float]]:
    """Each round's milliseconds a step, the steps' rounds alternating so that all see the same
    machine (after 5 warm-up steps each: allocator, thread pool)."""
    for step in steps.values():
        for _ in range(5):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            times[name].append((time.perf_counter() - start) / per_round * 1000)
    return times


def main(which: str, data: str = "") -> None:
    torch.set_num_threads(2)
    if which == "tower" and data:
        steps = {"GAN step (256 rows)": variant(), "tower step (512 pairs)": tower_step(data)}
    elif which == "mismatch":
        steps = {
            "D without mismatch term": variant(),
            "D with mismatch term": variant(d_mismatch=1.0),
        }
    else:
        sys.exit(__doc__)
    times = alternating_ms(steps)
    for name, values in times.items():
        rows = 512 if "512" in name else 256
        median = sorted(values)[2]
        print(f"{name}: {median:.1f} ms/step, {median / rows * 1000:.1f} us/row")


if __name__ == "__main__":
    main(*sys.argv[1:3]) if len(sys.argv) >= 2 else sys.exit(__doc__)
