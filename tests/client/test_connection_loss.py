"""Lost connections (terminated backends, server restarts) stop a run; they never fail it.

Regression tests for what the chaos suite found: a transactional step whose
connection died was recorded as a permanent step failure; after a restart
every stale pooled connection failed once before the pool noticed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import ratchet


def test_terminated_backend_in_transactional_step_is_retried_not_failed(
    dsn: str, conn: psycopg.Connection[Any], run_worker: Callable[..., ratchet.Worker],
    wait_until: Callable[..., Any],
) -> None:
    conn.execute("create table effects (workflow_id text)")
    app = ratchet.App(dsn + " application_name=victim-app", poll_interval=0.2)
    entered = threading.Event()
    attempts: list[int] = []

    @app.transaction()
    def apply(cur: psycopg.Cursor[Any]) -> str:
        attempts.append(1)
        cur.execute("insert into effects values (%s)", [ratchet.workflow_id()])
        if len(attempts) == 1:
            entered.set()
            cur.execute("select pg_sleep(30)")  # terminated by the test
        return "applied"

    @app.workflow()
    def flow() -> str:
        return apply()

    try:
        handle = app.start(flow, workflow_id="tx-1")
        run_worker(app, lease=2.0)
        assert entered.wait(10)

        def terminated() -> bool:
            row = conn.execute(
                "select count(pg_terminate_backend(pid)) as n from pg_stat_activity"
                " where application_name = 'victim-app' and query like '%%pg_sleep(30)%%'"
            ).fetchone()
            return bool(row and row["n"])

        wait_until(terminated, what="the step's backend to be terminated")
        assert handle.result(timeout=30) == "applied"
        assert len(attempts) == 2, "the step ran again after its transaction was lost"
        effects = conn.execute("select count(*) as n from effects").fetchone()
        assert effects == {"n": 1}, "the lost transaction's insert must not survive"
        step = conn.execute("select output, error from ratchet.steps").fetchone()
        assert step == {"output": "applied", "error": None}
    finally:
        app.close()


def test_pool_recovers_after_server_restart(pg_server_factory: Callable[..., Any]) -> None:
    pg = pg_server_factory()
    app = ratchet.App(pg.dsn(), poll_interval=0.2, pool_size=4)

    @app.workflow()
    def ping() -> str:
        return "pong"

    try:
        # fill the pool with idle connections that the restart will kill
        handles = [app.start(ping) for _ in range(4)]
        with app._db.connection(), app._db.connection(), app._db.connection():
            pass
        pg.restart("immediate")
        # the first start after the restart goes through (lost connections are
        # retried for an idempotent start), and so does everything after it
        handles.append(app.start(ping, workflow_id="after-restart"))
        handles.append(app.start(ping))
        worker = app.worker(["default"], concurrency=2, lease=5, install_signal_handlers=False,
                            poll_interval=0.2)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            assert [h.result(timeout=30) for h in handles] == ["pong"] * len(handles)
        finally:
            worker.stop()
            worker.stop()
            thread.join(15)
    finally:
        app.close()


@pytest.mark.parametrize("restart_mode", ["immediate"])
def test_worker_keeps_running_across_a_restart(
    pg_server_factory: Callable[..., Any], restart_mode: str, wait_until: Callable[..., Any],
) -> None:
    pg = pg_server_factory()
    app = ratchet.App(pg.dsn(), poll_interval=0.2)

    @app.workflow()
    def echo(x: int) -> int:
        return x

    worker = app.worker(["default"], concurrency=2, lease=3, install_signal_handlers=False,
                        poll_interval=0.2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert app.start(echo, 1).result(timeout=20) == 1
        pg.restart(restart_mode)
        assert app.start(echo, 2).result(timeout=30) == 2
        assert thread.is_alive()
    finally:
        worker.stop()
        worker.stop()
        thread.join(15)
        app.close()
