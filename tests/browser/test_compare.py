"""The Compare page in real headless Chromium: upload, one panel per selected method with the maps and
predictions toast_core computes for that image, the layer slider, and hostile uploads."""
from __future__ import annotations

import re

import numpy as np
import pytest

from tests.browser.expect import expected_panels, make_image, parse_predictions
from tests.browser.ui import (chart_z, deselect, exceptions, hover_text, open_app, selectbox_value,
                              selected_values, set_slider, upload, wait_charts)

pytestmark = pytest.mark.browser

METHODS = ["linear", "finetune", "lora", "vpt-shallow", "vpt-deep", "toast", "toast-lite"]


def panel_sel(method: str) -> str:
    return f".st-key-panel-{method}"


def check_panel(page, method: str, expected, atol: float = 1e-6) -> None:
    """The panel of ``method`` shows exactly the expected map and predictions."""
    z = np.asarray(chart_z(page, panel_sel(method)), dtype=np.float64)
    assert z.shape == expected.map.shape, f"{method}: map shape {z.shape} != {expected.map.shape}"
    np.testing.assert_allclose(z, expected.map, atol=atol, rtol=1e-5, err_msg=f"{method}: map differs")
    shown = parse_predictions(page.locator(f".st-key-preds-{method}").inner_text())
    assert [lbl for lbl, _ in shown] == [lbl for lbl, _ in expected.predictions], method
    for (_, p_shown), (_, p_exp) in zip(shown, expected.predictions):
        assert abs(p_shown - p_exp) <= 0.0006, f"{method}: {p_shown} vs {p_exp}"


def test_upload_shows_every_method_with_its_own_maps(page, app_server, tmp_path):
    open_app(page, app_server.url)
    img = make_image(tmp_path / "upload.png", seed=11)
    upload(page, img)
    wait_charts(page, len(METHODS))
    assert exceptions(page) == []
    assert selectbox_value(page, "Image") == "upload/upload.png", "the upload is not the current image"
    assert sorted(selected_values(page, "Methods")) == sorted(METHODS)
    for m in METHODS:
        assert page.locator(panel_sel(m)).count() == 1, f"no panel for {m}"
    want = expected_panels(img, METHODS)
    for m in METHODS:
        check_panel(page, m, want[m])
        assert "layer 4/4" in page.locator(panel_sel(m)).inner_text()
    # hovering a map shows the patch and its value
    text = hover_text(page, panel_sel("lora"), 0.5, 0.5)
    m = re.search(r"patch \(row (\d+), col (\d+)\)\s*value ([-0-9.e]+)", text)
    assert m, f"hover label {text!r}"
    r, c, v = int(m.group(1)), int(m.group(2)), float(m.group(3))
    assert abs(v - want["lora"].map[r, c]) <= 1e-3 * abs(want["lora"].map[r, c]) + 1e-6, (r, c, v)


def test_selected_methods_only_and_layer_slider(page, app_server, tmp_path):
    open_app(page, app_server.url)
    img = make_image(tmp_path / "second.jpg", seed=12)
    upload(page, img)
    deselect(page, "Methods", ["finetune", "vpt-shallow", "toast-lite"])
    chosen = ["linear", "lora", "vpt-deep", "toast"]
    assert selected_values(page, "Methods") == chosen
    wait_charts(page, len(chosen))
    assert page.locator('[class*="st-key-panel-"]').count() == len(chosen)
    for m in ("finetune", "vpt-shallow", "toast-lite"):
        assert page.locator(panel_sel(m)).count() == 0, f"{m} was deselected but is shown"

    last = expected_panels(img, chosen)
    first = expected_panels(img, chosen, layer=0)
    for m in chosen:
        check_panel(page, m, last[m])
    set_slider(page, "Layer", 1)
    wait_charts(page, len(chosen))
    assert exceptions(page) == []
    for m in chosen:
        assert "layer 1/4" in page.locator(panel_sel(m)).inner_text(), m
        check_panel(page, m, first[m])
        assert not np.allclose(first[m].map, last[m].map), "layer 1 and layer 4 maps should differ"


