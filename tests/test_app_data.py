"""The "Your data" page, headless (streamlit AppTest): a server folder is scanned (counts, samples,
problems; training disabled while there are errors), a trained dataset run is listed and chosen as the
session's model set."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_app import _app, _blocks, _no_exception
from tests.test_your_data import QUICK, TINY, build_folder

pytestmark = pytest.mark.usefixtures("restore_torch_threads", "app_tiny_models")
PAGE = "views/data.py"


def _text(node) -> str:
    parts = []
    for child in getattr(node, "children", {}).values():
        for attr in ("value", "body", "label"):
            v = getattr(child, attr, None)
            if isinstance(v, str):
                parts.append(v)
        parts.append(_text(child))
    return " ".join(p for p in parts if p)


def _count(node, kind: str) -> int:
    n = 0
    for child in getattr(node, "children", {}).values():
        proto = getattr(child, "proto", None)
        n += type(proto).__name__ == kind or type(proto).__name__ == "ImageList"
        n += _count(child, kind)
    return n


def test_a_server_folder_is_scanned_with_counts_samples_and_problems(tmp_path, monkeypatch):
    monkeypatch.setenv("TOAST_APP_ALLOW_PATHS", "1")
    root = build_folder(tmp_path / "photos")
    (root / "train/cat/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    at = _app(PAGE)
    at.radio(key="data-source").set_value("Folder on the server").run()
    at.text_input(key="data-path").set_value(str(root)).run()
    at.button(key="data-scan").click().run()
    _no_exception(at)
    blocks = _blocks(at.main)
    assert {"data-found", "data-samples", "data-problems"} <= set(blocks)
    table = at.dataframe[0].value
    assert list(table["class"]) == ["cat", "coffee", "rocket"] and list(table["test"]) == [3, 3, 3]
    assert _count(blocks["data-samples"], "Image") == 12  # the sample grid: four per class
    assert any("unreadable image train/cat/broken.jpg" in e.value for e in at.error)
    assert at.button(key="data-start").disabled and at.button(key="data-estimate").disabled
    (root / "train/cat/broken.jpg").unlink()
    at.button(key="data-rescan").click().run()
    assert not at.error and not at.button(key="data-start").disabled


def test_without_server_paths_only_a_zip_upload_is_offered(monkeypatch):
    monkeypatch.setenv("TOAST_APP_ALLOW_PATHS", "0")
    at = _app(PAGE)
    assert at.radio(key="data-source").options == ["Upload a zip"]


def test_a_trained_dataset_is_listed_and_becomes_the_sessions_model_set(tmp_path, monkeypatch):
    from toast_core.demo.dataset_run import DatasetRunSpec, train_dataset

    monkeypatch.setenv("TOAST_HOME", str(tmp_path / "home"))
    root = build_folder(tmp_path / "photos")
    res = train_dataset(DatasetRunSpec(name="Photos", data=str(root), methods=("linear", "lora"), **TINY, **QUICK),
                        device="cpu")
    at = _app(PAGE)
    runs = _text(_blocks(at.main)["data-runs"])
    assert "Photos" in runs and "linear, lora" in runs
    at.button(key="data-use-0").click().run()
    _no_exception(at)
    assert at.session_state["model-set"] == res["dir"]
    assert at.button(key="data-use-0").disabled
    at.switch_page("views/compare.py").run()  # the dataset's models and images on the other pages
    _no_exception(at)
    panels = sorted(k[len("panel-"):] for k in _blocks(at.main) if k.startswith("panel-"))
    assert panels == ["linear", "lora"]
    assert "your dataset “Photos”" in " ".join(c.value for c in at.sidebar.caption)
    assert at.selectbox(key="keep-image").value.startswith("Photos/test/")
    assert any("**True label:** cat (its class folder in your dataset)." in m.value for m in at.markdown)
    at.switch_page("views/analysis.py").run()  # analysed on the dataset's own test split and boxes
    assert any("your dataset “Photos”" in c.value and "9 images" in c.value for c in at.caption)
    at.button(key="ana-run").click().run()
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert list(table["method"]) == ["linear", "lora"] and {"accuracy", "E target"} <= set(table.columns)
    # retrained with other settings at the same path: the page loads the new checkpoint, not a cached one
    from toast_core.cache import sha256_file

    lora = Path(res["dir"]) / "lora" / "model.safetensors"
    before = sha256_file(lora)[:12]
    train_dataset(DatasetRunSpec(name="Photos", data=str(root), methods=("lora",), **TINY, **{**QUICK, "epochs": 2}),
                  device="cpu")
    assert sha256_file(lora)[:12] != before
    at.switch_page("views/models.py").run()
    details = " ".join(m.value for m in at.markdown if m.value.startswith("**lora**"))
    assert f"sha256 `{sha256_file(lora)[:12]}`" in details, details
    at.switch_page(PAGE).run()
    at.button(key="data-use-default").click().run()
    assert "model-set" not in at.session_state
    assert Path(res["dir"]).is_dir()
