"""`ganrec prepare`: raw interaction logs -> validated, id-mapped, per-user temporally split,
sharded Parquet (the DATA/ layout of the README's *Data formats*).

The work runs as three Ray Data passes over small task lists, so it streams and scales out:

1. **ingest**, one task per input file: read in chunks, validate each row (bad rows go to
   ``rejected/`` with their original values and a reason), and hash-partition the good rows by
   user into ``shards`` buckets. Memory: one chunk per task.
2. **split**, one task per bucket: every row of a user is in one bucket, so exact duplicates are
   dropped and the per-user temporal split is decided there. Memory: one bucket.
3. **map ids**, one task per bucket: attach the global integer ids and write ``train/`` and
   ``test/`` shards.

Everything is written under a temporary sibling directory that is renamed into place only when
all passes succeeded, so a failed run leaves no ``DATA`` behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ganrec_dist.core import storage
from ganrec_dist.core.config import PrepareConfig
from ganrec_dist.core.errors import UserError
from ganrec_dist.data import content, sources
from ganrec_dist.data.interactions import n_test_rows
from ganrec_dist.data.layout import DataDir

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHUNK_ROWS = 262_144
SEQ_FILE_SHIFT = 40  # input order = file index << 40 | row number in file
ROWS_PER_SHARD = 500_000
STAGED_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.int64()),
        ("weight", pa.float64()),
        ("seq", pa.int64()),
    ]
)
STATS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("user_idx", pa.int32()),
        ("rows", pa.int64()),
        ("newest", pa.int64()),
    ]
)
OUTPUT_COLUMNS = ["user_id", "item_id", "timestamp", "weight", "user_idx", "item_idx", "position"]
REASONS = (
    "missing user_id",
    "missing item_id",
    "bad timestamp",
    "non-finite weight",
    "malformed row",
)
_NUMBER = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$"
_TS_LIMIT = 1e11  # |Unix seconds| beyond this (year ~5100) is not a timestamp


# --- pass 1: read and validate ---------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def file_columns(path: str, fmt: str) -> list[str]:
    """The column names of one input file; a clear UserError if it cannot be read."""
    if not os.path.exists(path):
        raise UserError(f"{path}: file does not exist")
    if fmt == "parquet":
        try:
            return list(pq.ParquetFile(path).schema_arrow.names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
    return sources.csv_header(path, "\t" if fmt == "tsv" else ",")


def _iter_chunks(path: str, fmt: str, malformed: list[str]):
    """Yield the file as tables of at most CHUNK_ROWS rows; CSV values stay strings."""
    if fmt == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS):
            yield pa.Table.from_batches([batch])
        return
    delimiter = "\t" if fmt == "tsv" else ","
    names = sources.csv_header(path, delimiter)

    def on_invalid(row: Any) -> str:
        malformed.append(row.text)
        return "skip"

    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=8 << 20),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            # Only an empty field is missing; "nan" or "NULL" stay text so that the rejected
            # row shows exactly what the file said.
            column_types={n: pa.string() for n in names},
            strings_can_be_null=True,
            null_values=[""],
        ),
    )
    for batch in reader:
        yield pa.Table.from_batches([batch])


def _as_id(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Ids as trimmed strings; empty strings become null (missing)."""
    values = pc.utf8_trim_whitespace(column.cast(pa.string()))
    return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)


