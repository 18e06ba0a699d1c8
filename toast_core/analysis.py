"""Batch analysis: does each method's attention land on the task object? Tidy rows, summaries, plots.

One recorded forward pass per batch and model gives every layer (and both TOAST passes); the
localisation metrics of :mod:`toast_core.metrics` are then evaluated for all layers × map kinds of the
batch at once, on the patch grid, from per-image geometry computed once (mask coverage per patch,
pixel counts per patch, where a peak would count as a pointing-game hit). The vectorised values equal
the per-map functions of :mod:`toast_core.metrics` (``tests/test_analysis.py`` checks this).

Example::

    from toast_core.analysis import run_analysis, summarise, plot_metric_vs_layer
    rows = run_analysis({"linear": m1, "toast": m2}, dataset, layers="all", kinds=("cls", "rollout"))
    table = summarise(rows)                      # means with 95% bootstrap CIs per group
    fig = plot_metric_vs_layer(rows, "energy_target", kind="cls")

A *dataset* is any sequence whose items are dicts with ``image`` (3, H, W) normalised float tensor,
``label`` int, ``target_mask`` (H, W) bool, and optionally ``distractor_mask`` (H, W) bool,
``parts`` (K, 3) float (x, y, visible) in pixels of the (resized) image, and ``image_id`` (str or int;
default ``index``, else the position). :class:`~toast_core.data.MaskedImageDataset` (the default task),
:class:`~toast_core.data.cub.CUBDataset` and the folder reader fit; :func:`load_dataset` picks one.

Row columns (one row per image × method × pass × layer × map kind) are listed in :data:`COLUMNS`;
layers are 0-based block indices; ``pass`` is ``main`` or TOAST's ``bottom-up`` / ``top-down``.
``prob`` is the probability of the predicted class, ``prob_label`` that of the true label;
``target_area`` / ``distractor_area`` are the shares of the image the objects cover (what a uniform map's
energies would be: the chance level).
TOAST models add ``gate_energy_target`` / ``gate_energy_distractors`` (the share of the token-selection
map s = clamp(cos(x_i, ξ), 0, 1) on the target / distractors; per image) and ``td_ratio`` (the mean
norm of the top-down signal fed to block l, times ``td_scale``, over the mean norm of the bottom-up
patch tokens leaving block l); NaN for other methods.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from .cache import atomic_write_bytes
from .errors import InputError
from .metrics import _edges, bootstrap_ci, deletion_insertion_curves, mask_coverage
from .recording import AttentionResult, extract_attention

__all__ = ["COLUMNS", "METRICS", "ANALYSIS_KINDS", "parse_layers", "parse_kinds", "resolve_device",
           "image_geometry", "batch_map_metrics", "rollout_all_layers", "model_input_size", "load_dataset", "run_analysis",
           "write_rows_csv", "write_table_csv", "read_rows_csv", "summarise", "layer_average", "headline_table",
           "summary_markdown", "plot_metric_vs_layer", "plot_accuracy_vs_energy", "save_figure",
           "write_report"]

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


# ------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------

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


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` → CUDA when present, else CPU; otherwise ``torch.device(device)``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' asked for, but no CUDA GPU is available")
    return dev


def default_tolerance(image_size: tuple[int, int]) -> float:
    """Pointing-game tolerance: 15 px at 224 px (Zhang et al.), scaled with the image side."""
    return 15.0 * max(image_size) / 224.0


# ------------------------------------------------------------------------------------------------
# Per-image geometry and vectorised metrics
# ------------------------------------------------------------------------------------------------

def _boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (or on the image edge)."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def _pointing_ok(mask: np.ndarray, grid: tuple[int, int], tol: float) -> np.ndarray:
    """(h, w) bool: would a peak at this patch hit the mask within ``tol`` px (as ``pointing_game``)?"""
    H, W = mask.shape
    h, w = grid
    py = (np.arange(h) + 0.5) * H / h
    px = (np.arange(w) + 0.5) * W / w
    # A centre inside the mask has distance 0; from outside, the nearest point of the region lies on a
    # boundary pixel (a mask pixel with a 4-neighbour outside), so only those need measuring.
    inside = mask[np.minimum(np.floor(py).astype(int), H - 1)][:, np.minimum(np.floor(px).astype(int), W - 1)]
    ys, xs = np.nonzero(_boundary(mask))
    best = np.where(inside, 0.0, np.inf)
    for s in range(0, len(ys), 4096):
        y, x = ys[s:s + 4096], xs[s:s + 4096]
        dy = np.maximum(np.maximum(y[None] - py[:, None], py[:, None] - (y[None] + 1)), 0)  # (h, k)
        dx = np.maximum(np.maximum(x[None] - px[:, None], px[:, None] - (x[None] + 1)), 0)  # (w, k)
        d2 = (dy[:, None, :] ** 2 + dx[None, :, :] ** 2).min(axis=-1)
        best = np.minimum(best, d2)
    return best <= float(tol) ** 2


def _parts_fraction(parts: Any, grid: tuple[int, int], image_size: tuple[int, int], tol: float) -> np.ndarray:
    """(h, w): share of visible parts within ``tol`` of each patch centre (NaN if none visible)."""
    h, w = grid
    H, W = image_size
    p = np.asarray(parts.cpu() if hasattr(parts, "cpu") else parts, dtype=np.float64)
    p = p[None] if p.ndim == 1 else p
    if p.ndim != 2 or p.shape[1] not in (2, 3):
        raise InputError(f"parts must have shape (K, 2) or (K, 3), got {p.shape}")
    keep = np.all(np.isfinite(p[:, :2]), axis=1)
    if p.shape[1] >= 3:
        keep &= p[:, 2] > 0
    p = p[keep]
    if not len(p):
        return np.full((h, w), NAN)
    py = (np.arange(h) + 0.5) * H / h
    px = (np.arange(w) + 0.5) * W / w
    d2 = (p[None, None, :, 0] - px[None, :, None]) ** 2 + (p[None, None, :, 1] - py[:, None, None]) ** 2
    return (d2 <= float(tol) ** 2).mean(axis=-1)


def image_geometry(target_mask: Any, grid: tuple[int, int], distractor_mask: Any = None,
                   parts: Any = None, tolerance_px: Optional[float] = None) -> dict[str, np.ndarray]:
    """Everything the map metrics need from one image's ground truth, on the patch grid.

    Args: target_mask (H, W) bool; grid (h, w); distractor_mask (H, W) bool or None (no distractor
        annotation → distractor energy NaN); parts (K, 2|3) keypoints (x, y[, visible]) or None;
        tolerance_px: pointing-game tolerance (default :func:`default_tolerance`).
    Returns: dict of float64 (h, w) arrays ``cov_t``, ``cov_d`` (area fraction of each patch on the
        target / on distractors not under the target), ``pos``, ``size`` (target pixels / all pixels
        per patch, nearest-upsampling boundaries), ``point_ok`` (1 where a peak would hit), ``parts``,
        and scalars (0-d) ``n_pos``, ``n_pix``, ``has_d``, ``has_t``.
    """
    tm = np.asarray(target_mask.cpu() if hasattr(target_mask, "cpu") else target_mask).astype(bool)
    if tm.ndim != 2:
        raise InputError(f"target mask must be 2-D (H, W), got shape {tm.shape}")
    H, W = tm.shape
    h, w = int(grid[0]), int(grid[1])
    if H < h or W < w:
        raise InputError(f"mask {tm.shape} is smaller than the patch grid {grid}")
    tol = default_tolerance((H, W)) if tolerance_px is None else float(tolerance_px)
    zeros = np.zeros((h, w))
    has_t = bool(tm.any())
    g = dict(cov_t=mask_coverage(tm, (h, w)) if has_t else zeros, cov_d=zeros, has_d=np.float64(0.0),
             has_t=np.float64(has_t))
    if distractor_mask is not None:
        dm = np.asarray(distractor_mask.cpu() if hasattr(distractor_mask, "cpu") else distractor_mask).astype(bool)
        if dm.shape != tm.shape:
            raise InputError(f"distractor mask {dm.shape} differs from target mask {tm.shape}")
        dm = dm & ~tm
        g["has_d"] = np.float64(1.0)
        if dm.any():
            g["cov_d"] = mask_coverage(dm, (h, w))
    ey, ex = _edges(H, h), _edges(W, w)
    pos = np.add.reduceat(np.add.reduceat(tm.astype(np.int64), ey[:-1], 0), ex[:-1], 1).astype(np.float64)
    g["pos"] = pos
    g["size"] = (np.diff(ey)[:, None] * np.diff(ex)[None, :]).astype(np.float64)
    g["n_pos"], g["n_pix"] = np.float64(tm.sum()), np.float64(H * W)
    g["point_ok"] = _pointing_ok(tm, (h, w), tol).astype(np.float64) if has_t else zeros
    g["parts"] = (_parts_fraction(parts, (h, w), (H, W), tol) if parts is not None
                  else np.full((h, w), NAN))
    return g


def _stack_geometry(geos: Sequence[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([g[k] for g in geos])) for k in geos[0]}


def batch_map_metrics(maps: torch.Tensor, geo: Mapping[str, torch.Tensor], threshold: float = 0.5
                      ) -> dict[str, np.ndarray]:
    """Localisation metrics of many maps at once.

    Args:
        maps: (n, h, w) non-negative maps.
        geo: stacked :func:`image_geometry` of the image each map belongs to: (n, h, w) / (n,) tensors.
        threshold: IoU threshold on the min-max normalised map (as ``iou_at_threshold``).
    Returns:
        dict of (n,) float arrays: ``energy_target``, ``energy_distractors``, ``energy_background``,
        ``pointing_hit``, ``iou``, ``auc``, ``entropy``, ``part_hit`` (NaN where undefined).
    """
    m = maps.detach().to("cpu", torch.float64)
    n = m.shape[0]
    flat = m.reshape(n, -1)
    if not torch.isfinite(flat).all():
        raise InputError("maps contain NaN or infinite values")
    flat = flat.clamp_min(0)
    G = {k: v.to(torch.float64).reshape(n, -1) if v.ndim > 1 else v.to(torch.float64) for k, v in geo.items()}
    total = flat.sum(1)
    ok = total > 0
    safe = torch.where(ok, total, torch.ones_like(total))
    et = (flat * G["cov_t"]).sum(1) / safe
    ed = (flat * G["cov_d"]).sum(1) / safe
    nan = torch.full_like(et, NAN)
    has_t = G["has_t"] > 0
    et = torch.where(ok & has_t, et, nan)
    eb = torch.where(torch.isfinite(et), (1 - et - ed).clamp_min(0), nan)
    ed = torch.where(ok & has_t & (G["has_d"] > 0), ed, nan)
    peak = torch.from_numpy(np.argmax(flat.numpy(), axis=1))  # first maximum in raster order
    point = torch.where(has_t, G["point_ok"].gather(1, peak[:, None])[:, 0], nan)
    part = G["parts"].gather(1, peak[:, None])[:, 0]
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    u = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.ones_like(flat))
    sel = (u >= threshold).to(torch.float64)
    inter = (sel * G["pos"]).sum(1)
    union = (sel * G["size"]).sum(1) + G["n_pos"] - inter
    iou = torch.where(has_t, inter / union.clamp_min(1), nan)
    neg = G["size"] - G["pos"]
    n_neg = G["n_pix"] - G["n_pos"]
    # Mann-Whitney over patches weighted by pixel counts, ties count one half: for each patch, the
    # background pixels scoring below it plus half of those scoring the same (sorted cumulative sums).
    order = flat.argsort(dim=1)
    srt = flat.gather(1, order)
    cum = torch.cat([torch.zeros(n, 1, dtype=torch.float64), neg.gather(1, order).cumsum(1)], dim=1)
    left = torch.searchsorted(srt, flat, right=False)
    right = torch.searchsorted(srt, flat, right=True)
    below, tied = cum.gather(1, left), cum.gather(1, right) - cum.gather(1, left)
    auc = (G["pos"] * (below + 0.5 * tied)).sum(1)
    valid = (G["n_pos"] > 0) & (n_neg > 0)
    auc = torch.where(valid, auc / (G["n_pos"] * n_neg).clamp_min(1), nan)
    p = flat / safe[:, None]
    ent = -(torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))).sum(1)
    size = flat.shape[1]
    ent = ent / math.log(size) if size > 1 else torch.zeros_like(ent)
    ent = torch.where(ok, ent, nan)
    out = dict(energy_target=et, energy_distractors=ed, energy_background=eb, pointing_hit=point, iou=iou,
               auc=auc, entropy=ent, part_hit=part)
    return {k: v.numpy() for k, v in out.items()}


def rollout_all_layers(result: AttentionResult, pass_name: str, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout ending at every layer in turn (as :func:`toast_core.maps.rollout` from layer 0).

    Returns: (L, B, h, w). Needs ``extract_attention(..., full=True)``.
    """
    if result.full is None:
        raise ValueError("rollout needs full attention matrices: extract_attention(..., full=True)")
    mats = result.full[pass_name].mean(dim=2)  # (L, B, N, N)
    L, B, N, _ = mats.shape
    eye = torch.eye(N, dtype=mats.dtype, device=mats.device)
    joint = eye.expand(B, N, N).clone()
    lead = result.num_prefix_tokens + result.num_prompt_tokens
    h, w = result.grid
    out = []
    for layer in range(L):
        a = residual * eye + (1.0 - residual) * mats[layer]
        joint = (a / a.sum(dim=-1, keepdim=True)) @ joint
        row = joint[:, 0, lead:] if result.num_prefix_tokens > 0 else joint[:, lead:, lead:].mean(dim=1)
        out.append(row.reshape(B, h, w))
    return torch.stack(out)


# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------

class _Limited:
    """The first ``n`` items of a dataset (keeps attributes such as ``class_names`` reachable)."""

    def __init__(self, base, n: int):
        self.base, self.n = base, min(int(n), len(base))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.base[i]

    def __getattr__(self, name):
        return getattr(self.base, name)


class _ResizePair:
    """Whole-image resize: bicubic for the image (as training and the app do), nearest for the mask."""

    def __init__(self, size: int):
        self.size = (int(size), int(size))

    def __call__(self, image, mask):
        from PIL import Image

        if image.size != self.size:
            image = image.resize(self.size, Image.BICUBIC)
        if mask.size != self.size:
            mask = mask.resize(self.size, Image.NEAREST)
        return image, mask


def model_input_size(model: torch.nn.Module) -> int:
    """The square input side a model was built for (``build_info['img_size']``, else its patch embedding)."""
    size = (getattr(model, "build_info", None) or {}).get("img_size")
    if size is None:
        pe = getattr(getattr(model, "vit", model), "patch_embed", None)
        size = getattr(pe, "img_size", None)
    if size is None:
        from .models import data_config

        size = data_config(model)["input_size"][-1]
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise InputError(f"the analysis resizes to square images; the model expects {tuple(size)}")
        size = size[0]
    return int(size)


