"""The whole pipeline as one Ray job: prepare -> train -> evaluate -> index -> score.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/pipeline.py \\
        --config jobs/pipeline.yaml --root /mnt/shared/ganrec

Every stage reads its section of the YAML (see the README's configuration section); paths are
resolved under --root: storage every node sees, or an object-store URI (s3://, gs://).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ganrec_dist.core import storage
from ganrec_dist.operations.cli import main


def run(config: str, root: str) -> int:
    # A path every node sees, or an object-store URI (s3://bucket/prefix).
    data, run_dir = storage.join(root, "data"), storage.join(root, "run")
    steps = [
        ["prepare", "--config", config, "--out", str(data), "--overwrite"],
        ["train", "--config", config, "--data", str(data), "--out", str(run_dir)],
        ["evaluate", "--config", config, "--data", str(data), "--run", str(run_dir)],
        ["index", "--config", config, "--run", str(run_dir)],
        [
            "score",
            "--config",
            config,
            "--data",
            str(data),
            "--run",
            str(run_dir),
            "--out",
            storage.join(root, "recs.parquet"),
            "--overwrite",
        ],
    ]
    for step in steps:
        print(f"== ganrec {' '.join(step)}", flush=True)
        status = main(step)
        if status:
            return status
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(Path(__file__).with_name("pipeline.yaml")))
    parser.add_argument(
        "--root", required=True, help="shared storage or s3:// / gs:// URI for data and runs"
    )
    args = parser.parse_args()
    sys.exit(run(args.config, args.root))
