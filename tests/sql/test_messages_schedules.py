"""Messages, events and cron schedules at the SQL level."""

from __future__ import annotations

from typing import Any

import psycopg
from sqlhelp import claim, raises_sqlstate, set_now, start

Conn = psycopg.Connection[Any]
T0 = "2030-01-01 00:00:00Z"


def test_recv_consumes_one_message_and_checkpoints_it(conn: Conn) -> None:
    wid = start(conn, "wf")
    [c] = claim(conn)
    assert conn.execute("select ratchet.recv(%s, %s, 0) as m", [wid, c["run_id"]]).fetchone() == {
        "m": None
    }
    assert conn.execute("select count(*) as n from ratchet.steps").fetchone() == {"n": 0}
    conn.execute("select ratchet.send(%s, '{\"n\": 1}')", [wid])
    conn.execute("select ratchet.send(%s, '{\"n\": 2}')", [wid])
    conn.execute("select ratchet.send(%s, '{\"n\": 3}', topic => 'other')", [wid])
    got = conn.execute("select ratchet.recv(%s, %s, 0) as m", [wid, c["run_id"]]).fetchone()
    assert got == {"m": {"n": 1}}
    step = conn.execute("select name, output from ratchet.steps where step_id = 0").fetchone()
    assert step == {"name": "recv", "output": {"n": 1}}
    with raises_sqlstate("RT003"):
        conn.execute("select ratchet.recv(%s, %s, 0)", [wid, c["run_id"]])
    got2 = conn.execute(
        "select ratchet.recv(%s, %s, 1, topic => 'other') as m", [wid, c["run_id"]]
    ).fetchone()
    assert got2 == {"m": {"n": 3}}
    pending = conn.execute(
        "select message from ratchet.messages where consumed_at is null"
    ).fetchall()
    assert pending == [{"message": {"n": 2}}]


def test_recv_from_a_stale_run_consumes_nothing(conn: Conn) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf")
    [old] = claim(conn, lease="1 second")
    conn.execute("select ratchet.send(%s, '\"hello\"')", [wid])
    set_now(conn, "2030-01-01 00:00:02Z")
    [new] = claim(conn)
    with raises_sqlstate("RT002"):
        conn.execute("select ratchet.recv(%s, %s, 0)", [wid, old["run_id"]])
    got = conn.execute("select ratchet.recv(%s, %s, 0) as m", [wid, new["run_id"]]).fetchone()
    assert got == {"m": "hello"}


def test_send_idempotency_key_delivers_once(conn: Conn) -> None:
    wid = start(conn, "wf")
    ids = {
        conn.execute(
            "select ratchet.send(%s, '1', idempotency_key => 'pay-1') as id", [wid]
        ).fetchone()["id"]  # type: ignore[index]
        for _ in range(3)
    }
    assert len(ids) == 1
    assert conn.execute("select count(*) as n from ratchet.messages").fetchone() == {"n": 1}


def test_send_to_unknown_workflow_is_rt004(conn: Conn) -> None:
    with raises_sqlstate("RT004"):
        conn.execute("select ratchet.send('nobody', '1')")


def test_message_wakes_a_workflow_suspended_for_its_topic(conn: Conn, connect: Any) -> None:
    set_now(conn, T0)
    wid = start(conn, "wf")
    [c] = claim(conn)
    conn.execute(
        "select ratchet.suspend(%s, %s, 'infinity', wait_for => 'message', wait_key => 'approve')",
        [wid, c["run_id"]],
    )
    conn.execute("select ratchet.send(%s, '1', topic => 'other')", [wid])
    assert claim(conn) == [], "a message on another topic does not wake it"
    listener = connect()
    listener.execute('listen "ratchet.queue.default"')
    conn.execute("select ratchet.send(%s, '\"yes\"', topic => 'approve')", [wid])
    assert len(list(listener.notifies(timeout=5, stop_after=1))) == 1
    [again] = claim(conn)
    got = conn.execute(
        "select ratchet.recv(%s, %s, 0, topic => 'approve') as m", [wid, again["run_id"]]
    ).fetchone()
    assert got == {"m": "yes"}