def _parse_number(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Strings or numbers -> float64; unparsable values become null."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return column.cast(pa.float64())
    if pa.types.is_boolean(column.type):
        return pa.chunked_array([pa.nulls(len(column), pa.float64())])
    text = column.cast(pa.string())
    lowered = pc.utf8_lower(pc.utf8_trim_whitespace(text))
    special = pc.is_in(
        lowered, value_set=pa.array(["nan", "inf", "+inf", "-inf", "infinity", "-infinity"])
    )
    numeric = pc.match_substring_regex(text, _NUMBER)
    keep = pc.or_(numeric, special)
    cleaned = pc.if_else(keep, pc.utf8_trim_whitespace(text), pa.scalar(None, pa.string()))
    return cleaned.cast(pa.float64())


def _parse_timestamp(column: pa.ChunkedArray) -> np.ndarray:
    """Unix seconds (int or float) or ISO-8601 -> float64 seconds; NaN where unparsable."""
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
        secs = column.cast(pa.timestamp("s")).cast(pa.int64()).to_numpy(zero_copy_only=False)
        return np.asarray(pd.array(secs, dtype="Float64").to_numpy(np.float64, na_value=np.nan))
    numbers = _parse_number(column).to_numpy(zero_copy_only=False).astype(np.float64)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        missing = np.isnan(numbers)
        text = column.to_numpy(zero_copy_only=False)
        candidates = missing & pd.notna(text)
        if candidates.any():
            parsed = pd.to_datetime(
                pd.Series(text[candidates]), errors="coerce", utc=True, format="ISO8601"
            )
            ns = parsed.to_numpy(dtype="datetime64[ns]").astype("int64")
            seconds = np.where(parsed.isna().to_numpy(), np.nan, ns / 1e9)
            numbers[candidates] = seconds
    return numbers


def validate_chunk(table: pa.Table, cols: dict[str, str]) -> tuple[pa.Table, pa.Table]:
    """Split one chunk into (good rows in STAGED_SCHEMA minus seq, rejected rows with reason).

    Args:
        table: raw columns as read.
        cols: the source column names for ``user``, ``item``, ``time`` and ``weight`` ('' = none).
    Returns:
        (good, rejected): ``good`` has user_id, item_id, timestamp (int64 Unix seconds), weight
        and ``row`` (position in the chunk); ``rejected`` has the original columns as strings,
        ``reason`` and ``row``.
    """
    n = table.num_rows
    user = _as_id(table[cols["user"]])
    item = _as_id(table[cols["item"]])
    ts = _parse_timestamp(table[cols["time"]])
    if cols["weight"]:
        weight = (
            _parse_number(table[cols["weight"]]).to_numpy(zero_copy_only=False).astype(np.float64)
        )
    else:
        weight = np.ones(n, dtype=np.float64)
    user_missing = pc.is_null(user).to_numpy(zero_copy_only=False)
    item_missing = pc.is_null(item).to_numpy(zero_copy_only=False)
    ts_bad = ~np.isfinite(ts) | (np.abs(np.nan_to_num(ts)) > _TS_LIMIT)
    weight_bad = ~np.isfinite(weight)
    reason = np.full(n, None, dtype=object)
    # First reason wins, in the documented order.
    for mask, text in reversed(
        [
            (user_missing, REASONS[0]),
            (item_missing, REASONS[1]),
            (ts_bad, REASONS[2]),
            (weight_bad, REASONS[3]),
        ]
    ):
        reason[mask] = text
    bad = user_missing | item_missing | ts_bad | weight_bad
    rows = np.arange(n, dtype=np.int64)
    good_idx = np.flatnonzero(~bad)
    good = pa.table(
        {
            "user_id": user.take(good_idx),
            "item_id": item.take(good_idx),
            "timestamp": pa.array(np.floor(ts[good_idx]).astype(np.int64)),
            "weight": pa.array(weight[good_idx]),
            "row": pa.array(rows[good_idx]),
        }
    )
    bad_idx = np.flatnonzero(bad)
    rejected = rejected_rows(table.take(bad_idx), cols, reason[bad_idx], rows[bad_idx])
    return good, rejected


REJECTED_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.string()),
        ("weight", pa.string()),
        ("raw", pa.string()),  # the whole original row: JSON object, or the raw line if malformed
        ("reason", pa.string()),
        ("row", pa.int64()),
        ("source_file", pa.string()),
    ]
)


def rejected_rows(
    table: pa.Table, cols: dict[str, str], reasons: Any, rows: Any, source: str = ""
) -> pa.Table:
    """Rejected rows in one schema for every input: the original values as strings plus a reason."""

    def original(role: str) -> pa.Array:
        name = cols.get(role, "")
        if not name:
            return pa.nulls(table.num_rows, pa.string())
        return table[name].cast(pa.string()).combine_chunks()

    raw = [json.dumps(r, default=str) for r in table.to_pylist()]
    return pa.table(
        [
            original("user"),
            original("item"),
            original("time"),
            original("weight"),
            pa.array(raw, pa.string()),
            pa.array(list(reasons), pa.string()),
            pa.array(np.asarray(rows, dtype=np.int64)),
            pa.array([source] * table.num_rows, pa.string()),
        ],
        schema=REJECTED_SCHEMA,
    )


