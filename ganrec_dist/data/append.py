"""`ganrec prepare --append-to DATA`: a new partition of the log added to a prepared DATA, as
a new DATA version whose ids are the old ones plus the new.

The new rows go through the same validation, quarantine and bucketing as a first prepare
(:mod:`ganrec_dist.data.prepare`'s ingest pass, with DATA's own bucket count, so a user's new rows
land in the bucket that holds their old ones). Then, for each bucket the new rows touched:

- in order (every new row after its user's newest row, the daily case): the rows become a delta
  of the bucket (:mod:`ganrec_dist.data.delta`), positions continuing each user's sequence and
  the touched users' new split points beside them; no old row is read, only the bucket's user
  stats (row count and newest time per user);
- with a late row (at or before its user's newest): the bucket's old rows (train, test and its
  deltas) are read back and staged with the new; an old row's input order is its position in
  the user's sequence, every new row comes after every old one, so the deduplication (an exact
  repeat of an old row is a duplicate of the partition) and the per-user temporal split are the
  ones a fresh prepare of the union of the logs decides; the bucket is written as new base files.

Either way every reader sees the rows, labels and positions a fresh prepare of the union gives;
ids: every old user and item keeps its index; ids the partition brings are numbered after the
old ones, in sorted order among themselves.

Everything else is the old version's files, hard-linked into the new version where DATA's
filesystem allows it (no bytes copied), copied otherwise; the manifest says how many of each. So
a daily append costs the day's rows, the touched buckets' user stats and the id maps; a late
row costs its bucket.

``--retire FILE`` (a CSV, TSV or Parquet file with an item id column) marks items as retired:
they keep their index and their rows, and index, score and serve never recommend them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ganrec_dist.core import storage
from ganrec_dist.core.config import PrepareConfig
from ganrec_dist.core.errors import UserError
from ganrec_dist.data import content, delta, layout, prepare, sources
from ganrec_dist.data.layout import DataDir

log = logging.getLogger(__name__)

OLD_COLUMNS = ["user_id", "item_id", "timestamp", "weight", "position"]


def default_out(parent: DataDir) -> str:
    """Where a new version goes without ``--out``: beside the parent, ``DATA.v<N>``."""
    root = Path(parent.root)
    stem = root.name.split(".v")[0]
    return str(root.with_name(f"{stem}.v{parent.manifest.get('version_number', 1) + 1}"))


def prepare_or_append(cfg: PrepareConfig) -> dict:
    """`ganrec prepare`: a first DATA, or with ``--append-to`` a new version of one."""
    return append(cfg) if cfg.append_to else prepare.prepare(cfg)


def append(cfg: PrepareConfig) -> dict:
    """Append ``cfg.source`` to ``cfg.append_to``; returns the new version's manifest."""
    if storage.is_uri(cfg.append_to):
        raise UserError(f"{cfg.append_to}: --append-to works on a local DATA directory")
    parent = DataDir(cfg.append_to)
    old = parent.manifest
    if old.get("schema_version") != prepare.SCHEMA_VERSION:
        raise UserError(f"{parent}: schema version {old.get('schema_version')}: prepare it again")
    out = Path(cfg.out if cfg.out != PrepareConfig().out else default_out(parent)).absolute()
    replacing = out == Path(parent.root).absolute()
    if out.exists() and not cfg.overwrite:
        raise UserError(f"{out}: already exists; pass --overwrite to replace it")
    if storage.is_uri(cfg.out):
        raise UserError(f"{cfg.out}: an appended version is written to a local directory")
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        manifest = _build(cfg, parent, tmp)
        if delta.due(DataDir(tmp), cfg.compact_at):
            compacted = tmp.with_name(tmp.name + "-compact")
            compacted.mkdir()
            manifest = delta.compact_into(DataDir(tmp), compacted)
            shutil.rmtree(tmp)
            compacted.rename(tmp)
            log.info("append: the deltas passed --compact_at %s: compacted", cfg.compact_at)
        storage.replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _summary(manifest, out, replacing)
    return manifest


