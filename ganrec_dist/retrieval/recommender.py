"""Load a trained run and turn users into items: G(u, z) -> FAISS index -> top-k.

One sample is G(u, z = 0); K samples are K searches merged into one list (``sampling``).

Validation during training, the update's gate, evaluation, offline scoring and online serving all
recommend through this class (a trained run's, or :meth:`Recommender.over` the generator in
training), so the same user gets the same items everywhere.
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ganrec_dist.core.config import IndexConfig
from ganrec_dist.data.interactions import Sequences
from ganrec_dist.data.layout import RunDir, retired_items
from ganrec_dist.model.models import Generator, generator_from_state
from ganrec_dist.model.sampling import MAX_SAMPLES, keys, merge, noise
from ganrec_dist.retrieval.index import ExactIndex, build_index, load_index, search_excluding

log = logging.getLogger(__name__)


def load_parts(run: RunDir) -> dict[str, Any]:
    """What a :class:`Recommender` is made of, as numpy arrays, Arrow tables and plain data.

    Put in Ray's object store once, these are read zero-copy by every actor and replica on a
    node (numpy arrays and Arrow buffers are mapped, not copied, on ``ray.get``): the model's
    tables (the catalogue embeddings are a view of G's item table), every user's train items,
    the popularity order and the id maps.
    """
    payload = run.payload()
    seq, popularity = run.sequences()
    items, users = run.id_maps()
    return {
        "model_config": payload["model_config"],
        "train_config": payload["train_config"],
        "generator": {k: v.numpy() for k, v in payload["generator"].items()},
        "offsets": seq.offsets,
        "items": seq.items,
        "popularity": popularity,
        "popular": np.argsort(-popularity, kind="stable"),
        "item_table": items.combine_chunks(),
        "user_table": users.combine_chunks(),
        # Items new in the run's DATA's newest partition start here (the whole catalogue's
        # size, so none, for a run from before this was recorded).
        "new_items_from": int(payload.get("new_items_from", payload["model_config"]["n_items"])),
    }


def _generator(parts: dict[str, Any]) -> Generator:
    """G over the parts' own arrays (no copy: on a node they are the object store's)."""
    with warnings.catch_warnings():
        # Read-only arrays of the object store: inference never writes to them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {k: torch.from_numpy(v) for k, v in parts["generator"].items()}
    return generator_from_state(parts["model_config"], tensors)


# Users a forward pass of G takes at once: its activations stay a few MB whatever the caller asks.
VECTOR_BATCH = 4096


class Recommender:
    """A trained generator, its catalogue and the retrieval index, rebuilt from RUN/ alone,
    or from :func:`load_parts` of it shared through the object store; or, with :meth:`over`, a
    generator in memory (validation while it trains) over the sequences it validates on."""

    # Known users' slots for new items (a run's content settings; none for :meth:`over`).
    explore_known = 0
    new_items = np.zeros(0, np.int64)

    def __init__(
        self,
        run: str | Path,
        index_cfg: IndexConfig | None = None,
        parts: dict[str, Any] | None = None,
    ) -> None:
        self.run = RunDir.open(run)  # a URI run: its local cache copy, fetched if stale
        parts = load_parts(self.run) if parts is None else parts
        self.meta = self.run.meta()
        generator = _generator(parts)
        self.train_config = parts["train_config"]
        self.item_table, self.user_table = parts["item_table"], parts["user_table"]
        # Every known user's train items in time order: histories and seen-item exclusion.
        sequences = Sequences(
            parts["offsets"], parts["items"], generator.cfg.n_users, generator.cfg.n_items
        )
        self.popularity, self.popular = parts["popularity"], parts["popular"]
        # The run's own inference settings (runs from before sampling: one sample).
        sampling = self.train_config.get("sampling", {})
        self._retrieval(
            generator,
            sequences,
            # RUN/index/ when `ganrec index` built one (checked against these embeddings), else
            # the run's index settings.
            index_cfg=None
            if index_cfg is None and (self.run.index / RunDir.META).exists()
            else index_cfg or IndexConfig(**self.train_config["index"]),
            samples=int(sampling.get("samples", 1)),
            merge=str(sampling.get("merge", "round_robin")),
            seed=int(self.train_config.get("seed", 0)),
            # Items retired from the catalogue (prepare --retire) keep their rows and are never
            # recommended: left out of every search like a user's seen items.
            retired=retired_items(self.item_table),
        )
        self.version = self.run.version()
        content = self.train_config.get("content", {})
        # Items without a train interaction have rows only when the tower wrote them.
        tower_on = content.get("tower", "off") != "off"
        self.explore_share = float(content.get("explore_share", 0.1)) if tower_on else 0.0
        self.explore_known = int(content.get("explore_known", 0)) if tower_on else 0
        new = np.arange(parts["new_items_from"], generator.cfg.n_items)
        self.new_items = new[~np.isin(new, self.retired)] if len(self.retired) else new

    @classmethod
    def over(
        cls,
        generator: Generator,
        sequences: Sequences,
        *,
        index_cfg: IndexConfig,
        samples: int = 1,
        merge: str = "round_robin",
        seed: int = 0,
    ) -> Recommender:
        """The retrieval path over a generator in memory (in eval mode; on its own device) and
        the ``sequences`` its users' histories come from: what validation asks. It has no run:
        no id maps, no popularity fallback, no retired items."""
        rec = cls.__new__(cls)
        rec._retrieval(
            generator,
            sequences,
            index_cfg=index_cfg,
            samples=samples,
            merge=merge,
            seed=seed,
            retired=np.zeros(0, np.int64),
        )
        return rec

    def _retrieval(
        self,
        generator: Generator,
        sequences: Sequences,
        *,
        index_cfg: IndexConfig | None,
        samples: int,
        merge: str,
        seed: int,
        retired: np.ndarray,
    ) -> None:
        """G, its catalogue's index (``index_cfg``; None: RUN/index/) and the inference
        settings; exact search completes rows an ANN index leaves short."""
        self.generator, self.model_config, self.sequences = generator, generator.cfg, sequences
        self.device = next(generator.parameters()).device
        self.embeddings = generator.catalogue().detach().float().cpu().numpy()
        self.exact = ExactIndex(self.embeddings)
        if index_cfg is None:
            self.index, self.index_meta = load_index(self.run, self.embeddings)
        else:
            flat = index_cfg.kind == "flat"
            self.index = self.exact if flat else build_index(self.embeddings, index_cfg)
            self.index_meta = {"kind": index_cfg.kind}
        self.samples, self.merge, self.seed, self.retired = samples, merge, seed, retired

    # The id maps as Python objects, built on first use (serving's lookups, the demo); scoring
    # takes ids straight from the shared Arrow columns instead.

    @functools.cached_property
    def item_ids(self) -> np.ndarray:
        return self.item_table["item_id"].to_numpy(zero_copy_only=False)

    @functools.cached_property
    def user_ids(self) -> np.ndarray:
        return self.user_table["user_id"].to_numpy(zero_copy_only=False)

    @functools.cached_property
    def item_index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.item_ids)}

    @functools.cached_property
    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}

    @functools.cached_property
    def item_titles(self) -> list | None:
        table = self.item_table
        return table["title"].to_pylist() if "title" in table.column_names else None

    def ids(self, column: str, indices: np.ndarray) -> np.ndarray:
        """``item_id`` or ``user_id`` of ``indices``, taken from the id map's Arrow column."""
        table = self.item_table if column == "item_id" else self.user_table
        return table[column].take(pa.array(indices)).to_numpy(zero_copy_only=False)

    def seen(self, user: int) -> np.ndarray:
        """A known user's train items, in time order."""
        seq = self.sequences
        return seq.items[seq.offsets[user] : seq.offsets[user + 1]]

    def popular_items(self, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The no-history fallback: the k most popular train items not in ``exclude`` nor
        retired, except that with the content tower on the last ``floor(k * explore_share)``
        slots go to items nobody has touched yet (their rows are the tower's), newest (highest
        index) first, score 0; popular items fill the slots there are no such items for."""
        exclude = np.concatenate([exclude, self.retired]) if len(self.retired) else exclude
        fresh = self.fresh_items[: int(k * self.explore_share) + len(exclude)]
        fresh = fresh[~np.isin(fresh, exclude)][: int(k * self.explore_share)]
        candidates = self.popular[: k + len(exclude)]
        chosen = candidates[~np.isin(candidates, exclude)][: k - len(fresh)]
        chosen = np.concatenate([chosen, fresh]).astype(np.int64)
        return chosen, self.popularity[chosen].astype(np.float32)

    @functools.cached_property
    def fresh_items(self) -> np.ndarray:
        """Items with no train interaction and not retired, newest (highest index) first."""
        untouched = np.flatnonzero(self.popularity == 0)[::-1]
        return untouched[~np.isin(untouched, self.retired)] if len(self.retired) else untouched

    @property
    def history_len(self) -> int:
        return self.model_config.history_len

    def label(self, item: int) -> str:
        """An item's id, with its title where the data has titles."""
        title = self.item_titles[item] if self.item_titles else None
        return f"{self.item_ids[item]} {title}" if title else str(self.item_ids[item])

    def vectors(self, histories: np.ndarray, users: np.ndarray, samples: int = 1) -> np.ndarray:
        """G(u, z_1..z_K) for ``[b, history_len]`` padded histories and ``[b]`` user indices:
        ``[b, dim]`` for one sample (z = 0), else ``[b, samples, dim]`` (``sampling.noise``)."""
        parts = [
            self._vectors(histories[i : i + VECTOR_BATCH], users[i : i + VECTOR_BATCH], samples)
            for i in range(0, len(users), VECTOR_BATCH)
        ]
        empty = (0, self.model_config.dim) if samples == 1 else (0, samples, self.model_config.dim)
        return np.concatenate(parts) if parts else np.zeros(empty, np.float32)

    @torch.no_grad()
    def _vectors(self, histories: np.ndarray, users: np.ndarray, samples: int) -> np.ndarray:
        state = self.generator.encoder(
            torch.as_tensor(histories, dtype=torch.long, device=self.device),
            torch.as_tensor(users, dtype=torch.long, device=self.device),
        )
        if samples == 1 or not self.generator.takes_noise:
            vector = self.generator.generate(state, None).float().cpu().numpy()
            return vector if samples == 1 else np.repeat(vector[:, None], samples, axis=1)
        z = noise(
            self.seed,
            keys(users, histories, self.model_config.n_users),
            samples,
            self.model_config.noise_dim,
        )
        b = len(state)
        flat = self.generator.generate(
            state.repeat_interleave(samples, dim=0),
            torch.as_tensor(z.reshape(b * samples, -1), device=self.device),
        )
        return flat.float().cpu().numpy().reshape(b, samples, -1)

    def search(
        self, vectors: np.ndarray, exclude: list[np.ndarray], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items and scores ``[b, k]`` for query ``vectors``: ``[b, dim]``, or ``[b, K,
        dim]`` (K samples a user, their lists merged by the run's rule); ``exclude`` items and
        the retired ones left out."""
        if len(self.retired):
            exclude = [np.concatenate([e, self.retired]) for e in exclude]
        if vectors.ndim == 2:
            return search_excluding(self.index, vectors, exclude, k, exact=self.exact)
        items, scores = self._per_sample(vectors, exclude, k)
        return merge(items, scores, k, self.merge)

    def _per_sample(
        self, vectors: np.ndarray, exclude: list[np.ndarray], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each sample's own top-k ``[b, K, k]``: one batched search of ``b * K`` queries."""
        b, samples, _ = vectors.shape
        repeated = [e for e in exclude for _ in range(samples)]
        items, scores = search_excluding(
            self.index, vectors.reshape(b * samples, -1), repeated, k, exact=self.exact
        )
        return items.reshape(b, samples, k), scores.reshape(b, samples, k)

    def sample_lists(
        self,
        histories: np.ndarray,
        users: np.ndarray,
        exclude: list[np.ndarray],
        k: int,
        samples: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each sample's own top-k (before merging): items and scores ``[b, samples, k]``, and
        the sample vectors ``[b, samples, dim]``; one batched search of ``b * samples``."""
        if not 1 <= samples <= MAX_SAMPLES:
            raise ValueError(f"samples {samples}: expected 1..{MAX_SAMPLES}")
        if len(self.retired):
            exclude = [np.concatenate([e, self.retired]) for e in exclude]
        vectors = self.vectors(histories, users, samples).reshape(len(users), samples, -1)
        items, scores = self._per_sample(vectors, exclude, k)
        return items, scores, vectors

    def recommend(
        self,
        histories: np.ndarray,
        users: np.ndarray,
        exclude: list[np.ndarray],
        k: int,
        samples: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores per user, ``exclude`` items (and the retired ones)
        left out; ``samples`` noise draws merged by the run's rule (None: the run's default).
        ``[b, k]`` each."""
        samples = self.samples if samples is None else samples
        if samples == 1:
            plain = self.vectors(histories, users)  # G(u, z = 0)
            items, scores = self.search(plain, exclude, k)
        else:
            found, found_scores, sampled = self.sample_lists(
                histories, users, exclude, k, samples=samples
            )
            plain = sampled[:, 0]  # sample 0 is z = 0
            items, scores = merge(found, found_scores, k, self.merge)
        if self.explore_known and len(self.new_items) and len(users):
            items, scores = self._with_new_items(plain, exclude, items=items, scores=scores)
        return items, scores

    def _with_new_items(
        self,
        vectors: np.ndarray,
        exclude: list[np.ndarray],
        items: np.ndarray,
        scores: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Lists with at least ``explore_known`` new items: each user's best-scored new items
        (by ``vectors``, G at z = 0; not excluded, not already listed) replace the last items
        that are not new. New items are a day's worth of the catalogue: scored exactly, without
        the index."""
        new_scores = vectors @ self.embeddings[self.new_items].T  # [b, n_new]
        return with_new_items(
            items,
            scores,
            new_scores=new_scores,
            new_items=self.new_items,
            exclude=exclude,
            want=min(self.explore_known, items.shape[1]),
        )

    def known_inputs(
        self, users: np.ndarray, include_seen: bool = False
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Known users' padded train histories and the items to exclude (their train items,
        or none with ``include_seen``)."""
        seq = self.sequences
        histories = seq.window(users, seq.lengths[users], self.history_len)
        empty = np.zeros(0, np.int64)
        return histories, [empty if include_seen else self.seen(u) for u in users]

    def recommend_known(
        self, users: np.ndarray, k: int, include_seen: bool = False, samples: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for known user indices from their train histories, seen items excluded unless
        ``include_seen``: the path `evaluate`, `score` and the demo share. ``[b, k]`` each."""
        histories, seen = self.known_inputs(users, include_seen)
        return self.recommend(histories, users, seen, k, samples=samples)


def with_new_items(
    items: np.ndarray,
    scores: np.ndarray,
    *,
    new_scores: np.ndarray,
    new_items: np.ndarray,
    exclude: list[np.ndarray],
    want: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k lists ``items``/``scores`` [b, k] with at least ``want`` of ``new_items`` (sorted
    indices; ``new_scores`` [b, n_new] their scores for each user) each, where enough are
    neither excluded nor listed: a row's best new items (ties to the lower index) replace its
    last items that are not new, the best in the earliest of those slots. Copies; whole-batch
    array operations, so a batch costs O(b · n_new) whatever its size."""
    b, n = new_scores.shape
    items, scores = items.copy(), scores.copy()
    if not (b and n and want):
        return items, scores
    at = np.searchsorted(new_items, items)
    is_new = new_items[np.minimum(at, n - 1)] == items  # [b, k]
    missing = want - is_new.sum(axis=1)
    if not (missing > 0).any():
        return items, scores
    blocked = np.zeros((b, n), bool)
    rows, cols = np.nonzero(is_new)
    blocked[rows, at[rows, cols]] = True
    flat = np.concatenate([np.asarray(e, np.int64) for e in exclude]) if exclude else None
    if flat is not None and len(flat):
        owner = np.repeat(np.arange(b), [len(e) for e in exclude])
        hit = np.searchsorted(new_items, flat)
        ok = new_items[np.minimum(hit, n - 1)] == flat
        blocked[owner[ok], hit[ok]] = True
    masked = np.where(blocked, -np.inf, new_scores)
    m = min(want, n)
    # Each row's m best, a tie at the m-th score going to the lower index (as a stable sort).
    kth = -np.partition(-masked, m - 1, axis=1)[:, m - 1 : m]
    tie = masked == kth
    chosen = (masked > kth) | (tie & (np.cumsum(tie, axis=1) <= m - (masked > kth).sum(1)[:, None]))
    best = np.nonzero(chosen)[1].reshape(b, m)
    best_scores = np.take_along_axis(masked, best, axis=1)
    order = np.lexsort((best, -best_scores), axis=1)  # score down, then index up
    best = np.take_along_axis(best, order, axis=1)
    best_scores = np.take_along_axis(best_scores, order, axis=1)
    count = np.minimum(np.maximum(missing, 0), np.isfinite(best_scores).sum(axis=1))  # [b]
    # A slot that is not new, counted from the end: the last ``count`` of them take the chosen.
    from_end = np.cumsum(~is_new[:, ::-1], axis=1)[:, ::-1]
    take = ~is_new & (from_end <= count[:, None])
    rows, slots = np.nonzero(take)
    pick = count[rows] - from_end[rows, slots]  # the earliest taken slot gets the best
    items[rows, slots] = new_items[best[rows, pick]]
    scores[rows, slots] = best_scores[rows, pick]
    return items, scores
