"""Localisation and faithfulness metrics for attention / attribution maps, as pure functions.

Conventions
- A *map* is a non-negative, finite float array on the patch grid, shape (h, w); numpy or torch.
- A *mask* is a bool array at image resolution, shape (H, W), with H >= h and W >= w (H, W need not
  be multiples of h, w).
- Image coordinates are continuous: pixel (y, x) covers the square [y, y+1) x [x, x+1), and patch
  row i covers [i*H/h, (i+1)*H/h) (likewise for columns).
- Patch-level metrics (``energy_in_mask``, ``object_mass``) compare a map with the per-patch area
  fraction covered by the mask (``mask_coverage``), which is exact for the piecewise-constant map.
- Pixel-level metrics (IoU, AUC, PxAP) upsample the map to (H, W): ``"nearest"`` (default; pixel row y
  belongs to patch i when round(i*H/h) <= y < round((i+1)*H/h), the same boundaries the deletion and
  insertion curves use) or ``"bilinear"`` (patch values at patch centres, half-pixel convention,
  edges clamped, as ``align_corners=False``).
- A map with zero total mass gives NaN where a share of mass is asked for (undefined, not an error);
  ``bootstrap_ci`` drops NaNs.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from ..data.boxes import box_to_mask  # noqa: F401 (part of the metrics API)
from ..errors import InputError

__all__ = ["mask_coverage", "upsample_map", "energy_in_mask", "pointing_game", "iou_at_threshold",
           "detection_auc", "pxap", "object_mass", "attention_entropy", "prefix_share", "box_to_mask",
           "part_hit", "deletion_insertion_curves", "bootstrap_ci"]


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_map(m: Any) -> np.ndarray:
    a = _np(m).astype(np.float64)
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"map must be a non-empty 2-D (h, w) array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError("map contains NaN or infinite values")
    if np.any(a < 0):
        raise InputError(f"map must be non-negative (min {a.min():.4g})")
    return a


def _check_mask(mask: Any, grid: tuple[int, int] | None = None, name: str = "mask") -> np.ndarray:
    a = _np(mask)
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2-D (H, W) array, got shape {a.shape}")
    if a.dtype != np.bool_:
        if not np.all(np.isin(a, (0, 1))):
            raise InputError(f"{name} must be boolean (or 0/1), got dtype {a.dtype}")
        a = a.astype(bool)
    if not a.any():
        raise InputError(f"{name} is empty (no pixel set)")
    if grid is not None and (a.shape[0] < grid[0] or a.shape[1] < grid[1]):
        raise InputError(f"{name} shape {a.shape} is smaller than the map grid {tuple(grid)}")
    return a


def _edges(n_pix: int, n_patch: int) -> np.ndarray:
    """Integer pixel boundaries of n_patch cells over n_pix pixels, shape (n_patch + 1,)."""
    return np.round(np.linspace(0, n_pix, n_patch + 1)).astype(np.int64)


def _patch_index(n_pix: int, n_patch: int) -> np.ndarray:
    """Patch index of every pixel (nearest upsampling), shape (n_pix,)."""
    return np.searchsorted(_edges(n_pix, n_patch), np.arange(n_pix), side="right") - 1


def _lerp(n_pix: int, n: int) -> np.ndarray:
    """(n_pix, n) linear-interpolation weights, half-pixel centres, clamped edges."""
    src = np.clip((np.arange(n_pix) + 0.5) * n / n_pix - 0.5, 0, n - 1)
    i0 = np.floor(src).astype(int)
    r = np.zeros((n_pix, n))
    np.add.at(r, (np.arange(n_pix), i0), 1 - (src - i0))
    np.add.at(r, (np.arange(n_pix), np.minimum(i0 + 1, n - 1)), src - i0)
    return r


def _overlap(n_pix: int, n_patch: int) -> np.ndarray:
    """(n_patch, n_pix) matrix: fraction of patch cell i's extent covered by pixel p."""
    s = n_pix / n_patch
    lo, hi = np.arange(n_patch)[:, None] * s, (np.arange(n_patch)[:, None] + 1) * s
    p = np.arange(n_pix)[None, :]
    return np.clip(np.minimum(hi, p + 1) - np.maximum(lo, p), 0, None) / s


