"""The Ray Train worker: one rank of the adversarial loop.

Phases: **search** trains on the fitted part of train (each user's last ``val_fraction`` of train
held out as validation, the same temporal rule as the test split), evaluates validation NDCG@10
every epoch and stops early; **refit** (default on) retrains from scratch on all of train for
the best epoch count, so the final model also learns from each user's most recent interactions.
The test split is never read here.

Ray touchpoints: the dataset shard, ``prepare_model``, ``report`` and the collectives that keep
the ranks in step. Everything else is the plain D-step / G-step of :mod:`ganrec_dist.training.gan`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ganrec_dist.core.config import TrainConfig, build, to_dict
from ganrec_dist.data import shards
from ganrec_dist.data.content import Content
from ganrec_dist.data.interactions import Sequences, validation_limits
from ganrec_dist.data.layout import DataDir, RunDir, write_checkpoint
from ganrec_dist.model.content import ContentTower
from ganrec_dist.model.models import ENCODERS, ModelConfig
from ganrec_dist.model.sampling import SamplingTerms
from ganrec_dist.training import checkpoint, gan, warmstart
from ganrec_dist.training.batches import chunk_ends, make_batch, make_sequence_batch
from ganrec_dist.training.building import (
    Models,
    averaged,
    chunk_stride,
    every_position,
    fresh_models,
    initial_state,
    load_inherited_optimizers,
    model_config,
    negatives_for,
    optimisers,
    update_average,
)
from ganrec_dist.training.checkpoint import LoopState
from ganrec_dist.training.collectives import (
    all_concat,
    all_concat_objects,
    all_mean,
    all_sum,
    gather_nodes,
    weighted_mean,
)
from ganrec_dist.training.tables import LazyAverage, keep_out_of_ddp
from ganrec_dist.training.tower import IN_BETWEEN, Pairs, TowerSettings, blend, generate
from ganrec_dist.training.tower import step as tower_step
from ganrec_dist.training.validation import (
    DIAGNOSTIC_USERS,
    sample_users,
    validation_metrics,
    validation_truth,
    validation_users,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Held:
    """The validation rows a rank scores."""

    users: np.ndarray  # this rank's users of the validation scores (all, or a sample)
    sampled: int  # the sample's size over all ranks, 0 when every user is scored
    truth: sp.csr_matrix  # their validation rows


@dataclasses.dataclass
class Draws:
    """Every random draw of a step, from one generator that ``seed_epoch`` seeds."""

    noise: torch.Generator
    negatives: int  # shared sampled negatives per step; 0 = full softmax
    popularity: torch.Tensor | None  # [n_items] train share of each item, for mixed negatives
    n_items: int
    noise_dim: int
    sampling: Any  # SamplingSettings

    def for_step(
        self, rows: int
    ) -> tuple[torch.Tensor, gan.Negatives | None, SamplingTerms | None]:
        """G's noise for ``rows`` targets, the step's shared negatives, the sampling terms'
        extra noise; in this order, so that a run without sampling terms keeps its stream."""
        device = self.noise.device
        z = torch.randn(rows, self.noise_dim, device=device, generator=self.noise)
        negatives = None
        if self.negatives:
            items = torch.randint(
                0, self.n_items, (self.negatives,), device=device, generator=self.noise
            )
            negatives = gan.Negatives(items, self.popularity)
        terms = None
        extra = SamplingTerms.draws_needed(self.sampling)
        if extra:
            terms = SamplingTerms(
                torch.randn(rows, extra, self.noise_dim, device=device, generator=self.noise),
                best_of=self.sampling.best_of,
                mode_seeking=self.sampling.mode_seeking,
            )
        return z, negatives, terms


@dataclasses.dataclass
class Rank:
    """Everything one rank holds while it trains."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    data: DataDir
    run: RunDir
    seq: Sequences  # this rank's users' train items (the other users have none)
    steps: int  # per epoch, the same on every rank
    fit_limits: np.ndarray  # per user, how many leading train items the search phase fits
    val: Held
    mcfg: ModelConfig
    models: Models
    state: LoopState
    best_generator: dict | None
    draws: Draws
    lineage: dict  # DATA's version and newest timestamp, and the parent run (--init)
    content: Content | None = None  # DATA's item content, when the tower is on
    # The frozen model's user vectors and item rows, computed once for the tower phase.
    tower_targets: tuple[torch.Tensor, torch.Tensor] | None = None
    replay: Replay | None = None  # --init_replay below 1


