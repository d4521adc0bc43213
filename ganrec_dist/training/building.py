"""What a rank trains: the model's shapes from the settings, fresh or inherited (``--init``)
models, their optimisers and G's weight average."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ganrec_dist.core.config import TrainConfig
from ganrec_dist.model.models import ENCODERS, Discriminator, Generator, ModelConfig
from ganrec_dist.training import gan, warmstart
from ganrec_dist.training.adam import adam
from ganrec_dist.training.tables import GeneratorOptimizer, LazyAverage, tables

# Full softmax up to this many items, then sampled negatives: where the sampled step got faster
# than the full one at the same validation NDCG (docs/experiments/switch_over.py, docs/results.md).
SAMPLED_SOFTMAX_ABOVE = 20_000


SAMPLED_NEGATIVES = 8192


def negatives_for(cfg: TrainConfig, n_items: int) -> int:
    """Shared sampled negatives per step: the setting, or by default none (the full softmax) up
    to ``SAMPLED_SOFTMAX_ABOVE`` items and ``SAMPLED_NEGATIVES`` above."""
    negatives = cfg.optim.sampled_negatives
    if negatives < 0:
        return 0 if n_items <= SAMPLED_SOFTMAX_ABOVE else SAMPLED_NEGATIVES
    return negatives


def model_config(cfg: TrainConfig, n_users: int, n_items: int) -> ModelConfig:
    """G's and D's shapes; the tables are sparse when the softmax is sampled (a full softmax
    reads every item row anyway) and ``sparse_tables`` is on."""
    sparse = cfg.optim.sparse_tables and negatives_for(cfg, n_items) > 0
    # SASRec's adversarial variant needs samples of G: its noise head.
    noise_head = not ENCODERS[cfg.model.encoder].takes_noise and cfg.game.adv_weight > 0
    return ModelConfig(
        n_items=n_items,
        n_users=n_users,
        sparse=sparse,
        noise_head=noise_head,
        **dataclasses.asdict(cfg.model),
    )


def optimisers(
    gen: torch.nn.Module, disc: torch.nn.Module, cfg: TrainConfig, fused: bool = True
) -> tuple[Any, Any]:
    """G's and D's Adam. Fused: one kernel per step instead of a dozen elementwise passes per
    parameter; False is the reference ``bench step`` times. A G with sparse tables gets lazy
    Adam on them (:class:`~ganrec_dist.training.tables.GeneratorOptimizer`)."""
    lr, weight_decay = cfg.optim.lr, cfg.optim.weight_decay
    core = gan.unwrap(gen)
    if core.cfg.sparse:
        g_opt: Any = GeneratorOptimizer(
            core,
            lr=lr,
            weight_decay=weight_decay,
            fused=fused,
            fused_rows=fused and cfg.execution.row_update == "fused",
            table_lr=cfg.optim.table_lr,
        )
    else:
        g_opt = adam(fused)(
            table_groups(core, lr, cfg.optim.table_lr), lr=lr, weight_decay=weight_decay
        )
    d_opt = adam(fused)(disc.parameters(), lr=cfg.discriminator.d_lr, betas=(0.5, 0.999))
    return g_opt, d_opt


def averaged(gen: Generator, decay: float) -> Any:
    """An exponential moving average of G's weights (None when ``decay`` is 0).

    The adversarial game keeps G's weights moving from step to step, so the validation metric of
    the last step's weights jumps from epoch to epoch; their average is the model that is
    validated, kept and served. The decay warms up as ``(1 + n) / (10 + n)`` after ``n`` updates
    up to ``decay``, so that a short run is not dominated by its first, untrained weights.
    """
    if decay <= 0:
        return None
    if gen.cfg.sparse:
        return LazyAverage(gen, decay)
    from torch.optim.swa_utils import AveragedModel

    def update(averages: Any, currents: Any, updates: torch.Tensor | int) -> None:
        n = float(updates)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averages, currents, weight)  # one call, not one per tensor

    return AveragedModel(gen, multi_avg_fn=update, use_buffers=True)


def table_groups(gen: torch.nn.Module, lr: float, table_lr: float) -> list[dict]:
    """G's parameters as Adam's groups, the tables' at ``table_lr`` times ``lr``: runs of
    consecutive parameters of one kind, so that the parameters stay in ``parameters()``
    order, by which the optimiser's state is indexed (a checkpoint of one group still fits)."""
    names = set(tables(gen))
    groups: list[dict] = []
    for name, param in gen.named_parameters():
        group_lr = lr * table_lr if name in names else lr
        if not groups or groups[-1]["lr"] != group_lr:
            groups.append({"params": [], "lr": group_lr})
        groups[-1]["params"].append(param)
    return groups


