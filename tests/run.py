#!/usr/bin/env python3
"""Entry point of `make test`: prepare the extension files, then run pytest.

    python3 tests/run.py [pytest arguments]

As root (CI) it runs `make install`, so that `CREATE EXTENSION ratchet` works
in the throwaway server; as a normal user only when `pg_config --sharedir` is
writable, otherwise the tests install Ratchet from the plain-SQL script.
The exit status is pytest's, except that "no tests collected" counts as a
failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTEST_NO_TESTS_COLLECTED = 5


def _sharedir() -> Path | None:
    """`pg_config --sharedir`, or None when pg_config is unusable."""
    pg_config = os.environ.get("PG_CONFIG", "pg_config")
    try:
        out = subprocess.run(
            [pg_config, "--sharedir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return Path(out) if out else None


def _make(*targets: str) -> int:
    """Run make in the repository root; returns its exit status."""
    cmd = ["make", "-s", "-C", str(ROOT), *targets]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=False).returncode


def install_extension() -> int:
    """Install the extension files where the server finds them, if allowed."""
    sharedir = _sharedir()
    extdir = sharedir / "extension" if sharedir else None
    if os.geteuid() == 0 or (extdir is not None and os.access(extdir, os.W_OK)):
        status = _make("install")
        if status != 0:
            print("run.py: `make install` failed", file=sys.stderr)
        return status
    print(
        f"run.py: note: {extdir or 'the PostgreSQL sharedir'} is not writable, so the "
        "extension is not installed; the tests install Ratchet from the plain-SQL "
        "script (ratchet.sql) instead of CREATE EXTENSION.",
        flush=True,
    )
    return _make("sql")


def main(argv: list[str]) -> int:
    """Install, run pytest with ``argv``, and return the exit status."""
    status = install_extension()
    if status != 0:
        return status
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *argv]
    print("+", " ".join(cmd), flush=True)
    status = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    if status == PYTEST_NO_TESTS_COLLECTED:
        print("run.py: pytest collected no tests; counting that as a failure", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
