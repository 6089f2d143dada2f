"""The chaos harness: many workflows, several worker processes, random faults.

    python -m tests.chaos.harness --workflows 3000 --workers 4 --seed 1

What it does, in order:

1. Starts its own throwaway PostgreSQL (:class:`ratchet.testing.EmbeddedPostgres`),
   creates a database, installs Ratchet from the plain-SQL script, creates the
   queue ``chaos``, the user tables of :mod:`tests.chaos.chaos_app` and an
   *audit* (triggers on ``ratchet.steps`` and ``ratchet.workflows``, test
   instrumentation only) that logs every checkpoint write with the run that was
   current when it was written, and every claim.
2. Starts ``--workers`` worker processes (``python -m ratchet worker
   tests.chaos.chaos_app:app --queue chaos``, each in its own process group,
   with a short lease; even-numbered workers group-commit their checkpoints,
   ``--batch-checkpoints``, odd ones write one per call, and all batch their
   finishes), and starts the workflows in batches over the load
   window (``--duration``) with ``ratchet.start_workflows``.
3. Meanwhile injects faults at seeded random times (relative to the start):
   ``kill9`` (SIGKILL a worker, start a replacement), ``terminate``
   (``pg_terminate_backend`` of every connection of a worker), ``restart``
   (immediate-mode restart of PostgreSQL: a crash for the database), and
   ``stall`` (SIGSTOP a worker for longer than its lease, then SIGCONT: its
   workflows are reclaimed meanwhile and its late writes must fail with RT002).
   A worker process that exits on its own is reported and replaced.
4. Waits (bounded) for every workflow to end, stops the workers, and checks
   from the tables: every workflow (and child) succeeded with the expected
   output; every transactional effect is in ``chaos_effects`` exactly once;
   every at-least-once call carries its step's idempotency key (duplicates are
   counted as observed retries); each workflow's checkpoints are exactly the
   expected steps 0..K-1 with the expected names and outputs, written once
   each, never updated or deleted, each by the run that was current when it was
   written (fencing), with run ids that never go backwards.

Any violation makes the exit status 1 and lists the offending workflow ids.
The same ``--seed`` gives the same inputs and the same fault schedule.
Every wait is bounded; worker process groups are killed on exit and the
server is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for _p in (str(ROOT / "python_client"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

from ratchet._install import install  # noqa: E402
from ratchet.testing import EmbeddedPostgres  # noqa: E402
from tests.chaos import chaos_app  # noqa: E402

FAULT_KINDS = ("kill9", "terminate", "restart", "stall")
#: relative frequency of each kind when the counts are not given
FAULT_WEIGHTS = {"kill9": 3, "terminate": 3, "stall": 2, "restart": 1}
ENDED = ("succeeded", "failed", "cancelled", "dead")
DBNAME = "chaos"
HARNESS_APP = "chaos-harness"

SETUP_SQL = """
create table chaos_effects (
  workflow_id text not null, step_id int not null, value bigint, pid int,
  inserted_at timestamptz not null default clock_timestamp());
create table chaos_calls (
  idempotency_key text not null, called_at timestamptz not null, pid int);
-- every execution of a step body (tests/chaos/chaos_app.py, logged()): its
-- start, and its end unless the process or its connection died first
create table chaos_executions (
  id bigserial primary key, idempotency_key text not null, name text not null, pid int,
  started_at timestamptz not null default clock_timestamp(), ended_at timestamptz,
  outcome text);

create schema chaos_audit;
create table chaos_audit.step_writes (
  seq bigserial primary key, op text not null, workflow_id text, step_id int, name text,
  run_id bigint, current_run bigint, current_status text,
  at timestamptz not null default clock_timestamp());
create table chaos_audit.claims (
  seq bigserial primary key, workflow_id text not null, run_id bigint not null,
  worker_id text, attempts int, at timestamptz not null default clock_timestamp());

-- Every checkpoint write, with the run that was current when it was written. The
-- writer holds a lock on the workflow row (ratchet._fence), so the row read
-- here is the state the fencing check saw.
create function chaos_audit.on_step() returns trigger language plpgsql as $$
declare
  v_run bigint;
  v_status text;
begin
  if tg_op = 'INSERT' then
    select w.run_id, w.status into v_run, v_status
      from ratchet.workflows w where w.workflow_id = new.workflow_id;
    insert into chaos_audit.step_writes
      (op, workflow_id, step_id, name, run_id, current_run, current_status)
    values ('INSERT', new.workflow_id, new.step_id, new.name, new.run_id, v_run, v_status);
    return new;
  end if;
  insert into chaos_audit.step_writes (op, workflow_id, step_id, name, run_id)
  values (tg_op, old.workflow_id, old.step_id, old.name, old.run_id);
  return null;
end $$;
create trigger chaos_audit_steps after insert or update or delete on ratchet.steps
  for each row execute function chaos_audit.on_step();

