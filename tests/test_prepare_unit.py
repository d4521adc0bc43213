"""The validation, duplicate and split rules, one process, no Ray."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ganrec_dist.data import sources
from ganrec_dist.data.interactions import n_test_rows
from ganrec_dist.data.prepare import bucket_of, split_sorted, validate_chunk

COLS = {"user": "user_id", "item": "item_id", "time": "timestamp", "weight": "rating"}


def _chunk(rows):
    names = ["user_id", "item_id", "timestamp", "rating"]
    return pa.table({n: pa.array([r[i] for r in rows], pa.string()) for i, n in enumerate(names)})


def test_each_validation_rule_has_its_reason():
    good, bad = validate_chunk(
        _chunk(
            [
                ("u1", "i1", "100", "4.5"),  # good
                (None, "i1", "100", "1"),  # missing user
                ("  ", "i1", "100", "1"),  # blank user is missing
                ("u1", None, "100", "1"),  # missing item
                ("u1", "i1", "yesterday", "1"),  # unparsable timestamp
                ("u1", "i1", "inf", "1"),  # non-finite timestamp
                ("u1", "i1", "nan", "1"),  # non-finite timestamp
                ("u1", "i1", "100", "nan"),  # non-finite weight
                ("u1", "i1", "100", "-inf"),  # non-finite weight
                ("u1", "i1", "100", "lots"),  # unparsable weight
                (None, None, "x", "nan"),  # several problems: the first reason wins
                (" u2 ", "i2", "2021-03-04T05:06:07Z", "2"),  # ISO-8601, ids trimmed
                ("u3", "i3", "1600000000.9", "1"),  # fractional seconds floor
            ]
        ),
        COLS,
    )
    assert bad["reason"].to_pylist() == [
        "missing user_id",
        "missing user_id",
        "missing item_id",
        "bad timestamp",
        "bad timestamp",
        "bad timestamp",
        "non-finite weight",
        "non-finite weight",
        "non-finite weight",
        "missing user_id",
    ]
    assert bad["row"].to_pylist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert bad["timestamp"].to_pylist()[3] == "yesterday"  # original values kept
    assert good["user_id"].to_pylist() == ["u1", "u2", "u3"]
    assert good["timestamp"].to_pylist() == [100, 1614834367, 1600000000]
    assert good["weight"].to_pylist() == [4.5, 2.0, 1.0]


def test_numeric_parquet_columns_and_missing_weight_column():
    table = pa.table(
        {
            "user_id": pa.array([1, 2, None]),
            "item_id": pa.array([10, 20, 30]),
            "timestamp": pa.array([1.5, float("nan"), 3.0]),
        }
    )
    good, bad = validate_chunk(table, {**COLS, "weight": ""})
    assert good["user_id"].to_pylist() == ["1"]
    assert good["weight"].to_pylist() == [1.0]  # no weight column: 1.0
    assert bad["reason"].to_pylist() == ["bad timestamp", "missing user_id"]


@pytest.mark.parametrize(
    "n, expected", [(1, 0), (2, 1), (3, 1), (5, 1), (6, 2), (10, 2), (11, 3), (15, 3), (100, 20)]
)
def test_test_rows_are_ceil_of_a_fifth(n, expected):
    # 0.2 * 15 is 3.0000000000000004 in floating point: a naive ceil gives 4.
    assert n_test_rows(np.array([n]), 0.2)[0] == expected


def test_split_sorted_positions_and_flags():
    users = np.array(["a", "b", "b", "c", "c", "c", "c", "c", "c"], dtype=object)
    position, is_test = split_sorted(users, 0.2)
    assert position.tolist() == [0, 0, 1, 0, 1, 2, 3, 4, 5]
    # a: single interaction stays in train; b: ceil(0.4)=1; c: ceil(1.2)=2
    assert is_test.tolist() == [False, False, True, False, False, False, False, True, True]


def test_bucket_of_is_stable_and_in_range():
    ids = pa.array([f"user{i}" for i in range(1000)])
    a, b = bucket_of(ids, 7), bucket_of(ids, 7)
    assert (a == b).all() and a.min() >= 0 and a.max() < 7
    assert len(np.unique(a)) == 7


def test_synthetic_is_deterministic_by_seed():
    layout = sources.synthetic_layout(500, 300, 5000)
    first = sources.synthetic_rows(layout, seed=3, shard=0, rows=5000)
    again = sources.synthetic_rows(layout, seed=3, shard=0, rows=5000)
    other = sources.synthetic_rows(layout, seed=4, shard=0, rows=5000)
    assert first.equals(again)
    assert not first.equals(other)


def test_synthetic_has_planted_structure():
    """Users concentrate on a few clusters, far from uniform: there is something to learn."""
    layout = sources.synthetic_layout(200, 1000, 40_000)
    table = sources.synthetic_rows(layout, seed=0, shard=0, rows=40_000)
    users = np.array([int(u[1:]) for u in table["user_id"].to_pylist()])
    items = np.array([int(i[1:]) for i in table["item_id"].to_pylist()])
    cluster = items % layout["clusters"]
    shares = []
    for u in np.unique(users)[:50]:
        counts = np.bincount(cluster[users == u], minlength=layout["clusters"])
        shares.append(np.sort(counts)[-6:].sum() / counts.sum())
    # 6 of 20 clusters would hold 30% of a user's rows at random; planted favourites hold most.
    assert np.mean(shares) > 0.75


def test_synthetic_full_catalogue_touches_every_item(tmp_path):
    layout = sources.synthetic_layout(50, 5_000, 2_000, full_catalogue=True)
    layout["shards"] = 3  # the catalogue rows are split across shards by item
    written, items = 0, set()
    for shard in range(3):
        path = tmp_path / f"{shard}.parquet"
        written += sources.write_synthetic_shard(layout, 0, shard, str(path))
        items |= set(pq.read_table(path)["item_id"].to_pylist())
    assert written == 2_000 + 5_000
    assert items == {f"i{i}" for i in range(5_000)}
    # Without it, Zipf popularity leaves much of the catalogue untouched even with 4x more rows
    # than items (uniform draws would touch ~98% of it).
    plain = sources.synthetic_layout(50, 5_000, 20_000)
    plain["shards"] = 1
    sources.write_synthetic_shard(plain, 0, 0, str(tmp_path / "plain.parquet"))
    assert len(set(pq.read_table(tmp_path / "plain.parquet")["item_id"].to_pylist())) < 4_500
