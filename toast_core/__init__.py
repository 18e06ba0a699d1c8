"""toast_core: transfer methods on one steerable ViT, attention recording, maps, metrics and figures.

Public API::

    import toast_core as tc
    tc.available_methods()                       # ['linear', 'finetune', 'lora', ...]
    model = tc.build_model("toast", num_classes=10)
    result = tc.extract_attention(model, images) # result.cls["top-down"]: (layers, B, h, w)
"""
from .backbones import DEFAULT_BACKBONE, create_backbone
from .errors import CheckpointError, InputError, ToastError
from .methods import TransferModel, available_methods, get_method
from .models import build_model, data_config
from .recording import AttentionResult, extract_attention, record

__version__ = "0.1.0"


def load_image(src, **kwargs):
    """Read an image safely (see :func:`toast_core.images.load_image`)."""
    from .images import load_image as _load_image

    return _load_image(src, **kwargs)


__all__ = [
    "DEFAULT_BACKBONE", "AttentionResult", "CheckpointError", "InputError", "ToastError", "TransferModel",
    "available_methods", "build_model", "create_backbone", "data_config", "extract_attention",
    "get_method", "load_image", "record", "__version__",
]
