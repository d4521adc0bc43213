"""Item content: typed columns read from a content file, validated, and encoded into fixed-shape
arrays aligned with ``item_idx`` that the content tower reads a batch of items at a time.

Types (``--item_features 'name:type[:sep],...'``, or inferred by ``infer``):

- ``categorical``: one value an item; a vocabulary of the most frequent values seen at the first
  prepare (up to ``VOCAB_MAX``), every other value hashed into ``HASH_BUCKETS`` buckets.
- ``multi``: several values split on a separator (``genres:multi:|``), encoded like
  ``categorical``, up to ``MULTI_SLOTS`` values an item.
- ``numeric``: a float, normalised by the mean and standard deviation of the first prepare; an
  empty value is *missing* (a flag beside it), an unparsable one quarantines the row.
- ``text``: short text, lower-cased word tokens hashed into ``TEXT_BUCKETS`` buckets, up to
  ``TEXT_SLOTS`` tokens (what peers do for titles; no vocabulary to keep).
- ``vector``: a dense vector (a text or image embedding): a list column ``name``, or columns
  ``name_0 .. name_{w-1}``; every vector of the file has the first one's width.

Id 0 is "missing" in every id column. Later partitions keep the first prepare's vocabularies
and normalisation: a category unseen then lands in a hash bucket, so the tower's tables keep
their shape from one DATA version to the next and new items need no retraining (a growing
vocabulary would give new categories untrained rows anyway).

A row is quarantined (``rejected/content-*.parquet``, with a reason, counted in the manifest) for
a missing item id, a repeated item id (the first row wins), an unparsable or non-finite number,
or a vector of the wrong width. Memory follows a batch of rows: the file is read in batches of
``BATCH_ROWS``, the encoded arrays are written through memory maps.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ganrec_dist.core.errors import UserError
from ganrec_dist.data.sources import csv_header

TYPES = ("categorical", "multi", "numeric", "text", "vector")
SEPARATORS = {"pipe": "|", "comma": ",", "semicolon": ";", "space": " ", "tab": "\t"}
VOCAB_MAX = 50_000
HASH_BUCKETS = 1_024
TEXT_BUCKETS = 16_384
MULTI_SLOTS = 16
TEXT_SLOTS = 24
BATCH_ROWS = 65_536
ID_COLUMN = "item_id"
_TOKEN = re.compile(r"\w+")
_VECTOR_PART = re.compile(r"^(.+)_(\d+)$")


@dataclass
class Feature:
    """One content feature: how it is read, and what the first prepare learned of it."""

    name: str
    type: str
    sep: str = ""  # multi: the separator
    columns: list[str] = field(default_factory=list)  # vector: name_0..name_{w-1}, else [name]
    width: int = 0  # vector: its width
    vocab: list[str] = field(default_factory=list)  # categorical, multi: the known values
    mean: float = 0.0  # numeric
    std: float = 1.0  # numeric

    @property
    def slots(self) -> int:
        """Ids an item holds for this feature (the id columns)."""
        return {"categorical": 1, "multi": MULTI_SLOTS, "text": TEXT_SLOTS}.get(self.type, 0)

    @property
    def ids(self) -> int:
        """The size of the feature's id space, 0 ("missing") included."""
        if self.type in ("categorical", "multi"):
            return 1 + len(self.vocab) + HASH_BUCKETS
        return 1 + TEXT_BUCKETS if self.type == "text" else 0

    def summary(self) -> dict:
        """The manifest's entry: everything but the vocabulary itself (kept in content/)."""
        entry = {k: v for k, v in asdict(self).items() if k != "vocab"}
        if self.type in ("categorical", "multi"):
            entry["vocabulary"] = len(self.vocab)
        if self.ids:
            entry["ids"] = self.ids
        return entry


