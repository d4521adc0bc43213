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

from ganrec_dist.core.errors import UserError

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


def replace_dir(source: Path, target: Path) -> None:
    """Put the finished local directory ``source`` at ``target``, replacing what was there.

    Where the kernel can swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``) a
    reader sees the old directory or the new one, never neither; elsewhere there is a moment
    between two renames. Every command publishes its directories through this one function.
    """
    source, target = Path(source), Path(target)
    if target.exists() and _exchange(source, target):
        shutil.rmtree(source, ignore_errors=True)  # it now holds the old contents
        return
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(old)
    source.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system cannot (then nothing happened)."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return done == 0


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file aside, then rename it into place: readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    tmp.replace(path)


def replace_tree(fs: pafs.FileSystem, source: str, target: str) -> None:
    """Move a finished directory over ``target`` (whose old contents go).

    Local: :func:`replace_dir`. Object store: the old objects are deleted and each new one is
    moved (a server-side copy, then a delete), since a prefix cannot be renamed.
    """
    if isinstance(fs, pafs.LocalFileSystem):
        replace_dir(Path(source), Path(target))
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


def local_copy(uri: str | Path) -> Path:
    """The local directory a command works in for ``uri``: the path itself, or a cache directory
    keyed by the URI."""
    if not is_uri(uri):
        return Path(uri).absolute()
    key = hashlib.sha256(str(uri).encode()).hexdigest()[:16]
    return cache_root() / "runs" / key


def fetch_dir(remote: str, local: Path, marker: str, attempts: int = 5) -> None:
    """Bring the local copy of the directory ``remote`` up to date.

    It is fetched only when the remote ``marker`` (uploaded last, with the checksums of the
    other files) differs from the local one, into a temporary directory that replaces the old
    copy in one step, so that readers sharing a node never see half a copy; a copy whose files
    do not match the checksums (caught mid-publish) is discarded and fetched again.
    """
    for _ in range(attempts):
        if not exists(join(remote, marker)):
            return
        want = read_text(join(remote, marker))
        mine = local / marker
        if mine.exists() and mine.read_text() == want:
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{local.name}-", dir=local.parent))
        download_tree(remote, tmp)
        if not _complete(tmp, marker):
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        replace_dir(tmp, local)
        return
    raise UserError(f"{remote}: keeps changing while it is fetched; try again")


def _complete(directory: Path, marker: str) -> bool:
    """True if every file listed in the marker's ``files`` has the listed checksum."""
    try:
        listed = json.loads((directory / marker).read_text()).get("files", {})
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
