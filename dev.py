#!/usr/bin/env python3
"""Set-up and entry points for a fresh machine with only Python 3.11 and pip.

    python3 dev.py demo          # create .venv, install, run `ganrec demo` on the embedded data
    python3 dev.py test          # create .venv, install, run the whole test suite
    python3 dev.py test --fast   # the unit tests only (no Ray cluster, no training runs)

The virtual environment is created once (.venv, git-ignored) and reused; it is refreshed when
pyproject.toml changes. torch's CPU build is installed first, so the project's torch range needs
nothing more (an unpinned torch would pull a multi-GB CUDA build).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".installed"
TORCH = os.environ.get("GANREC_TORCH", "torch==2.13.0")


def _run(*args: str | os.PathLike) -> None:
    subprocess.run([str(a) for a in args], cwd=ROOT, check=True)


def setup() -> None:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    if not PY.exists():
        print("creating .venv", flush=True)
        venv.create(VENV, with_pip=True)
    _run(PY, "-m", "pip", "install", "-q", "--upgrade", "pip")
    _run(PY, "-m", "pip", "install", "-q", TORCH)
    _run(PY, "-m", "pip", "install", "-q", "-e", ".[data,dev]")
    STAMP.write_text(digest)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("setup", "demo", "test"):
        print(__doc__)
        return 2
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    setup()
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "demo":
        return subprocess.call([str(BIN / "ganrec"), "demo", *rest], cwd=ROOT)
    if command == "test":
        if "--fast" in rest:
            rest = [a for a in rest if a != "--fast"] + ["-m", "not integration"]
        return subprocess.call([str(PY), "-m", "pytest", "tests", *rest], cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
