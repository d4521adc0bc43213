"""`ganrec sweep --config SWEEP.yaml`: `ganrec train` configurations x seeds as Ray Tune trials.

Each trial is one `ganrec train` run in a RUN directory of its own (``OUT/runs/<name>-seed<k>``),
an ordinary run that `evaluate`, `compare`, `index`, `score` and `serve` read. Tune schedules the
trials on the local Ray or a cluster (``--address``), prints its progress table, and keeps its
state under ``OUT/tune``: running the same command again resumes the sweep (finished trials are
kept, an interrupted one resumes its run from the run's last checkpoint). Trials report
validation metrics only; ``--test`` adds each final model's test NDCG@10.

SWEEP.yaml::

    name: embedded-seeds        # the sweep (Tune's experiment name)
    out: sweeps/embedded-seeds  # where the runs and Tune's state go
    data: data/movielens-small
    seeds: 10                   # seeds 0..9, or a list: [0, 3, 5]
    train: {epochs: 30}         # settings shared by every trial
    configurations:             # named configurations (default: one, "default")
      gan: {}
      ablation: {adv_weight: 0}
    grid:                       # optional: every combination, crossed with the configurations
      dropout: [0.2, 0.5]
    max_concurrent: 1           # trials at once; see below

Trials side by side (``max_concurrent`` > 1 on a local Ray) each get the machine's cores divided
among them as torch threads (``threads`` in ``train`` overrides it): with all of them each, two
trainings on 2 CPUs run ~6x slower each. Leave CPUs for Ray Data too (``cpus_per_worker: 0.5``
for two trials on 2 CPUs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ganrec_dist.core.config import TrainConfig, build, flatten
from ganrec_dist.core.errors import UserError
from ganrec_dist.core.storage import write_atomic
from ganrec_dist.data.layout import SweepDir

log = logging.getLogger(__name__)

KEYS = {"name", "out", "data", "seeds", "train", "configurations", "grid", "max_concurrent"}


def read_sweep(path: str) -> dict[str, Any]:
    """The sweep file, checked: every trial's settings build a TrainConfig."""
    try:
        spec = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise UserError(f"{path}: cannot read sweep file ({exc.strerror})") from None
    except yaml.YAMLError:
        raise UserError(f"{path}: not valid YAML") from None
    if not isinstance(spec, dict):
        raise UserError(f"{path}: expected a mapping")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r} (expected {', '.join(sorted(KEYS))})")
    for key in ("name", "out", "data"):
        if not spec.get(key):
            raise UserError(f"{path}: '{key}' is required")
    seeds = spec.get("seeds", 1)
    spec["seeds"] = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not spec["seeds"] or not all(isinstance(s, int) for s in spec["seeds"]):
        raise UserError(f"{path}: 'seeds' must be a count or a list of integers")
    for key in ("train", "configurations", "grid"):
        if not isinstance(spec.get(key) or {}, dict):
            raise UserError(f"{path}: '{key}' must be a mapping")
    spec["trials"] = trials(spec)
    for trial in spec["trials"]:
        try:
            build(TrainConfig, trial["settings"])
        except UserError as exc:
            raise UserError(f"{path}: configuration {trial['config']!r}: {exc}") from None
    return spec


