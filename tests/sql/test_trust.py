"""Trust boundaries (issue 14): what the least-privilege roles cannot do.

Every attack runs as ``ratchet_worker`` or ``ratchet_client`` (``SET ROLE``
on a connection of its own) and is refused with an RT error or made
harmless; the test then checks, as the owner, that the data is intact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from sqlhelp import claim, raises_sqlstate, start

Conn = psycopg.Connection[Any]
Connect = Callable[..., Conn]


def as_role(connect: Connect, role: str) -> Conn:
    """A new connection that runs as ``role`` (ratchet_worker / ratchet_client)."""
    c = connect()
    c.execute(f"set role {role}")
    return c


def disable_fake_clock(conn: Conn) -> None:
    """What a production install looks like (the test template enables it)."""
    conn.execute("update ratchet.settings set fake_clock_enabled = false")


# -- 1. the clock ---------------------------------------------------------------


def test_worker_cannot_move_the_clock_to_steal_a_lease(conn: Conn, connect: Connect) -> None:
    disable_fake_clock(conn)
    wid = start(conn)
    honest = as_role(connect, "ratchet_worker")
    [row] = claim(honest, worker="honest")
    thief = as_role(connect, "ratchet_worker")
    thief.execute("set ratchet.fake_now = '2999-01-01 00:00Z'")
    with raises_sqlstate("RT007"):
        claim(thief, worker="thief")
    thief.execute("set ratchet.fake_now = 'infinity'")
    with raises_sqlstate("RT007"):
        claim(thief, worker="thief", lease="1 day")
    # nor can it turn the clock on
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        thief.execute("update ratchet.settings set fake_clock_enabled = true")
    # the honest run is intact and keeps checkpointing
    honest.execute("select ratchet.record_step(%s, %s, 0, 's', '1')", [wid, row["run_id"]])
    wf = conn.execute("select status, worker_id, run_id, lease_expires_at > now() as live "
                      "from ratchet.workflows").fetchone()
    assert wf == {"status": "running", "worker_id": "honest", "run_id": row["run_id"],
                  "live": True}


def test_client_cannot_backdate_a_start(conn: Conn, connect: Connect) -> None:
    disable_fake_clock(conn)
    first = start(conn)
    client = as_role(connect, "ratchet_client")
    client.execute("set ratchet.fake_now = '2000-01-01 00:00Z'")
    with raises_sqlstate("RT007"):
        start(client, workflow_id="jumper")
    client.execute("reset ratchet.fake_now")
    # a start_at in the past means now: it does not jump the FIFO line
    start(client, workflow_id="jumper", start_at="2000-01-01 00:00Z")
    with raises_sqlstate("RT005"):
        start(client, workflow_id="never", start_at="infinity")
    with raises_sqlstate("RT005"):
        start(client, workflow_id="never", start_at="-infinity")
    rows = conn.execute("select workflow_id, created_at > '2020-01-01' as honest_time "
                        "from ratchet.workflows order by created_at").fetchall()
    assert rows == [{"workflow_id": first, "honest_time": True},
                    {"workflow_id": "jumper", "honest_time": True}]
    assert [r["workflow_id"] for r in claim(conn, n=2)] == [first, "jumper"]


def test_fake_clock_when_enabled_is_still_bounded(conn: Conn, connect: Connect) -> None:
    worker = as_role(connect, "ratchet_worker")
    start(conn)
    for bad in ("infinity", "-infinity", "garbage", "99999-01-01"):
        worker.execute("select set_config('ratchet.fake_now', %s, false)", [bad])
        with raises_sqlstate("RT005"):
            claim(worker)
    worker.execute("set ratchet.fake_now = '2030-01-01 00:00Z'")
    assert len(claim(worker)) == 1


def test_the_skipping_clock_moves_only_forward_and_only_for_the_owner(
    conn: Conn, connect: Connect,
) -> None:
    worker = as_role(connect, "ratchet_worker")
    worker.execute("set ratchet.fake_now = 'skip'")
    real = worker.execute("select ratchet.now() - clock_timestamp() as skew").fetchone()
    assert abs(real["skew"].total_seconds()) < 1  # offset 0: the real clock
    conn.execute("update ratchet.settings set clock_offset = interval '2 days'")
    skew = worker.execute("select ratchet.now() - clock_timestamp() as skew").fetchone()["skew"]
    assert 2 * 86400 - 1 < skew.total_seconds() < 2 * 86400 + 1
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("update ratchet.settings set clock_offset = interval '-1 day'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        worker.execute("update ratchet.settings set clock_offset = interval '30 days'")
    worker.rollback()
    # where the fake clock is off, 'skip' is refused like any fake time
    disable_fake_clock(conn)
    worker.execute("set ratchet.fake_now = 'skip'")
    with raises_sqlstate("RT007"):
        claim(worker)


@pytest.mark.parametrize("lease", ["infinity", "-1 second", "0", "2 days", "1000000 years"])
def test_leases_are_bounded(conn: Conn, connect: Connect, lease: str) -> None:
    start(conn)
    worker = as_role(connect, "ratchet_worker")
    with pytest.raises(psycopg.Error) as info:
        claim(worker, lease=lease)
    # 22007: PostgreSQL before 17 has no infinite interval to pass at all
    assert info.value.sqlstate in ("RT005", "22007"), info.value
    assert conn.execute("select status from ratchet.workflows").fetchone() == \
        {"status": "enqueued"}


def test_worker_cannot_suspend_into_the_past_to_jump_the_line(conn: Conn, connect: Connect) -> None:
    first = start(conn, workflow_id="first")
    second = start(conn, workflow_id="second")
    worker = as_role(connect, "ratchet_worker")
    [row] = claim(worker)
    assert row["workflow_id"] == first
    worker.execute("select ratchet.suspend(%s, %s, '1990-01-01 00:00Z')", [first, row["run_id"]])
    assert [r["workflow_id"] for r in claim(conn, n=2)] == [second, first]


# -- 2. schedules ---------------------------------------------------------------


def test_client_cannot_skip_zone_validation(conn: Conn, connect: Connect) -> None:
    client = as_role(connect, "ratchet_client")
    # the old per-session cache of valid zones: forging it changes nothing now
    client.execute("set ratchet.cron_zones = '|est5edt4|no/such_zone|'")
    for zone in ("EST5EDT4", "No/Such_Zone", "x" * 10000):
        with raises_sqlstate("RT005"):
            client.execute("select ratchet.schedule('s', '* * * * *', 'wf', timezone => %s)",
                           [zone])
    assert conn.execute("select count(*) as n from ratchet.schedules").fetchone() == {"n": 0}


def test_one_failing_schedule_does_not_stop_the_others(conn: Conn, connect: Connect) -> None:
    client = as_role(connect, "ratchet_client")
    client.execute("select ratchet.schedule('good', '* * * * *', 'wf')")
    # A schedule whose zone no longer exists (tzdata changed, or a row from an
    # old version): written by the owner, bypassing the check.
    conn.execute("insert into ratchet.schedules (name, cron, timezone, workflow_name, "
                 "next_fire_at, created_at) values ('bad', '* * * * *', 'Gone/Zone', 'wf', "
                 "now() - interval '1 hour', now())")
    conn.execute("update ratchet.schedules set next_fire_at = now() - interval '1 minute'")
    worker = as_role(connect, "ratchet_worker")
    warnings: list[str] = []
    worker.add_notice_handler(lambda d: warnings.append(d.message_primary or ""))
    assert worker.execute("select ratchet.tick() as n").fetchone() == {"n": 1}
    rows = {r["name"]: r for r in conn.execute(
        "select name, last_error, last_workflow_id, next_fire_at > now() as later "
        "from ratchet.schedules").fetchall()}
    assert rows["good"]["last_error"] is None and rows["good"]["last_workflow_id"]
    assert rows["bad"]["last_error"]["sqlstate"] == "RT005"
    assert "Gone/Zone" in rows["bad"]["last_error"]["message"]
    assert rows["bad"]["later"] and rows["bad"]["last_workflow_id"] is None
    assert any('schedule "bad" failed' in w for w in warnings)
    # replacing the schedule with a good zone clears the error
    client.execute("select ratchet.schedule('bad', '* * * * *', 'wf', timezone => 'Europe/Paris')")
    assert conn.execute("select last_error from ratchet.schedules where name = 'bad'"
                        ).fetchone() == {"last_error": None}


# -- 3. bounds in bytes ---------------------------------------------------------


def test_multibyte_queue_name_gets_rt005_not_22023(conn: Conn, connect: Connect) -> None:
    client = as_role(connect, "ratchet_client")
    name = "ü" * 30  # 30 characters, 60 bytes: over the NOTIFY channel limit
    with raises_sqlstate("RT005") as info:
        client.execute("select ratchet.create_queue(%s)", [name])
    assert "bytes" in info.value.diag.message_primary
    assert "byte" in (info.value.diag.message_hint or "")
    client.execute("select ratchet.create_queue(%s)", ["ü" * 24])  # 48 bytes: fits
    start(client, queue="ü" * 24)  # and its wake-up NOTIFY works
    assert conn.execute("select count(*) as n from ratchet.queues").fetchone() == {"n": 2}


def test_start_workflows_rejects_nested_arrays(conn: Conn, connect: Connect) -> None:
    client = as_role(connect, "ratchet_client")
    with raises_sqlstate("RT005"):
        client.execute("select ratchet.start_workflows('wf', "
                       "array[array['{}'::jsonb, '{}'::jsonb], array['{}'::jsonb, '{}'::jsonb]])")
    with raises_sqlstate("RT005"):
        client.execute("select ratchet.start_workflows('wf', array['{}'::jsonb], "
                       "workflow_ids => array[array['a']])")
    with raises_sqlstate("RT005"):
        client.execute("select ratchet.start_workflows('wf', '[5:5]={\"{}\"}'::jsonb[])")
    assert conn.execute("select count(*) as n from ratchet.workflows").fetchone() == {"n": 0}


def test_long_topics_and_keys_are_refused(conn: Conn, connect: Connect) -> None:
    wid = start(conn)
    worker = as_role(connect, "ratchet_worker")
    [row] = claim(worker)
    run = row["run_id"]
    with raises_sqlstate("RT005"):
        worker.execute("select ratchet.recv(%s, %s, 0, %s)", [wid, run, "t" * 10000])
    with raises_sqlstate("RT005"):
        worker.execute("select ratchet.recv(%s, %s, 0, %s)", [wid, run, "é" * 150])
    with raises_sqlstate("RT005"):
        worker.execute("select ratchet.suspend(%s, %s, 'infinity', 'message', %s)",
                       [wid, run, "t" * 10000])
    with raises_sqlstate("RT005"):
        worker.execute("select ratchet.set_event(%s, %s, 0, %s, '1')", [wid, run, "é" * 150])
    client = as_role(connect, "ratchet_client")
    with raises_sqlstate("RT005"):
        client.execute("select ratchet.send(%s, '1', %s)", [wid, "é" * 150])
    with raises_sqlstate("RT005"):
        client.execute("select ratchet.cron_parse(%s)", ["* " * 5000])
    assert conn.execute("select count(*) as n from ratchet.steps").fetchone() == {"n": 0}
    assert conn.execute("select count(*) as n from ratchet.messages").fetchone() == {"n": 0}
    assert conn.execute("select status, run_id from ratchet.workflows").fetchone() == \
        {"status": "running", "run_id": run}


# -- 4. poison JSON -------------------------------------------------------------

DEEP = "[" * 2000 + "]" * 2000
EDGE_OK = "[" * 100 + "1" + "]" * 100     # a value under 100 nested arrays
EDGE_BAD = "[" * 101 + "1" + "]" * 101


def test_deeply_nested_json_is_refused_everywhere(conn: Conn, connect: Connect) -> None:
    client = as_role(connect, "ratchet_client")
    for doc in (DEEP, EDGE_BAD):
        with raises_sqlstate("RT005") as info:
            start(client, input=doc)
        assert "nested" in info.value.diag.message_primary
        with raises_sqlstate("RT005"):
            client.execute("select ratchet.start_workflows('wf', array[%s::jsonb])", [doc])
        with raises_sqlstate("RT005"):
            client.execute("select ratchet.schedule('s', '@daily', 'wf', input => %s::jsonb)",
                           [doc])
    start(client, input=EDGE_OK, workflow_id="edge")
    wid = start(conn)
    with raises_sqlstate("RT005"):
        client.execute("select ratchet.send(%s, %s::jsonb)", [wid, DEEP])
    worker = as_role(connect, "ratchet_worker")
    [row] = [r for r in claim(worker, n=2) if r["workflow_id"] == wid]
    run = row["run_id"]
    for call in ("select ratchet.record_step(%s, %s, 0, 's', output => %s::jsonb)",
                 "select ratchet.record_step(%s, %s, 0, 's', error => %s::jsonb)",
                 "select ratchet.set_event(%s, %s, 0, 'k', %s::jsonb)",
                 "select ratchet.finish(%s, %s, %s::jsonb)",
                 "select ratchet.fail(%s, %s, %s::jsonb)"):
        with raises_sqlstate("RT005"):
            worker.execute(call, [wid, run, DEEP])
    assert conn.execute("select count(*) as n from ratchet.steps").fetchone() == {"n": 0}
    assert conn.execute("select status from ratchet.workflows where workflow_id = %s",
                        [wid]).fetchone() == {"status": "running"}


# -- grants and SECURITY DEFINER hygiene ------------------------------------------


def test_grants_follow_least_privilege(conn: Conn) -> None:
    public = conn.execute(
        "select p.oid::regprocedure::text as fn from pg_proc p join pg_namespace n"
        " on n.oid = p.pronamespace where n.nspname = 'ratchet'"
        " and has_function_privilege('public', p.oid, 'execute')").fetchall()
    assert public == []
    # internal helpers a role may call run with the caller's rights
    helpers = conn.execute(
        "select p.oid::regprocedure::text as fn, p.prosecdef from pg_proc p join pg_namespace n"
        " on n.oid = p.pronamespace where n.nspname = 'ratchet' and p.proname like '\\_%'"
        " and (has_function_privilege('ratchet_worker', p.oid, 'execute')"
        "      or has_function_privilege('ratchet_client', p.oid, 'execute'))").fetchall()
    assert helpers and not any(h["prosecdef"] for h in helpers), helpers
    writes = conn.execute(
        "select c.relname, r.role from pg_class c join pg_namespace n on n.oid = c.relnamespace,"
        " unnest(array['ratchet_worker', 'ratchet_client']) r(role)"
        " where n.nspname = 'ratchet' and c.relkind = 'r' and"
        " (has_table_privilege(r.role, c.oid, 'insert') or has_table_privilege(r.role, c.oid, 'update')"
        "  or has_table_privilege(r.role, c.oid, 'delete') or has_table_privilege(r.role, c.oid, 'truncate'))"
    ).fetchall()
    assert writes == []
    assert conn.execute("select has_schema_privilege('ratchet_worker', 'ratchet', 'create') or"
                        " has_schema_privilege('ratchet_client', 'ratchet', 'create') as c"
                        ).fetchone() == {"c": False}


def test_cron_helpers_work_for_both_roles(connect: Connect) -> None:
    for role in ("ratchet_worker", "ratchet_client"):
        c = as_role(connect, role)
        row = c.execute("select ratchet.cron_next('0 3 * * *', '2030-01-01Z', 'Europe/Paris')"
                        " as t").fetchone()
        assert row is not None and row["t"] is not None
        with raises_sqlstate("RT005"):
            c.execute("select ratchet.cron_parse('61 * * * *')")


# -- every text parameter is bounded ------------------------------------------------

HUGE = "x" * 10_000

#: every public function with a text (or text[]) parameter, called with a
#: 10,000-byte value in it: an RT error (RT005 for values that would be
#: stored or compared as names, RT004 for lookups of ids that cannot exist)
BOUNDED_CALLS = [
    ("select ratchet.start_workflow(%s)", "RT005"),
    ("select ratchet.start_workflow('wf', workflow_id => %s)", "RT005"),
    ("select ratchet.start_workflow('wf', queue => %s)", "RT005"),
    ("select ratchet.start_workflow('wf', dedup_key => %s)", "RT005"),
    ("select ratchet.start_workflow('wf', parent_id => %s)", "RT004"),
    ("select ratchet.start_workflows(%s, array['{}'::jsonb])", "RT005"),
    ("select ratchet.start_workflows('wf', array['{}'::jsonb], workflow_ids => array[%s])", "RT005"),
    ("select ratchet.get_workflow(%s)", "RT004"),
    ("select ratchet.get_steps(%s)", "RT004"),
    ("select ratchet.wait_result(%s)", "RT004"),
    ("select ratchet.send(%s, '1')", "RT005"),
    ("select ratchet.send('victim', '1', topic => %s)", "RT005"),
    ("select ratchet.send('victim', '1', idempotency_key => %s)", "RT005"),
    ("select ratchet.get_event('victim', %s)", "RT005"),
    ("select ratchet.get_event(%s, 'k')", "RT004"),
    ("select ratchet.claim(array['default'], %s)", "RT005"),
    ("select ratchet.claim_workflow('victim', %s)", "RT005"),
    ("select ratchet.heartbeat(%s)", "RT005"),
    ("select ratchet.cancel(%s)", "RT004"),
    ("select ratchet.resume(%s)", "RT004"),
    ("select ratchet.fork('victim', 0, %s)", "RT005"),
    ("select ratchet.create_queue(%s)", "RT005"),
    ("select ratchet.pause_queue(%s)", "RT005"),
    ("select ratchet.resume_queue(%s)", "RT005"),
    ("select ratchet.schedule(%s, '@daily', 'wf')", "RT005"),
    ("select ratchet.schedule('s', %s, 'wf')", "RT005"),
    ("select ratchet.schedule('s', '@daily', %s)", "RT005"),
    ("select ratchet.schedule('s', '@daily', 'wf', queue => %s)", "RT005"),
    ("select ratchet.schedule('s', '@daily', 'wf', timezone => %s)", "RT005"),
    ("select ratchet.cron_parse(%s)", "RT005"),
    ("select ratchet.cron_next(%s, now())", "RT005"),
    ("select ratchet.cron_next('@daily', now(), %s)", "RT005"),
    ("select ratchet.cron_prev(%s, now())", "RT005"),
]


@pytest.mark.parametrize("call,code", BOUNDED_CALLS, ids=[c for c, _ in BOUNDED_CALLS])
def test_every_text_parameter_is_bounded(conn: Conn, connect: Connect, call: str, code: str) -> None:
    start(conn, workflow_id="victim")
    before = conn.execute("select count(*) as n from ratchet.workflows").fetchone()
    role = "ratchet_worker" if "claim" in call or "heartbeat" in call else "ratchet_client"
    c = as_role(connect, role)
    with raises_sqlstate(code):
        c.execute(call, [HUGE])
    assert conn.execute("select count(*) as n from ratchet.workflows").fetchone() == before
    assert conn.execute("select count(*) as n from ratchet.schedules").fetchone() == {"n": 0}


def test_unschedule_and_worker_writes_bound_their_text(conn: Conn, connect: Connect) -> None:
    wid = start(conn)
    worker = as_role(connect, "ratchet_worker")
    [row] = claim(worker)
    run = row["run_id"]
    for call in ("select ratchet.record_step(%s, %s, 0, %s)",
                 "select ratchet.set_event(%s, %s, 0, %s, '1')",
                 "select ratchet.recv(%s, %s, 0, %s)",
                 "select ratchet.suspend(%s, %s, 'infinity', 'message', %s)",
                 "select ratchet.suspend(%s, %s, 'infinity', 'child', %s)"):
        with raises_sqlstate("RT005"):
            worker.execute(call, [wid, run, HUGE])
    client = as_role(connect, "ratchet_client")
    assert client.execute("select ratchet.unschedule(%s) as d", [HUGE]).fetchone() == {"d": False}
    assert conn.execute("select status, run_id from ratchet.workflows").fetchone() == \
        {"status": "running", "run_id": run}


def test_read_only_recipe_from_the_security_doc(conn: Conn, connect: Connect) -> None:
    start(conn)
    conn.execute("create role ratchet_readonly nologin")
    try:
        conn.execute("grant usage on schema ratchet to ratchet_readonly")
        conn.execute("grant select on ratchet.queue_stats, ratchet.workflows, ratchet.steps"
                     " to ratchet_readonly")
        conn.execute("grant execute on function ratchet.now(), ratchet.get_workflow(text),"
                     " ratchet.get_steps(text), ratchet.list_schedules() to ratchet_readonly")
        ro = as_role(connect, "ratchet_readonly")
        assert ro.execute("select enqueued_due from ratchet.queue_stats").fetchone() == \
            {"enqueued_due": 1}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            start(ro)
        ro.close()
    finally:
        conn.execute("drop owned by ratchet_readonly")
        conn.execute("drop role ratchet_readonly")
