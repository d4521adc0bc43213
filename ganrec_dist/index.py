"""The catalogue index: the one retrieval path that evaluation, scoring and serving share.

Scores are inner products (the model's metric). Kinds: ``flat`` (exact: a blocked matrix product
with a running top-k, faster than FAISS's IndexFlatIP on many queries), ``ivf`` (FAISS
IndexIVFFlat), ``hnsw`` (IndexHNSWFlat) and ``ivfpq`` (IndexIVFPQ with exact re-ranking).
``auto`` is exact up to ``auto_exact_max_items`` and IVF above. All parameters come from
:class:`~ganrec_dist.config.IndexConfig`.

A user's seen items are excluded by searching deeper than k and filtering; rows an ANN search
leaves short of k are completed by exact search, so exactly k items come back whenever the
catalogue has them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from ganrec_dist.config import IndexConfig
from ganrec_dist.errors import UserError

log = logging.getLogger(__name__)

METRIC = "inner_product"
KINDS = ("flat", "ivf", "hnsw", "ivfpq")


def resolve_kind(cfg: IndexConfig, n_items: int) -> str:
    if cfg.kind == "auto":
        return "flat" if n_items <= cfg.auto_exact_max_items else "ivf"
    if cfg.kind not in KINDS:
        raise UserError(f"index kind must be auto or one of {', '.join(KINDS)}, not {cfg.kind!r}")
    return cfg.kind


def checksum(embeddings: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes()).hexdigest()[
        :32
    ]


class ExactIndex:
    """Exact inner-product top-k: blocks of items through one matrix product each, with a
    running top-k merge. Same ``search`` signature as a FAISS index."""

    def __init__(self, embeddings: np.ndarray, block: int = 131_072) -> None:
        self.items = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        self.ntotal, self.d = self.items.shape
        self.block = block

    @torch.no_grad()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        k = min(k, self.ntotal)
        best_scores = torch.full((len(q), k), float("-inf"))
        best_items = torch.full((len(q), k), -1, dtype=torch.int64)
        for start in range(0, self.ntotal, self.block):
            scores = q @ self.items[start : start + self.block].T  # [b, block]
            top_scores, top_items = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            merged_scores = torch.cat([best_scores, top_scores], dim=1)
            merged_items = torch.cat([best_items, top_items + start], dim=1)
            best_scores, order = torch.topk(merged_scores, k, dim=1)
            best_items = torch.gather(merged_items, 1, order)
        return best_scores.numpy(), best_items.numpy()


def default_nlist(cfg: IndexConfig, n: int) -> int:
    return cfg.nlist or int(max(1, min(65_536, 4 * math.sqrt(n))))


def build_index(embeddings: np.ndarray, cfg: IndexConfig, seed: int = 0) -> Any:
    """Build the index of ``cfg.kind`` over ``[n_items, dim]`` embeddings."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = embeddings.shape
    kind = resolve_kind(cfg, n)
    if kind == "flat":
        return ExactIndex(embeddings)
    index: Any
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
        index.add(embeddings)
        return index
    nlist = min(default_nlist(cfg, n), n)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        if dim % cfg.pq_bytes:
            raise UserError(f"index.pq_bytes ({cfg.pq_bytes}) must divide the dimension ({dim})")
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, cfg.pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = (
        embeddings
        if n <= cfg.train_sample
        else embeddings[rng.choice(n, cfg.train_sample, replace=False)]
    )
    index.train(sample)
    index.nprobe = cfg.nprobe
    if kind == "ivfpq":
        # Re-rank k * refine_factor PQ candidates with the exact vectors.
        refined = faiss.IndexRefineFlat(index)
        refined.k_factor = cfg.refine_factor
        refined.add(embeddings)
        return refined
    index.add(embeddings)
    return index


