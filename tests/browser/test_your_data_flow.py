"""The "Your data" flow in real headless Chromium against a real app server and a real background trainer:

* a hostile zip (path traversal) is refused with a message, nothing lands outside, the page keeps working;
* a labelled folder of real photos (3 classes) on the server is scanned (classes, counts, samples);
* linear, LoRA and TOAST train in the background (default backbone DINOv2-S at 56 px, 3 epochs) while the Compare
  page stays usable;
* chosen on the page, those models show their maps on the dataset's images on Compare and give an
  analysis table on the dataset's test split — with no restart.

Set ``TOAST_SCREENSHOTS=DIR`` to keep screenshots of the flow (docs/screenshots/your-data.png comes from it).
"""
from __future__ import annotations

import io
import os
import re
import time
import zipfile
from pathlib import Path

import pytest

from tests.browser.harness import AppServer
from tests.browser.ui import deselect, exceptions, goto_page, open_app, selectbox_value, upload, wait_charts, \
    wait_idle, wait_rerun, wait_text
from tests.test_your_data import build_folder

pytestmark = pytest.mark.browser


def _panels(page) -> list[str]:
    classes = page.evaluate("""() => Array.from(document.querySelectorAll('[class*="st-key-panel-"]'))
                                       .map(e => Array.from(e.classList).find(c => c.startsWith('st-key-panel-')))""")
    return sorted(c[len("st-key-panel-"):] for c in classes)


def _click(page, key: str) -> None:
    wait_rerun(page, page.locator(f".st-key-{key} button").first.click)


def _shot(page, name: str) -> None:
    out = os.environ.get("TOAST_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / name), full_page=True)


@pytest.fixture
def home(tmp_path, session_home):
    """A TOAST_HOME with the default backbone (converted once per test session, linked)."""
    from toast_core.default_backbone import ensure_default_backbone

    ensure_default_backbone()  # into the session cache
    h = tmp_path / "home"
    h.mkdir()
    (h / "backbones").symlink_to(session_home / "backbones")
    return h


def test_your_data_scan_train_in_background_then_maps_and_analysis(browser, home, tmp_path):
    from toast_core.demo.background import read_status
    from toast_core.demo import dataset_background as dbg
    from toast_core.demo.dataset_run import list_runs

    folder = build_folder(tmp_path / "photos")
    evil = tmp_path / "evil.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("photos/train/cat/0.jpg", (folder / "train/cat/0.jpg").read_bytes())
        zf.writestr("../../escaped.jpg", (folder / "train/cat/0.jpg").read_bytes())
    evil.write_bytes(buf.getvalue())
    env = {"TOAST_APP_MODELS": "tiny", "TOAST_APP_ALLOW_PATHS": "1", "TOAST_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    run_dir = None
    with AppServer(env=env, home=home) as server:
        page = browser.new_page()
        try:
            open_app(page, server.url)
            goto_page(page, "Your data")
            upload(page, evil, settled=False)
            wait_text(page, '[data-testid="stAlertContentError"]', r"The zip was refused: .*outside the archive")
            assert not (home.parent / "escaped.jpg").exists() and not (home / "escaped.jpg").exists()
            assert not exceptions(page)

            wait_rerun(page, page.locator('[data-testid="stRadio"] label', has_text="Folder on the server").click)
            box = page.locator(".st-key-data-path input").first
            box.fill(str(folder))
            wait_rerun(page, lambda: box.press("Enter"))
            _click(page, "data-scan")
            wait_text(page, ".st-key-data-found", r"3 classes")
            assert page.locator(".st-key-data-samples img").count() == 12
            deselect(page, "Methods", ["finetune", "vpt-shallow", "vpt-deep", "toast-lite"])
            epochs = page.locator(".st-key-data-epochs input").first
            epochs.fill("3")
            wait_rerun(page, lambda: epochs.press("Enter"))
            size = page.locator('[data-testid="stSelectbox"]', has_text="Input size").first

            def small() -> None:
                size.locator("input").first.click()
                page.locator('[role="option"]', has_text=re.compile(r"^56\b")).first.click()

            wait_rerun(page, small)
            _shot(page, "your-data.png")
            _click(page, "data-start")
            assert not exceptions(page), exceptions(page)
            wait_text(page, '[data-testid="stSidebar"]', r"Training your dataset “photos”", timeout=60)
            run_dir = Path(list_runs(home / "datasets")[0]["dir"])

            goto_page(page, "Compare")  # usable while the dataset trains
            wait_charts(page, 7, timeout=120)
            assert _panels(page) == sorted(["linear", "finetune", "lora", "vpt-shallow", "vpt-deep", "toast",
                                            "toast-lite"])
            assert read_status(run_dir)["running"], "the training ended before Compare was checked"
            deadline = time.monotonic() + 600
            while (read_status(run_dir) or {}).get("state") not in ("done", "failed"):
                assert time.monotonic() < deadline, (run_dir / "background.log").read_text()
                page.wait_for_timeout(500)
            assert read_status(run_dir)["state"] == "done", (run_dir / "background.log").read_text()

            goto_page(page, "Your data")
            _click(page, "data-use-0")
            goto_page(page, "Compare")
            wait_charts(page, 3, timeout=120)
            assert _panels(page) == ["linear", "lora", "toast"]
            assert selectbox_value(page, "Image").startswith("photos/test/")
            wait_text(page, '[data-testid="stSidebar"]', r"your dataset “photos”")
            _shot(page, "your-data-compare.png")

            goto_page(page, "Analysis")
            wait_text(page, ".st-key-analysis-dataset", r"your dataset “photos”.*9 images")
            _click(page, "ana-run")
            wait_idle(page, timeout=300)
            wait_text(page, ".st-key-analysis-table", r"means over 9 images", timeout=300)
            assert not exceptions(page)
        finally:
            page.context.close()
            if run_dir is not None:
                dbg.stop(run_dir, timeout=30)
