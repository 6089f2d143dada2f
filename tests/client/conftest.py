"""Fixtures for the Python client's tests.

``app``          a ``ratchet.App`` on the test database (short poll interval)
``run_worker``   ``run_worker(app=..., **kw)`` runs a Worker in a thread; stopped at teardown
``wait_until``   ``wait_until(cond, timeout=10, what=...)`` polls ``cond`` until truthy
``spawn_worker`` ``spawn_worker("module:app", env=..., args=[...])``: a worker subprocess
                 (module from tests/client/apps); killed at teardown
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import APPS, poll, subprocess_env  # noqa: E402

import ratchet


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    return poll


@pytest.fixture
def app(dsn: str) -> Iterator[ratchet.App]:
    a = ratchet.App(dsn, poll_interval=0.2)
    yield a
    a.close()


@pytest.fixture
def run_worker(app: ratchet.App) -> Iterator[Callable[..., ratchet.Worker]]:
    started: list[tuple[ratchet.Worker, threading.Thread]] = []

    def start(the_app: ratchet.App | None = None, **kw: Any) -> ratchet.Worker:
        kw.setdefault("install_signal_handlers", False)
        kw.setdefault("concurrency", 4)
        kw.setdefault("poll_interval", 0.2)
        kw.setdefault("grace_period", 2.0)
        worker = (the_app or app).worker(**kw)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        assert worker.wait_started(10)
        started.append((worker, thread))
        return worker

    yield start
    for worker, _ in started:
        worker.stop()
        worker.stop()
    for _, thread in started:
        thread.join(15)


@pytest.fixture
def spawn_worker(dsn: str, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def spawn(target: str, *args: str, env: dict[str, str] | None = None,
              name: str = "worker") -> subprocess.Popen[str]:
        log = open(tmp_path / f"{name}-{len(procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "ratchet", "worker", target, "--log-level", "INFO", *args],
            env=subprocess_env(dsn, **(env or {})), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, cwd=str(APPS))
        proc.log_path = log.name  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            with_cont = getattr(signal, "SIGCONT", None)
            if with_cont is not None:
                proc.send_signal(with_cont)
            proc.kill()
        proc.wait(10)


