"""The accuracy-diversity frontier of `ganrec evaluate`: the GAN's K-sample lists against
post-hoc re-ranking (maximal marginal relevance) of a model's single list.

MMR (Carbonell & Goldstein, SIGIR 1998) builds a list greedily: the next item maximises
``lam * relevance(i) - (1 - lam) * max_{j chosen} sim(i, j)``. Relevance is rank-based,
``1 - rank / C`` over the model's top-C candidates, so that models with scores on different
scales are re-ranked alike; ``sim`` is the cosine between the items' train interaction columns,
the same model-independent representation intra-list diversity is measured with
(``metrics.beyond_accuracy``). ``lam = 1`` is the model's own list.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

# Down to 0 (pure dissimilarity after the top item): the curve must reach the NDCG of sampled
# lists, which give up more accuracy than light re-ranking does.
LAMBDAS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
CANDIDATES = 100
K = 10


def item_vectors(train: sp.csr_matrix) -> sp.csc_matrix:
    """``[users, items]`` binary train columns scaled to unit length (cosine = dot product)."""
    binary = (train > 0).astype(np.float32).tocsc()
    norms = np.sqrt(np.asarray(binary.multiply(binary).sum(axis=0)).reshape(-1))
    return (binary @ sp.diags(1.0 / np.maximum(norms, 1e-12))).tocsc()


def mmr(relevance: np.ndarray, similarity: np.ndarray, lam: float, k: int) -> np.ndarray:
    """Positions (into the candidates) of an MMR list of ``k``, best first.

    Args:
        relevance: ``[C]`` the candidates' relevance.
        similarity: ``[C, C]`` their pairwise similarity.
    """
    n = len(relevance)
    chosen: list[int] = []
    penalty = np.full(n, -np.inf)  # max similarity to a chosen item (none chosen yet: 0 below)
    free = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        redundancy = np.where(np.isfinite(penalty), penalty, 0.0)
        value = np.where(free, lam * relevance - (1.0 - lam) * redundancy, -np.inf)
        best = int(np.argmax(value))
        chosen.append(best)
        free[best] = False
        penalty = np.maximum(penalty, similarity[best])
    return np.asarray(chosen, dtype=np.int64)


def rerank(
    candidates: np.ndarray, vectors: sp.csc_matrix, lambdas: tuple[float, ...], k: int = K
) -> dict[float, np.ndarray]:
    """MMR lists ``[users, k]`` for every ``lam`` from ``candidates`` ``[users, C]`` (best
    first, -1 = none): one similarity matrix per user, reused across the lambdas."""
    out = {lam: np.full((len(candidates), k), -1, dtype=np.int64) for lam in lambdas}
    for row, items in enumerate(candidates):
        items = items[items >= 0]
        if len(items) == 0:
            continue
        block = vectors[:, items]
        similarity = (block.T @ block).toarray()
        relevance = 1.0 - np.arange(len(items)) / len(items)
        for lam in lambdas:
            picked = items[mmr(relevance, similarity, lam, k)]
            out[lam][row, : len(picked)] = picked
    return out


def diversity_at(curve: list[dict[str, float]], ndcg: float) -> float | None:
    """The diversity a re-ranking curve reaches at NDCG ``ndcg``: linear between the curve's
    points on its upper envelope (the most diverse point at or above each NDCG); None when
    the curve never reaches that NDCG."""
    points = sorted((p["ndcg@10"], p["diversity@10"]) for p in curve)
    if not points or ndcg > points[-1][0]:
        return None
    # Upper envelope: walking from the highest NDCG down, diversity only ever rises.
    envelope: list[tuple[float, float]] = []
    best = -np.inf
    for x, y in reversed(points):
        best = max(best, y)
        envelope.append((x, best))
    envelope.reverse()
    xs = np.asarray([x for x, _ in envelope])
    ys = np.asarray([y for _, y in envelope])
    if ndcg <= xs[0]:
        return float(ys[0])
    return float(np.interp(ndcg, xs, ys))


def verdict(point: dict[str, float], curves: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Whether ``point`` (a GAN K) is more diverse than each re-ranking curve at the same
    NDCG@10. A curve that never reaches the point's NDCG is beaten on accuracy outright (then
    ``beats`` compares the curve's most accurate point's diversity); a point less accurate than
    the curve's least accurate one is outside the swept range: ``beats`` is None (re-ranking
    further might reach any diversity there, so no claim either way)."""
    out: dict[str, Any] = {}
    for name, curve in curves.items():
        reached = diversity_at(curve, point["ndcg@10"])
        if reached is None:
            top = max(curve, key=lambda p: p["ndcg@10"])
            out[name] = {
                "curve_diversity_at_ndcg": None,
                "beats": bool(point["diversity@10"] > top["diversity@10"]),
                "note": "the curve does not reach this NDCG@10",
            }
        elif point["ndcg@10"] < min(p["ndcg@10"] for p in curve):
            out[name] = {
                "curve_diversity_at_ndcg": None,
                "beats": None,
                "note": "below the curve's NDCG@10 range: not comparable",
            }
        else:
            out[name] = {
                "curve_diversity_at_ndcg": reached,
                "beats": bool(point["diversity@10"] > reached),
            }
    return out


