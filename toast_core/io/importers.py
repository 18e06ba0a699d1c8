"""Importing checkpoints made elsewhere: the TOAST authors' published layout.

(A plain timm/DeiT checkpoint file is a backbone: ``build_model(method, backbone=name,
pretrained=path)``; this project's own checkpoints load with :func:`toast_core.io.checkpoints.load_checkpoint`.)

The authors' vision checkpoints hold DeiT/timm-style backbone keys plus ``decoders.{l}.linear.weight``
(A_l), ``decoders.{l}.linear2.weight`` (B_l), ``prompt`` (ξ), ``top_down_transform`` (P) and ``head.*``,
stored under ``state_dict['model']`` in a pickle. Files are read with the safe loader only (safetensors,
or ``torch.load(weights_only=True)``), and the model is built in the authors' compatibility mode
(``official=True``) so that it behaves as trained.
"""
from __future__ import annotations

import os
import re
from typing import Union

from ..errors import CheckpointError

_TOP_DOWN = re.compile(r"^(decoders\.\d+\.linear2?\.weight|prompt|top_down_transform)$")


def split_official_state(state: dict) -> tuple[dict, dict]:
    """Split an authors'-layout state dict into (backbone incl. head, top-down module) parts."""
    backbone, top_down = {}, {}
    for key, value in state.items():
        (top_down if _TOP_DOWN.match(key) else backbone)[key] = value
    if "prompt" not in top_down or not any(k.startswith("decoders.") for k in top_down):
        raise CheckpointError("not a TOAST checkpoint: no 'prompt' / 'decoders.*' keys "
                              f"(found e.g. {', '.join(sorted(state)[:5])})")
    return backbone, top_down


def import_official_toast(path: Union[str, os.PathLike], backbone: str = "vit_base_patch16_224",
                          official: bool = True, **backbone_kwargs):
    """Build a ``toast`` model from a checkpoint in the authors' layout.

    Args:
        path: the checkpoint file (their ``.pth`` with ``state_dict['model']``, or safetensors).
        backbone: the timm architecture it was trained on (their ViT-B/16 runs use ``vit_base_patch16_224``).
        official: keep the authors' quirks (value bias added twice); True to reproduce their results.
        **backbone_kwargs: passed to :func:`timm.create_model` (e.g. ``img_size``).

    Raises:
        CheckpointError: the file is unsafe/unreadable, is not a TOAST checkpoint, or does not fit the
            backbone (the message lists what differs).
    """
    from ..backbones import load_backbone_weights
    from ..models import build_model
    from .safe_io import load_state_dict

    state = load_state_dict(path)
    vit_state, td_state = split_official_state(state)
    head = vit_state.get("head.weight")
    if head is None:
        raise CheckpointError("TOAST checkpoint has no classifier head ('head.weight')")
    num_classes = int(head.shape[0])
    img_size = backbone_kwargs.pop("img_size", None)
    model = build_model("toast", backbone=backbone, num_classes=num_classes, pretrained=False,
                        img_size=img_size, backbone_kwargs=backbone_kwargs, official=official,
                        head_bias_prior=False)
    load_backbone_weights(model.vit, vit_state)
    expected = {k for k in model.state_dict() if _TOP_DOWN.match(k)}
    missing = sorted(expected - set(td_state))
    extra = sorted(set(td_state) - expected)
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(model.state_dict()[k].shape)}"
             for k, v in td_state.items() if k in expected and v.shape != model.state_dict()[k].shape]
    if missing or extra or wrong:
        raise CheckpointError(
            f"top-down module does not fit {backbone} ({len(model.decoders)} blocks): "
            f"missing {missing[:4]}, unexpected {extra[:4]}, other shapes {wrong[:3]}")
    model.load_state_dict(td_state, strict=False)
    model.build_info["pretrained"] = f"official TOAST checkpoint {os.fspath(path)}"
    return model.eval()
