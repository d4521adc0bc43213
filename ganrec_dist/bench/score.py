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

from ganrec_dist.bench.common import PeakMemory, write_json
from ganrec_dist.core.config import (
    IndexCommandConfig,
    IndexConfig,
    PrepareConfig,
    ScoreConfig,
    TrainConfig,
    build,
    setting,
)
from ganrec_dist.core.logs import print_table
from ganrec_dist.data.layout import DataDir, RunDir

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BenchScoreConfig:
    """`ganrec bench score`: users/s and memory of `ganrec score` against one process."""

    users: int = setting(100_000, "synthetic users")
    items: int = setting(1_000_000, "catalogue size")
    k: int = setting(10, "recommendations per user")
    ann_kind: str = setting("ivf", "the ANN kind measured next to exact search")
    memory_steps: str = setting(
        "0.25,0.5,1.0", "fractions of the users for the memory-growth check"
    )
    sharing: bool = setting(
        True, "also score every user with 2 actors, a copy each against one shared copy"
    )
    workdir: str = setting("", "where data and the run go (default: a temporary directory)")
    out: str = setting("bench/score.json", "results JSON")


def single_process(run: Path, users: np.ndarray, k: int, batch: int = 4096) -> float:
    """Baseline: the same model and index, users in big batches, one process, no Ray."""
    from ganrec_dist.retrieval.recommender import Recommender

    rec = Recommender(run)
    start = time.perf_counter()
    for s in range(0, len(users), batch):
        rec.recommend_known(users[s : s + batch], k)
    return len(users) / (time.perf_counter() - start)


def _model(cfg: BenchScoreConfig, data: Path, run: Path) -> None:
    """A real, barely trained model over a large catalogue: exact search speed does not depend
    on quality (the embeddings stay close to their random initialisation)."""
    from ganrec_dist.data.prepare import prepare
    from ganrec_dist.training.train import train

    if RunDir(run).has_checkpoint():
        return
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
    schedule = {"epochs": 1, "max_steps_per_epoch": 20, "refit": False, "batch_size": 2048}
    model = {"sampled_negatives": 4096, "history_len": 20}
    train(build(TrainConfig, {"data": str(data), "out": str(run), **schedule, **model}))


def _score(
    cfg: BenchScoreConfig, *, work: Path, data: DataDir, run: Path, each: str | None = None, **kw
) -> tuple[dict, PeakMemory]:
    """One `ganrec score` into ``work``, with ``kw`` settings; its summary and peak memory."""
    from ganrec_dist.inference.score import score

    with PeakMemory(each=each) as mem:
        summary = score(
            ScoreConfig(
                data=data.root,
                run=str(run),
                out=str(work / "recs.parquet"),
                k=cfg.k,
                overwrite=True,
                **kw,
            )
        )
    return summary, mem


def _memory_by_users(
    cfg: BenchScoreConfig, *, work: Path, data: DataDir, run: Path, users: np.ndarray
) -> list[dict]:
    """`ganrec score` on growing fractions of the users: users/s and the peak memory of all."""
    ids = data.read(DataDir.USERS)["user_id"].to_numpy(zero_copy_only=False)
    memory = []
    for frac in [float(f) for f in cfg.memory_steps.split(",")]:
        subset = users[: max(1, int(len(users) * frac))]
        users_file = work / "users.txt"
        users_file.write_text("\n".join(ids[subset]) + "\n")
        summary, mem = _score(cfg, work=work, data=data, run=run, users=str(users_file))
        memory.append(
            {
                "users": int(len(subset)),
                "users_per_s": summary["users_per_s"],
                "peak_memory_gib": round(mem.peak_gib, 3),
            }
        )
    return memory


def _sharing(cfg: BenchScoreConfig, *, work: Path, data: DataDir, run: Path) -> dict:
    """`ganrec score` of every test user with 2 actors: each loading its own copy of the run
    (``--shared false``) against one object-store copy; peak PSS of the whole process tree and
    of the largest actor (PSS splits the shared pages between the processes that map them)."""
    out = {}
    for shared in (False, True):
        summary, mem = _score(
            cfg, work=work, data=data, run=run, each="MapWorker", actors=2, shared=shared
        )
        out["shared" if shared else "copy_per_actor"] = {
            "users_per_s": summary["users_per_s"],
            "peak_tree_gib": round(mem.peak / 2**30, 3),
            "peak_actor_gib": round(mem.peak_each / 2**30, 3),
        }
    return out


def run(cfg: BenchScoreConfig) -> dict:
    from ganrec_dist.core.raycluster import ensure_ray
    from ganrec_dist.retrieval.index import index_command

    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="ganrec-bench-score-"))
    data_dir, run_dir = work / "data", work / "run"
    ensure_ray()
    try:
        _model(cfg, data_dir, run_dir)
        data = DataDir(data_dir)
        test_users = np.unique(data.read(DataDir.TEST, ["user_idx"])["user_idx"].to_numpy())
        results: dict = {
            "users": int(len(test_users)),
            "items": data.manifest["items"],
            "k": cfg.k,
            "modes": {},
        }
        rows: list = []
        for mode in ("exact", cfg.ann_kind):
            kind = "flat" if mode == "exact" else mode
            index_command(
                IndexCommandConfig(run=str(run_dir), kind=kind, index=IndexConfig(nprobe=16))
            )
            base = single_process(run_dir, test_users, cfg.k)
            memory = _memory_by_users(cfg, work=work, data=data, run=run_dir, users=test_users)
            full = memory[-1]
            results["modes"][mode] = {
                "score_users_per_s": full["users_per_s"],
                "single_process_users_per_s": base,
                "ratio": full["users_per_s"] / base,
                "memory_by_users": memory,
            }
            if cfg.sharing:
                results["modes"][mode]["two_actors"] = _sharing(
                    cfg, work=work, data=data, run=run_dir
                )
            peaks = " / ".join(f"{m['peak_memory_gib']:.2f}" for m in memory)
            rows.append([mode, full["users_per_s"], base, full["users_per_s"] / base, peaks])
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
    if cfg.sharing:
        print_table(
            "score with 2 actors: a copy of the run each, and one shared copy",
            ["index", "copy each: tree GiB", "actor GiB", "shared: tree GiB", "actor GiB"],
            [
                [mode]
                + [
                    m["two_actors"]["copy_per_actor"][c]
                    for c in ("peak_tree_gib", "peak_actor_gib")
                ]
                + [m["two_actors"]["shared"][c] for c in ("peak_tree_gib", "peak_actor_gib")]
                for mode, m in results["modes"].items()
            ],
        )
    write_json(cfg.out, results)
    return results
