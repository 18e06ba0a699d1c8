"""One JSON fallback for everything the library writes (checkpoint configs, training states, figure
manifests): NumPy scalars and arrays, one-element tensors, paths, dates, tuples and sets. No torch import."""
from __future__ import annotations

from datetime import datetime
from pathlib import PurePath
from typing import Any

import numpy as np

from ..errors import InputError


def json_default(obj: Any) -> Any:
    """``json.dumps(..., default=json_default)``: the JSON form of what :mod:`json` cannot write itself.

    Raises:
        InputError: a value with no JSON form (named by its type).
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (PurePath, datetime)):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    numel = getattr(obj, "numel", None)
    if callable(numel) and callable(getattr(obj, "item", None)) and numel() == 1:  # a one-element tensor
        return obj.item()
    raise InputError(f"a value of type {type(obj).__name__} cannot be written as JSON")
