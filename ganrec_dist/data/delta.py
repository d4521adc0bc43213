"""Delta partitions: an append that costs the day, not the log.

A prepared DATA holds each bucket's rows in a base file per split (``train/part-B.parquet``,
``test/part-B.parquet``). An append (:mod:`ganrec_dist.data.append`) whose rows of a bucket all
come after their users' newest row does not rewrite that bucket: it writes the partition's rows
as a delta, ``delta/pNNNN/part-B.parquet`` (the output columns; positions continue each user's
sequence), and the touched users' new split point, ``delta/pNNNN/cuts-B.parquet`` (``user_idx``,
``cut``). The split rule puts a user's rows at positions ``>= cut`` in test and the rest in train,
``cut = n - ceil(test_fraction * n)`` for a user with ``n`` rows, so a user's old test rows that
their new rows push into train are relabelled by the cut, not rewritten: the newest cut of a user
decides the label of every row of theirs, in the base files and in every delta. Readers
(:meth:`DataDir.bucket`, and through it ``read``, ``sequences``, ``train_dataset``) merge a
bucket's base files and deltas and apply the cuts, so every reader sees the split a fresh prepare
of the union of the logs gives (same rows, labels and positions; ids keep their old indices).

What the append needs of the old rows is kept per bucket in ``user_stats/part-B.parquet``: each
user's row count and newest timestamp. A bucket whose partition rows include one at or before
its user's newest timestamp (a late row: it can reorder the sequence, or repeat an old row) is
merged the old way: its base and deltas are read, the union deduplicated and split again, and
written as new base files (the bucket is compacted). Memory and time of an in-order append follow
the day's rows and the touched buckets' user stats, not the log.

``ganrec compact --data DATA`` folds every delta into new base files (one bucket at a time) and
keeps the DATA version: the rows every reader sees do not change. An append compacts by itself
when its deltas hold more than ``--compact_at`` of the rows (default 0.25) or number more than
``MAX_DELTAS`` partitions.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ganrec_dist.core import storage
from ganrec_dist.core.errors import UserError
from ganrec_dist.data import layout, prepare
from ganrec_dist.data.interactions import n_test_rows
from ganrec_dist.data.layout import DataDir

log = logging.getLogger(__name__)

MAX_DELTAS = 64  # partitions with deltas before an append compacts


def bucket_rows(data: Any) -> dict[str, list[int]]:
    """Rows per bucket of each split: the manifest's, or counted from a base-only DATA's footers."""
    counted = data.manifest.get("bucket_rows")
    if counted:
        return {k: list(v) for k, v in counted.items()}
    out = {}
    for split in (data.TRAIN, data.TEST):
        fs, files = data.split_files(split)
        by_bucket = dict.fromkeys(range(data.buckets), 0)
        for f in files:
            by_bucket[layout.bucket_number(f)] = pq.ParquetFile(
                fs.open_input_file(f)
            ).metadata.num_rows
        out[split] = [by_bucket[b] for b in range(data.buckets)]
    return out


def stats_of_bucket(data: Any, bucket: int) -> pa.Table:
    """``user_stats/part-B.parquet``, or for a DATA written before it, counted from the bucket."""
    found = layout.read_optional(data, f"{data.USER_STATS}/{layout.part_name(bucket)}", None)
    if found is not None:
        return found.cast(prepare.STATS_SCHEMA)
    columns = ["user_id", "user_idx", "timestamp"]
    rows = pa.concat_tables([data.bucket(s, bucket, columns) for s in (data.TRAIN, data.TEST)])
    return prepare.user_stats(rows)


# --- the append's in-order path, one bucket a task --------------------------------------------


def groups(buckets: list[int]) -> list[list[int]]:
    """Buckets dealt to one task per CPU of the cluster: a day's delta of a bucket is small, so
    a task per bucket would cost its start-up more than its work."""
    import ray

    if not buckets:
        return []
    n = max(1, min(len(buckets), int(ray.cluster_resources().get("CPU", 1))))
    return [buckets[i::n] for i in range(n)]


def delta_buckets(task: dict) -> dict:
    """:func:`delta_bucket` for each of ``task["buckets"]``."""
    return {"results": [delta_bucket({**task, "bucket": b}) for b in task["buckets"]]}


def map_deltas(task: dict) -> dict:
    """:func:`map_delta` for each of ``task["buckets"]``, the day's id maps read once."""
    staging = Path(task["staging"])
    # Only the ids the partition names (``append._extend_id_maps``): not the whole catalogue.
    ids = (
        pq.read_table(staging / "ids" / DataDir.USERS),
        pq.read_table(staging / "ids" / DataDir.ITEMS),
    )
    return {"results": [map_delta({**task, "bucket": b}, ids) for b in task["buckets"]]}


