#!/usr/bin/env python
"""Benchmark: upload -> full comparison of all seven methods, measured in a real browser.

Starts the app on 127.0.0.1 (default models: the trained demo checkpoints in ``$TOAST_HOME``), opens
it in headless Chromium, and for each repetition uploads a new image (so nothing is cached) and
measures the wall time from handing the file to the page until every method's panel shows its map
for that image (script run finished, every Plotly chart drawn). A first upload warms the server up
(model loading) and is reported apart. Prints the median and writes JSON with ``--json``.

Usage::

    .venv/bin/python scripts/bench_app_latency.py [--reps 7] [--models demo] [--size 640x480] [--json out.json]
    .venv/bin/python scripts/bench_app_latency.py --compare-workers 1    # side by side vs one model at a time

A benchmark, not a test: the figure depends on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.browser.harness import (AppServer, Browser, browser_unavailable, IDLE, RUNNING,
                                   UPLOAD_INPUT)  # noqa: E402
from tests.browser.expect import make_image  # noqa: E402
from toast_core.bench.timing import machine_info  # noqa: E402
import torch  # noqa: E402
from tests.browser.ui import open_app, selectbox_value  # noqa: E402

METHODS = 7


def panels_ready(page, n: int) -> bool:
    return bool(page.evaluate(
        """(n) => { const p = document.querySelectorAll('[class*="st-key-panel-"]');
                    if (p.length < n) return false;
                    return Array.from(p).every(x => { const c = x.querySelector('.js-plotly-plot');
                                                      return c && c._fullLayout && c.querySelector('.main-svg'); }); }""",
        n))


def one_upload(page, path: Path, n_panels: int, timeout: float = 300.0) -> tuple[float, float | None]:
    """Upload ``path``; return (seconds until all panels show it, the server's compute seconds)."""
    label = f"upload/{path.name}"
    t0 = time.perf_counter()
    page.locator(UPLOAD_INPUT).first.set_input_files(str(path))
    seen_running = False
    while True:
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"no comparison for {path.name} within {timeout:.0f} s")
        if page.locator(RUNNING).count():
            seen_running = True
        elif (seen_running and page.locator(IDLE).count() and selectbox_value(page, "Image") == label
              and panels_ready(page, n_panels)):
            elapsed = time.perf_counter() - t0
            break
        page.wait_for_timeout(15)
    compute = page_s = None
    timing = page.locator(".st-key-compare-timing")
    if timing.count():
        text = timing.inner_text()
        if "compute_seconds=" in text:
            compute = float(text.split("compute_seconds=")[1].split()[0])
        if "page_seconds=" in text:
            page_s = float(text.split("page_seconds=")[1].split()[0])
    LAST_PAGE_SECONDS[:] = [page_s]
    return elapsed, compute


#: the server's page_seconds of the last :func:`one_upload` (script start to the end of the panels)
LAST_PAGE_SECONDS: list = [None]


def _open(server, browser, w: int, h: int, tmp: Path, tag: str) -> dict:
    page = browser.new_page()
    t0 = time.perf_counter()
    open_app(page, server.url, timeout=600)
    first_page = time.perf_counter() - t0
    models_line = page.locator('[data-testid="stSidebar"]').inner_text()
    n_panels = page.locator('[class*="st-key-panel-"]').count()
    if n_panels != METHODS:
        print(f"warning: {n_panels} panels on the page, expected {METHODS}", file=sys.stderr)
    warm, warm_compute = one_upload(page, make_image(tmp / f"warmup-{tag}.png", 0, (w, h)), n_panels)
    return {"page": page, "server": server, "panels": n_panels, "first_page_s": first_page, "warmup_upload_s": warm,
            "warmup_compute_s": warm_compute, "times_s": [], "computes": [], "pages": [],
            "models_line": " ".join(models_line.split())[-200:]}


def _summary(v: dict) -> dict:
    times, comps = v["times_s"], [c for c in v["computes"] if c is not None]
    pages = [p for p in v["pages"] if p is not None]
    return {"panels": v["panels"], "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "times_s": times, "server_compute_median_s": statistics.median(comps) if comps else None,
            "server_page_median_s": statistics.median(pages) if pages else None,
            "first_page_s": v["first_page_s"], "warmup_upload_s": v["warmup_upload_s"],
            "warmup_compute_s": v["warmup_compute_s"], "models_line": v["models_line"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--models", default="demo", help="TOAST_APP_MODELS (demo, tiny or a directory)")
    ap.add_argument("--size", default="640x480", help="uploaded image size WxH")
    ap.add_argument("--compare-workers", type=int, default=None, metavar="N",
                    help="also run a second server with TOAST_RECORD_WORKERS=N and alternate the uploads between "
                         "the two (same images, order swapped every repetition): the ratio of their medians")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    reason = browser_unavailable()
    if reason:
        print(f"cannot run the benchmark: {reason}", file=sys.stderr)
        return 2
    from contextlib import ExitStack

    from toast_core.cache import toast_home

    w, h = (int(v) for v in args.size.lower().split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-app-"))
    default_workers = os.environ.get("TOAST_RECORD_WORKERS") or "default"
    settings = {default_workers: {}}
    if args.compare_workers is not None:
        settings[str(args.compare_workers)] = {"TOAST_RECORD_WORKERS": str(args.compare_workers)}
    with ExitStack() as stack:
        browser = stack.enter_context(Browser())
        runs = {}
        for tag, extra in settings.items():
            server = stack.enter_context(AppServer(env={"TOAST_APP_MODELS": args.models, **extra}, home=toast_home(),
                                                   timeout=180))
            runs[tag] = _open(server, browser, w, h, tmp, tag)
        for r in range(args.reps):
            image = make_image(tmp / f"rep{r}.png", r + 1, (w, h))
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for tag in order:
                v = runs[tag]
                el, comp = one_upload(v["page"], image, v["panels"])
                v["times_s"].append(el)
                v["computes"].append(comp)
                v["pages"].append(LAST_PAGE_SECONDS[0])
                print(f"  upload {r + 1}/{args.reps} (record workers {tag}): {el:.2f} s in the browser"
                      + (f" (server compute {comp:.2f} s)" if comp is not None else ""))
        tracebacks = [t for v in runs.values() for t in v["server"].tracebacks()]
    result = {
        "models": args.models, "image_size": [w, h], "reps": args.reps,
        **_summary(runs[default_workers]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "cpu": machine_info(torch.device("cpu"))["cpu"],
        "record_workers": default_workers,
        "load_average": os.getloadavg(),
    }
    if args.compare_workers is not None:
        other = _summary(runs[str(args.compare_workers)])
        result["compared"] = {"record_workers": args.compare_workers, **other,
                              "median_ratio": other["median_s"] / result["median_s"]}
    for tag, v in runs.items():
        s_ = _summary(v)
        print(f"record workers {tag}: upload -> all {s_['panels']} panels: median {s_['median_s']:.2f} s "
              f"(min {s_['min_s']:.2f}, max {s_['max_s']:.2f}, n={args.reps}); server compute median "
              f"{s_['server_compute_median_s']}, page script median {s_['server_page_median_s']}; first page {s_['first_page_s']:.1f} s, warm-up upload "
              f"{s_['warmup_upload_s']:.2f} s")
    print(f"load average {result['load_average'][0]:.1f}")
    if tracebacks:
        print(f"!! {len(tracebacks)} server traceback(s)", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
