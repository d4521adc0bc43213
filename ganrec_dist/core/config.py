"""Typed configuration: one dataclass per stage, every field with its help text.

Precedence, lowest first: the dataclass defaults < the YAML file (``--config``) < ``--key=value``
on the command line. A YAML file may hold the stage's keys at top level, or one section per stage
(``prepare:``, ``train:``, ...) so that one file can configure a whole pipeline; its ``index:``
section is shared by every stage with index settings. Unknown keys and values of the wrong type
are rejected with a one-line :class:`~ganrec_dist.core.errors.UserError`.

Nested settings are addressed with a dot (``index.nprobe``, ``model.dim``). The sections of
:class:`TrainConfig` are *flat* as well: their keys are unique across sections, so ``dim`` means
``model.dim`` (the command-line names of earlier versions keep working).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ganrec_dist.core.errors import UserError

T = TypeVar("T")

# Section names of a pipeline-wide YAML file. `index:` there is the shared IndexConfig, which
# every stage that has an `index` field (and the `index` command) reads.
STAGES = (
    "prepare",
    "train",
    "update",
    "add-items",
    "rollback",
    "compact",
    "evaluate",
    "score",
    "serve",
    "demo",
    "bench_ingest",
    "bench_train",
    "bench_index",
    "bench_score",
    "bench_step",
    "bench_scale",
    "bench_serve",
    "bench_update",
)


def setting(default: Any, help: str) -> Any:
    """A config field with its help text (shown by ``--help``; a test checks none lacks one)."""
    return dataclasses.field(default=default, metadata={"help": help})


def section(cls: type, help: str, flat: bool = False) -> Any:
    """A nested config section; ``flat``: its keys may also be given without the section name."""
    return dataclasses.field(default_factory=cls, metadata={"help": help, "flat": flat})


# --- stage configs ----------------------------------------------------------------------------


@dataclasses.dataclass
class IndexConfig:
    """FAISS index settings, read by training (validation), `index`, `score` and `serve` alike."""

    kind: str = setting("auto", "index kind: auto | flat | ivf | hnsw | ivfpq")
    auto_exact_max_items: int = setting(200_000, "`auto` searches exactly up to this many items")
    nlist: int = setting(0, "IVF lists; 0 = about 4 * sqrt(n_items)")
    nprobe: int = setting(16, "IVF lists searched per query")
    hnsw_m: int = setting(32, "HNSW graph degree")
    ef_search: int = setting(128, "HNSW search depth")
    ef_construction: int = setting(200, "HNSW build depth")
    pq_bytes: int = setting(16, "IVF-PQ code size in bytes per vector; must divide the dimension")
    train_sample: int = setting(262_144, "vectors used to train IVF quantisers")
    refine_factor: int = setting(4, "IVF-PQ re-ranks this many times k candidates exactly")


@dataclasses.dataclass
class PrepareConfig:
    """`ganrec prepare`: raw interaction logs -> validated, id-mapped, split, sharded Parquet."""

    source: str = setting(
        "movielens-small", "movielens-small, synthetic, or a file, directory or glob of logs"
    )
    out: str = setting("data/movielens-small", "the DATA directory to write (path or s3:// gs://)")
    format: str = setting("auto", "input format: auto (from the extension) | csv | tsv | parquet")
    user_col: str = setting("user_id", "column of user ids")
    item_col: str = setting("item_id", "column of item ids")
    time_col: str = setting("timestamp", "column of timestamps (Unix seconds or ISO-8601)")
    weight_col: str = setting("", "column of weights; empty: `weight`, else `rating`, else 1.0")
    test_fraction: float = setting(0.2, "each user's last ceil(fraction * n) interactions: test")
    shards: int = setting(0, "output shards (user buckets); 0: one per 500k rows, at least 4")
    overwrite: bool = setting(False, "replace an existing DATA")
    append_to: str = setting(
        "", "an existing DATA: add `source` to it as a new version (ids kept; out: DATA.v<N>)"
    )
    retire: str = setting(
        "", "with append_to: a CSV/TSV/Parquet file of item ids that are never recommended again"
    )
    compact_at: float = setting(
        0.25,
        "with append_to: compact the new version when its delta partitions hold more than this "
        "share of the rows (or number more than 64)",
    )
    users: int = setting(10_000, "synthetic source: users")
    items: int = setting(5_000, "synthetic source: items")
    interactions: int = setting(500_000, "synthetic source: interactions")
    full_catalogue: bool = setting(
        False, "synthetic source: also give every item one interaction (a catalogue of `items`)"
    )
    seed: int = setting(0, "synthetic source: seed")
    item_content: str = setting(
        "",
        "a CSV/TSV/Parquet file of item content (item_id plus content columns; items in it but "
        "not in the log join the catalogue); synthetic source: 'synthetic' draws it",
    )
    item_features: str = setting(
        "",
        "the content columns' types, 'name:type[:sep],...' with type categorical | multi | "
        "numeric | text | vector (e.g. 'genres:multi:|,year:numeric,title:text'); empty: inferred",
    )
    feature_noise: float = setting(
        0.2, "synthetic content: 0 = the item's cluster exactly, 1.0 = says nothing of the item"
    )
    address: str = setting("", "Ray cluster address; empty: RAY_ADDRESS, else a local Ray")


@dataclasses.dataclass
class ModelSettings:
    """The generator's and discriminator's shapes."""

    dim: int = setting(64, "item-embedding dimension (the space G generates into)")
    hidden: int = setting(256, "hidden width of the user encoder, G and D")
    history_len: int = setting(50, "recent items a user is encoded from")
    noise_dim: int = setting(16, "dimension of G's noise z")
    dropout: float = setting(0.3, "dropout on the user encoder's input (sasrec: in every block)")
    user_dropout: float = setting(
        0.0,
        "mlp: in training, a user's id is replaced by the unknown user's with this probability, "
        "so that the history path new users are encoded from learns to stand alone",
    )
    encoder: str = setting(
        "mlp",
        "mlp: history mean and recency plus a user-id embedding, G's head on top; sasrec: "
        "causal self-attention over the history (SASRec), its last state the vector",
    )
    blocks: int = setting(2, "sasrec: self-attention blocks")
    heads: int = setting(1, "sasrec: attention heads per block (dim must be a multiple)")


@dataclasses.dataclass
class GameSettings:
    """G's side of the adversarial game."""

    adv_weight: float = setting(0.3, "weight of G's adversarial loss; 0 = the ablation")
    adv_horizon: int = setting(
        20, "D's real item is one of the user's next N interactions (1 = the next)"
    )
    g_steps: int = setting(1, "G-updates per batch")


