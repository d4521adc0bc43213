"""`ganrec train`: the adversarial recommender on Ray Train.

The driver checks the inputs, records the configuration in RUN/config.yaml and the log serving
needs in RUN/log/, deals the train shards to the ranks (whole users each, :mod:`shards`), streams
each rank's shards through Ray Data to a ``TorchTrainer`` whose workers run
:func:`worker.train_loop`, prints a line per epoch, and writes the run's history when it is
done. Re-running the same command resumes the run (Ray Train's storage in RUN/ray_results, and
RUN/checkpoint).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from ganrec_dist.core import storage
from ganrec_dist.core.config import TrainConfig, to_dict
from ganrec_dist.core.errors import UserError
from ganrec_dist.data import shards
from ganrec_dist.data.layout import DataDir, RunDir
from ganrec_dist.model import sampling
from ganrec_dist.model.models import ENCODERS
from ganrec_dist.training import warmstart
from ganrec_dist.training.history import Progress, write_history
from ganrec_dist.training.resume import check_resumable, run_changes
from ganrec_dist.training.tower import OBJECTIVES
from ganrec_dist.training.worker import train_loop

log = logging.getLogger(__name__)

ROW_UPDATES = ("fused", "reference")


def _check(cfg: TrainConfig, data: DataDir) -> None:
    if cfg.execution.workers < 1:
        raise UserError("--workers must be at least 1")
    if cfg.execution.threads < 0:
        raise UserError(f"--threads must be 0 (automatic) or more, got {cfg.execution.threads}")
    if not 0 <= cfg.optim.ema_decay < 1:
        raise UserError(f"--ema_decay must be in [0, 1), got {cfg.optim.ema_decay}")
    model = cfg.model
    if model.encoder not in ENCODERS:
        raise UserError(f"--encoder {model.encoder!r}: expected one of {', '.join(ENCODERS)}")
    spec = ENCODERS[model.encoder]
    problem = spec.check(model)
    if problem:
        raise UserError(problem)
    noisy = ", ".join(name for name, e in ENCODERS.items() if e.takes_noise)
    sampling.check(cfg.sampling, spec.takes_noise, noisy)
    if cfg.execution.row_update not in ROW_UPDATES:
        raise UserError(
            f"--row_update {cfg.execution.row_update!r}: expected one of {', '.join(ROW_UPDATES)}"
        )
    if not 1 <= cfg.optim.train_positions <= model.history_len:
        raise UserError(
            f"--train_positions must be in 1..history_len ({model.history_len}), got "
            f"{cfg.optim.train_positions}"
        )
    if cfg.content.tower not in ("off", *OBJECTIVES):
        raise UserError(f"--tower {cfg.content.tower!r}: expected off, {', '.join(OBJECTIVES)}")
    if cfg.content.cold_item_blend < 0 or cfg.content.cold_item_blend_scale < 0:
        raise UserError("--cold_item_blend and --cold_item_blend_scale: expected >= 0")
    if not 0.0 <= cfg.content.explore_share <= 1.0:
        raise UserError(f"--explore_share {cfg.content.explore_share}: expected 0..1")
    if cfg.content.tower != "off" and not data.manifest.get("content"):
        raise UserError(f"{data}: --tower needs item content (prepare --item_content FILE)")
    if data.manifest["train_rows"] == 0:
        raise UserError(f"{data}: no train rows")
    if cfg.optim.init_schedule not in ("search", "fixed"):
        raise UserError(f"--init_schedule {cfg.optim.init_schedule!r}: expected search or fixed")
    if not 0 <= cfg.optim.init_shrink <= 1:
        raise UserError(f"--init_shrink {cfg.optim.init_shrink}: expected a share in [0, 1]")
    if not 0 < cfg.optim.init_replay <= 1:
        raise UserError(f"--init_replay {cfg.optim.init_replay}: expected a share in (0, 1]")
    if cfg.init and cfg.optim.init_schedule == "fixed" and cfg.optim.init_epochs < 1:
        raise UserError("--init_schedule fixed: --init_epochs must be at least 1")


def new_items_from(data: DataDir) -> int:
    """The first item index of DATA's newest partition's new items (ids keep their index, new
    ones come after): the catalogue's size when DATA was never appended to."""
    partitions = data.manifest.get("partitions") or []
    if len(partitions) < 2:
        return int(data.manifest["items"])
    return int(data.manifest["items"]) - int(partitions[-1].get("new_items", 0))


