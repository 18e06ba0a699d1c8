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


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'toast_core' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["CheckpointError", "InputError", "ToastError", "__version__", *_LAZY]
