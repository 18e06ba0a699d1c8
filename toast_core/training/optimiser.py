"""The optimiser and its schedule: parameter groups (decay × head/body × per-pattern scales), warm-up
then cosine decay, set per step."""
from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn

from .config import TrainConfig, TrainingError

def lr_at(step: int, total: int, warmup: int, base: float, min_ratio: float = 0.0) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up over ``warmup`` steps, then
    cosine decay from ``base`` to ``base * min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def name_matches(name: str, pattern: str) -> bool:
    """A parameter name matches a prefix (``"prompt"``) or a glob (``"decoders.*.linear2.*"``)."""
    return name.startswith(pattern) or fnmatch.fnmatchcase(name, pattern)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Optimizer over the parameters that require grad, in up to four groups (decay / no decay ×
    head / rest); each group's ``lr_scale`` multiplies the scheduled rate."""
    head_ids = set()
    vit = getattr(model, "vit", None)
    if vit is not None and isinstance(getattr(vit, "head", None), nn.Module):
        head_ids = {id(p) for p in vit.head.parameters()}
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2
        if id(p) in head_ids:
            kind, scale = "head", cfg.head_lr_scale
        else:
            kind, scale = next(((pre, sc) for pre, sc in cfg.lr_scales if name_matches(name, pre)), ("body", 1.0))
        if any(name_matches(name, pre) for pre in cfg.relative_lr):
            # one group per parameter; a resumed run restores the saved groups' lr_scale
            kind, scale = name, scale * float(p.detach().float().pow(2).mean().sqrt())
        groups.setdefault((decay, kind, float(scale)), []).append(p)
    if not groups:
        raise TrainingError("the model has no trainable parameters (nothing requires grad)")
    param_groups = []
    for (decay, kind, scale), params in sorted(groups.items()):
        param_groups.append({"params": params, "weight_decay": cfg.weight_decay if decay else 0.0,
                             "lr_scale": scale, "group_name": kind + ("" if decay else "_no_decay")})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(0.9, 0.999))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
