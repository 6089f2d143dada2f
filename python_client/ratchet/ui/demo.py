"""``make demo-ui``: a throwaway PostgreSQL with demo workflows in every state,
served by the dashboard.

:func:`populate` writes the demo data through Ratchet's SQL functions only
(start, claim, record_step, finish, fail, suspend, send, set_event, cancel),
so every row is one a real worker could have produced. While the dashboard
runs, a background thread keeps starting and finishing workflows so the live
updates have something to show.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg.rows import dict_row

Conn = psycopg.Connection[Any]

NAMES = ("checkout", "send_invoice", "sync_inventory", "resize_images", "nightly_report")


def _start(conn: Conn, name: str, queue: str = "default", **kw: Any) -> str:
    args = "".join(f", {k} => %({k})s" for k in kw)
    row = conn.execute(f"select ratchet.start_workflow(%(name)s, queue => %(queue)s{args}) as id",
                       {"name": name, "queue": queue, **kw}).fetchone()
    assert row is not None
    return str(row["id"])


def _claim(conn: Conn, queue: str, worker: str, n: int = 1) -> list[dict[str, Any]]:
    return conn.execute("select * from ratchet.claim(%s, %s, %s, '10 minutes')",
                        [[queue], worker, n]).fetchall()


def _steps(conn: Conn, wid: str, run_id: int, count: int, start: int = 0,
           error_at: int | None = None) -> None:
    for i in range(start, start + count):
        failed = i == error_at
        conn.execute(
            "select ratchet.record_step(%s, %s, %s, %s, output => %s::jsonb, error => %s::jsonb)",
            [wid, run_id, i, random.choice(("fetch", "charge", "reserve", "render", "notify")),
             None if failed else json.dumps({"ok": True, "n": i}),
             json.dumps({"type": "TimeoutError", "message": "upstream did not answer",
                         "traceback": "Traceback (most recent call last):\n  File \"app.py\", "
                                      "line 12, in charge\nTimeoutError: upstream did not "
                                      "answer\n"}) if failed else None])


def populate(conn: Conn, per_state: int = 40, seed: int = 1) -> dict[str, int]:
    """Write demo workflows in every state; returns how many of each were made."""
    random.seed(seed)
    conn.execute("select ratchet.create_queue('emails', concurrency => 2)")
    conn.execute("select ratchet.create_queue('reports', rate_limit => 5, "
                 "rate_period => '1 minute')")
    conn.execute("select ratchet.create_queue('batch')")
    made: dict[str, int] = {}
    for i in range(per_state):
        name = NAMES[i % len(NAMES)]
        inp = json.dumps({"kwargs": {"order": i}})
        # succeeded, with steps
        wid = _start(conn, name, input=inp)
        [c] = _claim(conn, "default", f"worker-{i % 3}")
        _steps(conn, wid, c["run_id"], 3 + i % 4)
        conn.execute("select ratchet.finish(%s, %s, %s::jsonb)",
                     [wid, c["run_id"], json.dumps({"total": i * 10})])
        # failed with a traceback (no retry left)
        wid = _start(conn, name, input=inp, max_attempts=1)
        [c] = _claim(conn, "default", f"worker-{i % 3}")
        _steps(conn, wid, c["run_id"], 2, error_at=1)
        conn.execute("select ratchet.fail(%s, %s, %s::jsonb)", [wid, c["run_id"], json.dumps({
            "type": "ValueError", "message": f"card declined for order {i}",
            "traceback": "Traceback (most recent call last):\n  File \"shop.py\", line 40, "
                         f"in checkout\nValueError: card declined for order {i}\n"})])
        # dead: out of attempts while asking for a retry
        if i % 4 == 0:
            wid = _start(conn, name, input=inp, max_attempts=1)
            [c] = _claim(conn, "default", f"worker-{i % 3}")
            conn.execute("select ratchet.fail(%s, %s, %s::jsonb, retry_in => '1 second')",
                         [wid, c["run_id"], json.dumps({"type": "ConnectionError",
                                                        "message": "database went away"})])
        # cancelled
        wid = _start(conn, name, input=inp, queue="batch")
        conn.execute("select ratchet.cancel(%s)", [wid])
        # waiting for a message
        wid = _start(conn, "approval", input=inp)
        [c] = _claim(conn, "default", "worker-0")
        _steps(conn, wid, c["run_id"], 1)
        conn.execute("select ratchet.suspend(%s, %s, 'infinity', 'message', 'approved')",
                     [wid, c["run_id"]])
        # parent waiting for a child
        parent = _start(conn, "fan_out", input=inp)
        [c] = _claim(conn, "default", "worker-1")
        child = _start(conn, "resize_images", queue="batch", parent_id=parent)
        conn.execute("select ratchet.set_event(%s, %s, 0, 'progress', %s::jsonb)",
                     [parent, c["run_id"], json.dumps({"done": 0, "of": 1})])
        conn.execute("select ratchet.suspend(%s, %s, 'infinity', 'child', %s)",
                     [parent, c["run_id"], child])
        conn.execute("select ratchet.send(%s, %s::jsonb, topic => 'note')",
                     [parent, json.dumps({"from": "ops"})])
        # sleeping (delayed)
        _start(conn, "send_invoice", input=inp, queue="emails",
               start_at=datetime.now(timezone.utc) + timedelta(minutes=10 + i))
        # due, never claimed
        _start(conn, "nightly_report", input=inp, queue="reports")
    # running: a handful on the emails queue (concurrency 2), more on default
    for i in range(per_state // 4):
        _start(conn, "checkout", input=json.dumps({"kwargs": {"order": 1000 + i}}))
    for c in _claim(conn, "default", "worker-live", per_state // 4):
        _steps(conn, c["workflow_id"], c["run_id"], 2)
    for i in range(4):
        _start(conn, "send_invoice", queue="emails", input=json.dumps({"kwargs": {"n": i}}))
    _claim(conn, "emails", "mailer-1")
    _claim(conn, "emails", "mailer-2")
    conn.execute("select ratchet.pause_queue('batch')")
    conn.execute("select ratchet.schedule('nightly', '0 3 * * *', 'nightly_report', "
                 "timezone => 'Europe/Paris')")
    conn.execute("select ratchet.schedule('every-15m', '*/15 * * * *', 'sync_inventory')")
    for row in conn.execute("select status, count(*) as n from ratchet.workflows "
                            "group by status").fetchall():
        made[row["status"]] = int(row["n"])
    return made


def _keep_busy(dsn: str, stop: threading.Event) -> None:
    """Start a workflow and finish it every couple of seconds (live updates)."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        while not stop.wait(2.0):
            wid = _start(conn, random.choice(NAMES), input='{"kwargs": {}}')
            claimed = conn.execute("select * from ratchet.claim_workflow(%s, 'demo-live', "
                                   "'1 minute')", [wid]).fetchall()
            for c in claimed:
                _steps(conn, wid, c["run_id"], 2)
                conn.execute("select ratchet.finish(%s, %s, '\"ok\"')", [wid, c["run_id"]])


def main(argv: list[str] | None = None) -> int:
    """Start a throwaway PostgreSQL, fill it, and serve the dashboard."""
    parser = argparse.ArgumentParser(prog="python -m ratchet.ui.demo",
                                     description="the dashboard on demo data")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token", default="demo",
                        help="token for actions (default: demo; actions are on)")
    args = parser.parse_args(argv)
    from .._install import install
    from ..testing import EmbeddedPostgres
    from .app import serve

    with EmbeddedPostgres() as pg:
        dsn = pg.dsn("postgres")
        print(install(dsn), flush=True)
        t0 = time.monotonic()
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
            made = populate(conn)
        print(f"demo workflows ({time.monotonic() - t0:.1f}s): {made}", flush=True)
        stop = threading.Event()
        busy = threading.Thread(target=_keep_busy, args=(dsn, stop), daemon=True)
        busy.start()
        print(f"Ratchet dashboard on http://{args.host}:{args.port}/ (sign in for actions "
              f"with token {args.token!r}); Ctrl-C stops it and the database", flush=True)
        try:
            serve(dsn, args.host, args.port, actions=True, token=args.token)
        finally:
            stop.set()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
