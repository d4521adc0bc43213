"""The whole pipeline on a large synthetic log, each stage as a user runs it: its time and peak memory.

    prepare (synthetic, --full_catalogue) -> train (2 workers, a fixed step budget, no refit)
    -> evaluate (GAN, its ablation trained on the same budget, ALS, popularity; EASE skipped
    above its size limit; a seeded sample of test users, every item ranked) -> index -> score

Each stage is one `ganrec` command in a subprocess; peak memory is the PSS of its whole process
tree (its local Ray included), sampled every 0.5 s. Run alone on a quiet machine, e.g.

    .venv/bin/python docs/experiments/pipeline_at_scale.py --interactions 20000000 \\
        --items 1000000 --users 200000 --steps 2000 --out docs/bench/pipeline-20m.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ORDER = ("prepare", "train", "evaluate", "index", "score")
FIRST = {"stage": "prepare"}


def stage(name: str, args: list[str], results: list[dict]) -> None:
    from ganrec_dist.bench.common import PeakMemory

    if ORDER.index(name) < ORDER.index(FIRST["stage"]):
        return

    print(f"== ganrec {name} {' '.join(args)}", flush=True)
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "ganrec_dist", name, *args])
    with PeakMemory(pid=proc.pid, interval=0.5) as mem:
        status = proc.wait()
    results.append(
        {
            "stage": name,
            "seconds": round(time.time() - start, 1),
            "peak_gib": round(mem.peak / 2**30, 2),
            "status": status,
        }
    )
    print(json.dumps(results[-1]), flush=True)
    if status:
        raise SystemExit(f"ganrec {name} failed with status {status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=2_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=2000, help="training step budget")
    parser.add_argument("--eval_users", type=int, default=20_000)
    parser.add_argument("--als_regs", default="0.01,0.1,1.0", help="ALS's validation grid")
    parser.add_argument("--workdir", default="")
    parser.add_argument(
        "--from_stage", default="prepare", help="skip the stages before this one (a re-run)"
    )
    parser.add_argument("--out", default="pipeline.json")
    args = parser.parse_args()
    FIRST["stage"] = args.from_stage
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ganrec-pipeline-"))
    data, run = work / "data", work / "run"
    budget = ["--epochs", "1", "--max_steps_per_epoch", str(args.steps), "--refit", "false"]
    results: list[dict] = []
    try:
        stage(
            "prepare",
            ["--source", "synthetic", "--users", str(args.users), "--items", str(args.items)]
            + ["--interactions", str(args.interactions), "--full_catalogue", "true"]
            + ["--out", str(data), "--overwrite", "true", "--quiet"],
            results,
        )
        train = ["--data", str(data), "--out", str(run), "--workers", "2"]
        stage("train", train + ["--cpus_per_worker", "0.5", *budget, "--quiet"], results)
        stage(
            "evaluate",
            ["--data", str(data), "--run", str(run), "--max_users", str(args.eval_users)]
            + ["--als_regs", args.als_regs, "--quiet"],
            results,
        )
        stage("index", ["--run", str(run), "--quiet"], results)
        stage(
            "score",
            ["--data", str(data), "--run", str(run), "--out", str(work / "recs.parquet")]
            + ["--overwrite", "true", "--actors", "2", "--quiet"],
            results,
        )
        evaluation = json.loads((run / "eval.json").read_text())
        manifest = json.loads((data / "manifest.json").read_text())
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    summary = {
        "args": vars(args),
        "manifest": {k: manifest[k] for k in ("users", "items", "train_rows", "test_rows")},
        "stages": results,
        "ndcg@10": {m: v["ndcg@10"] for m, v in evaluation["models"].items()},
        "skipped": evaluation.get("skipped", {}),
    }
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