def trials(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (configuration, grid point, seed) as a trial: its name and train settings."""
    configurations = spec.get("configurations") or {"default": {}}
    grid = spec.get("grid") or {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"grid key {key!r}: expected a non-empty list of values")
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] or [{}]
    out = Path(spec["out"]).resolve()
    result = []
    # Seed by seed, so that the pairs `compare` needs complete together in a partial sweep.
    for seed in spec["seeds"]:
        for (name, settings), point in itertools.product(configurations.items(), points):
            label = "-".join([str(name)] + [f"{k}{v}" for k, v in point.items()])
            run = SweepDir(out).run(f"{label}-seed{seed}")
            merged = {
                **flatten(spec.get("train") or {}),
                **flatten(settings or {}),
                **point,
                "data": _absolute(str(spec["data"])),
                "seed": seed,
                "out": str(run),
                "name": f"{label}-seed{seed}",
            }
            result.append({"config": label, "seed": seed, "run": str(run), "settings": merged})
    return result


def _absolute(path: str) -> str:
    """A local path as an absolute one (trials run in other working directories); a URI as is."""
    return path if "://" in path else str(Path(path).resolve())


def run_trial(trial: dict[str, Any]) -> dict[str, Any]:
    """One trial, in a Tune trial process: train (or resume) its run; its metrics."""
    from ganrec_dist.data.layout import RunDir
    from ganrec_dist.training.train import train_or_reuse

    settings, test = trial["settings"], trial.get("test", False)
    start = time.time()
    run = RunDir.open(train_or_reuse(build(TrainConfig, settings))["run"])
    meta = run.meta()
    search = [h for h in meta["history"] if h.get("phase") == "search"]
    metrics: dict[str, Any] = {
        "val_ndcg@10": max((h.get("val_ndcg@10", 0.0) for h in search), default=0.0),
        "best_epoch": meta["best_epoch"],
        "epochs": len(meta["history"]),
        "trained_s": round(time.time() - start, 1),
    }
    if test:
        from ganrec_dist.evaluation.compare import test_scores

        metrics["test_ndcg@10"] = float(test_scores(run, settings["data"])[1].mean())
    return metrics


def _share_cores(trial_list: list[dict[str, Any]], cores: int, concurrent: int) -> None:
    """Trials side by side divide the cores: a trial that would take every core as torch
    threads (`ExecutionSettings.takes_every_core`) gets its share, so that two such trainings
    do not oversubscribe the CPUs."""
    share = max(1, cores // concurrent)
    for trial in trial_list:
        settings = trial["settings"]
        if build(TrainConfig, settings).execution.takes_every_core():
            rest = {k: v for k, v in settings.items() if k not in ("threads", "execution.threads")}
            trial["settings"] = {**rest, "threads": share}


def _trial_name(trial: Any) -> str:
    return f"{trial.config['trial']['config']}-seed{trial.config['trial']['seed']}"


def _trainable(config: dict[str, Any]) -> None:
    import ray.tune

    trial = config["trial"]
    ray.tune.report({**run_trial(trial), "config": trial["config"], "seed": trial["seed"]})


def _tuner(name: str, storage: Path, trial_list: list[dict[str, Any]], concurrent: int) -> Any:
    """The sweep's Tuner: restored from ``storage`` if it started before, else a new one."""
    import ray.tune

    # The trial process only waits for its run's Ray Train workers, which ask for their own CPUs.
    trainable = ray.tune.with_resources(_trainable, {"cpu": 0.01})
    experiment = storage / name
    if ray.tune.Tuner.can_restore(str(experiment)):
        # Tune restores the trials and the concurrency the sweep started with, not the file's.
        log.info(
            "resuming the sweep from %s with the trials and max_concurrent it started with "
            "(move it aside to start afresh: finished runs are reused, not trained again)",
            experiment,
        )
        return ray.tune.Tuner.restore(
            str(experiment), trainable, resume_unfinished=True, resume_errored=True
        )
    if concurrent > 1:
        _share_cores(trial_list, int(ray.cluster_resources().get("CPU", 1)), concurrent)
    return ray.tune.Tuner(
        trainable,
        param_space={"trial": ray.tune.grid_search(trial_list)},
        tune_config=ray.tune.TuneConfig(
            max_concurrent_trials=concurrent,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=ray.tune.RunConfig(name=name, storage_path=str(storage)),
    )


def sweep(path: str, *, address: str = "", test: bool = False, max_concurrent: int = 0) -> dict:
    """Run (or resume) the sweep of ``path``; writes and returns OUT/sweep.json."""
    from ganrec_dist.core.raycluster import ensure_ray

    spec = read_sweep(path)
    out = Path(spec["out"]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ensure_ray(address)
    concurrent = max_concurrent or int(spec.get("max_concurrent") or 1)
    storage = out / "tune"
    trial_list = [{**t, "test": test} for t in spec["trials"]]
    log.info(
        "sweep %s: %d trials, %d at a time -> %s", spec["name"], len(trial_list), concurrent, out
    )
    grid = _tuner(spec["name"], storage, trial_list, concurrent).fit()
    results, unstarted = [], 0
    for result in (grid[i] for i in range(len(grid))):
        trial = (result.config or {}).get("trial")
        if trial is None:  # the sweep was stopped before Tune started this trial
            unstarted += 1
            continue
        metrics = {
            k: v
            for k, v in (result.metrics or {}).items()
            if k.endswith("@10") or k in ("best_epoch", "epochs", "trained_s")
        }
        results.append(
            {
                "config": trial["config"],
                "seed": trial["seed"],
                "run": trial["run"],
                "error": str(result.error).splitlines()[0] if result.error else None,
                **metrics,
            }
        )
    results.sort(key=lambda r: (r["config"], r["seed"]))
    summary = {
        "name": spec["name"],
        "sweep": str(path),
        "test": test,
        "trials": results,
        "configurations": summarise(results),
    }
    write_atomic(SweepDir(out).summary, json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    failed = [r for r in results if r["error"]]
    if unstarted:
        raise UserError(
            f"the sweep stopped with {unstarted} trial(s) not started: run the same command "
            "again to resume it"
        )
    if failed:
        raise UserError(
            f"{len(failed)} trial(s) failed, first {failed[0]['run']}: "
            f"{failed[0]['error']}; run the sweep again to retry them"
        )
    return summary


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if not r["error"] and "val_ndcg@10" in r:
            by.setdefault(r["config"], []).append(r)
    out = {}
    for name, rs in by.items():
        row: dict[str, Any] = {"seeds": len(rs)}
        for key in ("val_ndcg@10", "test_ndcg@10"):
            values = np.array([r[key] for r in rs if key in r])
            if len(values):
                row[key] = float(values.mean())
                row[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[name] = row
    return out


def print_summary(summary: dict[str, Any]) -> None:
    from ganrec_dist.core.logs import print_table

    rows = []
    for name, row in summary["configurations"].items():
        cells = [name, row["seeds"]]
        for key in ("val_ndcg@10", "test_ndcg@10"):
            cells.append(f"{row[key]:.4f} ± {row[key + '_sd']:.4f}" if key in row else "-")
        rows.append(cells)
    print_table(
        f"sweep {summary['name']}: mean ± sd over seeds",
        ["configuration", "seeds", "validation NDCG@10", "test NDCG@10"],
        rows,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ganrec sweep", description="train configurations x seeds as Ray Tune trials"
    )
    parser.add_argument("--config", required=True, help="the SWEEP.yaml file")
    parser.add_argument("--address", default="", help="Ray cluster address (default: local)")
    parser.add_argument("--test", action="store_true", help="also report each run's test NDCG@10")
    parser.add_argument(
        "--max_concurrent",
        "--max-concurrent",
        type=int,
        default=0,
        help="trials at once (default: the file's, else 1)",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    args = parser.parse_args(argv)
    from ganrec_dist.core.logs import setup_logging

    setup_logging(verbose=args.verbose, quiet=args.quiet)
    sweep(args.config, address=args.address, test=args.test, max_concurrent=args.max_concurrent)
    return 0
