"""The default task's reference for the app's far-from-the-task notice, computed once and cached on disk.

:mod:`toast_core.analysis.task_distance` measures how far an image is from a task's images (mean output
patch token of the frozen default backbone, Mahalanobis distance, threshold from held-out images). The
reference costs 1,200 frozen-backbone passes; the background trainer computes it before it trains
(:mod:`toast_core.demo.background`), so the first upload of a first start does not wait for it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

#: input side of the check: the size its threshold and AUROCs were measured at. It judges the image, not
#: the models, so it stays at 112 px when the models run at 224 px (and costs a quarter).
REFERENCE_SIDE = 112
N_REFERENCE, N_HELD_OUT = 1000, 200
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def frozen_backbone(image_size: int = REFERENCE_SIDE) -> torch.nn.Module:
    """The default backbone as it was before any transfer method touched it (eval mode, frozen)."""
    from ..backbones import create_backbone

    vit = create_backbone(pretrained=True, img_size=image_size).eval()
    for prm in vit.parameters():
        prm.requires_grad_(False)
    return vit


def reference_file(task_dir: str | os.PathLike, image_size: int = REFERENCE_SIDE,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Path:
    """Where the reference of this task, backbone, size and normalisation is cached."""
    from ..cache import toast_home
    from ..default_backbone import default_backbone_sha256

    manifest = hashlib.sha256((Path(task_dir) / "manifest.json").read_bytes()).hexdigest()
    recipe = f"{manifest}:{default_backbone_sha256()}:{int(image_size)}:{tuple(mean)}:{tuple(std)}:v1"
    return toast_home() / "task_reference" / f"{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.npz"


def task_reference(task_dir: str | os.PathLike, image_size: int = REFERENCE_SIDE,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   vit: Optional[torch.nn.Module] = None):
    """The task's :class:`~toast_core.analysis.task_distance.TaskReference`: read from the cache, else
    fitted on the first 1,000 training and 200 validation images and cached (atomically)."""
    from ..analysis import task_distance as td
    from .tensors import load_task_split

    path = reference_file(task_dir, image_size, mean, std)
    if path.is_file():
        return td.load_reference(path)
    vit = vit if vit is not None else frozen_backbone(image_size)
    train, _ = load_task_split(task_dir, "train", image_size, N_REFERENCE)
    val, _ = load_task_split(task_dir, "val", image_size, N_HELD_OUT)
    ref = td.fit_reference(td.features(vit, train, mean, std), td.features(vit, val, mean, std))
    ref.meta.update({"task": str(task_dir), "image_size": int(image_size)})
    td.save_reference(ref, path)
    return ref
