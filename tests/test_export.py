"""Paper figures (PDF/SVG/PNG) and reproducible export bundles."""
import io
import json
import shutil
import subprocess
import threading
import zipfile
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from toast_core.errors import InputError
from toast_core.viz.export import (
    FigureSpec,
    build_figure,
    export_bundle,
    figure_bytes,
    figure_from_bundle,
    read_bundle,
)
from toast_core.viz.render import colorize

ROWS, COLS = ["linear", "lora", "toast"], ["L3", "L6", "L9", "L12"]
KIND = "CLS attention, layer 12, head mean"
IMAGE = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
ROOT = Path(__file__).resolve().parents[1]


def solid_spec(**kw) -> FigureSpec:
    """3 x 4 panels, each a constant map (value = panel index) shown at alpha 1: every panel is a
    solid square of a known viridis colour, far from white."""
    panels = [[(IMAGE, np.full((4, 4), float(r * 4 + c))) for c in range(4)] for r in range(3)]
    args = dict(panels=panels, map_kind=KIND, row_labels=ROWS, col_labels=COLS, title="Methods x layers",
                cmap="viridis", alpha=1.0, dpi=72)
    args.update(kw)
    return FigureSpec(**args)


def panel_colours(png: np.ndarray) -> list[np.ndarray]:
    """Mean colour of each large, square, non-white region, in reading order (top-left first)."""
    from scipy import ndimage

    labels, n = ndimage.label(png.min(axis=2) < 235)
    page = png.shape[0] * png.shape[1]
    found = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if h * w > page / 200 and 0.8 < h / w < 1.25:
            inner = png[sl][h // 4:-h // 4, w // 4:-w // 4]  # away from the frame
            found.append(((sl[0].start + h / 2), (sl[1].start + w / 2), inner.reshape(-1, 3).mean(0)))
    row_height = png.shape[0] / 20
    found.sort(key=lambda t: (round(t[0] / row_height), t[1]))
    return [f[2] for f in found]


def test_build_figure_grid_labels_and_no_ticks():
    fig = build_figure(solid_spec())
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 12
    assert all(not ax.get_xticks().size and not ax.get_yticks().size for ax in panels)
    texts = {t.get_text() for ax in fig.axes for t in (ax.title, ax.yaxis.label)}
    assert set(ROWS) | set(COLS) <= texts
    assert fig.get_suptitle() == "Methods x layers"
    assert KIND in fig.get_supxlabel()
    assert len(fig.axes) == 13  # 12 panels + one shared colour bar
    assert fig.canvas.manager is None  # not registered with pyplot


def test_colour_bars_follow_the_scale():
    per = build_figure(solid_spec(scale="per-panel"))
    assert all(len(ax.child_axes) == 1 for ax in per.axes)  # one inset bar per panel
    none = build_figure(solid_spec(colorbar=False))
    assert len(none.axes) == 12
    signed = solid_spec(scale="signed", cmap=None)
    assert signed.cmap == "RdBu_r"
    assert all(lo == -hi for row in signed.scales() for lo, hi in row)


@pytest.mark.skipif(not shutil.which("pdftoppm"), reason="needs poppler's pdftoppm")
def test_pdf_renders_every_panel_with_its_colour(tmp_path):
    spec = solid_spec()
    pdf = figure_bytes(build_figure(spec), "pdf")
    assert pdf.startswith(b"%PDF")
    (tmp_path / "f.pdf").write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", "72", "-png", "-singlefile", str(tmp_path / "f.pdf"), str(tmp_path / "f")],
                   check=True, timeout=60)
    png = np.asarray(Image.open(tmp_path / "f.png").convert("RGB")).astype(float)
    assert (png.min(axis=2) < 235).mean() > 0.2  # mostly content, not a blank page
    colours = panel_colours(png)
    assert len(colours) == 12
    expected = colorize(np.arange(12.0).reshape(3, 4), 0.0, 11.0, "viridis").reshape(12, 3)
    np.testing.assert_allclose(np.array(colours), expected, atol=6)


def test_pdf_embeds_truetype_and_keeps_text(tmp_path):
    pdf = figure_bytes(build_figure(solid_spec()), "pdf")
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf
    if shutil.which("pdftotext"):
        (tmp_path / "f.pdf").write_bytes(pdf)
        text = subprocess.run(["pdftotext", str(tmp_path / "f.pdf"), "-"], capture_output=True, text=True,
                              check=True, timeout=60).stdout
        for word in [KIND, *ROWS, *COLS]:
            assert word in text


def test_svg_has_real_text_elements():
    svg = figure_bytes(build_figure(solid_spec()), "svg").decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for word in [KIND, *ROWS, *COLS, "Methods x layers"]:
        assert f">{word}</text>" in svg or f">{word} (" in svg
    assert 'id="DejaVuSans-' not in svg  # no glyph outlines


