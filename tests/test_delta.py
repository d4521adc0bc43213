"""Delta partitions: in-order appends write the day's rows beside the base files, every reader
merges them into the split a fresh prepare of the union gives, and `ganrec compact` folds them
in without changing what any reader sees (or the DATA version)."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from ganrec_dist.core.config import PrepareConfig
from ganrec_dist.data import delta, layout
from ganrec_dist.data.append import prepare_or_append as prepare
from ganrec_dist.data.layout import DataDir
from ganrec_dist.operations.cli import main

pytestmark = pytest.mark.integration

HEADER = ["user_id", "item_id", "timestamp", "rating"]
COLUMNS = ["user_id", "item_id", "timestamp", "weight", "position"]


def _write(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)


def _rows(data: DataDir) -> set:
    out = set()
    for split in ("train", "test"):
        t = data.read(split).to_pydict()
        out |= {(*(t[c][i] for c in COLUMNS), split) for i in range(len(t["user_id"]))}
    return out


@pytest.fixture(scope="module")
def days(tmp_path_factory, ray_local):
    """DATA, then three appended days: two in order (later rows of a few old users, a new user;
    users seen on both days), one with a late row; and a fresh prepare of each union."""
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("delta")
    base = [
        [f"u{u:02d}", f"i{int(rng.integers(0, 25)):02d}", 1000 + 10 * t, "4"]
        for u in range(40)
        for t in range(int(rng.integers(1, 12)))
    ]
    day1 = [[f"u{u:02d}", f"i{u % 7:02d}", 2000 + t, "5"] for u in (1, 2, 9) for t in range(3)]
    day1 += [["new1", "i99", 2005, "3"], ["u00", "i01", 2010, "2"]]
    day1 += [["u01", "i00", 2000, "5"]]  # a repeat within the day: a duplicate
    day2 = [[f"u{u:02d}", f"i{u % 5:02d}", 3000 + t, "4"] for u in (1, 9, 17) for t in range(2)]
    day2 += [["new1", "i98", 3001, "4"]]
    day3 = [["u17", "i03", 1001, "1"], ["u20", "i04", 4000, "3"]]  # u17's row is late
    logs = [base, day1, day2, day3]
    versions, fresh = [], []
    for k, rows in enumerate(logs):
        _write(root / f"day{k}.csv", rows)
        out = root / f"data.v{k + 1}" if k else root / "data"
        if k == 0:
            prepare(PrepareConfig(source=str(root / "day0.csv"), out=str(out), shards=8))
        else:
            prepare(
                PrepareConfig(
                    source=str(root / f"day{k}.csv"), append_to=str(versions[-1].root), out=str(out)
                )
            )
        versions.append(DataDir(out))
        union = root / f"union{k}"
        union.mkdir()
        for j in range(k + 1):
            _write(union / f"d{j}.csv", logs[j])
        prepare(PrepareConfig(source=str(union), out=str(root / f"fresh{k}"), shards=8))
        fresh.append(DataDir(root / f"fresh{k}"))
    return root, versions, fresh


def test_in_order_days_are_deltas_and_every_version_reads_as_a_fresh_prepare(days):
    _, versions, fresh = days
    for data, same in zip(versions, fresh):
        assert _rows(data) == _rows(same)
        for key in ("rows_in", "rows_kept", "rows_duplicate", "train_rows", "test_rows", "users"):
            assert data.manifest[key] == same.manifest[key], key
    v2, v3 = versions[1], versions[2]
    part = v2.manifest["partitions"][-1]
    # Day 1 rewrote no bucket: its rows are deltas; every base file is the old one's inode.
    assert part["buckets_rewritten"] == 0 and part["buckets_delta"] > 0
    assert list(v2.deltas) == ["p0001"]
    for split in ("train", "test"):
        for f in os.listdir(v2.path(split)):
            assert os.path.samefile(v2.path(f"{split}/{f}"), versions[0].path(f"{split}/{f}"))
    # Day 2 adds a delta of its own; day 1's is linked, not copied.
    assert list(v3.deltas) == ["p0001", "p0002"]
    # Day 2 names no new user: the user map is the parent's file, not a copy.
    assert os.path.samefile(v3.path("users.parquet"), v2.path("users.parquet"))
    for kind in (layout.DELTA_ROWS, layout.DELTA_CUTS, layout.DELTA_STATS):
        name = f"delta/p0001/{kind}"
        assert os.path.samefile(v3.path(name), v2.path(name))


def test_a_partition_is_one_file_of_each_kind_and_the_user_stats_are_linked(days):
    """An in-order day writes three files, whatever the bucket count, and no bucket's user
    stats: the touched users' new counts ride in the partition's stats file."""
    _, versions, _ = days
    v1, v2 = versions[0], versions[1]
    assert len(v2.deltas["p0001"]) > 1  # several buckets touched
    assert sorted(os.listdir(v2.path("delta/p0001"))) == sorted(
        [layout.DELTA_ROWS, layout.DELTA_CUTS, layout.DELTA_STATS]
    )
    for f in os.listdir(v1.path("user_stats")):
        assert os.path.samefile(v2.path(f"user_stats/{f}"), v1.path(f"user_stats/{f}"))
    # A row group per bucket: a reader of one bucket reads its rows only.
    file = layout.delta_file(v2, "p0001", layout.DELTA_ROWS)
    assert file.metadata.num_row_groups == len(v2.deltas["p0001"])
    # The stats a next append reads: a fresh prepare's counts and newest times, per user.
    users = dict(zip(*v2.read("users.parquet", ["user_idx", "user_id"]).to_pydict().values()))
    rows = v2.read("train").to_pylist() + v2.read("test").to_pylist()
    for b in range(v2.buckets):
        for s in delta.stats_of_bucket(v2, b).to_pylist():
            mine = [r["timestamp"] for r in rows if r["user_idx"] == s["user_idx"]]
            assert users[s["user_idx"]] == s["user_id"]
            assert (s["rows"], s["newest"]) == (len(mine), max(mine)), s


def test_a_day_of_known_ids_links_both_id_maps_of_a_fresh_prepare(days):
    """Nothing in the maps changes, so neither is rewritten: the append's cost does not grow
    with the catalogue (a first append used to add the ``retired`` column by rewriting it)."""
    root, versions, _ = days
    first = versions[0]
    assert "retired" not in first.read("items.parquet").column_names
    _write(root / "known.csv", [["u03", "i05", 5000, "4"], ["u04", "i06", 5001, "2"]])
    known = PrepareConfig(
        source=str(root / "known.csv"), append_to=str(first.root), out=str(root / "data.known")
    )
    prepare(known)
    out = DataDir(root / "data.known")
    for name in ("users.parquet", "items.parquet"):
        assert os.path.samefile(out.path(name), first.path(name)), name
    assert out.manifest["retired_items"] == 0 and len(out.retired_items()) == 0
    assert out.manifest["train_rows"] + out.manifest["test_rows"] == (
        first.manifest["train_rows"] + first.manifest["test_rows"] + 2
    )


def test_a_delta_moves_a_users_old_test_rows_into_train(days):
    _, versions, fresh = days
    old, new = versions[0], versions[1]
    users = dict(zip(*old.read("users.parquet", ["user_id", "user_idx"]).to_pydict().values()))
    before, after = old.read("test"), new.read("train")
    moved = set()
    for uid in ("u01", "u02", "u09"):  # day 1's users
        mine = before.filter(before["user_idx"].to_numpy() == users[uid])
        now = after.filter(after["user_idx"].to_numpy() == users[uid])
        moved |= set(mine["position"].to_pylist()) & set(now["position"].to_pylist())
    assert moved  # yesterday's test rows, train today: relabelled by the cut, not rewritten
    assert new.manifest["train_rows"] == sum(new.manifest["bucket_rows"]["train"])


def test_a_late_row_rewrites_its_bucket_from_base_and_deltas(days):
    _, versions, _ = days
    v4 = versions[3]
    part = v4.manifest["partitions"][-1]
    assert part["buckets_rewritten"] >= 1  # u17's bucket, merged with its deltas
    rewritten = {b for p, bs in versions[2].deltas.items() for b in bs} - {
        b for p, bs in v4.deltas.items() for b in bs
    }
    assert rewritten  # the rewritten bucket's deltas are folded into its new base files


def _per_bucket_layout(data: DataDir, out) -> DataDir:
    """A copy of ``data`` in the layout before one delta file a partition: a rows and a cuts file
    per bucket, and each bucket's user stats rewritten whole by every append."""
    import shutil

    import pyarrow.parquet as pq

    shutil.copytree(data.root, out)
    copy = DataDir(out)
    for b in range(copy.buckets):
        pq.write_table(delta.stats_of_bucket(data, b), out / "user_stats" / layout.part_name(b))
    for p, buckets in copy.deltas.items():
        folder = out / "delta" / p
        for kind, name in (
            (layout.DELTA_ROWS, layout.part_name),
            (layout.DELTA_CUTS, layout.cuts_name),
        ):
            for b in buckets:
                table = layout.read_delta(data, p, kind, bucket=b, columns=None)
                pq.write_table(table, folder / name(b))
        for kind in (layout.DELTA_ROWS, layout.DELTA_CUTS, layout.DELTA_STATS):
            (folder / kind).unlink()
    return copy


