"""`ganrec bench index`: ANN kinds against exact search on a seeded synthetic catalogue.

The catalogue looks like learned item embeddings: a clustered mixture (with ``--run RUN``, fitted
to that run's item embeddings by k-means: centroids plus each cluster's residual spread). The
isotropic Gaussian worst case is measured in the same run. Exact search is the baseline: the
faster of FAISS IndexFlatIP and the project's own blocked-GEMM search.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import faiss
import numpy as np

from ganrec_dist.bench.common import write_json
from ganrec_dist.core.config import IndexConfig, setting
from ganrec_dist.core.logs import print_table
from ganrec_dist.model.models import catalogue_of
from ganrec_dist.retrieval.index import ExactIndex, build_index

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BenchIndexConfig:
    """`ganrec bench index`: ANN kinds against exact search."""

    items: int = setting(1_000_000, "catalogue size")
    dim: int = setting(64, "embedding dimension")
    queries: int = setting(1_000, "queries")
    k: int = setting(10, "neighbours per query")
    clusters: int = setting(1024, "mixture components of the clustered catalogue")
    run: str = setting("", "fit the mixture to this run's item embeddings")
    nlist: int = setting(4096, "IVF lists (the sweep also tries half and twice as many)")
    datasets: str = setting("clustered,isotropic", "catalogues to measure, comma-separated")
    out: str = setting("bench/index.json", "results JSON (and a PNG beside it)")
    seed: int = setting(0, "seed of the catalogue and queries")


def mixture(cfg: BenchIndexConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(items ``[n, d]``, queries ``[q, d]``) from a clustered mixture."""
    if cfg.run:
        from ganrec_dist.data.layout import RunDir

        learned = catalogue_of(RunDir.open(cfg.run).payload())
        km = faiss.Kmeans(
            learned.shape[1], min(cfg.clusters, len(learned) // 8), niter=20, seed=cfg.seed
        )
        km.train(learned)
        _, assign = km.index.search(learned, 1)
        centres = np.asarray(km.centroids)
        spread = np.array(
            [
                learned[assign[:, 0] == c].std(axis=0).mean() if (assign == c).sum() > 1 else 0.1
                for c in range(len(centres))
            ],
            dtype=np.float32,
        )
        dim = learned.shape[1]
    else:
        dim = cfg.dim
        centres = rng.normal(size=(cfg.clusters, dim)).astype(np.float32)
        spread = np.full(cfg.clusters, 0.3, dtype=np.float32)

    def sample(n):
        c = rng.integers(0, len(centres), n)
        return (centres[c] + spread[c, None] * rng.normal(size=(n, dim))).astype(np.float32)

    return sample(cfg.items), sample(cfg.queries)


def _timed_search(index, queries, k, repeat=1):
    start = time.perf_counter()
    for _ in range(repeat):
        _, items = index.search(queries, k)
    return (time.perf_counter() - start) / repeat, items


def recall_at(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)]))


