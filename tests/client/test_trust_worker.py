"""Poison input and infrastructure faults never take innocent workflows down (issue 14).

* A workflow whose stored input or recorded step cannot be decoded (written
  by an old version that did not bound nesting) fails alone with a stored
  error; the rest of its claimed batch runs, and the worker stays up.
* A database error of Ratchet's own call (a serialization failure, a
  duplicate prepared statement behind a pooler) is never recorded as the
  step's or the workflow's error: the run is released and finishes later.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ratchet

DEEP = "[" * 2000 + "]" * 2000


def _insert_poison(conn: psycopg.Connection[Any], workflow_id: str, input_json: str) -> None:
    """As the owner, bypassing start_workflow's checks (data of an old version)."""
    conn.execute(
        "insert into ratchet.workflows (workflow_id, name, queue, input, start_at, created_at,"
        " updated_at) values (%s, 'double', 'default', %s::jsonb, now(), now(), now())",
        [workflow_id, input_json])


def test_poison_row_fails_alone_and_its_batch_runs(
    app: ratchet.App, conn: psycopg.Connection[Any],
    run_worker: Callable[..., ratchet.Worker], wait_until: Callable[..., Any],
) -> None:
    @app.workflow(name="double")
    def double(n: int) -> int:
        return 2 * n

    for i in range(20):
        app.start(double, i, workflow_id=f"ok-{i}")
    _insert_poison(conn, "poison-input", DEEP)
    # a recorded step too deep to decode, on a workflow whose input is fine
    _insert_poison(conn, "poison-step", '{"args": [1]}')
    conn.execute("insert into ratchet.steps (workflow_id, step_id, name, output, recorded_at)"
                 " values ('poison-step', 0, 's', %s::jsonb, now())", [DEEP])
    for i in range(20, 40):
        app.start(double, i, workflow_id=f"ok-{i}")

    worker = run_worker(app, concurrency=50)  # all 42 in one claimed batch

    def all_ended() -> bool:
        row = conn.execute("select count(*) as n from ratchet.workflows "
                           "where status not in ('enqueued', 'running')").fetchone()
        return bool(row and row["n"] == 42)

    wait_until(all_ended, timeout=30, what="every workflow to end")
    rows = {r["workflow_id"]: r for r in conn.execute(
        "select workflow_id, status, output, error, attempts from ratchet.workflows").fetchall()}
    for i in range(40):
        assert rows[f"ok-{i}"]["status"] == "succeeded", rows[f"ok-{i}"]
        assert rows[f"ok-{i}"]["output"] == 2 * i
    for wid in ("poison-input", "poison-step"):
        assert rows[wid]["status"] == "failed"
        assert rows[wid]["attempts"] == 1  # failed at once, no crash loop of reclaims
        assert rows[wid]["error"]["type"] == "UndecodableInput"
        assert "RecursionError" in rows[wid]["error"]["message"]
    # the worker is still up and serving
    assert worker.outcomes.get("undecodable") == 2
    handle = app.start(double, 21)
    assert handle.result(timeout=10) == 42


@pytest.mark.parametrize("sqlstate", ["40001", "42P05"])
def test_infrastructure_error_is_never_a_step_error(
    app: ratchet.App, conn: psycopg.Connection[Any], sqlstate: str,
    run_worker: Callable[..., ratchet.Worker], wait_until: Callable[..., Any],
) -> None:
    # A real fault in Ratchet's own call: the first checkpoint insert raises a
    # serialization failure (40001) or "prepared statement already exists"
    # (42P05, what a transaction-mode pooler produces).
    conn.execute("create sequence fault_seq")
    conn.execute(f"""
        create function fault() returns trigger language plpgsql as $$
        begin
          if pg_catalog.nextval('public.fault_seq') = 1 then
            raise exception using errcode = '{sqlstate}', message = 'induced fault';
          end if;
          return new;
        end $$""")
    conn.execute("create trigger fault before insert on ratchet.steps "
                 "for each row execute function fault()")
    calls: list[int] = []

    @app.step()
    def charge() -> str:
        calls.append(1)
        return "charged"

    @app.workflow()  # retries=0: a recorded error would fail it for good
    def checkout() -> str:
        return charge() + "!"

    handle = app.start(checkout, workflow_id="checkout-1")
    run_worker(app)
    assert handle.result(timeout=20) == "charged!"
    wf = conn.execute("select status, error, attempts from ratchet.workflows").fetchone()
    assert wf == {"status": "succeeded", "error": None, "attempts": 1}
    steps = conn.execute("select name, output, error from ratchet.steps").fetchall()
    assert steps == [{"name": "charge", "output": "charged", "error": None}]
    assert len(calls) == 2  # ran again after the release; never checkpointed as failed