def delta_bucket(task: dict) -> dict:
    """The partition's rows of one bucket as a delta, if every one comes after its user's
    newest row; else ``{"late": True}`` and nothing written (the bucket is merged instead)."""
    staging, bucket = Path(task["staging"]), int(task["bucket"])
    source = staging / "buckets" / f"b{bucket:05d}"
    new = pq.read_table(source, schema=prepare.STAGED_SCHEMA)
    keys = ["user_id", "item_id", "timestamp", "weight"]
    rows_in = new.num_rows
    new = (
        new.group_by(keys, use_threads=False)
        .aggregate([("seq", "min")])
        .rename_columns(keys + ["seq"])
    )
    new = new.sort_by([("user_id", "ascending"), ("timestamp", "ascending"), ("seq", "ascending")])
    stats = stats_of_bucket(DataDir(task["parent"]), bucket)
    at = pc.index_in(new["user_id"], value_set=stats["user_id"]).fill_null(-1).to_numpy()
    known = at.astype(np.int64) >= 0
    at = np.maximum(at.astype(np.int64), 0)
    old_rows = np.where(known, stats["rows"].to_numpy()[at], 0)
    newest = np.where(known, stats["newest"].to_numpy()[at], np.iinfo(np.int64).min)
    stamps = new["timestamp"].to_numpy()
    if np.any(stamps <= newest):
        return {"bucket": bucket, "late": True}
    split = _continue_split(new, old_rows, float(task["test_fraction"]))
    _stage_delta(staging / "split", bucket, new, split=split, stats=stats)
    shutil.rmtree(source)
    n_test = int(split["is_test"].sum())
    return {
        "bucket": bucket,
        "late": False,
        "rows": rows_in,
        "duplicates": rows_in - new.num_rows,
        "new_rows": rows_in,
        "old_rows": 0,
        "train_delta": int(len(split["is_test"]) - n_test + split["moved"]),
        "test_delta": int(n_test - split["moved"]),
        "max_timestamp": int(stamps.max()) if len(stamps) else None,
    }


def _continue_split(new: pa.Table, old_rows: np.ndarray, fraction: float) -> dict:
    """In-order rows (sorted by user, time, input order) after ``old_rows`` rows of their
    user: positions, test flags, each user's cut, and how many old test rows become train."""
    users = new["user_id"].to_numpy(zero_copy_only=False)
    rank, _ = prepare.split_sorted(users, 0.5)  # the row's rank among its user's new rows
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, len(users)])
    n_old = old_rows[starts]
    n_all = n_old + counts
    cut = n_all - n_test_rows(n_all, fraction)
    cut_old = n_old - n_test_rows(n_old, fraction)
    position = old_rows + rank
    return {
        "users": pa.array(users[starts].tolist(), pa.string()),
        "position": position,
        "is_test": position >= np.repeat(cut, counts),
        "cut": cut,
        "rows": n_all,
        "newest": new["timestamp"].to_numpy()[np.r_[starts[1:] - 1, len(users) - 1]],
        "moved": int(np.maximum(0, np.minimum(cut, n_old) - cut_old).sum()),
    }


def _stage_delta(out: Path, bucket: int, new: pa.Table, *, split: dict, stats: pa.Table) -> None:
    """The bucket's staged delta: rows with positions and flags, the users' cuts, the ids it
    names (for the id maps) and the bucket's user stats after it (ids mapped later)."""
    out.mkdir(exist_ok=True)
    table = new.drop_columns(["seq"]).append_column("is_test", pa.array(split["is_test"]))
    table = table.append_column("position", pa.array(split["position"].astype(np.int32)))
    pq.write_table(table, out / f"b{bucket:05d}.parquet")
    first = split["users"]
    pq.write_table(
        pa.table({"user_id": first, "cut": pa.array(split["cut"].astype(np.int64))}),
        out / f"cuts-b{bucket:05d}.parquet",
    )
    pq.write_table(pa.table({"user_id": first}), out / f"users-b{bucket:05d}.parquet")
    pq.write_table(
        pa.table({"item_id": pc.unique(table["item_id"])}), out / f"items-b{bucket:05d}.parquet"
    )
    grown = pa.table(
        {
            "user_id": first,
            "user_idx": pa.nulls(len(first), pa.int32()),
            "rows": pa.array(split["rows"].astype(np.int64)),
            "newest": pa.array(split["newest"].astype(np.int64)),
        },
        schema=prepare.STATS_SCHEMA,
    )
    untouched = stats.filter(pc.invert(pc.is_in(stats["user_id"], value_set=first)))
    pq.write_table(pa.concat_tables([untouched, grown]), out / f"stats-b{bucket:05d}.parquet")