def parse_spec(spec: str) -> list[Feature]:
    """``'genres:multi:|,year:numeric,title:text'`` -> features (``--item_features``)."""
    features = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, rest = part.partition(":")
        kind, _, sep = rest.partition(":")
        if not name or kind not in TYPES:
            raise UserError(
                f"--item_features {part!r}: expected name:type with type one of {', '.join(TYPES)}"
            )
        if kind == "multi":
            sep = SEPARATORS.get(sep, sep) if sep else "|"
            if len(sep) != 1:
                raise UserError(
                    f"--item_features {part!r}: the separator must be one character or one of "
                    f"{', '.join(SEPARATORS)}"
                )
        elif sep:
            raise UserError(f"--item_features {part!r}: only multi takes a separator")
        features.append(Feature(name, kind, sep=sep))
    if len({f.name for f in features}) != len(features):
        raise UserError(f"--item_features {spec!r}: a feature is named twice")
    return features


def infer(sample: pa.Table) -> list[Feature]:
    """Types for every column but ``item_id``, from a first batch of rows (the documented rule):
    a list column, or numeric columns ``p_0 .. p_{n-1}`` (n >= 2), is a vector ``p``; another
    numeric column is numeric; a string column is multi (``|``) when at least a tenth of its
    values hold a ``|``, text when its values' median word count is at least 3, else
    categorical."""
    names = [c for c in sample.column_names if c != ID_COLUMN]
    features: list[Feature] = []
    parts: dict[str, list[tuple[int, str]]] = {}
    numeric = {name for name in names if _numeric_like(sample[name])}
    for name in names:
        match = _VECTOR_PART.match(name)
        if match and name in numeric:
            parts.setdefault(match.group(1), []).append((int(match.group(2)), name))
    vector_columns = {
        c
        for prefix, found in parts.items()
        if len(found) >= 2 and sorted(i for i, _ in found) == list(range(len(found)))
        for _, c in found
    }
    for prefix, found in parts.items():
        if found[0][1] in vector_columns:
            features.append(Feature(prefix, "vector", columns=[c for _, c in sorted(found)]))
    for name in names:
        if name in vector_columns:
            continue
        kind = sample.schema.field(name).type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            features.append(Feature(name, "vector"))
        elif name in numeric:
            features.append(Feature(name, "numeric"))
        else:
            values = [v for v in sample[name].cast(pa.string()).to_pylist() if v]
            piped = sum("|" in v for v in values)
            words = np.median([len(v.split()) for v in values]) if values else 0
            if values and piped >= 0.1 * len(values):
                features.append(Feature(name, "multi", sep="|"))
            elif words >= 3:
                features.append(Feature(name, "text"))
            else:
                features.append(Feature(name, "categorical"))
    return features


def _numeric_like(column: pa.ChunkedArray) -> bool:
    """A numeric column, or a text one (CSV) whose every non-empty value is a number."""
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return True
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return False
    values = [v for v in column.to_pylist() if v is not None and v.strip()]
    try:
        return bool(values) and all(np.isfinite(float(v)) for v in values)
    except ValueError:
        return False


def _bind(features: list[Feature], columns: list[str], path: str) -> None:
    """Point each feature at its columns in the file (a vector: one list column or parts)."""
    for f in features:
        if f.columns:
            missing = [c for c in f.columns if c not in columns]
        elif f.name in columns:
            f.columns, missing = [f.name], []
        elif f.type == "vector":
            found = sorted(
                (int(m.group(2)), c)
                for c in columns
                if (m := _VECTOR_PART.match(c)) and m.group(1) == f.name
            )
            f.columns = [c for _, c in found]
            missing = [] if found else [f"{f.name} (or {f.name}_0, {f.name}_1, ...)"]
        else:
            missing = [f.name]
        if missing:
            raise UserError(f"{path}: no column {missing[0]} for --item_features {f.name}")


