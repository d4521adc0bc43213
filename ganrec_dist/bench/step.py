"""`ganrec bench step`: one training step (D-step + G-step + weight averaging) of the default
model, with the fused full-softmax loss and fused Adam against ``F.cross_entropy`` and the
per-parameter Adam (the reference), in one process, alternating so that both see the same
machine. The losses are the same function (tests check it); only the time differs."""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time

import torch
from tqdm import tqdm

from ganrec_dist.bench.common import random_step, write_json
from ganrec_dist.core.config import TrainConfig, build, setting
from ganrec_dist.core.logs import print_table

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BenchStepConfig:
    """`ganrec bench step`: the fused training step against its reference."""

    items: str = setting(
        "9066,100000",
        "catalogue sizes (9,066: the embedded sample; 100k: a full softmax past its default limit)",
    )
    users: int = setting(671, "users of the model")
    batch_size: int = setting(256, "rows per step")
    threads: int = setting(2, "torch threads")
    steps: int = setting(40, "timed steps per round")
    rounds: int = setting(5, "rounds alternate reference and fused; the median round is reported")
    out: str = setting("bench/step.json", "results JSON")


def _variant(n_items: int, cfg: BenchStepConfig, fused: bool):
    # Without the matching-aware term: the step as it was when the fused step was measured.
    train_cfg = build(TrainConfig, {"batch_size": cfg.batch_size, "d_mismatch": 0.0})
    return random_step(train_cfg, cfg.users, n_items, reference=not fused)


def run(cfg: BenchStepConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    results: dict = {"batch_size": cfg.batch_size, "threads": cfg.threads, "items": {}}
    rows = []
    for n_items in [int(n) for n in cfg.items.split(",")]:
        steps = {"reference": _variant(n_items, cfg, False), "fused": _variant(n_items, cfg, True)}
        for step in steps.values():
            for _ in range(5):  # warm-up: allocator, thread pool, first-touch pages
                step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in tqdm(range(cfg.rounds), desc=f"{n_items:,} items", unit="round"):
            for name, step in steps.items():
                start = time.perf_counter()
                for _ in range(cfg.steps):
                    step()
                times[name].append((time.perf_counter() - start) / cfg.steps * 1000)
        ms = {name: statistics.median(t) for name, t in times.items()}
        ratio = ms["reference"] / ms["fused"]
        results["items"][str(n_items)] = {"ms_per_step": ms, "rounds_ms": times, "speedup": ratio}
        rows.append([f"{n_items:,}", ms["reference"], ms["fused"], ratio])
    print_table(
        f"step: D-step + G-step + averaging, batch {cfg.batch_size}, {cfg.threads} torch threads "
        f"(median of {cfg.rounds} alternating rounds of {cfg.steps} steps)",
        ["items", "reference ms/step", "fused ms/step", "speed-up"],
        rows,
    )
    write_json(cfg.out, results)
    return results
