"""`ganrec add-items`: new items with content into a trained run, without training.

    append their content to the run's DATA (a content-only partition: no log row, no bucket
    rewritten)  ->  a new RUN version whose catalogue has the content tower's rows for them
    ->  index  ->  roll out (the daily update's zero-drop swap)

The new rows are the run's own tower applied to the new items' content, scaled by the run's
``--tower_scale``: exactly the rows its training wrote for the items with content and no
interaction, so an added item is ranked, scored, served and read in a history as the same item
would be had it been in the catalogue at training time. Every learned row, the user table, D
and the optimiser states are the live run's, unchanged (the optimiser's tables are grown by a
later warm start, as for any parent run).

The new version is written aside and renamed; a re-run after a failure reuses the appended
DATA and a complete RUN version, and goes on with what is left (the index, the rollout).
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid

import numpy as np
import torch

from ganrec_dist.core import config as cfgmod
from ganrec_dist.core import storage
from ganrec_dist.core.config import IndexCommandConfig, PrepareConfig, TrainConfig
from ganrec_dist.core.errors import UserError
from ganrec_dist.data.append import append, default_out
from ganrec_dist.data.layout import DataDir, RunDir, write_checkpoint
from ganrec_dist.data.sources import CONTENT_ONLY
from ganrec_dist.model.content import ContentTower
from ganrec_dist.training.tower import generate
from ganrec_dist.training.warmstart import grow_rows

log = logging.getLogger(__name__)

ITEM_TABLE = "encoder.items.weight"


def add_items(cfg: cfgmod.AddItemsConfig) -> dict:
    """Add ``cfg.item_content``'s new items to ``cfg.run``; returns a summary."""
    from ganrec_dist.operations.update import appended_before, next_run
    from ganrec_dist.retrieval.index import index_command

    start = time.time()
    if not cfg.item_content:
        raise UserError("add-items needs --item_content FILE (item_id plus content columns)")
    live = RunDir.open(cfg.run)
    stored = live.stored_config()
    if stored is None or not live.has_checkpoint():
        raise UserError(f"--run {cfg.run}: no trained run there")
    payload = live.payload()
    if payload.get("tower") is None:
        raise UserError(
            f"--run {cfg.run}: trained without a content tower, so it cannot write rows for new "
            "items: train it with --tower regress"
        )
    parent = DataDir(cfg.data or stored["data"])
    seconds: dict[str, float] = {}
    tick = time.time()
    data = DataDir(cfg.out_data or default_out(parent))
    if appended_before(data, parent, CONTENT_ONLY):
        log.info("add-items 1/4: %s is already %s plus item content: reused", data, parent)
    else:
        log.info("add-items 1/4: append %s's content to %s -> %s", cfg.item_content, parent, data)
        append(
            PrepareConfig(
                source="none",
                append_to=parent.root,
                out=data.root,
                item_content=cfg.item_content,
                address=cfg.address,
            )
        )
    seconds["append"], tick = round(time.time() - tick, 1), time.time()
    n_old = int(payload["model_config"]["n_items"])
    n_all = int(data.manifest["items"])
    out = RunDir(cfg.out or next_run(cfg.run, data))
    if out.has_checkpoint() and (out.stored_config() or {}).get("data") == data.root:
        log.info("add-items 2/4: %s is already written: reused", out.uri)
    else:
        log.info("add-items 2/4: rows for %d new item(s) from the run's tower", n_all - n_old)
        _write_version(live, payload, stored=stored, data=data, out=out)
    seconds["rows"], tick = round(time.time() - tick, 1), time.time()
    log.info("add-items 3/4: index %s", out.uri)
    train_cfg = cfgmod.build(TrainConfig, stored)
    index_command(IndexCommandConfig(run=out.uri, index=train_cfg.index))
    seconds["index"], tick = round(time.time() - tick, 1), time.time()
    rolled_out = False
    if cfg.rollout:
        from ganrec_dist.inference.serve import rollout

        log.info("add-items 4/4: roll out %s", out.uri)
        rolled_out = rollout(out.uri, app=cfg.app, address=cfg.address)
    summary = {
        "run": out.uri,
        "data": data.root,
        "items_added": n_all - n_old,
        "items": n_all,
        "rolled_out": rolled_out,
        "stage_seconds": {**seconds, "rollout": round(time.time() - tick, 1)},
        "seconds": round(time.time() - start, 1),
    }
    log.info(
        "add-items: %d new item(s) -> %s (%d items)%s in %.1fs",
        summary["items_added"],
        out.uri,
        n_all,
        ", rolled out" if rolled_out else "",
        summary["seconds"],
    )
    return summary


def new_rows(payload: dict, data: DataDir, items: np.ndarray, scale: float) -> np.ndarray:
    """The run's tower on ``items``' content in ``data``, scaled: their catalogue rows."""
    features = data.manifest["content"]["features"]
    tower = ContentTower(features, dim=int(payload["model_config"]["dim"]))
    try:
        tower.load_state_dict(payload["tower"])
    except RuntimeError:
        raise UserError(
            f"{data}: its content columns are not the ones the run's tower was trained on"
        ) from None
    return generate(tower.eval(), data.content(), items) * np.float32(scale)


def _write_version(live: RunDir, payload: dict, stored: dict, data: DataDir, out: RunDir) -> None:
    """RUN version ``out``: the live run with the new items' rows, its log grown, written aside
    and renamed."""
    n_old = int(payload["model_config"]["n_items"])
    n_all = int(data.manifest["items"])
    if n_all == n_old:
        raise UserError(f"{data}: no item the run does not already know")
    settings = cfgmod.build(TrainConfig, stored)
    rows = new_rows(payload, data, np.arange(n_old, n_all), settings.content.tower_scale)
    table = payload["generator"][ITEM_TABLE]
    fresh = torch.zeros((n_all + 1, table.shape[1]), dtype=table.dtype)
    fresh[n_old:n_all] = torch.as_tensor(rows, dtype=table.dtype)
    model_config = {**payload["model_config"], "n_items": n_all}
    state = dict(payload["state"])
    state["generated_items"] = int(state.get("generated_items", 0)) + n_all - n_old
    train_config = {**payload["train_config"], "data": data.root}
    grown = {
        **{k: v for k, v in payload.items() if k != "format"},
        "generator": {**payload["generator"], ITEM_TABLE: grow_rows(table, fresh)},
        # Only the final generator serves; the search's best and the average are a training
        # run's resume state, which this version is not.
        "best_generator": None,
        "averaged_generator": None,
        "model_config": model_config,
        "train_config": train_config,
        "state": state,
        "data": data.root,
    }
    recorded = {
        "data_version": data.version,
        "data_max_timestamp": data.max_timestamp,
        "parent": {"run": live.uri, "added_items": n_all - n_old},
    }
    grown.update(recorded)
    meta = {k: v for k, v in live.meta().items() if k not in ("format", "files")}
    meta.update(recorded, model_config=model_config)
    if out.is_uri:
        raise UserError(f"--out {out.uri}: add-items writes a local RUN directory")
    tmp = out.local.parent / f".{out.local.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        write_checkpoint(tmp / RunDir.CHECKPOINT, payload=grown, meta=meta)
        version = RunDir(tmp)
        version.write_config({**stored, "data": data.root})
        version.write_log(data, parent=live)
        storage.replace_dir(tmp, out.local)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("add-items: wrote %s (%d + %d items)", out.uri, n_old, n_all - n_old)
