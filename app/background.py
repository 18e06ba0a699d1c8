"""The background trainer of the demo checkpoints on the pages: a live progress fragment (sidebar and
the panels of models still training) that reruns the page when a checkpoint joins."""
from __future__ import annotations

from typing import Optional

import streamlit as st

from toast_core.demo import background as bg

from .demo import background_active, background_status, demo_checkpoint_keys

#: seconds between refreshes of the background-training progress (a fragment, not the whole page)
BACKGROUND_REFRESH = 2.0


def _background_text(status: Optional[dict], method: Optional[str] = None) -> tuple[float, str]:
    """(progress fraction of the current run, one line) for the progress widgets."""
    if not background_active(status):
        return 0.0, ""
    now = status.get("method")
    if method is not None and now != method:
        if now is None:
            return 0.0, f"{method}: waiting for the background trainer to start"
        return 0.0, f"{method}: waiting (the background trainer is on {now})"
    total, step = status.get("total") or 0, status.get("step") or 0
    return (min(1.0, step / total) if total else 0.0), bg.describe(status)


def _render_background(status: Optional[dict], where: str, method: Optional[str]) -> None:
    fraction, line = _background_text(status, method)
    with st.container(key=f"bg-{where}"):
        if where == "sidebar":
            methods = status.get("methods") or []
            st.markdown(f"**Training in the background:** {', '.join(methods)}",
                        help="Runs in its own process at lower CPU priority (nice) while you use the app. "
                             "Each model joins the pages when its checkpoint is complete; no restart needed. "
                             "Restarting the app does not start a second training: it resumes.")
        st.progress(fraction, text=line)
        if where != "sidebar":
            st.caption("Full fine-tuning trains in the background at lower CPU priority; this panel fills in "
                       "when its checkpoint is complete (no reload needed)." if method == "finetune" else
                       "Trains in the background; this panel fills in when its checkpoint is complete.")


@st.fragment(run_every=BACKGROUND_REFRESH)
def _background_fragment(where: str, method: Optional[str]) -> None:
    """Re-read the trainer's status every few seconds; when a demo checkpoint became complete, or the
    trainer ended, rerun the whole page so the model joins (or the final state shows)."""
    keys = tuple(sorted(demo_checkpoint_keys()))
    status = background_status()
    if keys != st.session_state.get("bg-keys-at-run") or not background_active(status):
        st.rerun(scope="app")
    _render_background(status, where, method)


def background_progress(where: str, method: Optional[str] = None) -> None:
    """The background trainer's progress (live while it runs) or why a model is missing.

    Args:
        where: ``"sidebar"`` or a panel name (element key ``bg-<where>``).
        method: for a panel: the method it stands for.
    """
    status = background_status()
    if background_active(status):
        _background_fragment(where, method)
        return
    if method is None:
        return
    with st.container(key=f"bg-{where}"):
        if status and status.get("state") in ("failed", "stopped", "interrupted") and method in (status.get("methods") or []):
            st.warning(f"Background training: {bg.describe(status)}", icon=":material/warning:")
        st.markdown(f"Not trained yet. Train it in the background on the **Models** page, or run "
                    f"`python -m toast_core prepare-demo`.")


def background_sidebar() -> None:
    """The sidebar's background-training block (nothing when no trainer runs)."""
    status = background_status()
    if background_active(status):
        with st.sidebar:
            background_progress("sidebar")
