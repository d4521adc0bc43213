"""The adversarial objective: the D-step and the G-step as plain functions of a batch.

D maximises log D(u, real) + log(1 - D(u, G(u, z))), plus ``mismatch`` * log(1 - D(u, real item
of another user)); G minimises the non-saturating -log D(u, G(u, z)) times ``adv_weight``, plus a
softmax cross-entropy over the catalogue that anchors G's vector to the real next item.
``adv_weight = 0`` is the ablation; ``mismatch = 0`` is the plain objective.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ganrec_dist.core.config import DiscriminatorSettings, GameSettings
from ganrec_dist.model.sampling import SamplingTerms


@dataclass
class Batch:
    history: torch.Tensor  # [b, L] item indices, padded with n_items, most recent last
    users: torch.Tensor  # [b] user indices (n_users = unknown)
    # [b] the real next item; or [b, L], every position's next item (SASRec trained at every
    # position in one forward), n_items where a position has none
    targets: torch.Tensor
    future: torch.Tensor | None = None  # [b] a real item of the next few (D's); None = targets

    def trained_targets(self, n_items: int) -> torch.Tensor:
        """``[T]``: the targets trained, in the order of G's outputs (row-major when
        every position is a target)."""
        if self.targets.dim() == 2:
            return self.targets[self.targets != n_items]
        return self.targets


def unwrap(module: nn.Module) -> Any:
    return getattr(module, "module", module)


@dataclass
class Forward:
    """G's forward pass on a batch, with its autograd graph: shared by a D-step and the G-step
    that follows it, so that the user encoder and G run once per batch, not twice."""

    state: torch.Tensor  # [b, hidden] user state
    mean_vector: torch.Tensor  # [b, dim] G(u, z = 0), what inference uses
    ce: torch.Tensor  # the softmax cross-entropy of the batch's targets, at z = 0
    fake: torch.Tensor | None  # [b, dim] G(u, z); None when there is no adversarial term
    rank_loss: torch.Tensor | None = None  # what G minimises instead of ``ce`` (sampling terms)
    stats: dict[str, float] = dataclasses.field(default_factory=dict)


def g_forward(
    gen: nn.Module,
    batch: Batch,
    z: torch.Tensor,
    *,
    adv_weight: float,
    negatives: torch.Tensor | Negatives | None = None,
    fused_softmax: bool = True,
    sampling: SamplingTerms | None = None,
    adv_rows: int = 0,
) -> Forward:
    """G's forward pass for a G-step (see ``g_step`` for the arguments)."""
    # The ranking loss trains the deterministic output G(u, z = 0) that inference uses; the
    # adversarial loss trains the samples G(u, z), which must look like real next items to D.
    best_of = sampling.best_of if sampling is not None else 0
    shared = None
    if negatives is not None:
        shared = negatives if isinstance(negatives, Negatives) else Negatives(negatives)
    n_items = unwrap(gen).cfg.n_items
    targets = batch.trained_targets(n_items)
    every = batch.targets if batch.targets.dim() == 2 else None  # every position a target
    row_ce = None
    if shared is None and fused_softmax and best_of <= 1:
        state, mean_vector, ce = gen(batch.history, batch.users, None, targets=batch.targets)
    elif shared is None:
        everything = None if every is None else torch.arange(n_items, device=targets.device)
        state, mean_vector, logits = gen(
            batch.history, batch.users, None, candidates=everything, targets=every
        )
        if best_of > 1:
            row_ce = F.cross_entropy(logits, targets, reduction="none")
            ce = row_ce.mean()
        else:
            ce = F.cross_entropy(logits, targets)
    else:
        candidates = torch.cat([targets, shared.items])
        state, mean_vector, logits = gen(
            batch.history, batch.users, None, candidates=candidates, targets=every
        )
        if fused_softmax and best_of <= 1:
            ce = fused_sampled_ce(logits, targets, shared, n_items)
        else:
            row_ce = _sampled_row_ce(logits, targets, shared, n_items)
            ce = row_ce.mean()
    rows = adv_rows or len(state)  # the rows of the batch the game is played on
    fake = unwrap(gen).generate(state[:rows], z[:rows]) if adv_weight > 0 else None
    forward = Forward(state, mean_vector, ce, fake)
    if sampling is not None and sampling.active:
        core = unwrap(gen)

        def per_sample_ce(vectors: torch.Tensor, n: int) -> torch.Tensor:
            """``[b * n, dim]`` extra samples of G, row-major -> their cross-entropy ``[b, n]``."""
            if shared is None:
                logits = vectors @ core.catalogue().T
                return F.cross_entropy(
                    logits, batch.targets.repeat_interleave(n), reduction="none"
                ).view(-1, n)
            table = core.item_embeddings(torch.cat([batch.targets, shared.items]))
            logits = (vectors @ table.T).view(len(batch.targets), n, -1)
            return torch.stack(
                [
                    _sampled_row_ce(logits[:, j], batch.targets, shared, core.cfg.n_items)
                    for j in range(n)
                ],
                dim=1,
            )

        forward.rank_loss = sampling.loss(
            core, state, ce=ce, row_ce=row_ce, per_sample_ce=per_sample_ce, stats=forward.stats
        )
    return forward


