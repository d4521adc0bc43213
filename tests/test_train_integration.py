"""Training on a local Ray: 2 workers, fault tolerance, driver restarts, and evaluation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from ganrec_dist.core.config import EvaluateConfig, PrepareConfig, TrainConfig, train_config
from ganrec_dist.core.errors import UserError
from ganrec_dist.data.interactions import validation_limits
from ganrec_dist.data.layout import DataDir, RunDir
from ganrec_dist.data.prepare import prepare
from ganrec_dist.evaluation.compare import compare
from ganrec_dist.evaluation.evaluate import evaluate
from ganrec_dist.training.train import train
from ganrec_dist.training.validation import validation_truth
from ganrec_dist.training.worker import log_bytes

pytestmark = pytest.mark.integration

TINY = dict(
    dim=16,
    hidden=32,
    history_len=10,
    noise_dim=4,
    batch_size=256,
    lr=5e-3,
    cpus_per_worker=0.5,
    shuffle_buffer=20_000,
)


def test_cold_items_are_held_out_of_training_and_recommended_from_their_content(
    synthetic_data, tiny_run, tmp_path
):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    result = _quick_evaluate(synthetic_data, run, cold_items=True, tower_epochs=3)["cold_items"]
    data, copy = DataDir(synthetic_data), DataDir(run / "cold_items" / "random" / "data")
    held = np.array(copy.manifest["cold_items"]["items"])
    assert result["cold_items"] == len(held) == round(0.2 * data.manifest["items"])
    assert result["validation_items"] + result["test_items"] == len(held)
    # The copy lacks every row of those items, and the table's cold GAN was trained on it.
    for split in ("train", "test"):
        assert not np.isin(copy.read(split)["item_idx"].to_numpy(), held).any()
    trained_on = yaml.safe_load((run / "cold_items" / "random" / "gan" / "config.yaml").read_text())
    assert trained_on["data"] == copy.root
    models = result["models"]
    assert set(models) == {
        "random",
        "content_knn",
        "no_generated_rows",
        "tower_regress",
        "tower_gar",
        "ceiling",
        "rare_learned",
        "rare_generated",
        "rare_blend",
    }
    assert all(0 <= v <= 1 for m in models.values() for k, v in m.items() if k != "scale")
    # Items in between (1..5 train interactions in the copy): learned, generated, blended rows,
    # the rule chosen on the validation half.
    between = result["in_between"]
    assert between["validation_items"] > 10 and between["test_items"] > 10
    assert between["chosen"] in ("learned", "generated", "blend")
    assert between["blend"]["m"] in (1.0, 3.0, 10.0)
    assert (
        max(between["validation_ndcg@20"].values())
        == between["validation_ndcg@20"][between["chosen"]]
    )
    assert models["no_generated_rows"]["exposure@10"] == 0.0  # untrained rows reach nobody
    # GAR's warm setting (warm items only): the cold model's and the ceiling's, both learned.
    assert models["no_generated_rows"]["warm_ndcg@20"] > 0 and models["ceiling"]["warm_ndcg@20"] > 0
    assert models["tower_regress"]["hybrid_ndcg@20"] >= 0
    # Content drawn from the clusters is there to be found: by kNN and by the tower.
    assert models["content_knn"]["cold_ndcg@20"] > 1.5 * models["random"]["cold_ndcg@20"]
    assert models["tower_regress"]["cold_ndcg@20"] > 1.5 * models["random"]["cold_ndcg@20"]
    assert json.loads((run / "eval.json").read_text())["cold_items"]["test_items"] > 0
    # compare pairs seeds on a metric of the table: here one run, two of its rows.
    paired = compare([str(run)], [str(run)], metric="cold_ndcg@20")
    expected = models["tower_regress"]["cold_ndcg@20"] - models["content_knn"]["cold_ndcg@20"]
    assert paired["seeds"] == 1 and paired["difference"] == pytest.approx(expected)
    assert paired["metric"] == "cold_ndcg@20" and paired["rows"] == ["tower_regress", "content_knn"]
    with pytest.raises(UserError, match="needs item content"):
        evaluate(EvaluateConfig(data=copy.root, run=str(run), ablation=False, cold_items=True))
    # The synthetic log brings no item late: a time cut holds none out, said before training.
    time_cut = EvaluateConfig(
        data=str(synthetic_data), run=str(run), cold_items=True, cold_item_split="time"
    )
    with pytest.raises(UserError, match="fewer than 2 items"):
        evaluate(time_cut)


def test_add_items_refuses_a_run_without_a_tower_in_one_line(tiny_run, tmp_path, capsys):
    from ganrec_dist.operations.cli import main

    content = tmp_path / "new.csv"
    content.write_text("item_id,category\nsku-1,c1\n")
    args = ["add-items", f"--run={tiny_run}", f"--item_content={content}", "--rollout=false"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained without a content tower" in err[0]
    assert main(["add-items", f"--run={tiny_run}"]) == 2
    assert "needs --item_content" in capsys.readouterr().err


def _quick_evaluate(data, run, **settings):
    """evaluate without the ablation and with one-point baseline grids: the cold tables' tests."""
    quick = dict(ablation=False, ease_lambdas="50", als_regs="0.1", als_iterations=3)
    return evaluate(EvaluateConfig(data=str(data), run=str(run), **quick, **settings))


