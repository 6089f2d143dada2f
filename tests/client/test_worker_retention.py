"""Retention from the client: the worker's maintenance timer, App methods, the CLI."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

import ratchet


def _old_ended(conn, n: int, status: str = "succeeded", queue: str = "default") -> None:
    """n workflows that ended on 2000-01-01 (far past every retention period)."""
    conn.execute(
        "insert into ratchet.workflows (workflow_id, status, name, queue, start_at, created_at, "
        "ended_at, updated_at) select 'old-' || %s || '-' || i, %s, 'wf', %s, t, t, t, t "
        "from generate_series(1, %s) i, (select timestamptz '2000-01-01Z' as t) c",
        (status, status, queue, n))
    conn.execute("insert into ratchet.steps (workflow_id, step_id, name, output, recorded_at) "
                 "select workflow_id, 0, 's', '1', ended_at from ratchet.workflows "
                 "where workflow_id like 'old-' || %s || '-%%'", (status,))


def _count(conn, where: str = "true") -> int:
    return conn.execute(f"select count(*) as n from ratchet.workflows where {where}"
                        ).fetchone()["n"]


def test_worker_runs_retention_on_its_timer(app, conn, run_worker, wait_until):
    _old_ended(conn, 25)
    keep = app.start("nothing-registered", workflow_id="live")
    worker = run_worker(maintenance_interval=0.2, maintenance_batch=10)
    assert wait_until(lambda: _count(conn, "workflow_id like 'old-%'") == 0, 15)
    assert worker.maintained["workflows"] == 25 and worker.maintained["steps"] == 25
    assert keep.status() == "enqueued"


def test_worker_survives_a_failing_maintain(app, conn, run_worker, wait_until, caplog):
    conn.execute("alter function ratchet.maintain(int) rename to maintain_gone")
    try:
        with caplog.at_level("WARNING", logger="ratchet"):
            worker = run_worker(maintenance_interval=0.1)
            assert wait_until(lambda: "maintain() failed" in caplog.text, 10)

            @app.workflow(name="still-works")
            def still_works() -> int:
                return 7

            assert app.start(still_works).result(timeout=15) == 7
            assert worker.running_count == 0
    finally:
        conn.execute("alter function ratchet.maintain_gone(int) rename to maintain")


def test_app_purge_set_retention_maintain(app, conn):
    _old_ended(conn, 3, "failed")
    _old_ended(conn, 2, "succeeded")
    app.set_retention("default", "failed", None)
    got = app.maintain()
    assert (got["workflows"], got["skipped"]) == (2, False)
    assert _count(conn) == 3  # failed: kept forever now
    assert app.purge(86400, status="failed", max_rows=2) == 2
    assert app.purge(86400) == 1
    with pytest.raises(ratchet.RatchetError):
        app.set_retention("default", "running", 60)


def test_cli_purge_and_retention(dsn, conn):
    _old_ended(conn, 4, "dead")
    assert json.loads(run_cli(dsn, "purge", "--older-than", "1d", "--dry-run", "--json").stdout
                      ) == {"workflows": 4, "dry_run": True}
    shown = json.loads(run_cli(dsn, "retention", "--json").stdout)
    assert {"queue": "default", "status": "dead", "keep": "30 days, 0:00:00", "due": 4} in shown \
        or any(r["status"] == "dead" and r["due"] == 4 for r in shown)
    run_cli(dsn, "retention", "--queue", "default", "--status", "dead", "--set", "forever")
    assert "forever" in run_cli(dsn, "retention", "--queue", "default").stdout
    out = run_cli(dsn, "purge", "--older-than", "1d", "--status", "dead", "--batch", "3").stdout
    assert out.strip() == "deleted 4 ended workflow(s)"
    assert _count(conn) == 0
    bad = run_cli(dsn, "retention", "--set", "2d", check=False)
    assert bad.returncode == 1 and "needs --queue" in bad.stderr