@dataclasses.dataclass
class Replay:
    """A warm start's epochs after its search: every row the parent never fitted, and a new
    sample (``share``) of the rows it fitted each epoch. Each rank keeps its own users' rows;
    ``steps`` is the mean shard's batches of the expected rows, the same on every rank."""

    fitted: np.ndarray  # per user, the leading train rows the parent fitted
    share: float
    steps: int

    @classmethod
    def of(
        cls, cfg: TrainConfig, seq: Sequences, fitted: np.ndarray, world: int, device: Any
    ) -> Replay:
        old = float(fitted.sum())  # warm_limits: already at most each user's train rows
        new = float(seq.lengths.sum()) - old
        totals = all_sum(torch.tensor([new, old], dtype=torch.float64, device=device)).cpu()
        expected = float(totals[0] + cfg.optim.init_replay * totals[1])
        steps = shards.steps_per_epoch(math.ceil(expected), world, cfg.optim.batch_size)
        return cls(fitted=fitted, share=cfg.optim.init_replay, steps=steps)

    def mask(self, rng: np.random.Generator) -> Any:
        def keep(raw: dict) -> np.ndarray:
            fresh = raw["position"] >= self.fitted[raw["user_idx"]]
            return fresh | (rng.random(len(fresh)) < self.share)

        return keep


def log_bytes(seq: Sequences, limits: np.ndarray, truth: sp.csr_matrix) -> int:
    """The bytes a rank holds that come from the log (not the model): its users' sequences,
    fitted limits and validation rows."""
    arrays = (seq.offsets, seq.items, limits, truth.data, truth.indices, truth.indptr)
    return int(sum(a.nbytes for a in arrays))


# --- the steps of the loop ------------------------------------------------------------------------


def setup(config: dict) -> Rank:
    """This rank's data and models: fresh, or restored from the latest checkpoint."""
    import ray.train
    import ray.train.torch

    cfg = build(TrainConfig, config["train"])
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    log.debug("rank %d: %d torch threads, device %s", rank, torch.get_num_threads(), device)
    data, run = DataDir(config["data"]), RunDir(config["run"])
    seq = data.sequences(files=config["shards"][rank])  # this rank's users only
    fit_limits = validation_limits(seq, cfg.dataset.val_fraction)
    if cfg.init:  # validate on the rows the parent never trained on
        fit_limits = warmstart.warm_limits(seq.lengths, warmstart.parent_lengths(cfg.init))
    mcfg = model_config(cfg, seq.n_users, seq.n_items)
    # The validation sample is drawn from every rank's users, the same as on one rank; each
    # rank scores the part of it that it holds.
    held = validation_users(seq, fit_limits)
    everyone = np.sort(all_concat(held))
    sample = sample_users(everyone, cfg.dataset.val_users, cfg.seed)
    val_users = np.intersect1d(sample, held)
    val_truth = validation_truth(seq, fit_limits, val_users)
    payload = checkpoint.latest_payload(ray.train.get_checkpoint(), run)
    models, state, best = restore(cfg, mcfg, payload)
    content = data.content() if cfg.content.tower != "off" else None
    if content is not None:
        models.tower, models.tower_opt = content_tower(data, mcfg, payload)
    state.nodes = gather_nodes()
    state.shards = all_concat_objects(
        {
            "rows": int(len(seq.items)),
            "users": int(np.count_nonzero(seq.lengths)),
            "log_bytes": log_bytes(seq, fit_limits, val_truth),
        }
    )
    if payload is not None and rank == 0:
        log.info("resumed from checkpoint: phase %s, epoch %d", state.phase, state.epoch)
    negatives = negatives_for(cfg, seq.n_items)
    popularity = None
    if negatives and cfg.optim.in_batch_negatives:
        counts = torch.as_tensor(np.bincount(seq.items, minlength=seq.n_items), device=device)
        popularity = all_sum(counts.to(torch.float64))
        popularity = (popularity / popularity.sum()).float()
    replay = None
    if cfg.init and cfg.optim.init_replay < 1:
        replay = Replay.of(cfg, seq, fit_limits.copy(), world=world, device=device)
    return Rank(
        replay=replay,
        cfg=cfg,
        rank=rank,
        world=world,
        device=device,
        data=data,
        run=run,
        seq=seq,
        steps=int(config["steps"]),
        fit_limits=fit_limits,
        val=Held(val_users, len(sample) if len(sample) < len(everyone) else 0, val_truth),
        mcfg=mcfg,
        models=models,
        state=state,
        best_generator=best,
        draws=Draws(
            noise=torch.Generator(device=device),
            negatives=negatives,
            popularity=popularity,
            n_items=seq.n_items,
            noise_dim=cfg.model.noise_dim,
            sampling=cfg.sampling,
        ),
        lineage=config["lineage"],
        content=content,
    )


