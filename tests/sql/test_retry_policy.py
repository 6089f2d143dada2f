"""Retry policy in SQL: retry_delay(), the policy stored with a workflow, fail(retryable)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlhelp import claim, raises_sqlstate, set_now, start

Conn = psycopg.Connection[Any]
T0 = "2030-01-01 00:00:00Z"


def delay(conn: Conn, policy: dict[str, Any], attempt: int) -> float | None:
    row = conn.execute("select extract(epoch from ratchet.retry_delay(%s::jsonb, %s))::float8 as d",
                       [json.dumps(policy), attempt]).fetchone()
    assert row is not None
    return row["d"]


def test_retry_delay_is_exponential_capped_and_bounded_by_max_attempts(conn: Conn) -> None:
    p = {"max_attempts": 5, "initial_delay": 0.5, "backoff_factor": 3, "max_delay": 10}
    assert [delay(conn, p, n) for n in (1, 2, 3, 4, 5, 6)] == [0.5, 1.5, 4.5, 10.0, None, None]
    assert delay(conn, {}, 1) == 1.0 and delay(conn, {}, 3) == 4.0  # defaults: 1 s, factor 2
    assert delay(conn, {}, 10_000) == 300.0  # default cap, no overflow
    assert delay(conn, {"backoff_factor": 1000, "max_delay": 60}, 500) == 60.0


def test_retry_delay_jitter_stays_within_its_fraction(conn: Conn) -> None:
    p = {"initial_delay": 10, "jitter": 0.5}
    seen = {delay(conn, p, 1) for _ in range(30)}
    assert all(d is not None and 5.0 <= d <= 10.0 for d in seen)
    assert len(seen) > 1


@pytest.mark.parametrize("policy", [
    "[]", '{"max_retries": 3}', '{"max_attempts": 0}', '{"max_attempts": 1.5}',
    '{"initial_delay": -1}', '{"max_delay": "5s"}', '{"backoff_factor": 0.5}',
    '{"jitter": 2}',
])
def test_bad_policies_are_rt005(conn: Conn, policy: str) -> None:
    with raises_sqlstate("RT005"):
        conn.execute("select ratchet.retry_delay(%s::jsonb, 1)", [policy])
    with raises_sqlstate("RT005"):
        start(conn, "wf", retry_policy=policy)


def test_retry_delay_bad_attempt_is_rt005(conn: Conn) -> None:
    for bad in (0, None):
        with raises_sqlstate("RT005"):
            conn.execute("select ratchet.retry_delay('{}', %s::int)", [bad])


def fail(conn: Conn, wid: str, run_id: int, **kw: Any) -> str:
    args = "".join(f", {k} => %({k})s" for k in kw)
    row = conn.execute(f"select ratchet.fail(%(w)s, %(r)s, '{{\"type\": \"E\"}}'{args}) as s",
                       {"w": wid, "r": run_id, **kw}).fetchone()
    assert row is not None
    return str(row["s"])


def test_fail_schedules_retries_from_the_stored_policy_then_fails(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf", retry_policy=json.dumps(
        {"max_attempts": 3, "initial_delay": 10, "backoff_factor": 2}))
    w = conn.execute("select max_attempts, retry_policy from ratchet.workflows").fetchone()
    assert w == {"max_attempts": 3, "retry_policy": {"initial_delay": 10, "backoff_factor": 2}}
    starts = []
    for expected in ("enqueued", "enqueued", "failed"):
        conn.execute("select set_config('ratchet.fake_now', start_at::text, false) "
                     "from ratchet.workflows")
        [c] = claim(conn)
        assert fail(conn, wid, c["run_id"]) == expected
        starts.append(conn.execute("select start_at - ratchet.now() as d, status, attempts "
                                   "from ratchet.workflows").fetchone())
    assert [s["d"] for s in starts[:2]] == [timedelta(seconds=10), timedelta(seconds=20)]
    assert starts[2]["status"] == "failed" and starts[2]["attempts"] == 3


def test_not_retryable_or_no_policy_fails_at_once(conn: Conn) -> None:
    set_now(conn, T0)
    with_policy = start(conn, "wf", retry_policy='{"max_attempts": 5}')
    [c] = claim(conn)
    assert fail(conn, with_policy, c["run_id"], retryable=False) == "failed"
    without = start(conn, "wf", max_attempts=5)
    [c] = claim(conn)
    assert fail(conn, without, c["run_id"]) == "failed"


def test_explicit_max_attempts_wins_and_retry_in_overrides_the_delay(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf", max_attempts=2, retry_policy='{"max_attempts": 9, "initial_delay": 60}')
    [c] = claim(conn)
    assert fail(conn, wid, c["run_id"], retry_in="1 second") == "enqueued"
    assert conn.execute("select start_at - ratchet.now() as d from ratchet.workflows"
                        ).fetchone() == {"d": timedelta(seconds=1)}
    set_now(conn, "2030-01-01 00:00:01Z")
    [c] = claim(conn)
    assert fail(conn, wid, c["run_id"], retry_in="1 second") == "dead"


def test_fork_keeps_the_retry_policy(conn: Conn) -> None:
    wid = start(conn, "wf", retry_policy='{"max_attempts": 4, "initial_delay": 2}')
    new = conn.execute("select ratchet.fork(%s, 0) as id", [wid]).fetchone()["id"]
    assert conn.execute("select max_attempts, retry_policy from ratchet.workflows "
                        "where workflow_id = %s", [new]).fetchone() == {
        "max_attempts": 4, "retry_policy": {"initial_delay": 2}}