def lineage(cfg: TrainConfig, data: DataDir) -> dict:
    """What the checkpoint records of the run's DATA and its parent (``--init``, checked here)."""
    record = {
        "data_version": data.version,
        "data_max_timestamp": data.max_timestamp,
        "new_items_from": new_items_from(data),
        "parent": None,
    }
    if not cfg.init:
        return record
    parent = warmstart.check_parent(cfg.init, cfg.model, data)
    record["parent"] = {
        "run": storage.display(cfg.init),
        "data_version": warmstart.parent_data_version(parent),
        "epoch": parent["state"]["epoch"],
    }
    return record


def warm_schedule(cfg: TrainConfig) -> TrainConfig:
    """Under ``--init`` the search runs ``init_epochs`` with ``init_patience``."""
    if not cfg.init or cfg.optim.init_epochs <= 0:
        return cfg
    optim = dataclasses.replace(
        cfg.optim, epochs=cfg.optim.init_epochs, patience=cfg.optim.init_patience
    )
    return dataclasses.replace(cfg, optim=optim)


def _threads(cfg: TrainConfig) -> int:
    """Torch threads per worker: ``--threads``, else its whole CPUs; one local worker gets the
    machine's cores."""
    import ray

    ex = cfg.execution
    if ex.threads > 0:
        return ex.threads
    threads = max(1, int(ex.cpus_per_worker) if ex.cpus_per_worker >= 1 else 1)
    if ex.takes_every_core():
        threads = max(threads, int(ray.cluster_resources().get("CPU", 1)))
    return threads


def _datasets(cfg: TrainConfig, data: DataDir, files: list[list[str]]) -> dict[str, Any]:
    """One Ray Data dataset per rank, ``train_<rank>``, over the shards dealt to it."""
    import ray.data

    context = ray.data.DataContext.get_current()
    # The epoch lines are the progress report; Ray Data's bars would repeat every epoch.
    context.enable_progress_bars = False
    # Blocks in file order: with the seeded local shuffle, the same seed and worker count give
    # the same batches (parallel reads otherwise finish, and arrive, in any order).
    context.execution_options.preserve_order = True
    columns = ["user_idx", "item_idx", "position"]
    cache = data.manifest["train_rows"] <= cfg.dataset.cache_rows
    datasets = {}
    for rank, mine in enumerate(files):
        if cache:
            # Small enough to keep in the object store, so later epochs skip the Parquet reads;
            # read here, since Ray Data's listing and footer actors take seconds to start, more
            # than reading these rows does.
            datasets[f"train_{rank}"] = ray.data.from_arrow(data.train_tables(columns, mine))
        else:
            datasets[f"train_{rank}"] = data.train_dataset(columns, files=mine)
    return datasets


