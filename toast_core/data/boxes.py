"""Boxes as masks: datasets annotated with bounding boxes (CUB, a folder's ``boxes.json``) become pixel
masks like the default task's."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import InputError


def box_to_mask(box: Sequence[float], H: int, W: int, fmt: str = "xyxy") -> np.ndarray:
    """Bool (H, W) mask of a box: pixels whose centre lies in [x0, x1) x [y0, y1).

    fmt ``"xyxy"`` = (x0, y0, x1, y1); ``"xywh"`` = (x, y, width, height) as in CUB bounding_boxes.txt.
    """
    b = [float(v) for v in box]
    if len(b) != 4 or not all(math.isfinite(v) for v in b):
        raise InputError(f"box must be 4 finite numbers, got {box}")
    if fmt == "xywh":
        b = [b[0], b[1], b[0] + b[2], b[1] + b[3]]
    elif fmt != "xyxy":
        raise InputError(f"box fmt must be 'xyxy' or 'xywh', got {fmt!r}")
    x0, y0, x1, y1 = b
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"box has no area: {box} ({fmt})")
    cy, cx = np.arange(H) + 0.5, np.arange(W) + 0.5
    mask = ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]
    if not mask.any():
        raise InputError(f"box {box} ({fmt}) covers no pixel centre of a {H}x{W} image")
    return mask
