"""What the app's pages should show, computed directly with toast_core, for content checks; and
distinct synthetic test images."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional


def make_image(path: str | os.PathLike, seed: int, size: tuple[int, int] = (160, 120)) -> Path:
    """Write a distinct synthetic RGB image (noise background + coloured blobs) as PNG/JPEG/...
    by the suffix of ``path``."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    arr = (rng.random((h, w, 3)) * 90 + rng.integers(0, 120, 3)).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 30))
        r = int(rng.integers(12, 40))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([x, y, x + r, y + r], fill=colour)
    path = Path(path)
    img.save(path)
    return path


_TINY: dict = {}


def tiny_entries(methods: Iterable[str]):
    """The random tiny models the app shows under ``TOAST_APP_MODELS=tiny`` (same seeds, same code)."""
    from toast_core import compare as cmp

    out = []
    for m in methods:
        if m not in _TINY:
            _TINY[m] = cmp.tiny_entry(m, "cpu")
        out.append(_TINY[m])
    return out


def expected_panels(image_path: str | os.PathLike, methods: Iterable[str], layer: Optional[int] = None,
                    kind: str = "cls", top_k: int = 3):
    """``{method: Panel}`` as the Compare page computes them for an uploaded file (0-based layer)."""
    import toast_core as tc
    from toast_core import compare as cmp

    image = cmp.working_copy(tc.load_image(Path(image_path).read_bytes()))
    panels = cmp.compare(tiny_entries(methods), image, kind=kind, layer=layer, top_k=top_k)
    return {p.name: p for p in panels}


def parse_predictions(text: str) -> list[tuple[str, float]]:
    """``"class 1 13.3% · class 9 13.2%"`` -> ``[("class 1", 0.133), ("class 9", 0.132)]``."""
    import re

    out = []
    for part in text.replace("\n", " ").split("·"):
        m = re.match(r"\s*(.+?)\s+([0-9.]+)\s*%\s*$", part)
        if m:
            out.append((m.group(1), float(m.group(2)) / 100))
    return out
