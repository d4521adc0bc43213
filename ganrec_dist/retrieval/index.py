"""The catalogue index: the one retrieval path that evaluation, scoring and serving share.

Scores are inner products (the model's metric). Kinds (the ``KINDS`` table; a new kind is one
entry there): ``flat`` (exact: a blocked matrix product with a running top-k, faster than FAISS's
IndexFlatIP on many queries), ``ivf`` (FAISS IndexIVFFlat), ``hnsw`` (IndexHNSWFlat) and ``ivfpq``
(IndexIVFPQ with exact re-ranking). ``auto`` is exact up to ``auto_exact_max_items`` and IVF
above. All parameters come from :class:`~ganrec_dist.core.config.IndexConfig`.

Exact search excludes a user's seen items inside the search. ANN kinds search deeper than k and
filter; rows an ANN search leaves short of k are completed by exact search, so exactly k items
come back whenever the catalogue has them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from ganrec_dist.core import storage
from ganrec_dist.core.config import IndexCommandConfig, IndexConfig
from ganrec_dist.core.errors import UserError
from ganrec_dist.data.layout import RunDir
from ganrec_dist.model.models import catalogue_of

log = logging.getLogger(__name__)

METRIC = "inner_product"


def resolve_kind(cfg: IndexConfig, n_items: int) -> str:
    if cfg.kind == "auto":
        return "flat" if n_items <= cfg.auto_exact_max_items else "ivf"
    if cfg.kind not in KINDS:
        raise UserError(f"index kind must be auto or one of {', '.join(KINDS)}, not {cfg.kind!r}")
    return cfg.kind


def checksum(embeddings: np.ndarray) -> str:
    # Over the array's own buffer: no copy of a catalogue-sized table.
    return hashlib.sha256(np.ascontiguousarray(embeddings, dtype=np.float32).data).hexdigest()[:32]


class ExactIndex:
    """Exact inner-product top-k, close to the speed of the matrix product itself.

    Queries go through in blocks of ``query_block``, items in blocks of ``block`` whose score
    matrix stays in cache. Each row keeps a running k-th best score (its threshold); of a new
    score block only chunks of ``chunk`` columns whose maximum reaches the threshold are looked
    at, so the selection reads each score once and touches few of them again. Candidates are
    merged into the running top-k every few blocks. Seen items can be excluded inside the search
    (their scores set to -inf), so k stays k however long a user's history is.
    Same ``search`` signature as a FAISS index.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        block: int = 4_096,
        query_block: int = 1_024,
        chunk: int = 64,
        merge_every: int = 8,
    ) -> None:
        self.items = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        self.ntotal, self.d = self.items.shape
        self.chunk = chunk
        self.block = max(chunk, block - block % chunk)
        self.query_block = query_block
        self.merge_every = merge_every

    def search(
        self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(scores, items)`` per query, -inf / -1 where fewer than k items are left.

        ``exclude``: per query, item indices that must not come back.
        """
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        k = max(1, min(k, self.ntotal))
        scores, items = [], []
        with torch.no_grad():
            for start in range(0, len(q), self.query_block):
                stop = start + self.query_block
                part = None if exclude is None else exclude[start:stop]
                s, i = self._search_block(q[start:stop], k, part)
                scores.append(s)
                items.append(i)
        if not scores:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return torch.cat(scores).numpy(), torch.cat(items).numpy()

    def _search_block(
        self, q: torch.Tensor, k: int, exclude: list[np.ndarray] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = len(q)
        seen_rows, seen_items = _flatten_exclude(exclude)
        best_s = torch.full((b, k), float("-inf"))
        best_i = torch.full((b, k), -1, dtype=torch.int64)
        buffer = torch.empty(b, self.block)
        pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        n_pending = 0
        for j, begin in enumerate(range(0, self.ntotal, self.block)):
            block = self.items[begin : begin + self.block]
            out = buffer[:, : len(block)]
            torch.mm(q, block.T, out=out)
            if len(seen_items):
                lo, hi = torch.searchsorted(
                    seen_items, torch.tensor([begin, begin + len(block)])
                ).tolist()
                if hi > lo:
                    out[seen_rows[lo:hi], seen_items[lo:hi] - begin] = float("-inf")
            if j == 0:
                # The first block seeds the thresholds with an exact top-k of its own.
                top = min(k, len(block))
                s, i = torch.topk(out, top, dim=1)
                best_s[:, :top], best_i[:, :top] = s, i
                best_i[best_s == float("-inf")] = -1
                threshold = best_s[:, -1:].clone()
                continue
            rows, cols = self._candidates(out, threshold)
            if len(rows):
                pending.append((rows, out[rows, cols], cols + begin))
                n_pending += len(rows)
            if pending and (n_pending > 4 * b or j % self.merge_every == 0):
                best_s, best_i = _merge(best_s, best_i, pending)
                threshold = best_s[:, -1:].clone()
                pending, n_pending = [], 0
        if pending:
            best_s, best_i = _merge(best_s, best_i, pending)
        return best_s, best_i

    def _candidates(
        self, out: torch.Tensor, threshold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, column) of the scores in ``out`` above each row's threshold."""
        b, width = out.shape
        whole = width - width % self.chunk
        rows_list, cols_list = [], []
        if whole:
            chunks = out[:, :whole].view(b, -1, self.chunk).amax(2) > threshold
            r, c = chunks.nonzero(as_tuple=True)
            if len(r):
                cols = (c[:, None] * self.chunk + torch.arange(self.chunk)).reshape(-1)
                rows = r.repeat_interleave(self.chunk)
                keep = out[rows, cols] > threshold[rows, 0]
                rows_list.append(rows[keep])
                cols_list.append(cols[keep])
        if whole < width:
            r, c = (out[:, whole:] > threshold).nonzero(as_tuple=True)
            rows_list.append(r)
            cols_list.append(c + whole)
        if not rows_list:
            empty = torch.zeros(0, dtype=torch.int64)
            return empty, empty
        return torch.cat(rows_list), torch.cat(cols_list)


def _flatten_exclude(exclude: list[np.ndarray] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query item lists as (row, item) pairs sorted by item."""
    if not exclude:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
    items = np.concatenate(
        [np.asarray(e, dtype=np.int64) for e in exclude] + [np.zeros(0, np.int64)]
    )
    order = np.argsort(items, kind="stable")
    return torch.from_numpy(rows[order]), torch.from_numpy(items[order])


def _merge(
    best_s: torch.Tensor,
    best_i: torch.Tensor,
    pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top-k merged with candidate (row, score, item) triples."""
    rows = torch.cat([p[0] for p in pending])
    scores = torch.cat([p[1] for p in pending])
    items = torch.cat([p[2] for p in pending])
    order = torch.argsort(rows, stable=True)
    rows, scores, items = rows[order], scores[order], items[order]
    b, k = best_s.shape
    counts = torch.bincount(rows, minlength=b)
    position = torch.arange(len(rows)) - (torch.cumsum(counts, 0) - counts)[rows]
    width = int(counts.max())
    pad_s = torch.full((b, width), float("-inf"))
    pad_i = torch.full((b, width), -1, dtype=torch.int64)
    pad_s[rows, position] = scores
    pad_i[rows, position] = items
    merged_s, order = torch.topk(torch.cat([best_s, pad_s], 1), k, dim=1)
    return merged_s, torch.gather(torch.cat([best_i, pad_i], 1), 1, order)


def default_nlist(cfg: IndexConfig, n: int) -> int:
    return cfg.nlist or int(max(1, min(65_536, 4 * math.sqrt(n))))


def _train_sample(embeddings: np.ndarray, cfg: IndexConfig, seed: int) -> np.ndarray:
    n = len(embeddings)
    if n <= cfg.train_sample:
        return embeddings
    return embeddings[np.random.default_rng(seed).choice(n, cfg.train_sample, replace=False)]


def _build_hnsw(embeddings: np.ndarray, cfg: IndexConfig, seed: int) -> Any:
    index = faiss.IndexHNSWFlat(embeddings.shape[1], cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = cfg.ef_construction
    index.hnsw.efSearch = cfg.ef_search
    index.add(embeddings)
    return index


def _build_ivf(embeddings: np.ndarray, cfg: IndexConfig, seed: int) -> Any:
    n, dim = embeddings.shape
    nlist = min(default_nlist(cfg, n), n)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(_train_sample(embeddings, cfg, seed))
    index.nprobe = cfg.nprobe
    index.add(embeddings)
    return index


def _build_ivfpq(embeddings: np.ndarray, cfg: IndexConfig, seed: int) -> Any:
    n, dim = embeddings.shape
    if dim % cfg.pq_bytes:
        raise UserError(f"index.pq_bytes ({cfg.pq_bytes}) must divide the dimension ({dim})")
    nlist = min(default_nlist(cfg, n), n)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, cfg.pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
    index.train(_train_sample(embeddings, cfg, seed))
    index.nprobe = cfg.nprobe
    # Re-rank k * refine_factor PQ candidates with the exact vectors.
    refined = faiss.IndexRefineFlat(index)
    refined.k_factor = cfg.refine_factor
    refined.add(embeddings)
    return refined


def _read(
    tune: Callable[[Any, dict], None], flags: int = 0
) -> Callable[[Path, np.ndarray, dict], Any]:
    """A restore function for a FAISS kind: read the file (``flags``: FAISS's IO flags), then
    set the search parameters that FAISS files do not keep."""

    def restore(path: Path, embeddings: np.ndarray, params: dict) -> Any:
        index = faiss.read_index(str(path), flags)
        tune(index, params)
        return index

    return restore


def _tune_hnsw(index: Any, params: dict) -> None:
    index.hnsw.efSearch = params["ef_search"]


def _tune_ivf(index: Any, params: dict) -> None:
    index.nprobe = params["nprobe"]


def _tune_ivfpq(index: Any, params: dict) -> None:
    faiss.extract_index_ivf(index).nprobe = params["nprobe"]
    index.k_factor = params["refine_factor"]


@dataclasses.dataclass(frozen=True)
class Kind:
    """One index kind: how to build it from embeddings, and how to restore it from RUN/index
    (``path`` is the index file, absent for a kind that is not ``saved``: it is rebuilt from the
    checkpoint's embeddings instead)."""

    build: Callable[[np.ndarray, IndexConfig, int], Any]
    restore: Callable[[Path, np.ndarray, dict], Any]
    saved: bool = True


KINDS: dict[str, Kind] = {
    "flat": Kind(
        build=lambda e, cfg, seed: ExactIndex(e),
        restore=lambda path, e, params: ExactIndex(e),
        saved=False,
    ),
    # Memory-mapped inverted lists: the processes of a node share the file's pages (the page
    # cache) instead of holding a copy each. HNSW's graph and IVF-PQ's refine vectors are read
    # into each process's memory (FAISS maps neither).
    "ivf": Kind(build=_build_ivf, restore=_read(_tune_ivf, faiss.IO_FLAG_MMAP)),
    "hnsw": Kind(build=_build_hnsw, restore=_read(_tune_hnsw)),
    "ivfpq": Kind(build=_build_ivfpq, restore=_read(_tune_ivfpq, faiss.IO_FLAG_MMAP)),
}


def build_index(embeddings: np.ndarray, cfg: IndexConfig, seed: int = 0) -> Any:
    """Build the index of ``cfg.kind`` over ``[n_items, dim]`` embeddings."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    return KINDS[resolve_kind(cfg, len(embeddings))].build(embeddings, cfg, seed)


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
    if isinstance(index, ExactIndex):
        scores, items = index.search(queries, k, exclude=exclude)
        width = scores.shape[1]  # k, or the catalogue size if smaller; -1 / -inf mark gaps
        out_items[:, :width], out_scores[:, :width] = items, scores
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


def save_index(index: Any, embeddings: np.ndarray, cfg: IndexConfig, run: RunDir) -> dict:
    """Write RUN/index/ (index file + meta.json), replacing an older one in one step."""
    kind = resolve_kind(cfg, len(embeddings))
    meta = {
        "kind": kind,
        "params": dataclasses.asdict(cfg),
        "dim": int(embeddings.shape[1]),
        "metric": METRIC,
        "n_items": int(embeddings.shape[0]),
        "checksum": checksum(embeddings),
    }
    run.local.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{RunDir.INDEX}.tmp-", dir=run.local))
    if KINDS[kind].saved:
        faiss.write_index(index, str(tmp / RunDir.INDEX_FILE))
    files = {f.name: storage.file_digest(f) for f in tmp.iterdir()}
    (tmp / RunDir.META).write_text(json.dumps({**meta, "files": files}, indent=2) + "\n")
    storage.replace_dir(tmp, run.index)
    return meta


def load_index(run: RunDir, embeddings: np.ndarray) -> tuple[Any, dict]:
    """Load RUN/index/, refusing one built from other embeddings. Returns (index, meta)."""
    meta = json.loads((run.index / RunDir.META).read_text())
    meta.pop("files", None)
    problems = []
    if meta["n_items"] != len(embeddings):
        problems.append(f"{meta['n_items']} items vs {len(embeddings)} in the checkpoint")
    if meta["dim"] != embeddings.shape[1]:
        problems.append(f"dimension {meta['dim']} vs {embeddings.shape[1]}")
    if meta["metric"] != METRIC:
        problems.append(f"metric {meta['metric']}")
    if not problems and meta["checksum"] != checksum(embeddings):
        problems.append("built from other item embeddings (the run was retrained)")
    if meta["kind"] not in KINDS:
        problems.append(f"unknown kind {meta['kind']!r}")
    if problems:
        raise UserError(
            f"{run.index}: stale or mismatched index ({'; '.join(problems)}); "
            f"rebuild it with ganrec index --run {run.uri}"
        )
    restore = KINDS[meta["kind"]].restore
    return restore(run.index / RunDir.INDEX_FILE, embeddings, meta["params"]), meta


def index_command(cfg: IndexCommandConfig) -> dict:
    run = RunDir.open(cfg.run)
    embeddings = catalogue_of(run.payload())
    index_cfg = dataclasses.replace(cfg.index, kind=cfg.kind or cfg.index.kind)
    start = time.time()
    meta = save_index(build_index(embeddings, index_cfg), embeddings, index_cfg, run)
    run.save(RunDir.INDEX)
    log.info(
        "index: %s over %d x %d items in %.1fs -> %s",
        meta["kind"],
        meta["n_items"],
        meta["dim"],
        time.time() - start,
        run.remote(RunDir.INDEX),
    )
    return meta
