"""`ganrec evaluate --cold_items true`: items nobody has touched, recommended from their content.

A seeded ``--cold_item_fraction`` of the items that occur in train (and have content) is cold,
or with ``--cold_item_split time`` the items first seen after the time by which 1 - fraction of
the log had happened (new SKUs); either way split 1:1 into validation and test items (GAR's
protocol). A copy of DATA without any of their
rows (``RUN/cold_items/data``: the same id maps) trains the GAN with the run's settings; the
content tower is fitted on the warm items against that frozen model, both ways
(``training.tower``: ``regress``, the ablation, and ``gar``). The run itself, trained with those
items, is the ceiling. Every row is judged on the same truth, the test split's rows on test-cold
items, every train item excluded:

- cold: only the test-cold items are ranked, NDCG and Recall at 10 and 20, hit rate at 10;
- warm: only the warm items are ranked (the test rows on them; the cold model's and the
  ceiling's rows, the towers change no warm row), NDCG at 10 and 20;
- hybrid: every item but the validation-cold ones, learned rows for warm items beside generated
  rows for cold ones (scaled by the factor with the best hybrid NDCG@10 on the validation-cold
  items: generated vectors are not on the learned rows' scale); truth the test rows on warm and
  test-cold items; NDCG at 10 and 20 and the share of test-cold items in anyone's top 10
  (exposure).

Rows: random, content-kNN (a cold item scored by the cosine of its content to the mean content of
the user's history), no generated rows (the cold model's untrained rows), the two towers, the
ceiling.

Items in between (``in_between``; rows ``rare_*``): the warm items of the copy with 1 to
``RARE_MAX`` train interactions and content, split 1:1 into validation and test items the same
way, are ranked among their half (NDCG@20 on the test split's rows on them, train items
excluded) with their learned rows (``rare_learned``), the ``regress`` tower's rows
(``rare_generated``), or a blend by interaction count ``c``: ``w * learned + (1 - w) * scale *
generated``, ``w = c / (c + m)``, with ``m`` and the scale chosen on the validation half
(``rare_blend``). What `train --cold_item_min` should be follows from which wins.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from ganrec_dist.core.config import EvaluateConfig
from ganrec_dist.core.errors import UserError
from ganrec_dist.core.logs import print_table
from ganrec_dist.data.content import Content
from ganrec_dist.data.layout import DataDir, RunDir
from ganrec_dist.evaluation.coldstart import write_without
from ganrec_dist.evaluation.companions import companion_run
from ganrec_dist.model.content import ContentTower
from ganrec_dist.retrieval.metrics import ranking_metrics
from ganrec_dist.training import tower as towers

log = logging.getLogger(__name__)

SCALES = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
COLUMNS = (
    "cold_ndcg@20",
    "cold_recall@20",
    "cold_hit@10",
    "hybrid_ndcg@10",
    "hybrid_ndcg@20",
    "exposure@10",
    "warm_ndcg@20",
    "rare_ndcg@20",
)
RARE_MAX = towers.IN_BETWEEN  # "in between": 1..RARE_MAX train interactions
BLENDS = (1.0, 3.0, 10.0)  # m of the blend's weight c / (c + m)


SPLITS = ("random", "time")


def pick_items(data: DataDir, has_content: np.ndarray, cfg: EvaluateConfig):
    """The cold items as (validation, test) halves, drawn at random by a seed: ``random``, a
    seeded ``--cold_item_fraction`` of the items in train with content; ``time``, the items
    with content first seen after the time by which ``1 - fraction`` of the log had happened
    (new SKUs, the realistic case)."""
    fraction, seed = cfg.cold_item_fraction, cfg.seed
    if cfg.cold_item_split not in SPLITS:
        raise UserError(f"--cold_item_split {cfg.cold_item_split!r}: expected random or time")
    train_items = data.read("train", ["item_idx"])["item_idx"].to_numpy()
    in_train = np.zeros(len(has_content), bool)
    in_train[train_items] = True
    if cfg.cold_item_split == "random":
        eligible = np.flatnonzero(in_train & has_content)
        n = int(round(fraction * len(eligible)))
        cold = np.random.default_rng([seed, 28]).choice(eligible, n, replace=False)
    else:
        rows = pa.concat_tables(data.read(s, ["item_idx", "timestamp"]) for s in ("train", "test"))
        items, times = rows["item_idx"].to_numpy(), rows["timestamp"].to_numpy()
        first = np.full(len(has_content), np.iinfo(np.int64).max)
        np.minimum.at(first, items, times)
        cut = np.quantile(times, 1.0 - fraction)
        cold = np.flatnonzero((first > cut) & (first < np.iinfo(np.int64).max) & has_content)
        cold = np.random.default_rng([seed, 28]).permutation(cold)
        n = len(cold)
    if n < 2:
        raise UserError(
            f"--cold_item_fraction {fraction} ({cfg.cold_item_split}): fewer than 2 items with "
            "content are held out"
        )
    return np.sort(cold[: n // 2]), np.sort(cold[n // 2 :])


def held_out(cfg: EvaluateConfig, data: DataDir) -> tuple[Content, tuple[np.ndarray, np.ndarray]]:
    """DATA's content and its (validation, test) cold items; one line if there are none."""
    content = data.content()
    if content is None:
        raise UserError(f"{data}: --cold_items needs item content (prepare --item_content FILE)")
    has_content = content.has_content
    return content, pick_items(data, has_content, cfg)


