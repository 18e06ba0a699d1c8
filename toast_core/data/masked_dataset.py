"""A torch ``Dataset`` over the demo-task layout: images with exact target / distractor masks."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..io.images import IMAGENET_MEAN, IMAGENET_STD
from .demo_task import SPLITS, load_manifest


PairTransform = Callable[[Image.Image, Image.Image], "tuple[Image.Image, Image.Image]"]


class PairedAugment:
    """Training augmentation that moves the image and its mask together.

    A random square crop covering ``scale`` of the image side (area ``scale**2``), resized back to
    the original size, then a horizontal flip with probability ``hflip``. Every class of the demo
    task is mirror-symmetric up to rotation, so flipping keeps the label. With ``keep_target`` the
    crop is re-drawn (up to 10 times, else no crop) until it contains the whole target, so the label
    stays visible. Randomness comes from torch's generator (seeded per DataLoader worker).

    Args:
        scale: (min, max) crop side as a fraction of the image side, within (0, 1].
        hflip: flip probability.
        keep_target: keep the target object (mask value 1) entirely inside the crop.
        generator: optional ``torch.Generator`` for reproducible draws.
    """

    def __init__(
        self, scale: tuple[float, float] = (0.75, 1.0), hflip: float = 0.5, keep_target: bool = True, generator: torch.Generator | None = None
    ) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise InputError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 <= hflip <= 1:
            raise InputError(f"hflip must be a probability, got {hflip}")
        self.scale, self.hflip, self.keep_target, self.generator = scale, hflip, keep_target, generator

    def _uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator))

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
        w, h = image.size
        target = np.argwhere(np.asarray(mask) == 1)
        box = None
        for _ in range(10):
            side = self._uniform(*self.scale)
            cw, ch = side * w, side * h
            x0, y0 = self._uniform(0, w - cw), self._uniform(0, h - ch)
            if not self.keep_target or len(target) == 0:
                box = (x0, y0, x0 + cw, y0 + ch)
                break
            (ty0, tx0), (ty1, tx1) = target.min(0), target.max(0) + 1
            if x0 <= tx0 and y0 <= ty0 and tx1 <= x0 + cw and ty1 <= y0 + ch:
                box = (x0, y0, x0 + cw, y0 + ch)
                break
        if box is not None and self.scale != (1.0, 1.0):
            image = image.resize((w, h), Image.BILINEAR, box=box)
            mask = mask.resize((w, h), Image.NEAREST, box=box)
        if self._uniform(0.0, 1.0) < self.hflip:
            image, mask = image.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
        return image, mask


class MaskedImageDataset(torch.utils.data.Dataset):
    """One split of a demo-task directory (see ``generate_demo_task``), read lazily from PNG.

    Each item is a dict:
        ``image``: float32 (3, S, S), normalised with ``mean`` / ``std``;
        ``label``: int, class of the target;
        ``target_mask``: bool (S, S), pixels of the target;
        ``distractor_mask``: bool (S, S), pixels of all distractors;
        ``object_mask``: uint8 (S, S), 0 background, 1 target, 2.. each distractor (as stored);
        ``index``: int, position in the split.
    ``S`` is ``image_size`` (default: the stored size). Images are resized bilinearly (antialiased),
    masks by nearest neighbour.

    Args:
        root: dataset directory holding ``manifest.json``.
        split: "train", "val" or "test".
        image_size: output side; None keeps the stored size.
        mean, std: per-channel normalisation (take them from the model's data config).
        transform: ``(PIL image, PIL mask) -> (image, mask)`` applied before resizing, e.g.
            ``PairedAugment()`` for training.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_size: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        transform: PairTransform | None = None,
    ) -> None:
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {split!r}")
        if image_size is not None and not (isinstance(image_size, int) and image_size >= 8):
            raise InputError(f"image_size must be an int >= 8 or None, got {image_size!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise InputError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")
        self.root = Path(root)
        manifest = load_manifest(self.root)
        self.class_names: list[str] = list(manifest["class_names"])
        self.entries: list[dict[str, Any]] = [e for e in manifest["images"] if e["split"] == split]
        self.split, self.transform = split, transform
        self.image_size = image_size or int(manifest["config"]["image_size"])
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    @property
    def labels(self) -> list[int]:
        return [int(e["label"]) for e in self.entries]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        entry = self.entries[i]
        try:
            with Image.open(self.root / entry["image"]) as im:
                image = im.convert("RGB")
            with Image.open(self.root / entry["mask"]) as im:
                mask = im.copy()
        except OSError as exc:
            raise InputError(f"cannot read item {i} of {self.root} ({self.split}): {exc}") from exc
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        size = (self.image_size, self.image_size)
        if image.size != size:
            image = image.resize(size, Image.BILINEAR)
        if mask.size != size:
            mask = mask.resize(size, Image.NEAREST)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0  # (3, S, S)
        m = torch.from_numpy(np.asarray(mask, dtype=np.uint8).copy())  # (S, S)
        return {
            "image": (x - self.mean) / self.std,
            "label": int(entry["label"]),
            "target_mask": m == 1,
            "distractor_mask": m >= 2,
            "object_mask": m,
            "index": int(entry["index"]),
        }
