"""Where the demo checkpoints live, and which demo set a checkpoint belongs to (the app asks here)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

from ..cache import toast_home

#: The two demo directories: the full plans' (cpu/gpu) and the quick plan's.
DemoSet = Literal["full", "quick"]


def demo_dir(quick: bool = False) -> Path:
    """Where prepare-demo writes: ``toast_home()/demo`` (``demo-quick`` for the quick plan)."""
    return toast_home() / ("demo-quick" if quick else "demo")


def demo_checkpoint_paths(quick: Optional[bool] = None) -> dict[str, Path]:
    """method -> weights file of the complete demo checkpoints present now (full plan first; the
    quick plan's when no full one exists, or when ``quick=True``)."""
    from ..io.checkpoints import is_complete_checkpoint  # here: demo_dir stays light (status polling)
    from ..methods import available_methods

    choices = [True] if quick else ([False] if quick is False else [False, True])
    for q in choices:
        root = demo_dir(q)
        found = {m: root / m / "model.safetensors" for m in available_methods()
                 if is_complete_checkpoint(root / m)}
        if found:
            return found
    return {}


def demo_set_of(path: str | os.PathLike) -> Optional[DemoSet]:
    """``"quick"`` for a file under :func:`demo_dir` ``(quick=True)``, ``"full"`` under the full plans'
    directory, None elsewhere (a user's own checkpoint). A ``ckpt:`` model key works too."""
    text = str(path)
    p = Path(text[len("ckpt:"):] if text.startswith("ckpt:") else text).expanduser().resolve()
    for name, quick in (("quick", True), ("full", False)):
        if p.is_relative_to(demo_dir(quick).resolve()):
            return name
    return None
