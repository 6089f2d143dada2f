"""Latency probes for the benchmark (``bench/run.py``): one sample per call.

Every probe runs ``samples`` times and returns the sample times in
milliseconds, measured with :func:`time.perf_counter` in this one process (two
connections, and a thread where one side waits on ``LISTEN``). All
connections are autocommit, like the real path: every call is one
transaction, committed (and its WAL flushed) before it returns.

- :func:`enqueue_to_start`: ``start_workflow()`` issued -> ``claim()`` returned
  in a session that was idle in ``LISTEN "ratchet.queue.<queue>"``.
  :func:`raw_enqueue_to_start` is the same with a minimal plain-SQL queue
  (INSERT + ``pg_notify`` / ``UPDATE ... FOR UPDATE SKIP LOCKED``).
- :func:`step_checkpoint`: round trips of ``record_step()`` and, interleaved,
  of a plain single-row INSERT of the same data (the baseline).
- :func:`wakeup`: ``finish()`` issued -> a session waiting in
  ``LISTEN "ratchet.ended"`` got the notification. :func:`raw_wakeup`: an
  UPDATE + ``pg_notify`` in one statement, same measurement.
- :func:`recv_wakeup`: ``send()`` issued -> a workflow's session, idle in
  ``LISTEN "ratchet.message"``, woke and its ``recv()`` returned the message
  (consumed and checkpointed). :func:`event_wakeup`: ``set_event()`` issued ->
  a session idle in ``LISTEN "ratchet.event"`` woke and its ``get_event()``
  returned the new value. Baseline for both: :func:`raw_wakeup`.
- :func:`claim_cost`: round trip of one ``claim()`` on a queue whose depth is
  kept constant (each claimed workflow is finished and replaced, untimed).
- :func:`python_client`: through the Python client: ``app.start()`` -> the
  workflow body runs in a worker (a thread of this process), and
  ``app.start()`` -> ``handle.result()`` returned, for a workflow with no steps;
  and :func:`python_messages`: ``app.send()`` -> the workflow's ``ratchet.recv()``
  -> its ``ratchet.set_event()`` -> ``app.get_event()`` returned (two wake-ups).

Run alone for a quick look: ``python3 bench/latency.py --dsn DSN`` (Ratchet
and the tables of ``bench/pgbench/raw_setup.sql`` must be installed).
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

#: queue used by the SQL-level probes (created if missing)
LAT_QUEUE = "lat"
#: queue used by the Python-client probe (created if missing)
PY_QUEUE = "lat_py"
#: samples run first and not counted (plans cached, connections warm)
WARMUP = 5
#: how long a probe waits for one notification before it gives up
WAIT_S = 10.0


class ProbeError(RuntimeError):
    """A probe did not see what it waited for (lost notification, no row)."""


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, prepare_threshold=0)


def ensure_queues(dsn: str) -> None:
    """Create the probes' queues (idempotent)."""
    with _connect(dsn) as conn:
        for name in (LAT_QUEUE, PY_QUEUE):
            conn.execute("select ratchet.create_queue(%s)", (name,))


def _ms(seconds: float) -> float:
    return seconds * 1000.0


class _Waiter:
    """A thread that sits in LISTEN on ``channel`` and, for each notification
    matching ``want`` (None: any), runs ``then(conn, payload)`` on its own
    connection and hands the perf_counter time after it to the main thread;
    then runs ``after(conn, value)`` (untimed clean-up)."""

    def __init__(self, dsn: str, channel: str,
                 then: Callable[[psycopg.Connection[Any], str], Any] | None = None,
                 after: Callable[[psycopg.Connection[Any], Any], None] | None = None) -> None:
        self.conn = _connect(dsn)
        self.conn.execute(f'listen "{channel}"')
        self.then = then
        self.after = after
        self.want: str | None = None
        self.results: queue.Queue[tuple[float, Any]] = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"listen-{channel}")
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                # Leave the generator before using the connection (it holds its lock).
                notes = list(self.conn.notifies(timeout=0.2, stop_after=1))
                for note in notes:
                    if self.want is not None and note.payload != self.want:
                        continue
                    value = self.then(self.conn, note.payload) if self.then else note.payload
                    self.results.put((time.perf_counter(), value))
                    if self.after is not None:
                        self.after(self.conn, value)
        except Exception as exc:  # surfaced to the main thread
            self.results.put((float("nan"), exc))

    def wait(self) -> tuple[float, Any]:
        try:
            at, value = self.results.get(timeout=WAIT_S)
        except queue.Empty:
            raise ProbeError(f"no notification within {WAIT_S:.0f} s") from None
        if isinstance(value, Exception):
            raise ProbeError(f"listener failed: {value}") from value
        return at, value

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.conn.close()

    def time_each(self, samples: int, trigger: Callable[[int], object],
                  prepare: Callable[[int], None] | None = None,
                  expect: Callable[[int], Any] | None = None) -> list[float]:
        """For n in -WARMUP .. samples-1: ``prepare(n)`` (untimed), then the time
        from ``trigger(n)`` issued to this waiter's handler done (ms; warm-up
        samples dropped). ``expect(n)``: the value the handler must return.
        Closes the waiter."""
        out: list[float] = []
        try:
            for n in range(-WARMUP, samples):
                if prepare is not None:
                    prepare(n)
                t0 = time.perf_counter()
                trigger(n)
                at, value = self.wait()
                if expect is not None and value != expect(n):
                    raise ProbeError(f"sample {n}: got {value!r}, expected {expect(n)!r}")
                if n >= 0:
                    out.append(_ms(at - t0))
        finally:
            self.close()
        return out


