"""Analysis options: map kinds, metric columns, layer and kind specs, device, pointing tolerance."""
from __future__ import annotations

import math
from typing import Callable, Sequence

from ..device import resolve_device  # noqa: F401 (the one resolver, re-exported for the analysis API)
from ..errors import InputError


ANALYSIS_KINDS = ("cls", "rollout", "token_norm")
#: metric columns (floats; NaN where undefined) summarised with bootstrap CIs
METRICS = ("correct", "prob", "energy_target", "energy_distractors", "energy_background", "pointing_hit",
           "iou", "auc", "entropy", "prefix_share", "prompt_share", "part_hit", "deletion_auc",
           "insertion_auc", "gate_energy_target", "gate_energy_distractors", "td_ratio")
COLUMNS = ("image_id", "method", "layer", "kind", "pass", "label", "pred", "correct", "prob", "prob_label",
           "energy_target", "energy_distractors", "energy_background", "pointing_hit", "iou", "auc",
           "entropy", "prefix_share", "prompt_share", "part_hit", "deletion_auc", "insertion_auc",
           "gate_energy_target", "gate_energy_distractors", "td_ratio", "target_area", "distractor_area")
GROUP_KEYS = ("method", "pass", "kind", "layer")
Progress = Callable[[int, int], None]
NAN = math.nan


def parse_layers(spec: str | int | Sequence[int], num_layers: int) -> list[int]:
    """Layers to analyse as sorted 0-based indices.

    Args: spec: ``"all"``, ``"last"``, ``"0,5,11"`` (negative counts from the end), an int or a list.
        num_layers: blocks in the model.
    Returns: sorted unique indices in [0, num_layers).
    """
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "all":
            return list(range(num_layers))
        if s == "last":
            return [num_layers - 1]
        try:
            items = [int(p) for p in s.split(",") if p.strip()]
        except ValueError:
            raise InputError(f"layers must be 'all', 'last' or comma-separated integers, got {spec!r}") from None
    elif isinstance(spec, int):
        items = [spec]
    else:
        items = [int(p) for p in spec]
    if not items:
        raise InputError("no layer chosen")
    bad = [i for i in items if not -num_layers <= i < num_layers]
    if bad:
        raise InputError(f"layer(s) {bad} out of range for a model with {num_layers} blocks (0..{num_layers - 1})")
    return sorted({i % num_layers for i in items})


def parse_kinds(spec: str | Sequence[str]) -> list[str]:
    """Map kinds from ``"cls,rollout"`` or a list; each must be in :data:`ANALYSIS_KINDS`."""
    items = [k.strip() for k in (spec.split(",") if isinstance(spec, str) else spec) if k.strip()]
    bad = [k for k in items if k not in ANALYSIS_KINDS]
    if bad or not items:
        raise InputError(f"map kinds must be among {ANALYSIS_KINDS}, got {list(items)}")
    return list(dict.fromkeys(items))


def default_tolerance(image_size: tuple[int, int]) -> float:
    """Pointing-game tolerance: 15 px at 224 px (Zhang et al.), scaled with the image side."""
    return 15.0 * max(image_size) / 224.0
