"""Every index kind against exact brute force on seeded data; the RUN/index contract."""

import dataclasses

import numpy as np
import pytest

from ganrec_dist.core.config import IndexConfig
from ganrec_dist.core.errors import UserError
from ganrec_dist.data.layout import RunDir
from ganrec_dist.retrieval.index import (
    ExactIndex,
    build_index,
    checksum,
    load_index,
    save_index,
    search_excluding,
)


def clustered(n=20_000, dim=32, clusters=64, seed=0):
    """Item embeddings that look learned: a mixture of clusters, not isotropic noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    items = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim)).astype(
        np.float32
    )
    queries = centres[rng.integers(0, clusters, 200)] + 0.3 * rng.normal(size=(200, dim)).astype(
        np.float32
    )
    return items, queries


def brute(items, queries, k):
    scores = queries @ items.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall(got, want):
    return np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)])


def test_exact_index_equals_brute_force():
    items, queries = clustered(n=5_000)
    index = ExactIndex(items, block=1_000)  # several blocks: the running merge is exercised
    scores, got = index.search(queries, 10)
    assert recall(got, brute(items, queries, 10)) == 1.0
    assert np.allclose(scores, np.take_along_axis(queries @ items.T, got, axis=1), atol=1e-4)


@pytest.mark.parametrize(
    "n, block, query_block, k",
    [
        (5_003, 512, 64, 10),  # many blocks, a ragged last chunk, several query blocks
        (1_000, 128, 1_000, 200),  # k larger than the first block
        (50, 8_192, 1_024, 10),  # the whole catalogue in one block
    ],
)
def test_exact_search_with_exclusion_equals_brute_force(n, block, query_block, k):
    items, queries = clustered(n=n)
    rng = np.random.default_rng(1)
    scores_all = queries @ items.T
    # Each query's "seen" items: its own best 5 (so exclusion changes the answer) plus noise;
    # query 0 has seen all but 3 items, so its row must end in -1 / -inf.
    exclude = [
        np.unique(np.concatenate([np.argsort(-row)[:5], rng.choice(n, 20)])) for row in scores_all
    ]
    exclude[0] = np.arange(3, n)
    index = ExactIndex(items, block=block, query_block=query_block, chunk=64)
    got_scores, got = index.search(queries, k, exclude=exclude)
    masked = scores_all.copy()
    for row, seen in enumerate(exclude):
        masked[row, seen] = -np.inf
    want_scores = -np.sort(-masked, axis=1)[:, : min(k, n)]
    assert got.shape == (len(queries), min(k, n))
    # Scores are exact (ties may swap items, never scores); items match their scores.
    assert np.allclose(got_scores, want_scores, atol=1e-4)
    valid = got >= 0
    assert np.allclose(
        np.take_along_axis(scores_all, np.where(valid, got, 0), axis=1)[valid],
        got_scores[valid],
        atol=1e-4,
    )
    assert not any(set(g[g >= 0]) & set(e) for g, e in zip(got, exclude))
    assert set(got[0, :3]) == {0, 1, 2}
    assert (got[0, 3:] == -1).all() and np.isneginf(got_scores[0, 3:]).all()


@pytest.mark.parametrize(
    "kind, params, minimum",
    [
        ("ivf", dict(nlist=128, nprobe=16), 0.95),
        ("hnsw", dict(hnsw_m=16, ef_search=128), 0.95),
        ("ivfpq", dict(nlist=128, nprobe=16, pq_bytes=16, refine_factor=8), 0.9),
    ],
)
def test_ann_kinds_recall_against_brute_force(kind, params, minimum):
    items, queries = clustered()
    index = build_index(items, IndexConfig(kind=kind, **params))
    _, got = index.search(queries, 10)
    assert recall(got, brute(items, queries, 10)) >= minimum


def test_auto_picks_exact_for_small_and_ivf_for_large():
    items, _ = clustered(n=3_000)
    assert isinstance(build_index(items, IndexConfig(kind="auto")), ExactIndex)
    big = build_index(items, IndexConfig(kind="auto", auto_exact_max_items=1_000))
    assert not isinstance(big, ExactIndex) and big.nprobe == IndexConfig().nprobe


def test_seen_items_are_excluded_with_ann_and_exactly_k_come_back():
    items, queries = clustered(n=4_000)
    index = build_index(items, IndexConfig(kind="ivf", nlist=64, nprobe=1))
    exact = ExactIndex(items)
    want = brute(items, queries, 60)
    exclude = [w[:50] for w in want]  # the 50 best of each query are "seen"
    got, scores = search_excluding(index, queries, exclude, 10, exact=exact)
    assert (got >= 0).all() and got.shape == (200, 10)
    assert not any(set(g) & set(e) for g, e in zip(got, exclude))
    exact_got, _ = search_excluding(exact, queries, exclude, 10)
    assert recall(got, exact_got) > 0.5  # nprobe=1 is poor, but never short and never seen


def test_meta_mismatch_is_refused(tmp_path):
    items, _ = clustered(n=2_000)
    cfg = IndexConfig(kind="hnsw", hnsw_m=8)
    run = RunDir(tmp_path)
    meta = save_index(build_index(items, cfg), items, cfg, run)
    assert (
        meta["checksum"] == checksum(items) and meta["kind"] == "hnsw" and meta["n_items"] == 2_000
    )
    index, loaded = load_index(run, items)
    assert loaded == meta and index.ntotal == 2_000
    with pytest.raises(UserError, match="retrained"):
        load_index(run, items + 0.01)
    with pytest.raises(UserError, match="items"):
        load_index(run, items[:100])
    cfg2 = dataclasses.replace(cfg, kind="flat")
    save_index(build_index(items, cfg2), items, cfg2, run)
    assert isinstance(load_index(run, items)[0], ExactIndex)


def test_known_users_get_their_best_new_items_in_the_last_slots():
    """--explore_known 1: a list without a new item gets the user's best-scored new item (not
    seen, not listed) in its last slot; a list that has one is left as it was."""
    from ganrec_dist.retrieval.recommender import Recommender

    rec = Recommender.__new__(Recommender)
    rec.embeddings = np.eye(10, 4, dtype=np.float32) + np.arange(10)[:, None] * 0.01
    rec.new_items, rec.explore_known = np.array([7, 8, 9]), 1
    vectors = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]], np.float32)
    rec.embeddings[7:] = [[0, 0.5, 0, 0], [0, 0.9, 0.3, 0], [0, 0.1, 0.8, 0]]
    items = np.array([[1, 2, 3], [0, 9, 4], [2, 5, 6]])
    scores = np.ones((3, 3), np.float32)
    exclude = [np.array([5]), np.array([], np.int64), np.array([9])]
    got, got_scores = rec._with_new_items(vectors, exclude, items, scores)
    assert got.tolist() == [[1, 2, 8], [0, 9, 4], [2, 5, 8]]
    assert got_scores[0, 2] == pytest.approx(0.9) and got_scores[2, 2] == pytest.approx(0.3)
    assert items.tolist()[0] == [1, 2, 3]  # the caller's arrays are not written


def _slots_one_row_at_a_time(items, scores, new_scores, new_items, exclude, want):
    """The slot rule written plainly, a row at a time: the reference for the batched one."""
    items, scores = items.copy(), scores.copy()
    for row in range(len(items)):
        listed = items[row]
        is_new = np.isin(listed, new_items)
        missing = want - int(is_new.sum())
        if missing <= 0:
            continue
        ranked = np.argsort(-new_scores[row], kind="stable")
        blocked = np.isin(new_items[ranked], np.concatenate([exclude[row], listed]))
        chosen = ranked[~blocked][:missing]
        slots = np.flatnonzero(~is_new)[::-1][: len(chosen)][::-1]
        items[row, slots] = new_items[chosen]
        scores[row, slots] = new_scores[row, chosen]
    return items, scores


@pytest.mark.parametrize("want", [1, 2, 5])
def test_the_batched_new_item_slots_equal_the_rule_row_by_row(want):
    """Random lists with new items already in some, exclusions hitting new items, tied scores
    (rounded), rows where too few new items are left, and a day smaller than ``want``."""
    from ganrec_dist.retrieval.recommender import with_new_items

    rng = np.random.default_rng(want)
    for n_new in (3, 40):
        new_items = np.sort(rng.choice(np.arange(100, 200), n_new, replace=False))
        catalogue = np.concatenate([np.arange(100), new_items])
        b, k = 64, 6
        items = np.stack([rng.choice(catalogue, k, replace=False) for _ in range(b)])
        scores = rng.random((b, k)).astype(np.float32)
        new_scores = np.round(rng.random((b, n_new)), 1).astype(np.float32)  # ties
        exclude = [
            rng.choice(catalogue, rng.integers(0, n_new + 3), replace=False) for _ in range(b)
        ]
        exclude[0] = new_items.copy()  # nothing left for row 0
        got = with_new_items(
            items, scores, new_scores=new_scores, new_items=new_items, exclude=exclude, want=want
        )
        expected = _slots_one_row_at_a_time(items, scores, new_scores, new_items, exclude, want)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        assert (got[0] != items).any(axis=1).sum() >= 8  # the rule had work to do
        assert not (got[0][0] != items[0]).any()  # row 0 had no new item left