def load_dataset(data_dir: str | os.PathLike, split: str = "test", *, model: Optional[torch.nn.Module] = None,
                 image_size: Optional[int] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, max_images: Optional[int] = None):
    """Open an annotated dataset, detecting its layout.

    Layouts: the default task (``manifest.json``), CUB-200-2011 (``images.txt`` +
    ``bounding_boxes.txt``; the box is the target mask, ``parts/part_locs.txt`` the parts) or an image
    folder with ``masks/`` or ``boxes.json`` (:mod:`toast_core.data.folder`; images without either
    get NaN localisation metrics).

    Args: data_dir: the dataset root. split: ``train``/``val``/``test`` (CUB has train/test).
        model: take image size, mean and std from its data config (explicit arguments win).
        max_images: keep only the first N items.
    Returns: a dataset whose items fit :func:`run_analysis`.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"dataset directory {root} does not exist")
    if model is not None:
        from .models import data_config

        cfg = data_config(model)
        image_size = image_size or model_input_size(model)
        mean = mean or tuple(cfg["mean"])
        std = std or tuple(cfg["std"])
    kw = {k: v for k, v in dict(mean=mean, std=std).items() if v is not None}
    if (root / "manifest.json").is_file():
        from .data.masked_dataset import MaskedImageDataset

        ds = MaskedImageDataset(root, split=split, image_size=image_size, **kw,
                                transform=_ResizePair(image_size) if image_size else None)
    else:
        from .data.cub import find_cub_root

        cub = find_cub_root(root)
        if cub is not None:
            from .data.cub import CUBDataset

            ds = CUBDataset(cub, split=split, image_size=image_size or 224, **kw)
        elif (root / "train").is_dir():
            from .data.folder import ImageFolderDataset

            if not ((root / "masks").is_dir() or (root / "boxes.json").is_file()):
                raise InputError(f"{root} has no masks/ folder and no boxes.json: the analysis needs an object "
                                 "mask or box per image (see toast_core.data.folder)")
            ds = ImageFolderDataset(root, split=split, image_size=image_size or 224, **kw)
        else:
            raise InputError(f"{root} is not a dataset this analysis reads: expected a default-task folder "
                             "(manifest.json), CUB-200-2011 (images.txt, bounding_boxes.txt) or an image folder "
                             "(train/<class>/..., with masks/ or boxes.json)")
    if max_images is not None:
        if int(max_images) < 1:
            raise InputError(f"max_images must be >= 1, got {max_images}")
        ds = _Limited(ds, int(max_images))
    if len(ds) == 0:
        raise InputError(f"split '{split}' of {root} holds no image")
    return ds


def _item(ds, i: int) -> dict:
    it = ds[i]
    if not isinstance(it, Mapping) or "image" not in it or "label" not in it:
        raise InputError("dataset items must be dicts with at least 'image' and 'label' (and 'target_mask')")
    if it.get("target_mask") is None:
        raise InputError(f"item {i} has no 'target_mask': the analysis needs a mask or box per image")
    return it


def _image_id(it: Mapping, i: int):
    for key in ("image_id", "index"):
        if it.get(key) is not None:
            v = it[key]
            return v.item() if hasattr(v, "item") else v
    return i


# ------------------------------------------------------------------------------------------------
# The engine
# ------------------------------------------------------------------------------------------------

def _model_layers(model: torch.nn.Module) -> int:
    return len(getattr(model, "vit", model).blocks)


def _kind_maps(result: AttentionResult, pass_name: str, kind: str, layers: list[int]) -> torch.Tensor:
    """(len(layers), B, h, w) maps of one kind and pass."""
    if kind == "cls":
        return result.cls[pass_name][layers]
    if kind == "token_norm":
        return result.token_norm[pass_name][layers]
    return rollout_all_layers(result, pass_name)[layers]


def _faithfulness(model, images, maps, preds, steps, baseline, batch_size, fkw) -> list[tuple[float, float]]:
    def predict(x):
        return torch.softmax(model(x, **fkw), dim=-1)

    out = []
    for b in range(images.shape[0]):
        c = deletion_insertion_curves(predict, images[b], maps[b].detach().cpu().clamp_min(0), int(preds[b]),
                                      steps=steps, baseline=baseline, batch_size=batch_size)
        out.append((c["deletion_auc"], c["insertion_auc"]))
    return out


def run_analysis(models: Mapping[str, torch.nn.Module], dataset, layers: str | Sequence[int] = "all",
                 kinds: str | Sequence[str] = ("cls", "rollout", "token_norm"), batch_size: int = 32,
                 device: str | torch.device | None = "auto", progress: Optional[Progress] = None, *,
                 faithfulness: bool = False, faithfulness_steps: int = 16, faithfulness_baseline: str = "blur",
                 faithfulness_max_images: Optional[int] = None,
                 forward_kwargs: Optional[Mapping[str, dict]] = None, tolerance_px: Optional[float] = None,
                 iou_threshold: float = 0.5, as_frame: Optional[bool] = None):
    """Run every model over the dataset and measure where its attention lands.

    Args:
        models: name → model built by :func:`toast_core.build_model` (the name fills ``method``).
        dataset: items as described in the module doc (e.g. from :func:`load_dataset`).
        layers: ``"all"``, ``"last"``, ``"0,5,11"`` or a list (0-based, per model's depth).
        kinds: map kinds among :data:`ANALYSIS_KINDS`.
        batch_size: images per recorded forward pass.
        device: ``"auto"`` (GPU when present), ``"cpu"``, ``"cuda"``...; models are moved there for
            the run and moved back (and their train/eval mode restored) afterwards.
        progress: called as ``progress(done, total)`` in images × models after each batch.
        faithfulness: also compute deletion / insertion AUC (Petsiuk et al.) of the last layer's ``cls``
            map of the final pass, reported on those rows only (computed only when that layer and kind
            are analysed); costs ``2·(steps+1)`` forwards per image.
        faithfulness_steps, faithfulness_baseline: see :func:`~toast_core.metrics.deletion_insertion_curves`.
        faithfulness_max_images: compute the curves for the first N images only (NaN for the rest).
        forward_kwargs: name → extra forward arguments (e.g. ``{"toast@0.5": {"td_scale": 0.5}}``).
        tolerance_px: pointing-game tolerance in pixels of the dataset's images (default 15 px at 224).
        iou_threshold: threshold of the min-max normalised map for ``iou``.
        as_frame: return a pandas DataFrame (default: when pandas is installed) or a list of dicts.
    Returns:
        tidy rows, one per image × method × pass × layer × kind, with the columns :data:`COLUMNS`.
    """
    if not models:
        raise InputError("no model to analyse")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    kinds = parse_kinds(kinds)
    dev = resolve_device(device)
    n_img = len(dataset)
    if n_img == 0:
        raise InputError("the dataset is empty")
    fkw_all = dict(forward_kwargs or {})
    unknown = sorted(set(fkw_all) - set(models))
    if unknown:
        raise InputError(f"forward_kwargs for unknown model name(s) {unknown}")
    chosen = {name: parse_layers(layers, _model_layers(m)) for name, m in models.items()}
    state = {}  # name -> (device, training) to restore
    rows: list[dict] = []
    total = n_img * len(models)
    try:
        for name, model in models.items():
            params = list(model.parameters())
            state[name] = (params[0].device if params else torch.device("cpu"), model.training)
            model.eval().to(dev)
        for start in range(0, n_img, batch_size):  # each batch is read once and shown to every model
            items = [_item(dataset, i) for i in range(start, min(n_img, start + batch_size))]
            images = torch.stack([torch.as_tensor(it["image"], dtype=torch.float32) for it in items]).to(dev)
            labels = [int(it["label"]) for it in items]
            ids = [_image_id(it, start + j) for j, it in enumerate(items)]
            geos: dict[tuple, dict[str, torch.Tensor]] = {}  # grid -> stacked geometry
            for mi, (name, model) in enumerate(models.items()):
                fkw = dict(fkw_all.get(name, {}))
                res = extract_attention(model, images, full="rollout" in kinds, forward_kwargs=fkw)
                probs = torch.softmax(res.logits.float(), dim=-1).cpu()
                if max(labels) >= probs.shape[1]:
                    raise InputError(f"model '{name}' has {probs.shape[1]} classes but the dataset has label {max(labels)}")
                preds = probs.argmax(dim=-1)
                if res.grid not in geos:
                    geos[res.grid] = _stack_geometry([
                        image_geometry(it["target_mask"], res.grid, it.get("distractor_mask"), it.get("parts"),
                                       tolerance_px) for it in items])
                n_faith = 0
                if faithfulness:
                    limit = n_img if faithfulness_max_images is None else int(faithfulness_max_images)
                    n_faith = max(0, min(len(items), limit - start))
                rows += _batch_rows(name, model, res, images, geos[res.grid], chosen[name], kinds, ids, labels,
                                    probs, preds, fkw, iou_threshold, batch_size,
                                    (faithfulness_steps, faithfulness_baseline, n_faith) if n_faith else None)
                if progress is not None:
                    progress(start * len(models) + (mi + 1) * len(items), total)
    finally:
        for name, (home, training) in state.items():
            models[name].to(home).train(training)
    return _as_output(rows, as_frame)


def _batch_rows(name, model, res, images, G, chosen, kinds, ids, labels, probs, preds, fkw, iou_threshold,
                batch_size, faith_opts) -> list[dict]:
    """Rows of one batch and one model (every pass, chosen layer and kind)."""
    B, nl = len(ids), len(chosen)
    n_layers = res.cls[res.final_pass].shape[0]
    faith = None
    if faith_opts is not None and "cls" in kinds and n_layers - 1 in chosen:  # where the values are reported
        steps, baseline, n_faith = faith_opts
        faith = _faithfulness(model, images[:n_faith], res.cls[res.final_pass][-1], preds, steps, baseline,
                              batch_size, fkw)
        faith += [(NAN, NAN)] * (B - n_faith)
    geo = {k: v.unsqueeze(0).expand(nl, *v.shape).reshape(nl * B, *v.shape[1:]) for k, v in G.items()}
    area_t = G["cov_t"].flatten(1).mean(1).tolist()
    area_d = torch.where(G["has_d"] > 0, G["cov_d"].flatten(1).mean(1), torch.full((B,), NAN, dtype=torch.float64)).tolist()
    gate_t = gate_d = np.full(B, NAN)
    td_ratio = np.full((nl, B), NAN)
    if res.gate is not None:  # TOAST: where the token selection looks, and how large the steering is
        gm = batch_map_metrics(res.gate.float().cpu(), G)
        gate_t, gate_d = gm["energy_target"], gm["energy_distractors"]
    if res.td_norm is not None:
        tok = res.token_norm[res.passes[0]][chosen].float().mean(dim=(-1, -2))  # (nl, B) bottom-up tokens
        scale = float(fkw.get("td_scale", 1.0))
        td_ratio = (abs(scale) * res.td_norm[chosen].float() / tok.clamp_min(1e-12)).cpu().numpy()
    rows = []
    for pass_name in res.passes:
        pm = res.prefix_mass[pass_name][chosen].cpu().numpy()  # (nl, B)
        qm = res.prompt_mass[pass_name][chosen].cpu().numpy()
        for kind in kinds:
            maps = _kind_maps(res, pass_name, kind, chosen)  # (nl, B, h, w)
            met = batch_map_metrics(maps.reshape(nl * B, *maps.shape[2:]), geo, iou_threshold)
            with_faith = faith is not None and kind == "cls" and pass_name == res.final_pass
            for li, layer in enumerate(chosen):
                for b in range(B):
                    k = li * B + b
                    f = faith[b] if with_faith and layer == n_layers - 1 else (NAN, NAN)
                    row = {
                        "image_id": ids[b], "method": name, "layer": int(layer), "kind": kind, "pass": pass_name,
                        "label": labels[b], "pred": int(preds[b]), "correct": float(preds[b] == labels[b]),
                        "prob": float(probs[b, preds[b]]), "prob_label": float(probs[b, labels[b]]),
                        **{m: float(v[k]) for m, v in met.items()},
                        "prefix_share": float(pm[li, b]) if kind == "cls" else NAN,
                        "prompt_share": float(qm[li, b]) if kind == "cls" else NAN,
                        "deletion_auc": float(f[0]), "insertion_auc": float(f[1]),
                        "gate_energy_target": float(gate_t[b]), "gate_energy_distractors": float(gate_d[b]),
                        "td_ratio": float(td_ratio[li, b]), "target_area": area_t[b], "distractor_area": area_d[b],
                    }
                    rows.append({c: row[c] for c in COLUMNS})
    return rows


def _as_output(rows: list[dict], as_frame: Optional[bool]):
    if as_frame is False:
        return rows
    try:
        import pandas as pd
    except ImportError:
        if as_frame:
            raise InputError("as_frame=True needs pandas (pip install pandas)") from None
        return rows
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _records(rows) -> list[dict]:
    if hasattr(rows, "to_dict"):
        return rows.to_dict("records")
    return list(rows)


# ------------------------------------------------------------------------------------------------
# CSV
# ------------------------------------------------------------------------------------------------

def write_rows_csv(rows, path: str | os.PathLike) -> Path:
    """Write tidy rows to CSV with the columns of :data:`COLUMNS` (NaN written as empty)."""
    return write_table_csv(_records(rows), path, list(COLUMNS))


def write_table_csv(table: Sequence[Mapping], path: str | os.PathLike, columns: Sequence[str]) -> Path:
    """Write dicts as CSV with the given columns (floats with 6 significant digits, NaN empty)."""
    import io

    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    wr.writeheader()
    for r in table:
        wr.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else (f"{v:.6g}" if isinstance(v, float) else v))
                     for k, v in r.items()})
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def read_rows_csv(path: str | os.PathLike) -> list[dict]:
    """Read a CSV written by :func:`write_rows_csv` back as dicts (numbers parsed, empty → NaN)."""
    ints = {"layer", "label", "pred"}
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                if k in ("image_id", "method", "kind", "pass"):
                    row[k] = v
                elif k in ints:
                    row[k] = int(v)
                else:
                    row[k] = float(v) if v != "" else NAN
            out.append(row)
    return out


# ------------------------------------------------------------------------------------------------
# Summaries
# ------------------------------------------------------------------------------------------------

def _frame(records: list[dict], columns: list[str]):
    try:
        import pandas as pd
    except ImportError:
        return records
    return pd.DataFrame(records, columns=columns)


def _ci_fields(prefix: str, values, n_boot: int, ci: float, seed: int) -> dict:
    mean, lo, hi = bootstrap_ci(np.asarray(values, dtype=np.float64), n_boot=n_boot, ci=ci, seed=seed)
    return {f"{prefix}_mean": mean, f"{prefix}_lo": lo, f"{prefix}_hi": hi}


def summarise(rows, metrics: Sequence[str] = METRICS, n_boot: int = 1000, ci: float = 0.95, seed: int = 0):
    """Mean and percentile-bootstrap CI of every metric per (method, pass, kind, layer).

    Args: rows: tidy rows (DataFrame or list of dicts) from :func:`run_analysis`.
    Returns: a DataFrame (list of dicts without pandas) with ``method, pass, kind, layer, n`` and, per
        metric, ``{metric}_mean``, ``{metric}_lo``, ``{metric}_hi`` (NaN where the metric is undefined).
    """
    groups: dict[tuple, list[dict]] = {}
    for r in _records(rows):
        groups.setdefault(tuple(r[k] for k in GROUP_KEYS), []).append(r)
    out = []
    for key, rs in groups.items():
        rec = dict(zip(GROUP_KEYS, key), n=len(rs))
        for m in metrics:
            rec.update(_ci_fields(m, [r.get(m, NAN) for r in rs], n_boot, ci, seed))
        out.append(rec)
    cols = list(GROUP_KEYS) + ["n"] + [f"{m}_{s}" for m in metrics for s in ("mean", "lo", "hi")]
    return _frame(out, cols)


def layer_average(rows, metrics: Sequence[str] = ("energy_target", "energy_distractors", "energy_background",
                                                     "pointing_hit", "iou", "auc", "entropy"),
                  n_boot: int = 1000, ci: float = 0.95, seed: int = 0):
    """Per image, average each metric over the analysed layers; then mean and CI per (method, pass, kind)."""
    per: dict[tuple, dict[Any, list[dict]]] = {}
    for r in _records(rows):
        per.setdefault((r["method"], r["pass"], r["kind"]), {}).setdefault(r["image_id"], []).append(r)
    out = []
    for (method, pass_name, kind), images in per.items():
        rec = {"method": method, "pass": pass_name, "kind": kind, "n": len(images)}
        for m in metrics:
            vals = [np.nanmean([r[m] for r in rs]) if any(np.isfinite(r[m]) for r in rs) else NAN
                    for rs in images.values()]
            rec.update(_ci_fields(m, vals, n_boot, ci, seed))
        out.append(rec)
    return _frame(out, ["method", "pass", "kind", "n"] + [f"{m}_{s}" for m in metrics for s in ("mean", "lo", "hi")])


def _final_pass(passes: Iterable[str]) -> str:
    passes = set(passes)
    return "top-down" if "top-down" in passes else ("main" if "main" in passes else sorted(passes)[-1])


def headline_table(rows, kind: str = "cls", n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> list[dict]:
    """The results table: one row per method (TOAST's bottom-up pass as an extra row).

    Columns (each a (mean, lo, hi) triple): ``accuracy``; ``energy_target`` and
    ``energy_distractors`` at the last analysed layer and averaged over the analysed layers;
    ``pointing_hit``, ``iou``, ``auc``, ``part_hit`` at the last layer; ``deletion_auc``,
    ``insertion_auc``; for TOAST ``gate_energy_target`` and ``td_ratio_layers`` (layer mean).
    Returns: list of dicts with ``method``, ``pass``, ``n`` and those triples.
    """
    recs = [r for r in _records(rows) if r["kind"] == kind]
    if not recs:
        raise InputError(f"no rows of map kind '{kind}'")
    by_method: dict[str, list[dict]] = {}
    for r in recs:
        by_method.setdefault(r["method"], []).append(r)
    out = []
    for method, rs in by_method.items():
        final = _final_pass(r["pass"] for r in rs)
        passes = [final] + sorted({r["pass"] for r in rs} - {final})
        for pass_name in passes:
            prs = [r for r in rs if r["pass"] == pass_name]
            last = max(r["layer"] for r in prs)
            at_last = [r for r in prs if r["layer"] == last]
            per_img: dict[Any, list[dict]] = {}
            for r in prs:
                per_img.setdefault(r["image_id"], []).append(r)
            rec: dict[str, Any] = {"method": method if pass_name == final else f"{method} ({pass_name})",
                                   "pass": pass_name, "n": len(at_last), "last_layer": last}
            fin = [r for r in rs if r["pass"] == final and r["layer"] == last]
            rec["accuracy"] = bootstrap_ci([r["correct"] for r in fin], n_boot, ci, seed)
            for m in ("energy_target", "energy_distractors"):
                rec[f"{m}_last"] = bootstrap_ci([r[m] for r in at_last], n_boot, ci, seed)
                rec[f"{m}_layers"] = bootstrap_ci([np.nanmean([r[m] for r in v]) if any(np.isfinite(r[m]) for r in v) else NAN
                                                   for v in per_img.values()], n_boot, ci, seed)
            for m in ("pointing_hit", "iou", "auc", "part_hit", "deletion_auc", "insertion_auc", "gate_energy_target"):
                rec[m] = bootstrap_ci([r[m] for r in at_last], n_boot, ci, seed)
            rec["td_ratio_layers"] = bootstrap_ci([np.nanmean([r["td_ratio"] for r in v]) if any(np.isfinite(r["td_ratio"]) for r in v)
                                                   else NAN for v in per_img.values()], n_boot, ci, seed)
            out.append(rec)
    return out


_HEADLINE_COLS = [("accuracy", "accuracy"), ("energy_target_last", "E target (last)"),
                  ("energy_target_layers", "E target (layer mean)"),
                  ("energy_distractors_last", "E distractors (last)"),
                  ("energy_distractors_layers", "E distractors (layer mean)"),
                  ("pointing_hit", "pointing (last)"), ("iou", "IoU (last)"), ("auc", "AUC (last)"),
                  ("part_hit", "part hit (last)"), ("deletion_auc", "deletion AUC ↓"),
                  ("insertion_auc", "insertion AUC ↑"), ("gate_energy_target", "TOAST gate E target"),
                  ("td_ratio_layers", "TOAST |td|/|x| (layer mean)")]


def _fmt(t: tuple) -> str:
    mean, lo, hi = t
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def summary_markdown(rows, kinds: Optional[Sequence[str]] = None, title: str = "Attention analysis",
                     n_boot: int = 1000) -> str:
    """Markdown summary: one headline table per map kind (mean [95% CI]); empty columns dropped."""
    recs = _records(rows)
    kinds = list(kinds) if kinds else list(dict.fromkeys(r["kind"] for r in recs))
    n_images = len({r["image_id"] for r in recs})
    lines = [f"# {title}", "", f"{n_images} images; mean [95% bootstrap CI] over images. Energies are shares "
             "of the map's mass; layers are 0-based; accuracy is the model's, whatever the map.", ""]
    per_image = {r["image_id"]: r for r in recs}.values()
    at, ad = (np.nanmean([r.get(k, NAN) for r in per_image]) if any(np.isfinite(r.get(k, NAN)) for r in per_image)
              else NAN for k in ("target_area", "distractor_area"))
    if np.isfinite(at):
        lines += [f"Chance level (a uniform map): energy on the target = its area share, {at:.3f} on average"
                  + (f"; on the distractors {ad:.3f}." if np.isfinite(ad) else "."), ""]
    for kind in kinds:
        table = headline_table(recs, kind, n_boot=n_boot)
        cols = [(k, lab) for k, lab in _HEADLINE_COLS if any(np.isfinite(t[k][0]) for t in table)]
        lines += [f"## Map kind: {kind} (last analysed layer = {table[0]['last_layer']})", "",
                  "| method | " + " | ".join(lab for _, lab in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for t in table:
            lines.append(f"| {t['method']} | " + " | ".join(_fmt(t[k]) for k, _ in cols) + " |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Plots (bare matplotlib Figures: no pyplot, safe in a server thread)
# ------------------------------------------------------------------------------------------------

_LABELS = {"energy_target": "energy on task object", "energy_distractors": "energy on distractors",
           "energy_background": "energy on background", "pointing_hit": "pointing-game hit rate",
           "iou": "IoU (thresholded map)", "auc": "AUC (map as mask detector)", "entropy": "normalised entropy",
           "prefix_share": "CLS/prefix share", "prompt_share": "prompt share", "part_hit": "part-hit rate",
           "correct": "accuracy"}


def _series(rows, metric: str, kind: str, n_boot: int) -> dict[tuple[str, str], tuple[list, np.ndarray]]:
    """(method, pass) → (layers, (3, n_layers) mean/lo/hi)."""
    per: dict[tuple, dict[int, list]] = {}
    for r in _records(rows):
        if r["kind"] == kind:
            per.setdefault((r["method"], r["pass"]), {}).setdefault(r["layer"], []).append(r[metric])
    out = {}
    for key, by_layer in per.items():
        layers = sorted(by_layer)
        out[key] = (layers, np.array([bootstrap_ci(by_layer[l], n_boot) for l in layers]).T)
    return out


def plot_metric_vs_layer(rows, metrics: str | Sequence[str] = ("energy_target", "energy_distractors"),
                         kind: str = "cls", n_boot: int = 500, title: Optional[str] = None):
    """One panel per metric: its mean (95% CI band) against the layer, one line per method.

    The final pass of each method is drawn solid; TOAST's bottom-up pass dashed.
    Returns: a matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    fig = Figure(figsize=(3.6 * len(metrics) + 1.4, 3.2), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    colours = {}
    for ax, metric in zip(axes, metrics):
        series = _series(rows, metric, kind, n_boot)
        if not series:
            raise InputError(f"no rows of map kind '{kind}'")
        finals = {m: _final_pass(p for (mm, p) in series if mm == m) for m, _ in series}
        for (method, pass_name), (layers, stats) in series.items():
            if method not in colours:
                colours[method] = f"C{len(colours) % 10}"
            dashed = pass_name != finals[method]
            label = method if not dashed else f"{method} ({pass_name})"
            ax.plot(layers, stats[0], "--" if dashed else "-", color=colours[method], marker="o", ms=3,
                    lw=1.2 if dashed else 1.8, label=label)
            if not dashed:
                ax.fill_between(layers, stats[1], stats[2], color=colours[method], alpha=0.15, lw=0)
        ax.set_xlabel("layer (0-based block)")
        ax.set_ylabel(_LABELS.get(metric, metric))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside right upper")
    fig.suptitle(title or f"{kind} maps: metric vs layer (mean, 95% CI)", fontsize=10)
    return fig


def plot_accuracy_vs_energy(rows, kind: str = "cls", layer: Optional[int] = None, metric: str = "energy_target",
                            n_boot: int = 500, title: Optional[str] = None):
    """Accuracy against the mean energy on the task object, one point per method (95% CI bars).

    Args: layer: the layer whose maps give the energy (default: the last analysed one).
    Returns: a matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    recs = [r for r in _records(rows) if r["kind"] == kind]
    if not recs:
        raise InputError(f"no rows of map kind '{kind}'")
    fig = Figure(figsize=(4.8, 3.8), layout="constrained")
    ax = fig.subplots()
    methods = list(dict.fromkeys(r["method"] for r in recs))
    for i, method in enumerate(methods):
        rs = [r for r in recs if r["method"] == method]
        final = _final_pass(r["pass"] for r in rs)
        lay = max(r["layer"] for r in rs) if layer is None else layer
        sel = [r for r in rs if r["pass"] == final and r["layer"] == lay]
        if not sel:
            continue
        x, y = bootstrap_ci([r[metric] for r in sel], n_boot), bootstrap_ci([r["correct"] for r in sel], n_boot)
        ax.errorbar(x[0], y[0], xerr=[[x[0] - x[1]], [x[2] - x[0]]], yerr=[[y[0] - y[1]], [y[2] - y[0]]],
                    fmt="o", color=f"C{i % 10}", capsize=3, label=method)
        ax.annotate(method, (x[0], y[0]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"{_LABELS.get(metric, metric)} ({kind}, layer {'last' if layer is None else layer})")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.suptitle(title or "accuracy vs attention on the task object (95% CI)", fontsize=10)
    return fig


def save_figure(fig, out_dir: str | os.PathLike, stem: str, dpi: int = 200) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` (TrueType fonts embedded) into ``out_dir``."""
    from .export import figure_bytes

    paths = []
    for fmt in ("png", "pdf"):
        p = Path(out_dir) / f"{stem}.{fmt}"
        atomic_write_bytes(p, figure_bytes(fig, fmt, dpi=dpi))
        paths.append(p)
    return paths


def write_report(rows, out_dir: str | os.PathLike, title: str = "Attention analysis",
                 meta: Optional[dict] = None, n_boot: int = 1000) -> dict[str, list[Path]]:
    """Write ``rows.csv``, ``summary.csv``, ``layer_average.csv``, ``summary.md``, plots and ``run.json``.

    Returns: ``{"csv": [...], "tables": [...], "plots": [...]}`` paths.
    """
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recs = _records(rows)
    written: dict[str, list[Path]] = {"csv": [write_rows_csv(recs, out / "rows.csv")], "tables": [], "plots": []}
    for name, table in (("summary.csv", summarise(recs, n_boot=n_boot)), ("layer_average.csv", layer_average(recs, n_boot=n_boot))):
        table = _records(table)
        cols = list(table[0].keys())
        written["tables"].append(write_table_csv(table, out / name, cols))
    md = summary_markdown(recs, title=title, n_boot=n_boot)
    atomic_write_bytes(out / "summary.md", md.encode())
    written["tables"].append(out / "summary.md")
    kinds = list(dict.fromkeys(r["kind"] for r in recs))
    n_layers = len({r["layer"] for r in recs})
    for kind in kinds:
        if n_layers > 1:
            fig = plot_metric_vs_layer(recs, ("energy_target", "energy_distractors", "pointing_hit", "auc"), kind)
            written["plots"] += save_figure(fig, out, f"layers_{kind}")
        written["plots"] += save_figure(plot_accuracy_vs_energy(recs, kind), out, f"accuracy_vs_energy_{kind}")
    if meta is not None:
        atomic_write_bytes(out / "run.json", (json.dumps(meta, indent=1, default=str) + "\n").encode())
    return written