-- Every claim (a new run_id).
create function chaos_audit.on_claim() returns trigger language plpgsql as $$
begin
  insert into chaos_audit.claims (workflow_id, run_id, worker_id, attempts)
  values (new.workflow_id, new.run_id, new.worker_id, new.attempts);
  return null;
end $$;
create trigger chaos_audit_claims after insert or update of run_id on ratchet.workflows
  for each row when (new.run_id is not null)
  execute function chaos_audit.on_claim();
"""


class HarnessError(RuntimeError):
    """The harness itself could not do its job (not a violation found)."""


def log(t0: float | None, msg: str) -> None:
    stamp = f"[{time.monotonic() - t0:7.1f}s] " if t0 is not None else ""
    print(f"{stamp}{msg}", flush=True)


# -- configuration and the seeded plan ------------------------------------------------


@dataclass
class Config:
    workflows: int = 3000
    workers: int = 4
    concurrency: int = 4
    seed: int = 1
    lease: float = 3.0
    #: seconds over which workflows are started and faults injected
    duration: float | None = None
    #: mean seconds between two faults (when ``faults`` is not given)
    fault_interval: float = 3.0
    #: explicit number of faults of each kind
    faults: dict[str, int] | None = None
    #: bounded wait for every workflow to end after the load window
    drain_timeout: float = 180.0
    sleep_fraction: float = 0.2
    child_fraction: float = 0.15
    #: mean milliseconds of "work" in each of the two slow plain steps of a workflow
    work_ms: float = 40.0
    #: retries of the transactional steps (0: the client's default)
    tx_retries: int = 0
    log_dir: str | None = None
    keep_logs: bool = False
    quiet: bool = False

    def load_window(self) -> float:
        if self.duration is not None:
            return self.duration
        return max(15.0, self.workflows / 70.0)


@dataclass(order=True)
class Fault:
    at: float
    kind: str = field(compare=False)
    slot: int = field(compare=False, default=0)
    hold: float = field(compare=False, default=0.0)

    def describe(self) -> str:
        if self.kind == "restart":
            return "restart (immediate)"
        if self.kind == "stall":
            return f"stall worker {self.slot} for {self.hold:.1f}s"
        return f"{self.kind} worker {self.slot}"


def plan_inputs(cfg: Config) -> list[tuple[str, dict[str, Any]]]:
    """Workflow ids and inputs (seeded)."""
    rng = random.Random(f"inputs:{cfg.seed}")
    plan = []
    for i in range(cfg.workflows):
        scale = rng.choice([0.0, 0.5, 1.0, 1.5, 2.0])
        inp: dict[str, Any] = {"n": i, "work_ms": round(scale * cfg.work_ms)}
        if rng.random() < cfg.sleep_fraction:
            # below the suspend threshold: waits in-process; above: suspends
            inp["sleep"] = rng.choice([0.1, 0.8, 1.5])
        if rng.random() < cfg.child_fraction:
            inp["child"] = True
        plan.append((f"chaos-{cfg.seed}-{i:06d}", inp))
    return plan


def plan_faults(cfg: Config) -> list[Fault]:
    """The fault schedule (seeded): times relative to the start of the load."""
    rng = random.Random(f"faults:{cfg.seed}")
    window = cfg.load_window()
    if cfg.faults is not None:
        kinds = [k for k, n in cfg.faults.items() for _ in range(n)]
    else:
        total = max(len(FAULT_KINDS), round(window / cfg.fault_interval))
        kinds = list(FAULT_KINDS)  # at least one of each
        population = list(FAULT_WEIGHTS)
        weights = [FAULT_WEIGHTS[k] for k in population]
        kinds += rng.choices(population, weights, k=total - len(kinds))
    rng.shuffle(kinds)
    lo, hi = min(1.5, window / 4), max(2.0, window - 1.0)
    faults = []
    for kind in kinds:
        fault = Fault(at=round(rng.uniform(lo, hi), 2), kind=kind)
        if kind != "restart":
            fault.slot = rng.randrange(cfg.workers)
        if kind == "stall":
            fault.hold = round(cfg.lease + rng.uniform(1.0, 3.0), 2)
        faults.append(fault)
    return sorted(faults)


# -- the harness's own database access ---------------------------------------------------


class Db:
    """One autocommit connection that reconnects (bounded) when a fault broke it."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row,
                                        connect_timeout=5)
        return self.conn

    def run(self, fn: Callable[[psycopg.Connection[Any]], Any], timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return fn(self._connect())
            except psycopg.OperationalError:
                with contextlib.suppress(Exception):
                    if self.conn is not None:
                        self.conn.close()
                self.conn = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def all(self, query: str, params: Any = None, timeout: float = 60.0) -> list[dict[str, Any]]:
        return self.run(lambda c: c.execute(query, params).fetchall(), timeout)  # type: ignore[no-any-return]

    def one(self, query: str, params: Any = None, timeout: float = 60.0) -> dict[str, Any]:
        rows = self.all(query, params, timeout)
        return rows[0]

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None


# -- worker processes ---------------------------------------------------------------------


def _die_with_parent() -> None:
    """In a worker process (before exec): get SIGKILL when the harness dies, so a
    harness killed with SIGKILL leaves no worker behind (Linux only)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class WorkerSlot:
    """One worker position: a process, replaced when it dies."""

    def __init__(self, harness: Harness, slot: int) -> None:
        self.h = harness
        self.slot = slot
        self.gen = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.stopped_until: float | None = None
        self.expect_exit = False

    @property
    def app_name(self) -> str:
        return f"chaos-w{self.slot}"

    def spawn(self) -> None:
        self.gen += 1
        h = self.h
        self.log_path = h.log_dir / f"worker{self.slot}-{self.gen}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "python_client"), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["CHAOS_EXT_DSN"] = h.pg.dsn(DBNAME, application_name=f"{self.app_name}-ext")
        env["CHAOS_SEED"] = str(h.cfg.seed)
        env["CHAOS_TX_RETRIES"] = str(h.cfg.tx_retries)
        env.pop("RATCHET_DATABASE_URL", None)
        env.pop("DATABASE_URL", None)
        cmd = [sys.executable, "-m", "ratchet",
               "--dsn", h.pg.dsn(DBNAME, application_name=self.app_name),
               "worker", "tests.chaos.chaos_app:app", "--queue", chaos_app.QUEUE,
               "--concurrency", str(h.cfg.concurrency), "--lease", str(h.cfg.lease),
               "--poll-interval", "0.5", "--grace-period", "2", "--log-level", "INFO",
               # even slots group-commit their checkpoints (record_steps), odd
               # slots write one per call: every run puts faults on both paths
               "--batch-checkpoints" if self.slot % 2 == 0 else "--no-batch-checkpoints"]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True,
                                         preexec_fn=_die_with_parent)
        self.stopped_until = None
        self.expect_exit = False

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def kill9(self) -> None:
        self.expect_exit = True
        self.signal_group(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    def tail(self, lines: int = 15) -> str:
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# -- the run ----------------------------------------------------------------------------


@dataclass
class Report:
    ok: bool
    violations: dict[str, list[str]]
    stats: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "violations": self.violations, "stats": self.stats},
                          indent=2, sort_keys=True, default=str)


class Harness:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.t0: float | None = None
        if cfg.log_dir:
            self.log_dir = Path(cfg.log_dir)
            self.log_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.log_dir = Path(tempfile.mkdtemp(prefix=f"ratchet-chaos-{cfg.seed}-"))
        self.pg: EmbeddedPostgres = None  # type: ignore[assignment]
        self.db: Db = None  # type: ignore[assignment]
        self.slots: list[WorkerSlot] = []
        self.plan = plan_inputs(cfg)
        self.faults = plan_faults(cfg)
        self.injected: Counter[str] = Counter()
        self.fault_log: list[str] = []
        self.unexpected_exits: list[str] = []
        self.worker_logs: list[Path] = []
        self.restart_seconds: list[float] = []
        #: (database time it began, it ended, kind) of each fault, to attribute
        #: repeated step executions
        self.fault_times: list[tuple[Any, Any, str]] = []
        #: [pid, SIGSTOP time, SIGCONT time] of each stall, on the database clock
        self.stall_windows: list[list[Any]] = []

    def say(self, msg: str) -> None:
        if not self.cfg.quiet:
            log(self.t0, msg)

    # -- setup ------------------------------------------------------------------

    def setup_database(self) -> None:
        with psycopg.connect(self.pg.dsn(), autocommit=True) as c:
            c.execute(f"create database {DBNAME}")
        dsn = self.pg.dsn(DBNAME, application_name=HARNESS_APP)
        install(dsn, plain=True)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(SETUP_SQL)
            c.execute("select ratchet.create_queue(%s)", [chaos_app.QUEUE])
        self.db = Db(dsn)

    def db_now(self) -> Any:
        """The database clock (what the audit's timestamps use); None if unreachable."""
        try:
            return self.db.one("select clock_timestamp() as t", timeout=10)["t"]
        except psycopg.Error:
            return None

    # -- faults -------------------------------------------------------------------

    def inject(self, fault: Fault, pending: list[tuple[float, int, Callable[[], None]]],
               seq: Iterator[int]) -> None:
        assert self.t0 is not None
        now = time.monotonic() - self.t0
        at = self.db_now()
        if at is not None:
            self.fault_times.append((at, at, fault.kind))
        if fault.kind == "restart":
            began = time.monotonic()
            self.pg.restart(mode="immediate")
            end = self.db_now()
            if at is not None and end is not None:  # the outage lasts until it is back
                self.fault_times[-1] = (at, end, "restart")
            self.restart_seconds.append(time.monotonic() - began)
            self.injected["restart"] += 1
            self.say(f"fault: immediate restart of PostgreSQL ({self.restart_seconds[-1]:.1f}s)")
            return
        slot = self.slots[fault.slot]
        if fault.kind == "kill9":
            pid = slot.pid
            slot.kill9()
            self.injected["kill9"] += 1
            self.say(f"fault: kill -9 worker {slot.slot} (pid {pid}); starting a replacement")
            slot.spawn()
        elif fault.kind == "terminate":
            rows = self.db.all(
                "select pid, pg_terminate_backend(pid) as done from pg_stat_activity "
                "where application_name = any(%s) and pid <> pg_backend_pid()",
                [[slot.app_name, slot.app_name + "-ext"]])
            n = sum(1 for r in rows if r["done"])
            self.injected["terminate"] += 1
            self.injected["terminated_connections"] += n
            self.say(f"fault: pg_terminate_backend of {n} connection(s) of worker {slot.slot}")
        elif fault.kind == "stall":
            if not slot.alive() or slot.stopped_until is not None:
                self.say(f"fault: stall of worker {slot.slot} skipped (already stopped)")
                self.injected["stall_skipped"] += 1
                return
            proc = slot.proc
            pid = slot.pid
            slot.signal_group(signal.SIGSTOP)
            slot.stopped_until = now + fault.hold
            window = [pid, self.db_now(), None]
            self.stall_windows.append(window)
            self.injected["stall"] += 1
            self.say(f"fault: SIGSTOP worker {slot.slot} (pid {slot.pid}) for {fault.hold:.1f}s "
                     f"(lease {self.cfg.lease:.0f}s)")

            def resume() -> None:
                window[2] = self.db_now()
                if slot.proc is proc and slot.alive():
                    slot.signal_group(signal.SIGCONT)
                    self.say(f"SIGCONT worker {slot.slot} (pid {slot.pid})")
                slot.stopped_until = None

            heapq.heappush(pending, (self.t0 + now + fault.hold, next(seq), resume))

    def check_workers(self) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is not None and not slot.expect_exit:
                code = slot.proc.returncode
                msg = (f"worker {slot.slot} (pid {slot.pid}) exited on its own with status "
                       f"{code}; log tail:\n{slot.tail()}")
                self.unexpected_exits.append(msg)
                self.say(f"WARNING: {msg.splitlines()[0]}; starting a replacement")
                slot.spawn()

    # -- load -----------------------------------------------------------------------

    def start_batch(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        ids = [wid for wid, _ in batch]
        inputs = [Jsonb(inp) for _, inp in batch]
        # Idempotent on the ids: a retry after a broken connection starts nothing twice.
        self.db.all("select ratchet.start_workflows(%s, %s::jsonb[], queue => %s, "
                    "workflow_ids => %s::text[]) as ids",
                    ["chaos_flow", inputs, chaos_app.QUEUE, ids], timeout=120)

    def counts(self) -> dict[str, int]:
        rows = self.db.all("select status, count(*)::int as n from ratchet.workflows "
                           "group by status", timeout=120)
        return {r["status"]: r["n"] for r in rows}

    def run_load(self) -> tuple[float, bool]:
        """Start the workflows and inject the faults over the load window, then wait
        for everything to end. Returns (seconds until all ended, drained?)."""
        cfg = self.cfg
        window = cfg.load_window()
        ticks = max(1, math.ceil(window / 0.5))
        per_tick = math.ceil(len(self.plan) / ticks)
        batches = [self.plan[i:i + per_tick] for i in range(0, len(self.plan), per_tick)]
        seq = iter(range(1 << 30))
        events: list[tuple[float, int, Callable[[], None]]] = []
        self.t0 = time.monotonic()
        t0 = self.t0
        for i, batch in enumerate(batches):
            heapq.heappush(events, (t0 + i * 0.5, next(seq),
                                    lambda b=batch: self.start_batch(b)))  # type: ignore[misc]
        for fault in self.faults:
            heapq.heappush(events, (t0 + fault.at, next(seq),
                                    lambda f=fault: self.inject(f, events, seq)))  # type: ignore[misc]
        self.say(f"load: {len(self.plan)} workflows over {window:.0f}s, {len(self.faults)} "
                 f"faults planned: {dict(Counter(f.kind for f in self.faults))}")
        deadline = t0 + window + cfg.drain_timeout
        next_report = t0 + 5.0
        total_expected = len(self.plan)
        done_at: float | None = None
        while True:
            now = time.monotonic()
            while events and events[0][0] <= now:
                _, _, action = heapq.heappop(events)
                action()
                now = time.monotonic()
            self.check_workers()
            if not events or events[0][0] - now > 0.3:
                counts = self.counts()
                ended = sum(counts.get(s, 0) for s in ENDED)
                live = counts.get("enqueued", 0) + counts.get("running", 0)
                total = sum(counts.values())
                if now >= next_report:
                    self.say(f"progress: {ended}/{total} ended, {live} live {counts}")
                    next_report = now + 5.0
                if not events and total >= total_expected and live == 0:
                    done_at = time.monotonic()
                    break
            if now > deadline:
                self.say(f"drain timeout: not every workflow ended within "
                         f"{window + cfg.drain_timeout:.0f}s")
                break
            wait = 0.2 if not events else min(0.2, max(0.0, events[0][0] - time.monotonic()))
            time.sleep(wait)
        # Anything still pending (a SIGCONT) must run before the workers are stopped.
        while events:
            _, _, action = heapq.heappop(events)
            with contextlib.suppress(Exception):
                action()
        elapsed = (done_at or time.monotonic()) - t0
        return elapsed, done_at is not None

    # -- shutdown -----------------------------------------------------------------------

    def stop_workers(self, grace: float = 5.0) -> None:
        for slot in self.slots:
            slot.expect_exit = True
            slot.signal_group(signal.SIGCONT)
            slot.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for slot in self.slots:
            if slot.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                slot.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for slot in self.slots:
            slot.signal_group(signal.SIGKILL)
            if slot.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    slot.proc.wait(timeout=5)

    # -- checks -------------------------------------------------------------------------

    def verify(self) -> tuple[dict[str, list[str]], dict[str, Any]]:
        db = self.db
        violations: dict[str, list[str]] = defaultdict(list)
        stats: dict[str, Any] = {}

        wfs = {r["workflow_id"]: r for r in db.all(
            "select workflow_id, name, status, input, output, error, attempts, max_attempts, "
            "parent_id, run_id from ratchet.workflows")}
        steps: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in db.all("select workflow_id, step_id, name, output, error, run_id "
                        "from ratchet.steps order by workflow_id, step_id"):
            steps[r["workflow_id"]].append(r)
        effects = {(r["workflow_id"], r["step_id"]): r for r in db.all(
            "select workflow_id, step_id, count(*)::int as n, min(value) as lo, "
            "max(value) as hi from chaos_effects group by 1, 2")}
        calls = {r["idempotency_key"]: r for r in db.all(
            "select idempotency_key, count(*)::int as n, count(distinct pid)::int as pids "
            "from chaos_calls group by 1")}
        writes = db.all("select op, workflow_id, step_id, name, run_id, current_run, "
                        "current_status from chaos_audit.step_writes order by seq")
        claims: dict[str, list[int]] = defaultdict(list)
        claim_rows = db.all("select workflow_id, run_id, worker_id, attempts, at "
                            "from chaos_audit.claims order by seq")
        previous: dict[str, dict[str, Any]] = {}
        stolen = 0
        for r in claim_rows:
            claims[r["workflow_id"]].append(int(r["run_id"]))
            # A lease stolen from a stalled worker: the workflow's previous run
            # belonged to a process that was stopped (SIGSTOP) when this claim took it.
            before = previous.get(r["workflow_id"])
            previous[r["workflow_id"]] = r
            if before is None or not before["worker_id"]:
                continue
            parts = str(before["worker_id"]).split(":")
            pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
            for w_pid, since, until in self.stall_windows:
                if w_pid == pid and since is not None and since <= r["at"] \
                        and (until is None or r["at"] <= until):
                    stolen += 1
                    break

        # The expected workflows: every planned one, and one child per child input.
        expected: dict[str, tuple[str, dict[str, Any]]] = {}
        for wid, inp in self.plan:
            expected[wid] = ("chaos_flow", inp)
            if inp.get("child"):
                k = len(chaos_app.expected_steps(wid, inp)) - 3
                expected[f"{wid}:{k}"] = ("chaos_child", {"n": inp["n"]})

        for wid in expected.keys() - wfs.keys():
            violations["missing workflow"].append(wid)
        for wid in wfs.keys() - expected.keys():
            violations["unexpected workflow"].append(wid)

        expected_effects: set[tuple[str, int]] = set()
        for wid, (name, inp) in expected.items():
            wf = wfs.get(wid)
            if wf is None:
                continue
            if wf["status"] != "succeeded":
                violations[f"ended {wf['status']}, not succeeded"].append(
                    f"{wid} (attempts {wf['attempts']}, error {json.dumps(wf['error'])[:200]})")
            if name == "chaos_flow":
                want_steps = chaos_app.expected_steps(wid, inp)
                want_output: Any = chaos_app.expected_output(inp)
                effect_step = 1
            else:
                want_steps = chaos_app.expected_child_steps(int(inp["n"]))
                want_output = chaos_app.child_value(int(inp["n"]))
                effect_step = 1
            expected_effects.add((wid, effect_step))
            if wf["status"] == "succeeded" and wf["output"] != want_output:
                violations["wrong workflow output"].append(
                    f"{wid}: {wf['output']!r} != {want_output!r}")
            if wf["name"] != name:
                violations["wrong workflow name"].append(wid)
            # Checkpoints: exactly 0..K-1, expected names and outputs, runs in order.
            got = steps.get(wid, [])
            if wf["status"] == "succeeded":
                if [s["step_id"] for s in got] != list(range(len(want_steps))):
                    violations["checkpoints not exactly 0..K-1"].append(
                        f"{wid}: {[s['step_id'] for s in got]}")
            runs = claims.get(wid, [])
            last_run = -1
            for s in got:
                i = s["step_id"]
                if i >= len(want_steps):
                    violations["unexpected checkpoint"].append(f"{wid}#{i} {s['name']}")
                    continue
                want_name, want_out = want_steps[i]
                if s["name"] != want_name:
                    violations["wrong checkpoint name"].append(
                        f"{wid}#{i}: {s['name']!r} != {want_name!r}")
                if s["error"] is not None:
                    violations["checkpoint recorded an error"].append(
                        f"{wid}#{i} {s['name']}: {json.dumps(s['error'])[:300]}")
                elif want_out is ...:
                    if not (isinstance(s["output"], dict) and "wake_at" in s["output"]):
                        violations["wrong checkpoint output"].append(f"{wid}#{i}: {s['output']!r}")
                elif s["output"] != want_out:
                    violations["wrong checkpoint output"].append(
                        f"{wid}#{i} {s['name']}: {s['output']!r} != {want_out!r}")
                run = s["run_id"]
                if run is None or run not in runs:
                    violations["checkpoint by a run that never claimed it"].append(
                        f"{wid}#{i} run {run} (claims {runs})")
                elif run < last_run:
                    violations["checkpoint run ids go backwards"].append(
                        f"{wid}#{i} run {run} after run {last_run}")
                if run is not None:
                    last_run = max(last_run, run)
            # Transactional effect: exactly once, with the right value.
            eff = effects.get((wid, effect_step))
            if eff is None:
                if wf["status"] == "succeeded":
                    violations["transactional effect missing"].append(wid)
            elif eff["n"] != 1:
                violations["transactional effect applied more than once"].append(
                    f"{wid}: {eff['n']} rows")
            elif eff["lo"] != int(inp["n"]) or eff["hi"] != int(inp["n"]):
                violations["transactional effect has a wrong value"].append(wid)
            # At-least-once call: at least one call with this step's key.
            if name == "chaos_flow" and wf["status"] == "succeeded" \
                    and f"{wid}:2" not in calls:
                violations["at-least-once step never called"].append(wid)
        for key in effects.keys() - expected_effects:
            violations["effect for an unexpected (workflow, step)"].append(f"{key[0]}#{key[1]}")
        wanted_keys = {f"{wid}:2" for wid, (name, _) in expected.items() if name == "chaos_flow"}
        for key in calls.keys() - wanted_keys:
            violations["external call with an unexpected idempotency key"].append(key)

        # Audit: checkpoints are written once, never updated or deleted, and only by
        # the run that was current (and running) at that moment.
        per_step: Counter[tuple[str, int]] = Counter()
        for w in writes:
            if w["op"] != "INSERT":
                violations[f"checkpoint {w['op'].lower()}d"].append(
                    f"{w['workflow_id']}#{w['step_id']}")
                continue
            per_step[(w["workflow_id"], w["step_id"])] += 1
            if w["current_run"] != w["run_id"] or w["current_status"] != "running":
                violations["checkpoint written by a stale run (fencing failed)"].append(
                    f"{w['workflow_id']}#{w['step_id']} by run {w['run_id']} while run "
                    f"{w['current_run']} was current ({w['current_status']})")
        for (wid, sid), n in per_step.items():
            if n != 1:
                violations["checkpoint written more than once"].append(f"{wid}#{sid}: {n}")

        # Statistics.
        attempts = [wf["attempts"] for wid, wf in wfs.items() if wid in expected]
        dup_calls = sum(c["n"] - 1 for c in calls.values())
        stats["workflows"] = len(self.plan)
        stats["children"] = len(expected) - len(self.plan)
        stats["statuses"] = dict(Counter(wf["status"] for wf in wfs.values()))
        stats["recovered workflows (attempts > 1)"] = sum(1 for a in attempts if a and a > 1)
        stats["max attempts"] = max(attempts, default=0)
        stats["claims (runs)"] = sum(len(v) for v in claims.values())
        stats["checkpoints"] = sum(per_step.values())
        stats["at-least-once calls"] = sum(c["n"] for c in calls.values())
        stats["duplicate at-least-once calls (retries observed)"] = dup_calls
        stats["leases stolen from stalled (SIGSTOP) workers"] = stolen
        stats["keys called from more than one process"] = sum(
            1 for c in calls.values() if c["pids"] > 1)
        stats.update(self.repeated_executions())
        return dict(violations), stats

    def repeated_executions(self) -> dict[str, Any]:
        """Step bodies that ran again, per fault kind (issue 15).

        Every execution of a step body after the first one of the same step
        (idempotency key) is a repeat, unless the same process's previous
        execution of it raised (an in-process retry, by design: the simulated
        lost responses). A repeat is of a *completed* step when an earlier
        execution had returned, of a step *in flight* when none had. It is put
        down to the first fault that was under way between the step's first
        execution and the repeat (a restart lasts until the server is back;
        "none" if no fault came between).
        Transactional steps are counted apart: their body's effects rolled back
        with the transaction, so a repeat there costs work,
        never a duplicate effect.
        """
        rows = self.db.all("select idempotency_key, name, pid, started_at, outcome "
                           "from chaos_executions order by idempotency_key, started_at, id")
        faults = sorted(self.fault_times)
        kinds = (*FAULT_KINDS, "none")
        table: dict[str, Counter[str]] = {k: Counter() for k in kinds}
        by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            by_key[r["idempotency_key"]].append(r)
        for runs in by_key.values():
            for i in range(1, len(runs)):
                cur = runs[i]
                mine = [r for r in runs[:i] if r["pid"] == cur["pid"]]
                if mine and mine[-1]["outcome"] == "raised":
                    continue  # this process retrying its own failed attempt
                cause = next((k for began, ended, k in faults
                              if began <= cur["started_at"] and ended >= runs[0]["started_at"]),
                             "none")
                if cur["name"] in ("apply_effect", "child_effect"):
                    table[cause]["transactional (rolled back)"] += 1
                elif any(r["outcome"] == "returned" for r in runs[:i]):
                    table[cause]["completed"] += 1
                else:
                    table[cause]["in flight"] += 1
        repeated = {k: v for k, v in by_key.items() if len(v) > 1}
        (self.log_dir / "repeated_executions.json").write_text(json.dumps(
            {"faults": faults, "executions": repeated}, indent=1, default=str))
        out: dict[str, Any] = {"step executions (logged)": len(rows)}
        for kind in kinds:
            c = table[kind]
            out[f"repeated step executions after {kind}"] = (
                f"completed {c['completed']}, in flight {c['in flight']}, "
                f"transactional {c['transactional (rolled back)']}")
        return out

    def dump_failures(self) -> None:
        """Write every workflow that did not succeed (with its error, traceback and
        steps) to ``failed_workflows.json`` in the log directory."""
        rows = self.db.all(
            "select w.*, coalesce((select jsonb_agg(to_jsonb(s) order by s.step_id) "
            "from ratchet.steps s where s.workflow_id = w.workflow_id), '[]') as steps "
            "from ratchet.workflows w where w.status <> 'succeeded' order by w.workflow_id")
        path = self.log_dir / "failed_workflows.json"
        path.write_text(json.dumps(rows, indent=2, default=str))
        self.say(f"{len(rows)} workflow(s) that did not succeed written to {path}")

    def scan_worker_logs(self) -> dict[str, int]:
        patterns = {
            "stale-run (RT002) stops": re.compile(r"RT002"),
            "released runs": re.compile(r"released workflow"),
            "failed claims": re.compile(r"claim failed"),
            "failed heartbeats": re.compile(r"heartbeat failed"),
            "unexpected worker errors": re.compile(r"unexpected error|Traceback"),
        }
        counts: Counter[str] = Counter()
        for path in sorted(self.log_dir.glob("worker*.log")):
            text = path.read_text(errors="replace")
            for name, pat in patterns.items():
                counts[name] += len(pat.findall(text))
        return {k: counts[k] for k in patterns}

    # -- everything ------------------------------------------------------------------

    def run(self) -> Report:
        cfg = self.cfg
        started = time.monotonic()
        self.say(f"chaos: seed {cfg.seed}, {cfg.workflows} workflows, {cfg.workers} workers x "
                 f"{cfg.concurrency}, lease {cfg.lease:g}s, logs in {self.log_dir}")
        with EmbeddedPostgres() as pg:
            self.pg = pg
            try:
                self.setup_database()
                self.slots = [WorkerSlot(self, i) for i in range(cfg.workers)]
                for slot in self.slots:
                    slot.spawn()
                elapsed, drained = self.run_load()
                self.say("stopping workers")
                self.stop_workers()
                violations, stats = self.verify()
                if not drained:
                    stuck = self.db.all("select workflow_id, status, attempts from "
                                        "ratchet.workflows where status in ('enqueued', "
                                        "'running') order by workflow_id")
                    violations["stuck (never ended)"] = [
                        f"{r['workflow_id']} ({r['status']}, attempts {r['attempts']})"
                        for r in stuck] or ["(none listed)"]
                if self.unexpected_exits:
                    violations["worker process exited on its own"] = self.unexpected_exits
                if violations:
                    self.dump_failures()
                span = self.db.one("select extract(epoch from max(ended_at) - min(created_at))"
                                   "::float8 as s from ratchet.workflows")["s"] or 0.0
            finally:
                self.stop_workers(grace=0.5)
                if self.db is not None:
                    self.db.close()
        stats.update(self.scan_worker_logs())
        stats["faults injected"] = {k: self.injected[k] for k in
                                    (*FAULT_KINDS, "terminated_connections", "stall_skipped")}
        stats["restart seconds"] = [round(s, 2) for s in self.restart_seconds]
        stats["worker processes started"] = sum(s.gen for s in self.slots)
        stats["load + drain seconds"] = round(elapsed, 1)
        stats["first start to last end seconds"] = round(span, 1)
        total = stats["workflows"] + stats["children"]
        stats["throughput (workflows/s, incl. children)"] = round(total / span, 1) if span else 0
        stats["total seconds"] = round(time.monotonic() - started, 1)
        return Report(ok=not violations, violations=violations, stats=stats)


def print_report(report: Report, cfg: Config) -> None:
    print()
    print("=" * 72)
    print(f"chaos summary (seed {cfg.seed}; replay: python -m tests.chaos.harness "
          f"--workflows {cfg.workflows} --workers {cfg.workers} --seed {cfg.seed})")
    print("-" * 72)
    for key, value in report.stats.items():
        print(f"  {key:48s} {value}")
    print("-" * 72)
    if report.ok:
        print("  RESULT: PASS (no violation)")
    else:
        print("  RESULT: FAIL")
        for kind, items in report.violations.items():
            print(f"  violation: {kind}: {len(items)}")
            for item in items[:20]:
                for line in str(item).splitlines() or [""]:
                    print(f"      {line}")
            if len(items) > 20:
                print(f"      ... and {len(items) - 20} more")
    print("=" * 72, flush=True)


def parse_faults(text: str) -> dict[str, int]:
    out = {k: 0 for k in FAULT_KINDS}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, n = part.partition("=")
        if kind not in FAULT_KINDS or not n.isdigit():
            raise argparse.ArgumentTypeError(
                f"--faults wants KIND=N,... with KIND in {', '.join(FAULT_KINDS)}; got {part!r}")
        out[kind] = int(n)
    return out


def parse_args(argv: Sequence[str] | None) -> tuple[Config, str | None]:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.harness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workflows", type=int, default=3000)
    p.add_argument("--workers", type=int, default=4, help="worker processes")
    p.add_argument("--concurrency", type=int, default=4, help="workflows per worker at once")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lease", type=float, default=3.0, help="worker lease in seconds")
    p.add_argument("--duration", type=float, default=None,
                   help="load window in seconds (default: workflows/70, at least 15)")
    p.add_argument("--fault-interval", type=float, default=3.0,
                   help="mean seconds between faults (default 3)")
    p.add_argument("--faults", type=parse_faults, default=None,
                   help="exact fault counts instead, e.g. kill9=2,terminate=2,restart=1,stall=1")
    p.add_argument("--drain-timeout", type=float, default=180.0,
                   help="seconds to wait after the load window for every workflow to end")
    p.add_argument("--sleep-fraction", type=float, default=0.2)
    p.add_argument("--child-fraction", type=float, default=0.15)
    p.add_argument("--work-ms", type=float, default=40.0,
                   help="mean milliseconds spent in each of two plain steps per workflow "
                        "(longer: more work in flight when a fault hits; default 40)")
    p.add_argument("--tx-retries", type=int, default=0,
                   help="retries of the transactional steps (default 0, the client's default)")
    p.add_argument("--log-dir", default=None, help="keep worker logs here")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="only print the summary")
    a = p.parse_args(argv)
    if a.workflows < 1 or a.workers < 1 or a.concurrency < 1 or a.lease <= 0:
        p.error("workflows, workers, concurrency and lease must be positive")
    cfg = Config(workflows=a.workflows, workers=a.workers, concurrency=a.concurrency,
                 seed=a.seed, lease=a.lease, duration=a.duration,
                 fault_interval=a.fault_interval, faults=a.faults,
                 drain_timeout=a.drain_timeout, sleep_fraction=a.sleep_fraction,
                 child_fraction=a.child_fraction, work_ms=a.work_ms,
                 tx_retries=a.tx_retries, log_dir=a.log_dir,
                 keep_logs=a.log_dir is not None, quiet=a.quiet)
    return cfg, a.json


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    cfg, json_out = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    harness = Harness(cfg)
    try:
        report = harness.run()
    except KeyboardInterrupt:
        print("chaos: interrupted", file=sys.stderr)
        return 130
    finally:
        for slot in harness.slots:  # belt and braces: never leave a worker behind
            slot.expect_exit = True
            slot.signal_group(signal.SIGCONT)
            slot.signal_group(signal.SIGKILL)
    print_report(report, cfg)
    if json_out:
        Path(json_out).write_text(report.to_json())
    if report.ok and not cfg.keep_logs:
        shutil.rmtree(harness.log_dir, ignore_errors=True)
    elif not report.ok:
        print(f"worker logs kept in {harness.log_dir}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
