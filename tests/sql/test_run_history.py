"""The workflow state machine in the schema, and the claim's shared row rule."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlhelp import claim, raises_sqlstate, set_now, start

Conn = psycopg.Connection[Any]
T0 = "2030-01-01 00:00:00Z"


@pytest.mark.parametrize(
    ("assignment", "constraint"),
    [
        ("status = 'sleeping'", "workflows_status_check"),
        ("ended_at = now()", "workflows_ended_at_check"),
        ("status = 'running'", "workflows_run_check"),
        ("run_id = 7", "workflows_run_check"),
    ],
)
def test_status_invariants_are_checked_by_the_schema(conn: Conn, assignment: str,
                                                      constraint: str) -> None:
    wid = start(conn, "wf")
    with raises_sqlstate("23514") as err:
        conn.execute(f"update ratchet.workflows set {assignment} where workflow_id = %s", [wid])
    assert err.value.diag.constraint_name == constraint


def test_ended_workflow_must_have_ended_at(conn: Conn) -> None:
    wid = start(conn, "wf")
    [c] = claim(conn)
    conn.execute("select ratchet.finish(%s, %s)", [wid, c["run_id"]])
    with raises_sqlstate("23514") as err:
        conn.execute("update ratchet.workflows set ended_at = null where workflow_id = %s", [wid])
    assert err.value.diag.constraint_name == "workflows_ended_at_check"


def test_claim_and_claim_workflow_cancel_a_workflow_past_its_deadline(conn: Conn) -> None:
    """Both claims share one row rule: a due row past its deadline is cancelled,
    never handed out, whichever claim finds it."""
    set_now(conn, T0)
    a = start(conn, "wf", timeout="1 minute")
    b = start(conn, "wf", timeout="1 minute")
    set_now(conn, "2030-01-01 00:05:00Z")
    assert conn.execute("select * from ratchet.claim_workflow(%s, 'w1')", [a]).fetchall() == []
    # bypass claim()'s bounded deadline sweep: take the row straight to the row rule
    assert conn.execute("select count(*) as n from ratchet.claim_workflow(%s, 'w1')",
                        [b]).fetchone() == {"n": 0}
    rows = conn.execute("select status, error->>'type' as t from ratchet.workflows "
                        "order by workflow_id").fetchall()
    assert rows == [{"status": "cancelled", "t": "DeadlineExceeded"}] * 2


def runs(conn: Conn, wid: str) -> list[tuple[Any, ...]]:
    return [(r["worker_id"], r["attempt"], r["outcome"], r["ended_at"] is not None,
             (r["error"] or {}).get("type"))
            for r in conn.execute("select * from ratchet.get_runs(%s)", [wid]).fetchall()]


def test_runs_record_every_claim_with_its_worker_and_outcome(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf", max_attempts=5)
    [c] = claim(conn, worker="w1")
    assert runs(conn, wid) == [("w1", 1, None, False, None)]
    conn.execute("select ratchet.fail(%s, %s, '{\"type\": \"Boom\"}', retry_in => '0 s')",
                 [wid, c["run_id"]])
    [c] = claim(conn, worker="w2")
    conn.execute("select ratchet.suspend(%s, %s, until => '2030-01-01 01:00Z')", [wid, c["run_id"]])
    set_now(conn, "2030-01-01 01:00:00Z")
    [c] = claim(conn, worker="w3", lease="10 seconds")
    set_now(conn, "2030-01-01 01:00:11Z")  # w3 dies; w4 recovers
    [c] = claim(conn, worker="w4")
    conn.execute("select ratchet.suspend(%s, %s, until => ratchet.now())", [wid, c["run_id"]])
    [c] = claim(conn, worker="w5")
    conn.execute("select ratchet.finish(%s, %s, '1')", [wid, c["run_id"]])
    assert runs(conn, wid) == [
        ("w1", 1, "retried", True, "Boom"),
        ("w2", 2, "suspended", True, None),
        ("w3", 2, "lost", True, None),
        ("w4", 3, "released", True, None),
        ("w5", 3, "succeeded", True, None),
    ]
    run_ids = [r["run_id"] for r in conn.execute("select run_id from ratchet.get_runs(%s)",
                                                 [wid]).fetchall()]
    assert run_ids == sorted(run_ids) and len(set(run_ids)) == 5


def test_runs_of_failed_dead_and_cancelled_workflows(conn: Conn) -> None:
    set_now(conn, T0)
    failed, dead, cancelled = (start(conn, "wf", max_attempts=1) for _ in range(3))
    for wid in (failed, dead, cancelled):
        [c] = conn.execute("select * from ratchet.claim_workflow(%s, 'w1')", [wid]).fetchall()
        if wid == failed:
            conn.execute("select ratchet.fail(%s, %s, '{\"type\": \"E\"}')", [wid, c["run_id"]])
        elif wid == dead:
            conn.execute("select ratchet.fail(%s, %s, '{\"type\": \"E\"}', retry_in => '1 s')",
                         [wid, c["run_id"]])
        else:
            conn.execute("select ratchet.cancel(%s)", [wid])
    assert runs(conn, failed) == [("w1", 1, "failed", True, "E")]
    assert runs(conn, dead) == [("w1", 1, "dead", True, "E")]
    assert runs(conn, cancelled) == [("w1", 1, "cancelled", True, None)]


def test_recovery_out_of_attempts_closes_the_run_as_lost(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf", max_attempts=1)
    claim(conn, worker="w1", lease="10 seconds")
    set_now(conn, "2030-01-01 00:00:11Z")
    assert claim(conn, worker="w2") == []
    assert conn.execute("select status from ratchet.workflows").fetchone() == {"status": "dead"}
    assert runs(conn, wid) == [("w1", 1, "lost", True, None)]


def test_get_runs_of_unknown_workflow_is_rt004_and_purge_deletes_runs(conn: Conn) -> None:
    with raises_sqlstate("RT004"):
        conn.execute("select * from ratchet.get_runs('nope')")
    set_now(conn, T0)
    wid = start(conn, "wf")
    [c] = claim(conn)
    conn.execute("select ratchet.finish(%s, %s)", [wid, c["run_id"]])
    set_now(conn, "2030-02-01 00:00:00Z")
    assert conn.execute("select ratchet.purge('1 day') as n").fetchone() == {"n": 1}
    assert conn.execute("select count(*) as n from ratchet.runs").fetchone() == {"n": 0}


def test_claim_takes_only_the_names_the_worker_can_run(conn: Conn) -> None:
    """Rolling deploys: a workflow no worker can run waits, unclaimed and
    costing no attempt, even once its lease expired elsewhere."""
    set_now(conn, T0)
    old = start(conn, "old_flow")
    new = start(conn, "new_flow")
    rows = conn.execute("select workflow_id from ratchet.claim(array['default'], 'old-worker', 10, "
                        "names => array['old_flow'], app_version => 'v1')").fetchall()
    assert [r["workflow_id"] for r in rows] == [old]
    assert conn.execute("select status, attempts from ratchet.workflows where workflow_id = %s",
                        [new]).fetchone() == {"status": "enqueued", "attempts": 0}
    # the old worker dies; a new-only worker neither recovers old_flow nor is blocked by it
    set_now(conn, "2030-01-01 00:01:00Z")
    rows = conn.execute("select workflow_id from ratchet.claim(array['default'], 'new-worker', 10, "
                        "names => array['new_flow'], app_version => 'v2')").fetchall()
    assert [r["workflow_id"] for r in rows] == [new]
    assert conn.execute("select status, attempts from ratchet.workflows where workflow_id = %s",
                        [old]).fetchone() == {"status": "running", "attempts": 1}
    # NULL names (the 0.1.0 call) claims anything, and the run keeps the version
    rows = conn.execute("select workflow_id from ratchet.claim(array['default'], 'any', 10)"
                        ).fetchall()
    assert [r["workflow_id"] for r in rows] == [old]
    assert [(r["worker_id"], r["app_version"], r["outcome"]) for r in conn.execute(
        "select * from ratchet.get_runs(%s)", [old]).fetchall()] == [
        ("old-worker", "v1", "lost"), ("any", None, None)]
    assert conn.execute("select app_version from ratchet.runs where workflow_id = %s",
                        [new]).fetchone() == {"app_version": "v2"}
    # an empty list claims nothing
    start(conn, "old_flow")
    assert conn.execute("select count(*) as n from ratchet.claim(array['default'], 'w', 10, "
                        "names => '{}')").fetchone() == {"n": 0}


def test_start_records_the_app_version(conn: Conn) -> None:
    wid = start(conn, "wf", app_version="2026.12.1")
    assert conn.execute("select app_version from ratchet.workflows").fetchone() == {
        "app_version": "2026.12.1"}
    with raises_sqlstate("RT005"):
        start(conn, "wf", app_version="x" * 201)
    assert wid
