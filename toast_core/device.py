"""The one place that turns a device request into a torch device and picks mixed precision.

Every layer asks here: the trainer (``--device``), the comparison and the app (``$TOAST_DEVICE``), the
batch analysis and the benchmarks. ``"auto"`` means CUDA when a GPU is visible, else the CPU; on CUDA
the models run under bf16 autocast, on the CPU in float32.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

from .errors import InputError


def resolve_device(spec: str | torch.device | None = "auto", local_rank: Optional[int] = None) -> torch.device:
    """``"auto"``/None → CUDA when present, else CPU; otherwise ``torch.device(spec)``, checked.

    Args:
        spec: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a :class:`torch.device`.
        local_rank: a bare ``"cuda"`` becomes ``cuda:<local_rank>`` (one GPU per process under torchrun;
            ``cuda:0`` without one).
    Raises:
        InputError: an unknown device name, or CUDA asked for where there is none.
    """
    if spec is None or str(spec) == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"unknown device {spec!r}: {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("CUDA was asked for but no CUDA device is available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank or 0)
    return dev


def default_device() -> str:
    """``$TOAST_DEVICE`` if set, else ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return os.environ.get("TOAST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def uses_bf16(device: str | torch.device) -> bool:
    """Whether inference on ``device`` runs under bf16 autocast (CUDA) or in float32 (elsewhere)."""
    return torch.device(device).type == "cuda"


def device_label(device: str | torch.device) -> str:
    """What the pages print, e.g. ``"CUDA · NVIDIA H200 · bf16 autocast"`` or ``"CPU · float32"``."""
    device = str(device)
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"CUDA · {torch.cuda.get_device_name(torch.device(device))} · bf16 autocast"
    return f"{device.upper()} · float32"


def autocast(device: str | torch.device, enabled: Optional[bool] = None):
    """bf16 autocast on ``device`` when ``enabled`` (default: :func:`uses_bf16`), else a null context."""
    if enabled is None:
        enabled = uses_bf16(device)
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
