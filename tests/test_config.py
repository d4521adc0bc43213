import pytest

from ganrec_dist.config import IndexConfig, PrepareConfig, TrainConfig, load
from ganrec_dist.errors import UserError


def test_defaults_yaml_cli_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 0.5\nindex:\n  nprobe: 3\nprepare:\n  shards: 9\n")
    cfg = load(TrainConfig, "train", str(path), {"lr": "0.25"})
    assert cfg.epochs == 7  # from YAML
    assert cfg.lr == 0.25  # the command line wins
    assert cfg.batch_size == TrainConfig().batch_size  # default
    assert cfg.index.nprobe == 3  # shared section
    assert load(PrepareConfig, "prepare", str(path), {}).shards == 9


def test_flat_yaml_and_dotted_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nindex:\n  kind: hnsw\n")
    cfg = load(TrainConfig, "train", str(path), {"index.ef_search": "64", "gpu": "true"})
    assert (cfg.epochs, cfg.index.kind, cfg.index.ef_search, cfg.gpu) == (3, "hnsw", 64, True)
    assert isinstance(cfg.index, IndexConfig)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochz": "3"}, "unknown config key 'epochz'"),
        ({"epochs": "three"}, "'epochs': expected an integer"),
        ({"lr": "fast"}, "'lr': expected a number"),
        ({"gpu": "maybe"}, "'gpu': expected true/false"),
        ({"index.nprob": "1"}, "unknown config key 'index.nprob'"),
        ({"epochs.x": "1"}, "'epochs' has no sub-keys"),
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
    with pytest.raises(UserError, match="'epochs': expected an integer"):
        load(TrainConfig, "train", str(path), {})
