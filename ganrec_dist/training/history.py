"""A run's history: one line per epoch while it trains, history.csv and history.png after."""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
from typing import Any

import numpy as np

from ganrec_dist.core import storage
from ganrec_dist.data.layout import RunDir

log = logging.getLogger(__name__)

PLOTS = (  # (column, panel)
    ("ce_loss", 0),
    ("d_loss", 0),
    ("g_loss", 0),
    ("adv_loss", 0),
    ("d_real", 1),
    ("d_fake", 1),
    ("d_other", 1),  # D(u, another user's real item): the matching-aware term's pairs
    ("tower_loss", 0),
    ("val_ndcg@10", 2),
)


def write_history(run: RunDir, history: list[dict]) -> None:
    """history.csv (one row per epoch) and history.png (losses, D outputs, validation NDCG)."""
    keys = sorted({k for row in history for k in row})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    storage.write_atomic(run.local / RunDir.HISTORY_CSV, text.getvalue())
    _plot(history, run)
    run.save(RunDir.HISTORY_CSV, RunDir.HISTORY_PNG)


def _plot(history: list[dict], run: RunDir) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    step = np.arange(1, len(history) + 1)
    for key, panel in PLOTS:
        values = np.asarray([row.get(key, np.nan) for row in history], dtype=float)
        if not np.all(np.isnan(values)):
            axes[panel].plot(step, values, marker=".", label=key)
    refit = [i + 1 for i, row in enumerate(history) if row.get("phase") == "refit"]
    for ax, title in zip(axes, ("losses", "mean D(u, item)", "validation NDCG@10")):
        if refit:
            ax.axvline(refit[0] - 0.5, color="grey", linestyle=":", label="refit starts")
        ax.set_title(title)
        ax.set_xlabel("epoch (search, then refit)")
        if ax.get_legend_handles_labels()[0]:  # a panel can be empty (no D in the ablation)
            ax.legend()
    fig.tight_layout()
    tmp = run.local / f".{RunDir.HISTORY_PNG}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(run.local / RunDir.HISTORY_PNG)


def epoch_line(row: dict, epochs: int, best_epoch: int) -> str:
    """One progress line for an epoch's row of the history."""
    phase, epoch = row.get("phase", "?"), row.get("epoch", 0)
    total = {"search": epochs, "refit": best_epoch}.get(phase, row.get("of", "?"))
    line = f"{phase} epoch {epoch}/{total}: "
    shown = ("ce_loss", "d_real", "d_fake", "tower_loss")
    line += ", ".join(f"{k} {row[k]:.4f}" for k in shown if k in row)
    if "val_ndcg@10" in row:
        line += f"; validation NDCG@10 {row['val_ndcg@10']:.4f}"
    return line + f"; {row.get('seconds', 0):.1f} s"


class Progress:
    """Logs a line per finished epoch, polled from the ``meta.json`` each epoch publishes: the
    driver's own view of the run, whatever Ray forwards of its workers' output."""

    def __init__(self, run: RunDir, epochs: int, interval: float = 1.0) -> None:
        self.run, self.epochs, self.interval = run, epochs, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="ganrec-progress")
        self._printed = 0

    def _read(self) -> dict | None:
        try:
            if self.run.is_uri:
                text = storage.read_text(self.run.remote(f"{RunDir.CHECKPOINT}/{RunDir.META}"))
            else:
                text = (self.run.checkpoint / RunDir.META).read_text()
            return json.loads(text)
        except Exception:  # not there yet, or caught mid-replace: the next poll sees it
            return None

    def _poll(self) -> None:
        meta = self._read()
        history = (meta or {}).get("history", [])
        for row in history[self._printed :]:
            log.info(epoch_line(row, self.epochs, meta["best_epoch"]))  # type: ignore[index]
        self._printed = max(self._printed, len(history))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def __enter__(self) -> Progress:
        meta = self._read()  # a resumed run's earlier epochs are not progress
        self._printed = len((meta or {}).get("history", []))
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()  # the epochs finished since the last poll, also when the run was stopped
