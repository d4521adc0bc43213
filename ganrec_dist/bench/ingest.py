"""`ganrec bench ingest`: `prepare` throughput and peak memory against a single-process pyarrow
read -> validate -> dedup/split -> write of the same files, measured in the same run."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ganrec_dist.bench.common import PeakMemory, write_json
from ganrec_dist.core.config import setting
from ganrec_dist.core.logs import print_table
from ganrec_dist.data import sources
from ganrec_dist.data.layout import DataDir

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BenchIngestConfig:
    """`ganrec bench ingest`: prepare against a one-process pyarrow script."""

    rows: int = setting(10_000_000, "synthetic interactions")
    users: int = setting(0, "synthetic users (0: rows / 50)")
    items: int = setting(0, "synthetic items (0: rows / 100, at most 1M)")
    seed: int = setting(0, "seed of the synthetic log")
    out: str = setting("bench/ingest.json", "results JSON")
    workdir: str = setting("", "where the files go (default: a temporary directory)")
    memory_limit_gib: float = setting(4.0, "the peak memory prepare is checked against")


def baseline(files: list[str], out: str, test_fraction: float = 0.2) -> dict:
    """The same work in one process, all rows in memory: the obvious pyarrow script."""
    from ganrec_dist.data.prepare import split_sorted, validate_chunk

    cols = {"user": "user_id", "item": "item_id", "time": "timestamp", "weight": "rating"}
    good_parts, rows_in, rejected = [], 0, 0
    for i, f in enumerate(files):
        table = pq.read_table(f)
        good, bad = validate_chunk(table, cols)
        good = good.set_column(4, "row", pa.array(good["row"].to_numpy() + (i << 40)))
        good_parts.append(good)
        rows_in += table.num_rows
        rejected += bad.num_rows
    table = pa.concat_tables(good_parts)
    keys = ["user_id", "item_id", "timestamp", "weight"]
    table = (
        table.group_by(keys, use_threads=False)
        .aggregate([("row", "min")])
        .rename_columns(keys + ["row"])
    )
    table = table.sort_by(
        [("user_id", "ascending"), ("timestamp", "ascending"), ("row", "ascending")]
    )
    _, is_test = split_sorted(table["user_id"].to_numpy(zero_copy_only=False), test_fraction)
    users = pc.unique(table["user_id"])
    users = pc.take(users, pc.sort_indices(users))
    items = pc.unique(table["item_id"])
    items = pc.take(items, pc.sort_indices(items))
    table = table.append_column(
        "user_idx", pc.index_in(table["user_id"], value_set=users).cast(pa.int32())
    )
    table = table.append_column(
        "item_idx", pc.index_in(table["item_id"], value_set=items).cast(pa.int32())
    )
    os.makedirs(out, exist_ok=True)
    mask = pa.array(is_test)
    pq.write_table(table.filter(pc.invert(mask)), os.path.join(out, "train.parquet"))
    pq.write_table(table.filter(mask), os.path.join(out, "test.parquet"))
    return {"rows_in": rows_in, "rows_kept": table.num_rows, "rejected": rejected}


def _child(target: str, args: tuple, queue: mp.Queue) -> None:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    start = time.perf_counter()
    if target == "baseline":
        result = baseline(*args)
    else:
        from ganrec_dist.core.config import PrepareConfig
        from ganrec_dist.core.logs import setup_logging
        from ganrec_dist.data.prepare import prepare

        setup_logging(quiet=True)
        result = prepare(
            PrepareConfig(source=args[0], out=args[1], format="parquet", weight_col="rating")
        )
        import ray

        ray.shutdown()
    queue.put(
        {
            "seconds": time.perf_counter() - start,
            "rows_in": result["rows_in"],
            "rows_kept": result["rows_kept"],
        }
    )


def _measure(target: str, args: tuple) -> dict:
    """Run one side in a fresh process; sample the PSS of its whole process tree (Ray included)."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target, args, queue))
    proc.start()
    with PeakMemory(proc.pid) as mem:
        proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{target} failed with exit code {proc.exitcode}")
    result = queue.get()
    result["peak_memory_gib"] = round(mem.peak_gib, 3)
    result["rows_per_s"] = result["rows_in"] / result["seconds"]
    return result


def run(cfg: BenchIngestConfig) -> dict:
    """Generate the synthetic log once, then time both sides on the same files."""
    from ganrec_dist.core.raycluster import ensure_ray

    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="ganrec-bench-ingest-"))
    raw = work / "raw"
    users = cfg.users or max(100, cfg.rows // 50)
    items = cfg.items or min(1_000_000, max(100, cfg.rows // 100))
    try:
        ensure_ray()
        log.info("generating %d synthetic rows (%d users, %d items)", cfg.rows, users, items)
        files = sources.synthetic(
            raw, users=users, items=items, interactions=cfg.rows, seed=cfg.seed
        ).files
        import ray

        ray.shutdown()  # each side starts from nothing in its own process
        log.info("measuring single-process pyarrow baseline")
        base = _measure("baseline", (files, str(work / "baseline")))
        log.info("measuring ganrec prepare")
        ours = _measure("prepare", (str(raw), str(work / "prepared")))
        manifest = DataDir(work / "prepared").manifest
    finally:
        if not cfg.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if ours["rows_kept"] != base["rows_kept"]:
        raise RuntimeError(f"prepare kept {ours['rows_kept']} rows, baseline {base['rows_kept']}")
    result = {
        "rows": cfg.rows,
        "users": users,
        "items": items,
        "shards": manifest["shards"],
        "cpus": os.cpu_count(),
        "prepare": ours,
        "baseline": base,
        "throughput_ratio": ours["rows_per_s"] / base["rows_per_s"],
        "memory_ratio": ours["peak_memory_gib"] / max(base["peak_memory_gib"], 1e-9),
        "memory_limit_gib": cfg.memory_limit_gib,
        "prepare_under_memory_limit": ours["peak_memory_gib"] < cfg.memory_limit_gib,
    }
    print_table(
        f"ingest: {cfg.rows:,} synthetic rows, {os.cpu_count()} CPUs",
        ["pipeline", "seconds", "rows/s", "peak memory GiB"],
        [
            [
                "pyarrow, one process (baseline)",
                base["seconds"],
                base["rows_per_s"],
                base["peak_memory_gib"],
            ],
            [
                "ganrec prepare (Ray Data)",
                ours["seconds"],
                ours["rows_per_s"],
                ours["peak_memory_gib"],
            ],
            ["ratio prepare / baseline", "", result["throughput_ratio"], result["memory_ratio"]],
        ],
    )
    write_json(cfg.out, result)
    return result
