"""What an epoch of a warm start costs against one of a run from scratch, in one process,
alternating: a warm start from the bench's first model (the default), the same with fresh Adam
moments (``--init_optimizer false``), and a 4-epoch run from scratch without refit, on the first
appended version of a `ganrec bench update --workdir EXP` run (seed 0), e.g.

    python docs/experiments/warm_epoch_cost.py EXP 2

prints each run's epoch seconds and the rows an epoch trained.
"""

from __future__ import annotations

import shutil
import sys


def main() -> None:
    from ganrec_dist.bench.update import _train
    from ganrec_dist.core.logs import setup_logging
    from ganrec_dist.data.layout import RunDir

    setup_logging(quiet=True)
    work, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2
    parent = f"{work}/seed0/v0"
    variants = {
        "warm": {"init": parent},
        "warm, fresh moments": {"init": parent, "init_optimizer": False},
        "scratch, 4 epochs": {"epochs": 4, "patience": 9, "refit": False},
    }
    for round_ in range(rounds):
        for name, settings in variants.items():
            out = f"{work}/epoch-cost-{round_}-{name.split(',')[0]}{len(settings)}"
            shutil.rmtree(out, ignore_errors=True)
            _train(data=f"{work}/data1", out=out, seed=0, **settings)
            history = RunDir(out).payload()["state"]["history"]
            seconds = [round(h["seconds"], 2) for h in history]
            print(f"{name} (round {round_}): {seconds} s, {history[0]['rows']} rows an epoch")


if __name__ == "__main__":
    main()
