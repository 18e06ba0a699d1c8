"""The Streamlit app, headless (streamlit.testing.v1.AppTest): one test per page, uploads (valid and
hostile), and a run on the trained demo checkpoints when they exist.

The pages run on random tiny models here (``TOAST_APP_MODELS=tiny``; the pages label them untrained).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import toast_core as tc

APP = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
METHODS = tc.available_methods()


pytestmark = pytest.mark.usefixtures("restore_torch_threads", "app_tiny_models")


def _app(page: str | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=180).run()
    _no_exception(at)
    if page:
        at.switch_page(page).run()
        _no_exception(at)
    return at


def _no_exception(at) -> None:
    assert not at.exception, [e.message for e in at.exception]


def _blocks(node, out=None) -> dict:
    """Every keyed container/element in the tree: user key -> node."""
    out = {} if out is None else out
    for child in getattr(node, "children", {}).values():
        proto = getattr(child, "proto", None)
        pid = getattr(proto, "id", "") if proto is not None else ""
        if isinstance(pid, str) and pid.startswith("$$ID-"):
            out[pid.split("-", 2)[2]] = child
        _blocks(child, out)
    return out


def _charts(at) -> dict:
    """Plotly charts by key -> parsed figure spec."""
    return {k: json.loads(v.proto.spec) for k, v in _blocks(at.main).items()
            if hasattr(v, "proto") and type(v.proto).__name__ == "PlotlyChart"}


def _z(trace) -> np.ndarray:
    """A plotly trace's z as an array (plotly serialises arrays as typed base64)."""
    import base64

    z = trace["z"]
    if isinstance(z, dict):
        shape = tuple(int(v) for v in str(z["shape"]).split(","))
        return np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(shape)
    return np.asarray(z, dtype=float)


