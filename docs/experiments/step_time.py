"""Training-step time of two forms of the adversarial game, in one process.

    python docs/experiments/step_time.py mismatch   # D with and without the mismatch term

    # the vector game against the item game: at the commit the patch applies to
    git worktree add ../variants 9f98ef4 && cd ../variants
    git apply docs/experiments/adversarial-variants.patch
    python docs/experiments/step_time.py items

Batch 256, 9,066 items, 2 threads, the default config: ``gan.train_step`` plus the weight
average, alternating 5 rounds of 30 steps per variant; prints the median round's ms per step.
"""

import sys
import time

import torch

from ganrec_dist import gan
from ganrec_dist.config import TrainConfig
from ganrec_dist.models import Discriminator, Generator
from ganrec_dist.worker import averaged, model_config, optimisers

N_ITEMS, N_USERS, BATCH = 9066, 671, 256


def variant(samples: int = 0, d_mismatch: float = 0.0):
    """A step function of a fresh model; ``samples`` items per user for the item game (0 = vector),
    ``d_mismatch`` the weight of D's mismatched-pair term."""
    cfg = TrainConfig()
    torch.manual_seed(0)
    mcfg = model_config(cfg, N_USERS, N_ITEMS)
    gen, disc = Generator(mcfg), Discriminator(mcfg)
    g_opt, d_opt = optimisers(gen, disc, cfg)
    average = averaged(gen, cfg.optim.ema_decay)
    rng = torch.Generator().manual_seed(1)

    def step() -> None:
        batch = gan.Batch(
            torch.randint(0, N_ITEMS + 1, (BATCH, mcfg.history_len), generator=rng),
            torch.randint(0, N_USERS, (BATCH,), generator=rng),
            torch.randint(0, N_ITEMS, (BATCH,), generator=rng),
            torch.randint(0, N_ITEMS, (BATCH,), generator=rng),
        )
        z = torch.randn(BATCH, mcfg.noise_dim, generator=rng)
        extra = {"policy_k": samples, "sampler": rng} if samples else {}
        gan.train_step(
            gen,
            disc,
            d_opt,
            g_opt,
            batch=batch,
            z=z,
            adv_weight=cfg.game.adv_weight,
            d_mismatch=d_mismatch,
            **extra,
        )
        average.update_parameters(gen)

    return step


def main(which: str) -> None:
    torch.set_num_threads(2)
    if which == "items":
        steps = {"vector game": variant(0), "item game (4 samples)": variant(4)}
    elif which == "mismatch":
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
