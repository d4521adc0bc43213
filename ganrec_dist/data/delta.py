"""Delta partitions: an append that costs the day, not the log.

A prepared DATA holds each bucket's rows in a base file per split (``train/part-B.parquet``,
``test/part-B.parquet``). An append (:mod:`ganrec_dist.data.append`) whose rows of a bucket all
come after their users' newest row does not rewrite that bucket: the partition's rows of every
such bucket go to one file, ``delta/pNNNN/rows.parquet`` (the output columns and ``bucket``;
positions continue each user's sequence), and the touched users' new split points and stats to
``cuts.parquet`` (``bucket``, ``user_idx``, ``cut``) and ``stats.parquet``. Each file is sorted by
bucket with a row group per bucket, so a reader of one bucket reads its rows only, and a day
writes three files whatever the bucket count (a file per bucket made a day's cost grow with the
log's shard count). The split rule puts a user's rows at positions ``>= cut`` in test and the
rest in train, ``cut = n - ceil(test_fraction * n)`` for a user with ``n`` rows, so a user's old
test rows that their new rows push into train are relabelled by the cut, not rewritten: the
newest cut of a user decides the label of every row of theirs, in the base files and in every
delta. Readers (:meth:`DataDir.bucket`, and through it ``read``, ``sequences``,
``train_dataset``) merge a bucket's base files and deltas and apply the cuts, so every reader
sees the split a fresh prepare of the union of the logs gives (same rows, labels and positions;
ids keep their old indices).

What the append needs of the old rows is each user's row count and newest timestamp: the
bucket's ``user_stats/part-B.parquet`` with the deltas' stats over it (:func:`stats_of_bucket`).
A bucket whose partition rows include one at or before its user's newest timestamp (a late row:
it can reorder the sequence, or repeat an old row) is merged the old way: its base and deltas
are read, the union deduplicated and split again, and written as new base files and user stats
(the bucket is compacted). Memory and time of an in-order append follow the day's rows and the
user stats, not the log's rows.

``ganrec compact --data DATA`` folds every delta into new base files and user stats (one bucket
at a time) and keeps the DATA version: the rows every reader sees do not change. An append
compacts by itself when its deltas hold more than ``--compact_at`` of the rows (default 0.25) or
number more than ``MAX_DELTAS`` partitions.
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
    """The bucket's user stats: ``user_stats/part-B.parquet`` with each delta's stats of the
    bucket over it, the newest for a user winning (a DATA written before the user stats: counted
    from the bucket)."""
    return stats_of_buckets(data, [bucket])[bucket]


def stats_of_buckets(data: Any, buckets: list[int]) -> dict[int, pa.Table]:
    """:func:`stats_of_bucket` for several, each partition's stats file opened once."""
    tables: dict[int, list[pa.Table]] = {}
    for b in buckets:
        found = layout.read_optional(data, f"{data.USER_STATS}/{layout.part_name(b)}", None)
        if found is None:
            columns = ["user_id", "user_idx", "timestamp"]
            rows = pa.concat_tables([data.bucket(s, b, columns) for s in (data.TRAIN, data.TEST)])
            found = prepare.user_stats(rows)
        tables[b] = [found.cast(prepare.STATS_SCHEMA)]
    for p, listed in data.deltas.items():
        mine = sorted(set(listed) & set(buckets))
        file = layout.delta_file(data, p, layout.DELTA_STATS) if mine else None
        if file is None:
            continue  # no bucket of ours, or a partition whose appends rewrote the stats
        name = data.path(f"{data.DELTA}/{p}/{layout.DELTA_STATS}")
        groups = sorted({g for b in mine for g in layout.bucket_groups(file, b, name)})
        table = file.read_row_groups(groups)
        at = table["bucket"].to_numpy()
        for b in mine:
            tables[b].append(
                table.filter(pa.array(at == b))
                .select(prepare.STATS_SCHEMA.names)
                .cast(prepare.STATS_SCHEMA)
            )
    return {b: _newest_per_user(t) for b, t in tables.items()}


def _newest_per_user(tables: list[pa.Table]) -> pa.Table:
    """The stats in ``tables`` (oldest first), the last of each user kept."""
    if len(tables) == 1:
        return tables[0]
    table = pa.concat_tables(tables)
    order = pa.table({"user_id": table["user_id"], "order": np.arange(table.num_rows)})
    last = order.group_by("user_id", use_threads=False).aggregate([("order", "max")])
    return table.take(np.sort(last["order_max"].to_numpy())).sort_by("user_idx")


# --- the append's in-order path: a task per CPU, one delta file per partition -------------------


