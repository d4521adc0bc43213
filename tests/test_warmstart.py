"""`ganrec train --init RUN`: warm start on a newer DATA version, tables grown, parent recorded."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import torch

from ganrec_dist.core.config import PrepareConfig, train_config
from ganrec_dist.data.append import prepare_or_append
from ganrec_dist.data.layout import DataDir, RunDir
from ganrec_dist.model.models import Generator, ModelConfig
from ganrec_dist.operations.cli import main
from ganrec_dist.training import warmstart
from ganrec_dist.training.building import fresh_models, initial_state, model_config
from ganrec_dist.training.tables import GeneratorOptimizer
from ganrec_dist.training.train import train

TINY = dict(dim=16, hidden=32, history_len=10, noise_dim=4, cpus_per_worker=0.5, lr=5e-3)


@pytest.mark.parametrize("sparse", [False, True])
def test_grown_tables_keep_old_rows_and_optimizer_moments(sparse):
    torch.manual_seed(0)
    old = Generator(
        ModelConfig(n_items=7, n_users=5, dim=8, hidden=16, history_len=3, sparse=sparse)
    )
    opt = (
        GeneratorOptimizer(old, lr=0.01, weight_decay=0)
        if sparse
        else torch.optim.Adam(old.parameters(), lr=0.01)
    )
    history = torch.tensor([[0, 1, 7], [2, 3, 4]])
    for _ in range(2):  # moments that are not zero
        opt.zero_grad()
        _, _, logits = old(history, torch.tensor([0, 4]), candidates=torch.arange(7))
        logits.logsumexp(1).sum().backward()
        opt.step()
    new = Generator(
        ModelConfig(n_items=10, n_users=6, dim=8, hidden=16, history_len=3, sparse=sparse)
    )
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    grown = warmstart.grown_generator(old.state_dict(), new.state_dict())
    new.load_state_dict(grown)
    items = new.encoder.items.weight.detach()
    assert torch.equal(items[:7], old.encoder.items.weight.detach()[:7])  # bit for bit
    assert torch.equal(items[7:10], fresh["encoder.items.weight"][7:10])  # as a fresh run
    assert not items[10].any() and not new.encoder.users.weight.detach()[6].any()  # padding
    assert torch.equal(new.encoder.users.weight.detach()[:5], old.encoder.users.weight[:5])
    state = warmstart.grown_optimizer(opt.state_dict(), new, sparse)
    new_opt = (
        GeneratorOptimizer(new, lr=0.01, weight_decay=0)
        if sparse
        else torch.optim.Adam(new.parameters(), lr=0.01)
    )
    new_opt.load_state_dict(state)
    inner = new_opt.sparse if sparse else new_opt
    table = new.encoder.items.weight
    moments = inner.state[table]["exp_avg_sq"]
    assert moments.shape == table.shape and not moments[7:].any() and moments[:7].any()
    new_opt.zero_grad()
    _, _, logits = new(torch.tensor([[8, 9, 1]]), torch.tensor([5]), candidates=torch.arange(10))
    logits.logsumexp(1).sum().backward()
    new_opt.step()  # the grown state is usable


def test_shrink_mixes_the_parent_with_the_fresh_start_and_keeps_counters():
    parent = {"w": torch.full((2, 2), 4.0), "steps": torch.tensor(7)}
    fresh = {"w": torch.zeros(2, 2), "steps": torch.tensor(0)}
    assert warmstart.shrink(parent, fresh, 1.0) is parent
    mixed = warmstart.shrink(parent, fresh, 0.75)
    assert torch.equal(mixed["w"], torch.full((2, 2), 3.0))
    assert int(mixed["steps"]) == 7


def test_validation_is_the_rows_the_parent_never_fitted():
    lengths = np.array([10, 5, 10, 0, 4])
    fitted = np.array([9, 0, 10, 0])  # per parent user; user 4 is new
    assert warmstart.warm_limits(lengths, fitted).tolist() == [9, 0, 10, 0, 0]


@pytest.fixture(scope="module")
def lineage(ray_local, synthetic_data, tmp_path_factory):
    """The synthetic DATA, a partition appended to it (later rows of some users, a new user
    with a new item), a parent RUN on the first and a warm start on the second."""
    base = tmp_path_factory.mktemp("warm")
    data = DataDir(synthetic_data)
    t0 = data.max_timestamp
    train_rows = data.read("train").to_pydict()
    rows = [
        [train_rows["user_id"][i], train_rows["item_id"][i + 1], t0 + 10 + i, 1.0]
        for i in range(0, 4000, 20)
    ]
    rows += [["brand-new-user", "brand-new-item", t0 + 5000 + j, 1.0] for j in range(6)]
    rows += [["brand-new-user", train_rows["item_id"][j], t0 + 6000 + j, 1.0] for j in range(6)]
    with open(base / "today.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["user_id", "item_id", "timestamp", "weight"], *rows])
    data2 = base / "data2"
    prepare_or_append(
        PrepareConfig(source=str(base / "today.csv"), append_to=str(synthetic_data), out=str(data2))
    )
    parent = base / "parent"
    train(train_config(data=str(synthetic_data), out=str(parent), epochs=2, refit=True, **TINY))
    child = base / "child"
    cfg = train_config(
        data=str(data2),
        out=str(child),
        init=str(parent),
        init_schedule="search",  # the schedule with a search: validation on unfitted rows
        init_epochs=2,
        seed=1,
        **TINY,
    )
    train(cfg)
    return {"data": data, "data2": DataDir(data2), "parent": parent, "child": child, "cfg": cfg}


@pytest.mark.integration
def test_init_starts_from_the_parent_with_grown_tables(lineage):
    cfg, data2 = lineage["cfg"], lineage["data2"]
    parent = RunDir(lineage["parent"]).payload()
    mcfg = model_config(cfg, data2.manifest["users"], data2.manifest["items"])
    kept = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, init_shrink=1.0))
    start = initial_state(kept, fresh_models(kept, mcfg)[0])
    n_old = parent["model_config"]["n_items"]
    old_items = parent["generator"]["encoder.items.weight"]
    new_items = start["generator"]["encoder.items.weight"]
    assert new_items.shape[0] == data2.manifest["items"] + 1 > old_items.shape[0]
    assert torch.equal(new_items[:n_old], old_items[:n_old])
    for key, value in parent["generator"].items():
        if key not in warmstart.TABLES:
            assert torch.equal(start["generator"][key], value), key
    # The default shrinks towards this run's own fresh start (new rows: the fresh start's).
    fresh = fresh_models(cfg, mcfg)[0].state_dict()
    shrunk = initial_state(cfg, fresh_models(cfg, mcfg)[0])["generator"]
    keep = cfg.optim.init_shrink
    assert keep < 1
    for key, value in start["generator"].items():
        if value.is_floating_point():
            assert torch.allclose(shrunk[key], keep * value + (1 - keep) * fresh[key]), key


@pytest.mark.integration
def test_warm_started_run_records_its_parent_and_validates_on_unfitted_rows(lineage):
    child, data2 = RunDir(lineage["child"]), lineage["data2"]
    payload = child.payload()
    assert payload["parent"]["run"] == str(lineage["parent"])
    assert payload["parent"]["data_version"] == lineage["data"].version
    assert payload["data_version"] == data2.version and child.meta()["parent"]["run"]
    history = payload["state"]["history"]
    assert 1 <= sum(h["phase"] == "search" for h in history) <= 2  # init_epochs
    assert history[-1]["phase"] == "refit"
    # Validation users are the users with train rows the parent never trained on.
    before = np.diff(RunDir(lineage["parent"]).sequences()[0].offsets)
    after = data2.sequences().lengths
    unfitted = set(np.flatnonzero(after > np.r_[before, np.zeros(len(after) - len(before))]))
    scored = set(payload["state"]["best_val_users"])
    assert scored and scored <= unfitted and len(scored) > 0.5 * len(unfitted)


@pytest.mark.integration
def test_bad_or_incompatible_init_is_one_line(lineage, tmp_path, capsys):
    data2, parent = lineage["data2"].root, str(lineage["parent"])
    model = ["--hidden", "32", "--history_len", "10", "--noise_dim", "4"]
    (tmp_path / "log.csv").write_text("user_id,item_id,timestamp\na,b,1\na,c,2\n")
    other = tmp_path / "other"  # another DATA, not a version of the parent's
    prepare_or_append(PrepareConfig(source=str(tmp_path / "log.csv"), out=str(other)))
    # Its log lines (and, in a full run, a handler an earlier test left on its closed capture
    # stream complaining) are not the commands' output under test.
    capsys.readouterr()
    cases = [
        [data2, "--init", str(tmp_path / "nothing"), "--dim", "16"],
        [data2, "--init", parent, "--dim", "8"],
        # The parent's own DATA is not newer than the parent: nothing to validate on.
        [lineage["data"].root, "--init", parent, "--dim", "16"],
        [str(tmp_path), "--init", parent, "--dim", "16"],  # not a DATA
        [str(other), "--init", parent, "--dim", "16"],
    ]
    for data, *extra in cases:
        args = ["train", "--data", data, "--out", str(tmp_path / "x"), *model, *extra]
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5, err
    assert "no trained checkpoint" in err[0] and "another model (dim 16 vs 8)" in err[1]
    assert "no interaction newer" in err[2] and "not a prepared data directory" in err[3]
    assert "not" in err[4] and "an ancestor of it" in err[4]
    assert not (tmp_path / "x").exists()


@pytest.mark.integration
def test_a_worker_killed_during_the_warm_start_resumes_into_the_same_run(lineage, tmp_path):
    """The daily update's training: a worker killed in its second search epoch is restarted
    by Ray Train and resumes from the warm run's own checkpoint, ending where the
    uninterrupted warm start ended (same losses, same final model)."""
    broken = tmp_path / "broken"
    cfg = dataclasses.replace(lineage["cfg"], out=str(broken))
    cfg = dataclasses.replace(
        cfg,
        execution=dataclasses.replace(
            cfg.execution, fail_at_epoch=2, max_failures=1, name="broken-warm"
        ),
    )
    train(cfg)
    assert (broken / RunDir.FAULT_MARKER).exists()
    keys = ("phase", "ce_loss", "d_loss", "val_ndcg@10")
    whole = RunDir(lineage["child"]).payload()
    again = RunDir(broken).payload()
    assert [[h.get(k) for k in keys] for h in again["state"]["history"]] == [
        [h.get(k) for k in keys] for h in whole["state"]["history"]
    ]
    assert torch.equal(
        again["generator"]["encoder.items.weight"], whole["generator"]["encoder.items.weight"]
    )


@pytest.mark.integration
def test_the_fixed_schedule_trains_all_of_train_from_the_parent(lineage, tmp_path):
    """--init_schedule fixed: no search, init_epochs epochs over every train row from the
    parent's weights; the parent is recorded as for the search schedule."""
    out = tmp_path / "fixed"
    cfg = dataclasses.replace(lineage["cfg"], out=str(out))
    cfg = dataclasses.replace(
        cfg, optim=dataclasses.replace(cfg.optim, init_schedule="fixed", init_epochs=2)
    )
    train(cfg)
    payload = RunDir(out).payload()
    assert [h["phase"] for h in payload["state"]["history"]] == ["refit", "refit"]
    assert payload["state"]["history"][0]["rows"] == lineage["data2"].manifest["train_rows"]
    assert RunDir(out).meta()["parent"]["run"] == str(lineage["parent"])
    parent = RunDir(lineage["parent"]).payload()["generator"]["encoder.items.weight"]
    grown = payload["generator"]["encoder.items.weight"]
    assert not torch.equal(grown[: parent.shape[0] - 1], parent[:-1])  # trained on from there