def content_tower(data: DataDir, mcfg: ModelConfig, payload: dict | None) -> tuple[Any, Any]:
    """The content tower and its optimiser, fresh or as the checkpoint holds them."""
    import ray.train.torch

    net = ContentTower(data.manifest["content"]["features"], dim=mcfg.dim)
    if payload is not None and payload.get("tower") is not None:
        net.load_state_dict(payload["tower"])
    wrapped = ray.train.torch.prepare_model(net)  # DDP with several ranks: gradients averaged
    opt = torch.optim.Adam(wrapped.parameters(), lr=TowerSettings.lr)
    if payload is not None and payload.get("tower_optimizer") is not None:
        opt.load_state_dict(payload["tower_optimizer"])
    return wrapped, opt


def restore(
    cfg: TrainConfig, mcfg: ModelConfig, payload: dict | None
) -> tuple[Models, LoopState, dict | None]:
    """Fresh models, then the payload's weights, optimiser states and loop state, if any.
    Returns (models, loop state, the best generator so far)."""
    import ray.train.torch

    gen, disc = fresh_models(cfg, mcfg)
    state, best = LoopState(), None
    start = initial_state(cfg, gen) if payload is None else None
    if payload is not None:
        gen.load_state_dict(payload["generator"])
        disc.load_state_dict(payload["discriminator"])
        state, best = LoopState(**payload["state"]), payload["best_generator"]
    elif start is not None:
        gen.load_state_dict(start["generator"])
        disc.load_state_dict(start["discriminator"])
        if cfg.optim.init_schedule == "fixed":  # straight to training on all of train
            state = LoopState(phase="refit", best_epoch=cfg.optim.init_epochs)
    if mcfg.sparse:
        keep_out_of_ddp(gen)
    gen_ddp = ray.train.torch.prepare_model(gen)  # DDP-wrapped with several ranks
    disc_ddp = ray.train.torch.prepare_model(disc)
    average = averaged(gan.unwrap(gen_ddp), cfg.optim.ema_decay)
    if average is not None and payload is not None and payload.get("averaged_generator"):
        average.load_state_dict(payload["averaged_generator"])
    g_opt, d_opt = optimisers(gen_ddp, disc_ddp, cfg)
    if payload is not None:
        g_opt.load_state_dict(payload["g_optimizer"])
        d_opt.load_state_dict(payload["d_optimizer"])
    elif start is not None:
        load_inherited_optimizers(start, g_opt, d_opt)
    models = Models(gen=gen_ddp, disc=disc_ddp, g_opt=g_opt, d_opt=d_opt, average=average)
    return models, state, best


