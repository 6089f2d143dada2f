"""Metrics: the ratchet.workers view, ratchet.metrics(), App.metrics() and
`ratchet metrics` (table, JSON, Prometheus text)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_cli import cli_json, run_cli

import ratchet


def _at(conn, t) -> None:
    conn.execute("select set_config('ratchet.fake_now', %s, false)", (t.isoformat(),))


def _claim(conn, worker: str, queue: str = "default") -> dict:
    row = conn.execute("select * from ratchet.claim(queues => array[%s], worker_id => %s, "
                       "lease => interval '1 hour')", (queue, worker)).fetchone()
    assert row is not None
    return row


@pytest.fixture
def history(conn):
    """Workflows with known timings, written through the worker protocol on a
    fake clock ten minutes in the past."""
    t0 = conn.execute("select now() - interval '10 minutes' as t").fetchone()["t"]
    _at(conn, t0)
    conn.execute("select ratchet.create_queue('mail')")
    conn.execute("select ratchet.start_workflow('ok', workflow_id => 'm-ok')")
    run = _claim(conn, "w-1")["run_id"]
    # steps end 2 s and 6 s after the claim: latencies 2 s and 4 s
    for step, secs in ((0, 2), (1, 6)):
        _at(conn, t0 + timedelta(seconds=secs))
        conn.execute("select ratchet.record_step('m-ok', %s, %s, 's', '1'::jsonb, null)",
                     (run, step))
    conn.execute("select ratchet.finish('m-ok', %s, '1'::jsonb)", (run,))
    conn.execute("select ratchet.start_workflow('bad', workflow_id => 'm-bad')")
    run = _claim(conn, "w-1")["run_id"]
    conn.execute("select ratchet.fail('m-bad', %s, '{\"type\": \"E\"}'::jsonb)", (run,))
    conn.execute("select ratchet.start_workflow('due', workflow_id => 'm-due')")
    conn.execute("select ratchet.start_workflow('busy', workflow_id => 'm-busy', queue => 'mail')")
    _at(conn, t0 + timedelta(seconds=30))
    _claim(conn, "w-2", "mail")
    conn.execute("reset ratchet.fake_now")
    return t0


def test_workers_view_and_sql_metrics(conn, history):
    t0 = history
    workers = conn.execute("select * from ratchet.workers order by worker_id").fetchall()
    assert [(w["worker_id"], w["running"], w["queues"]) for w in workers] == [("w-2", 1, ["mail"])]
    assert workers[0]["oldest_claimed_at"] == t0 + timedelta(seconds=30)
    assert workers[0]["last_heartbeat"] == t0 + timedelta(seconds=30)
    assert workers[0]["expired"] is False

    rows = {r["queue"]: r for r in conn.execute("select * from ratchet.metrics()").fetchall()}
    d = rows["default"]
    assert (d["started"], d["succeeded"], d["failed"], d["cancelled"]) == (3, 1, 1, 0)
    assert (d["running"], d["enqueued_due"]) == (0, 1)
    assert d["oldest_due_age"] > timedelta(minutes=9)
    assert d["steps"] == 2 and d["step_max_seconds"] == pytest.approx(4.0)
    assert d["step_p50_seconds"] == pytest.approx(3.0)
    m = rows["mail"]
    assert (m["started"], m["running"], m["enqueued_due"], m["steps"]) == (1, 1, 0, 0)
    assert m["oldest_due_age"] is None and m["step_p50_seconds"] is None
    # a window that ends before the history leaves only the live counts
    d = {r["queue"]: r for r in conn.execute(
        "select * from ratchet.metrics(interval '1 minute')").fetchall()}["default"]
    assert (d["started"], d["succeeded"], d["failed"], d["steps"]) == (0, 0, 0, 0)
    assert d["enqueued_due"] == 1


def test_app_metrics_and_cli(dsn, history):
    with ratchet.App(dsn) as app:
        metrics = {m.queue: m for m in app.metrics(timedelta(hours=1))}
        workers = app.list_workers()
        with pytest.raises(ratchet.InvalidArgument):
            app.metrics(0)
    assert isinstance(metrics["default"], ratchet.QueueMetrics)
    assert metrics["default"].succeeded == 1 and metrics["default"].step_p95_seconds \
        == pytest.approx(3.9)
    assert [w.worker_id for w in workers] == ["w-2"] and workers[0].oldest_claimed_at

    out = cli_json(dsn, "metrics", "--window", "1h")
    assert {r["queue"]: r["failed"] for r in out} == {"default": 1, "mail": 0}
    table = run_cli(dsn, "metrics").stdout
    assert table.splitlines()[0].split()[:4] == ["QUEUE", "STARTED", "SUCCEEDED", "FAILED"]
    text = run_cli(dsn, "metrics", "--prometheus").stdout
    assert "# TYPE ratchet_queue_depth gauge" in text
    assert 'ratchet_queue_depth{queue="default"} 1' in text
    assert 'ratchet_workflows_ended{queue="default",outcome="failed"} 1' in text
    assert 'ratchet_step_latency_seconds{queue="default",quantile="1"} 4' in text
    assert 'ratchet_worker_running{worker_id="w-2"} 1' in text
