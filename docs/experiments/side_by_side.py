"""Two sweep trials side by side, one torch thread each, against one at a time with all the
cores: the same trials (fixed epochs, no refit, so both ways do the same work), wall time of the
whole `ganrec sweep` and each trial's seconds, alternating the two ways round by round in one run.

    python docs/experiments/side_by_side.py --data data/movielens-small --work sweeps/side-by-side \
        --out docs/bench/side-by-side.json

Alone on the host: anything else running changes both ways' times.
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

import yaml

from ganrec_dist.bench.common import cpu_model
from ganrec_dist.core.logs import print_table
from ganrec_dist.core.storage import write_atomic

MODELS = {
    "gan": {"epochs": 4},
    "sasrec": {
        "encoder": "sasrec",
        "adv_weight": 0,
        "dropout": 0.2,
        "blocks": 2,
        "heads": 1,
        "table_lr": 1,
        "epochs": 3,
    },
}
WAYS = {
    "one at a time": {"max_concurrent": 1, "train": {}},
    "side by side": {"max_concurrent": 2, "train": {"cpus_per_worker": 0.5}},
}


def run_sweep(work: Path, data: str, model: str, way: str, seeds: int) -> dict:
    out = work / f"{model}-{way.replace(' ', '-')}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spec = {
        "name": "side-by-side",
        "out": str(out),
        "data": data,
        "seeds": seeds,
        "train": {"refit": False, "patience": 100, **MODELS[model], **WAYS[way]["train"]},
        "max_concurrent": WAYS[way]["max_concurrent"],
    }
    path = out / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    cli = [sys.executable, "-m", "ganrec_dist", "sweep", "--config", str(path)]
    start = time.time()
    done = subprocess.run(cli, capture_output=True, text=True, env={**os.environ})
    wall = time.time() - start
    if done.returncode != 0:
        sys.exit(f"{model}, {way}: the sweep failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    summary = json.loads((out / "sweep.json").read_text())
    trials = sorted(summary["trials"], key=lambda t: t["seed"])
    metas = [json.loads((Path(t["run"]) / "checkpoint" / "meta.json").read_text()) for t in trials]
    configs = [yaml.safe_load((Path(t["run"]) / "config.yaml").read_text()) for t in trials]
    return {
        "model": model,
        "way": way,
        "wall_s": round(wall, 1),
        "trial_s": [t["trained_s"] for t in trials],
        "val_ndcg@10": [round(t["val_ndcg@10"], 5) for t in trials],
        "epochs": [len(m["history"]) for m in metas],
        "threads": [c["execution"].get("threads", 0) for c in configs],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/movielens-small")
    ap.add_argument("--work", default="sweeps/side-by-side")
    ap.add_argument("--models", default="gan,sasrec")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="docs/bench/side-by-side.json")
    args = ap.parse_args()
    data = str(Path(args.data).resolve())
    work = Path(args.work).resolve()
    rows = []
    for model in args.models.split(","):
        for r in range(args.rounds):
            ways = list(WAYS) if r % 2 == 0 else list(reversed(WAYS))
            for way in ways:
                row = {"round": r, **run_sweep(work, data, model, way, args.seeds)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = []
    for model in args.models.split(","):
        walls = {
            way: [r["wall_s"] for r in rows if r["model"] == model and r["way"] == way]
            for way in WAYS
        }
        alone, side = walls["one at a time"], walls["side by side"]
        summary.append(
            {
                "model": model,
                "one_at_a_time_s": alone,
                "side_by_side_s": side,
                "speed_up": [round(a / s, 3) for a, s in zip(alone, side)],
            }
        )
    print_table(
        f"{args.seeds} trials per sweep, {cpu_model()}, {os.cpu_count()} CPUs",
        ["model", "round", "way", "torch threads", "wall s", "trial s", "val NDCG@10"],
        [
            [
                r["model"],
                r["round"],
                r["way"],
                ", ".join(str(t or "auto") for t in r["threads"]),
                f"{r['wall_s']:.1f}",
                ", ".join(f"{s:.0f}" for s in r["trial_s"]),
                ", ".join(f"{v:.4f}" for v in r["val_ndcg@10"]),
            ]
            for r in rows
        ],
    )
    for s in summary:
        print(f"{s['model']}: one at a time / side by side, per round: {s['speed_up']}")
    result = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "seeds": args.seeds,
        "rows": rows,
        "summary": summary,
    }
    write_atomic(Path(args.out), json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