def groups(buckets: list[int]) -> list[list[int]]:
    """Buckets dealt to one task per CPU of the cluster: a day's delta of a bucket is small, so
    a task per bucket would cost its start-up more than its work."""
    import ray

    if not buckets:
        return []
    n = max(1, min(len(buckets), int(ray.cluster_resources().get("CPU", 1))))
    # Contiguous ranges: the day's staged file is sorted by bucket, so a task reads its rows'
    # row groups and skips the rest.
    return [list(map(int, g)) for g in np.array_split(np.asarray(buckets), n)]


STAGED_DELTA = "delta-g"  # + group: a group's rows (bucket, the staged columns, is_test, position)
STAGED_CUTS = "dcuts-g"  # + group: its touched users' bucket, user_id, cut, rows, newest


def staged_rows(staging: Path, buckets: list[int]) -> pa.Table:
    """The day's staged rows of ``buckets`` (``prepare.ingest_file`` with ``one_file``), with
    their bucket, sorted by bucket and, within one, in input order."""
    import pyarrow.dataset as pads

    files = sorted(str(f) for f in (staging / prepare.DAY).glob("*.parquet"))
    if not files:
        return prepare.DAY_SCHEMA.empty_table()
    found = pads.dataset(files, schema=prepare.DAY_SCHEMA, format="parquet")
    table = found.to_table(filter=pads.field("bucket").isin(buckets))
    return table.sort_by([("bucket", "ascending"), ("seq", "ascending")])


def delta_buckets(task: dict) -> dict:
    """The partition's rows of a group of buckets as deltas, one staged file for the group (no
    file per bucket: a day's cost follows its rows, not the bucket count). A bucket with a late
    row is reported ``late`` and left staged (it is merged instead)."""
    staging, group = Path(task["staging"]), int(task["group"])
    parent = DataDir(task["parent"])
    buckets = [int(b) for b in task["buckets"]]
    stats = stats_of_buckets(parent, buckets)
    day = staged_rows(staging, buckets)
    # Sorted by bucket: each bucket's rows are one slice (no scan of the day per bucket).
    at = day["bucket"].to_numpy()
    bounds = np.searchsorted(at, [buckets, np.add(buckets, 1)])
    results, rows, cuts = [], [], []
    for b, start, end in zip(buckets, *bounds):
        new = day.slice(start, end - start).select(prepare.STAGED_SCHEMA.names)
        done = delta_bucket(new, b, stats[b], float(task["test_fraction"]))
        if done is None:
            results.append({"bucket": b, "late": True})
            continue
        result, table, cut = done
        results.append(result)
        rows.append(table)
        cuts.append(cut)
    out = staging / "split"
    out.mkdir(exist_ok=True)
    if rows:
        table = pa.concat_tables(rows)
        pq.write_table(table, out / f"{STAGED_DELTA}{group:05d}.parquet")
        pq.write_table(pa.concat_tables(cuts), out / f"{STAGED_CUTS}{group:05d}.parquet")
    return {"results": results}


