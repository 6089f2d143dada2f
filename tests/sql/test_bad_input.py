"""Bad input gets an RT error with a message and a hint, and changes nothing."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlhelp import claim, raises_sqlstate, start

Conn = psycopg.Connection[Any]
BIG = "(select jsonb_build_object('blob', repeat(md5(i::text), 40000)) from generate_series(1,1) i)"

# (call, expected SQLSTATE). {wid} is a running workflow, {run} its run_id.
CASES: list[tuple[str, str]] = [
    ("select ratchet.start_workflow(NULL)", "RT005"),
    ("select ratchet.start_workflow('')", "RT005"),
    ("select ratchet.start_workflow('  ')", "RT005"),
    ("select ratchet.start_workflow(repeat('n', 201))", "RT005"),
    ("select ratchet.start_workflow('wf', input => NULL)", "RT005"),
    ("select ratchet.start_workflow('wf', workflow_id => '')", "RT005"),
    ("select ratchet.start_workflow('wf', priority => -1)", "RT005"),
    ("select ratchet.start_workflow('wf', priority => NULL)", "RT005"),
    ("select ratchet.start_workflow('wf', queue => NULL)", "RT005"),
    ("select ratchet.start_workflow('wf', queue => 'missing')", "RT005"),
    ("select ratchet.start_workflow('wf', timeout => '-1 second')", "RT005"),
    ("select ratchet.start_workflow('wf', max_attempts => 0)", "RT005"),
    ("select ratchet.start_workflow('wf', dedup_key => '')", "RT005"),
    ("select ratchet.start_workflow('wf', parent_id => 'ghost')", "RT004"),
    (f"select ratchet.start_workflow('wf', input => {BIG})", "RT005"),
    ("select ratchet.start_workflows('wf', NULL)", "RT005"),
    ("select ratchet.start_workflows('wf', array[NULL]::jsonb[])", "RT005"),
    (
        "select ratchet.start_workflows('wf', array['{{}}']::jsonb[], workflow_ids => array['a','b'])",
        "RT005",
    ),
    ("select ratchet.get_workflow('ghost')", "RT004"),
    ("select ratchet.get_steps('ghost')", "RT004"),
    ("select ratchet.wait_result('ghost', '0')", "RT004"),
    ("select ratchet.claim(NULL, 'w')", "RT005"),
    ("select ratchet.claim('{{}}', 'w')", "RT005"),
    ("select ratchet.claim(array['default'], NULL)", "RT005"),
    ("select ratchet.claim(array['default'], 'w', -1)", "RT005"),
    ("select ratchet.claim(array['default'], 'w', 1, '0 seconds')", "RT005"),
    ("select ratchet.claim(array['default'], 'w', 1, NULL)", "RT005"),
    ("select ratchet.heartbeat('', '30 seconds')", "RT005"),
    ("select ratchet.record_step({wid}, {run}, -1, 's')", "RT005"),
    ("select ratchet.record_step({wid}, {run}, NULL, 's')", "RT005"),
    ("select ratchet.record_step({wid}, {run}, 0, NULL)", "RT005"),
    ("select ratchet.record_step({wid}, NULL, 0, 's')", "RT005"),
    ("select ratchet.record_step('ghost', 1, 0, 's')", "RT004"),
    (f"select ratchet.record_step({{wid}}, {{run}}, 0, 's', output => {BIG})", "RT005"),
    ("select ratchet.fail({wid}, {run}, '{{}}', retry_in => '-1 second')", "RT005"),
    ("select ratchet.suspend({wid}, {run}, NULL)", "RT005"),
    ("select ratchet.suspend({wid}, {run}, now(), wait_for => 'godot')", "RT005"),
    ("select ratchet.suspend({wid}, {run}, now(), wait_for => 'child')", "RT005"),
    ("select ratchet.durable_sleep({wid}, {run}, 0, 'NaN')", "RT005"),
    ("select ratchet.durable_sleep({wid}, {run}, 0, NULL)", "RT005"),
    ("select ratchet.send('ghost', '1')", "RT004"),
    ("select ratchet.send({wid}, NULL)", "RT005"),
    ("select ratchet.send(NULL, '1')", "RT005"),
    (f"select ratchet.send({{wid}}, {BIG})", "RT005"),
    ("select ratchet.send({wid}, '1', topic => repeat('t', 201))", "RT005"),
    ("select ratchet.set_event({wid}, {run}, 0, NULL, '1')", "RT005"),
    ("select ratchet.get_event({wid}, '')", "RT005"),
    ("select ratchet.cancel('ghost')", "RT004"),
    ("select ratchet.resume('ghost')", "RT004"),
    ("select ratchet.fork({wid}, -1)", "RT005"),
    ("select ratchet.fork({wid}, NULL)", "RT005"),
    ("select ratchet.create_queue(NULL)", "RT005"),
    ("select ratchet.create_queue(repeat('q', 49))", "RT005"),
    ("select ratchet.create_queue('q', concurrency => 0)", "RT005"),
    ("select ratchet.create_queue('q', worker_concurrency => -2)", "RT005"),
    ("select ratchet.create_queue('q', rate_limit => 5)", "RT005"),
    ("select ratchet.create_queue('q', rate_limit => 0, rate_period => '1 minute')", "RT005"),
    ("select ratchet.create_queue('q', rate_limit => 5, rate_period => '0 seconds')", "RT005"),
    ("select ratchet.pause_queue('missing')", "RT005"),
    ("select ratchet.schedule('s', NULL, 'wf')", "RT005"),
    ("select ratchet.schedule('s', '* * *', 'wf')", "RT005"),
    ("select ratchet.schedule('s', '* * * * *', 'wf', queue => 'missing')", "RT005"),
    ("select ratchet.purge(NULL)", "RT005"),
    ("select ratchet.purge('1000000 years')", "RT005"),
    ("select ratchet.start_workflow('wf', timeout => '1000000 years')", "RT005"),
    ("select ratchet.fail({wid}, {run}, '{{}}', retry_in => '1000000 years')", "RT005"),
    ("select ratchet.durable_sleep({wid}, {run}, 0, 1e300)", "RT005"),
    ("select ratchet.create_queue('q', rate_limit => 1, rate_period => '1000000 years')", "RT005"),
    ("select ratchet.purge('1 day', max_rows => 0)", "RT005"),
]


@pytest.mark.parametrize(("call", "code"), CASES, ids=[c[0][15:70] for c in CASES])
def test_bad_input_is_a_clear_rt_error_and_changes_nothing(
    conn: Conn, call: str, code: str
) -> None:
    wid = start(conn, "wf", workflow_id="victim")
    [c] = claim(conn)
    before = conn.execute(
        "select (select jsonb_agg(w order by workflow_id) from ratchet.workflows w) as w,"
        "       (select count(*) from ratchet.steps) as s,"
        "       (select count(*) from ratchet.messages) as m,"
        "       (select count(*) from ratchet.queues) as q"
    ).fetchone()
    query = call.format(wid=f"'{wid}'", run=c["run_id"])
    with raises_sqlstate(code):
        conn.execute(query)
    after = conn.execute(
        "select (select jsonb_agg(w order by workflow_id) from ratchet.workflows w) as w,"
        "       (select count(*) from ratchet.steps) as s,"
        "       (select count(*) from ratchet.messages) as m,"
        "       (select count(*) from ratchet.queues) as q"
    ).fetchone()
    assert after == before


def test_wrongly_typed_json_input_is_rejected_by_the_type_system(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        conn.execute("select ratchet.start_workflow('wf', input => 'not json')")