def inject_fault(rank: Rank, epoch: int) -> None:
    """Test hook: the last rank exits once at ``fail_at_epoch`` of ``fail_phase``."""
    cfg = rank.cfg.execution
    if cfg.fail_at_epoch != epoch or rank.state.phase != cfg.fail_phase:
        return
    if rank.rank != rank.world - 1:
        return
    marker = rank.run.local / RunDir.FAULT_MARKER
    if not marker.exists():
        marker.write_text(f"rank {rank.rank} exited at epoch {epoch}\n")
        log.warning("test hook: rank %d exits at epoch %d", rank.rank, epoch)
        os._exit(1)


def seed_epoch(rank: Rank, epoch: int) -> np.random.Generator:
    """Seed every random draw of an epoch (noise, dropout, look-ahead targets) from (seed, phase,
    epoch, rank), so that a resumed run is the run that was not interrupted."""
    seed, refit = rank.cfg.seed, rank.state.phase == "refit"
    epoch_seed = seed * 7919 + epoch * 31 + rank.rank + (100_003 if refit else 0)
    rank.draws.noise.manual_seed(epoch_seed)
    torch.manual_seed(epoch_seed + 1)  # dropout
    return np.random.default_rng([seed, epoch, rank.rank, refit])


def step(
    rank: Rank, raw: dict, limits: np.ndarray, horizon_rng: np.random.Generator
) -> tuple[dict, int]:
    """One D-step(s) + G-step(s) on a batch of rows; returns (losses, rows used)."""
    cfg = rank.cfg
    users, items, positions = raw["user_idx"], raw["item_idx"], raw["position"]
    keep = positions < limits[users]  # validation rows stay out of the fit
    users, items, positions = users[keep], items[keep], positions[keep]
    if len(users) == 0:
        # Every rank must step (DDP): use the user's first interaction, which is always
        # fitted, rather than the held-out row itself.
        users, positions = raw["user_idx"][:1], raw["position"][:1] * 0
        items = rank.seq.items[rank.seq.offsets[users]]
    if every_position(cfg):
        stride = chunk_stride(cfg)
        ends = chunk_ends(positions, limits, users, stride)
        ends[0] |= not ends.any()  # a batch with no chunk's end trains the first row's chunk
        batch = make_sequence_batch(
            rank.seq,
            users=users[ends],
            ends=positions[ends],
            length=cfg.model.history_len,
            stride=stride,
            device=rank.device,
        )
    else:
        batch = make_batch(
            rank.seq,
            users=users,
            items=items,
            positions=positions,
            history_len=cfg.model.history_len,
            device=rank.device,
            limits=limits,
            horizon=cfg.game.adv_horizon,
            rng=horizon_rng,
            ce_horizon=cfg.optim.ce_horizon,
        )
    rows = len(batch.trained_targets(rank.seq.n_items))  # each target's sample of G
    z, negatives, sampling = rank.draws.for_step(rows)
    m = rank.models
    stats = gan.train_step(
        m.gen,
        m.disc,
        m.d_opt,
        m.g_opt,
        batch=batch,
        z=z,
        negatives=negatives,
        sampling=sampling,
        game=cfg.game,
        discriminator=cfg.discriminator,
    )
    update_average(m)
    return stats, rows


