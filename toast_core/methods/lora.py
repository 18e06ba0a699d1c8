"""LoRA: low-rank updates on the attention projections, y = W x + b + (alpha/r) · B A x.

``target="qkv"`` puts one rank-r update on the fused qkv projection (the TOAST authors' baseline, so
K adapts too); ``target="qv"`` adapts only the Q and V slices (the common alternative). B starts at
zero, so at step 0 the model equals the backbone exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import MethodConfig, TransferModel, register


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus low-rank updates on chosen slices of its output.

    Args:
        base: the wrapped linear layer (kept as ``self.base``; its parameter names stay reachable).
        rank, alpha: the update is scaled by ``alpha / rank``.
        out_slices: ``[(start, end), ...]`` output ranges that each get their own (A, B) pair;
            ``None`` = the whole output.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, out_slices=None):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.out_slices = list(out_slices) if out_slices else [(0, base.out_features)]
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        for start, end in self.out_slices:
            a = nn.Parameter(torch.empty(rank, base.in_features))
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A.append(a)
            self.lora_B.append(nn.Parameter(torch.zeros(end - start, rank)))

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight W + (alpha/r)·B A, shaped like the base weight."""
        w = self.base.weight
        delta = torch.zeros_like(w)
        for (start, end), a, b in zip(self.out_slices, self.lora_A, self.lora_B):
            delta[start:end] = b @ a
        return w + self.scale * delta

    @property
    def bias(self):
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if len(self.out_slices) == 1 and self.out_slices[0] == (0, self.base.out_features):
            return y + self.scale * (x @ self.lora_A[0].t() @ self.lora_B[0].t())
        parts = []
        for (start, end), a, b in zip(self.out_slices, self.lora_A, self.lora_B):
            parts.append((start, end, self.scale * (x @ a.t() @ b.t())))
        delta = torch.zeros_like(y)
        for start, end, d in parts:
            delta[..., start:end] = d
        return y + delta


@dataclass
class LoRAConfig(MethodConfig):
    """Options of the LoRA baseline.

    Attributes:
        rank: rank r of each update (the authors' baseline uses 4).
        alpha: scale numerator; the update is multiplied by alpha / rank.
        target: ``"qkv"`` (one update on the fused projection) or ``"qv"`` (Q and V slices only).
    """

    rank: int = 4
    alpha: float = 4.0
    target: str = "qkv"

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.target not in ("qkv", "qv"):
            raise ValueError(f"LoRA target must be 'qkv' or 'qv', got {self.target!r}")


@register("lora")
class LoRA(TransferModel):
    Config = LoRAConfig

    def setup(self) -> None:
        cfg = self.config
        for blk in self.vit.blocks:
            qkv = blk.attn.qkv
            a = blk.attn.attn_dim
            slices = None if cfg.target == "qkv" else [(0, a), (2 * a, 3 * a)]
            blk.attn.qkv = LoRALinear(qkv, cfg.rank, cfg.alpha, slices)

    def trainable_modules(self):
        mods = [self.vit.head]
        for blk in self.vit.blocks:
            mods += [blk.attn.qkv.lora_A, blk.attn.qkv.lora_B]
        return mods
