import pytest

from ganrec_dist.core.config import (
    STAGES,
    IndexConfig,
    PrepareConfig,
    TrainConfig,
    UpdateConfig,
    fields,
    load,
    replace,
)
from ganrec_dist.core.errors import UserError


def test_defaults_yaml_cli_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 0.5\nindex:\n  nprobe: 3\nprepare:\n  shards: 9\n")
    cfg = load(TrainConfig, "train", str(path), {"lr": "0.25"})
    assert cfg.optim.epochs == 7  # from YAML
    assert cfg.optim.lr == 0.25  # the command line wins
    assert cfg.optim.batch_size == TrainConfig().optim.batch_size  # default
    assert cfg.index.nprobe == 3  # shared section
    assert load(PrepareConfig, "prepare", str(path), {}).shards == 9


def test_every_command_reads_its_own_section_of_a_pipeline_file(tmp_path):
    from ganrec_dist.operations.cli import BENCHES, COMMANDS

    keys = [*COMMANDS, *(f"bench_{name}" for name in BENCHES)]
    # `index:` is the shared IndexConfig of every stage, and the index command's own.
    assert {k for k in keys if k != "index"} == set(STAGES)
    path = tmp_path / "daily.yaml"
    path.write_text("update:\n  init_epochs: 2\n  rollout: false\n")  # one section alone
    cfg = load(UpdateConfig, "update", str(path), {})
    assert (cfg.init_epochs, cfg.rollout) == (2, False)


def test_the_update_warm_starts_with_its_own_schedule():
    """The live run's settings, but the update's warm-start epochs and shrink (a live run
    trained before the shrink existed records none, or another)."""
    from ganrec_dist.core.config import to_dict, train_config
    from ganrec_dist.operations.update import warm_config

    stored = to_dict(train_config(data="d", out="live", init_shrink=1.0, init_epochs=7, lr=0.01))
    cfg = warm_config(
        stored, UpdateConfig(run="live", init_epochs=2, init_shrink=0.5), data="d2", out="r2"
    )
    assert (cfg.init, cfg.data, cfg.out) == ("live", "d2", "r2")
    assert (cfg.optim.init_epochs, cfg.optim.init_shrink, cfg.optim.lr) == (2, 0.5, 0.01)


def test_flat_yaml_and_dotted_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nindex:\n  kind: hnsw\n")
    cfg = load(TrainConfig, "train", str(path), {"index.ef_search": "64", "gpu": "true"})
    assert (cfg.optim.epochs, cfg.index.kind, cfg.index.ef_search, cfg.execution.gpu) == (
        3,
        "hnsw",
        64,
        True,
    )
    assert isinstance(cfg.index, IndexConfig)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochz": "3"}, "unknown config key 'epochz'"),
        ({"epochs": "three"}, "'optim.epochs': expected an integer"),
        ({"lr": "fast"}, "'optim.lr': expected a number"),
        ({"gpu": "maybe"}, "'execution.gpu': expected true/false"),
        ({"index.nprob": "1"}, "unknown config key 'index.nprob'"),
        ({"epochs.x": "1"}, "'optim.epochs' has no sub-keys"),
        ({"model.lr": "1"}, "unknown config key 'model.lr'"),  # a flat key, in another section
    ],
)
def test_bad_keys_and_types_are_one_line_errors(overrides, message):
    with pytest.raises(UserError, match=message) as info:
        load(TrainConfig, "train", None, overrides)
    assert "\n" not in str(info.value)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load(TrainConfig, "train", str(path), {})
    with pytest.raises(UserError, match="cannot read config file"):
        load(TrainConfig, "train", str(tmp_path / "missing.yaml"), {})
    path.write_text("train:\n  epochs: [1, 2]\n")
    with pytest.raises(UserError, match="'optim.epochs': expected an integer"):
        load(TrainConfig, "train", str(path), {})


def test_nested_and_flat_keys_are_the_same_setting(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  model:\n    dim: 8\n  optim: {epochs: 4}\n  workers: 2\n")
    cfg = load(TrainConfig, "train", str(path), {"model.hidden": "12", "noise_dim": "3"})
    assert (cfg.model.dim, cfg.model.hidden, cfg.model.noise_dim) == (8, 12, 3)
    assert (cfg.optim.epochs, cfg.execution.workers) == (4, 2)
    assert replace(cfg, adv_weight=0.0, out="elsewhere").game.adv_weight == 0.0


def test_every_setting_has_help_and_the_cli_shows_it_with_its_default(capsys):
    from ganrec_dist.operations.cli import BENCHES, COMMANDS, _resolve, main

    classes = [cls for cls, _, _ in COMMANDS.values()]
    classes += [_resolve(spec) for spec, _, _ in BENCHES.values()]
    for cls in classes:
        for name, field, _, _ in fields(cls):
            assert field.metadata.get("help"), f"{cls.__name__}.{name} has no help"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "model settings" in text and "execution settings" in text  # grouped by section
    assert "--patience" in text and "without a better validation (default: 3)" in text
    assert "--dim INT, --model.dim INT" in text  # flat and dotted names
    assert main(["train", "--cpus-per-worker=x"]) == 2  # either spelling, a one-line error
