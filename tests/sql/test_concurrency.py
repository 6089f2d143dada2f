"""Races between real sessions: many claimers, limits under contention, racing step writes."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
from sqlhelp import claim, set_now, start, wait_until

Conn = psycopg.Connection[Any]


def run_parallel(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(i) in n threads released together; re-raise the first error."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_many_claimers_never_claim_the_same_workflow_twice(conn: Conn, connect: Any) -> None:
    conn.execute("select ratchet.start_workflows('wf', array_fill('{}'::jsonb, array[400]))")
    sessions = [connect() for _ in range(8)]

    def worker(i: int) -> list[str]:
        got: list[str] = []
        while True:
            rows = claim(sessions[i], worker=f"w{i}", n=7)
            if not rows:
                return got
            got += [r["workflow_id"] for r in rows]

    claimed = [wid for batch in run_parallel(8, worker) for wid in batch]
    assert len(claimed) == 400
    assert len(set(claimed)) == 400, "a workflow was claimed twice"
    assert conn.execute(
        "select count(*) as n from ratchet.workflows where status = 'running'"
    ).fetchone() == {"n": 400}


def test_global_concurrency_holds_under_concurrent_claimers(conn: Conn, connect: Any) -> None:
    conn.execute("select ratchet.create_queue('q', concurrency => 3)")
    conn.execute("select ratchet.start_workflows('wf', array_fill('{}'::jsonb, array[60]), 'q')")
    sessions = [connect() for _ in range(6)]
    peak = Counter[str]()
    lock = threading.Lock()

    def worker(i: int) -> int:
        c = sessions[i]
        done = 0
        idle_rounds = 0
        while idle_rounds < 50:
            rows = claim(c, ["q"], f"w{i}", 2)
            if not rows:
                left = c.execute(
                    "select count(*) as n from ratchet.workflows where status <> 'succeeded'"
                ).fetchone()
                if left == {"n": 0}:
                    return done
                idle_rounds += 1
                continue
            idle_rounds = 0
            running = c.execute(
                "select count(*) as n from ratchet.workflows where status = 'running'"
            ).fetchone()
            assert running is not None
            with lock:
                peak["max"] = max(peak["max"], running["n"])
            for r in rows:
                c.execute("select ratchet.finish(%s, %s, '1')", [r["workflow_id"], r["run_id"]])
                done += 1
        return done

    finished = run_parallel(6, worker)
    assert sum(finished) == 60
    assert 1 <= peak["max"] <= 3, f"concurrency limit exceeded: {peak['max']} running"


def test_two_runs_racing_on_one_step_leave_exactly_one_checkpoint(conn: Conn, connect: Any) -> None:
    for round_ in range(20):
        wid = start(conn, "wf", workflow_id=f"race-{round_}")
        a, b = connect(), connect()
        set_now(a, "2030-01-01 00:00:00Z")
        [old] = claim(a, worker="a", lease="1 second")
        set_now(b, "2030-01-01 00:00:05Z")
        [new] = claim(b, worker="b")
        runs = {"a": (a, old["run_id"]), "b": (b, new["run_id"])}

        def write(i: int, runs: dict[str, Any] = runs, wid: str = wid) -> str:
            who = "ab"[i]
            session, run_id = runs[who]
            try:
                session.execute(
                    "select ratchet.record_step(%s, %s, 0, 'charge', output => to_jsonb(%s::text))",
                    [wid, run_id, who],
                )
                return "ok"
            except psycopg.Error as exc:
                return exc.sqlstate or "?"

        outcome = run_parallel(2, write)
        assert outcome == ["RT002", "ok"], outcome
        steps = conn.execute(
            "select output from ratchet.steps where workflow_id = %s", [wid]
        ).fetchall()
        assert steps == [{"output": "b"}]
        a.close()
        b.close()


def test_step_write_waits_for_a_concurrent_reclaim_and_is_then_fenced(
    conn: Conn, connect: Any
) -> None:
    """The old run's transaction holds the row; the reclaim commits after it or fences it."""
    wid = start(conn, "wf")
    old_session, thief = connect(), connect()
    set_now(old_session, "2030-01-01 00:00:00Z")
    [old] = claim(old_session, worker="a", lease="1 second")
    set_now(thief, "2030-01-01 00:00:05Z")
    # the thief claims inside an open transaction: the row is locked by it
    thief.autocommit = False
    [new] = claim(thief, worker="b")
    result: dict[str, str] = {}

    def old_writes() -> None:
        try:
            old_session.execute(
                "select ratchet.record_step(%s, %s, 0, 's', '1')", [wid, old["run_id"]]
            )
            result["old"] = "ok"
        except psycopg.Error as exc:
            result["old"] = exc.sqlstate or "?"

    t = threading.Thread(target=old_writes)
    t.start()

    # the old run's write must block on the thief's row lock until it commits
    def old_write_is_waiting() -> bool:
        row = conn.execute(
            "select count(*) as n from pg_stat_activity where wait_event_type = 'Lock' "
            "and query like '%%record_step%%'"
        ).fetchone()
        return row == {"n": 1}

    assert wait_until(old_write_is_waiting), "the stale write did not wait for the reclaim"
    thief.commit()
    t.join()
    assert result["old"] == "RT002"
    assert new["run_id"] != old["run_id"]
    assert conn.execute("select count(*) as n from ratchet.steps").fetchone() == {"n": 0}


def test_concurrent_ticks_start_each_firing_once(conn: Conn, connect: Any) -> None:
    conn.execute("select ratchet.schedule('every-minute', '* * * * *', 'report')")
    sessions = [connect() for _ in range(6)]
    for s in sessions:
        set_now(s, "2099-01-01 00:00:30Z")

    started = run_parallel(
        6, lambda i: sessions[i].execute("select ratchet.tick() as n").fetchone()["n"]
    )
    assert sum(started) == 1
    rows = conn.execute(
        "select workflow_id from ratchet.workflows where name = 'report'"
    ).fetchall()
    assert rows == [{"workflow_id": "schedule:every-minute:2099-01-01T00:00Z"}]