def content_matrix(content: Content) -> sp.csr_matrix:
    """Each item's content as one L2-normalised sparse row (one-hot ids, numerics, vectors,
    each block normalised first): what content-kNN compares."""
    arrays = content.batch(np.arange(content.n_items))
    n, blocks = content.n_items, []
    for f in content.features:
        if f.slots:
            ids = arrays[f"ids_{f.name}"]
            r, c = np.nonzero(ids)
            blocks.append(sp.csr_matrix((np.ones(len(r)), (r, ids[r, c])), (n, f.ids)))
        elif f.type == "vector":
            blocks.append(sp.csr_matrix(arrays[f"vector_{f.name}"]))
    if "numeric" in arrays:
        blocks.append(sp.csr_matrix(arrays["numeric"]))
    return _normalised(sp.hstack([_normalised(b) for b in blocks]).tocsr())


def _normalised(m: sp.spmatrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1))).ravel()
    return (sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m).tocsr()


def top(scores: np.ndarray, exclude: sp.csr_matrix, k: int, drop: np.ndarray) -> np.ndarray:
    """Each row's best ``k`` columns (-1 past the candidates), ``exclude``'s entries and the
    columns ``drop`` left out."""
    scores = np.array(scores, dtype=np.float64)
    r, c = exclude.nonzero()
    scores[r, c] = -np.inf
    scores[:, drop] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(scores, order, 1) > -np.inf, order, -1)