def _sampled_row_ce(
    logits: torch.Tensor, targets: torch.Tensor, shared: Negatives, n_items: int
) -> torch.Tensor:
    """Each row's sampled-softmax cross-entropy ``[b]`` (the mean is ``sampled_softmax_ce``)."""
    corrected = sampled_logits(
        logits, targets, shared.items, n_items=n_items, popularity=shared.popularity
    )
    return -F.log_softmax(corrected, dim=1)[:, 0]


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
        state = state[: len(fake)]  # G's samples of the rows the game is played on
        n_items = core.cfg.n_items
        real_items = batch.trained_targets(n_items) if batch.future is None else batch.future
        real = core.item_embeddings(real_items[: len(fake)])
    d_real = disc(state, real)
    d_fake = disc(state, fake)
    loss = F.binary_cross_entropy_with_logits(
        d_real, torch.ones_like(d_real)
    ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
    stats: dict[str, float] = {}
    if mismatch > 0 and len(real) > 1:
        # Another row's real item: the next row's, or with every position a target (where
        # the next row is mostly the same user's next position) the row half a batch away.
        shift = len(real) // 2 if batch.targets.dim() == 2 else 1
        d_other = disc(state, real.roll(shift, 0))
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


@dataclass
class Negatives:
    """A sampled softmax's negatives: ``items`` ``[c]`` drawn uniformly and shared by the rows
    of a batch; with ``popularity`` ``[n_items]`` (each item's share of the train rows) the
    batch's own targets are negatives of the other rows too (mixed negatives), None: the
    uniform ones only."""

    items: torch.Tensor
    popularity: torch.Tensor | None = None


def sampled_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    n_items: int,
    popularity: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[b, 1 + columns]``: each row's target logit, then its negatives' logits corrected for how
    they were sampled (log-Q), a column equal to the row's target masked.

    ``logits`` ``[b, b + c]`` are scores against ``[targets; negatives]``. A negative that is
    expected ``m`` times in the sample stands for ``1 / m`` items, so its logit gets ``-log m``:
    the sum of the corrected exponentials then estimates the full softmax's normaliser (without
    the target), whatever the mix of sources. Uniform negatives are expected ``c / n_items``
    times (``+log(n_items / c)``); with ``popularity`` the other ``b - 1`` rows' targets are
    drawn by popularity, so item ``j`` is expected ``(b - 1) p_j + c / n_items`` times among a
    row's negatives. Without it only the uniform ones are negatives.
    """
    candidates, log_m = _log_expected(
        targets, negatives, n_items, popularity=popularity, dtype=logits.dtype
    )
    pos = logits[:, : len(targets)].diagonal()[:, None]
    neg = logits[:, logits.shape[1] - len(candidates) :] - log_m[None, :]
    neg = neg.masked_fill(candidates[None, :] == targets[:, None], float("-inf"))
    return torch.cat([pos, neg], dim=1)


def _log_expected(
    targets: torch.Tensor,
    negatives: torch.Tensor,
    n_items: int,
    *,
    popularity: torch.Tensor | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The columns a row's negatives come from (``negatives``, or ``[targets; negatives]`` with
    ``popularity``) and the log of how many times each is expected among them: the log-Q
    correction of :func:`sampled_logits`."""
    b, c = len(targets), len(negatives)
    if popularity is None:
        return negatives, torch.full(
            (c,), math.log(c / n_items), dtype=dtype, device=targets.device
        )
    candidates = torch.cat([targets, negatives])
    expected = (b - 1) * popularity[candidates] + c / n_items
    return candidates, torch.log(expected.to(dtype))