@dataclasses.dataclass
class SamplingSettings:
    """Several samples per user: how G's noise is trained to matter and how inference uses it."""

    samples: int = setting(
        1,
        "noise draws per user at inference (validation, evaluate, score, serve): sample 0 is "
        "z = 0, the others N(0, I) keyed by (seed, user); K searches merged into one list",
    )
    merge: str = setting(
        "round_robin",
        "how K samples' lists become one: round_robin (each sample's 1st, then 2nd, ...) | max "
        "(an item's best score over the samples)",
    )
    best_of: int = setting(
        0,
        "train with a best-of-K softmax: each target's loss is the lowest over K samples (z = 0 "
        "and K-1 draws), so that samples specialise on interests (0 or 1: off)",
    )
    mode_seeking: float = setting(
        0.0,
        "weight of a mode-seeking term: two samples' output distance over their noises' "
        "distance is pushed up (MSGAN); 0: off",
    )


@dataclasses.dataclass
class DiscriminatorSettings:
    """D's settings: a run with adv_weight 0 takes no D-step, so they do not change it."""

    d_lr: float = setting(1e-3, "D's Adam learning rate")
    d_steps: int = setting(1, "D-updates per batch, before the G-updates")
    d_mismatch: float = setting(
        1.0, "weight of D's matching-aware term (another user's real item is fake); 0 = plain GAN"
    )
    d_rows: int = setting(
        64,
        "the game (D's step, G's adversarial term) is played on each batch's first N rows "
        "(0: all of them); the softmax still trains on every row",
    )


