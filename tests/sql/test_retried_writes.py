"""Retried fenced writes: a write whose reply was lost (the connection dropped
after it committed) is sent again by the same run and recognised as success;
anything else is fenced exactly as before (RT003, RT002)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from sqlhelp import claim, raises_sqlstate, set_now, start

Conn = psycopg.Connection[Any]
T0 = "2030-01-01 00:00:00Z"


def record(conn: Conn, wid: str, run_id: int, step: int, name: str = "s",
           output: Any = 1, error: Any = None) -> None:
    conn.execute(
        "select ratchet.record_step(%s, %s, %s, %s, %s::jsonb, %s::jsonb)",
        [wid, run_id, step, name, json.dumps(output),
         None if error is None else json.dumps(error)],
    )


def steps(conn: Conn, wid: str) -> list[dict[str, Any]]:
    return conn.execute(
        "select step_id, name, output, error, run_id, recorded_at from ratchet.steps"
        " where workflow_id = %s order by step_id", [wid]).fetchall()


def test_same_run_same_content_checkpoint_retry_is_success(conn: Conn) -> None:
    wid = start(conn, "wf")
    [c] = claim(conn)
    record(conn, wid, c["run_id"], 0, "charge", {"id": "ch-1", "n": [1, 2]})
    before = steps(conn, wid)
    record(conn, wid, c["run_id"], 0, "charge", {"n": [1, 2], "id": "ch-1"})  # the retry
    record(conn, wid, c["run_id"], 1, "fails", None, {"message": "boom"})
    record(conn, wid, c["run_id"], 1, "fails", None, {"message": "boom"})
    after = steps(conn, wid)
    assert after[:1] == before, "the retry changes nothing, not even recorded_at"
    assert [s["step_id"] for s in after] == [0, 1]


def test_same_run_other_content_is_still_rt003(conn: Conn) -> None:
    wid = start(conn, "wf")
    [c] = claim(conn)
    record(conn, wid, c["run_id"], 0, "charge", "a")
    for name, output, error in [("charge", "b", None), ("other", "a", None),
                                ("charge", "a", {"message": "x"})]:
        with raises_sqlstate("RT003"):
            record(conn, wid, c["run_id"], 0, name, output, error)
    assert [s["output"] for s in steps(conn, wid)] == ["a"]


def test_retry_never_passes_for_or_overwrites_another_runs_checkpoint(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf")
    [old] = claim(conn, worker="a", lease="10 seconds")
    set_now(conn, "2030-01-01 00:00:11Z")  # a's lease expired
    [new] = claim(conn, worker="b")
    record(conn, wid, new["run_id"], 0, "s", "from-b")
    # the old run retries a write of the same step and content: it is not its row
    with raises_sqlstate("RT002"):
        record(conn, wid, old["run_id"], 0, "s", "from-b")
    # a row the old run did record, then retried by the new run: RT003, kept
    wid2 = start(conn, "wf")
    set_now(conn, "2030-01-01 00:00:12Z")
    [o2] = claim(conn, worker="a", lease="10 seconds")
    record(conn, wid2, o2["run_id"], 0, "s", "from-a")
    set_now(conn, "2030-01-01 00:00:23Z")
    [n2] = claim(conn, worker="b")
    assert n2["workflow_id"] == wid2
    with raises_sqlstate("RT003"):
        record(conn, wid2, n2["run_id"], 0, "s", "from-a")
    assert [(s["output"], s["run_id"]) for s in steps(conn, wid2)] == [("from-a", o2["run_id"])]
    assert [(s["output"], s["run_id"]) for s in steps(conn, wid)] == [("from-b", new["run_id"])]


def test_finish_retry_by_the_same_run_is_success(conn: Conn) -> None:
    wid = start(conn, "wf")
    [c] = claim(conn)
    conn.execute("select ratchet.finish(%s, %s, '{\"ok\": 1}')", [wid, c["run_id"]])
    ended = conn.execute("select ended_at from ratchet.workflows where workflow_id = %s",
                         [wid]).fetchone()
    conn.execute("select ratchet.finish(%s, %s, '{\"ok\": 1}')", [wid, c["run_id"]])
    again = conn.execute("select status, ended_at from ratchet.workflows where workflow_id = %s",
                         [wid]).fetchone()
    assert again == {"status": "succeeded", "ended_at": ended["ended_at"]}
    with raises_sqlstate("RT002"):  # another output is not a retry
        conn.execute("select ratchet.finish(%s, %s, '{\"ok\": 2}')", [wid, c["run_id"]])
    with raises_sqlstate("RT002"):  # nor is a fail after the finish
        conn.execute("select ratchet.fail(%s, %s, '{}')", [wid, c["run_id"]])


def test_fail_retry_by_the_same_run_returns_the_same_status(conn: Conn) -> None:
    wid = start(conn, "wf")
    [c] = claim(conn)
    err = '{"message": "boom"}'
    q = "select ratchet.fail(%s, %s, %s::jsonb, retryable => false) as s"
    assert conn.execute(q, [wid, c["run_id"], err]).fetchone() == {"s": "failed"}
    assert conn.execute(q, [wid, c["run_id"], err]).fetchone() == {"s": "failed"}
    with raises_sqlstate("RT002"):
        conn.execute(q, [wid, c["run_id"], '{"message": "other"}'])
    with raises_sqlstate("RT002"):
        conn.execute("select ratchet.finish(%s, %s, null)", [wid, c["run_id"]])

    # a retried fail that re-enqueued the workflow: 'enqueued' again, one attempt spent
    wid2 = start(conn, "wf", retry_policy=json.dumps({"max_attempts": 3, "initial_delay": 0}))
    [c2] = claim(conn)
    q2 = "select ratchet.fail(%s, %s, %s::jsonb) as s"
    assert conn.execute(q2, [wid2, c2["run_id"], err]).fetchone() == {"s": "enqueued"}
    [c3] = claim(conn)  # even once another run has it
    assert c3["workflow_id"] == wid2
    assert conn.execute(q2, [wid2, c2["run_id"], err]).fetchone() == {"s": "enqueued"}
    w = conn.execute("select status, attempts, run_id from ratchet.workflows where workflow_id = %s",
                     [wid2]).fetchone()
    assert w == {"status": "running", "attempts": 2, "run_id": c3["run_id"]}


def test_end_of_a_lost_run_is_not_a_retry(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf")
    [old] = claim(conn, worker="a", lease="10 seconds")
    set_now(conn, "2030-01-01 00:00:11Z")
    [new] = claim(conn, worker="b")
    conn.execute("select ratchet.finish(%s, %s, '1')", [wid, new["run_id"]])
    with raises_sqlstate("RT002"):  # b finished with 1; a's finish with 1 is not a's
        conn.execute("select ratchet.finish(%s, %s, '1')", [wid, old["run_id"]])
    with raises_sqlstate("RT002"):
        conn.execute("select ratchet.fail(%s, %s, null)", [wid, old["run_id"]])


def test_recv_on_a_step_its_own_run_recorded_empty_is_still_rt003(conn: Conn) -> None:
    """A timed-out recv is recorded with no output by its own run; receiving on
    that step again must not consume a message (it is not a retried write)."""
    wid = start(conn, "wf")
    [c] = claim(conn)
    conn.execute("select ratchet.record_step(%s, %s, 0, 'recv')", [wid, c["run_id"]])
    conn.execute("select ratchet.send(%s, '1')", [wid])
    with raises_sqlstate("RT003"):
        conn.execute("select ratchet.recv(%s, %s, 0)", [wid, c["run_id"]])
    left = conn.execute("select count(*) as n from ratchet.messages where consumed_at is null"
                        ).fetchone()
    assert left == {"n": 1}


# -- batched finishes (finish_many, finish_and_claim) retried after a lost reply


def _finish_many(conn: Conn, rows: list[dict[str, Any]], outputs: list[Any]) -> list[str]:
    out = conn.execute(
        "select outcome from ratchet.finish_many(%s, %s, %s::jsonb[]) order by ord",
        [[r["workflow_id"] for r in rows], [r["run_id"] for r in rows],
         [json.dumps(o) for o in outputs]]).fetchall()
    return [o["outcome"] for o in out]


def test_finish_many_retry_by_the_same_runs_is_ok(conn: Conn) -> None:
    for _ in range(3):
        start(conn, "wf")
    rows = claim(conn, n=3)
    assert _finish_many(conn, rows[:2], [{"a": 1}, None]) == ["ok", "ok"]
    ended = conn.execute("select workflow_id, ended_at from ratchet.workflows order by 1").fetchall()
    # the whole batch again (its reply was lost): each row is its run's own finish
    assert _finish_many(conn, rows[:2], [{"a": 1}, None]) == ["ok", "ok"]
    assert conn.execute("select workflow_id, ended_at from ratchet.workflows order by 1"
                        ).fetchall() == ended, "the retry changes nothing"
    # other content, or an item repeated within one call, is not a retry
    assert _finish_many(conn, rows[:2], [{"a": 2}, None]) == ["stale_run", "ok"]
    assert _finish_many(conn, [rows[2], rows[2]], ["x", "x"]) == ["ok", "stale_run"]


def test_fail_many_retry_by_the_same_runs_is_ok_with_the_same_status(conn: Conn) -> None:
    start(conn, "wf")
    start(conn, "wf", retry_policy=json.dumps({"max_attempts": 3, "initial_delay": 0}))
    rows = claim(conn, n=2)
    err = json.dumps({"message": "boom"})
    q = ("select outcome, status from ratchet.fail_many(%s, %s, %s::jsonb[], "
         "retryables => %s)")
    params = [[r["workflow_id"] for r in rows], [r["run_id"] for r in rows], [err, err],
              [False, True]]
    first = conn.execute(q, params).fetchall()
    statuses = {r["workflow_id"]: r["status"] for r in conn.execute(
        "select workflow_id, status from ratchet.workflows").fetchall()}
    # the whole batch again (its reply was lost): each row is its run's own failure
    assert conn.execute(q, params).fetchall() == first
    assert [r["outcome"] for r in first] == ["ok", "ok"]
    assert sorted(r["status"] for r in first) == ["enqueued", "failed"]
    assert {r["workflow_id"]: r["status"] for r in conn.execute(
        "select workflow_id, status from ratchet.workflows").fetchall()} == statuses
    # another error is not a retry
    other = [params[0], params[1], [json.dumps({"message": "other"})] * 2, [False, True]]
    assert [r["outcome"] for r in conn.execute(q, other).fetchall()] == \
        ["stale_run", "stale_run"]


def _finish_and_claim(conn: Conn, rows: list[dict[str, Any]], max_count: int,
                      worker: str = "w1") -> list[dict[str, Any]]:
    return conn.execute(
        "select ord, workflow_id, outcome, run_id, attempt, steps from ratchet.finish_and_claim("
        "%s, %s, %s::jsonb[], array['default'], %s, %s, '30 seconds')",
        [[r["workflow_id"] for r in rows], [r["run_id"] for r in rows],
         ["1"] * len(rows), worker, max_count]).fetchall()


def test_finish_and_claim_retry_returns_what_the_lost_call_claimed(conn: Conn) -> None:
    set_now(conn, T0)
    wids = [start(conn, "wf") for _ in range(8)]
    finishing = claim(conn, n=2)
    [own_other] = claim(conn, n=1)          # this worker's, claimed by another call
    [foreign] = claim(conn, worker="w2")     # another worker's
    first = _finish_and_claim(conn, finishing, 2)
    assert [r["outcome"] for r in first] == ["ok", "ok", "claimed", "claimed"]
    lost = {r["workflow_id"]: r["run_id"] for r in first[2:]}
    conn.execute("select ratchet.record_step(%s, %s, 0, 's', '5')",
                 [first[2]["workflow_id"], first[2]["run_id"]])

    # its reply was lost: the retry (one more slot now) returns the same claims
    # with their runs, leases renewed, and claims one more
    set_now(conn, "2030-01-01 00:00:05Z")
    second = _finish_and_claim(conn, finishing, 3)
    assert [r["outcome"] for r in second] == ["ok", "ok", "claimed", "claimed", "claimed"]
    again = {r["workflow_id"]: r["run_id"] for r in second[2:4]}
    assert again == lost
    assert [r["attempt"] for r in second[2:]] == [1, 1, 1]
    steps = {r["workflow_id"]: r["steps"] for r in second[2:4]}
    assert steps[first[2]["workflow_id"]] == [
        {"step_id": 0, "name": "s", "output": 5, "error": None}]
    fresh = second[4]
    assert fresh["workflow_id"] not in lost
    leases = conn.execute(
        "select workflow_id, lease_expires_at = '2030-01-01 00:00:35Z' as renewed"
        " from ratchet.workflows where workflow_id = any(%s)", [list(lost)]).fetchall()
    assert all(r["renewed"] for r in leases)

    # that reply was lost too: the third call returns the claims of both
    third = _finish_and_claim(conn, finishing, 3)
    assert {r["workflow_id"]: r["run_id"] for r in third[2:]} == {
        **lost, fresh["workflow_id"]: fresh["run_id"]}
    assert {own_other["workflow_id"], foreign["workflow_id"]}.isdisjoint(
        r["workflow_id"] for r in first + second + third)
    runs = conn.execute("select count(*) as n from ratchet.runs").fetchone()
    assert runs == {"n": 2 + 1 + 1 + 2 + 1}, "no workflow was claimed twice"
    left = conn.execute("select count(*) as n from ratchet.workflows where status = 'enqueued'"
                        ).fetchone()
    assert left == {"n": len(wids) - 7}, "the third call claimed nothing more"


def test_finish_and_claim_first_call_returns_no_earlier_claims(conn: Conn) -> None:
    for _ in range(4):
        start(conn, "wf")
    finishing = claim(conn, n=2)
    earlier = claim(conn, n=1)  # this worker's, claimed before, still running
    out = _finish_and_claim(conn, finishing, 5)
    assert [r["outcome"] for r in out] == ["ok", "ok", "claimed"]
    assert out[2]["workflow_id"] != earlier[0]["workflow_id"]
