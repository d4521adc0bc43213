"""The generator G(u, z) and discriminator D(u, v): pure ``nn.Module``s (no Ray, no I/O, no
device choice). A user is an encoding of their recent items (so that users unseen in training
work from a history alone) plus, for known users, an id embedding.

Scores are inner products between G's vector and the catalogue's item embeddings, everywhere:
training's softmax, the FAISS index, scoring and serving.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class ModelConfig:
    n_items: int
    n_users: int
    dim: int = 64
    hidden: int = 256
    history_len: int = 50
    noise_dim: int = 16
    dropout: float = 0.3
    # "mlp": UserEncoder (history mean and recency, plus a user-id embedding); "sasrec":
    # SequenceEncoder (causal self-attention over the history, no user id), G's vector is then
    # its last position's state (SASRec's own scoring; samples around it with `noise_head`).
    encoder: str = "mlp"
    blocks: int = 2
    heads: int = 1
    # SASRec with G's noise (its adversarial variant): samples around its vector,
    # :class:`NoiseHead`; without it SASRec takes no noise.
    noise_head: bool = False
    # In training, a user's id is replaced by the unknown user's with this probability, so that
    # the history path (what a new user is encoded from) learns to stand alone.
    user_dropout: float = 0.0
    # The item and user tables give row-sparse gradients (lookups through sparse embeddings), so
    # that a step updates only the rows it read. The full-catalogue softmax reads every row.
    sparse: bool = False


class _CatalogueCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy of ``targets`` over ``vector @ table.T``, lean on memory.

    ``F.cross_entropy`` on the logits keeps the ``[b, n_items]`` logits and their log-softmax,
    then zero-fills and scatters a third buffer in the backward pass: memory traffic that grows
    with the catalogue. Here only the softmax is kept, and the backward pass turns it into the
    gradient ``(softmax - onehot) / b`` in place. The softmax is ATen's own kernel: a hand-written
    max-shift-exp gave a resumed run other last bits than an uninterrupted one (the resume test
    compares the two runs' histories exactly).
    """

    @staticmethod
    def forward(ctx: Any, vector: torch.Tensor, table: torch.Tensor, targets: torch.Tensor):
        logits = vector @ table.T
        probs = torch.softmax(logits, dim=1)
        del logits
        # -log p(target); the clamp only keeps the reported value finite if it underflows (the
        # gradient comes from the softmax, not from this number).
        target_prob = probs.gather(1, targets[:, None]).squeeze(1)
        loss = -target_prob.clamp_min(torch.finfo(probs.dtype).tiny).log().mean()
        ctx.save_for_backward(vector, table, targets, probs)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable  # the buffer is overwritten in place
    def backward(ctx: Any, grad: torch.Tensor):
        vector, table, targets, probs = ctx.saved_tensors
        probs.scatter_add_(1, targets[:, None], probs.new_full((len(targets), 1), -1.0))
        probs.mul_(grad / len(targets))
        return probs @ table, probs.T @ vector, None


