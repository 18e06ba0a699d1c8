"""Test seam: pause checkpoint writes between the temporary file and the rename, so a test can kill a
run mid-write. Installs :data:`toast_core.io.checkpoints.before_rename`; nothing in the library reads an
environment variable or counts writes for this.

In this process: ``install(seconds, nth=3)``. In a child process (a trainer started by the library):
``child_env(seconds, nth)`` gives ``PYTHONPATH`` (a directory with a ``sitecustomize.py`` that calls
:func:`install_from_env`) and ``TOAST_TEST_PAUSE_WRITES``.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
ENV = "TOAST_TEST_PAUSE_WRITES"


def install(seconds: float, nth: Optional[int] = None) -> None:
    """Pause every checkpoint write of this process (or only the ``nth``, counted from 1) for ``seconds``,
    printing ``write #K paused before renaming onto PATH`` to stderr first."""
    from toast_core.io import checkpoints

    count = 0

    def pause(path: Path) -> None:
        nonlocal count
        count += 1
        if nth is not None and count != nth:
            return
        print(f"toast_core: write #{count} paused before renaming onto {path}", file=sys.stderr, flush=True)
        time.sleep(seconds)

    checkpoints.before_rename = pause


def install_from_env() -> None:
    """``TOAST_TEST_PAUSE_WRITES="SECONDS[:N]"`` → :func:`install` (nothing when unset)."""
    spec = os.environ.get(ENV)
    if spec:
        seconds, _, nth = spec.partition(":")
        install(float(seconds), int(nth) if nth else None)


def child_env(seconds: float, nth: Optional[int] = None) -> dict[str, str]:
    """Environment for a child Python process whose checkpoint writes pause (see the module docstring)."""
    site = Path(tempfile.mkdtemp(prefix="toast-pause-"))
    (site / "sitecustomize.py").write_text("from tests.pause_writes import install_from_env\ninstall_from_env()\n")
    path = os.pathsep.join(p for p in (str(site), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, ENV: f"{seconds}" + (f":{nth}" if nth is not None else "")}