def stage_content(raw: sources.RawInput, staging: Path, fixed: list | None = None) -> Any:
    """Pass 1 over ``raw``'s content file (``content.stage``), its quarantined rows into
    ``staging``'s ``rejected/`` beside the log's, in the same schema (the item id in
    ``item_id``, the whole row in ``raw``); None without content."""
    if not raw.content:
        return None

    def reject(rows: pa.Table, reasons: list[str], numbers: list[int], batch: int) -> None:
        table = rejected_rows(
            rows, {"item": content.ID_COLUMN}, reasons, numbers, source=raw.content
        )
        pq.write_table(table, staging / DataDir.REJECTED / f"content-{batch:05d}.parquet")

    return content.stage(
        raw.content,
        raw.content_format,
        raw.content_spec,
        staging / "content",
        reject=reject,
        fixed=fixed,
    )


def shown_columns(staged: Any) -> pa.Table | None:
    """The staged content's columns people read (not vectors), one row an item, several
    values joined back into one string: what items.parquet carries beside the ids."""
    shown = [f.name for f in staged.features if f.type != "vector"]
    if not shown:
        return None
    columns = pa.concat_tables(pq.read_table(f, columns=["item_id", *shown]) for f in staged.files)
    for f in staged.features:
        if f.type == "multi":
            joined = pc.binary_join(columns[f.name], f.sep)
            columns = columns.set_column(columns.column_names.index(f.name), f.name, joined)
    return columns


def bucket_of(user_ids: pa.ChunkedArray | pa.Array, buckets: int) -> np.ndarray:
    """Stable hash partition of user ids (the same user always lands in the same bucket)."""
    values = np.asarray(user_ids.to_numpy(zero_copy_only=False), dtype=object)
    return (pd.util.hash_array(values) % np.uint64(buckets)).astype(np.int64)


DAY = "day"  # an append's staged rows: a file per input file, with a bucket column
DAY_SCHEMA = STAGED_SCHEMA.append(pa.field("bucket", pa.int32()))


def ingest_file(task: dict) -> dict:
    """Pass 1 for one file: validate, write rejected rows, partition good rows into buckets
    (a file per bucket; with ``one_file``, as an append does, one file sorted by bucket, whose
    row groups' statistics let a reader of some buckets skip the rest: a day's rows are few, and
    a file per bucket would cost more than its rows)."""
    path, fmt, file_idx = task["path"], task["format"], int(task["file_idx"])
    cols, buckets, staging = task["cols"], int(task["buckets"]), Path(task["staging"])
    one_file = bool(task.get("one_file"))
    seen: set[int] = set()
    writers: dict[int, pq.ParquetWriter] = {}
    rejected_writer = None
    malformed: list[str] = []
    stats = {"path": path, "rows_in": 0, "rows_kept": 0, "rejected": {r: 0 for r in REASONS}}
    offset = 0
    try:
        for chunk in _iter_chunks(path, fmt, malformed):
            good, rejected = validate_chunk(chunk, cols)
            seq = (file_idx << SEQ_FILE_SHIFT) + offset + good["row"].to_numpy()
            staged = pa.table(
                {
                    "user_id": good["user_id"],
                    "item_id": good["item_id"],
                    "timestamp": good["timestamp"],
                    "weight": good["weight"],
                    "seq": pa.array(seq, pa.int64()),
                },
                schema=STAGED_SCHEMA,
            )
            part = bucket_of(staged["user_id"], buckets)
            seen |= {int(b) for b in np.unique(part)}
            _stage(staged, part, staging, file_idx=file_idx, writers=writers, one_file=one_file)
            if rejected.num_rows:
                rejected = rejected.set_column(
                    6, "row", pa.array(rejected["row"].to_numpy() + offset)
                )
                rejected = rejected.set_column(
                    7, "source_file", pa.array([path] * rejected.num_rows)
                )
                for reason, count in zip(
                    *np.unique(
                        rejected["reason"].to_numpy(zero_copy_only=False), return_counts=True
                    )
                ):
                    stats["rejected"][reason] += int(count)
                if rejected_writer is None:
                    rejected_writer = pq.ParquetWriter(
                        staging / DataDir.REJECTED / f"part-{file_idx:06d}.parquet", REJECTED_SCHEMA
                    )
                rejected_writer.write_table(rejected)
            stats["rows_in"] += chunk.num_rows
            stats["rows_kept"] += staged.num_rows
            offset += chunk.num_rows
        if malformed:
            # The CSV reader skips these before numbering rows; their line text is kept in `raw`.
            n = len(malformed)
            table = pa.table(
                [pa.nulls(n, pa.string())] * 4
                + [
                    pa.array(malformed, pa.string()),
                    pa.array([REASONS[4]] * n, pa.string()),
                    pa.nulls(n, pa.int64()),
                    pa.array([path] * n, pa.string()),
                ],
                schema=REJECTED_SCHEMA,
            )
            pq.write_table(table, staging / DataDir.REJECTED / f"malformed-{file_idx:06d}.parquet")
            stats["rejected"][REASONS[4]] += len(malformed)
            stats["rows_in"] += len(malformed)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        return {"error": f"{path}: unreadable after row {offset} ({_first_line(exc)})"}
    finally:
        for w in writers.values():
            w.close()
        if rejected_writer is not None:
            rejected_writer.close()
    return {**stats, "buckets": sorted(seen)}


