"""`ganrec demo`: the whole pipeline on the embedded MovieLens sample, in a few minutes.

prepare -> train (`ganrec train`'s defaults: the search with early stopping, then the refit)
-> evaluate against popularity, EASE and ALS, tuned on validation as `ganrec evaluate` tunes
them (the ablation only with ``--ablation``) -> index -> score -> a live Ray Serve app asked
three kinds of request. Its GAN row is the one `ganrec train` then `ganrec evaluate` give for the
same seed; the off-by-default sections (several samples, the diversity frontier) are left out.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from ganrec_dist.core.config import (
    DemoConfig,
    EvaluateConfig,
    IndexCommandConfig,
    PrepareConfig,
    ScoreConfig,
    ServeConfig,
    TrainConfig,
    build,
)
from ganrec_dist.data.layout import DataDir
from ganrec_dist.data.prepare import prepare
from ganrec_dist.evaluation.evaluate import evaluate_models, print_results
from ganrec_dist.inference.score import score
from ganrec_dist.retrieval.index import index_command
from ganrec_dist.retrieval.recommender import Recommender
from ganrec_dist.training.train import train

log = logging.getLogger(__name__)


def show_recommendations(run: Path, n_users: int, k: int = 10) -> list[dict]:
    """Print the GAN's top-k (through the FAISS index) for a few users, with titles."""
    rec = Recommender(run)
    users = np.flatnonzero(rec.sequences.lengths > 0)[:n_users]
    items, scores = rec.recommend_known(users, k)
    shown = []
    for row, u in enumerate(users):
        seen = rec.seen(u)
        recent = "; ".join(rec.label(i) for i in seen[-3:])
        print(f"\nuser {rec.user_ids[u]} ({len(seen)} train items; latest: {recent})")
        for rank, (i, s) in enumerate(zip(items[row], scores[row]), start=1):
            print(f"  {rank:2d}. {rec.label(int(i))}  ({s:.2f})")
        shown.append(
            {"user_id": rec.user_ids[u], "items": [str(rec.item_ids[i]) for i in items[row]]}
        )
    return shown


def ask_the_service(run: Path, data: Path, port: int) -> list[dict]:
    """Start the Serve app on 127.0.0.1, send three kinds of request, print, shut it down."""
    import requests

    from ganrec_dist.inference.serve import start, stop, wait_healthy

    rec = Recommender(run)
    known = DataDir(data).read(DataDir.USERS)["user_id"][0].as_py()
    bodies = [
        {"user_id": known, "k": 5},
        {"user_id": "new-visitor", "history": ["1", "260", "1196", "not-an-item"], "k": 5},
        {"user_id": "anonymous", "k": 5},
    ]
    url = f"http://127.0.0.1:{port}"
    start(ServeConfig(run=str(run), port=port))
    answers = []
    try:
        wait_healthy(url, timeout=60)
        print(f"\nlive: Ray Serve on {url}")
        for body in bodies:
            answer = requests.post(url + "/recommend", json=body, timeout=30).json()
            answers.append(answer)
            print(f"POST /recommend {json.dumps(body)}")
            print(
                f"  -> fallback={answer['fallback']} ignored={answer['ignored']} "
                f"version={answer['model_version']}"
            )
            for item in answer["items"]:
                label = rec.label(rec.item_index[item["item_id"]])
                print(f"     {label} ({item['score']:.2f})")
    finally:
        stop()
    return answers


def demo(cfg: DemoConfig) -> dict:
    """prepare -> train -> evaluate -> index -> score -> top-10 lists and live answers."""
    start = time.time()
    work = Path(cfg.workdir)
    data, run = work / "data", work / "run"
    manifest = prepare(
        PrepareConfig(
            source="movielens-small", out=str(data), overwrite=cfg.overwrite, address=cfg.address
        )
    )
    if cfg.overwrite and run.exists():
        shutil.rmtree(run)
    train(
        build(
            TrainConfig,
            {"data": str(data), "out": str(run), "address": cfg.address, "seed": cfg.seed},
        )
    )
    result = evaluate_models(
        EvaluateConfig(
            data=str(data),
            run=str(run),
            ablation=cfg.ablation,
            address=cfg.address,
        )
    )
    index_command(IndexCommandConfig(run=str(run)))
    recs = work / "recs.parquet"
    scored = score(
        ScoreConfig(
            data=str(data), run=str(run), out=str(recs), k=10, overwrite=True, address=cfg.address
        )
    )
    print_results(result)
    shown = show_recommendations(run, cfg.users_to_show)
    live = ask_the_service(run, data, cfg.port)
    models = result["models"]
    print(
        f"\ndemo done in {time.time() - start:.0f}s: {manifest['rows_in']:,} interactions; "
        f"{scored['users']} users scored to {recs}; NDCG@10 GAN {models['gan']['ndcg@10']:.4f}, "
        f"EASE {models['ease']['ndcg@10']:.4f}; artifacts in {work}/\n"
        f"The same run by hand: ganrec train --data {data} --out runs/ml --seed {cfg.seed}, then "
        f"ganrec evaluate --data {data} --run runs/ml (which also trains the ablation)"
    )
    return {"manifest": manifest, "eval": result, "recommendations": shown, "live": live}
