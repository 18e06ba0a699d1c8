"""The compare grid: one :class:`Panel` per model, the shared layer range, difference maps, layer strips."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..errors import InputError
from ..maps import ATTENTION_KINDS, MAP_KINDS, PER_LAYER_KINDS, describe_map
from .entries import ModelEntry
from .images import image_id
from .recordings import (attribution, attribution_label, head_maps, map_of, needs_full, record, record_all,
                         resolve_pass, strip_of, top_predictions)

HeadChoice = Union[None, int, str]  # None = head mean, an int = one head, "all" = every head


@dataclass
class Panel:
    """One model's map on the compare grid.

    Attributes:
        name, method: the entry's display name and method.
        label: what the map is (kind, layer, head, pass), as printed on screen and in exports.
        map: (h, w) float64.
        heads: (H, h, w) per-head maps when every head was asked for, else None.
        predictions: top-k ``(label, probability)``.
        layer: the model's layer used (0-based; None for Integrated Gradients).
        pass_name: the pass the map comes from.
        trained: False for random models.
    """

    name: str
    method: str
    label: str
    map: np.ndarray
    predictions: list[tuple[str, float]]
    layer: Optional[int]
    pass_name: str
    trained: bool = True
    heads: Optional[np.ndarray] = None


def common_depth(entries: Sequence[ModelEntry]) -> int:
    """Layers shared by every model (the layer slider's range)."""
    if not entries:
        raise InputError("no models selected")
    return min(e.num_layers for e in entries)


def common_heads(entries: Sequence[ModelEntry]) -> int:
    return min(e.num_heads for e in entries)


def model_layer(layer: Optional[int], num_layers: int, depth: int) -> int:
    """A layer chosen on the shared slider (0..depth-1, None = last), aligned at the output end for a
    model with ``num_layers`` layers (models of equal depth get the same index)."""
    if layer is None:
        return num_layers - 1
    layer = int(layer)
    if not 0 <= layer < depth:
        raise InputError(f"layer {layer + 1} is outside 1..{depth}")
    return layer + (num_layers - depth)


def compare(entries: Sequence[ModelEntry], image: Image.Image, *, kind: str = "cls", layer: Optional[int] = None,
            head: HeadChoice = None, pass_name: Optional[str] = None, image_key: Optional[str] = None,
            top_k: int = 3, ig_steps: int = 16,
            progress: Optional[Callable[[int, int, str], None]] = None,
            target: Optional[str] = None, signed: bool = False) -> list[Panel]:
    """Every model's map of one kind on one image, with its top predictions.

    Args:
        entries: the models (display names should be unique, see :func:`unique_names`).
        image: RGB PIL image.
        kind: a key of :data:`toast_core.maps.MAP_KINDS`: attention kinds (``cls``, ``rollout``,
            ``token_norm``) or gradient-based ones (``integrated_gradients``, ``gae``, ``legrad``,
            ``gradcam``, ``attnlrp``; these explain the predicted class and ignore layer, head, pass).
        layer: 0-based layer on the shared range (``None`` = last); see :func:`model_layer`.
        head: ``None`` (mean), an int (one head) or ``"all"`` (``Panel.heads`` gets every head; ``map``
            is the mean). Only CLS attention has heads.
        pass_name: ``None``/``"final"`` (prediction pass) or ``"first"`` (TOAST's bottom-up pass).
        progress: called as ``progress(i, n, name)`` before model ``i`` of ``n`` is run (a page's
            progress bar; gradient-based kinds take several forward passes per model).
        target: the class name gradient-based kinds explain (None = each model's prediction); a model
            without that class raises InputError.
        signed: Integrated Gradients with its sign (diverging colours) instead of |attribution|.

    Returns:
        one :class:`Panel` per entry, in order.
    """
    if kind not in MAP_KINDS:
        raise InputError(f"unknown map kind {kind!r}; choose from {list(MAP_KINDS)}")
    ik = image_key or image_id(image)
    depth = common_depth(entries)
    panels = []
    # attention kinds need one forward per model: run them side by side (gradient kinds report progress
    # per model, and their recordings are a small share of their time)
    recs = record_all(entries, image, image_key=ik, full=needs_full(kind)) if kind in ATTENTION_KINDS else None
    for i, e in enumerate(entries):
        if progress is not None:
            progress(i, len(entries), e.name)
        rec = recs[i] if recs is not None else record(e, image, image_key=ik, full=needs_full(kind))
        preds = top_predictions(rec.probs, e.class_names, top_k)
        if kind not in ATTENTION_KINDS:  # gradient-based: IG or an attribution kind
            if target is not None and target not in e.class_names:
                raise InputError(f"{e.name} has no class {target!r}")
            tgt = None if target is None else list(e.class_names).index(target)
            m = attribution(e, image, kind=kind, image_key=ik, steps=ig_steps, target=tgt, signed=signed)
            label = attribution_label(kind, rec.passes, ig_steps, target, signed and kind == "integrated_gradients")
            panels.append(Panel(e.name, e.method, label, m, preds, None, rec.result.final_pass, e.trained))
            continue
        lyr = model_layer(layer, e.num_layers, depth)
        p = resolve_pass(rec, pass_name)
        one_head = head if isinstance(head, int) and not isinstance(head, bool) else None
        if one_head is not None and not 0 <= one_head < e.num_heads:
            raise InputError(f"head {one_head} is outside 0..{e.num_heads - 1} for {e.name}")
        m = map_of(rec, kind, lyr, one_head, p)
        heads = head_maps(rec, lyr, p) if (head == "all" and kind == "cls") else None
        label = describe_map(kind, lyr, one_head, p if len(rec.passes) > 1 else None, e.num_layers)
        if heads is not None:
            label = label.replace("head mean", "all heads")
        panels.append(Panel(e.name, e.method, label, m, preds, lyr, p, e.trained, heads))
    return panels


def differences(panels: Sequence[Panel], reference: str) -> dict[str, np.ndarray]:
    """Each panel's map minus the reference panel's (signed, on the reference's patch grid).

    Maps on another grid (another backbone) are resampled bilinearly to the reference grid first.
    """
    from ..viz.render import difference_maps, upsample_map

    by_name = {p.name: p.map for p in panels}
    if reference not in by_name:
        raise InputError(f"reference {reference!r} is not one of {list(by_name)}")
    shape = by_name[reference].shape
    same = {n: (m if m.shape == shape else upsample_map(m, shape)) for n, m in by_name.items()}
    return difference_maps(same, reference, include_reference=True)


def layer_strip(entry: ModelEntry, image: Image.Image, *, kind: str = "cls", head: Optional[int] = None,
                pass_name: Optional[str] = None, image_key: Optional[str] = None, td_scale: float = 1.0,
                xi_patch: Optional[tuple[int, int]] = None) -> np.ndarray:
    """One model's maps at every layer, (L, h, w), from a single recording (LeGrad: each layer's own term,
    for the predicted class, of the pass the prediction comes from; ``head`` and ``pass_name`` unused)."""
    if kind not in PER_LAYER_KINDS:
        raise InputError(f"a layer strip needs a per-layer map kind ({', '.join(PER_LAYER_KINDS)}), not {kind!r}")
    if kind not in ATTENTION_KINDS:
        return attribution(entry, image, kind=kind, image_key=image_key, td_scale=td_scale, xi_patch=xi_patch,
                           per_layer=True)
    rec = record(entry, image, image_key=image_key, td_scale=td_scale, xi_patch=xi_patch, full=needs_full(kind))
    return strip_of(rec, kind, head, pass_name)
