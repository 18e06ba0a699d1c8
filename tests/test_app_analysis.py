"""The Analysis page (headless, streamlit.testing.v1.AppTest, random tiny models) and its helper module
:mod:`toast_core.analysis.session` (default dataset, image choice, grouped runs, in-memory report)."""
from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_REG, tiny_model
from toast_core.analysis import session as aa
from toast_core.data.demo_task import DemoTaskConfig, generate_demo_task
from toast_core.errors import InputError

APP = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
PAGE = "views/analysis.py"


pytestmark = pytest.mark.usefixtures("restore_torch_threads", "app_tiny_models")


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    return generate_demo_task(tmp_path_factory.mktemp("task") / "quick", DemoTaskConfig.quick(image_size=64), workers=1)


def _page():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page(PAGE).run()
    _no_exception(at)
    return at


def _no_exception(at) -> None:
    assert not at.exception, [e.message for e in at.exception]


def _keys(node, out=None) -> set:
    """User keys of every keyed container/element under a node."""
    out = set() if out is None else out
    for child in getattr(node, "children", {}).values():
        proto = getattr(child, "proto", None)
        pid = getattr(proto, "id", "") if proto is not None else ""
        if isinstance(pid, str) and pid.startswith("$$ID-"):
            out.add(pid.split("-", 2)[2])
        _keys(child, out)
    return out


# ------------------------------------------------------------------------------------------------
# The page
# ------------------------------------------------------------------------------------------------

def test_page_renders_controls_and_never_runs_by_itself(monkeypatch):
    monkeypatch.setenv("TOAST_APP_ALLOW_PATHS", "0")
    at = _page()
    assert at.radio(key="keep-ana-source").options == ["Default task"]  # no server folders when not allowed
    assert at.selectbox(key="keep-ana-split").value == "test"
    n = at.number_input(key="keep-ana-n")
    assert n.value == 12 and n.max == 12  # min(48, split size) of the quick default task (random models)
    assert at.radio(key="keep-ana-layers").value == "all"
    assert at.multiselect(key="keep-ana-kinds").value == ["cls"]
    assert at.checkbox(key="keep-ana-faith").value is False
    assert not at.button(key="ana-run").disabled
    assert any("quick default task" in c.value and "12 images" in c.value for c in at.caption)
    keys = _keys(at.main)
    assert "analysis-controls" in keys and "analysis-results" not in keys
    assert "analysis-result" not in at.session_state
    assert not at.get("download_button")
    at.checkbox(key="keep-ana-faith").check().run()  # faithfulness options appear
    _no_exception(at)
    assert at.number_input(key="keep-ana-faith-steps").value == 8
    assert at.number_input(key="keep-ana-faith-max").value == 8


def test_run_on_four_images_shows_table_plots_and_downloads():
    at = _page()
    at.number_input(key="keep-ana-n").set_value(4).run()
    chosen = ["linear", "lora", "toast"]
    at.multiselect(key="keep-methods").set_value(chosen).run()
    at.button(key="ana-run").click().run()
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    keys = _keys(at.main)
    assert {"analysis-results", "analysis-table", "analysis-plot-layers", "analysis-plot-accuracy",
            "analysis-downloads"} <= keys
    table = at.dataframe[0].value
    # one row per selected method, plus TOAST's bottom-up pass
    assert list(table["method"]) == ["linear", "lora", "toast", "toast (bottom-up)"]
    # compact by default (fits 1024 px): means at the last layer, then layer means
    assert {"accuracy", "E target", "pointing hit", "AUC"} <= set(table.columns) and "images" not in table.columns
    assert not any("[" in v for v in table["E target"])
    assert "E target" in at.dataframe[1].value.columns
    labels = {b.label for b in at.get("download_button")}
    assert {"rows.csv", "summary.csv", "summary.md", "Everything (.zip)", "layers_cls.png", "layers_cls.pdf",
            "accuracy_vs_energy_cls.png", "accuracy_vs_energy_cls.pdf"} <= labels
    progress = at.get("progress")
    assert progress and progress[-1].proto.value == 100 and "4 images × 3 models" in progress[-1].proto.text

    result = at.session_state["analysis-result"]
    rows = list(csv.DictReader(io.StringIO(result.files["rows.csv"].decode())))
    assert len(rows) == 4 * 4 * 4  # images × (3 methods + TOAST's second pass) × 4 layers (cls only)
    assert {r["method"] for r in rows} == set(chosen)
    names = set(zipfile.ZipFile(io.BytesIO(result.zip_bytes)).namelist())
    assert {"analysis/rows.csv", "analysis/summary.md", "analysis/layers_cls.pdf", "analysis/run.json"} <= names
    assert result.files["layers_cls.pdf"].startswith(b"%PDF")

    at.toggle(key="ana-ci").set_value(True).run()  # the full table with CIs
    table = at.dataframe[0].value
    assert set(table["images"]) == {4}
    assert all("[" in v for v in table["E target (last)"])  # mean [95% CI]
    assert "deletion AUC ↓" not in table.columns  # faithfulness off: empty columns are dropped

    # the result survives a page switch; the kept controls too
    at.switch_page("views/models.py").run()
    at.switch_page(PAGE).run()
    _no_exception(at)
    assert "analysis-results" in _keys(at.main)
    assert at.number_input(key="keep-ana-n").value == 4


