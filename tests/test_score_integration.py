"""`ganrec index` and `ganrec score` on a local Ray against a direct in-process computation."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from ganrec_dist.core.config import (
    IndexCommandConfig,
    PrepareConfig,
    ScoreConfig,
    train_config,
)
from ganrec_dist.data.layout import DataDir
from ganrec_dist.data.prepare import prepare
from ganrec_dist.inference.score import score
from ganrec_dist.operations.cli import main
from ganrec_dist.retrieval.index import index_command
from ganrec_dist.retrieval.recommender import Recommender
from ganrec_dist.training.train import train

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(ray_local, tmp_path_factory):
    base = tmp_path_factory.mktemp("score")
    data, run = base / "data", base / "run"
    prepare(
        PrepareConfig(
            source="synthetic", out=str(data), users=300, items=400, interactions=12_000, seed=2
        )
    )
    train(
        train_config(
            data=str(data),
            out=str(run),
            epochs=2,
            refit=False,
            dim=16,
            hidden=32,
            history_len=10,
            noise_dim=4,
            cpus_per_worker=1,
        )
    )
    return data, run


def _direct(data, run, users, k, include_seen=False):
    """The same top-K computed in this process, no Ray."""
    rec = Recommender(run)
    seq = DataDir(data).sequences()
    seen = [
        np.zeros(0, np.int64) if include_seen else seq.items[seq.offsets[u] : seq.offsets[u + 1]]
        for u in users
    ]
    items, _ = rec.recommend(seq.window(users, seq.lengths[users], rec.history_len), users, seen, k)
    ids = pq.read_table(data / "users.parquet")["user_id"].to_pylist()
    return {ids[u]: [str(rec.item_ids[i]) for i in row] for u, row in zip(users, items)}


def _as_lists(table):
    out = {}
    for row in sorted(table.to_pylist(), key=lambda r: (r["user_id"], r["rank"])):
        out.setdefault(row["user_id"], []).append(row["item_id"])
    return out


def test_score_equals_direct_computation_for_exact_search(trained, tmp_path):
    data, run = trained
    out = tmp_path / "recs.parquet"
    summary = score(ScoreConfig(data=str(data), run=str(run), out=str(out), k=7, batch_size=64))
    table = pq.read_table(out)
    assert table.column_names == ["user_id", "rank", "item_id", "score"]
    test_users = np.unique(pq.read_table(data / "test")["user_idx"].to_numpy())
    assert summary["users"] == len(test_users) and table.num_rows == 7 * len(test_users)
    assert _as_lists(table) == _direct(data, run, test_users, 7)
    # never a train item, ranks 1..7, scores descending
    train_rows = pq.read_table(data / "train").to_pylist()
    seen = {(r["user_id"], r["item_id"]) for r in train_rows}
    assert not any((r["user_id"], r["item_id"]) in seen for r in table.to_pylist())
    first = table.to_pandas().sort_values(["user_id", "rank"]).groupby("user_id")
    assert all(
        list(g["rank"]) == list(range(1, 8)) and g["score"].is_monotonic_decreasing
        for _, g in first
    )


def test_users_file_include_seen_and_side_file(trained, tmp_path):
    data, run = trained
    ids = pq.read_table(data / "users.parquet")["user_id"].to_pylist()
    users_file = tmp_path / "users.txt"
    users_file.write_text(f"{ids[0]}\nnobody\n{ids[5]}\n{ids[0]}\n")
    out = tmp_path / "recs.parquet"
    summary = score(
        ScoreConfig(
            data=str(data),
            run=str(run),
            out=str(out),
            k=5,
            users=str(users_file),
            include_seen=True,
        )
    )
    assert summary["users"] == 2 and summary["skipped"] == 1
    assert _as_lists(pq.read_table(out)) == _direct(
        data, run, np.array([0, 5]), 5, include_seen=True
    )
    skipped = pq.read_table(tmp_path / "recs.parquet.skipped.parquet").to_pylist()
    assert skipped == [{"user_id": "nobody", "reason": "unknown user: not in the prepared data"}]
    assert (
        main(["score", f"--data={data}", f"--run={run}", f"--out={out}"]) == 2
    )  # exists, no --overwrite


def test_index_command_writes_meta_and_is_used(trained, capsys):
    data, run = trained
    meta = index_command(IndexCommandConfig(run=str(run), kind="hnsw"))
    on_disk = json.loads((run / "index" / "meta.json").read_text())
    assert set(on_disk.pop("files")) == {"index.faiss"}  # checksums: a reader tells a whole copy
    assert on_disk == meta and meta["kind"] == "hnsw" and meta["metric"] == "inner_product"
    rec = Recommender(run)
    assert rec.index_meta["kind"] == "hnsw"
    users = np.arange(20)
    assert _direct(data, run, users, 10).keys() == set(
        pq.read_table(data / "users.parquet")["user_id"].to_pylist()[:20]
    )
    assert main(["index", f"--run={run}", "--kind=flat"]) == 0
    assert json.loads((run / "index" / "meta.json").read_text())["kind"] == "flat"
    assert main(["index", f"--run={run}", "--kind=annoy"]) == 2
    assert "index kind must be" in capsys.readouterr().err


def _where(run, boxed_parts):
    """In a Ray worker: a scoring actor's Recommender built from the shared parts; where its
    item table lies (the parts' own buffer? in which mapping of this process?)."""
    import ray

    from ganrec_dist.inference.score import Scorer

    parts = ray.get(boxed_parts[0])
    scorer = Scorer(run, boxed_parts[0], k=5, include_seen=False)
    table = scorer.rec.generator.encoder.items.weight
    address = table.data_ptr()
    mapping = ""
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, *rest = line.split(maxsplit=5)
            low, high = (int(x, 16) for x in span.split("-"))
            if low <= address < high:
                mapping = rest[-1].strip() if len(rest) == 5 else ""
    name = next(k for k in parts["generator"] if k.endswith("items.weight"))
    return {
        "same_buffer": address == parts["generator"][name].ctypes.data,
        "writeable": parts["generator"][name].flags.writeable,
        "mapping": mapping,
        "scores": scorer({"user_idx": np.arange(3)})["item_id"].tolist(),
    }


def test_scoring_actors_read_the_object_store_copy(trained):
    """Two workers given the object ref of the run's parts build their recommenders on the
    object store's buffer itself (a mapping of the store's shared memory), not a copy."""
    import sys

    import ray
    from ray import cloudpickle

    from ganrec_dist.data.layout import RunDir
    from ganrec_dist.retrieval.recommender import load_parts

    data, run = trained
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    where = ray.remote(num_cpus=0.5)(_where)
    ref = ray.put(load_parts(RunDir(run)))
    found = ray.get([where.remote(str(run), [ref]) for _ in range(2)])
    for f in found:
        assert f["same_buffer"] and not f["writeable"]
        assert "plasma" in f["mapping"] or "/dev/shm" in f["mapping"], f["mapping"]
    assert found[0]["scores"] == found[1]["scores"]
    rec = Recommender(run)  # its own copy, from RUN: the same items
    items, _ = rec.recommend_known(np.arange(3), 5)
    assert found[0]["scores"] == [str(rec.item_ids[i]) for i in items.reshape(-1) if i >= 0]


def test_one_sample_is_the_z_zero_path_exactly(trained):
    import torch

    from ganrec_dist.retrieval.index import search_excluding

    data, run = trained
    rec = Recommender(run)
    users = np.arange(40)
    histories, seen = rec.known_inputs(users)
    with torch.no_grad():
        state = rec.generator.encoder(torch.as_tensor(histories), torch.as_tensor(users))
        mean = rec.generator.generate(state, torch.zeros(len(users), rec.model_config.noise_dim))
    expected = search_excluding(rec.index, mean.numpy(), seen, 10, exact=rec.exact)
    for got in (rec.recommend_known(users, 10), rec.recommend_known(users, 10, samples=1)):
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    items, scores, _ = rec.sample_lists(histories, users, seen, 10, samples=1)
    assert np.array_equal(items[:, 0], expected[0])


def test_k_samples_give_k_unseen_items_whatever_the_batch(trained):
    data, run = trained
    rec = Recommender(run)
    users = np.arange(60)
    one, _ = rec.recommend_known(users, 10)
    items, scores = rec.recommend_known(users, 10, samples=4)
    assert items.shape == (60, 10) and (items >= 0).all()
    for u, row in zip(users, items):
        assert len(set(row)) == 10 and not set(row) & set(rec.seen(u))
    # The same users in other batches and orders get the same lists (noise keyed by user).
    order = np.random.default_rng(0).permutation(60)
    parts = [
        rec.recommend_known(users[order][i : i + 7], 10, samples=4)[0] for i in range(0, 60, 7)
    ]
    assert np.array_equal(np.concatenate(parts), items[order])
    assert (items != one).any(axis=1).sum() > 0  # the draws move some lists
    histories, seen = rec.known_inputs(users)
    _, _, vectors = rec.sample_lists(histories, users, seen, 10, samples=4)
    assert np.array_equal(vectors[:, 0], rec.vectors(histories, users))  # sample 0: z = 0


def test_score_with_samples_equals_the_direct_computation(trained, tmp_path):
    data, run = trained
    out = tmp_path / "recs.parquet"
    score(ScoreConfig(data=str(data), run=str(run), out=str(out), k=6, samples=3, batch_size=50))
    table = _as_lists(pq.read_table(out))
    rec = Recommender(run)
    users = np.unique(pq.read_table(data / "test")["user_idx"].to_numpy()).astype(np.int64)
    items, _ = rec.recommend_known(users, 6, samples=3)
    ids = pq.read_table(data / "users.parquet")["user_id"].to_pylist()
    assert table == {ids[u]: [str(rec.item_ids[i]) for i in row] for u, row in zip(users, items)}
    assert (
        main(
            [
                "score",
                "--data",
                str(data),
                "--run",
                str(run),
                "--out",
                str(out),
                "--samples",
                "33",
                "--overwrite",
                "true",
            ]
        )
        == 2
    )