@dataclasses.dataclass
class OptimSettings:
    """The schedule and G's optimiser."""

    epochs: int = setting(8, "most search epochs")
    patience: int = setting(3, "stop the search after this many epochs without a better validation")
    refit: bool = setting(
        True, "after the search, retrain on all of train for the best epoch count"
    )
    init_epochs: int = setting(
        4, "with --init: the epochs of the fixed schedule, or the search's most epochs"
    )
    init_patience: int = setting(2, "with --init and the search schedule: patience")
    init_optimizer: bool = setting(
        True, "with --init: start from the parent's Adam moments and step counts (false: fresh)"
    )
    init_replay: float = setting(
        1.0,
        "with --init, after the search (fixed: from the start): the share of the rows the "
        "parent fitted that an epoch trains again, a new sample each epoch (1: all of them); "
        "the rows the parent never fitted are trained every epoch",
    )
    init_shrink: float = setting(
        0.5,
        "with --init: G starts at this share of the parent's weights plus the rest of a fresh "
        "initialisation's (shrink and perturb; 1: the parent's weights as they are)",
    )
    init_schedule: str = setting(
        "fixed",
        "with --init: search (init_epochs validated on the rows the parent never fitted, then "
        "the refit from the parent for the best count) | fixed (init_epochs epochs over all of "
        "train from the parent, no search)",
    )
    batch_size: int = setting(256, "rows per step and rank")
    lr: float = setting(2e-3, "G's Adam learning rate")
    table_lr: float = setting(
        12.0,
        "the item and user tables' learning rate as a multiple of `lr`: their rows get a "
        "gradient only from the batches that read them, so they need longer strides",
    )
    weight_decay: float = setting(0.0, "G's Adam weight decay")
    ema_decay: float = setting(
        0.998, "the model is an average of G's weights over steps with this decay (0: off)"
    )
    train_positions: int = setting(
        4,
        "sasrec: targets trained in one forward per row drawn: 1 = the row alone (one prefix "
        "a row); N = the last N positions of the window ending at it, rows N apart (each fitted "
        "row is still trained once an epoch)",
    )
    ce_horizon: int = setting(
        1, "the softmax target is one of the user's next N interactions (1 = the next)"
    )
    sampled_negatives: int = setting(
        -1, "softmax negatives: -1 = full softmax up to 20k items, else 8192; 0 = always full"
    )
    max_steps_per_epoch: int = setting(
        0, "cut every epoch after N steps, the same on every rank (0: whole epochs)"
    )
    sparse_tables: bool = setting(
        True,
        "with a sampled softmax, update the item and user tables only at the rows a step read "
        "(lazy Adam and weight average); false: dense Adam over the whole tables",
    )
    in_batch_negatives: bool = setting(
        True,
        "with a sampled softmax, the batch's own targets are negatives of the other rows too, "
        "log-Q corrected for their popularity (mixed negatives); false: uniform ones only",
    )


@dataclasses.dataclass
class ContentSettings:
    """New items from their content: the content tower, fitted after the model (DATA with item
    content only)."""

    tower: str = setting(
        "off",
        "off | regress (content regressed onto the learned rows plus a ranking term) | gar "
        "(GAR's generator loss against the model's scores): fitted after training, it writes "
        "the rows of items with fewer than --cold_item_min interactions",
    )
    tower_epochs: int = setting(10, "epochs of the content tower's fit")
    tower_scale: float = setting(
        0.5,
        "generated rows are scaled by this before they join the catalogue (they are longer than "
        "learned rows; evaluate --cold_items chooses it on validation-cold items)",
    )
    cold_item_min: int = setting(
        0, "items with fewer train interactions than this get generated rows (0: never seen)"
    )
    cold_item_blend: float = setting(
        10.0,
        "items with content and 1..5 train interactions (in between): row = w * learned + "
        "(1 - w) * cold_item_blend_scale * generated, w = c / (c + this), c the item's train "
        "interactions; 0: their learned rows. The default is the blend with the best mean "
        "validation over evaluate --cold_items's seeds (in_between; docs/results.md)",
    )
    cold_item_blend_scale: float = setting(
        0.2, "the generated vector's scale in --cold_item_blend's rows"
    )
    explore_share: float = setting(
        0.1,
        "with the tower on: the share of a popularity fallback's slots (its last floor(k * "
        "share)) given to items nobody has touched yet, newest first, so new items are shown",
    )
    explore_known: int = setting(
        0,
        "with the tower on: at least N of a known user's top-k are items new in DATA's newest "
        "partition (that user's best-scored ones, in the list's last slots), so new items are "
        "shown to the users who have a history too; 0: off",
    )


