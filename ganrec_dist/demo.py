"""`ganrec demo`: the pipeline on the embedded MovieLens sample, end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ganrec_dist.config import DemoConfig, PrepareConfig
from ganrec_dist.prepare import prepare

log = logging.getLogger(__name__)


def demo(cfg: DemoConfig) -> dict:
    """Prepare the embedded data and print its manifest (later stages extend this)."""
    work = Path(cfg.workdir)
    data = work / "data"
    manifest = prepare(
        PrepareConfig(source="movielens-small", out=str(data), overwrite=cfg.overwrite, address=cfg.address)
    )
    print(json.dumps(manifest, indent=2))
    return {"manifest": manifest}
