"""The models a session shows: the base set (demo checkpoints, a directory, or tiny random models) plus
the user's own, each loaded once per process with ``st.cache_resource`` keyed by a plain string
(``"tiny:toast"``, ``"ckpt:/path"``) and shared by every session; nothing here modifies them."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import streamlit as st

import toast_core as tc
from toast_core import compare as cmp
from toast_core.cache import atomic_write_bytes, toast_home
from toast_core.errors import CheckpointError, ToastError
from toast_core.io.checkpoints import read_checkpoint_info

from .config import device, models_mode
from .datasets import dataset_model_keys, selected_run
from .demo import background_active, background_status, demo_checkpoint_keys, is_quick

@st.cache_resource(show_spinner="Loading model…", max_entries=64)
def load_model(key: str, device_name: str, stamp: int = 0) -> cmp.ModelEntry:
    """One model, shared by every session (keyed by the checkpoint path string and ``stamp``, the
    file's modification time: a checkpoint replaced at the same path is loaded afresh). Never modify it."""
    return cmp.load_entry(key, device_name)


def checkpoint_stamp(key: str) -> int:
    """The modification time (ns) of a ``ckpt:`` key's file (0 for other keys or a missing file)."""
    try:
        return Path(key[len("ckpt:"):]).stat().st_mtime_ns if key.startswith("ckpt:") else 0
    except OSError:
        return 0


def directory_checkpoint_keys(directory: Path) -> list[str]:
    """Every checkpoint in a directory: ``*/model.safetensors`` and ``*.safetensors`` with a config."""
    keys = []
    for p in sorted(directory.rglob("*.safetensors")):
        if p.name.startswith(".") or p.name == "last.safetensors":
            continue
        keys.append(f"ckpt:{p}")
    return keys


def _note_demo_keys(keys: list[str]) -> None:
    try:  # the background-training fragment compares against these (see _background_fragment)
        st.session_state["bg-keys-at-run"] = tuple(sorted(keys))
    except Exception:  # noqa: BLE001 - called outside a Streamlit session
        pass


def base_model_keys() -> tuple[list[str], str]:
    """The models every session starts with, and a sentence saying what they are."""
    chosen = dataset_model_keys()  # the session chose a dataset run on the "Your data" page
    if chosen is not None:
        if models_mode() == "demo":
            _note_demo_keys(demo_checkpoint_keys())  # else the demo trainer's fragment would rerun forever
        return chosen
    mode = models_mode()
    methods = tc.available_methods()
    tiny = [f"tiny:{m}" for m in methods]
    if mode == "tiny":
        return tiny, "random tiny models (untrained; TOAST_APP_MODELS=tiny)"
    if mode != "demo":
        d = Path(mode).expanduser()
        keys = directory_checkpoint_keys(d) if d.is_dir() else []
        if keys:
            return keys, f"checkpoints in {d}"
        return tiny, f"no checkpoints in {d}: showing random tiny models (untrained)"
    keys = demo_checkpoint_keys()
    _note_demo_keys(keys)
    if keys:
        quick = any(is_quick(k) for k in keys)
        return keys, "trained demo checkpoints" + (" (quick plan: small input, few steps)" if quick else "")
    if background_active(background_status()):
        return tiny, ("the trained demo checkpoints are training in the background: random tiny models "
                      "(untrained) until the first one is complete")
    return tiny, ("the trained demo checkpoints are not there yet: showing random tiny models "
                  "(untrained). Prepare them on the Models page.")


def session_entries() -> tuple[list[cmp.ModelEntry], list[tuple[str, str]], str]:
    """This session's models (base set + the user's own), failures ``(key, message)``, and a note."""
    keys, note = base_model_keys()
    extra = [k for k in st.session_state.get("extra_models", []) if k not in keys]
    entries, failures = [], []
    dev = device()
    run = selected_run()
    dataset = (run.get("spec") or {}).get("name") if run else None
    demo = {k for k in keys if k.startswith("ckpt:")} if models_mode() == "demo" and not dataset else set()
    for key in keys + extra:
        try:
            entry = load_model(key, dev, checkpoint_stamp(key))
        except (ToastError, OSError, ValueError, RuntimeError) as e:
            failures.append((key, str(e)))
            continue
        if key in extra:
            entry = dataclasses.replace(entry, source="your checkpoint")  # a label only; same shared model
        elif dataset:
            entry = dataclasses.replace(entry, source=f"your dataset “{dataset}”")
        elif key in demo:
            entry = dataclasses.replace(entry, source="demo checkpoint" + (" (quick plan)" if is_quick(key) else ""))
        entries.append(entry)
    return cmp.unique_names(entries), failures, note


def save_uploaded_checkpoint(name: str, data: bytes) -> str:
    """Store an uploaded checkpoint under the cache (content-addressed) and return its model key.

    The file is only written here and its header checked; :func:`load_model` reads it safely. A file
    that is not a toast_core checkpoint is removed again and its error re-raised.
    """
    if not data:
        raise CheckpointError(f"{name} is empty")
    if not name.lower().endswith(".safetensors"):
        raise CheckpointError(f"{name}: upload a toast_core .safetensors checkpoint")
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = toast_home() / "uploads" / f"{digest}.safetensors"
    if not path.exists():
        atomic_write_bytes(path, data)
    try:
        read_checkpoint_info(path)
    except ToastError:
        path.unlink(missing_ok=True)
        raise
    return f"ckpt:{path}"


def resolve_checkpoint_path(text: str) -> str:
    """A user-typed server path, expanded and made absolute (the model cache key)."""
    return str(Path(text.strip()).expanduser().resolve())