def plot(frontier: dict[str, list[dict[str, Any]]], path: str, title: str) -> None:
    """NDCG@10 against intra-list diversity@10, one line per list family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, points in frontier.items():
        xs = [p["diversity@10"] for p in points]
        ys = [p["ndcg@10"] for p in points]
        ax.plot(xs, ys, marker="o", label=name)
        for p, x, y in zip(points, xs, ys):
            tag = f"K={p['samples']}" if "samples" in p else f"λ={p['lambda']}"
            ax.annotate(tag, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("intra-list diversity@10 (train co-occurrence cosine)")
    ax.set_ylabel("NDCG@10 (test)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- `ganrec evaluate`'s diversity section ------------------------------------------------------

DIVERSITY_KS = [10, 20, 50]
COLUMNS = [
    "ndcg@10",
    "recall@10",
    "recall@20",
    "recall@50",
    "coverage@10",
    "diversity@10",
    "novelty@10",
    "sample_cosine",
    "top10_overlap",
]


def _generator_lists(rec: Any, users: np.ndarray, n_users: int, samples: int, depth: int):
    """Merged lists ``[n_users, depth]`` of ``samples`` draws a user (-1 for other users), and
    the mean sample cosine and top-10 overlap over ``users`` (None with one sample)."""
    from ganrec_dist.model.sampling import list_overlap, merge, pairwise_cosine

    out = np.full((n_users, depth), -1, dtype=np.int64)
    cosines, overlaps, sizes = [], [], []
    for start in range(0, len(users), 1024):
        u = users[start : start + 1024]
        histories, seen = rec.known_inputs(u)
        items, scores, vectors = rec.sample_lists(histories, u, seen, depth, samples=samples)
        out[u], _ = merge(items, scores, depth, rec.merge)
        if samples > 1:
            cosines.append(pairwise_cosine(vectors))
            overlaps.append(list_overlap(items, 10))
            sizes.append(len(u))
    if not sizes:
        return out, None, None
    return (
        out,
        float(np.average(cosines, weights=sizes)),
        float(np.average(overlaps, weights=sizes)),
    )


def diversity_section(
    split: Any,  # evaluate.Split
    generators: dict[str, str],
    *,
    ease: tuple[str, Any, Any] | None,
    chosen: int,
    frontier_samples: list[int],
) -> dict[str, Any]:
    """K = 1 and the chosen K (4 when the run's is 1) for each generator; the frontier (each
    generator at every K of ``frontier_samples``, the ablation's and EASE's lists re-ranked by
    MMR at every lambda); and whether the GAN's point beats each MMR curve at its NDCG."""
    from ganrec_dist.retrieval.metrics import beyond_accuracy, ranking_metrics
    from ganrec_dist.retrieval.recommender import Recommender
    from ganrec_dist.training.validation import DIAGNOSTIC_SAMPLES

    users, train, truth = split.users, split.train, split.truth
    n_users = train.shape[0]
    shown = sorted({1, chosen if chosen > 1 else DIAGNOSTIC_SAMPLES})
    depth = max(DIVERSITY_KS)

    def measure(recs: np.ndarray, ks: list[int]) -> dict[str, float]:
        return {**ranking_metrics(recs, truth, ks), **beyond_accuracy(recs[users], train, [10])}

    models: dict[str, dict[str, dict[str, Any]]] = {}
    frontier: dict[str, list[dict[str, Any]]] = {}
    candidates: dict[str, np.ndarray] = {}
    gan_point: dict[str, Any] = {}
    merge_rule = None
    for name, uri in generators.items():
        rec = Recommender(uri)
        merge_rule = merge_rule or rec.merge
        models[name], frontier[name] = {}, []
        candidates[name] = rec_candidates(rec, users, n_users)
        for samples in sorted(set(shown) | set(frontier_samples) | {chosen}):
            recs, cosine, overlap = _generator_lists(
                rec, users, n_users, samples=samples, depth=depth
            )
            m = {**measure(recs, DIVERSITY_KS), "sample_cosine": cosine, "top10_overlap": overlap}
            point = {"samples": samples, **_point(m)}
            if samples in shown:
                models[name][str(samples)] = {c: m[c] for c in COLUMNS}
            if samples in frontier_samples:
                frontier[name].append(point)
            if name == "gan" and samples == chosen:
                gan_point = point
    if ease is not None:
        label, baseline, model = ease
        candidates[label] = baseline.recommend(model, train, users, CANDIDATES)
    vectors = item_vectors(train)
    curves: dict[str, list[dict[str, Any]]] = {}
    for name in ("gan_ablation", "ease"):
        if name not in candidates:
            continue
        lists = rerank(candidates[name][users], vectors, LAMBDAS)
        curves[f"{name}+mmr"] = []
        for lam in LAMBDAS:
            recs = np.full((n_users, K), -1, dtype=np.int64)
            recs[users] = lists[lam]
            curves[f"{name}+mmr"].append({"lambda": lam, **_point(measure(recs, [K]))})
    frontier.update(curves)
    return {
        "samples": chosen,
        "merge": merge_rule if chosen > 1 else None,
        "shown_samples": shown,
        "models": models,
        "frontier": frontier,
        "mmr": {
            "lambdas": list(LAMBDAS),
            "candidates": CANDIDATES,
            "relevance": "1 - rank / C over the model's top-C",
            "similarity": "cosine of the items' train interaction columns",
        },
        "gan_point": gan_point,
        "verdict": verdict(gan_point, curves),
        # Every K of the GAN's curve, not only the chosen one: a larger K may buy diversity
        # that re-ranking cannot at its (lower) NDCG.
        "verdict_by_samples": {
            str(point["samples"]): verdict(point, curves) for point in frontier["gan"]
        },
    }


