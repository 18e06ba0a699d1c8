"""``figure``: the app's paper figure from the command line (rows = models, columns = layers or images).

Examples::

    python -m toast_core figure --checkpoints runs/*/model.safetensors --images cat.jpg \\
        --layers 3 6 9 12 --kind cls --out fig.pdf
    python -m toast_core figure --checkpoints demo --images a.png b.png --columns images --layers 12 \\
        --kind rollout --out fig.svg --bundle fig.zip

``--checkpoints`` takes checkpoint files/directories, ``demo`` (every trained demo checkpoint) or
``tiny:<method>`` / ``tiny`` (random tiny models; for trying the command). Layers are 1-based, as on
screen. The format follows ``--out``'s suffix (.pdf, .svg, .png, or .zip for the bundle).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="checkpoint paths, 'demo', 'tiny' or tiny:<method> (one figure row each)")
    parser.add_argument("--images", nargs="+", required=True, help="image files (JPEG, PNG, WebP, BMP, TIFF)")
    parser.add_argument("--layers", nargs="*", default=None,
                        help="1-based layers, or 'last' (default: last); with --columns images the first is used")
    parser.add_argument("--columns", choices=("layers", "images"), default=None,
                        help="what the columns are (default: images when several images are given)")
    parser.add_argument("--kind", default="cls", choices=("cls", "rollout", "token_norm", "integrated_gradients"))
    parser.add_argument("--head", default="mean",
                        help="'mean' or a head number counted from 1, like --layers (CLS attention only)")
    parser.add_argument("--pass", dest="pass_name", default="final", choices=("final", "first"),
                        help="TOAST: the prediction (top-down) pass or the first (bottom-up) pass")
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument("--title", default="")
    parser.add_argument("--cmap", default=None, help="matplotlib colormap (default inferno; RdBu_r when signed)")
    parser.add_argument("--scale", default="shared", choices=("shared", "per-panel", "signed"))
    parser.add_argument("--percentile", type=float, default=None)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--font-size", type=float, default=8.0)
    parser.add_argument("--dpi", type=int, default=300)
    parser.add_argument("--panel-inches", type=float, default=1.6)
    parser.add_argument("--no-colorbar", action="store_true")
    parser.add_argument("--display-side", type=int, default=320,
                        help="longest side in pixels of the image drawn under each map")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--out", required=True, help="output file: .pdf, .svg, .png or .zip (bundle)")
    parser.add_argument("--bundle", default=None, help="also write the zip bundle (raw maps + manifest) here")


def _model_keys(specs: list[str]) -> list[str]:
    from ..errors import InputError
    from ..methods import available_methods

    keys: list[str] = []
    for s in specs:
        if s == "tiny":
            keys += [f"tiny:{m}" for m in available_methods()]
        elif s == "demo":
            try:
                from .. import demo
            except ImportError:
                raise InputError("'demo' needs toast_core.demo (prepare-demo)") from None
            finder = next((getattr(demo, f) for f in ("demo_checkpoint_paths", "checkpoint_paths",
                                                       "find_demo_checkpoints", "demo_checkpoints")
                           if hasattr(demo, f)), None)
            found = finder() if finder else []
            paths = [p for p in (found.values() if isinstance(found, dict) else found) if p and Path(p).exists()]
            if not paths:
                raise InputError("no demo checkpoints yet: run `python -m toast_core prepare-demo`")
            keys += [f"ckpt:{p}" for p in paths]
        elif s.startswith("tiny:"):
            keys.append(s)
        else:
            keys.append(f"ckpt:{Path(s).expanduser().resolve()}")
    return keys


def _counted_from_one(value, option: str, extra: str = "") -> int:
    """A layer or head number as people count it (from 1, like the app's labels) -> the 0-based index."""
    from ..errors import InputError

    try:
        n = int(value)
    except ValueError:
        raise InputError(f"{option} takes numbers counted from 1{extra}, got {value!r}") from None
    if n < 1:
        raise InputError(f"{option} counts from 1, got {n}")
    return n - 1


def _layers(values) -> list:
    if not values:
        return [None]
    return [None if str(v).lower() in ("last", "-1") else _counted_from_one(v, "--layers", " or 'last'")
            for v in values]


def _head(value: str) -> int:
    return _counted_from_one(value, "--head", " or 'mean'")


def run(args) -> int:
    from .. import compare as cmp
    from ..errors import InputError
    from ..viz.export import FORMATS, build_figure, export_bundle, figure_bytes
    from ..io.images import load_image

    out = Path(args.out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS + ("zip",):
        raise InputError(f"--out must end in .pdf, .svg, .png or .zip, got {out.name}")
    device = args.device or cmp.default_device()
    entries = cmp.unique_names([cmp.load_entry(k, device) for k in _model_keys(args.checkpoints)])
    images = [(Path(p).stem, load_image(p)) for p in args.images]
    columns = args.columns or ("images" if len(images) > 1 else "layers")
    head = None if args.head == "mean" else _head(args.head)
    spec, meta, provenance = cmp.figure_spec(
        entries, images, columns=columns, layers=_layers(args.layers), kind=args.kind, head=head,
        pass_name=args.pass_name, ig_steps=args.ig_steps, title=args.title, cmap=args.cmap, scale=args.scale,
        percentile=args.percentile, alpha=args.alpha, font_size=args.font_size, dpi=args.dpi,
        colorbar=not args.no_colorbar, panel_inches=args.panel_inches, display_side=args.display_side)
    provenance["images"] = [dict(d, path=str(Path(p).resolve())) for d, p in zip(provenance["images"], args.images)]
    provenance["command"] = "python -m toast_core figure"
    if fmt == "zip":
        data = export_bundle(spec, meta, provenance)
    else:
        data = figure_bytes(build_figure(spec), fmt, args.dpi)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data) // 1024} KB, {spec.shape[0]}x{spec.shape[1]} panels, {spec.map_kind})")
    if args.bundle:
        Path(args.bundle).write_bytes(export_bundle(spec, meta, provenance))
        print(f"wrote {args.bundle}")
    return 0
