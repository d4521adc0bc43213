"""Baselines that every evaluation reports next to the GAN: popularity, EASE and ALS.

Each is a :class:`Baseline` in ``BASELINES``: a grid of hyper-parameters to choose from on
validation, ``fit`` on a user-item matrix, ``recommend`` top-k with each user's seen items
removed, ``fold_in`` top-k for users it was not fitted on. `evaluate` tunes and refits every
entry in one loop, and the cold-start table folds every entry in: a new baseline is one entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from ganrec_dist.core.config import EvaluateConfig
from ganrec_dist.retrieval.metrics import top_k_excluding

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
    from scipy.linalg import lapack

    # Single precision: on the embedded sample the weights differ from float64's by under 1e-6
    # and give the same validation NDCG@10 (docs/experiments/ease_precision.py), and LAPACK's
    # factor and inverse run twice as fast. Items no one trained on get zero weights either way
    # (their Gram row is lambda on the diagonal alone), so only the others are inverted: the
    # arithmetic goes with the cube of their count.
    x = (train > 0).astype(np.float32).tocsc()
    seen = np.flatnonzero(np.diff(x.indptr) > 0)
    xs = x[:, seen]
    gram = np.asarray((xs.T @ xs).todense(), dtype=np.float32)
    gram[np.diag_indices_from(gram)] += lam
    # The Gram matrix plus lambda I is symmetric positive definite: a Cholesky factor and its
    # inverse (LAPACK potrf/potri) take about a third of the arithmetic of a general inverse.
    factor, info = lapack.spotrf(gram, lower=True, overwrite_a=True)
    inverse, info2 = lapack.spotri(factor, lower=True, overwrite_c=True)
    if info or info2:
        raise np.linalg.LinAlgError(f"EASE: the Gram matrix is not positive definite ({lam=})")
    inverse = np.tril(inverse)  # potri fills one triangle
    inverse += np.tril(inverse, -1).T
    block = np.divide(inverse, -np.diag(inverse), out=inverse)
    block[np.diag_indices_from(block)] = 0.0
    if len(seen) == train.shape[1]:
        return block
    weights = np.zeros((train.shape[1], train.shape[1]), dtype=np.float32)
    weights[np.ix_(seen, seen)] = block
    return weights


# Up to this many items every user's whole score row is ranked in float64 (the closed forms'
# precision). Above, a row per user over the catalogue is too slow to rank for every user:
# popularity ranks one global order, ALS goes through the exact index search the GAN uses.
DENSE_MAX_ITEMS = 100_000
SCORE_BLOCK_BYTES = 256 << 20  # the dense scores of one block of users, float64


def recommend_dense(
    score_fn: Callable[[np.ndarray], np.ndarray],
    train: sp.csr_matrix,
    users: np.ndarray,
    k: int,
    batch: int = 1024,
) -> np.ndarray:
    """Top-k for ``users`` from a function mapping a user batch to fresh dense scores
    ``[b, items]``, in blocks of at most ``batch`` users whose scores fit SCORE_BLOCK_BYTES."""
    out = np.full((train.shape[0], k), -1, dtype=np.int64)
    block = max(1, min(batch, SCORE_BLOCK_BYTES // (8 * max(1, train.shape[1]))))
    for start in range(0, len(users), block):
        rows = users[start : start + block]
        scores = np.asarray(score_fn(rows), dtype=np.float64)
        out[rows] = top_k_excluding(scores, train, rows, k, inplace=True)
    return out


def ease_recommend(
    train: sp.csr_matrix, weights: np.ndarray, users: np.ndarray, k: int
) -> np.ndarray:
    x = (train > 0).astype(weights.dtype).tocsr()
    return recommend_dense(lambda rows: x[rows] @ weights, train, users, k)


def popularity_recommend(train: sp.csr_matrix, users: np.ndarray, k: int) -> np.ndarray:
    pop = popularity_scores(train)
    if train.shape[1] <= DENSE_MAX_ITEMS:
        return recommend_dense(lambda rows: np.tile(pop, (len(rows), 1)), train, users, k)
    return popular_unseen(pop, train, users, k)


def popular_unseen(
    scores: np.ndarray, train: sp.csr_matrix, users: np.ndarray, k: int
) -> np.ndarray:
    """The k best of one score vector ``[items]`` that each user has not seen: one global order
    (ties by item index), then each user's first k unseen. Time follows users × (k + seen)."""
    order = np.argsort(-scores, kind="stable")
    out = np.full((train.shape[0], k), -1, dtype=np.int64)
    for u in users:
        seen = train.indices[train.indptr[u] : train.indptr[u + 1]]
        candidates = order[: k + len(seen)]
        chosen = candidates[~np.isin(candidates, seen)][:k]
        out[u, : len(chosen)] = chosen
    return out


