"""Cold items from their content on the synthetic log, informative content against noise.

    python docs/experiments/cold_items.py --out EXP [--users 3000 --items 1500 \
        --interactions 150000 --noise 0.2,1.0 --seeds 0]

The same log is prepared once per ``--feature_noise`` level (the content differs, the log and the
id maps do not), the GAN is trained once on the first, and ``ganrec evaluate --cold_items true``
runs against each DATA: the same cold items are held out of the same copy, so the cold GAN is
trained once and reused, and only the content tower and content-kNN see the other content. With
several ``--seeds`` each seed trains its own run (``EXP/run-seed<S>``, its cold items drawn by
that seed) and ends with the first level's table in its eval.json, so that

    ganrec compare EXP/run-seed* --against EXP/run-seed* --metric cold_ndcg@20 \
        --rows tower_regress,content_knn

pairs the tower with content-kNN over the seeds. Writes ``EXP/cold_items.json`` (each seed's and
level's cold-item table) and prints the tables.

With ``--data DATA`` (a prepared DATA with content, e.g. the embedded sample) nothing is prepared:
each seed trains on DATA and is evaluated once per ``--splits`` (random, time), and each split's
eval.json is kept beside a copy of the run's config.yaml in ``EXP/<split>/seed<S>`` so that

    ganrec compare EXP/time/seed* --against EXP/time/seed* --metric cold_ndcg@20 \
        --rows tower_regress,content_knn
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

GANREC = [sys.executable, "-m", "ganrec_dist"]


def ganrec(args: list[str]) -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(GANREC + args, check=True, env=env)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=1500)
    p.add_argument("--interactions", type=int, default=150_000)
    p.add_argument("--noise", default="0.2,1.0")
    p.add_argument("--seeds", default="0")
    p.add_argument("--data", default="", help="an existing DATA with content (skips prepare)")
    p.add_argument("--splits", default="random", help="with --data: random,time")
    args = p.parse_args()
    if args.data:
        embedded(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    levels = [float(x) for x in args.noise.split(",")]
    for noise in levels:
        if not (out / f"data-{noise}" / "manifest.json").exists():
            ganrec(
                [
                    "prepare",
                    "--source=synthetic",
                    f"--users={args.users}",
                    f"--items={args.items}",
                    f"--interactions={args.interactions}",
                    "--seed=0",
                    "--item_content=synthetic",
                    f"--feature_noise={noise}",
                    f"--out={out / f'data-{noise}'}",
                ]
            )
    tables: dict[str, dict] = {}
    for seed in (int(x) for x in args.seeds.split(",")):
        run = out / f"run-seed{seed}"
        if not (run / "checkpoint" / "meta.json").exists():
            first = out / f"data-{levels[0]}"
            ganrec(["train", f"--data={first}", f"--out={run}", f"--seed={seed}"])
        for noise in reversed(levels):  # the first level last: its table stays in eval.json
            ganrec(
                [
                    "evaluate",
                    f"--data={out / f'data-{noise}'}",
                    f"--run={run}",
                    "--ablation=false",
                    "--cold_items=true",
                    f"--seed={seed}",
                ]
            )
            cold = json.loads((run / "eval.json").read_text())["cold_items"]
            tables.setdefault(str(seed), {})[str(noise)] = cold
        (out / "cold_items.json").write_text(
            json.dumps({"args": vars(args), "by_seed": tables}, indent=1) + "\n"
        )
    result = {"args": vars(args), "by_seed": tables, "seconds": round(time.time() - start, 1)}
    (out / "cold_items.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['seconds']} s -> {out / 'cold_items.json'}")


def embedded(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    tables: dict[str, dict] = {}
    for seed in (int(x) for x in args.seeds.split(",")):
        run = out / f"run-seed{seed}"
        if not (run / "checkpoint" / "meta.json").exists():
            ganrec(["train", f"--data={args.data}", f"--out={run}", f"--seed={seed}"])
        for split in args.splits.split(","):
            kept = out / split / f"seed{seed}"
            if not (kept / "eval.json").exists():
                ganrec(
                    [
                        "evaluate",
                        f"--data={args.data}",
                        f"--run={run}",
                        "--ablation=false",
                        "--cold_items=true",
                        f"--cold_item_split={split}",
                        f"--seed={seed}",
                    ]
                )
                kept.mkdir(parents=True, exist_ok=True)
                shutil.copy(run / "config.yaml", kept / "config.yaml")
                shutil.copy(run / "eval.json", kept / "eval.json.tmp")
                os.replace(kept / "eval.json.tmp", kept / "eval.json")
            cold = json.loads((kept / "eval.json").read_text())["cold_items"]
            tables.setdefault(str(seed), {})[split] = cold
        (out / "cold_items.json").write_text(
            json.dumps({"args": vars(args), "by_seed": tables}, indent=1) + "\n"
        )
    result = {"args": vars(args), "by_seed": tables, "seconds": round(time.time() - start, 1)}
    (out / "cold_items.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['seconds']} s -> {out / 'cold_items.json'}")


if __name__ == "__main__":
    main()
