"""Fitting the content tower to a trained recommender: content -> a vector that users rank like
the item's learned embedding.

The recommender is frozen (its user vectors and warm item rows are what serve today; moving them
for the sake of new items would move every warm list). Two objectives, on warm items only (items
with content and learned rows):

- ``regress`` (the ablation, DropoutNet/Heater-like): the generated vector regressed onto the
  learned row (mean squared error), plus a ranking term: for a batch of (user, item) train pairs,
  a softmax over the batch's generated vectors in which each user's own item must win.
- ``gar`` (Chen et al., SIGIR 2022): the recommender's own scores judge the generated vector: G
  minimises (1 - alpha) * softplus(s(u, i) - s(u, G(c_i))) + alpha * |G(c_i) - e_i|_1 (a generated
  vector must be ranked by the item's users as high as the real row), alpha = 0.05 as in GAR.
  With the recommender frozen this is GAR's generator step without its discriminator step.

Neither shares the GAN's own D. That D judges "is this vector a real item for this user" for
G's *user-side* vectors against the item rows; the content tower writes *item* rows, and the
judge GAR calls for is one that ranks items for users — which is the recommender's score
``u . e_i`` itself. Training D (or the recommender, as GAR's discriminator step does) against
generated item rows would move the warm items' rows and every warm list with them; the frozen
recommender keeps warm lists exactly as they were, and the tower can be refitted or added to
(``add-items``) without touching them.

Cost: a step touches its batch's items' content and users' vectors, never the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ganrec_dist.data.content import Content
from ganrec_dist.model.content import ContentTower, inputs

OBJECTIVES = ("regress", "gar")
GAR_ALPHA = 0.05
# Items "in between" never seen and warm: 1..IN_BETWEEN train interactions. Their learned rows
# rest on a handful of rows; `--cold_item_blend` mixes the tower's vector in (``blend``), the
# rule `evaluate --cold_items` measures on them.
IN_BETWEEN = 5


def blend(
    learned: np.ndarray, generated: np.ndarray, counts: np.ndarray, *, m: float, scale: float
) -> np.ndarray:
    """``w * learned + (1 - w) * scale * generated`` a row, ``w = c / (c + m)`` for an item's
    ``c`` train interactions: more interactions, more of the learned row."""
    c = np.asarray(counts, np.float64)[:, None]
    w = c / (c + m)
    return (w * learned + (1 - w) * scale * generated).astype(np.float32)


@dataclass
class TowerSettings:
    objective: str = "regress"
    epochs: int = 20
    batch: int = 512
    lr: float = 1e-3
    seed: int = 0


def fit(
    tower: ContentTower,
    content: Content,
    *,
    pairs: tuple[np.ndarray, np.ndarray],
    user_vectors: np.ndarray,
    item_rows: np.ndarray,
    settings: TowerSettings,
) -> list[float]:
    """Train ``tower`` in place on ``pairs`` (user indices, warm item indices: train
    interactions), against ``user_vectors`` ``[n_users, dim]`` and the learned ``item_rows``
    ``[n_items, dim]``. Returns the mean loss of each epoch."""
    if settings.objective not in OBJECTIVES:
        raise ValueError(f"objective {settings.objective!r}: expected one of {OBJECTIVES}")
    users, items = (np.asarray(a, dtype=np.int64) for a in pairs)
    rng = np.random.default_rng([settings.seed, 41])
    torch.manual_seed(settings.seed)
    opt = torch.optim.Adam(tower.parameters(), lr=settings.lr)
    vectors = torch.as_tensor(user_vectors, dtype=torch.float32)
    rows = torch.as_tensor(item_rows, dtype=torch.float32)
    history = []
    tower.train()
    for _ in range(settings.epochs):
        order = rng.permutation(len(users))
        losses = []
        for start in range(0, len(order), settings.batch):
            pick = order[start : start + settings.batch]
            batch = Pairs(vectors[users[pick]], rows[items[pick]], content.batch(items[pick]))
            losses.append(step(tower, opt, batch, settings.objective))
        history.append(float(np.mean(losses)))
    tower.eval()
    return history


@dataclass
class Pairs:
    """A batch of (user, item) train pairs: the user vectors ``[b, dim]``, the items' learned
    rows ``[b, dim]`` and their content (``Content.batch``)."""

    users: torch.Tensor
    rows: torch.Tensor
    content: dict[str, np.ndarray]


def loss(generated: torch.Tensor, batch: Pairs, objective: str) -> torch.Tensor:
    """The tower's loss on a batch (see the module docstring)."""
    u, real = batch.users, batch.rows
    if objective == "regress":
        logits = u @ generated.T  # each user's own item on the diagonal
        target = torch.arange(len(u), device=u.device)
        return F.mse_loss(generated, real) + F.cross_entropy(logits, target)
    gap = (u * real).sum(1) - (u * generated).sum(1)
    match = (generated - real).abs().sum(1)
    return ((1 - GAR_ALPHA) * F.softplus(gap) + GAR_ALPHA * match).mean()


def step(tower: torch.nn.Module, opt: torch.optim.Optimizer, batch: Pairs, objective: str) -> float:
    """One optimiser step of the tower (DDP-wrapped or not) on ``batch``; its loss."""
    generated = tower(inputs(batch.content, device=batch.users.device))
    value = loss(generated, batch, objective)
    opt.zero_grad()
    value.backward()
    opt.step()
    return float(value.detach())


def generate(tower: ContentTower, content: Content, items: np.ndarray, batch: int = 65_536):
    """The tower's vectors ``[len(items), dim]`` float32, a batch of items at a time."""
    out = []
    with torch.no_grad():
        for start in range(0, len(items), batch):
            chunk = content.batch(items[start : start + batch])
            out.append(tower(inputs(chunk)).float().numpy())
    dim = tower.mlp[-1].out_features
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)
