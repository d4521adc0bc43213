"""Baselines that every evaluation reports next to the GAN: popularity, EASE and ALS."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from ganrec_dist.metrics import top_k_excluding

log = logging.getLogger(__name__)


def popularity_scores(train: sp.csr_matrix) -> np.ndarray:
    """Item popularity: the number of distinct train users per item. ``[items]``"""
    return np.asarray((train > 0).sum(axis=0), dtype=np.float64).reshape(-1)


def ease_weights(train: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE (Steck, WWW 2019), closed form: B = I - P / diag(P), P = (X^T X + lambda I)^-1.

    Args:
        train: ``[users, items]`` binary interactions.
    Returns:
        ``[items, items]`` item-item weights with a zero diagonal.
    """
    x = (train > 0).astype(np.float64)
    gram = np.asarray((x.T @ x).todense())
    gram[np.diag_indices_from(gram)] += lam
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


def recommend_dense(
    score_fn, train: sp.csr_matrix, users: np.ndarray, k: int, batch: int = 1024
) -> np.ndarray:
    """Top-k for ``users`` from a function mapping a user batch to dense scores ``[b, items]``."""
    out = np.full((train.shape[0], k), -1, dtype=np.int64)
    for start in range(0, len(users), batch):
        rows = users[start : start + batch]
        out[rows] = top_k_excluding(np.asarray(score_fn(rows), dtype=np.float64), train, rows, k)
    return out


def ease_recommend(
    train: sp.csr_matrix, weights: np.ndarray, users: np.ndarray, k: int
) -> np.ndarray:
    x = (train > 0).astype(np.float64).tocsr()
    return recommend_dense(lambda rows: x[rows] @ weights, train, users, k)


def popularity_recommend(train: sp.csr_matrix, users: np.ndarray, k: int) -> np.ndarray:
    pop = popularity_scores(train)
    return recommend_dense(lambda rows: np.tile(pop, (len(rows), 1)), train, users, k)


def als_factors(train: sp.csr_matrix, factors: int, reg: float, iterations: int, seed: int):
    """Implicit ALS (Hu, Koren, Volinsky 2008) from the `implicit` package, alpha = 1.

    Returns:
        (user_factors ``[users, f]``, item_factors ``[items, f]``).
    """
    import threadpoolctl
    from implicit.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(
        factors=factors,
        regularization=reg,
        alpha=1.0,
        iterations=iterations,
        random_state=seed,
        calculate_training_loss=False,
    )
    with threadpoolctl.threadpool_limits(1, "blas"):
        model.fit((train > 0).astype(np.float32).tocsr(), show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def als_recommend(
    user_f: np.ndarray, item_f: np.ndarray, train: sp.csr_matrix, users: np.ndarray, k: int
) -> np.ndarray:
    return recommend_dense(lambda rows: user_f[rows] @ item_f.T, train, users, k)