def _stage(
    staged: pa.Table,
    part: np.ndarray,
    staging: Path,
    *,
    file_idx: int,
    writers: dict[int, pq.ParquetWriter],
    one_file: bool,
) -> None:
    """A chunk's good rows written to its buckets' staged files (``part``: each row's bucket),
    or with ``one_file`` to the file's one day file, sorted by bucket."""
    if one_file:
        if not writers:
            (staging / DAY).mkdir(exist_ok=True)
            out = staging / DAY / f"f{file_idx:06d}.parquet"
            writers[0] = pq.ParquetWriter(out, DAY_SCHEMA)
        order = np.argsort(part, kind="stable")
        day = staged.append_column("bucket", pa.array(part.astype(np.int32)))
        writers[0].write_table(day.take(order), row_group_size=65_536)
        return
    for b in np.unique(part):
        if b not in writers:
            out = staging / "buckets" / f"b{b:05d}"
            out.mkdir(parents=True, exist_ok=True)
            writers[b] = pq.ParquetWriter(out / f"f{file_idx:06d}.parquet", STAGED_SCHEMA)
        writers[b].write_table(staged.filter(pa.array(part == b)))


# --- pass 2: dedup and split -----------------------------------------------------------------


def split_sorted(users: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """For rows sorted by (user, time, input order): position in the user's sequence and test flag.

    Returns:
        (position, is_test), each ``[rows]``.
    """
    n = len(users)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, n])
    position = np.arange(n) - np.repeat(starts, counts)
    n_test = n_test_rows(counts, test_fraction)
    is_test = position >= np.repeat(counts - n_test, counts)
    return position, is_test


def split_bucket(task: dict) -> dict:
    """Pass 2 for one bucket: drop exact duplicates, sort, decide the temporal split."""
    staging, bucket = Path(task["staging"]), int(task["bucket"])
    source = staging / "buckets" / f"b{bucket:05d}"
    table = (
        pq.read_table(source, schema=STAGED_SCHEMA)
        if source.exists()
        else STAGED_SCHEMA.empty_table()
    )
    stats = write_split(table, staging, bucket, float(task["test_fraction"]))
    if source.exists():
        shutil.rmtree(source)
    return stats


def write_split(table: pa.Table, staging: Path, bucket: int, test_fraction: float) -> dict:
    """One bucket's staged rows (STAGED_SCHEMA): exact duplicates dropped (the earliest in input
    order kept), sorted by (user, time, input order), split; written to ``staging/split`` with the
    bucket's user and item ids. Returns the bucket's counts."""
    rows = table.num_rows
    keys = ["user_id", "item_id", "timestamp", "weight"]
    table = (
        table.group_by(keys, use_threads=False)
        .aggregate([("seq", "min")])
        .rename_columns(keys + ["seq"])
    )
    table = table.sort_by(
        [("user_id", "ascending"), ("timestamp", "ascending"), ("seq", "ascending")]
    )
    users = table["user_id"].to_numpy(zero_copy_only=False)
    position, is_test = split_sorted(users, test_fraction)
    table = table.drop_columns(["seq"]).append_column("is_test", pa.array(is_test))
    table = table.append_column("position", pa.array(position.astype(np.int32)))
    out = staging / "split"
    out.mkdir(exist_ok=True)
    pq.write_table(table, out / f"b{bucket:05d}.parquet")
    pq.write_table(
        pa.table({"user_id": pc.unique(table["user_id"])}), out / f"users-b{bucket:05d}.parquet"
    )
    pq.write_table(
        pa.table({"item_id": pc.unique(table["item_id"])}), out / f"items-b{bucket:05d}.parquet"
    )
    return {
        "bucket": bucket,
        "rows": rows,
        "duplicates": rows - table.num_rows,
        "test_rows": int(is_test.sum()),
        "train_rows": int((~is_test).sum()),
        "max_timestamp": int(pc.max(table["timestamp"]).as_py() or 0) if table.num_rows else None,
    }