def test_suspend_for_a_message_already_waiting_wakes_at_once(conn: Conn) -> None:
    wid = start(conn, "wf")
    [c] = claim(conn)
    conn.execute("select ratchet.send(%s, '1')", [wid])
    conn.execute(
        "select ratchet.suspend(%s, %s, 'infinity', wait_for => 'message')", [wid, c["run_id"]]
    )
    assert [r["workflow_id"] for r in claim(conn)] == [wid]


def test_events_latest_value_wins(conn: Conn, connect: Any) -> None:
    wid = start(conn, "wf")
    [c] = claim(conn)
    assert conn.execute("select ratchet.get_event(%s, 'progress') as v", [wid]).fetchone() == {
        "v": None
    }
    listener = connect()
    listener.execute('listen "ratchet.event"')
    conn.execute("select ratchet.set_event(%s, %s, 0, 'progress', '10')", [wid, c["run_id"]])
    conn.execute("select ratchet.set_event(%s, %s, 1, 'progress', '90')", [wid, c["run_id"]])
    assert conn.execute("select ratchet.get_event(%s, 'progress') as v", [wid]).fetchone() == {
        "v": 90
    }
    notes = list(listener.notifies(timeout=5, stop_after=1))
    assert notes[0].payload == wid
    steps = conn.execute("select name, output from ratchet.steps order by step_id").fetchall()
    assert steps == [
        {"name": "set_event", "output": {"key": "progress", "value": 10}},
        {"name": "set_event", "output": {"key": "progress", "value": 90}},
    ]
    with raises_sqlstate("RT004"):
        conn.execute("select ratchet.get_event('nobody', 'progress')")


def test_tick_starts_due_firing_once_and_moves_on(conn: Conn) -> None:
    set_now(conn, "2030-01-01 00:00:30Z")
    first = conn.execute(
        "select ratchet.schedule('nightly', '0 3 * * *', 'report', input => '{\"k\": 1}') as t"
    ).fetchone()
    assert first is not None and first["t"].isoformat().startswith("2030-01-01T03:00")
    assert conn.execute("select ratchet.tick() as n").fetchone() == {"n": 0}
    set_now(conn, "2030-01-01 03:00:05Z")
    assert conn.execute("select ratchet.tick() as n").fetchone() == {"n": 1}
    assert conn.execute("select ratchet.tick() as n").fetchone() == {"n": 0}
    wf = conn.execute("select workflow_id, name, input from ratchet.workflows").fetchall()
    assert wf == [
        {"workflow_id": "schedule:nightly:2030-01-01T03:00Z", "name": "report", "input": {"k": 1}}
    ]
    nxt = conn.execute("select next_fire_at from ratchet.schedules").fetchone()
    assert nxt is not None and nxt["next_fire_at"].isoformat().startswith("2030-01-02T03:00")


def test_tick_after_downtime_starts_only_the_latest_missed_firing(conn: Conn) -> None:
    set_now(conn, "2030-01-01 00:00:00Z")
    conn.execute("select ratchet.schedule('hourly', '0 * * * *', 'report')")
    set_now(conn, "2030-01-01 05:30:00Z")  # 01:00 .. 05:00 were missed
    assert conn.execute("select ratchet.tick() as n").fetchone() == {"n": 1}
    ids = conn.execute("select workflow_id from ratchet.workflows").fetchall()
    assert ids == [{"workflow_id": "schedule:hourly:2030-01-01T05:00Z"}]
    nxt = conn.execute("select next_fire_at from ratchet.schedules").fetchone()
    assert nxt is not None and nxt["next_fire_at"].isoformat().startswith("2030-01-01T06:00")


def test_schedule_rejects_bad_cron_and_unschedule(conn: Conn) -> None:
    with raises_sqlstate("RT005"):
        conn.execute("select ratchet.schedule('x', '61 * * * *', 'report')")
    with raises_sqlstate("RT005"):
        conn.execute("select ratchet.schedule('x', '* * * * *', 'report', timezone => 'Mars/Base')")
    conn.execute("select ratchet.schedule('x', '*/5 * * * *', 'report')")
    assert [
        r["name"] for r in conn.execute("select * from ratchet.list_schedules()").fetchall()
    ] == ["x"]
    assert conn.execute("select ratchet.unschedule('x') as ok").fetchone() == {"ok": True}
    assert conn.execute("select ratchet.unschedule('x') as ok").fetchone() == {"ok": False}
