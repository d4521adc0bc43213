"""Metrics against hand-computed examples; EASE against its closed form; FAISS path against numpy."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from ganrec_dist.core.config import IndexConfig
from ganrec_dist.evaluation import baselines
from ganrec_dist.retrieval.index import build_index, search_excluding
from ganrec_dist.retrieval.metrics import beyond_accuracy, ranking_metrics, top_k_excluding


def _truth(rows, n_items):
    data = [(u, i) for u, items in enumerate(rows) for i in items]
    r, c = zip(*data)
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(rows), n_items))


def test_ranking_metrics_hand_computed():
    # user 0: relevant {1, 3}; recs [1, 2, 3] -> hits at ranks 1 and 3
    # user 1: relevant {0};    recs [2, 3, 0] -> hit at rank 3
    # user 2: no held-out items -> not counted
    truth = _truth([[1, 3], [0], []], 5)
    recs = np.array([[1, 2, 3], [2, 3, 0], [0, 1, 2]])
    m = ranking_metrics(recs, truth, [2, 3])
    assert m["precision@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["recall@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["hit@2"] == pytest.approx(0.5)
    assert m["mrr@2"] == pytest.approx((1 + 0) / 2)
    ndcg0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))  # ideal: 2 hits in top 3
    ndcg1 = (1 / math.log2(4)) / 1.0  # ideal: 1 hit
    assert m["ndcg@3"] == pytest.approx((ndcg0 + ndcg1) / 2)
    assert m["ndcg@2"] == pytest.approx((1 / (1 + 1 / math.log2(3)) + 0) / 2)
    assert m["mrr@3"] == pytest.approx((1 + 1 / 3) / 2)
    assert m["recall@3"] == pytest.approx((1 + 1) / 2)
    assert m["precision@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_missing_recommendations_count_as_misses():
    truth = _truth([[0]], 3)
    m = ranking_metrics(np.array([[-1, -1]]), truth, [2])
    assert m["ndcg@2"] == 0 and m["hit@2"] == 0


def test_beyond_accuracy():
    train = _truth([[0, 1], [0, 1], [2], [3]], 5)
    recs = np.array([[0, 1], [0, 2], [3, 4], [0, 1]])
    m = beyond_accuracy(recs, train, [2])
    assert m["coverage@2"] == pytest.approx(5 / 5)
    # items 0 and 1 have identical columns (cos 1); 0,2 and 3,4 are orthogonal (cos 0)
    assert m["diversity@2"] == pytest.approx((0 + 1 + 1 + 0) / 4)
    pop = np.array([2, 2, 1, 1, 0]) / 4
    info = -np.log2(np.maximum(pop, 1 / 4))
    assert m["novelty@2"] == pytest.approx(info[recs.reshape(-1)].mean())


def test_top_k_excluding_removes_seen_items():
    scores = np.array([[5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    seen = _truth([[0], [3, 2]], 4)
    top = top_k_excluding(scores, seen, np.array([0, 1]), 3)
    assert top.tolist() == [[1, 2, 3], [1, 0, -1]]


def test_ease_matches_its_closed_form():
    rng = np.random.default_rng(0)
    x = (rng.random((30, 8)) < 0.3).astype(np.float64)
    x[:, 5] = 0  # an item no one trained on: zero weights, and left out of the inverse
    lam = 5.0
    weights = baselines.ease_weights(sp.csr_matrix(x), lam)
    # Closed form: argmin ||X - XB||^2 + lam ||B||^2 s.t. diag(B) = 0 (Steck 2019, eq. 8)
    p = np.linalg.inv(x.T @ x + lam * np.eye(8))
    expected = np.eye(8) - p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0)
    # Computed in float32: within a few float32 roundings of float64's closed form.
    assert np.allclose(weights, expected, atol=1e-6)
    assert not weights[5].any() and not weights[:, 5].any()
    # And it is the constrained optimum: the gradient vanishes off the diagonal.
    grad = -2 * x.T @ (x - x @ weights) + 2 * lam * weights
    off = ~np.eye(8, dtype=bool)
    assert np.abs(grad[off]).max() < 1e-6


def test_faiss_search_excluding_matches_numpy_and_returns_k():
    rng = np.random.default_rng(1)
    items = rng.normal(size=(50, 8)).astype(np.float32)
    queries = rng.normal(size=(6, 8)).astype(np.float32)
    exclude = [rng.choice(50, size=s, replace=False) for s in (0, 3, 10, 20, 40, 45)]
    index = build_index(items, IndexConfig(kind="flat"))
    got, scores = search_excluding(index, queries, exclude, 10)
    seen = sp.csr_matrix(
        (
            np.ones(sum(map(len, exclude))),
            (np.repeat(np.arange(6), [len(e) for e in exclude]), np.concatenate(exclude)),
        ),
        shape=(6, 50),
    )
    want = top_k_excluding(queries @ items.T, seen, np.arange(6), 10)
    assert (got == want).all()
    assert (got[:5] >= 0).all()  # 10 items left even after excluding 40
    assert (got[5, :5] >= 0).all() and (got[5, 5:] == -1).all()  # only 5 remain


def test_als_is_built_and_fitted_inside_the_blas_thread_limit():
    """`implicit` warns when OpenBLAS may use several threads as ALS starts; we limit them."""
    import warnings

    import implicit.utils

    implicit.utils._checked_blas_config = False  # it checks once per process
    train = sp.random(60, 40, density=0.1, format="csr", random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        users, items = baselines.als_factors(train, factors=4, reg=0.1, iterations=2, seed=0)
    assert users.shape == (60, 4) and items.shape == (40, 4)
    assert not [w for w in caught if "OpenBLAS" in str(w.message)]


def test_large_catalogue_paths_rank_as_the_dense_path_does(monkeypatch):
    """Above DENSE_MAX_ITEMS popularity ranks one global order and ALS goes through the exact
    index; in blocks of users sized to the catalogue, the dense path itself gives the same."""
    rng = np.random.default_rng(0)
    train = sp.random(50, 300, density=0.05, format="csr", random_state=1)
    train.data[:] = 1.0
    users = np.arange(50)
    scores = rng.permutation(300).astype(np.float64)  # distinct: no tie to break differently
    dense = baselines.recommend_dense(lambda r: np.tile(scores, (len(r), 1)), train, users, 10)
    assert np.array_equal(baselines.popular_unseen(scores, train, users, 10), dense)
    user_f = rng.normal(size=(50, 8)).astype(np.float32)
    item_f = rng.normal(size=(300, 8)).astype(np.float32)
    als_dense = baselines.als_recommend((user_f, item_f), train, users, 10)
    monkeypatch.setattr(baselines, "SCORE_BLOCK_BYTES", 8 * 300 * 3)  # blocks of 3 users
    assert np.array_equal(baselines.als_recommend((user_f, item_f), train, users, 10), als_dense)
    monkeypatch.setattr(baselines, "DENSE_MAX_ITEMS", 0)
    assert np.array_equal(baselines.als_recommend((user_f, item_f), train, users, 10), als_dense)
    seen = train[users]
    popular = baselines.popularity_recommend(train, users, 10)
    assert not any(set(row) & set(seen[i].indices) for i, row in enumerate(popular))


def test_evaluation_can_score_a_seeded_sample_of_users():
    from ganrec_dist.core.config import EvaluateConfig
    from ganrec_dist.data.interactions import Sequences
    from ganrec_dist.evaluation.evaluate import _test_users

    lengths = np.array([2, 0, 1, 3, 1, 2])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    test = Sequences(offsets, np.arange(offsets[-1], dtype=np.int32) % 5, 6, 5)
    everyone, truth = _test_users(EvaluateConfig(), test)
    assert everyone.tolist() == [0, 2, 3, 4, 5] and truth.nnz == test.matrix().nnz
    sample, truth = _test_users(EvaluateConfig(max_users=3, seed=4), test)
    again, _ = _test_users(EvaluateConfig(max_users=3, seed=4), test)
    assert len(sample) == 3 and set(sample) <= set(everyone) and sample.tolist() == again.tolist()
    assert set(np.flatnonzero(np.diff(truth.indptr))) == set(sample)  # only their test items


def test_baselines_are_tuned_on_as_many_validation_users_as_the_test_scores():
    from ganrec_dist.core.config import EvaluateConfig
    from ganrec_dist.data.interactions import Sequences, held_out, validation_limits
    from ganrec_dist.evaluation.evaluate import _validation_users

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, 40)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    seq = Sequences(offsets, rng.integers(0, 20, offsets[-1]).astype(np.int32), 40, 20)
    limits = validation_limits(seq, 0.2)
    users, truth = _validation_users(EvaluateConfig(), seq, limits)
    assert users.tolist() == np.flatnonzero(limits < seq.lengths).tolist()
    assert (truth != held_out(seq, limits)).nnz == 0  # all of them: exactly as before
    sample, truth = _validation_users(EvaluateConfig(max_users=7, seed=1), seq, limits)
    assert len(sample) == 7 and set(sample) <= set(users)
    assert set(np.flatnonzero(np.diff(truth.indptr))) == set(sample)


def test_cold_start_histories_and_their_common_tail():
    from ganrec_dist.data.interactions import from_rows
    from ganrec_dist.evaluation.coldstart import first_items, histories, tail_truth

    # user 0: items 0..11 in order; user 1: 12 items, 11 repeated at positions 0 and 11
    items = np.array(list(range(12)) + [11] + list(range(20, 30)) + [11])
    users = np.repeat([0, 1], 12)
    full = from_rows(users, items, np.tile(np.arange(12), 2), n_users=3, n_items=40)
    both = np.array([0, 1])
    assert histories(full, both, 3, 5).tolist() == [[40, 40, 0, 1, 2], [40, 40, 11, 20, 21]]
    assert first_items(full, both, 1).toarray()[:, [0, 11]].tolist() == [[1, 0], [0, 1]]
    truth = tail_truth(full, both)  # positions 10 and 11, whatever n
    assert truth.shape == (2, 40)
    assert [sorted(truth[r].indices) for r in range(2)] == [[10, 11], [11, 29]]


def test_per_user_ndcg_averages_to_the_tables_ndcg():
    from ganrec_dist.retrieval.metrics import user_ndcg

    rng = np.random.default_rng(0)
    truth = sp.random(30, 50, density=0.1, random_state=1, format="csr")
    truth.data[:] = 1.0
    recs = rng.integers(-1, 50, (30, 10))
    users, ndcg = user_ndcg(recs, truth, 10)
    assert users.tolist() == np.flatnonzero(np.diff(truth.indptr)).tolist()
    assert ndcg.mean() == pytest.approx(ranking_metrics(recs, truth, [10])["ndcg@10"])
    assert (ndcg > 0).any() and (ndcg < 1).all()


def test_an_empty_table_prints_its_header(capsys):
    # A sweep interrupted before its first trial finished has no rows to summarise.
    from ganrec_dist.core.logs import print_table

    print_table("runs", ["trial", "NDCG@10"], [])
    print_table("runs", ["trial", "NDCG@10"], [["gan-seed0", 0.1543]])
    out = capsys.readouterr().out.splitlines()
    assert out[1:4] == ["runs", "trial  NDCG@10", "-----  -------"]
    assert "gan-seed0  0.154" in [line.rstrip() for line in out]
