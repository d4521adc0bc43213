"""The models `evaluate` trains for its tables next to the run itself: its ablation, SASRec,
and the cold-start table's models trained on a copy of DATA. Each is the run's own configuration
with a few settings changed, trained into a directory of its own, and reused while its settings
still match."""

from __future__ import annotations

import logging
from typing import Any

from ganrec_dist.core.config import EvaluateConfig, TrainConfig, build, replace
from ganrec_dist.core.errors import UserError
from ganrec_dist.data.layout import RunDir

log = logging.getLogger(__name__)


def _label(params: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in params.items())


def train_companions(cfg: EvaluateConfig, run: RunDir) -> dict[str, dict[str, Any]]:
    """The step before `evaluate`'s table: the table's models besides the run, each trained or
    reused (the ablation with ``--ablation``, SASRec with ``--sasrec``), by row name."""
    out = {}
    if cfg.ablation:
        out["gan_ablation"] = ablation_run(cfg, run)
    if cfg.sasrec:
        out["sasrec"] = sasrec_run(cfg, run)
    return out


ABLATION = {"adv_weight": 0.0}  # the ablation: the same model without the adversarial term


def ablation_run(cfg: EvaluateConfig, run: RunDir) -> dict[str, Any]:
    """Train (or reuse) the same model with adv_weight = 0 under RUN/ablation."""
    return companion_run(cfg, run, run.ablation(), "ablation", **ABLATION)


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


def sasrec_run(cfg: EvaluateConfig, run: RunDir) -> dict[str, Any]:
    """The SASRec run of the table: ``--sasrec PATH`` as given (a trained ``--encoder sasrec``
    run on the same DATA), or ``train``: trained (or reused) under RUN/sasrec with the run's
    schedule and split and SASRec's settings."""
    if cfg.sasrec != "train":
        other = RunDir.open(cfg.sasrec)
        if other.meta()["model_config"].get("encoder") != "sasrec":
            raise UserError(f"--sasrec {cfg.sasrec}: not a run trained with --encoder sasrec")
        return {"run": other.uri, "trained": False, "seconds": 0.0}
    return companion_run(cfg, run, run.companion("sasrec"), "sasrec", **SASREC)


def companion_config(
    trained: TrainConfig,
    *,
    run: RunDir,
    target: RunDir,
    label: str,
    cfg: EvaluateConfig,
    **changes: Any,
) -> TrainConfig:
    """The run's configuration ``trained`` (index settings included) as its companion under
    ``target``: the changes, and DATA and the cluster of the evaluation ``cfg``."""
    return replace(
        trained,
        out=target.uri,
        name=f"{trained.execution.name or run.name}-{label}",
        data=cfg.data,
        address=cfg.address,
        fail_at_epoch=-1,
        **changes,
    )


def companion_run(
    cfg: EvaluateConfig, run: RunDir, target: RunDir, label: str, **changes: Any
) -> dict[str, Any]:
    """Train (or reuse) the run's configuration with ``changes`` under ``target``: only a run of
    this configuration is this run's companion (an ablation is shared by GANs that differ only
    in D's settings, which a run without D-steps does not use); one of other settings there is
    trained again. Returns ``{"run", "trained", "seconds"}`` (what the command reports)."""
    from ganrec_dist.training.train import train_or_reuse

    trained = build(TrainConfig, run.stored_config() or {})
    companion = companion_config(trained, run=run, target=target, label=label, cfg=cfg, **changes)
    log.info("the %s (%s) in %s", label, _label(changes), target.uri)
    outcome = train_or_reuse(companion, retrain_other_settings=True)
    log.info("%s the %s", "trained" if outcome["trained"] else "reused", label)
    return outcome
