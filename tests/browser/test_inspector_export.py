"""TOAST inspector steering and the Export page's downloads, in real headless Chromium."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser.expect import make_image, parse_predictions, tiny_entries
from tests.browser.ui import (chart_y, chart_z, deselect, exceptions, goto_page, open_app, set_slider,
                              slider_value, upload, wait_charts, wait_rerun, wait_text)

pytestmark = pytest.mark.browser


def _inspection(img_path: Path, td_scale: float, method: str = "toast"):
    import toast_core as tc
    from toast_core import compare as cmp

    image = cmp.working_copy(tc.load_image(img_path.read_bytes()))
    return cmp.inspect_toast(tiny_entries([method])[0], image, td_scale=td_scale)


def test_toast_inspector_steering_slider_updates_maps_and_prediction(page, app_server, tmp_path):
    open_app(page, app_server.url)
    img = make_image(tmp_path / "steer.png", seed=21)
    upload(page, img)
    goto_page(page, "TOAST inspector")
    wait_charts(page, 4)
    assert exceptions(page) == []
    assert slider_value(page, "Top-down steering") == 1.0
    depth = int(slider_value(page, "Layer"))
    as_trained = _inspection(img, 1.0)
    np.testing.assert_allclose(chart_z(page, ".st-key-ins-top-down"), as_trained.top_down[depth - 1], atol=1e-6)
    np.testing.assert_allclose(chart_z(page, ".st-key-ins-bottom-up"), as_trained.bottom_up[depth - 1], atol=1e-6)
    np.testing.assert_allclose(chart_z(page, ".st-key-ins-gate"), as_trained.gate, atol=1e-6)

    for scale in (0.0, 2.0):
        set_slider(page, "Top-down steering", scale)
        wait_charts(page, 4)
        assert exceptions(page) == []
        want = _inspection(img, scale)
        box = page.locator(".st-key-ins-predictions")
        assert f"Prediction at steering {scale:.2f}" in box.inner_text()
        shown = parse_predictions(box.locator('[data-testid="stMarkdownContainer"]', has_text="top-").inner_text()
                                  .split("top-", 1)[1].split(":", 1)[1])
        assert [lbl for lbl, _ in shown] == [lbl for lbl, _ in want.predictions]
        for (_, a), (_, b) in zip(shown, want.predictions):
            assert abs(a - b) <= 0.0006
        z_td = np.asarray(chart_z(page, ".st-key-ins-top-down"))
        np.testing.assert_allclose(z_td, want.top_down[depth - 1], atol=1e-6)
        # the first pass never changes with steering
        np.testing.assert_allclose(chart_z(page, ".st-key-ins-bottom-up"), as_trained.bottom_up[depth - 1], atol=1e-6)
        if scale == 0.0:  # no top-down signal: the second pass is the first pass
            np.testing.assert_allclose(z_td, want.bottom_up[depth - 1], atol=1e-5)
        # the top-down term against the values it is added to (%), per layer: applied and as trained;
        # block 1's values do not depend on the steering, so there applied = scale x as trained
        applied, trained = np.asarray(chart_y(page, ".st-key-ins-td-chart", 0)), np.asarray(chart_y(page, ".st-key-ins-td-chart", 1))
        np.testing.assert_allclose(trained, 100 * as_trained.value_ratio_trained, rtol=1e-5)
        np.testing.assert_allclose(applied, 100 * want.value_ratio, rtol=1e-4, atol=1e-12)
        assert applied[0] == pytest.approx(scale * trained[0], rel=1e-4, abs=1e-12)
        assert trained.max() > 0

    # the inspector's own layer slider
    set_slider(page, "Layer", 1)
    wait_charts(page, 4)
    np.testing.assert_allclose(chart_z(page, ".st-key-ins-top-down"), _inspection(img, 2.0).top_down[0], atol=1e-6)


def _download(page, key: str, dest: Path) -> Path:
    button = page.locator(f".st-key-{key} button").first
    with page.expect_download(timeout=120_000) as info:
        button.click()
    download = info.value
    assert download.failure() is None, download.failure()
    download.save_as(dest)
    assert dest.stat().st_size > 0
    return dest


def _panel_images(pdf: Path, min_side: int = 24) -> list[tuple[int, int]]:
    """(width, height) of the raster images embedded in a PDF that are panel-sized (not colour bars)."""
    out = subprocess.run(["pdfimages", "-list", str(pdf)], capture_output=True, text=True, check=True).stdout
    sizes = []
    for line in out.splitlines()[2:]:
        cols = line.split()
        if len(cols) > 4 and cols[2] == "image":
            w, h = int(cols[3]), int(cols[4])
            if min(w, h) >= min_side:
                sizes.append((w, h))
    return sizes


@pytest.mark.skipif(not (shutil.which("pdftoppm") and shutil.which("pdftotext") and shutil.which("pdfimages")),
                    reason="needs poppler-utils (pdftoppm, pdftotext, pdfimages)")
def test_export_downloads_pdf_svg_png_with_every_panel(page, app_server, tmp_path):
    open_app(page, app_server.url)
    img = make_image(tmp_path / "figure.png", seed=31, size=(120, 90))
    upload(page, img)
    goto_page(page, "Export")
    page.locator(".st-key-export-preview img").first.wait_for()
    deselect(page, "Rows (methods)", ["finetune", "vpt-shallow", "toast-lite"])
    rows = ["linear", "lora", "vpt-deep", "toast"]
    caption = wait_text(page, ".st-key-export-preview", rf"{len(rows)}×\d+ panels")
    page.locator(".st-key-export-preview img").first.wait_for()
    assert exceptions(page) == []
    m = re.search(r"(\d+)×(\d+) panels", caption)
    assert m, caption
    n_rows, n_cols = int(m.group(1)), int(m.group(2))
    assert n_rows == len(rows) and n_cols >= 2, caption

    pdf = _download(page, "dl-pdf", tmp_path / "figure.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
    # renders, and not blank
    subprocess.run(["pdftoppm", "-r", "60", "-png", "-singlefile", str(pdf), str(tmp_path / "pdf")], check=True,
                   timeout=120)
    rendered = np.asarray(Image.open(tmp_path / "pdf.png").convert("RGB"))
    assert rendered.std() > 10, "the PDF renders blank"
    # one raster panel per (row, column), all of the uploaded image's aspect
    images = _panel_images(pdf)
    panels = [(w, h) for w, h in images if abs(w / h - 120 / 90) < 0.05]
    assert len(panels) == n_rows * n_cols, f"{len(panels)} panels in the PDF, expected {n_rows}×{n_cols}: {images}"
    assert len(images) - len(panels) <= 1, f"unexpected images besides the panels and a colour bar: {images}"
    # labels are real text: every row (method) and column (layer) label
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    for name in rows:
        assert name in text, f"row label {name!r} missing from the PDF text"
    assert len(re.findall(r"layer \d+", text)) == n_cols, text
    assert "finetune" not in text

    svg = _download(page, "dl-svg", tmp_path / "figure.svg").read_text()
    assert "<svg" in svg and "<text" in svg
    texts = " ".join(re.findall(r"<text[^>]*>([^<]*)</text>", svg))
    for name in rows:
        assert name in texts, f"row label {name!r} is not an SVG <text>"
    sizes = [Image.open(io.BytesIO(base64.b64decode(re.sub(r"\s+", "", b64)))).size
             for b64 in re.findall(r'<image\b[^>]*?href="data:image/png;base64,([^"]+)"', svg, flags=re.S)]
    assert sum(abs(w / h - 120 / 90) < 0.05 for w, h in sizes) == n_rows * n_cols, sizes

    png = _download(page, "dl-png", tmp_path / "figure.png.download")
    im = Image.open(io.BytesIO(png.read_bytes()))
    im.load()
    assert im.format == "PNG" and im.width > 300 and im.height > 300
    assert np.asarray(im.convert("RGB")).std() > 10
    assert exceptions(page) == [] and app_server.tracebacks() == []


def test_clicking_a_patch_takes_xi_from_it(page, app_server, tmp_path):
    """A click on the bottom-up map (a Plotly event only a real browser produces) makes that patch's
    token ξ: the ξ radio switches to "from a patch", the row/col fields show the patch, and the gate and
    prediction are those toast_core computes with ξ from that patch."""
    import toast_core as tc
    from toast_core import compare as cmp

    open_app(page, app_server.url)
    img = make_image(tmp_path / "click.png", seed=41)
    upload(page, img)
    goto_page(page, "TOAST inspector")
    wait_charts(page, 4)
    area = page.locator(".st-key-ins-bottom-up .js-plotly-plot .nsewdrag").first
    area.scroll_into_view_if_needed()
    box = area.bounding_box()
    fx, fy = 0.8, 0.3  # right, upper part of the map
    wait_rerun(page, lambda: page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy))
    wait_charts(page, 4)
    assert exceptions(page) == []
    row = int(page.locator(".st-key-ins-row input").first.input_value())
    col = int(page.locator(".st-key-ins-col input").first.input_value())
    h, w = np.asarray(chart_z(page, ".st-key-ins-gate")).shape
    assert abs(row - fy * h) <= 1.5 and abs(col - fx * w) <= 1.5, (row, col, h, w)
    # the row/col fields are enabled only when ξ comes from a patch
    assert page.locator(".st-key-ins-row input").first.is_enabled()
    assert "bottom-up token of patch" in page.locator(".st-key-ins-predictions").inner_text()
    image = cmp.working_copy(tc.load_image(img.read_bytes()))
    want = cmp.inspect_toast(tiny_entries(["toast"])[0], image, xi_patch=(row, col))
    np.testing.assert_allclose(chart_z(page, ".st-key-ins-gate"), want.gate, atol=1e-6)
    learned = cmp.inspect_toast(tiny_entries(["toast"])[0], image)
    assert not np.allclose(want.gate, learned.gate), "ξ from a patch should change the gate"
