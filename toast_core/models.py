"""``build_model``: a backbone adapted by a registered transfer method, ready to train or inspect."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from timm.data import resolve_model_data_config

from .backbones import DEFAULT_BACKBONE, Pretrained, create_backbone
from .methods import get_method
from .methods.base import TransferModel


def build_model(method: str, backbone: str = DEFAULT_BACKBONE, num_classes: int = 10,
                pretrained: Pretrained = True, img_size: Optional[int | tuple[int, int]] = None,
                backbone_kwargs: Optional[dict] = None, **config) -> TransferModel:
    """Build ``backbone`` adapted by ``method``.

    Args:
        method: a name from :func:`available_methods` (``linear``, ``finetune``, ``lora``,
            ``vpt-shallow``, ``vpt-deep``, ``toast``, ``toast-lite``).
        backbone: a timm ViT-family model name.
        num_classes: classes of the task head.
        pretrained: ``True`` (offline default weights for the default backbone, timm's otherwise),
            ``False`` (random), or a path to a local checkpoint.
        img_size: input size the position embedding is laid out for (other sizes still work).
        backbone_kwargs: extra arguments for :func:`timm.create_model` (e.g. ``depth=2``).
        **config: fields of the method's config dataclass (e.g. ``rank=8`` for LoRA).

    Returns:
        a :class:`TransferModel`; ``model(images)`` returns logits (B, num_classes).

    Example::

        model = build_model("lora", num_classes=10, rank=4, target="qv")
    """
    cls = get_method(method)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method '{method}'; it takes {sorted(fields)}")
    cfg = cls.Config(**config)
    vit = create_backbone(backbone, pretrained=pretrained, num_classes=num_classes, img_size=img_size,
                          **(backbone_kwargs or {}))
    model = cls(vit, cfg)
    model.build_info = {"method": method, "backbone": backbone, "num_classes": int(num_classes),
                        "img_size": img_size, "backbone_kwargs": dict(backbone_kwargs or {}),
                        "config": cfg.to_dict(),
                        "pretrained": pretrained if isinstance(pretrained, bool) else str(pretrained)}
    return model


def data_config(model: torch.nn.Module) -> dict:
    """Input size, interpolation, mean and std the backbone expects (timm's pretrained config)."""
    vit = getattr(model, "vit", model)
    return resolve_model_data_config(vit)
