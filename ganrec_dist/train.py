"""`ganrec train`: the adversarial recommender on Ray Train.

Phases: **search** trains on the fitted part of train (each user's last 20% of train held out as
validation, the same temporal rule as the test split), evaluates validation NDCG@10 every epoch
and stops early; **refit** (default on) retrains from scratch on all of train for the best epoch
count, so the final model also learns from each user's most recent interactions. The test split
is never read here.

Ray touchpoints: the dataset shard, ``prepare_model``, ``report`` and ``fit``. Everything else is
the plain D-step / G-step of :mod:`ganrec_dist.gan`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ganrec_dist import gan, storage
from ganrec_dist.config import IndexConfig, TrainConfig, build, to_dict
from ganrec_dist.errors import UserError
from ganrec_dist.interactions import Sequences, held_out, load_sequences, validation_limits
from ganrec_dist.metrics import ranking_metrics
from ganrec_dist.models import Discriminator, Generator, ModelConfig

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.pt"
SAMPLED_SOFTMAX_ABOVE = 100_000  # full softmax up to this many items, then sampled negatives


@dataclasses.dataclass
class LoopState:
    """Everything about progress that a resumed run needs, saved in every checkpoint."""

    phase: str = "search"  # search | refit | done
    epoch: int = 0  # epochs completed in this phase
    best_epoch: int = 0
    best_metric: float = -1.0
    bad_epochs: int = 0
    history: list = dataclasses.field(default_factory=list)
    nodes: list = dataclasses.field(default_factory=list)  # the Ray node of each rank, last start


def model_config(cfg: TrainConfig, n_users: int, n_items: int) -> ModelConfig:
    return ModelConfig(
        n_items=n_items,
        n_users=n_users,
        dim=cfg.dim,
        hidden=cfg.hidden,
        history_len=cfg.history_len,
        noise_dim=cfg.noise_dim,
        dropout=cfg.dropout,
    )


def optimisers(
    gen: torch.nn.Module, disc: torch.nn.Module, cfg: TrainConfig, fused: bool = True
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """G's and D's Adam. Fused: one kernel per step instead of a dozen elementwise passes per
    parameter (Adam was 11% of a CPU training step); False is the reference ``bench step`` times."""
    g_opt = torch.optim.Adam(
        gen.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None
    )
    d_opt = torch.optim.Adam(
        disc.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999), fused=fused or None
    )
    return g_opt, d_opt


def averaged(gen: Generator, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of G's weights (None when ``decay`` is 0).

    The adversarial game keeps G's weights moving from step to step, so the validation metric of
    the last step's weights jumps from epoch to epoch; their average is the model that is
    validated, kept and served. The decay warms up as ``(1 + n) / (10 + n)`` after ``n`` updates
    up to ``decay``, so that a short run is not dominated by its first, untrained weights.
    """
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel

    def update(averages: Any, currents: Any, updates: torch.Tensor | int) -> None:
        n = float(updates)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averages, currents, weight)  # one call, not one per tensor

    return AveragedModel(gen, multi_avg_fn=update, use_buffers=True)


def make_batch(
    seq: Sequences,
    users: np.ndarray,
    items: np.ndarray,
    positions: np.ndarray,
    history_len: int,
    device: torch.device,
    limits: np.ndarray | None = None,
    horizon: int = 1,
    rng: np.random.Generator | None = None,
    ce_horizon: int = 1,
) -> gan.Batch:
    """Rows (user, next item, its position) -> a batch whose history is the items before it.

    With ``horizon > 1`` the batch also carries, for D, a real item drawn from the user's next
    ``horizon`` interactions (within ``limits``), the window a recommendation is judged on. With
    ``ce_horizon > 1`` the softmax target is drawn the same way from the next ``ce_horizon``.
    """
    history = seq.window(users, positions, history_len)

    def ahead_item(window: int) -> np.ndarray:
        assert rng is not None and limits is not None
        ahead = np.minimum(positions + rng.integers(0, window, len(users)), limits[users] - 1)
        ahead = np.maximum(ahead, positions)
        return seq.items[seq.offsets[users] + ahead].astype(np.int64)

    sampling = rng is not None and limits is not None
    future = (
        torch.as_tensor(ahead_item(horizon), device=device) if horizon > 1 and sampling else None
    )
    targets = ahead_item(ce_horizon) if ce_horizon > 1 and sampling else items.astype(np.int64)
    return gan.Batch(
        history=torch.as_tensor(history, device=device),
        users=torch.as_tensor(users.astype(np.int64), device=device),
        targets=torch.as_tensor(targets, device=device),
        future=future,
    )


