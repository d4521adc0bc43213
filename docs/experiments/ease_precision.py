"""EASE's weights as issue 26 computes them (single precision, over the items someone trained
on) against the double-precision inverse over the whole catalogue that came before, on one DATA
in one process: seconds per λ (alternating, median of the rounds), the largest weight
difference, and the validation NDCG@10 each gives (the number `evaluate` tunes λ on).

    python docs/experiments/ease_precision.py DATA [--lambdas 100,400] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack


def double_full(train: sp.csr_matrix, lam: float) -> np.ndarray:
    """The float64 inverse over every item (the code before issue 26)."""
    x = (train > 0).astype(np.float64)
    gram = np.asarray((x.T @ x).todense())
    gram[np.diag_indices_from(gram)] += lam
    factor, _ = lapack.dpotrf(gram, lower=True, overwrite_a=True)
    inverse, _ = lapack.dpotri(factor, lower=True, overwrite_c=True)
    inverse = np.tril(inverse) + np.tril(inverse, -1).T
    weights = -inverse / np.diag(inverse)
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


def main() -> None:
    from ganrec_dist.bench.common import cpu_model
    from ganrec_dist.core.config import TrainConfig
    from ganrec_dist.data.interactions import validation_limits
    from ganrec_dist.data.layout import DataDir
    from ganrec_dist.evaluation.baselines import ease_recommend, ease_weights
    from ganrec_dist.retrieval.metrics import ranking_metrics
    from ganrec_dist.training.validation import validation_truth, validation_users

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--lambdas", default="100,400")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    # The validation carve `evaluate` tunes on (every validation user).
    seq = DataDir(args.data).sequences("train")
    limits = validation_limits(seq, TrainConfig().dataset.val_fraction)
    fit, users = seq.matrix(limits), validation_users(seq, limits)
    truth = validation_truth(seq, limits, users)
    print(f"{cpu_model()}; {fit.shape[1]:,} items, {len(users)} validation users")
    for lam in [float(v) for v in args.lambdas.split(",")]:
        seconds: dict[str, list[float]] = {"float64, every item": [], "float32, seen items": []}
        for _ in range(args.rounds):
            for name, fn in zip(seconds, (double_full, ease_weights)):
                start = time.perf_counter()
                weights = fn(fit, lam)
                seconds[name].append(time.perf_counter() - start)
                ndcg = ranking_metrics(ease_recommend(fit, weights, users, 10), truth, [10])
                print(
                    f"λ {lam:g} {name}: {seconds[name][-1]:.1f} s, validation NDCG@10 "
                    f"{ndcg['ndcg@10']:.6f}",
                    flush=True,
                )
        diff = np.abs(double_full(fit, lam) - ease_weights(fit, lam)).max()
        medians = {k: statistics.median(v) for k, v in seconds.items()}
        print(f"λ {lam:g}: {medians}; largest weight difference {diff:.2e}")


if __name__ == "__main__":
    main()
