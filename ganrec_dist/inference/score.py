"""`ganrec score`: top-K for every user as a Ray Data job, streamed to Parquet.

Users (indices into the run's id map) stream in blocks; an actor pool loads the generator, the
index and the train histories once per actor; each batch goes G -> index -> top-K and comes out in
the long format of the README's *Data formats* (user_id, rank, item_id, score). Memory is flat in the number of
users: only a block of users and its recommendations are in flight per actor.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ganrec_dist.core import storage
from ganrec_dist.core.config import ScoreConfig
from ganrec_dist.core.errors import UserError
from ganrec_dist.data.layout import DataDir, RunDir
from ganrec_dist.model.sampling import MAX_SAMPLES

log = logging.getLogger(__name__)


EMPTY_RECS = pa.table(
    {
        "user_id": pa.array([], pa.string()),
        "rank": pa.array([], pa.int32()),
        "item_id": pa.array([], pa.string()),
        "score": pa.array([], pa.float32()),
    }
)


class Scorer:
    """One per actor: the model, its index and the users' train histories. ``parts`` is the
    object-store reference of :func:`~ganrec_dist.retrieval.recommender.load_parts` (read
    zero-copy, one copy per node), or None for each actor to load its own copy from RUN. ``samples`` 0 takes the
    run's own setting."""

    def __init__(self, run: str, parts: Any, k: int, include_seen: bool, samples: int = 0) -> None:
        import ray
        import torch

        from ganrec_dist.retrieval.recommender import Recommender

        torch.set_num_threads(1)
        if isinstance(parts, ray.ObjectRef):
            parts = ray.get(parts)
        self.rec = Recommender(run, parts=parts)
        self.k, self.include_seen = k, include_seen
        self.samples = samples or self.rec.samples

    def __call__(self, batch: dict) -> dict:
        users = batch["user_idx"].astype(np.int64)
        items, scores = self.rec.recommend_known(
            users, self.k, self.include_seen, samples=self.samples
        )
        valid = items >= 0
        rows, ranks = np.nonzero(valid)
        return {
            "user_id": self.rec.ids("user_id", users[rows]),
            "rank": (ranks + 1).astype(np.int32),
            "item_id": self.rec.ids("item_id", items[valid]),
            "score": scores[valid].astype(np.float32),
        }


def _requested_users(path: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: --users file does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            table = pq.read_table(p)
        elif suffix in (".csv", ".tsv"):
            table = pacsv.read_csv(
                p,
                parse_options=pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","),
                convert_options=pacsv.ConvertOptions(column_types={"user_id": pa.string()}),
            )
        else:
            return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(
            f"{path}: cannot read the users file ({str(exc).splitlines()[0]})"
        ) from None
    if "user_id" not in table.column_names:
        raise UserError(f"{path}: needs a user_id column")
    return [str(u) for u in table["user_id"].to_pylist() if u is not None]


def _users(cfg: ScoreConfig, data: DataDir) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """The user indices to score, and the requested users skipped with their reasons."""
    if not cfg.users:
        test = data.read(DataDir.TEST, ["user_idx"])["user_idx"].to_numpy()
        return np.unique(test).astype(np.int64), []
    known = data.user_ids()
    lengths = data.sequences().lengths
    wanted, skipped = [], []
    for u in dict.fromkeys(_requested_users(cfg.users)):
        if u not in known:
            skipped.append((u, "unknown user: not in the prepared data"))
        elif lengths[known[u]] == 0:
            skipped.append((u, "no train history"))
        else:
            wanted.append(known[u])
    return np.asarray(wanted, dtype=np.int64), skipped


def _write_recs(cfg: ScoreConfig, run: RunDir, users: np.ndarray, out: str) -> None:
    """Score ``users`` with an actor pool; parts are written aside and moved into place at the
    end (a rename on a filesystem; on an object store, a server-side copy per part)."""
    import ray

    from ganrec_dist.retrieval.recommender import load_parts

    actors = cfg.actors or int(max(1, min(8, ray.cluster_resources().get("CPU", 1))))
    # One copy in the object store for all actors (per node), not one each.
    parts = ray.put(load_parts(run)) if cfg.shared else None
    fs, out_path = storage.resolve(out)
    tmp = f"{out_path.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        # Blocks of a few batches each, and at least one per actor, so that every actor of the
        # pool has work (one block of all users would go to a single actor).
        blocks = max(1, min(len(users), max(actors, -(-len(users) // (4 * cfg.batch_size)))))
        ds = ray.data.from_numpy(np.array_split(users, blocks)).rename_columns({"data": "user_idx"})
        recs = ds.map_batches(
            Scorer,
            fn_constructor_args=(run.uri, parts, cfg.k, cfg.include_seen, cfg.samples),
            batch_size=cfg.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),  # all actors from the start
            num_cpus=1,
        )
        recs.write_parquet(tmp, filesystem=fs)
        parts = fs.get_file_info(pafs.FileSelector(tmp, allow_not_found=True))
        if not any(p.path.endswith(".parquet") for p in parts):
            # No users at all: still a readable, empty result.
            fs.create_dir(tmp, recursive=True)
            pq.write_table(EMPTY_RECS, f"{tmp}/part-empty.parquet", filesystem=fs)
        storage.replace_tree(fs, tmp, out_path)
    except BaseException:
        storage.remove_tree_in(fs, tmp)
        raise


def _write_skipped(path: str, skipped: list[tuple[str, str]]) -> None:
    if not skipped:
        storage.remove_tree(path)
        return
    fs, inner = storage.resolve(path)
    table = pa.table({"user_id": [u for u, _ in skipped], "reason": [r for _, r in skipped]})
    pq.write_table(table, inner, filesystem=fs)
    log.warning("%d user(s) skipped, reasons in %s", len(skipped), path)


def score(cfg: ScoreConfig) -> dict:
    from ganrec_dist.core.raycluster import ensure_ray

    data = DataDir(cfg.data)
    data.manifest  # noqa: B018  (fails fast, before Ray, on a bad DATA)
    run = RunDir.open(cfg.run)
    run.meta()  # ... and on a RUN without a checkpoint
    if not 1 <= cfg.k <= 10_000:
        raise UserError("--k must be between 1 and 10000")
    if not 0 <= cfg.samples <= MAX_SAMPLES:
        raise UserError(f"--samples must be in 0..{MAX_SAMPLES}, got {cfg.samples}")
    out = storage.display(cfg.out)
    if storage.exists(out) and not cfg.overwrite:
        raise UserError(f"{out}: already exists; pass --overwrite to replace it")
    users, skipped = _users(cfg, data)
    ensure_ray(cfg.address)
    start = time.time()
    _write_recs(cfg, run, users, out)
    _write_skipped(storage.with_suffix(out, ".skipped.parquet"), skipped)
    seconds = time.time() - start
    summary = {
        "users": int(len(users)),
        "skipped": len(skipped),
        "k": cfg.k,
        "seconds": round(seconds, 2),
        "users_per_s": len(users) / max(seconds, 1e-9),
        "out": str(out),
    }
    log.info(
        "score: %d users in %.1fs (%.0f users/s), top-%d -> %s; %d skipped",
        len(users),
        seconds,
        summary["users_per_s"],
        cfg.k,
        out,
        len(skipped),
    )
    return summary
