"""The in-order append's split arithmetic against prepare's split of the whole sequence: the
positions, labels, cuts and moved rows a delta records are those of a fresh split. No Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ganrec_dist.bench.update import BenchUpdateConfig, scratch_days
from ganrec_dist.data.delta import _continue_split
from ganrec_dist.data.prepare import split_sorted


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.1])
def test_continued_split_equals_the_split_of_the_whole_sequence(fraction):
    rng = np.random.default_rng(1)
    users = [f"u{u:03d}" for u in range(200)]
    n_old = rng.integers(0, 12, len(users))  # 0: a new user
    n_new = rng.integers(1, 6, len(users))
    new_users = np.repeat(np.array(users, dtype=object), n_new)
    new = pa.table(
        {
            "user_id": pa.array(new_users.tolist(), pa.string()),
            "timestamp": pa.array(np.arange(len(new_users), dtype=np.int64)),
        }
    )
    old_rows = np.repeat(n_old, n_new)
    got = _continue_split(new, old_rows, fraction)
    # The whole sequence of every user, old rows first, split afresh.
    whole = np.repeat(np.array(users, dtype=object), n_old + n_new)
    position, is_test = split_sorted(whole, fraction)
    starts = np.r_[0, np.cumsum(n_old + n_new)[:-1]]
    fresh_new = np.concatenate(
        [np.arange(s + o, s + o + k) for s, o, k in zip(starts, n_old, n_new)]
    )
    assert np.array_equal(got["position"], position[fresh_new])
    assert np.array_equal(got["is_test"], is_test[fresh_new])
    # Each user's cut labels the whole sequence; the moved rows are the old ones it relabels.
    cut = np.repeat(got["cut"], n_old + n_new)
    assert np.array_equal(position >= cut, is_test)
    moved = 0
    for o, c in zip(n_old, got["cut"]):
        if o:
            _, before = split_sorted(np.array(["x"] * int(o), dtype=object), fraction)
            moved += int(np.count_nonzero(before & (np.arange(o) < c)))
    assert got["moved"] == moved > 0
    assert got["rows"].tolist() == (n_old + n_new).tolist()


def test_many_days_compare_with_scratch_on_days_1_7_14_and_the_last():
    assert scratch_days(BenchUpdateConfig(days=30)) == [1, 7, 14, 30]
    assert scratch_days(BenchUpdateConfig(days=5)) == [1, 5]
    assert scratch_days(BenchUpdateConfig(partitions=2)) == [1, 2]
