"""What a small run costs with two checkouts of the code, alternating: e.g. the code before a
change to a run's fixed costs (``git worktree add /tmp/old <commit>``) against the code after
it. Each round runs, for each checkout in turn, a child process (its working directory and
``PYTHONPATH`` the checkout, so that Ray's workers import that code) that starts a local Ray and
trains the tests' two-epoch run of the tests' synthetic log twice: the first warms Ray's worker
pool and starts Ray Data's stats actor (once per Ray instance), the second is timed. E.g.

    .venv/bin/python docs/experiments/small_run_old_new.py --code old=/tmp/old,new=. \\
        --rounds 3 --out docs/bench/small-run-old-new.json

prints each timed run's wall seconds (``train()`` called to returned) and its two epochs'
seconds, and the medians. A checkout may carry environment settings for its child after a
``:``, e.g. the same code with and without Ray Train's preemption watcher:

    .venv/bin/python docs/experiments/small_run_old_new.py --rounds 3 \\
        --code "watcher=.:RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1,none=.:RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0"
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
from ganrec_dist.core.config import train_config
from ganrec_dist.core.logs import setup_logging
from ganrec_dist.core.raycluster import ensure_ray
from ganrec_dist.data.layout import RunDir
from ganrec_dist.training.train import train

setup_logging(quiet=True)
ensure_ray(num_cpus=2)
data, work, tiny = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
for n in range(2):
    out = f"{work}/run{n}"
    start = time.perf_counter()
    train(train_config(data=data, out=out, epochs=2, refit=False, **tiny))
    wall = time.perf_counter() - start
history = RunDir(out).payload()["state"]["history"]
seconds = [round(h["seconds"], 2) for h in history]
print(json.dumps({"wall": round(wall, 2), "epoch_1": seconds[0], "epoch_2": seconds[1]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--code", required=True, help="name=checkout[:VAR=VALUE...],name=checkout[:...]"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/small-run-old-new.json")
    args = parser.parse_args()
    codes = dict(pair.split("=", 1) for pair in args.code.split(","))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from train_startup import tests_tiny  # this directory's script: the tests' TINY model

    from ganrec_dist.bench.common import cpu_model, write_json
    from ganrec_dist.core.config import PrepareConfig
    from ganrec_dist.core.logs import print_table, setup_logging
    from ganrec_dist.data.prepare import prepare

    setup_logging(quiet=True)
    work = Path(tempfile.mkdtemp(prefix="small-run-"))
    data = str(work / "data")
    prepare(
        PrepareConfig(
            source="synthetic", out=data, users=500, items=1000, interactions=30_000, seed=1
        )
    )
    runs: dict[str, list[dict]] = {name: [] for name in codes}
    for round_ in range(args.rounds):
        for name, spec in codes.items():
            checkout, *settings = spec.split(":")
            checkout = str(Path(checkout).resolve())
            run_dir = work / f"{name}-{round_}"
            run_dir.mkdir()
            env = {**os.environ, "PYTHONPATH": checkout, **dict(v.split("=", 1) for v in settings)}
            done = subprocess.run(
                [sys.executable, "-c", CHILD, data, str(run_dir), json.dumps(tests_tiny())],
                cwd=checkout,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(name, f"round {round_}:", runs[name][-1], flush=True)
    result = {"cpu": cpu_model(), "code": codes, "rounds": args.rounds, "runs": runs}
    result["median"] = {
        name: {k: statistics.median(r[k] for r in found) for k in ("wall", "epoch_1", "epoch_2")}
        for name, found in runs.items()
    }
    print_table(
        f"two-epoch run of the tests' synthetic log, medians of {args.rounds} alternating "
        f"rounds ({result['cpu']})",
        ["code", "wall s", "epoch 1 s", "epoch 2 s"],
        [[name, m["wall"], m["epoch_1"], m["epoch_2"]] for name, m in result["median"].items()],
    )
    write_json(args.out, result)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