def enqueue_to_start(dsn: str, samples: int) -> list[float]:
    """``start_workflow`` issued -> ``claim`` returned in a LISTENing session (ms)."""

    def claim(conn: psycopg.Connection[Any], payload: str) -> tuple[str, int]:
        row = conn.execute(
            "select workflow_id, run_id from ratchet.claim(array[%s], 'lat-worker', 1)",
            (LAT_QUEUE,), prepare=True).fetchone()
        if row is None:
            raise ProbeError("claim() returned no row after the queue's notification")
        return str(row[0]), int(row[1])

    def finish(conn: psycopg.Connection[Any], claimed: tuple[str, int]) -> None:
        # Untimed: the workflow ends, the queue stays empty.
        conn.execute("select ratchet.finish(%s, %s, '{}')", claimed, prepare=True)

    waiter = _Waiter(dsn, f"ratchet.queue.{LAT_QUEUE}", claim, finish)
    with _connect(dsn) as starter:
        return waiter.time_each(samples, lambda n: starter.execute(
            "select ratchet.start_workflow('lat_probe', '{}', queue => %s)",
            (LAT_QUEUE,), prepare=True))


def raw_enqueue_to_start(dsn: str, samples: int) -> list[float]:
    """The same as :func:`enqueue_to_start` with a minimal plain-SQL queue (ms)."""

    def claim(conn: psycopg.Connection[Any], payload: str) -> int:
        row = conn.execute(
            "update raw_queue set status = 'running' where id = (select id from raw_queue "
            "where status = 'enqueued' order by id limit 1 for update skip locked) returning id",
            prepare=True).fetchone()
        if row is None:
            raise ProbeError("the raw queue was empty after its notification")
        return int(row[0])

    def finish(conn: psycopg.Connection[Any], claimed: int) -> None:
        conn.execute("update raw_queue set status = 'done' where id = %s", (claimed,),
                     prepare=True)

    waiter = _Waiter(dsn, "raw_queue", claim, finish)
    with _connect(dsn) as starter:
        return waiter.time_each(samples, lambda n: starter.execute(
            "with i as (insert into raw_queue (payload) values ('{}') returning id) "
            "select pg_notify('raw_queue', '') from i", prepare=True))


def _start_and_claim(conn: psycopg.Connection[Any]) -> tuple[str, int]:
    conn.execute("set ratchet.notify = off")
    conn.execute("select ratchet.start_workflow('lat_probe', '{}', queue => %s)", (LAT_QUEUE,),
                 prepare=True)
    row = conn.execute("select workflow_id, run_id from ratchet.claim(array[%s], 'lat-main', 1)",
                       (LAT_QUEUE,), prepare=True).fetchone()
    conn.execute("reset ratchet.notify")
    if row is None:
        raise ProbeError("claim() returned no row right after start_workflow()")
    return str(row[0]), int(row[1])


def step_checkpoint(dsn: str, samples: int,
                    steps_per_workflow: int = 20) -> tuple[list[float], list[float]]:
    """Round trips of ``record_step`` and of a plain INSERT, interleaved (ms, ms)."""
    ratchet_ms: list[float] = []
    raw_ms: list[float] = []
    with _connect(dsn) as conn:
        wf, run = _start_and_claim(conn)
        step = 0
        for i in range(-WARMUP, samples):
            if step == steps_per_workflow:
                conn.execute("select ratchet.finish(%s, %s, '{}')", (wf, run), prepare=True)
                wf, run = _start_and_claim(conn)
                step = 0
            output = json.dumps({"i": step})
            calls: list[tuple[list[float], str, tuple[object, ...]]] = [
                (ratchet_ms, "select ratchet.record_step(%s, %s, %s, 'bench_step', %s::jsonb)",
                 (wf, run, step, output)),
                (raw_ms, "insert into raw_steps (workflow_id, step_id, name, output, recorded_at)"
                 " values (%s, %s, 'bench_step', %s::jsonb, now())", (f"{wf}-raw", step, output)),
            ]
            if i % 2:  # alternate, so neither side always runs right after the other
                calls.reverse()
            for sink, sql, params in calls:
                t0 = time.perf_counter()
                conn.execute(sql, params, prepare=True)
                if i >= 0:
                    sink.append(_ms(time.perf_counter() - t0))
            step += 1
        conn.execute("select ratchet.finish(%s, %s, '{}')", (wf, run), prepare=True)
    return ratchet_ms, raw_ms


