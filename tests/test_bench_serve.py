"""The serve bench's K comparison: only levels whose replica count held are compared."""

from __future__ import annotations

import pytest

from ganrec_dist.bench.serve import _same_replica_ratios


def _point(rps: float, before: int, after: int) -> dict:
    return {"rps": rps, "replicas_before": before, "replicas": after}


def test_a_level_where_replicas_came_up_is_not_compared():
    served = {
        1: [_point(100, 1, 1), _point(400, 1, 1), _point(500, 1, 2)],
        4: [_point(90, 1, 1), _point(440, 1, 1), _point(1000, 2, 2)],
    }
    assert _same_replica_ratios(served, 4) == pytest.approx([0.9, 1.1])


def test_a_count_that_changed_during_the_later_pass_excludes_the_level():
    served = {1: [_point(100, 2, 2)], 4: [_point(100, 2, 1)]}
    assert _same_replica_ratios(served, 4) == []
