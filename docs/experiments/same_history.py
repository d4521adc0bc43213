"""Are two runs the same training? Every column of history.csv but the wall-clock ones.

    python docs/experiments/same_history.py RUN_A RUN_B

A restructuring of the code must leave the default run's history unchanged on one machine
(training is deterministic for a seed there): train once with each version, compare. Prints the
first differing epoch and column, or that the histories are identical; exit status 1 if not.
"""

import csv
import sys

WALL_CLOCK = {"seconds", "data_wait_fraction"}


def rows(run: str) -> list[dict]:
    with open(f"{run}/history.csv") as handle:
        return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in csv.DictReader(handle)]


def main(a: str, b: str) -> int:
    first, second = rows(a), rows(b)
    if len(first) != len(second):
        print(f"{len(first)} epochs against {len(second)}")
        return 1
    for i, (x, y) in enumerate(zip(first, second)):
        if x != y:
            diff = {
                k: (x.get(k), y.get(k)) for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)
            }
            print(f"row {i + 1} ({x.get('phase')} epoch {x.get('epoch')}) differs: {diff}")
            return 1
    print(f"identical: {len(first)} epochs, {len(first[0]) if first else 0} columns")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