@dataclasses.dataclass
class DatasetSettings:
    """How the train split is carved and fed."""

    val_fraction: float = setting(
        0.2, "each user's last ceil(fraction * n) train interactions: validation"
    )
    val_users: int = setting(
        20_000,
        "validation scores a fixed seeded sample of this many users when more have validation "
        "rows (0: all); history.csv's val_users then says how many",
    )
    shuffle_buffer: int = setting(100_000, "rows in Ray Data's local shuffle buffer")
    cache_rows: int = setting(
        5_000_000, "keep the train dataset in the object store up to this many rows"
    )


@dataclasses.dataclass
class ExecutionSettings:
    """Where and how the run executes; a run resumes with other values of these."""

    name: str = setting("", "the run's name (default: the basename of `out`)")
    workers: int = setting(1, "DDP ranks (Ray Train workers)")
    gpu: bool = setting(False, "one GPU per worker (CUDA, NCCL); CPU otherwise")
    cpus_per_worker: float = setting(
        1.0, "CPUs per worker; fractions let workers and Ray Data share a small machine"
    )
    threads: int = setting(
        0,
        "torch threads per worker; 0: its whole CPUs, and a lone worker on a local Ray all the "
        "machine's cores (a sweep running trials side by side divides the cores among them)",
    )
    max_failures: int = setting(2, "worker-group restarts from the last checkpoint")
    address: str = setting("", "Ray cluster address; empty: RAY_ADDRESS, else a local Ray")
    row_update: str = setting(
        "fused",
        "sparse tables: fused (each touched row's weights, Adam moments and average read and "
        "written once a step) or reference (torch's SparseAdam, then the average: the same "
        "numbers, more passes; what `bench scale` compares against)",
    )
    fail_at_epoch: int = setting(-1, "test hook: the last rank exits once at this search epoch")
    fail_phase: str = setting("search", "test hook: the phase of --fail_at_epoch")

    def takes_every_core(self) -> bool:
        """A lone worker on the local Ray without ``threads``: it gets all the machine's cores
        as torch threads (`training.train._threads`), which trials side by side must share."""
        return self.threads == 0 and self.workers == 1 and not self.address


@dataclasses.dataclass
class TrainConfig:
    """`ganrec train`: the adversarial recommender on Ray Train."""

    data: str = setting("data/movielens-small", "the prepared DATA directory")
    out: str = setting("runs/movielens-small", "the RUN directory (path or s3:// gs://)")
    seed: int = setting(0, "seeds the models and every epoch's random draws")
    init: str = setting(
        "", "a trained RUN to warm-start from (DATA a newer version of its DATA; same model)"
    )
    model: ModelSettings = section(ModelSettings, "model shapes", flat=True)
    game: GameSettings = section(GameSettings, "the adversarial game, G's side", flat=True)
    discriminator: DiscriminatorSettings = section(
        DiscriminatorSettings, "the discriminator", flat=True
    )
    optim: OptimSettings = section(OptimSettings, "schedule and optimiser", flat=True)
    sampling: SamplingSettings = section(
        SamplingSettings, "several samples per user (training and inference)", flat=True
    )
    dataset: DatasetSettings = section(DatasetSettings, "validation carve and data feed", flat=True)
    content: ContentSettings = section(ContentSettings, "new items from their content", flat=True)
    execution: ExecutionSettings = section(
        ExecutionSettings, "where it runs (may change on resume)", flat=True
    )
    index: IndexConfig = section(IndexConfig, "the retrieval index used for validation")


