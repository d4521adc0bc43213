"""`ganrec evaluate --cold_start true`: users no model has seen, known from a few interactions.

A seeded fraction of the users with more than ``max(N_HISTORY)`` interactions is removed from a
copy of DATA (``RUN/cold_start/data``: the same id maps, so item indices mean the same); the GAN,
its ablation and (with ``--sasrec``) SASRec are trained on that copy with the run's settings, and
every baseline of the main table is fitted on its train split. Each held-out user is then given
their first n interactions as a history: the generators encode it through the unknown-user path
the HTTP API uses (no user id); each baseline's ``fold_in`` ranks from it (EASE scores it against
its item-item weights, ALS folds a user factor in with one least-squares solve against the item
factors, popularity ranks what is popular). Every n is judged on the same tail, the user's
interactions after the first ``max(N_HISTORY)``, so the rows of the table are comparable; the
history's items are excluded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from ganrec_dist.core.config import EvaluateConfig
from ganrec_dist.core.errors import UserError
from ganrec_dist.core.logs import print_table
from ganrec_dist.data.interactions import Sequences, from_rows
from ganrec_dist.data.layout import DataDir, RunDir, part_name
from ganrec_dist.evaluation.baselines import BASELINES
from ganrec_dist.evaluation.companions import SASREC, companion_run
from ganrec_dist.retrieval.metrics import ranking_metrics

log = logging.getLogger(__name__)

N_HISTORY = (1, 3, 5, 10)
K = 10


def full_sequences(data: DataDir) -> Sequences:
    """Every user's train and test interactions in time order (test positions follow train's)."""
    columns = ["user_idx", "item_idx", "position"]
    train, test = data.read("train", columns), data.read("test", columns)
    return from_rows(
        np.concatenate([train["user_idx"].to_numpy(), test["user_idx"].to_numpy()]),
        np.concatenate([train["item_idx"].to_numpy(), test["item_idx"].to_numpy()]),
        np.concatenate([train["position"].to_numpy(), test["position"].to_numpy()]),
        n_users=data.manifest["users"],
        n_items=data.manifest["items"],
    )


def pick_users(full: Sequences, fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of the users with more than max(N_HISTORY) interactions."""
    eligible = np.flatnonzero(full.lengths > max(N_HISTORY))
    n = int(round(fraction * len(eligible)))
    if n == 0:
        raise UserError(
            f"--cold_fraction {fraction}: no user of the {len(eligible)} with more than "
            f"{max(N_HISTORY)} interactions is held out"
        )
    return np.sort(np.random.default_rng([seed, 23]).choice(eligible, n, replace=False))


