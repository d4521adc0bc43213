"""Where a daily `prepare --append-to` spends its time, stage by stage, for the code of a given
checkout: to compare two versions of the append on the same prepared DATA.

For each size a synthetic log is prepared once into ``--work`` (kept, so a second checkout's run
appends to the same DATA), then ``--repeats`` days (1% of the users, 5 later rows each) are
appended in turn, each to a new version that is removed after. Each stage's wall time in the
driver (the Ray Data passes, the id maps, the links) and, for the passes, the longest task's
own time are recorded. Ray's workers import the checkout given (``--code``), e.g. old against
new, one after the other, alone:

    git worktree add /tmp/old <commit>
    .venv/bin/python docs/experiments/append_stages.py --code /tmp/old --out /tmp/old.json
    .venv/bin/python docs/experiments/append_stages.py --code . --out /tmp/new.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", default=".", help="the checkout whose ganrec_dist is timed")
    parser.add_argument("--sizes", default="1000000,4000000,16000000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", default="/tmp/ganrec-append-stages")
    parser.add_argument("--out", default="append-stages.json")
    args = parser.parse_args()
    code = str(Path(args.code).absolute())
    out_path, work = Path(args.out).absolute(), Path(args.work).absolute()
    # Ray's local workers put the driver's directory first on their path: run from the checkout.
    os.chdir(code)
    sys.path.insert(0, code)
    import ray

    from ganrec_dist.bench.common import cpu_model
    from ganrec_dist.core.config import PrepareConfig
    from ganrec_dist.core.logs import setup_logging
    from ganrec_dist.data import append, delta, prepare
    from ganrec_dist.data.layout import DataDir

    setup_logging(quiet=True)
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": code}},
    )
    timings: dict[str, float] = {}

    def timed(mod, name):  # a driver-side stage
        fn = getattr(mod, name)

        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - start

        setattr(mod, name, wrapper)

    def inside(mod, name):  # a task's own time, returned with its result
        fn = getattr(mod, name)

        def wrapper(task):
            start = time.perf_counter()
            result = fn(task)
            result["_seconds"] = time.perf_counter() - start
            return result

        wrapper.__name__ = name
        setattr(mod, name, wrapper)

    run = prepare._run

    def run_timed(fn, tasks, name, remote_args=None):
        start = time.perf_counter()
        results = run(fn, tasks, name, remote_args)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        if results and "_seconds" in results[0]:
            timings[f"{name} (longest task)"] = max(r["_seconds"] for r in results)
        return results

    for mod, name in ((delta, "delta_buckets"), (delta, "map_deltas"), (prepare, "ingest_file")):
        inside(mod, name)
    prepare._run = run_timed
    timed(append, "_extend_id_maps")
    timed(append, "_carry_over")

    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"cpu": cpu_model(), "code": code, "sizes": {}}
    for size in (int(s) for s in args.sizes.split(",")):
        data = work / f"data-{size}"
        if not (data / DataDir.MANIFEST).exists():
            prepare.prepare(
                PrepareConfig(
                    source="synthetic",
                    out=str(data),
                    users=max(100, size // 100),
                    items=max(1000, size // 20),
                    interactions=size,
                    overwrite=True,
                )
            )
        base = DataDir(data)
        ids = base.read(DataDir.USERS)["user_id"].to_pylist()
        items = base.read(DataDir.ITEMS)["item_id"].to_pylist()
        rng = np.random.default_rng(0)
        runs = []
        for _ in range(args.repeats):
            chosen = rng.choice(len(ids), max(1, len(ids) // 100), replace=False)
            today = work / "today.csv"
            with open(today, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["user_id", "item_id", "timestamp"])
                for n, u in enumerate(chosen):
                    for j in range(5):
                        t = base.max_timestamp + 1 + n * 5 + j
                        writer.writerow([ids[u], items[rng.integers(len(items))], t])
            timings.clear()
            target = str(data) + ".v2"
            start = time.perf_counter()
            append.prepare_or_append(
                PrepareConfig(source=str(today), append_to=str(data), out=target, overwrite=True)
            )
            timings["total"] = time.perf_counter() - start
            shutil.rmtree(target)
            runs.append(dict(timings))
        out["sizes"][size] = runs
        # The first append of a process warms Ray's workers up: the medians leave it out.
        medians = {k: float(np.median([r.get(k, 0.0) for r in runs[1:]])) for k in runs[0]}
        print(size, {k: round(v, 3) for k, v in medians.items()}, flush=True)
    out_path.write_text(json.dumps(out, indent=1) + "\n")
    ray.shutdown()


if __name__ == "__main__":
    main()