def wakeup(dsn: str, samples: int) -> list[float]:
    """``finish()`` issued -> a LISTEN "ratchet.ended" session woke with its id (ms)."""
    waiter = _Waiter(dsn, "ratchet.ended")
    claimed: list[tuple[str, int]] = []

    def start(n: int) -> None:
        claimed.append(_start_and_claim(conn))
        waiter.want = claimed[-1][0]

    with _connect(dsn) as conn:
        return waiter.time_each(samples, lambda n: conn.execute(
            "select ratchet.finish(%s, %s, '{}')", claimed[-1], prepare=True),
            prepare=start)


def raw_wakeup(dsn: str, samples: int) -> list[float]:
    """The baseline of :func:`wakeup`: UPDATE + ``pg_notify`` in one statement (ms)."""
    waiter = _Waiter(dsn, "raw_ended")
    running: list[int] = []

    def start(n: int) -> None:
        row = conn.execute("insert into raw_queue (status) values ('running') returning id",
                           prepare=True).fetchone()
        assert row is not None
        running.append(int(row[0]))
        waiter.want = str(row[0])

    with _connect(dsn) as conn:
        return waiter.time_each(samples, lambda n: conn.execute(
            "with u as (update raw_queue set status = 'done' where id = %s returning id) "
            "select pg_notify('raw_ended', id::text) from u", (running[-1],),
            prepare=True), prepare=start)


def recv_wakeup(dsn: str, samples: int) -> list[float]:
    """``send()`` issued -> the destination's ``recv()`` returned it, in a session
    that was idle in ``LISTEN "ratchet.message"`` (ms)."""
    with _connect(dsn) as conn:
        wf, run = _start_and_claim(conn)
    next_step = [0]

    def receive(conn: psycopg.Connection[Any], payload: str) -> Any:
        row = conn.execute("select ratchet.recv(%s, %s, %s, 'ping')",
                           (wf, run, next_step[0]), prepare=True).fetchone()
        if row is None or row[0] is None:
            raise ProbeError("recv() found no message after the notification")
        next_step[0] += 1
        return row[0]

    waiter = _Waiter(dsn, "ratchet.message", receive)
    waiter.want = wf
    with _connect(dsn) as sender:
        out = waiter.time_each(samples, lambda n: sender.execute(
            "select ratchet.send(%s, %s::jsonb, 'ping')", (wf, json.dumps({"n": n})),
            prepare=True), expect=lambda n: {"n": n})
    with _connect(dsn) as conn:
        conn.execute("select ratchet.finish(%s, %s, '{}')", (wf, run))
    return out


def event_wakeup(dsn: str, samples: int) -> list[float]:
    """``set_event()`` issued -> ``get_event()`` returned the new value in a
    session that was idle in ``LISTEN "ratchet.event"`` (ms)."""

    def read(conn: psycopg.Connection[Any], payload: str) -> Any:
        row = conn.execute("select ratchet.get_event(%s, 'progress')", (payload,),
                           prepare=True).fetchone()
        return None if row is None else row[0]

    waiter = _Waiter(dsn, "ratchet.event", read)
    with _connect(dsn) as conn:
        wf, run = _start_and_claim(conn)
        waiter.want = wf
        out = waiter.time_each(samples, lambda n: conn.execute(
            "select ratchet.set_event(%s, %s, %s, 'progress', %s::jsonb)",
            (wf, run, n + WARMUP, json.dumps({"n": n})), prepare=True),
            expect=lambda n: {"n": n})
        conn.execute("select ratchet.finish(%s, %s, '{}')", (wf, run))
    return out


