"""Page helpers for the app in a real browser (Playwright sync API): wait for Streamlit's script
runs and Plotly charts, upload files, move sliders, edit multiselects, read chart data and hover
labels. Selectors follow Streamlit 1.67's DOM (``data-testid``s, ``st-key-<key>`` classes).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable

from tests.browser.harness import IDLE, RUNNING, UPLOAD_INPUT


def wait_idle(page, timeout: float = 120.0, settle: float = 0.3) -> None:
    """Wait until the Streamlit script has finished its run (and stays finished for ``settle`` s).

    A widget change starts a rerun a moment after the event, so "not running" is only trusted once it
    holds for a short while.
    """
    deadline = time.monotonic() + timeout
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout * 1000)
    stable_since = None
    while time.monotonic() < deadline:
        idle = page.locator(IDLE).count() > 0
        if idle:
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since >= settle:
                return
        else:
            stable_since = None
        page.wait_for_timeout(50)
    raise TimeoutError(f"the app did not finish its script run within {timeout:.0f} s")


def wait_rerun(page, action, timeout: float = 120.0) -> None:
    """Do ``action()`` (a widget change) and wait for the rerun it causes to finish."""
    action()
    try:
        page.wait_for_selector(RUNNING, timeout=3000)
    except Exception:  # noqa: BLE001 - a fast rerun may finish before we look
        pass
    wait_idle(page, timeout)


def open_app(page, url: str, path: str = "", timeout: float = 120.0) -> None:
    """Load the app (optionally a page path such as ``"layers"``) and wait for its first run."""
    page.goto(url.rstrip("/") + "/" + path.lstrip("/"), wait_until="domcontentloaded")
    wait_idle(page, timeout)


def goto_page(page, title: str, timeout: float = 120.0) -> None:
    """Click a sidebar navigation link by its title (e.g. ``"Layers"``) and wait for the page."""
    link = page.locator('[data-testid="stSidebarNav"] a', has_text=title).first
    wait_rerun(page, link.click, timeout)


def upload(page, path: str | os.PathLike, timeout: float = 120.0, index: int = 0, settled: bool = True) -> None:
    """Upload a file through the (index-th) Streamlit file uploader and wait for the rerun.

    With ``settled`` (the image uploader), also wait until the page has taken the file: the "Image"
    selectbox shows ``upload/<name>`` or an error names the file (the rerun can start a moment after
    the upload request, so "not running" alone is not enough).
    """
    name = Path(path).name
    wait_rerun(page, lambda: page.locator(UPLOAD_INPUT).nth(index).set_input_files(str(path)), timeout)
    if not settled:
        return
    deadline = time.monotonic() + timeout
    while True:
        box = page.locator('[data-testid="stSelectbox"]', has_text="Image").first
        shown = box.locator("input").first.input_value() if box.count() else None
        if shown == f"upload/{name}" or page.locator('[data-testid="stAlertContentError"]', has_text=name).count():
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page did not take the upload {name!r} within {timeout:.0f} s (shows {shown!r})")
        page.wait_for_timeout(100)
    wait_idle(page, timeout)


def exceptions(page) -> list[str]:
    """Texts of Streamlit exception boxes on the page (uncaught errors in the script)."""
    return [e.inner_text() for e in page.locator('[data-testid="stException"]').all()]


def plotly_data(page) -> list[list[dict]]:
    """The ``data`` traces of every Plotly chart on the page, in document order (JSON-able)."""
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(
               el => (el.data || []).map(t => ({type: t.type, name: t.name, z: t.z, x: t.x, y: t.y,
                                                 text: t.text, customdata: t.customdata,
                                                 meta: t.meta, hovertemplate: t.hovertemplate})))""")


def set_slider(page, label: str, value: float, timeout: float = 120.0, index: int = 0) -> None:
    """Move a Streamlit slider (found by its label) to ``value`` with the keyboard, and wait for the
    rerun. Works with the range input Streamlit 1.67 renders (``input[type=range]``)."""
    slider = page.locator('[data-testid="stSlider"]', has_text=label).nth(index)
    thumb = slider.locator('input[type="range"]').first
    now = float(thumb.input_value())
    lo, hi = float(thumb.get_attribute("min")), float(thumb.get_attribute("max"))
    if not lo <= value <= hi:
        raise ValueError(f"slider {label!r}: {value} is outside {lo}..{hi}")
    if abs(now - value) < 1e-9:
        return
    thumb.focus()
    key = "ArrowRight" if value > now else "ArrowLeft"
    for _ in range(10_000):
        page.keyboard.press(key)
        cur = float(thumb.input_value())
        if (key == "ArrowRight" and cur >= value - 1e-9) or (key == "ArrowLeft" and cur <= value + 1e-9):
            break
    try:
        page.wait_for_selector(RUNNING, timeout=3000)
    except Exception:  # noqa: BLE001 - a fast rerun may finish before we look
        pass
    wait_idle(page, timeout, settle=0.6)
    got = float(slider.locator('input[type="range"]').first.input_value())
    if abs(got - value) > 1e-6:
        raise AssertionError(f"slider {label!r} is at {got}, wanted {value}")


