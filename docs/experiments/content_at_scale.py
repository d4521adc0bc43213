"""Item content at a million items: what each step costs, and the tower's generation rate.

    python docs/experiments/content_at_scale.py --items 10000,1000000 --out docs/bench/content-at-scale.json

For each catalogue size, the synthetic source's content (a category and a 16-d vector per item)
is written, validated and staged (`data.content.stage`, pass 1), encoded into the memory-mapped
arrays (`encode`, pass 2), and an untrained tower (its cost does not depend on its weights)
generates every item's vector a batch of 65,536 items at a time. Prints a table, writes JSON;
peak memory is this process's maximum RSS after each size (sizes in increasing order).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from ganrec_dist.bench.common import cpu_model
from ganrec_dist.data import content, sources
from ganrec_dist.model.content import ContentTower
from ganrec_dist.training.tower import generate


def measure(items: int, root: Path) -> dict:
    layout = sources.synthetic_layout(max(1, items // 10), items, items)
    tick = time.perf_counter()
    sources.synthetic_content(layout, 0, 0.2, root / "items.parquet")
    drawn = time.perf_counter() - tick
    tick = time.perf_counter()
    staged = content.stage(
        str(root / "items.parquet"),
        "parquet",
        sources.SYNTHETIC_CONTENT,
        root / "staged",
        reject=lambda *a: None,
    )
    staging = time.perf_counter() - tick
    ids = staged.ids()
    catalogue = pc.take(ids, pc.sort_indices(ids))
    tick = time.perf_counter()
    described = content.encode(staged, catalogue, root / "encoded")
    encoding = time.perf_counter() - tick
    encoded = content.Content(root / "encoded", described)
    tower = ContentTower(described["features"], dim=64).eval()
    tick = time.perf_counter()
    vectors = generate(tower, encoded, np.arange(encoded.n_items))
    generating = time.perf_counter() - tick
    assert vectors.shape == (items, 64) and np.isfinite(vectors).all()
    return {
        "items": items,
        "draw_s": round(drawn, 2),
        "stage_s": round(staging, 2),
        "encode_s": round(encoding, 2),
        "generate_s": round(generating, 2),
        "generate_items_per_s": round(items / generating),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", default="10000,1000000")
    parser.add_argument("--out", default="content-at-scale.json")
    args = parser.parse_args()
    rows = []
    for items in sorted(int(x) for x in args.items.split(",")):
        root = Path(tempfile.mkdtemp(prefix="ganrec-content-"))
        try:
            rows.append(measure(items, root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(rows[-1], flush=True)
    keys = list(rows[0])
    print(" ".join(f"{k:>20s}" for k in keys))
    for r in rows:
        print(" ".join(f"{r[k]!s:>20s}" for k in keys))
    result = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {args.out} ({result['cpu']}, {result['threads']} torch threads)")


if __name__ == "__main__":
    main()
