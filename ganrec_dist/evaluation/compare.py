"""`ganrec compare RUN_A... --against RUN_B...`: is A better than B, beyond the noise?

Runs are paired by their seed (the same seed, the same data). For each pair, every user scored
in both gives a difference of NDCG@10, A - B. Two noise sources make a single pair's difference
unreliable: which users happen to be in the split, and, larger here, which seed the pair was
trained with (the same configuration moves by several thousandths from seed to seed). The
interval is a **hierarchical paired bootstrap**: resample the seeds, then the users within each
resampled seed, and take the mean difference; its 2.5 and 97.5 percentiles are the 95% interval.
A **sign test** over seeds (how many pairs A leads, two-sided binomial) is the assumption-free
check. An interval that straddles zero is reported as no difference.

Validation (the default) uses the per-user NDCG@10 each run recorded at its best search epoch
(so hyper-parameters can be compared without reading test); ``--split test`` scores each run's
final model on the test split through the retrieval path, as `evaluate` does.

``--metric`` pairs the seeds on a number of each run's eval.json instead: a metric of the
cold-item table (``cold_ndcg@20``, ``hybrid_ndcg@10``, ...), row ``--rows A_ROW,B_ROW`` of
A's runs against row B_ROW of B's (the same runs, to compare two rows). Only seed means exist
there, so the bootstrap resamples the seeds alone.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ganrec_dist.core.errors import UserError
from ganrec_dist.core.logs import print_table
from ganrec_dist.data.layout import RunDir

log = logging.getLogger(__name__)


def bootstrap_interval(
    diffs: list[np.ndarray], *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """The hierarchical paired bootstrap interval of the mean difference.

    Args:
        diffs: one array per seed, the per-user differences of that seed's pair.
    Returns:
        (low, high): the ``level`` percentile interval of the mean over resampled seeds of the
        mean over each one's resampled users.
    """
    rng = np.random.default_rng(seed)
    n_seeds = len(diffs)
    # means[s, r]: seed s's mean over resample r of its users (drawn for every seed, used when
    # resample r picks it), in chunks that bound the memory to a few million draws.
    means = np.empty((n_seeds, resamples))
    for s, d in enumerate(diffs):
        chunk = max(1, 4_000_000 // max(len(d), 1))
        for start in range(0, resamples, chunk):
            r = min(chunk, resamples - start)
            means[s, start : start + r] = d[rng.integers(0, len(d), (r, len(d)))].mean(axis=1)
    picks = rng.integers(0, n_seeds, (resamples, n_seeds))
    stats = means[picks, np.arange(resamples)[:, None]].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return float(low), float(high)


def sign_test(seed_means: np.ndarray) -> dict[str, Any]:
    """Two-sided sign test of per-seed mean differences (ties dropped)."""
    ahead = int((seed_means > 0).sum())
    behind = int((seed_means < 0).sum())
    n = ahead + behind
    fewer = min(ahead, behind)
    tail = sum(math.comb(n, i) for i in range(fewer + 1)) / 2.0**n if n else 1.0
    return {
        "ahead": ahead,
        "behind": behind,
        "ties": int(len(seed_means) - n),
        "p": min(1.0, 2.0 * tail),
    }


def compare_scores(
    a: dict[int, tuple[np.ndarray, np.ndarray]],
    b: dict[int, tuple[np.ndarray, np.ndarray]],
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired comparison of per-user scores ``{seed: (users, ndcg)}`` of A and B."""
    missing = sorted(set(a) ^ set(b))
    if missing:
        raise UserError(f"seeds {missing} are not in both groups: runs are paired by seed")
    if not a:
        raise UserError("no runs to compare")
    diffs, per_seed = [], []
    for s in sorted(a):
        (ua, va), (ub, vb) = a[s], b[s]
        common, ia, ib = np.intersect1d(ua, ub, assume_unique=True, return_indices=True)
        if len(common) == 0:
            raise UserError(f"seed {s}: the two runs scored no user in common")
        d = va[ia] - vb[ib]
        diffs.append(d)
        per_seed.append(
            {
                "seed": s,
                "users": int(len(common)),
                "a": float(va[ia].mean()),
                "b": float(vb[ib].mean()),
                "difference": float(d.mean()),
            }
        )
    low, high = bootstrap_interval(diffs, resamples=resamples, seed=seed)
    seed_means = np.array([p["difference"] for p in per_seed])
    return {
        "metric": "ndcg@10",
        "seeds": len(per_seed),
        "a": float(np.mean([p["a"] for p in per_seed])),
        "b": float(np.mean([p["b"] for p in per_seed])),
        "difference": float(seed_means.mean()),
        "interval": [low, high],
        "seed_sd": float(seed_means.std(ddof=1)) if len(seed_means) > 1 else 0.0,
        "sign_test": sign_test(seed_means),
        "verdict": verdict(low, high),
        "per_seed": per_seed,
        "resamples": resamples,
    }


