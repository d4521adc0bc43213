"""Where a small run's wall time goes before its first step: a two-epoch run of the tests'
synthetic log (500 users, 1,000 items, 30,000 rows, the tests' TINY model), trained several
times on one local Ray, alternating how the driver hands the train split to Ray Data:

- ``stream-materialize``: ``read_parquet(...).materialize()`` (the code before the change);
- ``driver-tables``: the files read by the driver, ``from_arrow`` (the code now, for a split
  under ``--cache_rows``).

Ray's timeline gives the phases: the driver's datasets, Ray Train's controller (a new process,
torch imported to unpickle its config), the worker (a new process, the train function's imports),
then our setup, two epochs and the end. E.g.

    .venv/bin/python docs/experiments/train_startup.py docs/bench/train-startup.json
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tests_tiny() -> dict:
    """The tests' small model settings (``TINY`` of tests/test_train_integration.py)."""
    spec = importlib.util.spec_from_file_location(
        "test_train_integration", ROOT / "tests" / "test_train_integration.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TINY


def first_adam_seconds() -> float:
    """The first ``torch.optim.Adam`` of a fresh process (torch already imported): it imports
    ``torch._dynamo``, as every training worker's first optimiser does."""
    code = (
        "import time, torch; m = torch.nn.Linear(2, 2); t = time.perf_counter(); "
        "torch.optim.Adam(m.parameters()); print(time.perf_counter() - t)"
    )
    return float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )


def stream_materialize(cfg, data, files):
    columns = ["user_idx", "item_idx", "position"]
    return {
        f"train_{rank}": data.train_dataset(columns, files=mine).materialize()
        for rank, mine in enumerate(files)
    }


def phases(start: float) -> dict:
    """From Ray's timeline: seconds from ``start`` to the first controller and worker events,
    and how long the controller's and the worker's set-up took (their arguments unpickled:
    torch and the train function's modules imported in a new process)."""
    import ray

    found: dict = {}
    for event in ray.timeline():
        name, ts = str(event.get("cat", "")), event.get("ts", 0) / 1e6
        if event.get("ph") != "X" or ts < start:
            continue
        for key, label in (
            ("TrainController.__init__", "controller"),
            ("RayTrainWorker.init_train_context", "worker"),
            ("RayTrainWorker.run_train_fn", "train_fn"),
        ):
            if key in name and ts - start < found.get(label, 1e9):
                found[label] = round(ts - start, 2)
                if label != "train_fn":
                    found[f"{label}_setup"] = round(event.get("dur", 0) / 1e6, 2)
    return found


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ganrec_dist.bench.common import cpu_model
    from ganrec_dist.core.config import PrepareConfig, train_config
    from ganrec_dist.core.logs import print_table, setup_logging
    from ganrec_dist.core.raycluster import ensure_ray
    from ganrec_dist.data.layout import RunDir
    from ganrec_dist.data.prepare import prepare
    from ganrec_dist.training import train as train_module

    out = sys.argv[1] if len(sys.argv) > 1 else "bench/train-startup.json"
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    setup_logging(quiet=True)
    ensure_ray(num_cpus=2)
    work = tempfile.mkdtemp(prefix="startup-")
    data = f"{work}/data"
    prepare(
        PrepareConfig(
            source="synthetic", out=data, users=500, items=1000, interactions=30_000, seed=1
        )
    )
    tiny = tests_tiny()
    current = train_module._datasets
    variants = {"stream-materialize": stream_materialize, "driver-tables": current}
    runs: dict = {name: [] for name in variants}
    n = 0
    for rep in range(repeats + 1):  # the first round warms Ray's worker pool: not counted
        for name, datasets in variants.items():
            train_module._datasets = datasets
            start = time.time()
            train_module.train(
                train_config(data=data, out=f"{work}/run{n}", epochs=2, refit=False, **tiny)
            )
            wall = round(time.time() - start, 2)
            history = RunDir(f"{work}/run{n}").payload()["state"]["history"]
            epochs = round(sum(h["seconds"] for h in history), 2)
            n += 1
            if rep:
                runs[name].append({"wall": wall, "epochs": epochs, **phases(start)})
                print(name, runs[name][-1], flush=True)
    train_module._datasets = current
    rows = []
    result = {
        "cpu": cpu_model(),
        "repeats": repeats,
        "first_adam_s": round(first_adam_seconds(), 2),
        "variants": {},
    }
    for name, found in runs.items():
        median = {k: statistics.median(r[k] for r in found) for k in found[0]}
        result["variants"][name] = {"runs": found, "median": median}
        # From the train function's start to fit() returning, less the epochs: our set-up
        # (its first Adam included) and Ray Train's end.
        median["rest"] = round(median["wall"] - median["train_fn"] - median["epochs"], 2)
        keys = ("controller", "controller_setup", "worker", "worker_setup", "train_fn")
        rows.append(
            [name, *(median.get(k, float("nan")) for k in (*keys, "epochs", "rest", "wall"))]
        )
    print_table(
        f"two-epoch run of the tests' synthetic log, medians, seconds from train() "
        f"({result['cpu']}; a fresh process's first Adam: {result['first_adam_s']} s)",
        [
            "datasets",
            "controller starts",
            "its set-up",
            "worker starts",
            "its set-up",
            "train fn starts",
            "epochs",
            "set-up + end",
            "wall",
        ],
        rows,
    )
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
