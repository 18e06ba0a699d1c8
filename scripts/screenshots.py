#!/usr/bin/env python
"""Screenshots of the app's main views for the README: ``docs/screenshots/<view>.png``.

Starts the app (``streamlit run app/main.py`` on 127.0.0.1 and a free port) with the trained demo
checkpoints from ``$TOAST_HOME`` (run ``python -m toast_core prepare-demo`` first; without them the app
shows random tiny models, labelled as such), drives Debian's Chromium through Playwright, waits for each
page's script run and charts, and saves one PNG per view (each kept under 500 KB).

Usage::

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--models demo|tiny|DIR]
                                            [--image PATH] [--width 1400]

Never downloads anything (no ``playwright install``); needs /usr/bin/chromium.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.browser.harness import AppServer, Browser, browser_unavailable  # noqa: E402
from tests.browser.ui import goto_page, open_app, upload, wait_charts, wait_idle  # noqa: E402

MAX_BYTES = 500 * 1024
#: (file stem, navigation title, charts to wait for at least)
VIEWS = [("compare", "Compare", 1), ("layers", "Layers", 0), ("inspector", "TOAST inspector", 3),
         ("models", "Models", 0), ("export", "Export", 0), ("analysis", "Analysis", 0)]


def shrink_png(png: bytes, limit: int = MAX_BYTES) -> bytes:
    """Re-encode a screenshot so it fits ``limit`` bytes: optimised PNG, then an adaptive 256-colour
    palette, then smaller sizes. Returns PNG bytes."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")

    def encode(im) -> bytes:
        buf = io.BytesIO()
        im.save(buf, "PNG", optimize=True)
        return buf.getvalue()

    out = encode(img)
    if len(out) <= limit:
        return out
    scale = 1.0
    while True:
        im = img if scale == 1.0 else img.resize((round(img.width * scale), round(img.height * scale)),
                                                 Image.Resampling.LANCZOS)
        out = encode(im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
        if len(out) <= limit or scale < 0.3:
            return out
        scale *= 0.85


def content_height(page) -> int:
    """Height in CSS pixels of the page's scrolling content (Streamlit scrolls inside its main area)."""
    return int(page.evaluate(
        """() => Math.max(...[document.querySelector('[data-testid="stMain"]'),
                             document.querySelector('[data-testid="stAppViewContainer"]'),
                             document.querySelector('[data-testid="stSidebarContent"]'),
                             document.documentElement]
                 .filter(Boolean).map(e => e.scrollHeight))"""))


def capture(page, path: Path, width: int, max_height: int) -> int:
    """Full-height screenshot of the current view (the viewport grows to the content, up to
    ``max_height``), shrunk to fit. Returns the file size."""
    height = 0
    for _ in range(4):  # grow the viewport until the content fits (lazy elements can add height)
        want = min(max(content_height(page), 800), max_height)
        if want <= height:
            break
        height = want
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(500)
        wait_idle(page, settle=0.5)
    try:
        wait_charts(page, None, timeout=60)
    except Exception:  # noqa: BLE001 - a page without charts
        pass
    page.wait_for_timeout(600)  # plotly transitions, image fade-in
    data = shrink_png(page.screenshot(full_page=False, animations="disabled"))
    path.write_bytes(data)
    return len(data)


def run_analysis(page, n_images: int, timeout: float = 900) -> None:
    """Set the Analysis page's image count, press Run and wait for its results."""
    box = page.locator(".st-key-keep-ana-n input")
    box.fill(str(n_images))
    box.press("Enter")
    wait_idle(page, settle=0.5)
    page.locator(".st-key-ana-run button").click()
    page.locator(".st-key-analysis-results").wait_for(timeout=timeout * 1000)
    wait_idle(page, settle=1.0, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    ap.add_argument("--models", default="demo", help="TOAST_APP_MODELS for the server (demo, tiny or a directory)")
    ap.add_argument("--image", default=None, help="upload this image first (default: the gallery's first image)")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--max-height", type=int, default=2200)
    ap.add_argument("--analysis-images", type=int, default=30, help="images the Analysis view runs over")
    ap.add_argument("--views", default=",".join(v[0] for v in VIEWS), help="comma-separated subset of views")
    args = ap.parse_args(argv)

    reason = browser_unavailable()
    if reason:
        print(f"cannot take screenshots: {reason}", file=sys.stderr)
        return 2
    from toast_core.cache import toast_home

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.views.split(","))
    t0 = time.perf_counter()
    with AppServer(env={"TOAST_APP_MODELS": args.models}, home=toast_home(), timeout=180) as server, \
            Browser(viewport=(args.width, 1000)) as browser:
        page = browser.new_page()
        open_app(page, server.url, timeout=600)
        if args.image:
            upload(page, args.image, timeout=600)
        nav = [t.strip() for t in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]
        for stem, title, charts in VIEWS:
            if stem not in wanted:
                continue
            if not any(title.lower() in t.lower() for t in nav):
                print(f"  {stem}: no '{title}' page in this app, skipped")
                continue
            goto_page(page, title, timeout=600)
            if charts:
                wait_charts(page, charts, timeout=300)
            if stem == "analysis":
                run_analysis(page, args.analysis_images)
            size = capture(page, out / f"{stem}.png", args.width, args.max_height)
            errors = page.locator('[data-testid="stException"]').count()
            print(f"  {stem}: {out / f'{stem}.png'} ({size / 1024:.0f} KB)" + (f"  !! {errors} exception box(es)" if errors else ""))
            page.set_viewport_size({"width": args.width, "height": 1000})
        if server.tracebacks():
            print("server tracebacks:\n" + "\n".join(server.tracebacks()), file=sys.stderr)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