@dataclasses.dataclass
class Judge:
    """The truths every row is judged on, built once."""

    seen: sp.csr_matrix  # [users, items] train items, excluded everywhere
    cold: np.ndarray  # every cold item
    val_cold: np.ndarray
    test_cold: np.ndarray
    users: np.ndarray  # users with test rows on test-cold items
    truth_cold: sp.csr_matrix  # [users, test_cold]
    hybrid: tuple[np.ndarray, sp.csr_matrix]  # users, truth over items (warm + test-cold)
    val_hybrid: tuple[np.ndarray, sp.csr_matrix]  # the same with validation-cold items
    warm: tuple[np.ndarray, sp.csr_matrix]  # users, truth over warm items only

    def cold_row(self, scores: np.ndarray) -> dict[str, float]:
        """``scores`` ``[users, test_cold]`` -> the cold setting's metrics."""
        recs = top(scores, self.seen[self.users][:, self.test_cold], 20, np.zeros(0, int))
        m = ranking_metrics(recs, self.truth_cold, [10, 20])
        return {
            "cold_ndcg@10": m["ndcg@10"],
            "cold_ndcg@20": m["ndcg@20"],
            "cold_recall@20": m["recall@20"],
            "cold_hit@10": m["hit@10"],
        }

    def hybrid_row(self, vectors: np.ndarray, rows: np.ndarray, val: bool = False) -> dict:
        """User ``vectors`` against item ``rows`` over every item but the other half of the
        cold items: hybrid NDCG@10 and the exposure of this half."""
        users, truth = self.val_hybrid if val else self.hybrid
        drop, shown = (self.test_cold, self.val_cold) if val else (self.val_cold, self.test_cold)
        recs = top(vectors[users] @ rows.T, self.seen[users], 20, drop)
        m = ranking_metrics(recs, truth[users], [10, 20])
        first = recs[:, :10]
        return {
            "hybrid_ndcg@10": m["ndcg@10"],
            "hybrid_ndcg@20": m["ndcg@20"],
            "exposure@10": float(np.isin(shown, first[first >= 0]).mean()),
        }

    def every_setting(self, vectors: np.ndarray, rows: np.ndarray) -> dict:
        """The cold, hybrid and warm settings of a model's own rows, unscaled."""
        return {
            **self.cold_row(vectors[self.users] @ rows[self.test_cold].T),
            **self.hybrid_row(vectors, rows),
            **self.warm_row(vectors, rows),
        }

    def warm_row(self, vectors: np.ndarray, rows: np.ndarray) -> dict:
        """GAR's warm setting: only the warm items ranked, truth the test rows on them."""
        users, truth = self.warm
        recs = top(vectors[users] @ rows.T, self.seen[users], 20, self.cold)
        m = ranking_metrics(recs, truth[users], [10, 20])
        return {"warm_ndcg@10": m["ndcg@10"], "warm_ndcg@20": m["ndcg@20"]}

    def scaled(self, vectors: np.ndarray, rows: np.ndarray) -> tuple[float, dict]:
        """The scale of the cold items' rows with the best validation hybrid NDCG@10, and the
        test hybrid row at that scale."""
        best = max(
            SCALES,
            key=lambda s: self.hybrid_row(vectors, _scale(rows, self.cold, s), True)[
                "hybrid_ndcg@10"
            ],
        )
        return best, self.hybrid_row(vectors, _scale(rows, self.cold, best))


def _scale(rows: np.ndarray, items: np.ndarray, scale: float) -> np.ndarray:
    out = rows.copy()
    out[items] *= scale
    return out


def _truth(users: np.ndarray, items: np.ndarray, keep: np.ndarray, shape: tuple) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(int(keep.sum())), (users[keep], items[keep])), shape)
    m.data[:] = 1
    return m


def judge_for(data: DataDir, val_cold: np.ndarray, test_cold: np.ndarray) -> Judge:
    n_users, n_items = data.manifest["users"], data.manifest["items"]
    train, test = (
        data.read("train", ["user_idx", "item_idx"]),
        data.read("test", ["user_idx", "item_idx"]),
    )
    tu, ti = (train[c].to_numpy().astype(np.int64) for c in ("user_idx", "item_idx"))
    su, si = (test[c].to_numpy().astype(np.int64) for c in ("user_idx", "item_idx"))
    seen = _truth(tu, ti, np.ones(len(tu), bool), (n_users, n_items))
    cold = np.union1d(val_cold, test_cold)
    warm = np.ones(n_items, bool)
    warm[cold] = False
    on_test_cold, on_val_cold = np.isin(si, test_cold), np.isin(si, val_cold)
    truth_all = _truth(su, si, on_test_cold, (n_users, n_items))
    users = np.flatnonzero(truth_all.getnnz(axis=1) > 0)

    def with_users(keep: np.ndarray) -> tuple[np.ndarray, sp.csr_matrix]:
        truth = _truth(su, si, keep, (n_users, n_items))
        return np.flatnonzero(truth.getnnz(axis=1) > 0), truth

    return Judge(
        seen=seen,
        cold=cold,
        val_cold=val_cold,
        test_cold=test_cold,
        users=users,
        truth_cold=truth_all[users][:, test_cold],
        hybrid=with_users(warm[si] | on_test_cold),
        val_hybrid=with_users(warm[si] | on_val_cold),
        warm=with_users(warm[si]),
    )


def user_vectors(rec: Any) -> np.ndarray:
    users = np.arange(rec.model_config.n_users)
    histories, _ = rec.known_inputs(users)
    return rec.vectors(histories, users)


