"""Collectives of the training ranks: no-ops on one rank, and every rank must call each (they
are barriers)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def all_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (every rank must call this)."""
    import torch.distributed as dist

    if not values or not distributed():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a tensor (every rank must call this)."""
    import torch.distributed as dist

    if distributed():
        dist.all_reduce(t)
    return t


def weighted_mean(
    values: dict[str, float], weight: float, device: torch.device
) -> dict[str, float]:
    """The mean over ranks of each rank's ``values`` weighted by its ``weight`` (every rank must
    call this with the same keys): per-user means of each rank's users -> the mean over all."""
    if not distributed():
        return values
    weighted = all_mean({**{k: v * weight for k, v in values.items()}, "": weight}, device)
    total = max(weighted.pop(""), 1e-12)
    return {k: v / total for k, v in weighted.items()}


def all_concat_objects(local: Any) -> list:
    """Every rank's ``local`` object, in rank order."""
    import torch.distributed as dist

    if not distributed():
        return [local]
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return parts


def all_concat(local: np.ndarray) -> np.ndarray:
    """Every rank's ``local`` array, concatenated in rank order."""
    return np.concatenate(all_concat_objects(local))


def gather_nodes() -> list[str]:
    """The Ray node id of every rank (where the worker group actually ran)."""
    import ray

    return all_concat_objects(ray.get_runtime_context().get_node_id())
