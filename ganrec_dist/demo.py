"""`ganrec demo`: the pipeline on the embedded MovieLens sample, end to end."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ganrec_dist.config import DemoConfig, EvaluateConfig, PrepareConfig, TrainConfig
from ganrec_dist.evaluate import evaluate
from ganrec_dist.index import IndexCommandConfig, index_command
from ganrec_dist.prepare import prepare
from ganrec_dist.recommender import Recommender
from ganrec_dist.score import ScoreConfig, score
from ganrec_dist.train import train

log = logging.getLogger(__name__)


def show_recommendations(data: Path, run: Path, n_users: int, k: int = 10) -> list[dict]:
    """Print the GAN's top-k (through the FAISS index) for a few users, with titles."""
    rec = Recommender(run)
    users = np.flatnonzero(rec.sequences.lengths > 0)[:n_users]
    items, scores = rec.recommend_known(users, k)
    seen = [rec.seen(u) for u in users]
    user_ids = rec.user_ids
    shown = []
    for row, u in enumerate(users):

        def label(i: int) -> str:
            title = rec.item_titles[i] if rec.item_titles else None
            return f"{rec.item_ids[i]} {title}" if title else str(rec.item_ids[i])

        recent = [label(i) for i in seen[row][-3:]]
        print(f"\nuser {user_ids[u]} ({len(seen[row])} train items; latest: {'; '.join(recent)})")
        for rank, (i, s) in enumerate(zip(items[row], scores[row]), start=1):
            print(f"  {rank:2d}. {label(int(i))}  ({s:.2f})")
        shown.append({"user_id": user_ids[u], "items": [str(rec.item_ids[i]) for i in items[row]]})
    return shown


def demo(cfg: DemoConfig) -> dict:
    """prepare -> train -> evaluate (GAN, ablation, baselines) -> a few live recommendations."""
    start = time.time()
    work = Path(cfg.workdir)
    data, run = work / "data", work / "run"
    manifest = prepare(
        PrepareConfig(
            source="movielens-small", out=str(data), overwrite=cfg.overwrite, address=cfg.address
        )
    )
    if cfg.overwrite and run.exists():
        import shutil

        shutil.rmtree(run)
    train(TrainConfig(data=str(data), out=str(run), address=cfg.address))
    result = evaluate(EvaluateConfig(data=str(data), run=str(run), address=cfg.address))
    index_command(IndexCommandConfig(run=str(run)))
    scored = score(
        ScoreConfig(
            data=str(data),
            run=str(run),
            out=str(work / "recs.parquet"),
            k=10,
            overwrite=True,
            address=cfg.address,
        )
    )
    shown = show_recommendations(data, run, cfg.users_to_show)
    live = ask_the_service(run, data, cfg.port)
    models = result["models"]
    print(
        f"\ndemo done in {time.time() - start:.0f}s: {manifest['rows_in']:,} interactions; "
        f"{scored['users']} users scored to {work / 'recs.parquet'}; "
        f"NDCG@10 GAN {models['gan']['ndcg@10']:.4f}, ablation {models['gan_ablation']['ndcg@10']:.4f}, "
        f"EASE {models['ease']['ndcg@10']:.4f}; artifacts in {work}/"
    )
    return {"manifest": manifest, "eval": result, "recommendations": shown, "live": live}


def ask_the_service(run: Path, data: Path, port: int) -> list[dict]:
    """Start the Serve app on 127.0.0.1, send three kinds of request, print, shut it down."""
    import json

    import pyarrow.parquet as pq
    import requests
    from ray import serve

    from ganrec_dist.serve import ServeConfig, start, wait_healthy

    items = pq.read_table(data / "items.parquet")
    titles = (
        dict(zip(items["item_id"].to_pylist(), items["title"].to_pylist()))
        if "title" in items.column_names
        else {}
    )
    known = pq.read_table(data / "users.parquet")["user_id"][0].as_py()
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
                f"  -> fallback={answer['fallback']} ignored={answer['ignored']} version={answer['model_version']}"
            )
            for item in answer["items"]:
                print(
                    f"     {item['item_id']} {titles.get(item['item_id'], '')} ({item['score']:.2f})"
                )
    finally:
        serve.shutdown()
    return answers
