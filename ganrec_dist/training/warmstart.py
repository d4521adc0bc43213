"""`ganrec train --init RUN`: start from a trained run's models on a newer version of its DATA.

What is inherited: the parent's final generator (the weights it serves: its weight average at
the end of its refit, or its best search epoch without refit), its discriminator, and the Adam
states of both as its last step left them (moments and step counts). The item and user tables
grow to the new DATA's catalogue and users: old rows are the parent's (ids keep their index
across DATA versions, :mod:`ganrec_dist.data.append`), new rows are what a fresh run of the same
seed would start them at, and their Adam moments start at zero. Then G is shrunk towards that
fresh start (``--init_shrink``, :func:`shrink`): a model trained on from its parent's weights
generalises worse than a retrain (Ash & Adams 2020); on the tuning log 0.6 x the parent's weights
+ 0.4 x the fresh ones lifted the warm start from 0.93 x to 0.99 x a retrain, and 0.5 x with a
fourth epoch (the default) to 1.00 x after the second partition, where 0.6 x and three stayed at
0.97 x.

The schedule (``--init_schedule``): **fixed** (the default) trains ``init_epochs`` epochs (4)
over all of train from the inherited models, no search; **search** runs ``init_epochs`` search
epochs with ``init_patience``, then the refit, which starts from the same inherited models (not
from fresh ones: that would throw the warm start away) and trains on all of train for the best
epoch count. Measured on a synthetic tuning log (``docs/benchmarks.md``, *update*): the fixed
schedule reaches what the search schedule reaches in about half its epochs; fewer epochs, a
lower or higher rate, fresh optimiser moments (``--init_optimizer false``) and replaying a share
of the old rows (``--init_replay``) did not do better; the shrink did. With the shrink, the
cheaper schedules tried (a falling rate, larger batches, replay) lost 0.014-0.031 after the
tuning log's second partition.

Validation (the search schedule): the parent's refit has fitted most of the new DATA's train
rows, so the search phase validates on the rows it never trained on: each user's train rows
after the ones the parent fitted (rows newer than the parent's DATA, and the parent's test rows
that the re-split moved into train). Each user's latest rows are test, as always. A daily
partition is small next to a user's history, so most of its rows land in test; the parent's test
rows are what is left to validate on that neither model has fitted. (A late row, older than rows
the parent fitted, shifts one fitted row into validation: the split is by position.) The fixed
schedule fits every train row, so the update's gate judges it on the test rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ganrec_dist.core.errors import UserError
from ganrec_dist.data.layout import DataDir, RunDir

# The fields a warm start must share with its parent (shapes of every weight but the tables).
SHAPE_FIELDS = ("encoder", "dim", "hidden", "history_len", "noise_dim", "blocks", "heads")
# Generator weights with a row per item or user (their last row is the padding row).
TABLES = {"encoder.items.weight": "n_items", "encoder.users.weight": "n_users"}


def parent_payload(init: str) -> dict:
    """The parent run's final checkpoint; one line if there is none yet."""
    run = RunDir.open(init)
    if not run.has_checkpoint():
        raise UserError(f"--init {init}: no trained checkpoint there")
    if not run.meta().get("final"):
        raise UserError(f"--init {init}: its training has not finished; run it to the end first")
    return run.payload()


def parent_data_version(payload: dict) -> str:
    """The DATA version the parent was trained on (recorded since versions exist; read from
    that DATA for an older run)."""
    return payload.get("data_version") or DataDir(payload["data"]).version


def parent_cutoff(payload: dict) -> int:
    """The newest timestamp of the parent's DATA: validation rows must be newer."""
    found = payload.get("data_max_timestamp")
    return int(found) if found is not None else DataDir(payload["data"]).max_timestamp


def check_parent(init: str, model: Any, data: DataDir) -> dict:
    """Refuse, in one line, a parent this run cannot start from; returns its payload."""
    payload = parent_payload(init)
    old = payload["model_config"]
    changed = [
        f"{k} {old.get(k)} vs {getattr(model, k)}"
        for k in SHAPE_FIELDS
        if old.get(k) != getattr(model, k)
    ]
    if changed:
        raise UserError(
            f"--init {init}: another model ({'; '.join(changed)}): a warm start "
            "needs the same model settings"
        )
    version = parent_data_version(payload)
    if version not in data.lineage:
        raise UserError(
            f"--init {init}: trained on DATA version {version}, which is not {data} "
            f"({data.version}) or an ancestor of it: its ids are not this DATA's "
            "(use prepare --append-to to make a new version of the parent's DATA)"
        )
    if data.max_timestamp <= parent_cutoff(payload):
        raise UserError(
            f"--init {init}: {data} has no interaction newer than the parent's data "
            "to validate the warm start on"
        )
    return payload


