"""The training loop's pieces without Ray: batches, the weight average, the split windows, and
the rule for which settings make another run."""

import numpy as np
import pytest
import torch

from ganrec_dist.core.config import TrainConfig, to_dict, train_config
from ganrec_dist.data.interactions import Sequences
from ganrec_dist.model.models import Generator, ModelConfig
from ganrec_dist.training.batches import make_batch
from ganrec_dist.training.building import averaged
from ganrec_dist.training.resume import config_changes, run_changes

CFG = ModelConfig(n_items=40, n_users=10, dim=8, hidden=16, history_len=5, noise_dim=4, dropout=0.0)


def test_history_windows():
    seq = Sequences(np.array([0, 3, 3, 5]), np.array([7, 8, 9, 1, 2], dtype=np.int32), 3, 10)
    w = seq.window(np.array([0, 0, 1, 2]), np.array([3, 1, 0, 2]), 2)
    assert w.tolist() == [[8, 9], [10, 7], [10, 10], [1, 2]]
    m = seq.matrix(np.array([1, 0, 2]))
    assert m.toarray()[0].nonzero()[0].tolist() == [7] and m[1].nnz == 0


def test_batch_targets_and_future_come_from_the_fitted_window():
    # One user with items 0..29 in order; positions 0..29; only the first 20 are fitted.
    seq = Sequences(np.array([0, 30]), np.arange(30, dtype=np.int32), 1, 30)
    limits = np.array([20])
    users = np.zeros(200, dtype=np.int64)
    positions = np.random.default_rng(0).integers(0, 20, 200)
    items = seq.items[positions]
    rng = np.random.default_rng(1)
    rows = dict(users=users, items=items, positions=positions, history_len=5, limits=limits)
    next_only = make_batch(seq, **rows, device=torch.device("cpu"), horizon=1, rng=rng)
    assert (next_only.targets.numpy() == items).all() and next_only.future is None
    batch = make_batch(seq, **rows, device=torch.device("cpu"), horizon=4, rng=rng, ce_horizon=8)
    targets, future = batch.targets.numpy(), batch.future.numpy()
    # Items equal positions here: each draw lies in [position, position + N) and before the limit.
    assert ((targets >= positions) & (targets < positions + 8) & (targets < 20)).all()
    assert ((future >= positions) & (future < positions + 4) & (future < 20)).all()
    assert (targets != items).any()  # the window is really sampled, not just the next item


def test_the_averaged_generator_is_an_exponential_moving_average():
    assert averaged(Generator(CFG), 0.0) is None  # off
    torch.manual_seed(0)
    gen = Generator(CFG)
    average = averaged(gen, 0.9)
    weight = lambda: gen.head[0].weight.detach().clone()  # noqa: E731
    expected = weight()
    average.update_parameters(gen)  # the first update copies
    for n in range(1, 120):  # reaches the cap at n = 80
        with torch.no_grad():
            gen.head[0].weight.add_(1.0)
        average.update_parameters(gen)
        decay = min(0.9, (1 + n) / (10 + n))  # warms up, then stays at 0.9
        expected = decay * expected + (1 - decay) * weight()
        assert torch.allclose(average.module.head[0].weight, expected, atol=1e-5)
    # It is a Generator with G's keys: checkpoints and readers load it like G itself.
    assert average.module.state_dict().keys() == gen.state_dict().keys()


def test_config_changes_name_what_differs():
    old = to_dict(TrainConfig())
    with_workers = to_dict(train_config(workers=4, name="elsewhere"))
    assert config_changes(old, with_workers) == []  # where it runs may change
    other = to_dict(train_config(lr=0.004, index={"kind": "flat"}))
    assert config_changes(old, other) == [
        "index.kind: 'auto' -> 'flat'",
        f"optim.lr: {TrainConfig().optim.lr!r} -> 0.004",
    ]
    fewer = {**old, "optim": {k: v for k, v in old["optim"].items() if k != "ce_horizon"}}
    assert config_changes(fewer, old) == ["optim.ce_horizon: '(not recorded)' -> 1"]


def test_run_changes_ignore_d_settings_only_for_a_run_without_d_steps():
    gan_cfg, ablation_cfg = TrainConfig(), train_config(adv_weight=0.0)
    stored = to_dict(train_config(adv_weight=0.0, d_lr=0.5, d_mismatch=0.0, workers=8))
    assert run_changes(stored, ablation_cfg) == []  # the ablation: the same run
    stored_gan = to_dict(train_config(d_lr=0.5, d_mismatch=0.0, workers=8))
    assert run_changes(stored_gan, gan_cfg) == [
        f"discriminator.d_lr: 0.5 -> {gan_cfg.discriminator.d_lr!r}",
        f"discriminator.d_mismatch: 0.0 -> {gan_cfg.discriminator.d_mismatch!r}",
    ]
    stored_lr = to_dict(train_config(adv_weight=0.0, lr=0.1))
    assert run_changes(stored_lr, ablation_cfg) == [f"optim.lr: 0.1 -> {ablation_cfg.optim.lr!r}"]


def test_threads_are_the_setting_else_the_workers_whole_cpus():
    from ganrec_dist.core.errors import UserError
    from ganrec_dist.training.train import _check, _threads

    assert _threads(train_config(threads=3)) == 3
    assert _threads(train_config(workers=2, cpus_per_worker=2.0)) == 2
    assert _threads(train_config(workers=2, cpus_per_worker=0.5)) == 1
    with pytest.raises(UserError, match="--threads must be 0"):
        _check(train_config(threads=-1), None)


