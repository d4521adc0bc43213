"""Validation during training: each user's held-out train rows, scored through the same
retrieval path (G(u, z = 0) -> index -> top-k, seen items excluded) as evaluation and serving."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ganrec_dist.config import IndexConfig
from ganrec_dist.index import build_index, search_excluding
from ganrec_dist.interactions import Sequences
from ganrec_dist.metrics import METRICS, ranking_metrics, user_ndcg
from ganrec_dist.models import Generator


@torch.no_grad()
def user_vectors(
    gen: Generator,
    seq: Sequences,
    *,
    users: np.ndarray,
    ends: np.ndarray,
    device: torch.device,
    batch: int = 4096,
) -> np.ndarray:
    """Deterministic G(u, z = 0) for ``users``, from each one's items before ``ends``. ``[n, dim]``"""
    was_training = gen.training
    gen.eval()
    out = []
    for start in range(0, len(users), batch):
        u = users[start : start + batch]
        history = torch.as_tensor(
            seq.window(u, ends[start : start + batch], gen.cfg.history_len), device=device
        )
        state = gen.encoder(history, torch.as_tensor(u.astype(np.int64), device=device))
        out.append(gen.generate(state, None).float().cpu().numpy())
    gen.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, gen.cfg.dim), np.float32)


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
    vectors: np.ndarray,
    catalogue: np.ndarray,
    seq: Sequences,
    *,
    limits: np.ndarray,
    index_cfg: IndexConfig,
    k: int = 10,
    users: np.ndarray | None = None,
) -> np.ndarray:
    """Top-``k`` items ``[n_users, k]`` (-1 for the other users) for query ``vectors``, one per
    user of ``users`` (default: ``validation_users``), each user's fitted items excluded,
    searched in an index of ``index_cfg``'s kind over ``catalogue``."""
    users = validation_users(seq, limits) if users is None else users
    index = build_index(catalogue, index_cfg)
    seen = [seq.items[seq.offsets[u] : seq.offsets[u] + limits[u]] for u in users]
    recs = np.full((seq.n_users, k), -1, dtype=np.int64)
    recs[users], _ = search_excluding(index, vectors, seen, k)
    return recs


def validation_metrics(
    gen: Generator,
    seq: Sequences,
    *,
    limits: np.ndarray,
    truth: sp.csr_matrix,
    index_cfg: IndexConfig,
    device: torch.device,
    users: np.ndarray | None = None,
    per_user: dict | None = None,
) -> dict[str, float]:
    """P/R/NDCG/HR/MRR@10 of ``gen`` on the validation rows ``truth`` (from ``limits`` on) of
    ``users`` (default: every user with validation rows). ``per_user``, if given, receives
    ``users`` and ``ndcg@10``: each scored user's NDCG@10 (what `ganrec compare` pairs)."""
    users = validation_users(seq, limits) if users is None else users
    if len(users) == 0:  # a rank whose users have no validation rows
        if per_user is not None:
            per_user.update(users=np.zeros(0, np.int64), ndcg=np.zeros(0))
        return {f"{m}@10": 0.0 for m in METRICS}
    vectors = user_vectors(gen, seq, users=users, ends=limits[users], device=device)
    catalogue = gen.catalogue().detach().float().cpu().numpy()
    recs = validation_recommendations(
        vectors, catalogue, seq, limits=limits, index_cfg=index_cfg, users=users
    )
    if per_user is not None:
        scored, ndcg = user_ndcg(recs, truth, 10)
        per_user.update(users=scored, ndcg=ndcg)
    return ranking_metrics(recs, truth, [10])
