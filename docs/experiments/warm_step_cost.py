"""What one training step of a warm start costs against one of a fresh model, in one process
without Ray, alternating rounds of 30 steps on the same kind of batches: the warm model as
``--init`` starts it from a `ganrec bench update --workdir EXP` run's first model (seed 0) on
its first appended DATA, the fresh one as a run from scratch starts. E.g.

    .venv/bin/python docs/experiments/warm_step_cost.py EXP random
    .venv/bin/python docs/experiments/warm_step_cost.py EXP real
    .venv/bin/python docs/experiments/warm_step_cost.py EXP random flush

``random``: uniformly random histories and targets; ``real``: rows of the DATA with their real
histories; ``flush``: denormal numbers flushed to zero (``torch.set_flush_denormal``). Prints
the median milliseconds a step and each round's.
"""

from __future__ import annotations

import statistics
import sys

import numpy as np
import torch


def stepper(work: str, init: str | None, real: bool):
    from ganrec_dist.core.config import train_config
    from ganrec_dist.data.layout import DataDir
    from ganrec_dist.training import gan
    from ganrec_dist.training.batches import make_batch
    from ganrec_dist.training.building import (
        Models,
        averaged,
        fresh_models,
        initial_state,
        load_inherited_optimizers,
        model_config,
        optimisers,
        update_average,
    )

    data = DataDir(f"{work}/data1")
    seq = data.sequences()
    cfg = train_config(
        data=data.root, out="/tmp/unused", seed=0, **({"init": init} if init else {})
    )
    mcfg = model_config(cfg, seq.n_users, seq.n_items)
    gen, disc = fresh_models(cfg, mcfg)
    start = initial_state(cfg, gen)
    if start:
        gen.load_state_dict(start["generator"])
        disc.load_state_dict(start["discriminator"])
    g_opt, d_opt = optimisers(gen, disc, cfg)
    if start:
        load_inherited_optimizers(start, g_opt, d_opt)
    models = Models(
        gen=gen, disc=disc, g_opt=g_opt, d_opt=d_opt, average=averaged(gen, cfg.optim.ema_decay)
    )
    noise, rng, b = torch.Generator().manual_seed(1), np.random.default_rng(0), cfg.optim.batch_size
    owner = np.repeat(np.arange(seq.n_users), seq.lengths)
    position = np.arange(len(seq.items)) - seq.offsets[owner]

    def batch() -> gan.Batch:
        if not real:
            draw = lambda high, shape: torch.randint(0, high, shape, generator=noise)  # noqa: E731
            return gan.Batch(
                history=draw(seq.n_items + 1, (b, mcfg.history_len)),
                users=draw(seq.n_users, (b,)),
                targets=draw(seq.n_items, (b,)),
                future=draw(seq.n_items, (b,)),
            )
        rows = rng.integers(0, len(seq.items), b)
        return make_batch(
            seq,
            users=owner[rows],
            items=seq.items[rows],
            positions=position[rows],
            history_len=mcfg.history_len,
            device=torch.device("cpu"),
            limits=seq.lengths,
            horizon=cfg.game.adv_horizon,
            rng=rng,
            ce_horizon=cfg.optim.ce_horizon,
        )

    def step() -> None:
        z = torch.randn(b, mcfg.noise_dim, generator=noise)
        gan.train_step(
            gen, disc, d_opt, g_opt, batch=batch(), z=z, game=cfg.game,
            discriminator=cfg.discriminator,
        )  # fmt: skip
        update_average(models)

    return step


def main() -> None:
    work, kind, *flags = sys.argv[1:]
    torch.set_num_threads(2)
    if "flush" in flags:
        torch.set_flush_denormal(True)
    steps = {
        "fresh": stepper(work, None, kind == "real"),
        "warm": stepper(work, f"{work}/seed0/v0", kind == "real"),
    }
    from step_time import alternating_ms  # this directory's script

    times = {k: [round(t, 1) for t in v] for k, v in alternating_ms(steps).items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"{kind} batches{' (flush)' if flags else ''}: ms a step {median}, rounds {times}")


if __name__ == "__main__":
    main()