def _build(cfg: PrepareConfig, parent: DataDir, tmp: Path) -> dict:
    """The new version, complete, in ``tmp``; returns its manifest."""
    old = parent.manifest
    staging = tmp / "_staging"
    start = time.time()
    (staging / DataDir.REJECTED).mkdir(parents=True)
    retire = _retired_ids(cfg) if cfg.retire else None
    raw, cols, ignored, remote_args = prepare._inputs(cfg, staging, pin_to_driver=False)
    # A partition's content keeps the first prepare's vocabularies and normalisation.
    earlier = parent.content()
    staged = prepare.stage_content(raw, staging, fixed=earlier.features if earlier else None)
    shards = int(old["shards"])
    partition = len(old.get("partitions", [None]))
    log.info(
        "append: %d file(s) of %s to %s (partition %d, %d buckets)",
        len(raw.files),
        raw.format,
        parent,
        partition,
        shards,
    )
    # File indices from 1: an old row's input order (its position, < 2**40) precedes them.
    files = [
        {
            "path": p,
            "format": raw.format,
            "file_idx": i + 1,
            "cols": cols,
            "buckets": shards,
            "one_file": True,
        }
        for i, p in enumerate(raw.files)
    ]
    ingest = prepare._run(
        prepare.ingest_file, [{**f, "staging": str(staging)} for f in files], "ingest", remote_args
    )
    touched = sorted({b for done in ingest for b in done["buckets"]})
    fast, late, merged, new_ids = _split_day(
        parent, staging, tmp, touched, staged=staged, retire=retire, remote=remote_args
    )
    described = _grow_content(parent, earlier, staged, tmp)
    shared, layout = _write_buckets(
        parent, tmp, staging, fast=fast, late=late, name=f"p{partition:04d}", remote=remote_args
    )
    for f in sorted((staging / DataDir.REJECTED).glob("*.parquet")):
        f.rename(tmp / DataDir.REJECTED / f"p{partition:04d}-{f.name}")
    split = fast + merged
    shutil.rmtree(staging)
    manifest = _manifest(
        parent,
        raw,
        cols=cols,
        ignored=ignored,
        ingest=ingest,
        split=split,
        ids=new_ids,
        out=tmp,
        shared={**shared, "rewritten": len(late), "delta": len(fast)},
        seconds=time.time() - start,
        described=described,
        layout=layout,
    )
    (tmp / DataDir.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _split_day(
    parent: DataDir,
    staging: Path,
    tmp: Path,
    touched: list[int],
    *,
    staged: Any,
    retire: pa.Array | None,
    remote: dict | None,
) -> tuple[list[dict], list[int], list[dict], tuple[int, int]]:
    """The staged day split into deltas (in-order buckets) and merged buckets (a late row),
    the id maps extended beside. Returns (the deltas' results, the late buckets, the merges'
    results, (new users, new items))."""
    merge = {"staging": str(staging), "parent": parent.root, "test_fraction": parent.test_fraction}
    # The id maps need only the ids the day names: they are extended here while the tasks
    # split the day (reading the maps is what grows with the catalogue; the tasks, the day).
    with ThreadPoolExecutor(1) as pool:
        extended = pool.submit(_extend_id_maps, staging, tmp, parent, staged=staged, retire=retire)
        # In order (every row after its user's newest): a delta. A bucket with a late row: merged.
        groups = delta.groups(touched)
        tried = [
            r
            for done in prepare._run(
                delta.delta_buckets,
                [{**merge, "buckets": g, "group": k} for k, g in enumerate(groups)],
                "delta",
                remote,
            )
            for r in done["results"]
        ]
        fast = [r for r in tried if not r["late"]]
        late = [r["bucket"] for r in tried if r["late"]]
        merged = prepare._run(merge_bucket, [{**merge, "bucket": b} for b in late], "merge", remote)
        return fast, late, merged, extended.result()


def _write_buckets(
    parent: DataDir,
    tmp: Path,
    staging: Path,
    *,
    fast: list[dict],
    late: list[int],
    name: str,
    remote: dict | None,
) -> tuple[dict, dict]:
    """The version's bucket files: the late buckets' new base files, the in-order buckets'
    deltas, the rest linked. Returns (files linked/copied, the manifest's layout keys)."""
    for folder in (DataDir.TRAIN, DataDir.TEST, DataDir.REJECTED, DataDir.USER_STATS):
        (tmp / folder).mkdir()
    (tmp / DataDir.DELTA / name).mkdir(parents=True)
    where = {"staging": str(staging), "out": str(tmp)}
    mapped = prepare._run(
        prepare.map_bucket, [{**where, "bucket": b} for b in late], "map ids", remote
    )
    if fast:
        prepare._run(delta.map_deltas, [{**where, "partition": name}], "map ids (deltas)", remote)
    in_order = [r["bucket"] for r in fast]
    shared = _carry_over(parent, tmp, rewritten=late, shards=parent.buckets)
    deltas = {p: [b for b in bs if b not in late] for p, bs in parent.deltas.items()}
    deltas[name] = in_order
    counted = delta.bucket_rows(parent)
    for r in fast:
        counted[DataDir.TRAIN][r["bucket"]] += r["train_delta"]
        counted[DataDir.TEST][r["bucket"]] += r["test_delta"]
    for r in mapped:
        counted[DataDir.TRAIN][r["bucket"]] = r["train_rows"]
        counted[DataDir.TEST][r["bucket"]] = r["test_rows"]
    if not fast:
        shutil.rmtree(tmp / DataDir.DELTA / name)
    return shared, {"deltas": {p: bs for p, bs in deltas.items() if bs}, "bucket_rows": counted}


def _summary(manifest: dict, out: Path, replacing: bool) -> None:
    part = manifest["partitions"][-1]
    log.info(
        "append: %d rows in, %d kept, %d rejected, %d duplicate; %d new users, %d new items, "
        "%d retired; %d of %d buckets as deltas, %d rewritten; %d files linked, %d copied "
        "-> %s%s (%.1fs)",
        part["rows_in"],
        part["rows_kept"],
        part["rows_rejected"],
        part["rows_duplicate"],
        part["new_users"],
        part["new_items"],
        part["retired"],
        part["buckets_delta"],
        manifest["shards"],
        part["buckets_rewritten"],
        part["files_linked"],
        part["files_copied"],
        out,
        " (replaced the parent)" if replacing else "",
        manifest["seconds"],
    )


def merge_bucket(task: dict) -> dict:
    """One touched bucket: its old rows and the partition's, deduplicated and split again."""
    staging, bucket = Path(task["staging"]), int(task["bucket"])
    parent = DataDir(task["parent"])
    old_rows = pa.concat_tables(
        [parent.bucket(split, bucket, OLD_COLUMNS) for split in (DataDir.TRAIN, DataDir.TEST)]
    )
    staged_old = pa.table(
        {
            "user_id": old_rows["user_id"].cast(pa.string()),
            "item_id": old_rows["item_id"].cast(pa.string()),
            "timestamp": old_rows["timestamp"].cast(pa.int64()),
            "weight": old_rows["weight"].cast(pa.float64()),
            "seq": old_rows["position"].cast(pa.int64()),
        },
        schema=prepare.STAGED_SCHEMA,
    )
    new_rows = delta.staged_rows(staging, [bucket]).select(prepare.STAGED_SCHEMA.names)
    stats = prepare.write_split(
        pa.concat_tables([staged_old, new_rows]), staging, bucket, float(task["test_fraction"])
    )
    # The old rows were unique already: every duplicate dropped is a row of the partition.
    return {**stats, "old_rows": staged_old.num_rows, "new_rows": new_rows.num_rows}


def _retired_ids(cfg: PrepareConfig) -> pa.Array:
    """The item ids of the ``--retire`` file (its item column, as strings)."""
    path = cfg.retire
    if not os.path.isfile(path):
        raise UserError(f"{path}: --retire file does not exist")
    fmt = sources.detect_format(path, cfg.format)
    column = cfg.item_col
    names = prepare.file_columns(path, fmt)
    if column not in names:
        raise UserError(f"{path}: no item id column '{column}' (has: {', '.join(names[:10])})")
    if fmt == "parquet":
        values = pq.read_table(path, columns=[column])[column]
    else:
        import pyarrow.csv as pacsv

        values = pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ","),
            convert_options=pacsv.ConvertOptions(
                include_columns=[column], column_types={column: pa.string()}
            ),
        )[column]
    ids = prepare._as_id(values)
    return pc.unique(ids.filter(pc.is_valid(ids)).combine_chunks())


