"""TOAST stage 1: pre-tuning the top-down module on generic data, and using it to start stage 2.

The authors pre-tune on ImageNet-1k; no ImageNet exists offline here, so the generic task is built
from the real photographs that ship inside installed wheels (scikit-image, scikit-learn,
matplotlib): random crops (scale, position, flip, brightness/contrast jitter) labelled by the
photograph they come from — 21 classes of natural scenes, faces, textures, microscopy and text.
It shares nothing with the downstream task's labels (shapes of pasted objects).

Pre-tuning trains the decoders (A_l, B_l), ξ and P — plus a throw-away head for the generic classes —
with the task loss and the reconstruction loss (``stage="pretune"``). The result is a normal
checkpoint; :func:`init_from_pretuned` copies its top-down module (decoders, ``prompt`` = ξ,
``top_down_transform`` = P) into a fresh ``toast`` or ``toast-lite`` model. For TOAST-Lite the
pre-tuned A_l/B_l become the frozen base weights and the LoRA adapters start fresh.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
from PIL import Image

from ..data.photos import GENERIC_PHOTO_NAMES, load_photo
from ..errors import CheckpointError, InputError
from ..io.images import IMAGENET_MEAN, IMAGENET_STD

#: The generic photographs, in label order (:mod:`toast_core.data.photos`: read from installed packages,
#: no download).
GENERIC_PHOTOS: tuple[str, ...] = GENERIC_PHOTO_NAMES


def generic_crop(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One random crop of photo ``name``: 10–60 % of the area, aspect 3/4–4/3, flip, brightness and
    contrast jitter. Returns uint8 (size, size, 3)."""
    photo = Image.fromarray(load_photo(name))
    w, h = photo.size
    area = rng.uniform(0.10, 0.60) * w * h
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    cw, ch = min(w, np.sqrt(area * aspect)), min(h, np.sqrt(area / aspect))
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    crop = photo.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    arr = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    mean = arr.mean()
    arr = (arr - mean) * rng.uniform(0.7, 1.3) + mean * rng.uniform(0.7, 1.3)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


class GenericPhotoCrops(torch.utils.data.Dataset):
    """The generic pre-tuning task: crops labelled by their source photograph (21 classes).

    Images are rendered once (deterministically from ``seed`` and ``split``) and kept as uint8.
    Items: ``{"image": float32 (3, S, S) normalised, "label": int}``.

    Args:
        n: number of images (balanced over the photos).
        image_size: side S.
        seed, split: the images are a pure function of (seed, split, index).
        mean, std: normalisation (the backbone's).
    """

    def __init__(self, n: int, image_size: int, seed: int = 0, split: str = "train",
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if n < 1 or image_size < 8:
            raise InputError(f"need n >= 1 and image_size >= 8, got {n}, {image_size}")
        self.class_names = list(GENERIC_PHOTOS)
        self.split, self.image_size = split, image_size
        k = len(self.class_names)
        split_code = {"train": 0, "val": 1, "test": 2}.get(split, 3)
        labels = np.arange(n) % k
        images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
        for i in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([seed, split_code, i]))
            images[i] = generic_crop(self.class_names[labels[i]], rng, image_size)
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (n, 3, S, S) uint8
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.manifest_sha256 = hashlib.sha256(self.images.numpy().tobytes()).hexdigest()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = self.images[i].float() / 255.0
        return {"image": (x - self.mean) / self.std, "label": int(self.labels[i])}


@dataclass
class PretuneData:
    """Size of the generic pre-tuning set."""

    n_train: int = 840
    n_val: int = 84
    image_size: int = 224
    seed: int = 0


def pretune(out_dir: str | os.PathLike, *, backbone: Optional[str] = None, pretrained: Any = True,
            img_size: Optional[int] = None, backbone_kwargs: Optional[dict] = None,
            data: Optional[PretuneData] = None, train_config=None, callbacks: Iterable[Any] = (),
            resume: bool | str = False, progress: bool = False, toast_config: Optional[dict] = None,
            meta: Optional[dict] = None):
    """Stage 1 of TOAST: pre-tune the top-down module on the generic photo-crop task.

    Args:
        out_dir: where the stage-1 checkpoint goes (a normal checkpoint; method ``toast``, stage ``pretune``).
        backbone, pretrained, img_size, backbone_kwargs: as for :func:`toast_core.build_model`.
        data: generic-set size and image size.
        train_config: a :class:`toast_core.training.trainer.TrainConfig` (its ``stage`` is forced to "pretune").
        toast_config: TOAST options (e.g. ``recon_weight``).
        resume: as for :func:`toast_core.training.trainer.train` (``"auto"`` discards a state from another run).
        meta: extra checkpoint config fields.
    Returns:
        the :class:`toast_core.training.trainer.TrainResult` (``result.checkpoint`` is the file to initialise from).
    """
    import dataclasses

    from ..backbones import DEFAULT_BACKBONE
    from ..io.checkpoints import build_without_init
    from ..models import data_config
    from .trainer import TrainConfig, train

    data = data or PretuneData()
    cfg = dataclasses.replace(train_config or TrainConfig(epochs=2, lr=1e-3), stage="pretune")
    torch.manual_seed(cfg.seed)
    model = build_without_init("toast", backbone=backbone or DEFAULT_BACKBONE, num_classes=len(GENERIC_PHOTOS),
                        pretrained=pretrained, img_size=img_size, backbone_kwargs=backbone_kwargs,
                        **(toast_config or {}))
    model.top_down_transform.requires_grad_(True)  # stage 1 trains P as well
    dc = data_config(model)
    mean, std = tuple(dc["mean"]), tuple(dc["std"])
    train_set = GenericPhotoCrops(data.n_train, data.image_size, data.seed, "train", mean, std)
    val_set = GenericPhotoCrops(data.n_val, data.image_size, data.seed, "val", mean, std) if data.n_val else None
    meta = {"classes": train_set.class_names,
            "data": {"kind": "generic-photo-crops", "image_size": data.image_size, "mean": list(mean),
                     "std": list(std), "n_train": data.n_train, "n_val": data.n_val, "seed": data.seed,
                     "manifest_sha256": train_set.manifest_sha256}, **(meta or {})}
    return train(model, train_set, val_set, cfg, out_dir, callbacks=callbacks, resume=resume, meta=meta,
                 progress=progress)


