"""`ganrec evaluate`: the GAN, its no-adversarial ablation and the baselines, in one
full-ranking table on the test split (protocol: ../shared/docs/evaluation.md).

Every model sees the same train split, excludes each user's train items from ranking, and is
ranked over the whole catalogue. Baseline hyper-parameters are chosen on the validation split
carved out of train (the same temporal rule), then refitted on all of train; the test split is
read only to compute the final numbers. The GAN is evaluated through the FAISS retrieval path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ganrec_dist import baselines, storage
from ganrec_dist.bench.common import print_table
from ganrec_dist.config import EvaluateConfig, TrainConfig, build
from ganrec_dist.errors import UserError
from ganrec_dist.interactions import held_out, load_sequences, validation_limits
from ganrec_dist.metrics import beyond_accuracy, ranking_metrics
from ganrec_dist.prepare import read_manifest
from ganrec_dist.recommender import Recommender

log = logging.getLogger(__name__)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def gan_recommend(
    run: str | Path, n_users: int, users: np.ndarray, k: int
) -> tuple[np.ndarray, str]:
    """The GAN's top-k through the retrieval path; each user's train items excluded."""
    rec = Recommender(run)
    out = np.full((n_users, k), -1, dtype=np.int64)
    for start in range(0, len(users), 2048):
        u = users[start : start + 2048]
        out[u], _ = rec.recommend_known(u, k)
    return out, rec.version


def ablation_run(cfg: EvaluateConfig) -> str:
    """Train (or reuse) the same model with adv_weight = 0 under RUN/ablation."""
    from ganrec_dist.train import run_changes, train

    run = storage.open_run(cfg.run)
    target = storage.join(cfg.run, "ablation")
    train_cfg = build(TrainConfig, yaml.safe_load((run / "config.yaml").read_text()))
    # The same configuration, index settings included, with the adversarial term switched off.
    ablation = dataclasses.replace(
        train_cfg,
        out=target,
        name=f"{train_cfg.name or storage.basename(cfg.run)}-ablation",
        adv_weight=0.0,
        data=cfg.data,
        address=cfg.address,
        fail_at_epoch=-1,
    )
    local = storage.open_run(target)
    if (local / "config.yaml").exists():
        # Only a run of this configuration is this run's ablation (shared by GANs that differ
        # only in D's settings, which a run without D-steps does not use).
        changes = run_changes(yaml.safe_load((local / "config.yaml").read_text()) or {}, ablation)
        if changes:
            log.warning(
                "the ablation in %s was trained with other settings (%s): training it again",
                target,
                "; ".join(changes),
            )
            storage.remove_tree(target)
            shutil.rmtree(local, ignore_errors=True)
            local = storage.open_run(target)
    meta_path = local / "checkpoint" / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()).get("final"):
        log.info("reusing the ablation in %s", target)
        return target
    log.info("training the ablation (adv_weight = 0) in %s", target)
    train(ablation)
    return target


def evaluate(cfg: EvaluateConfig) -> dict:
    start = time.time()
    manifest = read_manifest(cfg.data)
    run = storage.open_run(cfg.run)
    if not (run / "checkpoint" / "meta.json").exists():
        raise UserError(f"{run}: no trained checkpoint; run ganrec train --out {run} first")
    ks = sorted(int(k) for k in cfg.ks.split(","))
    max_k = max(ks)
    seq = load_sequences(cfg.data, "train")
    test = load_sequences(cfg.data, "test")
    truth = test.matrix()
    users = np.flatnonzero(test.lengths > 0)
    train_matrix = seq.matrix()
    # Validation split for choosing baseline hyper-parameters (never the test split).
    fit_limits = validation_limits(seq, 0.2)
    fit_matrix = seq.matrix(fit_limits)
    val_truth = held_out(seq, fit_limits)
    val_users = np.flatnonzero(fit_limits < seq.lengths)

    recs: dict[str, np.ndarray] = {}
    params: dict[str, dict] = {}
    validation: dict[str, dict] = {}
    recs["popularity"] = baselines.popularity_recommend(train_matrix, users, max_k)
    params["popularity"] = {}

    if seq.n_items <= cfg.ease_max_items:
        scores = {}
        for lam in _floats(cfg.ease_lambdas):
            weights = baselines.ease_weights(fit_matrix, lam)
            r = baselines.ease_recommend(fit_matrix, weights, val_users, 10)
            scores[lam] = ranking_metrics(r, val_truth, [10])["ndcg@10"]
            log.info("EASE lambda %g: validation NDCG@10 %.4f", lam, scores[lam])
        best = max(scores, key=lambda lam: scores[lam])
        recs["ease"] = baselines.ease_recommend(
            train_matrix, baselines.ease_weights(train_matrix, best), users, max_k
        )
        params["ease"] = {"lambda": best}
        validation["ease"] = {str(k): v for k, v in scores.items()}
    else:
        log.warning("EASE skipped: %d items > ease_max_items %d", seq.n_items, cfg.ease_max_items)

    scores = {}
    for reg in _floats(cfg.als_regs):
        uf, itf = baselines.als_factors(
            fit_matrix, cfg.als_factors, reg, cfg.als_iterations, cfg.seed
        )
        scores[reg] = ranking_metrics(
            baselines.als_recommend(uf, itf, fit_matrix, val_users, 10), val_truth, [10]
        )["ndcg@10"]
        log.info("ALS reg %g: validation NDCG@10 %.4f", reg, scores[reg])
    best = max(scores, key=lambda reg: scores[reg])
    uf, itf = baselines.als_factors(
        train_matrix, cfg.als_factors, best, cfg.als_iterations, cfg.seed
    )
    recs["als"] = baselines.als_recommend(uf, itf, train_matrix, users, max_k)
    params["als"] = {
        "factors": cfg.als_factors,
        "regularization": best,
        "alpha": 1.0,
        "iterations": cfg.als_iterations,
    }
    validation["als"] = {str(k): v for k, v in scores.items()}

    recs["gan"], version = gan_recommend(run, seq.n_users, users, max_k)
    gan_meta = json.loads((run / "checkpoint" / "meta.json").read_text())
    params["gan"] = {
        "version": version,
        "adv_weight": gan_meta["adv_weight"],
        "best_epoch": gan_meta["best_epoch"],
    }
    if cfg.ablation:
        ablation = ablation_run(cfg)
        recs["gan_ablation"], version = gan_recommend(ablation, seq.n_users, users, max_k)
        ab_meta = json.loads((storage.open_run(ablation) / "checkpoint" / "meta.json").read_text())
        params["gan_ablation"] = {
            "version": version,
            "adv_weight": 0.0,
            "best_epoch": ab_meta["best_epoch"],
        }

    models: dict[str, Any] = {}
    for name, r in recs.items():
        models[name] = {
            **ranking_metrics(r, truth, ks),
            **beyond_accuracy(r[users], train_matrix, ks),
            "params": params[name],
        }
    result: dict[str, Any] = {
        "k": ks,
        "models": models,
        "split": {
            "test": "per user, temporal, last ceil(0.2 n) (see DATA/manifest.json)",
            "validation": "the same rule applied to train; used for every model's hyper-parameters",
        },
        "users_evaluated": int(len(users)),
        "n_items": int(seq.n_items),
        "data": str(cfg.data),
        "source": manifest["source"],
        "validation_ndcg@10": validation,
        "seconds": round(time.time() - start, 1),
    }
    if "ease" in models:
        result["gan_vs_ease_ndcg@10"] = models["gan"]["ndcg@10"] / models["ease"]["ndcg@10"]
    path = run / "eval.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.rename(path)
    storage.save_run(run, cfg.run, ("eval.json",))
    print_results(result)
    return result


def print_results(result: dict) -> None:
    cols = [
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
    rows = [[name] + [round(m[c], 4) for c in cols] for name, m in result["models"].items()]
    print_table(
        f"full-ranking evaluation on {result['source']}: {result['users_evaluated']} users, "
        f"{result['n_items']} items",
        ["model"] + cols,
        rows,
    )
