"""`ganrec sweep` through Ray Tune and `ganrec compare` on its runs, on a tiny log."""

import json
import os
import subprocess
import sys
import time

import pytest

from ganrec_dist.core.errors import UserError
from ganrec_dist.evaluation.sweep import read_sweep

pytestmark = pytest.mark.integration

SWEEP = """
name: tiny
out: {out}
data: {data}
seeds: 2
train: {{epochs: 2, refit: false, dim: 16, hidden: 32, history_len: 10, noise_dim: 4,
         batch_size: 512, cpus_per_worker: 0.5}}
"""


def _sweep(path):
    cli = [sys.executable, "-m", "ganrec_dist", "sweep", "--config", str(path)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen(
        cli,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_killed_sweep_resumes_and_compare_pairs_its_runs(synthetic_data, tmp_path, kill_tree):
    out = tmp_path / "sweep"
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(out=out, data=synthetic_data))
    first = out / "runs" / "default-seed0" / "checkpoint" / "meta.json"
    second = out / "runs" / "default-seed1"
    proc = _sweep(path)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if first.exists() and json.loads(first.read_text())["final"]:
                break
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the first trial did not finish within 300 s")
    finally:
        kill_tree(proc)
    done_at = first.stat().st_mtime
    assert not (out / "sweep.json").exists()  # killed before the end

    proc = _sweep(path)
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output[-3000:]
    assert "resuming the sweep" in output
    assert "Trial status" in output  # Tune's progress table
    summary = json.loads((out / "sweep.json").read_text())
    assert [(t["config"], t["seed"]) for t in summary["trials"]] == [("default", 0), ("default", 1)]
    assert all(t["error"] is None and 0 < t["val_ndcg@10"] < 1 for t in summary["trials"])
    assert "test_ndcg@10" not in summary["trials"][0]  # validation only without --test
    assert first.stat().st_mtime == done_at  # the finished trial was not trained again
    assert json.loads((second / "checkpoint" / "meta.json").read_text())["final"]

    # The two runs are seeds 0 and 1: a run compared with itself is paired seed by seed and
    # differs by exactly zero; a group holding one seed twice is refused.
    from ganrec_dist.evaluation.compare import compare

    runs = [str(out / "runs" / f"default-seed{s}") for s in (0, 1)]
    result = compare(runs, runs, resamples=200)
    assert result["seeds"] == 2 and result["difference"] == 0.0
    assert result["interval"] == [0.0, 0.0] and result["verdict"] == "no difference"
    with pytest.raises(UserError, match="second run of seed 0"):
        compare([runs[0], runs[0]], runs)


def test_a_sweep_file_is_checked_before_anything_runs(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nout: o\ndata: d\nconfigurations: {a: {no_such_key: 1}}\n")
    with pytest.raises(UserError, match="configuration 'a': unknown config key 'no_such_key'"):
        read_sweep(str(path))
    path.write_text("name: x\nout: o\ndata: d\nseeds: 3\ngrid: {dropout: [0.1, 0.2]}\n")
    trials = read_sweep(str(path))["trials"]
    assert len(trials) == 6 and trials[0]["settings"]["dropout"] == 0.1
    assert trials[0]["run"].endswith("runs/default-dropout0.1-seed0")
