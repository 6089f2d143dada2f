"""Fixtures for the dashboard tests: a real `ratchet ui` process, a real headless Chromium.

``ui_server``  ``ui_server(dsn, actions=False, token=None)`` starts ``python -m ratchet ui``
               on a free port and returns its base URL; stopped at teardown
``browser``    (session) headless Chromium (/usr/bin/chromium) driven by Playwright
``page``       a fresh browser page; a screenshot is saved to build/ui-screenshots/
               at teardown, named after the test
``demo``       the demo data (ratchet.ui.demo.populate) in the test database

The tests skip, saying why, when Chromium or Playwright is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "ui-screenshots"
CHROMIUM = os.environ.get("RATCHET_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ui_server() -> Iterator[Callable[..., str]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(dsn: str, actions: bool = False, token: str | None = None) -> str:
        port = _free_port()
        args = [sys.executable, "-m", "ratchet", "ui", "--dsn", dsn, "--port", str(port),
                "--poll-interval", "0.2"]
        if actions:
            args.append("--actions")
        if token:
            args += ["--token", token]
        env = dict(os.environ, PYTHONPATH=str(ROOT / "python_client"))
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return url
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"ratchet ui did not come up: {out}")
            time.sleep(0.05)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM):
        pytest.skip(f"the dashboard tests need Chromium at {CHROMIUM} "
                    "(Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the dashboard tests need Playwright for Python (pip install playwright; "
                    "no `playwright install`: the system Chromium is used)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15000)
    pg = context.new_page()
    yield pg
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        pg.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    finally:
        context.close()


@pytest.fixture
def demo(conn: psycopg.Connection[Any]) -> dict[str, int]:
    from ratchet.ui.demo import populate

    return populate(conn, per_state=8)