def batches(path: str, fmt: str) -> Iterator[pa.Table]:
    """The content file in batches of ``BATCH_ROWS`` rows, every column as read (CSV/TSV: ids
    and text as strings)."""
    if fmt == "parquet":
        with pq.ParquetFile(path) as handle:
            for batch in handle.iter_batches(batch_size=BATCH_ROWS):
                yield pa.Table.from_batches([batch])
        return
    delimiter = "\t" if fmt == "tsv" else ","
    # Every column as text: a bad value in a numeric column is a row to quarantine, not a
    # type error for the whole block.
    header = csv_header(path, delimiter)
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header}, strings_can_be_null=True
            ),
        )
        for batch in reader:
            yield pa.Table.from_batches([batch])
    except pa.ArrowInvalid as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"{path}: not a readable {fmt.upper()} file ({first})") from None


# --- pass 1: validate, count, stage ---------------------------------------------------------


@dataclass
class Checked:
    """A batch after validation: the rows kept (typed, in ``staged_schema``), the rejected
    rows (the original values and a reason)."""

    kept: pa.Table
    rejected: list[tuple[int, dict, str]]  # (row in the batch, the row, the reason)


def staged_schema(features: list[Feature]) -> pa.Schema:
    fields = [pa.field(ID_COLUMN, pa.string())]
    for f in features:
        kind = {
            "categorical": pa.string(),
            "multi": pa.list_(pa.string()),
            "numeric": pa.float64(),
            "text": pa.string(),
            "vector": pa.list_(pa.float32()),
        }[f.type]
        fields.append(pa.field(f.name, kind))
    return pa.schema(fields)


