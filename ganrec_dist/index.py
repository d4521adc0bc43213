"""The FAISS catalogue index: the one retrieval path that evaluation, scoring and serving share.

Scores are inner products (the model's metric). A user's seen items are excluded by searching
deeper than k and filtering, so exactly k items come back whenever the catalogue has them.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from ganrec_dist.config import IndexConfig

log = logging.getLogger(__name__)


def resolve_kind(cfg: IndexConfig, n_items: int) -> str:
    if cfg.kind == "auto":
        return "flat" if n_items <= cfg.auto_exact_max_items else "ivf"
    return cfg.kind


def build_index(embeddings: np.ndarray, cfg: IndexConfig, seed: int = 0) -> faiss.Index:
    """Build an inner-product index over ``[n_items, dim]`` float32 embeddings."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = embeddings.shape
    kind = resolve_kind(cfg, n)
    if kind != "flat":
        raise NotImplementedError(kind)
    index = faiss.IndexFlatIP(dim)
    index.add(embeddings)
    return index


def search_excluding(
    index: faiss.Index, queries: np.ndarray, exclude: list[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per query with each query's ``exclude`` items removed.

    Args:
        queries: ``[b, dim]`` float32.
        exclude: ``b`` arrays of item indices to leave out (a user's seen items).
    Returns:
        (items ``[b, k]`` int64, scores ``[b, k]`` float32); -1 / -inf where fewer than k remain.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    b = len(queries)
    k_eff = min(k, index.ntotal)
    out_items = np.full((b, k), -1, dtype=np.int64)
    out_scores = np.full((b, k), -np.inf, dtype=np.float32)
    if b == 0 or k_eff == 0:
        return out_items, out_scores
    extra = max((len(e) for e in exclude), default=0)
    depth = min(index.ntotal, k_eff + extra)
    scores, items = index.search(queries, depth)
    for row in range(b):
        keep = items[row] >= 0
        if len(exclude[row]):
            keep &= ~np.isin(items[row], exclude[row])
        chosen = np.flatnonzero(keep)[:k]
        out_items[row, : len(chosen)] = items[row, chosen]
        out_scores[row, : len(chosen)] = scores[row, chosen]
    return out_items, out_scores
