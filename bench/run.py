"""Ratchet benchmarks: throughput and latency against a plain-Postgres baseline.

``make bench`` runs ``python3 bench/run.py --out docs/benchmarks.md``; ``--quick``
is a smoke test with small sizes (under a minute). Everything runs against one
throwaway server (``ratchet.testing.EmbeddedPostgres``) with realistic
durability (fsync and synchronous_commit on), on this machine, in this run:

1. raw floor: pgbench runs the minimal plain-SQL statements of a K-step
   workflow (``bench/pgbench/raw.sql``);
2. SQL-API path: pgbench drives the real functions, statement for statement
   the same workflow (``bench/pgbench/ratchet.sql``);
3. Python client: worker processes (``bench/bench_app.py``) drain a pre-filled
   queue;
4. latencies (``bench/latency.py``);
5. scaling with history (1M ended workflows) and with queue depth;
6. a profile of the SQL-API path (pg_stat_statements, wait-event sampling,
   auto_explain of one claim and its writes).

Every figure is measured ``--reps`` times (interleaved with its baseline) and
reported as median and spread (min-max); the report is Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
CLIENT_DIR = ROOT / "python_client"
PLAIN_SCRIPT = CLIENT_DIR / "ratchet" / "_sql" / "ratchet.sql"
PGBENCH_DIR = BENCH_DIR / "pgbench"
sys.path.insert(0, str(CLIENT_DIR))

import latency  # noqa: E402  (bench/ is on sys.path as the script's directory)

from ratchet.testing import EmbeddedPostgres  # noqa: E402

#: the queue of the throughput runs (bench_app's workflows run on it too)
QUEUE = "bench"
#: main database of the run
MAIN_DB = "bench"

# Targets from issue #5.
TARGET_SQL_API = 0.80
TARGET_PYTHON = 0.50
TARGET_ENQUEUE_P50_MS = 5.0
TARGET_HISTORY = 0.90
# Issue #4: recv/get_event wake "within a few milliseconds" on a local socket.
TARGET_WAKEUP_P50_MS = 5.0


@dataclass(frozen=True)
class Config:
    """Sizes of one run."""

    ks: tuple[int, ...] = (0, 3, 10)
    clients: tuple[int, ...] = (1, 2, 4)
    reps: int = 3
    seconds: int = 3                     # pgbench -T
    prefill: int = 1000                  # due workflows waiting in the queue during pgbench
    py_procs: tuple[int, ...] = (1, 2, 4)
    py_ks: tuple[int, ...] = (0, 3, 10)
    py_concurrency: int = 4              # --concurrency of each worker process
    py_batch: tuple[tuple[int, int], ...] = ((0, 1500), (3, 750), (10, 300))  # K -> workflows
    lat_samples: int = 400
    history_rows: int = 1_000_000
    history_steps: int = 3               # steps per ended workflow
    history_k: int = 3
    history_clients: int = 2
    claim_depths: tuple[int, int] = (100, 100_000)
    claim_samples: int = 300
    profile_k: int = 3
    profile_clients: int = 4
    profile_seconds: int = 5

    def batch(self, k: int) -> int:
        return dict(self.py_batch).get(k, 300)


FULL = Config()
QUICK = Config(
    ks=(0, 3), clients=(1, 2), reps=1, seconds=1, prefill=200, py_procs=(1, 2), py_ks=(3,),
    py_concurrency=2, py_batch=((0, 100), (3, 60), (10, 30)), lat_samples=30,
    history_rows=20_000, claim_depths=(100, 2_000), claim_samples=30, profile_clients=2,
    profile_seconds=1,
)


# ---------------------------------------------------------------------- figures


@dataclass
class Figure:
    """One figure measured several times."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def lo(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def hi(self) -> float:
        return max(self.values) if self.values else float("nan")


@dataclass
class Latency:
    """A latency measured in several runs of many samples each (ms)."""

    runs: list[list[float]] = field(default_factory=list)

    def pct(self, q: float) -> Figure:
        return Figure([latency.percentile(r, q) for r in self.runs if r])

    @property
    def samples(self) -> int:
        return sum(len(r) for r in self.runs)


@dataclass
class Profile:
    """What pg_stat_statements, wait sampling and auto_explain saw."""

    k: int
    clients: int
    seconds: int
    ratchet_tps: float
    raw_tps: float
    top_ratchet: list[dict[str, Any]]
    top_raw: list[dict[str, Any]]
    nested: list[dict[str, Any]]
    functions: list[dict[str, Any]]
    waits_ratchet: list[tuple[str, float]]
    waits_raw: list[tuple[str, float]]
    plans: str


@dataclass
class Results:
    cfg: Config
    machine: dict[str, str] = field(default_factory=dict)
    floor: dict[tuple[int, int], Figure] = field(default_factory=dict)
    sqlapi: dict[tuple[int, int], Figure] = field(default_factory=dict)
    sqlapi_ratio: dict[tuple[int, int], Figure] = field(default_factory=dict)
    python: dict[tuple[int, int], Figure] = field(default_factory=dict)
    python_ratio: dict[tuple[int, int], Figure] = field(default_factory=dict)
    python_note: str | None = None
    lat: dict[str, Latency] = field(default_factory=dict)
    lat_note: str | None = None
    history: dict[str, Figure] = field(default_factory=dict)
    history_ratio: Figure = field(default_factory=Figure)
    #: after retention (maintain() to completion, default 7 days) on the full history
    history_retained: Figure = field(default_factory=Figure)
    history_retained_ratio: Figure = field(default_factory=Figure)
    history_retention_note: str = ""
    history_sizes: dict[str, str] = field(default_factory=dict)
    claim: dict[int, Latency] = field(default_factory=dict)
    notify: dict[str, Figure] = field(default_factory=dict)
    profile: Profile | None = None
    sections: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------- the server