def run_epoch(rank: Rank, shard: Any, epoch: int) -> dict[str, Any]:
    """One pass over this rank's shard; the ranks' mean losses, rows and times."""
    cfg = rank.cfg
    limits = rank.fit_limits if rank.state.phase == "search" else rank.seq.lengths
    horizon_rng = seed_epoch(rank, epoch)
    sums: dict[str, float] = {}
    steps = rows = 0
    wait = compute = 0.0
    tick = time.perf_counter()
    steps_this_epoch, keep = rank.steps, None
    if rank.replay is not None and rank.state.phase == "refit":
        steps_this_epoch = rank.replay.steps
        keep = rank.replay.mask(np.random.default_rng([cfg.seed, epoch, rank.rank, 2]))
    if cfg.optim.max_steps_per_epoch:
        steps_this_epoch = min(steps_this_epoch, cfg.optim.max_steps_per_epoch)
    for raw in shards.epoch_batches(
        shard,
        steps=steps_this_epoch,
        batch_size=cfg.optim.batch_size,
        shuffle_buffer=cfg.dataset.shuffle_buffer,
        seed=cfg.seed * 1000 + epoch,
        keep=keep,
    ):
        started = time.perf_counter()
        wait += started - tick
        stats, used = step(rank, raw, limits, horizon_rng)
        for key, value in stats.items():
            sums[key] = sums.get(key, 0.0) + value
        steps += 1
        rows += used
        tick = time.perf_counter()
        compute += tick - started
    metrics: dict[str, Any] = all_mean({k: v / max(steps, 1) for k, v in sums.items()}, rank.device)
    metrics.update(
        phase=rank.state.phase,
        epoch=epoch,
        rows=int(all_sum(torch.tensor(rows, device=rank.device))),
        seconds=wait + compute,
        data_wait_fraction=wait / max(wait + compute, 1e-9),
    )
    if isinstance(rank.models.average, LazyAverage):  # it is read from here on (every rank)
        rank.models.average.materialize(gan.unwrap(rank.models.gen))
    return metrics