@torch.no_grad()
def user_vectors(
    gen: Generator,
    seq: Sequences,
    users: np.ndarray,
    ends: np.ndarray,
    history_len: int,
    device: torch.device,
    batch: int = 4096,
) -> np.ndarray:
    """Deterministic G(u, z = 0) for ``users``, from each one's items before ``ends``. ``[n, dim]``"""
    was_training = gen.training
    gen.eval()
    out = []
    for start in range(0, len(users), batch):
        u = users[start : start + batch]
        history = torch.as_tensor(
            seq.window(u, ends[start : start + batch], history_len), device=device
        )
        state = gen.encoder(history, torch.as_tensor(u.astype(np.int64), device=device))
        out.append(gen.generate(state, None).float().cpu().numpy())
    gen.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, gen.cfg.dim), np.float32)


def validation_ndcg(
    gen: Generator,
    seq: Sequences,
    limits: np.ndarray,
    truth,
    index_cfg: IndexConfig,
    history_len: int,
    device: torch.device,
) -> dict[str, float]:
    """Validation metrics through the same FAISS retrieval path as evaluation and serving."""
    users = validation_users(seq, limits)
    vectors = user_vectors(gen, seq, users, limits[users], history_len, device)
    catalogue = gen.catalogue().detach().float().cpu().numpy()
    return ranking_metrics(
        validation_recommendations(vectors, catalogue, seq, limits, index_cfg), truth, [10]
    )


def validation_users(seq: Sequences, limits: np.ndarray) -> np.ndarray:
    """The users with validation rows (positions from ``limits[u]`` on), in index order."""
    return np.flatnonzero(limits < seq.lengths)


def validation_recommendations(
    vectors: np.ndarray,
    catalogue: np.ndarray,
    seq: Sequences,
    limits: np.ndarray,
    index_cfg: IndexConfig,
    k: int = 10,
) -> np.ndarray:
    """Top-``k`` items ``[n_users, k]`` (-1 for users without validation rows) for query
    ``vectors``, one per ``validation_users``, each user's fitted items excluded, searched in an
    index of ``index_cfg``'s kind over ``catalogue``."""
    from ganrec_dist.index import build_index, search_excluding

    users = validation_users(seq, limits)
    index = build_index(catalogue, index_cfg)
    seen = [seq.items[seq.offsets[u] : seq.offsets[u] + limits[u]] for u in users]
    recs = np.full((seq.n_users, k), -1, dtype=np.int64)
    recs[users], _ = search_excluding(index, vectors, seen, k)
    return recs


def _all_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (every rank must call this)."""
    import torch.distributed as dist

    if not values or not (dist.is_available() and dist.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def _broadcast(value: float, device: torch.device) -> float:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def _gather_nodes(world: int) -> list[str]:
    """The Ray node id of every rank (where the worker group actually ran)."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if world == 1 or not dist.is_initialized():
        return [node]
    nodes: list = [None] * world
    dist.all_gather_object(nodes, node)
    return nodes


