"""The app's configuration, read from the environment, and per-process settings.

Configuration (environment variables):

* ``TOAST_APP_MODELS`` — which models the pages show: ``demo`` (default: the trained demo checkpoints;
  random tiny models, labelled as such, until ``prepare-demo`` has run), ``tiny`` (random tiny models
  of every registered method, for tests) or a directory of checkpoints.
* ``TOAST_APP_ALLOW_PATHS`` — ``1`` / ``0`` to allow or refuse loading checkpoints by server path. By
  default paths are allowed only when the server listens on 127.0.0.1/localhost (serving beyond
  localhost disables them; uploads stay available, limited by ``server.maxUploadSize``).
* ``TOAST_DEVICE`` — force a device (default: CUDA when present, with bf16 autocast; else CPU).
* ``TOAST_APP_THREADS`` — torch CPU threads per inference (default 1 on CPU: sessions are served by
  parallel threads, and on a busy 2-core machine two intra-op threads per forward ran 10x slower than
  one because of oversubscription; ``0`` leaves torch's default).

Models are cached with ``st.cache_resource`` keyed by plain strings (``"tiny:toast"``,
``"ckpt:/path"``) and shared by every session; nothing here modifies them.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from toast_core.device import default_device  # noqa: E402

ASSETS = ROOT / "assets"


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


COLORMAPS = ["inferno", "viridis", "magma", "plasma", "turbo", "cividis", "gray", "jet"]


MAX_SESSION_UPLOADS = 4


#: widget keys starting with this prefix keep their value when the user switches pages
KEEP = "keep-"


def models_mode() -> str:
    return os.environ.get("TOAST_APP_MODELS", "demo").strip() or "demo"


def paths_allowed() -> bool:
    """Loading checkpoints by server path: off when serving beyond localhost, unless forced on."""
    env = os.environ.get("TOAST_APP_ALLOW_PATHS")
    if env is not None and env.strip() != "":
        return env.strip().lower() in ("1", "true", "yes", "on")
    try:
        address = str(st.get_option("server.address") or "")
    except Exception:  # noqa: BLE001 - option missing outside a server
        address = ""
    return address in ("127.0.0.1", "localhost", "::1")


def device() -> str:
    return default_device()


def configure_torch_threads() -> None:
    """Apply ``TOAST_APP_THREADS`` once per process (see the module docstring)."""
    import torch

    if getattr(configure_torch_threads, "done", False):
        return
    configure_torch_threads.done = True
    raw = os.environ.get("TOAST_APP_THREADS", "").strip()
    n = int(raw) if raw.isdigit() else (1 if device() == "cpu" else 0)
    if n > 0:
        torch.set_num_threads(n)


def keep_widget_state() -> None:
    """Stop Streamlit from dropping page-shared widget values when the user switches pages (called
    by the entry script before the page runs; also applies the torch thread setting once)."""
    configure_torch_threads()
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and key.startswith(KEEP):
            st.session_state[key] = st.session_state[key]


def slug(name: str) -> str:
    """A key/CSS-safe form of a display name: ``"toast (2)"`` -> ``"toast-2"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x"