class Bench:
    """The throwaway server and the helpers every section uses."""

    def __init__(self, pg: EmbeddedPostgres, workdir: Path, log: Callable[[str], None]) -> None:
        self.pg = pg
        self.workdir = workdir
        self.log = log
        self._n = 0

    def dsn(self, db: str) -> str:
        return self.pg.dsn(db)

    @contextlib.contextmanager
    def connect(self, db: str) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.dsn(db), autocommit=True) as conn:
            yield conn

    def rows(self, db: str, query: str, params: Sequence[Any] | None = None) -> list[Any]:
        with self.connect(db) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def create_db(self, name: str, prefill: int = 0) -> None:
        """A database with Ratchet (plain install), the raw tables, queue ``bench``
        and ``prefill`` due workflows waiting in it."""
        with self.connect("postgres") as conn:
            conn.execute(f'create database "{name}"')
        with self.connect(name) as conn:
            conn.execute(PLAIN_SCRIPT.read_text())
            conn.execute((PGBENCH_DIR / "raw_setup.sql").read_text())
            conn.execute("create extension if not exists pg_stat_statements")
            conn.execute("select ratchet.create_queue(%s)", (QUEUE,))
        if prefill:
            self.prefill(name, prefill)
        self.settle(name)

    def prefill(self, db: str, count: int, name: str = "bench") -> None:
        """Start ``count`` workflows on the queue, 50,000 per statement."""
        with self.connect(db) as conn:
            conn.execute("set ratchet.notify = off")
            left = count
            while left > 0:
                n = min(left, 10_000)  # start_workflows takes at most 10,000
                conn.execute("select ratchet.start_workflows(%s, array(select '{\"args\": [3]}'"
                             "::jsonb from generate_series(1, %s)), %s)", (name, n, QUEUE))
                left -= n

    def warm(self, db: str) -> None:
        """A second of each pgbench script, untimed: the tables hold some rows and
        their statistics say so before anything is measured (on empty tables the
        plans cached for a whole session can be seq scans)."""
        for kind in ("raw", "ratchet"):
            self.pgbench(db, script(kind, 3), 1, 1)
        self.settle(db)

    def settle(self, db: str) -> None:
        """The same starting point for every run: dead rows vacuumed, statistics
        fresh (what autovacuum keeps up with), no checkpoint pending."""
        with self.connect(db) as conn:
            conn.execute("vacuum (analyze) ratchet.workflows, ratchet.steps, raw_workflows, "
                         "raw_steps, raw_queue")
            conn.execute("checkpoint")

    def pgbench(self, db: str, script: str, clients: int, seconds: int) -> float:
        """Run a pgbench script; returns its transactions (= workflows) per second."""
        self._n += 1
        path = self.workdir / f"script-{self._n}.sql"
        path.write_text(script)
        cmd = [str(self.pg.bindir / "pgbench"), "-n", "-M", "prepared", "-T", str(seconds),
               "-c", str(clients), "-j", str(clients), "-f", str(path),
               "-h", self.pg.host, "-p", str(self.pg.port), "-U", self.pg.user, db]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=seconds + 120, check=False)
        match = re.search(r"^tps = ([0-9.]+)", proc.stdout, re.M)
        failed = re.search(r"number of failed transactions: (\d+)", proc.stdout)
        if proc.returncode != 0 or match is None or (failed and int(failed.group(1))):
            raise RuntimeError(f"pgbench failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return float(match.group(1))


def script(kind: str, k: int) -> str:
    """The pgbench script ``bench/pgbench/<kind>.sql`` for K steps (see its header)."""
    out: list[str] = []
    for line in (PGBENCH_DIR / f"{kind}.sql").read_text().splitlines():
        if line.startswith("--") or not line.strip():
            continue
        line = line.replace("@K@", str(k))
        if "@STEP@" in line:
            out.extend(line.replace("@STEP@", str(i)) for i in range(k))
        else:
            out.append(line)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- sections


def section_throughput(b: Bench, cfg: Config, res: Results) -> None:
    """1, 2 and 3: the raw floor, the SQL-API path and the Python client, run by
    run in turn for each K and client count, so that every SQL-API and Python
    figure has a raw-floor run right next to it (ratios are taken per pair)."""
    for k in cfg.ks:
        for c in cfg.clients:
            res.floor[(k, c)] = Figure()
            res.sqlapi[(k, c)] = Figure()
            res.sqlapi_ratio[(k, c)] = Figure()
    b.warm(MAIN_DB)
    pools = start_python_workers(b, cfg, res)
    try:
        for rep in range(cfg.reps):
            for k in cfg.ks:
                for c in cfg.clients:
                    kinds = ["raw", "ratchet"]
                    if c in pools and k in cfg.py_ks:
                        kinds.append("python")
                    shift = (rep + k + c) % len(kinds)
                    rates: dict[str, float] = {}
                    for kind in kinds[shift:] + kinds[:shift]:
                        if kind == "python":
                            try:
                                rate = python_run(b, pools[c], k, cfg.batch(k))
                            except Exception as exc:
                                res.python_note = f"failed with {c} process(es): {exc}"[:600]
                                b.log(f"  Python client: {res.python_note}")
                                stop_python_workers(pools)
                                continue
                        else:
                            b.settle(MAIN_DB)
                            rate = b.pgbench(MAIN_DB, script(kind, k), c, cfg.seconds)
                        rates[kind] = rate
                        b.log(f"  rep {rep + 1} K={k:<2} c={c} {kind:8} {rate:8.0f} workflows/s")
                    floor = rates["raw"]
                    res.floor[(k, c)].values.append(floor)
                    res.sqlapi[(k, c)].values.append(rates["ratchet"])
                    res.sqlapi_ratio[(k, c)].values.append(rates["ratchet"] / floor)
                    if "python" in rates:
                        res.python.setdefault((k, c), Figure()).values.append(rates["python"])
                        res.python_ratio.setdefault((k, c), Figure()).values.append(
                            rates["python"] / floor)
    finally:
        stop_python_workers(pools)


class Workers:
    """``procs`` worker processes (``ratchet worker bench_app:app``) serving the
    queue of their own database ``db``."""

    def __init__(self, b: Bench, db: str, procs: int, concurrency: int) -> None:
        self.b = b
        self.db = db
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(CLIENT_DIR), str(BENCH_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.logs = [b.workdir / f"worker-{db}-{i}.log" for i in range(procs)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for path in self.logs:
            with path.open("wb") as out:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "ratchet", "worker", "bench_app:app",
                     "--dsn", b.dsn(db), "--queue", QUEUE,
                     "--concurrency", str(concurrency), "--log-level", "warning"],
                    cwd=BENCH_DIR, env=env, stdout=out, stderr=subprocess.STDOUT))

    def check(self) -> None:
        for proc, path in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = path.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"worker exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def start_python_workers(b: Bench, cfg: Config, res: Results) -> dict[int, Workers]:
    """For each process count, its workers and their database, warmed up. The
    idle workers of the other counts poll their own database meanwhile (one
    cheap claim a second each)."""
    problem = client_problem()
    if problem:
        res.python_note = problem
        return {}
    pools: dict[int, Workers] = {}
    try:
        for p in cfg.py_procs:
            db = f"bench_py{p}"
            b.create_db(db)
            pools[p] = Workers(b, db, p, cfg.py_concurrency)
        for p, workers in pools.items():
            run_batch(b, workers, 1, 10 * p * cfg.py_concurrency, timeout=90)  # warm-up
    except Exception as exc:
        res.python_note = f"the workers did not start: {exc}"[:600]
        b.log(f"  Python client: {res.python_note}")
        stop_python_workers(pools)
    return pools


def stop_python_workers(pools: dict[int, Workers]) -> None:
    for workers in pools.values():
        workers.stop()
    pools.clear()


def python_run(b: Bench, workers: Workers, k: int, n: int) -> float:
    b.settle(workers.db)
    return run_batch(b, workers, k, n, timeout=60 + n / 5)


