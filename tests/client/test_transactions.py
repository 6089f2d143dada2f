"""Transactional steps: the user's SQL and the checkpoint commit together."""

from __future__ import annotations

from collections import Counter
from typing import Any

import psycopg
import pytest

import ratchet

Cursor = psycopg.Cursor[Any]


@pytest.fixture
def effects(conn):
    conn.execute("create table effects (id serial primary key, what text not null)")

    def count(what: str | None = None) -> int:
        row = conn.execute("select count(*) as n from effects where %s::text is null "
                           "or what = %s", (what, what)).fetchone()
        return int(row["n"])

    return count


def test_transaction_commits_with_its_checkpoint(app, effects, conn):
    @app.transaction()
    def insert(cur: Cursor, what: str) -> int:
        cur.execute("insert into effects (what) values (%s) returning id", (what,))
        row = cur.fetchone()
        assert row is not None
        return int(row[0])

    @app.workflow()
    def flow() -> int:
        return insert("a") + insert("b")

    assert flow() == 3
    assert effects() == 2
    steps = conn.execute("select name, output from ratchet.steps order by step_id").fetchall()
    assert steps == [{"name": "insert", "output": 1}, {"name": "insert", "output": 2}]


def test_transaction_error_rolls_back_and_is_recorded(app, effects, conn):
    @app.transaction()
    def insert_then_fail(cur: Cursor) -> None:
        cur.execute("insert into effects (what) values ('x')")
        raise ValueError("changed my mind")

    @app.transaction(retries=1, interval=0.01)
    def bad_sql(cur: Cursor) -> None:
        cur.execute("insert into effects (what) values (null)")

    @app.workflow()
    def flow() -> list[str]:
        out = []
        for fn in (insert_then_fail, bad_sql):
            try:
                fn()
            except ratchet.StepError as exc:
                out.append(exc.type)
        return out

    assert flow() == ["ValueError", "psycopg.errors.NotNullViolation"]
    assert effects() == 0
    errors = conn.execute("select name, error->>'type' as t, error->>'attempts' as n "
                          "from ratchet.steps order by step_id").fetchall()
    assert errors == [{"name": "insert_then_fail", "t": "ValueError", "n": "1"},
                      {"name": "bad_sql", "t": "psycopg.errors.NotNullViolation", "n": "2"}]


def test_transaction_outside_workflow_just_runs(app, effects):
    @app.transaction()
    def insert(cur: Cursor) -> str:
        cur.execute("insert into effects (what) values ('plain')")
        return "ok"

    assert insert() == "ok"
    assert effects("plain") == 1


def test_replayed_transaction_does_not_run_again(app, effects, conn, run_worker):
    calls = Counter()

    @app.transaction()
    def insert(cur: Cursor) -> str:
        calls["insert"] += 1
        cur.execute("insert into effects (what) values ('once')")
        return "inserted"

    @app.step()
    def fail_first_time() -> None:
        calls["fail"] += 1
        if calls["fail"] == 1:
            raise RuntimeError("crash-like failure after the transaction")

    @app.workflow(retries=1, retry_interval=0.01)
    def flow() -> str:
        r = insert()
        try:
            fail_first_time()
        except ratchet.StepError:
            raise
        return r

    h = app.start(flow)
    run_worker()
    # The first run fails after the transaction; the retry replays it.
    with pytest.raises(ratchet.WorkflowFailed):
        h.result(timeout=10)
    assert calls["insert"] == 1 and effects("once") == 1


def test_stale_run_rolls_the_transaction_back(app, effects, conn, connect, run_worker,
                                              wait_until):
    """The lease is stolen while the transaction runs: record_step raises RT002,
    the user's insert rolls back, and the worker drops the run quietly."""
    thief = connect()

    @app.transaction()
    def insert(cur: Cursor) -> str:
        cur.execute("insert into effects (what) values ('stale')")
        wid = ratchet.workflow_id()
        # Another worker takes the workflow over (as if our lease had expired).
        thief.execute("update ratchet.workflows set lease_expires_at = now() - interval '1 s' "
                      "where workflow_id = %s", (wid,))
        row = thief.execute("select run_id from ratchet.claim_workflow(%s, 'thief')",
                            (wid,)).fetchone()
        assert row is not None
        return "from the stale run"

    @app.workflow()
    def flow() -> str:
        return insert()

    h = app.start(flow)
    worker = run_worker()
    wait_until(lambda: worker.outcomes.get("lost"), what="the stale run to be dropped")
    assert effects("stale") == 0
    wf = h.info()
    assert wf["status"] == "running" and wf["worker_id"] == "thief"
    assert h.steps() == []
