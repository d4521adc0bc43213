"""The command line as a person meets it: its console output, and stopping it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from ganrec_dist.core.config import PrepareConfig
from ganrec_dist.data.prepare import prepare

pytestmark = pytest.mark.integration

# Ray's own messages that a command's console output must not show (without --verbose).
RAY_NOISE = (
    "Reporting training result",
    "PreemptionWatcher",
    "RayDeprecationWarning",
    "Starting execution of Dataset",
    "Progress bars disabled",
    "Traceback",
    "*** SIG",  # the C++ stack trace Ray's core worker prints on a signal
)


@pytest.fixture(scope="module")
def tiny_data(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "data"
    prepare(
        PrepareConfig(
            source="synthetic", out=str(out), users=200, items=300, interactions=6_000, seed=5
        )
    )
    return out


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    "signum, status, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")]
)
def test_a_stopped_training_prints_one_line_and_leaves_no_process(
    tiny_data, tmp_path, signum, status, name
):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "ganrec_dist", "train", f"--data={tiny_data}", f"--out={run}"]
    command += ["--epochs=500", "--patience=500", "--dim=8", "--hidden=16", "--history_len=5"]
    # A crash after the line would otherwise show only its status: print the stacks.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONFAULTHANDLER": "1"}
    env.pop("RAY_ADDRESS", None)
    # The command's own local Ray decides on the preemption watcher (the suite's turns it off).
    env.pop("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", None)
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As a terminal starts it: a suite run in the background (`cmd &`) inherits SIGINT
        # ignored, and Python then never turns Ctrl-C into KeyboardInterrupt.
        preexec_fn=_default_sigint,
    )
    deadline = time.time() + 180
    while not (run / "checkpoint" / "meta.json").exists():  # an epoch is done: Ray is busy
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.5)
    tree = psutil.Process(proc.pid).children(recursive=True)
    assert tree  # the local Ray this command started
    # A local Ray has no nodes a cloud takes back: no watcher process (`ray::PreemptionWatcher`
    # when Ray Train starts one) in an epoch of the run.
    titles = []
    for p in tree:
        try:
            titles.append(" ".join(p.cmdline()))
        except psutil.NoSuchProcess:
            pass
    assert any(t.startswith("ray::RayTrainWorker") for t in titles), titles
    assert not any("PreemptionWatcher" in t for t in titles), titles
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=300)  # a slow host: Ray's shutdown takes a while
    except subprocess.TimeoutExpired:
        # Fail without leaving the command and its Ray to slow down every later test.
        for p in [psutil.Process(proc.pid), *tree]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        out, err = proc.communicate()
        pytest.fail(f"still running 300 s after {name}: {err[-2000:]}")
    assert proc.returncode == status, err
    assert err.strip().splitlines()[-1] == f"ganrec train: stopped by {name}"
    assert "search epoch 1/500" in err  # the command's own progress
    assert not [noise for noise in RAY_NOISE if noise in out + err], out + err
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, [p.pid for p in alive]
