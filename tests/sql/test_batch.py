"""Batched writes (sql/55_batch.sql): record_steps, finish_many, fail_many,
finish_and_claim and start_workflows(items). Each row is fenced on its own
run_id; a stale row is rejected alone; nothing is visible before the commit."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tests.sql.sqlhelp import claim, raises_sqlstate, start


def _claimed(conn: psycopg.Connection[Any], n: int, worker: str = "w1") -> list[dict[str, Any]]:
    rows = claim(conn, n=n, worker=worker)
    assert len(rows) == n
    return rows


def test_record_steps_writes_every_row_and_reports_ok(conn: psycopg.Connection[Any]) -> None:
    ids = [start(conn) for _ in range(3)]
    rows = _claimed(conn, 3)
    out = conn.execute(
        "select * from ratchet.record_steps(%s, %s, %s, %s, %s)",
        [[r["workflow_id"] for r in rows], [r["run_id"] for r in rows], [0, 0, 0],
         ["a", "b", "c"], [Jsonb(1), Jsonb(2), Jsonb(3)]],
    ).fetchall()
    assert [o["outcome"] for o in out] == ["ok"] * 3
    assert [o["ord"] for o in out] == [1, 2, 3]
    for r, name, value in zip(rows, "abc", (1, 2, 3), strict=True):
        step = conn.execute("select * from ratchet.get_steps(%s)", [r["workflow_id"]]).fetchone()
        assert step is not None and step["name"] == name and step["output"] == value
    assert sorted(ids) == sorted(r["workflow_id"] for r in rows)


def test_a_stale_run_is_rejected_alone(conn: psycopg.Connection[Any]) -> None:
    for _ in range(3):
        start(conn)
    rows = _claimed(conn, 3)
    conn.execute("select ratchet.cancel(%s)", [rows[1]["workflow_id"]])
    wids = [r["workflow_id"] for r in rows] + ["nope"]
    runs = [rows[0]["run_id"] + 1000, rows[1]["run_id"], rows[2]["run_id"], 1]
    out = conn.execute(
        "select * from ratchet.record_steps(%s, %s, %s, %s)",
        [wids, runs, [0, 0, 0, 0], ["s"] * 4],
    ).fetchall()
    assert [o["outcome"] for o in out] == ["stale_run", "cancelled", "ok", "unknown"]
    counts = {r["workflow_id"]: conn.execute(
        "select count(*) as n from ratchet.steps where workflow_id = %s", [r["workflow_id"]]
    ).fetchone()["n"] for r in rows}  # type: ignore[index]
    assert counts == {rows[0]["workflow_id"]: 0, rows[1]["workflow_id"]: 0, rows[2]["workflow_id"]: 1}


def test_duplicates_never_overwrite(conn: psycopg.Connection[Any]) -> None:
    start(conn)
    (row,) = _claimed(conn, 1)
    wid, run = row["workflow_id"], row["run_id"]
    conn.execute("select ratchet.record_step(%s, %s, 0, 'first', '1')", [wid, run])
    out = conn.execute(
        "select * from ratchet.record_steps(%s, %s, %s, %s, %s)",
        [[wid] * 3, [run] * 3, [0, 1, 1], ["again", "x", "y"], [Jsonb(9), Jsonb(2), Jsonb(3)]],
    ).fetchall()
    assert [o["outcome"] for o in out] == ["duplicate", "ok", "duplicate"]
    steps = conn.execute("select name, output from ratchet.get_steps(%s)", [wid]).fetchall()
    assert steps == [{"name": "first", "output": 1}, {"name": "x", "output": 2}]


def test_a_resent_batch_is_recognised_as_this_runs_own(conn: psycopg.Connection[Any]) -> None:
    """The connection dropped after record_steps committed: the client sends the
    same batch again. Its own rows (same run, name and content) are ok; a row
    with other content, or one recorded by another run, stays a duplicate."""
    start(conn)
    start(conn)
    first, second = _claimed(conn, 2)
    batch = [[first["workflow_id"], second["workflow_id"]], [first["run_id"], second["run_id"]],
             [0, 0], ["charge", "charge"], [Jsonb({"id": 1}), Jsonb({"id": 2})]]
    sql = "select outcome from ratchet.record_steps(%s, %s, %s, %s, %s)"
    assert [o["outcome"] for o in conn.execute(sql, batch).fetchall()] == ["ok", "ok"]
    assert [o["outcome"] for o in conn.execute(sql, batch).fetchall()] == ["ok", "ok"]
    changed = [batch[0], batch[1], batch[2], ["charge", "refund"], [Jsonb({"id": 1}),
                                                                     Jsonb({"id": 3})]]
    assert [o["outcome"] for o in conn.execute(sql, changed).fetchall()] == \
        ["ok", "duplicate"]
    steps = conn.execute("select workflow_id, name, output from ratchet.steps "
                         "order by workflow_id").fetchall()
    assert sorted((s["name"], s["output"]["id"]) for s in steps) == \
        [("charge", 1), ("charge", 2)]


def test_bad_items_raise_rt005_naming_the_item(conn: psycopg.Connection[Any]) -> None:
    start(conn)
    (row,) = _claimed(conn, 1)
    wid, run = row["workflow_id"], row["run_id"]
    with raises_sqlstate("RT005") as info:
        conn.execute("select * from ratchet.record_steps(%s, %s, %s, %s)",
                     [[wid, wid], [run, run], [0, -1], ["a", "b"]])
    assert "item 2" in str(info.value)
    with raises_sqlstate("RT005"):
        conn.execute("select * from ratchet.record_steps(%s, %s, %s, %s)",
                     [[wid], [run, run], [0], ["a"]])
    with raises_sqlstate("RT005"):
        conn.execute("select * from ratchet.finish_many(%s, %s)", [[wid], None])
    with raises_sqlstate("RT005") as info:
        conn.execute("select * from ratchet.fail_many(%s, %s, %s, %s::interval[])",
                     [[wid], [run], [Jsonb({})], ["-1 second"]])
    assert "item 1" in str(info.value)
    # nothing was written by the refused calls
    assert conn.execute("select count(*) as n from ratchet.steps").fetchone() == {"n": 0}


def test_finish_many_and_fail_many(conn: psycopg.Connection[Any]) -> None:
    for _ in range(2):
        start(conn)
    start(conn, retry_policy=Jsonb({"max_attempts": 3, "initial_delay": 60}))
    rows = _claimed(conn, 3)
    by_policy = {r["workflow_id"]: r for r in rows}
    retried = [w for w in by_policy if conn.execute(
        "select retry_policy from ratchet.workflows where workflow_id = %s", [w]
    ).fetchone()["retry_policy"] is not None][0]  # type: ignore[index]
    others = [r for r in rows if r["workflow_id"] != retried]
    out = conn.execute(
        "select * from ratchet.finish_many(%s, %s, %s)",
        [[others[0]["workflow_id"], others[0]["workflow_id"]],
         [others[0]["run_id"], others[0]["run_id"]], [Jsonb("done"), Jsonb("again")]],
    ).fetchall()
    assert [o["outcome"] for o in out] == ["ok", "stale_run"]
    wf = conn.execute("select * from ratchet.get_workflow(%s)", [others[0]["workflow_id"]]).fetchone()
    assert wf is not None and wf["status"] == "succeeded" and wf["output"] == "done"

    out = conn.execute(
        "select * from ratchet.fail_many(%s, %s, %s, retryables => %s)",
        [[retried, others[1]["workflow_id"]], [by_policy[retried]["run_id"], others[1]["run_id"]],
         [Jsonb({"type": "E"}), Jsonb({"type": "F"})], [None, False]],
    ).fetchall()
    assert [(o["outcome"], o["status"]) for o in out] == [("ok", "enqueued"), ("ok", "failed")]
    st = {w: conn.execute("select status from ratchet.workflows where workflow_id = %s", [w])
          .fetchone()["status"] for w in (retried, others[1]["workflow_id"])}  # type: ignore[index]
    assert st == {retried: "enqueued", others[1]["workflow_id"]: "failed"}


def test_finish_and_claim_returns_outcomes_then_claims(conn: psycopg.Connection[Any]) -> None:
    for _ in range(4):
        start(conn)
    rows = _claimed(conn, 2)
    out = conn.execute(
        "select * from ratchet.finish_and_claim(%s, %s, %s, %s, 'w1', 3)",
        [[r["workflow_id"] for r in rows], [rows[0]["run_id"], rows[1]["run_id"] + 999],
         [None, None], ["default"]],
    ).fetchall()
    assert [o["outcome"] for o in out] == ["ok", "stale_run", "claimed", "claimed"]
    claimed = out[2:]
    assert all(c["run_id"] is not None and c["attempt"] == 1 and c["steps"] == [] for c in claimed)
    assert {c["workflow_id"] for c in claimed}.isdisjoint(r["workflow_id"] for r in rows)
    # the stale one is still running under its real run
    wf = conn.execute("select status, run_id from ratchet.workflows where workflow_id = %s",
                      [rows[1]["workflow_id"]]).fetchone()
    assert wf == {"status": "running", "run_id": rows[1]["run_id"]}


def test_nothing_is_visible_unless_the_call_commits(conn: psycopg.Connection[Any],
                                                    connect: Any) -> None:
    for _ in range(3):
        start(conn)
    rows = _claimed(conn, 3)
    other = connect(autocommit=False)
    other.execute(
        "select * from ratchet.record_steps(%s, %s, %s, %s)",
        [[r["workflow_id"] for r in rows], [r["run_id"] for r in rows], [0, 0, 0], ["s"] * 3],
    ).fetchall()
    other.execute("select * from ratchet.finish_many(%s, %s)",
                  [[rows[0]["workflow_id"]], [rows[0]["run_id"]]]).fetchall()
    # another session sees none of it before the commit
    assert conn.execute("select count(*) as n from ratchet.steps").fetchone() == {"n": 0}
    assert conn.execute("select count(*) as n from ratchet.workflows where status = 'succeeded'"
                        ).fetchone() == {"n": 0}
    other.rollback()
    assert conn.execute("select count(*) as n from ratchet.steps").fetchone() == {"n": 0}
    # and the runs are still theirs: a retry of the same batch commits everything
    other.execute(
        "select * from ratchet.record_steps(%s, %s, %s, %s)",
        [[r["workflow_id"] for r in rows], [r["run_id"] for r in rows], [0, 0, 0], ["s"] * 3],
    ).fetchall()
    other.commit()
    assert conn.execute("select count(*) as n from ratchet.steps").fetchone() == {"n": 3}


def test_a_reclaim_racing_a_batch_fails_only_its_row(conn: psycopg.Connection[Any],
                                                     connect: Any) -> None:
    """A batch waits on the row lock of a workflow being reclaimed; it then sees
    the new run_id and rejects that row alone, the others commit."""
    for _ in range(3):
        start(conn)
    rows = _claimed(conn, 3, worker="old")
    victim = rows[1]["workflow_id"]
    # another worker reclaims the victim, holding its row lock in an open transaction
    reclaimer = connect(autocommit=False)
    reclaimer.execute("update ratchet.workflows set lease_expires_at = now() - interval '1 second' "
                      "where workflow_id = %s", [victim])
    reclaimed = reclaimer.execute(
        "select * from ratchet.claim_workflow(%s, 'new', '30 seconds'::interval)", [victim]).fetchall()
    assert len(reclaimed) == 1
    result: dict[str, Any] = {}

    def batch() -> None:
        with psycopg.connect(conn.info.dsn, autocommit=True) as c:
            result["out"] = c.execute(
                "select outcome from ratchet.record_steps(%s, %s, %s, %s) order by ord",
                [[r["workflow_id"] for r in rows], [r["run_id"] for r in rows], [0, 0, 0], ["s"] * 3],
            ).fetchall()

    t = threading.Thread(target=batch)
    t.start()
    # the batch blocks on the victim's row lock until the reclaim commits
    for _ in range(200):
        waiting = conn.execute(
            "select count(*) as n from pg_stat_activity where wait_event_type = 'Lock' "
            "and query like '%%record_steps%%'").fetchone()
        if waiting and waiting["n"] > 0:
            break
        t.join(0.05)
    assert waiting and waiting["n"] == 1, "the batch did not wait on the reclaimed row"
    reclaimer.commit()
    t.join(10)
    assert [r[0] for r in result["out"]] == ["ok", "stale_run", "ok"]
    n = conn.execute("select workflow_id, count(*) as n from ratchet.steps group by 1").fetchall()
    assert {r["workflow_id"] for r in n} == {rows[0]["workflow_id"], rows[2]["workflow_id"]}


def test_start_workflows_items(conn: psycopg.Connection[Any]) -> None:
    conn.execute("select ratchet.create_queue('q2')")
    ids = conn.execute("select ratchet.start_workflows(%s) as ids", [Jsonb([
        {"name": "a", "workflow_id": "id-1", "priority": 5, "input": {"x": 1}},
        {"name": "b", "queue": "q2", "dedup_key": "k", "delay": 3600},
        {"name": "c", "max_attempts": 2, "timeout": 60},
    ])]).fetchone()["ids"]  # type: ignore[index]
    assert ids[0] == "id-1" and len(ids) == 3
    rows = {r["workflow_id"]: r for r in conn.execute(
        "select workflow_id, name, queue, priority, dedup_key, input, max_attempts, "
        "start_at > now() + interval '59 minutes' as later, deadline is not null as has_deadline "
        "from ratchet.workflows").fetchall()}
    assert rows["id-1"]["priority"] == 5 and rows["id-1"]["input"] == {"x": 1}
    assert rows[ids[1]]["queue"] == "q2" and rows[ids[1]]["dedup_key"] == "k" and rows[ids[1]]["later"]
    assert rows[ids[2]]["max_attempts"] == 2 and rows[ids[2]]["has_deadline"]
    # idempotent on ids
    again = conn.execute("select ratchet.start_workflows(%s) as ids",
                         [Jsonb([{"name": "a", "workflow_id": "id-1"}])]).fetchone()
    assert again == {"ids": ["id-1"]}


def test_start_workflows_items_bad_items_start_nothing(conn: psycopg.Connection[Any]) -> None:
    cases: list[tuple[Any, str]] = [
        ([{"name": "a"}, {"name": "b", "priority": -1}], "RT005"),
        ([{"name": "a"}, {"nam": "b"}], "RT005"),
        ([{"name": "a", "delay": "soon"}], "RT005"),
        ([{"name": "a", "start_at": "not a time"}], "RT005"),
        ([{"name": "a", "queue": "missing"}], "RT005"),
        ([{"name": "a", "dedup_key": "k"}, {"name": "a", "dedup_key": "k"}], "RT001"),
        ([{"name": "a", "parent_id": "ghost"}], "RT004"),
        ({"name": "a"}, "RT005"),
    ]
    for items, code in cases:
        with raises_sqlstate(code) as info:
            conn.execute("select ratchet.start_workflows(%s)", [Jsonb(items)])
        if isinstance(items, list):
            assert "item " in str(info.value), info.value
    assert conn.execute("select count(*) as n from ratchet.workflows").fetchone() == {"n": 0}


def test_batch_functions_are_granted_to_the_worker(conn: psycopg.Connection[Any]) -> None:
    for fn, role in [("ratchet.record_steps(text[],bigint[],int[],text[],jsonb[],jsonb[])", "ratchet_worker"),
                     ("ratchet.finish_many(text[],bigint[],jsonb[])", "ratchet_worker"),
                     ("ratchet.fail_many(text[],bigint[],jsonb[],interval[],boolean[],jsonb[])", "ratchet_worker"),
                     ("ratchet.finish_and_claim(text[],bigint[],jsonb[],text[],text,int,interval,text[],text)",
                      "ratchet_worker"),
                     ("ratchet.start_workflows(jsonb)", "ratchet_client")]:
        row = conn.execute("select has_function_privilege(%s, %s, 'execute') as ok, "
                           "has_function_privilege('public', %s, 'execute') as pub",
                           [role, fn, fn]).fetchone()
        assert row == {"ok": True, "pub": False}, fn
