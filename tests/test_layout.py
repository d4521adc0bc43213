"""DATA/ and RUN/ readers: artifacts are data, not code; runs of earlier versions are refused."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
import yaml

from ganrec_dist.core import storage
from ganrec_dist.core.config import TrainConfig, UpdateConfig, to_dict
from ganrec_dist.core.errors import UserError
from ganrec_dist.data.layout import CHECKPOINT_FORMAT, RunDir, load_payload
from ganrec_dist.operations.update import update
from ganrec_dist.training.resume import check_resumable


class _Planted:
    """Unpickling this runs ``os.system``: what a file planted in shared storage could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _checkpoint(run, payload, meta=None):
    directory = run / RunDir.CHECKPOINT
    directory.mkdir(parents=True)
    torch.save(payload, directory / RunDir.MODEL)
    (directory / RunDir.META).write_text(json.dumps(meta or {"phase": "done", "epoch": 1}))


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "code-ran"
    _checkpoint(tmp_path / "run", {"format": CHECKPOINT_FORMAT, "generator": _Planted(marker)})
    with open(tmp_path / "run" / "checkpoint" / "model.pt", "rb") as f:
        assert b"system" in f.read()  # the pickle really holds the call
    with pytest.raises(UserError, match="refused: loading it would call posix.system") as info:
        RunDir(tmp_path / "run").payload()
    assert "\n" not in str(info.value)
    assert not marker.exists()  # and it never ran
    with pytest.raises(pickle.UnpicklingError):  # what an unrestricted load would have done
        torch.load(tmp_path / "run" / "checkpoint" / "model.pt", weights_only=True)


def test_a_checkpoint_of_an_earlier_format_is_refused_naming_the_version(tmp_path):
    _checkpoint(tmp_path / "run", {"format": 1, "generator": {"w": torch.zeros(2)}})
    with pytest.raises(UserError, match="checkpoint format 1 is from an earlier ganrec-dist"):
        RunDir(tmp_path / "run").payload()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_payload(tmp_path / "junk.pt")


def test_a_run_of_an_earlier_version_is_not_resumed(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, {"format": 1})
    flat = {"lr": 0.002, "epochs": 30, "workers": 1, "index": {"kind": "auto"}}
    (run / RunDir.CONFIG).write_text(yaml.safe_dump(flat))
    with pytest.raises(UserError, match="earlier ganrec-dist"):
        check_resumable(RunDir(run), TrainConfig(out=str(run)))
    with pytest.raises(UserError, match="earlier ganrec-dist"):  # the daily update too
        update(UpdateConfig(run=str(run), source=str(tmp_path / "today.csv")))
    (run / RunDir.CONFIG).write_text(yaml.safe_dump(to_dict(TrainConfig(out=str(run)))))
    check_resumable(RunDir(run), TrainConfig(out=str(run)))  # the same settings: resumes


def test_replace_dir_swaps_in_one_step_and_keeps_nothing_behind(tmp_path):
    target, new = tmp_path / "index", tmp_path / "index.new"
    target.mkdir()
    (target / "a").write_text("old")
    new.mkdir()
    (new / "a").write_text("new")
    storage.replace_dir(new, target)
    assert (target / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # the old copy is gone
    fresh = tmp_path / "fresh.new"
    fresh.mkdir()
    storage.replace_dir(fresh, tmp_path / "fresh")  # nothing there before
    assert (tmp_path / "fresh").is_dir() and not fresh.exists()
