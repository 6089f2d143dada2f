"""Runs: checkpoints, fencing, recovery, retries, suspension, deadlines and management."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from sqlhelp import claim, raises_sqlstate, set_now, start

Conn = psycopg.Connection[Any]
T0 = "2030-01-01 00:00:00Z"


def wf(conn: Conn, wid: str) -> dict[str, Any]:
    row = conn.execute("select * from ratchet.get_workflow(%s)", [wid]).fetchone()
    assert row is not None
    return row


def record(conn: Conn, wid: str, run_id: int, step: int, name: str = "s", output: Any = 1) -> None:
    conn.execute(
        "select ratchet.record_step(%s, %s, %s, %s, output => %s::jsonb)",
        [wid, run_id, step, name, json.dumps(output)],
    )


def test_record_step_and_finish(conn: Conn) -> None:
    wid = start(conn, "wf")
    [c] = claim(conn)
    record(conn, wid, c["run_id"], 0, "reserve", {"ok": True})
    record(conn, wid, c["run_id"], 1, "charge", "r-1")
    conn.execute("select ratchet.finish(%s, %s, '\"done\"')", [wid, c["run_id"]])
    w = wf(conn, wid)
    assert (w["status"], w["output"], w["run_id"], w["worker_id"]) == (
        "succeeded",
        "done",
        None,
        None,
    )
    assert w["ended_at"] is not None
    steps = conn.execute(
        "select step_id, name, output, run_id from ratchet.get_steps(%s)", [wid]
    ).fetchall()
    assert steps == [
        {"step_id": 0, "name": "reserve", "output": {"ok": True}, "run_id": c["run_id"]},
        {"step_id": 1, "name": "charge", "output": "r-1", "run_id": c["run_id"]},
    ]


def test_duplicate_step_is_rt003_and_keeps_first_value(conn: Conn) -> None:
    wid = start(conn, "wf")
    [c] = claim(conn)
    record(conn, wid, c["run_id"], 0, "s", "first")
    with raises_sqlstate("RT003"):
        record(conn, wid, c["run_id"], 0, "s", "second")
    assert conn.execute("select output from ratchet.steps").fetchall() == [{"output": "first"}]


def test_stale_run_is_fenced_with_rt002_and_changes_nothing(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf")
    [old] = claim(conn, worker="a", lease="10 seconds")
    record(conn, wid, old["run_id"], 0, "s", "from-a")
    set_now(conn, "2030-01-01 00:00:11Z")  # a's lease expired
    [new] = claim(conn, worker="b")
    assert new["workflow_id"] == wid and new["run_id"] != old["run_id"]
    assert new["attempt"] == 2
    assert [s["output"] for s in new["steps"]] == ["from-a"], "recorded steps come with the claim"
    for call, args in [
        ("select ratchet.record_step(%s, %s, 1, 's', '1')", [wid, old["run_id"]]),
        ("select ratchet.finish(%s, %s, '1')", [wid, old["run_id"]]),
        ("select ratchet.fail(%s, %s, '{}')", [wid, old["run_id"]]),
        ("select ratchet.suspend(%s, %s, now())", [wid, old["run_id"]]),
        ("select ratchet.durable_sleep(%s, %s, 1, 5)", [wid, old["run_id"]]),
        ("select ratchet.set_event(%s, %s, 1, 'k', '1')", [wid, old["run_id"]]),
        ("select ratchet.recv(%s, %s, 1)", [wid, old["run_id"]]),
    ]:
        with raises_sqlstate("RT002"):
            conn.execute(call, args)
    w = wf(conn, wid)
    assert (w["status"], w["run_id"], w["worker_id"]) == ("running", new["run_id"], "b")
    assert conn.execute("select count(*) as n from ratchet.steps").fetchone() == {"n": 1}
    assert conn.execute("select count(*) as n from ratchet.events").fetchone() == {"n": 0}


def test_cancelled_workflow_raises_rt006_to_its_worker(conn: Conn) -> None:
    wid = start(conn, "wf")
    [c] = claim(conn)
    assert conn.execute("select ratchet.cancel(%s) as n", [wid]).fetchone() == {"n": 1}
    with raises_sqlstate("RT006"):
        record(conn, wid, c["run_id"], 0)
    with raises_sqlstate("RT006"):
        conn.execute("select ratchet.finish(%s, %s, '1')", [wid, c["run_id"]])
    assert wf(conn, wid)["status"] == "cancelled"
    assert conn.execute("select count(*) as n from ratchet.steps").fetchone() == {"n": 0}


def test_heartbeat_keeps_the_lease(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf")
    claim(conn, worker="a", lease="10 seconds")
    set_now(conn, "2030-01-01 00:00:08Z")
    assert conn.execute("select ratchet.heartbeat('a', '10 seconds') as n").fetchone() == {"n": 1}
    set_now(conn, "2030-01-01 00:00:15Z")
    assert claim(conn, worker="b") == [], "renewed lease is still live"
    set_now(conn, "2030-01-01 00:00:19Z")
    assert [r["workflow_id"] for r in claim(conn, worker="b")] == [wid]
    assert conn.execute("select ratchet.heartbeat('a') as n").fetchone() == {"n": 0}


def test_recovery_past_max_attempts_goes_dead_and_resume_revives(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf", max_attempts=2)
    [c1] = claim(conn, lease="10 seconds")
    assert c1["attempt"] == 1
    set_now(conn, "2030-01-01 00:01:00Z")
    [c2] = claim(conn, lease="10 seconds")
    assert c2["attempt"] == 2
    record(conn, wid, c2["run_id"], 0, "kept", "v")
    set_now(conn, "2030-01-01 00:02:00Z")
    assert claim(conn) == []
    w = wf(conn, wid)
    assert w["status"] == "dead" and w["error"]["type"] == "MaxAttemptsExceeded"
    conn.execute("select ratchet.resume(%s)", [wid])
    [c3] = claim(conn)
    assert c3["attempt"] == 1
    assert [s["name"] for s in c3["steps"]] == ["kept"], "resume keeps checkpoints"


def test_fail_without_retry_ends_failed(conn: Conn) -> None:
    wid = start(conn, "wf")
    [c] = claim(conn)
    status = conn.execute(
        'select ratchet.fail(%s, %s, \'{"type": "ValueError", "message": "bad"}\') as s',
        [wid, c["run_id"]],
    ).fetchone()
    assert status == {"s": "failed"}
    w = wf(conn, wid)
    assert w["status"] == "failed" and w["error"]["message"] == "bad"


def test_fail_with_retry_reenqueues_until_attempts_run_out(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf", max_attempts=3)
    statuses = []
    for minute in range(3):
        set_now(conn, f"2030-01-01 00:0{minute}:00Z")
        [c] = claim(conn)
        assert c["attempt"] == minute + 1
        row = conn.execute(
            "select ratchet.fail(%s, %s, '{\"message\": \"boom\"}', retry_in => '30 seconds') as s",
            [wid, c["run_id"]],
        ).fetchone()
        assert row is not None
        statuses.append(row["s"])
        if row["s"] == "enqueued":
            set_now(conn, f"2030-01-01 00:0{minute}:29Z")
            assert claim(conn) == [], "not before retry_in has passed"
    assert statuses == ["enqueued", "enqueued", "dead"]
    assert wf(conn, wid)["status"] == "dead"


def test_suspend_releases_until_time_without_costing_an_attempt(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf")
    [c] = claim(conn)
    conn.execute("select ratchet.suspend(%s, %s, '2030-01-01 01:00:00Z')", [wid, c["run_id"]])
    w = wf(conn, wid)
    assert (w["status"], w["run_id"], w["worker_id"]) == ("enqueued", None, None)
    set_now(conn, "2030-01-01 00:59:59Z")
    assert claim(conn) == []
    set_now(conn, "2030-01-01 01:00:00Z")
    [again] = claim(conn)
    assert again["attempt"] == 1


def test_durable_sleep_records_wake_time_once(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf")
    [c] = claim(conn)
    first = conn.execute(
        "select * from ratchet.durable_sleep(%s, %s, 0, 3600)", [wid, c["run_id"]]
    ).fetchone()
    assert first is not None and first["remaining_seconds"] == 3600
    conn.execute("select ratchet.suspend(%s, %s, %s)", [wid, c["run_id"], first["wake_at"]])
    set_now(conn, "2030-01-01 01:00:00Z")
    [c2] = claim(conn)
    assert c2["steps"][0]["name"] == "sleep"
    replay = conn.execute(
        "select * from ratchet.durable_sleep(%s, %s, 0, 9999)", [wid, c2["run_id"]]
    ).fetchone()
    assert replay == {"wake_at": first["wake_at"], "remaining_seconds": 0}
    with raises_sqlstate("RT005"):
        conn.execute("select ratchet.durable_sleep(%s, %s, 1, -1)", [wid, c2["run_id"]])


def test_deadline_cancels_enqueued_and_fences_running(conn: Conn) -> None:
    set_now(conn, T0)
    queued = start(conn, "wf", timeout="1 minute", start_at="2030-01-01 00:05:00Z")
    running = start(conn, "wf", timeout="1 minute")
    [c] = claim(conn)
    assert c["workflow_id"] == running
    set_now(conn, "2030-01-01 00:01:01Z")
    with raises_sqlstate("RT006"):
        record(conn, running, c["run_id"], 0)
    assert conn.execute("select ratchet.heartbeat('w1') as n").fetchone() == {"n": 0}
    assert wf(conn, running)["status"] == "cancelled"
    assert claim(conn) == []
    assert wf(conn, queued)["status"] == "cancelled"
    assert wf(conn, queued)["error"]["type"] == "DeadlineExceeded"


def test_cancel_cascades_to_children_and_resume_ignores_live(conn: Conn) -> None:
    parent = start(conn, "p")
    child = start(conn, "c", parent_id=parent, workflow_id=f"{parent}:0")
    grandchild = start(conn, "g", parent_id=child)
    done = start(conn, "c", parent_id=parent)
    [c] = conn.execute("select * from ratchet.claim_workflow(%s, 'w')", [done]).fetchall()
    conn.execute("select ratchet.finish(%s, %s, '1')", [done, c["run_id"]])
    assert conn.execute("select ratchet.cancel(%s) as n", [parent]).fetchone() == {"n": 3}
    assert {wf(conn, w)["status"] for w in (parent, child, grandchild)} == {"cancelled"}
    assert wf(conn, done)["status"] == "succeeded"
    conn.execute("select ratchet.resume(%s)", [child])
    assert wf(conn, child)["status"] == "enqueued"
    conn.execute("select ratchet.resume(%s)", [child])  # no-op on a live workflow
    with raises_sqlstate("RT005"):
        conn.execute("select ratchet.resume(%s)", [done])


def test_child_end_wakes_waiting_parent(conn: Conn) -> None:
    set_now(conn, T0)
    parent = start(conn, "p")
    [pc] = claim(conn)
    child = start(conn, "c", parent_id=parent)
    conn.execute(
        "select ratchet.suspend(%s, %s, 'infinity', wait_for => 'child', wait_key => %s)",
        [parent, pc["run_id"], child],
    )
    [cc] = claim(conn)
    assert cc["workflow_id"] == child
    conn.execute("select ratchet.finish(%s, %s, '7')", [child, cc["run_id"]])
    [again] = claim(conn)
    assert again["workflow_id"] == parent


def test_fork_keeps_steps_before_from_step(conn: Conn) -> None:
    wid = start(conn, "wf", input='{"x": 1}')
    [c] = claim(conn)
    for i in range(3):
        record(conn, wid, c["run_id"], i, f"s{i}", i)
    conn.execute("select ratchet.finish(%s, %s, '3')", [wid, c["run_id"]])
    new = conn.execute(
        "select ratchet.fork(%s, from_step => 2, new_workflow_id => 'f1') as id", [wid]
    ).fetchone()
    assert new == {"id": "f1"}
    w = wf(conn, "f1")
    assert (w["status"], w["input"], w["forked_from"]) == ("enqueued", {"x": 1}, wid)
    [fc] = claim(conn)
    assert [s["name"] for s in fc["steps"]] == ["s0", "s1"]
    with raises_sqlstate("RT005"):
        conn.execute("select ratchet.fork(%s, 0, 'f1')", [wid])
    with raises_sqlstate("RT004"):
        conn.execute("select ratchet.fork('nope', 0)")


def test_claim_workflow_claims_only_that_one(conn: Conn) -> None:
    start(conn, "wf")
    target = start(conn, "wf")
    rows = conn.execute("select * from ratchet.claim_workflow(%s, 'me')", [target]).fetchall()
    assert [r["workflow_id"] for r in rows] == [target]
    assert conn.execute("select * from ratchet.claim_workflow(%s, 'me')", [target]).fetchall() == []


def test_purge_deletes_old_ended_workflows_in_batches(conn: Conn) -> None:
    set_now(conn, T0)
    ids = [start(conn, "wf") for _ in range(5)]
    live = start(conn, "wf", start_at="2031-01-01Z")
    for c in claim(conn, n=5):
        record(conn, c["workflow_id"], c["run_id"], 0)
        conn.execute("select ratchet.finish(%s, %s, '1')", [c["workflow_id"], c["run_id"]])
    set_now(conn, "2030-01-08 00:00:01Z")
    assert conn.execute("select ratchet.purge('7 days', max_rows => 3) as n").fetchone() == {"n": 3}
    assert conn.execute("select ratchet.purge('7 days', max_rows => 3) as n").fetchone() == {"n": 2}
    assert conn.execute("select ratchet.purge('7 days') as n").fetchone() == {"n": 0}
    left = conn.execute("select workflow_id from ratchet.workflows").fetchall()
    assert left == [{"workflow_id": live}]
    assert conn.execute("select count(*) as n from ratchet.steps").fetchone() == {"n": 0}
    assert set(ids).isdisjoint({r["workflow_id"] for r in left})


def test_wait_result_returns_when_ended(conn: Conn, connect: Any) -> None:
    wid = start(conn, "wf")
    [c] = claim(conn)
    pending = conn.execute("select * from ratchet.wait_result(%s, '0')", [wid]).fetchone()
    assert pending == {"status": "running", "output": None, "error": None}
    conn.execute("select ratchet.finish(%s, %s, '{\"v\": 1}')", [wid, c["run_id"]])
    other = connect()
    done = other.execute("select * from ratchet.wait_result(%s, '5 seconds')", [wid]).fetchone()
    assert done == {"status": "succeeded", "output": {"v": 1}, "error": None}


@pytest.mark.parametrize("status_call", ["finish", "cancel"])
def test_end_notifies_ratchet_ended(conn: Conn, connect: Any, status_call: str) -> None:
    listener = connect()
    listener.execute('listen "ratchet.ended"')
    wid = start(conn, "wf")
    [c] = claim(conn)
    if status_call == "finish":
        conn.execute("select ratchet.finish(%s, %s, '1')", [wid, c["run_id"]])
    else:
        conn.execute("select ratchet.cancel(%s)", [wid])
    notes = list(listener.notifies(timeout=5, stop_after=1))
    assert [(n.channel, n.payload) for n in notes] == [("ratchet.ended", wid)]