def test_bad_folders_give_an_error_and_no_exception(monkeypatch, tmp_path):
    monkeypatch.setenv("TOAST_APP_ALLOW_PATHS", "1")
    at = _page()
    at.radio(key="keep-ana-source").set_value("folder").run()
    _no_exception(at)
    assert at.button(key="ana-run").disabled  # no path typed yet
    at.text_input(key="keep-ana-folder").set_value(str(tmp_path / "missing")).run()
    _no_exception(at)
    assert any("does not exist" in e.value for e in at.error)
    assert at.button(key="ana-run").disabled
    # an image folder without masks or boxes
    for cls in ("a", "b"):
        d = tmp_path / "plain" / "train" / cls
        d.mkdir(parents=True)
        Image.new("RGB", (16, 16), (200, 10, 10)).save(d / "x.png")
    at.text_input(key="keep-ana-folder").set_value(str(tmp_path / "plain")).run()
    _no_exception(at)
    assert any("masks" in e.value for e in at.error)
    assert at.button(key="ana-run").disabled
    # back to the default task: the page works again
    at.radio(key="keep-ana-source").set_value("default").run()
    _no_exception(at)
    assert not at.error and not at.button(key="ana-run").disabled


def test_folder_run_with_faithfulness(monkeypatch, task):
    monkeypatch.setenv("TOAST_APP_ALLOW_PATHS", "1")
    at = _page()
    at.radio(key="keep-ana-source").set_value("folder").run()
    at.text_input(key="keep-ana-folder").set_value(str(task)).run()
    _no_exception(at)
    assert not at.error and at.number_input(key="keep-ana-n").max == 12
    at.number_input(key="keep-ana-n").set_value(2).run()
    at.multiselect(key="keep-methods").set_value(["vpt-deep"]).run()
    at.radio(key="keep-ana-layers").set_value("last").run()
    at.checkbox(key="keep-ana-faith").check().run()
    at.number_input(key="keep-ana-faith-steps").set_value(4).run()
    at.multiselect(key="keep-ana-faith-kinds").set_value(["cls", "gradcam", "random"]).run()
    at.button(key="ana-run").click().run()
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    table, rest = at.dataframe[0].value, at.dataframe[1].value  # last layer; layer means and the rest
    assert list(table["method"]) == ["vpt-deep"] and {"deletion AUC ↓", "insertion AUC ↑"} <= set(rest.columns)
    result = at.session_state["analysis-result"]
    assert result.data_dir == str(task) and result.n_images == 2
    assert json.loads(result.files["run.json"])["faithfulness_steps"] == 4
    keys = _keys(at.main)
    assert "analysis-plot-accuracy" in keys and "analysis-plot-layers" not in keys  # one layer analysed
    # the faithfulness ranking: one row per (method, kind), its plot and its CSV
    assert {"analysis-ranking", "analysis-ranking-table", "analysis-plot-faithfulness"} <= keys
    ranking = at.dataframe[2].value
    assert list(ranking["method"]) == ["vpt-deep"] * 3 and sorted(ranking["rank"]) == [1, 2, 3]
    assert {"faithfulness_ranking.csv", "faithfulness_ranking.png"} <= set(result.files)