# --- pass 3: integer ids and output shards ----------------------------------------------------


def map_bucket(task: dict) -> dict:
    """Pass 3 for one bucket: attach user_idx/item_idx and write the train and test shards."""
    staging, out, bucket = Path(task["staging"]), Path(task["out"]), int(task["bucket"])
    table = pq.read_table(staging / "split" / f"b{bucket:05d}.parquet")
    users = pq.read_table(out / DataDir.USERS, columns=["user_id"])["user_id"]
    items = pq.read_table(out / DataDir.ITEMS, columns=["item_id"])["item_id"]
    table = table.append_column(
        "user_idx", pc.index_in(table["user_id"], value_set=users).cast(pa.int32())
    )
    table = table.append_column(
        "item_idx", pc.index_in(table["item_id"], value_set=items).cast(pa.int32())
    )
    for name, mask in (
        (DataDir.TRAIN, pc.invert(table["is_test"])),
        (DataDir.TEST, table["is_test"]),
    ):
        part = table.filter(mask).select(OUTPUT_COLUMNS)
        pq.write_table(part, out / name / f"part-{bucket:05d}.parquet", row_group_size=65_536)
    # What an in-order append needs of the old rows (``data.delta``): counts, newest times.
    (out / DataDir.USER_STATS).mkdir(exist_ok=True)
    pq.write_table(
        user_stats(table.select(["user_id", "user_idx", "timestamp"])),
        out / DataDir.USER_STATS / f"part-{bucket:05d}.parquet",
    )
    n_test = int(np.count_nonzero(table["is_test"].to_numpy(zero_copy_only=False)))
    return {"bucket": bucket, "train_rows": table.num_rows - n_test, "test_rows": n_test}


# --- the driver ------------------------------------------------------------------------------


def user_stats(table: pa.Table) -> pa.Table:
    """Per user of ``table`` (rows with user_id, user_idx, timestamp): row count, newest time."""
    grouped = table.group_by(["user_id", "user_idx"], use_threads=False).aggregate(
        [("timestamp", "count"), ("timestamp", "max")]
    )
    return pa.table(
        {
            "user_id": grouped["user_id"].cast(pa.string()),
            "user_idx": grouped["user_idx"].cast(pa.int32()),
            "rows": grouped["timestamp_count"].cast(pa.int64()),
            "newest": grouped["timestamp_max"].cast(pa.int64()),
        },
        schema=STATS_SCHEMA,
    ).sort_by("user_idx")


