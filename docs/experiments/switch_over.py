"""Where the sampled softmax should take over from the full one: speed and validation NDCG@10.

At each catalogue size, a synthetic log (planted structure, ``--full_catalogue``) and three
`ganrec train` runs with everything else at its defaults: the full softmax
(``--sampled_negatives 0``), the sampled one with mixed negatives (the batch's targets and 8,192
uniform ones, log-Q corrected) and with uniform ones only. Each run is the same number of steps
(validation on the same users after each epoch, no refit); reported: the loop's rows/s, the best
validation NDCG@10, and seconds to that point. Run alone on a quiet machine:

    .venv/bin/python docs/experiments/switch_over.py --out docs/bench/switch-over.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from pathlib import Path

MODES = {
    "full": {"sampled_negatives": 0},
    "sampled-mixed": {"sampled_negatives": 8192, "in_batch_negatives": True},
    "sampled-uniform": {"sampled_negatives": 8192, "in_batch_negatives": False},
}


def main() -> None:
    from ganrec_dist.core.config import PrepareConfig, TrainConfig, build
    from ganrec_dist.core.logs import print_table, setup_logging
    from ganrec_dist.core.raycluster import ensure_ray
    from ganrec_dist.data.layout import RunDir
    from ganrec_dist.data.prepare import prepare
    from ganrec_dist.training.train import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="10000,100000")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400, help="steps per epoch")
    parser.add_argument("--out", default="switch-over.json")
    args = parser.parse_args()
    setup_logging(quiet=True)
    ensure_ray()
    work = Path(tempfile.mkdtemp(prefix="ganrec-switch-"))
    results = []
    try:
        for n_items in [int(n) for n in args.items.split(",")]:
            data = work / f"data-{n_items}"
            prepare(
                PrepareConfig(
                    source="synthetic",
                    out=str(data),
                    users=args.users,
                    items=n_items,
                    interactions=args.interactions,
                    full_catalogue=True,
                    seed=0,
                )
            )
            for mode, settings in MODES.items():
                out = work / f"run-{n_items}-{mode}"
                schedule = {"epochs": args.epochs, "max_steps_per_epoch": args.steps}
                cfg = {"data": str(data), "out": str(out), "refit": False, "patience": 99}
                train(build(TrainConfig, {**cfg, **schedule, **settings}))
                history = RunDir(out).payload()["state"]["history"]
                best = max(history, key=lambda h: h["val_ndcg@10"])
                rows, seconds = sum(h["rows"] for h in history), sum(h["seconds"] for h in history)
                results.append(
                    {
                        "items": n_items,
                        "mode": mode,
                        "rows_per_s": rows / seconds,
                        "best_val_ndcg@10": best["val_ndcg@10"],
                        "best_epoch": best["epoch"],
                        "val_ndcg@10_by_epoch": [h["val_ndcg@10"] for h in history],
                        "seconds": seconds,
                    }
                )
                print(json.dumps(results[-1]), flush=True)
                shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(data, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(
        f"full vs sampled softmax: {args.epochs} epochs x {args.steps} steps, "
        f"{args.users:,} users, {args.interactions:,} rows",
        ["items", "softmax", "rows/s", "best val NDCG@10", "at epoch", "loop seconds"],
        [
            [r["items"], r["mode"], r["rows_per_s"], r["best_val_ndcg@10"], r["best_epoch"]]
            + [r["seconds"]]
            for r in results
        ],
    )
    Path(args.out).write_text(
        json.dumps(
            {"args": vars(args), "cpu": platform.processor() or _cpu(), "runs": results}, indent=2
        )
        + "\n"
    )


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    main()