def map_delta(task: dict, ids: tuple[pa.Table, pa.Table]) -> dict:
    """The delta files of one in-order bucket, with integer ids (``ids``: the day's users and
    items with their indices), and its new user stats."""
    staging, out, bucket = Path(task["staging"]), Path(task["out"]), int(task["bucket"])
    folder = out / DataDir.DELTA / task["partition"]
    users, items = ids

    def user_idx(ids: pa.ChunkedArray) -> pa.Array:
        return pc.take(users["user_idx"], pc.index_in(ids, value_set=users["user_id"]))

    table = pq.read_table(staging / "split" / f"b{bucket:05d}.parquet")
    table = table.append_column("user_idx", user_idx(table["user_id"])).append_column(
        "item_idx",
        pc.take(items["item_idx"], pc.index_in(table["item_id"], value_set=items["item_id"])),
    )
    pq.write_table(table.select(prepare.OUTPUT_COLUMNS), folder / layout.part_name(bucket))
    cuts = pq.read_table(staging / "split" / f"cuts-b{bucket:05d}.parquet")
    pq.write_table(
        pa.table({"user_idx": user_idx(cuts["user_id"]), "cut": cuts["cut"]}),
        folder / layout.cuts_name(bucket),
    )
    # The bucket's stats: its untouched users keep their index; the touched ones are named.
    stats = pq.read_table(staging / "split" / f"stats-b{bucket:05d}.parquet")
    named = pc.index_in(stats["user_id"], value_set=users["user_id"])
    found = pc.take(users["user_idx"], named)
    stats = stats.set_column(1, "user_idx", pc.coalesce(found, stats["user_idx"]))
    pq.write_table(stats.sort_by("user_idx"), out / DataDir.USER_STATS / layout.part_name(bucket))
    return {"bucket": bucket}


# --- compaction ---------------------------------------------------------------------------------


def delta_rows(data: Any) -> int:
    """Rows held in deltas (from their footers)."""
    total = 0
    for p, buckets in data.deltas.items():
        for b in buckets:
            fs, path = storage.resolve(data.path(f"{data.DELTA}/{p}/{layout.part_name(b)}"))
            total += pq.ParquetFile(fs.open_input_file(path)).metadata.num_rows
    return total


def compact_bucket(task: dict) -> dict:
    """One bucket's merged rows written as its new base files."""
    data, out, bucket = DataDir(task["data"]), Path(task["out"]), int(task["bucket"])
    rows = {}
    for split in (DataDir.TRAIN, DataDir.TEST):
        table = data.bucket(split, bucket)
        pq.write_table(table, out / split / layout.part_name(bucket), row_group_size=65_536)
        rows[split] = table.num_rows
    return {"bucket": bucket, **rows}


def link(source: Path, target: Path) -> str:
    """Hard-link ``source`` to ``target`` (a copy where the filesystem cannot); which it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return "linked"
    except OSError:
        shutil.copy2(source, target)
        return "copied"


def compact_into(data: Any, out: Path, remote_args: dict | None = None) -> dict:
    """A copy of local DATA in ``out`` with its deltas folded into the base files; the manifest
    keeps its version. Returns the new manifest."""
    root = Path(data.root)
    touched = sorted({b for buckets in data.deltas.values() for b in buckets})
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_dir() or rel.parts[0] == DataDir.DELTA or rel.name == DataDir.MANIFEST:
            continue
        if (
            rel.parts[0] in (DataDir.TRAIN, DataDir.TEST)
            and layout.bucket_number(rel.name) in touched
        ):
            continue
        link(path, out / rel)
    for split in (DataDir.TRAIN, DataDir.TEST):
        (out / split).mkdir(parents=True, exist_ok=True)
    prepare._run(
        compact_bucket,
        [{"data": data.root, "out": str(out), "bucket": b} for b in touched],
        "compact",
        remote_args,
    )
    manifest = {k: v for k, v in data.manifest.items() if k != "deltas"}
    (out / DataDir.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def compact(data_dir: str, out: str = "") -> dict:
    """`ganrec compact --data DATA [--out OUT]`: DATA (or a copy at OUT) without deltas."""
    if storage.is_uri(data_dir):
        raise UserError(f"{data_dir}: compact works on a local DATA directory")
    data = DataDir(data_dir)
    data.manifest  # noqa: B018  (one line if it is not a DATA)
    target = Path(out or data_dir).absolute()
    if out and target.exists():
        raise UserError(f"{target}: already exists")
    start = time.time()
    partitions, rows = len(data.deltas), delta_rows(data)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        manifest = compact_into(data, tmp)
        storage.replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "compact: %d delta partition(s), %d rows folded into the base files -> %s (%.1fs)",
        partitions,
        rows,
        target,
        time.time() - start,
    )
    return {**manifest, "compacted": {"partitions": partitions, "rows": rows}}


def compact_command(cfg: Any) -> dict:
    return compact(cfg.data, cfg.out)


def due(data: Any, share: float) -> bool:
    """Whether an append should compact: deltas over ``share`` of the rows, or too many."""
    if not data.deltas:
        return False
    total = int(data.manifest["train_rows"]) + int(data.manifest["test_rows"])
    return len(data.deltas) > MAX_DELTAS or delta_rows(data) > share * max(total, 1)
