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
    rows = cli_json(dsn, "ls")
    assert {r["workflow_id"] for r in rows} == {"g-1", "g-2"}
    assert cli_json(dsn, "ls", "--status", "succeeded") == []
    assert len(cli_json(dsn, "ls", "--name", "greet", "--since", "1h", "--limit", "1")) == 1
    table = run_cli(dsn, "ls").stdout
    assert "WORKFLOW_ID" in table and "g-1" in table

    shown = cli_json(dsn, "show", "g-1")
    assert shown["workflow"]["input"] == {"args": ["ann"]}
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
    assert cli_json(dsn, "ls", "--status", "cancelled")[0]["workflow_id"] == "c-1"
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
    assert proc.returncode == 1
    assert "ratchet: error:" in proc.stderr and "Traceback" not in proc.stderr
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
