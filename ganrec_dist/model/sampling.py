"""Several recommendations per user from G's noise, all of it: the settings' check, the
training terms, the draws, the merge and the diagnostics. Off by default (one sample, z = 0);
the rest of the code reaches it through narrow hooks: ``check`` (train), ``SamplingTerms``
(what the worker hands the G-step, whose ``loss`` replaces the plain cross-entropy), the
Recommender's ``samples``/``merge`` and ``evaluation/diversity.py``, the evaluation section that
measures whether it pays.

Sample 0 is always z = 0 (the noise's mean, the deterministic vector inference used before
sampling existed); samples 1..K-1 are standard normal draws. The draws are a pure function of
(seed, key, sample, coordinate), where the key is the user index for a known user and a digest
of the padded history window for an unknown one, so that a user gets the same samples in
validation, `evaluate`, `score` and over HTTP, whatever batch they land in.

Merging K per-sample top-k lists into one list of k (seen items were excluded in each search):

- ``round_robin``: each sample's best item, then each sample's second, ..., an item already
  taken skipped: every sample contributes to the head of the list.
- ``max``: an item's score is its best score over the samples; the k best.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ganrec_dist.core.errors import UserError

MERGES = ("round_robin", "max")
MAX_SAMPLES = 32

# The mode-seeking term is 1 / (ratio + eps) (Mao et al., CVPR 2019, MSGAN): eps bounds it (and
# its gradient) when two samples coincide.
_MODE_SEEKING_EPS = 1e-2

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_UNKNOWN = np.uint64(0xD1B54A32D192ED03)  # keeps history keys apart from user-index keys


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise on uint64 (wrapping arithmetic is the point)."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64, copy=True)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def keys(users: np.ndarray, histories: np.ndarray, n_users: int) -> np.ndarray:
    """One noise key per row ``[b]`` uint64: the user index for a known user (``0 <= u <
    n_users``), else a digest of the row's padded history window."""
    users = np.asarray(users, dtype=np.int64)
    known = (users >= 0) & (users < n_users)
    out = _mix(users.astype(np.uint64) + np.uint64(1))
    if not known.all():
        h = np.full(len(users), _UNKNOWN, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for column in np.asarray(histories, dtype=np.int64).T:
                h = _mix(h ^ (column.astype(np.uint64) + _GOLDEN))
        out = np.where(known, out, h)
    return out


def noise(seed: int, row_keys: np.ndarray, samples: int, dim: int) -> np.ndarray:
    """``[b, samples, dim]`` float32: zeros for sample 0, standard normal draws for the rest,
    each a function of (seed, key, sample, coordinate) only (Box-Muller over hashed counters)."""
    b = len(row_keys)
    out = np.zeros((b, samples, dim), dtype=np.float32)
    if samples <= 1 or b == 0:
        return out
    with np.errstate(over="ignore"):
        base = _mix(
            np.asarray(row_keys, dtype=np.uint64)
            ^ _mix(np.asarray([seed % 2**64], dtype=np.uint64) + _GOLDEN)
        )
        counter = np.arange(1, (samples - 1) * dim + 1, dtype=np.uint64) * np.uint64(2)
        a = _mix(base[:, None] + counter[None, :] * _GOLDEN)
        c = _mix(base[:, None] + (counter[None, :] + np.uint64(1)) * _GOLDEN)
    # 53-bit uniforms in (0, 1] and [0, 1)
    u1 = ((a >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0**53
    u2 = (c >> np.uint64(11)).astype(np.float64) / 2.0**53
    normal = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    out[:, 1:] = normal.reshape(b, samples - 1, dim)
    return out


def merge(
    items: np.ndarray, scores: np.ndarray, k: int, rule: str = "round_robin"
) -> tuple[np.ndarray, np.ndarray]:
    """One list of ``k`` per row from per-sample lists ``items``/``scores`` ``[b, K, k]``
    (-1 / -inf mark gaps). Each item appears once; a row has fewer than ``k`` (then -1 / -inf)
    only when its samples found fewer distinct items. ``[b, k]`` each."""
    if rule not in MERGES:
        raise ValueError(f"merge {rule!r}: expected one of {', '.join(MERGES)}")
    b, n_samples, depth = items.shape
    if n_samples == 1:
        return items[:, 0, :k].copy(), scores[:, 0, :k].copy()
    if rule == "round_robin":  # rank-major: every sample's first, then every sample's second
        flat = items.transpose(0, 2, 1).reshape(b, -1)
        flat_scores = scores.transpose(0, 2, 1).reshape(b, -1)
        first = _first_occurrence(flat, np.zeros_like(flat_scores))
    else:
        flat, flat_scores = items.reshape(b, -1), scores.reshape(b, -1)
        first = _first_occurrence(flat, -flat_scores)  # an item's best score comes first
    keep = first & (flat >= 0)
    if rule == "max":  # the kept entries, best score first
        order = np.argsort(np.where(keep, -flat_scores, np.inf), axis=1, kind="stable")
    else:  # the kept entries, in round-robin order
        order = np.argsort(~keep, axis=1, kind="stable")
    order = order[:, :k]
    out_items = np.take_along_axis(flat, order, axis=1)
    out_scores = np.take_along_axis(flat_scores, order, axis=1)
    valid = np.take_along_axis(keep, order, axis=1)
    out_items = np.where(valid, out_items, -1)
    out_scores = np.where(valid, out_scores, -np.inf).astype(np.float32)
    if out_items.shape[1] < k:
        pad = k - out_items.shape[1]
        out_items = np.pad(out_items, ((0, 0), (0, pad)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return out_items, out_scores


def _first_occurrence(flat: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """``[b, n]`` True where an entry is the first of its item in its row, by (``tiebreak``,
    position) order."""
    b, n = flat.shape
    position = np.broadcast_to(np.arange(n), flat.shape)
    order = np.lexsort((position, tiebreak, flat), axis=1)
    ranked = np.take_along_axis(flat, order, axis=1)
    first_sorted = np.ones_like(ranked, dtype=bool)
    first_sorted[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    return first


def pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine between two different samples of the same user, over users. ``vectors``
    ``[b, K, dim]``, K >= 2 (1.0: the samples are one direction, the noise is inert)."""
    b, n_samples, _ = vectors.shape
    if n_samples < 2 or b == 0:
        return 1.0
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=2, keepdims=True), 1e-12)
    gram = np.einsum("bkd,bjd->bkj", unit, unit)
    upper = np.triu_indices(n_samples, 1)
    return float(gram[:, upper[0], upper[1]].mean())


def list_overlap(items: np.ndarray, k: int = 10) -> float:
    """Mean share of a sample's top-``k`` that another sample of the same user also has, over
    pairs of samples and users. ``items`` ``[b, K, >=k]`` (1.0: every sample gives the same
    list)."""
    b, n_samples, _ = items.shape
    if n_samples < 2 or b == 0:
        return 1.0
    top = items[:, :, :k]
    shares = []
    for i in range(n_samples):
        for j in range(i + 1, n_samples):
            common = (top[:, i, :, None] == top[:, j, None, :]) & (top[:, i, :, None] >= 0)
            sizes = np.maximum((top[:, i] >= 0).sum(axis=1), 1)
            shares.append(common.any(axis=2).sum(axis=1) / sizes)
    return float(np.mean(shares))


def check(settings: Any, takes_noise: bool, noisy_encoders: str) -> None:
    """Refuse sampling settings (``SamplingSettings``) that cannot run, in one line."""
    if not 1 <= settings.samples <= MAX_SAMPLES:
        raise UserError(f"--samples must be in 1..{MAX_SAMPLES}, got {settings.samples}")
    if settings.merge not in MERGES:
        raise UserError(f"--merge {settings.merge!r}: expected one of {', '.join(MERGES)}")
    if not 0 <= settings.best_of <= MAX_SAMPLES:
        raise UserError(f"--best_of must be in 0..{MAX_SAMPLES}, got {settings.best_of}")
    if settings.mode_seeking < 0:
        raise UserError(f"--mode_seeking must be at least 0, got {settings.mode_seeking}")
    uses_noise = settings.samples > 1 or settings.best_of > 1 or settings.mode_seeking > 0
    if uses_noise and not takes_noise:
        raise UserError(
            f"--samples, --best_of and --mode_seeking need G's noise: encoder {noisy_encoders}"
        )


@dataclass
class SamplingTerms:
    """The sampling terms of a G-step: ``draws`` ``[b, S, noise_dim]`` extra noise, S at least
    ``best_of - 1`` and at least 2 with a mode-seeking term."""

    draws: torch.Tensor
    best_of: int = 0
    mode_seeking: float = 0.0

    @staticmethod
    def draws_needed(settings: Any) -> int:
        return max(settings.best_of - 1, 2 if settings.mode_seeking > 0 else 0, 0)

    @property
    def active(self) -> bool:
        return self.best_of > 1 or self.mode_seeking > 0

    def loss(
        self,
        core: Any,
        state: torch.Tensor,
        *,
        ce: torch.Tensor,
        row_ce: torch.Tensor | None,
        per_sample_ce: Callable[[torch.Tensor, int], torch.Tensor],
        stats: dict[str, float],
    ) -> torch.Tensor:
        """What G minimises in place of the plain cross-entropy ``ce``: the best-of-K softmax
        (each row's lowest cross-entropy over z = 0, whose per-row values are ``row_ce``, and
        K-1 draws, scored by ``per_sample_ce``), plus the mode-seeking term. ``core`` is the
        generator (``generate``); its diagnostics go into ``stats``."""
        b, draws, loss = len(state), self.draws, ce
        if self.best_of > 1:
            assert row_ce is not None
            extra = self.best_of - 1
            vectors = core.generate(
                state.repeat_interleave(extra, dim=0), draws[:, :extra].reshape(b * extra, -1)
            )
            every = torch.cat([row_ce[:, None], per_sample_ce(vectors, extra)], dim=1)  # [b, K]
            best, chosen = every.min(dim=1)
            loss = best.mean()
            stats["best_of_loss"] = float(loss.detach())
            # How often z = 0 explains the target best: near 1, the draws are not used.
            stats["best_of_mean_share"] = float((chosen == 0).float().mean())
        if self.mode_seeking > 0:
            a = core.generate(state, draws[:, 0])
            c = core.generate(state, draws[:, 1])
            out_distance = 1.0 - F.cosine_similarity(a, c, dim=1)
            noise_distance = (draws[:, 0] - draws[:, 1]).abs().mean(dim=1)
            ratio = (out_distance / noise_distance.clamp_min(1e-6)).mean()
            loss = loss + self.mode_seeking / (ratio + _MODE_SEEKING_EPS)
            stats["mode_seeking_ratio"] = float(ratio.detach())
        return loss
