"""Crash tests with real worker processes killed with SIGKILL (and SIGSTOP).

Each worker that is going to die is told (``CRASH_BLOCK_AT``) to stop at a
known point and touch a marker file; the test waits for the marker, never for
a fixed time, kills the worker, starts another, and checks the results by
counting rows: no completed step runs again, a transaction's effect happens
exactly once. Every scenario runs against the sync client (apps/crashapp.py)
and the async one (apps/crashapp_async.py, the same workflows as ``async def``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import poll, worker_log

pytestmark = pytest.mark.slow

LEASE = "1.5"


@pytest.fixture(params=["crashapp:app", "crashapp_async:app"], ids=["sync", "async"])
def target(request: pytest.FixtureRequest) -> str:
    """The worker app: the sync or the async client, the same workflows."""
    return str(request.param)


@pytest.fixture
def barrier(tmp_path: Path) -> Path:
    path = tmp_path / "barrier"
    path.mkdir()
    return path


@pytest.fixture
def setup_db(conn):
    conn.execute("""create table crash_effects (
      id bigserial primary key, workflow_id text not null, what text not null,
      pid int not null, at timestamptz not null default clock_timestamp())""")
    return conn


def start(conn, name: str, args: list[Any], workflow_id: str) -> str:
    conn.execute("select ratchet.start_workflow(%s, input => %s::jsonb, workflow_id => %s)",
                 (name, json.dumps({"args": args}), workflow_id))
    return workflow_id


def effects(conn, workflow_id: str | None = None) -> dict[str, int]:
    rows = conn.execute("select what, count(*) as n from crash_effects "
                        "where %s::text is null or workflow_id = %s group by what",
                        (workflow_id, workflow_id)).fetchall()
    return {r["what"]: r["n"] for r in rows}


def wait_ended(conn, workflow_id: str, timeout: float = 30.0) -> dict[str, Any]:
    return poll(lambda: conn.execute(
        "select status, output, error, attempts from ratchet.workflows "
        "where workflow_id = %s and status in ('succeeded', 'failed', 'cancelled', 'dead')",
        (workflow_id,)).fetchone(), timeout, f"workflow {workflow_id} to end")


def kill9(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def blocking_env(point: str, barrier: Path) -> dict[str, str]:
    return {"CRASH_BLOCK_AT": point, "CRASH_BARRIER_DIR": str(barrier)}


def test_kill9_between_steps(setup_db, spawn_worker, barrier, target):
    conn = setup_db
    wid = start(conn, "pipeline", [1], "between-1")
    a = spawn_worker(target, "--lease", LEASE, env=blocking_env("between", barrier))
    poll(lambda: (barrier / "between").exists(), 30, "worker A to reach the barrier")
    kill9(a)
    assert effects(conn) == {"s1": 1, "s2": 1}
    spawn_worker(target, "--lease", LEASE)
    result = wait_ended(conn, wid)
    assert result["status"] == "succeeded"
    assert result["output"] == [2, 4, "tx-4", "TX-4"]
    assert effects(conn) == {"s1": 1, "s2": 1, "tx": 1, "s3": 1}
    runs = conn.execute("select step_id, run_id from ratchet.steps where workflow_id = %s "
                        "order by step_id", (wid,)).fetchall()
    assert runs[0]["run_id"] == runs[1]["run_id"] != runs[2]["run_id"]


def test_kill9_inside_a_transactional_step(setup_db, spawn_worker, barrier, target):
    conn = setup_db
    wid = start(conn, "pipeline", [5], "tx-1")
    a = spawn_worker(target, "--lease", LEASE, env=blocking_env("tx", barrier))
    poll(lambda: (barrier / "tx").exists(), 30, "worker A to be inside the transaction")
    kill9(a)
    spawn_worker(target, "--lease", LEASE)
    result = wait_ended(conn, wid)
    assert result["status"] == "succeeded"
    assert result["output"] == [6, 12, "tx-12", "TX-12"]
    # The killed transaction's insert rolled back: the effect happened once.
    assert effects(conn) == {"s1": 1, "s2": 1, "tx": 1, "s3": 1}


def test_many_workflows_survive_a_kill9(setup_db, spawn_worker, barrier, target):
    conn = setup_db
    ids = [start(conn, "pipeline", [i], f"many-{i}") for i in range(6)]
    a = spawn_worker(target, "--lease", LEASE, "--concurrency", "8",
                     env=blocking_env("tx", barrier))
    poll(lambda: (barrier / "tx").exists(), 30, "worker A to be inside a transaction")
    kill9(a)
    recorded = {(r["workflow_id"], r["name"]) for r in conn.execute(
        "select workflow_id, name from ratchet.steps").fetchall()}
    spawn_worker(target, "--lease", LEASE, "--concurrency", "8")
    for i, wid in enumerate(ids):
        result = wait_ended(conn, wid)
        assert result["status"] == "succeeded"
        assert result["output"][2] == f"tx-{(i + 1) * 2}"
        done = effects(conn, wid)
        # Transactional: exactly once. Plain steps checkpointed before the kill
        # never ran again; one interrupted between its effect and its
        # checkpoint may have (steps are at-least-once).
        assert done["tx"] == 1
        for name in ("s1", "s2", "s3"):
            assert done[name] == 1 or (wid, name) not in recorded


def test_lease_stolen_from_a_stopped_worker(setup_db, spawn_worker, barrier, target):
    """Worker A is frozen (SIGSTOP) inside a transactional step past its lease;
    worker B takes the workflow over and finishes it. When A wakes up, its
    checkpoint is rejected with RT002 and its transaction rolls back."""
    conn = setup_db
    wid = start(conn, "pipeline", [2], "race-1")
    a = spawn_worker(target, "--lease", "1", env=blocking_env("tx", barrier), name="A")
    poll(lambda: (barrier / "tx").exists(), 30, "worker A to be inside the transaction")
    os.kill(a.pid, signal.SIGSTOP)
    try:
        poll(lambda: conn.execute("select 1 from ratchet.workflows where workflow_id = %s "
                                  "and lease_expires_at < ratchet.now()", (wid,)).fetchone(),
             30, "A's lease to expire")
        spawn_worker(target, "--lease", "5", name="B")
        result = wait_ended(conn, wid)
        assert result["status"] == "succeeded"
    finally:
        (barrier / "release").touch()
        os.kill(a.pid, signal.SIGCONT)
    poll(lambda: "RT002" in worker_log(a), 30, "worker A to hit RT002")
    assert "dropping this run" in worker_log(a)
    assert effects(conn) == {"s1": 1, "s2": 1, "tx": 1, "s3": 1}
    assert result["output"] == [3, 6, "tx-6", "TX-6"]
    # A is still a healthy worker and shuts down cleanly.
    a.send_signal(signal.SIGTERM)
    assert a.wait(20) == 0


def test_sigterm_releases_running_workflows(setup_db, spawn_worker, barrier, target):
    conn = setup_db
    wid = start(conn, "pipeline", [3], "term-1")
    a = spawn_worker(target, "--grace-period", "0.5", env=blocking_env("between", barrier))
    poll(lambda: (barrier / "between").exists(), 30, "worker A to reach the barrier")
    a.send_signal(signal.SIGTERM)
    assert a.wait(20) == 0
    wf = conn.execute("select status, run_id, attempts from ratchet.workflows "
                      "where workflow_id = %s", (wid,)).fetchone()
    assert wf["status"] == "enqueued" and wf["run_id"] is None
    t0 = time.monotonic()
    spawn_worker(target, "--lease", LEASE)
    result = wait_ended(conn, wid)
    assert result["status"] == "succeeded"
    assert time.monotonic() - t0 < 10  # released: no lease to wait for
    assert effects(conn) == {"s1": 1, "s2": 1, "tx": 1, "s3": 1}


def test_kill9_while_waiting_in_recv_delivers_once(setup_db, spawn_worker, target):
    conn = setup_db
    wid = start(conn, "waiter", [], "recv-1")
    a = spawn_worker(target, "--lease", LEASE)
    poll(lambda: conn.execute("select 1 from ratchet.steps where workflow_id = %s "
                              "and name = 'sleep'", (wid,)).fetchone(), 30,
         "the workflow to wait in recv")
    kill9(a)
    conn.execute("select ratchet.send(%s, '\"hello\"', topic => 'go')", (wid,))
    spawn_worker(target, "--lease", LEASE)
    result = wait_ended(conn, wid)
    assert result["status"] == "succeeded" and result["output"] == "hello"
    assert effects(conn) == {"received hello": 1}
    consumed = conn.execute("select count(*) as n from ratchet.messages "
                            "where consumed_at is not null").fetchone()["n"]
    assert consumed == 1


def test_kill9_during_a_sleep_keeps_the_wake_time(setup_db, spawn_worker, target):
    conn = setup_db
    wid = start(conn, "sleeper", [1.5], "sleep-1")
    a = spawn_worker(target, "--lease", "1")
    step = poll(lambda: conn.execute("select output->>'wake_at' as wake_at from ratchet.steps "
                                     "where workflow_id = %s and name = 'sleep'",
                                     (wid,)).fetchone(), 30, "the sleep to start")
    kill9(a)
    spawn_worker(target, "--lease", "1")
    result = wait_ended(conn, wid)
    assert result["status"] == "succeeded"
    woke = conn.execute("select at >= %s::timestamptz as after from crash_effects "
                        "where what = 'woke'", (step["wake_at"],)).fetchone()
    assert woke["after"]
    assert effects(conn) == {"s1": 1, "woke": 1}
    assert conn.execute("select count(*) as n from ratchet.steps where workflow_id = %s "
                        "and name = 'sleep'", (wid,)).fetchone()["n"] == 1


def test_kill9_while_waiting_for_a_child_starts_it_once(setup_db, spawn_worker, barrier,
                                                        target):
    conn = setup_db
    wid = start(conn, "parent", [4], "parent-1")
    a = spawn_worker(target, "--lease", LEASE, env=blocking_env("child", barrier))
    poll(lambda: (barrier / "child").exists(), 30, "the child to run")
    kill9(a)
    spawn_worker(target, "--lease", LEASE)
    result = wait_ended(conn, wid)
    assert result["status"] == "succeeded" and result["output"] == 41
    children = conn.execute("select count(*) as n from ratchet.workflows where parent_id = %s",
                            (wid,)).fetchone()["n"]
    assert children == 1
