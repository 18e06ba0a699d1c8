"""The demo task's splits held in memory as uint8 tensors, resized once to the plan's input size."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..data.demo_task import load_manifest

class TensorImageDataset(torch.utils.data.Dataset):
    """Images held as uint8 (N, 3, S, S), normalised on access; optional horizontal flip.

    Items: ``{"image": float32 (3, S, S), "label": int}``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, hflip: bool = False,
                 signature: Optional[dict] = None):
        self.images, self.labels, self.hflip = images, labels, hflip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        for k, v in (signature or {}).items():
            setattr(self, k, v)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        x = self.images[i].float() / 255.0
        if self.hflip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return {"image": (x - self.mean) / self.std, "label": int(self.labels[i])}


def load_task_split(task_dir: str | os.PathLike, split: str, image_size: int, limit: Optional[int] = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of a demo-task split resized to ``image_size`` (bicubic, whole image, as the app
    does) as uint8 (N, 3, S, S), and their labels (N,)."""
    root = Path(task_dir)
    entries = [e for e in load_manifest(root)["images"] if e["split"] == split]
    entries.sort(key=lambda e: e["index"])
    if limit is not None:
        entries = entries[:limit]
    images = np.empty((len(entries), image_size, image_size, 3), dtype=np.uint8)
    for i, e in enumerate(entries):
        with Image.open(root / e["image"]) as im:
            im = im.convert("RGB")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BICUBIC)
            images[i] = np.asarray(im)
    labels = torch.tensor([int(e["label"]) for e in entries], dtype=torch.int64)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels
