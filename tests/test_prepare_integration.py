"""`ganrec prepare` end to end on a local Ray: real files in, DATA/ out."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ganrec_dist.core.config import PrepareConfig
from ganrec_dist.core.errors import UserError
from ganrec_dist.data.layout import DataDir
from ganrec_dist.data.prepare import prepare
from ganrec_dist.operations.cli import main

pytestmark = pytest.mark.integration


def _reconciles(m: dict) -> bool:
    return m["rows_in"] == m["rows_kept"] + m["rows_rejected"] + m["rows_duplicate"]


def test_movielens_small_counts_and_layout(movielens_data):
    out, m = movielens_data
    assert (m["rows_in"], m["users"], m["items"]) == (100_004, 671, 9_066)
    assert _reconciles(m) and m["rows_rejected"] == 0
    assert m["train_rows"] + m["test_rows"] == m["rows_kept"]
    assert json.loads((out / "manifest.json").read_text()) == m
    train, test = pq.read_table(out / "train"), pq.read_table(out / "test")
    assert train.column_names == [
        "user_id",
        "item_id",
        "timestamp",
        "weight",
        "user_idx",
        "item_idx",
        "position",
    ]
    # position numbers each user's interactions in time order, test continuing after train
    first = train.filter(pa.compute.equal(train["user_idx"], 0))["position"].to_pylist()
    assert first == list(range(len(first)))
    assert min(test.filter(pa.compute.equal(test["user_idx"], 0))["position"].to_pylist()) == len(
        first
    )
    assert train.schema.field("user_idx").type == pa.int32()
    assert len(list((out / "train").glob("*.parquet"))) == m["shards"] >= 2
    # The split rule, user by user: ceil(0.2 n) of the latest interactions go to test.
    n_train = train.group_by("user_id").aggregate([("item_id", "count")]).to_pydict()
    n_test = dict(
        zip(*test.group_by("user_id").aggregate([("item_id", "count")]).to_pydict().values())
    )
    for user, k in zip(n_train["user_id"], n_train["item_id_count"]):
        total = k + n_test.get(user, 0)
        assert n_test.get(user, 0) == (math.ceil(total / 5) if total > 1 else 0)
    latest_train = train.group_by("user_id").aggregate([("timestamp", "max")]).to_pydict()
    first_test = dict(
        zip(*test.group_by("user_id").aggregate([("timestamp", "min")]).to_pydict().values())
    )
    assert all(t <= first_test[u] for u, t in zip(*latest_train.values()) if u in first_test)
    items = pq.read_table(out / "items.parquet").to_pydict()
    assert items["item_idx"] == list(range(9_066))
    assert items["title"][items["item_id"].index("1")] == "Toy Story"
    users = pq.read_table(out / "users.parquet")
    assert users.num_rows == 671 and users["user_id"].to_pylist() == sorted(
        users["user_id"].to_pylist()
    )


def test_train_reader_is_a_ray_dataset(movielens_data):
    out, m = movielens_data
    ds = DataDir(out).train_dataset(["user_idx", "item_idx", "timestamp"])
    assert ds.count() == m["train_rows"]
    batch = next(iter(ds.iter_batches(batch_size=8)))
    assert set(batch) == {"user_idx", "item_idx", "timestamp"}


CSV_HEADER = "user_id,item_id,timestamp,rating,comment\n"


@pytest.fixture
def planted_csv_dir(tmp_path):
    """Two CSV files and a TSV-free mix of planted bad rows with known counts."""
    src = tmp_path / "logs"
    src.mkdir()
    rows_a = [
        "alice,m1,100,5,ok",
        "alice,m2,200,4,ok",
        "alice,m2,200,4,ok",  # exact duplicate
        "alice,m3,2021-01-01T00:00:00Z,3,iso",
        ",m1,100,4,no user",  # missing user
        "bob,,100,4,no item",  # missing item
        "bob,m1,not-a-time,4,bad ts",  # bad timestamp
        "bob,m2,150,NaN,bad weight",  # non-finite weight
        "bob,m3,160,3,ok",
        "bob,m4,160,3,ok",  # same timestamp: input order decides
        "carol,m1,1,2,ok",  # single interaction: train
        "dave,m1,1,2,3,4,extra fields",  # malformed
    ]
    rows_b = [
        "alice,m4,300,5,ok",
        "alice,m5,400,1,ok",
        "bob,m5,170,inf,bad weight",
        "erin,m9,5,1,ok",
        "erin,m9,5,1,ok",  # duplicate
        "erin,m8,6,1,ok",
    ]
    (src / "part-a.csv").write_text(CSV_HEADER + "\n".join(rows_a) + "\n")
    (src / "part-b.csv").write_text(CSV_HEADER + "\n".join(rows_b) + "\n")
    return src


def test_csv_directory_with_planted_bad_rows(ray_local, planted_csv_dir, tmp_path):
    out = tmp_path / "data"
    m = prepare(PrepareConfig(source=str(planted_csv_dir), out=str(out), shards=3))
    assert m["rows_in"] == 18
    assert m["rows_duplicate"] == 2
    assert m["rejected_by_reason"] == {
        "missing user_id": 1,
        "missing item_id": 1,
        "bad timestamp": 1,
        "non-finite weight": 2,
        "malformed row": 1,
    }
    assert m["rows_rejected"] == 6 and m["rows_kept"] == 10 and _reconciles(m)
    assert m["ignored_columns"] == ["comment"]
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert len(rejected) == 6
    bad_ts = next(r for r in rejected if r["reason"] == "bad timestamp")
    assert bad_ts["timestamp"] == "not-a-time" and bad_ts["source_file"].endswith("part-a.csv")
    assert json.loads(bad_ts["raw"])["comment"] == "bad ts"
    train = pq.read_table(out / "train").to_pylist()
    test = pq.read_table(out / "test").to_pylist()
    by_user = lambda rows, u: [r["item_id"] for r in rows if r["user_id"] == u]  # noqa: E731
    # alice: m1(100) m2(200) m4(300) m5(400) m3(2021) -> 5 rows, last ceil(1.0)=1 to test
    assert by_user(test, "alice") == ["m3"]
    # bob: m3,m4 at 160 -> input order keeps m4 last; 2 rows -> 1 test
    assert by_user(train, "bob") == ["m3"] and by_user(test, "bob") == ["m4"]
    assert by_user(train, "carol") == ["m1"] and by_user(test, "carol") == []
    assert by_user(train, "erin") == ["m9"] and by_user(test, "erin") == ["m8"]
    assert not list(tmp_path.glob(".data.tmp-*"))


def test_tsv_and_parquet_inputs_with_custom_columns(ray_local, tmp_path):
    tsv = tmp_path / "log.tsv"
    tsv.write_text(
        "uid\tsku\twhen\n1\t7\t2024-05-01 10:00:00\n1\t8\t2024-05-02\n2\t7\t1714557600\n"
    )
    m = prepare(
        PrepareConfig(
            source=str(tsv),
            out=str(tmp_path / "a"),
            user_col="uid",
            item_col="sku",
            time_col="when",
        )
    )
    assert (m["rows_kept"], m["users"], m["items"]) == (3, 2, 2)
    pq.write_table(
        pa.table({"uid": [1, 1, 2], "sku": ["x", "y", "x"], "when": [3, 4, 5]}),
        tmp_path / "log.parquet",
    )
    m = prepare(
        PrepareConfig(
            source=str(tmp_path / "*.parquet"),
            out=str(tmp_path / "b"),
            user_col="uid",
            item_col="sku",
            time_col="when",
        )
    )
    assert (m["rows_kept"], m["users"], m["items"], m["columns"]["weight"]) == (3, 2, 2, "")


def test_existing_output_needs_overwrite(ray_local, planted_csv_dir, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        prepare(PrepareConfig(source=str(planted_csv_dir), out=str(out)))
    assert (out / "keep.txt").read_text() == "precious"
    prepare(PrepareConfig(source=str(planted_csv_dir), out=str(out), overwrite=True))
    assert (out / "manifest.json").exists() and not (out / "keep.txt").exists()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("corrupt.parquet", b"PAR1 this is not parquet", "not a readable Parquet file"),
        ("nocols.csv", b"a,b\n1,2\n", "missing required user column 'user_id'"),
        ("image.csv", bytes(range(256)) * 4, "corrupt"),
    ],
)
def test_unreadable_input_is_one_line_and_leaves_nothing(tmp_path, name, content, message):
    bad = tmp_path / "in" / name
    bad.parent.mkdir()
    bad.write_bytes(content)
    out = tmp_path / "data"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "ganrec_dist", "prepare", "--source", str(bad), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and str(bad) in lines[0]
    if message != "corrupt":
        assert message in lines[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_missing_source_and_bad_override_exit_2(tmp_path, capsys):
    assert (
        main(["prepare", "--source", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "d")]) == 2
    )
    assert "no such file or directory" in capsys.readouterr().err
    assert main(["prepare", "--shards", "many"]) == 2
    assert "'shards': expected an integer" in capsys.readouterr().err


def test_synthetic_source_is_deterministic(ray_local, tmp_path):
    args = dict(source="synthetic", users=300, items=200, interactions=20_000, seed=5, shards=2)
    a = prepare(PrepareConfig(out=str(tmp_path / "a"), **args))
    b = prepare(PrepareConfig(out=str(tmp_path / "b"), **args))
    assert b == {**a, "seconds": b["seconds"]}
    assert a["rows_in"] == 20_000 and _reconciles(a)
    assert a["users"] <= 300 and a["items"] <= 200 and a["source_params"]["seed"] == 5
    for split in ("train", "test"):
        assert pq.read_table(tmp_path / "a" / split).equals(pq.read_table(tmp_path / "b" / split))


def test_validation_carve_as_test_split(movielens_data, tmp_path):
    """jobs/validation_as_test.py: train = what `ganrec train` fits, test = its validation rows."""
    from pathlib import Path

    import numpy as np

    from ganrec_dist.data.interactions import validation_limits

    data, manifest = movielens_data
    out = tmp_path / "nested"
    script = Path(__file__).parents[1] / "jobs" / "validation_as_test.py"
    subprocess.run([sys.executable, str(script), str(data), str(out)], check=True)
    train, test = DataDir(out).read("train"), DataDir(out).read("test")
    limits = validation_limits(DataDir(data).sequences(), 0.2)
    assert train.num_rows + test.num_rows == manifest["train_rows"]  # nothing lost
    assert (train["position"].to_numpy() < limits[train["user_idx"].to_numpy()]).all()
    assert (test["position"].to_numpy() >= limits[test["user_idx"].to_numpy()]).all()
    assert np.array_equal(DataDir(out).sequences().lengths, limits)  # the fitted part, per user
    again = subprocess.run([sys.executable, str(script), str(data), str(out)], capture_output=True)
    assert again.returncode == 1 and b"already exists" in again.stderr
