"""The ``ratchet`` command line, run as a subprocess (``python -m ratchet``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid

import psycopg
import pytest
from helpers import APPS, poll, run_cli, subprocess_env

import ratchet
from ratchet._install import install, installed_version


def cli_json(dsn: str, *args: str):
    return json.loads(run_cli(dsn, *args, "--json").stdout)


def test_start_ls_show(dsn, conn):
    out = cli_json(dsn, "start", "greet", "--input", '{"args": ["ann"]}', "--id", "g-1")
    assert out == {"workflow_id": "g-1"}
    assert run_cli(dsn, "start", "greet", "--id", "g-2", "--queue", "default").stdout.strip() \
        == "g-2"
    rows = cli_json(dsn, "ls")["workflows"]
    assert {r["workflow_id"] for r in rows} == {"g-1", "g-2"}
    assert cli_json(dsn, "ls", "--status", "succeeded")["workflows"] == []
    listed = cli_json(dsn, "ls", "--name", "greet", "--since", "1h", "--limit", "1")
    assert len(listed["workflows"]) == 1
    table = run_cli(dsn, "ls").stdout
    assert "WORKFLOW_ID" in table and "g-1" in table

    shown = cli_json(dsn, "show", "g-1")
    assert shown["workflow"]["input"] == {"args": ["ann"], "kwargs": {}}
    assert shown["steps"] == [] and shown["children"] == []


def test_show_timeline_with_steps_and_children(dsn, conn):
    app = ratchet.App(dsn)
    try:
        @app.step()
        def hello() -> str:
            return "hi"

        @app.workflow()
        def child() -> int:
            return 1

        @app.step()
        def boom() -> None:
            raise ValueError("nope")

        @app.workflow()
        def parent() -> str:
            child()
            try:
                boom()
            except ratchet.StepError:
                pass
            return hello()

        assert parent() == "hi"
        wid = conn.execute("select workflow_id from ratchet.workflows where parent_id is null"
                           ).fetchone()["workflow_id"]
    finally:
        app.close()
    text = run_cli(dsn, "show", wid).stdout
    assert "succeeded" in text
    assert "start:child" in text and "result" in text and "hello" in text
    assert "error  ValueError: nope" in text
    assert f"{wid}:0" in text  # the child is listed
    data = cli_json(dsn, "show", wid)
    assert [s["name"] for s in data["steps"]] == ["start:child", "result", "boom", "hello"]
    assert [c["workflow_id"] for c in data["children"]] == [f"{wid}:0"]


def test_cancel_resume_fork_send_queues(dsn, conn):
    run_cli(dsn, "start", "x", "--id", "c-1")
    assert cli_json(dsn, "cancel", "c-1") == {"workflow_id": "c-1", "cancelled": 1}
    assert cli_json(dsn, "ls", "--status", "cancelled")["workflows"][0]["workflow_id"] == "c-1"
    assert cli_json(dsn, "resume", "c-1")["resumed"] is True
    assert conn.execute("select status from ratchet.workflows where workflow_id = 'c-1'"
                        ).fetchone()["status"] == "enqueued"
    message = cli_json(dsn, "send", "c-1", '{"k": 1}', "--topic", "t")
    assert isinstance(message["message_id"], int)
    forked = cli_json(dsn, "fork", "c-1", "--from-step", "0", "--new-id", "c-2")
    assert forked["workflow_id"] == "c-2"
    queues = cli_json(dsn, "queues")
    assert any("default" in json.dumps(q) for q in queues)
    assert "DEFAULT" in run_cli(dsn, "queues").stdout.upper()


def test_errors_are_reported_without_traceback(dsn):
    proc = run_cli(dsn, "show", "does-not-exist", check=False)
    assert proc.returncode == 3  # documented: no such workflow
    assert "ratchet: error:" in proc.stderr and "Traceback" not in proc.stderr
    assert "hint: check the id: ratchet ls" in proc.stderr  # a CLI command, not SQL
    proc = run_cli(dsn, "start", "x", "--input", "{not json", check=False)
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr
    proc = run_cli("postgresql://nobody@127.0.0.1:1/none", "ls", check=False)
    assert proc.returncode == 1 and "cannot connect" in proc.stderr


def test_worker_command_runs_workflows_and_stops_on_sigterm(dsn, conn):
    run_cli(dsn, "start", "pipeline", "--input", '{"args": [1]}', "--id", "w-1")
    conn.execute("create table crash_effects (id bigserial primary key, workflow_id text, "
                 "what text, pid int, at timestamptz default clock_timestamp())")
    proc = subprocess.Popen([sys.executable, "-m", "ratchet", "--dsn", dsn, "worker",
                             "crashapp:app", "--queue", "default", "--concurrency", "2"],
                            env=subprocess_env(dsn), cwd=str(APPS),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        poll(lambda: conn.execute("select 1 from ratchet.workflows where workflow_id = 'w-1' "
                                  "and status = 'succeeded'").fetchone(), 30, "w-1 to finish")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "serving default" in out


def test_worker_command_rejects_bad_targets(dsn):
    proc = run_cli(dsn, "worker", "no_such_module:app", check=False)
    assert proc.returncode == 1 and "cannot import" in proc.stderr
    proc = run_cli(dsn, "worker", "crashapp:nothing", check=False)
    assert proc.returncode == 1 and "not a ratchet.App" in proc.stderr


def test_install_into_a_fresh_database(pg_server, dsn):
    for plain in (True, None):
        name = f"inst_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
            c.execute(f"create database {name}")
        try:
            target = pg_server.dsn(name)
            message = install(target, plain=plain)
            assert "installed ratchet" in message
            with psycopg.connect(target, autocommit=True) as c:
                assert installed_version(c) == ratchet.__version__
            assert "already installed" in install(target)
            out = run_cli(target, "install").stdout
            assert "already installed" in out
        finally:
            with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
                c.execute(f"drop database {name} with (force)")


def test_cli_help_lists_the_commands():
    proc = subprocess.run([sys.executable, "-m", "ratchet", "--help"], capture_output=True,
                          text=True, env=subprocess_env(""), timeout=30)
    assert proc.returncode == 0
    for command in ("install", "worker", "start", "ls", "show", "cancel", "resume", "fork",
                    "send", "queues", "demo"):
        assert command in proc.stdout


@pytest.mark.slow
def test_demo_against_an_existing_database(dsn):
    proc = subprocess.run([sys.executable, "-m", "ratchet", "--dsn", dsn, "demo"],
                          capture_output=True, text=True, env=subprocess_env(dsn), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kill -9" in proc.stdout
    assert proc.stdout.count("  exactly once") == 5 and "WRONG" not in proc.stdout


def test_ls_truncation_waiting_and_error_columns(dsn, conn):
    app = ratchet.App(dsn)
    try:
        @app.step()
        def boom() -> None:
            raise ValueError("bad input")

        @app.workflow()
        def failing() -> None:
            boom()

        with pytest.raises(ratchet.WorkflowFailed):
            failing()
        app.create_queue("held")
        app.pause_queue("held")
        app.start("x", workflow_id="held-1", queue="held")
        app.start("x", workflow_id="later-1", delay=3600)
    finally:
        app.close()
    table = run_cli(dsn, "ls").stdout
    assert "WAITING_FOR" in table and "ERROR" in table
    assert "ValueError: bad input" in table
    assert "paused queue" in table and "start (in 59m" in table
    out = run_cli(dsn, "ls", "--limit", "2").stdout
    assert "more match" in out and "--offset 2" in out
    data = cli_json(dsn, "ls", "--limit", "2")
    assert data["truncated"] is True and len(data["workflows"]) == 2
    assert cli_json(dsn, "ls", "--limit", "5")["truncated"] is False


def test_show_traceback_waiting_reason_and_watch(dsn, conn):
    app = ratchet.App(dsn)
    try:
        @app.step()
        def boom() -> None:
            raise ValueError("exploded here")

        @app.workflow()
        def failing() -> None:
            boom()

        with pytest.raises(ratchet.WorkflowFailed) as err:
            failing()
        wid = err.value.workflow_id
        app.start("x", workflow_id="delayed-1", delay=3600)
    finally:
        app.close()
    text = run_cli(dsn, "show", wid).stdout
    assert "traceback" in text and "raise ValueError(\"exploded here\")" in text
    assert "in step 'boom' (#0)" in text
    text = run_cli(dsn, "show", "delayed-1").stdout
    assert "waiting   not yet due (delayed start)" in text
    # --watch ends by itself once the workflow has ended
    proc = run_cli(dsn, "show", wid, "--watch", "0.1")
    assert proc.returncode == 0 and "failed" in proc.stdout


def test_start_wait_and_exit_codes(dsn, conn, spawn_worker):
    conn.execute("create table crash_effects (id bigserial primary key, workflow_id text, "
                 "what text, pid int, at timestamptz default clock_timestamp())")
    spawn_worker("crashapp:app")
    proc = run_cli(dsn, "start", "pipeline", "--input", "[3]", "--wait", "--timeout", "30s")
    assert json.loads(proc.stdout) == [4, 8, "tx-8", "TX-8"]
    proc = run_cli(dsn, "start", "nobody-runs-this", "--wait", "--timeout", "0.5",
                   check=False)
    assert proc.returncode == 5 and "did not end" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli(dsn, "start", "x", "--input", "3", check=False)
    assert proc.returncode == 2


def test_cancel_of_an_ended_workflow_is_an_error(dsn, conn):
    run_cli(dsn, "start", "x", "--id", "e-1")
    run_cli(dsn, "cancel", "e-1")
    proc = run_cli(dsn, "cancel", "e-1", check=False)
    assert proc.returncode == 1 and "already ended (cancelled)" in proc.stderr
    assert "ratchet resume e-1" in proc.stderr


def test_queue_commands_schedules_workers_version(dsn, conn):
    run_cli(dsn, "queue", "create", "mail", "--concurrency", "3", "--rate-limit", "10",
            "--rate-period", "1m")
    run_cli(dsn, "queue", "pause", "mail")
    table = run_cli(dsn, "queues").stdout
    line = next(r for r in table.splitlines() if r.startswith("mail"))
    assert "yes" in line and "10/1m" in line
    run_cli(dsn, "queue", "resume", "mail")
    assert next(q for q in cli_json(dsn, "queues") if q["queue"] == "mail")["paused"] is False
    proc = run_cli(dsn, "start", "x", "--queue", "nope", check=False)
    assert proc.returncode == 1 and "hint: create it first: ratchet queue create nope" \
        in proc.stderr

    conn.execute("select ratchet.schedule(name => 'nightly', cron => '0 3 * * *', "
                 "workflow_name => 'report')")
    assert "nightly" in run_cli(dsn, "schedules").stdout
    assert cli_json(dsn, "schedules")[0]["cron"] == "0 3 * * *"
    run_cli(dsn, "unschedule", "nightly")
    proc = run_cli(dsn, "unschedule", "nightly", check=False)
    assert proc.returncode == 3
    assert "no live workers" in run_cli(dsn, "workers").stdout
    conn.execute("select ratchet.start_workflow('x', workflow_id => 'w-x')")
    conn.execute("select * from ratchet.claim(queues => array['default'], "
                 "worker_id => 'host:1:abc', lease => interval '1 minute')")
    workers = cli_json(dsn, "workers")
    assert [w["worker_id"] for w in workers] == ["host:1:abc"] and workers[0]["running"] == 1
    assert "ago" in run_cli(dsn, "workers").stdout
    proc = run_cli(dsn, "--version")
    assert proc.stdout.strip() == f"ratchet {ratchet.__version__}"


def test_closed_pipe_exits_quietly(dsn, conn):
    for i in range(300):
        conn.execute("select ratchet.start_workflow('x', workflow_id => %s)", (f"p-{i:04}",))
    shell = subprocess.run(
        f"{sys.executable} -m ratchet --dsn '{dsn}' ls --limit 300 | head -n 1",
        shell=True, capture_output=True, text=True, env=subprocess_env(dsn), timeout=60)
    assert shell.stdout.startswith("WORKFLOW_ID")
    assert "Traceback" not in shell.stderr and "BrokenPipe" not in shell.stderr
