"""Helpers shared by the client tests (importable: tests/client is on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
APPS = HERE / "apps"


def poll(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Call ``cond`` every 20 ms until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def subprocess_env(dsn: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, RATCHET_DATABASE_URL=dsn, **extra)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(APPS), str(ROOT / "python_client"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def worker_log(proc: subprocess.Popen[str]) -> str:
    return Path(proc.log_path).read_text()  # type: ignore[attr-defined]


def run_cli(dsn: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "ratchet", "--dsn", dsn, *args],
                          env=subprocess_env(dsn), capture_output=True, text=True, timeout=60,
                          cwd=str(APPS))
    if check and proc.returncode != 0:
        raise AssertionError(f"ratchet {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc
