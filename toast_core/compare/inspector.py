"""The TOAST inspector: both passes per layer, the gate, the top-down signal, steering; stage-1 table."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

from ..errors import InputError
from .entries import ModelEntry
from .images import image_id
from .recordings import _to_numpy, needs_full, record, strip_of, top_predictions

@dataclass
class ToastInspection:
    """First vs second pass of a TOAST model, its gate and top-down signal, at one steering setting.

    Attributes:
        bottom_up, top_down: (L, h, w) maps of the chosen kind at every layer, per pass.
        gate: (h, w) token selection s_i = clamp(cos(x_i, ξ), 0, 1) in [0, 1].
        td_norm: (L,) mean L2 norm of the top-down signal per layer, as applied (× td_scale).
        td_norm_trained: (L,) the same with the learned ξ and td_scale = 1.
        value_ratio: (L,) the top-down value term against the values it is added to, per layer:
            mean_i |W_v td_i| / mean_i |v_i| over tokens, as applied; value_ratio_trained: as trained.
        value_ratio_max: (L,) the largest per-token ratio |W_v td_i| / |v_i|, as applied.
        predictions: top-k at this setting; predictions_trained: as trained (td_scale 1, learned ξ).
        probs, probs_trained: (classes,) probabilities.
        grid: (h, w); td_scale, xi_patch: the setting; xi_source: a human label for ξ.
    """

    name: str
    kind: str
    bottom_up: np.ndarray
    top_down: np.ndarray
    gate: np.ndarray
    td_norm: np.ndarray
    td_norm_trained: np.ndarray
    value_ratio: np.ndarray
    value_ratio_trained: np.ndarray
    value_ratio_max: np.ndarray
    predictions: list[tuple[str, float]]
    predictions_trained: list[tuple[str, float]]
    probs: np.ndarray
    probs_trained: np.ndarray
    grid: tuple[int, int]
    td_scale: float
    xi_patch: Optional[tuple[int, int]]
    xi_source: str


def inspect_toast(entry: ModelEntry, image: Image.Image, *, kind: str = "cls", head: Optional[int] = None,
                  td_scale: float = 1.0, xi_patch: Optional[tuple[int, int]] = None,
                  image_key: Optional[str] = None, top_k: int = 3) -> ToastInspection:
    """Everything the TOAST inspector shows, for one steering setting.

    Args:
        entry: a TOAST or TOAST-Lite model (``entry.is_toast``).
        kind: attention map kind for the per-layer strips.
        td_scale: 0 = bottom-up only, 1 = as trained, >1 amplified (the first pass never changes).
        xi_patch: ``(row, col)``: take ξ from this patch's bottom-up token instead of the learned ξ.
    """
    if not entry.is_toast:
        raise InputError(f"{entry.name} ({entry.method}) has no top-down pass; pick a TOAST model")
    if td_scale < 0:
        raise InputError(f"td_scale must be >= 0, got {td_scale}")
    ik = image_key or image_id(image)
    rec = record(entry, image, image_key=ik, td_scale=td_scale, xi_patch=xi_patch, full=needs_full(kind))
    trained = record(entry, image, image_key=ik)
    first, last = rec.passes[0], rec.passes[-1]
    strip = lambda p: strip_of(rec, kind, head, p)  # noqa: E731
    gate = _to_numpy(rec.result.gate[0]) if rec.result.gate is not None else np.zeros(rec.grid)
    td = _to_numpy(rec.result.td_norm[:, 0]) * abs(td_scale)
    n_layers = rec.num_layers

    def ratio(r, key):  # td_scale 0 steers nothing: no value term is added, the ratio is 0
        value = getattr(r.result, key)
        return np.zeros(n_layers) if value is None else _to_numpy(value[:, 0])
    names = entry.class_names
    return ToastInspection(
        name=entry.name, kind=kind, bottom_up=strip(first), top_down=strip(last), gate=gate, td_norm=td,
        td_norm_trained=_to_numpy(trained.result.td_norm[:, 0]),
        value_ratio=ratio(rec, "value_ratio"), value_ratio_trained=ratio(trained, "value_ratio"),
        value_ratio_max=ratio(rec, "value_ratio_max"),
        predictions=top_predictions(rec.probs, names, top_k),
        predictions_trained=top_predictions(trained.probs, names, top_k),
        probs=rec.probs, probs_trained=trained.probs, grid=rec.grid, td_scale=float(td_scale),
        xi_patch=rec.xi_patch,
        xi_source="learned ξ" if xi_patch is None else
        f"bottom-up token of patch (row {xi_patch[0]}, col {xi_patch[1]})")


def stage1_table(stage1: dict) -> str:
    """A TOAST checkpoint's stage-1 record (``pretuned_from.stage1``) as a markdown table."""
    from ..training.stage1 import diagnostics_markdown

    settings = stage1.get("settings") or {}
    xi_init = settings.get("xi_init", "cls-minus-patch")  # stage-1 fits from before the setting used it
    head = (f"{stage1.get('kind', '?')} fit, td gain {settings.get('td_gain', '?')}, ξ start {xi_init}, "
            f"{settings.get('n_fit', '?')} generic crops at {settings.get('image_size', '?')} px.\n\n")
    return head + diagnostics_markdown(stage1["diagnostics"])
