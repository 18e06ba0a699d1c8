"""Per-image geometry on the patch grid and the vectorised localisation metrics of all maps at once."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..maps import rollout_all_layers  # noqa: F401 (one rollout: toast_core.maps)
from .metrics import _edges, mask_coverage

from .options import NAN, default_tolerance

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
