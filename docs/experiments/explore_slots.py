"""What `--explore_known`'s slots cost a batch of users: the batched rule against the same rule
a row at a time (the previous implementation, the reference in tests/test_index.py), for a
batch of known users' top-10 lists and a day's new items, e.g.

    .venv/bin/python docs/experiments/explore_slots.py docs/bench/explore-slots.json

The G forward and the FAISS search that come before the slots are not timed.
"""

from __future__ import annotations

import functools
import json
import sys
import time

import numpy as np


def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    from ganrec_dist.bench.common import cpu_model
    from ganrec_dist.core.logs import print_table
    from ganrec_dist.retrieval.recommender import with_new_items

    sys.path.insert(0, "tests")
    from test_index import _slots_one_row_at_a_time as one_row_at_a_time

    rng = np.random.default_rng(0)
    n_items, b, k, seen = 1_000_000, 1024, 10, 50
    rows = []
    for n_new in (100, 1_000, 10_000):
        new_items = np.arange(n_items - n_new, n_items)
        items = rng.integers(0, n_items - n_new, (b, k))
        scores = rng.random((b, k)).astype(np.float32)
        new_scores = rng.standard_normal((b, n_new)).astype(np.float32)
        exclude = [rng.integers(0, n_items, seen) for _ in range(b)]
        args = (items, scores, new_scores, new_items, exclude)
        loop = timed(functools.partial(one_row_at_a_time, *args, 1))
        batched = timed(
            functools.partial(
                with_new_items,
                items,
                scores,
                new_scores=new_scores,
                new_items=new_items,
                exclude=exclude,
                want=1,
            )
        )
        rows.append({"users": b, "new_items": n_new, "loop_s": loop, "batched_s": batched})
    print_table(
        f"--explore_known 1: slots for {b} users' top-{k} ({cpu_model()})",
        ["new items", "row at a time ms", "batched ms", "speed-up"],
        [
            [
                r["new_items"],
                f"{1e3 * r['loop_s']:.1f}",
                f"{1e3 * r['batched_s']:.1f}",
                f"{r['loop_s'] / r['batched_s']:.1f}x",
            ]
            for r in rows
        ],
    )
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as handle:
            json.dump({"cpu": cpu_model(), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
