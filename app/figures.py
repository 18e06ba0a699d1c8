"""Plotly patch picking (click a patch to take ξ there) and the figure preview cache of the Export page."""
from __future__ import annotations

import hashlib
import json
from typing import Optional

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from toast_core.viz import export

def add_patch_picker(fig, display_shape: tuple[int, int], grid: tuple[int, int],
                     chosen: Optional[tuple[int, int]] = None) -> None:
    """Add a nearly invisible marker at every patch centre (clickable, ``customdata`` = row, col) to a
    :func:`toast_core.viz.render.heatmap_figure`, and outline the chosen patch."""
    H, W = display_shape
    h, w = grid
    rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    xs = (cc.ravel() + 0.5) * W / w - 0.5
    ys = (rr.ravel() + 0.5) * H / h - 0.5
    fig.add_trace(go.Scatter(
        x=xs, y=ys, mode="markers", customdata=np.stack([rr.ravel(), cc.ravel()], axis=-1),
        marker={"size": max(6, min(24, int(300 / max(h, w)))), "symbol": "square", "color": "white", "opacity": 0.02},
        hovertemplate="patch (row %{customdata[0]}, col %{customdata[1]})<br>click: take ξ here<extra></extra>",
        showlegend=False, name="patches"))
    if chosen is not None:
        r, c = chosen
        fig.add_trace(go.Scatter(
            x=[(c + 0.5) * W / w - 0.5], y=[(r + 0.5) * H / h - 0.5], mode="markers", hoverinfo="skip",
            marker={"size": max(8, min(28, int(320 / max(h, w)))), "symbol": "square-open", "color": "cyan",
                    "line": {"width": 2}}, showlegend=False, name="ξ patch"))


def patch_from_point(point: dict, grid: tuple[int, int],
                     display_shape: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
    """The (row, col) of a clicked plotly point: from its ``customdata`` or from its x/y (pixels)."""
    h, w = grid
    cd = point.get("customdata")
    if isinstance(cd, (list, tuple)) and len(cd) >= 2:
        try:
            r, c = int(cd[0]), int(cd[1])
        except (TypeError, ValueError):
            r, c = -1, -1
        if 0 <= r < h and 0 <= c < w:
            return r, c
    x, y = point.get("x"), point.get("y")
    if display_shape is None or not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
        return None
    H, W = display_shape
    r = min(h - 1, max(0, int((y + 0.5) * h / H)))
    c = min(w - 1, max(0, int((x + 0.5) * w / W)))
    return r, c


def spec_digest(spec) -> str:
    """sha256 of a :class:`toast_core.viz.export.FigureSpec`: its settings, maps and images."""
    h = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True, default=str).encode())
    for row in spec.panels:
        for image, m in row:
            h.update(m.tobytes())
            if image is not None:
                h.update(hashlib.sha1(image.tobytes()).digest())
    return h.hexdigest()


@st.cache_data(max_entries=16, show_spinner="Drawing the figure…")
def figure_preview(digest: str, _spec, dpi: int = 90) -> bytes:
    """PNG preview of a figure spec, cached by :func:`spec_digest`."""
    return export.figure_bytes(export.build_figure(_spec), "png", dpi=dpi)
