"""The on-disk layouts, DATA/ and RUN/, and their readers: the one module that spells their names.

``DataDir`` is what `prepare` writes (``manifest.json``, ``train/``, ``test/``, the id maps,
``rejected/``); ``RunDir`` what `train`, `index` and `evaluate` write (``config.yaml``,
``checkpoint/``, ``index/``, the history, ``eval.json``, the ablation's own RUN). Either may be a
local path or an object-store URI (:mod:`ganrec_dist.core.storage`).

Artifacts are data, not code: a checkpoint is read with ``torch.load(weights_only=True)``, which
refuses any pickled object other than tensors and plain containers, and everything else is JSON,
YAML (safe loader), Parquet, ``.npz`` without pickles, or a FAISS index file.
"""

from __future__ import annotations

import functools
import json
import pickle
import re
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from ganrec_dist.core import storage
from ganrec_dist.core.errors import UserError
from ganrec_dist.data.content import Content
from ganrec_dist.data.interactions import Sequences, from_rows

# 1: pickled payload and a flat config.yaml; 2: the log in every checkpoint (read no longer)
CHECKPOINT_FORMAT = 3


class DataDir:
    """A prepared DATA directory (see the README's *Data formats*)."""

    MANIFEST = "manifest.json"
    TRAIN = "train"
    TEST = "test"
    ITEMS = "items.parquet"
    USERS = "users.parquet"
    REJECTED = "rejected"
    CONTENT = "content"  # item content, encoded (``data.content``)
    DELTA = "delta"  # appended partitions' rows, merged by the readers (``data.delta``)
    USER_STATS = "user_stats"  # per bucket: each user's row count and newest timestamp

    def __init__(self, root: str | Path) -> None:
        self.root = storage.display(root)

    def __str__(self) -> str:
        return self.root

    def path(self, name: str) -> str:
        return storage.join(self.root, name)

    @functools.cached_property
    def manifest(self) -> dict:
        path = self.path(self.MANIFEST)
        if not storage.exists(path):
            raise UserError(
                f"{self.root}: not a prepared data directory (no manifest.json); run ganrec prepare"
            )
        return json.loads(storage.read_text(path))

    @staticmethod
    def version_of(manifest: dict) -> str:
        """A DATA version: the digest of its manifest without the timing (and the version)."""
        import hashlib

        body = {k: v for k, v in manifest.items() if k not in ("version", "seconds")}
        text = json.dumps(body, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def version(self) -> str:
        """This DATA's version (a manifest from before versions gets its digest)."""
        return self.manifest.get("version") or self.version_of(self.manifest)

    @property
    def lineage(self) -> list[str]:
        """This DATA's version and its ancestors', newest first: the DATAs whose ids it keeps."""
        return [self.version, *self.manifest.get("lineage", [])]

    @property
    def max_timestamp(self) -> int:
        """The newest timestamp in DATA (train and test); read from the files if the manifest
        is from before it was recorded."""
        found = self.manifest.get("max_timestamp")
        if found is not None:
            return int(found)
        newest = [
            pc.max(self.read(split, ["timestamp"])["timestamp"]).as_py()
            for split in (self.TRAIN, self.TEST)
        ]
        return int(max((t for t in newest if t is not None), default=0))

    def content(self) -> Content | None:
        """The items' encoded content (``data.content.Content``), or None without any. Read
        where DATA is a local directory (memory maps)."""
        section = self.manifest.get("content")
        if not section:
            return None
        if storage.is_uri(self.root):
            raise UserError(f"{self}: item content is read from a local DATA directory")
        return Content(self.path(self.CONTENT), section)

    def retired_items(self) -> np.ndarray:
        """Indices of the items retired from the catalogue (kept, never recommended)."""
        if not self.manifest.get("retired_items"):
            return np.zeros(0, np.int64)
        return retired_items(self.read(self.ITEMS))

    @property
    def test_fraction(self) -> float:
        return float(self.manifest["split"]["test_fraction"])

    @property
    def deltas(self) -> dict[str, list[int]]:
        """Appended partitions not compacted yet: ``{"p0002": [bucket, ...]}``, oldest first."""
        return self.manifest.get("deltas") or {}

    @property
    def buckets(self) -> int:
        return int(self.manifest["shards"])

    def read(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """One split (``train``/``test``) or file (``users.parquet``...), read into memory;
        a split with its deltas merged in (:meth:`bucket`)."""
        self.manifest  # noqa: B018  (a directory without its manifest is not read)
        if name in (self.TRAIN, self.TEST) and self.deltas:
            return pa.concat_tables([self.bucket(name, b, columns) for b in range(self.buckets)])
        fs, path = storage.resolve(self.path(name))
        return pq.read_table(path, columns=columns, filesystem=fs)

    def bucket(self, split: str, bucket: int, columns: list[str] | None = None) -> pa.Table:
        """One bucket's rows of a split, as a fresh prepare of the same log would have written
        them: its base file with every delta of the bucket merged in and relabelled."""
        return _read_bucket(self, split, bucket, columns)

    def split_files(self, split: str) -> tuple[pafs.FileSystem, list[str]]:
        """A split's base Parquet files (sorted) and the filesystem they are on. Without deltas
        they are the split; with deltas read :meth:`bucket` instead."""
        self.manifest  # noqa: B018
        fs, path = storage.resolve(self.path(split))
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return fs, sorted(i.path for i in infos if i.is_file and i.path.endswith(".parquet"))

    def train_shards(self) -> list[tuple[str, int]]:
        """The train split's files and their row counts (from the Parquet footers, or with
        deltas the manifest's per-bucket counts). Prepare writes each user's rows into one
        bucket, so a set of files is a set of whole users."""
        fs, files = self.split_files(self.TRAIN)
        counted = (self.manifest.get("bucket_rows") or {}).get(self.TRAIN)
        if self.deltas and counted:
            return [(f, int(counted[bucket_number(f)])) for f in files]
        return [(f, pq.ParquetFile(fs.open_input_file(f)).metadata.num_rows) for f in files]

    def train_dataset(self, columns: list[str], files: list[str] | None = None) -> Any:
        """A Ray Data dataset over the train shards (all, or ``files`` of :meth:`train_shards`),
        streamed from wherever DATA lives; with deltas, one merged bucket a block."""
        import ray.data

        self.manifest  # noqa: B018
        fs, path = storage.resolve(self.path(self.TRAIN))
        if not self.deltas:
            return ray.data.read_parquet(files or path, filesystem=fs).select_columns(columns)
        chosen = files or self.split_files(self.TRAIN)[1]
        root = self.root

        def merged(batch: dict) -> pa.Table:
            return pa.concat_tables(
                [DataDir(root).bucket(DataDir.TRAIN, int(b), columns) for b in batch["bucket"]]
            )

        buckets = [{"bucket": bucket_number(f)} for f in chosen]
        return ray.data.from_items(buckets, override_num_blocks=max(1, len(buckets))).map_batches(
            merged, batch_size=1, batch_format="numpy"
        )

    def train_tables(self, columns: list[str], files: list[str]) -> list[pa.Table]:
        """The rows of ``files`` (of :meth:`train_shards`), a table each, read in this process:
        the same rows, in the same order, as :meth:`train_dataset` streams."""
        if self.deltas:
            return [self.bucket(self.TRAIN, bucket_number(f), columns) for f in files]
        fs, _ = storage.resolve(self.path(self.TRAIN))
        return [pq.read_table(f, columns=columns, filesystem=fs) for f in files]

    def sequences(self, split: str = "train", files: list[str] | None = None) -> Sequences:
        """One split's (user_idx, item_idx, position) rows as per-user CSR sequences: of every
        user, or of the users in ``files`` (train shards; the other users have none)."""
        columns = ["user_idx", "item_idx", "position"]
        if files is None:
            table = self.read(split, columns)
        elif self.deltas:
            table = pa.concat_tables([self.bucket(split, bucket_number(f), columns) for f in files])
        else:
            fs, _ = storage.resolve(self.path(split))
            table = pq.read_table(files, columns=columns, filesystem=fs)
        return from_rows(
            table["user_idx"].to_numpy(),
            table["item_idx"].to_numpy(),
            table["position"].to_numpy(),
            n_users=self.manifest["users"],
            n_items=self.manifest["items"],
        )

    def user_ids(self) -> dict[str, int]:
        """``{user_id: user_idx}``."""
        users = self.read(self.USERS)
        return dict(zip(users["user_id"].to_pylist(), users["user_idx"].to_pylist()))


def part_name(bucket: int) -> str:
    return f"part-{bucket:05d}.parquet"


def cuts_name(bucket: int) -> str:
    return f"cuts-{bucket:05d}.parquet"


# A partition's delta: one file of each kind, a row group (or more) per bucket, in bucket order,
# with a ``bucket`` column; the manifest's ``deltas`` names the buckets a reader may take from it
# (a bucket a later late row rewrote is dropped there, its row group left unread).
DELTA_ROWS = "rows.parquet"  # the output columns
DELTA_CUTS = "cuts.parquet"  # user_idx, cut
DELTA_STATS = "stats.parquet"  # user_id, user_idx, rows, newest: the touched users' stats after it
_PER_BUCKET = {DELTA_ROWS: part_name, DELTA_CUTS: cuts_name}  # the layout before one file


def delta_file(data: Any, partition: str, kind: str) -> pq.ParquetFile | None:
    """A partition's delta file of ``kind`` (``DELTA_ROWS``...), or None where it has none."""
    fs, path = storage.resolve(data.path(f"{DataDir.DELTA}/{partition}/{kind}"))
    if fs.get_file_info(path).type.name == "NotFound":
        return None
    return pq.ParquetFile(fs.open_input_file(path))


def bucket_groups(file: pq.ParquetFile, bucket: int, name: str) -> list[int]:
    """The row groups of a delta file (``name``, for the error) that may hold ``bucket``, from the
    ``bucket`` column's statistics."""
    meta, at = file.metadata, file.schema_arrow.get_field_index("bucket")
    found = []
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(at).statistics if at >= 0 else None
        if stats is None or not stats.has_min_max:
            raise UserError(f"{name}: a delta file without bucket statistics")
        if stats.min <= bucket <= stats.max:
            found.append(g)
    return found


def read_delta(
    data: Any, partition: str, kind: str, *, bucket: int, columns: list[str] | None
) -> pa.Table | None:
    """``bucket``'s rows of a partition's delta file of ``kind``; None where there is none (a
    partition written before the stats deltas has no ``DELTA_STATS``)."""
    file = delta_file(data, partition, kind)
    if file is None:
        if kind not in _PER_BUCKET:
            return None
        return read_optional(
            data, f"{DataDir.DELTA}/{partition}/{_PER_BUCKET[kind](bucket)}", columns
        )
    name = data.path(f"{DataDir.DELTA}/{partition}/{kind}")
    read = None if columns is None else list(dict.fromkeys([*columns, "bucket"]))
    table = file.read_row_groups(bucket_groups(file, bucket, name), columns=read)
    table = table.filter(pc.equal(table["bucket"], bucket))
    return table if columns is not None and "bucket" in columns else table.drop_columns(["bucket"])


def read_optional(data: Any, name: str, columns: list[str] | None) -> pa.Table | None:
    fs, path = storage.resolve(data.path(name))
    if fs.get_file_info(path).type.name == "NotFound":
        return None
    return pq.read_table(path, columns=columns, filesystem=fs)


def _read_bucket(data: Any, split: str, bucket: int, columns: list[str] | None) -> pa.Table:
    """``split``'s rows of ``bucket``, deltas merged and relabelled (see the module)."""
    wanted = list(columns) if columns else None
    parts = [p for p, buckets in data.deltas.items() if bucket in buckets]
    if not parts:
        found = read_optional(data, f"{split}/{part_name(bucket)}", wanted)
        return found if found is not None else _empty(data, wanted)
    need = list(dict.fromkeys([*wanted, "user_id", "user_idx", "position"])) if wanted else None
    tables, labels = [], []
    for name, label in ((DataDir.TRAIN, False), (DataDir.TEST, True)):
        table = read_optional(data, f"{name}/{part_name(bucket)}", need)
        if table is not None:
            tables.append(table)
            labels.append(np.full(table.num_rows, label))
    if need is None and tables:
        need = tables[0].column_names
    users, cuts = [], []
    for p in parts:
        rows = read_delta(data, p, DELTA_ROWS, bucket=bucket, columns=need)
        cut = read_delta(data, p, DELTA_CUTS, bucket=bucket, columns=["user_idx", "cut"])
        if rows is None or cut is None:
            raise UserError(f"{data}: delta {p} of bucket {bucket} is missing a file")
        tables.append(rows.cast(tables[0].schema) if tables else rows)
        labels.append(np.zeros(rows.num_rows, bool))  # every delta row's user has a cut
        users.append(cut["user_idx"].to_numpy())
        cuts.append(cut["cut"].to_numpy())
    table = pa.concat_tables(tables)
    is_test = np.concatenate(labels)
    # The newest cut of each user wins; a user's cut only grows with their rows (and a bucket
    # rewritten by a late row drops its older deltas), so the newest is the largest.
    u, c = np.concatenate(users).astype(np.int64), np.concatenate(cuts).astype(np.int64)
    lookup = np.full(
        int(max(u.max(initial=-1), table["user_idx"].to_numpy().max(initial=-1))) + 1, -1
    )
    np.maximum.at(lookup, u, c)
    row_cut = lookup[table["user_idx"].to_numpy()]
    position = table["position"].to_numpy()
    is_test = np.where(row_cut >= 0, position >= row_cut, is_test)
    keep = is_test if split == DataDir.TEST else ~is_test
    table = table.filter(pa.array(keep)).sort_by(
        [("user_id", "ascending"), ("position", "ascending")]
    )
    return table.select(wanted) if wanted else table


def _empty(data: Any, columns: list[str] | None) -> pa.Table:
    """A split's columns with no rows (the schema of bucket 0's base train file)."""
    found = read_optional(data, f"{DataDir.TRAIN}/{part_name(0)}", columns)
    if found is None:
        raise UserError(f"{data}: no train file for bucket 0")
    return found.slice(0, 0)


def bucket_number(path: str) -> int:
    """The bucket of a split's file, ``.../part-00003.parquet`` -> 3."""
    return int(Path(path).name.split("-")[1].split(".")[0])


def retired_items(item_table: pa.Table) -> np.ndarray:
    """The retired items' indices in an id map (items.parquet; one without the flag has none)."""
    if "retired" not in item_table.column_names:
        return np.zeros(0, np.int64)
    flags = item_table["retired"].to_numpy(zero_copy_only=False)
    return np.flatnonzero(flags.astype(bool)).astype(np.int64)


def load_payload(path: Path) -> dict:
    """A checkpoint's payload, loaded without running code; one-line refusals otherwise."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        called = re.search(r"GLOBAL (\S+)", str(exc))
        if called:
            raise UserError(
                f"{path}: refused: loading it would call {called.group(1)} (a checkpoint holds "
                "tensors and plain data only)"
            ) from None
        raise UserError(f"{path}: not a readable checkpoint (not a torch file)") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0]})") from None
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != CHECKPOINT_FORMAT:
        raise UserError(
            f"{path}: checkpoint format {found} is from an earlier ganrec-dist; this version reads "
            f"format {CHECKPOINT_FORMAT}: train the run again"
        )
    return payload


class RunDir:
    """A RUN directory. Commands work in ``local``: the path itself, or for a URI a local cache
    copy, fetched by :meth:`open` and uploaded part by part by :meth:`save`."""

    CONFIG = "config.yaml"
    LOG = "log"
    CHECKPOINT = "checkpoint"
    INDEX = "index"
    META = "meta.json"  # a part's marker, uploaded last
    MODEL = "model.pt"
    SEQUENCES = "sequences.npz"
    INDEX_FILE = "index.faiss"
    HISTORY_CSV = "history.csv"
    HISTORY_PNG = "history.png"
    EVAL = "eval.json"
    GATE = "gate.json"  # the daily update's decision
    FRONTIER_JSON = "frontier.json"  # evaluate's diversity section
    FRONTIER_PNG = "frontier.png"
    COLD_START = "cold_start"  # evaluate's cold-start DATA copy and models
    COLD_ITEMS = "cold_items"  # evaluate's cold-item DATA copy and model
    ABLATION = "ablation"
    RAY_RESULTS = "ray_results"
    FAULT_MARKER = ".fault-injected"
    PARTS = (LOG, CHECKPOINT, INDEX)

    def __init__(self, uri: str | Path) -> None:
        self.uri = str(uri) if storage.is_uri(uri) else storage.display(uri)
        self.local = storage.local_copy(uri)

    @classmethod
    def open(cls, uri: str | Path) -> RunDir:
        """The run, its URI parts (config.yaml, checkpoint, index) fetched if they changed."""
        run = cls(uri)
        if storage.is_uri(uri):
            run.local.mkdir(parents=True, exist_ok=True)
            if storage.exists(run.remote(cls.CONFIG)):
                storage.download_file(run.remote(cls.CONFIG), run.local / cls.CONFIG)
            for part in cls.PARTS:
                storage.fetch_dir(run.remote(part), run.local / part, cls.META)
        return run

    @property
    def is_uri(self) -> bool:
        return storage.is_uri(self.uri)

    @property
    def name(self) -> str:
        """The run's name: the basename of RUN (of the URI, not of its cache directory)."""
        return storage.basename(self.uri) if self.is_uri else self.local.name

    def remote(self, name: str) -> str:
        return storage.join(self.uri, name)

    def ablation(self) -> RunDir:
        return self.companion(self.ABLATION)

    def companion(self, name: str) -> RunDir:
        """A model trained for this run's tables under RUN/<name> (the ablation, SASRec, the
        cold-start models)."""
        return RunDir(self.remote(name))

    @property
    def checkpoint(self) -> Path:
        return self.local / self.CHECKPOINT

    @property
    def index(self) -> Path:
        return self.local / self.INDEX

    def save(self, *names: str) -> None:
        """Upload files or parts of the local copy to RUN when it is a URI (markers last)."""
        if not self.is_uri:
            return
        for name in names:
            path = self.local / name
            if path.is_dir():
                storage.upload_tree(path, self.remote(name), last=(self.META,))
            elif path.exists():
                storage.upload_file(path, self.remote(name))

    def remove(self) -> None:
        """Delete the run, remotely and its local copy."""
        if self.is_uri:
            storage.remove_tree(self.uri)
        shutil.rmtree(self.local, ignore_errors=True)

    # --- config.yaml ---

    def stored_config(self) -> dict | None:
        """RUN/config.yaml (None before a run starts), refused with one line if an earlier
        version wrote it."""
        path = self.local / self.CONFIG
        stored = (yaml.safe_load(path.read_text()) or {}) if path.exists() else None
        if stored is not None and not isinstance(stored.get("execution"), dict):
            raise UserError(
                f"{self.uri}: written by an earlier ganrec-dist (flat config.yaml; this version "
                f"reads checkpoint format {CHECKPOINT_FORMAT}): train into a new --out, or delete it"
            )
        return stored

    def write_config(self, values: dict) -> None:
        storage.write_atomic(self.local / self.CONFIG, yaml.safe_dump(values, sort_keys=False))
        self.save(self.CONFIG)

    # --- checkpoint/ ---

    def has_checkpoint(self) -> bool:
        return (self.checkpoint / self.META).exists()

    def started(self) -> bool:
        """A checkpoint was published, or Ray Train has stored one."""
        return (self.checkpoint / self.MODEL).exists() or any(
            (self.local / self.RAY_RESULTS).glob("*/*")
        )

    def meta(self) -> dict:
        if not self.has_checkpoint():
            raise UserError(f"{self.uri}: no trained checkpoint; run ganrec train --out {self.uri}")
        return json.loads((self.checkpoint / self.META).read_text())

    def payload(self) -> dict:
        self.meta()
        return load_payload(self.checkpoint / self.MODEL)

    def published_payload(self) -> dict | None:
        path = self.checkpoint / self.MODEL
        return load_payload(path) if path.exists() else None

    def version(self) -> str:
        meta = self.meta()
        return f"{self.name}@{meta['phase']}-epoch{meta['epoch']}"

    # --- log/: what serving needs of the training log, written once per run ---

    @property
    def log(self) -> Path:
        return self.local / self.LOG

    def has_log(self, data: DataDir) -> bool:
        """RUN/log/ is complete and was written from ``data`` as it is now."""
        meta = self.log / self.META
        return meta.exists() and json.loads(meta.read_text()).get("manifest") == data.manifest

    def write_log(self, data: DataDir, parent: RunDir | None = None) -> None:
        """The id maps and every user's train items (serving rebuilds histories, seen items and
        the popularity fallback from them), once per run rather than in every checkpoint; its
        ``meta.json`` (written last) lists each file's checksum. With ``parent`` (add-items:
        ``data`` is the parent's DATA plus items nobody has touched), the sequences are the
        parent's log's, not re-read from DATA's shards."""
        tmp = self.local / f".{self.LOG}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        for name in (DataDir.ITEMS, DataDir.USERS):
            storage.download_file(data.path(name), tmp / name)
        seq = data.sequences() if parent is None else parent.sequences()[0]
        n_items = seq.n_items if parent is None else int(data.manifest["items"])
        np.savez(
            tmp / self.SEQUENCES,
            offsets=seq.offsets,
            items=seq.items,
            popularity=np.bincount(seq.items, minlength=n_items).astype(np.int64),
        )
        files = {f.name: storage.file_digest(f) for f in sorted(tmp.iterdir())}
        meta = {"manifest": data.manifest, "n_users": seq.n_users, "n_items": n_items}
        (tmp / self.META).write_text(json.dumps({**meta, "files": files}, indent=2) + "\n")
        storage.replace_dir(tmp, self.log)
        self.save(self.LOG)

    def _log_meta(self) -> dict:
        path = self.log / self.META
        if not path.exists():
            raise UserError(
                f"{self.uri}: no {self.LOG}/ (the training log); run ganrec train again"
            )
        return json.loads(path.read_text())

    def sequences(self) -> tuple[Sequences, np.ndarray]:
        """Every known user's train items in time order, and the items' train popularity."""
        meta = self._log_meta()
        with np.load(self.log / self.SEQUENCES, allow_pickle=False) as stored:
            seq = Sequences(stored["offsets"], stored["items"], meta["n_users"], meta["n_items"])
            return seq, stored["popularity"]

    def id_maps(self) -> tuple[pa.Table, pa.Table]:
        """(items.parquet, users.parquet) as the run was trained on them."""
        self._log_meta()
        return pq.read_table(self.log / DataDir.ITEMS), pq.read_table(self.log / DataDir.USERS)

    def publish_checkpoint(self, source: Path) -> None:
        """Copy a finished checkpoint directory to RUN/checkpoint in one step."""
        tmp = self.local / f".{self.CHECKPOINT}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copytree(source, tmp)
        storage.replace_dir(tmp, self.checkpoint)
        if self.is_uri:
            storage.upload_tree(source, self.remote(self.CHECKPOINT), last=(self.META,))

    # --- other outputs ---

    def write_eval(self, result: dict) -> None:
        self.write_file(self.EVAL, json.dumps(result, indent=2) + "\n")

    def read_eval(self) -> dict:
        """The run's eval.json (``evaluate``'s tables); one line if it has none."""
        path = self.local / self.EVAL
        if not path.exists():
            raise UserError(f"{self.uri}: no {self.EVAL}; run ganrec evaluate on it first")
        return json.loads(path.read_text())

    def write_file(self, name: str, text: str | bytes) -> None:
        """A small file of the run's (eval.json, gate.json, frontier.png), written aside then
        renamed."""
        storage.write_atomic(self.local / name, text)
        self.save(name)


class SweepDir:
    """A sweep's OUT: one RUN directory a trial under ``runs/``, the summary ``sweep.json``."""

    RUNS = "runs"
    SUMMARY = "sweep.json"

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, label: str) -> Path:
        return self.root / self.RUNS / label

    @property
    def summary(self) -> Path:
        return self.root / self.SUMMARY


def write_checkpoint(directory: Path, *, payload: dict, meta: dict) -> None:
    """A checkpoint: the payload (G, D, optimisers, loop state) and ``meta.json`` with every
    file's checksum, so that a reader of an object store can tell a complete copy from one
    caught mid-upload. The log it was trained on is RUN/log/, written once per run."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    torch.save({**payload, "format": CHECKPOINT_FORMAT}, directory / RunDir.MODEL)
    files = {f.name: storage.file_digest(f) for f in sorted(directory.iterdir()) if f.is_file()}
    (directory / RunDir.META).write_text(
        json.dumps({**meta, "format": CHECKPOINT_FORMAT, "files": files}, indent=2) + "\n"
    )
