"""The first start with full fine-tuning training in the background (issue 13), in real headless Chromium
against a real app server and a real background trainer (quick plan):

* the app is up and shows the six other methods' maps while fine-tuning trains; the finetune panel says
  what is happening, the sidebar shows the progress; an upload re-renders meanwhile;
* while the final checkpoint is written (paused before its rename by tests/pause_writes.py, with
  the epoch's incomplete checkpoint already on disk) finetune is still not loaded;
* fine-tuning joins the comparison when its checkpoint is complete, without a reload, with the map
  toast_core computes from that checkpoint.
"""
from __future__ import annotations

import re
import time

import numpy as np
import pytest

from tests import pause_writes
from tests.browser.expect import make_image
from tests.browser.harness import AppServer
from tests.browser.ui import chart_z, exceptions, open_app, selectbox_value, upload, wait_charts, wait_text
from tests.test_background import SIX, quick_six, wait_for

pytestmark = pytest.mark.browser

PAUSE_S = 15  # every checkpoint write of the trainer pauses this long before its rename


@pytest.fixture
def first_start_home(tmp_path, session_home):
    """A TOAST_HOME as after the app's foreground start: backbone and task (linked from the session
    cache), the quick plan's six checkpoints, no full fine-tuning."""
    from toast_core.demo import prepare_demo

    prepare_demo(quick=True, device="cpu")  # into the session cache (cached after the first time)
    home = tmp_path / "home"
    home.mkdir()
    for d in ("backbones", "demo_task"):
        (home / d).symlink_to(session_home / d)
    quick_six(home / "demo-quick")
    return home


def panel_methods(page) -> list[str]:
    classes = page.evaluate("""() => Array.from(document.querySelectorAll('[class*="st-key-panel-"]'))
                                       .map(e => Array.from(e.classList).find(c => c.startsWith('st-key-panel-')))""")
    return sorted(c[len("st-key-panel-"):] for c in classes)


def test_app_up_before_finetune_then_finetune_joins_without_reload(browser, first_start_home, tmp_path):
    from toast_core.demo import background as bg
    from toast_core import compare as cmp
    from toast_core.io.checkpoints import is_complete_checkpoint

    home = first_start_home
    out = home / "demo-quick"
    ckpt = out / "finetune"
    started = bg.start(quick=True, device="cpu", out=out,
                       env={"TOAST_HOME": str(home), **pause_writes.child_env(PAUSE_S)})
    assert started["started"] and started["methods"] == ["finetune"]
    server = AppServer(env={"TOAST_APP_MODELS": "demo", "TOAST_DEVICE": "cpu"}, home=home, timeout=180)
    server.start()
    page = browser.new_page()
    try:
        open_app(page, server.url)
        wait_charts(page, len(SIX))
        # up while fine-tuning trains: six panels, finetune says what is happening
        assert bg.is_running(out) and not is_complete_checkpoint(ckpt)
        assert panel_methods(page) == sorted(SIX)
        assert page.locator(".st-key-pending-finetune").count() == 1
        wait_text(page, ".st-key-pending-finetune", r"finetune: (starting|step \d+/\d+)")
        assert "fills in when its checkpoint is complete" in page.locator(".st-key-pending-finetune").inner_text()
        side = wait_text(page, ".st-key-bg-sidebar", r"Training in the background: finetune")
        assert "finetune" in side

        # an upload re-renders the six while fine-tuning trains
        img = make_image(tmp_path / "during.png", seed=31)
        upload(page, img)
        wait_charts(page, len(SIX))
        assert selectbox_value(page, "Image") == "upload/during.png"
        assert bg.is_running(out), "fine-tuning finished before the upload: the test saw nothing in between"

        # the final write (after the test evaluation) waits before its rename: the epoch's checkpoint
        # (complete=False) is on disk, the final one is a temporary file; finetune must not be loaded
        def final_write_paused():
            log = (out / bg.LOG_NAME).read_text()
            return len(re.findall(r"paused before renaming onto \S*finetune/model\.safetensors", log)) >= 2
        wait_for(final_write_paused, 600, "the trainer never reached its final checkpoint write", every=0.2)
        assert (ckpt / "model.safetensors").is_file() and not is_complete_checkpoint(ckpt)
        assert list(ckpt.glob(".model.safetensors.tmp-*")), "no temporary file: the final write is not pending"
        time.sleep(2 * 2.0)  # two refreshes of the progress fragment
        assert panel_methods(page) == sorted(SIX), "a checkpoint that is not complete was loaded"
        assert page.locator(".st-key-pending-finetune").count() == 1

        # ... then it joins, without a reload
        page.wait_for_selector(".st-key-panel-finetune .js-plotly-plot .main-svg", timeout=(4 * PAUSE_S + 120) * 1000)
        wait_charts(page, len(SIX) + 1)
        assert is_complete_checkpoint(ckpt)
        assert panel_methods(page) == sorted(SIX + ["finetune"])
        assert page.locator(".st-key-pending-finetune").count() == 0
        assert page.locator(".st-key-bg-sidebar").count() == 0
        assert selectbox_value(page, "Image") == "upload/during.png"  # same session, same image
        # the map shown is the one toast_core computes from the finished checkpoint
        import toast_core as tc

        entry = cmp.load_entry(f"ckpt:{ckpt / 'model.safetensors'}", "cpu")
        image = cmp.working_copy(tc.load_image(img.read_bytes()))
        want = cmp.compare([entry], image, kind="cls", top_k=3)[0].map
        got = np.asarray(chart_z(page, ".st-key-panel-finetune"), dtype=np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        assert exceptions(page) == []
        assert server.tracebacks() == []
        assert bg.read_status(out)["state"] == "done"
    finally:
        page.context.close()
        server.stop()
        bg.stop(out, timeout=120)
