"""Logging set-up shared by every command.

Ray is noisy by default; we keep its own logs at WARNING (errors still show) and turn its usage
statistics off. Our modules log through ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


def quiet_ray_environment() -> None:
    """Environment defaults that keep Ray's output out of the user's way (set before Ray starts)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Ray Train V2 keeps its own controller logs; workers still print their errors.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Configure the root logger once for a command.

    Args:
        verbose: DEBUG for our modules.
        quiet: only warnings and errors.
    """
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("ganrec_dist").setLevel(level)
    # Ray warns on every local start that token auth is on; that is the safe default we keep.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    for name in ("ray", "ray.data", "ray.train", "ray.serve", "filelock", "matplotlib"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
