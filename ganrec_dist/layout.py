"""The on-disk layouts, DATA/ and RUN/, and their readers: the one module that spells their names.

``DataDir`` is what `prepare` writes (``manifest.json``, ``train/``, ``test/``, the id maps,
``rejected/``); ``RunDir`` what `train`, `index` and `evaluate` write (``config.yaml``,
``checkpoint/``, ``index/``, the history, ``eval.json``, the ablation's own RUN). Either may be a
local path or an object-store URI (:mod:`ganrec_dist.storage`).

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
import pyarrow.parquet as pq
import yaml

from ganrec_dist import storage
from ganrec_dist.errors import UserError
from ganrec_dist.interactions import Sequences, from_rows

CHECKPOINT_FORMAT = 2  # 1: pickled payload and a flat config.yaml (read no longer)


class DataDir:
    """A prepared DATA directory (see the README's *Data formats*)."""

    MANIFEST = "manifest.json"
    TRAIN = "train"
    TEST = "test"
    ITEMS = "items.parquet"
    USERS = "users.parquet"
    REJECTED = "rejected"

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

    @property
    def test_fraction(self) -> float:
        return float(self.manifest["split"]["test_fraction"])

    def read(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """One split (``train``/``test``) or file (``users.parquet``...), read into memory."""
        self.manifest  # noqa: B018  (a directory without its manifest is not read)
        fs, path = storage.resolve(self.path(name))
        return pq.read_table(path, columns=columns, filesystem=fs)

    def train_dataset(self, columns: list[str]) -> Any:
        """A Ray Data dataset over the train shards, streamed from wherever DATA lives."""
        import ray.data

        self.manifest  # noqa: B018
        fs, path = storage.resolve(self.path(self.TRAIN))
        return ray.data.read_parquet(path, filesystem=fs).select_columns(columns)

    def sequences(self, split: str = "train") -> Sequences:
        """One split's (user_idx, item_idx, position) rows as per-user CSR sequences."""
        table = self.read(split, ["user_idx", "item_idx", "position"])
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
    CHECKPOINT = "checkpoint"
    INDEX = "index"
    META = "meta.json"  # a part's marker, uploaded last
    MODEL = "model.pt"
    SEQUENCES = "sequences.npz"
    INDEX_FILE = "index.faiss"
    HISTORY_CSV = "history.csv"
    HISTORY_PNG = "history.png"
    EVAL = "eval.json"
    ABLATION = "ablation"
    RAY_RESULTS = "ray_results"
    FAULT_MARKER = ".fault-injected"
    PARTS = (CHECKPOINT, INDEX)

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
        return RunDir(self.remote(self.ABLATION))

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
        path = self.local / self.CONFIG
        return (yaml.safe_load(path.read_text()) or {}) if path.exists() else None

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

    def generator(self, payload: dict | None = None) -> Any:
        """G rebuilt from the checkpoint alone, in eval mode."""
        from ganrec_dist.models import Generator, ModelConfig

        payload = payload or self.payload()
        generator = Generator(ModelConfig(**payload["model_config"]))
        generator.load_state_dict(payload["generator"])
        return generator.eval()

    def catalogue(self) -> np.ndarray:
        """The catalogue embeddings ``[n_items, dim]`` the index is built from."""
        return self.generator().catalogue().detach().float().numpy()

    def sequences(self) -> tuple[Sequences, np.ndarray]:
        """Every known user's train items in time order, and the items' train popularity."""
        n_users, n_items = (self.meta()["model_config"][k] for k in ("n_users", "n_items"))
        with np.load(self.checkpoint / self.SEQUENCES, allow_pickle=False) as stored:
            seq = Sequences(stored["offsets"], stored["items"], n_users, n_items)
            return seq, stored["popularity"]

    def id_maps(self) -> tuple[pa.Table, pa.Table]:
        """(items.parquet, users.parquet) as the run was trained on them."""
        return (
            pq.read_table(self.checkpoint / DataDir.ITEMS),
            pq.read_table(self.checkpoint / DataDir.USERS),
        )

    def publish_checkpoint(self, source: Path) -> None:
        """Copy a finished checkpoint directory to RUN/checkpoint in one step."""
        tmp = self.local / f".{self.CHECKPOINT}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copytree(source, tmp)
        storage.replace_dir(tmp, self.checkpoint)
        if self.is_uri:
            storage.upload_tree(source, self.remote(self.CHECKPOINT), last=(self.META,))

    # --- other outputs ---

    def write_eval(self, result: dict) -> None:
        storage.write_atomic(self.local / self.EVAL, json.dumps(result, indent=2) + "\n")
        self.save(self.EVAL)


def write_checkpoint(
    directory: Path, *, payload: dict, data: DataDir, seq: Sequences, meta: dict
) -> None:
    """A self-describing checkpoint: the payload, the id maps and the users' sequences (serving
    rebuilds histories, seen items and the popularity fallback from them), and ``meta.json``
    with every file's checksum, so that a reader of an object store can tell a complete copy
    from one caught mid-upload."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    torch.save({**payload, "format": CHECKPOINT_FORMAT}, directory / RunDir.MODEL)
    for name in (DataDir.ITEMS, DataDir.USERS):
        storage.download_file(data.path(name), directory / name)
    np.savez(
        directory / RunDir.SEQUENCES,
        offsets=seq.offsets,
        items=seq.items,
        popularity=np.bincount(seq.items, minlength=seq.n_items).astype(np.int64),
    )
    files = {f.name: storage.file_digest(f) for f in sorted(directory.iterdir()) if f.is_file()}
    (directory / RunDir.META).write_text(
        json.dumps({**meta, "format": CHECKPOINT_FORMAT, "files": files}, indent=2) + "\n"
    )