@pytest.mark.integration
def test_replay_trains_the_new_rows_and_a_share_of_the_old(lineage, tmp_path):
    """--init_replay 0.25: an epoch trains the rows the parent never fitted and a quarter of
    the rest (in expectation), in full batches: its rows are that count, not all of train."""
    from ganrec_dist.training.warmstart import parent_lengths, warm_limits

    out = tmp_path / "replay"
    cfg = dataclasses.replace(lineage["cfg"], out=str(out))
    cfg = dataclasses.replace(
        cfg,
        optim=dataclasses.replace(
            cfg.optim, init_schedule="fixed", init_epochs=2, init_replay=0.25
        ),
    )
    train(cfg)
    lengths = lineage["data2"].sequences().lengths
    old = int(warm_limits(lengths, parent_lengths(str(lineage["parent"]))).sum())
    new = int(lengths.sum()) - old
    assert new > 100  # the appended rows and the parent's test rows moved into train
    history = RunDir(out).payload()["state"]["history"]
    assert [h["phase"] for h in history] == ["refit", "refit"]
    for epoch in history:
        assert abs(epoch["rows"] - (new + 0.25 * old)) <= cfg.optim.batch_size + 4 * old**0.5


@pytest.mark.integration
def test_warm_starts_count_back_to_the_last_run_from_scratch(lineage):
    from ganrec_dist.operations.update import warm_starts

    assert warm_starts(str(lineage["parent"])) == 0
    assert warm_starts(str(lineage["child"])) == 1


