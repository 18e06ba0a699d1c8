"""Object classes of the demo task: filled shapes rasterised with exact binary masks.

Every shape is an implicit function ``inside(u, v) -> bool`` on unit coordinates centred on the
object. All shapes are mirror-symmetric up to a rotation, so a horizontal flip never changes the
class (flip augmentation is label-preserving). A shape is drawn at a requested *area* in pixels, so
area carries no information about the class.

Rasterisation is supersampled: a pixel belongs to the object when at least half of its sub-samples
fall inside the shape. The result is a hard boolean mask; the painter colours exactly those pixels,
so the mask is exactly the set of pixels the object painted.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np

InsideFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _regular_polygon(n: int, radius: float = 1.0, phase_deg: float = 90.0) -> np.ndarray:
    """Vertices (n, 2) of a regular polygon."""
    ang = np.radians(phase_deg) + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(ang), radius * np.sin(ang)], axis=1)


def _star(points: int = 5, outer: float = 1.0, inner: float = 0.45) -> np.ndarray:
    """Vertices (2*points, 2) of a star polygon."""
    ang = np.radians(90.0) + np.pi * np.arange(2 * points) / points
    rad = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)


def _polygon(vertices: np.ndarray) -> InsideFn:
    """Even-odd point-in-polygon test, vectorised over points."""
    vx, vy = vertices[:, 0], vertices[:, 1]
    wx, wy = np.roll(vx, -1), np.roll(vy, -1)

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        result = np.zeros(np.broadcast(u, v).shape, dtype=bool)
        for x0, y0, x1, y1 in zip(vx.tolist(), vy.tolist(), wx.tolist(), wy.tolist()):
            if y0 == y1:
                continue
            crosses = (y0 > v) != (y1 > v)
            x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
            result ^= crosses & (u < x_at)
        return result

    return inside


def _circle(u, v):
    return u * u + v * v <= 1.0


def _ring(u, v):
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.58**2)


def _crescent(u, v):
    return (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.85**2)


def _square(u, v):
    return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _heart(u, v):
    # Classic implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, recentred on its middle.
    x, y = 1.15 * u, 1.15 * v + 0.12
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0


def _ell(u, v):
    # An L with equal arms: symmetric about its diagonal, so its mirror image is a rotation.
    a, b, w = -0.75, 0.85, 0.6
    vertical = (u >= a) & (u <= a + w) & (v >= a) & (v <= b)
    horizontal = (v >= a) & (v <= a + w) & (u >= a) & (u <= b)
    return vertical | horizontal


def _bowtie(u, v):
    return (np.abs(u) <= 0.95) & (np.abs(v) <= 0.12 + 0.8 * np.abs(u))


_ARROW = np.array([(-0.95, -0.2), (0.1, -0.2), (0.1, -0.6), (0.95, 0.0), (0.1, 0.6), (0.1, 0.2), (-0.95, 0.2)])

#: Class name -> membership function on unit coordinates. The order defines the label indices.
SHAPES: dict[str, InsideFn] = {
    "circle": _circle,
    "square": _square,
    "triangle": _polygon(_regular_polygon(3)),
    "star": _polygon(_star()),
    "cross": _cross,
    "hexagon": _polygon(_regular_polygon(6)),
    "heart": _heart,
    "arrow": _polygon(_ARROW),
    "ring": _ring,
    "crescent": _crescent,
    "ell": _ell,
    "bowtie": _bowtie,
}
SHAPE_NAMES: tuple[str, ...] = tuple(SHAPES)


@lru_cache(maxsize=None)
def shape_geometry(name: str) -> tuple[float, float]:
    """Area (in unit^2) and bounding radius (in units, from the rotation centre) of a shape.

    Measured once on a fine grid over [-1.5, 1.5]^2.

    Returns:
        (unit_area, radius)
    """
    n = 800
    step = 3.0 / n
    c = -1.5 + (np.arange(n) + 0.5) * step
    u, v = np.meshgrid(c, c)
    inside = SHAPES[name](u, v)
    area = float(inside.sum()) * step * step
    radius = float(np.sqrt(u[inside] ** 2 + v[inside] ** 2).max()) + step
    return area, radius


def shape_scale(name: str, area_px: float) -> tuple[float, float]:
    """Pixels per unit and bounding radius in pixels for a shape drawn with ``area_px`` pixels."""
    unit_area, radius = shape_geometry(name)
    scale = float(np.sqrt(area_px / unit_area))
    return scale, radius * scale


def _inside_rotated(name: str, dx: np.ndarray, dy: np.ndarray, cos: np.float32, sin: np.float32) -> np.ndarray:
    """Membership of image offsets (dx, dy) from the centre, with cos/sin already divided by scale."""
    return SHAPES[name](dx * cos + dy * sin, dy * cos - dx * sin)


def rasterise_shape(
    name: str, cx: float, cy: float, scale: float, angle: float, size: int, supersample: int = 4
) -> tuple[int, int, np.ndarray]:
    """Boolean mask of one shape, cut to its bounding box.

    A pixel is inside when at least half of its ``supersample**2`` sub-samples are. Sub-samples are
    only evaluated where a pixel's 3x3 neighbourhood of centre samples is mixed (near an edge);
    elsewhere the centre sample decides, which is exact for features wider than a pixel.

    Args:
        name: a key of ``SHAPES``.
        cx, cy: centre in pixel coordinates (pixel ``j`` covers ``[j, j+1)``).
        scale: pixels per unit (see ``shape_scale``).
        angle: rotation in radians.
        size: image side in pixels; the box is clipped to the image.
        supersample: sub-samples per pixel side.

    Returns:
        (y0, x0, mask) with ``mask`` bool of shape (h, w), placed at rows y0.., columns x0...
    """
    _, radius_unit = shape_geometry(name)
    r = radius_unit * scale
    x0, x1 = max(0, int(np.floor(cx - r)) - 1), min(size, int(np.ceil(cx + r)) + 1)
    y0, y1 = max(0, int(np.floor(cy - r)) - 1), min(size, int(np.ceil(cy + r)) + 1)
    cos, sin = np.float32(np.cos(angle) / scale), np.float32(np.sin(angle) / scale)
    dx, dy = np.meshgrid(
        (np.arange(x0, x1) + 0.5 - cx).astype(np.float32), (np.arange(y0, y1) + 0.5 - cy).astype(np.float32)
    )
    centre = _inside_rotated(name, dx, dy, cos, sin)  # (h, w)
    padded = np.pad(centre, 1, mode="edge")
    h, w = centre.shape
    any_in = np.zeros_like(centre)
    all_in = np.ones_like(centre)
    for oy in range(3):
        for ox in range(3):
            nb = padded[oy : oy + h, ox : ox + w]
            any_in |= nb
            all_in &= nb
    py, px = np.nonzero(any_in & ~all_in)  # pixels near an edge
    ss = supersample
    offsets = ((np.arange(ss) + 0.5) / ss - 0.5).astype(np.float32)
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
    sub = _inside_rotated(
        name, dx[py, px][:, None] + ox.reshape(1, -1), dy[py, px][:, None] + oy.reshape(1, -1), cos, sin
    )  # (n_edge, ss*ss)
    mask = centre.copy()
    mask[py, px] = 2 * sub.sum(axis=1) >= ss * ss
    return y0, x0, mask
