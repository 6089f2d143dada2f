"""The Python client is typed and lint-clean: ruff and mypy --strict run as tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_is_clean() -> None:
    paths = [p for p in ("python_client", "tests", "examples", "bench") if (ROOT / p).exists()]
    proc = run("ruff", "check", *paths)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    proc = run("mypy", "python_client/ratchet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