def verdict(low: float, high: float) -> str:
    if low > 0:
        return "A better"
    if high < 0:
        return "B better"
    return "no difference"


# --- the runs' per-user scores ------------------------------------------------------------------


def run_seed(run: RunDir) -> int:
    stored = run.stored_config()
    if stored is None:
        raise UserError(f"{run.uri}: no config.yaml (not a trained RUN directory)")
    return int(stored.get("seed", 0))


def validation_scores(run: RunDir) -> tuple[np.ndarray, np.ndarray]:
    """The per-user validation NDCG@10 the run recorded at its best search epoch."""
    state = run.payload()["state"]
    users = np.asarray(state.get("best_val_users", []), dtype=np.int64)
    if len(users) == 0:
        raise UserError(
            f"{run.uri}: no per-user validation scores in its checkpoint (trained by an older "
            "version): train it again, or compare with --split test"
        )
    return users, np.asarray(state["best_val_ndcg"], dtype=np.float64)


@functools.lru_cache(maxsize=2)
def _test_split(data: str) -> tuple[np.ndarray, Any]:
    """DATA's users with test items and their test matrix, read once for every run on it."""
    from ganrec_dist.data.layout import DataDir

    test = DataDir(data).sequences("test")
    return np.flatnonzero(test.lengths > 0), test.matrix()


def test_scores(run: RunDir, data: str) -> tuple[np.ndarray, np.ndarray]:
    """The final model's per-user test NDCG@10 through the retrieval path, seen items excluded."""
    from ganrec_dist.evaluation.evaluate import gan_recommend
    from ganrec_dist.retrieval.metrics import user_ndcg

    users, truth = _test_split(data)
    recs, _ = gan_recommend(run.uri, truth.shape[0], users, 10)
    return user_ndcg(recs, truth, 10)


