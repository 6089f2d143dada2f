"""A shortened chaos run (``make chaos`` is the long one).

Runs ``python -m tests.chaos.harness`` in a subprocess with a fixed seed: 150
workflows (with slow steps, so that faults find work in flight) on 3 worker
processes, with every kind of fault injected (SIGKILL of
workers, ``pg_terminate_backend`` of their connections, an immediate-mode
restart of PostgreSQL, stolen leases by SIGSTOP), and asserts that the
harness's checks from the tables pass: every workflow succeeded, transactional
effects exactly once, at-least-once calls carry their idempotency key,
checkpoints complete, never overwritten, and written only by the current run.

The harness starts its own server (it restarts it), so this test does not use
the session ``pg_server`` fixture.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED = 12
TIMEOUT = 85  # seconds; the harness bounds each of its own waits well below this


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT + 15)
def test_short_chaos_run_keeps_every_guarantee(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "tests.chaos.harness",
           "--workflows", "150", "--workers", "3", "--concurrency", "4", "--seed", str(SEED),
           "--duration", "16", "--work-ms", "400",
           "--faults", "kill9=2,terminate=2,restart=2,stall=2",
           "--drain-timeout", "40", "--log-dir", str(tmp_path / "logs"),
           "--json", str(report_file)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "python_client"), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the harness cleans up on SIGTERM
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"the chaos harness did not finish within {TIMEOUT}s:\n{out}")
    assert proc.returncode == 0, f"chaos run failed (exit {proc.returncode}):\n{out}"
    report = json.loads(report_file.read_text())
    assert report["ok"] and not report["violations"], out
    stats = report["stats"]
    faults = stats["faults injected"]
    for kind in ("kill9", "terminate", "restart", "stall"):
        assert faults[kind] >= 1, f"no {kind} fault was injected:\n{out}"
    assert stats["statuses"] == {"succeeded": 150 + stats["children"]}, out
    # The faults hit running work: workflows were taken over by another run, among
    # them some whose worker was stopped (a stolen lease).
    assert stats["recovered workflows (attempts > 1)"] >= 1, out
    assert stats["leases stolen from stalled (SIGSTOP) workers"] >= 1, out
