"""Which rank trains which users, and how ranks with unequal shards take the same steps.

Prepare writes each user's rows into one train file, so a rank given whole files holds whole
users: it builds history windows from its own users' sequences and never loads anyone else's.
Files are dealt largest first to the rank with the fewest rows so far. Every rank must take the
same number of steps an epoch (each step's gradient all-reduce is a barrier): that number is the
mean shard's, ``ceil(train rows / (ranks x batch))``. A rank whose shard is shorter goes round it
again, reshuffled, and one whose shard is longer stops there (its rows come in a new order next
epoch), so an epoch still takes as many rows as the train split has.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ganrec_dist.core.errors import UserError


def assign(shards: list[tuple[str, int]], world: int) -> list[list[str]]:
    """``(file, rows)`` pairs dealt to ``world`` ranks; each rank's files in their listed order."""
    if len(shards) < world:
        raise UserError(
            f"the train split has {len(shards)} file(s) for {world} workers (a rank needs whole "
            f"users): prepare again with --shards {world} or more"
        )
    order = {path: i for i, (path, _) in enumerate(shards)}
    ranks: list[list[str]] = [[] for _ in range(world)]
    rows = [0] * world
    for path, n in sorted(shards, key=lambda s: (-s[1], order[s[0]])):
        r = min(range(world), key=lambda j: (rows[j], j))
        ranks[r].append(path)
        rows[r] += n
    return [sorted(files, key=order.__getitem__) for files in ranks]


def steps_per_epoch(total_rows: int, world: int, batch_size: int) -> int:
    """The steps every rank takes in an epoch: the mean shard's batches."""
    return max(1, math.ceil(total_rows / (world * batch_size)))


def epoch_batches(
    shard: Any,
    *,
    steps: int,
    batch_size: int,
    shuffle_buffer: int,
    seed: int,
    keep: Callable[[dict], np.ndarray] | None = None,
) -> Iterator[dict]:
    """Exactly ``steps`` numpy batches of a Ray Data shard, going round it again (reshuffled)
    when it runs out first. With ``keep`` (a row mask of a batch), only the rows it keeps, in
    batches of ``batch_size`` again; a lap's last rows are a shorter batch."""
    taken = lap = 0
    while taken < steps:
        empty = True
        pending: list[dict] = []
        held = 0
        last: dict = {}
        for raw in shard.iter_batches(
            batch_size=batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=shuffle_buffer or None,
            local_shuffle_seed=seed + lap * 1_000_003,
        ):
            empty = False
            if keep is None:
                yield raw
                taken += 1
                if taken >= steps:
                    return
                continue
            last = raw
            mask = keep(raw)
            pending.append({k: v[mask] for k, v in raw.items()})
            held += int(np.count_nonzero(mask))
            while held >= batch_size:
                merged = {k: np.concatenate([p[k] for p in pending]) for k in raw}
                yield {k: v[:batch_size] for k, v in merged.items()}
                taken += 1
                if taken >= steps:
                    return
                pending, held = [{k: v[batch_size:] for k, v in merged.items()}], held - batch_size
        if empty:
            raise RuntimeError("this rank's train shard has no rows")
        if keep is not None:
            # The lap's remainder; a lap that kept nothing still steps (every rank must) on one
            # row it read.
            merged = {k: np.concatenate([p[k] for p in pending]) for k in last}
            yield merged if held else {k: v[:1] for k, v in last.items()}
            taken += 1
        lap += 1
