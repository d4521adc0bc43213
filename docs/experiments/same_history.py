"""Are two runs the same training? Every column of history.csv but the wall-clock ones, and the
best epoch.

    python docs/experiments/same_history.py RUN_A RUN_B [--renamed OLD=NEW ...] \
        [--val_tolerance 1e-6]

A restructuring of the code must leave the default run's history unchanged on one machine
(training is deterministic for a seed there): train once with each version, compare. Training
columns must be equal as written (bit for bit); validation columns (``val_*``) within
``--val_tolerance`` (0: equal), where the restructuring moved validation onto another code path;
``--renamed g_loss=adv_loss`` reads A's ``g_loss`` as B's ``adv_loss`` (a renamed column); a column
only B has is listed, not compared. Prints the first differing epoch and column, or that the
histories are the same; exit status 1 if not.
"""

import argparse
import csv
import json
import sys

WALL_CLOCK = {"seconds", "data_wait_fraction"}


def rows(run: str, renamed: dict[str, str]) -> list[dict]:
    with open(f"{run}/history.csv") as handle:
        return [
            {renamed.get(k, k): v for k, v in r.items() if k not in WALL_CLOCK}
            for r in csv.DictReader(handle)
        ]


def best_epoch(run: str) -> int:
    with open(f"{run}/checkpoint/meta.json") as handle:
        return json.load(handle)["best_epoch"]


def _differs(key: str, x: str | None, y: str | None, tolerance: float) -> bool:
    if x == y:
        return False
    if key.startswith("val_") and tolerance > 0 and x and y:
        return abs(float(x) - float(y)) > tolerance
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--renamed", nargs="*", default=[], help="OLD=NEW: A's OLD is B's NEW")
    parser.add_argument("--val_tolerance", type=float, default=0.0)
    args = parser.parse_args()
    renamed = dict(pair.split("=", 1) for pair in args.renamed)
    first, second = rows(args.a, renamed), rows(args.b, {})
    if len(first) != len(second):
        print(f"{len(first)} epochs against {len(second)}")
        return 1
    only_b = sorted(set(second[0]) - set(first[0])) if first else []
    largest = 0.0
    for i, (x, y) in enumerate(zip(first, second)):
        keys = sorted((set(x) | set(y)) - set(only_b))
        diff = {
            k: (x.get(k), y.get(k))
            for k in keys
            if _differs(k, x.get(k), y.get(k), args.val_tolerance)
        }
        if diff:
            print(f"row {i + 1} ({x.get('phase')} epoch {x.get('epoch')}) differs: {diff}")
            return 1
        for k in keys:
            if k.startswith("val_") and x.get(k) and y.get(k):
                largest = max(largest, abs(float(x[k]) - float(y[k])))
    if best_epoch(args.a) != best_epoch(args.b):
        print(f"best epoch {best_epoch(args.a)} against {best_epoch(args.b)}")
        return 1
    print(
        f"the same: {len(first)} epochs, {len(first[0]) if first else 0} columns, best epoch "
        f"{best_epoch(args.a)}; largest validation difference {largest:.2g}"
        + (f"; only in B: {', '.join(only_b)}" if only_b else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
