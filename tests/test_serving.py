"""Serving beyond localhost (issue 7, part 5), checked against real app servers.

* By default (``.streamlit/config.toml``, no command-line overrides) the server listens on 127.0.0.1
  only, sends no usage statistics, and has XSRF protection on: an upload request without the XSRF
  token is refused with 403.
* Serving beyond localhost (``--server.address 0.0.0.0``): loading checkpoints by server path is
  disabled on the Models page, uploads over ``server.maxUploadSize`` are refused by the page and by the
  server (413), XSRF stays on. On 127.0.0.1 the path input is available.
"""
from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.browser.expect import make_image
from tests.browser.harness import AppServer, ROOT, shared_browser, UPLOAD_INPUT
from tests.browser.ui import goto_page, open_app, selectbox_value, upload, wait_charts, wait_idle

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None


def _config() -> dict:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())


def test_default_config_is_the_safe_one():
    cfg = _config()
    server = cfg["server"]
    assert server["address"] == "127.0.0.1"
    assert server["enableXsrfProtection"] is True
    assert server["headless"] is True
    assert 1 <= server["maxUploadSize"] <= 50  # MB
    assert cfg["browser"]["gatherUsageStats"] is False


def _listening(port: int) -> list[str]:
    """Local addresses of the LISTEN sockets on ``port`` (IPv4 and IPv6), as hex strings."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            addr, port_hex = cols[1].rsplit(":", 1)
            if int(port_hex, 16) == port and cols[3] == "0A":  # 0A = LISTEN
                out.append(addr)
    return out


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1 (as /proc/net prints them)
ANY = {"00000000", "00000000000000000000000000000000"}


def _xsrf_refused(url: str) -> int:
    """HTTP status of a file upload PUT that carries no XSRF token."""
    req = urllib.request.Request(url.rstrip("/") + "/_stcore/upload_file/some-session/some-file", method="PUT",
                                 data=b"x" * 10, headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    """``streamlit run app/main.py --server.port N``: every other setting from .streamlit/config.toml, and
    the app's default models (an empty TOAST_HOME: the demo checkpoints are not there, so the app shows
    random tiny models, labelled as such)."""
    s = AppServer(env={"TOAST_APP_MODELS": ""}, home=tmp_path_factory.mktemp("serve_default"), address=None)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def public_server(tmp_path_factory):
    """Served beyond localhost, with a 1 MB upload limit."""
    s = AppServer(env={"TOAST_APP_MODELS": "tiny"}, home=tmp_path_factory.mktemp("serve_public"),
                  address="0.0.0.0", extra_args=["--server.maxUploadSize", "1"])
    s.start()
    yield s
    s.stop()


def test_default_server_listens_on_loopback_only(default_server):
    addrs = _listening(default_server.port)
    assert addrs, "no listening socket found for the server"
    assert set(addrs) <= LOOPBACK, f"the default server listens beyond loopback: {addrs}"
    # and it does not answer on another interface of this machine (when it has one)
    try:
        other = socket.gethostbyname(socket.gethostname())
    except OSError:
        other = None
    if other and not other.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((other, default_server.port), timeout=3).close()
    assert "gatherUsageStats" not in default_server.log()


def test_xsrf_protection_is_on(default_server, public_server):
    for server in (default_server, public_server):
        assert _xsrf_refused(server.url) == 403, f"upload without XSRF token not refused ({server.args})"


def test_public_server_listens_everywhere(public_server):
    assert set(_listening(public_server.port)) & ANY


@pytest.mark.browser
def test_default_command_shows_a_first_comparison(default_server):
    """The README's command opens on a comparison of every method without any further step."""
    import toast_core as tc

    page = shared_browser().new_page()
    try:
        open_app(page, default_server.url)
        n = len(tc.available_methods())
        wait_charts(page, n)
        assert page.locator('[class*="st-key-panel-"]').count() == n
        assert page.locator('[data-testid="stException"]').count() == 0
        assert "untrained" in page.locator('[data-testid="stAlert"]').first.inner_text().lower()
    finally:
        page.context.close()


def _models_path_input(page):
    field = page.locator('.st-key-ckpt-path input').first
    field.wait_for(timeout=60_000)  # element bundles load lazily after the script run
    label = page.locator('.st-key-ckpt-path [data-testid="stWidgetLabel"]').inner_text()
    assert "checkpoint path" in label, label
    return field


@pytest.mark.browser
def test_path_input_enabled_on_localhost_only(default_server, public_server):
    browser = shared_browser()
    for server, enabled in ((default_server, True), (public_server, False)):
        page = browser.new_page()
        try:
            open_app(page, server.url)
            goto_page(page, "Models")
            field = _models_path_input(page)
            assert field.is_enabled() is enabled, f"path input enabled={field.is_enabled()} on {server.args}"
            notice = page.get_by_text("Loading by path is disabled")
            assert (notice.count() > 0) is (not enabled)
            load = page.locator(".st-key-ckpt-path-load button")
            assert load.count() == 1
            if not enabled:
                assert not load.first.is_enabled(), "the load-by-path button is enabled beyond localhost"
        finally:
            page.context.close()


@pytest.mark.browser
def test_public_upload_limit_in_page_and_server(public_server, tmp_path):
    page = shared_browser().new_page()
    try:
        uploads: list = []
        page.on("request", lambda r: uploads.append(r) if "/_stcore/upload_file/" in r.url and r.method == "PUT" else None)
        open_app(page, public_server.url)
        # a small image uploads normally (and shows us the upload URL and XSRF header the page uses)
        upload(page, make_image(tmp_path / "small.png", 1))
        assert uploads, "no upload request seen"
        req = uploads[-1]
        headers = {k: v for k, v in req.all_headers().items() if k.lower() in ("x-xsrftoken", "cookie")}
        assert "x-xsrftoken" in {k.lower() for k in headers}, "the page sends no XSRF token"

        # over the limit: refused in the page, the previous image stays
        big = tmp_path / "big.png"
        import numpy as np
        from PIL import Image

        Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)).save(big)
        assert big.stat().st_size > 1024 * 1024
        page.locator(UPLOAD_INPUT).first.set_input_files(str(big))
        page.wait_for_timeout(500)
        wait_idle(page)
        assert page.get_by_text("must be 1.0MB or smaller").count() + page.get_by_text("1MB or smaller").count() > 0, \
            "no message for the oversized file"
        assert selectbox_value(page, "Image") == "upload/small.png"

        # and by the server, even when a client skips the page's check (same session, same token)
        body = b"\0" * (1024 * 1024 + 4096)
        resp = page.request.put(req.url, headers=headers,
                                multipart={"file": {"name": "big.png", "mimeType": "image/png", "buffer": body}})
        assert resp.status == 413, resp.status
        # without the token the same request is refused before anything is read
        headers_no_token = {k: v for k, v in headers.items() if k.lower() != "x-xsrftoken"}
        resp = page.request.put(req.url, headers=headers_no_token,
                                multipart={"file": {"name": "s.png", "mimeType": "image/png", "buffer": b"x"}})
        assert resp.status == 403, resp.status
    finally:
        page.context.close()
    assert public_server.tracebacks() == []