def _number(value: Any) -> float | None:
    """A finite float, None for missing; raises ValueError for anything else."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(value)
    return number


def check_batch(table: pa.Table, features: list[Feature], seen: set[str]) -> Checked:
    """Validate a batch; ``seen`` (item ids kept so far) grows with it."""
    rows = table.to_pylist()
    kept: dict[str, list] = {ID_COLUMN: [], **{f.name: [] for f in features}}
    rejected = []
    for i, row in enumerate(rows):
        item = row.get(ID_COLUMN)
        item = None if item is None else str(item).strip()
        if not item:
            rejected.append((i, row, "content: missing item_id"))
            continue
        if item in seen:
            rejected.append((i, row, "content: duplicate item_id"))
            continue
        values, reason = {}, None
        for f in features:
            try:
                values[f.name] = _value(f, row)
            except ValueError as exc:
                detail = f" ({exc})" if f.type == "vector" else ""
                reason = f"content: bad {f.type} {f.name}{detail}"
                break
        if reason:
            rejected.append((i, row, reason))
            continue
        seen.add(item)
        kept[ID_COLUMN].append(item)
        for name, value in values.items():
            kept[name].append(value)
    return Checked(pa.table(kept, schema=staged_schema(features)), rejected)


def _value(f: Feature, row: dict) -> Any:
    if f.type == "numeric":
        return _number(row.get(f.columns[0]))
    if f.type == "vector":
        if len(f.columns) > 1:
            parts = [_number(row.get(c)) for c in f.columns]
            if all(p is None for p in parts):
                return None
            if any(p is None for p in parts):
                raise ValueError("an empty value")
            vector = parts
        else:
            vector = row.get(f.columns[0])
            if vector is None:
                return None
            if isinstance(vector, str):  # a list written into CSV: "[0.1, 0.2]" or "0.1 0.2"
                vector = vector.strip().strip("[]").replace(",", " ").split()
            vector = [_number(v) for v in vector]
            if any(v is None for v in vector):
                raise ValueError("an empty value")
        if f.width and len(vector) != f.width:
            raise ValueError(f"width {len(vector)}, expected {f.width}")
        f.width = f.width or len(vector)
        return vector
    value = row.get(f.columns[0])
    if value is None:
        return None
    value = str(value).strip()
    if f.type == "multi":
        return [v.strip() for v in value.split(f.sep) if v.strip()] or None
    return value or None


@dataclass
class Stats:
    """What pass 1 learns: value counts for vocabularies, sums for the normalisation."""

    counts: dict[str, Counter] = field(default_factory=dict)
    sums: dict[str, list[float]] = field(default_factory=dict)  # [n, sum, sum of squares]

    def add(self, kept: pa.Table, features: list[Feature]) -> None:
        for f in features:
            column = kept[f.name]
            if f.type == "categorical":
                self.counts.setdefault(f.name, Counter()).update(
                    v for v in column.to_pylist() if v is not None
                )
            elif f.type == "multi":
                self.counts.setdefault(f.name, Counter()).update(
                    v for vs in column.to_pylist() if vs for v in vs
                )
            elif f.type == "numeric":
                x = column.drop_null().to_numpy().astype(np.float64)
                acc = self.sums.setdefault(f.name, [0.0, 0.0, 0.0])
                acc[0] += len(x)
                acc[1] += float(x.sum())
                acc[2] += float((x * x).sum())

    def fit(self, features: list[Feature]) -> None:
        """Vocabularies (most frequent first, ties by value) and normalisation, in place."""
        for f in features:
            if f.name in self.counts:
                ranked = sorted(self.counts[f.name].items(), key=lambda kv: (-kv[1], kv[0]))
                f.vocab = [v for v, _ in ranked[:VOCAB_MAX]]
            if f.name in self.sums:
                n, s, ss = self.sums[f.name]
                f.mean = s / n if n else 0.0
                var = ss / n - f.mean**2 if n else 0.0
                f.std = float(np.sqrt(var)) if var > 1e-12 else 1.0


# --- pass 2: encode -------------------------------------------------------------------------


def _stable_hash(value: str) -> int:
    return zlib.crc32(value.encode("utf-8"))


def encode_ids(f: Feature, values: list, lookup: dict[str, int]) -> np.ndarray:
    """``[len(values), f.slots]`` int32 ids: 0 missing/padding, 1..len(vocab) the vocabulary,
    then the hash buckets (categorical, multi); text: 1 + hash bucket of each token."""
    out = np.zeros((len(values), f.slots), dtype=np.int32)
    base = 1 + len(f.vocab)
    for row, value in enumerate(values):
        if value is None:
            continue
        if f.type == "text":
            tokens = _TOKEN.findall(value.lower())[: f.slots]
            out[row, : len(tokens)] = [1 + _stable_hash(t) % TEXT_BUCKETS for t in tokens]
            continue
        items = [value] if f.type == "categorical" else value[: f.slots]
        out[row, : len(items)] = [
            lookup[v] if v in lookup else base + _stable_hash(v) % HASH_BUCKETS for v in items
        ]
    return out


class Writer:
    """The encoded arrays of a catalogue of ``n_items``, written through memory maps into
    ``folder`` (``content/`` of a DATA), a batch of items at a time."""

    def __init__(self, folder: Path, features: list[Feature], n_items: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.features, self.folder = features, folder
        self.lookups = {f.name: {v: i + 1 for i, v in enumerate(f.vocab)} for f in features}
        numeric = [f for f in features if f.type == "numeric"]
        self.arrays = {"has_content": self._open("has_content", (n_items,), np.bool_)}
        if numeric:
            self.arrays["numeric"] = self._open("numeric", (n_items, len(numeric)), np.float32)
            self.arrays["numeric_missing"] = self._open(
                "numeric_missing", (n_items, len(numeric)), np.bool_
            )
        for f in features:
            if f.slots:
                self.arrays[f"ids_{f.name}"] = self._open(
                    f"ids_{f.name}", (n_items, f.slots), np.int32
                )
            elif f.type == "vector":
                self.arrays[f"vector_{f.name}"] = self._open(
                    f"vector_{f.name}", (n_items, max(f.width, 1)), np.float32
                )
                self.arrays[f"vector_{f.name}_missing"] = self._open(
                    f"vector_{f.name}_missing", (n_items,), np.bool_
                )
        self._numeric = numeric

    def _open(self, name: str, shape: tuple, dtype: Any) -> np.ndarray:
        array = np.lib.format.open_memmap(self.folder / f"{name}.npy", "w+", dtype, shape)
        if dtype == np.bool_ and name.endswith("missing"):
            array[:] = True  # items without content: every value missing
        return array

    def write(self, rows: np.ndarray, kept: pa.Table) -> None:
        """Encode ``kept`` (staged rows) into the items ``rows`` (their item_idx)."""
        self.arrays["has_content"][rows] = True
        for j, f in enumerate(self._numeric):
            x = kept[f.name].to_numpy(zero_copy_only=False).astype(np.float64)
            missing = np.isnan(x)
            self.arrays["numeric"][rows, j] = np.where(missing, 0.0, (x - f.mean) / f.std)
            self.arrays["numeric_missing"][rows, j] = missing
        for f in self.features:
            values = kept[f.name].to_pylist()
            if f.slots:
                self.arrays[f"ids_{f.name}"][rows] = encode_ids(f, values, self.lookups[f.name])
            elif f.type == "vector":
                present = np.array([v is not None for v in values])
                dense = np.zeros((len(values), max(f.width, 1)), dtype=np.float32)
                if present.any():
                    dense[present] = np.asarray([v for v in values if v is not None], np.float32)
                self.arrays[f"vector_{f.name}"][rows] = dense
                self.arrays[f"vector_{f.name}_missing"][rows] = ~present

    def copy_from(self, old: Content) -> None:
        """The first ``old.n_items`` rows of every array from an earlier version (same
        features), a batch of items at a time."""
        for start in range(0, old.n_items, BATCH_ROWS):
            rows = np.arange(start, min(old.n_items, start + BATCH_ROWS))
            for name, values in old.batch(rows).items():
                if name in self.arrays:
                    self.arrays[name][rows] = values

    def close(self) -> None:
        for array in self.arrays.values():
            array.flush()
        vocab = {f.name: f.vocab for f in self.features if f.vocab}
        (self.folder / "vocabulary.json").write_text(json.dumps(vocab))
        self.arrays.clear()


def features_from_manifest(entries: list[dict], folder: Path) -> list[Feature]:
    """The features a DATA's manifest records, with their vocabularies from ``folder``."""
    vocab = json.loads((folder / "vocabulary.json").read_text())
    features = []
    for e in entries:
        known = {k: e[k] for k in ("name", "type", "sep", "columns", "width", "mean", "std")}
        features.append(Feature(**known, vocab=vocab.get(e["name"], [])))
    return features