def _trainer(cfg: TrainConfig, data: DataDir, run: RunDir, *, name: str, origin: dict) -> Any:
    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    ex = cfg.execution
    found = data.train_shards()
    files = shards.assign(found, ex.workers)
    steps = shards.steps_per_epoch(sum(n for _, n in found), ex.workers, cfg.optim.batch_size)
    results_fs, results_path = storage.resolve(run.remote(RunDir.RAY_RESULTS))
    resources = {"CPU": ex.cpus_per_worker, **({"GPU": 1} if ex.gpu else {})}
    return TorchTrainer(
        train_loop,
        train_loop_config={
            "train": to_dict(cfg),
            "data": data.root,
            "run": run.uri,
            "threads": _threads(cfg),
            "shards": files,
            "steps": steps,
            "lineage": origin,
        },
        scaling_config=ScalingConfig(
            num_workers=ex.workers, use_gpu=ex.gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=results_path,
            # A local path: Ray Train's default filesystem handling.
            storage_filesystem=results_fs if run.is_uri else None,
            failure_config=FailureConfig(max_failures=ex.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(  # type: ignore[call-arg]
                log_level="DEBUG" if log.isEnabledFor(logging.DEBUG) else "WARNING"
            ),
        ),
        datasets=_datasets(cfg, data, files),
        # Not split by Ray Train: each rank reads only its own dataset (its own users).
        dataset_config=DataConfig(datasets_to_split=[]),
    )


def _fit(trainer: Any) -> Any:
    """``trainer.fit()`` in a helper thread, so that Ctrl-C and SIGTERM reach this command's own
    handling (Ray Train installs a SIGINT handler of its own when it fits in the main thread);
    stopping the command stops the run, which resumes when the command is run again."""
    import threading

    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="ganrec-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns the final checkpoint's meta."""
    from ganrec_dist.core.raycluster import ensure_ray

    data = DataDir(cfg.data)
    cfg = warm_schedule(cfg)
    _check(cfg, data)
    origin = lineage(cfg, data)
    # A URI RUN is worked on in a local cache copy (its published checkpoint fetched for resume);
    # Ray Train's own checkpoints and each published epoch go straight to the object store.
    run = RunDir.open(cfg.out)
    run.local.mkdir(parents=True, exist_ok=True)
    check_resumable(run, cfg)
    name = cfg.execution.name or run.name
    run.write_config(to_dict(cfg))
    if not run.has_log(data):
        run.write_log(data)
    ensure_ray(cfg.execution.address)
    trainer = _trainer(cfg, data, run, name=name, origin=origin)
    start = time.time()
    log.info(
        "training %s: %d worker(s), %s, data %s",
        name,
        cfg.execution.workers,
        "GPU" if cfg.execution.gpu else "CPU",
        data,
    )
    with Progress(run, cfg.optim.epochs):
        result = _fit(trainer)
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
    run = RunDir.open(cfg.out)  # a URI RUN: the checkpoint the workers published
    meta = run.meta()
    history = run.payload()["state"]["history"]
    write_history(run, history)
    search = [h for h in history if h.get("phase") == "search"]
    searched = (
        f"best validation NDCG@10 {max(h.get('val_ndcg@10', 0) for h in search):.4f} at epoch "
        f"{meta['best_epoch']} of {len(search)}"
        if search
        else "no search (--init_schedule fixed)"
    )
    log.info(
        "trained %s in %.0fs: %s; refit %d epochs -> %s",
        name,
        time.time() - start,
        searched,
        sum(h.get("phase") == "refit" for h in history),
        run.remote(RunDir.CHECKPOINT),
    )
    return meta


def train_or_reuse(cfg: TrainConfig, *, retrain_other_settings: bool = False) -> dict:
    """``cfg``'s run, trained only if it has to be: a finished run of these settings in OUT is
    reused, an unfinished one resumed. A run of other settings there is refused (``train``'s
    check), or with ``retrain_other_settings`` removed and trained again. The step `evaluate`'s
    companion models and `sweep`'s trials share. Returns ``{"run", "trained", "seconds"}``."""
    start = time.time()
    run = RunDir.open(cfg.out)
    stored = run.stored_config()
    if stored is not None and retrain_other_settings:
        diff = run_changes(stored, cfg)
        if diff:
            log.warning(
                "%s was trained with other settings (%s): training it again",
                run.uri,
                "; ".join(diff),
            )
            run.remove()
            run = RunDir.open(cfg.out)
    if run.has_checkpoint() and run.meta().get("final"):
        return {"run": run.uri, "trained": False, "seconds": 0.0}
    train(cfg)
    return {"run": run.uri, "trained": True, "seconds": round(time.time() - start, 1)}
