"""Row-sparse training of G's item and user tables: a step costs what its batch reads.

With a sampled softmax a step reads a few thousand rows of the item table (the history, the
targets, the negatives) and a batch of rows of the user table. Dense Adam, weight decay and the
weight average would still touch every row every step, and DDP would all-reduce both whole
tables' gradients. Here, for the tables only:

- the gradients are row-sparse (:class:`~ganrec_dist.model.models.ModelConfig` ``sparse``);
- the tables are kept out of DDP; each step the ranks all-gather the ids they touched, and
  all-reduce the gradient rows of the union (``|union| x dim`` values, not the table), so every
  rank applies the same update and the replicas stay identical (plain all-gather and all-reduce
  of dense tensors on the tables' device, which NCCL supports as gloo does; the tests run gloo);
- Adam is lazy (``torch.optim.SparseAdam``): only the rows with a gradient move, and only their
  moments are updated. This is not dense Adam, whose momentum keeps moving a row after its
  gradient stops;
- the weight average is lazy too (:class:`LazyAverage`): an untouched row's average is brought up
  to date only when the row changes or the average is read, with the exact catch-up of the steps
  in between.

Plain modules and optimisers: no Ray; ``torch.distributed`` only when it is initialised.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ganrec_dist.training.adam import RowAdamState, adam

TABLES = ("encoder.items.weight", "encoder.users.weight")


def tables(gen: nn.Module) -> list[str]:
    """The names of ``gen``'s row-sparse tables (a history-only encoder has no user table)."""
    named = dict(gen.named_parameters())
    return [name for name in TABLES if name in named]


