"""A real browser for tests: Debian's chromium, headless, driven through WebDriver (chromium-driver), and a static
file server on 127.0.0.1 (Starlette's, which answers Range requests as a web server or an LMS does)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = ("/usr/bin/chromedriver",)


def _first(paths) -> str | None:
    return next((p for p in paths if os.access(p, os.X_OK)), None) or None


def chromium():
    """A headless chromium session. Missing, the test fails (never a silent skip): `make test` installs it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = _first(CHROMIUM) or shutil.which("chromium"), _first(DRIVER) or shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: `make test` installs them "
                    "(as root: apt-get install chromium chromium-driver)")
    opts = Options()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--no-first-run",
              "--disable-background-networking", "--disable-popup-blocking", "--disable-component-update", "--disable-sync",
              "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):  # nothing but loopback
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def wait_for(driver, script: str, timeout: float = 20.0, what: str = ""):
    """Poll a JavaScript expression until it is truthy; its value. Fails naming `what` and the last value."""
    end, last = time.monotonic() + timeout, None
    while time.monotonic() < end:
        last = driver.execute_script(f"return ({script});")
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or script} (last: {last!r})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(app):
    """An ASGI app on 127.0.0.1 in a thread (uvicorn), stopped on exit; yields its base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    end = time.monotonic() + 10
    while not server.started and time.monotonic() < end:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)


@contextlib.contextmanager
def serve_folder(folder: Path):
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    with serve_app(Starlette(routes=[Mount("/", StaticFiles(directory=str(folder), html=True))])) as url:
        yield url