def _history(run):
    return RunDir(run).payload()["state"]["history"]


@pytest.fixture(scope="module")
def tiny_run(synthetic_data, tmp_path_factory):
    """One 2-epoch TINY run, trained once for the tests that read it (each copies it before
    writing into it)."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    train(train_config(data=str(synthetic_data), out=str(run), epochs=2, refit=False, **TINY))
    return run


def test_two_workers_learn_and_beat_popularity(synthetic_data, tmp_path):
    run = tmp_path / "run"
    meta = train(
        train_config(
            data=str(synthetic_data),
            out=str(run),
            workers=2,
            epochs=8,
            patience=3,
            refit=False,
            **TINY,
        )
    )
    assert meta["final"] and meta["phase"] == "done"
    history = _history(run)
    assert history[-1]["ce_loss"] < history[0]["ce_loss"] - 0.1
    assert max(h["val_ndcg@10"] for h in history[1:]) > history[0]["val_ndcg@10"]
    assert all(h["rows"] > 0 for h in history)
    for name in (
        "history.csv",
        "history.png",
        "config.yaml",
        "log/items.parquet",
        "log/sequences.npz",
    ):
        assert (run / name).exists()
    result = evaluate(
        EvaluateConfig(
            data=str(synthetic_data),
            run=str(run),
            ablation=False,
            diversity=True,  # off by default; its own checks are below
            sasrec="train",  # on the same two DDP ranks, the same schedule
            ease_lambdas="50",
            als_regs="0.1",
            als_iterations=5,
        )
    )
    models = result["models"]
    print({k: round(v["ndcg@10"], 4) for k, v in models.items()})
    assert set(models) == {"popularity", "ease", "als", "gan", "sasrec"}
    assert models["gan"]["ndcg@10"] > 1.5 * models["popularity"]["ndcg@10"]
    assert models["sasrec"]["ndcg@10"] > 1.5 * models["popularity"]["ndcg@10"]
    sasrec = RunDir(run / "sasrec")
    assert sasrec.meta()["model_config"]["encoder"] == "sasrec"
    assert len(sasrec.meta()["nodes"]) == 2  # trained on two ranks
    assert result["gan_vs_sasrec_ndcg@10"] == pytest.approx(
        models["gan"]["ndcg@10"] / models["sasrec"]["ndcg@10"]
    )
    assert (
        json.loads((run / "eval.json").read_text())["models"]["gan"]["ndcg@10"]
        == models["gan"]["ndcg@10"]
    )
    # The diversity section: K = 1 is the table's GAN row; MMR at lambda 1 is EASE's own list.
    from ganrec_dist.evaluation.diversity import LAMBDAS

    diversity = result["diversity"]
    assert diversity["samples"] == 1 and set(diversity["models"]["gan"]) == {"1", "4"}
    assert diversity["models"]["gan"]["1"]["ndcg@10"] == pytest.approx(models["gan"]["ndcg@10"])
    assert diversity["models"]["gan"]["1"]["sample_cosine"] is None
    four = diversity["models"]["gan"]["4"]
    assert 0.0 <= four["top10_overlap"] <= 1.0 and -1.0 <= four["sample_cosine"] <= 1.0
    curve = diversity["frontier"]["ease+mmr"]
    assert [p["lambda"] for p in curve][0] == 1.0 and len(curve) == len(LAMBDAS)
    assert curve[0]["ndcg@10"] == pytest.approx(models["ease"]["ndcg@10"])
    assert curve[-1]["diversity@10"] > curve[0]["diversity@10"]  # re-ranking diversifies
    assert [p["samples"] for p in diversity["frontier"]["gan"]] == [1, 2, 4, 8]
    assert set(diversity["verdict"]) == {"ease+mmr"}
    assert set(diversity["verdict_by_samples"]) == {"1", "2", "4", "8"}
    assert diversity["verdict_by_samples"]["1"] == diversity["verdict"]  # the chosen K is 1
    assert (run / "frontier.png").stat().st_size > 0
    assert json.loads((run / "frontier.json").read_text())["verdict"] == diversity["verdict"]


def test_epoch_batches_go_round_a_short_shard_and_stop_a_long_one(ray_local):
    import ray.data

    from ganrec_dist.data.shards import epoch_batches

    shard = ray.data.range(10).iterator()
    got = list(epoch_batches(shard, steps=7, batch_size=4, shuffle_buffer=0, seed=1))
    assert [len(b["id"]) for b in got] == [4, 4, 2, 4, 4, 2, 4]
    assert sorted(np.concatenate([b["id"] for b in got[:3]])) == list(range(10))
    assert len(list(epoch_batches(shard, steps=2, batch_size=4, shuffle_buffer=0, seed=1))) == 2


def test_epoch_batches_keep_rebatch_the_kept_rows(ray_local):
    """A replay mask keeps some rows: full batches of the kept rows, a lap's remainder shorter,
    and a lap that keeps nothing still steps on one row."""
    import ray.data

    from ganrec_dist.data.shards import epoch_batches

    shard = ray.data.range(20).iterator()
    odd = lambda raw: raw["id"] % 2 == 1  # noqa: E731
    got = list(epoch_batches(shard, steps=4, batch_size=4, shuffle_buffer=0, seed=1, keep=odd))
    assert [len(b["id"]) for b in got] == [4, 4, 2, 4]
    assert sorted(np.concatenate([b["id"] for b in got[:3]])) == list(range(1, 20, 2))
    none = lambda raw: np.zeros(len(raw["id"]), bool)  # noqa: E731
    got = list(epoch_batches(shard, steps=2, batch_size=4, shuffle_buffer=0, seed=1, keep=none))
    assert [len(b["id"]) for b in got] == [1, 1]


def test_unequal_shards_each_rank_holds_only_its_users(ray_local, tmp_path):
    """Three user shards for two ranks: one rank holds two, the other one; both take the same
    steps (else the gradient all-reduce would hang) and neither loads the other's users."""
    data = tmp_path / "data"
    prepare(
        PrepareConfig(
            source="synthetic", out=str(data), users=300, items=400, interactions=12_000, shards=3
        )
    )
    run = tmp_path / "run"
    train(train_config(data=str(data), out=str(run), workers=2, epochs=2, refit=False, **TINY))
    held = RunDir(run).meta()["shards"]
    whole = DataDir(data).sequences()
    assert len(held) == 2 and sum(h["rows"] for h in held) == len(whole.items)
    assert sum(h["users"] for h in held) == np.count_nonzero(whole.lengths)
    assert held[0]["rows"] != held[1]["rows"]  # unequal shards
    limits = validation_limits(whole, TrainConfig().dataset.val_fraction)
    one_rank = log_bytes(whole, limits, validation_truth(whole, limits, np.arange(300)))
    assert max(h["log_bytes"] for h in held) < 0.8 * one_rank
    assert [h["epoch"] for h in _history(run)] == [1, 2]