def catalogue_cross_entropy(
    vector: torch.Tensor, table: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """``F.cross_entropy(vector @ table.T, targets)``, with a leaner backward pass."""
    return _CatalogueCrossEntropy.apply(vector, table, targets)


def state_width(cfg: ModelConfig) -> int:
    """The width of the user state the encoder returns (and D reads)."""
    return ENCODERS[cfg.encoder].state_width(cfg)


class UserEncoder(nn.Module):
    """Encodes (history, user id) into a hidden state ``[batch, hidden]``.

    The history is a ``[batch, history_len]`` tensor of item indices, most recent last, padded on
    the left with ``n_items``. A user index of ``n_users`` (or any negative value) means unknown.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.items = nn.Embedding(
            cfg.n_items + 1, cfg.dim, padding_idx=cfg.n_items, sparse=cfg.sparse
        )
        self.users = nn.Embedding(
            cfg.n_users + 1, cfg.dim, padding_idx=cfg.n_users, sparse=cfg.sparse
        )
        self.recency = nn.Parameter(torch.linspace(-1.0, 0.0, cfg.history_len))
        self.mlp = nn.Sequential(
            nn.Dropout(cfg.dropout),
            nn.Linear(3 * cfg.dim, cfg.hidden),
            nn.GELU(),
            nn.Linear(cfg.hidden, cfg.hidden),
        )
        nn.init.normal_(self.items.weight, std=0.5)
        nn.init.normal_(self.users.weight, std=0.05)
        with torch.no_grad():
            self.items.weight[cfg.n_items].zero_()
            self.users.weight[cfg.n_users].zero_()

    def forward(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        mask = history != self.cfg.n_items  # [batch, L]
        emb = self.items(history)  # [batch, L, dim]
        count = mask.sum(dim=1, keepdim=True).clamp(min=1)
        mean = (emb * mask.unsqueeze(-1)).sum(dim=1) / count
        logits = self.recency.unsqueeze(0).masked_fill(~mask, float("-inf"))
        weights = torch.nan_to_num(torch.softmax(logits, dim=1))  # all-padding rows -> 0
        recent = torch.einsum("bl,bld->bd", weights, emb)
        unknown = (users < 0) | (users > self.cfg.n_users)
        if self.training and self.cfg.user_dropout > 0:
            unknown = unknown | (
                torch.rand(users.shape, device=users.device) < self.cfg.user_dropout
            )
        users = torch.where(unknown, self.cfg.n_users, users)
        return self.mlp(torch.cat([mean, recent, self.users(users)], dim=1))


class _Block(nn.Module):
    """One SASRec block: pre-norm causal self-attention, then a point-wise feed-forward net,
    each a residual branch with dropout. ``last``: only the last position's output is computed
    (the keys and values are still every position's): the top block, whose other positions
    nobody reads."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, last: bool = False) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).chunk(3, dim=-1)
        if last:
            q, x, allowed = q[:, -1:], x[:, -1:], allowed[:, :, -1:]

        def split(t: torch.Tensor) -> torch.Tensor:  # [b, L, dim] -> [b, heads, L, dim / heads]
            return t.unflatten(-1, (self.heads, dim // self.heads)).transpose(1, 2)

        h = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=allowed)
        x = x + self.dropout(self.out(h.transpose(1, 2).flatten(2)))
        return x + self.dropout(self.ff(self.ff_norm(x)))


class SequenceEncoder(nn.Module):
    """SASRec (Kang & McAuley, ICDM 2018): each position of the history attends to itself and
    the earlier items only; the last position's state ``[batch, dim]`` is the user.

    The same inputs as :class:`UserEncoder` (history padded on the left with ``n_items``; the
    user ids are accepted and ignored: a user is their history, so an unknown user with a
    history is encoded exactly as a known one). The item table is also the output embedding
    (scores are ``state @ items``), as in SASRec.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.dim % cfg.heads:
            raise ValueError(f"dim {cfg.dim} is not a multiple of heads {cfg.heads}")
        self.cfg = cfg
        self.items = nn.Embedding(
            cfg.n_items + 1, cfg.dim, padding_idx=cfg.n_items, sparse=cfg.sparse
        )
        self.positions = nn.Embedding(cfg.history_len, cfg.dim)
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            _Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.blocks)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.items.weight, std=cfg.dim**-0.5)
        nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[cfg.n_items].zero_()

    def states(self, history: torch.Tensor) -> torch.Tensor:
        """Every position's state ``[batch, L, dim]``; position ``t`` has read items ``<= t``."""
        x, pad = self._inputs(history)
        return self.norm(self._blocks(x, pad, last=False))

    def _blocks(self, x: torch.Tensor, pad: torch.Tensor, last: bool) -> torch.Tensor:
        length = x.shape[1]
        earlier = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=x.device)
        # True = may attend: itself and earlier items that are not padding (a position always
        # sees itself, so that a padding query has one key and no row of the softmax is empty).
        allowed = ((earlier & ~pad.unsqueeze(1)) | eye).unsqueeze(1)  # [b, 1, L, L]
        for i, block in enumerate(self.blocks):
            x = block(x, allowed, last=last and i == len(self.blocks) - 1)
        return x

    def _inputs(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = history == self.cfg.n_items  # [b, L]
        x = self.items(history) * self.cfg.dim**0.5 + self.positions.weight[-history.shape[1] :]
        return self.input_dropout(x) * ~pad.unsqueeze(-1), pad

    def forward(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """The last position's state ``[batch, dim]`` (the top block computes only that one)."""
        x, pad = self._inputs(history)
        return self.norm(self._blocks(x, pad, last=True))[:, -1]


class NoiseHead(nn.Module):
    """G's samples around a vector that is already the prediction (SASRec's state): ``state +
    (A z) * scale(state)``, a learned set of directions scaled per user. At ``z = 0`` it is the
    state itself, so the model's ranking is SASRec's own; the adversarial term then shapes where
    the samples go, and reaches the encoder through the state they start from."""

    def __init__(self, dim: int, noise_dim: int, hidden: int) -> None:
        super().__init__()
        self.directions = nn.Linear(noise_dim, dim, bias=False)
        self.scale = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, state: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return state + self.directions(z) * F.softplus(self.scale(state))


@dataclasses.dataclass(frozen=True)
class Encoder:
    """What a user encoder needs and gives; a new encoder is one entry of :data:`ENCODERS`.

    ``build`` makes the module ``(history [b, history_len], users [b]) -> state [b, width]``;
    ``head`` G's map from (state, noise) to a vector, or None when the state is the vector;
    ``takes_noise``: G samples around every user (the diagnostics of the samples apply), else
    only with a ``noise_head`` (the adversarial variant); ``several_positions``: it can train
    several positions of a window in one forward (``--train_positions``); ``check`` returns what
    is wrong with a configuration, or None. (Whether it reads the user id is its module's
    business: unknown users get the padding id either way.)
    """

    build: Callable[[ModelConfig], nn.Module]
    state_width: Callable[[ModelConfig], int]
    head: Callable[[ModelConfig], nn.Module | None]
    takes_noise: bool
    several_positions: bool
    check: Callable[[ModelConfig], str | None] = lambda cfg: None


def _mlp_head(cfg: ModelConfig) -> nn.Module:
    return nn.Sequential(
        nn.Linear(cfg.hidden + cfg.noise_dim, cfg.hidden),
        nn.GELU(),
        nn.Linear(cfg.hidden, cfg.dim),
    )


ENCODERS: dict[str, Encoder] = {
    "mlp": Encoder(
        build=lambda cfg: UserEncoder(cfg),
        state_width=lambda cfg: cfg.hidden,
        head=_mlp_head,
        takes_noise=True,
        several_positions=False,
    ),
    "sasrec": Encoder(
        build=lambda cfg: SequenceEncoder(cfg),
        # Its state is already a vector of the item space; a noise head moves it by z.
        state_width=lambda cfg: cfg.dim,
        head=lambda cfg: NoiseHead(cfg.dim, cfg.noise_dim, cfg.hidden) if cfg.noise_head else None,
        takes_noise=False,
        several_positions=True,
        check=lambda cfg: (
            None
            if cfg.heads >= 1 and cfg.dim % cfg.heads == 0
            else f"--heads {cfg.heads} must divide --dim {cfg.dim}"
        ),
    ),
}


def generator_from_state(model_config: dict, state: dict[str, torch.Tensor]) -> Generator:
    """G of ``model_config`` in eval mode, its parameters the ``state`` tensors themselves
    (assigned, not copied; built on the meta device, so no weights are allocated only to be
    overwritten): tensors over an object store's read-only buffers stay shared."""
    with torch.device("meta"):
        generator = Generator(ModelConfig(**model_config))
    generator.load_state_dict(state, assign=True)
    return generator.eval()


def catalogue_of(payload: dict) -> np.ndarray:
    """The catalogue embeddings ``[n_items, dim]`` of a checkpoint's G, what an index is built
    from."""
    gen = generator_from_state(payload["model_config"], payload["generator"])
    return gen.catalogue().detach().float().numpy()


class Generator(nn.Module):
    """G(u, z): a vector in the item-embedding space. The catalogue embeddings are the history
    encoder's item table: the items G points at are the items users are encoded from."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.encoder not in ENCODERS:
            raise ValueError(f"encoder {cfg.encoder!r}: expected one of {', '.join(ENCODERS)}")
        self.cfg = cfg
        spec = ENCODERS[cfg.encoder]
        self.encoder = spec.build(cfg)  # before the head: the parameters' seeded draws in order
        self.head = spec.head(cfg)

    @property
    def takes_noise(self) -> bool:
        """Whether z moves G's vector (SASRec without a noise head: it does not)."""
        return self.head is not None

    def generate(self, state: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """``[batch, hidden]`` user state and ``[batch, noise_dim]`` noise -> ``[batch, dim]``.
        SASRec's state is already the vector (its noise head, if any, moves it by ``z``)."""
        if self.head is None:
            return state
        if isinstance(self.head, NoiseHead):
            return state if z is None else self.head(state, z)
        if z is None:  # deterministic inference: the noise's mean
            z = state.new_zeros(state.shape[0], self.cfg.noise_dim)
        return self.head(torch.cat([state, z], dim=1))

    def forward(
        self,
        history: torch.Tensor,
        users: torch.Tensor,
        z: torch.Tensor | None = None,
        candidates: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (user state ``[b, hidden]``, generated vector ``[b, dim]``, logits).

        Logits are over the whole catalogue ``[b, n_items]``, or over ``candidates`` ``[c]``.
        Given ``targets`` ``[b]`` (and no candidates), the third output is instead the mean
        full-catalogue softmax cross-entropy of the targets (``catalogue_cross_entropy``); it is
        computed inside ``forward`` so that DDP sees every parameter it uses.

        Targets ``[b, L]`` (SASRec, every position trained in one forward): position ``t``'s
        state predicts ``targets[:, t]``, padded targets are left out, and the outputs are those
        of the ``T`` targets kept, in row-major order (``[T, dim]``, ``[T, dim]``, logits
        ``[T, ...]`` or the loss).
        """
        if targets is not None and targets.dim() == 2:
            keep = targets != self.cfg.n_items
            state = self.encoder.states(history)[keep]
            targets = targets[keep]
        else:
            state = self.encoder(history, users)
        vector = self.generate(state, z)
        if self.cfg.sparse and candidates is None:
            raise ValueError(
                "a model with sparse tables scores candidates, not the whole catalogue"
            )
        if targets is not None and candidates is None:
            return state, vector, catalogue_cross_entropy(vector, self.catalogue(), targets)
        table = self.catalogue() if candidates is None else self.item_embeddings(candidates)
        return state, vector, vector @ table.T

    def catalogue(self) -> torch.Tensor:
        """``[n_items, dim]``: the embeddings the retrieval index is built from."""
        return self.item_table[: self.cfg.n_items]  # without the padding row

    @property
    def item_table(self) -> torch.Tensor:
        """The encoder's item table ``[n_items + 1, dim]``, padding row last."""
        return self.encoder.items.weight

    def item_embeddings(self, items: torch.Tensor) -> torch.Tensor:
        """Catalogue embeddings of ``items`` ``[...]`` -> ``[..., dim]``."""
        if self.cfg.sparse:
            return F.embedding(items, self.item_table, sparse=True)
        return self.catalogue()[items]


class Discriminator(nn.Module):
    """D(u, v): the logit that item vector ``v`` ``[b, dim]`` is a real next item of user state
    ``[b, hidden]``. It sees directions only (``v`` is normalised), so it judges which items G
    points at, not the scale the softmax needs."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        width = state_width(cfg)
        self.project = nn.Linear(width, cfg.dim)
        self.net = nn.Sequential(
            nn.Linear(width + 2 * cfg.dim, cfg.hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.hidden, 1),
        )

    def forward(self, state: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        v = F.normalize(vector, dim=1)
        return self.net(torch.cat([state, v, self.project(state) * v], dim=1)).squeeze(1)
