"""Behind pgbouncer in transaction mode: ``App(dsn)`` works unchanged.

A real pgbouncer (tests/pooler.py) sits in front of the test server with
fewer server connections than the worker has threads, so consecutive
transactions of one client connection land on different backends. Prepared
statements are off by default; wake-ups either LISTEN on a direct
``listen_dsn`` or, with ``pooled=True`` and no ``listen_dsn``, nothing LISTENs
and every wait polls.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from clients import Client
from pooler import PGBOUNCER, PgBouncer

import ratchet

pytestmark = pytest.mark.skipif(PGBOUNCER is None,
                                reason="pgbouncer is not installed (Debian: pgbouncer)")

Cursor = psycopg.Cursor[Any]
N = 300


@pytest.fixture
def bouncer(pg_server: Any) -> Iterator[PgBouncer]:
    with PgBouncer(pg_server, pool_size=4) as b:
        yield b


@pytest.fixture
def pooled_dsn(bouncer: PgBouncer, dsn: str) -> str:
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    return bouncer.dsn(str(dbname))


def _listening_backends(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute("select application_name from pg_stat_activity "
                        "where query ilike 'listen %%' and pid <> pg_backend_pid()").fetchall()
    return [r["application_name"] for r in rows]


def _app_with_flow(app: ratchet.App) -> ratchet.Workflow[[int], int]:
    @app.transaction()
    def record(cur: Cursor, i: int) -> int:
        cur.execute("insert into effects (i) values (%s)", (i,))
        cur.execute("select pg_backend_pid()")
        row = cur.fetchone()
        assert row is not None
        return int(row[0])

    @app.workflow(name="pooled_flow")
    def flow(i: int) -> int:
        record(i)
        return i * 2

    return flow


def _client_with_flow(client: Client) -> None:
    app = client.app
    if client.flavor == "sync":
        @app.transaction()
        def record(cur: Cursor, i: int) -> int:
            cur.execute("insert into effects (i) values (%s)", (i,))
            return i

        @app.workflow(name="pooled_flow")
        def flow(i: int) -> int:
            record(i)
            return i * 2
    else:
        @app.transaction()
        async def arecord(cur: psycopg.AsyncCursor[Any], i: int) -> int:
            await cur.execute("insert into effects (i) values (%s)", (i,))
            return i

        @app.workflow(name="pooled_flow")
        async def aflow(i: int) -> int:
            await arecord(i)
            return i * 2


@pytest.mark.parametrize("flavor", ["sync", "async"])
@pytest.mark.parametrize("wakeups", ["listen_dsn", "polling"])
def test_workflows_finish_exactly_once_through_pgbouncer(
    wakeups: str, flavor: str, pooled_dsn: str, dsn: str, conn: psycopg.Connection[Any],
) -> None:
    conn.execute("create table effects (i int not null)")
    if wakeups == "listen_dsn":
        client = Client(flavor, pooled_dsn, flows=False, poll_interval=None,
                        listen_dsn=dsn + " application_name=direct-listen")
    else:
        client = Client(flavor, pooled_dsn, flows=False, poll_interval=None, pooled=True)
        assert client.app.poll_interval == ratchet.App.POOLED_POLL_INTERVAL
    try:
        _client_with_flow(client)
        # half one call each, half in one start_many call
        handles = [client.start("pooled_flow", i) for i in range(N // 2)]
        handles += client.wait(client.app.start_many(
            [("pooled_flow", [i]) for i in range(N // 2, N)]))
        client.run_worker(concurrency=8, poll_interval=None)
        assert [client.result(h, 120) for h in handles] == [i * 2 for i in range(N)]
        counts = conn.execute("select count(*) as n, count(distinct i) as d from effects"
                              ).fetchone()
        assert counts == {"n": N, "d": N}
        statuses = conn.execute("select status, count(*) as n from ratchet.workflows "
                                "group by 1").fetchall()
        assert statuses == [{"status": "succeeded", "n": N}]
        listeners = _listening_backends(conn)
        if wakeups == "listen_dsn":
            assert listeners and set(listeners) == {"direct-listen"}
        else:
            assert listeners == []
    finally:
        client.close()


def test_pooler_killing_server_connections_mid_run_loses_nothing(
    bouncer: PgBouncer, pooled_dsn: str, dsn: str, conn: psycopg.Connection[Any],
    run_worker: Any, wait_until: Any,
) -> None:
    conn.execute("create table effects (i int not null)")
    app = ratchet.App(pooled_dsn, pooled=True)
    try:
        flow = _app_with_flow(app)
        handles = [app.start(flow, i) for i in range(N)]
        run_worker(the_app=app, concurrency=8, poll_interval=None)
        wait_until(lambda: conn.execute("select count(*) as n from effects").fetchone()["n"] > 20,
                   timeout=60, what="some workflows done")
        # pgbouncer drops every server connection of the database, in whatever
        # transaction it is: the clients get an error and reconnect.
        dbname = str(psycopg.conninfo.conninfo_to_dict(pooled_dsn)["dbname"])
        bouncer.admin(f"KILL {dbname}")
        bouncer.admin(f"RESUME {dbname}")
        assert [h.result(timeout=120) for h in handles] == [i * 2 for i in range(N)]
        counts = conn.execute("select count(*) as n, count(distinct i) as d from effects"
                              ).fetchone()
        assert counts == {"n": N, "d": N}
    finally:
        app.close()


def test_prepared_statements_stay_off_by_default(pooled_dsn: str) -> None:
    app = ratchet.App(pooled_dsn)
    try:
        with app.connection() as c:
            assert c.prepare_threshold is None
    finally:
        app.close()