def test_a_data_in_the_per_bucket_delta_layout_reads_and_appends_as_before(days, tmp_path):
    """DATA appended by the version before one delta file a partition keeps working: its readers
    see the same rows, and a next append on it (in order and late) gives a fresh prepare's."""
    root, versions, fresh = days
    old = _per_bucket_layout(versions[2], tmp_path / "old")
    assert not (tmp_path / "old" / "delta" / "p0001" / layout.DELTA_ROWS).exists()
    assert _rows(old) == _rows(versions[2]) == _rows(fresh[2])
    assert delta.delta_rows(old) == delta.delta_rows(versions[2]) > 0
    out = tmp_path / "next"
    prepare(PrepareConfig(source=str(root / "day3.csv"), append_to=old.root, out=str(out)))
    assert _rows(DataDir(out)) == _rows(fresh[3])


def test_readers_merge_deltas(days):
    _, versions, fresh = days
    data, same = versions[2], fresh[2]
    # Sequences (training, evaluation) and the Ray Data train dataset see the merged split.
    for split in ("train", "test"):
        a, b = data.sequences(split), same.sequences(split)
        ids = dict(zip(*data.read("users.parquet", ["user_id", "user_idx"]).to_pydict().values()))
        fresh_ids = dict(
            zip(*same.read("users.parquet", ["user_id", "user_idx"]).to_pydict().values())
        )
        for uid in ("u01", "u09", "new1", "u30"):
            ua, ub = ids[uid], fresh_ids[uid]
            assert a.lengths[ua] == b.lengths[ub], (split, uid)
    shards = data.train_shards()
    assert sum(n for _, n in shards) == data.manifest["train_rows"]
    ds = data.train_dataset(["user_idx", "item_idx", "position"])
    assert ds.count() == data.manifest["train_rows"]
    half = [f for f, _ in shards[:3]]
    assert ds.count() > data.train_dataset(["user_idx"], files=half).count() > 0


