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

from ganrec_dist import gan
from ganrec_dist.bench.common import PeakMemory, print_table, write_json
from ganrec_dist.config import PrepareConfig, TrainConfig
from ganrec_dist.interactions import load_sequences
from ganrec_dist.models import Discriminator, Generator
from ganrec_dist.train import make_batch, model_config, optimisers

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BenchTrainConfig:
    rows: int = 200_000  # synthetic interactions
    users: int = 5_000
    items: int = 5_000
    epochs: int = 2  # the last epoch is measured (the first warms up)
    workers: str = "1,2"
    batch_size: int = 256
    out: str = "bench/train.json"
    workdir: str = ""


def in_memory_loop(data: Path, cfg: TrainConfig, epochs: int, threads: int) -> dict:
    """The same D-step/G-step loop, batches from numpy arrays in this process: the baseline."""
    torch.set_num_threads(threads)
    seq = load_sequences(data)
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
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            batch = make_batch(
                seq, users[idx], seq.items[idx], positions[idx], cfg.history_len, device
            )
            z = torch.randn(len(idx), cfg.noise_dim)
            gan.train_step(gen, disc, d_opt, g_opt, batch, z, cfg.adv_weight)
        seconds = time.perf_counter() - start
        result = {
            "rows": len(order),
            "seconds": seconds,
            "rows_per_s": len(order) / seconds,
            "data_wait_fraction": 0.0,
        }
    return result


def run(cfg: BenchTrainConfig) -> dict:
    from ganrec_dist.prepare import prepare
    from ganrec_dist.raycluster import ensure_ray
    from ganrec_dist.train import train

    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="ganrec-bench-train-"))
    data = work / "data"
    ensure_ray()
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    try:
        prepare(
            PrepareConfig(
                source="synthetic",
                out=str(data),
                users=cfg.users,
                items=cfg.items,
                interactions=cfg.rows,
                seed=0,
                overwrite=True,
            )
        )
        rows = []
        results: dict = {"rows": cfg.rows, "cpus": cpus, "ray": {}}
        for workers in [int(w) for w in cfg.workers.split(",")]:
            # Leave one CPU to Ray Data: workers share the rest.
            per_worker = max(0.25, (cpus - 1) / workers) if cpus > 1 else 0.5
            threads = max(1, cpus // workers)
            tcfg = TrainConfig(
                data=str(data),
                out=str(work / f"run{workers}"),
                workers=workers,
                cpus_per_worker=per_worker,
                epochs=cfg.epochs,
                patience=cfg.epochs,
                refit=False,
                batch_size=cfg.batch_size,
                adv_weight=0.1,
            )
            log.info("in-memory baseline, %d torch thread(s)", threads)
            base = in_memory_loop(data, tcfg, cfg.epochs, threads)
            with PeakMemory() as mem:
                train(tcfg)
            import torch as _t

            payload = _t.load(
                work / f"run{workers}" / "checkpoint" / "model.pt",
                map_location="cpu",
                weights_only=False,
            )
            last = payload["state"]["history"][-1]
            ours = {
                "rows": last["rows"],
                "seconds": last["seconds"],
                "rows_per_s": last["rows"] / last["seconds"],
                "data_wait_fraction": last["data_wait_fraction"],
                "peak_memory_gib": round(mem.peak_gib, 3),
            }
            ratio = ours["rows_per_s"] / base["rows_per_s"]
            results["ray"][str(workers)] = {
                "ray_data": ours,
                "in_memory": base,
                "ratio": ratio,
                "cpus_per_worker": per_worker,
                "threads_per_worker": threads,
            }
            rows.append(
                [f"{workers} worker(s), in-memory loop (baseline)", base["rows_per_s"], 0.0, ""]
            )
            rows.append(
                [
                    f"{workers} worker(s), Ray Data -> Ray Train",
                    ours["rows_per_s"],
                    ours["data_wait_fraction"],
                    ours["peak_memory_gib"],
                ]
            )
            rows.append([f"{workers} worker(s), ratio", ratio, "", ""])
    finally:
        if not cfg.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print_table(
        f"train: adversarial loop on {cfg.rows:,} synthetic interactions, {cpus} CPUs (last of {cfg.epochs} epochs)",
        ["feed", "interactions/s", "data wait", "peak memory GiB"],
        rows,
    )
    write_json(cfg.out, results)
    return results