@dataclasses.dataclass
class EvaluateConfig:
    """`ganrec evaluate`: GAN, its ablation and baselines in one full-ranking table."""

    data: str = setting("data/movielens-small", "the prepared DATA directory")
    run: str = setting("runs/movielens-small", "the trained RUN directory")
    ks: str = setting("10,20", "metric cut-offs, comma-separated")
    ease_lambdas: str = setting("100,200,400,800", "EASE's L2 weights to choose from on validation")
    ease_max_items: int = setting(
        20_000, "skip EASE above this many items (dense item-item matrix)"
    )
    als_factors: int = setting(64, "ALS factors")
    als_regs: str = setting("0.01,0.1,1.0", "ALS regularisations to choose from on validation")
    als_iterations: int = setting(15, "ALS iterations")
    ablation: bool = setting(
        True, "train (or reuse) the adv_weight=0 model and add it to the table"
    )
    sasrec: str = setting(
        "",
        "add SASRec to the table: a trained `--encoder sasrec` RUN, or `train` to train (or "
        "reuse) one under RUN/sasrec with the run's schedule; empty: no SASRec row",
    )
    cold_start: bool = setting(
        False,
        "also the cold-start table: a fraction of users held out of training (the models "
        "trained again without them), given their first 1, 3, 5, 10 interactions",
    )
    cold_fraction: float = setting(0.1, "cold start: the fraction of eligible users held out")
    cold_items: bool = setting(
        False,
        "also the cold-item table: a fraction of the items held out of training (the GAN "
        "trained again without them), recommended from their content (needs item content)",
    )
    cold_item_fraction: float = setting(
        0.2, "cold items: the fraction of the items with content and interactions held out"
    )
    cold_item_split: str = setting(
        "random",
        "cold items: random (a seeded fraction of the items) | time (the items first seen in "
        "the last fraction of the log: new SKUs)",
    )
    tower_epochs: int = setting(30, "cold items: epochs of the content tower's fit")
    cold_user_dropout: float = setting(
        0.0,
        "cold start: also the GAN trained with this --user_dropout (its row gan_user_dropout); "
        "0: not trained",
    )
    samples: int = setting(
        0, "noise draws per user for the GAN rows (1..32; 0: each run's own --samples)"
    )
    diversity: bool = setting(
        False,
        "the diversity section (K = 1 and the chosen K per generator) and the accuracy-"
        "diversity frontier against MMR re-ranking (RUN/frontier.json, RUN/frontier.png)",
    )
    frontier_samples: str = setting("1,2,4,8", "frontier: the K of the generators' points")
    max_users: int = setting(
        0,
        "score a seeded sample of this many test users, and tune the baselines on as many "
        "validation users (0: all); every item is still ranked",
    )
    seed: int = setting(0, "ALS's seed, and the user sample's")
    address: str = setting("", "Ray cluster address; empty: RAY_ADDRESS, else a local Ray")


@dataclasses.dataclass
class UpdateConfig:
    """`ganrec update`: append a partition, warm-start train, gate, index, roll out."""

    run: str = setting("runs/movielens-small", "the live RUN (the one being served)")
    source: str = setting("", "the new partition: a file, directory or glob of logs")
    data: str = setting("", "the live run's DATA (default: the one it was trained on)")
    retire: str = setting("", "a CSV/TSV/Parquet file of item ids to retire")
    item_content: str = setting(
        "",
        "the day's item content (CSV/TSV/Parquet: new items and changed ones); with a run "
        "trained with --tower, new items get generated rows before any interaction",
    )
    out_data: str = setting("", "the new DATA version (default: DATA.v<N> beside DATA)")
    out: str = setting("", "the new RUN (default: RUN.v<N> beside RUN, N the DATA version)")
    init_epochs: int = setting(4, "epochs of the warm start (train's --init_epochs)")
    init_shrink: float = setting(
        0.5, "the warm start's share of the live run's weights (train's --init_shrink)"
    )
    retrain_every: int = setting(
        0,
        "the retrain policy: train from scratch (the live run's settings, no --init) instead of "
        "warm-starting when the live run is this many warm starts from its last run from "
        "scratch (0: never)",
    )
    workers: int = setting(0, "DDP ranks (0: the live run's)")
    rollout: bool = setting(
        True, "set the live Serve app's run to the new one if the gate passed (none live: skip)"
    )
    app: str = setting("ganrec", "the Serve application to roll out to")
    keep: int = setting(
        0,
        "after the update, remove RUN and DATA versions beside RUN that neither the newest "
        "`keep` run versions, the live run nor its parent need (0: remove nothing)",
    )
    address: str = setting("", "Ray cluster address; empty: RAY_ADDRESS, else a local Ray")