def als_factors(
    train: sp.csr_matrix, *, factors: int, reg: float, iterations: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Implicit ALS (Hu, Koren, Volinsky 2008) from the `implicit` package, alpha = 1.

    Returns:
        (user_factors ``[users, f]``, item_factors ``[items, f]``).
    """
    import threadpoolctl
    from implicit.als import AlternatingLeastSquares  # before the limit: it loads a BLAS too

    # `implicit` parallelises ALS itself; OpenBLAS's own threads would oversubscribe the cores
    # (it checks, and warns, when the model is built: so build it inside the limit too).
    with threadpoolctl.threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=reg,
            alpha=1.0,
            iterations=iterations,
            random_state=seed,
            calculate_training_loss=False,
        )
        model.fit((train > 0).astype(np.float32).tocsr(), show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def als_fold_in(item_f: np.ndarray, seen: sp.csr_matrix, reg: float) -> np.ndarray:
    """Implicit ALS's user factors (alpha = 1) for the histories ``seen``: one solve each."""
    gram = item_f.T @ item_f + reg * np.eye(item_f.shape[1])
    out = np.zeros((seen.shape[0], item_f.shape[1]))
    for r in range(seen.shape[0]):
        y = item_f[seen.indices[seen.indptr[r] : seen.indptr[r + 1]]]
        out[r] = np.linalg.solve(gram + y.T @ y, 2.0 * y.sum(axis=0))
    return out


def _every_row(seen: sp.csr_matrix) -> np.ndarray:
    return np.arange(seen.shape[0])


def als_recommend(
    factors: tuple[np.ndarray, np.ndarray], train: sp.csr_matrix, users: np.ndarray, k: int
) -> np.ndarray:
    """Top-k from ALS's (user factors, item factors); through the exact index search above
    DENSE_MAX_ITEMS items."""
    user_f, item_f = factors
    if train.shape[1] <= DENSE_MAX_ITEMS:
        return recommend_dense(lambda rows: user_f[rows] @ item_f.T, train, users, k)
    from ganrec_dist.retrieval.index import ExactIndex

    index = ExactIndex(item_f)
    out = np.full((train.shape[0], k), -1, dtype=np.int64)
    for start in range(0, len(users), 4096):
        rows = users[start : start + 4096]
        seen = [train.indices[train.indptr[u] : train.indptr[u + 1]] for u in rows]
        _, items = index.search(user_f[rows], k, exclude=seen)
        out[rows, : items.shape[1]] = items
    return out


@dataclass(frozen=True)
class Baseline:
    """One baseline of the evaluation table.

    ``grid(cfg)``: the hyper-parameter settings to choose from on validation (one: nothing to
    choose); ``fit(matrix, params, cfg)``: a model of the ``[users, items]`` interactions;
    ``recommend(model, matrix, users, k)``: ``[n_users, k]`` items, the matrix's items excluded;
    ``fold_in(model, params, seen, k)``: top-k ``[len(seen), k]`` for users the model was not
    fitted on, from their histories ``seen`` (``[users, items]``, excluded): the cold-start table;
    ``skip(cfg, n_items)``: why it does not run on this catalogue, or None.
    """

    grid: Callable[[EvaluateConfig], list[dict]]
    fit: Callable[[sp.csr_matrix, dict, EvaluateConfig], Any]
    recommend: Callable[[Any, sp.csr_matrix, np.ndarray, int], np.ndarray]
    fold_in: Callable[[Any, dict, sp.csr_matrix, int], np.ndarray]
    skip: Callable[[EvaluateConfig, int], str | None] = lambda cfg, n_items: None


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ease_skip(cfg: EvaluateConfig, n_items: int) -> str | None:
    if n_items <= cfg.ease_max_items:
        return None
    return f"{n_items} items > ease_max_items {cfg.ease_max_items} (a dense item-item inverse)"


BASELINES: dict[str, Baseline] = {
    "popularity": Baseline(
        grid=lambda cfg: [{}],
        fit=lambda matrix, params, cfg: popularity_scores(matrix),
        recommend=lambda pop, matrix, users, k: popularity_recommend(matrix, users, k),
        fold_in=lambda pop, params, seen, k: popular_unseen(pop, seen, _every_row(seen), k),
    ),
    "ease": Baseline(
        grid=lambda cfg: [{"lambda": lam} for lam in _floats(cfg.ease_lambdas)],
        fit=lambda matrix, params, cfg: ease_weights(matrix, params["lambda"]),
        recommend=lambda weights, matrix, users, k: ease_recommend(matrix, weights, users, k),
        fold_in=lambda weights, params, seen, k: top_k_excluding(
            np.asarray(seen.astype(np.float64) @ weights), seen, _every_row(seen), k, inplace=True
        ),
        skip=_ease_skip,
    ),
    "als": Baseline(
        grid=lambda cfg: [
            {
                "factors": cfg.als_factors,
                "regularization": reg,
                "alpha": 1.0,
                "iterations": cfg.als_iterations,
            }
            for reg in _floats(cfg.als_regs)
        ],
        fit=lambda matrix, params, cfg: als_factors(
            matrix,
            factors=params["factors"],
            reg=params["regularization"],
            iterations=params["iterations"],
            seed=cfg.seed,
        ),
        recommend=lambda factors, matrix, users, k: als_recommend(factors, matrix, users, k),
        fold_in=lambda factors, params, seen, k: top_k_excluding(
            als_fold_in(factors[1], seen, params["regularization"]) @ factors[1].T,
            seen,
            _every_row(seen),
            k,
            inplace=True,
        ),
    ),
}
