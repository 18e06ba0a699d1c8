"""What the loaded models were trained to do, said where maps are read: the task in one line, its
classes, and for a gallery image its true label and where the target object is.

The default models are trained on the demo task (``toast_core.data.demo_task``): name the shape of
the RED object among 12 classes, with 2-3 distractor shapes in other colours. The gallery's
``assets/demo_samples/samples.json`` records each sample's label and the target's box.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "assets" / "demo_samples" / "samples.json"


@dataclass(frozen=True)
class Truth:
    """A gallery image's ground truth: its class and the target object's box ``(x0, y0, x1, y1)`` in
    the pixels of the stored image (``size`` = its ``(W, H)``)."""

    class_name: str
    box: tuple[float, float, float, float]
    size: tuple[int, int]
    target_colour: str


@lru_cache(maxsize=4)
def _samples(path: str, mtime_ns: int) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def demo_samples() -> dict:
    """The gallery's sample manifest (empty when absent or unreadable)."""
    return _samples(str(SAMPLES), SAMPLES.stat().st_mtime_ns) if SAMPLES.is_file() else {}


def gallery_truth(label: str) -> Optional[Truth]:
    """Ground truth of a gallery image label such as ``"demo_samples/00_circle"`` (None for uploads and
    images the sample manifest does not list)."""
    meta = demo_samples()
    stem = label.split("/")[-1]
    size = (meta.get("config") or {}).get("image_size", 224)
    for s in meta.get("samples", []):
        if Path(s.get("image", "")).stem == stem:
            target = next((o for o in s.get("objects", []) if o.get("role") == "target"), None)
            if target is None:
                return None
            x0, y0, x1, y1 = (float(v) for v in target["bbox"])
            colour = (target.get("colour") or {}).get("family", "red")
            return Truth(s.get("class_name", "?"), (x0, y0, x1, y1), (int(size), int(size)), colour)
    return None


def is_demo_task(class_names: Sequence[str]) -> bool:
    """True when the models' classes are the demo task's (in order)."""
    return bool(class_names) and list(class_names) == list(demo_samples().get("class_names") or [])


def task_line(class_names: Sequence[str], trained: bool = True) -> str:
    """One markdown line: what the models answer, e.g. *name the shape of the red object among 12
    classes: circle, square, ...*."""
    names = ", ".join(class_names)
    if not class_names:
        return "**Task:** the models' classes are unknown."
    if is_demo_task(class_names):
        cue = demo_samples().get("cue") or {}
        colour = cue.get("target_colour", "red")
        others = ", ".join(cue.get("distractor_colours") or [])
        line = (f"**Task:** the default models name the shape of the **{colour}** object among "
                f"{len(class_names)} classes ({names}); the other objects ({others}) are distractors.")
    else:
        line = f"**Task:** the models pick one of {len(class_names)} classes: {names}."
    return line + ("" if trained else " *(random models: untrained)*")


def truth_line(label: str) -> str:
    """``"True label: circle (the red object, outlined in white on the maps)"`` for a gallery image, or
    a line saying the image has no label."""
    t = gallery_truth(label)
    if t is None:
        from .datasets import dataset_class

        own = dataset_class(label)
        if own is not None:
            return f"**True label:** {own} (its class folder in your dataset)."
        return "No ground truth for this image (not from the task's gallery)."
    return f"**True label:** {t.class_name} — the {t.target_colour} object, outlined (dashed) on the maps."


def scaled_box(truth: Truth, display_shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """The target box in the pixel coordinates of a display array of shape ``(H, W)`` (plotly puts
    pixel centres on integers: edges at -0.5)."""
    H, W = display_shape
    sw, sh = W / truth.size[0], H / truth.size[1]
    x0, y0, x1, y1 = truth.box
    return x0 * sw - 0.5, y0 * sh - 0.5, x1 * sw - 0.5, y1 * sh - 0.5


def outline_target(fig, truth: Optional[Truth], display_shape: tuple[int, int]) -> None:
    """Draw the target's box (dashed white) on a plotly map figure; nothing when ``truth`` is None."""
    if truth is None:
        return
    x0, y0, x1, y1 = scaled_box(truth, display_shape)
    fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line={"color": "white", "width": 1.5, "dash": "dash"})


def _task_data(entries) -> Optional[dict]:
    """The ``data`` record (task directory, input size) of the first demo-task checkpoint, if any."""
    for e in entries:
        data = (getattr(e.model, "checkpoint_info", None) or {}).get("data") or {}
        if is_demo_task(e.class_names) and data.get("dataset") and Path(data["dataset"]).is_dir():
            return data
    return None


@st.cache_resource(show_spinner=False, max_entries=2)
def _frozen_backbone(image_size: int):
    """The default backbone as it was before any transfer method touched it (shared; never modified)."""
    from toast_core.demo.reference import frozen_backbone

    return frozen_backbone(image_size)


@st.cache_resource(show_spinner="Measuring the task's images once (about half a minute on a CPU)…", max_entries=2)
def task_reference(task_dir: str, image_size: int, mean: tuple, std: tuple):
    """The task's reference for :func:`toast_core.analysis.task_distance.distances`, cached on disk by
    the task manifest's and backbone's hashes (the background trainer computes it before it trains)."""
    from toast_core.demo.reference import task_reference as compute

    return compute(task_dir, image_size, mean, std, vit=_frozen_backbone(image_size))


def far_notice(entries, label: str, image, image_key: str) -> None:
    """For an upload shown with demo-task models: say whether it is far from the task's images
    (Mahalanobis distance of the frozen backbone's mean patch token, threshold at the 99th percentile
    of held-out task images; see :mod:`toast_core.analysis.task_distance`)."""
    if not label.startswith("upload/"):
        return
    data = _task_data(entries)
    if data is None:
        return
    import numpy as np
    import torch
    from PIL import Image

    from toast_core.analysis import task_distance as td
    from toast_core.demo.reference import REFERENCE_SIDE

    size = REFERENCE_SIDE  # the image as the frozen backbone sees it at the measured size, whatever the models' input
    mean, std = tuple(data.get("mean") or (0.485, 0.456, 0.406)), tuple(data.get("std") or (0.229, 0.224, 0.225))
    ref = task_reference(str(data["dataset"]), size, mean, std)
    small = image.convert("RGB").resize((size, size), Image.BICUBIC)  # the whole image, as the reference saw its own
    x = torch.from_numpy(np.array(small)).permute(2, 0, 1)[None]
    d = float(td.distances(ref, td.features(_frozen_backbone(size), x, mean, std))[0])
    with st.container(key="task-distance"):
        if d > ref.threshold:
            st.warning(f"**Far from the task's images:** distance {d:.1f}, above {ref.threshold:.1f} (99 % of "
                       "held-out task images are closer). The models only know coloured shapes on photo crops: "
                       "their predictions and maps on this image mean little.", icon=":material/warning:")
        else:
            st.caption(f"Close to the task's images: distance {d:.1f} ≤ {ref.threshold:.1f} (the 99th "
                       "percentile of held-out task images).")
