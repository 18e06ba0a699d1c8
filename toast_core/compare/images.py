"""How an image reaches a model: the working copy, its content hash, the display copy, the model input."""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image

from .entries import ModelEntry

#: Longest side of the working copy every model's input is resized from (see :func:`working_copy`).
WORKING_SIDE = 512


#: Longest side of the image shown under the maps (pages and figures).
DISPLAY_SIDE = 320


def working_copy(image: Image.Image, max_side: int = WORKING_SIDE) -> Image.Image:
    """The RGB image shrunk (bicubic, aspect kept) so its longest side is at most ``max_side``.

    Every model's input is resized from this copy, so a huge upload costs one resize, not one per model.
    """
    img = image if image.mode == "RGB" else image.convert("RGB")
    w, h = img.size
    s = max_side / max(w, h)
    if s >= 1:
        return img
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)


def image_id(image: Image.Image) -> str:
    """Content hash of an RGB image (size + pixels), 16 hex digits: the cache key of an image."""
    img = image if image.mode == "RGB" else image.convert("RGB")
    h = hashlib.sha256(f"{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()[:16]


def display_array(image: Image.Image, max_side: int = DISPLAY_SIDE) -> np.ndarray:
    """(H, W, 3) uint8 copy of the image for drawing maps over (aspect kept)."""
    return np.asarray(working_copy(image, max_side), dtype=np.uint8).copy()


def preprocessing(entry: ModelEntry) -> dict:
    """How images are turned into this model's input (for manifests): size, mean, std, resizing."""
    from ..models import data_config

    cfg = data_config(entry.model)
    h, w = (int(s) for s in entry.model.vit.patch_embed.img_size)
    return {"input_size": [h, w], "mean": [float(m) for m in cfg["mean"]], "std": [float(s) for s in cfg["std"]],
            "resize": f"working copy (longest side <= {WORKING_SIDE}, bicubic), then the whole image resized "
                      f"to {h}x{w} (bicubic, no crop, aspect not kept)", "colour": "RGB, EXIF orientation applied"}


def preprocess(entry: ModelEntry, image: Image.Image) -> torch.Tensor:
    """The model's input (1, 3, H, W) on its device, H x W = the size its position grid is laid out for."""
    from ..io.images import image_to_tensor

    p = preprocessing(entry)
    x = image_to_tensor(working_copy(image), tuple(p["input_size"]), p["mean"], p["std"])
    return x.unsqueeze(0).to(entry.device)
