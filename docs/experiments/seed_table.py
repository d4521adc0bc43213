"""The GAN against its ablation and EASE over several seeds' `evaluate` tables.

    python docs/experiments/seed_table.py docs/bench/eval-movielens-small.json \
        docs/bench/eval-movielens-small-seed*.json

Each argument is one seed's `RUN/eval.json`. Prints NDCG@10 of the GAN, its ablation, their
difference and the GAN's ratio to EASE per file, then the mean and the sample standard deviation
over files, and a one-sided sign count (how many seeds the GAN is ahead on).
"""

import json
import statistics
import sys


def row(path: str) -> tuple[float, float, float]:
    with open(path) as handle:
        models = json.load(handle)["models"]
    return models["gan"]["ndcg@10"], models["gan_ablation"]["ndcg@10"], models["ease"]["ndcg@10"]


def main(paths: list[str]) -> None:
    rows = [row(p) for p in paths]
    print(f"{'file':<48} {'GAN':>7} {'ablation':>9} {'GAN-abl':>8} {'x EASE':>7}")
    for path, (gan, ablation, ease) in zip(paths, rows):
        print(f"{path:<48} {gan:7.4f} {ablation:9.4f} {gan - ablation:+8.4f} {gan / ease:7.3f}")
    if len(rows) > 1:
        columns = list(zip(*rows))
        diffs = [g - a for g, a, _ in rows]
        ratios = [g / e for g, _, e in rows]
        print(
            f"{'mean':<48} {statistics.mean(columns[0]):7.4f} {statistics.mean(columns[1]):9.4f} "
            f"{statistics.mean(diffs):+8.4f} {statistics.mean(ratios):7.3f}"
        )
        print(
            f"{'standard deviation':<48} {statistics.stdev(columns[0]):7.4f} "
            f"{statistics.stdev(columns[1]):9.4f} {statistics.stdev(diffs):8.4f} "
            f"{statistics.stdev(ratios):7.3f}"
        )
        print(f"GAN ahead of its ablation on {sum(d > 0 for d in diffs)} of {len(diffs)} seeds")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
