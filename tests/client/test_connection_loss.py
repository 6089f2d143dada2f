"""Lost connections (terminated backends, server restarts) stop a run; they never fail it.

Regression tests for what the chaos suite found: a transactional step whose
connection died was recorded as a permanent step failure; after a restart
every stale pooled connection failed once before the pool noticed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from clients import Client
from psycopg.rows import dict_row

import ratchet


def test_terminated_backend_in_transactional_step_is_retried_not_failed(
    dsn: str, conn: psycopg.Connection[Any], run_worker: Callable[..., ratchet.Worker],
    wait_until: Callable[..., Any],
) -> None:
    conn.execute("create table effects (workflow_id text)")
    app = ratchet.App(dsn + " application_name=victim-app", poll_interval=0.2)
    entered = threading.Event()
    attempts: list[int] = []

    @app.transaction()
    def apply(cur: psycopg.Cursor[Any]) -> str:
        attempts.append(1)
        cur.execute("insert into effects values (%s)", [ratchet.workflow_id()])
        if len(attempts) == 1:
            entered.set()
            cur.execute("select pg_sleep(30)")  # terminated by the test
        return "applied"

    @app.workflow()
    def flow() -> str:
        return apply()

    try:
        handle = app.start(flow, workflow_id="tx-1")
        run_worker(app, lease=2.0)
        assert entered.wait(10)

        def terminated() -> bool:
            row = conn.execute(
                "select count(pg_terminate_backend(pid)) as n from pg_stat_activity"
                " where application_name = 'victim-app' and query like '%%pg_sleep(30)%%'"
            ).fetchone()
            return bool(row and row["n"])

        wait_until(terminated, what="the step's backend to be terminated")
        assert handle.result(timeout=30) == "applied"
        assert len(attempts) == 2, "the step ran again after its transaction was lost"
        effects = conn.execute("select count(*) as n from effects").fetchone()
        assert effects == {"n": 1}, "the lost transaction's insert must not survive"
        step = conn.execute("select output, error from ratchet.steps").fetchone()
        assert step == {"output": "applied", "error": None}
    finally:
        app.close()


def test_pool_recovers_after_server_restart(pg_server_factory: Callable[..., Any]) -> None:
    pg = pg_server_factory()
    app = ratchet.App(pg.dsn(), poll_interval=0.2, pool_size=4)

    @app.workflow()
    def ping() -> str:
        return "pong"

    try:
        # fill the pool with idle connections that the restart will kill
        handles = [app.start(ping) for _ in range(4)]
        with app._db.connection(), app._db.connection(), app._db.connection():
            pass
        pg.restart("immediate")
        # the first start after the restart goes through (lost connections are
        # retried for an idempotent start), and so does everything after it
        handles.append(app.start(ping, workflow_id="after-restart"))
        handles.append(app.start(ping))
        worker = app.worker(["default"], concurrency=2, lease=5, install_signal_handlers=False,
                            poll_interval=0.2)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            assert [h.result(timeout=30) for h in handles] == ["pong"] * len(handles)
        finally:
            worker.stop()
            worker.stop()
            thread.join(15)
    finally:
        app.close()


@pytest.mark.parametrize("restart_mode", ["immediate"])
def test_worker_keeps_running_across_a_restart(
    pg_server_factory: Callable[..., Any], restart_mode: str, wait_until: Callable[..., Any],
) -> None:
    pg = pg_server_factory()
    app = ratchet.App(pg.dsn(), poll_interval=0.2)

    @app.workflow()
    def echo(x: int) -> int:
        return x

    worker = app.worker(["default"], concurrency=2, lease=3, install_signal_handlers=False,
                        poll_interval=0.2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert app.start(echo, 1).result(timeout=20) == 1
        pg.restart(restart_mode)
        assert app.start(echo, 2).result(timeout=30) == 2
        assert thread.is_alive()
    finally:
        worker.stop()
        worker.stop()
        thread.join(15)
        app.close()


# -- fenced writes cut off by a lost connection are retried on the same run (issue 15)


def _runs(conn: psycopg.Connection[Any], workflow_id: str) -> list[dict[str, Any]]:
    return conn.execute("select run_id, outcome from ratchet.runs where workflow_id = %s",
                        [workflow_id]).fetchall()


@pytest.mark.parametrize("flavor", ["sync", "async"])
def test_checkpoint_after_terminated_backends_is_retried_on_the_same_run(
    flavor: str, dsn: str, conn: psycopg.Connection[Any], wait_until: Callable[..., Any],
) -> None:
    conn.execute("create table executions (step text)")
    client = Client(flavor, dsn + " application_name=victim-app", flows=False,
                    poll_interval=0.2)
    app = client.app

    # a plain def: a step of either client (the async one runs it in a thread)
    @app.step()
    def charge() -> str:
        # the side effect is counted outside every transaction of the worker
        with psycopg.connect(dsn, autocommit=True) as side:
            side.execute("insert into executions values ('charge')")
            # then every connection of the worker dies, the one the checkpoint
            # is about to use among them: the step's body has returned nothing yet
            side.execute("select pg_terminate_backend(pid) from pg_stat_activity"
                         " where application_name = 'victim-app'")
            wait_until(lambda: side.execute(
                "select count(*) from pg_stat_activity where application_name = 'victim-app'"
            ).fetchone() == (0,), what="the worker's backends to exit")
        return "ch-1"

    if flavor == "sync":
        @app.workflow(name="pay")
        def pay() -> str:
            return charge() + "/paid"
    else:
        @app.workflow(name="pay")
        async def pay() -> str:
            return await charge() + "/paid"

    try:
        handle = client.start("pay", workflow_id="pay-1")
        client.run_worker(lease=10.0, poll_interval=0.2)
        assert client.result(handle, 30) == "ch-1/paid"
        assert conn.execute("select count(*) as n from executions").fetchone() == {"n": 1}
        [run] = _runs(conn, "pay-1")
        assert run["outcome"] == "succeeded", "the workflow finished on the run that started it"
        step = conn.execute("select output, run_id from ratchet.steps").fetchone()
        assert step == {"output": "ch-1", "run_id": run["run_id"]}
    finally:
        client.close()


def terminate_waiting_commit(watch: psycopg.Connection[Any], wait_until: Callable[..., Any],
                             call: str, what: str) -> None:
    """Terminate the victim app's backend whose ``call`` waits for its commit
    (SyncRep: the commit is in the WAL, its reply not sent), and wait until
    that backend is gone."""
    pid = wait_until(lambda: watch.execute(
        "select pid from pg_stat_activity where application_name = 'victim-app'"
        " and wait_event = 'SyncRep' and query like %s", [f"%{call}%"]).fetchone(),
        what=f"{what} to wait for its commit")["pid"]
    watch.execute("select pg_terminate_backend(%s)", [pid])
    wait_until(lambda: watch.execute(
        "select count(*) as n from pg_stat_activity where pid = %s", [pid]
    ).fetchone() == {"n": 0}, what=f"the backend of {what} to exit")


def test_server_restart_during_a_checkpoint_costs_no_run(
    pg_server_factory: Callable[..., Any], wait_until: Callable[..., Any],
) -> None:
    pg = pg_server_factory()
    with psycopg.connect(pg.dsn(), autocommit=True) as setup:
        setup.execute("create table executions (step text)")
        # the checkpoint of step "charge" takes a while: the restart hits it in flight
        setup.execute("""
          create function slow_checkpoint() returns trigger language plpgsql as $$
          begin
            if new.name = 'charge' then perform pg_sleep(1.5); end if;
            return new;
          end $$;
          create trigger slow_checkpoint before insert on ratchet.steps
            for each row execute function slow_checkpoint()""")
    app = ratchet.App(pg.dsn() + " application_name=victim-app", poll_interval=0.2)

    @app.step()
    def charge() -> str:
        with psycopg.connect(pg.dsn(), autocommit=True) as side:
            side.execute("insert into executions values ('charge')")
        return "ch-1"

    @app.workflow()
    def pay() -> str:
        return charge() + "/paid"

    worker = app.worker(["default"], concurrency=2, lease=10, install_signal_handlers=False,
                        poll_interval=0.2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with psycopg.connect(pg.dsn(), autocommit=True) as watch:
            handle = app.start(pay, workflow_id="pay-1")
            wait_until(lambda: watch.execute(
                "select count(*) from pg_stat_activity where application_name = 'victim-app'"
                " and wait_event = 'PgSleep' and query like '%%record_step%%'").fetchone() == (1,),
                what="the checkpoint to be in flight")
        pg.restart("immediate")
        assert handle.result(timeout=30) == "ch-1/paid"
        with psycopg.connect(pg.dsn(), autocommit=True, row_factory=dict_row) as check:
            assert check.execute("select count(*) as n from executions").fetchone() == {"n": 1}
            [run] = _runs(check, "pay-1")
            assert run["outcome"] == "succeeded", "the workflow finished on the run that started it"
        assert thread.is_alive()
    finally:
        worker.stop()
        worker.stop()
        thread.join(15)
        app.close()


def test_checkpoint_that_committed_before_its_reply_was_lost_is_recognised(
    pg_server_factory: Callable[..., Any], wait_until: Callable[..., Any],
) -> None:
    """The worst cut: the checkpoint committed, its reply never came back.

    Synchronous replication to a standby that does not exist holds the commit
    after it is durable locally; terminating the backend then loses only the
    reply ("the transaction has already committed locally"). The worker's
    retry of the same write must be recognised as its own, not RT003.
    """
    pg = pg_server_factory()
    local = pg.dsn() + " options='-c synchronous_commit=local'"
    with psycopg.connect(local, autocommit=True) as setup:
        setup.execute("create table executions (step text)")
        setup.execute("create table probe (n int)")
    app = ratchet.App(pg.dsn() + " application_name=victim-app", poll_interval=0.2)

    def probe() -> None:  # a commit that waits once synchronous replication is on
        with psycopg.connect(pg.dsn() + " application_name=probe", autocommit=True) as c:
            c.execute("insert into probe values (1)")

    @app.step()
    def charge() -> str:
        with psycopg.connect(local, autocommit=True) as side:
            side.execute("insert into executions values ('charge')")
            side.execute("alter system set synchronous_standby_names = 'nobody'")
            side.execute("select pg_reload_conf()")
            threading.Thread(target=probe, daemon=True).start()
            wait_until(lambda: side.execute(
                "select count(*) from pg_stat_activity where application_name = 'probe'"
                " and wait_event = 'SyncRep'").fetchone() == (1,),
                what="commits to wait for the missing standby")
        return "ch-1"

    @app.workflow()
    def pay() -> str:
        return charge() + "/paid"

    worker = app.worker(["default"], concurrency=2, lease=10, install_signal_handlers=False,
                        poll_interval=0.2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with psycopg.connect(local, autocommit=True, row_factory=dict_row) as watch:
            handle = app.start(pay, workflow_id="pay-1")
            terminate_waiting_commit(watch, wait_until, "record_step", "the checkpoint")
            committed = watch.execute("select name, output, run_id from ratchet.steps").fetchall()
            assert [(s["name"], s["output"]) for s in committed] == [("charge", "ch-1")], \
                "the cut-off checkpoint had committed"
            watch.execute("alter system reset synchronous_standby_names")
            watch.execute("select pg_reload_conf()")
            assert handle.result(timeout=30) == "ch-1/paid"
            assert watch.execute("select count(*) as n from executions").fetchone() == {"n": 1}
            [run] = _runs(watch, "pay-1")
            assert run["outcome"] == "succeeded", "the workflow finished on the run that started it"
            assert committed[0]["run_id"] == run["run_id"]
        assert thread.is_alive()
    finally:
        worker.stop()
        worker.stop()
        thread.join(15)
        app.close()


def test_a_batch_of_checkpoints_cut_off_mid_call_is_retried_whole(
    app: ratchet.App, dsn: str, conn: psycopg.Connection[Any], run_worker: Any,
    wait_until: Callable[..., Any],
) -> None:
    """Seven checkpoints queue behind a held one and go in one record_steps
    call; that call's backend is terminated while it runs. The worker sends the
    same batch again on a new connection: every workflow finishes on the run
    that started it, each step body ran once."""
    executed: dict[int, int] = {}
    conn.execute("create sequence slow_once")
    conn.execute("""
      create function public.slow_batch() returns trigger language plpgsql as $$
      begin
        if current_query() like '%%record_steps%%' and nextval('public.slow_once') = 1 then
          perform pg_sleep(30);
        end if;
        return new;
      end $$;
      create trigger slow_batch before insert on ratchet.steps
        for each row execute function public.slow_batch()""")

    @app.step()
    def work(i: int) -> int:
        executed[i] = executed.get(i, 0) + 1
        return i

    @app.workflow()
    def flow(i: int) -> int:
        return work(i) * 2

    worker = run_worker(concurrency=8, lease=20.0)
    checkpointer = worker._checkpointer
    assert checkpointer is not None
    with psycopg.connect(dsn) as blocker:
        blocker.execute("lock table ratchet.steps in exclusive mode")
        handles = [app.start(flow, i) for i in range(8)]
        wait_until(lambda: len(checkpointer._pending) == 7, what="7 checkpoints queued")
    # the lock is gone: the held checkpoint commits, then the 7 go in one call
    pid = wait_until(lambda: conn.execute(
        "select pid from pg_stat_activity where query like '%%record_steps%%' "
        "and wait_event = 'PgSleep' and pid <> pg_backend_pid()").fetchone(),
        what="the batch call in flight")["pid"]
    conn.execute("select pg_terminate_backend(%s)", [pid])
    assert sorted(h.result(timeout=30) for h in handles) == [i * 2 for i in range(8)]
    assert executed == {i: 1 for i in range(8)}
    for h in handles:
        assert [r["outcome"] for r in _runs(conn, h.workflow_id)] == ["succeeded"]
    assert checkpointer.checkpoints == 8 and checkpointer.batches == 2


# -- a batch of finishes cut off mid-commit is sent again as a whole (issue 15)


def _one_run_each(conn: psycopg.Connection[Any], workflow_ids: list[str]) -> None:
    """Every workflow succeeded on the run that first claimed it: one run
    (succeeded), attempt 1, its step executed once."""
    runs = conn.execute(
        "select workflow_id, count(*) as runs, min(outcome) as outcome, max(attempt) as attempt"
        " from ratchet.runs where workflow_id = any(%s) group by 1", [workflow_ids]).fetchall()
    assert {r["workflow_id"]: (r["runs"], r["outcome"], r["attempt"]) for r in runs} == {
        w: (1, "succeeded", 1) for w in workflow_ids}
    done = conn.execute(
        "select workflow_id, count(*) as n from executions group by 1").fetchall()
    assert {r["workflow_id"]: r["n"] for r in done} == dict.fromkeys(workflow_ids, 1), \
        "a step body ran again"


def _batch_app(dsn: str, side_dsn: str, gate: threading.Barrier) -> tuple[ratchet.App, Any]:
    app = ratchet.App(dsn + " application_name=victim-app", poll_interval=0.2)

    @app.step()
    def work(i: int) -> int:
        with psycopg.connect(side_dsn, autocommit=True) as side:
            side.execute("insert into executions values (%s)", [ratchet.workflow_id()])
        return i

    @app.workflow()
    def flow(i: int, gated: bool) -> int:
        out = work(i)
        if gated:
            gate.wait()  # the gated ones end together: their finishes go in one batch (or a few)
        return out

    return app, flow


def test_batch_cut_off_before_its_commit_is_sent_again(
    dsn: str, conn: psycopg.Connection[Any], run_worker: Callable[..., ratchet.Worker],
    wait_until: Callable[..., Any],
) -> None:
    conn.execute("create table executions (workflow_id text)")
    # the first batch that finishes a run sleeps in the middle of its transaction
    conn.execute("""
      create sequence cut_seq;
      create function public.slow_first_finish() returns trigger language plpgsql
        set search_path = public, pg_catalog as $$
      begin
        if new.outcome = 'succeeded' and nextval('public.cut_seq') = 1 then
          perform pg_sleep(30);
        end if;
        return new;
      end $$;
      create trigger slow_first_finish before update on ratchet.runs
        for each row execute function public.slow_first_finish()""")
    gate = threading.Barrier(4, timeout=20)
    app, flow = _batch_app(dsn, dsn, gate)
    try:
        handles = [app.start(flow, i, True) for i in range(4)]
        handles += [app.start(flow, i, False) for i in range(4, 6)]
        worker = run_worker(app, concurrency=4, lease=10.0)
        pid = wait_until(lambda: conn.execute(
            "select pid from pg_stat_activity where application_name = 'victim-app'"
            " and wait_event = 'PgSleep' and query like '%%finish_and_claim%%'").fetchone(),
            what="a batch of finishes to be in flight")["pid"]
        conn.execute("select pg_terminate_backend(%s)", [pid])
        assert [h.result(timeout=30) for h in handles] == list(range(6))
        _one_run_each(conn, [h.workflow_id for h in handles])
        finisher = worker._finisher
        assert finisher is not None and finisher.retries >= 1, "the batch was never sent again"
        assert worker.outcomes == {"succeeded": 6}
    finally:
        app.close()


def test_batch_that_committed_before_its_reply_was_lost_is_recognised(
    pg_server_factory: Callable[..., Any], wait_until: Callable[..., Any],
) -> None:
    """The worst cut for a batch: finish_and_claim committed (its finishes and
    the workflows it claimed), its reply never came back. Synchronous
    replication to a standby that does not exist holds the commit after it is
    durable locally; terminating the backend then loses only the reply. The
    retry must see each finish as its run's own, and get back what the lost
    call claimed instead of leaving it unstarted until its lease expires."""
    pg = pg_server_factory()
    local = pg.dsn() + " options='-c synchronous_commit=local'"
    with psycopg.connect(local, autocommit=True) as setup:
        setup.execute("create table executions (workflow_id text)")
        setup.execute("create table probe (n int)")
    gate = threading.Barrier(5, timeout=20)  # four workflows and the test
    app, flow = _batch_app(pg.dsn(), local, gate)

    def probe() -> None:  # a commit that waits once synchronous replication is on
        with psycopg.connect(pg.dsn() + " application_name=probe", autocommit=True) as c:
            c.execute("insert into probe values (1)")

    worker = app.worker(["default"], concurrency=4, lease=10, install_signal_handlers=False,
                        poll_interval=0.2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with psycopg.connect(local, autocommit=True, row_factory=dict_row) as watch:
            gated = [app.start(flow, i, True) for i in range(4)]
            wait_until(lambda: gate.n_waiting == 4, what="four workflows at the gate")
            # every slot is taken: these wait for the slots the batch frees
            extra = [app.start(flow, i, False) for i in range(4, 7)]
            watch.execute("alter system set synchronous_standby_names = 'nobody'")
            watch.execute("select pg_reload_conf()")
            threading.Thread(target=probe, daemon=True).start()
            wait_until(lambda: watch.execute(
                "select count(*) as n from pg_stat_activity where application_name = 'probe'"
                " and wait_event = 'SyncRep'").fetchone() == {"n": 1},
                what="commits to wait for the missing standby")
            gate.wait()
            terminate_waiting_commit(watch, wait_until, "finish_and_claim", "a batch of finishes")
            # the cut-off call had committed: finishes, and claims the worker never saw
            ended = watch.execute("select count(*) as n from ratchet.workflows"
                                  " where status = 'succeeded'").fetchone()
            taken = watch.execute("select count(*) as n from ratchet.workflows"
                                  " where status = 'running' and workflow_id = any(%s)",
                                  [[h.workflow_id for h in extra]]).fetchone()
            assert ended is not None and ended["n"] >= 1, "the cut-off batch had committed"
            assert taken is not None and taken["n"] >= 1, "the cut-off batch had claimed"
            watch.execute("alter system reset synchronous_standby_names")
            watch.execute("select pg_reload_conf()")
            handles = gated + extra
            assert [h.result(timeout=30) for h in handles] == list(range(7))
            _one_run_each(watch, [h.workflow_id for h in handles])
        finisher = worker._finisher
        assert finisher is not None and finisher.retries >= 1, "the batch was never sent again"
        assert worker.outcomes == {"succeeded": 7}
        assert thread.is_alive()
    finally:
        worker.stop()
        worker.stop()
        thread.join(15)
        app.close()
