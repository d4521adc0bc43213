"""The models `evaluate` trains for its tables next to the run itself: its ablation, SASRec,
and the cold-start table's models trained on a copy of DATA. Each is the run's own configuration
with a few settings changed, trained into a directory of its own, and reused while its settings
still match."""

from __future__ import annotations

import logging
from typing import Any

from ganrec_dist.config import EvaluateConfig, TrainConfig, build, replace
from ganrec_dist.errors import UserError
from ganrec_dist.layout import RunDir
from ganrec_dist.resume import run_changes, stored_config

log = logging.getLogger(__name__)


def _label(params: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in params.items())


def ablation_run(cfg: EvaluateConfig, run: RunDir) -> str:
    """Train (or reuse) the same model with adv_weight = 0 under RUN/ablation."""
    return companion_run(cfg, run, run.ablation(), "ablation", adv_weight=0.0)


# SASRec's settings when `evaluate --sasrec train` trains it: the SASRec paper's size and
# dropout for MovieLens; its table at G's learning rate and its own schedule, both chosen on
# validation (docs/results.md, *SASRec by time to quality*); its epochs by early stopping.
SASREC = {
    "encoder": "sasrec",
    "adv_weight": 0.0,
    "dropout": 0.2,
    "blocks": 2,
    "heads": 1,
    "table_lr": 1.0,
    "epochs": 20,
}


def sasrec_run(cfg: EvaluateConfig, run: RunDir) -> str:
    """The SASRec run of the table: ``--sasrec PATH`` as given (a trained ``--encoder sasrec``
    run on the same DATA), or ``train``: trained (or reused) under RUN/sasrec with the run's
    schedule and split and SASRec's settings."""
    if cfg.sasrec != "train":
        other = RunDir.open(cfg.sasrec)
        if other.meta()["model_config"].get("encoder") != "sasrec":
            raise UserError(f"--sasrec {cfg.sasrec}: not a run trained with --encoder sasrec")
        return other.uri
    return companion_run(cfg, run, run.companion("sasrec"), "sasrec", **SASREC)


def companion_run(
    cfg: EvaluateConfig, run: RunDir, target: RunDir, label: str, **changes: Any
) -> str:
    """Train (or reuse) the run's configuration with ``changes`` under ``target``."""
    from ganrec_dist.train import train

    trained = build(TrainConfig, stored_config(run) or {})
    # The same configuration, index settings included, with the changes.
    companion = replace(
        trained,
        out=target.uri,
        name=f"{trained.execution.name or run.name}-{label}",
        data=cfg.data,
        address=cfg.address,
        fail_at_epoch=-1,
        **changes,
    )
    target = RunDir.open(target.uri)
    stored = stored_config(target)
    if stored is not None:
        # Only a run of this configuration is this run's companion (an ablation is shared by
        # GANs that differ only in D's settings, which a run without D-steps does not use).
        diff = run_changes(stored, companion)
        if diff:
            log.warning(
                "the %s in %s was trained with other settings (%s): training it again",
                label,
                target.uri,
                "; ".join(diff),
            )
            target.remove()
            target = RunDir.open(target.uri)
    if target.has_checkpoint() and target.meta().get("final"):
        log.info("reusing the %s in %s", label, target.uri)
        return target.uri
    log.info("training the %s (%s) in %s", label, _label(changes), target.uri)
    train(companion)
    return target.uri
