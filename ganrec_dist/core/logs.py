"""Console output shared by every command: logging set-up and plain tables.

A command's console output is the project's own progress and summary. Ray's own messages stay
out of it unless ``--verbose``: its loggers are kept at WARNING (errors still show), and the
output of Ray's worker processes (per-report lines of Ray Train, Ray Data's execution plans,
C++ core-worker notices) is not forwarded to the driver
(:func:`ganrec_dist.core.raycluster.ensure_ray`).
Our modules log through ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


def quiet_ray_environment() -> None:
    """Environment defaults for Ray, set before it starts: its output out of the user's way, and
    Ray Train's controller checking on its workers every 0.5 s instead of 2 s (a run otherwise
    ends up to 2 s after its workers do: a noticeable share of a small run's time)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")


def verbose() -> bool:
    """True when the command runs with ``--verbose`` (our loggers at DEBUG)."""
    return logging.getLogger("ganrec_dist").getEffectiveLevel() <= logging.DEBUG


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Configure the root logger once for a command.

    Args:
        verbose: DEBUG for our modules, Ray's own output shown.
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
    # Ray warns on every local start that token auth is on: the safe default, which we keep.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    for name in ("ray", "ray.data", "ray.train", "ray.serve", "filelock", "matplotlib"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        # Training turns Ray Data's progress bars off (an epoch's bar would repeat every epoch);
        # Ray Data then warns, once per process, that they are off.
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """Print a plain fixed-width table to stdout."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
