"""One local Ray instance for the whole test session, within 2 CPUs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from ganrec_dist.logs import setup_logging
    from ganrec_dist.raycluster import ensure_ray

    setup_logging(quiet=True)
    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def movielens_data(ray_local, tmp_path_factory):
    """The embedded sample, prepared once for every test that needs it."""
    from ganrec_dist.config import PrepareConfig
    from ganrec_dist.prepare import prepare

    out = tmp_path_factory.mktemp("ml") / "data"
    manifest = prepare(PrepareConfig(source="movielens-small", out=str(out)))
    return out, manifest
