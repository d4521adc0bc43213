"""Make a DATA whose test split is another DATA's validation carve (a nested check without test).

    python jobs/validation_as_test.py DATA OUT [--val_fraction 0.2]

OUT's train is each user's first 80% of DATA's train (the part `ganrec train` fits in its search
phase), OUT's test the remaining 20% (the validation rows). Training and evaluating on OUT answers
"does this change help?" with numbers from validation only: `ganrec train` then carves its own
inner validation out of OUT's train. Local paths only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import uuid
from pathlib import Path

import pyarrow.parquet as pq

from ganrec_dist.data.interactions import validation_limits
from ganrec_dist.data.layout import DataDir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--val_fraction", type=float, default=0.2)
    args = parser.parse_args()
    src, out = Path(args.data), Path(args.out)
    if out.exists():
        print(f"{out}: already exists", file=sys.stderr)
        return 1
    data = DataDir(src)
    limits = validation_limits(data.sequences(), args.val_fraction)
    table = data.read(DataDir.TRAIN)  # checks that src is a prepared DATA (its manifest)
    fitted = table["position"].to_numpy() < limits[table["user_idx"].to_numpy()]
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    (tmp / DataDir.TRAIN).mkdir(parents=True)
    (tmp / DataDir.TEST).mkdir()
    train, test = table.filter(fitted), table.filter(~fitted)
    pq.write_table(train, tmp / DataDir.TRAIN / "part-00000.parquet")
    pq.write_table(test, tmp / DataDir.TEST / "part-00000.parquet")
    for name in (DataDir.ITEMS, DataDir.USERS):
        shutil.copy(src / name, tmp / name)
    manifest = dict(data.manifest)
    manifest.update(
        train_rows=train.num_rows,
        test_rows=test.num_rows,
        shards=1,
        source=f"{manifest['source']} [validation carve of {src} as test]",
    )
    (tmp / DataDir.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.rename(out)
    print(f"{out}: train {train.num_rows:,} rows, test (= validation) {test.num_rows:,} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
