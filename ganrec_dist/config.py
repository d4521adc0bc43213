"""Typed configuration: one dataclass per stage.

Precedence, lowest first: the dataclass defaults < the YAML file (``--config``) < ``--key=value``
on the command line. A YAML file may hold the stage's keys at top level, or one section per stage
(``prepare:``, ``train:``, ...) so that one file can configure a whole pipeline. Unknown keys and
values of the wrong type are rejected with a one-line :class:`~ganrec_dist.errors.UserError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ganrec_dist.errors import UserError

T = TypeVar("T")

# Section names of a pipeline-wide YAML file. `index:` there is the shared IndexConfig, which
# every stage that has an `index` field (and the `index` command) reads.
STAGES = (
    "prepare",
    "train",
    "evaluate",
    "score",
    "serve",
    "demo",
    "bench_ingest",
    "bench_train",
    "bench_index",
    "bench_score",
    "bench_serve",
)


@dataclasses.dataclass
class IndexConfig:
    """FAISS index settings, read by training (evaluation), `index`, `score` and `serve` alike."""

    kind: str = "auto"  # auto | flat | ivf | hnsw | ivfpq
    auto_exact_max_items: int = 200_000  # `auto` searches exactly up to this many items
    nlist: int = 0  # IVF lists; 0 = about 4 * sqrt(n_items)
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 128
    ef_construction: int = 200
    pq_bytes: int = 16  # IVF-PQ code size (bytes per vector); must divide the dimension
    train_sample: int = 262_144  # vectors used to train IVF quantisers
    refine_factor: int = 4  # IVF-PQ re-ranks this many times k candidates exactly


@dataclasses.dataclass
class PrepareConfig:
    """`ganrec prepare`: raw interaction logs -> validated, id-mapped, split, sharded Parquet."""

    source: str = "movielens-small"
    out: str = "data/movielens-small"
    format: str = "auto"  # auto | csv | tsv | parquet
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    weight_col: str = ""  # empty: use `weight`, else `rating`, else 1.0
    test_fraction: float = 0.2
    shards: int = 0  # 0: from the data size
    overwrite: bool = False
    # synthetic source
    users: int = 10_000
    items: int = 5_000
    interactions: int = 500_000
    full_catalogue: bool = False  # also give every item one interaction (a catalogue of `items`)
    seed: int = 0
    address: str = ""


@dataclasses.dataclass
class TrainConfig:
    """`ganrec train`: the adversarial recommender on Ray Train."""

    data: str = "data/movielens-small"
    out: str = "runs/movielens-small"
    name: str = ""  # default: the basename of `out`
    workers: int = 1
    gpu: bool = False
    cpus_per_worker: float = 1.0
    epochs: int = 30
    patience: int = 8  # seed 1's curve plateaus for epochs 5-13 with 4-epoch dry spells (README)
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
    dim: int = 64
    hidden: int = 256
    history_len: int = 50
    noise_dim: int = 16
    dropout: float = 0.3
    adv_weight: float = 0.3  # 0 = the no-adversarial ablation
    adv_horizon: int = 20  # D's real item: one of the user's next N interactions (1 = the next)
    ce_horizon: int = 1  # the softmax target: one of the user's next N interactions (1 = the next)
    d_steps: int = 1
    g_steps: int = 1
    d_lr: float = 1e-3
    d_mismatch: float = 1.0  # D also labels (user, another user's real item) fake; 0 = plain GAN
    ema_decay: float = 0.998  # the model is an average of G's weights over steps (0: off)
    sampled_negatives: int = -1  # -1: full softmax up to 100k items, else 8192; 0: always full
    shuffle_buffer: int = 100_000  # rows in Ray Data's local shuffle buffer
    cache_rows: int = 5_000_000  # materialise the train dataset in the object store up to this size
    val_fraction: float = 0.2
    refit: bool = True  # after early stopping, refit on all of train for the best epoch count
    max_steps_per_epoch: int = 0  # 0: whole epochs; N: stop each epoch after N steps (smoke runs)
    seed: int = 0
    max_failures: int = 2
    address: str = ""
    fail_at_epoch: int = -1  # test hook: rank 1 (or 0) exits once at this epoch
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)


@dataclasses.dataclass
class EvaluateConfig:
    """`ganrec evaluate`: GAN, its ablation and baselines in one full-ranking table."""

    data: str = "data/movielens-small"
    run: str = "runs/movielens-small"
    ks: str = "10,20"
    ease_lambdas: str = "100,200,400,800"
    ease_max_items: int = 20_000
    als_factors: int = 64
    als_regs: str = "0.01,0.1,1.0"
    als_iterations: int = 15
    ablation: bool = True  # train and evaluate the adv_weight=0 model in the same run
    seed: int = 0
    address: str = ""


@dataclasses.dataclass
class DemoConfig:
    """`ganrec demo`: the whole pipeline on the embedded data."""

    workdir: str = "demo"
    users_to_show: int = 3
    port: int = 8000
    overwrite: bool = True
    address: str = ""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field type, or raise a one-line UserError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        tp = args[0]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise UserError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"config key '{key}': expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise UserError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"config key '{key}': expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"config key '{key}': expected a string, got {value!r}")
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}': expected a mapping, got {value!r}")
        return build(tp, value, prefix=f"{key}.")
    raise UserError(f"config key '{key}': unsupported type {tp}")


def build(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Dotted keys (``index.nprobe``) address nested dataclasses.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    nested: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        head, _, rest = key.partition(".")
        if head not in names:
            raise UserError(f"unknown config key '{prefix}{head}' for {cls.__name__}")
        if rest:
            if not _is_dataclass_type(hints[head]):
                raise UserError(f"config key '{prefix}{head}' has no sub-keys")
            nested.setdefault(head, {})[rest] = value
        elif _is_dataclass_type(hints[head]) and isinstance(value, dict):
            nested.setdefault(head, {}).update(value)
        else:
            kwargs[head] = _coerce(value, hints[head], prefix + head)
    for head, sub in nested.items():
        kwargs[head] = build(hints[head], sub, prefix=f"{prefix}{head}.")
    return cls(**kwargs)


def read_yaml(path: str | Path, stage: str, shared_index: bool = False) -> dict[str, Any]:
    """Read the keys for ``stage`` from a YAML file (a section named after it, or top level)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise UserError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config keys")
    if any(k in STAGES for k in data):
        section = data.get(stage) or {}
        if not isinstance(section, dict):
            raise UserError(f"{path}: section '{stage}' must be a mapping")
        if shared_index and isinstance(data.get("index"), dict) and "index" not in section:
            section = {**section, "index": data["index"]}
        return section
    return data


def load(cls: type[T], stage: str, config_file: str | None, overrides: dict[str, Any]) -> T:
    """Resolve a stage config: defaults < YAML file < overrides."""
    merged: dict[str, Any] = {}
    if config_file:
        has_index = "index" in {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key, value in read_yaml(config_file, stage, shared_index=has_index).items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    merged[f"{key}.{sub}"] = v
            else:
                merged[key] = value
    merged.update(overrides)
    return build(cls, merged)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config (for RUN/config.yaml and Ray Train workers)."""
    return dataclasses.asdict(config)