@dataclasses.dataclass
class CompactConfig:
    """`ganrec compact --data DATA`: fold an appended DATA's delta partitions into its base files."""

    data: str = setting("data/movielens-small", "the DATA directory (compacted in place)")
    out: str = setting("", "write the compacted copy here instead of replacing DATA")


@dataclasses.dataclass
class RollbackConfig:
    """`ganrec rollback --run RUN`: the live app back to RUN's parent version."""

    run: str = setting("runs/movielens-small", "the version being served now")
    to: str = setting(
        "", "the version to serve instead (default: RUN's parent: --init or add-items)"
    )
    app: str = setting("ganrec", "the Serve application")
    address: str = setting("", "Ray cluster address; empty: RAY_ADDRESS, else a local Ray")


@dataclasses.dataclass
class AddItemsConfig:
    """`ganrec add-items`: new items with content into a trained run, without training."""

    run: str = setting("runs/movielens-small", "the live RUN (trained with --tower)")
    item_content: str = setting(
        "", "a CSV/TSV/Parquet file of the new items: item_id plus the run's content columns"
    )
    data: str = setting("", "the run's DATA (default: the one it was trained on)")
    out_data: str = setting("", "the new DATA version (default: DATA.v<N> beside DATA)")
    out: str = setting("", "the new RUN (default: RUN.v<N> beside RUN, N the DATA version)")
    rollout: bool = setting(True, "set the live Serve app's run to the new one (none live: skip)")
    app: str = setting("ganrec", "the Serve application to roll out to")
    address: str = setting("", "Ray cluster address; empty: RAY_ADDRESS, else a local Ray")


@dataclasses.dataclass
class IndexCommandConfig:
    """`ganrec index --run RUN [--kind ...]`: build RUN/index/ from the run's checkpoint."""

    run: str = setting("runs/movielens-small", "the trained RUN directory")
    kind: str = setting("", "index kind (overrides index.kind): auto | flat | ivf | hnsw | ivfpq")
    index: IndexConfig = section(IndexConfig, "index parameters")


@dataclasses.dataclass
class ScoreConfig:
    """`ganrec score`: top-K for every user as a Ray Data job, to Parquet."""

    data: str = setting("data/movielens-small", "the prepared DATA directory")
    run: str = setting("runs/movielens-small", "the trained RUN directory")
    out: str = setting("recs.parquet", "output Parquet dataset (path or s3:// gs://)")
    k: int = setting(10, "recommendations per user (1..10000)")
    users: str = setting(
        "", "a file of user ids (one per line, or CSV/Parquet with user_id); default: test users"
    )
    include_seen: bool = setting(False, "allow a user's train items in their recommendations")
    samples: int = setting(
        0, "noise draws per user, merged into one list (1..32; 0: the run's own --samples)"
    )
    batch_size: int = setting(1024, "users per model call")
    actors: int = setting(0, "scoring actors; 0: one per CPU of the cluster, at most 8")
    shared: bool = setting(
        True,
        "actors read one copy of the model, catalogue and histories per node from Ray's object "
        "store; false: each actor loads its own from RUN",
    )
    overwrite: bool = setting(False, "replace an existing output")
    address: str = setting("", "Ray cluster address; empty: RAY_ADDRESS, else a local Ray")