def _run(
    fn: Callable[[dict], dict], tasks: list[dict], name: str, remote_args: dict | None = None
) -> list[dict]:
    """Run ``fn`` over ``tasks`` as a Ray Data pipeline (one task per item, results collected).

    ``remote_args``: Ray options for the tasks (prepare pins them to the driver's node when its
    staging directory is a local temp dir that other nodes cannot see).
    """
    import ray

    if not tasks:
        return []

    def apply(batch: dict) -> dict:
        results = []
        for i in range(len(batch["task"])):
            try:
                results.append(json.dumps(fn(json.loads(batch["task"][i]))))
            except UserError as exc:
                results.append(json.dumps({"error": str(exc)}))
        return {"result": np.asarray(results, dtype=object)}

    items = [{"task": json.dumps(t)} for t in tasks]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    rows = ds.map_batches(apply, batch_size=1, num_cpus=1, **(remote_args or {})).take_all()
    results = [json.loads(r["result"]) for r in rows]
    errors = sorted(r["error"] for r in results if "error" in r)
    if errors:
        raise UserError(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    log.info("%s: %d task(s) done", name, len(results))
    return results


def _driver_node_args() -> dict:
    """Ray Data options that keep prepare's tasks on this node (its staging dir is local to it):
    a label selector on the node's id, as Ray Train pins its controller."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return {"label_selector": {ray._raylet.RAY_NODE_ID_KEY: node}}  # type: ignore[attr-defined]


def _default_shards(files: list[str], fmt: str) -> int:
    if fmt == "parquet":
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    else:
        rows = sum(os.path.getsize(f) for f in files) // 32  # ~32 bytes per CSV row
    return int(min(256, max(4, math.ceil(rows / ROWS_PER_SHARD))))


def _column_map(
    cfg: PrepareConfig, raw: sources.RawInput, files: list[str]
) -> tuple[dict[str, str], list[str]]:
    """Check every file's columns up front; return the column mapping and ignored columns."""
    defaults = PrepareConfig()
    user = cfg.user_col if cfg.user_col != defaults.user_col else raw.user_col
    item = cfg.item_col if cfg.item_col != defaults.item_col else raw.item_col
    time_col = cfg.time_col if cfg.time_col != defaults.time_col else raw.time_col
    weight = cfg.weight_col or raw.weight_col
    ignored: set[str] = set()
    chosen_weight = None
    for path in files:
        names = file_columns(path, raw.format)
        for role, col in (("user", user), ("item", item), ("timestamp", time_col)):
            if col not in names:
                raise UserError(
                    f"{path}: missing required {role} column '{col}' (has: {', '.join(names[:10])})"
                )
        if weight and weight not in names:
            raise UserError(f"{path}: missing weight column '{weight}'")
        w = weight or ("weight" if "weight" in names else "rating" if "rating" in names else "")
        if chosen_weight is None:
            chosen_weight = w
        elif chosen_weight != w:
            raise UserError(
                f"{path}: weight column differs from the other files; pass --weight_col"
            )
        ignored |= set(names) - {user, item, time_col, w}
    return {"user": user, "item": item, "time": time_col, "weight": chosen_weight or ""}, sorted(
        ignored
    )


def prepare(cfg: PrepareConfig) -> dict:
    """Run the whole pipeline; return the manifest. See the module docstring.

    An object-store DATA (``s3://...``) is built in a local temporary directory, then uploaded
    with ``manifest.json`` last: readers treat a prefix without a manifest as unfinished.
    """
    if cfg.append_to:
        raise UserError("--append-to: run ganrec_dist.data.append.append")
    if cfg.retire:
        raise UserError("--retire marks items of an existing DATA: use it with --append-to")
    if not storage.is_uri(cfg.out):
        return _prepare_local(cfg)
    if storage.exists(cfg.out) and not cfg.overwrite:
        raise UserError(f"{cfg.out}: already exists; pass --overwrite to replace it")
    local = Path(tempfile.mkdtemp(prefix="ganrec-prepare-")) / "data"
    try:
        manifest = _prepare_local(
            dataclasses.replace(cfg, out=str(local), overwrite=False), pin_to_driver=True
        )
        storage.remove_tree(cfg.out)
        storage.upload_tree(local, cfg.out, last=(DataDir.MANIFEST,))
    finally:
        shutil.rmtree(local.parent, ignore_errors=True)
    log.info("prepare: uploaded to %s", cfg.out)
    return manifest


def _inputs(
    cfg: PrepareConfig, staging: Path, pin_to_driver: bool
) -> tuple[sources.RawInput, dict[str, str], list[str], dict | None]:
    """The raw input, its column mapping, the ignored columns and the tasks' Ray options.

    Inputs that need no Ray to resolve (the user's files) are checked before Ray starts, so
    that an unreadable file fails fast.
    """
    from ganrec_dist.core.raycluster import ensure_ray

    source = sources.lookup(cfg.source)
    raw = None
    if not source.uses_ray:
        raw = sources.with_content(source.resolve(cfg, staging / "raw", None), cfg)
        cols, ignored = _column_map(cfg, raw, raw.files)
    ensure_ray(cfg.address)
    # Prepare's staging directory is local to this node: its tasks stay here.
    remote_args = _driver_node_args() if pin_to_driver else None
    if raw is None:
        raw = source.resolve(cfg, staging / "raw", remote_args)
        cols, ignored = _column_map(cfg, raw, raw.files)
    raw = sources.with_content(raw, cfg)
    if ignored:
        log.warning("ignoring columns not used by the pipeline: %s", ", ".join(ignored))
    return raw, cols, ignored, remote_args


def _passes(
    raw: sources.RawInput,
    *,
    cols: dict,
    staging: Path,
    out: Path,
    shards: int,
    cfg: PrepareConfig,
    remote_args: dict | None,
    staged: content.Staged | None = None,
) -> tuple[list[dict], list[dict], int, int]:
    """The three Ray Data passes; returns (ingest stats, split stats, users, items). Items
    with content (``staged``) but no interaction join the catalogue."""
    files = [
        {"path": p, "format": raw.format, "file_idx": i, "cols": cols, "buckets": shards}
        for i, p in enumerate(raw.files)
    ]
    ingest = _run(
        ingest_file, [{**f, "staging": str(staging)} for f in files], "ingest", remote_args
    )
    split = _run(
        split_bucket,
        [
            {"staging": str(staging), "bucket": b, "test_fraction": cfg.test_fraction}
            for b in range(shards)
        ],
        "split",
        remote_args,
    )
    users, items = _write_id_maps(staging, out, staged)
    (out / DataDir.TRAIN).mkdir()
    (out / DataDir.TEST).mkdir()
    _run(
        map_bucket,
        [{"staging": str(staging), "out": str(out), "bucket": b} for b in range(shards)],
        "map ids",
        remote_args,
    )
    return ingest, split, users, items


def _write_id_maps(staging: Path, out: Path, staged: content.Staged | None) -> tuple[int, int]:
    """users.parquet and items.parquet: ids in sorted order; items with content among them,
    their scalar content columns joined in (for people: the model reads ``content/``)."""
    users = _sorted_unique(staging / "split", "users-b*.parquet", "user_id")
    items = _sorted_unique(staging / "split", "items-b*.parquet", "item_id")
    if staged is not None:
        items = pc.unique(pa.concat_arrays([items, staged.ids()]))
        items = pc.take(items, pc.sort_indices(items))
    pq.write_table(
        pa.table({"user_idx": pa.array(np.arange(len(users), dtype=np.int32)), "user_id": users}),
        out / DataDir.USERS,
    )
    item_table = pa.table(
        {"item_idx": pa.array(np.arange(len(items), dtype=np.int32)), "item_id": items}
    )
    columns = shown_columns(staged) if staged is not None else None
    if columns is not None:
        item_table = item_table.join(columns, "item_id", join_type="left outer")
        item_table = item_table.sort_by("item_idx")
    pq.write_table(item_table, out / DataDir.ITEMS)
    return len(users), len(items)


def _manifest(
    cfg: PrepareConfig,
    raw: sources.RawInput,
    *,
    cols: dict,
    ignored: list[str],
    counts: tuple[list[dict], list[dict], int, int],
    shards: int,
    seconds: float,
    described: dict | None = None,
) -> dict:
    """manifest.json: counts that reconcile, the split rule, the schema version, the source,
    and the item content (``described``: its features, counts and quarantine)."""
    ingest, split, users, items = counts
    rejected_by_reason = {r: sum(s["rejected"][r] for s in ingest) for r in REASONS}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "source": raw.description,
        "source_params": raw.params,
        "files": raw.files if raw.user_files else [],
        "columns": cols,
        "ignored_columns": ignored,
        "rows_in": sum(s["rows_in"] for s in ingest),
        "rows_kept": sum(s["train_rows"] + s["test_rows"] for s in split),
        "rows_rejected": sum(rejected_by_reason.values()),
        "rows_duplicate": sum(s["duplicates"] for s in split),
        "rejected_by_reason": rejected_by_reason,
        "users": users,
        "items": items,
        "train_rows": sum(s["train_rows"] for s in split),
        "test_rows": sum(s["test_rows"] for s in split),
        "shards": shards,
        "split": {
            "rule": "per user, ordered by (timestamp, input order): the last ceil(test_fraction * n) "
            "interactions go to test; a user with one interaction keeps it in train",
            "test_fraction": cfg.test_fraction,
        },
        "seconds": round(seconds, 2),
        "max_timestamp": max_timestamp(split),
        "retired_items": 0,
        "version_number": 1,
        "parent": None,
        "lineage": [],
    }
    if described is not None:
        manifest["content"] = described
    manifest["partitions"] = [partition_entry(manifest, users=users, items=items)]
    reconcile(manifest)
    return seal(manifest)


