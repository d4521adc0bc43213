"""The default sparse step at a million items in the process's main thread against a helper
thread (where Ray Train V2 runs the training function), and in a helper thread with glibc told
to keep freed blocks for reuse (``mallopt``: mmap threshold 256 MiB, trim threshold 1 GiB; the
worker did this at set-up for one commit of issue 26, until this measurement). Each variant runs
in a fresh process (the allocator setting is process-wide and cannot be undone), alternating.

    python docs/experiments/step_in_thread.py [--items 1000000] [--rounds 3] [--steps 30]

Prints ms/step (median of the steps after a warm-up; the median of the rounds) with the CPU
model, and writes the JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time

VARIANTS = ("main thread", "helper thread", "helper thread, mallopt")


def measure(variant: str, items: int, steps: int) -> float:
    import torch

    from ganrec_dist.bench.common import random_step
    from ganrec_dist.core.config import TrainConfig, build

    torch.set_num_threads(2)
    if "mallopt" in variant:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD: blocks up to 256 MiB from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap
    cfg = build(TrainConfig, {"batch_size": 256, "sampled_negatives": 8192, "sparse_tables": True})
    step = random_step(cfg, items // 2, items, negatives=8192)
    times: list[float] = []

    def loop() -> None:
        for i in range(steps + 5):
            start = time.perf_counter()
            step()
            if i >= 5:  # warm-up: thread pool, first-touch pages, the allocator's pools
                times.append((time.perf_counter() - start) * 1000)

    if variant == "main thread":
        loop()
    else:
        thread = threading.Thread(target=loop)
        thread.start()
        thread.join()
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="bench/step-in-thread.json")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # the child process's one variant
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.items, args.steps)))
        return 0
    from ganrec_dist.bench.common import cpu_model, write_json
    from ganrec_dist.core.logs import print_table

    ms: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--variant", variant]
            command += ["--items", str(args.items), "--steps", str(args.steps)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            ms[variant].append(json.loads(out.strip().splitlines()[-1]))
            print(variant, round(ms[variant][-1], 1), "ms", flush=True)
    base = statistics.median(ms["main thread"])
    rows = [
        [v, statistics.median(m), ", ".join(f"{x:.1f}" for x in m), statistics.median(m) / base]
        for v, m in ms.items()
    ]
    print_table(
        f"sparse step at {args.items:,} items, {cpu_model()}, 2 torch threads",
        ["where", "ms/step (median)", "each round", "x main thread"],
        rows,
    )
    write_json(args.out, {"cpu": cpu_model(), "items": args.items, "ms_per_step": ms})
    return 0


if __name__ == "__main__":
    sys.exit(main())
