"""Small controls every page uses: sidebar lines, page-shared selections, map controls, notices (see also
:mod:`app.widgets`)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Optional

import streamlit as st

from toast_core import compare as cmp
from toast_core.device import device_label
from toast_core.attribution import EXPLANATIONS
from toast_core.errors import ToastError
from toast_core.maps import ATTENTION_KINDS, MAP_KINDS, PER_LAYER_KINDS

from .background import background_sidebar
from .datasets import sidebar_progress
from .config import COLORMAPS, KEEP, device

def sidebar_status(note: str) -> None:
    """Device and model-source lines at the bottom of the sidebar (on every page)."""
    with st.sidebar:
        st.caption(f"**Device:** {device_label(device())}", help="CUDA with bf16 autocast when a GPU is "
                   "present, otherwise CPU in float32.")
        st.caption(f"**Models:** {note}")
    background_sidebar()
    sidebar_progress()  # a dataset run training in the background (the "Your data" page)


def untrained_notice(entries: list[cmp.ModelEntry]) -> None:
    """A visible label whenever random models are on the page."""
    names = [e.name for e in entries if not e.trained]
    if names:
        st.warning(f"Untrained (random) models: {', '.join(names)}. Their maps and predictions show the "
                   "architecture only. Prepare the trained demo checkpoints on the **Models** page.",
                   icon=":material/warning:")
        st.page_link("views/models.py", label="Models page: prepare the demo checkpoints",
                     icon=":material/download:")


def sanitize_choice(key: str, options: list) -> None:
    """Drop values a multiselect's saved state holds that are no longer options (a removed model,
    an upload that left the session)."""
    value = st.session_state.get(key)
    if isinstance(value, list):
        kept = [v for v in value if v in options]
        if kept != value:
            st.session_state[key] = kept


def methods_multiselect(names: list[str], label: str = "Methods") -> list[str]:
    """The page-shared methods multiselect (default: all). Models that appear later (a user's own
    checkpoint, the demo checkpoints) join the selection; models that are gone leave it."""
    key = KEEP + "methods"
    known = st.session_state.get("methods-known", [])
    current = st.session_state.get(key, names)
    new = [n for n in names if n not in known]
    chosen = [n for n in current if n in names] + [n for n in new if n not in current]
    st.session_state[key] = chosen if (chosen or not known) else names
    st.session_state["methods-known"] = list(names)
    return st.multiselect(label, names, key=key, help="Listed from the loaded models and checkpoints.")


def kind_select(key: str, attention_only: bool = False, default: str = "cls", per_layer: bool = False) -> str:
    """The map-kind box: every kind, the attention kinds only, or (``per_layer``) those with a map per layer."""
    kinds = list(PER_LAYER_KINDS) if per_layer else list(ATTENTION_KINDS) if attention_only else list(MAP_KINDS)
    if st.session_state.get(key) not in kinds:
        st.session_state[key] = default
    extra = " ".join(f"{MAP_KINDS[k]}: {EXPLANATIONS[k]}" for k in EXPLANATIONS if k in kinds)
    return st.selectbox("Map kind", kinds, key=key, format_func=lambda k: MAP_KINDS[k],
                        help="CLS attention: softmax weights of the CLS query on each patch (one layer, per "
                             "head or head mean). Rollout: product of attention over layers (Abnar & Zuidema). "
                             "Token norm: L2 norm of each output token. Integrated Gradients (captum): "
                             "attribution of the predicted class to the pixels, per patch. " + extra)


def layer_slider(key: str, depth: int) -> int:
    """1-based layer slider (default last); returns the 0-based layer."""
    if not isinstance(st.session_state.get(key), int) or not 1 <= st.session_state[key] <= depth:
        st.session_state[key] = depth
    if depth == 1:
        st.caption("Layer 1 (the models have one layer)")
        return 0
    return st.slider("Layer", 1, depth, key=key) - 1


def colormap_select(key: str, default: str = "inferno") -> str:
    if st.session_state.get(key) not in COLORMAPS:
        st.session_state[key] = default
    return st.selectbox("Colormap", COLORMAPS, key=key)


def opacity_slider(key: str, default: float = 0.55) -> float:
    if key not in st.session_state:
        st.session_state[key] = default
    return st.slider("Map opacity", 0.0, 1.0, step=0.05, key=key)


def pass_select(key: str, entries: list[cmp.ModelEntry]) -> Optional[str]:
    """TOAST pass for two-pass models: the prediction (top-down) pass or the first (bottom-up) pass."""
    if not any(e.is_toast for e in entries):
        return None
    options = ["final", "first"]
    if st.session_state.get(key) not in options:
        st.session_state[key] = "final"
    return st.radio("TOAST pass", options, key=key, horizontal=True,
                    format_func=lambda p: {"final": "top-down (prediction)", "first": "bottom-up (first)"}[p],
                    help="Two-pass models (TOAST) show this pass; single-pass models always show their only pass.")


def predictions_text(preds: list[tuple[str, float]]) -> str:
    return " · ".join(f"{label} **{100 * p:.1f}%**" for label, p in preds)


class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


@contextmanager
def model_work(kind: str):
    """``with model_work(kind) as (timer, step): ...`` around one page's model runs: a spinner and a timer;
    for gradient kinds (seconds per model on a CPU) a progress bar that ``step(i, n, name)`` advances
    (``step`` is None for attention kinds). A library error becomes the page's message and stops it."""
    bar = None if kind in ATTENTION_KINDS else st.progress(0.0, text=f"{MAP_KINDS[kind]}: starting…")

    def step(i: int, n: int, name: str) -> None:
        bar.progress(i / n, text=f"{MAP_KINDS[kind]}: {name} ({i + 1}/{n})")

    try:
        with Timer() as timer, st.spinner("Running the models…"):
            yield timer, (step if bar is not None else None)
    except ToastError as e:
        st.error(str(e))
        st.stop()
    finally:
        if bar is not None:
            bar.empty()
