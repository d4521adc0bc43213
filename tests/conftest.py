"""One local Ray instance for the whole test session, within 2 CPUs."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# Ray Train's preemption watcher (for nodes a cloud takes back) is one more actor to start and
# stop in each of the suite's small trainings, on a machine nothing preempts.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The S3 and GCS servers of test_storage.py listen here. Set before Ray starts so that its
# workers (which read these like any node would) reach it; only s3:// paths use them.
os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{_free_port()}"
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{_free_port()}"  # gs:// (test_storage)
os.environ["GANREC_CACHE"] = tempfile.mkdtemp(prefix="ganrec-test-cache-")
# Gone with the session, like every other directory the suite makes.
atexit.register(shutil.rmtree, os.environ["GANREC_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from ganrec_dist.core.logs import setup_logging
    from ganrec_dist.core.raycluster import ensure_ray

    setup_logging(quiet=True)
    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def movielens_data(ray_local, tmp_path_factory):
    """The embedded sample, prepared once for every test that needs it."""
    from ganrec_dist.core.config import PrepareConfig
    from ganrec_dist.data.prepare import prepare

    out = tmp_path_factory.mktemp("ml") / "data"
    manifest = prepare(PrepareConfig(source="movielens-small", out=str(out)))
    return out, manifest


@pytest.fixture(scope="session")
def synthetic_data(ray_local, tmp_path_factory):
    """A small synthetic log with planted structure, in four user shards, with item content
    drawn from the items' clusters: the training, sweep, cold-start and cold-item tests' data."""
    from ganrec_dist.core.config import PrepareConfig
    from ganrec_dist.data.prepare import prepare

    out = tmp_path_factory.mktemp("syn") / "data"
    prepare(
        PrepareConfig(
            source="synthetic",
            out=str(out),
            users=500,
            items=1000,
            interactions=30_000,
            seed=1,
            shards=4,
            item_content="synthetic",
        )
    )
    return out


@pytest.fixture
def side_by_side(ray_local):
    """Train configurations at once, one Ray task each, as a sweep runs trials side by side:
    on the suite's 2 CPUs a pair with one torch thread each (``threads=1``) ends sooner than
    one after the other. Returns each training's result, in order."""
    from ganrec_dist.training.train import train

    task = ray_local.remote(num_cpus=0.01, max_retries=0)(train)
    return lambda *configs: ray_local.get([task.remote(c) for c in configs])


def _kill_tree(proc) -> None:
    """SIGKILL a driver started in its own session and everything under it (the local Ray it
    started), then wait for them: a test of what a killed process leaves behind."""
    import signal

    import psutil

    try:
        victims = [proc, *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        victims = [proc]
    for p in victims:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    psutil.wait_procs([p for p in victims if isinstance(p, psutil.Process)], timeout=30)


@pytest.fixture
def kill_tree():
    return _kill_tree
