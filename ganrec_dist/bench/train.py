"""`ganrec bench train`: throughput of the adversarial loop fed by Ray Data (through Ray Train,
1 and 2 workers) against the same loop fed from in-memory arrays in one process, in one run."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ganrec_dist.bench.common import PeakMemory, write_json
from ganrec_dist.core.config import PrepareConfig, TrainConfig, build, setting
from ganrec_dist.core.logs import print_table
from ganrec_dist.data.layout import DataDir, RunDir
from ganrec_dist.model.models import Discriminator, Generator
from ganrec_dist.training import gan
from ganrec_dist.training.batches import make_batch
from ganrec_dist.training.building import model_config, optimisers

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BenchTrainConfig:
    """`ganrec bench train`: Ray Data -> Ray Train against an in-memory loop."""

    rows: int = setting(200_000, "synthetic interactions")
    users: int = setting(5_000, "synthetic users")
    items: int = setting(5_000, "synthetic items")
    epochs: int = setting(2, "epochs; the last is measured (the first warms up)")
    workers: str = setting("1,2", "worker counts to measure, comma-separated")
    batch_size: int = setting(256, "rows per step")
    out: str = setting("bench/train.json", "results JSON")
    workdir: str = setting("", "where data and runs go (default: a temporary directory)")


def in_memory_loop(data: Path, cfg: TrainConfig, epochs: int, threads: int) -> dict:
    """The same D-step/G-step loop, batches from numpy arrays in this process: the baseline."""
    torch.set_num_threads(threads)
    seq = DataDir(data).sequences()
    users = np.repeat(np.arange(seq.n_users), seq.lengths)
    positions = np.arange(len(seq.items)) - np.repeat(seq.offsets[:-1], seq.lengths)
    torch.manual_seed(cfg.seed)
    mcfg = model_config(cfg, seq.n_users, seq.n_items)
    gen, disc = Generator(mcfg), Discriminator(mcfg)
    g_opt, d_opt = optimisers(gen, disc, cfg)
    rng = np.random.default_rng(0)
    device = torch.device("cpu")
    result = {}
    for _ in range(epochs):
        order = rng.permutation(len(users))
        start = time.perf_counter()
        for s in range(0, len(order), cfg.optim.batch_size):
            idx = order[s : s + cfg.optim.batch_size]
            batch = make_batch(
                seq,
                users=users[idx],
                items=seq.items[idx],
                positions=positions[idx],
                history_len=cfg.model.history_len,
                device=device,
            )
            z = torch.randn(len(idx), cfg.model.noise_dim)
            gan.train_step(
                gen,
                disc,
                d_opt,
                g_opt,
                batch=batch,
                z=z,
                game=cfg.game,
                discriminator=cfg.discriminator,
            )
        seconds = time.perf_counter() - start
        result = {
            "rows": len(order),
            "seconds": seconds,
            "rows_per_s": len(order) / seconds,
            "data_wait_fraction": 0.0,
        }
    return result


def _measure(cfg: BenchTrainConfig, work: Path, workers: int, cpus: int) -> dict:
    """``ganrec train`` with ``workers`` workers and the in-memory loop, on the same data."""
    from ganrec_dist.training.train import train

    # Leave one CPU to Ray Data: workers share the rest.
    per_worker = max(0.25, (cpus - 1) / workers) if cpus > 1 else 0.5
    threads = max(1, cpus // workers)
    run = work / f"run{workers}"
    schedule = {"epochs": cfg.epochs, "patience": cfg.epochs, "refit": False}
    tcfg = build(
        TrainConfig,
        {
            "data": str(work / "data"),
            "out": str(run),
            "workers": workers,
            "cpus_per_worker": per_worker,
            "batch_size": cfg.batch_size,
            "adv_weight": 0.1,
            **schedule,
        },
    )
    log.info("in-memory baseline, %d torch thread(s)", threads)
    base = in_memory_loop(work / "data", tcfg, cfg.epochs, threads)
    with PeakMemory() as mem:
        train(tcfg)
    last = RunDir(run).payload()["state"]["history"][-1]
    ours = {
        "rows": last["rows"],
        "seconds": last["seconds"],
        "rows_per_s": last["rows"] / last["seconds"],
        "data_wait_fraction": last["data_wait_fraction"],
        "peak_memory_gib": round(mem.peak_gib, 3),
    }
    return {
        "ray_data": ours,
        "in_memory": base,
        "ratio": ours["rows_per_s"] / base["rows_per_s"],
        "cpus_per_worker": per_worker,
        "threads_per_worker": threads,
    }


def run(cfg: BenchTrainConfig) -> dict:
    import ray

    from ganrec_dist.core.raycluster import ensure_ray
    from ganrec_dist.data.prepare import prepare

    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="ganrec-bench-train-"))
    ensure_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    results: dict = {"rows": cfg.rows, "cpus": cpus, "ray": {}}
    rows = []
    try:
        prepare(
            PrepareConfig(
                source="synthetic",
                out=str(work / "data"),
                users=cfg.users,
                items=cfg.items,
                interactions=cfg.rows,
                seed=0,
                overwrite=True,
            )
        )
        for workers in [int(w) for w in cfg.workers.split(",")]:
            m = results["ray"][str(workers)] = _measure(cfg, work, workers, cpus)
            ours = m["ray_data"]
            rows += [
                [f"{workers} worker(s), in-memory loop (baseline)", m["in_memory"]["rows_per_s"]]
                + [0.0, ""],
                [f"{workers} worker(s), Ray Data -> Ray Train", ours["rows_per_s"]]
                + [ours["data_wait_fraction"], ours["peak_memory_gib"]],
                [f"{workers} worker(s), ratio", m["ratio"], "", ""],
            ]
    finally:
        if not cfg.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print_table(
        f"train: adversarial loop on {cfg.rows:,} synthetic interactions, {cpus} CPUs "
        f"(last of {cfg.epochs} epochs)",
        ["feed", "interactions/s", "data wait", "peak memory GiB"],
        rows,
    )
    write_json(cfg.out, results)
    return results