def item_rows(ids: pa.Array | pa.ChunkedArray, catalogue: pa.Array) -> np.ndarray:
    """The ``item_idx`` of each id in the sorted ``catalogue`` (every id must be in it)."""
    rows = pc.index_in(ids, value_set=catalogue).to_numpy(zero_copy_only=False)
    assert not np.isnan(rows.astype(np.float64)).any(), "an item id missing from the catalogue"
    return rows.astype(np.int64)


# --- the two passes, as prepare runs them ---------------------------------------------------


@dataclass
class Staged:
    """Pass 1's result: the features (fitted), the staged files of kept rows, the counts."""

    features: list[Feature]
    files: list[Path]
    rows_in: int = 0
    rows_kept: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    def ids(self) -> pa.Array:
        """The item ids with content (each once)."""
        parts = [pq.read_table(p, columns=[ID_COLUMN])[ID_COLUMN] for p in self.files]
        return pa.chunked_array([c for p in parts for c in p.chunks], pa.string()).combine_chunks()


def stage(
    path: str,
    fmt: str,
    spec: str,
    staging: Path,
    reject: Callable[[pa.Table, list[str], list[int], int], None],
    fixed: list[Feature] | None = None,
) -> Staged:
    """Pass 1 over a content file: validate in batches, stage the kept rows as Parquet, hand
    the rejected ones to ``reject(rows, reasons, row numbers, batch number)``, fit vocabularies
    and normalisation (``fixed``: an earlier DATA's features, kept as they are)."""
    staging.mkdir(parents=True, exist_ok=True)
    features: list[Feature] | None = [dataclass_copy(f) for f in fixed] if fixed else None
    seen: set[str] = set()
    stats, result, row0 = Stats(), None, 0
    for n, table in enumerate(batches(path, fmt)):
        if ID_COLUMN not in table.column_names:
            raise UserError(
                f"{path}: no {ID_COLUMN} column (found: {', '.join(table.column_names)})"
            )
        if features is None:
            features = parse_spec(spec) if spec else infer(table)
            _bind(features, table.column_names, path)
        if result is None:
            result = Staged(features, [])
        checked = check_batch(table, features, seen)
        result.rows_in += table.num_rows
        result.rows_kept += checked.kept.num_rows
        if checked.kept.num_rows:
            file = staging / f"content-{n:05d}.parquet"
            pq.write_table(checked.kept, file)
            result.files.append(file)
        if not fixed:
            stats.add(checked.kept, features)
        if checked.rejected:
            for _, _, reason in checked.rejected:
                result.rejected_by_reason[reason] = result.rejected_by_reason.get(reason, 0) + 1
            where = [i for i, _, _ in checked.rejected]
            reasons = [why for _, _, why in checked.rejected]
            reject(table.take(where), reasons, [row0 + i for i in where], n)
        row0 += table.num_rows
    if result is None:
        raise UserError(f"{path}: no content rows")
    if not fixed:
        stats.fit(result.features)
    return result