_batches = 0


def run_batch(b: Bench, workers: Workers, k: int, n: int, timeout: float) -> float:
    """Start ``n`` K-step workflows in one statement; workflows/s until all succeeded
    (database clock: commit of the start -> the last ``ended_at``)."""
    global _batches
    _batches += 1
    prefix = f"py{_batches}-"
    upper = f"py{_batches}."  # '.' sorts right after '-': the ids of this batch only
    with b.connect(workers.db) as conn:
        conn.execute(
            "select ratchet.start_workflows('bench', array(select %s::jsonb "
            "from generate_series(1, %s)), %s, "
            "array(select %s || g from generate_series(1, %s) g))",
            (json.dumps({"args": [k], "kwargs": {}}), n, QUEUE, prefix, n))
        t0 = conn.execute("select clock_timestamp()").fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + timeout
        while True:
            live = conn.execute(
                "select count(*) from ratchet.workflows where workflow_id >= %s "
                "and workflow_id < %s and status in ('enqueued', 'running')",
                (prefix, upper)).fetchone()[0]  # type: ignore[index]
            if live == 0:
                break
            workers.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{live} of {n} workflows still live after {timeout:.0f} s")
            time.sleep(0.1)
        ok, end = conn.execute(
            "select count(*) filter (where status = 'succeeded'), max(ended_at) "
            "from ratchet.workflows where workflow_id >= %s and workflow_id < %s",
            (prefix, upper)).fetchone()  # type: ignore[misc]
    if ok != n:
        raise RuntimeError(f"only {ok} of {n} workflows succeeded")
    return float(n / max((end - t0).total_seconds(), 1e-6))


def client_problem() -> str | None:
    """Why the Python client cannot be measured, or None."""
    try:
        import ratchet
    except Exception as exc:
        return f"the Python client does not import: {exc}"
    if not hasattr(ratchet, "App") or not hasattr(ratchet.App, "worker"):
        return "the Python client has no App/App.worker yet"
    return None


LATENCY_PROBES: dict[str, str] = {
    "enqueue": "enqueue -> claim (SQL API)",
    "enqueue_raw": "enqueue -> claim (plain SQL queue)",
    "step": "record_step round trip",
    "step_raw": "plain INSERT round trip",
    "wakeup": "finish -> LISTEN waiter woken",
    "wakeup_raw": "UPDATE+pg_notify -> waiter woken",
    "recv": "send -> LISTENing recv() returned it",
    "event": "set_event -> LISTENing get_event() returned it",
    "py_start": "Python: app.start -> workflow body runs",
    "py_result": "Python: app.start -> handle.result (0 steps)",
    "py_message": "Python: send -> recv -> set_event -> get_event",
}


def section_latency(b: Bench, cfg: Config, res: Results) -> None:
    """4: enqueue-to-start, step checkpoint and wake-up latencies."""
    dsn = b.dsn(MAIN_DB)
    latency.ensure_queues(dsn)
    for key in LATENCY_PROBES:
        res.lat[key] = Latency()
    n = cfg.lat_samples
    py_ok = client_problem() is None
    if not py_ok:
        res.lat_note = f"Python rows not measured: {client_problem()}"
    for rep in range(cfg.reps):
        b.settle(MAIN_DB)
        res.lat["enqueue"].runs.append(latency.enqueue_to_start(dsn, n))
        res.lat["enqueue_raw"].runs.append(latency.raw_enqueue_to_start(dsn, n))
        step, raw = latency.step_checkpoint(dsn, n)
        res.lat["step"].runs.append(step)
        res.lat["step_raw"].runs.append(raw)
        res.lat["wakeup"].runs.append(latency.wakeup(dsn, n))
        res.lat["wakeup_raw"].runs.append(latency.raw_wakeup(dsn, n))
        res.lat["recv"].runs.append(latency.recv_wakeup(dsn, n))
        res.lat["event"].runs.append(latency.event_wakeup(dsn, n))
        if py_ok:
            try:
                to_start, to_result = latency.python_client(dsn, n)
                res.lat["py_start"].runs.append(to_start)
                res.lat["py_result"].runs.append(to_result)
                res.lat["py_message"].runs.append(latency.python_messages(dsn, n))
            except Exception as exc:
                py_ok = False
                res.lat_note = f"Python rows not measured: {str(exc).strip()[:300]}"
        b.log(f"  rep {rep + 1}: " + ", ".join(
            f"{key} p50 {latency.percentile(v.runs[-1], 50):.2f} ms"
            for key, v in res.lat.items() if len(v.runs) > rep))


def fill_history(b: Bench, db: str, rows: int, steps: int) -> None:
    """``rows`` ended (succeeded) workflows with ``steps`` steps each, random UUID
    ids as start_workflow makes, ended over the last 30 days."""
    chunk = 250_000
    with b.connect(db) as conn:
        done = 0
        while done < rows:
            n = min(chunk, rows - done)
            conn.execute(
                """
                with w as (
                  insert into ratchet.workflows as w
                    (workflow_id, name, queue, status, input, output, attempts, start_at,
                     created_at, started_at, ended_at, updated_at)
                  select gen_random_uuid()::text, 'bench', %(queue)s, 'succeeded',
                         '{"args": [3]}', '{"k": 3}', 1, t.at, t.at, t.at,
                         t.at + interval '20 ms', t.at + interval '20 ms'
                    from (select now() - interval '30 days' * random() as at
                            from generate_series(1, %(n)s)) t
                  returning w.workflow_id, w.created_at
                )
                insert into ratchet.steps (workflow_id, step_id, name, output, run_id, recorded_at)
                select w.workflow_id, s, 'bench_step', jsonb_build_object('i', s), 1,
                       w.created_at + interval '5 ms'
                  from w, generate_series(0, %(steps)s - 1) s
                """, {"queue": QUEUE, "n": n, "steps": steps})
            done += n


