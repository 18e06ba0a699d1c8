"""Full fine-tuning: every parameter of backbone and head trains."""
from __future__ import annotations

from dataclasses import dataclass

from .base import MethodConfig, TransferModel, register


@dataclass
class FinetuneConfig(MethodConfig):
    """No options: everything trains (use a lower learning rate than the other methods)."""


@register("finetune")
class FullFinetune(TransferModel):
    Config = FinetuneConfig
    backbone_frozen = False

    def trainable_modules(self):
        return [self.vit]