def mask_coverage(mask: Any, grid: tuple[int, int]) -> np.ndarray:
    """Area fraction of every patch cell covered by the mask (exact area averaging).

    Args: mask (H, W) bool; grid (h, w). Returns: (h, w) float64 in [0, 1]; its mean is mask.mean().
    """
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1:
        raise InputError(f"grid must be positive, got {grid}")
    m = _check_mask(mask, (h, w)).astype(np.float64)
    H, W = m.shape
    return np.clip(_overlap(H, h) @ m @ _overlap(W, w).T, 0.0, 1.0)


def upsample_map(m: Any, H: int, W: int, mode: str = "nearest") -> np.ndarray:
    """Upsample a (h, w) map to (H, W) pixels, ``"nearest"`` or ``"bilinear"`` (see module doc)."""
    a = _check_map(m)
    h, w = a.shape
    if H < h or W < w:
        raise InputError(f"image size {(H, W)} is smaller than the map grid {(h, w)}")
    if mode == "nearest":
        return a[_patch_index(H, h)][:, _patch_index(W, w)]
    if mode == "bilinear":
        return np.clip(_lerp(H, h) @ a @ _lerp(W, w).T, 0, None)
    raise InputError(f"upsample mode must be 'nearest' or 'bilinear', got {mode!r}")


def energy_in_mask(m: Any, mask: Any) -> float:
    """Energy-based pointing game: share of the map's mass inside the mask.

    Args: m (h, w) map; mask (H, W) bool. Returns: float in [0, 1] (NaN for a zero map). A uniform map
    gives the mask's area fraction.
    """
    a = _check_map(m)
    cov = mask_coverage(mask, a.shape)
    total = a.sum()
    return float((a * cov).sum() / total) if total > 0 else math.nan


def _peak_point(a: np.ndarray, H: int, W: int) -> tuple[float, float]:
    """Centre (y, x), continuous pixel coordinates, of the first (raster order) argmax patch."""
    i, j = np.unravel_index(int(np.argmax(a)), a.shape)
    return (i + 0.5) * H / a.shape[0], (j + 0.5) * W / a.shape[1]


def pointing_game(m: Any, mask: Any, tolerance_px: float = 15) -> bool:
    """Pointing game (Zhang et al. 2016): does the map's maximum fall within tolerance of the mask?

    The maximum is the centre of the argmax patch (ties: the first in raster order). This is also the
    maximum of the nearest- or bilinear-upsampled map. Hit when the Euclidean distance from that
    point to the mask region (the union of its pixel squares) is <= tolerance_px, i.e. the point lies
    in the mask dilated by a disc of that radius; with tolerance 0 a point on the border is a hit.
    """
    a = _check_map(m)
    mk = _check_mask(mask, a.shape)
    if not tolerance_px >= 0:
        raise InputError(f"tolerance_px must be >= 0, got {tolerance_px}")
    py, px = _peak_point(a, *mk.shape)
    ys, xs = np.nonzero(mk)
    dy = np.maximum(np.maximum(ys - py, py - (ys + 1)), 0)
    dx = np.maximum(np.maximum(xs - px, px - (xs + 1)), 0)
    return bool(np.min(dy * dy + dx * dx) <= float(tolerance_px) ** 2)


def iou_at_threshold(m: Any, mask: Any, threshold: float | str = 0.5, quantile: float | None = None,
                     upsample: str = "nearest") -> float:
    """IoU between the thresholded map and the mask, at pixel resolution.

    The upsampled map is min-max normalised to [0, 1] (a constant map becomes all ones) and pixels
    with value >= the threshold are kept. threshold: a float in [0, 1] or ``"mean"`` (the mean of the
    normalised map). quantile q in [0, 1], if given, overrides it: keep pixels at or above the q-th
    quantile of the normalised map. Returns: IoU in [0, 1].
    """
    a = _check_map(m)
    mk = _check_mask(mask, a.shape)
    u = upsample_map(a, *mk.shape, mode=upsample)
    lo, hi = u.min(), u.max()
    u = (u - lo) / (hi - lo) if hi > lo else np.ones_like(u)
    if quantile is not None:
        if not 0 <= quantile <= 1:
            raise InputError(f"quantile must be in [0, 1], got {quantile}")
        t = float(np.quantile(u, quantile))
    elif isinstance(threshold, str):
        if threshold != "mean":
            raise InputError(f"threshold must be a number in [0, 1] or 'mean', got {threshold!r}")
        t = float(u.mean())
    else:
        t = float(threshold)
        if not 0 <= t <= 1:
            raise InputError(f"threshold must be in [0, 1], got {threshold}")
    sel = u >= t
    return float((sel & mk).sum() / (sel | mk).sum())