class _SampledCrossEntropy(torch.autograd.Function):
    """Mean sampled-softmax cross-entropy (:func:`sampled_softmax_ce`) straight from the logits
    ``[b, b + c]`` against ``[targets; negatives]``: one buffer, corrected, masked and turned into
    probabilities in place, which the backward pass turns into the gradient in place. The
    reference builds the corrected, masked, concatenated logits and their log-softmax, each a
    new ``[b, b + c]`` tensor, and as many again backwards: memory traffic that is most of a
    sampled step at a million items."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, same_item: torch.Tensor, correction: torch.Tensor):
        b = len(logits)
        positive = logits[:, :b].diagonal()
        probs = logits - correction[None, :]
        probs.masked_fill_(same_item, float("-inf"))
        top = torch.maximum(probs.max(dim=1).values, positive)
        probs.sub_(top[:, None]).exp_()
        p_positive = (positive - top).exp()
        total = probs.sum(dim=1) + p_positive
        probs.div_(total[:, None])
        p_positive = p_positive / total
        ctx.save_for_backward(probs, p_positive)
        return (top + total.log() - positive).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable  # the buffer is overwritten in place
    def backward(ctx: Any, grad: torch.Tensor):
        probs, p_positive = ctx.saved_tensors
        b = len(probs)
        # The positive's logit is logits[i, i], whose masked negative column has probability 0.
        probs.diagonal()[:] += p_positive - 1.0
        return probs.mul_(grad / b), None, None


def fused_sampled_ce(
    logits: torch.Tensor, targets: torch.Tensor, shared: Negatives, n_items: int
) -> torch.Tensor:
    """:func:`sampled_softmax_ce` of ``logits`` ``[b, b + c]`` against ``[targets;
    shared.items]``, with the lean backward pass of :class:`_SampledCrossEntropy`."""
    candidates, log_m = _log_expected(
        targets, shared.items, n_items, popularity=shared.popularity, dtype=logits.dtype
    )
    # Uniform negatives only: the other rows' targets are not negatives (an infinite correction).
    skipped = logits.shape[1] - len(candidates)
    correction = torch.cat([log_m.new_full((skipped,), float("inf")), log_m])
    same_item = torch.cat([targets, shared.items])[None, :] == targets[:, None]
    return _SampledCrossEntropy.apply(logits, same_item, correction)


def sampled_softmax_ce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    n_items: int,
    popularity: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each row's target against its sampled, log-Q corrected negatives
    (:func:`sampled_logits`); the loss and its gradients then approach the full softmax's
    instead of becoming too easy as the model improves. With every item as a uniform negative
    this is exactly the full softmax (a test checks it)."""
    corrected = sampled_logits(logits, targets, negatives, n_items=n_items, popularity=popularity)
    return -F.log_softmax(corrected, dim=1)[:, 0].mean()