def test_a_dead_worker_resumes_from_the_last_checkpoint(synthetic_data, tmp_path):
    run = tmp_path / "run"
    meta = train(
        train_config(
            data=str(synthetic_data),
            out=str(run),
            workers=2,
            epochs=3,
            patience=5,
            refit=False,
            fail_at_epoch=2,
            max_failures=1,
            **TINY,
        )
    )
    assert (run / ".fault-injected").exists()  # rank 1 really exited once, at epoch 2
    assert meta["final"]
    epochs = [h["epoch"] for h in _history(run)]
    assert epochs == [1, 2, 3]  # epoch 1 came from the checkpoint, not from a restart at 0


def test_a_killed_driver_resumes_when_rerun(synthetic_data, tmp_path, kill_tree):
    run = tmp_path / "run"
    args = dict(
        data=str(synthetic_data),
        out=str(run),
        name="resumable",
        workers=1,
        epochs=5,
        patience=5,
        refit=False,
        **TINY,
    )
    cli = [sys.executable, "-m", "ganrec_dist", "train", "--quiet"] + [
        f"--{k}={v}" for k, v in args.items()
    ]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        cli, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    meta_path = run / "checkpoint" / "meta.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if meta_path.exists() and json.loads(meta_path.read_text())["epoch"] >= 2:
                break
            assert proc.poll() is None, "the driver ended before it could be killed"
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint within 240 s")
    finally:
        kill_tree(proc)  # the driver and the local Ray it started
    before = _history(run)
    assert not json.loads(meta_path.read_text())["final"]
    # Other settings would carry on from these weights as if they had made them: refused, and
    # the run is left as it was. Where it runs (workers, test hooks) may change.
    with pytest.raises(UserError, match=r"optim\.lr: 0\.005 -> 0\.004"):
        train(train_config(**{**args, "lr": 4e-3}))
    assert "lr: 0.005" in (run / "config.yaml").read_text()
    assert _history(run) == before
    meta = train(train_config(**{**args, "max_failures": 3}))
    after = _history(run)
    assert meta["final"] and [h["epoch"] for h in after] == [1, 2, 3, 4, 5]
    # The epochs done before the kill were kept, not recomputed.
    assert (
        after[0]["ce_loss"] == before[0]["ce_loss"] and after[0]["seconds"] == before[0]["seconds"]
    )
    # And the resumed run is the run that was never interrupted: G, D, their optimisers, the
    # averaged G and every epoch's random draws all came back from the checkpoint.
    train(train_config(**{**args, "out": str(tmp_path / "uninterrupted"), "name": "whole"}))
    whole = _history(tmp_path / "uninterrupted")
    keys = ("ce_loss", "d_loss", "g_loss", "val_ndcg@10")
    assert [[h[k] for k in keys] for h in after] == [[h[k] for k in keys] for h in whole]


