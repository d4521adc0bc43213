"""`ganrec evaluate`: the GAN, its no-adversarial ablation and the baselines, in one
full-ranking table on the test split (protocol: docs/results.md, *Protocol*).

Every model sees the same train split, excludes each user's train items from ranking, and is
ranked over the whole catalogue. Baseline hyper-parameters are chosen on the validation split
carved out of train (the rule and fraction the run itself validated with), then refitted on all
of train; the test split is read only to compute the final numbers. The GAN is evaluated through
the FAISS retrieval path.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from ganrec_dist.core.config import EvaluateConfig, TrainConfig, build
from ganrec_dist.core.errors import UserError
from ganrec_dist.core.logs import print_table
from ganrec_dist.data.interactions import Sequences, validation_limits
from ganrec_dist.data.layout import DataDir, RunDir
from ganrec_dist.evaluation.baselines import BASELINES, Baseline
from ganrec_dist.evaluation.companions import train_companions
from ganrec_dist.model.sampling import MAX_SAMPLES
from ganrec_dist.retrieval.metrics import beyond_accuracy, ranking_metrics
from ganrec_dist.retrieval.recommender import Recommender
from ganrec_dist.training.validation import sample_users, validation_truth, validation_users

log = logging.getLogger(__name__)

HEADLINE_K = 10  # the protocol's cut-off: tuning, the ratios, diversity and cold start use it


def cutoffs(text: str) -> list[int]:
    """``--ks``: the cut-offs asked for, and always the headline 10."""
    try:
        asked = {int(k) for k in text.split(",") if k.strip()}
    except ValueError:
        raise UserError(f"--ks {text!r}: expected integers, e.g. 10,20") from None
    if not asked or min(asked) < 1:
        raise UserError(f"--ks {text!r}: each cut-off at least 1")
    return sorted(asked | {HEADLINE_K})


def columns(ks: list[int]) -> list[str]:
    """The printed table: every metric at 10, NDCG and recall at the other cut-offs, then
    coverage, diversity and novelty at 10."""
    head = [f"{m}@{HEADLINE_K}" for m in ("ndcg", "recall", "precision", "hit", "mrr")]
    others = [f"{m}@{k}" for k in ks if k != HEADLINE_K for m in ("ndcg", "recall")]
    return head + others + [f"{m}@{HEADLINE_K}" for m in ("coverage", "diversity", "novelty")]


def gan_recommend(
    run: str, n_users: int, users: np.ndarray, k: int, samples: int = 0
) -> tuple[np.ndarray, dict]:
    """The GAN's top-k through the retrieval path, each user's train items excluded, from
    ``samples`` draws a user (0: the run's own setting); and its parameters for the table."""
    rec = Recommender(run)
    samples = samples or rec.samples
    out = np.full((n_users, k), -1, dtype=np.int64)
    for start in range(0, len(users), 2048):
        u = users[start : start + 2048]
        out[u], _ = rec.recommend_known(u, k, samples=samples)
    params = {
        "version": rec.version,
        "adv_weight": rec.meta["adv_weight"],
        "best_epoch": rec.meta["best_epoch"],
        "samples": samples,
    }
    if samples > 1:
        params["merge"] = rec.merge
    return out, params


def tune(
    name: str, baseline: Baseline, cfg: EvaluateConfig, split: Split
) -> tuple[dict, dict[str, float]]:
    """The grid point with the best validation NDCG@10; and every point's score."""
    grid = baseline.grid(cfg)
    if len(grid) == 1:
        return grid[0], {}
    varying = [key for key in grid[0] if len({str(p[key]) for p in grid}) > 1] or list(grid[0])
    scores = []
    for params in grid:
        model = baseline.fit(split.fit, params, cfg)
        recs = baseline.recommend(model, split.fit, split.val_users, 10)
        scores.append(ranking_metrics(recs, split.val_truth, [10])["ndcg@10"])
        log.info("%s %s: validation NDCG@10 %.4f", name, _label(params, varying), scores[-1])
    best = max(range(len(grid)), key=lambda i: scores[i])
    return grid[best], {_label(p, varying): v for p, v in zip(grid, scores)}


def _label(params: dict, keys: list[str]) -> str:
    return ", ".join(f"{key}={params[key]}" for key in keys)


def _test_users(cfg: EvaluateConfig, test: Sequences) -> tuple[np.ndarray, sp.csr_matrix]:
    """The users scored (all with test items, or a seeded sample of ``max_users``) and their
    test items ``[n_users, n_items]`` (the other users' rows empty)."""
    users = np.flatnonzero(test.lengths > 0)
    truth = test.matrix()
    if cfg.max_users and len(users) > cfg.max_users:
        rng = np.random.default_rng(cfg.seed)
        users = np.sort(rng.choice(users, cfg.max_users, replace=False))
        keep = np.zeros(test.n_users)
        keep[users] = 1.0
        truth = (sp.diags(keep) @ truth).tocsr()
        truth.eliminate_zeros()
    return users, truth


def _validation_users(
    cfg: EvaluateConfig, seq: Sequences, fit_limits: np.ndarray
) -> tuple[np.ndarray, sp.csr_matrix]:
    """The users the baselines are tuned on (all with validation rows, or a seeded sample of
    ``max_users``, as for the test) and their validation rows."""
    users = sample_users(validation_users(seq, fit_limits), cfg.max_users, cfg.seed)
    return users, validation_truth(seq, fit_limits, users)


@dataclasses.dataclass(frozen=True)
class Split:
    """What every model of the table is fitted, tuned and judged on.

    ``train`` ``[users, items]`` (of ``seq``) and the test rows ``truth`` of the scored
    ``users``; for tuning, ``fit`` (train without its validation carve, the fraction
    ``val_fraction`` the run validated with) and the validation rows ``val_truth`` of
    ``val_users``.
    """

    seq: Sequences
    train: sp.csr_matrix
    truth: sp.csr_matrix
    users: np.ndarray
    users_with_test_items: int
    fit: sp.csr_matrix
    val_truth: sp.csr_matrix
    val_users: np.ndarray
    val_fraction: float


def _splits(cfg: EvaluateConfig, data: DataDir, run: RunDir) -> Split:
    """Train, test and the validation carve of train (the fraction the run validated with)."""
    seq, test = data.sequences("train"), data.sequences("test")
    trained = build(TrainConfig, run.stored_config() or {})
    fit_limits = validation_limits(seq, trained.dataset.val_fraction)
    users, truth = _test_users(cfg, test)
    val_users, val_truth = _validation_users(cfg, seq, fit_limits)
    return Split(
        seq=seq,
        train=seq.matrix(),
        truth=truth,
        users=users,
        users_with_test_items=int((test.lengths > 0).sum()),
        fit=seq.matrix(fit_limits),
        val_truth=val_truth,
        val_users=val_users,
        val_fraction=trained.dataset.val_fraction,
    )


def _table(recs: dict[str, np.ndarray], params: dict[str, dict], split: Split, ks: list[int]):
    models: dict[str, Any] = {}
    for name, r in recs.items():
        models[name] = {
            **ranking_metrics(r, split.truth, ks),
            **beyond_accuracy(r[split.users], split.train, ks),
            "params": params[name],
        }
    return models


def evaluate(cfg: EvaluateConfig) -> dict:
    """`ganrec evaluate`: the table, printed and written to RUN/eval.json."""
    result = evaluate_models(cfg)
    print_results(result)
    return result


def evaluate_models(cfg: EvaluateConfig) -> dict:
    """Every model of the table on the test split; writes RUN/eval.json and returns it."""
    start = time.time()
    data, run = DataDir(cfg.data), RunDir.open(cfg.run)
    run.meta()  # one line if RUN holds no trained checkpoint
    ks = cutoffs(cfg.ks)
    split = _splits(cfg, data, run)
    if not 0 <= cfg.samples <= MAX_SAMPLES:
        raise UserError(f"--samples must be in 0..{MAX_SAMPLES}, got {cfg.samples}")
    frontier_samples = _frontier_samples(cfg.frontier_samples)
    if cfg.cold_items:  # refused before any training, not after
        from ganrec_dist.evaluation.colditems import held_out

        held_out(cfg, data)
    companions = train_companions(cfg, run)  # first, and on their own: then the table
    recs: dict[str, np.ndarray] = {}
    params: dict[str, dict] = {}
    validation: dict[str, dict] = {}
    fitted: dict[str, Any] = {}
    for name, baseline in BASELINES.items():
        reason = baseline.skip(cfg, split.seq.n_items)
        if reason:
            log.warning("%s skipped: %s", name, reason)
            continue
        params[name], scores = tune(name, baseline, cfg, split)
        if scores:
            validation[name] = scores
        model = baseline.fit(split.train, params[name], cfg)
        fitted[name] = model
        recs[name] = baseline.recommend(model, split.train, split.users, max(ks))
    n_users = split.seq.n_users
    generators = {"gan": run.uri}
    recs["gan"], params["gan"] = gan_recommend(
        run.uri, n_users, split.users, max(ks), samples=cfg.samples
    )
    if "gan_ablation" in companions:
        generators["gan_ablation"] = ablation = companions["gan_ablation"]["run"]
        # The ablation is the same model and inference: the GAN row's number of samples.
        recs["gan_ablation"], params["gan_ablation"] = gan_recommend(
            ablation, n_users, split.users, max(ks), samples=params["gan"]["samples"]
        )
    if "sasrec" in companions:
        # SASRec is a generator too (history -> a vector in its item space): the same retrieval
        # path, the same exclusion of seen items.
        sasrec = companions["sasrec"]["run"]
        recs["sasrec"], params["sasrec"] = gan_recommend(sasrec, n_users, split.users, max(ks))
    result = _result(
        cfg,
        data=data,
        split=split,
        models=_table(recs, params, split, ks),
        validation=validation,
        ks=ks,
    )
    if cfg.diversity:
        from ganrec_dist.evaluation.diversity import diversity_section, write_frontier

        ease = ("ease", BASELINES["ease"], fitted["ease"]) if "ease" in fitted else None
        result["diversity"] = diversity_section(
            split,
            generators,
            ease=ease,
            chosen=params["gan"]["samples"],
            frontier_samples=frontier_samples,
        )
        write_frontier(run, result["diversity"], f"{result['source']}, test")
    result["companions"] = companions
    if cfg.cold_start:
        from ganrec_dist.evaluation.coldstart import cold_start

        result["cold_start"] = cold_start(cfg, run, params)
    if cfg.cold_items:
        from ganrec_dist.evaluation.colditems import cold_items

        result["cold_items"] = cold_items(cfg, run)
    result["seconds"] = round(time.time() - start, 1)
    run.write_eval(result)
    return result


def _result(
    cfg: EvaluateConfig,
    *,
    data: DataDir,
    split: Split,
    models: dict,
    validation: dict,
    ks: list[int],
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "k": ks,
        "models": models,
        "split": {
            "test": f"per user, temporal, last ceil({data.test_fraction} n) (DATA/manifest.json)",
            "validation": f"the same rule applied to train, fraction {split.val_fraction}; "
            "used for every model's hyper-parameters",
        },
        "users_evaluated": int(len(split.users)),
        "users_with_test_items": split.users_with_test_items,
        "n_items": int(split.seq.n_items),
        "data": str(cfg.data),
        "source": data.manifest["source"],
        "validation_ndcg@10": validation,
    }
    if "sasrec" in models:
        result["gan_vs_sasrec_ndcg@10"] = models["gan"]["ndcg@10"] / models["sasrec"]["ndcg@10"]
    if "ease" in models:
        result["gan_vs_ease_ndcg@10"] = models["gan"]["ndcg@10"] / models["ease"]["ndcg@10"]
    return result


def _frontier_samples(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UserError(f"--frontier_samples {text!r}: expected integers, e.g. 1,2,4,8") from None
    if not values or not all(1 <= v <= MAX_SAMPLES for v in values):
        raise UserError(f"--frontier_samples {text!r}: each in 1..{MAX_SAMPLES}")
    return values


def _companion_cost(outcome: dict) -> str:
    return f"trained in {outcome['seconds']:.0f} s" if outcome["trained"] else "reused"


def print_results(result: dict) -> None:
    shown = columns(result["k"])
    rows = [[name] + [round(m[c], 4) for c in shown] for name, m in result["models"].items()]
    users = f"{result['users_evaluated']} users"
    if result["users_evaluated"] < result["users_with_test_items"]:
        users += f" (a seeded sample of the {result['users_with_test_items']} with test items)"
    print_table(
        f"full-ranking evaluation on {result['source']}: {users}, {result['n_items']} items",
        ["model"] + shown,
        rows,
    )
    if result.get("companions"):
        done = [
            f"{name} {_companion_cost(c)} ({c['run']})" for name, c in result["companions"].items()
        ]
        print("models trained beside the run: " + "; ".join(done))
    if "diversity" in result:
        from ganrec_dist.evaluation.diversity import print_diversity

        print_diversity(result["diversity"])
    if "cold_start" in result:
        from ganrec_dist.evaluation.coldstart import print_cold_start

        print_cold_start(result["cold_start"])
    if "cold_items" in result:
        from ganrec_dist.evaluation.colditems import print_cold_items

        print_cold_items(result["cold_items"])