def tower_epoch(rank: Rank, epoch: int) -> dict[str, Any]:
    """One epoch of the content tower against the trained model (frozen): every rank draws
    the same number of batches of its own users' (user, item) train pairs, DDP averages the
    gradients."""
    cfg, seq = rank.cfg, rank.seq
    tick = time.perf_counter()
    torch.manual_seed(cfg.seed * 7919 + epoch * 31 + rank.rank + 200_003)
    rng = np.random.default_rng([cfg.seed, epoch, rank.rank, 7])
    if rank.tower_targets is None:  # the model does not move in this phase: once
        core = gan.unwrap(rank.models.gen).eval()
        with torch.no_grad():
            rows = core.catalogue().detach().float()
            vectors = torch.as_tensor(user_vectors(core, seq), device=rows.device)
        rank.tower_targets = (vectors, rows)
    vectors, rows = rank.tower_targets
    pair_users = np.repeat(np.arange(seq.n_users), seq.lengths)
    pair_items = seq.items.astype(np.int64)
    batch = TowerSettings.batch
    total = int(all_sum(torch.tensor(len(pair_items), device=rank.device)))
    steps = max(1, -(-total // (rank.world * batch)))
    losses = []
    rank.models.tower.train()
    for _ in range(steps):
        pick = rng.integers(0, len(pair_items), batch)
        items = pair_items[pick]
        pairs = Pairs(vectors[pair_users[pick]], rows[items], rank.content.batch(items))
        losses.append(
            tower_step(rank.models.tower, rank.models.tower_opt, pairs, cfg.content.tower)
        )
    metrics: dict[str, Any] = all_mean({"tower_loss": float(np.mean(losses))}, rank.device)
    metrics.update(
        phase="tower",
        epoch=epoch,
        of=cfg.content.tower_epochs,
        rows=steps * batch * rank.world,
        seconds=time.perf_counter() - tick,
    )
    return metrics


def user_vectors(core: Any, seq: Sequences) -> np.ndarray:
    """``[n_users, dim]``: G's vector of each of this rank's users (zeros for the others)."""
    from ganrec_dist.core.config import IndexConfig
    from ganrec_dist.retrieval.recommender import Recommender

    held = np.flatnonzero(seq.lengths > 0)
    rec = Recommender.over(core, seq, index_cfg=IndexConfig(kind="flat"))
    out = np.zeros((seq.n_users, core.cfg.dim), np.float32)
    histories = seq.window(held, seq.lengths[held], core.cfg.history_len)
    out[held] = rec.vectors(histories, held)
    return out


def write_generated_rows(rank: Rank) -> None:
    """The items with content and fewer than ``--cold_item_min`` train interactions (never
    seen, at 0) get the tower's vector, scaled, as their catalogue row: on every rank, the
    same rows (the counts are summed over the ranks' shards)."""
    cfg, seq = rank.cfg, rank.seq
    counts = torch.as_tensor(np.bincount(seq.items, minlength=seq.n_items), device=rank.device)
    counts = all_sum(counts.to(torch.float64)).cpu().numpy()
    has = rank.content.has_content
    cold = np.flatnonzero(has & (counts < max(cfg.content.cold_item_min, 1)))
    tower = gan.unwrap(rank.models.tower).eval()
    core = gan.unwrap(rank.models.gen)
    if len(cold):
        generated = generate(tower, rank.content, cold)
        with torch.no_grad():
            scaled = torch.as_tensor(generated * cfg.content.tower_scale, device=rank.device)
            core.item_table[torch.as_tensor(cold, device=rank.device)] = scaled.to(
                core.item_table.dtype
            )
    rank.state.generated_items = int(len(cold))
    rank.state.blended_items = 0
    if cfg.content.cold_item_blend > 0:
        low = max(cfg.content.cold_item_min, 1)
        between = np.flatnonzero(has & (counts >= low) & (counts <= IN_BETWEEN))
        if len(between):
            index = torch.as_tensor(between, device=rank.device)
            with torch.no_grad():
                learned = core.item_table[index].float().cpu().numpy()
                mixed = blend(
                    learned,
                    generate(tower, rank.content, between),
                    counts[between],
                    m=cfg.content.cold_item_blend,
                    scale=cfg.content.cold_item_blend_scale,
                )
                core.item_table[index] = torch.as_tensor(mixed, device=rank.device).to(
                    core.item_table.dtype
                )
        rank.state.blended_items = int(len(between))
    if rank.rank == 0:
        log.info(
            "content tower: %d item(s) got generated rows, %d blended rows",
            len(cold),
            rank.state.blended_items,
        )


def validate(rank: Rank, metrics: dict[str, Any], epoch: int) -> None:
    """Search phase: validation metrics, each rank scoring its own users of the validation
    sample (their per-user mean over all ranks is the one-rank number); the same decision on
    every rank."""
    per_user: dict = {}
    diagnostics: dict = {}
    sampling = rank.cfg.sampling
    noisy = ENCODERS[rank.cfg.model.encoder].takes_noise  # the samples' diagnostics apply
    val = validation_metrics(
        rank.models.model,
        rank.seq,
        limits=rank.fit_limits,
        truth=rank.val.truth,
        index_cfg=rank.cfg.index,
        users=rank.val.users,
        per_user=per_user,
        samples=sampling.samples,
        merge_rule=sampling.merge,
        seed=rank.cfg.seed,
        diagnostics=diagnostics if noisy else None,
    )
    val = weighted_mean(val, float(len(rank.val.users)), rank.device)
    metrics.update({f"val_{k}": v for k, v in val.items()})
    if noisy:
        # Every rank takes part (a collective), one with no validation users with weight 0.
        weight = float(min(len(rank.val.users), DIAGNOSTIC_USERS)) if diagnostics else 0.0
        filled = diagnostics or {"sample_cosine": 0.0, "top10_overlap": 0.0}
        metrics.update(
            {f"val_{k}": v for k, v in weighted_mean(filled, weight, rank.device).items()}
        )
    if rank.val.sampled:
        metrics["val_users"] = rank.val.sampled  # a sample: history.csv says so
    value = val["ndcg@10"]
    metrics["val_ndcg@10"] = value
    state = rank.state
    if value > state.best_metric:
        state.best_metric, state.best_epoch, state.bad_epochs = value, epoch, 0
        # Gathered only at a new best (every rank takes this branch: `value` is the ranks' mean).
        scored = all_concat_objects((per_user["users"], per_user["ndcg"]))
        users = np.concatenate([u for u, _ in scored])
        order = np.argsort(users, kind="stable")
        state.best_val_users = users[order].tolist()
        state.best_val_ndcg = np.concatenate([v for _, v in scored])[order].tolist()
        rank.best_generator = (
            copy.deepcopy(rank.models.model.state_dict()) if rank.rank == 0 else None
        )
    else:
        state.bad_epochs += 1


def advance_phase(rank: Rank, epoch: int) -> None:
    """Move to the refit or finish, decided identically on every rank."""
    cfg, state, m = rank.cfg, rank.state, rank.models
    searched = state.bad_epochs >= cfg.optim.patience or epoch >= cfg.optim.epochs
    if state.phase == "search" and searched:
        if cfg.optim.refit and state.best_epoch > 0:
            state.phase, state.epoch = "refit", 0
            # From fresh models, or under --init from the parent's again.
            fresh_gen, fresh_disc = fresh_models(cfg, rank.mcfg)
            start = initial_state(cfg, fresh_gen)
            gan.unwrap(m.gen).load_state_dict(
                (start or {}).get("generator", fresh_gen.state_dict())
            )
            disc_state = start["discriminator"] if start else fresh_disc.state_dict()
            gan.unwrap(m.disc).load_state_dict(disc_state)
            m.average = averaged(gan.unwrap(m.gen), cfg.optim.ema_decay)
            m.g_opt, m.d_opt = optimisers(m.gen, m.disc, cfg)
            if start is not None:
                load_inherited_optimizers(start, m.g_opt, m.d_opt)
        else:
            finish_training(rank)
            if rank.best_generator is not None:
                gan.unwrap(m.gen).load_state_dict(rank.best_generator)
    elif state.phase == "refit" and epoch >= state.best_epoch:
        finish_training(rank)
        if m.average is not None:
            gan.unwrap(m.gen).load_state_dict(m.average.module.state_dict())
    elif state.phase == "tower" and epoch >= cfg.content.tower_epochs:
        write_generated_rows(rank)
        state.phase = "done"


def finish_training(rank: Rank) -> None:
    """The model is trained: fit the content tower next, if it is on, else done."""
    if rank.models.tower is not None:
        rank.state.phase, rank.state.epoch = "tower", 0
    else:
        rank.state.phase = "done"


def save_and_report(rank: Rank, metrics: dict[str, Any]) -> None:
    """Rank 0 writes and publishes the checkpoint; every rank reports (a barrier)."""
    import ray.train

    report = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    report["done"] = float(rank.state.phase == "done")
    if rank.rank != 0:
        ray.train.report(report)
        return
    state, m = rank.state, rank.models
    mcfg = dataclasses.asdict(rank.mcfg)
    done = state.phase == "done"
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(
            Path(tmp),
            payload=checkpoint.payload(
                models=dataclasses.replace(m, average=None if done else m.average),
                state=state,
                model_config=mcfg,
                train_config=to_dict(rank.cfg),
                data=rank.data.root,
                best_generator=rank.best_generator if state.phase == "search" else None,
            )
            | rank.lineage,
            meta=checkpoint.meta(state, mcfg, rank.cfg.game.adv_weight) | rank.lineage,
        )
        rank.run.publish_checkpoint(Path(tmp))
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def train_loop(config: dict) -> None:
    """The Ray Train worker function (one per rank)."""
    import ray.train

    rank = setup(config)
    shard = ray.train.get_dataset_shard(f"train_{rank.rank}")  # whole users, its own
    while rank.state.phase != "done":
        epoch = rank.state.epoch + 1
        inject_fault(rank, epoch)
        if rank.state.phase == "tower":
            metrics = tower_epoch(rank, epoch)
        else:
            metrics = run_epoch(rank, shard, epoch)
        if rank.state.phase == "search":
            validate(rank, metrics, epoch)
        rank.state.epoch = epoch
        rank.state.history.append(metrics)
        if rank.rank == 0:
            log.debug("%s epoch %d: %s", rank.state.phase, epoch, metrics)
        advance_phase(rank, epoch)
        save_and_report(rank, metrics)
