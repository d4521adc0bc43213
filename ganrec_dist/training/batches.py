"""Training rows -> model batches: the history before each interaction, and the targets."""

from __future__ import annotations

import numpy as np
import torch

from ganrec_dist.data.interactions import Sequences
from ganrec_dist.training.gan import Batch


def make_batch(
    seq: Sequences,
    *,
    users: np.ndarray,
    items: np.ndarray,
    positions: np.ndarray,
    history_len: int,
    device: torch.device,
    limits: np.ndarray | None = None,
    horizon: int = 1,
    rng: np.random.Generator | None = None,
    ce_horizon: int = 1,
) -> Batch:
    """Rows (user, next item, its position) -> a batch whose history is the items before it.

    With ``horizon > 1`` the batch also carries, for D, a real item drawn from the user's next
    ``horizon`` interactions (within ``limits``), the window a recommendation is judged on. With
    ``ce_horizon > 1`` the softmax target is drawn the same way from the next ``ce_horizon``.
    """
    history = seq.window(users, positions, history_len)

    def ahead_item(window: int) -> np.ndarray:
        assert rng is not None and limits is not None
        ahead = np.minimum(positions + rng.integers(0, window, len(users)), limits[users] - 1)
        ahead = np.maximum(ahead, positions)
        return seq.items[seq.offsets[users] + ahead].astype(np.int64)

    sampling = rng is not None and limits is not None
    future = (
        torch.as_tensor(ahead_item(horizon), device=device) if horizon > 1 and sampling else None
    )
    targets = ahead_item(ce_horizon) if ce_horizon > 1 and sampling else items.astype(np.int64)
    return Batch(
        history=torch.as_tensor(history, device=device),
        users=torch.as_tensor(users.astype(np.int64), device=device),
        targets=torch.as_tensor(targets, device=device),
        future=future,
    )


def chunk_ends(
    positions: np.ndarray, limits: np.ndarray, users: np.ndarray, stride: int
) -> np.ndarray:
    """Which rows end a chunk: a user's fitted rows (before ``limits[u]``) counted back from the
    last in steps of ``stride``, so that an epoch over the rows trains every fitted row once as
    a target of the chunk that ends within ``stride`` after it."""
    last = limits[users] - 1
    return (positions <= last) & ((last - positions) % stride == 0)


def make_sequence_batch(
    seq: Sequences,
    *,
    users: np.ndarray,
    ends: np.ndarray,
    length: int,
    stride: int,
    device: torch.device,
) -> Batch:
    """Chunks for every-position training (SASRec's own way): each row is a window of ``length``
    items up to position ``ends``; its ``targets`` ``[c, length]`` are those items, its
    ``history`` the same items one step back (the input at a position is the item before its
    target), both padded on the left with ``n_items``. Only the window's last ``stride`` targets
    are trained (the others are padded: the chunk ``stride`` earlier trains them with a longer
    history), except in a user's first chunk, which trains all of its own. Chunks ``stride``
    apart therefore train each row once, each with at least ``length - stride`` items before it
    in the window, or all there are."""
    history = seq.window(users, ends, length)
    targets = seq.window(users, ends + 1, length)
    first = ends < stride  # no chunk ends `stride` earlier
    positions = ends[:, None] - length + 1 + np.arange(length)[None, :]
    trained = (positions > (ends - stride)[:, None]) | first[:, None]
    targets = np.where(trained, targets, seq.n_items)
    return Batch(
        history=torch.as_tensor(history, device=device),
        users=torch.as_tensor(users.astype(np.int64), device=device),
        targets=torch.as_tensor(targets, device=device),
    )
