"""Transfer methods; each module registers itself on import."""
from .base import MethodConfig, TransferModel, available_methods, get_method, register

__all__ = ["MethodConfig", "TransferModel", "available_methods", "get_method", "register"]
