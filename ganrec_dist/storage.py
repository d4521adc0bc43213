"""Where DATA and RUN live: a local path (one machine or a shared filesystem) or an object-store
URI (``s3://bucket/prefix``, ``gs://bucket/prefix``), both through pyarrow's filesystem layer.

Object stores have no atomic rename, so a directory is published by uploading every file and
then its *marker* (``manifest.json`` for DATA, ``meta.json`` for a checkpoint) last; readers
refuse a directory without its marker. Large Parquet is read in place (Ray Data and pyarrow stream
it from the store); a run's small artefacts (checkpoint, index) are fetched once per node into a
local cache keyed by the URI and re-fetched when the remote marker changes.

S3-compatible stores other than AWS (MinIO, Ceph, ...) are reached by setting
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (pyarrow itself does not read them), a GCS emulator
by ``STORAGE_EMULATOR_HOST``; credentials come from the usual AWS / Google environment variables and
files on every node.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from ganrec_dist.errors import UserError

SCHEMES = ("s3", "gs", "gcs")


def is_uri(path: str | Path) -> bool:
    """True for an object-store URI (``s3://``, ``gs://``); ``file://`` and plain paths are local."""
    return isinstance(path, str) and urlparse(path).scheme in SCHEMES


def resolve(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an object-store URI."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), str(Path(path).absolute())
    parsed = urlparse(str(path))
    if not parsed.netloc:
        raise UserError(f"{path}: an object-store URI needs a bucket (s3://BUCKET/prefix)")
    inner = (parsed.netloc + parsed.path).rstrip("/")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if parsed.scheme == "s3" and endpoint and not parsed.query:
        # pyarrow ignores these variables; a URI's own ?endpoint_override= wins (from_uri below).
        fs = pafs.S3FileSystem(
            endpoint_override=endpoint,
            region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            allow_bucket_creation=True,
        )
        return fs, inner
    if parsed.scheme in ("gs", "gcs") and os.environ.get("STORAGE_EMULATOR_HOST"):
        # The Google client libraries' convention for an emulator (fake-gcs-server, ...).
        host = urlparse(os.environ["STORAGE_EMULATOR_HOST"])
        fs = pafs.GcsFileSystem(
            anonymous=True,
            endpoint_override=host.netloc or host.path,
            scheme=host.scheme or "http",
            project_id=os.environ.get("GOOGLE_CLOUD_PROJECT", "local"),
        )
        return fs, inner
    try:
        fs, _ = pafs.FileSystem.from_uri(str(path))
    except Exception as exc:  # pyarrow raises plain ArrowInvalid / OSError for bad URIs
        raise UserError(f"{path}: cannot open this storage URI ({exc})") from None
    return fs, inner


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` for a path or a URI (a URI keeps its scheme and any query)."""
    if not is_uri(base):
        return str(Path(base).joinpath(*parts))
    head, _, query = str(base).partition("?")
    joined = "/".join([head.rstrip("/"), *parts])
    return f"{joined}?{query}" if query else joined


def display(path: str | Path) -> str:
    return str(path) if is_uri(path) else str(Path(path).absolute())


def exists(path: str | Path) -> bool:
    fs, inner = resolve(path)
    try:
        return fs.get_file_info(inner).type != pafs.FileType.NotFound
    except OSError as exc:
        raise UserError(f"{path}: cannot reach storage ({_first_line(exc)})") from None


def read_text(path: str | Path) -> str:
    fs, inner = resolve(path)
    with fs.open_input_stream(inner) as handle:
        return handle.read().decode()


def remove_tree(path: str | Path) -> None:
    fs, inner = resolve(path)
    remove_tree_in(fs, inner)


def remove_tree_in(fs: pafs.FileSystem, inner: str) -> None:
    """Delete a file or a directory tree. Object by object: stores differ on directory markers."""
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.File:
        fs.delete_file(inner)
    elif info.type == pafs.FileType.Directory:
        for child in fs.get_file_info(pafs.FileSelector(inner, recursive=True)):
            if child.type == pafs.FileType.File:
                fs.delete_file(child.path)
        try:
            fs.delete_dir(inner)
        except FileNotFoundError:  # an object store with no marker object left to delete
            pass


def replace_tree(fs: pafs.FileSystem, source: str, target: str) -> None:
    """Move a finished directory over ``target`` (whose old contents go).

    Local: two renames. Object store: the old objects are deleted and each new one is moved
    (a server-side copy, then a delete), since a prefix cannot be renamed.
    """
    if isinstance(fs, pafs.LocalFileSystem):
        old = f"{target}.old-{uuid.uuid4().hex[:8]}"
        exists_before = fs.get_file_info(target).type != pafs.FileType.NotFound
        if exists_before:
            fs.move(target, old)
        fs.move(source, target)
        if exists_before:
            remove_tree_in(fs, old)
        return
    remove_tree_in(fs, target)
    for info in fs.get_file_info(pafs.FileSelector(source, recursive=True)):
        if info.type == pafs.FileType.File:
            dest = f"{target}/{info.path[len(source) :].lstrip('/')}"
            fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            fs.move(info.path, dest)
    remove_tree_in(fs, source)


def upload_tree(local: Path, target: str, last: tuple[str, ...] = ()) -> None:
    """Copy every file under ``local`` to ``target``; the names in ``last`` go last (markers)."""
    fs, inner = resolve(target)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    ordered = [p for p in files if p.name not in last] + [p for p in files if p.name in last]
    local_fs = pafs.LocalFileSystem()
    for p in ordered:
        dest = f"{inner}/{p.relative_to(local).as_posix()}"
        fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(p), dest, source_filesystem=local_fs, destination_filesystem=fs)


def download_tree(source: str, local: Path) -> None:
    """Copy everything under ``source`` into ``local`` (created)."""
    fs, inner = resolve(source)
    local.mkdir(parents=True, exist_ok=True)
    selector = pafs.FileSelector(inner, recursive=True, allow_not_found=True)
    local_fs = pafs.LocalFileSystem()
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        dest = local / info.path[len(inner) :].lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(info.path, str(dest), source_filesystem=fs, destination_filesystem=local_fs)


def cache_root() -> Path:
    return Path(os.environ.get("GANREC_CACHE", Path.home() / ".cache" / "ganrec"))


def workdir(run: str | Path) -> Path:
    """The local directory a command works in for RUN: RUN itself, or for a URI its cache copy."""
    if not is_uri(run):
        return Path(run).absolute()
    key = hashlib.sha256(str(run).encode()).hexdigest()[:16]
    return cache_root() / "runs" / key


RUN_DIRS = ("checkpoint", "index")  # published with meta.json last
RUN_FILES = ("config.yaml",)  # the one top-level file a reader needs (evaluate's ablation)


def open_run(run: str | Path) -> Path:
    """The local directory to read RUN from: RUN itself, or for a URI its up-to-date cache copy.

    A part (``checkpoint``, ``index``) is fetched only when its remote ``meta.json`` differs from
    the cached one, into a temporary directory renamed into place, so that actors sharing a node
    never see half a copy; a copy whose files do not match the checksums its ``meta.json`` lists
    (caught mid-publish) is discarded and fetched again.
    """
    local = workdir(run)
    if not is_uri(run):
        return local
    local.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if exists(join(run, name)):
            download_file(join(run, name), local / name)
    for part in RUN_DIRS:
        _fetch_dir(run, part, local)
    return local


def _fetch_dir(run: str | Path, part: str, local: Path, attempts: int = 5) -> None:
    remote_marker = join(run, part, "meta.json")
    for _ in range(attempts):
        if not exists(remote_marker):
            return
        want = read_text(remote_marker)
        mine = local / part / "meta.json"
        if mine.exists() and mine.read_text() == want:
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{part}-", dir=local))
        download_tree(join(run, part), tmp)
        if not _complete(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        old = local / f".{part}.old-{uuid.uuid4().hex[:8]}"
        if (local / part).exists():
            (local / part).rename(old)
        tmp.rename(local / part)
        shutil.rmtree(old, ignore_errors=True)
        return
    raise UserError(f"{join(run, part)}: keeps changing while it is fetched; try again")


def _complete(directory: Path) -> bool:
    """True if every file listed in ``meta.json``'s ``files`` has the listed checksum."""
    try:
        listed = json.loads((directory / "meta.json").read_text()).get("files", {})
    except (OSError, ValueError):
        return False
    return all(
        (directory / name).exists() and file_digest(directory / name) == digest
        for name, digest in listed.items()
    )


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


def save_run(local: Path, run: str | Path, names: tuple[str, ...]) -> None:
    """Upload ``names`` (files or directories of the local run) to RUN when it is a URI.

    A directory's ``meta.json`` goes last, so readers never take a half-uploaded part.
    """
    if not is_uri(run):
        return
    for name in names:
        path = local / name
        if path.is_dir():
            upload_tree(path, join(run, name), last=("meta.json",))
        elif path.exists():
            upload_file(path, join(run, name))


def upload_file(path: Path, target: str) -> None:
    fs, inner = resolve(target)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    pafs.copy_files(
        str(path), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
    )


def download_file(source: str | Path, path: Path) -> None:
    """Copy one file from a path or URI to a local path (written aside, then renamed)."""
    fs, inner = resolve(source)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        inner, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
    )
    tmp.replace(path)


def with_suffix(path: str, suffix: str) -> str:
    """``path`` + ``suffix`` on its last component (a URI keeps its query)."""
    head, _, query = path.partition("?")
    return f"{head.rstrip('/')}{suffix}" + (f"?{query}" if query else "")


def basename(path: str | Path) -> str:
    return str(path).split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
