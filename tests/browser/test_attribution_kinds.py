"""The four attribution kinds on the Compare page in real headless Chromium (issue 18): selecting each kind
renders one panel per method (seven) with the map toast_core computes for the uploaded image, without an
exception; AttnLRP on a symmetric scale."""
from __future__ import annotations

import re

import numpy as np
import pytest

from tests.browser.expect import expected_panels, make_image
from tests.browser.ui import chart_z, exceptions, open_app, upload, wait_charts, wait_rerun

pytestmark = pytest.mark.browser

METHODS = ["linear", "finetune", "lora", "vpt-shallow", "vpt-deep", "toast", "toast-lite"]
LABELS = {"gae": "gradient-weighted rollout (Chefer)", "legrad": "LeGrad", "gradcam": "Grad-CAM (last block)",
          "attnlrp": "AttnLRP"}


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` (its shown text) in the Streamlit selectbox labelled ``label``; wait for the rerun."""
    box = page.locator('[data-testid="stSelectbox"]', has_text=label).first

    def act() -> None:
        box.locator("input").first.click()
        page.locator('[role="option"]', has_text=re.compile(f"^{re.escape(option)}$")).first.click()

    wait_rerun(page, act)


def test_each_attribution_kind_renders_seven_panels(page, app_server, tmp_path):
    open_app(page, app_server.url)
    img = make_image(tmp_path / "attribution.png", seed=21)
    upload(page, img)
    wait_charts(page, len(METHODS))
    for kind, label in LABELS.items():
        choose(page, "Map kind", label)
        wait_charts(page, len(METHODS))
        assert exceptions(page) == [], kind
        assert page.locator('[class*="st-key-panel-"]').count() == len(METHODS), kind
        want = expected_panels(img, ["linear", "toast"], kind=kind)
        for m in ("linear", "toast"):
            z = np.asarray(chart_z(page, f".st-key-panel-{m}"), dtype=np.float64)
            np.testing.assert_allclose(z, want[m].map, atol=1e-6, rtol=1e-4, err_msg=f"{kind} {m}")
        toast_text = page.locator(".st-key-panel-toast").inner_text()
        scope = "both passes + feedback path" if kind == "attnlrp" else "top-down pass given bottom-up pass"
        assert scope in toast_text, (kind, toast_text)
        if kind == "attnlrp":
            lo = float(page.locator(".st-key-compare-colorbar .cbar-lo").inner_text())
            hi = float(page.locator(".st-key-compare-colorbar .cbar-hi").inner_text())
            assert lo == pytest.approx(-hi, rel=1e-2) and hi > 0  # signed, symmetric scale
