"""Pure rendering helpers: upsampling, colour scales, colourised overlays, difference maps and
interactive plotly heat maps. No Streamlit import; every function checks its inputs and raises
:class:`~toast_core.errors.InputError` with a message that names the problem.

Conventions: images are ``uint8`` arrays of shape ``(H, W, 3)``; maps are float arrays on the patch
grid, shape ``(h, w)`` (non-negative for attention, possibly signed for differences/attributions).

Example::

    lo, hi = color_scale([m1, m2], mode="shared")[0]
    rgb = overlay(image, m1, lo, hi, cmap="inferno", alpha=0.5)   # (H, W, 3) uint8
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from ..errors import InputError

Scale = tuple[float, float]


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return ``image`` if it is a ``uint8`` array of shape ``(H, W, 3)``, else raise InputError."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise InputError(f"{name} must be an (H, W, 3) uint8 array, got shape {shape}")
    if image.dtype != np.uint8:
        raise InputError(f"{name} must have dtype uint8, got {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"{name} is empty: shape {image.shape}")
    return image


def check_map(m: np.ndarray, name: str = "map") -> np.ndarray:
    """Return ``m`` as a float64 ``(h, w)`` array if it is 2-D, non-empty and finite."""
    arr = np.asarray(m)
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"{name} must be a non-empty 2-D (h, w) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinite values ({int((~np.isfinite(arr)).sum())} of {arr.size})")
    return arr


def _check_range(vmin: float, vmax: float) -> tuple[float, float]:
    vmin, vmax = float(vmin), float(vmax)
    if not (np.isfinite(vmin) and np.isfinite(vmax)) or vmax <= vmin:
        raise InputError(f"colour range must be finite with vmin < vmax, got ({vmin}, {vmax})")
    return vmin, vmax


def _source_coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel-centred bilinear sampling (like ``align_corners=False``), clamped at the edges."""
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0.0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, pos - lo


