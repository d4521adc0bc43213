"""`ganrec bench scale`: what a training step costs as the catalogue grows, dense tables against
sparse ones in the same run; then `ganrec train` itself at the smallest and the largest size.

Step: the project's G and D, ``gan.train_step`` with a sampled softmax of the same shared
negatives at every size (so an ideal step costs the same at every size), the weight average,
random batches, users = items / 2; the dense path (Adam, weight decay and the average over whole
tables, as before sparse tables) and the sparse one (:mod:`ganrec_dist.training.tables`) alternate.

Train: ``ganrec train`` with its defaults on synthetic logs (``--full_catalogue``, so the
catalogue really has that many items), one epoch cut at ``steps`` steps: rows/s of the loop, the
share of step time spent waiting for Ray Data, peak memory of a worker and of the process tree;
at the largest size also with ``--sparse_tables false`` (the dense path) and with 2 workers.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ganrec_dist.bench.common import PeakMemory, cpu_model, random_step, write_json
from ganrec_dist.core.config import PrepareConfig, TrainConfig, build, setting
from ganrec_dist.core.logs import print_table
from ganrec_dist.data.layout import RunDir

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BenchScaleConfig:
    """`ganrec bench scale`: training cost against catalogue size, dense and sparse tables."""

    items: str = setting("10000,100000,1000000", "catalogue sizes, comma-separated")
    batch_size: int = setting(256, "rows per step")
    negatives: int = setting(8192, "shared sampled negatives per step, at every size")
    threads: int = setting(2, "torch threads of the step benchmark")
    steps: int = setting(12, "timed steps per variant and size (median reported)")
    train: bool = setting(True, "also run `ganrec train` at the smallest and largest size")
    train_rows: int = setting(3_000_000, "synthetic interactions of the train runs")
    train_users: int = setting(20_000, "synthetic users of the train runs")
    train_steps: int = setting(300, "steps of the train runs' one epoch")
    train_repeats: int = setting(
        3, "runs of each train variant, alternating with the others (the median is reported)"
    )
    workdir: str = setting("", "where data and runs go (default: a temporary directory)")
    out: str = setting("bench/scale.json", "results JSON (and a PNG beside it)")


def _step_fn(n_items: int, cfg: BenchScaleConfig, sparse: bool):
    settings = {"batch_size": cfg.batch_size, "sampled_negatives": cfg.negatives}
    train_cfg = build(TrainConfig, {**settings, "sparse_tables": sparse})
    return random_step(train_cfg, n_items // 2, n_items, negatives=cfg.negatives)


def step_costs(cfg: BenchScaleConfig) -> list[dict]:
    """ms/step and rows/s of the dense and the sparse step at each size, alternating."""
    torch.set_num_threads(cfg.threads)
    results = []
    for n_items in [int(n) for n in cfg.items.split(",")]:
        log.info("step at %d items", n_items)
        steps = {"dense": _step_fn(n_items, cfg, False), "sparse": _step_fn(n_items, cfg, True)}
        for step in steps.values():
            for _ in range(3):  # warm-up: allocator, thread pool, first-touch pages
                step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(cfg.steps):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append((time.perf_counter() - start) * 1000)
        row: dict[str, Any] = {"items": n_items, "users": n_items // 2}
        for name, values in times.items():
            ms = statistics.median(values)
            row[name] = {"ms_per_step": ms, "rows_per_s": cfg.batch_size / ms * 1000}
        results.append(row)
        del steps
    return results


def _train_run(
    cfg: BenchScaleConfig,
    data: Path,
    out: Path,
    *,
    workers: int = 1,
    sparse: bool = True,
    rows: str = "fused",
) -> dict:
    from ganrec_dist.training.train import train

    settings = {
        "data": str(data),
        "out": str(out),
        "epochs": 1,
        "refit": False,
        "max_steps_per_epoch": cfg.train_steps,
        "sparse_tables": sparse,
        "workers": workers,
        "row_update": rows,
        # The loop's rate is what is measured: validation on a sample, by exact search.
        "val_users": 2000,
        "index": {"kind": "flat"},
    }
    if workers > 1:
        settings["cpus_per_worker"] = 0.5  # two workers and Ray Data share two CPUs
    # Reading a process's memory map stalls it (the kernel walks its page tables): sampled
    # every 2 s, the training loop's rate is not the sampler's.
    with PeakMemory(each="RayTrainWorker", interval=2.0) as mem:
        train(build(TrainConfig, settings))
    payload = RunDir(out).payload()
    last = payload["state"]["history"][-1]
    held = RunDir(out).meta()["shards"]  # what each rank loaded of the log
    return {
        "workers": workers,
        "row_update": rows,
        "sparse_tables": payload["model_config"]["sparse"],  # only with a sampled softmax
        "softmax": "sampled" if payload["model_config"]["sparse"] or not sparse else "full",
        "rows": last["rows"],
        "seconds": last["seconds"],
        "rows_per_s": last["rows"] / last["seconds"],
        "data_wait_fraction": last["data_wait_fraction"],
        "peak_worker_gib": round(mem.peak_each / 2**30, 3),
        "peak_tree_gib": round(mem.peak / 2**30, 3),
        "log_bytes_per_worker": max(h["log_bytes"] for h in held),
        "rows_per_worker": [h["rows"] for h in held],
    }


def train_costs(cfg: BenchScaleConfig, work: Path) -> list[dict]:
    """`ganrec train` at the smallest and the largest size (and there the reference row update,
    the dense path and 2 workers), each variant ``train_repeats`` times in alternation: one
    run's rate moves by 10-20% on a shared machine, the median much less."""
    from ganrec_dist.data.prepare import prepare

    sizes = [int(n) for n in cfg.items.split(",")]
    variants: list[tuple[int, dict[str, Any]]] = [(min(sizes), {}), (max(sizes), {})]
    # The reference row update (torch's SparseAdam, then the average), the dense tables and two
    # workers, at the largest size.
    variants += [(max(sizes), v) for v in ({"rows": "reference"}, {"sparse": False})]
    variants += [(max(sizes), {"workers": 2})]
    for n_items in {n for n, _ in variants}:
        prepare(
            PrepareConfig(
                source="synthetic",
                out=str(work / f"data-{n_items}"),
                users=cfg.train_users,
                items=n_items,
                interactions=cfg.train_rows,
                full_catalogue=True,
                seed=0,
                overwrite=True,
            )
        )
    measured: dict[int, list[dict]] = {i: [] for i in range(len(variants))}
    for repeat in range(cfg.train_repeats):
        for i, (n_items, variant) in enumerate(variants):
            if repeat and variant.get("sparse") is False:
                continue  # the dense path's gap is large; one run of it is enough
            out = work / f"run-{i}"
            result = _train_run(cfg, work / f"data-{n_items}", out, **variant)
            measured[i].append({"items": n_items, **result})
            shutil.rmtree(out, ignore_errors=True)
    for n_items in {n for n, _ in variants}:
        shutil.rmtree(work / f"data-{n_items}", ignore_errors=True)
    runs = []
    for results in measured.values():
        median = sorted(results, key=lambda r: r["rows_per_s"])[len(results) // 2]
        runs.append({**median, "rows_per_s_each": [round(r["rows_per_s"]) for r in results]})
    return runs


def run(cfg: BenchScaleConfig) -> dict:
    from ganrec_dist.core.raycluster import ensure_ray

    results: dict = {"cpu": cpu_model(), "config": dataclasses.asdict(cfg)}
    results["step"] = step_costs(cfg)
    _print_steps(cfg, results["step"])
    if cfg.train:
        work = Path(cfg.workdir or tempfile.mkdtemp(prefix="ganrec-bench-scale-"))
        ensure_ray()
        try:
            results["train"] = train_costs(cfg, work)
        finally:
            if not cfg.workdir:
                shutil.rmtree(work, ignore_errors=True)
        _print_train(results["train"])
        results["ratios"] = _ratios(results["train"])
        print(
            "train rows/s, largest catalogue / smallest: {largest_over_smallest:.2f}; fused rows "
            "/ reference rows at the largest: {fused_over_reference_rows:.2f}".format(
                **results["ratios"]
            )
        )
    write_json(cfg.out, results)  # first: it creates the folder, and the numbers outlive a plot
    _plot(results, cfg.out.replace(".json", ".png"))
    return results


def _print_steps(cfg: BenchScaleConfig, rows: list[dict]) -> None:
    print_table(
        f"step: batch {cfg.batch_size}, {cfg.negatives} shared negatives, users = items / 2, "
        f"{cfg.threads} torch threads (median of {cfg.steps} alternating steps)",
        ["items", "dense ms/step", "sparse ms/step", "dense rows/s", "sparse rows/s", "speed-up"],
        [
            [r["items"], r["dense"]["ms_per_step"], r["sparse"]["ms_per_step"]]
            + [r["dense"]["rows_per_s"], r["sparse"]["rows_per_s"]]
            + [r["dense"]["ms_per_step"] / r["sparse"]["ms_per_step"]]
            for r in rows
        ],
    )


def _print_train(runs: list[dict]) -> None:
    print_table(
        "ganrec train: one epoch cut at the steps above, synthetic log",
        ["items", "workers", "tables", "rows/s", "data wait", "log MiB/worker"]
        + ["peak worker GiB", "peak tree GiB"],
        [
            [r["items"], r["workers"], _tables(r)]
            + [r["rows_per_s"], r["data_wait_fraction"], r["log_bytes_per_worker"] / 2**20]
            + [r["peak_worker_gib"], r["peak_tree_gib"]]
            for r in runs
        ],
    )


def _tables(run: dict) -> str:
    if not run["sparse_tables"]:
        return "dense"
    return "sparse" if run.get("row_update", "fused") == "fused" else "sparse, reference rows"


def _ratios(runs: list[dict]) -> dict[str, float]:
    """The headline ratios of one run: the largest catalogue's rate over the smallest's, and
    the fused row update's over the reference one's at the largest."""
    small, large = min(r["items"] for r in runs), max(r["items"] for r in runs)

    def rate(items: int, **match: Any) -> float:
        return next(
            r["rows_per_s"]
            for r in runs
            if r["items"] == items
            and r["workers"] == 1
            and all(r.get(k) == v for k, v in match.items())
        )

    fused = rate(large, row_update="fused", sparse_tables=True)
    return {
        "largest_over_smallest": fused / rate(small, row_update="fused"),
        "fused_over_reference_rows": fused / rate(large, row_update="reference"),
    }


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["step"]
    items = [r["items"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in ("dense", "sparse"):
        ax.plot(items, [r[name]["ms_per_step"] for r in rows], marker="o", label=f"{name} tables")
    ax.set_xscale("log")
    ax.set_xlabel("catalogue items (users = items / 2)")
    ax.set_ylabel("ms per training step")
    ax.set_title("training step cost against catalogue size")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