def claim_cost(dsn: str, queue_name: str, samples: int) -> list[float]:
    """Round trip of one ``claim()`` on ``queue_name``; its depth stays constant (ms)."""
    out: list[float] = []
    with _connect(dsn) as conn:
        conn.execute("set ratchet.notify = off")
        for n in range(-WARMUP, samples):
            t0 = time.perf_counter()
            row = conn.execute(
                "select workflow_id, run_id from ratchet.claim(array[%s], 'claim-probe', 1)",
                (queue_name,), prepare=True).fetchone()
            if n >= 0:
                out.append(_ms(time.perf_counter() - t0))
            if row is None:
                raise ProbeError(f"queue {queue_name!r} is empty")
            conn.execute("select ratchet.finish(%s, %s, '{}')", (row[0], row[1]), prepare=True)
            conn.execute("select ratchet.start_workflow('bench', '{}', queue => %s)",
                         (queue_name,), prepare=True)
    return out


def python_client(dsn: str, samples: int) -> tuple[list[float], list[float]]:
    """Through the Python client, with a worker thread in this process (ms, ms):
    ``app.start()`` -> the workflow body started, and ``app.start()`` ->
    ``handle.result()`` returned, for a workflow without steps."""
    import ratchet

    app = ratchet.App(dsn)
    began: dict[int, float] = {}
    arrived = threading.Condition()

    @app.workflow(name="lat_py_probe", queue=PY_QUEUE)
    def probe(i: int) -> int:
        with arrived:
            began[i] = time.perf_counter()
            arrived.notify_all()
        return i

    worker = app.worker([PY_QUEUE], concurrency=4, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run, daemon=True, name="lat-py-worker")
    thread.start()
    to_start: list[float] = []
    to_result: list[float] = []
    try:
        if not worker.wait_started(30):
            raise ProbeError("the Python worker did not start within 30 s")
        for i in range(-WARMUP, samples):
            t0 = time.perf_counter()
            handle = app.start(probe, i)
            with arrived:
                if not arrived.wait_for(lambda i=i: i in began, timeout=WAIT_S):  # type: ignore[misc]
                    raise ProbeError(f"a started workflow did not begin within {WAIT_S:.0f} s")
            handle.result(timeout=WAIT_S)
            t2 = time.perf_counter()
            if i >= 0:
                to_start.append(_ms(began[i] - t0))
                to_result.append(_ms(t2 - t0))
    finally:
        worker.stop()
        worker.wait_stopped(30)
        thread.join(timeout=5)
        app.close()
    return to_start, to_result


def python_messages(dsn: str, samples: int) -> list[float]:
    """Through the Python client (ms): ``app.send()`` -> the workflow, waiting in
    ``ratchet.recv()`` in a worker thread of this process, receives it and
    answers with ``ratchet.set_event()`` -> ``app.get_event()`` returns the
    answer. Two wake-ups (message, then event) per sample."""
    import ratchet

    app = ratchet.App(dsn)
    total = WARMUP + samples

    @app.workflow(name="lat_py_echo", queue=PY_QUEUE)
    def echo(count: int) -> int:
        for i in range(count):
            message = ratchet.recv("ping", timeout=60)
            ratchet.set_event(f"pong-{i}", message)
        return count

    worker = app.worker([PY_QUEUE], concurrency=2, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run, daemon=True, name="lat-py-echo")
    thread.start()
    out: list[float] = []
    try:
        if not worker.wait_started(30):
            raise ProbeError("the Python worker did not start within 30 s")
        handle = app.start(echo, total)
        for i in range(total):
            t0 = time.perf_counter()
            app.send(handle.workflow_id, {"i": i}, topic="ping")
            answer = app.get_event(handle.workflow_id, f"pong-{i}", timeout=WAIT_S)
            t1 = time.perf_counter()
            if answer != {"i": i}:
                raise ProbeError(f"the echo workflow answered {answer!r} to message {i}")
            if i >= WARMUP:
                out.append(_ms(t1 - t0))
        handle.result(timeout=WAIT_S)
    finally:
        worker.stop()
        worker.wait_stopped(30)
        thread.join(timeout=5)
        app.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    ensure_queues(args.dsn)

    def show(name: str, values: list[float]) -> None:
        print(f"{name:32} p50 {percentile(values, 50):7.3f} ms"
              f"   p99 {percentile(values, 99):7.3f} ms   mean {statistics.fmean(values):7.3f} ms")

    show("enqueue -> claim", enqueue_to_start(args.dsn, args.samples))
    show("enqueue -> claim (raw queue)", raw_enqueue_to_start(args.dsn, args.samples))
    rs, raw = step_checkpoint(args.dsn, args.samples)
    show("record_step round trip", rs)
    show("plain INSERT round trip", raw)
    show("finish -> waiter woken", wakeup(args.dsn, args.samples))
    show("UPDATE+notify -> waiter woken", raw_wakeup(args.dsn, args.samples))
    show("send -> recv returned", recv_wakeup(args.dsn, args.samples))
    show("set_event -> get_event returned", event_wakeup(args.dsn, args.samples))


if __name__ == "__main__":
    main()
