"""The user's own datasets in the app: which model set a session shows (the default models, or the models
trained on one dataset run), the dataset trainer's live progress, and uploads of dataset zips.

A session's model set lives in ``st.session_state[MODEL_SET]``: absent = the default models; a dataset
run's directory = that run's complete checkpoints (:func:`dataset_model_keys`). The pages get their
models from ``app.models.base_model_keys``, which asks :func:`dataset_model_keys` first.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import streamlit as st

from toast_core.data.scan import sample_images
from toast_core.demo.background import format_seconds, is_running, read_status
from toast_core.demo import dataset_background as dbg
from toast_core.demo.dataset_run import complete_checkpoints, list_runs, read_run

MODEL_SET = "model-set"
IMAGE_KEY = "keep-image"  # the page-shared image picker (app.images.image_picker)
#: seconds between refreshes of a dataset run's progress
REFRESH = 2.0


def selected_run() -> Optional[dict]:
    """The dataset run this session shows (its ``run.json`` plus ``dir``), or None for the default models."""
    try:
        path = st.session_state.get(MODEL_SET)
    except Exception:  # noqa: BLE001 - called outside a Streamlit session
        return None
    run = read_run(path) if path else None
    return {**run, "dir": str(path)} if run else None


def select_run(directory: Optional[str]) -> None:
    """Show the models of this dataset run (None: the default models) on every page of this session."""
    if directory:
        st.session_state[MODEL_SET] = str(directory)
    else:
        st.session_state.pop(MODEL_SET, None)
    first = dataset_gallery()[:1]
    if first:  # the pages open on one of the dataset's own images
        st.session_state[IMAGE_KEY] = first[0][0]
    else:
        st.session_state.pop(IMAGE_KEY, None)


def dataset_model_keys() -> Optional[tuple[list[str], str]]:
    """(model keys, a sentence) of the selected dataset run, or None when the session shows the default
    models. Only complete checkpoints are listed (a method still training joins when it is complete)."""
    run = selected_run()
    if run is None:
        return None
    found = complete_checkpoints(run["dir"])
    name = (run.get("spec") or {}).get("name") or Path(run["dir"]).name
    methods = (run.get("spec") or {}).get("methods") or []
    note = f"trained on your dataset “{name}” ({len(found)} of {len(methods)} methods complete)"
    return [f"ckpt:{p}" for p in found.values()], note


def dataset_gallery(per_class: int = 3, limit: int = 36) -> list[tuple[str, str]]:
    """``(label, path)`` of a few held-out images per class of the selected dataset (empty without one)."""
    run = selected_run()
    data = ((run or {}).get("spec") or {}).get("data")
    if not data or not Path(data).is_dir():
        return []
    name = (run.get("spec") or {}).get("name") or "dataset"
    return [(f"{name}/{Path(rel).with_suffix('')}", str(Path(data) / rel))
            for rel in sample_images(data, per_class)[:limit]]


def dataset_class(label: str) -> Optional[str]:
    """The class of a gallery label of the selected dataset (``"<name>/<split>/<class>/<stem>"``), else None."""
    if not any(lbl == label for lbl, _ in dataset_gallery()):
        return None
    parts = label.split("/")
    return parts[-2] if len(parts) >= 4 else None


def active_run() -> Optional[dict]:
    """The dataset run training now (its ``list_runs`` row), if any."""
    return next((r for r in list_runs() if is_running(r["dir"])), None)


def method_rows(status: Optional[dict], methods: list[str], complete: list[str]) -> list[dict]:
    """One row per method: state and time left (pure: from the status file and the complete checkpoints)."""
    per = (status or {}).get("per_method") or {}
    live = bool(status and status.get("running"))
    rows = []
    for m in methods:
        p = per.get(m) or {}
        state = "complete" if m in complete else p.get("state", "pending") if live else "not trained"
        if state == "training" and status.get("method") == m and status.get("total"):
            state = f"training: step {status.get('step')}/{status.get('total')}"
        eta = p.get("eta_seconds") if live and m not in complete else None
        acc = p.get("test_acc") if p.get("test_acc") is not None else p.get("val_acc")
        rows.append({"method": m, "state": state, "time left": format_seconds(eta) if eta is not None else "",
                     "accuracy": f"{100 * acc:.1f}%" if acc is not None else ""})
    return rows


def render_progress(directory: str, where: str = "data") -> None:
    """Progress of one dataset run (per method), live while its trainer runs."""
    status = read_status(directory)
    if status and status.get("running"):
        _progress_fragment(directory, where)
    else:
        _render(directory, status, where)


def _render(directory: str, status: Optional[dict], where: str) -> None:
    run = read_run(directory) or {}
    methods = (run.get("spec") or {}).get("methods") or (status or {}).get("methods") or []
    complete = list(complete_checkpoints(directory))
    with st.container(key=f"dsrun-{where}"):
        total, step = (status or {}).get("total") or 0, (status or {}).get("step") or 0
        if status and status.get("running"):
            st.progress(min(1.0, step / total) if total else 0.0, text=dbg.describe_run(status))
        elif status:
            st.caption(f"Last run: {dbg.describe_run(status)}")
        if where != "sidebar":
            st.dataframe(method_rows(status, methods, complete), hide_index=True, key=f"dsrun-table-{where}")


@st.fragment(run_every=REFRESH)
def _progress_fragment(directory: str, where: str) -> None:
    status = read_status(directory)
    done = tuple(complete_checkpoints(directory))
    key = f"dsrun-done-{where}"
    if st.session_state.get(key) is not None and (st.session_state[key] != done or not (status or {}).get("running")):
        st.session_state[key] = done
        st.rerun(scope="app")  # a checkpoint joined, or the trainer ended: the pages pick it up
    st.session_state[key] = done
    _render(directory, status, where)


def sidebar_progress() -> None:
    """The sidebar block of a dataset run training now (nothing when none)."""
    run = active_run()
    if run is None:
        return
    with st.sidebar:
        st.markdown(f"**Training your dataset “{run['name']}”** in the background")
        render_progress(run["dir"], "sidebar")
