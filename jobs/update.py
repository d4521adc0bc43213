"""The daily update as one Ray job: append -> warm-start train -> gate -> index -> roll out.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/update.py \\
        --root /mnt/shared/ganrec --source /mnt/shared/logs/2026-12-02

    ganrec submit --address http://HEAD:8265 -- update --run RUN --source NEW_LOGS

The live versions are named in ROOT/current.json ({"data": ..., "run": ...}); without it they
are ROOT/data and ROOT/run, what jobs/pipeline.py writes. Each update writes DATA.v<N> and
RUN.v<N> beside them, and moves current.json on (written aside, then renamed) only when the gate
passed, so the next day starts from the model that is live.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ganrec_dist.core import storage
from ganrec_dist.core.config import UpdateConfig
from ganrec_dist.core.errors import UserError
from ganrec_dist.core.logs import setup_logging
from ganrec_dist.operations.update import update

CURRENT = "current.json"


def live(root: str) -> dict:
    pointer = storage.join(root, CURRENT)
    if storage.exists(pointer):
        return json.loads(storage.read_text(pointer))
    return {"data": storage.join(root, "data"), "run": storage.join(root, "run")}


def run(
    root: str,
    source: str,
    retire: str = "",
    rollout: bool = True,
    item_content: str = "",
    keep: int = 0,
    retrain_every: int = 0,
) -> int:
    current = live(root)
    record = update(
        UpdateConfig(
            run=current["run"],
            data=current["data"],
            source=source,
            retire=retire,
            item_content=item_content,
            rollout=rollout,
            keep=keep,
            retrain_every=retrain_every,
        )
    )
    if record["passed"]:
        text = json.dumps({"data": record["data"], "run": record["new_run"]}, indent=2) + "\n"
        storage.write_atomic(Path(root) / CURRENT, text)
    print(json.dumps(record, indent=2), flush=True)
    return 0 if record["passed"] else 3  # 3: held back by the gate, as `ganrec update`


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True, help="where jobs/pipeline.py put data and run")
    parser.add_argument("--source", required=True, help="the new partition's log files")
    parser.add_argument("--retire", default="", help="a file of item ids to retire")
    parser.add_argument("--item_content", default="", help="the day's item content file")
    parser.add_argument("--keep", type=int, default=0, help="run versions to keep (0: all)")
    parser.add_argument("--no-rollout", action="store_true", help="gate and index only")
    parser.add_argument(
        "--retrain_every",
        type=int,
        default=0,
        help="train from scratch every N days (0: warm starts only; ganrec update's policy)",
    )
    args = parser.parse_args()
    setup_logging()
    try:
        sys.exit(
            run(
                args.root,
                args.source,
                args.retire,
                rollout=not args.no_rollout,
                item_content=args.item_content,
                keep=args.keep,
                retrain_every=args.retrain_every,
            )
        )
    except UserError as exc:
        print(f"update: error: {exc}", file=sys.stderr)
        sys.exit(2)