def _hostile_files(tmp_path):
    import io

    from PIL import Image

    good = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(good, "PNG")
    data = good.getvalue()
    files = {
        "truncated.png": (data[: len(data) // 2], "truncated"),
        "empty.png": (b"", "empty"),
        "script.jpg": (b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'></svg>", "svg"),
        "tiny.png": (None, "small"),  # 1x1 pixel
    }
    out = []
    for name, (blob, hint) in files.items():
        path = tmp_path / name
        if blob is None:
            Image.new("RGB", (1, 1)).save(path)
        else:
            path.write_bytes(blob)
        out.append((path, hint))
    return out


def test_hostile_uploads_get_a_message_and_the_app_keeps_working(page, app_server, tmp_path):
    open_app(page, app_server.url)
    wait_charts(page, len(METHODS))
    for path, hint in _hostile_files(tmp_path):
        upload(page, path)
        err = page.locator('[data-testid="stAlertContentError"]', has_text=path.name)
        assert err.count() == 1, f"no error message for {path.name}"
        text = err.inner_text()
        assert "Could not use" in text and hint in text.lower(), f"{path.name}: unclear message {text!r}"
        assert exceptions(page) == [], f"{path.name} raised in the script"
        # the previous image is still compared
        assert page.locator('[class*="st-key-panel-"]').count() == len(METHODS)
    # a good upload afterwards works as usual
    img = make_image(tmp_path / "after.png", seed=13)
    upload(page, img)
    wait_charts(page, len(METHODS))
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    want = expected_panels(img, ["toast"])
    check_panel(page, "toast", want["toast"])
    assert app_server.alive and app_server.tracebacks() == []


def _corpus_cases(tmp_path):
    """The hostile/unusual image corpus (tests/hostile_corpus.py) as uploadable files: every case that
    is a file under the upload limit, renamed ``<case>.png`` (the uploader filters by extension; the
    loader decides by content). ``TOAST_CORPUS_BROWSER=all`` runs every case, else an even sample."""
    import os
    import shutil

    from tests.hostile_corpus import build_corpus

    cases = [c for c in build_corpus(tmp_path / "corpus") if c.path.is_file() and c.path.stat().st_size < 20 * 2**20]
    if os.environ.get("TOAST_CORPUS_BROWSER", "").strip().lower() != "all":
        step = max(1, len(cases) // 8)
        cases = cases[::step]
    out = []
    for c in cases:
        dest = tmp_path / "upload" / f"{c.name}.png"
        dest.parent.mkdir(exist_ok=True)
        shutil.copyfile(c.path, dest)
        out.append((c, dest))
    return out


def test_hostile_corpus_through_the_page(page, app_server, tmp_path):
    open_app(page, app_server.url)
    wait_charts(page, len(METHODS))
    cases = _corpus_cases(tmp_path)
    current = selectbox_value(page, "Image")
    for case, path in cases:
        upload(page, path)
        assert exceptions(page) == [], f"{case.name}: exception on the page"
        errors = page.locator('[data-testid="stAlertContentError"]', has_text=path.name)
        if case.expect == "ok":
            assert errors.count() == 0, f"{case.name}: refused: {errors.first.inner_text()}"
            current = f"upload/{path.name}"
            assert selectbox_value(page, "Image") == current, case.name
        else:
            assert errors.count() == 1, f"{case.name}: no error message"
            text = errors.inner_text()
            assert case.message.lower() in text.lower(), f"{case.name}: {text!r} lacks {case.message!r}"
            assert selectbox_value(page, "Image") == current, f"{case.name}: the current image changed"
        wait_charts(page, len(METHODS))
        assert page.locator('[class*="st-key-panel-"]').count() == len(METHODS), case.name
    assert app_server.alive and app_server.tracebacks() == []
    print(f"\n{len(cases)} corpus files uploaded through the page: "
          f"{sum(c.expect == 'ok' for c, _ in cases)} shown, {sum(c.expect != 'ok' for c, _ in cases)} refused with their message")
