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
