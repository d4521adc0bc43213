"""`ganrec update`: the daily update of a live model, as one command (and one Ray job).

    append the new partition  ->  warm-start train from the live run  ->  gate  ->  index
    ->  roll out (only if the gate passed)

The **gate** compares the new run with the live one on the same rows, which neither has trained
on, through the same retrieval and seen-item exclusion: with the default warm schedule
(``--init_schedule fixed``, every train row fitted) the new DATA's test rows, each user's train
rows the history; with the search schedule the new run's validation rows (each user's train rows
that the live run never trained on, :mod:`warmstart`), the new run scored at its best search
epoch (before its refit fits those rows).

**Retrain policy** (``--retrain_every N``): when the live run is N - 1 warm starts from its last
run trained from scratch, the update trains from scratch instead (the live run's settings on the
new DATA, no ``--init``). Its validation rows are then each user's last train rows, some of which
the live run has fitted: the gate favours the live run on such a day, so a retrain rolls out only
when it is not worse even so.

The live model knows none of the new ids: a new item in a history is ignored by it (as serving
does) and a new user is an unknown user. The new run is rolled out iff its NDCG@10 there is not
lower.

**Rollout**: the live Ray Serve app's ``user_config.run`` is set to the new run, which swaps the
model in place on every replica (no request dropped; ``GanRecommender.reconfigure``). Without a
live app (``--rollout false``) the decision is only recorded: ``gate.json`` in the new run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from ganrec_dist.core import config as cfgmod
from ganrec_dist.core import storage
from ganrec_dist.core.config import IndexCommandConfig, PrepareConfig, TrainConfig
from ganrec_dist.core.errors import UserError
from ganrec_dist.data.append import append, default_out
from ganrec_dist.data.interactions import Sequences, from_rows, validation_limits
from ganrec_dist.data.layout import DataDir, RunDir
from ganrec_dist.training import warmstart
from ganrec_dist.training.validation import validation_metrics, validation_truth

log = logging.getLogger(__name__)


def next_run(run: str, data: DataDir) -> str:
    """The new run's default place: beside the live one, ``RUN.v<N>`` for DATA version N."""
    root = Path(run)
    return str(root.with_name(f"{root.name.split('.v')[0]}.v{data.manifest['version_number']}"))


def update(cfg: cfgmod.UpdateConfig) -> dict:
    """Run the daily update; returns the gate's record (with ``rolled_out``)."""
    from ganrec_dist.retrieval.index import index_command
    from ganrec_dist.training.train import train

    live = RunDir.open(cfg.run)
    stored = live.stored_config()
    if stored is None or not live.has_checkpoint():
        raise UserError(f"--run {cfg.run}: no trained run there")
    parent_data = DataDir(cfg.data or stored["data"])
    out_data = cfg.out_data or default_out(parent_data)
    data = DataDir(out_data)
    if appended_before(data, parent_data, cfg.source):
        # A re-run after a failure: the version is there; training resumes its run.
        log.info("update 1/4: %s is already %s plus a partition: reused", data, parent_data)
    else:
        log.info("update 1/4: append %s to %s -> %s", cfg.source, parent_data, out_data)
        append(
            PrepareConfig(
                source=cfg.source,
                append_to=parent_data.root,
                out=out_data,
                retire=cfg.retire,
                item_content=cfg.item_content,
                address=cfg.address,
            )
        )
    out = cfg.out or next_run(cfg.run, data)
    train_cfg = warm_config(stored, cfg, data=data.root, out=out)
    starts = warm_starts(cfg.run)
    if cfg.retrain_every and starts + 1 >= cfg.retrain_every:
        log.info(
            "update: %s is %d warm starts from scratch: retrain (--retrain_every)", cfg.run, starts
        )
        train_cfg = dataclasses.replace(train_cfg, init="")
    if _trained_before(out, data):
        # A re-run after the driver died past training (e.g. before the rollout).
        log.info("update 2/4: %s is already trained on %s: reused", out, data)
    else:
        log.info("update 2/4: warm-start train %s from %s", out, cfg.run)
        train(train_cfg)
    log.info("update 3/4: index %s", out)
    index_command(IndexCommandConfig(run=out, index=train_cfg.index))
    log.info("update 4/4: gate: %s against %s on rows the live run never fitted", out, cfg.run)
    record, users = gate(cfg.run, out, data)
    record["new_items"] = new_item_reach(cfg.run, out, users)
    RunDir(out).write_file(RunDir.GATE, json.dumps(record, indent=2) + "\n")
    record["rolled_out"] = False
    if record["passed"] and cfg.rollout:
        from ganrec_dist.inference.serve import rollout

        rollout(out, app=cfg.app, address=cfg.address)
        record["rolled_out"] = True
    record["removed"] = prune(out if record["passed"] else cfg.run, cfg.keep)
    RunDir(out).write_file(RunDir.GATE, json.dumps(record, indent=2) + "\n")
    log.info(
        "update: NDCG@10 on %d users' unfitted rows: new %.4f, live %.4f -> %s%s",
        record["users"],
        record["new"],
        record["live"],
        "passed" if record["passed"] else "held back (validation got worse)",
        ", rolled out" if record["rolled_out"] else "",
    )
    return record


