"""Validation during training: each user's held-out train rows, scored through the same
retrieval path (G(u, z = 0) -> index -> top-k, seen items excluded) as evaluation and serving."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ganrec_dist.config import IndexConfig
from ganrec_dist.index import build_index, search_excluding
from ganrec_dist.interactions import Sequences
from ganrec_dist.metrics import ranking_metrics
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


def validation_recommendations(
    vectors: np.ndarray,
    catalogue: np.ndarray,
    seq: Sequences,
    *,
    limits: np.ndarray,
    index_cfg: IndexConfig,
    k: int = 10,
) -> np.ndarray:
    """Top-``k`` items ``[n_users, k]`` (-1 for users without validation rows) for query
    ``vectors``, one per ``validation_users``, each user's fitted items excluded, searched in an
    index of ``index_cfg``'s kind over ``catalogue``."""
    users = validation_users(seq, limits)
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
) -> dict[str, float]:
    """P/R/NDCG/HR/MRR@10 of ``gen`` on the validation rows ``truth`` (from ``limits`` on)."""
    users = validation_users(seq, limits)
    vectors = user_vectors(gen, seq, users=users, ends=limits[users], device=device)
    catalogue = gen.catalogue().detach().float().cpu().numpy()
    recs = validation_recommendations(vectors, catalogue, seq, limits=limits, index_cfg=index_cfg)
    return ranking_metrics(recs, truth, [10])