def test_the_tables_a_driver_reads_are_the_rows_the_dataset_streams_in_order(days):
    """What training hands Ray Data for a split it caches (``train_tables``) is what the
    streaming path reads: the same rows in the same order, with and without deltas."""
    import pyarrow as pa
    import ray.data

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    _, versions, _ = days
    columns = ["user_idx", "item_idx", "position"]
    for data in (versions[0], versions[2]):  # the base; two days of deltas on it
        files = [f for f, _ in data.train_shards()][1:6]
        tables = data.train_tables(columns, files)
        assert [t.num_rows for t in tables] == [n for f, n in data.train_shards() if f in files]
        streamed = data.train_dataset(columns, files=files).take_all()
        read = pa.concat_tables(tables).to_pylist()
        assert read and read == [{c: row[c] for c in columns} for row in streamed]
    assert versions[2].deltas


def test_compact_folds_deltas_in_and_keeps_the_version(days, tmp_path):
    _, versions, fresh = days
    data = versions[2]
    out = tmp_path / "compacted"
    assert main(["compact", "--data", data.root, "--out", str(out)]) == 0
    compacted = DataDir(out)
    assert compacted.deltas == {} and not (out / "delta").exists()
    assert _rows(compacted) == _rows(data) == _rows(fresh[2])
    assert compacted.version == data.version
    # An append on the compacted copy goes on as on the original.
    extra = tmp_path / "extra.csv"
    _write(extra, [["u05", "i01", 9000, "4"]])
    m = prepare(PrepareConfig(source=str(extra), append_to=str(out), out=str(tmp_path / "next")))
    assert m["partitions"][-1]["buckets_delta"] == 1 and m["train_rows"] + m["test_rows"] == (
        data.manifest["rows_kept"] + 1
    )


def test_an_append_compacts_past_its_threshold(days, tmp_path):
    root, versions, fresh = days
    out = tmp_path / "auto"
    m = prepare(
        PrepareConfig(
            source=str(root / "day2.csv"), append_to=versions[1].root, out=str(out), compact_at=0.0
        )
    )
    assert "deltas" not in m and not (out / "delta").exists()
    assert _rows(DataDir(out)) == _rows(fresh[2])


def test_compact_refuses_a_directory_that_is_not_data(tmp_path, capsys):
    assert main(["compact", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a prepared data directory" in err[0]
