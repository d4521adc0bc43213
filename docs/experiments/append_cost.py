"""What a daily `prepare --append-to` costs as the log grows, against preparing the log afresh.

For each size: a synthetic log is prepared (timed: what a rebuild from scratch costs at least);
then ``--repeats`` days (``--active`` of the users, ``--rows_per_user`` later rows each, other users
each day) are appended to it in turn (timed, the median shown, with the peak PSS of this process
and its Ray processes), the buckets it wrote
as deltas or rewrote and the files it hard-linked are read from the manifest, and the appended
version is compacted (timed). Run alone on a quiet machine, e.g.

    .venv/bin/python docs/experiments/append_cost.py --sizes 1000000,4000000,16000000 \\
        --out docs/bench/append-cost.json
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def one(size: int, shards: int, active: float, per_user: int, work: Path, repeats: int) -> dict:
    from ganrec_dist.bench.common import PeakMemory
    from ganrec_dist.core.config import PrepareConfig
    from ganrec_dist.data.append import prepare_or_append
    from ganrec_dist.data.layout import DataDir

    data = work / f"data-{size}-{shards}"
    users = max(100, size // 100)
    start = time.perf_counter()
    prepare_or_append(
        PrepareConfig(
            source="synthetic",
            out=str(data),
            users=users,
            items=max(1000, size // 20),
            interactions=size,
            shards=shards,
            overwrite=True,
        )
    )
    fresh = time.perf_counter() - start
    base = DataDir(data)
    ids = base.read("users.parquet")["user_id"].to_pylist()
    items = base.read("items.parquet")["item_id"].to_pylist()
    rng = np.random.default_rng(0)
    t0 = base.max_timestamp
    today = work / "today.csv"
    times, peaks = [], []
    for _ in range(repeats):  # a new day each time, appended to the same DATA
        chosen = rng.choice(len(ids), max(1, int(active * len(ids))), replace=False)
        with open(today, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["user_id", "item_id", "timestamp"])
            for n, u in enumerate(chosen):
                for j in range(per_user):
                    writer.writerow(
                        [ids[u], items[rng.integers(len(items))], t0 + 1 + n * per_user + j]
                    )
        shutil.rmtree(str(data) + ".v2", ignore_errors=True)
        start = time.perf_counter()
        with PeakMemory() as mem:
            manifest = prepare_or_append(
                PrepareConfig(source=str(today), append_to=str(data), out=str(data) + ".v2")
            )
        times.append(time.perf_counter() - start)
        peaks.append(mem.peak_gib)
    appended = float(np.median(times))
    part = manifest["partitions"][-1]
    from ganrec_dist.data.delta import compact

    start = time.perf_counter()
    compact(str(data) + ".v2", str(data) + ".v2c")
    compacted = time.perf_counter() - start
    shutil.rmtree(str(data) + ".v2c", ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(str(data) + ".v2", ignore_errors=True)
    return {
        "rows": size,
        "shards": manifest["shards"],
        "partition_rows": part["rows_in"],
        "active_users": len(chosen),
        "fresh_prepare_s": fresh,
        "append_s": appended,
        "append_s_each": times,
        "append_over_fresh": appended / fresh,
        "buckets_delta": part.get("buckets_delta", 0),
        "buckets_rewritten": part["buckets_rewritten"],
        "files_linked": part["files_linked"],
        "append_peak_gib": max(peaks),
        "compact_s": compacted,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000000,4000000,16000000")
    parser.add_argument("--shards", default="0", help="comma-separated; 0 = prepare's default")
    parser.add_argument("--active", type=float, default=0.01, help="share of users in the day")
    parser.add_argument("--rows_per_user", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="days appended; the median is shown")
    parser.add_argument("--out", default="docs/bench/append-cost.json")
    args = parser.parse_args()
    from ganrec_dist.bench.common import cpu_model
    from ganrec_dist.core.logs import print_table, setup_logging

    setup_logging(quiet=True)
    work = Path(tempfile.mkdtemp(prefix="ganrec-append-"))
    try:
        rows = [
            one(int(size), int(shards), args.active, args.rows_per_user, work, args.repeats)
            for size in args.sizes.split(",")
            for shards in args.shards.split(",")
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(
        f"prepare --append-to: a day of {args.active:.0%} of the users, {args.rows_per_user} rows "
        f"each ({cpu_model()})",
        [
            "rows",
            "shards",
            "day rows",
            "fresh s",
            "append s",
            "append/fresh",
            "deltas",
            "rewritten",
            "linked",
            "peak GiB",
            "compact s",
        ],
        [
            [
                r["rows"],
                r["shards"],
                r["partition_rows"],
                f"{r['fresh_prepare_s']:.1f}",
                f"{r['append_s']:.1f}",
                f"{r['append_over_fresh']:.2f}",
                f"{r['buckets_delta']}/{r['shards']}",
                f"{r['buckets_rewritten']}/{r['shards']}",
                r["files_linked"],
                f"{r['append_peak_gib']:.2f}",
                f"{r['compact_s']:.1f}",
            ]
            for r in rows
        ],
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cpu": cpu_model(), "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
