"""The GAN against its ablation and EASE over several seeds' `evaluate` tables.

    python docs/experiments/seed_table.py docs/bench/eval-movielens-small.json \
        docs/bench/eval-movielens-small-seed*.json

Each argument is one seed's `RUN/eval.json`. Prints NDCG@10 of the GAN, its ablation, their
difference and the GAN's ratio to EASE per file, then the mean and the sample standard deviation
over files, and on how many seeds the GAN is ahead.
"""

import json
import statistics
import sys


def row(path: str) -> tuple[float, float, float]:
    with open(path) as handle:
        models = json.load(handle)["models"]
    return models["gan"]["ndcg@10"], models["gan_ablation"]["ndcg@10"], models["ease"]["ndcg@10"]


def main(paths: list[str]) -> None:
    rows = [(gan, ablation, gan - ablation, gan / ease) for gan, ablation, ease in map(row, paths)]
    print(f"{'file':<48} {'GAN':>7} {'ablation':>9} {'GAN-abl':>8} {'x EASE':>7}")
    line = "{:<48} {:7.4f} {:9.4f} {:+8.4f} {:7.3f}"
    for path, values in zip(paths, rows):
        print(line.format(path, *values))
    if len(rows) > 1:
        columns = list(zip(*rows))
        print(line.format("mean", *map(statistics.mean, columns)))
        print(line.format("standard deviation", *map(statistics.stdev, columns)))
        ahead = sum(d > 0 for d in columns[2])
        print(f"GAN ahead of its ablation on {ahead} of {len(rows)} seeds")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
