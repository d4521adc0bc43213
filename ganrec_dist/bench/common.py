"""Shared benchmark helpers: memory sampling of a process tree, JSON output."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)


class PeakMemory:
    """Samples the proportional set size (PSS) of a process and all its descendants.

    PSS splits shared pages (Ray's object store, shared libraries) between the processes that
    map them, so summing it over a process tree does not double count.
    """

    def __init__(
        self, pid: int | None = None, interval: float = 0.25, each: str | None = None
    ) -> None:
        """``each``: also track the largest single process whose command line contains it (a
        Ray worker's is its actor class, e.g. ``RayTrainWorker``), in ``peak_each``."""
        self.pid = pid or os.getpid()
        self.interval = interval
        self.each = each
        self.peak = 0
        self.peak_each = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> tuple[int, int]:
        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return 0, 0
        total = largest = 0
        for proc in procs:
            try:
                pss = proc.memory_full_info().pss
                total += pss
                if self.each and self.each in " ".join(proc.cmdline()):
                    largest = max(largest, pss)
            except psutil.Error:
                continue
        return total, largest

    def _loop(self) -> None:
        while not self._stop.is_set():
            total, largest = self._sample()
            self.peak, self.peak_each = max(self.peak, total), max(self.peak_each, largest)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_gib(self) -> float:
        return self.peak / 2**30


def write_json(path: str | Path, payload: dict) -> None:
    """Write benchmark results atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.rename(path)
    log.info("wrote %s", path)
