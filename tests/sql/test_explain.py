"""ratchet.explain(): every reason a workflow is not running, one test each."""

from __future__ import annotations

from typing import Any

import psycopg
from sqlhelp import claim, raises_sqlstate, set_now, start

Conn = psycopg.Connection[Any]
T0 = "2030-01-01 00:00:00Z"


def explain(conn: Conn, wid: str) -> dict[str, Any]:
    row = conn.execute("select ratchet.explain(%s) as e", [wid]).fetchone()
    assert row is not None
    return dict(row["e"])


def reasons(e: dict[str, Any]) -> list[str]:
    return [r["reason"] for r in e["reasons"]]


def by_reason(e: dict[str, Any], code: str) -> dict[str, Any]:
    return next(r for r in e["reasons"] if r["reason"] == code)


def test_unknown_workflow_is_rt004(conn: Conn) -> None:
    with raises_sqlstate("RT004"):
        conn.execute("select ratchet.explain('nope')")
    with raises_sqlstate("RT005"):
        conn.execute("select ratchet.explain('')")


def test_ended(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf")
    [c] = claim(conn)
    conn.execute("select ratchet.finish(%s, %s, '1')", [wid, c["run_id"]])
    e = explain(conn, wid)
    assert e["status"] == "succeeded"
    assert reasons(e) == ["ended"]
    assert "succeeded" in e["reasons"][0]["message"]


def test_running_names_the_lease_holder(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf")
    [c] = claim(conn, worker="host-a", lease="30 seconds")
    e = explain(conn, wid)
    assert reasons(e) == ["running"]
    assert e["lease"]["worker_id"] == "host-a"
    assert e["lease"]["run_id"] == c["run_id"]
    assert e["lease"]["expired"] is False
    assert e["lease"]["expires_at"].startswith("2030-01-01T00:00:30")


def test_lease_expired(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf")
    claim(conn, worker="host-a", lease="30 seconds")
    set_now(conn, "2030-01-01 00:01:00Z")
    e = explain(conn, wid)
    assert reasons(e) == ["lease_expired"]
    assert by_reason(e, "lease_expired")["worker_id"] == "host-a"
    assert e["lease"]["expired"] is True


def test_not_yet_due(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf", start_at="2030-01-02 00:00:00Z")
    e = explain(conn, wid)
    assert reasons(e) == ["sleeping"]
    assert e["wait"]["kind"] == "time"
    assert by_reason(e, "sleeping")["until"].startswith("2030-01-02T00:00:00")


def test_waiting_for_a_message_topic(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf")
    [c] = claim(conn)
    conn.execute(
        "select ratchet.suspend(%s, %s, '2030-01-01 01:00Z', 'message', 'approval')",
        [wid, c["run_id"]],
    )
    e = explain(conn, wid)
    assert reasons(e) == ["waiting_message"]
    assert e["wait"] == {"kind": "message", "topic": "approval",
                         "until": e["wait"]["until"]}
    assert "'approval'" in e["reasons"][0]["message"]
    # the message arrives: due now
    conn.execute("select ratchet.send(%s, '1', topic => 'approval')", [wid])
    assert reasons(explain(conn, wid))[0] == "due"


def test_waiting_for_a_child(conn: Conn) -> None:
    set_now(conn, T0)
    parent = start(conn, "parent")
    [c] = claim(conn)
    child = start(conn, "child", parent_id=parent)
    conn.execute(
        "select ratchet.suspend(%s, %s, 'infinity', 'child', %s)", [parent, c["run_id"], child]
    )
    e = explain(conn, parent)
    assert reasons(e) == ["waiting_child"]
    r = by_reason(e, "waiting_child")
    assert (r["child_id"], r["child_status"]) == (child, "enqueued")
    assert e["wait"]["until"] is None


def test_deadline_passed(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf", timeout="1 minute", start_at="2030-01-01 01:00:00Z")
    set_now(conn, "2030-01-01 00:02:00Z")
    e = explain(conn, wid)
    assert reasons(e)[0] == "deadline_passed"
    assert e["deadline"].startswith("2030-01-01T00:01:00")


def test_queue_paused(conn: Conn) -> None:
    set_now(conn, T0)
    conn.execute("select ratchet.create_queue('q')")
    wid = start(conn, "wf", queue="q")
    conn.execute("select ratchet.pause_queue('q')")
    e = explain(conn, wid)
    assert reasons(e) == ["queue_paused", "due"]
    assert e["queue_state"]["paused"] is True
    assert "resume_queue('q')" in e["reasons"][0]["message"]


def test_concurrency_full_names_the_holders(conn: Conn) -> None:
    set_now(conn, T0)
    conn.execute("select ratchet.create_queue('q', concurrency => 2)")
    for _ in range(3):
        start(conn, "wf", queue="q")
    claim(conn, ["q"], worker="host-a")
    claim(conn, ["q"], worker="host-b")
    waiting = conn.execute(
        "select workflow_id from ratchet.workflows where status = 'enqueued'"
    ).fetchone()
    assert waiting is not None
    e = explain(conn, waiting["workflow_id"])
    assert reasons(e) == ["concurrency_full", "due"]
    r = by_reason(e, "concurrency_full")
    assert (r["running"], r["concurrency"]) == (2, 2)
    assert r["holders"] == {"host-a": 1, "host-b": 1}


def test_rate_limited_says_when_the_window_opens(conn: Conn) -> None:
    set_now(conn, T0)
    conn.execute("select ratchet.create_queue('q', rate_limit => 2, rate_period => '1 minute')")
    for _ in range(3):
        start(conn, "wf", queue="q")
    claim(conn, ["q"])
    set_now(conn, "2030-01-01 00:00:10Z")
    claim(conn, ["q"])
    set_now(conn, "2030-01-01 00:00:20Z")
    assert claim(conn, ["q"]) == []
    waiting = conn.execute(
        "select workflow_id from ratchet.workflows where status = 'enqueued'"
    ).fetchone()
    assert waiting is not None
    e = explain(conn, waiting["workflow_id"])
    assert "rate_limited" in reasons(e)
    # two claims at :00 and :10 with a limit of 2: room again when :00 ages out
    assert by_reason(e, "rate_limited")["until"].startswith("2030-01-01T00:01:00")
    assert e["queue_state"]["claims_in_window"] == 2


def test_due_counts_the_workflows_ahead_and_hints_no_live_worker(conn: Conn) -> None:
    set_now(conn, T0)
    first = start(conn, "wf")
    set_now(conn, "2030-01-01 00:00:01Z")
    second = start(conn, "wf")
    assert by_reason(explain(conn, first), "due")["ahead"] == 0
    assert by_reason(explain(conn, second), "due")["ahead"] == 1
    # nobody claims for ten minutes and no worker holds a lease on the queue
    set_now(conn, "2030-01-01 00:10:00Z")
    e = explain(conn, second)
    assert reasons(e) == ["due", "no_live_worker"]
    assert '"wf"' in by_reason(e, "no_live_worker")["message"]
    assert e["registered_worker"] is None
    # a worker holding a lease on the queue is alive: no hint
    claim(conn, worker="host-a")
    assert "no_live_worker" not in reasons(explain(conn, second))


def test_clients_and_workers_may_call_it(conn: Conn) -> None:
    for role in ("ratchet_client", "ratchet_worker"):
        row = conn.execute(
            "select has_function_privilege(%s, 'ratchet.explain(text)', 'execute') as ok", [role]
        ).fetchone()
        assert row is not None and row["ok"]
