"""DATA and RUN in an object store: the whole pipeline against a real S3 API over HTTP, and
prepare + Ray Data + a RUN part against a GCS API.

The servers are moto's S3 server and gcp-storage-emulator, separate processes on 127.0.0.1 (no
cloud is reachable from CI); pyarrow talks to them as to AWS S3 / MinIO and to GCS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import pytest

from ganrec_dist.core import storage
from ganrec_dist.core.config import (
    IndexCommandConfig,
    PrepareConfig,
    ScoreConfig,
    train_config,
)
from ganrec_dist.core.errors import UserError
from ganrec_dist.data.layout import DataDir, RunDir
from ganrec_dist.data.prepare import prepare
from ganrec_dist.inference.score import score
from ganrec_dist.retrieval.index import index_command
from ganrec_dist.retrieval.recommender import Recommender
from ganrec_dist.training.train import train

BUCKET = "ganrec-test"


def test_uri_helpers():
    assert storage.is_uri("s3://b/x") and storage.is_uri("gs://b/x")
    assert not storage.is_uri("/tmp/x") and not storage.is_uri("file:///tmp/x")
    assert storage.join("s3://b/runs/", "run", "checkpoint") == "s3://b/runs/run/checkpoint"
    assert storage.join("s3://b/r?region=eu", "index") == "s3://b/r/index?region=eu"
    assert storage.basename("s3://b/runs/exp1/") == "exp1"
    with pytest.raises(UserError, match="bucket"):
        storage.resolve("s3:///no-bucket")


def test_a_copy_caught_mid_upload_is_not_taken(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"new weights")
    (tmp_path / "meta.json").write_text(
        json.dumps({"files": {"model.pt": storage.file_digest(tmp_path / "model.pt")}})
    )
    assert storage._complete(tmp_path, "meta.json")
    (tmp_path / "model.pt").write_bytes(b"old weights")  # meta of one epoch, model of another
    assert not storage._complete(tmp_path, "meta.json")


def _bucket(scheme: str, endpoint_env: str, command: list[str]):
    """Start a local storage server on the port of ``$endpoint_env``, make the test bucket,
    yield its URI, stop the server by PID."""
    endpoint = os.environ[endpoint_env]
    port = endpoint.rsplit(":", 1)[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", *command, port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except urllib.error.HTTPError:  # it answers: up
                break
            except OSError:
                time.sleep(0.1)
        fs, _ = storage.resolve(f"{scheme}://{BUCKET}/x")
        fs.create_dir(BUCKET)
        yield f"{scheme}://{BUCKET}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def s3(ray_local):
    yield from _bucket("s3", "AWS_ENDPOINT_URL", ["moto.server", "-H", "127.0.0.1", "-p"])


@pytest.fixture(scope="module")
def gcs(ray_local):
    command = ["gcp_storage_emulator", "start", "--host=127.0.0.1", "--in-memory", "--port"]
    yield from _bucket("gs", "STORAGE_EMULATOR_HOST", command)


@pytest.mark.integration
def test_data_and_a_run_part_in_gcs(gcs, tmp_path):
    data = f"{gcs}/data"
    manifest = prepare(
        PrepareConfig(source="synthetic", out=data, users=100, items=80, interactions=3_000, seed=1)
    )
    assert DataDir(data).manifest["train_rows"] == manifest["train_rows"] > 0
    assert DataDir(data).train_dataset(["user_idx"]).count() == manifest["train_rows"]  # in place

    local = tmp_path / "run"
    (local / "index").mkdir(parents=True)
    (local / "index" / "index.faiss").write_bytes(b"x" * 1000)
    digest = storage.file_digest(local / "index" / "index.faiss")
    (local / "index" / "meta.json").write_text(json.dumps({"files": {"index.faiss": digest}}))
    storage.upload_tree(local / "index", f"{gcs}/run/index", last=("meta.json",))
    fetched = RunDir.open(f"{gcs}/run")
    assert fetched.local != local and (fetched.index / "index.faiss").read_bytes() == b"x" * 1000

    storage.remove_tree(data)
    assert not storage.exists(f"{data}/manifest.json")
    with pytest.raises(UserError, match="manifest"):
        DataDir(data).manifest  # noqa: B018


def _keys(uri: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, inner = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    return sorted(i.path[len(inner) + 1 :] for i in infos if i.type == pafs.FileType.File)


@pytest.mark.integration
def test_pipeline_with_data_and_run_in_s3(s3, tmp_path):
    data, run = f"{s3}/data", f"{s3}/runs/exp"
    manifest = prepare(
        PrepareConfig(
            source="synthetic", out=data, users=200, items=300, interactions=8_000, seed=4
        )
    )
    keys = _keys(data)
    assert "manifest.json" in keys and any(k.startswith("train/part-") for k in keys)
    assert DataDir(data).manifest["train_rows"] == manifest["train_rows"] > 0
    with pytest.raises(UserError, match="already exists"):
        prepare(PrepareConfig(source="synthetic", out=data, users=10, items=10, interactions=50))

    meta = train(
        train_config(
            data=data,
            out=run,
            epochs=2,
            refit=False,
            dim=16,
            hidden=32,
            history_len=10,
            noise_dim=4,
            cpus_per_worker=1,
            batch_size=64,
            max_steps_per_epoch=3,
        )
    )
    assert 0 < meta["metrics"]["rows"] <= 3 * 64  # each epoch was cut at 3 steps
    keys = _keys(run)
    for name in (
        "checkpoint/meta.json",
        "checkpoint/model.pt",
        "log/sequences.npz",
        "log/items.parquet",
        "log/meta.json",
        "config.yaml",
        "history.csv",
    ):
        assert name in keys, name
    assert "checkpoint/sequences.npz" not in keys  # the log is stored once, not per checkpoint
    assert any(k.startswith("ray_results/") and "checkpoint" in k for k in keys)  # Ray Train's own
    remote_meta = json.loads(storage.read_text(f"{run}/checkpoint/meta.json"))
    assert remote_meta["epoch"] == meta["epoch"] and "model.pt" in remote_meta["files"]

    index_command(IndexCommandConfig(run=run, kind="hnsw"))
    assert json.loads(storage.read_text(f"{run}/index/meta.json"))["kind"] == "hnsw"

    out = f"{s3}/recs.parquet"
    summary = score(ScoreConfig(data=data, run=run, out=out, k=5, batch_size=64))
    fs, inner = storage.resolve(out)
    recs = pq.read_table(inner, filesystem=fs).to_pandas()
    assert summary["users"] == recs["user_id"].nunique() > 0
    # The same answers as the run read directly (its cached copy, index included).
    rec = Recommender(run)
    assert rec.index_meta["kind"] == "hnsw" and rec.version.startswith("exp@")
    users = np.array([rec.user_index[u] for u in sorted(recs["user_id"].unique())[:20]])
    items, _ = rec.recommend_known(users, 5)
    for u, row in zip(users, items):
        got = recs[recs["user_id"] == rec.user_ids[u]].sort_values("rank")["item_id"].tolist()
        assert got == [rec.item_ids[i] for i in row if i >= 0]
    assert not any(k.startswith("recs.parquet.tmp") for k in _keys(s3))

    # A DATA prefix whose upload never finished (no manifest) is refused, not half-read.
    storage.remove_tree(f"{data}/manifest.json")
    with pytest.raises(UserError, match="manifest"):
        DataDir(data).manifest  # noqa: B018


def test_unreachable_store_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(UserError, match="cannot reach storage"):
        storage.exists("s3://nowhere/data/manifest.json")
