"""Paper figures from the comparison: rows = models, columns = layers or images, with provenance."""
from __future__ import annotations

from typing import Optional, Sequence

from PIL import Image

from ..attribution import scope
from ..errors import InputError
from ..maps import ATTENTION_KINDS, MAP_KINDS
from .entries import ModelEntry, unique_names
from .images import DISPLAY_SIDE, display_array, image_id, preprocessing
from .panels import common_depth, model_layer
from .recordings import attribution, attribution_label, map_of, needs_full, record, resolve_pass

def model_provenance(entry: ModelEntry) -> dict:
    """What identifies a model in a manifest: method, backbone, checkpoint hash or random init."""
    info = entry.info
    return {"name": entry.name, "method": entry.method, "key": entry.key, "source": entry.source,
            "trained": entry.trained, "backbone": info.get("backbone"), "checkpoint": info.get("path"),
            "checkpoint_sha256": info.get("sha256"), "backbone_weights": info.get("backbone_weights"),
            "init": info.get("init"), "num_layers": entry.num_layers, "num_heads": entry.num_heads,
            "preprocessing": preprocessing(entry), "device": entry.device}


def figure_spec(entries: Sequence[ModelEntry], images: Sequence[tuple[str, Image.Image]], *,
                columns: str = "layers", layers: Sequence[Optional[int]] = (None,), kind: str = "cls",
                head: Optional[int] = None, pass_name: Optional[str] = None, ig_steps: int = 16,
                title: str = "", cmap: Optional[str] = None, scale: str = "shared",
                percentile: Optional[float] = None, alpha: float = 0.5, font_size: float = 8.0,
                dpi: int = 300, colorbar: bool = True, panel_inches: float = 1.6,
                display_side: int = DISPLAY_SIDE, upsample: str = "nearest"):
    """A paper figure: rows = models, columns = layers (of the first image) or images (at one layer).

    Args:
        entries: the row models; images: ``(label, PIL image)`` pairs.
        columns: ``"layers"`` or ``"images"``.
        layers: 0-based layers on the shared range (None = last); with ``columns="images"`` the first
            is used. Ignored for Integrated Gradients (one column per image).
        display_side: longest side (pixels) of the image drawn under each map.
        upsample: ``"nearest"`` (patch blocks, as the app's Compare page draws them) or ``"bilinear"``.
        Other arguments: see :class:`toast_core.viz.export.FigureSpec`.

    Returns:
        ``(spec, maps_meta, provenance)`` ready for :func:`toast_core.viz.export.build_figure` and
        :func:`toast_core.viz.export.export_bundle`.
    """
    from ..viz.export import FigureSpec

    if columns not in ("layers", "images"):
        raise InputError(f"columns must be 'layers' or 'images', got {columns!r}")
    if not entries:
        raise InputError("pick at least one model for the figure's rows")
    if not images:
        raise InputError("pick at least one image")
    if kind not in MAP_KINDS:
        raise InputError(f"unknown map kind {kind!r}; choose from {list(MAP_KINDS)}")
    entries = unique_names(entries)
    depth = common_depth(entries)
    keyed = [(label, img, image_id(img), display_array(img, display_side)) for label, img in images]
    gradient_kind = kind not in ATTENTION_KINDS  # IG or an attribution kind: no layers, predicted class
    if gradient_kind or columns == "images":
        cols = [(lbl, img, ik, disp, layers[0] if layers else None) for lbl, img, ik, disp in
                (keyed if columns == "images" else keyed[:1])]
    else:
        if not layers:
            raise InputError("pick at least one layer")
        lbl, img, ik, disp = keyed[0]
        cols = [(lbl, img, ik, disp, layer) for layer in layers]

    panels, meta, passes = [], {}, {}
    for r, e in enumerate(entries):
        row = []
        for c, (lbl, img, ik, disp, layer) in enumerate(cols):
            if gradient_kind:
                m, lyr = attribution(e, img, kind=kind, image_key=ik, steps=ig_steps), None
                p = None
                passes[e.name] = record(e, img, image_key=ik).passes
            else:
                rec = record(e, img, image_key=ik, full=needs_full(kind))
                lyr = model_layer(layer, e.num_layers, depth)
                p = resolve_pass(rec, pass_name)
                m = map_of(rec, kind, lyr, head, p)
            row.append((disp, m))
            meta[f"map_r{r}_c{c}"] = {"model": e.name, "method": e.method, "image": lbl, "image_id": ik,
                                      "map_kind": kind, "layer": None if lyr is None else lyr + 1,
                                      "head": "mean" if head is None else head, "pass": p,
                                      "ig_steps": ig_steps if kind == "integrated_gradients" else None}
        panels.append(row)

    if kind == "integrated_gradients":
        kind_label = f"{MAP_KINDS[kind]} ({ig_steps} steps, predicted class)"
        col_labels = [c[0] for c in cols]
    elif gradient_kind:  # an attribution kind: say what it explains where a model has two passes
        kind_label = attribution_label(kind, ()).replace(" · ", ", ")
        two_pass = [p for p in passes.values() if len(p) > 1]
        if two_pass:
            kind_label += f" (two-pass models: {scope(kind, two_pass[0])})"
        col_labels = [c[0] for c in cols]
    else:
        head_txt = "head mean" if head is None else f"head {head + 1}"  # counted from 1, like layers
        pass_txt = "" if pass_name in (None, "final") else f", {pass_name} pass"
        kind_label = MAP_KINDS[kind] + (f", {head_txt}" if kind == "cls" else "") + pass_txt
        if columns == "layers":
            col_labels = [f"layer {model_layer(c[4], depth, depth) + 1}" for c in cols]
            kind_label += f" · {cols[0][0]}"
        else:
            col_labels = [c[0] for c in cols]
            kind_label += f" · layer {model_layer(cols[0][4], depth, depth) + 1}/{depth}"
    row_labels = [e.name + ("" if e.trained else " (untrained)") for e in entries]
    spec = FigureSpec(panels=panels, map_kind=kind_label, row_labels=row_labels, col_labels=col_labels,
                      title=title, cmap=cmap, scale=scale, percentile=percentile, alpha=alpha,
                      font_size=font_size, dpi=dpi, colorbar=colorbar, panel_inches=panel_inches,
                      upsample=upsample)
    from .. import __version__

    provenance = {
        "toast_core": __version__,
        "models": [model_provenance(e) for e in entries],
        "images": [{"label": lbl, "image_id": ik, "size": list(img.size)} for lbl, img, ik, _ in keyed],
        "map_kind": kind, "map_label": kind_label, "head": "mean" if head is None else head,
        "pass": pass_name or "final", "columns": columns,
        "layers": [None if lyr is None else model_layer(lyr, depth, depth) + 1 for lyr in layers],
        "normalisation": {"scale": scale, "percentile": percentile,
                          "maps": "raw values (attention probabilities, token norms, |IG| per patch, or the "
                                  "attribution kind's own units; attnlrp is signed)"},
        "display": {"image_side": display_side, "alpha": alpha, "upsample": upsample},
    }
    return spec, meta, provenance
