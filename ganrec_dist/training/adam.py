"""Adam without ``torch.optim``'s ``Optimizer`` base class.

Constructing any ``torch.optim`` optimiser imports ``torch._dynamo`` (its ``add_param_group``,
``step``, ``zero_grad`` and ``state_dict`` are wrapped to keep dynamo out): 1.2-1.9 s in a fresh
process on a 2-CPU host, paid by every Ray Train worker of every run, a warm start's four epochs
included. :class:`Adam` runs the same ATen kernel as ``torch.optim.Adam(fused=True)``
(``torch._fused_adam_``, so the same bits) and reads and writes the same ``state_dict`` format,
so checkpoints and parents written with either load into the other. :class:`RowAdamState` holds
``torch.optim.SparseAdam``'s state for the tables that :func:`~ganrec_dist.training.tables.row_adam`
updates.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch


class _Optimiser:
    """``param_groups``, ``state``, ``zero_grad`` and a ``state_dict`` in torch's format."""

    defaults: dict[str, Any]

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.defaults = defaults
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        seen: set[int] = set()
        for group in groups:
            params_ = list(group["params"])
            if any(id(p) in seen for p in params_):
                raise ValueError("some parameters appear in more than one parameter group")
            seen.update(id(p) for p in params_)
            self.param_groups.append({**defaults, **group, "params": params_})

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_()
                    p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """As ``torch.optim.Optimizer.state_dict``: the state by parameter index (the tensors
        themselves, not copies) and the groups with their parameters' indices."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {index[id(p)]: values for p, values in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``: the saved groups' settings, this
        optimiser's parameters; tensors moved to their parameter's device and dtype."""
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if [len(g["params"]) for g in saved] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of "
                "optimizer's group"
            )
        by_index = {
            i: p
            for old, new in zip(saved, self.param_groups)
            for i, p in zip(old["params"], new["params"])
        }
        self.state = defaultdict(dict)
        for key, values in state_dict["state"].items():
            if key not in by_index:
                continue
            param = by_index[key]
            self.state[param] = {k: self._cast(param, k, v) for k, v in values.items()}
        self.param_groups = [
            {**self.defaults, **old, "params": new["params"]}
            for old, new in zip(saved, self.param_groups)
        ]

    @staticmethod
    def _cast(param: torch.Tensor, key: str, value: Any) -> Any:
        if not torch.is_tensor(value):
            return value
        if key == "step":
            return value.to(dtype=torch.float32, device=param.device)
        return value.to(dtype=param.dtype, device=param.device)


class Adam(_Optimiser):
    """``torch.optim.Adam(params, lr, betas, eps, weight_decay, fused=True)``: the same kernel,
    state and ``state_dict``, without the import of ``torch._dynamo``."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(
            params,
            {
                "lr": lr,
                "betas": tuple(betas),
                "eps": eps,
                "weight_decay": weight_decay,
                "amsgrad": False,
                "maximize": False,
                "foreach": None,
                "capturable": False,
                "differentiable": False,
                "fused": True,
                "decoupled_weight_decay": False,
            },
        )

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params, grads, avgs, squares, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adam does not support sparse gradients")
                state = self.state[p]
                if not state:  # as torch's fused Adam starts a parameter
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                avgs.append(state["exp_avg"])
                squares.append(state["exp_avg_sq"])
                steps.append(state["step"])
            if not params:
                continue
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                params,
                grads,
                avgs,
                squares,
                [],
                steps,
                amsgrad=False,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
                grad_scale=None,
                found_inf=None,
            )


class RowAdamState(_Optimiser):
    """``torch.optim.SparseAdam``'s settings and state, for tables that
    :func:`~ganrec_dist.training.tables.row_adam` updates (it has no ``step`` of its own)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "maximize": False})

    @staticmethod
    def _cast(param: torch.Tensor, key: str, value: Any) -> Any:
        # SparseAdam keeps its step count as it was saved (row_adam's is an int).
        if key == "step" or not torch.is_tensor(value):
            return value
        return value.to(dtype=param.dtype, device=param.device)


def adam(fused: bool) -> Any:
    """The Adam to build: fused (:class:`Adam`, torch's fused kernel without ``torch.optim``'s
    import of ``torch._dynamo``), or torch's per-parameter reference."""
    if fused:
        return Adam
    return functools.partial(torch.optim.Adam, fused=None)