def grow_rows(old: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """``fresh`` ``[n_new + 1, ...]`` with the old rows (all but old's padding row) copied in
    and old's padding row as the new padding row."""
    out = fresh.clone()
    n_old = old.shape[0] - 1
    out[:n_old] = old[:n_old]
    out[-1] = old[-1]
    return out


def grown_generator(old: dict, fresh: dict) -> dict:
    """The parent's generator weights on the new tables' shapes."""
    grown = dict(old)
    for name in TABLES:
        if name in old:
            grown[name] = grow_rows(old[name], fresh[name])
    return grown


def _grow_adam_state(state: dict, names: list[str], shapes: dict[str, torch.Size]) -> dict:
    """A torch Adam/SparseAdam state dict over parameters ``names`` (in the optimiser's order),
    its moments of the tables grown with zero rows."""
    state = {"state": dict(state["state"]), "param_groups": state["param_groups"]}
    for index, values in list(state["state"].items()):
        name = names[int(index)]
        if name not in TABLES:
            continue
        grown = {}
        for key, value in values.items():
            if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] != shapes[name][0]:
                value = grow_rows(value, torch.zeros(shapes[name], dtype=value.dtype))
            grown[key] = value
        state["state"][index] = grown
    return state


def grown_optimizer(state: dict, gen: torch.nn.Module, sparse: bool) -> dict:
    """The parent's generator optimiser state for the grown ``gen``: torch Adam over
    ``gen.parameters()``, or :class:`~ganrec_dist.training.tables.GeneratorOptimizer`'s dense and
    sparse halves (the tables in :func:`~ganrec_dist.training.tables.tables` order)."""
    from ganrec_dist.training.tables import tables

    named = dict(gen.named_parameters())
    shapes = {name: p.shape for name, p in named.items()}
    if not sparse:
        return _grow_adam_state(state, list(named), shapes)
    table_names = tables(gen)
    dense = [n for n in named if n not in table_names]
    return {
        "dense": _grow_adam_state(state["dense"], dense, shapes),
        "sparse": _grow_adam_state(state["sparse"], table_names, shapes),
    }


def inherited(payload: dict, gen: torch.nn.Module, sparse: bool) -> dict:
    """What a warm start loads into the fresh ``gen`` and its D: weights, and the optimiser
    states when the parent's tables were of the same kind (dense or sparse) as the new run's."""
    out = {
        "generator": grown_generator(payload["generator"], gen.state_dict()),
        "discriminator": payload["discriminator"],
        "g_optimizer": None,
        "d_optimizer": payload["d_optimizer"],
    }
    if bool(payload["model_config"].get("sparse")) == sparse:
        out["g_optimizer"] = grown_optimizer(payload["g_optimizer"], gen, sparse)
    return out


def shrink(inherited: dict, fresh: dict, keep: float) -> dict:
    """ "Shrink and perturb" (Ash & Adams 2020, on warm-started training generalising worse than
    a fresh start): every floating weight ``keep * inherited + (1 - keep) * fresh``, ``fresh``
    this run's own initialisation; 1 keeps the parent's weights as they are."""
    if keep >= 1:
        return inherited
    return {
        name: keep * value + (1 - keep) * fresh[name] if value.is_floating_point() else value
        for name, value in inherited.items()
    }


def parent_lengths(init: str) -> np.ndarray:
    """Per user of the parent, how many train rows it fitted (from its RUN/log; only the
    offsets are read)."""
    run = RunDir.open(init)
    with np.load(run.log / RunDir.SEQUENCES, allow_pickle=False) as stored:
        return np.diff(stored["offsets"])


def warm_limits(lengths: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """Per user, how many leading train rows the warm start's search fits: those the parent
    fitted (``fitted``, per parent user; a new user has none). The rest, the rows the parent
    never trained on, are the validation rows."""
    known = np.zeros(len(lengths), np.int64)
    n = min(len(fitted), len(lengths))
    known[:n] = fitted[:n]
    return np.minimum(lengths, known)