def slider_value(page, label: str, index: int = 0) -> float:
    slider = page.locator('[data-testid="stSlider"]', has_text=label).nth(index)
    return float(slider.locator('input[type="range"]').first.input_value())


def wait_charts(page, count: int | None = None, timeout: float = 60.0) -> int:
    """Wait until Plotly has drawn every chart on the page (at least ``count`` of them). Returns the
    number of charts."""
    page.wait_for_function(
        """(n) => { const els = Array.from(document.querySelectorAll('.js-plotly-plot'));
                    if (n !== null && els.length < n) return false;
                    return els.every(el => el._fullLayout && el.querySelector('.main-svg')); }""",
        arg=count, timeout=timeout * 1000)
    return page.locator(".js-plotly-plot").count()


def chart_z(page, container_selector: str, trace: str = "heatmap") -> list:
    """The ``z`` values (nested lists) of the first ``trace``-type trace of the first Plotly chart
    inside ``container_selector`` (typed arrays and plotly's base64 encoding are decoded)."""
    return page.evaluate(
        """([sel, kind]) => {
             const el = document.querySelector(sel + ' .js-plotly-plot');
             if (!el) return null;
             const t = (el._fullData || el.data).find(t => t.type === kind);
             if (!t) return null;
             const z = (t._z !== undefined ? t._z : t.z);
             return Array.from(z, row => Array.from(row));
           }""", [container_selector, trace])


def deselect(page, label: str, values: Iterable[str], timeout: float = 120.0) -> None:
    """Remove ``values`` from the Streamlit multiselect labelled ``label`` (one rerun each)."""
    box = page.locator('[data-testid="stMultiSelect"]', has_text=label).first
    for v in values:
        tag = box.locator(f'.react-aria-ComboBox [data-tag][aria-label="{v}"]').first

        def remove() -> None:  # keyboard: a click on a tag's "x" misses once the tag row scrolls
            tag.focus()
            page.keyboard.press("Backspace")

        wait_rerun(page, remove, timeout)
        deadline = time.monotonic() + timeout
        while v in selected_values(page, label):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{v!r} is still selected in {label!r}")
            page.wait_for_timeout(100)
        wait_idle(page, timeout, settle=0.5)


def selected_values(page, label: str) -> list[str]:
    """The values currently selected in the multiselect labelled ``label``."""
    box = page.locator('[data-testid="stMultiSelect"]', has_text=label).first
    return [t.get_attribute("aria-label") for t in box.locator(".react-aria-ComboBox [data-tag]").all()]


def selectbox_value(page, label: str) -> str:
    """The value shown by the Streamlit selectbox labelled ``label``."""
    box = page.locator('[data-testid="stSelectbox"]', has_text=label).first
    return box.locator("input").first.input_value()


def chart_y(page, container_selector: str, index: int = 0) -> list:
    """The ``y`` values of trace ``index`` of the first Plotly chart inside ``container_selector``."""
    return page.evaluate(
        """([sel, i]) => {
             const el = document.querySelector(sel + ' .js-plotly-plot');
             if (!el) return null;
             const t = (el._fullData || el.data)[i];
             return t ? Array.from(t.y, Number) : null;
           }""", [container_selector, index])


def wait_text(page, selector: str, pattern: str, timeout: float = 120.0) -> str:
    """Wait until the element ``selector`` shows text matching the regex ``pattern``; returns the text."""
    import re

    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        loc = page.locator(selector)
        if loc.count():
            text = loc.first.inner_text()
            if re.search(pattern, text):
                return text
        page.wait_for_timeout(100)
    raise TimeoutError(f"{selector} never matched {pattern!r}; last text: {text!r}")


def hover_text(page, container_selector: str, fx: float = 0.5, fy: float = 0.5, timeout: float = 10.0) -> str:
    """Move the mouse over the first Plotly chart in ``container_selector`` at the fractional position
    ``(fx, fy)`` of its plot area and return the hover label's text."""
    area = page.locator(f"{container_selector} .js-plotly-plot .nsewdrag").first
    box = area.bounding_box()
    if box is None:
        raise AssertionError(f"no plot area in {container_selector}")
    area.scroll_into_view_if_needed()
    box = area.bounding_box()
    page.mouse.move(box["x"] + box["width"] * fx - 3, box["y"] + box["height"] * fy - 3)
    page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy, steps=3)
    label = page.locator(f"{container_selector} .hoverlayer .hovertext").first
    label.wait_for(timeout=timeout * 1000)
    return " ".join((label.text_content() or "").split())  # SVG: no inner_text