def keep_out_of_ddp(gen: nn.Module) -> None:
    """Tell DDP (when it wraps ``gen``) to leave the tables alone: their gradient rows are
    all-reduced by :class:`GeneratorOptimizer` (DDP reads this attribute of the module)."""
    gen._ddp_params_and_buffers_to_ignore = tables(gen)  # type: ignore[assignment]


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def union_gradient(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's row-sparse gradient -> (the union of every rank's touched rows ``[u]``, the
    ranks' mean gradient on them ``[u, dim]``). One rank: its own rows and values."""
    grad = grad.coalesce()
    idx, values = grad.indices()[0], grad.values()
    if not _distributed():
        return idx, values
    import torch.distributed as dist

    world = dist.get_world_size()
    size = torch.tensor([len(idx)], device=idx.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.full((longest,), -1, dtype=idx.dtype, device=idx.device)
    padded[: len(idx)] = idx
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    union = torch.unique(torch.cat(gathered))
    union = union[union >= 0]  # sorted
    dense = torch.zeros(len(union), values.shape[1], dtype=values.dtype, device=values.device)
    dense[torch.searchsorted(union, idx)] = values
    dist.all_reduce(dense)
    return union, dense.div_(world)


@torch.no_grad()
def row_adam(
    table: torch.Tensor,
    state: dict[str, Any],
    rows: torch.Tensor,
    grad: torch.Tensor,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lazy Adam on ``rows`` of ``table`` in one pass: each of the weights and both moments is
    read once and written once at those rows (``torch.optim.SparseAdam``'s arithmetic, its
    state layout and its one step count per table; it reads and writes each moment twice and
    builds a sparse tensor per write). Returns the rows' weights before and after the step."""
    if not state:
        state.update(step=0, exp_avg=torch.zeros_like(table), exp_avg_sq=torch.zeros_like(table))
    state["step"] += 1
    beta1, beta2 = betas
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    old_avg, old_sq = exp_avg.index_select(0, rows), exp_avg_sq.index_select(0, rows)
    new_avg = grad.sub(old_avg).mul_(1 - beta1).add_(old_avg)
    new_sq = grad.pow(2).sub_(old_sq).mul_(1 - beta2).add_(old_sq)
    exp_avg.index_copy_(0, rows, new_avg)
    exp_avg_sq.index_copy_(0, rows, new_sq)
    step = state["step"]
    step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    before = table.index_select(0, rows)
    after = before + -step_size * new_avg.div_(new_sq.sqrt_().add_(eps))
    table.index_copy_(0, rows, after)
    return before, after


class GeneratorOptimizer:
    """G's optimiser with sparse tables: fused Adam for the dense parameters, lazy Adam for the
    tables. The same ``zero_grad`` / ``step`` / ``state_dict`` as a torch optimiser.

    After each ``step``, ``touched`` maps each table's name to (the rows it changed, their values
    before the step, and after it): what :class:`LazyAverage` needs to catch those rows up.
    ``fused``: one kernel for the dense parameters' Adam and the tables' rows updated in one pass
    (:func:`row_adam`); False: the references, per-parameter Adam and ``torch.optim.SparseAdam``.
    ``fused_rows`` sets the tables' alone (default: as ``fused``). The tables learn at
    ``table_lr`` times ``lr``.
    """

    def __init__(
        self,
        gen: nn.Module,
        *,
        lr: float,
        weight_decay: float,
        fused: bool = True,
        fused_rows: bool | None = None,
        table_lr: float = 1.0,
    ) -> None:
        named = dict(gen.named_parameters())
        self.tables = {name: named[name] for name in tables(gen)}
        dense = [p for name, p in named.items() if name not in self.tables]
        self.fused = fused if fused_rows is None else fused_rows
        self.dense: Any = adam(fused)(dense, lr=lr, weight_decay=weight_decay)
        sparse_state = RowAdamState if self.fused else torch.optim.SparseAdam
        self.sparse: Any = sparse_state(list(self.tables.values()), lr=lr * table_lr)
        self.weight_decay = weight_decay
        self.touched: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        self.touched = {}
        group = self.sparse.param_groups[0]
        for name, table in self.tables.items():
            if table.grad is None:
                continue
            rows, values = union_gradient(table.grad)
            if self.weight_decay:
                values = values + self.weight_decay * table.detach()[rows]  # L2, as Adam's
            if self.fused:
                table.grad = None
                before, after = row_adam(
                    table.detach(),
                    self.sparse.state[table],
                    rows,
                    values,
                    lr=group["lr"],
                    betas=group["betas"],
                    eps=group["eps"],
                )
                self.touched[name] = (rows, before, after)
                continue
            table.grad = torch.sparse_coo_tensor(
                rows[None], values, table.shape, is_coalesced=True, check_invariants=False
            )  # the union is sorted and unique
            self.touched[name] = (rows, table.detach()[rows].clone(), None)  # type: ignore[assignment]
        if not self.fused:
            self.sparse.step()
            for name, (rows, before, _) in self.touched.items():
                after = self.tables[name].detach()[rows]
                self.touched[name] = (rows, before, after)

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


class LazyAverage:
    """An exponential moving average of G's weights whose table rows are averaged lazily.

    The same schedule as the dense average (``building.averaged``): the first update copies, update
    ``n`` then moves the average towards the weights by ``w_n = 1 - min(decay, (1+n)/(10+n))``.
    While a row's weights stay constant ``v``, ``n`` updates move its average to
    ``v + (a - v) * prod(1 - w_i)``; the running ``log prod`` makes that one multiplication when
    the row next changes (:meth:`update_parameters`, from the pre-step values the optimiser
    recorded) or when the average is read (:meth:`materialize`). ``module`` is the averaged G:
    call :meth:`materialize` before reading its tables.
    """

    def __init__(self, gen: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(gen)
        self.decay = decay
        self.n_averaged = 0
        self.log_keep = 0.0  # sum of log(1 - w_i) over the updates so far
        self._params = dict(self.module.named_parameters())
        self._since = {  # per row: log_keep when its average was last brought up to date
            name: torch.zeros(len(self._params[name]), dtype=torch.float64) for name in tables(gen)
        }

    def _weight(self) -> float:
        n = float(self.n_averaged)
        return 1.0 - min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def _catch_up(self, name: str, rows: torch.Tensor | None, values: torch.Tensor) -> None:
        """Bring ``rows`` (all when None) of a table's average up to now, their weights having
        been ``values`` since their last update."""
        average = self._params[name]
        since = self._since[name] if rows is None else self._since[name][rows]
        keep = torch.exp(self.log_keep - since).to(average.dtype)[:, None]
        if rows is None:
            average.copy_(values + (average - values) * keep)
            self._since[name].fill_(self.log_keep)
        else:
            average[rows] = values + (average[rows] - values) * keep
            self._since[name][rows] = self.log_keep

    @torch.no_grad()
    def update_parameters(
        self,
        model: nn.Module,
        touched: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    ) -> None:
        """One update after an optimiser step that changed the ``touched`` table rows
        (``(rows, their weights before the step, after it)``): each row's average is read and
        written once, caught up over the steps it stayed at ``before`` and moved towards
        ``after``."""
        current = dict(model.named_parameters())
        if self.n_averaged == 0:
            for name, average in self._params.items():
                average.copy_(current[name])
        else:
            weight = self._weight()
            dense = [n for n in self._params if n not in self._since]
            torch._foreach_lerp_(
                [self._params[n] for n in dense], [current[n].detach() for n in dense], weight
            )
            log_keep = self.log_keep + math.log(1.0 - weight)
            for name, (rows, before, after) in touched.items():
                average, since = self._params[name], self._since[name]
                keep = torch.exp(self.log_keep - since[rows]).to(average.dtype)[:, None]
                caught_up = before + (average.index_select(0, rows) - before) * keep
                average.index_copy_(0, rows, caught_up.lerp_(after, weight))
                since[rows] = log_keep
            self.log_keep = log_keep
        self.n_averaged += 1

    @torch.no_grad()
    def materialize(self, model: nn.Module) -> None:
        """Bring every row's average up to date with ``model``'s current weights."""
        current = dict(model.named_parameters())
        for name in self._since:
            self._catch_up(name, None, current[name].detach())

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights (materialize first) and the schedule's position."""
        return {
            "module": self.module.state_dict(),
            "n_averaged": self.n_averaged,
            "log_keep": self.log_keep,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.n_averaged = int(state["n_averaged"])
        self.log_keep = float(state["log_keep"])
        for since in self._since.values():
            since.fill_(self.log_keep)  # saved materialized: every row is up to date
