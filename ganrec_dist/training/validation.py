"""Validation during training: each user's held-out train rows, scored by a
:class:`~ganrec_dist.retrieval.recommender.Recommender` over the generator in training: the one
retrieval path (G(u, z) -> index -> top-k, seen items excluded; K samples merged) that
evaluation, scoring and serving use."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ganrec_dist.core.config import IndexConfig
from ganrec_dist.data.interactions import Sequences
from ganrec_dist.model.models import Generator
from ganrec_dist.model.sampling import list_overlap, pairwise_cosine
from ganrec_dist.retrieval.metrics import METRICS, ranking_metrics, user_ndcg
from ganrec_dist.retrieval.recommender import Recommender

# Users the sample diagnostics (cosine, list overlap) are measured on, and their draws: enough
# for a stable mean, few enough that validation's cost does not grow with them.
DIAGNOSTIC_USERS = 1000
DIAGNOSTIC_SAMPLES = 4


def validation_users(seq: Sequences, limits: np.ndarray) -> np.ndarray:
    """The users with validation rows (positions from ``limits[u]`` on), in index order."""
    return np.flatnonzero(limits < seq.lengths)


def sample_users(users: np.ndarray, most: int, seed: int) -> np.ndarray:
    """``users`` (sorted), or a fixed sample of ``most`` of them (seeded by ``seed``, the same
    every epoch) when there are more: validation's cost then stays flat as the users grow."""
    if most and len(users) > most:
        return np.sort(np.random.default_rng([seed, 17]).choice(users, most, replace=False))
    return users


def validation_truth(seq: Sequences, limits: np.ndarray, users: np.ndarray) -> sp.csr_matrix:
    """``[n_users, n_items]``: the validation rows (from ``limits[u]`` on) of ``users``, no
    rows for every other user."""
    starts = np.minimum(limits, seq.lengths)
    ends = starts.copy()
    ends[users] = seq.lengths[users]
    return seq.slice_matrix(starts, ends)


def validation_recommendations(
    rec: Recommender,
    seq: Sequences,
    *,
    limits: np.ndarray,
    users: np.ndarray,
    k: int = 10,
    samples: int = 1,
) -> np.ndarray:
    """Top-``k`` items ``[n_users, k]`` (-1 for the other users) of ``users`` from ``rec``, each
    user's history and seen items those before ``limits[u]``."""
    users = users.astype(np.int64)
    histories, seen = _inputs(rec, seq, limits=limits, users=users)
    recs = np.full((seq.n_users, k), -1, dtype=np.int64)
    recs[users], _ = rec.recommend(histories, users, seen, k, samples=samples)
    return recs


def _inputs(
    rec: Recommender, seq: Sequences, *, limits: np.ndarray, users: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    histories = seq.window(users, limits[users], rec.history_len)
    return histories, [seq.items[seq.offsets[u] : seq.offsets[u] + limits[u]] for u in users]


def validation_metrics(
    gen: Generator,
    seq: Sequences,
    *,
    limits: np.ndarray,
    truth: sp.csr_matrix,
    index_cfg: IndexConfig,
    users: np.ndarray | None = None,
    per_user: dict | None = None,
    samples: int = 1,
    merge_rule: str = "round_robin",
    seed: int = 0,
    diagnostics: dict | None = None,
) -> dict[str, float]:
    """P/R/NDCG/HR/MRR@10 of ``gen`` on the validation rows ``truth`` (from ``limits`` on) of
    ``users`` (default: every user with validation rows), ``samples`` a user merged by
    ``merge_rule``, asked of a :class:`Recommender` over ``gen`` like every other inference.
    ``per_user``, if given, receives ``users`` and ``ndcg@10``: each scored user's NDCG@10
    (what `ganrec compare` pairs). ``diagnostics``, if given (and G takes noise), receives
    ``sample_cosine`` and ``top10_overlap`` of :func:`sample_diagnostics`."""
    users = validation_users(seq, limits) if users is None else users
    if len(users) == 0:  # a rank whose users have no validation rows
        if per_user is not None:
            per_user.update(users=np.zeros(0, np.int64), ndcg=np.zeros(0))
        return {f"{m}@10": 0.0 for m in METRICS}
    was_training = gen.training
    gen.eval()
    try:
        rec = Recommender.over(gen, seq, index_cfg=index_cfg, merge=merge_rule, seed=seed)
        recs = validation_recommendations(rec, seq, limits=limits, users=users, samples=samples)
        if diagnostics is not None and gen.takes_noise:
            diagnostics.update(
                sample_diagnostics(
                    rec,
                    seq,
                    users=users[:DIAGNOSTIC_USERS],
                    limits=limits,
                    samples=max(samples, DIAGNOSTIC_SAMPLES),
                )
            )
    finally:
        gen.train(was_training)
    if per_user is not None:
        scored, ndcg = user_ndcg(recs, truth, 10)
        per_user.update(users=scored, ndcg=ndcg)
    return ranking_metrics(recs, truth, [10])


def sample_diagnostics(
    rec: Recommender, seq: Sequences, *, users: np.ndarray, limits: np.ndarray, samples: int
) -> dict[str, float]:
    """Whether G's samples differ: the mean cosine between two samples of a user, and the mean
    share of one sample's top-10 that another also has (1.0 and 1.0: the noise is inert)."""
    users = users.astype(np.int64)
    histories, seen = _inputs(rec, seq, limits=limits, users=users)
    items, _, vectors = rec.sample_lists(histories, users, seen, 10, samples=samples)
    return {"sample_cosine": pairwise_cosine(vectors), "top10_overlap": list_overlap(items, 10)}
