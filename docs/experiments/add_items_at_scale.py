"""`ganrec add-items` at 10k and 1M items: new SKUs into a live-sized run, by stage.

    python docs/experiments/add_items_at_scale.py --work EXP --items 10000,1000000 --add 10000 \
        --out docs/bench/add-items-at-scale.json

For each catalogue size: a synthetic log with every item in it (``--full_catalogue``) and its
drawn content is prepared, and a run with the content tower is trained briefly (one search epoch
of ``--steps`` steps, one tower epoch: what add-items costs does not depend on how well the model
was trained, only on its shapes). Then ``--add`` new items with content of the same kind (a
known category, a fresh 16-d vector) are added with ``add-items`` (no rollout: no app is live),
in this process, timed by stage; the smaller catalogue is the baseline of the same run. Peak
memory is this process's maximum RSS after each size (sizes in increasing order; the append's
Ray tasks are other processes). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ganrec_dist.bench.common import cpu_model

GANREC = [sys.executable, "-m", "ganrec_dist"]


def ganrec(args: list[str]) -> None:
    subprocess.run(GANREC + args, check=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


def new_content(data: Path, n: int, out: Path) -> None:
    """``n`` new items: a category the catalogue has, a fresh vector."""
    known = pq.read_table(data / "items.parquet", columns=["category"])["category"]
    rng = np.random.default_rng(11)
    pick = rng.integers(0, len(known), n)
    vectors = rng.normal(size=(n, 16)).astype(np.float32)
    table = pa.table(
        {
            "item_id": [f"sku-{k}" for k in range(n)],
            "category": known.take(pa.array(pick)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 16).cast(
                pa.list_(pa.float32())
            ),
        }
    )
    pq.write_table(table, out)


def measure(items: int, add: int, steps: int, work: Path) -> dict:
    from ganrec_dist.core.config import AddItemsConfig
    from ganrec_dist.operations.additems import add_items

    data, run = work / f"data-{items}", work / f"run-{items}"
    if not (data / "manifest.json").exists():
        ganrec(
            [
                "prepare",
                "--source=synthetic",
                f"--items={items}",
                "--users=20000",
                f"--interactions={max(2 * items, 200_000)}",
                "--full_catalogue=true",
                "--item_content=synthetic",
                f"--out={data}",
            ]
        )
    if not (run / "checkpoint" / "meta.json").exists():
        ganrec(
            [
                "train",
                f"--data={data}",
                f"--out={run}",
                "--epochs=1",
                "--refit=false",
                f"--max_steps_per_epoch={steps}",
                "--val_users=500",
                "--tower=regress",
                "--tower_epochs=1",
            ]
        )
    content = work / f"new-{items}.parquet"
    new_content(data, add, content)
    for old in (work / f"data-{items}.added", work / f"run-{items}.added"):
        subprocess.run(["rm", "-rf", str(old)], check=True)
    tick = time.perf_counter()
    summary = add_items(
        AddItemsConfig(
            run=str(run),
            item_content=str(content),
            out_data=str(work / f"data-{items}.added"),
            out=str(work / f"run-{items}.added"),
            rollout=False,
        )
    )
    wall = time.perf_counter() - tick
    return {
        "items": items,
        "added": summary["items_added"],
        "wall_s": round(wall, 1),
        **{f"{k}_s": v for k, v in summary["stage_seconds"].items()},
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, help="where the DATA and runs go (kept for re-runs)")
    p.add_argument("--items", default="10000,1000000")
    p.add_argument("--add", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="")
    args = p.parse_args()
    work = Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    rows = [measure(int(n), args.add, args.steps, work) for n in args.items.split(",")]
    cols = ["items", "added", "wall_s", "append_s", "rows_s", "index_s", "peak_rss_gib"]
    print(f"\nadd-items of {args.add} items ({cpu_model()})")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if args.out:
        result = {"cpu": cpu_model(), "args": vars(args), "rows": rows}
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
