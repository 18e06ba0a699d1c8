"""Fixtures for the real-browser tests: the app as a server and headless Chromium (Playwright).

Where Chromium or Playwright is missing, every browser test is skipped and the reason is printed in
pytest's summary (``-ra``). Set ``TOAST_REQUIRE_BROWSER=1`` to make that a failure instead (CI on a
machine that must have a browser).
"""
from __future__ import annotations

import pytest

from tests.browser.harness import AppServer, close_shared_browser, shared_browser


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (Debian's, through Playwright) for the session, shared with the other
    browser tests of this process; each test page gets a fresh context."""
    yield shared_browser()
    close_shared_browser()


@pytest.fixture(scope="session")
def app_server(browser, tmp_path_factory):
    """The app served on 127.0.0.1:<free port> with random tiny models (``TOAST_APP_MODELS=tiny``) and
    its own TOAST_HOME; always stopped (SIGTERM to the server's own PID, then SIGKILL)."""
    server = AppServer(env={"TOAST_APP_MODELS": "tiny"}, home=tmp_path_factory.mktemp("app_home"))
    server.start()
    try:
        yield server
    finally:
        code = server.stop()
        print(f"app server pid {server.pid} stopped (exit code {code})")
    assert not server.alive, f"the app server (pid {server.pid}) is still running"


@pytest.fixture
def page(browser, app_server):
    """A fresh browser context and page: its own Streamlit session."""
    p = browser.new_page()
    yield p
    p.context.close()