# -- fuzz: hostile JSON the SQL API would now refuse, stored by the owner ----------


_scalars = st.one_of(
    st.sampled_from(["1e400", "-1e400", "1e-400", "123456789012345678901234567890.5", "null",
                     "true", '"\\\\ud800"', '"\\u202e\\ufeff"', '"\\ud83d\\ude00"']),
    st.integers().map(str),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
            max_size=50).map(json.dumps),  # PostgreSQL refuses \u0000 and lone surrogates
    st.integers(0, 200_000).map(lambda n: json.dumps("x" * n)),
)


@st.composite
def _hostile_docs(draw: st.DrawFn) -> str:
    inner = draw(_scalars)
    depth = draw(st.one_of(st.integers(0, 5), st.integers(90, 110), st.integers(900, 3000)))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"k":', "}")]))
    return opener * depth + inner + closer * depth


def test_fuzzed_hostile_inputs_end_with_a_stored_error_or_succeed(
    app: ratchet.App, conn: psycopg.Connection[Any],
    run_worker: Callable[..., ratchet.Worker], wait_until: Callable[..., Any],
) -> None:
    @app.workflow(name="double")
    def double(*args: Any, **kwargs: Any) -> Any:
        return {"args": args, "kwargs": kwargs}

    worker = run_worker(app, concurrency=32)
    batch = [0]

    @settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    @given(st.lists(_hostile_docs(), min_size=5, max_size=15))
    def check(docs: list[str]) -> None:
        batch[0] += 1
        ids = [f"fuzz-{batch[0]}-{i}" for i in range(len(docs))]
        for wid, doc in zip(ids, docs, strict=True):
            _insert_poison(conn, wid, doc)

        def ended() -> bool:
            row = conn.execute("select count(*) as n from ratchet.workflows where "
                               "workflow_id = any(%s) and status in ('enqueued', 'running')",
                               [ids]).fetchone()
            return bool(row and row["n"] == 0)

        wait_until(ended, timeout=60, what="the fuzzed workflows to end")
        for row in conn.execute("select workflow_id, status, error, attempts from "
                                "ratchet.workflows where workflow_id = any(%s)", [ids]):
            assert row["attempts"] == 1, row
            assert row["status"] in ("succeeded", "failed"), row
            if row["status"] == "failed":
                assert row["error"]["type"] and row["error"]["message"], row
        assert worker.wait_stopped(0) is False  # still running

    check()
    assert app.start(double, 1).result(timeout=10) == {"args": [1], "kwargs": {}}


def test_serialization_failure_at_commit_of_a_transactional_step_is_not_its_error(
    app: ratchet.App, conn: psycopg.Connection[Any],
    run_worker: Callable[..., ratchet.Worker],
) -> None:
    # The user's transaction fails at COMMIT with 40001 once (a deferred
    # constraint trigger stands in for a serializable conflict).
    conn.execute("create table ledger (workflow_id text)")
    conn.execute("create sequence commit_fault_seq")
    conn.execute("""
        create function commit_fault() returns trigger language plpgsql as $$
        begin
          if pg_catalog.nextval('public.commit_fault_seq') = 1 then
            raise exception using errcode = '40001', message = 'could not serialize access';
          end if;
          return new;
        end $$""")
    conn.execute("create constraint trigger commit_fault after insert on ledger"
                 " deferrable initially deferred for each row execute function commit_fault()")

    @app.transaction()
    def book(cur: psycopg.Cursor[Any]) -> str:
        cur.execute("insert into ledger values (%s)", [ratchet.workflow_id()])
        return "booked"

    @app.workflow()
    def pay() -> str:
        return book()

    handle = app.start(pay, workflow_id="pay-1")
    run_worker(app)
    assert handle.result(timeout=20) == "booked"
    assert conn.execute("select status, error, attempts from ratchet.workflows").fetchone() == \
        {"status": "succeeded", "error": None, "attempts": 1}
    assert conn.execute("select error from ratchet.steps").fetchall() == [{"error": None}]
    assert conn.execute("select count(*) as n from ledger").fetchone() == {"n": 1}
