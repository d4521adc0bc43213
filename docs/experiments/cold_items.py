"""Cold items from their content, a first measurement (issue 28, before `evaluate --cold_items`).

    python docs/experiments/cold_items.py --out EXP [--users 3000 --items 1500 \
        --interactions 150000 --noise 0.2,1.0 --seed 0 --epochs 0]

On the synthetic log with content drawn from each item's cluster (``--feature_noise``): a seeded
20% of the items that occur in train are *cold*, split 1:1 into validation and test items; a copy
of DATA without any of their rows (train and test) trains the GAN; the content tower is fitted on
the warm items against that model (``training.tower``: ``regress``, the ablation, and ``gar``);
the model trained on the whole DATA is the ceiling. Every model is judged on the same truth, the
test split's rows on test-cold items, the whole train split's items excluded:

- cold: only the test-cold items are ranked (GAR's cold setting), NDCG@20 and Recall@20;
- hybrid: every item but the validation-cold ones, learned rows for warm items beside generated
  rows for cold ones; truth the test split's rows on warm and test-cold items; NDCG@10, and the
  share of test-cold items in anyone's top 10 (exposure). "no generated rows" is the same model
  with its untrained rows for the cold items.

Rows: random, content-kNN (a cold item scored by its content's cosine to the mean of the user's
history items' content), the towers, the ceiling. One seed: a first look, not a verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from ganrec_dist.data.layout import DataDir
from ganrec_dist.model.content import ContentTower
from ganrec_dist.retrieval.metrics import ranking_metrics
from ganrec_dist.retrieval.recommender import Recommender
from ganrec_dist.training import tower as towers

GANREC = [sys.executable, "-m", "ganrec_dist"]
COLUMNS = (
    "cold_ndcg@20",
    "cold_recall@20",
    "hybrid_ndcg@10",
    "cold_exposure@10",
    "hybrid_scale",
    "hybrid_ndcg@10 (scaled)",
    "cold_exposure@10 (scaled)",
)
SCALES = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


def run(args: list[str]) -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(GANREC + args, check=True, env=env, stdout=subprocess.DEVNULL)


def rows(data: DataDir, split: str) -> tuple[np.ndarray, np.ndarray]:
    t = data.read(split, ["user_idx", "item_idx"])
    return t["user_idx"].to_numpy().astype(np.int64), t["item_idx"].to_numpy().astype(np.int64)


def without_items(data: DataDir, items: np.ndarray, out: Path) -> DataDir:
    """A copy of DATA without any row of ``items`` (the same id maps, no content)."""
    shutil.rmtree(out, ignore_errors=True)
    held = pa.array(items.astype(np.int32))
    counts = {}
    for split in (DataDir.TRAIN, DataDir.TEST):
        (out / split).mkdir(parents=True)
        fs, files = data.split_files(split)
        counts[split] = 0
        for f in files:
            table = pq.read_table(f, filesystem=fs)
            table = table.filter(pc.invert(pc.is_in(table["item_idx"], value_set=held)))
            counts[split] += table.num_rows
            pq.write_table(table, out / split / Path(f).name)
    for name in (DataDir.ITEMS, DataDir.USERS):
        pq.write_table(data.read(name), out / name)
    manifest = {k: v for k, v in data.manifest.items() if k != "content"}
    manifest.update(train_rows=counts[DataDir.TRAIN], test_rows=counts[DataDir.TEST])
    (out / DataDir.MANIFEST).write_text(json.dumps(manifest, indent=1))
    return DataDir(out)


def user_vectors(rec: Recommender) -> np.ndarray:
    users = np.arange(rec.model_config.n_users)
    histories, _ = rec.known_inputs(users)
    return rec.vectors(histories, users)


def content_matrix(content, n_items: int) -> sp.csr_matrix:
    """Each item's content as one L2-normalised sparse row: one-hot ids, numerics, vectors."""
    arrays = content.batch(np.arange(n_items))
    blocks = []
    for f in content.features:
        if f.slots:
            ids = arrays[f"ids_{f.name}"]
            r, c = np.nonzero(ids)
            blocks.append(sp.csr_matrix((np.ones(len(r)), (r, ids[r, c])), (n_items, f.ids)))
        elif f.type == "vector":
            blocks.append(sp.csr_matrix(arrays[f"vector_{f.name}"]))
    if "numeric" in arrays:
        blocks.append(sp.csr_matrix(arrays["numeric"]))
    blocks = [_normalised(b) for b in blocks]
    return _normalised(sp.hstack(blocks).tocsr())


def _normalised(m: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1))).ravel()
    return sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m


def top(scores: np.ndarray, exclude: sp.csr_matrix, k: int, drop=None) -> np.ndarray:
    """Each row's best ``k`` columns, ``exclude``'s entries and the columns ``drop`` left out."""
    scores = scores.copy()
    r, c = exclude.nonzero()
    scores[r, c] = -np.inf
    if drop is not None:
        scores[:, drop] = -np.inf
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.where(np.take_along_axis(scores, order, 1) > -np.inf, order, -1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=1500)
    p.add_argument("--interactions", type=int, default=150_000)
    p.add_argument("--noise", default="0.2,1.0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=0, help="GAN epochs (0: the default search)")
    p.add_argument("--tower_epochs", type=int, default=30)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    datas = {}
    for noise in (float(x) for x in args.noise.split(",")):
        path = out / f"data-{noise}"
        if not (path / DataDir.MANIFEST).exists():
            run(
                [
                    "prepare",
                    "--source=synthetic",
                    f"--users={args.users}",
                    f"--items={args.items}",
                    f"--interactions={args.interactions}",
                    f"--seed={args.seed}",
                    "--item_content=synthetic",
                    f"--feature_noise={noise}",
                    f"--out={path}",
                ]
            )
        datas[noise] = DataDir(path)
    data = next(iter(datas.values()))  # the log is the same for every noise level
    n_items = data.manifest["items"]
    train_u, train_i = rows(data, "train")
    test_u, test_i = rows(data, "test")
    rng = np.random.default_rng([args.seed, 28])
    occurring = np.unique(train_i)
    cold = np.sort(rng.choice(occurring, int(round(0.2 * len(occurring))), replace=False))
    rng.shuffle(cold)
    val_cold, test_cold = np.sort(cold[: len(cold) // 2]), np.sort(cold[len(cold) // 2 :])
    copy = without_items(data, cold, out / "data-without-cold")
    train_flags = ["--seed", str(args.seed)] + ([f"--epochs={args.epochs}"] if args.epochs else [])
    for name, d in (("cold", copy), ("ceiling", data)):
        if not (out / f"run-{name}" / "checkpoint" / "meta.json").exists():
            tick = time.time()
            run(["train", f"--data={d.root}", f"--out={out / f'run-{name}'}", *train_flags])
            print(f"trained {name} in {time.time() - tick:.0f} s", flush=True)
    cold_rec, ceiling_rec = Recommender(out / "run-cold"), Recommender(out / "run-ceiling")
    u_cold, u_ceiling = user_vectors(cold_rec), user_vectors(ceiling_rec)
    n_users = len(u_cold)
    seen = sp.csr_matrix((np.ones(len(train_u)), (train_u, train_i)), (n_users, n_items))
    seen.data[:] = 1
    is_test_cold = np.zeros(n_items, bool)
    is_test_cold[test_cold] = True
    keep = is_test_cold[test_i]
    truth_all = sp.csr_matrix(
        (np.ones(keep.sum()), (test_u[keep], test_i[keep])), (n_users, n_items)
    )
    users = np.flatnonzero(np.asarray(truth_all.sum(axis=1)).ravel() > 0)
    truth_cold = truth_all[users][:, test_cold]
    truth_cold.data[:] = 1
    excl_cold = seen[users][:, test_cold]
    warm_mask = np.ones(n_items, bool)
    warm_mask[cold] = False
    hybrid_keep = warm_mask[test_i] | is_test_cold[test_i]
    truth_h = sp.csr_matrix(
        (np.ones(hybrid_keep.sum()), (test_u[hybrid_keep], test_i[hybrid_keep])), (n_users, n_items)
    )
    truth_h.data[:] = 1
    h_users = np.flatnonzero(np.asarray(truth_h.sum(axis=1)).ravel() > 0)
    # The same on validation: warm and validation-cold items' test rows, test-cold items left
    # out; the scale of the generated rows is chosen here, never on test items.
    is_val_cold = np.zeros(n_items, bool)
    is_val_cold[val_cold] = True
    v_keep = warm_mask[test_i] | is_val_cold[test_i]
    truth_v = sp.csr_matrix(
        (np.ones(v_keep.sum()), (test_u[v_keep], test_i[v_keep])), (n_users, n_items)
    )
    truth_v.data[:] = 1
    v_users = np.flatnonzero(np.asarray(truth_v.sum(axis=1)).ravel() > 0)

    def calibrated(rows_hybrid, vectors_u):
        """The scale of the generated rows (cold items) with the best validation hybrid
        NDCG@10: generated vectors are not on the learned rows' scale."""
        best = None
        for scale in SCALES:
            scaled = rows_hybrid.copy()
            scaled[cold] *= scale
            h = top(vectors_u[v_users] @ scaled.T, seen[v_users], 10, drop=test_cold)
            value = ranking_metrics(h, truth_v[v_users], [10])["ndcg@10"]
            if best is None or value > best[0]:
                best = (value, scale, scaled)
        return best

    pairs_u, pairs_i = rows(copy, "train")  # warm items only, by construction

    def cold_scores(vectors_u, item_vectors):
        return vectors_u[users] @ item_vectors[test_cold].T

    def judge(scores_cold, rows_hybrid, vectors_u):
        cold_recs = top(scores_cold, excl_cold, 20)
        m = ranking_metrics(np.where(cold_recs >= 0, cold_recs, -1), truth_cold, [10, 20])
        result = {
            "cold_ndcg@20": m["ndcg@20"],
            "cold_recall@20": m["recall@20"],
            "cold_ndcg@10": m["ndcg@10"],
        }
        if rows_hybrid is not None:
            h = top(vectors_u[h_users] @ rows_hybrid.T, seen[h_users], 10, drop=val_cold)
            mh = ranking_metrics(h, truth_h[h_users], [10])
            shown = np.isin(test_cold, h[h >= 0])
            result.update(
                {"hybrid_ndcg@10": mh["ndcg@10"], "cold_exposure@10": float(shown.mean())}
            )
        return result

    table: dict[str, dict] = {}
    r = np.random.default_rng([args.seed, 5]).random((len(users), len(test_cold)))
    table["random"] = judge(r, None, None)
    table["no generated rows"] = judge(
        cold_scores(u_cold, cold_rec.embeddings), cold_rec.embeddings, u_cold
    )
    table["no generated rows"]["val_hybrid_ndcg@10"] = ranking_metrics(
        top(u_cold[v_users] @ cold_rec.embeddings.T, seen[v_users], 10, drop=test_cold),
        truth_v[v_users],
        [10],
    )["ndcg@10"]
    table["ceiling (trained with them)"] = judge(
        cold_scores(u_ceiling, ceiling_rec.embeddings), ceiling_rec.embeddings, u_ceiling
    )
    for noise, d in datas.items():
        content = d.content()
        features = d.manifest["content"]["features"]
        cm = content_matrix(content, n_items)
        history = seen.multiply(warm_mask[None, :]).tocsr()  # the cold model's view
        profile = _normalised(sp.csr_matrix(history @ cm))
        knn = np.asarray((profile[users] @ cm[test_cold].T).todense())
        table[f"content-kNN (noise {noise})"] = judge(knn, None, None)
        for objective in towers.OBJECTIVES:
            tick = time.time()
            tw = ContentTower(features, dim=cold_rec.model_config.dim)
            towers.fit(
                tw,
                content,
                pairs=(pairs_u, pairs_i),
                user_vectors=u_cold,
                item_rows=cold_rec.embeddings,
                settings=towers.TowerSettings(
                    objective=objective, epochs=args.tower_epochs, seed=args.seed
                ),
            )
            generated = cold_rec.embeddings.copy()
            generated[cold] = towers.generate(tw, content, cold)
            row = judge(cold_scores(u_cold, generated), generated, u_cold)
            val_ndcg, scale, scaled = calibrated(generated, u_cold)
            hybrid = judge(cold_scores(u_cold, scaled), scaled, u_cold)
            row.update(
                {
                    "hybrid_scale": scale,
                    "val_hybrid_ndcg@10": val_ndcg,
                    "hybrid_ndcg@10 (scaled)": hybrid["hybrid_ndcg@10"],
                    "cold_exposure@10 (scaled)": hybrid["cold_exposure@10"],
                }
            )
            row["tower_seconds"] = round(time.time() - tick, 1)
            table[f"tower {objective} (noise {noise})"] = row
    print(f"{'model':36s} " + " ".join(f"{c:>25s}" for c in COLUMNS))
    for name, m in table.items():
        print(f"{name:36s} " + " ".join(f"{m[c]:25.4f}" if c in m else " " * 25 for c in COLUMNS))
    result = {
        "args": vars(args),
        "cold_items": len(cold),
        "test_cold": len(test_cold),
        "users": int(len(users)),
        "hybrid_users": int(len(h_users)),
        "models": table,
        "seconds": round(time.time() - start, 1),
    }
    (out / "cold_items.json").write_text(json.dumps(result, indent=1))
    print(
        f"{len(users)} users with test rows on {len(test_cold)} test-cold items; "
        f"{result['seconds']} s -> {out / 'cold_items.json'}"
    )


if __name__ == "__main__":
    main()
