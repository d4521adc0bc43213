"""Epoch-by-epoch validation NDCG@10 of one run minus another (an experiment, not a test).

    python docs/experiments/compare_curves.py RUN RUN_ABLATION

Both from ``ganrec train --refit false`` (the search phase's curve); prints each epoch's
difference and the best epochs' difference.
"""

import csv
import sys


def curve(run: str) -> dict[int, float]:
    with open(f"{run}/history.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["phase"] == "search"]
    return {int(r["epoch"]): float(r["val_ndcg@10"]) for r in rows}


def main(run: str, other: str) -> None:
    a, b = curve(run), curve(other)
    print(" ".join(f"{e}:{a[e] - b[e]:+.4f}" for e in sorted(a) if e in b))
    print(f"best: {max(a.values()):.4f} vs {max(b.values()):.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
