"""Many users at once (issue 7, part 3), in real headless Chromium against one app server.

* ``TOAST_SESSIONS`` simultaneous browser sessions (default 3; the full run uses 8), each with its own
  image, methods and layer, see exactly their own results: every panel's map and predictions equal what
  toast_core computes directly for that session's image and layer, before and after the other sessions
  finished. No exception on any page or in the server log.
* The models the server caches are the same objects, with the same parameter hashes, before and after
  (hashed inside the server process, see ``tests/browser/digest_server.py``), and equal to freshly
  built ones.
* Memory: the server's RSS after ``TOAST_UPLOADS`` sequential uploads (default 40; full run 200) stays
  within 10% of its RSS after 20.

Full run: ``TOAST_SESSIONS=8 TOAST_UPLOADS=200 .venv/bin/python -m pytest tests/test_sessions.py -s``.
"""
from __future__ import annotations

import os
import threading
import time
import traceback

import numpy as np
import pytest

from tests.browser.expect import expected_panels, make_image, parse_predictions, tiny_entries
from tests.browser.harness import AppServer, Browser, shared_browser
from tests.browser.ui import (chart_z, deselect, exceptions, open_app, selectbox_value, set_slider, upload,
                              wait_charts)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

METHODS = ["linear", "finetune", "lora", "vpt-shallow", "vpt-deep", "toast", "toast-lite"]
N_SESSIONS = int(os.environ.get("TOAST_SESSIONS", "3"))
N_UPLOADS = int(os.environ.get("TOAST_UPLOADS", "40"))
BASELINE_UPLOADS = 20
FORMATS = ["png", "jpg", "webp", "bmp", "tiff"]


@pytest.fixture(scope="module")
def chromium_ok():
    shared_browser()  # skips, with the reason, where Chromium cannot run


@pytest.fixture(scope="module")
def server(chromium_ok, tmp_path_factory):
    s = AppServer(env={"TOAST_APP_MODELS": "tiny"}, home=tmp_path_factory.mktemp("sessions_home"), digests=True)
    s.start()
    try:
        yield s
    finally:
        s.stop()
    assert not s.alive


def fresh_digests() -> dict:
    from toast_core.compare import parameter_digest

    return {f"tiny:{e.method}": parameter_digest(e.model) for e in tiny_entries(METHODS)}


def check_models_unchanged(before: dict, after: dict) -> None:
    assert set(before) == set(after) == {f"tiny:{m}" for m in METHODS}
    fresh = fresh_digests()
    for key in before:
        assert after[key]["object"] == before[key]["object"], f"{key}: the cached model was replaced"
        assert after[key]["digest"] == before[key]["digest"], f"{key}: parameters changed while serving"
        assert after[key]["digest"] == fresh[key], f"{key}: differs from a freshly built model"
        assert not after[key]["requires_grad"] and not after[key]["training"], key


def session_plan(i: int) -> dict:
    """Session i's own image (format and size), methods (a distinct subset) and 1-based layer."""
    k = 3 + i % 5  # 3..7 methods
    start = (2 * i) % len(METHODS)
    chosen = sorted({METHODS[(start + j) % len(METHODS)] for j in range(k)}, key=METHODS.index)
    return {"seed": 1000 + i, "fmt": FORMATS[i % len(FORMATS)], "size": (96 + 16 * i, 80 + 8 * (i % 3)),
            "methods": chosen, "layer": 1 + i % 4}


def verify_page(page, img_path, plan) -> None:
    """The page shows exactly this session's image, methods and layer, with the right content."""
    assert exceptions(page) == []
    assert selectbox_value(page, "Image") == f"upload/{img_path.name}"
    shown = page.locator('[class*="st-key-panel-"]')
    assert shown.count() == len(plan["methods"]), f"{shown.count()} panels, wanted {plan['methods']}"
    want = expected_panels(img_path, plan["methods"], layer=plan["layer"] - 1)
    for m in plan["methods"]:
        panel = page.locator(f".st-key-panel-{m}")
        assert panel.count() == 1, f"no panel for {m}"
        assert f"layer {plan['layer']}/4" in panel.inner_text(), f"{m}: wrong layer"
        z = np.asarray(chart_z(page, f".st-key-panel-{m}"), dtype=np.float64)
        np.testing.assert_allclose(z, want[m].map, atol=1e-6, rtol=1e-5, err_msg=f"{m}: another map")
        preds = parse_predictions(page.locator(f".st-key-preds-{m}").inner_text())
        assert [p for p, _ in preds] == [p for p, _ in want[m].predictions], f"{m}: other predictions"
        assert all(abs(a - b) <= 6e-4 for (_, a), (_, b) in zip(preds, want[m].predictions)), m