def _scores_and_weights(m: Any, mask: Any, upsample: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores with positive / negative pixel counts (per patch for nearest, per pixel otherwise)."""
    a = _check_map(m)
    mk = _check_mask(mask, a.shape)
    if mk.all():
        raise InputError("mask covers the whole image; a detection score needs background pixels")
    H, W = mk.shape
    if upsample == "nearest":  # exact and cheap: count pixels per patch
        ey, ex = _edges(H, a.shape[0]), _edges(W, a.shape[1])
        c = np.add.reduceat(np.add.reduceat(mk.astype(np.int64), ey[:-1], 0), ex[:-1], 1)
        size = np.diff(ey)[:, None] * np.diff(ex)[None, :]
        return a.ravel(), c.ravel().astype(float), (size - c).ravel().astype(float)
    u = upsample_map(a, H, W, mode=upsample).ravel()
    pos = mk.ravel().astype(float)
    return u, pos, 1.0 - pos


def detection_auc(m: Any, mask: Any, upsample: str = "nearest") -> float:
    """ROC AUC of the upsampled map's pixel values as a detector of mask pixels.

    Ties count one half (the average-rank Mann-Whitney statistic). A constant map gives 0.5, the
    mask indicator itself gives 1. Returns: float in [0, 1].
    """
    s, pos, neg = _scores_and_weights(m, mask, upsample)
    _, inv = np.unique(s, return_inverse=True)
    p, n = np.bincount(inv, pos), np.bincount(inv, neg)  # per distinct score, ascending
    below = np.cumsum(n) - n
    return float((p * (below + 0.5 * n)).sum() / (p.sum() * n.sum()))


def pxap(m: Any, mask: Any, upsample: str = "nearest") -> float:
    """Pixel average precision (Choe et al. 2020): area under the step precision-recall curve.

    Thresholds run over every distinct map value (pixel kept when value >= threshold).
    """
    s, pos, neg = _scores_and_weights(m, mask, upsample)
    _, inv = np.unique(s, return_inverse=True)
    p, n = np.bincount(inv, pos)[::-1], np.bincount(inv, neg)[::-1]  # descending scores
    tp, fp = np.cumsum(p), np.cumsum(n)
    return float((p / p.sum() * tp / (tp + fp)).sum())


def object_mass(m: Any, target_mask: Any, distractor_masks: Sequence[Any] = ()) -> dict[str, float]:
    """Share of map mass on the task object, on distractor objects and on the background.

    Pixels in both target and a distractor count as target. Returns dict with ``target``,
    ``distractors``, ``background`` (summing to 1) and ``ratio`` = target / (target + distractors),
    the share of object-directed mass that hits the task object (NaN when both are 0).
    """
    a = _check_map(m)
    tm = _check_mask(target_mask, a.shape, "target_mask")
    dm = np.zeros_like(tm)
    for k, d in enumerate(distractor_masks):
        d = _np(d).astype(bool)
        if d.shape != tm.shape:
            raise InputError(f"distractor mask {k} has shape {d.shape}, target mask {tm.shape}")
        dm |= d
    dm &= ~tm
    total = a.sum()
    if total <= 0:
        return dict(target=math.nan, distractors=math.nan, background=math.nan, ratio=math.nan)
    t = float((a * mask_coverage(tm, a.shape)).sum() / total)
    d = float((a * mask_coverage(dm, a.shape)).sum() / total) if dm.any() else 0.0
    return dict(target=t, distractors=d, background=max(0.0, 1.0 - t - d),
                ratio=t / (t + d) if t + d > 0 else math.nan)


def attention_entropy(m: Any, normalise: bool = True) -> float:
    """Shannon entropy (nats) of the map normalised to sum 1; divided by log(h*w) when normalise.

    1 for a uniform map, 0 for a single peak (and for a 1-patch map). NaN for a zero map.
    """
    a = _check_map(m).ravel()
    total = a.sum()
    if total <= 0:
        return math.nan
    p = a[a > 0] / total
    e = float(-(p * np.log(p)).sum())
    if normalise:
        return e / math.log(a.size) if a.size > 1 else 0.0
    return e


def prefix_share(patch_mass: Any, prefix_mass: Any, prompt_mass: Any = 0.0) -> float:
    """Share of a CLS attention row taken by prefix (CLS/register) and prompt tokens.

    Each argument is a scalar or an array of that group's attention weights (summed).
    Returns (prefix + prompt) / (patch + prefix + prompt); NaN when the row sums to 0.
    """
    parts = []
    for name, v in (("patch_mass", patch_mass), ("prefix_mass", prefix_mass), ("prompt_mass", prompt_mass)):
        v = _np(v).astype(np.float64)
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise InputError(f"{name} must be finite and non-negative")
        parts.append(float(v.sum()))
    total = sum(parts)
    return (parts[1] + parts[2]) / total if total > 0 else math.nan


def part_hit(m: Any, points: Any, image_size: tuple[int, int], tolerance_px: float = 15) -> dict[str, Any]:
    """Part hits for keypoints (e.g. CUB part_locs): is each visible part near the map's maximum?

    Args: m (h, w) map; points (K, 2) as (x, y) or (K, 3) as (x, y, visible), continuous pixel
    coordinates; rows with visible == 0 or NaN are dropped; image_size (H, W).
    Returns: dict ``fraction`` (share of visible parts within tolerance_px of the peak, NaN if none
    visible), ``hit`` (whether any part is), ``n_visible``. The peak is as in ``pointing_game``.
    """
    a = _check_map(m)
    p = _np(points).astype(np.float64)
    p = p[None] if p.ndim == 1 else p
    if p.ndim != 2 or p.shape[1] not in (2, 3):
        raise InputError(f"points must have shape (K, 2) or (K, 3), got {_np(points).shape}")
    keep = np.all(np.isfinite(p[:, :2]), axis=1)
    if p.shape[1] == 3:
        keep &= p[:, 2] > 0
    p = p[keep]
    if not p.size:
        return dict(fraction=math.nan, hit=False, n_visible=0)
    py, px = _peak_point(a, int(image_size[0]), int(image_size[1]))
    near = (p[:, 0] - px) ** 2 + (p[:, 1] - py) ** 2 <= float(tolerance_px) ** 2
    return dict(fraction=float(near.mean()), hit=bool(near.any()), n_visible=int(len(p)))


def _trapz(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def _baseline_image(img, baseline: Any):
    """What removed / hidden pixels show: ``"blur"``, ``"mean"``, ``"zero"`` or a (3, H, W) tensor."""
    import torch
    H, W = img.shape[1:]
    if not isinstance(baseline, str):
        base = torch.as_tensor(baseline, dtype=img.dtype, device=img.device)
        if base.shape != img.shape:
            raise InputError(f"baseline shape {tuple(base.shape)} differs from image {tuple(img.shape)}")
        return base
    if baseline == "blur":
        from torchvision.transforms.functional import gaussian_blur
        sigma = max(H, W) / 45.0
        k = min(2 * math.ceil(3 * sigma) + 1, 2 * min(H, W) - 1)
        return gaussian_blur(img[None], [k, k], [sigma, sigma])[0]
    if baseline == "mean":
        return img.mean(dim=(1, 2), keepdim=True).expand_as(img)
    if baseline == "zero":
        return torch.zeros_like(img)
    raise InputError(f"baseline must be 'blur', 'mean', 'zero' or a tensor, got {baseline!r}")


def deletion_insertion_curves(predict: Callable[[Any], Any], image: Any, m: Any, target_class: int,
                              steps: int = 16, baseline: Any = "blur", batch_size: int = 32,
                              insertion_baseline: Any = None) -> dict[str, Any]:
    """Deletion and insertion curves (Petsiuk et al. 2018) on the patch grid.

    Patches are ranked by map value (descending; ties in raster order). At step k the first
    round(k * h*w / steps) patches are replaced by the baseline (deletion) or are the only ones
    revealed over the baseline (insertion). Patch pixel boundaries: np.round(np.linspace(0, H, h+1)).

    Args: predict: maps a (B, 3, H, W) torch tensor to (B, C) class probabilities (torch or numpy);
    called under torch.no_grad(). image: (3, H, W) tensor or array. m: (h, w) map. target_class: int.
    steps: >= 1. baseline: ``"blur"`` (Gaussian, sigma = max(H, W) / 45), ``"mean"`` (per-channel
    mean), ``"zero"`` or a (3, H, W) tensor. batch_size: images per predict call.
    insertion_baseline: the insertion curve's own baseline (same choices; None = ``baseline``), e.g.
    Petsiuk et al.'s pairing: a constant for deletion, a blurred copy for insertion.
    Returns: dict ``deletion``, ``insertion`` (steps+1 target probabilities), ``fractions`` (share of
    patches replaced/revealed, 0 to 1), ``deletion_auc``, ``insertion_auc`` (trapezoid over fractions).
    """
    import torch
    a = _check_map(m)
    img = image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image))
    img = img.float() if not img.is_floating_point() else img
    if img.ndim != 3 or img.shape[0] != 3:
        raise InputError(f"image must have shape (3, H, W), got {tuple(img.shape)}")
    (h, w), (H, W) = a.shape, img.shape[1:]
    if H < h or W < w:
        raise InputError(f"image size {(H, W)} is smaller than the map grid {(h, w)}")
    if int(steps) < 1 or int(batch_size) < 1:
        raise InputError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    base = _baseline_image(img, baseline)
    base_ins = base if insertion_baseline is None else _baseline_image(img, insertion_baseline)
    n = h * w
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-a.ravel(), kind="stable")] = np.arange(n)
    pix_rank = torch.as_tensor(rank.reshape(h, w)[_patch_index(H, h)][:, _patch_index(W, w)],
                               device=img.device)  # (H, W): rank of each pixel's patch
    counts = np.round(np.arange(steps + 1) * n / steps).astype(np.int64)
    jobs = [(first, int(c)) for first in (True, False) for c in counts]  # deletion, then insertion
    probs = []
    with torch.no_grad():
        for s in range(0, len(jobs), batch_size):
            chunk = jobs[s:s + batch_size]
            c = torch.as_tensor([j[1] for j in chunk], device=img.device)
            hit = (pix_rank[None] < c[:, None, None])[:, None]  # (B, 1, H, W)
            dele = torch.as_tensor([j[0] for j in chunk], device=img.device)[:, None, None, None]
            show_base = torch.where(dele, hit, ~hit)
            batch = torch.where(show_base, torch.where(dele, base[None], base_ins[None]), img[None])  # (B, 3, H, W)
            out = _np(predict(batch)).astype(np.float64)
            if out.ndim != 2 or out.shape[0] != len(chunk) or not 0 <= target_class < out.shape[1]:
                raise InputError(f"predict must return (B, C) probabilities with C > {target_class}, "
                                 f"got shape {out.shape} for B={len(chunk)}")
            probs.append(out[:, target_class])
    p = np.concatenate(probs)
    dele_curve, ins_curve, frac = p[: steps + 1], p[steps + 1:], counts / n
    return dict(deletion=dele_curve, insertion=ins_curve, fractions=frac,
                deletion_auc=_trapz(dele_curve, frac), insertion_auc=_trapz(ins_curve, frac))


def bootstrap_ci(values: Any, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of the mean; NaN/inf dropped; deterministic for a seed.

    Returns: (mean, lo, hi); (NaN, NaN, NaN) when no finite value remains.
    """
    v = _np(values).astype(np.float64).ravel()
    v = v[np.isfinite(v)]
    if not 0 < ci < 1 or int(n_boot) < 1:
        raise InputError(f"need 0 < ci < 1 and n_boot >= 1, got ci={ci}, n_boot={n_boot}")
    if v.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // v.size)
    means = np.concatenate([v[rng.integers(0, v.size, (min(chunk, n_boot - s), v.size))].mean(axis=1)
                            for s in range(0, int(n_boot), chunk)])
    lo, hi = np.percentile(means, [50 * (1 - ci), 50 * (1 + ci)])
    return float(v.mean()), float(lo), float(hi)