def cold_items(cfg: EvaluateConfig, run: RunDir) -> dict[str, Any]:
    """The cold-item table (see the module docstring)."""
    from ganrec_dist.retrieval.recommender import Recommender

    if run.is_uri:
        raise UserError("--cold_items needs a local RUN directory (its DATA copy is written there)")
    start = time.time()
    data = DataDir(cfg.data)
    content, (val_cold, test_cold) = held_out(cfg, data)
    judge = judge_for(data, val_cold, test_cold)
    log.info(
        "cold items: %d held out of a copy of %s (%d validation, %d test; %d users judged)",
        len(judge.cold),
        data,
        len(val_cold),
        len(test_cold),
        len(judge.users),
    )
    here = f"{RunDir.COLD_ITEMS}/{cfg.cold_item_split}"
    copy = write_without(
        data, judge.cold, run.local / here / "data", column="item_idx", key="cold_items"
    )
    tick = time.time()
    target = run.companion(f"{here}/gan")
    outcome = companion_run(dataclasses.replace(cfg, data=copy.root), run, target, "cold-items-gan")
    seconds = {"gan": round(time.time() - tick, 1)}
    cold_rec, ceiling = Recommender(outcome["run"]), Recommender(run.uri)
    vectors, ceiling_vectors = user_vectors(cold_rec), user_vectors(ceiling)
    rows = cold_rec.embeddings
    table: dict[str, dict[str, float]] = {}
    rng = np.random.default_rng([cfg.seed, 5])
    table["random"] = judge.cold_row(rng.random((len(judge.users), len(test_cold))))
    cm = content_matrix(content)
    warm_history = judge.seen.multiply(~np.isin(np.arange(content.n_items), judge.cold)[None, :])
    profile = _normalised(sp.csr_matrix(warm_history @ cm))
    table["content_knn"] = judge.cold_row((profile[judge.users] @ cm[test_cold].T).toarray())
    table["no_generated_rows"] = judge.every_setting(vectors, rows)  # its warm: the towers' too
    copy_train = copy.read("train", ["user_idx", "item_idx"])
    pairs = tuple(copy_train[c].to_numpy().astype(np.int64) for c in ("user_idx", "item_idx"))
    for objective in towers.OBJECTIVES:
        tick = time.time()
        net = ContentTower(data.manifest["content"]["features"], dim=cold_rec.model_config.dim)
        settings = towers.TowerSettings(objective=objective, epochs=cfg.tower_epochs, seed=cfg.seed)
        towers.fit(
            net, content, pairs=pairs, user_vectors=vectors, item_rows=rows, settings=settings
        )
        generated = rows.copy()
        generated[judge.cold] = towers.generate(net, content, judge.cold)
        scale, hybrid = judge.scaled(vectors, generated)
        table[f"tower_{objective}"] = {
            **judge.cold_row(vectors[judge.users] @ generated[test_cold].T),
            **hybrid,
            "scale": scale,
        }
        seconds[f"tower_{objective}"] = round(time.time() - tick, 1)
        if objective == "regress":  # the in-between items' rule, with the default objective
            rare = rare_items(judge, copy, content, seed=cfg.seed)
            made = towers.generate(net, content, rare.items)
            between = in_between(rare, rows=rows, generated=made, vectors=vectors, seen=judge.seen)
            table.update(between.pop("rows"))
    table["ceiling"] = judge.every_setting(ceiling_vectors, ceiling.embeddings)
    return {
        "cold_items": int(len(judge.cold)),
        "validation_items": int(len(val_cold)),
        "test_items": int(len(test_cold)),
        "users": int(len(judge.users)),
        "fraction": cfg.cold_item_fraction,
        "split": cfg.cold_item_split,
        "truth": "the test split's rows on test-cold items; every train item excluded",
        "models": table,
        "in_between": between,
        "training_seconds": seconds,
        "seconds": round(time.time() - start, 1),
    }


@dataclasses.dataclass
class Rare:
    """The in-between items of the cold model's DATA copy, halved like the cold items."""

    items: np.ndarray  # every in-between item (validation half first)
    counts: np.ndarray  # their train interactions in the copy
    halves: tuple[tuple[np.ndarray, np.ndarray, sp.csr_matrix], ...]  # (items, users, truth)