def _png(color=(200, 30, 30), size=(120, 90)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    img.paste((20, 200, 40), (10, 10, 50, 50))
    img.save(buf, format="PNG")
    return buf.getvalue()


def _slug(name: str) -> str:
    from app.state import slug

    return slug(name)


# ------------------------------------------------------------------------------------------------
# Compare
# ------------------------------------------------------------------------------------------------

def test_compare_page_shows_every_method_with_hover_and_controls():
    at = _app()
    keys = _blocks(at.main)
    for m in METHODS:
        assert f"panel-{_slug(m)}" in keys and f"preds-{_slug(m)}" in keys
    charts = _charts(at)
    fig = charts[f"fig-{_slug('toast')}"]
    heat = [t for t in fig["data"] if t["type"] == "heatmap"][0]
    assert "patch (row" in heat["hovertemplate"] and "value" in heat["hovertemplate"]
    # one shared colour scale by default
    ranges = {(t["zmin"], t["zmax"]) for c in charts.values() for t in c["data"] if t["type"] == "heatmap"}
    assert len(ranges) == 1
    assert any("Untrained" in w.value for w in at.warning)  # random models are labelled
    assert at.selectbox(key="keep-image").value  # a default image: the first comparison is on screen
    assert "Device:" in " ".join(c.value for c in at.sidebar.caption)

    at.slider(key="cmp-layer").set_value(2).run()
    _no_exception(at)
    assert any("layer 2/4" in c.value for c in at.caption)
    at.radio(key="cmp-heads").set_value("all heads").run()
    _no_exception(at)
    assert f"heads-{_slug('lora')}" in _blocks(at.main)
    at.radio(key="cmp-scale").set_value("per-panel").run()
    at.selectbox(key="cmp-cmap").set_value("viridis").run()
    at.slider(key="cmp-alpha").set_value(0.3).run()
    _no_exception(at)
    ranges = {(t["zmin"], t["zmax"]) for c in _charts(at).values() for t in c["data"] if t["type"] == "heatmap"}
    assert len(ranges) > 1
    # difference view: no (all-zero) panel for the reference, a signed scale, and the colormap box
    # names the diverging colormap that is drawn
    at.toggle(key="cmp-diff").set_value(True).run()
    at.selectbox(key="cmp-reference").set_value("lora").run()
    _no_exception(at)
    heat = {k: [t for t in c["data"] if t["type"] == "heatmap"][0] for k, c in _charts(at).items()
            if k.startswith("fig-")}
    assert f"fig-{_slug('lora')}" not in heat and f"fig-{_slug('linear')}" in heat
    assert at.selectbox(key="cmp-cmap-signed").value == "RdBu_r"
    assert np.abs(_z(heat[f"fig-{_slug('toast')}"])).max() > 0
    zmin, zmax = heat[f"fig-{_slug('toast')}"]["zmin"], heat[f"fig-{_slug('toast')}"]["zmax"]
    assert zmin == pytest.approx(-zmax)  # signed scale
    # fewer methods, other kinds
    at.multiselect(key="keep-methods").set_value(["linear", "toast"]).run()
    for kind in ("rollout", "token_norm", "integrated_gradients"):
        at.selectbox(key="cmp-kind").set_value(kind).run()
        _no_exception(at)
    keys = _blocks(at.main)
    assert f"panel-{_slug('toast')}" in keys and f"panel-{_slug('lora')}" not in keys
    assert any("Integrated Gradients" in c.value for c in at.caption)


def test_upload_valid_and_hostile_files():
    at = _app()
    at.file_uploader(key="upload").upload("my photo.png", _png(), "image/png").run()
    _no_exception(at)
    assert at.selectbox(key="keep-image").value == "upload/my photo.png"
    assert not at.error
    assert len(_charts(at)) >= len(METHODS)
    for name, data, words in [
        ("noise.png", os.urandom(4096), "not an image"),
        ("cut.png", _png()[:150], "truncated"),
        ("vector.png", b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>', "SVG"),
        ("empty.jpg", b"", "empty"),
    ]:
        at.file_uploader(key="upload").upload(name, data, "image/png").run()
        _no_exception(at)
        msgs = " ".join(e.value for e in at.error)
        assert name in msgs and words.lower() in msgs.lower(), msgs
        # the page keeps working on the last good image
        assert at.selectbox(key="keep-image").value == "upload/my photo.png"
        assert f"panel-{_slug('toast')}" in _blocks(at.main)


def test_hostile_corpus_through_the_app(tmp_path):
    """Every file of the hostile/unusual corpus, uploaded in one session: a specific message for each
    refused file, the page switches to each readable one, and nothing ever raises."""
    from tests.hostile_corpus import build_corpus

    cases = [c for c in build_corpus(tmp_path / "corpus") if c.data is not None and len(c.data) <= 20 * 2**20]
    assert len(cases) >= 30
    at = _app()
    at.multiselect(key="keep-methods").set_value(["toast"]).run()  # one panel per rerun keeps this quick
    refused = loaded = 0
    for i, case in enumerate(cases):
        name = f"{i:02d}_{case.name}{case.path.suffix}"
        at.file_uploader(key="upload").upload(name, case.data, "application/octet-stream").run()
        _no_exception(at)
        msgs = " ".join(e.value for e in at.error)
        if case.expect == "error":
            assert name in msgs and case.message.lower() in msgs.lower(), (case.name, msgs)
            refused += 1
        else:
            assert not at.error, (case.name, msgs)
            assert at.selectbox(key="keep-image").value == f"upload/{name}"
            loaded += 1
        assert f"panel-{_slug('toast')}" in _blocks(at.main)
    assert refused >= 15 and loaded >= 5


# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------

def test_layers_page_shows_a_strip_per_method():
    at = _app("views/layers.py")
    keys = _blocks(at.main)
    for m in METHODS:
        assert f"strip-{_slug(m)}" in keys
    strip = keys[f"strip-{_slug('vpt-deep')}"]
    images = [c for c in _walk(strip) if type(getattr(c, "proto", None)).__name__ == "ImageList"]
    assert len(images) == 1 and len(images[0].proto.imgs) == 4  # 4 layers
    at.selectbox(key="lay-kind").set_value("token_norm").run()
    at.radio(key="lay-scale").set_value("per panel").run()
    at.radio(key="lay-pass").set_value("first").run()
    _no_exception(at)
    assert any("bottom-up" in m.value for m in at.markdown)
    at.selectbox(key="lay-kind").set_value("legrad").run()  # a gradient kind: the progress-bar path
    _no_exception(at)
    keys = _blocks(at.main)
    assert all(f"strip-{_slug(m)}" in keys for m in METHODS)


def _walk(node):
    for child in getattr(node, "children", {}).values():
        yield child
        yield from _walk(child)


# ------------------------------------------------------------------------------------------------
# TOAST inspector
# ------------------------------------------------------------------------------------------------

def test_inspector_steering_and_xi_from_a_patch():
    at = _app("views/inspector.py")
    keys = _blocks(at.main)
    for k in ("ins-bottom-up", "ins-top-down", "ins-gate", "ins-td-chart", "ins-predictions", "ins-strips"):
        assert k in keys, k
    chart = _charts(at)["ins-td-chart"]
    assert len(chart["data"]) == 3 and len(chart["data"][0]["x"]) == 4  # applied, as trained, largest token
    assert chart["data"][0]["y"] == pytest.approx(chart["data"][1]["y"])  # steering 1 = as trained
    assert min(chart["data"][1]["y"]) > 0  # |W_v td| / |v| in %
    picker = _charts(at)["ins-bottom-up"]
    assert any(t.get("name") == "patches" for t in picker["data"])  # clickable patch centres

    at.slider(key="ins-scale").set_value(0.0).run()
    _no_exception(at)
    assert any("steering 0.00" in m.label for m in at.metric)
    assert any("max |top-down − bottom-up| at this layer: 0" in c.value for c in at.caption)
    assert max(_charts(at)["ins-td-chart"]["data"][0]["y"]) == 0  # nothing added at steering 0
    at.slider(key="ins-scale").set_value(2.0).run()
    chart = _charts(at)["ins-td-chart"]
    # Block 1's values are the same at any steering (its input is the image), so its ratio doubles.
    assert chart["data"][0]["y"][0] == pytest.approx(2 * chart["data"][1]["y"][0], rel=1e-4)
    at.radio(key="ins-xi").set_value("patch").run()
    at.number_input(key="ins-row").set_value(1).run()
    at.number_input(key="ins-col").set_value(6).run()
    _no_exception(at)
    assert any("row 1, col 6" in m.value for m in at.markdown)
    picker = _charts(at)["ins-bottom-up"]
    assert any(t.get("name") == "ξ patch" for t in picker["data"])
    at.selectbox(key="ins-model").set_value("toast-lite").run()
    _no_exception(at)


def test_patch_from_a_plotly_click():
    from app.state import patch_from_point

    assert patch_from_point({"customdata": [2, 5], "x": 0, "y": 0}, (8, 8), (320, 320)) == (2, 5)
    assert patch_from_point({"x": 319.4, "y": 0.0}, (8, 8), (320, 320)) == (0, 7)
    assert patch_from_point({"x": 100.0, "y": 200.0}, (4, 8), (200, 400)) == (3, 2)
    assert patch_from_point({"x": "a"}, (8, 8), (320, 320)) is None


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------

def _checkpoint_bytes(tmp_path) -> bytes:
    from tests.conftest import tiny_model
    from toast_core.io.checkpoints import save_checkpoint

    path = save_checkpoint(tiny_model("vpt-deep"), tmp_path / "mine.safetensors",
                           meta={"metrics": {"test_accuracy": 0.75}})
    return path.read_bytes()


def test_models_page_lists_and_loads_checkpoints(tmp_path, monkeypatch):
    at = _app("views/models.py")
    table = at.dataframe[0].value
    assert list(table["method"]) == METHODS
    assert {"trainable", "accuracy", "layers × heads", "classes"} <= set(table.columns)
    assert len(table.columns) <= 7  # fits a 1024 px window; backbone and source are under Details
    details = " ".join(m.value for m in at.expander[0].markdown)
    assert "random tiny model" in details and "vit_" in details
    assert "CPU" in " ".join(m.value for m in at.markdown)
    assert at.button(key="prepare-demo") is not None
    # a path on the server: refused when serving beyond localhost
    monkeypatch.setenv("TOAST_APP_ALLOW_PATHS", "0")
    at.run()
    assert at.text_input(key="ckpt-path").disabled
    # upload a real checkpoint: it joins this session's models
    at.file_uploader(key="ckpt-upload").upload("mine.safetensors", _checkpoint_bytes(tmp_path),
                                               "application/octet-stream").run()
    _no_exception(at)
    table = at.dataframe[0].value
    assert len(table) == len(METHODS) + 1 and "75.0%" in list(table["accuracy"])
    # a hostile "checkpoint": a clear error, the page keeps working
    at.file_uploader(key="ckpt-upload").upload("evil.safetensors", b"\x80\x04cos\nsystem\n.", "x").run()
    _no_exception(at)
    assert any("evil.safetensors" in e.value or "safetensors" in e.value for e in at.error)
    assert len(at.dataframe[0].value) == len(METHODS) + 1
    # the uploaded model appears on the other pages too
    at.switch_page("views/compare.py").run()
    _no_exception(at)
    assert "panel-vpt-deep-2" in _blocks(at.main)


def test_models_page_loads_by_path_on_localhost(tmp_path, monkeypatch):
    monkeypatch.setenv("TOAST_APP_ALLOW_PATHS", "1")
    ckpt = tmp_path / "by_path.safetensors"
    ckpt.write_bytes(_checkpoint_bytes(tmp_path))
    at = _app("views/models.py")
    at.text_input(key="ckpt-path").set_value(str(tmp_path / "missing.safetensors")).run()
    at.button(key="ckpt-path-load").click().run()
    _no_exception(at)
    assert any("missing.safetensors" in e.value for e in at.error)
    at.text_input(key="ckpt-path").set_value(str(ckpt)).run()
    at.button(key="ckpt-path-load").click().run()
    _no_exception(at)
    assert len(at.dataframe[0].value) == len(METHODS) + 1


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------

def test_export_page_builds_a_figure_with_downloads():
    at = _app("views/export.py")
    keys = _blocks(at.main)
    assert "export-preview" in keys
    labels = {b.label for b in at.get("download_button")}
    assert {"PDF", "SVG", "Bundle (.zip)"} <= labels and any(lbl.startswith("PNG") for lbl in labels)
    assert any("preview (7×4 panels" in (c.value or "") for c in _captions(at))
    at.multiselect(key="exp-rows").set_value(["linear", "toast"]).run()
    at.radio(key="exp-columns").set_value("images").run()
    _no_exception(at)
    opts = at.multiselect(key="exp-images").options
    at.multiselect(key="exp-images").set_value(opts[:3]).run()
    at.selectbox(key="exp-scale").set_value("signed").run()
    at.text_input(key="exp-title").set_value("Where they look").run()
    at.selectbox(key="exp-kind").set_value("rollout").run()
    _no_exception(at)
    assert any("preview (2×3 panels" in (c.value or "") for c in _captions(at))


def _captions(at):
    for node in _walk(at.main):
        proto = getattr(node, "proto", None)
        if type(proto).__name__ == "ImageList":
            for img in proto.imgs:
                yield type("C", (), {"value": img.caption})()


# ------------------------------------------------------------------------------------------------
# Real checkpoints
# ------------------------------------------------------------------------------------------------

def test_compare_page_on_trained_demo_checkpoints(monkeypatch, tmp_path):
    """The Compare page on real trained checkpoints: the six shipped with the repository, installed
    into an empty cache the way ``prepare-demo`` installs them (full fine-tuning is trained at install
    time and is absent here)."""
    from app.state import demo_checkpoint_keys
    from toast_core.demo import shipped
    from toast_core.demo import SHIPPED_METHODS, demo_dir

    monkeypatch.setenv("TOAST_APP_MODELS", "demo")
    monkeypatch.setenv("TOAST_HOME", str(tmp_path / "home"))
    for m in SHIPPED_METHODS:
        shipped.install(shipped.shipped_checkpoint(m), demo_dir() / m, tmp_path / "task", f"assets/checkpoints/{m}")
    keys = demo_checkpoint_keys()
    assert len(keys) == len(SHIPPED_METHODS)
    at = _app()
    assert not any("Untrained" in w.value for w in at.warning)
    keys_on_page = _blocks(at.main)
    assert sum(k.startswith("panel-") for k in keys_on_page) == len(keys)
    # full fine-tuning is not missing silently: its card says why it is not there (no trainer runs here)
    assert "pending-finetune" in keys_on_page and "panel-finetune" not in keys_on_page
    assert any("Not trained yet" in m.value for m in at.markdown)