def max_timestamp(split: list[dict]) -> int | None:
    """The newest timestamp over a pass's buckets (None for an empty log)."""
    found = [s["max_timestamp"] for s in split if s.get("max_timestamp") is not None]
    return max(found) if found else None


def partition_entry(counts: dict, *, users: int, items: int, **extra: Any) -> dict:
    """The manifest's record of one partition: what it brought in, each count of its own."""
    keys = ("source", "files", "rows_in", "rows_kept", "rows_rejected", "rows_duplicate")
    return {
        **{k: counts[k] for k in keys},
        "rejected_by_reason": dict(counts["rejected_by_reason"]),
        "new_users": users,
        "new_items": items,
        "max_timestamp": counts.get("max_timestamp"),
        **extra,
    }


def reconcile(manifest: dict) -> None:
    """rows_in = kept + rejected + duplicate, in total and for every partition."""
    for counts in [manifest, *manifest.get("partitions", [])]:
        if (
            counts["rows_in"]
            != counts["rows_kept"] + counts["rows_rejected"] + counts["rows_duplicate"]
        ):
            raise RuntimeError(f"row counts do not reconcile: {counts}")


def seal(manifest: dict) -> dict:
    """The manifest with its ``version``: a digest of everything it says but its timing, so a
    RUN can name the DATA it was trained on and an append can pin its parent."""
    manifest = {k: v for k, v in manifest.items() if k != "version"}
    manifest["version"] = DataDir.version_of(manifest)
    return manifest


