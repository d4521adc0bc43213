"""The paired comparison's statistics on synthetic paired data (no Ray, no training)."""

import numpy as np
import pytest

from ganrec_dist.core.errors import UserError
from ganrec_dist.evaluation.compare import bootstrap_interval, compare_scores, sign_test


def _paired(rng, *, seeds=10, users=300, difference=0.0, seed_sd=0.003, user_sd=0.05):
    """Per-seed per-user differences: the true difference, a shift per seed, noise per user."""
    shifts = rng.normal(0.0, seed_sd, seeds)
    return [difference + shift + rng.normal(0.0, user_sd, users) for shift in shifts]


def test_the_interval_covers_a_known_difference():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(40):
        low, high = bootstrap_interval(_paired(rng, difference=0.01), resamples=400, seed=1)
        covered += low <= 0.01 <= high
    # A 95% interval from ten seeds; the bootstrap of so few seeds runs a little narrow.
    assert covered >= 32


def test_a_large_difference_excludes_zero_and_none_does_not_claim_one():
    rng = np.random.default_rng(1)
    low, high = bootstrap_interval(_paired(rng, difference=0.03), resamples=1000)
    assert 0 < low < 0.03 < high
    low, high = bootstrap_interval(_paired(rng, difference=0.0), resamples=1000)
    assert low < 0 < high


def test_the_interval_widens_with_the_seed_to_seed_spread_users_fixed():
    rng = np.random.default_rng(2)
    users = [rng.normal(0.0, 0.05, 300) for _ in range(10)]
    shifts = rng.normal(0.0, 1.0, 10)
    widths = []
    for seed_sd in (0.0, 0.005, 0.02):
        diffs = [u + seed_sd * s for u, s in zip(users, shifts)]
        low, high = bootstrap_interval(diffs, resamples=1000, seed=3)
        widths.append(high - low)
    assert widths[0] < widths[1] < widths[2]
    assert widths[2] > 3 * widths[0]


def test_sign_test():
    assert sign_test(np.array([1.0] * 10))["p"] == pytest.approx(2 / 1024)
    result = sign_test(np.array([1.0, -1.0, 0.0, 2.0]))
    assert (result["ahead"], result["behind"], result["ties"]) == (2, 1, 1)
    assert result["p"] == pytest.approx(1.0)


def test_compare_scores_pairs_users_by_id_within_each_seed():
    users = np.arange(5)
    a = {0: (users, np.full(5, 0.3)), 1: (users, np.full(5, 0.2))}
    # B scored users 1..5 of seed 0: only users 1..4 are common; its values differ by user.
    b = {0: (np.arange(1, 6), np.array([0.1, 0.2, 0.1, 0.2, 9.0])), 1: (users, np.full(5, 0.2))}
    result = compare_scores(a, b, resamples=200)
    first = result["per_seed"][0]
    assert first["users"] == 4 and first["difference"] == pytest.approx(0.15)
    assert result["per_seed"][1]["difference"] == pytest.approx(0.0)
    assert result["sign_test"]["ahead"] == 1 and result["sign_test"]["ties"] == 1
    with pytest.raises(UserError, match="paired by seed"):
        compare_scores(a, {0: b[0]})
