"""`ganrec bench score`: end-to-end users/s of `ganrec score` (exact and ANN) against a
single-process batch search of the same users in the same run, and peak memory as users grow."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ganrec_dist.bench.common import PeakMemory, print_table, write_json
from ganrec_dist.config import IndexConfig, PrepareConfig, TrainConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BenchScoreConfig:
    users: int = 100_000
    items: int = 1_000_000
    k: int = 10
    ann_kind: str = "ivf"
    memory_steps: str = "0.25,0.5,1.0"  # fractions of the users for the memory-growth check
    workdir: str = ""
    out: str = "bench/score.json"


def single_process(run: Path, users: np.ndarray, k: int, batch: int = 4096) -> float:
    """Baseline: the same model and index, users in big batches, one process, no Ray."""
    from ganrec_dist.recommender import Recommender

    rec = Recommender(run)
    start = time.perf_counter()
    for s in range(0, len(users), batch):
        rec.recommend_known(users[s : s + batch], k)
    return len(users) / (time.perf_counter() - start)


def run(cfg: BenchScoreConfig) -> dict:
    import pyarrow.parquet as pq

    from ganrec_dist.index import IndexCommandConfig, index_command
    from ganrec_dist.prepare import prepare
    from ganrec_dist.raycluster import ensure_ray
    from ganrec_dist.score import ScoreConfig, score
    from ganrec_dist.train import train

    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="ganrec-bench-score-"))
    data, run_dir = work / "data", work / "run"
    ensure_ray()
    try:
        if not (run_dir / "checkpoint" / "meta.json").exists():
            # A real, barely trained model over a large catalogue: exact search speed does not depend
            # on quality (the embeddings stay close to their random initialisation).
            prepare(
                PrepareConfig(
                    source="synthetic",
                    out=str(data),
                    users=cfg.users,
                    items=cfg.items,
                    interactions=cfg.users * 12,
                    full_catalogue=True,  # the catalogue really has `items` items
                    seed=0,
                    overwrite=True,
                )
            )
            train(
                TrainConfig(
                    data=str(data),
                    out=str(run_dir),
                    epochs=1,
                    max_steps_per_epoch=20,  # a 1M-item softmax step takes seconds on 2 CPUs
                    refit=False,
                    batch_size=2048,
                    sampled_negatives=4096,
                    history_len=20,
                )
            )
        test_users = np.unique(
            pq.read_table(data / "test", columns=["user_idx"])["user_idx"].to_numpy()
        )
        rows: list = []
        n_items = pq.read_metadata(data / "items.parquet").num_rows
        results: dict = {
            "users": int(len(test_users)),
            "items": n_items,
            "k": cfg.k,
            "modes": {},
        }
        for mode in ("exact", cfg.ann_kind):
            shutil.rmtree(run_dir / "index", ignore_errors=True)
            index_command(
                IndexCommandConfig(
                    run=str(run_dir),
                    kind="flat" if mode == "exact" else mode,
                    index=IndexConfig(nprobe=16),
                )
            )
            base = single_process(run_dir, test_users, cfg.k)
            memory = []
            for frac in [float(f) for f in cfg.memory_steps.split(",")]:
                subset = test_users[: max(1, int(len(test_users) * frac))]
                users_file = work / "users.txt"
                ids = pq.read_table(data / "users.parquet")["user_id"].to_numpy(
                    zero_copy_only=False
                )
                users_file.write_text("\n".join(ids[subset]) + "\n")
                with PeakMemory() as mem:
                    summary = score(
                        ScoreConfig(
                            data=str(data),
                            run=str(run_dir),
                            out=str(work / "recs.parquet"),
                            k=cfg.k,
                            users=str(users_file),
                            overwrite=True,
                        )
                    )
                memory.append(
                    {
                        "users": int(len(subset)),
                        "users_per_s": summary["users_per_s"],
                        "peak_memory_gib": round(mem.peak_gib, 3),
                    }
                )
            full = memory[-1]
            results["modes"][mode] = {
                "score_users_per_s": full["users_per_s"],
                "single_process_users_per_s": base,
                "ratio": full["users_per_s"] / base,
                "memory_by_users": memory,
            }
            rows.append(
                [
                    mode,
                    full["users_per_s"],
                    base,
                    full["users_per_s"] / base,
                    " / ".join(f"{m['peak_memory_gib']:.2f}" for m in memory),
                ]
            )
    finally:
        if not cfg.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print_table(
        f"score: {results['users']:,} users x {results['items']:,} items, top-{cfg.k}",
        [
            "index",
            "score users/s",
            "single process users/s",
            "ratio",
            f"peak GiB at {cfg.memory_steps} of users",
        ],
        rows,
    )
    write_json(cfg.out, results)
    return results
