"""Load a trained run and turn users into items: G(u, z = 0) -> FAISS index -> top-k.

Evaluation, offline scoring and online serving all recommend through this class, so the same
user gets the same items everywhere.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from ganrec_dist import storage
from ganrec_dist.config import IndexConfig
from ganrec_dist.errors import UserError
from ganrec_dist.index import ExactIndex, build_index, load_index, search_excluding
from ganrec_dist.interactions import Sequences
from ganrec_dist.models import Generator, ModelConfig

log = logging.getLogger(__name__)


def _load(run: Path) -> dict:
    path = run / "checkpoint" / "model.pt"
    if not path.exists():
        raise UserError(f"{run}: no checkpoint (run ganrec train --out {run} first)")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_catalogue(run: str | Path) -> tuple[np.ndarray, dict]:
    """The catalogue embeddings ``[n_items, dim]`` of a run's checkpoint, and the checkpoint."""
    payload = _load(storage.open_run(run))
    generator = Generator(ModelConfig(**payload["model_config"]))
    generator.load_state_dict(payload["generator"])
    return generator.catalogue().detach().float().numpy(), payload


class Recommender:
    """A trained generator, its catalogue and the retrieval index, rebuilt from RUN/ alone."""

    def __init__(self, run: str | Path, index_cfg: IndexConfig | None = None) -> None:
        self.run = storage.open_run(run)  # a URI run: its local cache copy, fetched if stale
        ckpt_dir = self.run / "checkpoint"
        payload = _load(self.run)
        self.meta = json.loads((ckpt_dir / "meta.json").read_text())
        self.model_config = ModelConfig(**payload["model_config"])
        self.generator = Generator(self.model_config)
        self.generator.load_state_dict(payload["generator"])
        self.generator.eval()
        self.train_config = payload["train_config"]
        items = pq.read_table(ckpt_dir / "items.parquet")
        self.item_ids = np.asarray(items["item_id"].to_pylist(), dtype=object)
        self.item_titles = items["title"].to_pylist() if "title" in items.column_names else None
        self.item_index = {item: i for i, item in enumerate(self.item_ids)}
        users = pq.read_table(ckpt_dir / "users.parquet")
        self.user_ids = np.asarray(users["user_id"].to_pylist(), dtype=object)
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        self.embeddings = self.generator.catalogue().detach().float().numpy()
        sequences = np.load(ckpt_dir / "sequences.npz")
        # Every known user's train items in time order: histories and seen-item exclusion.
        self.sequences = Sequences(
            sequences["offsets"],
            sequences["items"],
            self.model_config.n_users,
            self.model_config.n_items,
        )
        self.popularity = sequences["popularity"]
        self.popular = np.argsort(-self.popularity, kind="stable")
        # RUN/index/ when `ganrec index` built one (checked against these embeddings), else the
        # run's index settings; exact search completes rows an ANN index leaves short.
        self.exact = ExactIndex(self.embeddings)
        if index_cfg is None and (self.run / "index" / "meta.json").exists():
            self.index, self.index_meta = load_index(self.run, self.embeddings)
        else:
            cfg = index_cfg or IndexConfig(**payload["train_config"].get("index", {}))
            self.index = self.exact if cfg.kind in ("flat",) else build_index(self.embeddings, cfg)
            self.index_meta = {"kind": cfg.kind}
        name = storage.basename(run) if storage.is_uri(run) else self.run.name  # not the cache's
        self.version = f"{name}@{self.meta['phase']}-epoch{self.meta['epoch']}"

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

    @torch.no_grad()
    def vectors(self, histories: np.ndarray, users: np.ndarray) -> np.ndarray:
        """G(u, z = 0) for ``[b, history_len]`` padded histories and ``[b]`` user indices. ``[b, dim]``"""
        state = self.generator.encoder(
            torch.as_tensor(histories, dtype=torch.long), torch.as_tensor(users, dtype=torch.long)
        )
        return self.generator.generate(state, None).numpy()

    def recommend(
        self, histories: np.ndarray, users: np.ndarray, exclude: list[np.ndarray], k: int
    ):
        """Top-k item indices and scores per user, ``exclude`` items left out. ``[b, k]`` each."""
        return search_excluding(
            self.index, self.vectors(histories, users), exclude, k, exact=self.exact
        )

    def recommend_known(self, users: np.ndarray, k: int, include_seen: bool = False):
        """Top-k for known user indices from their train histories, seen items excluded unless
        ``include_seen``: the path `evaluate`, `score` and the demo share. ``[b, k]`` each."""
        seq = self.sequences
        histories = seq.window(users, seq.lengths[users], self.history_len)
        empty = np.zeros(0, np.int64)
        seen = [empty if include_seen else self.seen(u) for u in users]
        return self.recommend(histories, users, seen, k)
