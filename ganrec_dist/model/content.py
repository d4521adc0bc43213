"""The content tower: an item's encoded content (``data.content``) to a vector in the
item-embedding space, so that an item nobody has touched yet can be retrieved, scored and read in
a history like a trained one.

One mean-pooled embedding bag per id feature (categorical, multi, text; id 0 is padding and adds
nothing), the normalised numerics with their missing flags, the dense vectors with theirs, and
has_content, concatenated into an MLP (GAR's generator: two hidden layers of 200, tanh). A pure
module: batches in, vectors out; what it is trained against lives in training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

BAG_DIM = 32
HIDDEN = 200


class ContentTower(nn.Module):
    def __init__(
        self, features: list[dict[str, Any]], dim: int, hidden: int = HIDDEN, bag_dim: int = BAG_DIM
    ) -> None:
        """``features``: the manifest's ``content.features`` entries; ``dim``: the item-
        embedding dimension it writes into."""
        super().__init__()
        self.features = [dict(f) for f in features]
        self.bags = nn.ModuleDict(
            {
                f["name"]: nn.EmbeddingBag(int(f["ids"]), bag_dim, mode="mean", padding_idx=0)
                for f in features
                if f.get("ids")
            }
        )
        self.numerics = sum(1 for f in features if f["type"] == "numeric")
        self.vectors = {f["name"]: int(f["width"]) for f in features if f["type"] == "vector"}
        width = (
            1
            + len(self.bags) * bag_dim
            + 2 * self.numerics
            + sum(w + 1 for w in self.vectors.values())
        )
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, dim),
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``batch``: ``Content.batch`` arrays as tensors (``inputs``) -> ``[b, dim]``."""
        parts = [batch["has_content"].float()[:, None]]
        for name, bag in self.bags.items():
            parts.append(bag(batch[f"ids_{name}"].long()))
        if self.numerics:
            parts += [batch["numeric"].float(), batch["numeric_missing"].float()]
        for name in self.vectors:
            parts += [
                batch[f"vector_{name}"].float(),
                batch[f"vector_{name}_missing"].float()[:, None],
            ]
        return self.mlp(torch.cat(parts, dim=1))


def inputs(arrays: dict[str, np.ndarray], device: torch.device | str = "cpu") -> dict:
    """``Content.batch``'s numpy arrays as the tower's tensors."""
    return {k: torch.as_tensor(np.ascontiguousarray(v), device=device) for k, v in arrays.items()}