def test_png_dpi_sets_pixel_size():
    fig = build_figure(solid_spec())
    w_in, h_in = fig.get_size_inches()
    small = Image.open(io.BytesIO(figure_bytes(fig, "png", dpi=50)))
    large = Image.open(io.BytesIO(figure_bytes(fig, "png", dpi=100)))
    assert small.size == (round(w_in * 50), round(h_in * 50))
    assert large.size == (round(w_in * 100), round(h_in * 100))
    with pytest.raises(InputError, match="fmt"):
        figure_bytes(fig, "jpg")


def test_same_figure_gives_same_pdf_bytes():
    spec = solid_spec()
    assert figure_bytes(build_figure(spec), "pdf") == figure_bytes(build_figure(spec), "pdf")


def test_figures_from_threads_all_embed_truetype():
    results: list[bytes] = []

    def work():
        results.append(figure_bytes(build_figure(solid_spec(dpi=36)), "pdf"))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 3
    assert all(b"/FontFile2" in pdf and b"/Type3" not in pdf for pdf in results)
    assert matplotlib.rcParams["pdf.fonttype"] == matplotlib.rcParamsDefault["pdf.fonttype"]


@pytest.mark.parametrize("module", ["render.py", "export.py"])
def test_rendering_modules_import_neither_pyplot_nor_streamlit(module):
    import ast

    tree = ast.parse((ROOT / "toast_core" / "viz" / module).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    names |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not [n for n in names if "pyplot" in n or n.startswith("streamlit")]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(panels=[[(IMAGE, np.eye(2))], []]), "rectangular"),
        (dict(row_labels=["only one"]), "row labels"),
        (dict(map_kind=" "), "map_kind"),
        (dict(scale="global"), "scale"),
        (dict(alpha=2.0), "alpha"),
        (dict(cmap="no-such-map"), "colormap"),
        (dict(panels=[[(IMAGE.astype(float), np.eye(2))]], row_labels=[], col_labels=[]), "uint8"),
        (dict(panels=[[(None, np.full((2, 2), np.nan))]], row_labels=[], col_labels=[]), "NaN"),
    ],
)
def test_spec_validation(kw, match):
    with pytest.raises(InputError, match=match):
        solid_spec(**kw)


def test_bundle_round_trips():
    spec = solid_spec()
    meta = {f"map_r{r}_c{c}": {"method": ROWS[r], "layer": COLS[c]} for r in range(3) for c in range(4)}
    provenance = {"checkpoints": {"toast": "ab" * 32}, "head": "mean", "normalisation": "softmax rows",
                  "preprocessing": {"mean": np.array([0.485, 0.456, 0.406]), "size": np.int64(224)}}
    data = export_bundle(spec, meta, provenance)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert set(z.namelist()) == {"manifest.json", "maps.npz", "figure.pdf", "figure.svg", "figure.png"}
        assert z.read("figure.pdf").startswith(b"%PDF")
        png_in_zip = z.read("figure.png")
        manifest = json.loads(z.read("manifest.json"))
    assert {"torch", "timm", "numpy", "matplotlib"} <= set(manifest["versions"])
    assert manifest["versions"]["numpy"] == np.__version__
    assert manifest["created"].endswith("+00:00")
    assert manifest["provenance"]["preprocessing"]["size"] == 224
    assert manifest["maps_meta"]["map_r2_c3"] == {"method": "toast", "layer": "L12"}
    assert manifest["figure"]["map_kind"] == KIND and "panels" not in manifest["figure"]
    assert manifest["figure"]["ranges"][0][0] == [0.0, 11.0]

    _, arrays = read_bundle(data)
    assert {f"map_r{r}_c{c}" for r in range(3) for c in range(4)} <= set(arrays)
    assert [k for k in arrays if k.startswith("image_") and k != "image_index"] == ["image_0"]  # de-duplicated
    assert arrays["image_0"].dtype == np.uint8 and (arrays["image_index"] == 0).all()
    np.testing.assert_array_equal(arrays["map_r1_c2"], spec.panels[1][2][1])

    again = figure_from_bundle(data)
    np.testing.assert_allclose(again.get_size_inches(), build_figure(spec).get_size_inches())
    assert figure_bytes(again, "png", spec.dpi) == png_in_zip  # pixel-identical redraw


def test_bundle_rejects_foreign_files_and_unserialisable_manifests():
    with pytest.raises(InputError, match="bundle"):
        read_bundle(b"not a zip")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("manifest.json", json.dumps({"format": "other"}))
        z.writestr("maps.npz", b"")
    with pytest.raises(InputError):
        read_bundle(buf.getvalue())
    with pytest.raises(InputError, match="object"):
        export_bundle(solid_spec(), {}, {"model": object()})
