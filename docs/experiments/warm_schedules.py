"""Warm-start schedules against the runs from scratch of a `ganrec bench update --workdir` run.

For each variant (train settings for the warm starts only) and seed: a warm start from the
bench's first model on each appended version in turn (the previous warm start its parent), then
`ganrec compare` of the variant's runs against the bench's runs from scratch on the test split
of the same version (paired per user over the seeds), and the mean seconds of its epochs. The
choice of the default warm schedule (docs/benchmarks.md, *update*) was made on a synthetic log
with another seed (`--data_seed 1`) than the one the bench reports, e.g.

    ganrec bench update --source synthetic --users 1000 --items 1500 --interactions 40000 \\
        --new_items 0.1 --seeds 0,1,2 --data_seed 1 --workdir EXP --out EXP/base.json
    python docs/experiments/warm_schedules.py EXP 0,1,2 \\
        '{"fixed3": {"init_schedule": "fixed", "init_epochs": 3}}' EXP/variants.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    from ganrec_dist.bench.update import _train
    from ganrec_dist.evaluation.compare import compare

    work, seeds = Path(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")]
    variants, out = json.loads(sys.argv[3]), {}
    partitions = sorted(int(p.name[4:]) for p in work.glob("data*") if p.name[4:].isdigit())[1:]
    for name, settings in variants.items():
        rows: dict[int, list] = {k: [] for k in partitions}
        for seed in seeds:
            live = str(work / f"seed{seed}" / "v0")
            for k in partitions:
                target = str(work / f"seed{seed}" / f"{name}{k}")
                data = str(work / f"data{k}")
                seconds = _train(data=data, out=target, init=live, seed=seed, **settings)
                rows[k].append((target, str(work / f"seed{seed}" / f"scratch{k}"), seconds))
                live = target
        for k in partitions:
            if not (work / f"seed{seeds[0]}" / f"scratch{k}").exists():
                continue  # bench update --days: runs from scratch on some days only
            paired = compare(
                [r[0] for r in rows[k]],
                [r[1] for r in rows[k]],
                split="test",
                data=str(work / f"data{k}"),
            )
            out[f"{name}/{k}"] = {
                "warm": paired["a"],
                "scratch": paired["b"],
                "ratio": paired["a"] / paired["b"],
                "interval": paired["interval"],
                "warm_epoch_s": float(np.mean([r[2]["epochs"] for r in rows[k]])),
            }
            print(name, k, json.dumps(out[f"{name}/{k}"]), flush=True)
    Path(sys.argv[4]).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