def section_history(b: Bench, cfg: Config, res: Results) -> None:
    """5a: SQL-API throughput with 0 vs many ended workflows in the tables."""
    b.create_db("hist_empty", prefill=cfg.prefill)
    b.create_db("hist_full", prefill=cfg.prefill)
    t = time.monotonic()
    fill_history(b, "hist_full", cfg.history_rows, cfg.history_steps)
    b.warm("hist_empty")
    b.warm("hist_full")
    b.log(f"  {cfg.history_rows:,} ended workflows inserted in {time.monotonic() - t:.0f} s")
    res.history = {"hist_empty": Figure(), "hist_full": Figure()}
    text = script("ratchet", cfg.history_k)
    for rep in range(cfg.reps):
        dbs = ["hist_empty", "hist_full"] if rep % 2 == 0 else ["hist_full", "hist_empty"]
        for db in dbs:
            b.settle(db)
            tps = b.pgbench(db, text, cfg.history_clients, cfg.seconds)
            res.history[db].values.append(tps)
            b.log(f"  rep {rep + 1} {db:10} {tps:8.0f} workflows/s")
        res.history_ratio.values.append(
            res.history["hist_full"].values[-1] / res.history["hist_empty"].values[-1])
    # Retention: the default 7 days for succeeded ones, run to completion as
    # workers would (batches until one comes back short), then the same runs.
    t = time.monotonic()
    deleted, calls = 0, 0
    with b.connect("hist_full") as conn:
        while True:
            row = conn.execute("select workflows from ratchet.maintain(max_rows => 5000)"
                               ).fetchone()
            n = int(row[0]) if row else 0
            deleted, calls = deleted + n, calls + 1
            if n < 5000:
                break
    left = b.rows("hist_full", "select count(*) from ratchet.workflows")[0][0]
    res.history_retention_note = (
        f"retention deleted {deleted:,} workflows in {calls} maintain() batches "
        f"({time.monotonic() - t:.0f} s); {left:,} rows left")
    b.log("  " + res.history_retention_note)
    for rep in range(cfg.reps):
        b.settle("hist_full")
        tps = b.pgbench("hist_full", text, cfg.history_clients, cfg.seconds)
        res.history_retained.values.append(tps)
        b.settle("hist_empty")
        ref = b.pgbench("hist_empty", text, cfg.history_clients, cfg.seconds)
        res.history_retained_ratio.values.append(tps / ref)
        b.log(f"  rep {rep + 1} after retention {tps:8.0f} vs empty {ref:8.0f} workflows/s")
    res.history_sizes = {row[0]: row[1] for row in b.rows("hist_full", """
        select 'ratchet tables and indexes',
               pg_size_pretty(pg_total_relation_size('ratchet.workflows')
                              + pg_total_relation_size('ratchet.steps'))
        union all select 'shared_buffers', current_setting('shared_buffers')""")}


def section_claim(b: Bench, cfg: Config, res: Results) -> None:
    """5b: cost of one claim() with few vs many workflows waiting."""
    for depth in cfg.claim_depths:
        b.create_db(f"claim_{depth}", prefill=depth)
        res.claim[depth] = Latency()
    for rep in range(cfg.reps):
        depths = list(cfg.claim_depths)
        if rep % 2:
            depths.reverse()
        for depth in depths:
            db = f"claim_{depth}"
            b.settle(db)
            samples = latency.claim_cost(b.dsn(db), QUEUE, cfg.claim_samples)
            res.claim[depth].runs.append(samples)
            b.log(f"  rep {rep + 1} depth {depth:>7,}: claim p50 "
                  f"{latency.percentile(samples, 50):.3f} ms")


def section_notify(b: Bench, cfg: Config, res: Results) -> None:
    """What-if: the SQL-API path with ratchet.notify = off (no NOTIFY at commit)."""
    k, c = cfg.profile_k, cfg.profile_clients
    res.notify = {"on": Figure(), "off": Figure()}
    text = script("ratchet", k)
    try:
        for rep in range(cfg.reps):
            modes = ["on", "off"] if rep % 2 == 0 else ["off", "on"]
            for mode in modes:
                with b.connect("postgres") as conn:
                    if mode == "off":
                        conn.execute(f'alter database "{MAIN_DB}" set ratchet.notify = off')
                    else:
                        conn.execute(f'alter database "{MAIN_DB}" reset ratchet.notify')
                b.settle(MAIN_DB)
                tps = b.pgbench(MAIN_DB, text, c, cfg.seconds)
                res.notify[mode].values.append(tps)
                b.log(f"  rep {rep + 1} notify {mode:3} {tps:8.0f} workflows/s")
    finally:
        with b.connect("postgres") as conn:
            conn.execute(f'alter database "{MAIN_DB}" reset ratchet.notify')


def _sample_waits(b: Bench, stop: threading.Event, counts: Counter[str]) -> None:
    """Sample the wait events of the benchmark's active backends every few ms."""
    with b.connect(MAIN_DB) as conn:
        while not stop.is_set():
            for (event,) in conn.execute(
                    "select coalesce(wait_event_type || ': ' || wait_event, 'CPU (no wait)') "
                    "from pg_stat_activity where datname = %s and state = 'active' "
                    "and backend_type = 'client backend' and pid <> pg_backend_pid()",
                    (MAIN_DB,), prepare=True):
                counts[event] += 1
            time.sleep(0.003)


def _profiled_run(b: Bench, kind: str, k: int, c: int,
                  seconds: int) -> tuple[float, list[tuple[str, float]]]:
    b.settle(MAIN_DB)
    b.rows(MAIN_DB, "select pg_stat_statements_reset()")
    b.rows(MAIN_DB, "select pg_stat_reset()")
    counts: Counter[str] = Counter()
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_waits, args=(b, stop, counts), daemon=True)
    sampler.start()
    try:
        tps = b.pgbench(MAIN_DB, script(kind, k), c, seconds)
    finally:
        stop.set()
        sampler.join(timeout=10)
    total = sum(counts.values()) or 1
    return tps, [(e, n / total) for e, n in counts.most_common(8)]


_STATEMENTS = """
select calls, total_exec_time as total_ms, mean_exec_time as mean_ms, rows, plans,
       total_plan_time as plan_ms, regexp_replace(query, '\\s+', ' ', 'g') as query
  from pg_stat_statements
 where dbid = (select oid from pg_database where datname = current_database())
   and toplevel = %s and query not ilike '%%pg_stat%%' and query not ilike '%%vacuum%%'
   and query not ilike '%%checkpoint%%'
 order by total_exec_time + total_plan_time desc limit %s
"""


_FUNCTIONS = """
select f.schemaname || '.' || f.funcname as function, l.lanname as language, f.calls,
       f.total_time as total_ms, f.self_time as self_ms, p.proconfig is not null as has_set
  from pg_stat_user_functions f
  join pg_proc p on p.oid = f.funcid
  join pg_language l on l.oid = p.prolang
 where f.schemaname = 'ratchet'
 order by f.self_time desc
"""


def _statements(b: Bench, toplevel: bool, limit: int) -> list[dict[str, Any]]:
    with b.connect(MAIN_DB) as conn:
        cur = conn.cursor(row_factory=dict_row)
        return list(cur.execute(_STATEMENTS, (toplevel, limit)).fetchall())


