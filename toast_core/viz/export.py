"""Paper figures and reproducible export bundles (matplotlib, no pyplot, no Streamlit).

``build_figure`` draws a rows x columns grid of overlays (rows = methods, columns = layers or
images) on a bare :class:`matplotlib.figure.Figure`, so it never touches pyplot's global state and
can run in a Streamlit server thread. ``figure_bytes`` writes PDF (TrueType fonts embedded), SVG
(real ``<text>``) or PNG. ``export_bundle`` zips the raw maps, the images, a manifest and the figure
in three formats; ``figure_from_bundle`` rebuilds the figure from such a zip.

Example::

    spec = FigureSpec(panels=[[(img, m) for m in row] for row in maps], row_labels=methods,
                      col_labels=layers, map_kind="CLS attention, head mean")
    pdf = figure_bytes(build_figure(spec), "pdf")
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.jsonable import json_default
from .render import check_image, check_map, color_scale, overlay

SCALES = ("shared", "per-panel", "signed")
FORMATS = ("pdf", "svg", "png")
BUNDLE_FORMAT = "toast_core.figure_bundle"
BUNDLE_VERSION = 1
# rcParams are process-global: hold this lock while a save reads them, so two server threads never
# see each other's rc_context being restored half-way.
_RC_LOCK = threading.Lock()
_SAVE_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none", "svg.hashsalt": "toast_core"}

Panel = tuple[np.ndarray | None, np.ndarray]


@dataclass
class FigureSpec:
    """Everything needed to draw a figure grid.

    Attributes:
        panels: ``panels[r][c] = (image, map)``: image ``(H, W, 3)`` uint8 or None (map alone),
            map ``(h, w)`` on the patch grid. Rows are usually methods, columns layers or images.
        map_kind: what the maps are, printed on the figure (e.g. "CLS attention, layer 12, head mean").
        row_labels / col_labels: one per row / column (empty strings allowed; default empty).
        title: figure title (optional).
        cmap: matplotlib colormap; None picks "inferno", or "RdBu_r" for the signed scale.
        scale: "shared" (one range, one colour bar), "per-panel" (own range and bar each) or
            "signed" (one range symmetric around 0, for difference maps and attributions).
        percentile: clip the colour range at this percentile (0 < p <= 100), None for min/max.
        alpha: weight of the map over the image, in [0, 1].
        font_size: points. dpi: raster resolution for PNG export. panel_inches: panel edge length.
        colorbar: draw colour bars. upsample: "bilinear" or "nearest" (patch blocks).
    """

    panels: list[list[Panel]]
    map_kind: str
    row_labels: list[str] = field(default_factory=list)
    col_labels: list[str] = field(default_factory=list)
    title: str = ""
    cmap: str | None = None
    scale: str = "shared"
    percentile: float | None = None
    alpha: float = 0.5
    font_size: float = 8.0
    dpi: int = 300
    colorbar: bool = True
    panel_inches: float = 1.6
    upsample: str = "bilinear"

    def __post_init__(self) -> None:
        rows = [list(r) for r in self.panels]
        if not rows or not rows[0] or any(len(r) != len(rows[0]) for r in rows):
            raise InputError("panels must be a non-empty rectangular list of rows of (image, map)")
        self.panels = rows
        n_rows, n_cols = self.shape
        self.row_labels = [str(s) for s in self.row_labels] or [""] * n_rows
        self.col_labels = [str(s) for s in self.col_labels] or [""] * n_cols
        if len(self.row_labels) != n_rows or len(self.col_labels) != n_cols:
            raise InputError(f"need {n_rows} row labels and {n_cols} column labels, "
                             f"got {len(self.row_labels)} and {len(self.col_labels)}")
        if not str(self.map_kind).strip():
            raise InputError("map_kind must say what the maps are (it is printed on the figure)")
        if self.scale not in SCALES:
            raise InputError(f"scale must be one of {SCALES}, got {self.scale!r}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise InputError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.font_size <= 0 or self.dpi <= 0 or self.panel_inches <= 0:
            raise InputError("font_size, dpi and panel_inches must be positive")
        for r, row in enumerate(rows):
            for c, panel in enumerate(row):
                if not isinstance(panel, (tuple, list)) or len(panel) != 2:
                    raise InputError(f"panels[{r}][{c}] must be an (image, map) pair")
                if panel[0] is not None:
                    check_image(panel[0], f"panels[{r}][{c}] image")
                check_map(panel[1], f"panels[{r}][{c}] map")
        if self.cmap is None:
            self.cmap = "RdBu_r" if self.scale == "signed" else "inferno"
        from matplotlib import colormaps

        if self.cmap not in colormaps:
            raise InputError(f"unknown matplotlib colormap {self.cmap!r}")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        return len(self.panels), len(self.panels[0])

    def scales(self) -> list[list[tuple[float, float]]]:
        """Colour range per panel, ``[r][c] = (vmin, vmax)``."""
        n_rows, n_cols = self.shape
        flat = color_scale([m for row in self.panels for _, m in row],
                           mode="per-panel" if self.scale == "per-panel" else "shared",
                           signed=self.scale == "signed", percentile=self.percentile)
        return [flat[r * n_cols:(r + 1) * n_cols] for r in range(n_rows)]

    def to_dict(self) -> dict[str, Any]:
        """The spec without images and maps (JSON-ready), plus its shape and colour ranges."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "panels"}
        d["shape"] = list(self.shape)
        d["ranges"] = [[list(s) for s in row] for row in self.scales()]
        return d


