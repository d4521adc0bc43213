"""Connecting to Ray: a local instance by default, a cluster with --address or RAY_ADDRESS."""

from __future__ import annotations

import logging
import os

from ganrec_dist.logs import quiet_ray_environment

log = logging.getLogger(__name__)


def ensure_ray(address: str = "", num_cpus: int | None = None) -> None:
    """Initialise Ray once per process; reuse an existing connection (tests share one)."""
    quiet_ray_environment()
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
        log.info("connected to Ray cluster at %s", address)
    else:
        # The dashboard process also serves the State API that Ray Train's monitor queries.
        # Loopback only: a local instance is never reachable from (or sending to) the network.
        ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
    verbose = logging.getLogger("ganrec_dist").getEffectiveLevel() <= logging.DEBUG
    quiet = logging.getLogger("ganrec_dist").getEffectiveLevel() > logging.INFO
    # Ray Data prints progress bars on a terminal; its per-operator log lines only when verbose.
    ray.data.DataContext.get_current().enable_progress_bars = not quiet
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING
    for name in ("ray.data", "ray.train", "ray.serve"):
        logging.getLogger(name).setLevel(level)