def _auto_explain(b: Bench, k: int) -> str:
    """The plans of every statement inside one start, claim, K record_step and
    finish (auto_explain, nested statements, actual times)."""
    notices: list[str] = []
    with b.connect(MAIN_DB) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        for setting in ("load 'auto_explain'", "set auto_explain.log_min_duration = 0",
                        "set auto_explain.log_analyze = on", "set auto_explain.log_buffers = on",
                        "set auto_explain.log_timing = on",
                        "set auto_explain.log_nested_statements = on",
                        "set auto_explain.log_level = warning", "set client_min_messages = warning",
                        "set ratchet.notify = off"):
            conn.execute(setting)
        notices.clear()
        conn.execute("select ratchet.start_workflow('bench', '{}', queue => %s)", (QUEUE,))
        row = conn.execute("select workflow_id, run_id from ratchet.claim(array[%s], 'explain', 1)",
                           (QUEUE,)).fetchone()
        if row is None:
            return "(claim returned no row)"
        for i in range(k):
            conn.execute("select ratchet.record_step(%s, %s, %s, 'bench_step', '{}')",
                         (row[0], row[1], i))
        conn.execute("select ratchet.finish(%s, %s, '{}')", row)
    kept: list[str] = []
    seen: set[str] = set()
    for notice in notices:
        text = notice.strip()
        # Only statements that touch a table, each once (K record_steps look alike).
        if not re.search(r"Scan|Insert on|Update on|Delete on|LockRows", text):
            continue
        key = re.sub(r"'[^']*'|[0-9.]+", "#", text)
        if key in seen:
            continue
        seen.add(key)
        kept.append(text)
    return "\n\n".join(kept)


def section_profile(b: Bench, cfg: Config, res: Results) -> None:
    """6: where the time goes in the SQL-API path (and in the raw floor)."""
    k, c = cfg.profile_k, cfg.profile_clients
    with b.connect("postgres") as conn:
        conn.execute("alter system set pg_stat_statements.track = 'all'")
        conn.execute("alter system set pg_stat_statements.track_planning = on")
        conn.execute("alter system set track_functions = 'all'")
        conn.execute("select pg_reload_conf()")
    try:
        time.sleep(0.2)
        tps_raw, waits_raw = _profiled_run(b, "raw", k, c, cfg.profile_seconds)
        top_raw = _statements(b, True, 10)
        tps, waits = _profiled_run(b, "ratchet", k, c, cfg.profile_seconds)
        top = _statements(b, True, 10)
        nested = _statements(b, False, 80)
        with b.connect(MAIN_DB) as conn:
            cur = conn.cursor(row_factory=dict_row)
            functions = list(cur.execute(_FUNCTIONS).fetchall())
    finally:
        with b.connect("postgres") as conn:
            conn.execute("alter system reset pg_stat_statements.track")
            conn.execute("alter system reset pg_stat_statements.track_planning")
            conn.execute("alter system reset track_functions")
            conn.execute("select pg_reload_conf()")
    b.settle(MAIN_DB)
    plans = _auto_explain(b, k)
    res.profile = Profile(k, c, cfg.profile_seconds, tps, tps_raw, top, top_raw, nested,
                          functions, waits, waits_raw, plans)


# ---------------------------------------------------------------------- the report


def machine_info(b: Bench) -> dict[str, str]:
    def first(path: str, key: str) -> str:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        return "?"

    settings = b.rows("postgres", """
        select name, setting || coalesce(' ' || unit, '') from pg_settings
         where name in ('fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method',
                        'shared_buffers', 'max_wal_size', 'checkpoint_timeout', 'autovacuum',
                        'wal_level', 'max_connections', 'jit', 'shared_preload_libraries',
                        'pg_stat_statements.track')
         order by name""")
    pgbench = subprocess.run([str(b.pg.bindir / "pgbench"), "--version"], capture_output=True,
                             text=True, check=False).stdout.strip()
    mem_kb = first("/proc/meminfo", "MemTotal").split()[0]
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{os.cpu_count()} x {first('/proc/cpuinfo', 'model name')}",
        "memory": f"{int(mem_kb) / 1024 / 1024:.1f} GiB" if mem_kb.isdigit() else "?",
        "os": f"{platform.system()} {platform.release()}",
        "postgres": str(b.rows("postgres", "select version()")[0][0]),
        "pgbench": pgbench,
        "python": f"{platform.python_version()}, psycopg {psycopg.__version__}",
        "settings": ", ".join(f"{n}={v}" for n, v in settings),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _rate(f: Figure) -> str:
    return f"{f.median:,.0f}"


def _spread(f: Figure, fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(f.lo)}–{fmt.format(f.hi)}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "**MISS**"


def _ms(f: Figure) -> str:
    return f"{f.median:.2f} ({f.lo:.2f}–{f.hi:.2f})"


def _short(query: str, width: int = 110) -> str:
    query = query.replace("|", "\\|")
    return "`" + (query if len(query) <= width else query[: width - 1] + "…") + "`"