def save_checkpoint(
    directory: Path,
    gen,
    disc,
    g_opt,
    d_opt,
    state: LoopState,
    mcfg: ModelConfig,
    cfg: TrainConfig,
    data: str,
    best_generator: dict | None,
    seq: Sequences,
    average: torch.optim.swa_utils.AveragedModel | None = None,
) -> None:
    """A self-describing checkpoint: rebuilds G, D and the item embeddings with no code defaults."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": 1,
        "generator": gan.unwrap(gen).state_dict(),
        "discriminator": gan.unwrap(disc).state_dict(),
        "best_generator": best_generator,
        "averaged_generator": None if average is None else average.state_dict(),
        "g_optimizer": g_opt.state_dict(),
        "d_optimizer": d_opt.state_dict(),
        "model_config": dataclasses.asdict(mcfg),
        "train_config": to_dict(cfg),
        "state": dataclasses.asdict(state),
        "data": data,
    }
    torch.save(payload, directory / CHECKPOINT_FILE)
    storage.download_file(storage.join(data, "items.parquet"), directory / "items.parquet")
    storage.download_file(storage.join(data, "users.parquet"), directory / "users.parquet")
    # Serving rebuilds known users' histories, seen items and the popularity fallback from here.
    np.savez(
        directory / "sequences.npz",
        offsets=seq.offsets,
        items=seq.items,
        popularity=np.bincount(seq.items, minlength=seq.n_items).astype(np.int64),
    )
    meta = {
        "phase": state.phase,
        "epoch": state.epoch,
        "best_epoch": state.best_epoch,
        "final": state.phase == "done",
        "metrics": state.history[-1] if state.history else {},
        "nodes": state.nodes,
        "model_config": dataclasses.asdict(mcfg),
        "adv_weight": cfg.adv_weight,
        # Checksums let a reader of an object store tell a complete copy from one caught
        # mid-upload (storage.open_run).
        "files": {
            f.name: storage.file_digest(f) for f in sorted(directory.iterdir()) if f.is_file()
        },
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def publish_checkpoint(source: Path, run_dir: Path) -> None:
    """Copy a checkpoint to RUN/checkpoint atomically (write aside, then rename over)."""
    target = run_dir / "checkpoint"
    tmp = run_dir / f".checkpoint.tmp-{uuid.uuid4().hex[:8]}"
    shutil.copytree(source, tmp)
    old = None
    if target.exists():
        old = run_dir / f".checkpoint.old-{uuid.uuid4().hex[:8]}"
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


PHASES = {"search": 0, "refit": 1, "done": 2}


def latest_payload(checkpoint: Any, run_dir: Path) -> dict | None:
    """The most advanced of Ray Train's restored checkpoint and RUN/checkpoint.

    RUN/checkpoint is published (atomically) just before each report, so when the driver dies
    between the two, it is one epoch ahead of what Ray Train registered.
    """
    candidates = []
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            candidates.append(
                torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
            )
    published = run_dir / "checkpoint" / CHECKPOINT_FILE
    if published.exists():
        candidates.append(torch.load(published, map_location="cpu", weights_only=False))
    if not candidates:
        return None
    return max(candidates, key=lambda p: (PHASES[p["state"]["phase"]], p["state"]["epoch"]))


def train_loop(config: dict) -> None:
    """The Ray Train worker function (one per rank)."""
    import ray.train
    import ray.train.torch

    cfg = build(TrainConfig, config["train"])
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise
    data, run_dir = config["data"], Path(config["run"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    if rank == 0:
        log.info(
            "worker: %d torch threads, device %s, world size %d",
            torch.get_num_threads(),
            device,
            world,
        )

    seq = load_sequences(data)
    fit_limits = validation_limits(seq, cfg.val_fraction)
    val_truth = held_out(seq, fit_limits) if rank == 0 else None
    mcfg = model_config(cfg, seq.n_users, seq.n_items)

    def fresh_models() -> tuple[Generator, Discriminator]:
        torch.manual_seed(cfg.seed)
        return Generator(mcfg), Discriminator(mcfg)

    models = fresh_models()
    state = LoopState()
    best_generator: dict | None = None
    g_opt_state = d_opt_state = None
    payload = latest_payload(ray.train.get_checkpoint(), run_dir)
    if payload is not None:
        models[0].load_state_dict(payload["generator"])
        models[1].load_state_dict(payload["discriminator"])
        g_opt_state, d_opt_state = payload["g_optimizer"], payload["d_optimizer"]
        best_generator = payload["best_generator"]
        state = LoopState(**payload["state"])
        if rank == 0:
            log.info("resumed from checkpoint: phase %s, epoch %d", state.phase, state.epoch)

    gen: Any = ray.train.torch.prepare_model(models[0])
    disc: Any = ray.train.torch.prepare_model(models[1])
    average = averaged(gan.unwrap(gen), cfg.ema_decay)
    if average is not None and payload is not None and payload.get("averaged_generator"):
        average.load_state_dict(payload["averaged_generator"])
    state.nodes = _gather_nodes(world)
    g_opt, d_opt = optimisers(gen, disc, cfg)
    if g_opt_state is not None and d_opt_state is not None:
        g_opt.load_state_dict(g_opt_state)
        d_opt.load_state_dict(d_opt_state)

    negatives_n = cfg.sampled_negatives
    if negatives_n < 0:
        negatives_n = 0 if seq.n_items <= SAMPLED_SOFTMAX_ABOVE else 8192
    shard = ray.train.get_dataset_shard("train")
    noise = torch.Generator(device=device)

    while state.phase != "done":
        limits = fit_limits if state.phase == "search" else seq.lengths
        epoch = state.epoch + 1
        if cfg.fail_at_epoch == epoch and state.phase == "search" and rank == world - 1:
            marker = run_dir / ".fault-injected"
            if not marker.exists():
                marker.write_text(f"rank {rank} exited at epoch {epoch}\n")
                log.warning("test hook: rank %d exits at epoch %d", rank, epoch)
                os._exit(1)
        # Every random draw of an epoch (noise, dropout, look-ahead targets, shuffle) is seeded
        # from (seed, phase, epoch, rank): a resumed run is the run that was not interrupted.
        epoch_seed = (
            cfg.seed * 7919 + epoch * 31 + rank + (0 if state.phase == "search" else 100_003)
        )
        noise.manual_seed(epoch_seed)
        torch.manual_seed(epoch_seed + 1)  # dropout
        horizon_rng = np.random.default_rng([cfg.seed, epoch, rank, state.phase == "refit"])
        sums: dict[str, float] = {}
        steps = rows = 0
        wait = compute = 0.0
        tick = time.perf_counter()
        for raw in shard.iter_batches(
            batch_size=cfg.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=cfg.shuffle_buffer,
            local_shuffle_seed=cfg.seed * 1000 + epoch,
        ):
            users, items, positions = raw["user_idx"], raw["item_idx"], raw["position"]
            # Validation rows stay out of the fit; filtering here keeps every rank's step count equal.
            keep = positions < limits[users]
            users, items, positions = users[keep], items[keep], positions[keep]
            started = time.perf_counter()
            wait += started - tick
            if len(users) == 0:
                # Every rank must step (DDP): use the user's first interaction, which is always
                # fitted, rather than the held-out row itself.
                users, positions = raw["user_idx"][:1], raw["position"][:1] * 0
                items = seq.items[seq.offsets[users]]
            batch = make_batch(
                seq,
                users,
                items,
                positions,
                cfg.history_len,
                device,
                limits,
                cfg.adv_horizon,
                horizon_rng,
                cfg.ce_horizon,
            )
            z = torch.randn(len(users), cfg.noise_dim, device=device, generator=noise)
            negatives = (
                torch.randint(0, seq.n_items, (negatives_n,), device=device, generator=noise)
                if negatives_n
                else None
            )
            stats = gan.train_step(
                gen,
                disc,
                d_opt,
                g_opt,
                batch,
                z,
                cfg.adv_weight,
                cfg.d_steps,
                cfg.g_steps,
                negatives,
                d_mismatch=cfg.d_mismatch,
            )
            if average is not None:
                average.update_parameters(gan.unwrap(gen))
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
            steps += 1
            rows += len(users)
            tick = time.perf_counter()
            compute += tick - started
            if cfg.max_steps_per_epoch and steps >= cfg.max_steps_per_epoch:
                break  # every rank stops at the same step: shards are split equally
        metrics: dict[str, Any] = _all_mean({k: v / max(steps, 1) for k, v in sums.items()}, device)
        metrics.update(
            phase=state.phase,
            epoch=epoch,
            rows=rows * world,
            seconds=wait + compute,
            data_wait_fraction=wait / max(wait + compute, 1e-9),
        )

        # The model is the average of G's weights when averaging is on, else G itself.
        model: Generator = gan.unwrap(gen) if average is None else average.module  # type: ignore[assignment]
        if state.phase == "search":
            value = -1.0
            if rank == 0:
                val = validation_ndcg(
                    model, seq, fit_limits, val_truth, cfg.index, cfg.history_len, device
                )
                metrics.update({f"val_{k}": v for k, v in val.items()})
                value = val["ndcg@10"]
            value = _broadcast(value, device)
            metrics["val_ndcg@10"] = value
            if value > state.best_metric:
                state.best_metric, state.best_epoch, state.bad_epochs = value, epoch, 0
                best_generator = copy.deepcopy(model.state_dict()) if rank == 0 else None
            else:
                state.bad_epochs += 1
        state.epoch = epoch
        state.history.append(metrics)
        if rank == 0:
            log.info(
                "%s epoch %d: %s",
                state.phase,
                epoch,
                ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)),
            )

        # Phase transitions, decided identically on every rank.
        if state.phase == "search" and (state.bad_epochs >= cfg.patience or epoch >= cfg.epochs):
            if cfg.refit and state.best_epoch > 0:
                state.phase, state.epoch = "refit", 0
                fresh_gen, fresh_disc = fresh_models()
                gan.unwrap(gen).load_state_dict(fresh_gen.state_dict())
                gan.unwrap(disc).load_state_dict(fresh_disc.state_dict())
                average = averaged(gan.unwrap(gen), cfg.ema_decay)
                g_opt, d_opt = optimisers(gen, disc, cfg)
            else:
                state.phase = "done"
                if best_generator is not None:
                    gan.unwrap(gen).load_state_dict(best_generator)
        elif state.phase == "refit" and epoch >= state.best_epoch:
            state.phase = "done"
            if average is not None:
                gan.unwrap(gen).load_state_dict(average.module.state_dict())

        report = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        report["done"] = float(state.phase == "done")
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(
                    Path(tmp),
                    gen,
                    disc,
                    g_opt,
                    d_opt,
                    state,
                    mcfg,
                    cfg,
                    data,
                    best_generator if state.phase == "search" else None,
                    seq,
                    average if state.phase != "done" else None,
                )
                publish_checkpoint(Path(tmp), run_dir)
                if config.get("run_uri"):  # RUN in an object store: meta.json goes last
                    storage.upload_tree(
                        Path(tmp), storage.join(config["run_uri"], "checkpoint"), ("meta.json",)
                    )
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(report)


def write_history(run_dir: Path, history: list[dict]) -> None:
    """history.csv (one row per epoch) and history.png (losses, D outputs, validation NDCG)."""
    import csv

    keys = sorted({k for row in history for k in row})
    with open(run_dir / "history.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    step = np.arange(1, len(history) + 1)
    for key, ax in (
        ("ce_loss", axes[0]),
        ("d_loss", axes[0]),
        ("g_loss", axes[0]),
        ("d_real", axes[1]),
        ("d_fake", axes[1]),
        ("d_other", axes[1]),  # D(u, another user's real item): the mismatch term's pairs
        ("val_ndcg@10", axes[2]),
    ):
        values = [row.get(key, np.nan) for row in history]
        if not np.all(np.isnan(np.asarray(values, dtype=float))):
            ax.plot(step, values, marker=".", label=key)
    refit = [i + 1 for i, row in enumerate(history) if row.get("phase") == "refit"]
    for ax, title in zip(axes, ("losses", "mean D(u, item)", "validation NDCG@10")):
        if refit:
            ax.axvline(refit[0] - 0.5, color="grey", linestyle=":", label="refit starts")
        ax.set_title(title)
        ax.set_xlabel("epoch (search, then refit)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "history.png", dpi=100)
    plt.close(fig)


# Settings that change where or how a run executes, not what it trains: a run may be resumed
# with other values of these (more workers, another cluster, a test hook switched off).
EXECUTION_KEYS = frozenset(
    {"address", "workers", "gpu", "cpus_per_worker", "max_failures", "fail_at_epoch", "name", "out"}
)

# The discriminator's settings: a run with adv_weight = 0 never takes a D-step, so they do not
# change what it trains (a test checks the G-updates are the same).
D_ONLY_KEYS = frozenset({"d_lr", "d_steps", "d_mismatch"})


# What code from before a setting existed did, for a config.yaml that does not record it: a run
# from before the mismatch term (f140e9a) trained with d_mismatch 0 and resumes with that value.
IMPLIED_BY_OLDER_RUNS: dict[str, Any] = {"d_mismatch": 0.0}


def config_changes(
    previous: dict[str, Any], current: dict[str, Any], ignore: frozenset[str] = EXECUTION_KEYS
) -> list[str]:
    """``key: old -> new`` for each setting outside ``ignore`` that differs between two
    ``config.yaml`` dicts; a key the older file does not record counts as a change, unless
    ``IMPLIED_BY_OLDER_RUNS`` says what it was."""
    changes = []
    for key in sorted(set(previous) | set(current)):
        if key in ignore:
            continue
        old = previous.get(key, IMPLIED_BY_OLDER_RUNS.get(key, "(not recorded)"))
        new = current.get(key, "(not recorded)")
        if key == "data" and isinstance(old, str) and isinstance(new, str):
            old, new = storage.display(old), storage.display(new)
        if old != new:
            changes.append(f"{key}: {old!r} -> {new!r}")
    return changes


def run_changes(stored: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """The settings in which ``cfg`` trains another model than the run whose ``config.yaml`` is
    ``stored``: where it executes aside, and D's settings aside for a run without D-steps (the
    ablation is the same run whatever they say)."""
    ignore = EXECUTION_KEYS | (D_ONLY_KEYS if cfg.adv_weight == 0 else frozenset())
    return config_changes(stored, to_dict(cfg), ignore)


def check_resumable(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuse to continue a run in RUN with another configuration.

    The same command resumes a run (Ray Train's storage, RUN/checkpoint); with other settings it
    would carry on from the old weights and record the new settings as if they had made them.
    """
    started = (run_dir / "checkpoint" / CHECKPOINT_FILE).exists() or any(
        (run_dir / "ray_results").glob("*/*")
    )
    previous = run_dir / "config.yaml"
    if not started or not previous.exists():
        return
    changes = run_changes(yaml.safe_load(previous.read_text()) or {}, cfg)
    if changes:
        raise UserError(
            f"{storage.display(cfg.out)} already holds a run with other settings "
            f"({'; '.join(changes)}): the same command resumes it; use another --out, "
            "or delete it to start over"
        )


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns the final checkpoint's meta."""
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ganrec_dist.prepare import read_manifest, train_dataset
    from ganrec_dist.raycluster import ensure_ray

    manifest = read_manifest(cfg.data)
    if cfg.workers < 1:
        raise UserError("--workers must be at least 1")
    if not 0 <= cfg.ema_decay < 1:
        raise UserError(f"--ema_decay must be in [0, 1), got {cfg.ema_decay}")
    if manifest["train_rows"] == 0:
        raise UserError(f"{cfg.data}: no train rows")
    # A URI RUN is worked on in a local cache copy (its published checkpoint fetched for resume);
    # Ray Train's own checkpoints and each published epoch go straight to the object store.
    run_dir = storage.open_run(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_resumable(run_dir, cfg)
    name = cfg.name or (storage.basename(cfg.out) if storage.is_uri(cfg.out) else run_dir.name)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    storage.save_run(run_dir, cfg.out, ("config.yaml",))
    results_fs, results_path = storage.resolve(storage.join(cfg.out, "ray_results"))
    if not storage.is_uri(cfg.out):
        results_fs = None  # a local path: Ray Train's default filesystem handling
    ensure_ray(cfg.address)
    import ray

    cluster_cpus = ray.cluster_resources().get("CPU", 1)
    threads = max(1, int(cfg.cpus_per_worker) if cfg.cpus_per_worker >= 1 else 1)
    if cfg.workers == 1 and not cfg.address:
        threads = max(threads, int(cluster_cpus))  # one local worker: let torch use the cores
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.gpu:
        resources["GPU"] = 1
    # The epoch log lines are the progress report; Ray Data's bars would repeat every epoch.
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Blocks in file order: with the seeded local shuffle, the same seed and worker count give
    # the same batches (parallel reads otherwise finish, and arrive, in any order).
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    dataset = train_dataset(cfg.data, columns=["user_idx", "item_idx", "position"])
    if manifest["train_rows"] <= cfg.cache_rows:
        # Small enough to keep in the object store: later epochs skip the Parquet reads.
        dataset = dataset.materialize()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "train": to_dict(cfg),
            "data": storage.display(cfg.data),
            "run": str(run_dir),
            "run_uri": cfg.out if storage.is_uri(cfg.out) else "",
            "threads": threads,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.workers, use_gpu=cfg.gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=results_path,
            storage_filesystem=results_fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Ray Train's own per-report INFO lines repeat ours; its warnings and errors still show.
            logging_config=LoggingConfig(  # type: ignore[call-arg]
                log_level="DEBUG" if log.isEnabledFor(logging.DEBUG) else "WARNING"
            ),
        ),
        datasets={"train": dataset},
    )
    start = time.time()
    log.info(
        "training %s: %d worker(s), %s, data %s",
        name,
        cfg.workers,
        "GPU" if cfg.gpu else "CPU",
        cfg.data,
    )
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
    storage.open_run(cfg.out)  # a URI RUN: the checkpoint the workers published
    meta = json.loads((run_dir / "checkpoint" / "meta.json").read_text())
    payload = torch.load(
        run_dir / "checkpoint" / CHECKPOINT_FILE, map_location="cpu", weights_only=False
    )
    history = payload["state"]["history"]
    write_history(run_dir, history)
    storage.save_run(run_dir, cfg.out, ("history.csv", "history.png"))
    search = [h for h in history if h.get("phase") == "search"]
    log.info(
        "trained %s in %.0fs: best validation NDCG@10 %.4f at epoch %d of %d; refit %d epochs -> %s",
        name,
        time.time() - start,
        max((h.get("val_ndcg@10", 0) for h in search), default=0),
        meta["best_epoch"],
        len(search),
        sum(h.get("phase") == "refit" for h in history),
        storage.join(cfg.out, "checkpoint"),
    )
    return meta
