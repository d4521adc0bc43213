"""`ganrec bench update`: the warm-started model after each new partition against a model
trained from scratch on the same DATA version, in one run and one table.

The log (the embedded sample, or a synthetic one) is cut in time: its first ``first`` share is
"yesterday" (prepared as DATA), the rest arrives as ``partitions`` equal slices, each appended
(`prepare --append-to`) as a new DATA version. For each seed: a run from scratch on DATA is the
first live model; after each partition a warm start from the previous warm model
(`train --init`) and a run from scratch, both on the new version, are scored on its test split
(full ranking, seen items excluded, the same retrieval path as `evaluate`). Reported per
partition: NDCG@10 (mean over seeds, and the paired per-user comparison of `ganrec compare`),
training seconds, and the share of the items new since DATA that reach any test user's top 10.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ganrec_dist.bench.common import cpu_model, write_json
from ganrec_dist.core.config import OptimSettings, PrepareConfig, setting, train_config
from ganrec_dist.core.errors import UserError
from ganrec_dist.core.logs import print_table
from ganrec_dist.data.append import prepare_or_append
from ganrec_dist.data.layout import DataDir, RunDir
from ganrec_dist.evaluation.compare import compare

log = logging.getLogger(__name__)
_TRAIN = OptimSettings()


@dataclasses.dataclass
class BenchUpdateConfig:
    """`ganrec bench update`: warm start after each partition against training from scratch."""

    source: str = setting("movielens-small", "movielens-small or synthetic")
    users: int = setting(2_000, "synthetic source: users")
    items: int = setting(3_000, "synthetic source: items")
    interactions: int = setting(100_000, "synthetic source: interactions")
    first: float = setting(0.8, "the share of the log (in time) that is yesterday's DATA")
    new_items: float = setting(
        0.0, "this share of the items becomes a new SKU after the cut (for the synthetic log)"
    )
    partitions: int = setting(2, "the rest of the log arrives in this many partitions")
    days: int = setting(
        0,
        "many days in a row: the rest of the log arrives in this many partitions, a warm start "
        "every day, a run from scratch on days 1, 7, 14 and the last only (0: partitions)",
    )
    retrain_every: int = setting(
        0, "the retrain policy: every N days the live model is a run from scratch (0: never)"
    )
    content: bool = setting(
        False,
        "synthetic source: items carry content (each new SKU its original's, delivered with the "
        "partition it first appears in) and every run trains the content tower (--tower regress)",
    )
    seeds: str = setting("0,1,2", "seeds, comma-separated (paired across warm and scratch)")
    epochs: int = setting(_TRAIN.epochs, "from scratch: most search epochs (the train default)")
    patience: int = setting(_TRAIN.patience, "from scratch: patience (the train default)")
    init_epochs: int = setting(_TRAIN.init_epochs, "warm start: epochs (the train default)")
    init_patience: int = setting(_TRAIN.init_patience, "warm start: patience (the train default)")
    train: str = setting("", "extra train settings for every run, key=value,... (dim=32,...)")
    warm: str = setting("", "extra train settings for the warm starts only, key=value,...")
    data_seed: int = setting(0, "synthetic source: the log's seed")
    out: str = setting("bench/update.json", "results JSON")
    workdir: str = setting("", "where data and runs go (default: a temporary directory)")


def _log_rows(cfg: BenchUpdateConfig, work: Path) -> pa.Table:
    """Every kept row of the source, (user_id, item_id, timestamp, weight), in time order."""
    full = work / "full"
    prepare_or_append(
        PrepareConfig(
            source=cfg.source,
            out=str(full),
            users=cfg.users,
            items=cfg.items,
            interactions=cfg.interactions,
            seed=cfg.data_seed,
            overwrite=True,
        )
    )
    columns = ["user_id", "item_id", "timestamp", "weight"]
    data = DataDir(full)
    rows = pa.concat_tables([data.read(s, columns) for s in ("train", "test")])
    rows = rows.sort_by([("timestamp", "ascending"), ("user_id", "ascending")])
    return _new_skus(rows, cfg.new_items, int(rows.num_rows * cfg.first))


def _new_skus(rows: pa.Table, fraction: float, cut: int) -> pa.Table:
    """A seeded ``fraction`` of the items is replaced by a new SKU after the cut: their later
    rows name ``<item>-new``, an id yesterday's DATA never saw (a catalogue's new items, for a
    log such as the synthetic one whose items all appear early)."""
    if fraction <= 0:
        return rows
    items = rows["item_id"].to_numpy(zero_copy_only=False).astype(object)
    unique = np.unique(items)
    chosen = np.random.default_rng(7).choice(len(unique), int(len(unique) * fraction), False)
    renamed = np.isin(items, unique[chosen]) & (np.arange(len(items)) >= cut)
    items[renamed] = [f"{i}-new" for i in items[renamed]]
    return rows.set_column(1, "item_id", pa.array(items.tolist(), pa.string()))


def _versions(cfg: BenchUpdateConfig, work: Path) -> list[DataDir]:
    """DATA (the first share of the log), then one appended version per partition."""
    rows = _log_rows(cfg, work)
    n = rows.num_rows
    cuts = [int(n * cfg.first)] + [
        int(n * cfg.first + (n - n * cfg.first) * (k + 1) / cfg.partitions)
        for k in range(cfg.partitions)
    ]
    cuts[-1] = n
    bounds = [0, *cuts]
    content = _content(cfg, work) if cfg.content else None
    seen: set = set()
    versions: list[DataDir] = []
    for k in range(len(bounds) - 1):
        part = work / f"part{k}.csv"
        chunk = rows.slice(bounds[k], bounds[k + 1] - bounds[k])
        pacsv.write_csv(chunk, part)
        described = ""
        if content is not None:  # the content of the items this partition brings
            first_seen = set(chunk["item_id"].to_pylist()) - seen
            seen |= first_seen
            described = str(work / f"content{k}.parquet")
            mask = pc.is_in(content["item_id"], value_set=pa.array(sorted(first_seen)))
            pq.write_table(content.filter(mask), described)
        out = work / f"data{k}"
        prepare_or_append(
            PrepareConfig(
                source=str(part),
                out=str(out),
                overwrite=True,
                item_content=described,
                append_to=versions[-1].root if versions else "",
            )
        )
        versions.append(DataDir(out))
    return versions


def _content(cfg: BenchUpdateConfig, work: Path) -> pa.Table:
    """The synthetic catalogue's content; a new SKU ``<item>-new`` has its original's."""
    from ganrec_dist.data.sources import synthetic_content, synthetic_layout

    if cfg.source != "synthetic":
        raise UserError("bench update --content: with --source synthetic (its items' content)")
    path = work / "content.parquet"
    layout = synthetic_layout(cfg.users, cfg.items, cfg.interactions, False)
    synthetic_content(layout, cfg.data_seed, 0.2, path)
    table = pq.read_table(path)
    renamed = table.set_column(
        0, "item_id", pc.binary_join_element_wise(table["item_id"], pa.scalar("-new"), "")
    )
    return pa.concat_tables([table, renamed])


def _extra(settings: str) -> dict:
    pairs = [p.split("=", 1) for p in settings.split(",") if p.strip()]
    return {k.strip(): v.strip() for k, v in pairs}


def _train(**values: object) -> dict:
    """Train one run; its wall seconds (Ray Train's start-up included) and the seconds of its
    epochs alone (what grows with the data)."""
    from ganrec_dist.training.train import train

    start = time.perf_counter()
    train(train_config(**values))  # type: ignore[arg-type]
    wall = time.perf_counter() - start
    history = RunDir(str(values["out"])).payload()["state"]["history"]
    return {"wall": wall, "epochs": float(sum(h["seconds"] for h in history)), "n": len(history)}


def new_item_stats(run: str, data: DataDir, first_items: int) -> dict:
    """What ``run`` shows of the items new since the first DATA, to the users with test rows:
    the share of them in anyone's top 10 (``reached``), their share of all top-10 slots
    (``slots``), their share of the test rows (``interactions``: the next rows of those users),
    and the share of the test rows on them that the top 10 finds (``hit_rate``)."""
    from ganrec_dist.evaluation.evaluate import gan_recommend

    n_new = data.manifest["items"] - first_items
    test = data.sequences("test")
    users = np.flatnonzero(test.lengths > 0)
    if n_new <= 0 or len(users) == 0:
        return dict.fromkeys(("reached", "slots", "interactions", "hit_rate"), float("nan"))
    recs, _ = gan_recommend(run, data.manifest["users"], users, 10)
    shown = recs[users]
    owner = np.repeat(np.arange(test.n_users), test.lengths)
    on_new = test.items >= first_items
    hits = [
        test.items[i] in shown_row
        for i, shown_row in ((i, recs[owner[i]]) for i in np.flatnonzero(on_new))
    ]
    return {
        "reached": float(np.unique(shown[shown >= first_items]).size / n_new),
        "slots": float(np.mean(shown[shown >= 0] >= first_items)),
        "interactions": float(on_new.mean()),
        "hit_rate": float(np.mean(hits)) if hits else float("nan"),
    }


def scratch_days(cfg: BenchUpdateConfig) -> list[int]:
    """The partitions with a run from scratch: every one, or under --days 1, 7, 14 and the last."""
    if not cfg.days:
        return list(range(1, cfg.partitions + 1))
    return sorted({d for d in (1, 7, 14, cfg.days) if d <= cfg.days})


def _seed_runs(cfg: BenchUpdateConfig, versions: list[DataDir], work: Path, seed: int) -> list:
    """One seed: the first live model, then per partition a warm start from the live model and,
    on the days that have one, a run from scratch; the retrain policy's days make the run from
    scratch the live model."""
    extra = {**({"tower": "regress"} if cfg.content else {}), **_extra(cfg.train)}
    scratch = dict(epochs=cfg.epochs, patience=cfg.patience, seed=seed, **extra)
    live = str(work / f"seed{seed}" / "v0")
    first = _train(data=versions[0].root, out=live, **scratch)
    log.info("seed %d: first model %.0fs", seed, first["wall"])
    compared, rows = scratch_days(cfg), []
    for k, data in enumerate(versions[1:], start=1):
        warm, fresh = (str(work / f"seed{seed}" / f"{kind}{k}") for kind in ("warm", "scratch"))
        warm_settings = {
            "init_epochs": cfg.init_epochs,
            "init_patience": cfg.init_patience,
            "seed": seed,
            **extra,
            **_extra(cfg.warm),
        }
        warm_s = _train(data=data.root, out=warm, init=live, **warm_settings)
        retrain = bool(cfg.retrain_every) and k % cfg.retrain_every == 0
        fresh_s = _train(data=data.root, out=fresh, **scratch) if k in compared or retrain else None
        if k in compared:
            rows.append(
                {
                    "partition": k,
                    "warm": warm,
                    "scratch": fresh,
                    "warm_s": warm_s,
                    "scratch_s": fresh_s,
                    "retrained": retrain,
                }
            )
        live = fresh if retrain else warm
    return rows


def run(cfg: BenchUpdateConfig) -> dict:
    work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="ganrec-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in cfg.seeds.split(",") if s.strip()]
    try:
        if cfg.days:
            cfg = dataclasses.replace(cfg, partitions=cfg.days)
        versions = _versions(cfg, work)
        runs = {seed: _seed_runs(cfg, versions, work, seed) for seed in seeds}
        result = _summarise(cfg, versions, runs)
    finally:
        if not cfg.workdir:
            shutil.rmtree(work, ignore_errors=True)
    write_json(cfg.out, result)
    return result


def _mean(rows: list[dict], kind: str, key: str) -> float:
    return float(np.mean([r[kind][key] for r in rows]))


def _partition_row(k: int, data: DataDir, mine: list[dict], first_items: int) -> dict:
    """One partition's numbers over the seeds' paired warm and scratch runs."""
    for r in mine:
        for kind in ("warm", "scratch"):
            r[f"{kind}_new"] = new_item_stats(r[kind], data, first_items)
    paired = compare(
        [r["warm"] for r in mine], [r["scratch"] for r in mine], split="test", data=data.root
    )
    warm, scratch = paired["a"], paired["b"]
    low, high = paired["interval"]
    times = {
        f"{kind}_{key}": _mean(mine, f"{kind}_s", src)
        for kind in ("warm", "scratch")
        for key, src in (("seconds", "wall"), ("epoch_seconds", "epochs"), ("epochs", "n"))
    }
    return {
        "partition": k,
        "rows": data.manifest["partitions"][-1]["rows_kept"],
        "new_items": data.manifest["items"] - first_items,
        "warm_ndcg@10": warm,
        "scratch_ndcg@10": scratch,
        "ndcg_ratio": warm / max(scratch, 1e-12),
        "difference_interval": [low, high],
        "verdict": paired["verdict"],
        "seed_sd": paired["seed_sd"],
        **times,
        "time_ratio": times["warm_seconds"] / max(times["scratch_seconds"], 1e-9),
        "epoch_time_ratio": times["warm_epoch_seconds"] / max(times["scratch_epoch_seconds"], 1e-9),
        **{
            f"new_items_{kind}": {
                key: float(np.mean([r[f"{kind}_new"][key] for r in mine]))
                for key in ("reached", "slots", "interactions", "hit_rate")
            }
            for kind in ("warm", "scratch")
        },
        # The targets over the paired seeds: warm >= 0.98 x scratch with the difference's
        # interval above -0.005, in <= 0.3 x its training time (epochs, without Ray's start).
        "meets_quality": bool(warm >= 0.98 * scratch and low >= -0.005),
        "meets_time": bool(times["warm_epoch_seconds"] <= 0.3 * times["scratch_epoch_seconds"]),
    }


def _summarise(cfg: BenchUpdateConfig, versions: list[DataDir], runs: dict) -> dict:
    first_items = versions[0].manifest["items"]
    days = scratch_days(cfg)
    rows = [
        _partition_row(k, versions[k], [runs[s][i] for s in runs], first_items)
        for i, k in enumerate(days)
    ]
    print_table(
        f"bench update: warm start against from scratch ({cfg.source}, seeds {cfg.seeds})",
        [
            "part",
            "rows",
            "warm",
            "scratch",
            "ratio",
            "warm-scratch 95%",
            "warm s",
            "scratch s",
            "time",
            "epoch time",
            "new items",
            "reached w/s",
            "slots w/s",
            "next rows",
            "hit rate w/s",
        ],
        [
            [
                r["partition"],
                r["rows"],
                f"{r['warm_ndcg@10']:.4f}",
                f"{r['scratch_ndcg@10']:.4f}",
                f"{r['ndcg_ratio']:.3f}",
                "[{:+.4f}, {:+.4f}]".format(*r["difference_interval"]),
                f"{r['warm_seconds']:.0f}",
                f"{r['scratch_seconds']:.0f}",
                f"{r['time_ratio']:.2f}",
                f"{r['epoch_time_ratio']:.2f}",
                r["new_items"],
                *(
                    "{:.3f} / {:.3f}".format(r["new_items_warm"][key], r["new_items_scratch"][key])
                    for key in ("reached", "slots")
                ),
                f"{r['new_items_warm']['interactions']:.3f}",
                "{:.3f} / {:.3f}".format(
                    r["new_items_warm"]["hit_rate"], r["new_items_scratch"]["hit_rate"]
                ),
            ]
            for r in rows
        ],
    )
    return {
        "config": dataclasses.asdict(cfg),
        "cpu": cpu_model(),
        "first_items": first_items,
        "partitions": rows,
    }