def search_excluding(
    index, queries: np.ndarray, exclude: list[np.ndarray], k: int, exact=None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per query with each query's ``exclude`` items removed.

    Args:
        queries: ``[b, dim]`` float32.
        exclude: ``b`` arrays of item indices to leave out (a user's seen items).
        exact: an exact index used to complete rows an ANN search left short of k.
    Returns:
        (items ``[b, k]`` int64, scores ``[b, k]`` float32); -1 / -inf only where the catalogue
        has fewer than k items left for that query.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    b = len(queries)
    out_items = np.full((b, k), -1, dtype=np.int64)
    out_scores = np.full((b, k), -np.inf, dtype=np.float32)
    if b == 0 or index.ntotal == 0:
        return out_items, out_scores
    extra = max((len(e) for e in exclude), default=0)
    depth = min(index.ntotal, k + extra)
    scores, items = index.search(queries, depth)
    short = []
    for row in range(b):
        keep = items[row] >= 0
        if len(exclude[row]):
            keep &= ~np.isin(items[row], exclude[row])
        chosen = np.flatnonzero(keep)[:k]
        out_items[row, : len(chosen)] = items[row, chosen]
        out_scores[row, : len(chosen)] = scores[row, chosen]
        if len(chosen) < min(k, index.ntotal - len(np.unique(exclude[row]))):
            short.append(row)
    if short and exact is not None and exact is not index:
        fixed_items, fixed_scores = search_excluding(
            exact, queries[short], [exclude[r] for r in short], k
        )
        out_items[short], out_scores[short] = fixed_items, fixed_scores
    return out_items, out_scores


# --- RUN/index/ --------------------------------------------------------------------------------


def save_index(index, embeddings: np.ndarray, cfg: IndexConfig, run: Path) -> dict:
    """Write RUN/index/ (index file + meta.json) atomically."""
    kind = resolve_kind(cfg, len(embeddings))
    meta = {
        "kind": kind,
        "params": dataclasses.asdict(cfg),
        "dim": int(embeddings.shape[1]),
        "metric": METRIC,
        "n_items": int(embeddings.shape[0]),
        "checksum": checksum(embeddings),
    }
    tmp = run / f".index.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    if kind != "flat":  # the exact index is rebuilt from the checkpoint's embeddings
        faiss.write_index(index, str(tmp / "index.faiss"))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    target = run / "index"
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return meta


def load_index(run: Path, embeddings: np.ndarray):
    """Load RUN/index/, refusing one built from other embeddings. Returns (index, meta)."""
    meta_path = run / "index" / "meta.json"
    meta = json.loads(meta_path.read_text())
    problems = []
    if meta["n_items"] != len(embeddings):
        problems.append(f"{meta['n_items']} items vs {len(embeddings)} in the checkpoint")
    if meta["dim"] != embeddings.shape[1]:
        problems.append(f"dimension {meta['dim']} vs {embeddings.shape[1]}")
    if meta["metric"] != METRIC:
        problems.append(f"metric {meta['metric']}")
    if not problems and meta["checksum"] != checksum(embeddings):
        problems.append("built from other item embeddings (the run was retrained)")
    if problems:
        raise UserError(
            f"{run / 'index'}: stale or mismatched index ({'; '.join(problems)}); "
            f"rebuild it with ganrec index --run {run}"
        )
    if meta["kind"] == "flat":
        return ExactIndex(embeddings), meta
    index: Any = faiss.read_index(str(run / "index" / "index.faiss"))
    params = meta["params"]
    if meta["kind"] == "hnsw":
        index.hnsw.efSearch = params["ef_search"]
    elif meta["kind"] == "ivf":
        index.nprobe = params["nprobe"]
    else:
        faiss.extract_index_ivf(index).nprobe = params["nprobe"]
        index.k_factor = params["refine_factor"]
    return index, meta


@dataclasses.dataclass
class IndexCommandConfig:
    """`ganrec index --run RUN [--kind ...]`: build RUN/index/ from the run's checkpoint."""

    run: str = "runs/movielens-small"
    kind: str = ""  # overrides index.kind
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)


def index_command(cfg: IndexCommandConfig) -> dict:
    from ganrec_dist.recommender import load_catalogue

    run = Path(cfg.run)
    embeddings, _ = load_catalogue(run)
    index_cfg = dataclasses.replace(cfg.index, kind=cfg.kind or cfg.index.kind)
    start = time.time()
    index = build_index(embeddings, index_cfg)
    meta = save_index(index, embeddings, index_cfg, run)
    log.info(
        "index: %s over %d x %d items in %.1fs -> %s",
        meta["kind"],
        meta["n_items"],
        meta["dim"],
        time.time() - start,
        run / "index",
    )
    return meta