def g_step(
    gen: nn.Module,
    disc: nn.Module,
    g_opt: torch.optim.Optimizer,
    batch: Batch,
    *,
    z: torch.Tensor,
    adv_weight: float,
    negatives: torch.Tensor | Negatives | None = None,
    fused_softmax: bool = True,
    forward: Forward | None = None,
    sampling: SamplingTerms | None = None,
    adv_rows: int = 0,
) -> dict[str, float]:
    """One generator update: softmax cross-entropy + ``adv_weight`` * non-saturating GAN loss.

    Args:
        negatives: a sampled softmax's negatives (a tensor: uniform ones only); None = the full
            softmax.
        fused_softmax: the full softmax through ``models.catalogue_cross_entropy``; False =
            ``F.cross_entropy`` on the logits (the same loss; the reference ``bench step`` times).
        forward: G's pass on this batch with G's current weights (``g_forward``; D may have
            been updated since); None runs it here.
        sampling: the best-of-K and mode-seeking terms (None: neither).
        adv_rows: the adversarial game (D's judgement of G's samples) is played on the batch's
            first ``adv_rows`` rows only (0: all): it then costs a fraction of the step.
    """
    if forward is None:
        forward = g_forward(
            gen,
            batch,
            z,
            adv_weight=adv_weight,
            negatives=negatives,
            fused_softmax=fused_softmax,
            sampling=sampling,
            adv_rows=adv_rows,
        )
    state, ce = forward.state, forward.ce
    core = unwrap(disc)
    if adv_weight > 0:
        assert forward.fake is not None
        for p in core.parameters():
            p.requires_grad_(False)
        d_fake = core(state[: len(forward.fake)].detach(), forward.fake)
        for p in core.parameters():
            p.requires_grad_(True)
    else:  # the ablation: no adversarial term, nothing for D to judge
        with torch.no_grad():
            d_fake = core(state.detach(), forward.mean_vector.detach())
    adv = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
    rank_loss = ce if forward.rank_loss is None else forward.rank_loss
    loss = rank_loss + adv_weight * adv
    g_opt.zero_grad(set_to_none=True)
    loss.backward()
    g_opt.step()
    return {
        "g_loss": float(loss.detach()),  # G's whole loss: ranking + adv_weight * adversarial
        "adv_loss": float(adv.detach()),  # the adversarial term alone (0-weighted in the ablation)
        "ce_loss": float(ce.detach()),
        "g_d_fake": float(torch.sigmoid(d_fake).mean().detach()),
        **forward.stats,
    }


# D as the plain two-term game on every row: the step's reference form, what a caller that names
# no discriminator settings gets (`ganrec train` passes the run's).
PLAIN_D = DiscriminatorSettings(d_mismatch=0.0, d_rows=0)


def train_step(
    gen: nn.Module,
    disc: nn.Module,
    d_opt: torch.optim.Optimizer,
    g_opt: torch.optim.Optimizer,
    *,
    batch: Batch,
    z: torch.Tensor,
    game: GameSettings,
    discriminator: DiscriminatorSettings = PLAIN_D,
    negatives: torch.Tensor | Negatives | None = None,
    sampling: SamplingTerms | None = None,
    fused_softmax: bool = True,
) -> dict[str, float]:
    """``d_steps`` D-steps then ``g_steps`` G-steps on one batch (no D-step in the ablation),
    the game's weight and G's steps from ``game``, D's steps, matching-aware weight and rows
    from ``discriminator``.

    G runs forward once for the D-steps and the first G-step: D judges the same samples, and the
    first G-step differentiates the pass D judged (G's weights have not changed in between).
    """
    adv_weight, g_steps = game.adv_weight, game.g_steps
    d_steps, d_mismatch = discriminator.d_steps, discriminator.d_mismatch
    adv_rows = discriminator.d_rows
    stats: dict[str, float] = {}
    forward = None
    if adv_weight > 0:
        forward = g_forward(
            gen,
            batch,
            z,
            adv_weight=adv_weight,
            negatives=negatives,
            fused_softmax=fused_softmax,
            sampling=sampling,
            adv_rows=adv_rows,
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
                sampling=sampling,
                adv_rows=adv_rows,
            )
        )
    return stats
