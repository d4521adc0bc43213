"""Shared benchmark helpers: memory sampling of a process tree, JSON output."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable
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


def random_step(
    train_cfg: Any, n_users: int, n_items: int, *, negatives: int = 0, reference: bool = False
) -> Callable[[], None]:
    """A training step of a fresh default model on random batches: ``gan.train_step`` plus the
    weight average, as `ganrec train` runs it (``negatives``: shared sampled negatives per step;
    the tables are sparse when ``train_cfg`` says so). ``reference``: the unfused step instead
    (two G passes, ``F.cross_entropy``, per-parameter Adam) that `bench step` times it against.
    """
    import torch

    from ganrec_dist.model.models import Discriminator, Generator
    from ganrec_dist.training import gan
    from ganrec_dist.training.building import (
        Models,
        averaged,
        model_config,
        optimisers,
        update_average,
    )

    torch.manual_seed(0)
    mcfg = model_config(train_cfg, n_users, n_items)
    gen, disc = Generator(mcfg), Discriminator(mcfg)
    g_opt, d_opt = optimisers(gen, disc, train_cfg, fused=not reference)
    models = Models(
        gen=gen,
        disc=disc,
        g_opt=g_opt,
        d_opt=d_opt,
        average=averaged(gen, train_cfg.optim.ema_decay),
    )
    noise = torch.Generator().manual_seed(1)
    b, adv_weight = train_cfg.optim.batch_size, train_cfg.game.adv_weight

    def step() -> None:
        batch = gan.Batch(
            history=torch.randint(0, n_items + 1, (b, mcfg.history_len), generator=noise),
            users=torch.randint(0, n_users, (b,), generator=noise),
            targets=torch.randint(0, n_items, (b,), generator=noise),
            future=torch.randint(0, n_items, (b,), generator=noise),
        )
        z = torch.randn(b, mcfg.noise_dim, generator=noise)
        shared = torch.randint(0, n_items, (negatives,), generator=noise) if negatives else None
        if reference:
            gan.d_step(gen, disc, d_opt, batch, z=z, mismatch=train_cfg.discriminator.d_mismatch)
            gan.g_step(gen, disc, g_opt, batch, z=z, adv_weight=adv_weight, fused_softmax=False)
        else:
            gan.train_step(
                gen,
                disc,
                d_opt,
                g_opt,
                batch=batch,
                z=z,
                negatives=shared,
                game=dataclasses.replace(train_cfg.game, adv_weight=adv_weight),
                discriminator=train_cfg.discriminator,
            )
        update_average(models)

    return step


def cpu_model() -> str:
    """This machine's CPU model, stated with every timing (hosts of one kind differ ~5x)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
