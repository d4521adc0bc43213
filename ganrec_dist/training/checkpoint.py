"""What a training checkpoint holds, and how a rank resumes from one.

A checkpoint is written after every epoch by rank 0, reported to Ray Train (its storage is what a
restarted worker group or a re-run driver resumes from) and published to RUN/checkpoint (what
`index`, `score`, `serve` and `evaluate` read). Together with the seeding of every epoch's draws
it makes a resumed run the run that was never interrupted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ganrec_dist.data.layout import RunDir, load_payload

PHASES = {"search": 0, "refit": 1, "tower": 2, "done": 3}


@dataclasses.dataclass
class LoopState:
    """Everything about progress that a resumed run needs, saved in every checkpoint."""

    phase: str = "search"  # search | refit | tower (the content tower, when on) | done
    epoch: int = 0  # epochs completed in this phase
    best_epoch: int = 0
    best_metric: float = -1.0
    bad_epochs: int = 0
    history: list = dataclasses.field(default_factory=list)
    nodes: list = dataclasses.field(default_factory=list)  # the Ray node of each rank, last start
    # What each rank held of the log, last start: {"rows", "users", "log_bytes"} per rank.
    shards: list = dataclasses.field(default_factory=list)
    # At the best search epoch: the validation users scored (all ranks') and each one's NDCG@10,
    # which `ganrec compare` pairs across runs (the refit model has trained on those rows).
    best_val_users: list = dataclasses.field(default_factory=list)
    best_val_ndcg: list = dataclasses.field(default_factory=list)
    generated_items: int = 0  # items whose catalogue row the content tower wrote
    blended_items: int = 0  # in-between items whose row it blended (--cold_item_blend)


def payload(
    *,
    models: Any,
    state: LoopState,
    model_config: dict,
    train_config: dict,
    data: str,
    best_generator: dict | None,
) -> dict:
    """The checkpoint's ``model.pt``: G, D, their optimisers, the weight average, the state.

    ``models`` holds ``gen``, ``disc``, ``g_opt``, ``d_opt`` and ``average`` (None when off).
    """
    from ganrec_dist.training.gan import unwrap

    return {
        "generator": unwrap(models.gen).state_dict(),
        "discriminator": unwrap(models.disc).state_dict(),
        "best_generator": best_generator,
        "averaged_generator": None if models.average is None else models.average.state_dict(),
        "g_optimizer": models.g_opt.state_dict(),
        "d_optimizer": models.d_opt.state_dict(),
        "tower": None if models.tower is None else unwrap(models.tower).state_dict(),
        "tower_optimizer": None if models.tower_opt is None else models.tower_opt.state_dict(),
        "model_config": model_config,
        "train_config": train_config,
        "state": dataclasses.asdict(state),
        "data": data,
    }


def meta(state: LoopState, model_config: dict, adv_weight: float) -> dict:
    """The checkpoint's ``meta.json``: what readers need without loading the model."""
    return {
        "phase": state.phase,
        "epoch": state.epoch,
        "best_epoch": state.best_epoch,
        "final": state.phase == "done",
        "metrics": state.history[-1] if state.history else {},
        "history": state.history,  # small (a row per epoch): progress lines, without the model
        "nodes": state.nodes,
        "shards": state.shards,
        "model_config": model_config,
        "adv_weight": adv_weight,
    }


def latest_payload(checkpoint: Any, run: RunDir) -> dict | None:
    """The most advanced of Ray Train's restored checkpoint and RUN/checkpoint.

    RUN/checkpoint is published just before each report, so when the driver dies between the
    two, it is one epoch ahead of what Ray Train registered.
    """
    candidates = []
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            candidates.append(load_payload(Path(directory) / RunDir.MODEL))
    published = run.published_payload()
    if published is not None:
        candidates.append(published)
    if not candidates:
        return None
    return max(candidates, key=lambda p: (PHASES[p["state"]["phase"]], p["state"]["epoch"]))
