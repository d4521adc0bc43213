"""The GAN against its ablation and EASE over several seeds' `evaluate` tables.

    python docs/experiments/seed_table.py docs/bench/eval-movielens-small.json \
        docs/bench/eval-movielens-small-seed?.json
    python docs/experiments/seed_table.py --markdown docs/bench/eval-movielens-small.json \
        docs/bench/eval-movielens-small-seed?.json     # the README's results table

Each argument is one seed's `RUN/eval.json`. Prints NDCG@10 of the GAN, its ablation, their
difference and the GAN's ratio to EASE per file, then the mean and the sample standard deviation
over files, and on how many seeds the GAN is ahead. With ``--markdown``: every model's mean ± sample
standard deviation over the files, for the README's columns.
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
        from scipy.stats import t

        diffs = columns[2]
        half = t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
        mean = statistics.mean(diffs)
        print(
            f"GAN - ablation: {mean:+.4f}, 95% interval over paired seeds "
            f"[{mean - half:+.4f}, {mean + half:+.4f}] (t, {len(diffs) - 1} d.f.)"
        )


COLUMNS = ["ndcg@10", "recall@10", "precision@10", "hit@10", "mrr@10", "ndcg@20", "coverage@10"]
NAMES = {
    "popularity": "popularity",
    "ease": "EASE",
    "als": "ALS (`implicit`)",
    "gan": "**GAN** (through FAISS)",
    "gan_ablation": "GAN ablation (adv_weight 0)",
}


def markdown(paths: list[str]) -> None:
    tables = [json.load(open(p))["models"] for p in paths]
    print("| model | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, label in NAMES.items():
        cells = []
        for column in COLUMNS:
            values = [t[name][column] for t in tables]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {sd:.4f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    if sys.argv[1] == "--markdown":
        markdown(sys.argv[2:])
    else:
        main(sys.argv[1:])