# ------------------------------------------------------------------------------------------------
# toast_core.analysis.session
# ------------------------------------------------------------------------------------------------

def test_usable_indices_skip_classes_a_model_cannot_predict():
    assert aa.usable_indices([0, 11, 3, 10, 2, 5], 3, num_classes=10) == ([0, 2, 4], 2)
    assert aa.usable_indices([0, 1], 5) == ([0, 1], 0)
    with pytest.raises(InputError):
        aa.usable_indices([0], 0)


def test_default_task_follows_recorded_checkpoint_task(task, tmp_path, monkeypatch):
    monkeypatch.setenv("TOAST_HOME", str(tmp_path))  # nothing generated in this cache
    src = aa.default_task([tiny_model("linear")], trained=False)
    assert src.config == DemoTaskConfig.quick() and src.path is None and "quick" in src.note
    assert src.split_size("test") == 12
    assert aa.default_task([], trained=True).config == DemoTaskConfig()
    model = tiny_model("linear")
    recorded = DemoTaskConfig.quick(image_size=64).to_dict()
    model.checkpoint_info = {"data": {"dataset": str(task), "task_config": recorded}}
    src = aa.default_task({"linear": model}, trained=True)
    assert src.path == task and src.ensure() == task and "trained on" in src.note
    with pytest.raises(InputError):
        src.split_size("nope")


def test_run_app_analysis_groups_models_by_input_and_packs_the_report(task):
    models = {"linear": tiny_model("linear", num_classes=12),
              "lora-28": tiny_model("lora", num_classes=12, spec=TINY_REG)}  # 28 px input, patch 7
    seen = []
    res = aa.run_app_analysis(models, task, n_images=3, layers="last", kinds=("cls", "token_norm"), device="cpu",
                              progress=lambda d, t: seen.append((d, t)), n_boot=50)
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert res.n_images == 3 and res.skipped == 0 and any("2 different input sizes" in s for s in res.notes)
    assert len(res.rows) == 3 * 2 * 2  # images × models × kinds (one layer)
    ids = {m: sorted(r["image_id"] for r in res.rows if r["method"] == m and r["kind"] == "cls") for m in models}
    assert ids["linear"] == ids["lora-28"] == [0, 1, 2]  # both groups saw the same images
    assert {r["layer"] for r in res.rows if r["method"] == "lora-28"} == {1}  # TINY_REG has 2 blocks
    assert [h["method"] for h in res.headline["token_norm"]] == ["linear", "lora-28"]
    assert res.plots("cls")["accuracy"] == "accuracy_vs_energy_cls"
    assert "accuracy_vs_energy_token_norm.pdf" in res.files
    meta = json.loads(res.files["run.json"])
    assert meta["source"] == "app" and meta["n_images"] == 3 and meta["kinds"] == ["cls", "token_norm"]
    energies = np.array([r["energy_target"] for r in res.rows])
    assert np.all((energies >= 0) & (energies <= 1))
    assert aa.zip_files(res.files) == res.zip_bytes  # deterministic


def test_run_app_analysis_errors(task, tmp_path):
    with pytest.raises(InputError, match="no model"):
        aa.run_app_analysis({}, task)
    with pytest.raises(InputError, match="does not exist"):
        aa.run_app_analysis({"linear": tiny_model("linear", num_classes=12)}, tmp_path / "missing")
    # a model with fewer outputs than the task has classes: the images it cannot label are skipped
    res = aa.run_app_analysis({"linear": tiny_model("linear", num_classes=2)}, task, n_images=3, layers="last",
                              device="cpu", n_boot=20)
    assert res.n_images == 2 and res.skipped == 10 and {r["label"] for r in res.rows} == {0, 1}
    assert any("10 image(s) skipped" in s for s in res.notes) and any("2 usable" in s for s in res.notes)
    assert res.plots("cls") == {"accuracy": "accuracy_vs_energy_cls"}  # one layer: no metric-vs-layer plot