def _grow_content(
    parent: DataDir, earlier: content.Content | None, staged: Any, out: Path
) -> dict | None:
    """The new version's ``content/``: the parent's rows, the partition's content file over
    them (new items and updates of known ones); new items without content have none."""
    if earlier is None and staged is None:
        return None
    catalogue = pq.read_table(out / DataDir.ITEMS, columns=["item_id"])["item_id"]
    described = content.encode(
        staged,
        catalogue.combine_chunks(),
        out / DataDir.CONTENT,
        old=earlier,
        features=earlier.features if earlier else None,
    )
    before = parent.manifest.get("content") or content.counts(None)
    partition = {k: described[k] for k in ("rows_in", "rows_kept", "rows_rejected")}
    for key in ("rows_in", "rows_kept", "rows_rejected"):
        described[key] += before[key]
    described["rejected_by_reason"] = {
        r: before["rejected_by_reason"].get(r, 0) + described["rejected_by_reason"].get(r, 0)
        for r in sorted(set(before["rejected_by_reason"]) | set(described["rejected_by_reason"]))
    }
    described["partition"] = partition
    described["source"] = before.get("source", "")
    return described


def _extend_id_maps(
    staging: Path, out: Path, parent: DataDir, *, staged: Any, retire: pa.Array | None
) -> tuple[int, int]:
    """users.parquet and items.parquet: the parent's, then the partition's new ids (sorted),
    items with content among them (the parent's file, linked, when nothing changes). The ids the
    partition names (its staged rows', before deduplication: a row dropped as a duplicate names
    ids another row names) with their indices go to ``staging/ids/`` for its deltas. Returns
    (new users, new items)."""
    counts = []
    (staging / "ids").mkdir()
    for name, column in ((DataDir.USERS, "user_id"), (DataDir.ITEMS, "item_id")):
        index = f"{column[:4]}_idx"
        seen = prepare._sorted_unique(staging / prepare.DAY, "*.parquet", column)
        if name == DataDir.ITEMS and staged is not None:
            seen = pc.unique(pa.concat_arrays([seen, staged.ids()]))
            seen = pc.take(seen, pc.sort_indices(seen))
        # The map's ids probed against the day's (a hash table of the day's ids, not of the
        # catalogue: ten times faster at 800k items); the ids not found (sorted, as ``seen``
        # is) get the next indices in order.
        known = parent.read(name)  # once: a day with new ids writes it whole
        ids = known.select([index, column])
        named = ids.filter(pc.is_in(ids[column], value_set=seen))
        found = pc.take(named[index], pc.index_in(seen, value_set=named[column]))
        is_fresh = pc.is_null(found).to_numpy(zero_copy_only=False)
        fresh = seen.filter(pa.array(is_fresh))
        at = found.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int32)
        at[is_fresh] = np.arange(ids.num_rows, ids.num_rows + len(fresh), dtype=np.int32)
        added = pa.table({index: pa.array(at[is_fresh]), column: fresh})
        pq.write_table(pa.table({column: seen, index: pa.array(at)}), staging / "ids" / name)
        counts.append(len(fresh))
        # The day named no new id (and, for items, brought no content and retired none): the
        # parent's map is this version's, linked. A map without ``retired`` has none retired.
        unchanged = not len(fresh) and (
            name == DataDir.USERS or (staged is None and retire is None)
        )
        if unchanged:
            delta.link(Path(parent.path(name)), out / name)
            continue
        if name == DataDir.ITEMS:
            shown = prepare.shown_columns(staged) if staged is not None else None
            known, added = _item_columns(known, added, shown, retire)
        table = pa.concat_tables([known, added.select(known.column_names)])
        pq.write_table(table, out / name)
    return counts[0], counts[1]