@dataclasses.dataclass
class ServeConfig:
    """`ganrec serve --run RUN`: the app on a local Ray, 127.0.0.1:8000, until Ctrl-C."""

    run: str = setting("runs/movielens-small", "the trained RUN directory")
    host: str = setting("127.0.0.1", "HTTP host")
    port: int = setting(8000, "HTTP port")
    max_batch_size: int = setting(32, "requests batched into one model call")
    address: str = setting("", "Ray cluster address; empty: RAY_ADDRESS, else a local Ray")
    duration_s: float = setting(0.0, "stop after this many seconds (0: until interrupted)")


@dataclasses.dataclass
class DemoConfig:
    """`ganrec demo`: the whole pipeline on the embedded data, with `train`'s and `evaluate`'s
    defaults."""

    workdir: str = setting("demo", "where DATA, RUN and recs.parquet go")
    seed: int = setting(
        0, "the training seed (the GAN row equals `ganrec train --seed` then `ganrec evaluate`)"
    )
    ablation: bool = setting(False, "also train the adv_weight=0 ablation (about as long again)")
    users_to_show: int = setting(3, "users whose top-10 lists are printed")
    port: int = setting(8000, "port of the live Serve app on 127.0.0.1")
    overwrite: bool = setting(True, "replace an earlier demo's files")
    address: str = setting("", "Ray cluster address; empty: RAY_ADDRESS, else a local Ray")


# --- the machinery ------------------------------------------------------------------------------


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
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise UserError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
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


def flat_sections(cls: type) -> dict[str, str]:
    """``{leaf key: section}`` for the keys of ``cls``'s flat sections (``dim`` -> ``model``)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("flat"):
            for sub in dataclasses.fields(hints[f.name]):
                out[sub.name] = f.name
    return out


def build(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Dotted keys (``index.nprobe``) address nested dataclasses; a key of a flat section may also
    be given alone (``dim`` for ``model.dim``).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    aliases = flat_sections(cls)
    nested: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        head, _, rest = key.partition(".")
        if head not in names and head in aliases:
            head, rest = aliases[head], key
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
        # The `index:` section of a pipeline file is the shared IndexConfig, not a stage's.
        section_keys = {} if stage == "index" else data.get(stage) or {}
        if not isinstance(section_keys, dict):
            raise UserError(f"{path}: section '{stage}' must be a mapping")
        if shared_index and isinstance(data.get("index"), dict) and "index" not in section_keys:
            section_keys = {**section_keys, "index": data["index"]}
        return section_keys
    return data


def load(cls: type[T], stage: str, config_file: str | None, overrides: dict[str, Any]) -> T:
    """Resolve a stage config: defaults < YAML file < overrides."""
    merged: dict[str, Any] = {}
    if config_file:
        has_index = "index" in {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        merged.update(flatten(read_yaml(config_file, stage, shared_index=has_index)))
    merged.update(overrides)
    return build(cls, merged)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"dim": 8}}`` -> ``{"model.dim": 8}`` (mappings all the way down)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config (for RUN/config.yaml and Ray Train workers)."""
    return dataclasses.asdict(config)


def fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any, str]]:
    """Every leaf setting of ``cls``: ``(dotted name, field, type, section name or "")``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            for name, sub, sub_tp, _ in fields(tp, prefix=f"{prefix}{f.name}."):
                yield name, sub, sub_tp, prefix + f.name
        else:
            yield prefix + f.name, f, tp, prefix.rstrip(".")


def replace(config: T, **changes: Any) -> T:
    """``dataclasses.replace`` that also takes flat-section keys (``adv_weight=0.0``)."""
    flat = flatten(to_dict(config))
    aliases = flat_sections(type(config))
    for key, value in changes.items():
        flat[f"{aliases[key]}.{key}" if key in aliases else key] = value
    return build(type(config), flat)


def train_config(**values: Any) -> TrainConfig:
    """A TrainConfig from keyword settings, flat-section keys included:
    ``train_config(data=..., epochs=3, dim=16)``."""
    return build(TrainConfig, values)