def delta_bucket(
    new: pa.Table, bucket: int, stats: pa.Table, fraction: float
) -> tuple[dict, pa.Table, pa.Table] | None:
    """The partition's rows of one bucket (``new``, staged) as a delta (rows with positions and
    test flags, and the touched users' cuts and stats), if every one comes after its user's
    newest row; else None (the bucket is merged instead)."""
    keys = ["user_id", "item_id", "timestamp", "weight"]
    rows_in = new.num_rows
    new = (
        new.group_by(keys, use_threads=False)
        .aggregate([("seq", "min")])
        .rename_columns(keys + ["seq"])
    )
    new = new.sort_by([("user_id", "ascending"), ("timestamp", "ascending"), ("seq", "ascending")])
    at = pc.index_in(new["user_id"], value_set=stats["user_id"]).fill_null(-1).to_numpy()
    known = at.astype(np.int64) >= 0
    at = np.maximum(at.astype(np.int64), 0)
    old_rows = np.where(known, stats["rows"].to_numpy()[at], 0)
    newest = np.where(known, stats["newest"].to_numpy()[at], np.iinfo(np.int64).min)
    stamps = new["timestamp"].to_numpy()
    if np.any(stamps <= newest):
        return None
    split = _continue_split(new, old_rows, fraction)
    n_test = int(split["is_test"].sum())
    result = {
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
    n = new.num_rows
    table = new.drop_columns(["seq"])
    table = table.append_column("is_test", pa.array(split["is_test"]))
    table = table.append_column("position", pa.array(split["position"].astype(np.int32)))
    table = table.add_column(0, "bucket", pa.array(np.full(n, bucket, np.int32)))
    first = split["users"]
    cuts = pa.table(
        {
            "bucket": pa.array(np.full(len(first), bucket, np.int32)),
            "user_id": first,
            "cut": pa.array(split["cut"].astype(np.int64)),
            "rows": pa.array(split["rows"].astype(np.int64)),
            "newest": pa.array(split["newest"].astype(np.int64)),
        }
    )
    return result, table, cuts


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


def map_deltas(task: dict) -> dict:
    """The partition's delta files (``layout.DELTA_ROWS``, ``DELTA_CUTS``, ``DELTA_STATS``), from
    every group's staged delta, with integer ids (only the ids the partition names, from
    ``staging/ids/``: not the whole catalogue), a row group per bucket."""
    staging, out = Path(task["staging"]), Path(task["out"])
    folder = out / DataDir.DELTA / task["partition"]
    users = pq.read_table(staging / "ids" / DataDir.USERS)
    items = pq.read_table(staging / "ids" / DataDir.ITEMS)

    def user_idx(ids: pa.ChunkedArray) -> pa.Array:
        return pc.take(users["user_idx"], pc.index_in(ids, value_set=users["user_id"]))

    def staged(prefix: str, order: list[str]) -> pa.Table:
        files = sorted((staging / "split").glob(f"{prefix}*.parquet"))
        table = pa.concat_tables([pq.read_table(f) for f in files])
        return table.sort_by([(c, "ascending") for c in order])

    rows = staged(STAGED_DELTA, ["bucket", "user_id", "position"])
    rows = rows.append_column("user_idx", user_idx(rows["user_id"])).append_column(
        "item_idx",
        pc.take(items["item_idx"], pc.index_in(rows["item_id"], value_set=items["item_id"])),
    )
    cuts = staged(STAGED_CUTS, ["bucket", "user_id"])
    cuts = cuts.append_column("user_idx", user_idx(cuts["user_id"]))
    _write_by_bucket(rows.select(["bucket", *prepare.OUTPUT_COLUMNS]), folder / layout.DELTA_ROWS)
    _write_by_bucket(cuts.select(["bucket", "user_idx", "cut"]), folder / layout.DELTA_CUTS)
    stats = cuts.select(["bucket", *prepare.STATS_SCHEMA.names])
    _write_by_bucket(stats, folder / layout.DELTA_STATS)
    return {"rows": rows.num_rows}


def _write_by_bucket(table: pa.Table, path: Path) -> None:
    """``table`` (sorted by bucket) with a row group per bucket, so a reader of one bucket reads
    its rows only."""
    at = table["bucket"].to_numpy()
    starts = np.flatnonzero(np.r_[True, at[1:] != at[:-1]]) if len(at) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(at)]
    with pq.ParquetWriter(path, table.schema) as writer:
        for a, b in zip(starts, ends):
            writer.write_table(table.slice(a, b - a), row_group_size=max(1, int(b - a)))


# --- compaction ---------------------------------------------------------------------------------


def delta_rows(data: Any) -> int:
    """Rows held in deltas (from their footers)."""
    total = 0
    for p, buckets in data.deltas.items():
        file = layout.delta_file(data, p, layout.DELTA_ROWS)
        if file is None:  # the layout before one file a partition
            for b in buckets:
                fs, path = storage.resolve(data.path(f"{data.DELTA}/{p}/{layout.part_name(b)}"))
                total += pq.ParquetFile(fs.open_input_file(path)).metadata.num_rows
            continue
        name = data.path(f"{data.DELTA}/{p}/{layout.DELTA_ROWS}")
        groups = {g for b in buckets for g in layout.bucket_groups(file, b, name)}
        total += sum(file.metadata.row_group(g).num_rows for g in groups)
    return total


def compact_bucket(task: dict) -> dict:
    """One bucket's merged rows written as its new base files, and its merged user stats."""
    data, out, bucket = DataDir(task["data"]), Path(task["out"]), int(task["bucket"])
    rows = {}
    for split in (DataDir.TRAIN, DataDir.TEST):
        table = data.bucket(split, bucket)
        pq.write_table(table, out / split / layout.part_name(bucket), row_group_size=65_536)
        rows[split] = table.num_rows
    pq.write_table(
        stats_of_bucket(data, bucket), out / DataDir.USER_STATS / layout.part_name(bucket)
    )
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
            rel.parts[0] in (DataDir.TRAIN, DataDir.TEST, DataDir.USER_STATS)
            and layout.bucket_number(rel.name) in touched
        ):
            continue
        link(path, out / rel)
    for split in (DataDir.TRAIN, DataDir.TEST, DataDir.USER_STATS):
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