def test_trials_side_by_side_divide_the_cores_among_lone_local_workers():
    from ganrec_dist.core.config import build
    from ganrec_dist.evaluation.sweep import _share_cores

    trials = [
        {"settings": {}},
        {"settings": {"execution.threads": 0}},  # 0 is automatic: shared like the default
        {"settings": {"threads": 3}},  # set by the sweep file: kept
        {"settings": {"execution.threads": 3}},  # the nested spelling too
        {"settings": {"workers": 2}},  # several workers take their own CPUs' worth already
        {"settings": {"execution.workers": 2}},
        {"settings": {"address": "ray://head:10001"}},
    ]
    _share_cores(trials, cores=8, concurrent=3)
    threads = [build(TrainConfig, t["settings"]).execution.threads for t in trials]
    assert threads == [2, 2, 3, 3, 0, 0, 0]
    crowded = [{"settings": {}}]
    _share_cores(crowded, cores=2, concurrent=4)
    assert build(TrainConfig, crowded[0]["settings"]).execution.threads == 1


def _random_sequences(rng, n_users=60, n_items=30, longest=12):
    lengths = rng.integers(1, longest, n_users)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return Sequences(
        offsets, rng.integers(0, n_items, offsets[-1]).astype(np.int32), n_users, n_items
    )


def test_validation_scores_all_users_or_a_fixed_sample():
    from ganrec_dist.data.interactions import held_out, validation_limits
    from ganrec_dist.training.validation import sample_users, validation_truth, validation_users

    seq = _random_sequences(np.random.default_rng(0))
    limits = validation_limits(seq, 0.2)
    everyone = validation_users(seq, limits)
    assert np.array_equal(sample_users(everyone, 0, seed=0), everyone)
    truth = validation_truth(seq, limits, everyone)
    assert (truth != held_out(seq, limits)).nnz == 0  # all users: exactly the held-out rows
    users = sample_users(everyone, 10, seed=3)
    assert len(users) == 10 and np.array_equal(users, sample_users(everyone, 10, seed=3))
    truth = validation_truth(seq, limits, users)
    assert set(np.flatnonzero(np.diff(truth.indptr))) == set(users)
    assert (truth[users] != held_out(seq, limits)[users]).nnz == 0


def test_ranks_validating_their_own_users_give_the_one_rank_numbers():
    """Each rank scores the users it holds; their user-weighted mean is the one-rank metric."""
    from ganrec_dist.core.config import IndexConfig
    from ganrec_dist.data.interactions import from_rows, validation_limits
    from ganrec_dist.model.models import Generator, ModelConfig
    from ganrec_dist.training.validation import (
        validation_metrics,
        validation_truth,
        validation_users,
    )

    rng = np.random.default_rng(1)
    seq = _random_sequences(rng, n_users=80, n_items=40, longest=20)
    torch.manual_seed(0)
    gen = Generator(ModelConfig(n_items=40, n_users=80, dim=8, hidden=16, history_len=5))

    def metrics(part: Sequences) -> tuple[dict, int]:
        limits = validation_limits(part, 0.25)
        users = validation_users(part, limits)
        truth = validation_truth(part, limits, users)
        cfg = IndexConfig(kind="flat")
        values = validation_metrics(gen, part, limits=limits, truth=truth, index_cfg=cfg)
        return values, len(users)

    whole, n = metrics(seq)
    rows_user = np.repeat(np.arange(seq.n_users), seq.lengths)
    position = np.arange(len(seq.items)) - seq.offsets[rows_user]
    parts = []
    for mine in (rows_user % 3 == 0, rows_user % 3 != 0):  # two ranks with unequal users
        part = from_rows(rows_user[mine], seq.items[mine], position[mine], n_users=80, n_items=40)
        parts.append(metrics(part))
    assert sum(count for _, count in parts) == n
    for key, value in whole.items():
        combined = sum(values[key] * count for values, count in parts) / n
        assert combined == pytest.approx(value, abs=1e-12), key


def test_shards_are_dealt_as_whole_files_balanced_by_rows():
    from ganrec_dist.core.errors import UserError
    from ganrec_dist.data import shards

    found = [("a", 100), ("b", 400), ("c", 300), ("d", 250), ("e", 50)]
    dealt = shards.assign(found, 2)
    assert sorted(f for files in dealt for f in files) == ["a", "b", "c", "d", "e"]
    rows = dict(found)
    assert sorted(sum(rows[f] for f in files) for files in dealt) == [550, 550]
    assert all(files == sorted(files) for files in dealt)  # each in the split's file order
    assert shards.assign(found, 1) == [["a", "b", "c", "d", "e"]]
    with pytest.raises(UserError, match="5 file\\(s\\) for 6 workers"):
        shards.assign(found, 6)
    # The mean shard's batches, the natural count on one rank.
    assert shards.steps_per_epoch(1100, 1, 256) == 5
    assert shards.steps_per_epoch(1100, 2, 256) == 3


def test_replay_keeps_every_unfitted_row_and_a_share_of_the_fitted():
    from ganrec_dist.training.worker import Replay

    fitted = np.array([3, 0, 10])  # user 1 is new to the parent
    replay = Replay(fitted=fitted, share=0.3, steps=1)
    users = np.repeat([0, 1, 2], 4000)
    positions = np.tile(np.arange(4000) % 12, 3)
    keep = replay.mask(np.random.default_rng(0))({"user_idx": users, "position": positions})
    fresh = positions >= fitted[users]
    assert keep[fresh].all()
    assert abs(keep[~fresh].mean() - 0.3) < 0.02
    again = replay.mask(np.random.default_rng(0))({"user_idx": users, "position": positions})
    assert np.array_equal(keep, again)  # seeded: a resumed epoch draws the same sample
