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


def _version(root, name, data, parent):
    """A run directory as prune reads it: config.yaml's DATA and the checkpoint's parent."""
    run = root / "runs" / name
    (run / "checkpoint").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": str(data), "execution": {}}))
    meta = {"parent": {"run": str(root / "runs" / parent)} if parent else None}
    (run / "checkpoint" / "meta.json").write_text(json.dumps(meta))
    (data / "manifest.json").parent.mkdir(parents=True, exist_ok=True)
    (data / "manifest.json").write_text("{}")
    return run


def test_keep_removes_only_versions_no_kept_or_rollback_version_needs(tmp_path):
    from ganrec_dist.operations.update import prune, versions

    names = ["r", "r.v2", "r.v3", "r.v4"]
    datas = [tmp_path / "d", tmp_path / "d.v2", tmp_path / "d.v3", tmp_path / "d.v4"]
    runs = [
        _version(tmp_path, name, data, names[i - 1] if i else None)
        for i, (name, data) in enumerate(zip(names, datas))
    ]
    (tmp_path / "runs" / "r.vx").mkdir()  # not a version: never touched
    assert versions(runs[2]) == [r.resolve() for r in runs]
    # The live run is the newest but one (the newest was held back): it, its parent and the
    # newest stay, with their DATA.
    assert prune(str(runs[2]), keep=1) == [str(runs[0].resolve()), str(datas[0].resolve())]
    assert [p.exists() for p in runs + datas] == [False, True, True, True] * 2
    assert prune(str(runs[3]), keep=1) == [str(runs[1].resolve()), str(datas[1].resolve())]
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {"r.v3", "r.v4", "r.vx"}
    assert prune(str(runs[3]), keep=0) == []
