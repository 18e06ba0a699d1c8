"""Visual prompt tuning (Jia et al., 2022): learned prompt tokens, frozen backbone.

T prompt tokens are inserted after the prefix tokens (CLS, registers), without position embedding.
``vpt-shallow`` inserts them once, before block 0; ``vpt-deep`` replaces the previous block's prompt
outputs by each block's own learned prompts. Prompt tokens are not image patches: the recorder
excludes them from the patch grid and reports the attention mass they take.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import MethodConfig, TransferModel, register


@dataclass
class VPTConfig(MethodConfig):
    """Options of VPT.

    Attributes:
        num_prompts: prompt tokens T per layer (the VPT paper searches 1–200; 10 is a common default).
        dropout: dropout on the prompt tokens while training.
    """

    num_prompts: int = 10
    dropout: float = 0.0

    def __post_init__(self):
        if self.num_prompts < 1:
            raise ValueError(f"VPT needs at least one prompt token, got {self.num_prompts}")


class _VPT(TransferModel):
    Config = VPTConfig
    deep: bool = False

    def setup(self) -> None:
        cfg = self.config
        dim = self.vit.embed_dim
        patch = self.vit.patch_embed.patch_size
        v = math.sqrt(6.0 / (3.0 * patch[0] * patch[1] + dim))
        layers = len(self.vit.blocks) if self.deep else 1
        self.prompts = nn.Parameter(torch.empty(layers, cfg.num_prompts, dim).uniform_(-v, v))
        self.prompt_dropout = nn.Dropout(cfg.dropout)

    @property
    def num_prompt_tokens(self) -> int:
        return self.config.num_prompts

    def trainable_modules(self):
        return [self.vit.head, self.prompts]

    def tokens_before_block(self, x: torch.Tensor, index: int) -> torch.Tensor:
        p, t = self.num_prefix_tokens, self.config.num_prompts
        if index == 0:
            prompts = self.prompt_dropout(self.prompts[0]).unsqueeze(0).expand(x.shape[0], -1, -1)
            return torch.cat([x[:, :p], prompts.to(x.dtype), x[:, p:]], dim=1)
        if self.deep:
            prompts = self.prompt_dropout(self.prompts[index]).unsqueeze(0).expand(x.shape[0], -1, -1)
            return torch.cat([x[:, :p], prompts.to(x.dtype), x[:, p + t:]], dim=1)
        return x


@register("vpt-shallow")
class VPTShallow(_VPT):
    deep = False


@register("vpt-deep")
class VPTDeep(_VPT):
    deep = True