def rare_items(judge: Judge, copy: DataDir, content: Content, *, seed: int) -> Rare:
    """Warm items with 1..RARE_MAX train interactions in ``copy`` and content, halved by seed
    into (validation, test), each with its users and their test rows on its items."""
    train = copy.read("train", ["item_idx"])["item_idx"].to_numpy()
    counts = np.bincount(train, minlength=content.n_items)
    has = content.has_content
    rare = np.flatnonzero((counts >= 1) & (counts <= RARE_MAX) & has)
    rare = np.random.default_rng([seed, 29]).permutation(rare[~np.isin(rare, judge.cold)])
    test = copy.read("test", ["user_idx", "item_idx"])
    su, si = (test[c].to_numpy().astype(np.int64) for c in ("user_idx", "item_idx"))
    halves = []
    for items in (rare[: len(rare) // 2], rare[len(rare) // 2 :]):
        truth = _truth(su, si, np.isin(si, items), judge.seen.shape)
        users = np.flatnonzero(truth.getnnz(axis=1) > 0)
        halves.append((items, users, truth[users][:, items]))
    return Rare(rare, counts[rare], tuple(halves))


def in_between(
    rare: Rare,
    *,
    rows: np.ndarray,
    generated: np.ndarray,
    vectors: np.ndarray,
    seen: sp.csr_matrix,
) -> dict[str, Any]:
    """Learned, generated and blended rows of the in-between items, ranked among their half;
    the blend's ``m`` and scale chosen on the validation half (see the module docstring)."""
    described: dict[str, Any] = {
        "max_count": RARE_MAX,
        "validation_items": int(len(rare.halves[0][0])),
        "test_items": int(len(rare.halves[1][0])),
        "users": int(len(rare.halves[1][1])),
    }
    if not (len(rare.halves[0][1]) and len(rare.halves[1][1])):
        return {**described, "chosen": None, "rows": {}}  # no test rows on them to judge by
    made = dict(zip(rare.items.tolist(), generated))
    count = dict(zip(rare.items.tolist(), rare.counts.tolist()))

    def ndcg(half: int, m: float, scale: float) -> float:
        items, users, truth = rare.halves[half]
        made_rows = np.stack([made[i] for i in items])
        if m == 0:
            mixed = rows[items]
        elif m == np.inf:
            mixed = made_rows
        else:
            counts = np.array([count[i] for i in items])
            mixed = towers.blend(rows[items], made_rows, counts, m=m, scale=scale)
        recs = top(vectors[users] @ mixed.T, seen[users][:, items], 20, np.zeros(0, int))
        return ranking_metrics(recs, truth, [20])["ndcg@20"]

    grid = {(m, s): ndcg(0, m, s) for m in BLENDS for s in SCALES}
    m, scale = max(grid, key=lambda b: grid[b])
    rules = {"learned": (0.0, 1.0), "generated": (np.inf, 1.0), "blend": (m, scale)}
    validation = {name: ndcg(0, *rule) for name, rule in rules.items()}
    return {
        **described,
        "blend": {"m": m, "scale": scale},
        "validation_ndcg@20": validation,
        "chosen": max(validation, key=lambda name: validation[name]),
        # Every blend's validation value: one setting for train can be chosen over seeds.
        "validation_grid": {f"m={m:g},scale={s:g}": v for (m, s), v in grid.items()},
        "rows": {f"rare_{name}": {"rare_ndcg@20": ndcg(1, *rule)} for name, rule in rules.items()},
    }


def print_cold_items(result: dict[str, Any]) -> None:
    rows = [
        [name] + [round(m[c], 4) if c in m else "" for c in COLUMNS]
        for name, m in result["models"].items()
    ]
    print_table(
        f"cold items: {result['test_items']} test items held out of training "
        f"({result['users']} users; hybrid rows scaled on {result['validation_items']} "
        "validation items)",
        ["model", *COLUMNS],
        rows,
    )
    between = result.get("in_between")
    if between and between["chosen"]:
        print(
            f"in between (1..{between['max_count']} train interactions, "
            f"{between['test_items']} test items, {between['users']} users): "
            f"validation chose {between['chosen']} (blend m={between['blend']['m']}, "
            f"scale {between['blend']['scale']})"
        )