def _item_columns(
    known: pa.Table, added: pa.Table, shown: pa.Table | None, retire: pa.Array | None
) -> tuple[pa.Table, pa.Table]:
    """The item map's content columns for new items (``shown``: the partition's content),
    and the ``retired`` flag."""
    if shown is not None:
        shown = shown.select([c for c in shown.column_names if c in known.column_names])
        added = added.join(shown, "item_id", join_type="left outer").sort_by("item_idx")
    if "retired" not in known.column_names:
        known = known.append_column("retired", pa.array(np.zeros(known.num_rows, bool)))
    for name in known.column_names:
        if name not in added.column_names:
            added = added.append_column(
                name, pa.nulls(added.num_rows, known.schema.field(name).type)
            )
    added = added.set_column(
        added.column_names.index("retired"), "retired", pa.array(np.zeros(added.num_rows, bool))
    )
    if retire is not None:
        unknown = retire.filter(
            pc.invert(
                pc.or_(
                    pc.is_in(retire, value_set=known["item_id"]),
                    pc.is_in(retire, value_set=added["item_id"]),
                )
            )
        )
        if len(unknown):
            raise UserError(
                f"--retire: {len(unknown)} item id(s) not in the catalogue, e.g. "
                f"{unknown[0].as_py()!r}"
            )
        for i, table in enumerate((known, added)):
            flag = pc.or_(table["retired"], pc.is_in(table["item_id"], value_set=retire))
            table = table.set_column(table.column_names.index("retired"), "retired", flag)
            known, added = (table, added) if i == 0 else (known, table)
    return known, added


