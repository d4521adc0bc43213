"""Load a trained run and turn users into items: G(u, z = 0) -> FAISS index -> top-k.

Evaluation, offline scoring and online serving all recommend through this class, so the same
user gets the same items everywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ganrec_dist.config import IndexConfig
from ganrec_dist.index import ExactIndex, build_index, load_index, search_excluding
from ganrec_dist.layout import RunDir

log = logging.getLogger(__name__)


class Recommender:
    """A trained generator, its catalogue and the retrieval index, rebuilt from RUN/ alone."""

    def __init__(self, run: str | Path, index_cfg: IndexConfig | None = None) -> None:
        self.run = RunDir.open(run)  # a URI run: its local cache copy, fetched if stale
        payload = self.run.payload()
        self.meta = self.run.meta()
        self.generator = self.run.generator(payload)
        self.model_config = self.generator.cfg
        self.train_config = payload["train_config"]
        items, users = self.run.id_maps()
        self.item_ids = np.asarray(items["item_id"].to_pylist(), dtype=object)
        self.item_titles = items["title"].to_pylist() if "title" in items.column_names else None
        self.item_index = {item: i for i, item in enumerate(self.item_ids)}
        self.user_ids = np.asarray(users["user_id"].to_pylist(), dtype=object)
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        self.embeddings = self.generator.catalogue().detach().float().numpy()
        # Every known user's train items in time order: histories and seen-item exclusion.
        self.sequences, self.popularity = self.run.sequences()
        self.popular = np.argsort(-self.popularity, kind="stable")
        # RUN/index/ when `ganrec index` built one (checked against these embeddings), else the
        # run's index settings; exact search completes rows an ANN index leaves short.
        self.exact = ExactIndex(self.embeddings)
        if index_cfg is None and (self.run.index / RunDir.META).exists():
            self.index, self.index_meta = load_index(self.run, self.embeddings)
        else:
            cfg = index_cfg or IndexConfig(**self.train_config["index"])
            self.index = self.exact if cfg.kind == "flat" else build_index(self.embeddings, cfg)
            self.index_meta = {"kind": cfg.kind}
        self.version = self.run.version()

    def seen(self, user: int) -> np.ndarray:
        """A known user's train items, in time order."""
        seq = self.sequences
        return seq.items[seq.offsets[user] : seq.offsets[user + 1]]

    def popular_items(self, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The k most popular train items not in ``exclude`` (the no-history fallback)."""
        candidates = self.popular[: k + len(exclude)]
        chosen = candidates[~np.isin(candidates, exclude)][:k]
        return chosen, self.popularity[chosen].astype(np.float32)

    @property
    def history_len(self) -> int:
        return self.model_config.history_len

    def label(self, item: int) -> str:
        """An item's id, with its title where the data has titles."""
        title = self.item_titles[item] if self.item_titles else None
        return f"{self.item_ids[item]} {title}" if title else str(self.item_ids[item])

    @torch.no_grad()
    def vectors(self, histories: np.ndarray, users: np.ndarray) -> np.ndarray:
        """G(u, z = 0) for ``[b, history_len]`` padded histories and ``[b]`` user indices. ``[b, dim]``"""
        state = self.generator.encoder(
            torch.as_tensor(histories, dtype=torch.long), torch.as_tensor(users, dtype=torch.long)
        )
        return self.generator.generate(state, None).numpy()

    def recommend(
        self, histories: np.ndarray, users: np.ndarray, exclude: list[np.ndarray], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores per user, ``exclude`` items left out. ``[b, k]`` each."""
        return search_excluding(
            self.index, self.vectors(histories, users), exclude, k, exact=self.exact
        )

    def recommend_known(
        self, users: np.ndarray, k: int, include_seen: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for known user indices from their train histories, seen items excluded unless
        ``include_seen``: the path `evaluate`, `score` and the demo share. ``[b, k]`` each."""
        seq = self.sequences
        histories = seq.window(users, seq.lengths[users], self.history_len)
        empty = np.zeros(0, np.int64)
        seen = [empty if include_seen else self.seen(u) for u in users]
        return self.recommend(histories, users, seen, k)
