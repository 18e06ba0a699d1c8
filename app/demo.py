"""What the app asks the library about the default (demo) checkpoints: which are there, which demo set
(full or quick plan) a checkpoint belongs to, preparing them, and the background trainer's status."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import toast_core as tc
from toast_core import demo
from toast_core.demo import background as bg
from toast_core.errors import ToastError

from .config import models_mode


def demo_checkpoint_keys() -> list[str]:
    """Keys of the complete trained demo checkpoints present now (empty before ``prepare-demo``)."""
    try:
        found = demo.demo_checkpoint_paths()
    except ToastError:
        return []
    return [f"ckpt:{p}" for p in found.values() if p is not None and Path(p).exists()]


def is_quick(key: str) -> bool:
    """Whether a model key is a checkpoint of the quick demo plan (small input, few steps)."""
    return demo.demo_set_of(key) == "quick"


def prepare_demo_available() -> bool:
    """prepare-demo is part of the library (kept for the Models page's button state)."""
    return True


def prepare_demo(progress: demo.Progress, quick: bool = False) -> None:
    """Run the library's prepare-demo; it reports ``progress(fraction, text)``."""
    demo.prepare_demo(quick=quick, progress=progress)


def background_status() -> Optional[dict]:
    """Status of the background trainer of the demo checkpoints the app shows (``TOAST_APP_MODELS=demo``
    only): the running one, else the last one of the directory whose checkpoints are on the pages.
    None when there is none."""
    if models_mode() != "demo":
        return None
    found = [s for s in (bg.read_status(demo.demo_dir(q)) for q in (False, True)) if s]
    active = [s for s in found if s.get("state") in bg.ACTIVE]
    if active:
        return active[0]
    keys = demo_checkpoint_keys()
    quick = any(is_quick(k) for k in keys)
    return bg.read_status(demo.demo_dir(quick)) if keys else (found[0] if found else None)


def background_active(status: Optional[dict]) -> bool:
    return bool(status) and status.get("state") in bg.ACTIVE


def pending_demo_methods() -> list[str]:
    """Registered methods whose trained demo checkpoint is not there yet while others are (shown as
    "training in the background" or "not trained yet" instead of missing silently)."""
    if models_mode() != "demo":
        return []
    keys = demo_checkpoint_keys()
    if not keys:
        return []
    present = {Path(k[len("ckpt:"):]).parent.name for k in keys}
    return [m for m in tc.available_methods() if m not in present]
