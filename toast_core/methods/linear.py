"""Linear probe: the backbone is frozen, only the classifier head trains."""
from __future__ import annotations

from dataclasses import dataclass

from .base import MethodConfig, TransferModel, register


@dataclass
class LinearConfig(MethodConfig):
    """No options: the head (``vit.head``) is the only trainable part."""


@register("linear")
class LinearProbe(TransferModel):
    Config = LinearConfig
    plain_first_pass = True
