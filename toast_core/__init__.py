"""toast_core: transfer methods on one steerable ViT, attention recording, maps, metrics and figures.

Public API::

    import toast_core as tc
    tc.available_methods()                       # ['linear', 'finetune', 'lora', ...]
    model = tc.build_model("toast", num_classes=10)
    result = tc.extract_attention(model, images) # result.cls["top-down"]: (layers, B, h, w)

Names are imported lazily, so light modules (viz.render, viz.export, io.images) load without torch/timm.
The layers, folder by folder: docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import importlib
import sys

from .errors import CheckpointError, InputError, ToastError

__version__ = "0.1.0"

_LAZY = {
    "DEFAULT_BACKBONE": "backbones", "create_backbone": "backbones",
    "TransferModel": "methods", "available_methods": "methods", "get_method": "methods",
    "build_model": "models", "data_config": "models",
    "AttentionResult": "recording", "extract_attention": "recording", "record": "recording",
    "load_image": "io.images",
    "load_checkpoint": "io.checkpoints", "save_checkpoint": "io.checkpoints",
    "import_peft_lora": "io.peft",
}


def lazy_names(package: str, table: dict[str, str]):
    """``(__getattr__, __dir__)`` for a package whose public names load from its submodules on first use
    (``table``: name -> submodule, relative to ``package``)."""
    def __getattr__(name: str):
        if name in table:
            value = getattr(importlib.import_module(f".{table[name]}", package), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_names(__name__, _LAZY)

__all__ = ["CheckpointError", "InputError", "ToastError", "__version__", *_LAZY]