def sweep(items: np.ndarray, queries: np.ndarray, cfg: BenchIndexConfig) -> dict:
    n = len(items)
    flat = faiss.IndexFlatIP(items.shape[1])
    flat.add(items)
    faiss_s, truth = _timed_search(flat, queries, cfg.k)
    ours = ExactIndex(items)
    ours_s, ours_items = _timed_search(ours, queries, cfg.k)
    exact_recall = recall_at(ours_items, truth)
    baseline = {
        "faiss_flat_qps": len(queries) / faiss_s,
        "own_exact_qps": len(queries) / ours_s,
        "own_exact_recall@10": exact_recall,
    }
    baseline["qps"] = max(baseline["faiss_flat_qps"], baseline["own_exact_qps"])
    points = []
    grid = [
        ("ivf", {"nlist": cfg.nlist // 2}, "nprobe", [1, 2, 3, 4, 8]),
        ("ivf", {"nlist": cfg.nlist}, "nprobe", [1, 2, 3, 4, 8, 16, 32, 64]),
        ("ivf", {"nlist": 2 * cfg.nlist}, "nprobe", [2, 4, 8, 16, 32]),
        ("hnsw", {"hnsw_m": 32, "ef_construction": 80}, "ef_search", [16, 24, 32, 64, 128, 256]),
        (
            "ivfpq",
            {"nlist": cfg.nlist, "pq_bytes": max(4, items.shape[1] // 2), "nprobe": 16},
            "refine_factor",
            [4, 16, 64],
        ),
    ]
    for kind, fixed, knob, values in grid:
        start = time.perf_counter()
        index = build_index(
            items,
            IndexConfig(
                kind=kind, train_sample=min(n, max(65_536, 32 * fixed.get("nlist", 0))), **fixed
            ),
            seed=cfg.seed,
        )
        build_s = time.perf_counter() - start
        log.info("%s built in %.1fs", kind, build_s)
        for value in values:
            if kind == "hnsw":
                index.hnsw.efSearch = value
            elif kind == "ivf":
                index.nprobe = value
            else:  # ivfpq: nprobe fixed, the exact re-ranking depth swept
                index.k_factor = value
            seconds, got = _timed_search(index, queries, cfg.k)
            points.append(
                {
                    "kind": kind,
                    "params": {**fixed, knob: value},
                    "recall@10": recall_at(got, truth),
                    "qps": len(queries) / seconds,
                    "speedup": len(queries) / seconds / baseline["qps"],
                    "build_s": build_s,
                }
            )
    return {"baseline": baseline, "points": points}


def run(cfg: BenchIndexConfig) -> dict:
    rng = np.random.default_rng(cfg.seed)
    faiss.omp_set_num_threads(max(1, faiss.omp_get_max_threads()))
    results: dict = {
        "items": cfg.items,
        "dim": cfg.dim,
        "queries": cfg.queries,
        "k": cfg.k,
        "datasets": {},
    }
    for name in cfg.datasets.split(","):
        if name == "clustered":
            items, queries = mixture(cfg, rng)
            source = (
                f"clustered mixture fitted to {cfg.run}"
                if cfg.run
                else f"clustered mixture ({cfg.clusters} clusters)"
            )
        else:
            items = rng.normal(size=(cfg.items, cfg.dim)).astype(np.float32)
            queries = rng.normal(size=(cfg.queries, cfg.dim)).astype(np.float32)
            source = "isotropic Gaussian (worst case)"
        log.info("dataset %s: %d x %d", name, *items.shape)
        res = sweep(items, queries, cfg)
        res["source"] = source
        good = [p for p in res["points"] if p["recall@10"] >= 0.95]
        res["best_at_recall_0.95"] = max(good, key=lambda p: p["qps"]) if good else None
        results["datasets"][name] = res
        b = res["baseline"]
        rows = [
            ["exact: FAISS IndexFlatIP", "", 1.0, b["faiss_flat_qps"], ""],
            ["exact: own blocked GEMM", "", b["own_exact_recall@10"], b["own_exact_qps"], ""],
        ]
        rows += [
            [p["kind"], json_params(p["params"]), p["recall@10"], p["qps"], f"{p['speedup']:.1f}x"]
            for p in res["points"]
        ]
        print_table(
            f"index: {source}, {cfg.items:,} x {items.shape[1]}, {cfg.queries} queries, k={cfg.k}",
            ["kind", "params", "recall@10", "queries/s", "vs exact"],
            rows,
        )
        results.setdefault("baseline", res["baseline"])
        results.setdefault("points", res["points"])
    write_json(cfg.out, results)  # first: it creates the folder, and the numbers outlive a plot
    _plot(results, cfg.out.replace(".json", ".png"))
    return results


def json_params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(results["datasets"]), figsize=(6 * len(results["datasets"]), 4.5), squeeze=False
    )
    for ax, res in zip(axes[0], results["datasets"].values()):
        series: dict[str, list] = {}  # one line per kind and build (IVF: per nlist)
        for p in res["points"]:
            label = p["kind"] + (f" nlist={p['params']['nlist']}" if p["kind"] == "ivf" else "")
            series.setdefault(label, []).append(p)
        for label, pts in series.items():
            ax.plot([p["recall@10"] for p in pts], [p["qps"] for p in pts], marker="o", label=label)
        ax.axhline(res["baseline"]["qps"], color="black", linestyle=":", label="exact (best)")
        ax.axvline(0.95, color="grey", linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 vs exact")
        ax.set_ylabel("queries/s")
        ax.set_title(res["source"])
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
