#!/usr/bin/env python3
"""Entry point of `make test-matrix`: the SQL-level suite on every other supported PostgreSQL.

    python3 tests/matrix.py [--versions 14,16,17,18] [--jobs N] [pytest arguments]

Runs ``pytest tests/sql`` once per major version with ``RATCHET_TEST_PG=<major>``
(the servers `make pgversions` installs), ``--jobs`` of them at a time
(default 2: a test spends most of its time waiting on the server's
``CREATE DATABASE``, so two runs share two cores well). Each run's output
goes to ``.tmp/matrix-<major>.log`` and is printed when the run fails.
The throwaway clusters live in ``/dev/shm`` when it has room (``TMPDIR``):
``CREATE DATABASE`` per test is several times faster on tmpfs than on disk.
Prints the wall time per version and in total; exits non-zero if any failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VERSIONS = "14,16,17,18"


def _tmpdir() -> str | None:
    """/dev/shm when it is a writable tmpfs with at least 2 GiB free, else None."""
    shm = "/dev/shm"  # noqa: S108 - each server makes its own private directory inside
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    if not os.access(shm, os.W_OK | os.X_OK) or st.f_bavail * st.f_frsize < 2 << 30:
        return None
    return shm


def run_one(major: str, extra: list[str]) -> tuple[str, int, float, Path]:
    """pytest tests/sql on PostgreSQL ``major``; returns (major, status, seconds, log)."""
    log = ROOT / ".tmp" / f"matrix-{major}.log"
    log.parent.mkdir(exist_ok=True)
    env = {**os.environ, "RATCHET_TEST_PG": major, "RATCHET_TEST_INSTALL": "plain"}
    env.pop("RATCHET_TEST_PG_BINDIR", None)
    tmp = _tmpdir()
    if tmp is not None:
        env["TMPDIR"] = tmp
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/sql", *extra]
    started = time.monotonic()
    with log.open("w") as out:
        status = subprocess.run(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        ).returncode
    return major, status, time.monotonic() - started, log


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", default=os.environ.get("PG_MATRIX", DEFAULT_VERSIONS))
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MATRIX_JOBS", "2")))
    args, extra = parser.parse_known_args(argv)
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    print(f"matrix: tests/sql on PostgreSQL {', '.join(versions)} ({args.jobs} at a time)",
          flush=True)
    started = time.monotonic()
    failed = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for major, status, seconds, log in pool.map(lambda v: run_one(v, extra), versions):
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            print(f"matrix: PostgreSQL {major}: {tail[0]} [{seconds:.0f}s, log {log}]", flush=True)
            if status != 0:
                failed.append(major)
                print(log.read_text(errors="replace"), flush=True)
    print(f"matrix: total {time.monotonic() - started:.0f}s", flush=True)
    if failed:
        print(f"matrix: failed on PostgreSQL {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