def test_the_same_seed_gives_the_same_run(synthetic_data, tiny_run, tmp_path):
    """Reproducible for a seed and worker count: Ray Data keeps the blocks' order."""
    again = tmp_path / "again"
    train(train_config(data=str(synthetic_data), out=str(again), epochs=2, refit=False, **TINY))
    histories = [
        [(h["ce_loss"], h["d_loss"], h["val_ndcg@10"]) for h in _history(run)]
        for run in (tiny_run, again)
    ]
    assert histories[0] == histories[1] and len(histories[0]) == 2


def test_evaluate_reuses_only_an_ablation_of_the_same_settings(synthetic_data, tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    quick = dict(data=str(synthetic_data), run=str(run), ease_lambdas="50", als_regs="0.1")
    # --ks without 10: the protocol's 10 is always there too, and the table prints
    first = evaluate(EvaluateConfig(**quick, als_iterations=2, ks="5"))
    assert first["k"] == [5, 10] and {"ndcg@5", "recall@5", "ndcg@10"} <= set(
        first["models"]["gan"]
    )
    assert "diversity" not in first and not (run / "frontier.json").exists()  # off by default
    model = run / "ablation" / "checkpoint" / "model.pt"
    trained = model.stat().st_mtime_ns
    assert "adv_weight: 0.0" in (run / "ablation" / "config.yaml").read_text()

    def rewrite(section, **changes):  # RUN/config.yaml as if the GAN had been trained so
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg[section] = {**cfg[section], **changes}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    # D's settings: a run without D-steps is the same run
    rewrite("discriminator", d_mismatch=0.0, d_lr=5e-3)
    again = evaluate(EvaluateConfig(**quick, als_iterations=2))
    assert model.stat().st_mtime_ns == trained
    # The result says which models beside the run were trained and which reused.
    assert first["companions"]["gan_ablation"]["trained"]
    assert not again["companions"]["gan_ablation"]["trained"]
    rewrite("optim", epochs=1)  # G's schedule: the old ablation is not this GAN's
    result = evaluate(EvaluateConfig(**quick, als_iterations=2))
    assert model.stat().st_mtime_ns != trained
    assert result["companions"]["gan_ablation"]["trained"]
    assert [h["epoch"] for h in _history(run / "ablation")] == [1]
    assert "gan_ablation" in result["models"]


def test_sparse_tables_resume_into_the_uninterrupted_run(synthetic_data, tmp_path):
    """With a sampled softmax the tables are sparse (lazy Adam, lazy weight average): their
    optimiser state and the average's schedule come back from the checkpoint exactly."""
    args = dict(data=str(synthetic_data), epochs=3, patience=5, refit=False, **TINY)
    args["sampled_negatives"] = 64
    broken, whole = tmp_path / "broken", tmp_path / "whole"
    train(train_config(**args, out=str(broken), fail_at_epoch=2, max_failures=1))
    assert (broken / ".fault-injected").exists()  # the worker really died at epoch 2
    train(train_config(**args, out=str(whole)))
    assert RunDir(whole).payload()["model_config"]["sparse"]
    keys = ("ce_loss", "d_loss", "g_loss", "val_ndcg@10")
    assert [[h[k] for k in keys] for h in _history(broken)] == [
        [h[k] for k in keys] for h in _history(whole)
    ]


def test_cold_start_holds_users_out_of_training_and_judges_every_n_on_one_tail(
    synthetic_data, tiny_run, tmp_path
):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    result = _quick_evaluate(synthetic_data, run, cold_start=True, cold_fraction=0.2)["cold_start"]
    data, copy = DataDir(synthetic_data), DataDir(run / "cold_start" / "data")
    held = np.array(copy.manifest["cold_start"]["users"])
    assert result["users"] == len(held) > 0
    # The copy lacks exactly those users' rows, and the GAN of the table was trained on it.
    assert not np.isin(copy.read("train")["user_idx"].to_numpy(), held).any()
    full = data.sequences("train").lengths[held].sum()
    assert copy.manifest["train_rows"] == data.manifest["train_rows"] - full
    assert yaml.safe_load((run / "cold_start" / "gan" / "config.yaml").read_text())["data"] == (
        copy.root
    )
    models = result["models"]
    assert set(models) == {"popularity", "ease", "als", "gan"}
    assert all(set(m) == {"1", "3", "5", "10"} for m in models.values())
    assert all(0 <= v["ndcg@10"] <= 1 for m in models.values() for v in m.values())
    # The planted structure is there to be found from a history: EASE does, popularity cannot.
    assert models["ease"]["10"]["ndcg@10"] > models["popularity"]["10"]["ndcg@10"]
    assert models["ease"]["10"]["ndcg@10"] > models["ease"]["1"]["ndcg@10"]