def update_average(models: Models) -> None:
    """One update of G's weight average after a step (none when averaging is off)."""
    if isinstance(models.average, LazyAverage):
        models.average.update_parameters(gan.unwrap(models.gen), models.g_opt.touched)
    elif models.average is not None:
        models.average.update_parameters(gan.unwrap(models.gen))


@dataclasses.dataclass
class Models:
    """G, D, their optimisers and G's weight average, as one rank trains them."""

    gen: Any  # Generator, DDP-wrapped with several ranks
    disc: Any
    g_opt: Any  # Adam, or GeneratorOptimizer for sparse tables
    d_opt: Any  # Adam
    average: Any  # AveragedModel, LazyAverage for sparse tables, or None
    tower: Any = None  # the content tower (DDP-wrapped with several ranks), or None
    tower_opt: Any = None

    @property
    def model(self) -> Generator:
        """The model: the average of G's weights when averaging is on, else G itself."""
        model = gan.unwrap(self.gen) if self.average is None else self.average.module
        return model  # type: ignore[return-value]


def every_position(cfg: TrainConfig) -> bool:
    """SASRec trained at several positions of a window in one forward."""
    return ENCODERS[cfg.model.encoder].several_positions and cfg.optim.train_positions > 1


def chunk_stride(cfg: TrainConfig) -> int:
    """The positions trained per window (and the rows between two windows' ends)."""
    return min(cfg.optim.train_positions, cfg.model.history_len)


def fresh_models(cfg: TrainConfig, mcfg: ModelConfig) -> tuple[Generator, Discriminator]:
    """G and D as initialised for ``cfg.seed`` (the start of the search, and of the refit)."""
    torch.manual_seed(cfg.seed)
    return Generator(mcfg), Discriminator(mcfg)


def initial_state(cfg: TrainConfig, fresh: Generator) -> dict | None:
    """With ``--init``: the parent's weights and optimiser states on the tables of ``fresh`` (a
    fresh G of this run: its new rows are where a fresh run starts them), what the search and the
    refit start from (:mod:`ganrec_dist.training.warmstart`); None for a fresh run."""
    if not cfg.init:
        return None
    start = warmstart.inherited(warmstart.parent_payload(cfg.init), fresh, fresh.cfg.sparse)
    start["generator"] = warmstart.shrink(
        start["generator"], fresh.state_dict(), cfg.optim.init_shrink
    )
    if not cfg.optim.init_optimizer:  # fresh moments and step counts
        start.update(g_optimizer=None, d_optimizer=None)
    return start


def load_inherited_optimizers(start: dict, g_opt: Any, d_opt: Any) -> None:
    """The parent's optimiser states (G's only when its tables were of the same kind): its
    moments and step counts, under this run's parameter groups and learning rates (the state
    is indexed by parameter, in the same order, whatever the groups)."""
    if start["g_optimizer"] is not None:
        inherited, own = start["g_optimizer"], g_opt.state_dict()
        if isinstance(g_opt, GeneratorOptimizer):
            inherited = {
                half: {**inherited[half], "param_groups": own[half]["param_groups"]}
                for half in ("dense", "sparse")
            }
        else:
            inherited = {**inherited, "param_groups": own["param_groups"]}
        g_opt.load_state_dict(inherited)
    if start["d_optimizer"] is not None:
        d_opt.load_state_dict(start["d_optimizer"])
