"""Which settings make another run: the rule behind resuming and reusing runs.

A RUN resumes when the same command is run again; with settings that would train another model
it is refused (it would carry on from the old weights and record the new settings as if they had
made them). The rule follows the structure of :class:`~ganrec_dist.core.config.TrainConfig`: the
``execution`` section (where and how the run executes) may change; the ``discriminator`` section
does not matter to a run without D-steps (``adv_weight`` 0, the ablation); everything else does.
"""

from __future__ import annotations

from typing import Any

from ganrec_dist.core import storage
from ganrec_dist.core.config import TrainConfig, flatten, to_dict
from ganrec_dist.core.errors import UserError
from ganrec_dist.data.layout import RunDir

ALWAYS_IGNORED = frozenset({"execution", "out"})


def ignored_sections(cfg: TrainConfig) -> frozenset[str]:
    """The top-level settings of ``cfg`` in which two runs may differ and be the same run."""
    if cfg.game.adv_weight == 0:
        return ALWAYS_IGNORED | {"discriminator"}
    return ALWAYS_IGNORED


def config_changes(
    previous: dict[str, Any], current: dict[str, Any], ignore: frozenset[str] = ALWAYS_IGNORED
) -> list[str]:
    """``key: old -> new`` for each setting that differs between two ``config.yaml`` dicts,
    settings under the top-level names in ``ignore`` aside; a key only one of them records
    counts as a change."""
    old, new = flatten(previous), flatten(current)
    changes = []
    for key in sorted(set(old) | set(new)):
        if key.split(".", 1)[0] in ignore:
            continue
        before, after = old.get(key, "(not recorded)"), new.get(key, "(not recorded)")
        if key == "data" and isinstance(before, str) and isinstance(after, str):
            before, after = storage.display(before), storage.display(after)
        if before != after:
            changes.append(f"{key}: {before!r} -> {after!r}")
    return changes


def run_changes(stored: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """The settings in which ``cfg`` trains another model than the run whose ``config.yaml`` is
    ``stored``."""
    return config_changes(stored, to_dict(cfg), ignored_sections(cfg))


def check_resumable(run: RunDir, cfg: TrainConfig) -> None:
    """Refuse to continue a run in RUN with another configuration."""
    if not run.started():
        return
    stored = run.stored_config()
    if stored is None:
        return
    changes = run_changes(stored, cfg)
    if changes:
        raise UserError(
            f"{run.uri} already holds a run with other settings "
            f"({'; '.join(changes)}): the same command resumes it; use another --out, "
            "or delete it to start over"
        )
