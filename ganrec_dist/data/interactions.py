"""Per-user, time-ordered interactions that training, evaluation and scoring share: item
sequences (CSR arrays), sparse user-item matrices, history windows, and the temporal split rule
that `prepare` applies for test and training applies again for validation."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import scipy.sparse as sp


def n_test_rows(counts: np.ndarray, test_fraction: float) -> np.ndarray:
    """``ceil(test_fraction * n)`` held-out rows per user in exact arithmetic; 0 for ``n == 1``."""
    frac = Fraction(str(test_fraction))
    n = counts.astype(np.int64)
    n_test = -((-n * frac.numerator) // frac.denominator)
    return np.where(n <= 1, 0, np.minimum(n_test, n - 1 if frac < 1 else n))


@dataclass
class Sequences:
    """Each user's items in time order: ``items[offsets[u]:offsets[u + 1]]``."""

    offsets: np.ndarray  # [n_users + 1] int64
    items: np.ndarray  # [rows] int32
    n_users: int
    n_items: int

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def window(self, users: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
        """The ``length`` items before position ``ends`` of each user, most recent last.

        Returns:
            ``[len(users), length]`` int64, padded on the left with ``n_items``.
        """
        start = self.offsets[users]
        idx = (start + ends)[:, None] - length + np.arange(length)[None, :]
        valid = idx >= start[:, None]
        gathered = (
            self.items[np.clip(idx, 0, max(len(self.items) - 1, 0))] if len(self.items) else idx
        )
        return np.where(valid, gathered, self.n_items).astype(np.int64)

    def matrix(self, limits: np.ndarray | None = None) -> sp.csr_matrix:
        """``[n_users, n_items]`` binary matrix of each user's first ``limits[u]`` items (all if None)."""
        ends = self.lengths if limits is None else np.minimum(limits, self.lengths)
        return self.slice_matrix(np.zeros(self.n_users, np.int64), ends)

    def slice_matrix(self, starts: np.ndarray, ends: np.ndarray) -> sp.csr_matrix:
        """``[n_users, n_items]`` binary matrix of each user's items at positions ``[starts, ends)``."""
        lengths = np.maximum(ends - starts, 0)
        rows = np.repeat(np.arange(self.n_users), lengths)
        pos = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        cols = self.items[np.repeat(self.offsets[:-1] + starts, lengths) + pos]
        m = sp.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, cols)), shape=(self.n_users, self.n_items)
        )
        m.sum_duplicates()
        m.data[:] = 1.0
        return m


def from_rows(
    users: np.ndarray, items: np.ndarray, positions: np.ndarray, *, n_users: int, n_items: int
) -> Sequences:
    """CSR sequences from ``(user, item, position)`` rows in any order."""
    order = np.lexsort((positions, users))
    counts = np.bincount(users, minlength=n_users)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Sequences(offsets, items[order].astype(np.int32), n_users, n_items)


def validation_limits(seq: Sequences, val_fraction: float) -> np.ndarray:
    """Per user, how many leading train items are fitted; the rest is the validation split.

    The same temporal rule as the test split: the last ``ceil(val_fraction * n)`` train items of
    each user with at least two are held out.
    """
    lengths = seq.lengths
    return lengths - n_test_rows(lengths, val_fraction)


def held_out(seq: Sequences, starts: np.ndarray) -> sp.csr_matrix:
    """``[n_users, n_items]`` matrix of each user's items from position ``starts[u]`` on."""
    return seq.slice_matrix(np.minimum(starts, seq.lengths), seq.lengths)
