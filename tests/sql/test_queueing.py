"""Starting and claiming: idempotency, priority, delays, dedup keys, pause, limits, wake-ups."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from sqlhelp import claim, raises_sqlstate, set_now, start

Conn = psycopg.Connection[Any]


def test_start_is_idempotent_on_workflow_id(conn: Conn) -> None:
    first = start(conn, "checkout", input=json.dumps({"order": 42}), workflow_id="order-42")
    again = start(conn, "checkout", input=json.dumps({"order": 99}), workflow_id="order-42")
    assert first == again == "order-42"
    rows = conn.execute("select input from ratchet.workflows").fetchall()
    assert rows == [{"input": {"order": 42}}], "the second start must not change the first"


def test_start_with_existing_id_of_other_workflow_name_is_refused(conn: Conn) -> None:
    start(conn, "checkout", workflow_id="x")
    with raises_sqlstate("RT005"):
        start(conn, "refund", workflow_id="x")


def test_generated_ids_are_unique(conn: Conn) -> None:
    ids = {start(conn, "wf") for _ in range(20)}
    assert len(ids) == 20


def test_claim_returns_run_and_empty_steps(conn: Conn) -> None:
    wid = start(conn, "wf", input='{"a": 1}')
    [row] = claim(conn)
    assert row["workflow_id"] == wid
    assert row["name"] == "wf"
    assert row["input"] == {"a": 1}
    assert row["attempt"] == 1
    assert row["steps"] == []
    wf = conn.execute("select * from ratchet.get_workflow(%s)", [wid]).fetchone()
    assert wf is not None
    assert wf["status"] == "running" and wf["run_id"] == row["run_id"] and wf["worker_id"] == "w1"
    assert claim(conn, worker="w2") == [], "a running workflow with a live lease is not claimable"


def test_priority_lower_first_then_fifo(conn: Conn) -> None:
    set_now(conn, "2030-01-01 00:00:00Z")
    low = start(conn, "wf", priority=5)
    set_now(conn, "2030-01-01 00:00:01Z")
    high_old = start(conn, "wf", priority=0)
    set_now(conn, "2030-01-01 00:00:02Z")
    high_new = start(conn, "wf", priority=0)
    set_now(conn, "2030-01-01 00:00:03Z")
    order = [r["workflow_id"] for r in claim(conn, n=10)]
    assert order == [high_old, high_new, low]


def test_delayed_start_waits_for_start_at(conn: Conn) -> None:
    set_now(conn, "2030-01-01 00:00:00Z")
    wid = start(conn, "wf", start_at="2030-01-01 00:10:00Z")
    assert claim(conn) == []
    set_now(conn, "2030-01-01 00:09:59Z")
    assert claim(conn) == []
    set_now(conn, "2030-01-01 00:10:00Z")
    assert [r["workflow_id"] for r in claim(conn)] == [wid]


def test_dedup_key_active_raises_rt001_and_frees_after_end(conn: Conn) -> None:
    first = start(conn, "wf", dedup_key="user-7")
    with raises_sqlstate("RT001"):
        start(conn, "wf", dedup_key="user-7")
    # another queue has its own key space
    conn.execute("select ratchet.create_queue('other')")
    start(conn, "wf", dedup_key="user-7", queue="other")
    [row] = claim(conn)
    with raises_sqlstate("RT001"):
        start(conn, "wf", dedup_key="user-7")  # still active while running
    conn.execute("select ratchet.finish(%s, %s, '1')", [first, row["run_id"]])
    second = start(conn, "wf", dedup_key="user-7")
    assert second != first


def test_paused_queue_is_not_claimed_until_resumed(conn: Conn) -> None:
    wid = start(conn, "wf")
    conn.execute("select ratchet.pause_queue('default')")
    assert claim(conn) == []
    start(conn, "wf")  # starts are still accepted while paused
    conn.execute("select ratchet.resume_queue('default')")
    assert wid in [r["workflow_id"] for r in claim(conn, n=5)]


def test_unknown_queue_is_rt005(conn: Conn) -> None:
    with raises_sqlstate("RT005") as info:
        start(conn, "wf", queue="nope")
    assert "create_queue" in (info.value.diag.message_hint or "")
    with raises_sqlstate("RT005"):
        conn.execute("select ratchet.pause_queue('nope')")


def test_global_concurrency_limit(conn: Conn) -> None:
    conn.execute("select ratchet.create_queue('q', concurrency => 2)")
    for _ in range(5):
        start(conn, "wf", queue="q")
    assert len(claim(conn, ["q"], "a", 10)) == 2
    assert claim(conn, ["q"], "b", 10) == []
    running = conn.execute(
        "select workflow_id, run_id from ratchet.workflows where status = 'running'"
    ).fetchall()
    conn.execute(
        "select ratchet.finish(%s, %s, 'null')", [running[0]["workflow_id"], running[0]["run_id"]]
    )
    assert len(claim(conn, ["q"], "b", 10)) == 1


def test_worker_concurrency_limit(conn: Conn) -> None:
    conn.execute("select ratchet.create_queue('q', worker_concurrency => 1)")
    for _ in range(3):
        start(conn, "wf", queue="q")
    assert len(claim(conn, ["q"], "a", 10)) == 1
    assert claim(conn, ["q"], "a", 10) == []
    assert len(claim(conn, ["q"], "b", 10)) == 1


def test_rate_limit_counts_claims_in_a_sliding_window(conn: Conn) -> None:
    conn.execute("select ratchet.create_queue('q', rate_limit => 3, rate_period => '1 minute')")
    for _ in range(10):
        start(conn, "wf", queue="q")
    set_now(conn, "2030-01-01 00:00:00Z")
    assert len(claim(conn, ["q"], "a", 2)) == 2
    set_now(conn, "2030-01-01 00:00:30Z")
    assert len(claim(conn, ["q"], "a", 10)) == 1
    set_now(conn, "2030-01-01 00:00:59Z")
    assert claim(conn, ["q"], "a", 10) == []
    set_now(conn, "2030-01-01 00:01:00Z")  # the first two left the window
    assert len(claim(conn, ["q"], "a", 10)) == 2
    set_now(conn, "2030-01-01 00:01:31Z")  # the third left too
    assert len(claim(conn, ["q"], "a", 10)) == 1


def test_create_queue_updates_limits(conn: Conn) -> None:
    conn.execute("select ratchet.create_queue('q', concurrency => 1)")
    conn.execute("select ratchet.create_queue('q', concurrency => 4)")
    row = conn.execute("select concurrency from ratchet.queues where name = 'q'").fetchone()
    assert row == {"concurrency": 4}


def test_claim_several_queues(conn: Conn) -> None:
    conn.execute("select ratchet.create_queue('a')")
    conn.execute("select ratchet.create_queue('b')")
    wa = start(conn, "wf", queue="a")
    wb = start(conn, "wf", queue="b")
    start(conn, "wf", queue="default")
    got = {r["workflow_id"] for r in claim(conn, ["a", "b"], "w", 10)}
    assert got == {wa, wb}


def test_bulk_start_returns_ids_in_order_and_is_idempotent(conn: Conn) -> None:
    ids = conn.execute(
        "select ratchet.start_workflows('wf', array['{\"i\":1}','{\"i\":2}']::jsonb[],"
        " workflow_ids => array['x1','x2']) as ids"
    ).fetchone()
    assert ids == {"ids": ["x1", "x2"]}
    again = conn.execute(
        "select ratchet.start_workflows('wf', array['{\"i\":9}','{\"i\":3}']::jsonb[],"
        " workflow_ids => array['x2','x3']) as ids"
    ).fetchone()
    assert again == {"ids": ["x2", "x3"]}
    rows = conn.execute("select workflow_id, input from ratchet.workflows order by 1").fetchall()
    assert [(r["workflow_id"], r["input"]["i"]) for r in rows] == [("x1", 1), ("x2", 2), ("x3", 3)]


def test_start_notifies_the_queue_channel(conn: Conn, connect: Any) -> None:
    listener = connect()
    listener.execute('listen "ratchet.queue.default"')
    start(conn, "wf")
    notes = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in notes] == ["ratchet.queue.default"]


def test_bulk_start_sends_one_notification(conn: Conn, connect: Any) -> None:
    listener = connect()
    listener.execute('listen "ratchet.queue.default"')
    conn.execute("select ratchet.start_workflows('wf', array_fill('{}'::jsonb, array[50]))")
    start(conn, "wf")  # a second transaction: its notification marks the end
    notes = list(listener.notifies(timeout=5, stop_after=2))
    assert len(notes) == 2


def test_notifications_can_be_switched_off_per_session(conn: Conn, connect: Any) -> None:
    listener = connect()
    listener.execute('listen "ratchet.queue.default"')
    conn.execute("set ratchet.notify = off")
    start(conn, "wf")
    conn.execute("reset ratchet.notify")
    conn.execute("select ratchet.create_queue('marker')")
    listener.execute('listen "ratchet.queue.marker"')
    start(conn, "wf", queue="marker")
    notes = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in notes] == ["ratchet.queue.marker"]


def test_queue_stats_counts_live_states(conn: Conn) -> None:
    set_now(conn, "2030-01-01 00:00:00Z")
    start(conn, "wf")
    start(conn, "wf")
    start(conn, "wf", start_at="2031-01-01Z")
    claim(conn)
    row = conn.execute(
        "select enqueued_due, enqueued_waiting, running from ratchet.queue_stats where queue = 'default'"
    ).fetchone()
    # queue_stats reads ratchet.now() of this session as well
    assert row == {"enqueued_due": 1, "enqueued_waiting": 1, "running": 1}