def build_figure(spec: FigureSpec):
    """Draw ``spec`` as a grid of overlays on a new :class:`matplotlib.figure.Figure`.

    Column labels are titles of the top row, row labels y-labels of the left column; the title heads
    the figure and ``map_kind`` (with the colour scale used) is printed beneath the grid. No ticks. A shared or signed scale gets one
    colour bar for the grid, per-panel one bar per panel. Constrained layout keeps labels and bars
    from overlapping; it runs once here and is then frozen, so every format shows the same layout.

    Returns:
        the Figure (Agg canvas attached), ``spec.shape`` axes plus colour-bar axes.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    n_rows, n_cols = spec.shape
    fs = spec.font_size
    per_panel_bars = spec.colorbar and spec.scale == "per-panel"
    width = n_cols * spec.panel_inches * (1.3 if per_panel_bars else 1.0) + 0.5 + (0.6 if spec.colorbar else 0)
    aspect = max((img.shape[0] / img.shape[1]) if img is not None else (m.shape[0] / m.shape[1])
                 for row in spec.panels for img, m in row)  # height / width of the tallest panel
    title = _wrap(spec.title, width, fs * 1.25)
    scale_note = {"shared": "shared colour scale", "per-panel": "per-panel colour scales",
                  "signed": "signed shared colour scale"}[spec.scale]
    if spec.percentile is not None:
        scale_note += f", clipped at {spec.percentile:g}th percentile"
    caption = _wrap(f"{spec.map_kind} ({scale_note})", width, fs)
    text_lines = (1.25 * (title.count("\n") + 1) + 1 if title else 0) + caption.count("\n") + 2.5
    height = n_rows * spec.panel_inches * aspect + 0.4 + fs / 72 * 1.2 * text_lines
    height = math.ceil(height * 5) / 5 + 1e-6  # on a 0.2-in grid: whole pixels at the usual dpis
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    fig.get_layout_engine().set(w_pad=0.03, h_pad=0.03, wspace=0.03, hspace=0.03)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    scales = spec.scales()
    cmap = colormaps[spec.cmap]
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r, c]
            image, m = spec.panels[r][c]
            lo, hi = scales[r][c]
            if image is None:
                ax.imshow(check_map(m), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            else:
                ax.imshow(overlay(image, m, lo, hi, spec.cmap, spec.alpha, spec.upsample), interpolation="none")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_linewidth(0.4)
            if r == 0 and spec.col_labels[c]:
                ax.set_title(spec.col_labels[c], fontsize=fs)
            if c == 0 and spec.row_labels[r]:
                ax.set_ylabel(spec.row_labels[r], fontsize=fs)
            if per_panel_bars:
                # an inset bar matches the image's height whatever its aspect
                bar = fig.colorbar(ScalarMappable(Normalize(lo, hi), cmap), cax=ax.inset_axes([1.03, 0.0, 0.05, 1.0]))
                bar.ax.tick_params(labelsize=fs * 0.75, length=2, width=0.4)
                bar.outline.set_linewidth(0.4)
    if spec.colorbar and not per_panel_bars:
        lo, hi = scales[0][0]
        bar = fig.colorbar(ScalarMappable(Normalize(lo, hi), cmap), ax=axes.ravel().tolist(),
                           shrink=0.9 if n_rows > 1 else 0.8, aspect=max(10, 12 * n_rows), pad=0.01)
        bar.ax.tick_params(labelsize=fs * 0.85, length=2, width=0.4)
        bar.outline.set_linewidth(0.4)
    if title:
        fig.suptitle(title, fontsize=fs * 1.25)
    fig.supxlabel(caption, fontsize=fs)
    # Lay out once and freeze: otherwise each save re-runs the layout with that format's renderer, so
    # the PDF, SVG and PNG (and a second save) would differ by a pixel here and there.
    fig.draw_without_rendering()
    fig.set_layout_engine("none")
    return fig


def _wrap(text: str, width_inches: float, font_size: float) -> str:
    """Break ``text`` into lines that fit a figure ``width_inches`` wide at ``font_size`` points (a
    title or caption wider than a one-column figure would otherwise be cut at its edges). Uses a
    generous average glyph width (0.62 em) so the lines fit in any of matplotlib's sans fonts."""
    import textwrap

    if not text:
        return ""
    chars = max(8, int((width_inches - 0.2) * 72 / (0.62 * font_size)))
    return "\n".join(textwrap.fill(part, chars, break_long_words=True) for part in text.split("\n"))


