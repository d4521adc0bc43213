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

import json
import os
import statistics
import sys
import tempfile
import time

TINY = dict(
    dim=16,
    hidden=32,
    history_len=10,
    noise_dim=4,
    batch_size=256,
    lr=5e-3,
    cpus_per_worker=0.5,
    shuffle_buffer=20_000,
)


def stream_materialize(cfg, data, files):
    columns = ["user_idx", "item_idx", "position"]
    return {
        f"train_{rank}": data.train_dataset(columns, files=mine).materialize()
        for rank, mine in enumerate(files)
    }


def phases(start: float) -> dict:
    """Seconds from ``start`` to the first controller and worker events of Ray's timeline."""
    import ray

    first: dict = {}
    for event in ray.timeline():
        name, ts = str(event.get("cat", "")), event.get("ts", 0) / 1e6
        if event.get("ph") != "X" or ts < start:
            continue
        for key, label in (
            ("TrainController.__init__", "controller"),
            ("RayTrainWorker.init_train_context", "worker"),
            ("RayTrainWorker.run_train_fn", "train_fn"),
        ):
            if key in name:
                first[label] = min(first.get(label, 1e9), round(ts - start, 2))
    return first


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ganrec_dist.bench.common import cpu_model
    from ganrec_dist.core.config import PrepareConfig, train_config
    from ganrec_dist.core.logs import print_table, setup_logging
    from ganrec_dist.core.raycluster import ensure_ray
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
    current = train_module._datasets
    variants = {"stream-materialize": stream_materialize, "driver-tables": current}
    runs: dict = {name: [] for name in variants}
    n = 0
    for rep in range(repeats + 1):  # the first round warms Ray's worker pool: not counted
        for name, datasets in variants.items():
            train_module._datasets = datasets
            start = time.time()
            train_module.train(
                train_config(data=data, out=f"{work}/run{n}", epochs=2, refit=False, **TINY)
            )
            wall = round(time.time() - start, 2)
            n += 1
            if rep:
                runs[name].append({"wall": wall, **phases(start)})
                print(name, runs[name][-1], flush=True)
    train_module._datasets = current
    rows, result = [], {"cpu": cpu_model(), "repeats": repeats, "variants": {}}
    for name, found in runs.items():
        median = {k: statistics.median(r[k] for r in found) for k in found[0]}
        result["variants"][name] = {"runs": found, "median": median}
        rows.append(
            [
                name,
                *(
                    f"{median.get(k, float('nan')):.2f}"
                    for k in ("controller", "worker", "train_fn", "wall")
                ),
            ]
        )
    print_table(
        f"two-epoch run of the tests' synthetic log: seconds from train() ({result['cpu']})",
        ["datasets", "controller starts", "worker starts", "train fn starts", "wall"],
        rows,
    )
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
