"""Full-ranking metrics of the evaluation protocol (docs/results.md, *Protocol*), computed from
top-K lists.

Relevance is binary: an item in the user's held-out set. Ranking is over the whole catalogue with
the user's own train items removed before the top-K is taken (done by the caller).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

METRICS = ("precision", "recall", "ndcg", "hit", "mrr")  # ranking_metrics' names, before "@k"


def ranking_metrics(recs: np.ndarray, truth: sp.csr_matrix, ks: list[int]) -> dict[str, float]:
    """Mean P, R, NDCG, HR and MRR at each k over users with at least one held-out item.

    Args:
        recs: ``[users, K]`` recommended item indices, best first (K >= max(ks)); -1 = no item.
        truth: ``[users, items]`` binary matrix of held-out items.
        ks: cut-offs, e.g. ``[10, 20]``.
    Returns:
        ``{"precision@10": ..., "recall@10": ..., "ndcg@10": ..., "hit@10": ..., "mrr@10": ...}``.
    """
    max_k = max(ks)
    _, n_true, hits = _hits(recs, truth, max_k)
    discounts = 1.0 / np.log2(np.arange(2, max_k + 2))
    out: dict[str, float] = {}
    for k in ks:
        h = hits[:, :k]
        n_hits = h.sum(axis=1)
        dcg = (h * discounts[:k]).sum(axis=1)
        ideal = np.cumsum(discounts[:k])[np.minimum(n_true, k) - 1]
        first = np.where(h.any(axis=1), h.argmax(axis=1) + 1, np.inf)
        out[f"precision@{k}"] = float(np.mean(n_hits / k))
        out[f"recall@{k}"] = float(np.mean(n_hits / n_true))
        out[f"ndcg@{k}"] = float(np.mean(dcg / ideal))
        out[f"hit@{k}"] = float(np.mean(n_hits > 0))
        out[f"mrr@{k}"] = float(np.mean(1.0 / first))
    return out


def _hits(
    recs: np.ndarray, truth: sp.csr_matrix, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the users with held-out items, their numbers of held-out items, whether each of their
    top-``k`` is one ``[users, k]``)."""
    truth = truth.tocsr()
    counts = np.diff(truth.indptr)
    users = np.flatnonzero(counts > 0)
    top = recs[users, :k]
    valid = top >= 0
    hits = np.zeros(top.shape, dtype=bool)
    if valid.any():
        rows = np.broadcast_to(users[:, None], top.shape)
        hits[valid] = np.asarray(truth[rows[valid], top[valid]]).reshape(-1) > 0
    return users, counts[users], hits


def user_ndcg(recs: np.ndarray, truth: sp.csr_matrix, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Per-user NDCG@k: (the users with held-out items, their NDCG@k), in index order; the mean
    of the second is ``ranking_metrics``' ``ndcg@k``."""
    users, n_true, hits = _hits(recs, truth, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(n_true, k) - 1]
    return users, (hits * discounts).sum(axis=1) / ideal


def beyond_accuracy(recs: np.ndarray, train: sp.csr_matrix, ks: list[int]) -> dict[str, float]:
    """Coverage, intra-list diversity and novelty of the top-K lists.

    Item similarity for diversity is the cosine between the items' train interaction columns, so
    that every model is judged with the same, model-independent item representation.

    Args:
        recs: ``[users, K]`` item indices (-1 = no item).
        train: ``[users, items]`` train interactions.
    """
    n_users, n_items = train.shape
    binary = (train > 0).astype(np.float32).tocsc()
    norms = np.sqrt(np.asarray(binary.multiply(binary).sum(axis=0)).reshape(-1))
    normalized = (binary @ sp.diags(1.0 / np.maximum(norms, 1e-12))).tocsc()
    popularity = np.asarray(binary.sum(axis=0)).reshape(-1) / max(n_users, 1)
    self_info = -np.log2(np.maximum(popularity, 1.0 / max(n_users, 1)))
    out: dict[str, float] = {}
    rng = np.random.default_rng(0)
    sample = (
        np.arange(len(recs)) if len(recs) <= 2000 else rng.choice(len(recs), 2000, replace=False)
    )
    for k in ks:
        top = recs[:, :k]
        valid = top >= 0
        out[f"coverage@{k}"] = float(len(np.unique(top[valid])) / n_items)
        out[f"novelty@{k}"] = float(self_info[top[valid]].mean()) if valid.any() else 0.0
        ild = []
        for u in sample:
            items = top[u][top[u] >= 0]
            if len(items) < 2:
                continue
            block = normalized[:, items]
            sim = (block.T @ block).toarray()
            pairs = sim[np.triu_indices(len(items), 1)]
            ild.append(1.0 - pairs.mean())
        out[f"diversity@{k}"] = float(np.mean(ild)) if ild else 0.0
    return out


def top_k_excluding(
    scores: np.ndarray, seen: sp.csr_matrix, rows: np.ndarray, k: int, inplace: bool = False
) -> np.ndarray:
    """Top-k item indices of dense ``scores`` ``[len(rows), items]`` with each row's seen items
    removed (``inplace``: by overwriting ``scores``, which then must be the caller's to spoil)."""
    if not inplace:
        scores = scores.copy()
    sub = seen[rows]
    scores[np.repeat(np.arange(len(rows)), np.diff(sub.indptr)), sub.indices] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    top_scores = np.take_along_axis(scores, top, axis=1)
    return np.where(np.isfinite(top_scores), top, -1)
