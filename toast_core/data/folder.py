"""A user's own dataset in ImageFolder layout, with optional object masks or boxes.

Layout (class names are the sub-directory names, sorted; images in any format ``load_image`` reads)::

    DIR/train/<class>/<name>.jpg        required
    DIR/val/<class>/<name>.jpg          optional (else a seeded share of train is held out)
    DIR/test/<class>/<name>.jpg         optional
    DIR/masks/<split>/<class>/<name>.png   optional: per-image object mask, non-zero = object
    DIR/boxes.json                      optional: {"<split>/<class>/<name>.jpg": [x0, y0, x1, y1] or
                                        [[x0, y0, x1, y1], ...]} in pixels of the original image

Every item is a dict: ``image`` float32 (3, S, S) normalised, ``label`` int, ``target_mask`` bool
(S, S) (all False when the image has neither mask nor box), ``has_mask`` bool, ``index`` int.
Images are decoded with :func:`toast_core.load_image` (EXIF orientation, any colour mode, size limits).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..cache import sha256_file
from ..errors import InputError
from ..io.images import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _list_split(root: Path, split: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Class names and (relative path, class) pairs of ``root/split``."""
    base = root / split
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    items = []
    for c in classes:
        for f in sorted((base / c).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                items.append((f.relative_to(root).as_posix(), c))
    return classes, items


def folder_classes(root: str | os.PathLike) -> list[str]:
    """The class names of ``root/train`` (sorted sub-directory names)."""
    root = Path(root)
    if not (root / "train").is_dir():
        raise InputError(f"{root} has no train/ directory; expected DIR/train/<class>/<image> (see "
                         "toast_core.data.folder)")
    classes, items = _list_split(root, "train")
    if len(classes) < 2:
        raise InputError(f"{root}/train needs at least 2 class directories, found {len(classes)}")
    if not items:
        raise InputError(f"{root}/train holds no images")
    return classes


class ImageFolderDataset(torch.utils.data.Dataset):
    """One split of an ImageFolder-style directory (see the module docstring).

    Args:
        root: the dataset directory.
        split: "train", "val" or "test". A missing "val" is carved out of train: ``val_fraction`` of
            each class (seeded by ``seed``); the "train" split then excludes those images.
        image_size: output side S (the whole image is resized, no crop).
        mean, std: normalisation (the backbone's data config).
        hflip: flip horizontally with probability 0.5 (training augmentation).
        val_fraction, seed: see ``split``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", image_size: int = 224,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 hflip: bool = False, val_fraction: float = 0.1, seed: int = 0):
        self.root = Path(root)
        self.class_names = folder_classes(self.root)
        self.split, self.image_size, self.hflip = split, int(image_size), hflip
        index = {c: i for i, c in enumerate(self.class_names)}
        carve_val = split in ("train", "val") and not (self.root / "val").is_dir()
        if (self.root / split).is_dir() and not carve_val:
            classes, items = _list_split(self.root, split)
            unknown = sorted(set(classes) - set(index))
            if unknown:
                raise InputError(f"{self.root}/{split} has classes not in train/: {unknown}")
        elif carve_val:
            _, all_items = _list_split(self.root, "train")
            held = _held_out(all_items, val_fraction, seed)
            items = [it for it in all_items if (it[0] in held) == (split == "val")]
        else:
            raise InputError(f"{self.root} has no {split}/ directory")
        if not items:
            raise InputError(f"no images for split {split!r} in {self.root}")
        self.items = [(rel, index[c]) for rel, c in items]
        self.boxes = _read_boxes(self.root)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        listing = "\n".join(f"{rel}\t{y}" for rel, y in self.items)
        self.manifest_sha256 = hashlib.sha256(listing.encode()).hexdigest()

    @property
    def labels(self) -> list[int]:
        return [y for _, y in self.items]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.items)

    def _mask(self, rel: str, size: tuple[int, int]) -> Optional[np.ndarray]:
        """Object mask (H, W) bool at the original size, from masks/ or boxes.json, else None."""
        parts = Path(rel)
        mask_dir = self.root / "masks" / parts.parent
        for cand in (mask_dir / (parts.stem + ".png"), mask_dir / parts.name):
            if cand.is_file():
                with Image.open(cand) as im:
                    m = np.asarray(im.convert("L").resize(size, Image.NEAREST)) > 0
                return m
        boxes = self.boxes.get(rel)
        if boxes:
            from .boxes import box_to_mask

            w, h = size
            m = np.zeros((h, w), dtype=bool)
            for box in boxes:
                m |= box_to_mask(box, h, w)
            return m
        return None

    def __getitem__(self, i: int) -> dict[str, Any]:
        from ..io.images import load_image

        rel, label = self.items[i]
        image = load_image(self.root / rel)
        mask = self._mask(rel, image.size)
        s = self.image_size
        flip = self.hflip and bool(torch.rand(()) < 0.5)
        image = image.resize((s, s), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        if mask is not None:
            m = torch.from_numpy(np.asarray(Image.fromarray(mask).resize((s, s), Image.NEAREST)).copy())
        else:
            m = torch.zeros(s, s, dtype=torch.bool)
        if flip:
            x, m = x.flip(-1), m.flip(-1)
        return {"image": (x - self.mean) / self.std, "label": label, "target_mask": m,
                "has_mask": mask is not None, "index": i}


def _held_out(items: list[tuple[str, str]], fraction: float, seed: int) -> set[str]:
    """A deterministic per-class share of the items (by hash of seed and path)."""
    if not 0 < fraction < 1:
        raise InputError(f"val_fraction must be in (0, 1), got {fraction}")
    held = set()
    by_class: dict[str, list[str]] = {}
    for rel, c in items:
        by_class.setdefault(c, []).append(rel)
    for c, rels in by_class.items():
        ranked = sorted(rels, key=lambda r: hashlib.sha256(f"{seed}:{r}".encode()).hexdigest())
        k = max(1, int(round(fraction * len(rels)))) if len(rels) > 1 else 0
        held.update(ranked[:k])
    return held


def _read_boxes(root: Path) -> dict[str, list[list[float]]]:
    path = root / "boxes.json"
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {e}") from e
    if not isinstance(raw, dict):
        raise InputError(f"{path} must map image paths to boxes")
    out = {}
    for k, v in raw.items():
        boxes = v if v and isinstance(v[0], (list, tuple)) else [v]
        for b in boxes:
            if len(b) != 4:
                raise InputError(f"{path}: box for {k} must be [x0, y0, x1, y1], got {b}")
        out[k] = [list(map(float, b)) for b in boxes]
    return out


def load_datasets(data_dir: str, image_size: int, mean, std, hflip: bool, val_fraction: float, seed: int):
    """(train, val, test-or-None, class names) for an ImageFolder directory or a demo-task directory."""
    root = Path(data_dir).expanduser()
    if (root / "manifest.json").is_file():
        from .masked_dataset import MaskedImageDataset, PairedAugment

        tr = MaskedImageDataset(root, "train", image_size, mean, std, transform=PairedAugment() if hflip else None)
        va = MaskedImageDataset(root, "val", image_size, mean, std)
        te = MaskedImageDataset(root, "test", image_size, mean, std)
        for ds in (tr, va, te):
            ds.manifest_sha256 = sha256_file(root / "manifest.json")
        return tr, (va if len(va) else None), (te if len(te) else None), tr.class_names
    tr = ImageFolderDataset(root, "train", image_size, mean, std, hflip=hflip, val_fraction=val_fraction, seed=seed)
    va = ImageFolderDataset(root, "val", image_size, mean, std, val_fraction=val_fraction, seed=seed)
    te = ImageFolderDataset(root, "test", image_size, mean, std) if (root / "test").is_dir() else None
    return tr, va, te, tr.class_names