def test_simultaneous_sessions_each_see_their_own_results(server, tmp_path):
    before = server.model_digests()
    tiny_entries(METHODS)  # build the reference models before the clock starts
    n = N_SESSIONS
    plans = [session_plan(i) for i in range(n)]
    images = [make_image(tmp_path / f"session{i}.{p['fmt']}", p["seed"], p["size"]) for i, p in enumerate(plans)]
    ready, done = threading.Barrier(n), threading.Barrier(n)
    errors: list[str] = []
    timings: dict[int, float] = {}

    def session(i: int) -> None:
        plan, img = plans[i], images[i]
        browser = None
        try:
            browser = Browser().start()  # each session its own Chromium, driven from its own thread
            page = browser.new_page()
            open_app(page, server.url, timeout=300)
            ready.wait(timeout=600)  # every session acts at the same time from here
            t0 = time.perf_counter()
            upload(page, img, timeout=300)
            deselect(page, "Methods", [m for m in METHODS if m not in plan["methods"]], timeout=300)
            set_slider(page, "Layer", plan["layer"], timeout=300)
            wait_charts(page, len(plan["methods"]), timeout=300)
            timings[i] = time.perf_counter() - t0
            verify_page(page, img, plan)
            done.wait(timeout=900)  # and once everybody has finished, nothing leaked in afterwards
            verify_page(page, img, plan)
        except threading.BrokenBarrierError:
            errors.append(f"session {i}: another session failed first")
        except BaseException:  # noqa: BLE001 - collect, report all
            errors.append(f"session {i} ({plan}):\n{traceback.format_exc()}")
            ready.abort()
            done.abort()
        finally:
            if browser is not None:
                browser.close()

    threads = [threading.Thread(target=session, args=(i,), name=f"session-{i}") for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=1800)
    wall = time.perf_counter() - t0
    real = [e for e in errors if "another session failed first" not in e]
    assert not real, "\n\n".join(real) or "\n".join(errors)
    assert len(timings) == n
    assert server.alive and server.tracebacks() == [], server.tracebacks()[:1]
    check_models_unchanged(before, server.model_digests())
    print(f"\n{n} simultaneous sessions: per-session upload->verified results {sorted(round(v, 1) for v in timings.values())} s, "
          f"wall {wall:.1f} s, server RSS {server.rss() / 2**20:.0f} MiB")


def test_memory_flat_over_sequential_uploads(server, tmp_path):
    assert N_UPLOADS > BASELINE_UPLOADS
    before = server.model_digests()
    page = shared_browser().new_page()
    try:
        open_app(page, server.url)
        rss: dict[int, int] = {}
        t0 = time.perf_counter()
        for k in range(1, N_UPLOADS + 1):
            img = make_image(tmp_path / f"u{k}.{FORMATS[k % len(FORMATS)]}", 5000 + k, (64 + k % 50, 64))
            upload(page, img)
            wait_charts(page, len(METHODS))
            if k in (1, BASELINE_UPLOADS, N_UPLOADS) or k % 20 == 0:
                rss[k] = server.rss()
            if k in (BASELINE_UPLOADS, N_UPLOADS):
                assert exceptions(page) == []
                want = expected_panels(img, ["toast"])
                np.testing.assert_allclose(chart_z(page, ".st-key-panel-toast"), want["toast"].map, atol=1e-6)
        elapsed = time.perf_counter() - t0
    finally:
        page.context.close()
    base, final = rss[BASELINE_UPLOADS], rss[N_UPLOADS]
    growth = final / base - 1
    print(f"\nserver RSS after upload 1: {rss[1] / 2**20:.0f} MiB; after {BASELINE_UPLOADS}: {base / 2**20:.0f} MiB; "
          f"after {N_UPLOADS}: {final / 2**20:.0f} MiB ({100 * growth:+.1f}%); "
          f"{elapsed / N_UPLOADS:.2f} s per upload; samples (MiB): "
          + ", ".join(f"{k}: {v / 2**20:.0f}" for k, v in sorted(rss.items())))
    assert growth <= 0.10, f"RSS grew {100 * growth:.1f}% between upload {BASELINE_UPLOADS} and {N_UPLOADS}"
    assert server.tracebacks() == []
    check_models_unchanged(before, server.model_digests())
