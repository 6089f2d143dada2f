"""``ratchet demo``: kill a worker with SIGKILL mid-workflow, watch another finish it.

Without ``--dsn`` it starts a throwaway PostgreSQL (the installed server
binaries; as an unprivileged user when run as root), installs Ratchet, starts
a five-step workflow, runs a worker subprocess, kills it with ``kill -9``
while it is inside step 3 (a transaction), starts a second worker and shows
that the workflow finished with every step's effect applied exactly once.
Exit status 0 on success, 1 if any effect happened twice (or never).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg.rows import dict_row

LEASE = 2.0
TIMEOUT = 90.0


class _Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:5.1f}s] {message}", flush=True)


def _wait(what: str, check: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def _database(dsn: str | None, clock: _Clock) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from .testing import EmbeddedPostgres

    with EmbeddedPostgres() as pg:
        clock.say(f"started a throwaway PostgreSQL (binaries in {pg.bindir}, "
                  f"running as {pg.os_user}, port {pg.port})")
        yield pg.dsn("postgres")


class _Worker:
    def __init__(self, label: str, dsn: str, log: IO[str], slow: float = 0.0) -> None:
        env = dict(os.environ, RATCHET_DATABASE_URL=dsn, RATCHET_DEMO_SLOW=str(slow))
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root,
                                                        env.get("PYTHONPATH")) if p)
        self.label = label
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ratchet", "worker", "ratchet._demo_app:app",
             "--concurrency", "2", "--lease", str(LEASE), "--poll-interval", "0.5",
             "--log-level", "INFO"],
            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_demo(dsn: str | None) -> int:
    """Run the demo; returns the process exit status."""
    from . import _demo_app
    from ._install import install

    clock = _Clock()
    print("Ratchet demo: a worker is killed with SIGKILL in the middle of a workflow.\n")
    workers: list[_Worker] = []
    log = tempfile.NamedTemporaryFile("w+", prefix="ratchet-demo-", suffix=".log",
                                      delete=False)
    try:
        with _database(dsn, clock) as url:
            clock.say(install(url))
            with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
                conn.execute(_demo_app.EFFECTS_TABLE)
                return _run(url, conn, clock, workers, log)
    finally:
        for w in workers:
            w.stop()
        log.close()


def _run(url: str, conn: psycopg.Connection[dict[str, Any]], clock: _Clock,
         workers: list[_Worker], log: IO[str]) -> int:
    from ._demo_app import STEPS

    workflow_id = f"demo-order-{uuid.uuid4().hex[:6]}"
    conn.execute("select ratchet.start_workflow(name => 'demo_checkout', "
                 "input => %s::jsonb, workflow_id => %s)",
                 ('{"args": [42]}', workflow_id))
    clock.say(f"started workflow {workflow_id}: {' -> '.join(STEPS)}")

    seen: set[int] = set()

    def report_steps() -> None:
        for step in conn.execute("select step_id, name, run_id from ratchet.steps "
                                 "where workflow_id = %s order by step_id",
                                 (workflow_id,)).fetchall():
            if step["step_id"] not in seen:
                seen.add(step["step_id"])
                clock.say(f"  step {step['step_id']} {step['name']:<13} checkpointed "
                          f"(run {step['run_id']})")

    first = _Worker("A", url, log, slow=60.0)
    workers.append(first)
    clock.say(f"worker A started (pid {first.proc.pid}, lease {LEASE:.0f} s)")

    def inside_step_3() -> bool:
        report_steps()
        if first.proc.poll() is not None:
            raise RuntimeError(f"worker A exited early; see {log.name}")
        row = conn.execute("select count(*) as n from pg_stat_activity "
                           "where query like '%%ratchet-demo: ship_order%%' "
                           "and pid <> pg_backend_pid()").fetchone()
        return 2 in seen and row is not None and row["n"] > 0

    _wait("worker A to reach step 3", inside_step_3)
    clock.say("worker A is inside step 3 (ship_order): its transaction is open, "
              "not committed")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    clock.say(f"kill -9 {first.proc.pid}: worker A is gone, mid-step")

    second = _Worker("B", url, log)
    workers.append(second)
    clock.say(f"worker B started (pid {second.proc.pid}); it takes the workflow over once "
              f"A's lease expires")

    def ended() -> Any:
        report_steps()
        row = conn.execute("select status, output, error, attempts from ratchet.workflows "
                           "where workflow_id = %s", (workflow_id,)).fetchone()
        assert row is not None
        return row if row["status"] in ("succeeded", "failed", "cancelled", "dead") else None

    final = _wait("the workflow to finish", ended)
    report_steps()
    clock.say(f"workflow {final['status']} after {final['attempts']} run(s): {final['output']}")

    print(f"\n$ ratchet show {workflow_id}")
    from .cli import main

    main(["--dsn", url, "show", workflow_id])
    print("\nHow many times each step's effect happened (rows in demo_effects):")
    counts = {r["step"]: r["n"] for r in conn.execute(
        "select step, count(*) as n from demo_effects where workflow_id = %s group by step",
        (workflow_id,)).fetchall()}
    ok = final["status"] == "succeeded"
    for step in STEPS:
        n = counts.get(step, 0)
        ok = ok and n == 1
        print(f"  {step:<14} {n}  {'exactly once' if n == 1 else 'WRONG'}")
    print()
    if ok:
        print("Every step ran exactly once, although the worker running the workflow was "
              "killed with SIGKILL\ninside a transactional step: the recorded steps were "
              "replayed from their checkpoints,\nthe interrupted transaction rolled back, "
              "and worker B finished the rest.")
        return 0
    log.flush()
    print(f"FAILED: see the worker logs in {log.name}", file=sys.stderr)
    return 1
