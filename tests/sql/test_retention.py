"""Retention: per-queue, per-status periods, maintain() in batches, no long locks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
from sqlhelp import raises_sqlstate, set_now, start

Conn = psycopg.Connection[Any]
T0 = "2030-01-01 00:00:00Z"


def end(conn: Conn, status: str, n: int = 1, queue: str = "default", **kw: Any) -> list[str]:
    """Start n workflows on queue and bring them to an end status at the current fake time."""
    ids = [start(conn, "wf", queue=queue, max_attempts=1, **kw) for _ in range(n)]
    for wid in ids:
        if status == "cancelled":
            conn.execute("select ratchet.cancel(%s)", [wid])
            continue
        [c] = conn.execute("select * from ratchet.claim_workflow(%s, 'w1')", [wid]).fetchall()
        conn.execute("select ratchet.record_step(%s, %s, 0, 's0', '1')", [wid, c["run_id"]])
        conn.execute("insert into ratchet.messages (destination_id, message, created_at, "
                     "consumed_at) values (%s, '1', ratchet.now(), ratchet.now())", [wid])
        if status == "succeeded":
            conn.execute("select ratchet.finish(%s, %s, '1')", [wid, c["run_id"]])
        else:  # failed, or dead when out of attempts with a retry asked for
            retry = "1 second" if status == "dead" else None
            conn.execute("select ratchet.fail(%s, %s, '{\"m\": 1}', %s::interval)",
                         [wid, c["run_id"], retry])
    got = conn.execute("select distinct status from ratchet.workflows where workflow_id = any(%s)",
                       [ids]).fetchall()
    assert got == [{"status": status}]
    return ids


def maintain(conn: Conn, max_rows: int = 500) -> dict[str, Any]:
    row = conn.execute("select * from ratchet.maintain(%s)", [max_rows]).fetchone()
    assert row is not None
    return row


def existing(conn: Conn, ids: list[str]) -> set[str]:
    rows = conn.execute("select workflow_id from ratchet.workflows where workflow_id = any(%s)",
                        [ids]).fetchall()
    return {r["workflow_id"] for r in rows}


def test_defaults_keep_failed_and_dead_longer(conn: Conn) -> None:
    rows = conn.execute("select status, keep::text, due from ratchet.retention "
                        "where queue = 'default'").fetchall()
    assert rows == [
        {"status": "succeeded", "keep": "7 days", "due": 0},
        {"status": "failed", "keep": "30 days", "due": 0},
        {"status": "cancelled", "keep": "7 days", "due": 0},
        {"status": "dead", "keep": "30 days", "due": 0},
    ]


def test_maintain_deletes_exactly_what_is_due_in_batches(conn: Conn) -> None:
    conn.execute("select ratchet.create_queue('q2')")
    conn.execute("select ratchet.set_retention('q2', 'succeeded', '1 day')")
    conn.execute("select ratchet.set_retention('q2', 'failed', null)")
    set_now(conn, T0)
    succeeded = end(conn, "succeeded", 5)
    failed = end(conn, "failed", 2)
    cancelled = end(conn, "cancelled", 2)
    dead = end(conn, "dead", 1)
    q2_succeeded = end(conn, "succeeded", 2, queue="q2")
    q2_failed = end(conn, "failed", 2, queue="q2")
    # live rows of every kind, created long ago: retention never touches them
    enqueued = start(conn, "wf")
    sleeping = start(conn, "wf", start_at="2031-01-01Z")
    [running] = end_running = [start(conn, "wf")]
    conn.execute("select * from ratchet.claim_workflow(%s, 'w1', '1 day')", [running])

    # day 2: only q2's succeeded ones (1 day) are due
    set_now(conn, "2030-01-02 00:00:01Z")
    due = {r["queue"] + "/" + r["status"]: r["due"]
           for r in conn.execute("select * from ratchet.retention").fetchall() if r["due"]}
    assert due == {"q2/succeeded": 2}
    got = maintain(conn)
    # messages: 2 with the deleted workflows, 2 consumed ones of q2's failed
    # workflows (consumed messages stay keep_succeeded, whatever the status)
    assert got == {"workflows": 2, "steps": 2, "events": 0, "messages": 4, "queue_claims": 0,
                   "skipped": False}
    assert existing(conn, q2_succeeded) == set()

    # day 8: the default queue's succeeded and cancelled (7 days), in batches of 3
    set_now(conn, "2030-01-08 00:00:01Z")
    assert maintain(conn, 3)["workflows"] == 3
    assert maintain(conn, 3)["workflows"] == 3
    assert maintain(conn, 3)["workflows"] == 1
    assert maintain(conn, 3)["workflows"] == 0
    assert existing(conn, succeeded + cancelled) == set()
    assert existing(conn, failed + dead) == set(failed + dead)

    # day 31: failed and dead (30 days); q2 keeps failed forever
    set_now(conn, "2030-01-31 00:00:01Z")
    assert maintain(conn)["workflows"] == 3
    assert existing(conn, failed + dead) == set()
    assert existing(conn, q2_failed) == set(q2_failed)
    assert existing(conn, [enqueued, sleeping, running]) == {enqueued, sleeping, running}
    # nothing of the deleted ones is left behind
    for table, column in (("steps", "workflow_id"), ("messages", "destination_id"),
                          ("events", "workflow_id")):
        left = conn.execute(f"select count(*) as n from ratchet.{table} "
                            f"where {column} <> all(%s)", [q2_failed + end_running]).fetchone()
        assert left == {"n": 0}, table


def test_resumable_rows_stay_until_their_period_and_resume_resets_it(conn: Conn) -> None:
    set_now(conn, T0)
    [wid] = end(conn, "failed")
    set_now(conn, "2030-01-30 00:00:00Z")
    conn.execute("select ratchet.resume(%s)", [wid])
    set_now(conn, "2030-03-01 00:00:00Z")
    assert maintain(conn)["workflows"] == 0  # enqueued again: not ended, never due
    assert existing(conn, [wid]) == {wid}


def test_children_are_kept_while_their_parent_exists(conn: Conn) -> None:
    set_now(conn, T0)
    parent = start(conn, "wf", workflow_id="parent")
    [child] = end(conn, "succeeded", parent_id=parent)
    set_now(conn, "2030-02-01 00:00:00Z")
    assert maintain(conn)["workflows"] == 0
    assert existing(conn, [child]) == {child}
    conn.execute("select ratchet.cancel(%s)", [parent])
    set_now(conn, "2030-03-01 00:00:00Z")
    assert maintain(conn)["workflows"] == 1  # the parent first
    assert maintain(conn)["workflows"] == 1  # then the child
    assert existing(conn, [parent, child]) == set()


def test_consumed_messages_of_live_workflows_and_stale_rate_rows_go(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf", start_at="2031-01-01Z")
    conn.execute("select ratchet.send(%s, '1', idempotency_key => 'k1')", [wid])
    conn.execute("select ratchet.send(%s, '2')", [wid])
    conn.execute("update ratchet.messages set consumed_at = ratchet.now() where message = '1'")
    conn.execute("insert into ratchet.queue_claims values ('default', ratchet.now())")
    set_now(conn, "2030-01-08 00:00:01Z")
    got = maintain(conn)
    assert (got["workflows"], got["messages"], got["queue_claims"]) == (0, 1, 1)
    left = conn.execute("select message from ratchet.messages").fetchall()
    assert left == [{"message": 2}]  # the pending one stays


def test_set_retention_bad_input(conn: Conn) -> None:
    for query in ("select ratchet.set_retention('nope', 'failed', '1 day')",
                  "select ratchet.set_retention('default', 'running', '1 day')",
                  "select ratchet.set_retention('default', null, '1 day')",
                  "select ratchet.set_retention('default', 'failed', '-1 day')",
                  "select ratchet.maintain(0)",
                  "select ratchet.purge('1 day', queue => 'nope')",
                  "select ratchet.purge('1 day', status => 'enqueued')"):
        with raises_sqlstate("RT005"):
            conn.execute(query)
    conn.execute("select ratchet.set_retention('default', 'all', '3 days')")
    keeps = conn.execute("select distinct keep::text from ratchet.retention").fetchall()
    assert keeps == [{"keep": "3 days"}]


def test_purge_filters_by_queue_and_status(conn: Conn) -> None:
    conn.execute("select ratchet.create_queue('q2')")
    set_now(conn, T0)
    ok = end(conn, "succeeded", 2)
    bad = end(conn, "failed", 2)
    other = end(conn, "succeeded", 1, queue="q2")
    set_now(conn, "2030-01-03 00:00:00Z")
    assert conn.execute("select ratchet.purge('1 day', status => 'failed') as n").fetchone() == {"n": 2}
    assert conn.execute("select ratchet.purge('1 day', queue => 'q2') as n").fetchone() == {"n": 1}
    assert existing(conn, ok + bad + other) == set(ok)


def test_concurrent_maintainers_skip_and_claims_do_not_wait(
        conn: Conn, connect: Callable[..., Conn]) -> None:
    set_now(conn, T0)
    end(conn, "succeeded", 50)
    ready = start(conn, "wf")
    holder = connect(autocommit=False)
    other = connect()
    set_now(holder, "2030-02-01 00:00:00Z")
    set_now(other, "2030-02-01 00:00:00Z")
    # a maintainer inside its (open) transaction, holding its locks
    assert maintain(holder, 20)["workflows"] == 20
    # a second maintainer does nothing instead of waiting
    assert maintain(other)["skipped"] is True
    # a worker claims and finishes while maintain's transaction is still open
    result: dict[str, Any] = {}

    def work() -> None:
        with psycopg.connect(conn.info.dsn, autocommit=True) as c:
            c.execute("set lock_timeout = '5s'")
            c.execute("select set_config('ratchet.fake_now', '2030-02-01 00:00:00Z', false)")
            row = c.execute("select workflow_id, run_id from ratchet.claim(array['default'], "
                            "'w9', 1, '30 seconds')").fetchone()
            assert row is not None
            c.execute("select ratchet.finish(%s, %s, '1')", row)
            result["claimed"] = row[0]

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(10)
    assert result.get("claimed") == ready
    holder.commit()
    assert maintain(other)["workflows"] == 30