def rec_candidates(rec: Any, users: np.ndarray, n_users: int) -> np.ndarray:
    """A generator's single-sample top-``CANDIDATES`` ``[n_users, C]`` (the MMR input)."""
    out = np.full((n_users, CANDIDATES), -1, dtype=np.int64)
    for start in range(0, len(users), 1024):
        u = users[start : start + 1024]
        out[u], _ = rec.recommend_known(u, CANDIDATES, samples=1)
    return out


def _point(m: dict[str, float]) -> dict[str, float]:
    return {
        "ndcg@10": m["ndcg@10"],
        "diversity@10": m["diversity@10"],
        "coverage@10": m["coverage@10"],
    }


def write_frontier(run: Any, section: dict[str, Any], title: str) -> None:
    """RUN/frontier.json (the section's frontier and verdict) and RUN/frontier.png."""
    import json
    import tempfile
    from pathlib import Path

    run.write_file(
        run.FRONTIER_JSON,
        json.dumps(
            {
                k: section[k]
                for k in ("frontier", "gan_point", "verdict", "verdict_by_samples", "mmr")
            },
            indent=2,
        )
        + "\n",
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / run.FRONTIER_PNG
        plot(section["frontier"], str(path), f"accuracy-diversity frontier: {title}")
        run.write_file(run.FRONTIER_PNG, path.read_bytes())


def print_diversity(section: dict[str, Any]) -> None:
    from ganrec_dist.core.logs import print_table

    rows = []
    for name, per_k in section["models"].items():
        for samples, m in per_k.items():
            rows.append(
                [name, samples] + [("-" if m[c] is None else round(m[c], 4)) for c in COLUMNS]
            )
    print_table("diversity: K samples a user (merged lists)", ["model", "K"] + COLUMNS, rows)
    point = section["gan_point"]
    for name, v in section["verdict"].items():
        reached = v["curve_diversity_at_ndcg"]
        at = v["note"] if reached is None else f"the curve reaches diversity {reached:.4f}"
        said = {
            True: "more diverse than re-ranking",
            False: "not more diverse than re-ranking",
            None: "no verdict",
        }[v["beats"]]
        print(
            f"frontier: gan K={point['samples']} (NDCG@10 {point['ndcg@10']:.4f}, diversity "
            f"{point['diversity@10']:.4f}) vs {name}: {at}; {said}"
        )
    by_k = section["verdict_by_samples"]
    for name in section["verdict"]:
        beaten = [k for k, v in by_k.items() if v[name]["beats"]]
        outside = [k for k, v in by_k.items() if v[name]["beats"] is None]
        print(
            f"frontier: gan K={','.join(by_k)} vs {name}: more diverse than re-ranking at the "
            f"same NDCG@10 for K={','.join(beaten) or 'none'}"
            + (f"; below its NDCG range for K={','.join(outside)}" if outside else "")
        )
