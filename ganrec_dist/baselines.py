"""Baselines that every evaluation reports next to the GAN: popularity, EASE and ALS.

Each is a :class:`Baseline` in ``BASELINES``: a grid of hyper-parameters to choose from on
validation, ``fit`` on a user-item matrix, ``recommend`` top-k with each user's seen items
removed. `evaluate` tunes and refits every entry in one loop; a new baseline is one entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from ganrec_dist.config import EvaluateConfig
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
    score_fn: Callable[[np.ndarray], np.ndarray],
    train: sp.csr_matrix,
    users: np.ndarray,
    k: int,
    batch: int = 1024,
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


def als_recommend(
    factors: tuple[np.ndarray, np.ndarray], train: sp.csr_matrix, users: np.ndarray, k: int
) -> np.ndarray:
    """Top-k from ALS's (user factors, item factors)."""
    user_f, item_f = factors
    return recommend_dense(lambda rows: user_f[rows] @ item_f.T, train, users, k)


@dataclass(frozen=True)
class Baseline:
    """One baseline of the evaluation table.

    ``grid(cfg)``: the hyper-parameter settings to choose from on validation (one: nothing to
    choose); ``fit(matrix, params, cfg)``: a model of the ``[users, items]`` interactions;
    ``recommend(model, matrix, users, k)``: ``[n_users, k]`` items, the matrix's items excluded;
    ``skip(cfg, n_items)``: why it does not run on this catalogue, or None.
    """

    grid: Callable[[EvaluateConfig], list[dict]]
    fit: Callable[[sp.csr_matrix, dict, EvaluateConfig], Any]
    recommend: Callable[[Any, sp.csr_matrix, np.ndarray, int], np.ndarray]
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
        fit=lambda matrix, params, cfg: None,
        recommend=lambda model, matrix, users, k: popularity_recommend(matrix, users, k),
    ),
    "ease": Baseline(
        grid=lambda cfg: [{"lambda": lam} for lam in _floats(cfg.ease_lambdas)],
        fit=lambda matrix, params, cfg: ease_weights(matrix, params["lambda"]),
        recommend=lambda weights, matrix, users, k: ease_recommend(matrix, weights, users, k),
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
    ),
}
