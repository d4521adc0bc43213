"""The adversarial objective: the D-step and the G-step as plain functions of a batch.

D maximises log D(u, real) + log(1 - D(u, G(u, z))), plus ``mismatch`` * log(1 - D(u, real item
of another user)); G minimises the non-saturating -log D(u, G(u, z)) times ``adv_weight``, plus a
softmax cross-entropy over the catalogue that anchors G's vector to the real next item.
``adv_weight = 0`` is the ablation; ``mismatch = 0`` is the plain objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Batch:
    history: torch.Tensor  # [b, L] item indices, padded with n_items, most recent last
    users: torch.Tensor  # [b] user indices (n_users = unknown)
    targets: torch.Tensor  # [b] the real next item
    future: torch.Tensor | None = None  # [b] a real item of the next few (D's); None = targets


def unwrap(module: nn.Module) -> Any:
    return getattr(module, "module", module)


@dataclass
class Forward:
    """G's forward pass on a batch, with its autograd graph: shared by a D-step and the G-step
    that follows it, so that the user encoder and G run once per batch, not twice."""

    state: torch.Tensor  # [b, hidden] user state
    mean_vector: torch.Tensor  # [b, dim] G(u, z = 0), what inference uses
    ce: torch.Tensor  # the softmax cross-entropy of the batch's targets
    fake: torch.Tensor | None  # [b, dim] G(u, z); None when there is no adversarial term


def g_forward(
    gen: nn.Module,
    batch: Batch,
    z: torch.Tensor,
    *,
    adv_weight: float,
    negatives: torch.Tensor | None = None,
    fused_softmax: bool = True,
) -> Forward:
    """G's forward pass for a G-step (see ``g_step`` for the arguments)."""
    # The ranking loss trains the deterministic output G(u, z = 0) that inference uses; the
    # adversarial loss trains the samples G(u, z), which must look like real next items to D.
    if negatives is None and fused_softmax:
        state, mean_vector, ce = gen(batch.history, batch.users, None, targets=batch.targets)
    elif negatives is None:
        state, mean_vector, logits = gen(batch.history, batch.users, None)
        ce = F.cross_entropy(logits, batch.targets)
    else:
        candidates = torch.cat([batch.targets, negatives])
        state, mean_vector, logits = gen(batch.history, batch.users, None, candidates=candidates)
        ce = sampled_softmax_ce(logits, batch.targets, negatives, unwrap(gen).cfg.n_items)
    fake = unwrap(gen).generate(state, z) if adv_weight > 0 else None
    return Forward(state, mean_vector, ce, fake)