def figure_bytes(fig, fmt: str = "pdf", dpi: int = 300) -> bytes:
    """Serialise a figure. PDF embeds TrueType fonts (``pdf.fonttype=42``, editable in Illustrator),
    SVG keeps text as ``<text>`` (``svg.fonttype="none"``); PDF/SVG carry no creation date, so the
    same figure gives the same bytes. ``dpi`` sets the PNG's pixel size (and raster images in PDF).

    Returns:
        the file's bytes.
    """
    from matplotlib import rc_context

    if fmt not in FORMATS:
        raise InputError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if dpi <= 0:
        raise InputError(f"dpi must be positive, got {dpi}")
    meta = {"pdf": {"CreationDate": None, "Producer": None}, "svg": {"Date": None}, "png": {}}[fmt]
    buf = io.BytesIO()
    with _RC_LOCK, rc_context(_SAVE_RC):
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
    return buf.getvalue()


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for pkg in ("torch", "torchvision", "timm", "numpy", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def export_bundle(spec: FigureSpec, maps_meta: dict | None = None, manifest: dict | None = None) -> bytes:
    """Zip everything needed to check and redraw a figure.

    Contents: ``maps.npz`` (``map_r{r}_c{c}`` float maps, de-duplicated ``image_{k}`` uint8 images and
    ``image_index`` ``(rows, cols)`` int array, -1 for no image), ``manifest.json``, and
    ``figure.pdf`` / ``figure.svg`` / ``figure.png``.

    Args:
        spec: the figure.
        maps_meta: JSON-ready description of the maps (e.g. per ``map_r{r}_c{c}`` key: method, layer,
            head, normalisation), stored as ``manifest["maps_meta"]``.
        manifest: the caller's provenance (checkpoint hashes, preprocessing, ...), stored as
            ``manifest["provenance"]``.

    Returns:
        the zip's bytes. The manifest also holds ``created`` (UTC ISO time), ``versions`` (python,
        torch, torchvision, timm, numpy, matplotlib), ``figure`` (:meth:`FigureSpec.to_dict`) and
        ``arrays`` (npz key -> row, column, labels, shape).
    """
    n_rows, n_cols = spec.shape
    arrays: dict[str, np.ndarray] = {}
    index = np.full((n_rows, n_cols), -1, dtype=np.int64)
    seen: dict[str, int] = {}
    listing: dict[str, Any] = {}
    for r in range(n_rows):
        for c in range(n_cols):
            image, m = spec.panels[r][c]
            key = f"map_r{r}_c{c}"
            arrays[key] = np.asarray(m)
            listing[key] = {"row": r, "col": c, "row_label": spec.row_labels[r],
                            "col_label": spec.col_labels[c], "shape": list(arrays[key].shape)}
            if image is not None:
                digest = hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()
                if digest not in seen:
                    seen[digest] = len(seen)
                    arrays[f"image_{seen[digest]}"] = image
                index[r, c] = seen[digest]
    arrays["image_index"] = index
    npz = io.BytesIO()
    np.savez_compressed(npz, **arrays)
    doc = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "figure": spec.to_dict(),
        "arrays": listing,
        "maps_meta": maps_meta or {},
        "provenance": manifest or {},
    }
    text = json.dumps(doc, indent=2, default=json_default, allow_nan=False)
    fig = build_figure(spec)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", text)
        z.writestr("maps.npz", npz.getvalue())
        for fmt in FORMATS:
            z.writestr(f"figure.{fmt}", figure_bytes(fig, fmt, spec.dpi))
    return out.getvalue()


