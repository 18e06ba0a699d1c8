#!/usr/bin/env python
"""Benchmark: the first start from an empty cache, as a new user meets it (issue 13).

Runs ``bash scripts/run_app.sh`` with an empty ``$TOAST_HOME`` (default: a fresh temporary directory),
opens the app in headless Chromium as soon as the server answers, and measures from the moment the
script starts:

* ``server_up_s``: the server answers ``/_stcore/health``;
* ``six_maps_s``: the Compare page shows at least six trained methods' maps (panels drawn);
* then, while full fine-tuning trains in the background, ``--reps`` uploads of new images, each timed
  from handing the file to the page until every panel shows its map (as scripts/bench_app_latency.py);
* ``finetune_joined_s``: the finetune panel appears on the same page, without a reload.

It saves a screenshot of the page while fine-tuning trains (``--screenshot``) and writes JSON with
``--json``. The background trainer and the server are stopped at the end; the cache is kept (``--home``)
for screenshots.

Usage::

    .venv/bin/python scripts/bench_first_start.py [--home DIR] [--reps 7] [--json out.json] [--screenshot PNG]

A benchmark, not a test: the figures depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.bench_app_latency import one_upload, panels_ready  # noqa: E402
from tests.browser.expect import make_image  # noqa: E402
from toast_core.bench.timing import machine_info  # noqa: E402
import torch  # noqa: E402
from tests.browser.harness import Browser, browser_unavailable, free_port  # noqa: E402
from tests.browser.ui import wait_idle  # noqa: E402


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.status == 200 and r.read().strip() == b"ok"
    except OSError:
        return False


def panel_count(page) -> int:
    return page.locator('[class*="st-key-panel-"]').count()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", default=None, help="TOAST_HOME to start from (must be empty or absent)")
    ap.add_argument("--reps", type=int, default=7, help="uploads timed while fine-tuning trains")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--json", default=None)
    ap.add_argument("--screenshot", default=None, help="PNG of the Compare page while fine-tuning trains")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args(argv)
    reason = browser_unavailable()
    if reason:
        print(f"cannot run the benchmark: {reason}", file=sys.stderr)
        return 2
    from toast_core.demo import background as bg

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="first-start-")) / "home"
    if home.exists() and any(home.iterdir()):
        print(f"{home} is not empty: the benchmark starts from an empty cache", file=sys.stderr)
        return 2
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "TOAST_HOME": str(home), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    log_path = home.parent / "run_app.log"
    w, h = (int(v) for v in args.size.lower().split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="first-start-img-"))
    result: dict = {"home": str(home), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                    "cpu": machine_info(torch.device("cpu"))["cpu"],
                    "load_average_start": os.getloadavg()}
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", "scripts/run_app.sh", "--server.port", str(port)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out = home / "demo"
    try:
        while not healthy(port):
            if proc.poll() is not None:
                raise RuntimeError(f"run_app.sh exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            if time.perf_counter() - t0 > args.timeout:
                raise TimeoutError("the server never answered")
            time.sleep(0.2)
        result["server_up_s"] = round(time.perf_counter() - t0, 1)
        print(f"server up after {result['server_up_s']} s")
        with Browser() as browser:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            while not (panel_count(page) >= 6 and panels_ready(page, 6)):
                if time.perf_counter() - t0 > args.timeout:
                    raise TimeoutError("no six maps on the Compare page")
                page.wait_for_timeout(100)
            result["six_maps_s"] = round(time.perf_counter() - t0, 1)
            result["panels_at_six"] = panel_count(page)
            print(f"six methods' maps on Compare after {result['six_maps_s']} s ({result['panels_at_six']} panels)")
            try:  # the foreground's results (the background trainer rewrites the file when it ends)
                fg = json.loads((out / "results.json").read_text())
                result["foreground_seconds"] = fg.get("seconds")
                result["foreground_stage_seconds"] = fg.get("stage_seconds")
            except (OSError, ValueError):
                pass
            wait_idle(page, timeout=600)
            status = bg.read_status(out) or {}
            result["training_running_at_six"] = bool(status.get("running"))
            if args.screenshot:
                from scripts.screenshots import capture

                page.wait_for_selector(".st-key-bg-sidebar", timeout=120_000)
                page.wait_for_timeout(5000)  # a few progress refreshes: the step and the time left show
                size = capture(page, Path(args.screenshot), 1400, 2200)
                page.set_viewport_size({"width": 1400, "height": 1000})
                print(f"screenshot {args.screenshot} ({size / 1024:.0f} KB)")
            times, running = [], []
            n = panel_count(page)
            for r in range(args.reps + 1):
                el, _ = one_upload(page, make_image(tmp / f"rep{r}.png", r + 100, (w, h)), n)
                still = bg.is_running(out)
                if r == 0:
                    result["warmup_upload_s"] = round(el, 2)
                    continue
                times.append(round(el, 2))
                running.append(bool(still))
                print(f"  upload {r}/{args.reps}: {el:.2f} s (fine-tuning running: {still})")
            if times:
                result.update(upload_times_s=times, upload_median_s=statistics.median(times),
                              uploads_while_training=sum(running), upload_n=len(times))
            while panel_count(page) < 7 or not panels_ready(page, 7):
                if time.perf_counter() - t0 > args.timeout:
                    raise TimeoutError("fine-tuning never joined")
                page.wait_for_timeout(250)
            result["finetune_joined_s"] = round(time.perf_counter() - t0, 1)
            print(f"finetune joined after {result['finetune_joined_s']} s (no reload)")
        status = bg.read_status(out) or {}
        result["background_status"] = {k: status.get(k) for k in ("state", "seconds", "trained", "nice")}
        results_json = out / "results.json"
        if results_json.exists():
            res = json.loads(results_json.read_text())
            result["finetune_test_acc"] = res["methods"].get("finetune", {}).get("test_acc")
        result["load_average_end"] = os.getloadavg()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        bg.stop(out, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
