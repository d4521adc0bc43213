"""`ganrec prepare --append-to`: a new partition added to a DATA as a new version, ids kept."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from ganrec_dist.core.config import PrepareConfig
from ganrec_dist.core.errors import UserError
from ganrec_dist.data.append import prepare_or_append as prepare
from ganrec_dist.data.layout import DataDir
from ganrec_dist.operations.cli import main

pytestmark = pytest.mark.integration

HEADER = ["user_id", "item_id", "timestamp", "rating"]


def _write(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """A log cut in time: `old` (yesterday), `new` (today: later rows of old users, new users,
    new items, repeats of old rows, ties with old rows, and bad rows)."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("append")
    rows = []
    for u in range(40):
        for t in range(int(rng.integers(2, 15))):
            rows.append([f"u{u:02d}", f"i{int(rng.integers(0, 30)):02d}", 1000 + 10 * t, "4"])
    # Today's rows come from a few users only, so that some buckets are not touched.
    today = [r for r in rows if r[2] >= 1060 and int(r[0][1:]) < 4]
    old = [r for r in rows if r not in today]
    new = list(today)
    new += [[f"n{u}", f"i{30 + u % 5}", 1300 + u, "3"] for u in range(2)]  # new users, items
    new += old[:5]  # repeats of old rows: duplicates
    new += [[old[7][0], "i05", old[7][2], "5"]]  # a tie with an old row: after it in order
    # A late row: older than its user's newest old row (and than DATA's newest): merged into
    # the user's sequence by time, as a fresh prepare of the union places it.
    new += [[old[10][0], "i07", old[10][2] - 5, "2"]]
    new += [["", "i01", 1200, "1"], ["u01", "i01", "not a time", "1"]]  # quarantined
    (root / "both").mkdir()
    _write(root / "both" / "a-old.csv", old)
    _write(root / "both" / "b-new.csv", new)
    _write(root / "new.csv", new)
    return root


@pytest.fixture(scope="module")
def versions(ray_local, logs):
    first = logs / "data"
    prepare(PrepareConfig(source=str(logs / "both" / "a-old.csv"), out=str(first), shards=8))
    prepare(PrepareConfig(source=str(logs / "new.csv"), append_to=str(first)))
    fresh = logs / "fresh"
    prepare(PrepareConfig(source=str(logs / "both"), out=str(fresh), shards=8))
    return DataDir(first), DataDir(str(first) + ".v2"), DataDir(fresh)


def _rows(data: DataDir) -> set:
    out = set()
    for split in ("train", "test"):
        t = data.read(split).to_pydict()
        cols = ["user_id", "item_id", "timestamp", "weight", "position"]
        out |= {(*(t[c][i] for c in cols), split) for i in range(len(t["user_id"]))}
    return out


def test_append_keeps_old_ids_and_splits_as_a_fresh_prepare_of_the_union(versions):
    old, new, fresh = versions
    # On raw ids, every row, its position and its split are those of a fresh prepare.
    assert _rows(new) == _rows(fresh)
    m, f = new.manifest, fresh.manifest
    for key in ("rows_in", "rows_kept", "rows_rejected", "rows_duplicate", "users", "items"):
        assert m[key] == f[key], key
    assert m["rejected_by_reason"] == f["rejected_by_reason"]
    # Old ids keep their index; the new ones follow, in sorted order among themselves.
    for name, column in (("users.parquet", "user_id"), ("items.parquet", "item_id")):
        before = old.read(name).column(column).to_pylist()
        after = new.read(name).column(column).to_pylist()
        assert after[: len(before)] == before
        assert after[len(before) :] == sorted(set(after) - set(before)) != []
        assert new.read(name).column(0).to_pylist() == list(range(len(after)))
    train = new.read("train")
    items = dict(zip(*new.read("items.parquet", ["item_id", "item_idx"]).to_pydict().values()))
    assert all(
        items[i] == x for i, x in zip(train["item_id"].to_pylist(), train["item_idx"].to_pylist())
    )