def read_bundle(zip_bytes: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest and the arrays of a bundle (arrays loaded with ``allow_pickle=False``)."""
    try:
        with zipfile.ZipFile(io.BytesIO(zip_bytes)) as z:
            doc = json.loads(z.read("manifest.json"))
            with np.load(io.BytesIO(z.read("maps.npz")), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as e:
        raise InputError(f"not a readable figure bundle: {e}") from None
    if doc.get("format") != BUNDLE_FORMAT or doc.get("format_version") != BUNDLE_VERSION:
        raise InputError(f"not a {BUNDLE_FORMAT} v{BUNDLE_VERSION} bundle "
                         f"(format={doc.get('format')!r}, version={doc.get('format_version')!r})")
    return doc, arrays


def spec_from_bundle(zip_bytes: bytes) -> FigureSpec:
    """Rebuild the :class:`FigureSpec` stored in a bundle from its ``maps.npz`` and manifest."""
    doc, arrays = read_bundle(zip_bytes)
    fig_doc = dict(doc["figure"])
    n_rows, n_cols = fig_doc.pop("shape")
    fig_doc.pop("ranges", None)
    index = arrays["image_index"]
    try:
        panels = [[(None if index[r, c] < 0 else arrays[f"image_{index[r, c]}"], arrays[f"map_r{r}_c{c}"])
                   for c in range(n_cols)] for r in range(n_rows)]
    except (KeyError, IndexError) as e:
        raise InputError(f"bundle's maps.npz lacks an array the manifest names: {e}") from None
    known = {f.name for f in dataclasses.fields(FigureSpec)}
    return FigureSpec(panels=panels, **{k: v for k, v in fig_doc.items() if k in known})


def figure_from_bundle(zip_bytes: bytes):
    """Redraw the figure of a bundle made by :func:`export_bundle` (a new matplotlib Figure)."""
    return build_figure(spec_from_bundle(zip_bytes))