def dataclass_copy(f: Feature) -> Feature:
    return Feature(**{**asdict(f), "columns": list(f.columns), "vocab": list(f.vocab)})


def encode(
    staged: Staged | None,
    catalogue: pa.Array,
    folder: Path,
    *,
    old: Content | None = None,
    features: list[Feature] | None = None,
) -> dict:
    """Pass 2: the staged rows into ``folder``'s arrays, aligned with ``catalogue`` (item ids
    by item_idx); ``old``: an earlier version's content, copied first (the staged rows update
    it). Returns the manifest's ``content`` section."""
    features = staged.features if staged is not None else features
    assert features is not None
    writer = Writer(folder, features, len(catalogue))
    try:
        if old is not None:
            writer.copy_from(old)
        for file in staged.files if staged is not None else []:
            with pq.ParquetFile(file) as handle:
                for batch in handle.iter_batches(batch_size=BATCH_ROWS):
                    kept = pa.Table.from_batches([batch])
                    writer.write(item_rows(kept[ID_COLUMN], catalogue), kept)
        with_content = int(writer.arrays["has_content"].sum())
    finally:
        writer.close()
    return {
        "features": [f.summary() for f in features],
        **counts(staged),
        "items_with_content": with_content,
        "items_without_content": len(catalogue) - with_content,
    }


def counts(staged: Staged | None) -> dict:
    """A content file's row counts: in = kept + rejected."""
    if staged is None:
        return {"rows_in": 0, "rows_kept": 0, "rows_rejected": 0, "rejected_by_reason": {}}
    return {
        "rows_in": staged.rows_in,
        "rows_kept": staged.rows_kept,
        "rows_rejected": sum(staged.rejected_by_reason.values()),
        "rejected_by_reason": dict(sorted(staged.rejected_by_reason.items())),
    }


class Content:
    """A DATA's encoded content, read-only and memory-mapped (the processes of a node share
    the pages): ``batch(rows)`` gives the arrays of a batch of items."""

    def __init__(self, folder: str | Path, section: dict) -> None:
        self.folder = Path(folder)
        self.features = features_from_manifest(section["features"], self.folder)
        self.arrays = {
            p.stem: np.load(p, mmap_mode="r", allow_pickle=False)
            for p in sorted(self.folder.glob("*.npy"))
        }
        self.n_items = len(self.arrays["has_content"])

    @property
    def has_content(self) -> np.ndarray:
        """Which items have content: the one flag column, without the other arrays."""
        return np.asarray(self.arrays["has_content"])

    def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Every array's rows ``rows`` (item indices), copied out of the map."""
        rows = np.asarray(rows, dtype=np.int64)
        return {name: np.asarray(array[rows]) for name, array in self.arrays.items()}
