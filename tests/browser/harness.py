"""Drive the real app: start ``streamlit run app/main.py`` as a server and Debian's Chromium through
Playwright. Used by the browser tests (``tests/browser``, ``tests/test_sessions.py``,
``tests/test_serving.py``) and by ``scripts/screenshots.py`` / ``scripts/bench_app_latency.py``; page
helpers are in :mod:`tests.browser.ui`, expected content in :mod:`tests.browser.expect`.

Nothing here downloads anything: Chromium is the system one (``/usr/bin/chromium`` or
``$TOAST_CHROMIUM``); ``playwright install`` is never run.

Example::

    from tests.browser.ui import open_app, upload

    with AppServer(env={"TOAST_APP_MODELS": "tiny"}) as server, Browser() as browser:
        page = browser.new_page()
        open_app(page, server.url)          # waits for the first script run
        upload(page, "photo.png")
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterable, Optional

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

#: Chromium flags that keep it quiet on a closed network (see the project's environment notes).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
RUNNING = '[data-testid="stApp"][data-test-script-state="running"]'
UPLOAD_INPUT = '[data-testid="stFileUploader"] input[type="file"]'


# ------------------------------------------------------------------------------------------------
# Server
# ------------------------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (``VmRSS`` from ``/proc/<pid>/status``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class AppServer:
    """``streamlit run app/main.py`` on 127.0.0.1 and a free port, with its own environment.

    Args:
        env: variables added to (a copy of) this process's environment, e.g. ``TOAST_APP_MODELS``.
        home: the server's ``TOAST_HOME`` (default: a fresh temporary directory, removed on stop
            unless ``keep_home``).
        extra_args: more ``streamlit run`` options (``--server.maxUploadSize 1`` ...).
        address: the address to bind (default 127.0.0.1; None = leave it to .streamlit/config.toml and
            pass no ``--server.headless/--server.address/--browser.gatherUsageStats`` flags). The URL
            always uses 127.0.0.1.
        timeout: seconds to wait for ``/_stcore/health`` to answer ``ok``.

    Attributes:
        url, port, pid (the server process's own PID), log_path.
    """

    def __init__(self, env: Optional[dict] = None, home: Optional[str | os.PathLike] = None,
                 extra_args: Iterable[str] = (), address: Optional[str] = "127.0.0.1", timeout: float = 90.0,
                 keep_home: bool = False, digests: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self._tmp = tempfile.mkdtemp(prefix="toast-app-")
        self.home = Path(home) if home else Path(self._tmp) / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.keep_home = keep_home or home is not None
        self.log_path = Path(self._tmp) / "server.log"
        self.env = dict(os.environ)
        if address is None:  # test the project's config file alone: no STREAMLIT_* overrides either
            self.env = {k: v for k, v in self.env.items() if not k.startswith("STREAMLIT_")}
        else:
            self.env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
        self.env.update({"TOAST_HOME": str(self.home), "PYTHONUNBUFFERED": "1"})
        self.env.update(env or {})
        # digests=True: the same server started through tests/browser/digest_server.py, which can hash
        # the models the server holds in its cache (see model_digests()).
        launcher = [str(Path(__file__).with_name("digest_server.py"))] if digests else ["-m", "streamlit"]
        self.digest_dir = Path(self._tmp) / "digests" if digests else None
        if digests:
            self.env["TOAST_DIGEST_DIR"] = str(self.digest_dir)
        flags = [] if address is None else ["--server.headless", "true", "--server.address", address,
                                            "--browser.gatherUsageStats", "false"]
        self.args = [PYTHON, *launcher, "run", str(ROOT / "app" / "main.py"), *flags,
                     "--server.port", str(self.port), *extra_args]
        self.timeout = timeout
        self.proc: Optional[subprocess.Popen] = None
        self.pid: Optional[int] = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "AppServer":
        self._log = open(self.log_path, "wb")
        # Popen of the interpreter itself (no shell): proc.pid IS the server's PID.
        self.proc = subprocess.Popen(self.args, cwd=str(ROOT), env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.pid = self.proc.pid
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.timeout
        health = f"http://127.0.0.1:{self.port}/_stcore/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app server exited with code {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(health, timeout=2) as r:
                    if r.status == 200 and r.read().strip() == b"ok":
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"the app server did not answer on {health} within {self.timeout:.0f} s:\n"
                           f"{self.log()[-3000:]}")

    def stop(self, grace: float = 10.0) -> Optional[int]:
        """SIGTERM the server's PID, SIGKILL it after ``grace`` seconds. Returns the exit code."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.kill(self.pid, signal.SIGTERM)
                    code = self.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    os.kill(self.pid, signal.SIGKILL)
                    code = self.proc.wait(timeout=grace)
                except ProcessLookupError:
                    code = self.proc.wait(timeout=grace)
            else:
                code = self.proc.returncode
        if getattr(self, "_log", None) is not None and not self._log.closed:
            self._log.close()
        return code

    def cleanup(self) -> None:
        if not self.keep_home:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "AppServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- inspection --------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def model_digests(self, timeout: float = 120.0) -> dict:
        """``{model key: {"digest", "object", ...}}`` of the models cached in the server process
        (only for ``AppServer(digests=True)``)."""
        import json

        if self.digest_dir is None:
            raise RuntimeError("start the server with digests=True to hash its models")
        result = self.digest_dir / "digests.json"
        result.unlink(missing_ok=True)
        (self.digest_dir / "request").write_text("1")
        deadline = time.monotonic() + timeout
        while not result.exists():
            if time.monotonic() > deadline or not self.alive:
                raise TimeoutError("the server did not answer the digest request")
            time.sleep(0.1)
        payload = json.loads(result.read_text())
        if not payload["ok"]:
            raise RuntimeError(payload["error"])
        return payload["models"]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tracebacks(self) -> list[str]:
        """Python tracebacks the server printed (uncaught exceptions in a session's script run)."""
        text = self.log()
        return [chunk for chunk in text.split("Traceback (most recent call last)")[1:]]


# ------------------------------------------------------------------------------------------------
# Browser
# ------------------------------------------------------------------------------------------------

def chromium_path() -> Optional[str]:
    """``$TOAST_CHROMIUM`` when set (and only it), else Debian's ``/usr/bin/chromium``, else
    ``chromium`` on PATH."""
    forced = os.environ.get("TOAST_CHROMIUM", "").strip()
    candidates = [forced] if forced else ["/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def browser_unavailable() -> Optional[str]:
    """Why a real browser cannot run here, or None when it can (checked without starting one)."""
    if chromium_path() is None:
        where = os.environ.get("TOAST_CHROMIUM") or "/usr/bin/chromium or chromium on PATH"
        return (f"Chromium not found ({where}); install Debian's chromium (apt-get install chromium) "
                "to run the browser tests")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        return f"playwright is not installed ({e}); pip install -r requirements-dev.txt"
    return None


def skip_or_fail(reason: str) -> None:
    """``pytest.skip`` with the reason (shown by ``-ra``), or fail when ``TOAST_REQUIRE_BROWSER=1``."""
    import pytest

    if os.environ.get("TOAST_REQUIRE_BROWSER", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"browser required (TOAST_REQUIRE_BROWSER=1) but: {reason}")
    pytest.skip(f"browser tests skipped: {reason}")


def require_browser() -> None:
    """Skip the calling test (with the reason printed) when Chromium or Playwright is missing."""
    reason = browser_unavailable()
    if reason:
        skip_or_fail(reason)


def start_browser_or_skip(**kw) -> "Browser":
    """A started :class:`Browser`, or a skip (with the reason) when it cannot run here."""
    require_browser()
    b = Browser(**kw)
    try:
        return b.start()
    except Exception as e:  # noqa: BLE001 - report why
        first = str(e).splitlines()[0] if str(e) else ""
        skip_or_fail(f"Chromium did not start ({type(e).__name__}: {first})")


_SHARED: Optional["Browser"] = None


def shared_browser() -> "Browser":
    """One headless Chromium per process, started on first use (or a skip, with the reason, when it
    cannot run here). Playwright's sync API allows one running instance per thread, so every test
    that drives a browser from pytest's thread shares this one (each page in its own context);
    closed at exit."""
    global _SHARED
    if _SHARED is None or _SHARED.browser is None or not _SHARED.browser.is_connected():
        _SHARED = start_browser_or_skip()
    return _SHARED


def close_shared_browser() -> None:
    global _SHARED
    if _SHARED is not None:
        try:
            _SHARED.close()
        except Exception:  # noqa: BLE001 - at exit: nothing left to report to
            pass
        _SHARED = None


atexit.register(close_shared_browser)


class Browser:
    """Headless Chromium through Playwright; ``new_page()`` opens a page in a fresh context (own
    cookies, own Streamlit session). Use as a context manager."""

    def __init__(self, viewport: tuple[int, int] = (1400, 1000)):
        self.viewport = {"width": viewport[0], "height": viewport[1]}
        self._pw = None
        self.browser = None

    def start(self) -> "Browser":
        from playwright.sync_api import sync_playwright

        path = chromium_path()
        if path is None:
            raise RuntimeError(browser_unavailable())
        self._pw = sync_playwright().start()
        try:
            # launch() gives Chromium a fresh temporary --user-data-dir of its own, removed on close.
            self.browser = self._pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        except BaseException:
            self._pw.stop()
            raise
        return self

    def new_context(self, **kw):
        kw.setdefault("viewport", self.viewport)
        kw.setdefault("accept_downloads", True)
        return self.browser.new_context(**kw)

    def new_page(self, **kw):
        page = self.new_context(**kw).new_page()
        page.set_default_timeout(60_000)
        return page

    def close(self) -> None:
        try:
            if self.browser is not None:
                self.browser.close()
        finally:
            if self._pw is not None:
                self._pw.stop()
            self.browser = self._pw = None

    def __enter__(self) -> "Browser":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