def scores(runs: list[str], split: str, data: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for uri in runs:
        run = RunDir.open(uri)
        run.meta()  # one line if it holds no checkpoint
        s = run_seed(run)
        if s in out:
            raise UserError(f"{uri}: a second run of seed {s} in the same group")
        if split == "validation":
            out[s] = validation_scores(run)
        else:
            out[s] = test_scores(run, data or (run.stored_config() or {})["data"])
        log.info("%s (seed %d): %d users, NDCG@10 %.4f", uri, s, len(out[s][0]), out[s][1].mean())
    return out


def eval_scores(runs: list[str], metric: str, row: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each run's ``metric`` of ``row`` in its eval.json's cold-item table, as one 'user'."""
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for uri in runs:
        run = RunDir.open(uri)
        section = run.read_eval().get("cold_items")
        if section is None:
            raise UserError(f"{uri}: eval.json has no cold-item table (evaluate --cold_items true)")
        values = section["models"].get(row)
        if values is None or metric not in values:
            known = ", ".join(section["models"])
            raise UserError(f"{uri}: no {metric} for row {row!r} (rows: {known})")
        s = run_seed(run)
        if s in out:
            raise UserError(f"{uri}: a second run of seed {s} in the same group")
        out[s] = (np.zeros(1, np.int64), np.array([float(values[metric])]))
    return out


def compare(
    runs: list[str],
    against: list[str],
    *,
    split: str = "validation",
    data: str = "",
    resamples: int = 2000,
    seed: int = 0,
    metric: str = "",
    rows: tuple[str, str] = ("tower_regress", "content_knn"),
) -> dict[str, Any]:
    if metric:
        a, b = eval_scores(runs, metric, rows[0]), eval_scores(against, metric, rows[1])
        result = compare_scores(a, b, resamples=resamples, seed=seed)
        return {
            "split": "test",
            "rows": list(rows),
            "runs": runs,
            "against": against,
            **result,
            "metric": metric,
        }
    if split not in ("validation", "test"):
        raise UserError(f"--split {split!r}: expected validation or test")
    result = compare_scores(
        scores(runs, split, data), scores(against, split, data), resamples=resamples, seed=seed
    )
    return {"split": split, "runs": runs, "against": against, **result}


def print_comparison(result: dict[str, Any], names: tuple[str, str] = ("A", "B")) -> None:
    a, b = names
    rows = [
        [p["seed"], p["users"], round(p["a"], 4), round(p["b"], 4), f"{p['difference']:+.4f}"]
        for p in result["per_seed"]
    ]
    print_table(
        f"{a} vs {b}, {result['metric']} on {result['split']}, paired by seed",
        ["seed", "users", a, b, f"{a} - {b}"],
        rows,
    )
    low, high = result["interval"]
    sign = result["sign_test"]
    print(
        f"{a} - {b}: {result['difference']:+.4f}, 95% interval [{low:+.4f}, {high:+.4f}] "
        f"(bootstrap over {result['seeds']} seeds{'' if 'rows' in result else ' and their users'}); {a} ahead on "
        f"{sign['ahead']} of {result['seeds']} seeds (sign test p = {sign['p']:.3f}): "
        f"{result['verdict'].replace('A', a).replace('B', b)}"
    )


def _two(text: str, flag: str) -> tuple[str, str]:
    parts = tuple(p.strip() for p in text.split(","))
    if len(parts) != 2 or not all(parts):
        raise UserError(f"{flag}: expected two names, comma-separated")
    return parts  # type: ignore[return-value]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ganrec compare",
        description="paired-by-seed comparison of runs: bootstrap interval and sign test",
    )
    parser.add_argument("runs", nargs="+", help="the RUN directories of A")
    parser.add_argument("--against", nargs="+", required=True, help="the RUN directories of B")
    parser.add_argument("--split", default="validation", help="validation (default) | test")
    parser.add_argument("--data", default="", help="DATA for --split test (default: the runs')")
    parser.add_argument(
        "--metric",
        default="",
        help="pair the seeds on this metric of each run's eval.json cold-item table instead "
        "(e.g. cold_ndcg@20)",
    )
    parser.add_argument(
        "--rows",
        default="tower_regress,content_knn",
        help="with --metric: A's row and B's row of the table",
    )
    parser.add_argument("--out", default="compare.json", help="the JSON written")
    parser.add_argument("--names", default="A,B", help="the two groups' names in the table")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    args = parser.parse_args(argv)
    from ganrec_dist.core.logs import setup_logging

    setup_logging(verbose=args.verbose, quiet=args.quiet)
    names = tuple(args.names.split(","))
    if len(names) != 2:
        raise UserError("--names: expected two names, comma-separated")
    result = compare(
        args.runs,
        args.against,
        split=args.split,
        data=args.data,
        resamples=args.resamples,
        seed=args.seed,
        metric=args.metric,
        rows=_two(args.rows, "--rows"),
    )
    result["names"] = list(names)
    print_comparison(result, names)  # type: ignore[arg-type]
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(f"written {out}")
    return 0
