"""Validation during training: each user's held-out train rows, scored through the same
retrieval path (G(u, z) -> index -> top-k, seen items excluded; K samples merged as in
``sampling``) as evaluation and serving."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ganrec_dist.config import IndexConfig
from ganrec_dist.index import build_index, search_excluding
from ganrec_dist.interactions import Sequences
from ganrec_dist.metrics import METRICS, ranking_metrics, user_ndcg
from ganrec_dist.models import Generator
from ganrec_dist.sampling import keys, list_overlap, merge, noise, pairwise_cosine

# Users the sample diagnostics (cosine, list overlap) are measured on, and their draws: enough
# for a stable mean, few enough that validation's cost does not grow with them.
DIAGNOSTIC_USERS = 1000
DIAGNOSTIC_SAMPLES = 4


@torch.no_grad()
def user_vectors(
    gen: Generator,
    seq: Sequences,
    *,
    users: np.ndarray,
    ends: np.ndarray,
    device: torch.device,
    batch: int = 4096,
    samples: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """G(u, z) for ``users``, from each one's items before ``ends``: ``[n, dim]`` at z = 0 for
    one sample, else ``[n, samples, dim]`` with the noise of ``sampling.noise`` (the draws
    `evaluate`, `score` and serving make for the same users)."""
    was_training = gen.training
    gen.eval()
    out = []
    noisy = samples > 1 and gen.head is not None
    for start in range(0, len(users), batch):
        u = users[start : start + batch].astype(np.int64)
        window = seq.window(u, ends[start : start + batch], gen.cfg.history_len)
        state = gen.encoder(
            torch.as_tensor(window, device=device), torch.as_tensor(u, device=device)
        )
        if not noisy:
            vector = gen.generate(state, None).float().cpu().numpy()
            out.append(vector if samples == 1 else np.repeat(vector[:, None], samples, axis=1))
            continue
        z = noise(seed, keys(u, window, gen.cfg.n_users), samples, gen.cfg.noise_dim)
        flat = gen.generate(
            state.repeat_interleave(samples, dim=0),
            torch.as_tensor(z.reshape(len(u) * samples, -1), device=device),
        )
        out.append(flat.float().cpu().numpy().reshape(len(u), samples, -1))
    gen.train(was_training)
    empty = (0, gen.cfg.dim) if samples == 1 else (0, samples, gen.cfg.dim)
    return np.concatenate(out) if out else np.zeros(empty, np.float32)


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
    merge_rule: str = "round_robin",
    index=None,
    per_sample: dict | None = None,
) -> np.ndarray:
    """Top-``k`` items ``[n_users, k]`` (-1 for the other users) for query ``vectors``, one per
    user of ``users`` (default: ``validation_users``), each user's fitted items excluded,
    searched in an index of ``index_cfg``'s kind over ``catalogue`` (or ``index``). Vectors
    ``[n, K, dim]`` are K samples a user, their lists merged by ``merge_rule``; ``per_sample``,
    if given, receives those lists as ``items`` ``[n, K, k]``."""
    users = validation_users(seq, limits) if users is None else users
    index = build_index(catalogue, index_cfg) if index is None else index
    seen = [seq.items[seq.offsets[u] : seq.offsets[u] + limits[u]] for u in users]
    recs = np.full((seq.n_users, k), -1, dtype=np.int64)
    if vectors.ndim == 2:
        recs[users], _ = search_excluding(index, vectors, seen, k)
        return recs
    n, n_samples, dim = vectors.shape
    repeated = [s for s in seen for _ in range(n_samples)]
    items, scores = search_excluding(index, vectors.reshape(n * n_samples, dim), repeated, k)
    items, scores = items.reshape(n, n_samples, k), scores.reshape(n, n_samples, k)
    if per_sample is not None:
        per_sample["items"] = items
    recs[users], _ = merge(items, scores, k, merge_rule)
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
    samples: int = 1,
    merge_rule: str = "round_robin",
    seed: int = 0,
    diagnostics: dict | None = None,
) -> dict[str, float]:
    """P/R/NDCG/HR/MRR@10 of ``gen`` on the validation rows ``truth`` (from ``limits`` on) of
    ``users`` (default: every user with validation rows), ``samples`` a user merged by
    ``merge_rule``. ``per_user``, if given, receives ``users`` and ``ndcg@10``: each scored
    user's NDCG@10 (what `ganrec compare` pairs). ``diagnostics``, if given (and G takes
    noise), receives ``sample_cosine`` and ``top10_overlap`` of :func:`sample_diagnostics`."""
    users = validation_users(seq, limits) if users is None else users
    if len(users) == 0:  # a rank whose users have no validation rows
        if per_user is not None:
            per_user.update(users=np.zeros(0, np.int64), ndcg=np.zeros(0))
        return {f"{m}@10": 0.0 for m in METRICS}
    vectors = user_vectors(
        gen, seq, users=users, ends=limits[users], device=device, samples=samples, seed=seed
    )
    catalogue = gen.catalogue().detach().float().cpu().numpy()
    index = build_index(catalogue, index_cfg)
    recs = validation_recommendations(
        vectors,
        catalogue,
        seq,
        limits=limits,
        index_cfg=index_cfg,
        users=users,
        merge_rule=merge_rule,
        index=index,
    )
    if per_user is not None:
        scored, ndcg = user_ndcg(recs, truth, 10)
        per_user.update(users=scored, ndcg=ndcg)
    if diagnostics is not None and gen.head is not None:
        diagnostics.update(
            sample_diagnostics(
                gen,
                seq,
                users=users[:DIAGNOSTIC_USERS],
                limits=limits,
                index=index,
                device=device,
                samples=max(samples, DIAGNOSTIC_SAMPLES),
                seed=seed,
            )
        )
    return ranking_metrics(recs, truth, [10])


def sample_diagnostics(
    gen: Generator,
    seq: Sequences,
    *,
    users: np.ndarray,
    limits: np.ndarray,
    index,
    device: torch.device,
    samples: int,
    seed: int,
) -> dict[str, float]:
    """Whether G's samples differ: the mean cosine between two samples of a user, and the mean
    share of one sample's top-10 that another also has (1.0 and 1.0: the noise is inert)."""
    vectors = user_vectors(
        gen, seq, users=users, ends=limits[users], device=device, samples=samples, seed=seed
    )
    lists: dict = {}
    validation_recommendations(
        vectors,
        np.zeros((0, gen.cfg.dim), np.float32),
        seq,
        limits=limits,
        index_cfg=IndexConfig(),
        users=users,
        index=index,
        per_sample=lists,
    )
    return {
        "sample_cosine": pairwise_cosine(vectors),
        "top10_overlap": list_overlap(lists["items"], 10),
    }
