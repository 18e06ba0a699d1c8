"""CUB-200-2011 in its own layout: images with class labels, the train/test split, one bounding box
and 15 part locations per image.

Files read (paths relative to the dataset root, which holds ``images.txt``)::

    images.txt                 <image_id> <relative path under images/>
    image_class_labels.txt     <image_id> <class_id>            (1-based)
    train_test_split.txt       <image_id> <is_training_image>   (1 = train, 0 = test)
    bounding_boxes.txt         <image_id> <x> <y> <width> <height>   (pixels)
    classes.txt                <class_id> <class name>           (optional)
    parts/parts.txt            <part_id> <part name>             (optional)
    parts/part_locs.txt        <image_id> <part_id> <x> <y> <visible>  (optional)

The root may also be a folder holding ``CUB_200_2011/`` (as the archive unpacks). Images are
resized to a square (no crop) so the box and the parts map exactly; the box becomes the target mask.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from .boxes import box_to_mask
from ..io.images import IMAGENET_MEAN, IMAGENET_STD

REQUIRED = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt")


def find_cub_root(path: str | os.PathLike) -> Optional[Path]:
    """The CUB root at ``path`` or ``path/CUB_200_2011``, or None when neither has the layout."""
    p = Path(path)
    for cand in (p, p / "CUB_200_2011"):
        if all((cand / f).is_file() for f in REQUIRED):
            return cand
    return None


def _read_table(path: Path, n_fields: int, last_is_text: bool = False) -> dict[int, list[str]]:
    """``{id: fields}`` from a whitespace-separated file with an integer first column."""
    out: dict[int, list[str]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=n_fields - 1) if last_is_text else line.split()
        if len(parts) != n_fields:
            raise InputError(f"{path.name} line {n}: expected {n_fields} fields, got {line!r}")
        try:
            key = int(parts[0])
        except ValueError:
            raise InputError(f"{path.name} line {n}: the first field must be an integer id, got {line!r}") from None
        if key in out:
            raise InputError(f"{path.name} line {n}: duplicate id {key}")
        out[key] = parts[1:]
    return out


def _floats(path: Path, key: int, fields: Sequence[str]) -> list[float]:
    try:
        return [float(f) for f in fields]
    except ValueError:
        raise InputError(f"{path.name}: non-numeric value for id {key}: {fields}") from None


def read_cub(root: str | os.PathLike) -> dict[str, Any]:
    """Parse the CUB text files.

    Returns: dict with ``root`` (Path), ``records`` (list, sorted by image id, of dicts ``image_id``,
    ``path`` (Path), ``label`` (0-based), ``train`` (bool), ``box`` (x, y, w, h) and ``parts``
    (float (15, 3) array of x, y, visible, or None)), ``class_names`` and ``part_names``.
    """
    base = find_cub_root(root)
    if base is None:
        missing = [f for f in REQUIRED if not (Path(root) / f).is_file()]
        raise InputError(f"{root} is not a CUB-200-2011 folder (missing {', '.join(missing)})")
    images = _read_table(base / "images.txt", 2, last_is_text=True)
    labels = _read_table(base / "image_class_labels.txt", 2)
    split = _read_table(base / "train_test_split.txt", 2)
    boxes = _read_table(base / "bounding_boxes.txt", 5)
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", split), ("bounding_boxes.txt", boxes)):
        missing = sorted(set(images) - set(table))
        if missing:
            raise InputError(f"{name} has no entry for image id(s) {missing[:5]}{'...' if len(missing) > 5 else ''}")
    classes = _read_table(base / "classes.txt", 2, last_is_text=True) if (base / "classes.txt").is_file() else {}
    part_names_t = _read_table(base / "parts" / "parts.txt", 2, last_is_text=True) if (base / "parts" / "parts.txt").is_file() else {}
    parts: dict[int, dict[int, list[float]]] = {}
    locs = base / "parts" / "part_locs.txt"
    if locs.is_file():
        for n, line in enumerate(locs.read_text(encoding="utf-8").splitlines(), 1):
            f = line.split()
            if not f:
                continue
            if len(f) != 5:
                raise InputError(f"part_locs.txt line {n}: expected 5 fields, got {line!r}")
            try:
                img, part = int(f[0]), int(f[1])
                x, y, vis = float(f[2]), float(f[3]), float(f[4])
            except ValueError:
                raise InputError(f"part_locs.txt line {n}: non-numeric field in {line!r}") from None
            parts.setdefault(img, {})[part] = [x, y, vis]
    n_parts = max([len(part_names_t)] + [max(p) for p in parts.values()])
    try:
        label_ids = {k: int(v[0]) for k, v in labels.items()}
        train = {k: int(v[0]) for k, v in split.items()}
    except ValueError:
        raise InputError("image_class_labels.txt and train_test_split.txt need integer fields") from None
    if min(label_ids.values()) < 1:
        raise InputError("class ids in image_class_labels.txt are 1-based")
    if not set(train.values()) <= {0, 1}:
        raise InputError("is_training_image in train_test_split.txt must be 0 or 1")
    records = []
    for image_id in sorted(images):
        p = parts.get(image_id)
        arr = None
        if p is not None:
            arr = np.zeros((n_parts, 3))
            for part, v in p.items():
                arr[part - 1] = v
        records.append(dict(image_id=image_id, path=base / "images" / images[image_id][0],
                            label=label_ids[image_id] - 1, train=train[image_id] == 1,
                            box=tuple(_floats(base / "bounding_boxes.txt", image_id, boxes[image_id])), parts=arr))
    n_classes = max(max(label_ids.values()), max(classes) if classes else 0)
    class_names = [classes[i][0] if i in classes else str(i) for i in range(1, n_classes + 1)]
    part_names = [part_names_t[i][0] if i in part_names_t else str(i) for i in range(1, n_parts + 1)]
    return dict(root=base, records=records, class_names=class_names, part_names=part_names)


class CUBDataset(torch.utils.data.Dataset):
    """One split of CUB-200-2011 with the bounding box as target mask and the part locations.

    Each item is a dict: ``image`` float32 (3, S, S) normalised; ``label`` int (0-based);
    ``target_mask`` bool (S, S) (the box); ``parts`` float32 (15, 3) (x, y, visible) in resized pixels;
    ``image_id`` int (CUB's id); ``index`` position in the split. No ``distractor_mask``.

    Args: root: the CUB folder; split: ``"train"`` or ``"test"`` (``"val"`` is refused: CUB has none);
        image_size: output side S; mean, std: normalisation.
    """

    def __init__(self, root: str | os.PathLike, split: str = "test", image_size: int = 224,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if split not in ("train", "test"):
            raise InputError(f"CUB-200-2011 has splits 'train' and 'test', not {split!r}")
        if not (isinstance(image_size, int) and image_size >= 8):
            raise InputError(f"image_size must be an int >= 8, got {image_size!r}")
        info = read_cub(root)
        self.root = info["root"]
        self.class_names, self.part_names = info["class_names"], info["part_names"]
        self.records = [r for r in info["records"] if r["train"] == (split == "train")]
        self.split, self.image_size = split, image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labels(self) -> list[int]:
        return [r["label"] for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.records[i]
        try:
            with Image.open(r["path"]) as im:
                image = im.convert("RGB")
        except OSError as e:
            raise InputError(f"cannot read CUB image {r['path']}: {e}") from None
        W0, H0 = image.size
        S = self.image_size
        sx, sy = S / W0, S / H0
        x, y, w, h = r["box"]
        try:
            mask = box_to_mask((x * sx, y * sy, w * sx, h * sy), S, S, fmt="xywh")
        except InputError:
            mask = np.zeros((S, S), dtype=bool)  # a degenerate box: metrics become NaN for this image
        image = image.resize((S, S), Image.BILINEAR, reducing_gap=None)
        t = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        item = {"image": (t - self.mean) / self.std, "label": r["label"], "target_mask": torch.from_numpy(mask),
                "image_id": r["image_id"], "index": i}
        if r["parts"] is not None:
            p = r["parts"].copy()
            p[:, 0] *= sx
            p[:, 1] *= sy
            item["parts"] = torch.from_numpy(p.astype(np.float32))
        return item