def upsample_map(
    m: np.ndarray, size: tuple[int, int], mode: Literal["bilinear", "nearest"] = "bilinear"
) -> np.ndarray:
    """Resize a patch-grid map to image size.

    Args:
        m: map of shape ``(h, w)``.
        size: output ``(H, W)``.
        mode: ``"bilinear"`` (smooth, half-pixel centres, values stay within the map's range) or
            ``"nearest"`` (every patch becomes a constant block).

    Returns:
        float64 array of shape ``(H, W)``.
    """
    arr = check_map(m)
    H, W = (int(s) for s in size)
    if H < 1 or W < 1:
        raise InputError(f"size must be positive (H, W), got {size}")
    h, w = arr.shape
    if mode == "nearest":
        rows = np.minimum((np.arange(H) * h) // H, h - 1)
        cols = np.minimum((np.arange(W) * w) // W, w - 1)
        return arr[rows][:, cols]
    if mode != "bilinear":
        raise InputError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    r0, r1, fr = _source_coords(H, h)
    c0, c1, fc = _source_coords(W, w)
    top = arr[r0][:, c0] * (1 - fc) + arr[r0][:, c1] * fc  # (H, W)
    bot = arr[r1][:, c0] * (1 - fc) + arr[r1][:, c1] * fc
    return top * (1 - fr)[:, None] + bot * fr[:, None]


def color_scale(
    maps: Sequence[np.ndarray],
    mode: Literal["shared", "per-panel"] = "shared",
    signed: bool = False,
    percentile: float | None = None,
) -> list[Scale]:
    """Colour ranges for a set of panels.

    Args:
        maps: the maps, each ``(h, w)``; shapes may differ.
        mode: ``"shared"`` gives every panel one range over all values (panels comparable);
            ``"per-panel"`` gives each panel its own range.
        signed: range symmetric around 0, ``(-m, m)`` with ``m`` the largest ``|value|``.
        percentile: if given (0 < p <= 100), clip outliers: the top of the range is the p-th
            percentile (of ``|value|`` when signed), the bottom the (100 - p)-th.

    Returns:
        one ``(vmin, vmax)`` per map, always with ``vmin < vmax`` (a constant map gets a unit-wide
        range starting at its value, or ``(-1, 1)`` when signed and all zero).
    """
    if mode not in ("shared", "per-panel"):
        raise InputError(f"mode must be 'shared' or 'per-panel', got {mode!r}")
    if percentile is not None and not (0 < float(percentile) <= 100):
        raise InputError(f"percentile must lie in (0, 100], got {percentile}")
    arrays = [check_map(m, f"maps[{i}]") for i, m in enumerate(maps)]
    if not arrays:
        raise InputError("color_scale needs at least one map")

    def one(values: np.ndarray) -> Scale:
        if signed:
            mag = np.abs(values)
            top = float(mag.max() if percentile is None else np.percentile(mag, percentile))
            return (-top, top) if top > 0 else (-1.0, 1.0)
        if percentile is None:
            lo, hi = float(values.min()), float(values.max())
        else:
            lo, hi = (float(v) for v in np.percentile(values, [100 - percentile, percentile]))
        return (lo, hi) if hi > lo else (lo, lo + 1.0)

    if mode == "shared":
        return [one(np.concatenate([a.ravel() for a in arrays]))] * len(arrays)
    return [one(a.ravel()) for a in arrays]


def colorize(
    m: np.ndarray, vmin: float, vmax: float, cmap: str = "inferno", rgba: bool = False
) -> np.ndarray:
    """Map values to colours with a matplotlib colormap (values outside the range are clipped).

    Returns:
        uint8 array ``(h, w, 3)``, or ``(h, w, 4)`` when ``rgba`` is true, same grid as ``m``.
    """
    import matplotlib

    arr = check_map(m)
    vmin, vmax = _check_range(vmin, vmax)
    try:
        cm = matplotlib.colormaps[cmap]
    except KeyError:
        raise InputError(f"unknown matplotlib colormap {cmap!r}") from None
    norm = np.clip((arr - vmin) / (vmax - vmin), 0.0, 1.0)
    out = cm(norm, bytes=True)  # (h, w, 4) uint8
    return out if rgba else np.ascontiguousarray(out[..., :3])


def overlay(
    image: np.ndarray,
    m: np.ndarray,
    vmin: float,
    vmax: float,
    cmap: str = "inferno",
    alpha: float = 0.5,
    upsample: Literal["bilinear", "nearest"] = "bilinear",
) -> np.ndarray:
    """Blend a colourised map over an image: ``(1 - alpha) * image + alpha * colour``.

    Args:
        image: ``(H, W, 3)`` uint8.
        m: ``(h, w)`` finite map on the patch grid (or already ``(H, W)``).
        vmin, vmax: colour range (see :func:`color_scale`).
        cmap: matplotlib colormap name.
        alpha: weight of the map in [0, 1]; 0 returns the image, 1 the colourised map.
        upsample: ``"bilinear"`` or ``"nearest"`` (patch blocks).

    Returns:
        ``(H, W, 3)`` uint8.
    """
    check_image(image)
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}")
    arr = check_map(m)
    H, W = image.shape[:2]
    if arr.shape != (H, W):
        arr = upsample_map(arr, (H, W), upsample)
    color = colorize(arr, vmin, vmax, cmap).astype(np.float64)
    out = (1.0 - alpha) * image.astype(np.float64) + alpha * color
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def difference_maps(
    maps: dict[str, np.ndarray], reference: str, include_reference: bool = False
) -> dict[str, np.ndarray]:
    """Each map minus the reference map (signed; show with ``color_scale(..., signed=True)``).

    Args:
        maps: name -> ``(h, w)`` map, all the same shape.
        reference: the key to subtract.
        include_reference: keep the reference as an all-zero map instead of dropping it.

    Returns:
        name -> ``(h, w)`` float64 difference, in the input order.
    """
    if reference not in maps:
        raise InputError(f"reference {reference!r} is not one of {sorted(maps)}")
    ref = check_map(maps[reference], f"maps[{reference!r}]")
    out: dict[str, np.ndarray] = {}
    for name, m in maps.items():
        arr = check_map(m, f"maps[{name!r}]")
        if arr.shape != ref.shape:
            raise InputError(f"map {name!r} has shape {arr.shape}, reference {reference!r} has {ref.shape}")
        if name == reference and not include_reference:
            continue
        out[name] = arr - ref
    return out


def plotly_colorscale(cmap: str = "inferno", n: int = 32) -> list[list]:
    """A matplotlib colormap as a plotly colorscale (``n`` evenly spaced stops)."""
    rgb = colorize(np.linspace(0, 1, n)[None, :], 0.0, 1.0, cmap)[0]
    return [[i / (n - 1), f"rgb({r},{g},{b})"] for i, (r, g, b) in enumerate(rgb.tolist())]


def css_gradient(cmap: str = "inferno", n: int = 16, direction: str = "to right") -> str:
    """A matplotlib colormap as a CSS ``linear-gradient(...)`` (a colour bar drawn by the browser)."""
    stops = ", ".join(f"{c} {100 * pos:.1f}%" for pos, c in plotly_colorscale(cmap, n))
    return f"linear-gradient({direction}, {stops})"


def image_data_uri(image: np.ndarray, quality: int = 90) -> str:
    """``(H, W, 3)`` uint8 image as a ``data:image/jpeg;base64,...`` URI (for plotly's Image ``source``)."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).convert("RGB").save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _add_map_traces(fig, image, arr, vmin, vmax, cmap, alpha, row=None, col=None, **heatmap_kw):
    """Add the image (if any) and the patch-grid heat map to ``fig``; the heat map cells cover the
    image pixels of their patch (plotly puts pixel centres on integers)."""
    import plotly.graph_objects as go

    h, w = arr.shape
    H, W = image.shape[:2] if image is not None else (h, w)
    dy, dx = H / h, W / w
    where = {} if row is None else {"row": row, "col": col}
    if image is not None:  # a JPEG data URI: the browser decodes it natively (a z array costs ~2x the CPU to draw)
        fig.add_trace(go.Image(source=image_data_uri(image), hoverinfo="skip"), **where)
    rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    fig.add_trace(
        go.Heatmap(
            z=arr, x0=dx / 2 - 0.5, dx=dx, y0=dy / 2 - 0.5, dy=dy,
            zmin=vmin, zmax=vmax, colorscale=plotly_colorscale(cmap),
            opacity=alpha if image is not None else 1.0,
            customdata=np.stack([rr, cc], axis=-1),
            hovertemplate="patch (row %{customdata[0]}, col %{customdata[1]})<br>value %{z:.4g}<extra></extra>",
            **heatmap_kw,
        ),
        **where,
    )


def heatmap_figure(
    image: np.ndarray | None,
    m: np.ndarray,
    vmin: float,
    vmax: float,
    cmap: str = "inferno",
    alpha: float = 0.5,
    title: str = "",
):
    """Interactive plotly figure: the image underneath and the map as a heat map on the patch grid.

    Hovering a cell shows its patch ``(row, col)`` and value (``customdata`` holds row/col, ``z`` the
    map). Axes have equal aspect, y grows downward as in images, margins are small.

    Args:
        image: ``(H, W, 3)`` uint8, or None for the map alone.
        m: ``(h, w)`` map; vmin/vmax: colour range; cmap: matplotlib name; alpha: heat-map opacity.

    Returns:
        ``plotly.graph_objects.Figure`` with traces ``[Image, Heatmap]`` (``[Heatmap]`` without image).
    """
    import plotly.graph_objects as go

    arr = check_map(m)
    vmin, vmax = _check_range(vmin, vmax)
    if image is not None:
        check_image(image)
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}")
    fig = go.Figure()
    _add_map_traces(fig, image, arr, vmin, vmax, cmap, float(alpha), colorbar={"thickness": 12})
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x", scaleratio=1, constrain="domain")
    fig.update_layout(
        title={"text": title} if title else None,
        margin={"l": 4, "r": 4, "t": 32 if title else 4, "b": 4},
    )
    return fig


def grid_figure(
    panels: Sequence[Sequence[tuple[np.ndarray | None, np.ndarray]]],
    scales: Sequence[Sequence[Scale]],
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    cmap: str = "inferno",
    alpha: float = 0.5,
    title: str = "",
):
    """Grid of interactive heat maps (rows x columns), e.g. methods x layers.

    Args:
        panels: ``panels[r][c] = (image or None, map)``.
        scales: ``scales[r][c] = (vmin, vmax)``; only the first panel shows a colour bar, so pass a
            shared scale when the colours should be comparable.

    Returns:
        ``plotly.graph_objects.Figure`` with one subplot per panel.
    """
    from plotly.subplots import make_subplots

    n_rows, n_cols = len(panels), len(panels[0]) if panels else 0
    if n_rows == 0 or n_cols == 0 or any(len(r) != n_cols for r in panels):
        raise InputError("panels must be a non-empty rectangular list of rows")
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}")
    titles = [
        f"{row_labels[r] if r < len(row_labels) else ''} · {col_labels[c] if c < len(col_labels) else ''}".strip(" ·")
        for r in range(n_rows) for c in range(n_cols)
    ]
    fig = make_subplots(n_rows, n_cols, subplot_titles=titles, horizontal_spacing=0.01, vertical_spacing=0.05)
    for r in range(n_rows):
        for c in range(n_cols):
            image, m = panels[r][c]
            if image is not None:
                check_image(image, f"panels[{r}][{c}] image")
            lo, hi = _check_range(*scales[r][c])
            _add_map_traces(fig, image, check_map(m, f"panels[{r}][{c}] map"), lo, hi, cmap, float(alpha),
                            row=r + 1, col=c + 1, showscale=(r == 0 and c == 0))
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", constrain="domain")
    for i in range(1, n_rows * n_cols + 1):
        fig.update_yaxes(scaleanchor=f"x{'' if i == 1 else i}", row=(i - 1) // n_cols + 1, col=(i - 1) % n_cols + 1)
    fig.update_layout(title={"text": title} if title else None, margin={"l": 4, "r": 4, "t": 40, "b": 4})
    return fig