def _prepare_local(cfg: PrepareConfig, pin_to_driver: bool = False) -> dict:
    out = Path(cfg.out).absolute()
    if out.exists() and not cfg.overwrite:
        raise UserError(f"{out}: already exists; pass --overwrite to replace it")
    if not 0 < cfg.test_fraction < 1:
        raise UserError(f"test_fraction must be in (0, 1), got {cfg.test_fraction}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging = tmp / "_staging"
    start = time.time()
    try:
        (staging / DataDir.REJECTED).mkdir(parents=True)
        raw, cols, ignored, remote_args = _inputs(cfg, staging, pin_to_driver)
        staged = stage_content(raw, staging)
        shards = cfg.shards or _default_shards(raw.files, raw.format)
        log.info("prepare: %d file(s) of %s, %d shards", len(raw.files), raw.format, shards)
        counts = _passes(
            raw,
            cols=cols,
            staging=staging,
            out=tmp,
            shards=shards,
            cfg=cfg,
            remote_args=remote_args,
            staged=staged,
        )
        described = None
        if staged is not None:
            catalogue = pq.read_table(tmp / DataDir.ITEMS, columns=["item_id"])["item_id"]
            described = content.encode(staged, catalogue.combine_chunks(), tmp / DataDir.CONTENT)
            given = cfg.item_content not in ("", "synthetic")
            described["source"] = raw.content if given else f"{raw.description}'s own"
        (tmp / DataDir.REJECTED).mkdir()
        for f in sorted((staging / DataDir.REJECTED).glob("*.parquet")):
            f.rename(tmp / DataDir.REJECTED / f.name)
        shutil.rmtree(staging)
        manifest = _manifest(
            cfg,
            raw,
            cols=cols,
            ignored=ignored,
            counts=counts,
            shards=shards,
            seconds=time.time() - start,
            described=described,
        )
        (tmp / DataDir.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        storage.replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "prepare: %d rows in, %d kept (%d train / %d test), %d rejected, %d duplicate; "
        "%d users, %d items -> %s (%.1fs)",
        manifest["rows_in"],
        manifest["rows_kept"],
        manifest["train_rows"],
        manifest["test_rows"],
        manifest["rows_rejected"],
        manifest["rows_duplicate"],
        manifest["users"],
        manifest["items"],
        out,
        manifest["seconds"],
    )
    return manifest


def _sorted_unique(folder: Path, pattern: str, column: str) -> pa.Array:
    parts = [pq.read_table(f, columns=[column])[column] for f in sorted(folder.glob(pattern))]
    if not parts:
        return pa.array([], pa.string())
    values = pc.unique(pa.chunked_array([c for p in parts for c in p.chunks], pa.string()))
    return pc.take(values, pc.sort_indices(values))