def write_without(
    data: DataDir,
    values: np.ndarray,
    out: Path,
    *,
    column: str = "user_idx",
    key: str = "cold_start",
) -> DataDir:
    """A copy of DATA (local or a URI) without the rows whose ``column`` is in ``values`` (the
    held-out users, or items), at the local ``out`` (written aside, then renamed; the same id
    maps, no item content); the manifest records them under ``key``, and a copy holding the
    same ones is reused."""
    manifest_path = out / DataDir.MANIFEST
    field = column.split("_")[0] + "s"  # users | items
    if manifest_path.exists():
        held = json.loads(manifest_path.read_text()).get(key, {}).get(field)
        if held == values.tolist():
            return DataDir(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rows: dict[str, int] = {}
    held_out = pa.array(np.asarray(values, dtype=np.int32))
    for split in (DataDir.TRAIN, DataDir.TEST):
        (tmp / split).mkdir(parents=True)
        rows[split] = 0
        for b in range(data.buckets):  # bucket by bucket: the copy keeps the whole-user shards
            table = data.bucket(split, b)  # its deltas merged: the copy has none
            table = table.filter(pc.invert(pc.is_in(table[column], value_set=held_out)))
            rows[split] += table.num_rows
            pq.write_table(table, tmp / split / part_name(b))
    for name in (DataDir.ITEMS, DataDir.USERS):
        pq.write_table(data.read(name), tmp / name)
    manifest = {
        k: v for k, v in data.manifest.items() if k not in ("content", "deltas", "bucket_rows")
    }
    manifest.update(
        source=f"{data.manifest['source']}, without {len(values)} held-out {field}",
        train_rows=rows[DataDir.TRAIN],
        test_rows=rows[DataDir.TEST],
    )
    manifest[key] = {"from": data.root, field: values.tolist()}
    (tmp / DataDir.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return DataDir(out)


def histories(full: Sequences, users: np.ndarray, n: int, length: int) -> np.ndarray:
    """Each user's first ``n`` interactions as a ``[users, length]`` padded history."""
    return full.window(users, np.full(len(users), n), length)


def _user_rows(full: Sequences, users: np.ndarray, start: int, end: int | None) -> sp.csr_matrix:
    """``[len(users), n_items]``: each user's items at positions ``[start, end)`` (``None``: to
    the end), rows in ``users``' order."""
    starts = np.minimum(start, full.lengths)
    ends = starts.copy()
    ends[users] = full.lengths[users] if end is None else np.minimum(end, full.lengths[users])
    return full.slice_matrix(starts, ends)[users]


def first_items(full: Sequences, users: np.ndarray, n: int) -> sp.csr_matrix:
    """``[len(users), n_items]``: each user's first ``n`` items."""
    return _user_rows(full, users, 0, n)


def tail_truth(full: Sequences, users: np.ndarray) -> sp.csr_matrix:
    """``[len(users), n_items]``: each user's interactions after the first max(N_HISTORY)."""
    return _user_rows(full, users, max(N_HISTORY), None)


def generator_recs(
    rec: Any, full: Sequences, *, users: np.ndarray, n: int, seen: sp.csr_matrix
) -> np.ndarray:
    """A generator's top-K from the first n interactions (``seen``, excluded), through the
    unknown-user path."""
    history = histories(full, users, n, rec.history_len)
    unknown = np.full(len(users), rec.meta["model_config"]["n_users"])
    exclude = [seen.indices[seen.indptr[r] : seen.indptr[r + 1]] for r in range(len(users))]
    items, _ = rec.recommend(history, unknown, exclude, K)
    return items


def baseline_recs(
    fits: dict[str, Any], params: dict[str, dict], seen: sp.csr_matrix
) -> dict[str, np.ndarray]:
    """Every fitted baseline's top-K from the histories ``seen`` (its ``fold_in``)."""
    return {
        name: BASELINES[name].fold_in(model, params[name], seen, K) for name, model in fits.items()
    }


def fit_baselines(cfg: EvaluateConfig, data: DataDir, params: dict[str, dict]) -> dict[str, Any]:
    """Every baseline of the main table, fitted on the copy's train split with the settings
    chosen on the full data's validation split."""
    train = data.sequences("train").matrix()
    return {
        name: baseline.fit(train, params[name], cfg)
        for name, baseline in BASELINES.items()
        if name in params and not baseline.skip(cfg, train.shape[1])
    }


def cold_start(cfg: EvaluateConfig, run: RunDir, params: dict[str, dict]) -> dict[str, Any]:
    """The cold-start table: every model, every n, NDCG@10 and Recall@10 on the same tail."""
    if run.is_uri:
        raise UserError("--cold_start needs a local RUN directory (its DATA copy is written there)")
    start = time.time()
    data = DataDir(cfg.data)
    full = full_sequences(data)
    users = pick_users(full, cfg.cold_fraction, cfg.seed)
    log.info("cold start: %d users held out of a copy of %s", len(users), data)
    copy = write_without(data, users, run.local / RunDir.COLD_START / "data")
    on_copy = dataclasses.replace(cfg, data=copy.root)
    variants: dict[str, dict[str, Any]] = {"gan": {}}
    if cfg.ablation:
        variants["gan_ablation"] = {"adv_weight": 0.0}
    if cfg.sasrec:
        variants["sasrec"] = SASREC
    if cfg.cold_user_dropout > 0:  # the GAN whose history path learnt to stand alone
        variants["gan_user_dropout"] = {"user_dropout": cfg.cold_user_dropout}
    runs, seconds = {}, {}
    for name, changes in variants.items():
        tick = time.time()
        target = run.companion(f"{RunDir.COLD_START}/{name}")
        runs[name] = companion_run(on_copy, run, target, f"cold-start-{name}", **changes)["run"]
        seconds[name] = round(time.time() - tick, 1)
    tick = time.time()
    fits = fit_baselines(cfg, copy, params)
    seconds["baselines"] = round(time.time() - tick, 1)
    truth = tail_truth(full, users)
    table: dict[str, dict[str, dict[str, float]]] = {}
    from ganrec_dist.retrieval.recommender import Recommender

    generators = {name: Recommender(uri) for name, uri in runs.items()}  # once, not once an n
    for n in N_HISTORY:
        seen = first_items(full, users, n)
        recs = baseline_recs(fits, params, seen)
        recs.update(
            {
                name: generator_recs(r, full, users=users, n=n, seen=seen)
                for name, r in generators.items()
            }
        )
        for name, r in recs.items():
            metrics = ranking_metrics(r, truth, [K])
            table.setdefault(name, {})[str(n)] = {
                "ndcg@10": metrics["ndcg@10"],
                "recall@10": metrics["recall@10"],
            }
    return {
        "users": int(len(users)),
        "fraction": cfg.cold_fraction,
        "histories": list(N_HISTORY),
        "truth": f"each user's interactions after the first {max(N_HISTORY)}",
        "models": table,
        "training_seconds": seconds,
        "seconds": round(time.time() - start, 1),
    }


def print_cold_start(result: dict[str, Any]) -> None:
    ns = [str(n) for n in result["histories"]]
    rows = [
        [name] + [round(m[n]["ndcg@10"], 4) for n in ns] + [round(m[n]["recall@10"], 4) for n in ns]
        for name, m in result["models"].items()
    ]
    print_table(
        f"cold start: {result['users']} users held out of training, the first n interactions as "
        f"the history, judged on {result['truth']}",
        ["model"] + [f"NDCG@10 n={n}" for n in ns] + [f"R@10 n={n}" for n in ns],
        rows,
    )
    cost = ", ".join(f"{k} {v:.0f} s" for k, v in result["training_seconds"].items())
    print(f"cost of the cold-start models (trained again without those users): {cost}")