def d_step(
    gen: nn.Module,
    disc: nn.Module,
    d_opt: torch.optim.Optimizer,
    batch: Batch,
    *,
    z: torch.Tensor,
    forward: Forward | None = None,
    mismatch: float = 0.0,
) -> dict[str, float]:
    """One discriminator update on real (user, next item) pairs against generated ones.

    Args:
        forward: G's pass on this batch with the current weights (``g_forward``), reused instead
            of running G again; None runs G here.
        mismatch: weight of a third term that labels real items paired with the wrong user as
            fake (each row's user with the next row's real item): the matching-aware
            discriminator of GAN-CLS (Reed et al., 2016). Without it D can score an item's
            realism while ignoring the user, and G's adversarial gradient then says little
            about *this* user; 0 = the plain two-term objective.
    """
    core = unwrap(gen)
    with torch.no_grad():  # no gradient reaches G here, so DDP's wrapper is not needed
        if forward is not None and forward.fake is not None:
            state, fake = forward.state.detach(), forward.fake.detach()
        else:
            state = core.encoder(batch.history, batch.users)
            fake = core.generate(state, z)
        real = core.item_embeddings(batch.targets if batch.future is None else batch.future)
    d_real = disc(state, real)
    d_fake = disc(state, fake)
    loss = F.binary_cross_entropy_with_logits(
        d_real, torch.ones_like(d_real)
    ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
    stats: dict[str, float] = {}
    if mismatch > 0 and len(real) > 1:
        d_other = disc(state, real.roll(1, 0))
        loss = loss + mismatch * F.binary_cross_entropy_with_logits(
            d_other, torch.zeros_like(d_other)
        )
        stats["d_other"] = float(torch.sigmoid(d_other).mean().detach())
    d_opt.zero_grad(set_to_none=True)
    loss.backward()
    d_opt.step()
    return {
        "d_loss": float(loss.detach()),
        "d_real": float(torch.sigmoid(d_real).mean().detach()),
        "d_fake": float(torch.sigmoid(d_fake).mean().detach()),
        **stats,
    }


def sampled_softmax_ce(
    logits: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor, n_items: int
) -> torch.Tensor:
    """Cross-entropy of each row's target against ``c`` uniformly sampled shared negatives.

    ``logits`` ``[b, b + c]`` are scores against ``[targets; negatives]``; only the diagonal of
    the first ``b`` columns is used (in-batch targets are popularity-sampled and would need their
    own correction). Each negative stands for ``n_items / c`` items, so its logit gets
    ``log(n_items / c)``: the sum over negatives then estimates the full softmax's normaliser,
    and the loss and its gradients approach the full softmax's instead of becoming too easy as
    the model improves. A negative equal to the row's target is masked. With every item as a
    negative this is exactly the full softmax (a test checks it).
    """
    b, c = len(targets), len(negatives)
    pos = logits[:, :b].diagonal()[:, None]
    neg = logits[:, b:] + math.log(n_items / c)
    neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    return -F.log_softmax(torch.cat([pos, neg], dim=1), dim=1)[:, 0].mean()


def g_step(
    gen: nn.Module,
    disc: nn.Module,
    g_opt: torch.optim.Optimizer,
    batch: Batch,
    *,
    z: torch.Tensor,
    adv_weight: float,
    negatives: torch.Tensor | None = None,
    fused_softmax: bool = True,
    forward: Forward | None = None,
) -> dict[str, float]:
    """One generator update: softmax cross-entropy + ``adv_weight`` * non-saturating GAN loss.

    Args:
        negatives: ``[c]`` shared sampled items for a sampled softmax; None = full softmax.
        fused_softmax: the full softmax through ``models.catalogue_cross_entropy``; False =
            ``F.cross_entropy`` on the logits (the same loss; the reference ``bench step`` times).
        forward: G's pass on this batch with G's current weights (``g_forward``; D may have
            been updated since); None runs it here.
    """
    if forward is None:
        forward = g_forward(
            gen, batch, z, adv_weight=adv_weight, negatives=negatives, fused_softmax=fused_softmax
        )
    state, ce = forward.state, forward.ce
    core = unwrap(disc)
    if adv_weight > 0:
        assert forward.fake is not None
        for p in core.parameters():
            p.requires_grad_(False)
        d_fake = core(state.detach(), forward.fake)
        for p in core.parameters():
            p.requires_grad_(True)
    else:  # the ablation: no adversarial term, nothing for D to judge
        with torch.no_grad():
            d_fake = core(state.detach(), forward.mean_vector.detach())
    adv = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
    loss = ce + adv_weight * adv
    g_opt.zero_grad(set_to_none=True)
    loss.backward()
    g_opt.step()
    return {
        "g_loss": float(adv.detach()),
        "ce_loss": float(ce.detach()),
        "g_d_fake": float(torch.sigmoid(d_fake).mean().detach()),
    }


def train_step(
    gen: nn.Module,
    disc: nn.Module,
    d_opt: torch.optim.Optimizer,
    g_opt: torch.optim.Optimizer,
    *,
    batch: Batch,
    z: torch.Tensor,
    adv_weight: float,
    d_steps: int = 1,
    g_steps: int = 1,
    negatives: torch.Tensor | None = None,
    fused_softmax: bool = True,
    d_mismatch: float = 0.0,
) -> dict[str, float]:
    """``d_steps`` D-steps then ``g_steps`` G-steps on one batch (no D-step in the ablation).

    G runs forward once for the D-steps and the first G-step: D judges the same samples, and the
    first G-step differentiates the pass D judged (G's weights have not changed in between).
    """
    stats: dict[str, float] = {}
    forward = None
    if adv_weight > 0:
        forward = g_forward(
            gen, batch, z, adv_weight=adv_weight, negatives=negatives, fused_softmax=fused_softmax
        )
        for _ in range(d_steps):
            stats.update(d_step(gen, disc, d_opt, batch, z=z, forward=forward, mismatch=d_mismatch))
    for step in range(g_steps):
        stats.update(
            g_step(
                gen,
                disc,
                g_opt,
                batch,
                z=z,
                adv_weight=adv_weight,
                negatives=negatives,
                fused_softmax=fused_softmax,
                forward=forward if step == 0 else None,
            )
        )
    return stats