def test_append_manifest_counts_each_partition_and_pins_its_parent(versions, logs):
    old, new, _ = versions
    m = new.manifest
    first, part = m["partitions"]
    assert first["rows_in"] == old.manifest["rows_in"]
    assert part["rows_in"] == sum(1 for _ in open(logs / "new.csv")) - 1
    assert part["rows_duplicate"] == 5 and part["rows_rejected"] == 2
    assert part["rows_in"] == part["rows_kept"] + part["rows_rejected"] + part["rows_duplicate"]
    assert part["new_users"] == 2 and part["new_items"] == 2
    assert m["parent"] == {"path": old.root, "version": old.version}
    assert m["lineage"] == [old.version] and new.version != old.version
    assert m["version_number"] == 2 and m["max_timestamp"] > old.manifest["max_timestamp"]
    # Buckets no new row fell in are the old files, hard-linked (the same inode), not rewritten.
    assert part["buckets_rewritten"] < 8 and part["files_linked"] > 0
    linked = [
        f
        for f in os.listdir(new.path("train"))
        if os.path.samefile(new.path(f"train/{f}"), old.path(f"train/{f}"))
    ]
    assert len(linked) == 8 - part["buckets_rewritten"]
    assert len(os.listdir(new.path("rejected"))) == 1  # the partition's quarantine


def test_append_retires_items_and_refuses_unknown_ones(versions, logs, tmp_path):
    _, new, _ = versions
    retire = tmp_path / "retire.csv"
    retire.write_text("item_id\ni03\ni31\n")
    extra = tmp_path / "extra.csv"
    _write(extra, [["u01", "i02", 5000, "4"]])
    out = tmp_path / "v3"
    m = prepare(
        PrepareConfig(source=str(extra), append_to=new.root, out=str(out), retire=str(retire))
    )
    assert m["retired_items"] == 2 and m["partitions"][-1]["retired"] == 2
    items = DataDir(out).read("items.parquet").to_pydict()
    assert sorted(items["item_id"][i] for i in DataDir(out).retired_items()) == ["i03", "i31"]
    assert m["lineage"] == new.lineage == [new.version, *new.manifest["lineage"]]
    retire.write_text("item_id\nnever-seen\n")
    with pytest.raises(UserError, match="not in the catalogue"):
        prepare(
            PrepareConfig(
                source=str(extra), append_to=new.root, out=str(tmp_path / "v4"), retire=str(retire)
            )
        )
    assert not (tmp_path / "v4").exists()


def test_append_cli_errors_are_one_line(versions, tmp_path, capsys):
    _, new, _ = versions
    assert main(["prepare", "--source", str(tmp_path / "none.csv"), "--append-to", new.root]) == 2
    assert main(["prepare", "--source", "x.csv", "--append-to", str(tmp_path / "nodata")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 2
        and "none.csv: no such file or directory" in err[0]
        and "no manifest.json" in err[1]
    )


def test_an_append_killed_half_way_leaves_data_as_it_was(versions, tmp_path, kill_tree):
    """The new version is built aside (a hidden ``.NAME.tmp-*``) and renamed when complete: a
    driver killed while it builds leaves the parent untouched and no version; run again, the
    append completes."""
    import subprocess
    import sys
    import time

    _, new, _ = versions
    before = sorted(os.listdir(new.root))
    manifest = open(new.path("manifest.json")).read()
    extra = tmp_path / "extra.csv"
    _write(extra, [["u01", "i02", 6000, "4"], ["u02", "i09", 6001, "5"]])
    out = tmp_path / "v5"
    cli = [sys.executable, "-m", "ganrec_dist", "prepare", "--quiet", f"--source={extra}"]
    cli += [f"--append-to={new.root}", f"--out={out}"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        cli, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    try:
        while not list(tmp_path.glob(".v5.tmp-*/_staging")) and time.time() < deadline:
            assert proc.poll() is None, "the append ended before it could be killed"
            time.sleep(0.05)
    finally:
        kill_tree(proc)
    assert time.time() < deadline, "the append never started building"
    assert not out.exists()
    assert sorted(os.listdir(new.root)) == before and open(new.path("manifest.json")).read() == (
        manifest
    )
    m = prepare(PrepareConfig(source=str(extra), append_to=new.root, out=str(out)))
    assert m["partitions"][-1]["rows_kept"] == 2 and DataDir(out).manifest == m
