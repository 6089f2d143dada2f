"""ratchet.patched(): a workflow's code changes while runs are in flight."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter

import pytest
from helpers import poll

import ratchet
from ratchet import _runs


def effects(conn, workflow_id: str) -> dict[str, int]:
    rows = conn.execute("select what, count(*) as n from crash_effects where workflow_id = %s "
                        "group by what", (workflow_id,)).fetchall()
    return {r["what"]: r["n"] for r in rows}


def step_names(conn, workflow_id: str) -> list[str]:
    return [r["name"] for r in conn.execute(
        "select name from ratchet.steps where workflow_id = %s order by step_id",
        (workflow_id,)).fetchall()]


def ended(conn, workflow_id: str):
    return poll(lambda: conn.execute(
        "select status, output, error from ratchet.workflows where workflow_id = %s and "
        "status in ('succeeded', 'failed', 'cancelled', 'dead')", (workflow_id,)).fetchone(),
        30, f"{workflow_id} to end")


@pytest.mark.slow
def test_old_run_finishes_on_new_code_through_the_old_branch(conn, spawn_worker, tmp_path):
    conn.execute("""create table crash_effects (id bigserial primary key,
      workflow_id text not null, what text not null, pid int not null,
      at timestamptz not null default clock_timestamp())""")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    conn.execute("select ratchet.start_workflow('order', input => %s::jsonb, "
                 "workflow_id => 'old-run')", (json.dumps({"args": [1]}),))
    v1 = spawn_worker("patchapp:app", "--lease", "1.5", name="v1",
                      env={"PATCH_VERSION": "1", "PATCH_BARRIER_DIR": str(barrier)})
    poll(lambda: (barrier / "hang").exists(), 30, "the v1 worker to be inside step 2")
    os.kill(v1.pid, signal.SIGKILL)
    v1.wait(10)
    assert step_names(conn, "old-run") == ["a", "old_step"]

    spawn_worker("patchapp:app", "--lease", "1.5", name="v2", env={"PATCH_VERSION": "2"})
    row = ended(conn, "old-run")
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == "old-1"  # the old branch, replayed from its checkpoint
    assert effects(conn, "old-run") == {"a": 1, "old_step": 1, "hang": 1, "finish": 1}
    assert step_names(conn, "old-run") == ["a", "old_step", "finish"]

    conn.execute("select ratchet.start_workflow('order', input => %s::jsonb, "
                 "workflow_id => 'new-run')", (json.dumps({"args": [2]}),))
    row = ended(conn, "new-run")
    assert row["status"] == "succeeded" and row["output"] == "new-2"
    assert effects(conn, "new-run") == {"a": 1, "new_step": 1, "finish": 1}
    assert step_names(conn, "new-run") == ["a", "patch:x", "new_step", "finish"]


def test_marker_decides_on_replay_and_deprecate_patch(dsn, conn):
    calls: Counter[str] = Counter()
    v2 = ratchet.App(dsn, poll_interval=0.2)
    v3 = ratchet.App(dsn, poll_interval=0.2)
    try:
        for app, version in ((v2, 2), (v3, 3)):
            @app.step(name="new_step")
            def new_step() -> str:
                calls["new_step"] += 1
                return "new"

            @app.step(name="old_step")
            def old_step() -> str:
                calls["old_step"] += 1
                return "old"

            @app.step(name="tail")
            def tail() -> int:
                calls["tail"] += 1
                return 1

            if version == 2:
                @app.workflow(name="flow")
                def flow_v2() -> list[object]:
                    first = ratchet.patched("x")
                    again = ratchet.patched("x")  # memoized: no second marker
                    out = new_step() if first else old_step()
                    return [first, again, out, tail()]
                v2_flow = flow_v2
            else:
                @app.workflow(name="flow")
                def flow_v3() -> list[object]:
                    ratchet.deprecate_patch("x")
                    return [True, True, new_step(), tail()]
                v3_flow = flow_v3

        assert ratchet.patched("x") is True  # outside a workflow: the new code
        assert v2_flow() == [True, True, "new", 1]
        wid = conn.execute("select workflow_id from ratchet.workflows").fetchone()["workflow_id"]
        assert step_names(conn, wid) == ["patch:x", "new_step", "tail"]
        assert calls == {"new_step": 1, "tail": 1}

        # A replay (a fork re-running only the last step) sees the marker:
        # new branch again, nothing before the fork point runs again.
        for app in (v2, v3):
            fork = app.fork(wid, from_step=2)
            worker_id = f"test-{id(app)}"
            out = _runs.run_directly(app, fork.workflow_id, worker_id, 30.0)
            assert out == [True, True, "new", 1]
            assert step_names(conn, fork.workflow_id) == ["patch:x", "new_step", "tail"]
        assert calls == {"new_step": 1, "tail": 3}

        # A fresh run under v3 records no marker.
        assert v3_flow() == [True, True, "new", 1]
        newest = conn.execute("select workflow_id from ratchet.workflows where forked_from "
                              "is null order by created_at desc limit 1").fetchone()
        assert step_names(conn, newest["workflow_id"]) == ["new_step", "tail"]
        with pytest.raises(ValueError):
            ratchet.patched("")
    finally:
        v2.close()
        v3.close()


def test_patched_keeps_old_numbering_when_old_run_replays(app, conn):
    """A run recorded by old code (no marker, later step present) replays with
    the old branch and the same step numbers."""
    @app.step()
    def old_step() -> str:
        return "old"

    @app.step()
    def new_step() -> str:
        raise AssertionError("must not run for an old run")

    @app.workflow()
    def flow() -> str:
        return new_step() if ratchet.patched("x") else old_step()

    # What the old code recorded: old_step at step 0, then the run was lost.
    h = app.start(flow, workflow_id="legacy")
    run = conn.execute("select run_id from ratchet.claim(queues => array['default'], "
                       "worker_id => 'old-worker', lease => interval '1 second')").fetchone()
    conn.execute("select ratchet.record_step(workflow_id => 'legacy', run_id => %s, "
                 "step_id => 0, name => 'old_step', output => '\"old\"')", (run["run_id"],))
    conn.execute("update ratchet.workflows set lease_expires_at = ratchet.now() - "
                 "interval '1 second' where workflow_id = 'legacy'")
    assert _runs.run_directly(app, h.workflow_id, "new-worker", 30.0) == "old"
    assert step_names(conn, "legacy") == ["old_step"]