@pytest.mark.integration
def test_the_retrain_policy_trains_from_scratch_and_still_gates(lineage, tmp_path):
    """`ganrec update --retrain_every 2` on a run one warm start from scratch: the day's run is
    trained from scratch (no parent), judged by the gate on its own validation rows."""
    import json

    from ganrec_dist.core.config import UpdateConfig
    from ganrec_dist.operations.update import update

    data2 = lineage["data2"]
    train_rows = data2.read("train").to_pydict()
    t0 = data2.max_timestamp
    day = tmp_path / "day.csv"
    with open(day, "w", newline="") as handle:
        csv.writer(handle).writerows(
            [["user_id", "item_id", "timestamp", "weight"]]
            + [
                [train_rows["user_id"][i], train_rows["item_id"][i], t0 + 1 + i, 1.0]
                for i in range(0, 3000, 30)
            ]
        )
    out = tmp_path / "retrained"
    record = update(
        UpdateConfig(
            run=str(lineage["child"]),
            source=str(day),
            out_data=str(tmp_path / "data3"),
            out=str(out),
            retrain_every=2,
            rollout=False,
        )
    )
    assert RunDir(out).meta()["parent"] is None  # from scratch, not --init
    gate = json.loads((out / RunDir.GATE).read_text())
    assert gate["users"] > 0 and gate["passed"] == record["passed"]