def _carry_over(parent: DataDir, out: Path, *, rewritten: list[int], shards: int) -> dict[str, int]:
    """What the new version shares with the parent, hard-linked (copied where the filesystem
    cannot link): the base files, user stats and delta files of every bucket not rewritten
    (a partition's delta files whole), and the old quarantine."""
    done = {"linked": 0, "copied": 0}
    keep = sorted(set(range(shards)) - set(rewritten))
    root = Path(parent.root)
    files = [
        (f"{split}/part-{b:05d}.parquet") for split in (DataDir.TRAIN, DataDir.TEST) for b in keep
    ]
    # A bucket's user stats change only by the deltas' stats files (and a rewrite).
    files += [f"{DataDir.USER_STATS}/part-{b:05d}.parquet" for b in keep]
    for p, buckets in parent.deltas.items():
        if not set(buckets) & set(keep):
            continue
        if (root / DataDir.DELTA / p / layout.DELTA_ROWS).exists():
            kinds = (layout.DELTA_ROWS, layout.DELTA_CUTS, layout.DELTA_STATS)
            files += [f"{DataDir.DELTA}/{p}/{kind}" for kind in kinds]
        else:  # the layout before one file a partition
            files += [
                f"{DataDir.DELTA}/{p}/{name}"
                for b in buckets
                if b in keep
                for name in (layout.part_name(b), layout.cuts_name(b))
            ]
    files += [
        str(f.relative_to(root))
        for f in sorted(Path(parent.path(DataDir.REJECTED)).glob("*.parquet"))
    ]
    for name in files:
        if (root / name).exists():
            done[delta.link(root / name, out / name)] += 1
    return done


def _count_retired(items: Path) -> int:
    """How many items an id map retires (a map without the flag retires none)."""
    if "retired" not in pq.read_schema(items).names:
        return 0
    return int(pc.sum(pq.read_table(items, columns=["retired"])["retired"]).as_py() or 0)


def _manifest(
    parent: DataDir,
    raw: Any,
    *,
    cols: dict,
    ignored: list[str],
    ingest: list[dict],
    split: list[dict],
    ids: tuple[int, int],
    out: Path,
    shared: dict[str, int],
    seconds: float,
    described: dict | None = None,
    layout: dict,
) -> dict:
    """The parent's manifest with the partition added: totals over every partition, a record of
    this one, and the parent pinned by version."""
    old = parent.manifest
    rejected = {r: sum(s["rejected"][r] for s in ingest) for r in prepare.REASONS}
    new_rows = sum(s["new_rows"] for s in split)
    duplicates = sum(s["duplicates"] for s in split)
    part = {
        "source": raw.description,
        "files": raw.files if raw.user_files else [],
        "rows_in": sum(s["rows_in"] for s in ingest),
        "rows_kept": new_rows - duplicates,
        "rows_rejected": sum(rejected.values()),
        "rows_duplicate": duplicates,
        "rejected_by_reason": rejected,
        "max_timestamp": prepare.max_timestamp(split),
    }
    retired = _count_retired(out / DataDir.ITEMS)
    rows = {k: sum(v) for k, v in layout["bucket_rows"].items()}
    partitions = old.get("partitions") or [
        prepare.partition_entry(old, users=old["users"], items=old["items"])
    ]
    newest = [t for t in (old.get("max_timestamp"), part["max_timestamp"]) if t is not None]
    manifest = {
        **old,
        "columns": cols if raw.files else old["columns"],
        "ignored_columns": sorted(set(old.get("ignored_columns", [])) | set(ignored)),
        "rows_in": old["rows_in"] + part["rows_in"],
        "rows_kept": old["rows_kept"] + part["rows_kept"],
        "rows_rejected": old["rows_rejected"] + part["rows_rejected"],
        "rows_duplicate": old["rows_duplicate"] + part["rows_duplicate"],
        "rejected_by_reason": {
            r: old["rejected_by_reason"].get(r, 0) + rejected[r] for r in prepare.REASONS
        },
        "users": old["users"] + ids[0],
        "items": old["items"] + ids[1],
        "train_rows": rows[DataDir.TRAIN],
        "test_rows": rows[DataDir.TEST],
        "seconds": round(seconds, 2),
        "max_timestamp": max(newest) if newest else None,
        "retired_items": retired,
        **layout,
        "version_number": old.get("version_number", 1) + 1,
        "parent": {"path": parent.root, "version": parent.version},
        "lineage": parent.lineage,
        "partitions": [
            *partitions,
            {
                **prepare.partition_entry(part, users=ids[0], items=ids[1]),
                "retired": retired - int(old.get("retired_items", 0)),
                "buckets_rewritten": shared["rewritten"],
                "buckets_delta": shared["delta"],
                "files_linked": shared["linked"],
                "files_copied": shared["copied"],
                "seconds": round(seconds, 2),
            },
        ],
    }
    if described is not None:
        manifest["content"] = described
    if manifest["rows_kept"] != manifest["train_rows"] + manifest["test_rows"]:
        raise RuntimeError(f"append: kept rows and shard rows differ: {manifest}")
    prepare.reconcile(manifest)
    return prepare.seal(manifest)