TOPDOWN_KEYS = ("prompt", "top_down_transform")


def pretuned_topdown(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The top-down module of a stage-1 checkpoint: ({"decoders.{l}.linear.weight", ...,
    "prompt", "top_down_transform"}: tensors, checkpoint config)."""
    from ..io.checkpoints import read_checkpoint_info
    from ..io.safe_io import load_state_dict

    info = read_checkpoint_info(path)
    if info.get("method") not in ("toast", "toast-lite") or info.get("stage") != "pretune":
        raise CheckpointError(f"{path} is not a TOAST pre-tuning checkpoint (method {info.get('method')}, "
                              f"stage {info.get('stage')})")
    tensors = load_state_dict(info["path"])
    out = {}
    for k, v in tensors.items():
        if k in TOPDOWN_KEYS:
            out[k] = v
        elif k.startswith("decoders."):
            out[k.replace(".base.weight", ".weight")] = v  # a lite stage-1 model: take its base weights
    out = {k: v for k, v in out.items() if "lora_" not in k}
    return out, info


def init_from_pretuned(model, path: str | os.PathLike) -> dict:
    """Initialise a ``toast`` / ``toast-lite`` model's top-down module from a stage-1 checkpoint.

    TOAST: decoders, ξ and P are copied. TOAST-Lite: the pre-tuned A_l/B_l become the frozen base
    weights (``decoders.{l}.linear.base.weight``); its LoRA adapters keep their fresh initialisation.

    Returns:
        a JSON-ready record of what was loaded (path, sha256, backbone) for the stage-2 checkpoint.
    Raises:
        CheckpointError: another backbone, other backbone weights, or other shapes.
    """
    from ..cache import sha256_file
    from ..io.checkpoints import backbone_record

    tensors, info = pretuned_topdown(path)
    mine = getattr(model, "build_info", {})
    if mine.get("method") not in ("toast", "toast-lite"):
        raise CheckpointError(f"pre-tuned top-down weights fit only toast / toast-lite, not {mine.get('method')!r}")
    if info.get("backbone") != mine.get("backbone") or (info.get("backbone_kwargs") or {}) != (mine.get("backbone_kwargs") or {}):
        raise CheckpointError(f"pre-tuned on backbone {info.get('backbone')!r} {info.get('backbone_kwargs') or ''}, "
                              f"but the model uses {mine.get('backbone')!r} {mine.get('backbone_kwargs') or ''}")
    theirs_w, mine_w = info.get("backbone_weights") or {}, backbone_record(model)
    for key in ("sha256", "state_sha256"):
        if theirs_w.get(key) and mine_w.get(key) and theirs_w[key] != mine_w[key]:
            raise CheckpointError(f"pre-tuned on other backbone weights ({theirs_w[key][:16]}…, model "
                                  f"{mine_w[key][:16]}…)")
    lite = mine["method"] == "toast-lite"
    state = model.state_dict()
    mapped = {}
    for k, v in tensors.items():
        target = k.replace(".weight", ".base.weight") if lite and k.startswith("decoders.") else k
        if target not in state:
            raise CheckpointError(f"pre-tuned tensor {k} has no place in the model ({target})")
        if tuple(state[target].shape) != tuple(v.shape):
            raise CheckpointError(f"pre-tuned {k}: shape {tuple(v.shape)} vs model {tuple(state[target].shape)}")
        mapped[target] = v
    expected = {k for k in state if k in TOPDOWN_KEYS or (k.startswith("decoders.") and "lora_" not in k)}
    missing = sorted(expected - set(mapped))
    if missing:
        raise CheckpointError(f"pre-tuned checkpoint lacks {len(missing)} top-down tensors (e.g. {missing[:3]})")
    with torch.no_grad():
        for k, v in mapped.items():
            state[k].copy_(v.to(state[k].dtype))
    out = {"path": str(Path(info["path"]).resolve()), "sha256": sha256_file(info["path"]),
           "run_hash": info.get("run_hash"), "val": (info.get("history") or [{}])[-1].get("val_acc")}
    if info.get("stage1"):
        out["stage1"] = info["stage1"]  # the least-squares fit's settings and held-out diagnostics
    return out


# ------------------------------------------------------------------------------------------------
# Stage 1 by least squares (the default): toast_core.training.stage1
# ------------------------------------------------------------------------------------------------

@dataclass
class Stage1Config:
    """The least-squares stage 1 (:func:`toast_core.training.stage1.fit_topdown`) on generic photo crops.

    Attributes:
        n_fit: crops the maps are fitted on; n_held_out: crops (another split) the diagnostics use.
        image_size: crop side (the model's input side).
        td_gain: B_l maps h_l to td_gain × (norm1(in_l) − β_l).
        ridge: λ relative to each Gram matrix's mean diagonal.
        xi_init: ξ's start (:func:`toast_core.training.stage1.initial_xi`): ``"pc1"`` (the patch tokens' first
            principal component, orthogonal to their mean) or ``"cls-minus-patch"`` (mean CLS token
            minus mean patch token).
    """

    n_fit: int = 1050
    n_held_out: int = 210
    image_size: int = 112  # every caller sets its own (the demo plans their input size): kept for stable hashes
    td_gain: float = 2.0
    ridge: float = 1e-3
    xi_init: str = "pc1"
    seed: int = 0

    def to_dict(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self)


def pretune_least_squares(out_dir: str | os.PathLike, *, config: Optional[Stage1Config] = None,
                          backbone: Optional[str] = None, pretrained: Any = True,
                          backbone_kwargs: Optional[dict] = None, meta: Optional[dict] = None,
                          progress=None, device: str = "cpu") -> dict:
    """Stage 1 of TOAST as its exact minimiser: fit the top-down module (:mod:`toast_core.training.stage1`) on
    generic photo crops, measure it on held-out crops, and save it as a stage-1 checkpoint (method
    ``toast``, stage ``pretune``) that :func:`init_from_pretuned` reads.

    Returns:
        the checkpoint config (``stage1`` holds the settings, the per-layer diagnostics and the time).
    """
    import time

    from ..backbones import DEFAULT_BACKBONE
    from ..io.checkpoints import build_without_init, read_checkpoint_info, save_checkpoint
    from ..models import data_config
    from .stage1 import STAGE1_KIND, fit_topdown, stage1_diagnostics

    cfg = config or Stage1Config()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = build_without_init("toast", backbone=backbone or DEFAULT_BACKBONE, num_classes=len(GENERIC_PHOTOS),
                               pretrained=pretrained, img_size=cfg.image_size, backbone_kwargs=backbone_kwargs)
    dc = data_config(model)
    mean, std = tuple(dc["mean"]), tuple(dc["std"])
    fit_set = GenericPhotoCrops(cfg.n_fit, cfg.image_size, cfg.seed, "train", mean, std)
    held_out = GenericPhotoCrops(cfg.n_held_out, cfg.image_size, cfg.seed, "val", mean, std)

    def fit_progress(fraction, text):
        if progress:
            progress(0.85 * fraction, text)

    model.to(device)  # the forward passes and Gram matrices run there; the solves on the CPU
    tensors = fit_topdown(model, fit_set.images, mean=mean, std=std, td_gain=cfg.td_gain, ridge=cfg.ridge,
                          xi_init=cfg.xi_init, progress=fit_progress)
    state = model.state_dict()
    with torch.no_grad():
        for k, v in tensors.items():
            state[k].copy_(v)
    if progress:
        progress(0.9, "stage 1: diagnostics on held-out crops")
    diag = stage1_diagnostics(model, held_out.images, tensors, mean=mean, std=std, td_gain=cfg.td_gain)
    model.cpu()
    seconds = time.perf_counter() - t0
    record = {"kind": STAGE1_KIND, "settings": cfg.to_dict(), "diagnostics": diag, "seconds": round(seconds, 1)}
    meta = {"stage": "pretune", "complete": True, "classes": fit_set.class_names, "stage1": record,
            "run_hash": hashlib.sha256(json.dumps({"stage1": cfg.to_dict(), "fit": fit_set.manifest_sha256,
                                                   "backbone": backbone or DEFAULT_BACKBONE},
                                                  sort_keys=True).encode()).hexdigest()[:16],
            "data": {"kind": "generic-photo-crops", "image_size": cfg.image_size, "mean": list(mean), "std": list(std),
                     "n_train": cfg.n_fit, "n_val": cfg.n_held_out, "seed": cfg.seed,
                     "manifest_sha256": fit_set.manifest_sha256}, **(meta or {})}
    save_checkpoint(model, out_dir, meta)
    if progress:
        progress(1.0, f"stage 1 fitted in {seconds:.0f} s")
    return read_checkpoint_info(out_dir)