def versions(path: str | Path) -> list[Path]:
    """``path``'s stem and its sibling versions ``<stem>.v<N>`` (the stem is version 1), oldest
    first."""
    root = Path(path).resolve()
    stem = root.name.split(".v")[0]
    found = []
    for sibling in root.parent.iterdir() if root.parent.exists() else []:
        number = sibling.name[len(stem) + 2 :]
        if sibling.name == stem:
            found.append((1, sibling))
        elif sibling.name.startswith(f"{stem}.v") and number.isdigit():
            found.append((int(number), sibling))
    return [p for _, p in sorted(found)]


def prune(live_run: str, keep: int) -> list[str]:
    """Remove the RUN and DATA versions beside ``live_run`` that neither the ``keep`` newest
    run versions, the live run nor its parent (what `rollback` serves) need; returns what was
    removed. DATA versions share unchanged files by hard links, so removing one frees only
    what no kept version links."""
    if keep <= 0 or storage.is_uri(live_run):
        return []
    runs = versions(live_run)
    needed = {*runs[-keep:], Path(live_run).resolve()}
    parent = (RunDir(live_run).meta().get("parent") or {}).get("run")
    if parent and not storage.is_uri(parent):
        needed.add(Path(parent).resolve())
    data_needed = set()
    for run in needed:
        stored = RunDir(run).stored_config() if run.exists() else None
        if stored and not storage.is_uri(stored["data"]):
            data_needed.add(Path(stored["data"]).resolve())
    removed = [run for run in runs if run not in needed]
    if data_needed:
        removed += [d for d in versions(next(iter(data_needed))) if d not in data_needed]
    for path in removed:
        shutil.rmtree(path)
        log.info("update: removed %s (--keep %d)", path, keep)
    return [str(p) for p in removed]


def rollback(cfg: cfgmod.RollbackConfig) -> dict:
    """Serve ``cfg.to`` (default: the parent of ``cfg.run``) again through the zero-drop
    rollout; one line if there is no parent or no live app."""
    from ganrec_dist.inference.serve import rollout

    target = cfg.to or (RunDir.open(cfg.run).payload().get("parent") or {}).get("run")
    if not target:
        raise UserError(f"--run {cfg.run}: no parent version to roll back to (pass --to RUN)")
    if not rollout(target, app=cfg.app, address=cfg.address):
        raise UserError(f"no running Serve app {cfg.app!r}: nothing to roll back")
    log.info("rollback: %s serves %s again (was %s)", cfg.app, target, cfg.run)
    return {"from": cfg.run, "to": target}


def new_item_reach(live_run: str, new_run: str, users: np.ndarray) -> dict:
    """What the new run shows of the items the live one does not know (the day's new items,
    with or without content): the share of them in any of ``users``' top 10 and their share
    of all top-10 slots, through the retrieval path it will serve with. (Their hit rate needs
    held-out rows on them, which a warm start's refit has trained on: not here.)"""
    from ganrec_dist.retrieval.recommender import Recommender

    known = int(RunDir.open(live_run).meta()["model_config"]["n_items"])
    rec = Recommender(new_run)
    fresh = np.setdiff1d(np.arange(known, rec.model_config.n_items), rec.retired)
    if len(fresh) == 0 or len(users) == 0:
        return {"items": int(len(fresh)), "reached_top10": 0.0, "share_of_slots": 0.0}
    recs, _ = rec.recommend_known(users, 10)
    shown = recs[recs >= 0]
    return {
        "items": int(len(fresh)),
        "reached_top10": float(np.isin(fresh, shown).mean()),
        "share_of_slots": float(np.isin(shown, fresh).mean()),
    }


def _trained_before(out: str, data: DataDir) -> bool:
    """``out`` holds a finished run trained on ``data``."""
    run = RunDir(out)
    if not run.has_checkpoint():
        return False
    stored = run.stored_config() or {}
    return bool(run.meta().get("final")) and stored.get("data") == data.root


def appended_before(data: DataDir, parent: DataDir, source: str) -> bool:
    """``data`` is ``parent`` with ``source`` appended (an update run again after a failure)."""
    if not storage.exists(data.path(DataDir.MANIFEST)):
        return False
    manifest = data.manifest
    if (manifest.get("parent") or {}).get("version") != parent.version:
        raise UserError(f"{data}: already exists and is not a version of {parent}")
    return manifest["partitions"][-1]["source"] == source


def warm_config(stored: dict, cfg: cfgmod.UpdateConfig, *, data: str, out: str) -> TrainConfig:
    """The live run's own settings, warm-started from it on the new DATA."""
    base = cfgmod.build(TrainConfig, stored)
    execution = dataclasses.replace(
        base.execution,
        name="",
        address=cfg.address,
        workers=cfg.workers or base.execution.workers,
    )
    optim = dataclasses.replace(
        base.optim, init_epochs=cfg.init_epochs, init_shrink=cfg.init_shrink
    )
    return dataclasses.replace(
        base, data=data, out=out, init=cfg.run, execution=execution, optim=optim
    )


def _gate_rows(
    data: DataDir, new: dict, live_run: str, train_cfg: TrainConfig
) -> tuple[Sequences, np.ndarray, np.ndarray]:
    """The rows the gate judges on, as (sequences, history limits, users): the new run's
    validation rows when it searched (a warm start: the rows the live run never fitted; a
    retrain: its own), else (``--init_schedule fixed`` trains on every train row) the test
    rows of the new DATA, after each user's train rows."""
    users = np.asarray(new["state"]["best_val_users"], np.int64)
    if len(users):
        seq = data.sequences()
        if train_cfg.init:
            limits = warmstart.warm_limits(seq.lengths, warmstart.parent_lengths(live_run))
        else:  # retrained: its own validation rows, which the live run may have fitted
            limits = validation_limits(seq, train_cfg.dataset.val_fraction)
        return seq, limits, users
    columns = ["user_idx", "item_idx", "position"]
    train = data.read(DataDir.TRAIN, columns)
    rows = pa.concat_tables([train, data.read(DataDir.TEST, columns)])
    n_users, n_items = data.manifest["users"], data.manifest["items"]
    seq = from_rows(*(rows[c].to_numpy() for c in columns), n_users=n_users, n_items=n_items)
    # Each user's train rows are the history (positions put them before the test rows).
    limits = np.bincount(train["user_idx"].to_numpy(), minlength=n_users)
    users = np.flatnonzero(seq.lengths > limits)
    cap = train_cfg.dataset.val_users or len(users)
    users = np.sort(np.random.default_rng(0).permutation(users)[:cap])
    if len(users) == 0:
        raise UserError(f"{data}: no test rows to judge {new_run_name(new)} on")
    return seq, limits, users


def new_run_name(payload: dict) -> str:
    return str(payload["train_config"].get("out", "the new run"))


def warm_starts(run: str) -> int:
    """How many warm starts ``run`` is from its last run trained from scratch (add-items
    versions are not warm starts and are not counted)."""
    count, current = 0, run
    for _ in range(10_000):
        parent = RunDir.open(current).meta().get("parent") or {}
        if not parent.get("run"):
            return count
        count += "added_items" not in parent
        current = parent["run"]
    return count


def _live_view(seq: Sequences, n_items: int) -> Sequences:
    """``seq`` as the live model sees it: items it does not know become its padding id (so a
    history ignores them, as serving does)."""
    items = np.where(seq.items >= n_items, n_items, seq.items).astype(seq.items.dtype)
    return Sequences(seq.offsets, items, seq.n_users, n_items)


def gate(live_run: str, new_run: str, data: DataDir) -> tuple[dict, np.ndarray]:
    """Both runs' NDCG@10 on rows neither has trained on (see the module); the record and the
    users scored."""
    from ganrec_dist.model.models import generator_from_state

    new = RunDir(new_run).payload()
    live = RunDir.open(live_run).payload()
    train_cfg = cfgmod.build(TrainConfig, new["train_config"])
    seq, limits, users = _gate_rows(data, new, live_run, train_cfg)
    truth = validation_truth(seq, limits, users)
    scores = {}
    for name, payload in (("live", live), ("new", new)):
        if name == "new" and new["state"]["best_val_users"]:
            # Scored at its best search epoch, before its refit fitted these rows.
            scores[name] = dict(zip(new["state"]["best_val_users"], new["state"]["best_val_ndcg"]))
            continue
        per_user: dict = {}
        validation_metrics(
            generator_from_state(payload["model_config"], payload["generator"]),
            _live_view(seq, payload["model_config"]["n_items"]),
            limits=limits,
            truth=truth,
            index_cfg=train_cfg.index,
            users=users,
            per_user=per_user,
        )
        scores[name] = dict(zip(per_user["users"].tolist(), per_user["ndcg"].tolist()))
    pairs = np.asarray([[scores["new"][u], scores["live"].get(u, 0.0)] for u in users.tolist()])
    new_mean, live_mean = (float(v) for v in pairs.mean(axis=0))
    record = {
        "live_run": storage.display(live_run),
        "new_run": storage.display(new_run),
        "data": data.root,
        "data_version": data.version,
        "users": int(len(users)),
        "new": new_mean,
        "live": live_mean,
        "difference": new_mean - live_mean,
        "passed": new_mean >= live_mean,
        "rule": "roll out iff the new run's NDCG@10 on rows neither run has trained on (a "
        "search: its validation rows at its best epoch; --init_schedule fixed: the test rows) "
        "is not lower than the live run's on the same rows",
    }
    return record, users
