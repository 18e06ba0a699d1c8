"""Datasets for analysis: the default task, CUB or a folder, at the model's input size."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from ..errors import InputError


class _Limited:
    """The first ``n`` items of a dataset (keeps attributes such as ``class_names`` reachable)."""

    def __init__(self, base, n: int):
        self.base, self.n = base, min(int(n), len(base))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.base[i]

    def __getattr__(self, name):
        return getattr(self.base, name)


class _ResizePair:
    """Whole-image resize: bicubic for the image (as training and the app do), nearest for the mask."""

    def __init__(self, size: int):
        self.size = (int(size), int(size))

    def __call__(self, image, mask):
        from PIL import Image

        if image.size != self.size:
            image = image.resize(self.size, Image.BICUBIC)
        if mask.size != self.size:
            mask = mask.resize(self.size, Image.NEAREST)
        return image, mask


def model_input_size(model: torch.nn.Module) -> int:
    """The square input side a model was built for (``build_info['img_size']``, else its patch embedding)."""
    size = (getattr(model, "build_info", None) or {}).get("img_size")
    if size is None:
        pe = getattr(getattr(model, "vit", model), "patch_embed", None)
        size = getattr(pe, "img_size", None)
    if size is None:
        from ..models import data_config

        size = data_config(model)["input_size"][-1]
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise InputError(f"the analysis resizes to square images; the model expects {tuple(size)}")
        size = size[0]
    return int(size)


def load_dataset(data_dir: str | os.PathLike, split: str = "test", *, model: Optional[torch.nn.Module] = None,
                 image_size: Optional[int] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, max_images: Optional[int] = None):
    """Open an annotated dataset, detecting its layout.

    Layouts: the default task (``manifest.json``), CUB-200-2011 (``images.txt`` +
    ``bounding_boxes.txt``; the box is the target mask, ``parts/part_locs.txt`` the parts) or an image
    folder with ``masks/`` or ``boxes.json`` (:mod:`toast_core.data.folder`; images without either
    get NaN localisation metrics).

    Args: data_dir: the dataset root. split: ``train``/``val``/``test`` (CUB has train/test).
        model: take image size, mean and std from its data config (explicit arguments win).
        max_images: keep only the first N items.
    Returns: a dataset whose items fit :func:`run_analysis`.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"dataset directory {root} does not exist")
    if model is not None:
        from ..models import data_config

        cfg = data_config(model)
        image_size = image_size or model_input_size(model)
        mean = mean or tuple(cfg["mean"])
        std = std or tuple(cfg["std"])
    kw = {k: v for k, v in dict(mean=mean, std=std).items() if v is not None}
    if (root / "manifest.json").is_file():
        from ..data.masked_dataset import MaskedImageDataset

        ds = MaskedImageDataset(root, split=split, image_size=image_size, **kw,
                                transform=_ResizePair(image_size) if image_size else None)
    else:
        from ..data.cub import find_cub_root

        cub = find_cub_root(root)
        if cub is not None:
            from ..data.cub import CUBDataset

            ds = CUBDataset(cub, split=split, image_size=image_size or 224, **kw)
        elif (root / "train").is_dir():
            from ..data.folder import ImageFolderDataset

            if not ((root / "masks").is_dir() or (root / "boxes.json").is_file()):
                raise InputError(f"{root} has no masks/ folder and no boxes.json: the analysis needs an object "
                                 "mask or box per image (see toast_core.data.folder)")
            ds = ImageFolderDataset(root, split=split, image_size=image_size or 224, **kw)
        else:
            raise InputError(f"{root} is not a dataset this analysis reads: expected a default-task folder "
                             "(manifest.json), CUB-200-2011 (images.txt, bounding_boxes.txt) or an image folder "
                             "(train/<class>/..., with masks/ or boxes.json)")
    if max_images is not None:
        if int(max_images) < 1:
            raise InputError(f"max_images must be >= 1, got {max_images}")
        ds = _Limited(ds, int(max_images))
    if len(ds) == 0:
        raise InputError(f"split '{split}' of {root} holds no image")
    return ds


def _item(ds, i: int) -> dict:
    it = ds[i]
    if not isinstance(it, Mapping) or "image" not in it or "label" not in it:
        raise InputError("dataset items must be dicts with at least 'image' and 'label' (and 'target_mask')")
    if it.get("target_mask") is None:
        raise InputError(f"item {i} has no 'target_mask': the analysis needs a mask or box per image")
    return it


def _image_id(it: Mapping, i: int):
    for key in ("image_id", "index"):
        if it.get(key) is not None:
            v = it[key]
            return v.item() if hasattr(v, "item") else v
    return i
