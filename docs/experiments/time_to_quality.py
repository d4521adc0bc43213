"""The default run's wall time and test NDCG@10, an older version of the code against this one,
in one run on one machine (the two alternate seed by seed, each run alone).

    git worktree add ../old 8aa7523          # the version to compare against
    python docs/experiments/time_to_quality.py --old ../old --data DATA --seeds 0,1 \\
        --out docs/bench/time-to-quality.json [-- extra train settings for both]

Each run is `python -m ganrec_dist train --data DATA --out OUT/<code>-seed<k> --seed k` in a
process of its own (the old code from its worktree on PYTHONPATH, the new one from this
checkout), timed from start to exit (Ray's start included), with its training loop's rows/s
(the search epochs' rows over their seconds); then its final model's test NDCG@10 through the
retrieval path (`ganrec compare`'s `test_scores`; `--no_test` skips it). Prints a table with the
CPU model and the ratios new / old, and writes the JSON. The rates at a million items, in one run:

    python docs/experiments/time_to_quality.py --old ../old --data DATA_1M --seeds 0,1 --no_test \
        --out docs/bench/old-new-rate-1m.json -- --epochs 1 --refit false \
        --max_steps_per_epoch 300 --val_users 2000 --index.kind flat
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]


def train(code: Path, data: str, out: Path, seed: int, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-m", "ganrec_dist", "train", "--data", data, "--out", str(out)]
    command += ["--seed", str(seed), "--quiet", *extra]
    version = subprocess.run(
        [sys.executable, "-c", "import ganrec_dist; print(ganrec_dist.__file__)"],
        env=env,
        cwd=code,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not version.startswith(str(code)):
        raise SystemExit(f"{code}: imported {version} instead")
    start = time.perf_counter()
    # Run from the code's own directory: `python -m` puts the working directory ahead of
    # PYTHONPATH, so from this checkout the "old" run would import this checkout's package.
    subprocess.run(command, env=env, check=True, cwd=code)
    wall = time.perf_counter() - start
    with open(out / "history.csv") as handle:
        history = list(csv.DictReader(handle))
    search = [h for h in history if h["phase"] == "search"]
    return {
        "seed": seed,
        "wall_s": round(wall, 1),
        "loop_s": round(sum(float(h["seconds"]) for h in history), 1),
        "search_epochs": len(search),
        "refit_epochs": len(history) - len(search),
        "best_val_ndcg@10": max(float(h["val_ndcg@10"]) for h in search),
        # The training loop's rate over the search epochs (validation and Ray's start excluded).
        "rows_per_s": round(
            sum(float(h["rows"]) for h in search) / sum(float(h["seconds"]) for h in search)
        ),
    }


def test_ndcg(out: Path, data: str) -> float:
    from ganrec_dist.data.layout import RunDir
    from ganrec_dist.evaluation.compare import test_scores

    return float(test_scores(RunDir.open(str(out)), data)[1].mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="a worktree of the older code")
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--workdir", default="runs/time-to-quality")
    parser.add_argument("--out", default="bench/time-to-quality.json")
    parser.add_argument(
        "--no_test", action="store_true", help="skip test NDCG@10 (rate-only comparisons)"
    )
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    from ganrec_dist.bench.common import cpu_model, write_json
    from ganrec_dist.core.logs import print_table

    work = Path(args.workdir).resolve()  # the runs start in each code's own directory
    args.data = str(Path(args.data).resolve())
    runs: list[dict] = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, code in (("old", Path(args.old).resolve()), ("new", HERE)):
            out = work / f"{name}-seed{seed}"
            if not (out / "history.csv").exists():
                result = train(code, args.data, out, seed, extra)
                test = None if args.no_test else round(test_ndcg(out, args.data), 4)
                result.update(code=name, test_ndcg10=test)
                (out / "time.json").write_text(json.dumps(result) + "\n")
            runs.append(json.loads((out / "time.json").read_text()))
            print(runs[-1], flush=True)
    by = {name: [r for r in runs if r["code"] == name] for name in ("old", "new")}
    rows = []
    for seed in sorted({r["seed"] for r in runs}):
        old, new = (next(r for r in by[n] if r["seed"] == seed) for n in ("old", "new"))
        tests = [old["test_ndcg10"], new["test_ndcg10"]]
        rows.append(
            [seed, old["wall_s"], new["wall_s"], new["wall_s"] / old["wall_s"]]
            + [old["rows_per_s"], new["rows_per_s"], new["rows_per_s"] / old["rows_per_s"]]
            + tests
            + [None if None in tests else tests[1] - tests[0]]
        )
    result = {"cpu": cpu_model(), "data": args.data, "extra": extra, "runs": runs}
    write_json(args.out, result)
    print_table(
        f"default run, old code against new, {cpu_model()}",
        ["seed", "old wall s", "new wall s", "new / old", "old rows/s", "new rows/s", "new / old"]
        + ["old test NDCG@10", "new test NDCG@10", "new - old"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