def render(res: Results, quick: bool) -> str:
    cfg = res.cfg
    m = res.machine
    out: list[str] = []
    w = out.append
    w("# Benchmarks")
    w("")
    w("Generated by `make bench` (`python3 bench/run.py --out docs/benchmarks.md`)"
      + (" **in --quick mode: tiny sizes, one run each; not meaningful figures**" if quick
         else "") + f" on {m['date']}. Every figure comes from this machine, in this run.")
    w("")
    w("## Machine and method")
    w("")
    w(f"- CPU: {m['cpu']}; memory {m['memory']}; {m['os']}; load average before the run "
      f"{m['load_before']}, after {m.get('load_after', '?')} (other jobs shared the machine)")
    w(f"- {m['postgres']}; {m['pgbench']}; Python {m['python']}")
    w(f"- Server: a throwaway cluster (`ratchet.testing.EmbeddedPostgres(fast=False)`) on "
      f"local disk, **durable commits**: {m['settings']}")
    w(f"- Every statement is its own transaction (autocommit): one commit and WAL flush each, "
      f"the way workers call Ratchet. pgbench runs with `-M prepared -n -j <clients>` on the "
      f"same {os.cpu_count()} cores as the server, so client CPU counts against both sides.")
    w(f"- Each figure ran {cfg.reps}× (pgbench `-T {cfg.seconds}`), each run next to a run of "
      "its baseline; tables show the median and the spread (min–max) of the runs, and ratios "
      "are the median of the per-pair ratios.")
    w("- Before every run: `VACUUM (ANALYZE)` of the tables and a `CHECKPOINT`, so every run "
      "starts from the same state (as if autovacuum had kept up); before the first, an "
      "untimed second of each script, so no table is empty when its plans are cached.")
    w("")
    total = sum(res.sections.values())
    w("Section durations: " + ", ".join(f"{k} {v:.0f} s" for k, v in res.sections.items())
      + f"; total {total:.0f} s.")
    w("")

    # 1 + 2
    w("## 1. Raw floor and 2. SQL-API path")
    w("")
    w("One workflow of K steps is 3 + K statements. **Raw floor**: 1 INSERT (start), 1 UPDATE "
      "(claim), K INSERTs (steps), 1 UPDATE (finish) on plain tables with only a primary key "
      "(`bench/pgbench/raw.sql`). **SQL API**: `start_workflow`, `claim(array['bench'], "
      "worker, 1)`, K × `record_step`, `finish` (`bench/pgbench/ratchet.sql`): the same "
      f"statements count, with the queue pre-filled with {cfg.prefill:,} due workflows (claim "
      "takes the oldest; the depth stays constant). Workflows per second:")
    w("")
    w("| K | clients | raw floor | spread | SQL API | spread | ratio | spread | target | |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for (k, c), floor in sorted(res.floor.items()):
        api, ratio = res.sqlapi[(k, c)], res.sqlapi_ratio[(k, c)]
        if not floor.values:
            continue
        w(f"| {k} | {c} | {_rate(floor)} | {_spread(floor)} | {_rate(api)} | {_spread(api)} | "
          f"{_pct(ratio.median)} | {_pct(ratio.lo)}–{_pct(ratio.hi)} | ≥ {_pct(TARGET_SQL_API)} "
          f"| {_verdict(ratio.median >= TARGET_SQL_API)} |")
    w("")
    w("The ratio is the median of the per-run ratios (each SQL-API run over the raw-floor run "
      "next to it), which cancels most of the drift of a shared machine.")
    w("")
    if res.notify:
        on, off = res.notify["on"], res.notify["off"]
        w(f"What-if, same path with `ratchet.notify = off` (no NOTIFY; workers would poll), "
          f"K={cfg.profile_k}, {cfg.profile_clients} clients: {_rate(off)} ({_spread(off)}) "
          f"vs {_rate(on)} ({_spread(on)}) workflows/s with notifications "
          f"({off.median / on.median - 1:+.0%}).")
        w("")

    # 3
    w("## 3. Python client")
    w("")
    if not res.python:
        w(f"Not measured: {res.python_note or 'not run'}")
    else:
        procs = ", ".join(str(p) for p in cfg.py_procs)
        w(f"`ratchet worker bench_app:app --queue bench --concurrency {cfg.py_concurrency}` in "
          f"{procs} processes, each set on its own database of the same server. A batch of N "
          "workflows of K trivial steps (`bench/bench_app.py`) is started in one "
          "`start_workflows` call while the workers idle; the rate is N / (last `ended_at` − "
          "start commit), on the database clock. N = "
          + ", ".join(f"{cfg.batch(k)} for K={k}" for k in cfg.py_ks) + ". Each batch runs "
          "next to a raw-floor run with as many pgbench clients as worker processes; the ratio "
          "is the median of those pairs. The bulk start is not in the Python figure (the raw "
          "floor pays one INSERT per workflow for it), which favours the Python side by about "
          "one statement in K + 3.")
        w("")
        w("| K | processes | raw floor | Python client | spread | ratio | spread | target | | "
          "vs SQL API |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        vs_api: list[float] = []
        for (k, p), fig in sorted(res.python.items()):
            ratio = res.python_ratio[(k, p)]
            vs_api.append(fig.median / res.sqlapi[(k, p)].median)
            w(f"| {k} | {p} | {_rate(res.floor[(k, p)])} | {_rate(fig)} | {_spread(fig)} | "
              f"{_pct(ratio.median)} | {_pct(ratio.lo)}–{_pct(ratio.hi)} | "
              f"≥ {_pct(TARGET_PYTHON)} | {_verdict(ratio.median >= TARGET_PYTHON)} | "
              f"{_pct(vs_api[-1])} |")
        w("")
        w(f"The last column is the Python client over the SQL-API path (section 2) at the same K "
          f"and as many processes as pgbench clients: {_pct(min(vs_api))}–{_pct(max(vs_api))}. "
          "The client makes the same calls (claim, record_step, finish) and is bounded by the "
          "same server-side cost "
          "(section 6), plus its own per-call overhead.")
    if res.python_note and res.python:
        w("")
        w(f"Note: {res.python_note}")
    w("")

    # 4
    w("## 4. Latencies")
    w("")
    w(f"{cfg.reps} runs × {cfg.lat_samples} samples, timed with `perf_counter` in one process "
      "(`bench/latency.py`); the waiting side is a second connection in a thread, idle in "
      "`LISTEN`. Each time includes the round trip (and commit) of the call that starts it. "
      "p50 and p99 in ms: median of the runs (min–max).")
    w("")
    w("| measurement | p50 ms | p99 ms | baseline | baseline p50 | baseline p99 | target | |")
    w("|---|---:|---:|---|---:|---:|---:|---|")
    pairs = [("enqueue", "enqueue_raw", TARGET_ENQUEUE_P50_MS), ("step", "step_raw", None),
             ("wakeup", "wakeup_raw", None), ("recv", "wakeup_raw", TARGET_WAKEUP_P50_MS),
             ("event", "wakeup_raw", TARGET_WAKEUP_P50_MS),
             ("py_start", "enqueue_raw", TARGET_ENQUEUE_P50_MS), ("py_result", None, None),
             ("py_message", None, 2 * TARGET_WAKEUP_P50_MS)]
    for key, base, target in pairs:
        lat = res.lat.get(key)
        if lat is None or not lat.runs:
            w(f"| {LATENCY_PROBES[key]} | not measured | | | | | | |")
            continue
        p50 = lat.pct(50)
        cells = [LATENCY_PROBES[key], _ms(p50), _ms(lat.pct(99))]
        if base and res.lat.get(base) and res.lat[base].runs:
            cells += [LATENCY_PROBES[base], _ms(res.lat[base].pct(50)),
                      _ms(res.lat[base].pct(99))]
        else:
            cells += ["", "", ""]
        if target is not None:
            cells += [f"p50 < {target:.0f} ms", _verdict(p50.median < target)]
        else:
            cells += ["", ""]
        w("| " + " | ".join(cells) + " |")
    if res.lat_note:
        w("")
        w(f"Note: {res.lat_note}")
    w("")
    step, raw = res.lat.get("step"), res.lat.get("step_raw")
    if step and raw and step.runs and raw.runs:
        over = step.pct(50).median - raw.pct(50).median
        w(f"Checkpoint overhead: a `record_step` costs {over:+.2f} ms at p50 over a plain "
          "single-row INSERT of the same data (both one committed transaction).")
        w("")

    # 5
    w("## 5. Scaling")
    w("")
    if res.history:
        empty, full = res.history["hist_empty"], res.history["hist_full"]
        hr = res.history_ratio
        w(f"SQL-API throughput (K={cfg.history_k}, {cfg.history_clients} clients, "
          f"{cfg.prefill:,} due in the queue) in two databases of the same server: one empty, "
          f"one holding {cfg.history_rows:,} ended (succeeded) workflows with "
          f"{cfg.history_steps} steps each (random UUID ids, as `start_workflow` makes), "
          "then `VACUUM ANALYZE`. Runs alternate between the two; the ratio is the median of "
          "the per-pair ratios.")
        w("")
        w("| history | workflows/s | spread | ratio | target | |")
        w("|---|---:|---:|---:|---:|---|")
        w(f"| 0 ended workflows | {_rate(empty)} | {_spread(empty)} | | | |")
        w(f"| {cfg.history_rows:,} ended workflows | {_rate(full)} | {_spread(full)} | "
          f"{_pct(hr.median)} ({_pct(hr.lo)}–{_pct(hr.hi)}) | ≥ {_pct(TARGET_HISTORY)} | "
          f"{_verdict(hr.median >= TARGET_HISTORY)} |")
        if res.history_retained.values:
            rr = res.history_retained_ratio
            w(f"| same, after retention | {_rate(res.history_retained)} | "
              f"{_spread(res.history_retained)} | {_pct(rr.median)} ({_pct(rr.lo)}–"
              f"{_pct(rr.hi)}) | ≥ {_pct(TARGET_HISTORY)} | "
              f"{_verdict(rr.median >= TARGET_HISTORY)} |")
            w("")
            w(f"After the runs above, {res.history_retention_note} (default retention: "
              "succeeded 7 days, history spread over 30 days); the ratio is against a run "
              "on the empty database right after each. What grew without bound before "
              "0.2.0, and what bounds it now: ended workflows with their steps, events and "
              "messages (maintain(), per-queue keep_<status>); consumed messages of "
              "long-lived workflows (deleted keep_succeeded after consumption); "
              "rate-limit rows of queues nobody claims from or whose limit was removed "
              "(maintain() trims them). Schedules and queues are bounded by what users "
              "create.")
        w("")
        if res.history_sizes:
            w(f"With the history, Ratchet's tables and indexes take "
              f"{res.history_sizes.get('ratchet tables and indexes', '?')} against "
              f"shared_buffers = {res.history_sizes.get('shared_buffers', '?')}: claim and "
              "the checkpoints only touch the live rows through partial indexes, but every "
              "start inserts a random UUID into the primary key of a table that no longer "
              "fits in shared buffers, and the steps primary key grows likewise, so some "
              "of those page reads come from the OS cache. Retention (`ratchet.maintain()`, "
              "run by workers every minute) keeps the history bounded.")
            w("")
    if res.claim:
        w(f"Cost of one `claim(array['bench'], worker, 1)` round trip with N workflows due in "
          f"the queue ({cfg.claim_samples} claims per run, {cfg.reps} runs; each claimed "
          "workflow is finished and replaced, untimed, so the depth stays constant; the "
          "database was vacuumed and analyzed after the queue was filled):")
        w("")
        w("| waiting | p50 ms | p99 ms | p50 vs smallest |")
        w("|---:|---:|---:|---:|")
        depths = sorted(res.claim)
        base50 = res.claim[depths[0]].pct(50).median
        for depth in depths:
            lat = res.claim[depth]
            w(f"| {depth:,} | {_ms(lat.pct(50))} | {_ms(lat.pct(99))} | "
              f"{lat.pct(50).median / base50:.2f}× |")
        w("")

    # 6
    w("## 6. Profile and what bounds the SQL-API path")
    w("")
    w(_explanation(res))
    return "\n".join(out).rstrip() + "\n"


def _explanation(res: Results) -> str:
    p = res.profile
    if p is None:
        return "(not profiled)\n"
    out: list[str] = []
    w = out.append
    misses = [f"K={k}/{c}c {_pct(r.median)}"
              for (k, c), r in sorted(res.sqlapi_ratio.items())
              if r.values and r.median < TARGET_SQL_API]
    if misses:
        w("The SQL-API target (≥ 80% of the raw floor) is missed: " + ", ".join(misses) + ".")
    else:
        w("The SQL-API path meets its target everywhere.")
    w("")
    workflows = p.ratchet_tps * p.seconds or 1.0
    raw_workflows = p.raw_tps * p.seconds or 1.0

    def total(rows: list[dict[str, Any]], key: str) -> float:
        return sum(float(r[key] or 0) for r in rows)

    api_ms = total(p.top_ratchet, "total_ms") / workflows
    raw_ms = total(p.top_raw, "total_ms") / raw_workflows
    replanned = [r for r in p.nested if int(r["calls"]) >= 100
                 and int(r["plans"] or 0) >= 0.9 * int(r["calls"])]
    plan_ms = sum(float(r["plan_ms"] or 0) for r in replanned) / workflows
    set_calls = sum(int(r["calls"]) for r in p.functions if r["has_set"]) / workflows
    cpu = dict(p.waits_ratchet).get("CPU (no wait)", 0.0)
    cpu_raw = dict(p.waits_raw).get("CPU (no wait)", 0.0)
    notify_lock = dict(p.waits_ratchet).get("Lock: object", 0.0)
    w(f"Profiled run: K={p.k}, {p.clients} clients, {p.seconds} s, with "
      "`pg_stat_statements.track = all`, `track_planning = on` and `track_functions = all` "
      f"(they slow both sides down): SQL API {p.ratchet_tps:,.0f} vs raw {p.raw_tps:,.0f} "
      "workflows/s. What it shows:")
    w("")
    w(f"- **Server CPU per workflow bounds the SQL-API path.** Execution time of the top-level "
      f"statements (no commit, no network): **{api_ms:.2f} ms per workflow vs {raw_ms:.2f} ms** "
      f"for the raw floor ({api_ms / raw_ms:.0f}×), for the same {p.k + 3} commits. The "
      f"backends of the SQL-API run were on CPU in {_pct(cpu)} of the samples (raw floor: "
      f"{_pct(cpu_raw)}).")
    if replanned:
        names = "; ".join(
            f"{_short(str(r['query']), 70)} {1000 * float(r['plan_ms']) / int(r['calls']):.0f} µs"
            for r in sorted(replanned, key=lambda r: -float(r["plan_ms"] or 0))[:4])
        w(f"- **Re-planning.** {len(replanned)} statements inside the functions are planned "
          f"again on every call (custom plans, or non-inlined SQL functions), {plan_ms:.2f} ms "
          f"of planning per workflow; the costliest per call: {names}.")
    if set_calls:
        w(f"- **Function calls.** {set_calls:.0f} calls per workflow go to functions with a "
          "`SET` clause: every Ratchet function pins `search_path` (a security rule we keep), "
          "so each call saves, sets and restores it and the namespace path is recomputed. "
          "Measured with pgbench while profiling: a nested call of such a function costs "
          "about 19 µs here, against 4 µs for the same function without the clause, and a "
          "SQL-language function with one is parsed and planned again in every transaction.")
    w("- **What was done about it** (each step measured with pgbench, same server, "
      "same run): the hot functions validate their arguments inline and call the "
      "`_check_*` helpers only to raise the precise error; `ratchet.now()` and "
      "`_wake_queue` became PL/pgSQL; start_workflow, claim, record_step and finish run "
      "with `plan_cache_mode = force_generic_plan` (their statements are index lookups; "
      "custom plans were re-planned on every call). Together 1.2–1.4× the throughput "
      "of the first version. What remains is the per-call cost of PL/pgSQL itself "
      "(executor start-up per statement, expression set-up per transaction) against a "
      "bare INSERT: a checkpoint is one function call that locks and checks the run "
      "(fencing) and inserts the step, and that check is the product.")
    if notify_lock >= 0.02:
        w(f"- **NOTIFY.** {_pct(notify_lock)} of the samples wait on `Lock: object`: the lock "
          "PostgreSQL takes at commit for a transaction that sent a NOTIFY, held while its WAL "
          "is flushed, so notifying commits (start_workflow, finish) do not group-commit.")
    w("")
    w("Top-level statements:")
    w("")
    w("| side | statement | calls | mean ms | total ms | share |")
    w("|---|---|---:|---:|---:|---:|")
    for side, rows in (("SQL API", p.top_ratchet), ("raw", p.top_raw)):
        tot = total(rows, "total_ms") or 1.0
        for r in rows[:6]:
            w(f"| {side} | {_short(str(r['query']), 90)} | {r['calls']:,} | "
              f"{float(r['mean_ms']):.3f} | {float(r['total_ms']):,.0f} | "
              f"{_pct(float(r['total_ms']) / tot)} |")
    w("")
    w("Statements inside the functions (`toplevel = false`), by execution + planning time:")
    w("")
    w("| statement | calls | exec mean ms | exec total ms | plans | plan total ms |")
    w("|---|---:|---:|---:|---:|---:|")
    for r in p.nested[:15]:
        w(f"| {_short(str(r['query']))} | {r['calls']:,} | {float(r['mean_ms']):.3f} | "
          f"{float(r['total_ms']):,.0f} | {int(r['plans'] or 0):,} | "
          f"{float(r['plan_ms'] or 0):,.0f} |")
    w("")
    if p.functions:
        w("Functions by self time (`pg_stat_user_functions`; SQL functions appear only when "
          "they are not inlined):")
        w("")
        w("| function | language | SET clause | calls | calls/workflow | self ms | self µs/call |")
        w("|---|---|---|---:|---:|---:|---:|")
        for r in p.functions[:14]:
            calls = int(r["calls"]) or 1
            w(f"| `{r['function']}` | {r['language']} | {'yes' if r['has_set'] else 'no'} | "
              f"{r['calls']:,} | {calls / workflows:.1f} | {float(r['self_ms']):,.0f} | "
              f"{1000 * float(r['self_ms']) / calls:.1f} |")
        w("")
    w("Where the backends spent their time (share of `pg_stat_activity` samples of the active "
      "backends, every ~3 ms):")
    w("")
    w("| SQL API | share | raw floor | share |")
    w("|---|---:|---|---:|")
    for i in range(max(len(p.waits_ratchet), len(p.waits_raw))):
        a = p.waits_ratchet[i] if i < len(p.waits_ratchet) else ("", 0.0)
        z = p.waits_raw[i] if i < len(p.waits_raw) else ("", 0.0)
        w(f"| {a[0]} | {_pct(a[1]) if a[0] else ''} | {z[0]} | {_pct(z[1]) if z[0] else ''} |")
    w("")
    w("<details><summary>Plans of the statements that touch a table inside one "
      f"start_workflow, claim, {p.k} × record_step and finish (auto_explain, nested, actual "
      "times)</summary>")
    w("")
    w("```text")
    w(p.plans.strip() or "(none captured)")
    w("```")
    w("")
    w("</details>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- main


#: sections of the report written by hand from other runs (the chaos figures of
#: `make chaos`) start at this line; a new report keeps them as they are
KEPT_MARKER = "<!-- kept by bench/run.py: sections below are not generated by it -->"


def kept_sections(path: Path) -> str:
    """The hand-written tail of an existing report (from KEPT_MARKER), or ""."""
    if not path.exists():
        return ""
    text = path.read_text()
    at = text.find(KEPT_MARKER)
    return "" if at < 0 else "\n" + text[at:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                        help="the Markdown report to write (default docs/benchmarks.md)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and one run each: a smoke test (< 1 minute)")
    parser.add_argument("--reps", type=int, default=None, help="runs per figure")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the raw figures as JSON here")
    parser.add_argument("--only", default=None,
                        help="comma-separated sections to run: throughput,latency,"
                             "history,claim,notify,profile (default: all)")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.reps:
        cfg = replace(cfg, reps=args.reps)
    if not PLAIN_SCRIPT.exists():
        parser.error(f"{PLAIN_SCRIPT} is missing: run `make sql` first")
    sections: list[tuple[str, Callable[[Bench, Config, Results], None]]] = [
        ("throughput", section_throughput), ("latency", section_latency),
        ("history", section_history), ("claim", section_claim), ("notify", section_notify),
        ("profile", section_profile)]
    if args.only:
        wanted = set(args.only.split(","))
        sections = [s for s in sections if s[0] in wanted]

    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    res = Results(cfg)
    # shared_buffers sized for the working set of the history section (1M
    # ended workflows take about 1 GB with their steps); the default 128 MB
    # would measure the OS page cache instead.
    conf = {"shared_buffers": "1GB", "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "none", "pg_stat_statements.max": 2000}
    with tempfile.TemporaryDirectory(prefix="ratchet-bench-") as tmp, \
            EmbeddedPostgres(fast=False, extra_conf=conf) as pg:
        b = Bench(pg, Path(tmp), log)
        res.machine = machine_info(b)
        b.create_db(MAIN_DB, prefill=cfg.prefill)
        log(f"server up on port {pg.port}; {'quick' if args.quick else 'full'} run")
        for name, fn in sections:
            t = time.monotonic()
            log(f"{name} ...")
            fn(b, cfg, res)
            res.sections[name] = time.monotonic() - t
        res.machine["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report = render(res, args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report += kept_sections(args.out)
    args.out.write_text(report)
    if args.json:
        args.json.write_text(json.dumps(_as_json(res), indent=1))
    log(f"wrote {args.out}")
    return 0


def _as_json(res: Results) -> dict[str, Any]:
    def figs(d: dict[Any, Figure]) -> dict[str, list[float]]:
        return {str(k): f.values for k, f in d.items()}

    return {
        "machine": res.machine, "floor": figs(res.floor), "sqlapi": figs(res.sqlapi),
        "sqlapi_ratio": figs(res.sqlapi_ratio), "python": figs(res.python),
        "python_ratio": figs(res.python_ratio), "python_note": res.python_note,
        "latency_ms": {k: {"p50": v.pct(50).values, "p99": v.pct(99).values}
                       for k, v in res.lat.items()},
        "history": figs(res.history), "history_ratio": res.history_ratio.values,
        "notify": figs(res.notify),
        "claim_ms": {str(k): {"p50": v.pct(50).values, "p99": v.pct(99).values}
                     for k, v in res.claim.items()},
        "sections_s": res.sections,
    }


if __name__ == "__main__":
    sys.exit(main())
