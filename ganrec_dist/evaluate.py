"""`ganrec evaluate`: the GAN, its no-adversarial ablation and the baselines, in one
full-ranking table on the test split (protocol: docs/results.md, *Protocol*).

Every model sees the same train split, excludes each user's train items from ranking, and is
ranked over the whole catalogue. Baseline hyper-parameters are chosen on the validation split
carved out of train (the rule and fraction the run itself validated with), then refitted on all
of train; the test split is read only to compute the final numbers. The GAN is evaluated through
the FAISS retrieval path.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from ganrec_dist.baselines import BASELINES, Baseline
from ganrec_dist.companions import ablation_run, sasrec_run
from ganrec_dist.config import EvaluateConfig, TrainConfig, build
from ganrec_dist.errors import UserError
from ganrec_dist.interactions import Sequences, validation_limits
from ganrec_dist.layout import DataDir, RunDir
from ganrec_dist.logs import print_table
from ganrec_dist.metrics import beyond_accuracy, ranking_metrics
from ganrec_dist.recommender import Recommender
from ganrec_dist.resume import stored_config
from ganrec_dist.sampling import MAX_SAMPLES
from ganrec_dist.validation import sample_users, validation_truth, validation_users

log = logging.getLogger(__name__)

COLUMNS = [
    "ndcg@10",
    "recall@10",
    "precision@10",
    "hit@10",
    "mrr@10",
    "ndcg@20",
    "recall@20",
    "coverage@10",
    "diversity@10",
    "novelty@10",
]


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
    name: str, baseline: Baseline, cfg: EvaluateConfig, split: dict[str, Any]
) -> tuple[dict, dict[str, float]]:
    """The grid point with the best validation NDCG@10; and every point's score."""
    grid = baseline.grid(cfg)
    if len(grid) == 1:
        return grid[0], {}
    varying = [key for key in grid[0] if len({str(p[key]) for p in grid}) > 1] or list(grid[0])
    scores = []
    for params in grid:
        model = baseline.fit(split["fit"], params, cfg)
        recs = baseline.recommend(model, split["fit"], split["val_users"], 10)
        scores.append(ranking_metrics(recs, split["val_truth"], [10])["ndcg@10"])
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


def _splits(cfg: EvaluateConfig, data: DataDir, run: RunDir) -> dict[str, Any]:
    """Train, test and the validation carve of train (the fraction the run validated with)."""
    seq, test = data.sequences("train"), data.sequences("test")
    trained = build(TrainConfig, stored_config(run) or {})
    fit_limits = validation_limits(seq, trained.dataset.val_fraction)
    users, truth = _test_users(cfg, test)
    val_users, val_truth = _validation_users(cfg, seq, fit_limits)
    return {
        "seq": seq,
        "train": seq.matrix(),
        "truth": truth,
        "users": users,
        "users_with_test_items": int((test.lengths > 0).sum()),
        "fit": seq.matrix(fit_limits),
        "val_truth": val_truth,
        "val_users": val_users,
        "val_fraction": trained.dataset.val_fraction,
    }


def _table(recs: dict[str, np.ndarray], params: dict[str, dict], split: dict, ks: list[int]):
    models: dict[str, Any] = {}
    for name, r in recs.items():
        models[name] = {
            **ranking_metrics(r, split["truth"], ks),
            **beyond_accuracy(r[split["users"]], split["train"], ks),
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
    ks = sorted(int(k) for k in cfg.ks.split(","))
    split = _splits(cfg, data, run)
    if not 0 <= cfg.samples <= MAX_SAMPLES:
        raise UserError(f"--samples must be in 0..{MAX_SAMPLES}, got {cfg.samples}")
    frontier_samples = _frontier_samples(cfg.frontier_samples)
    recs: dict[str, np.ndarray] = {}
    params: dict[str, dict] = {}
    validation: dict[str, dict] = {}
    fitted: dict[str, Any] = {}
    for name, baseline in BASELINES.items():
        reason = baseline.skip(cfg, split["seq"].n_items)
        if reason:
            log.warning("%s skipped: %s", name, reason)
            continue
        params[name], scores = tune(name, baseline, cfg, split)
        if scores:
            validation[name] = scores
        model = baseline.fit(split["train"], params[name], cfg)
        fitted[name] = model
        recs[name] = baseline.recommend(model, split["train"], split["users"], max(ks))
    n_users = split["seq"].n_users
    generators = {"gan": run.uri}
    recs["gan"], params["gan"] = gan_recommend(
        run.uri, n_users, split["users"], max(ks), samples=cfg.samples
    )
    if cfg.ablation:
        generators["gan_ablation"] = ablation = ablation_run(cfg, run)
        # The ablation is the same model and inference: the GAN row's number of samples.
        recs["gan_ablation"], params["gan_ablation"] = gan_recommend(
            ablation, n_users, split["users"], max(ks), samples=params["gan"]["samples"]
        )
    if cfg.sasrec:
        # SASRec is a generator too (history -> a vector in its item space): the same retrieval
        # path, the same exclusion of seen items.
        sasrec = sasrec_run(cfg, run)
        recs["sasrec"], params["sasrec"] = gan_recommend(sasrec, n_users, split["users"], max(ks))
    result = _result(
        cfg,
        data=data,
        split=split,
        models=_table(recs, params, split, ks),
        validation=validation,
        ks=ks,
    )
    if cfg.diversity:
        from ganrec_dist.diversity import diversity_section, write_frontier

        ease = ("ease", BASELINES["ease"], fitted["ease"]) if "ease" in fitted else None
        result["diversity"] = diversity_section(
            split,
            generators,
            ease=ease,
            chosen=params["gan"]["samples"],
            frontier_samples=frontier_samples,
        )
        write_frontier(run, result["diversity"], f"{result['source']}, test")
    if cfg.cold_start:
        from ganrec_dist.coldstart import cold_start

        result["cold_start"] = cold_start(cfg, run, params)
    result["seconds"] = round(time.time() - start, 1)
    run.write_eval(result)
    return result


def _result(
    cfg: EvaluateConfig,
    *,
    data: DataDir,
    split: dict,
    models: dict,
    validation: dict,
    ks: list[int],
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "k": ks,
        "models": models,
        "split": {
            "test": f"per user, temporal, last ceil({data.test_fraction} n) (DATA/manifest.json)",
            "validation": f"the same rule applied to train, fraction {split['val_fraction']}; "
            "used for every model's hyper-parameters",
        },
        "users_evaluated": int(len(split["users"])),
        "users_with_test_items": split["users_with_test_items"],
        "n_items": int(split["seq"].n_items),
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


def print_results(result: dict) -> None:
    rows = [[name] + [round(m[c], 4) for c in COLUMNS] for name, m in result["models"].items()]
    users = f"{result['users_evaluated']} users"
    if result["users_evaluated"] < result["users_with_test_items"]:
        users += f" (a seeded sample of the {result['users_with_test_items']} with test items)"
    print_table(
        f"full-ranking evaluation on {result['source']}: {users}, {result['n_items']} items",
        ["model"] + COLUMNS,
        rows,
    )
    if "diversity" in result:
        from ganrec_dist.diversity import print_diversity

        print_diversity(result["diversity"])
    if "cold_start" in result:
        from ganrec_dist.coldstart import print_cold_start

        print_cold_start(result["cold_start"])
