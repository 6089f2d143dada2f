"""Ratchet next to its peers: the same job-queue workload on the same server.

``make bench-peers`` runs ``bench/peers/run.py --out docs/benchmarks.md``: one
throwaway PostgreSQL server (``ratchet.testing.EmbeddedPostgres``, fsync and
synchronous_commit on), one database per tool, and for each tool, each worker
count (1, 4, 16) and each of ``--reps`` short runs, interleaved:

- *jobs*: N no-op jobs are enqueued in bulk (untimed), then one worker process
  of W concurrent workers is started and drains them; throughput is
  N / (last completion - first start), both read from the tool's own tables
  (database clock), so process start-up and enqueue cost are not in it;
- *wf3* (Ratchet and DBOS): the same with workflows of three checkpointed
  steps;
- *latency*: with the worker idle, jobs are enqueued one at a time 20 ms apart;
  enqueue-to-start is the tool's own start time minus its own enqueue time;
- commits and statements per job: ``xact_commit`` (pg_stat_database) and
  ``calls`` (pg_stat_statements, top level) during the drain, divided by N
  (the driver's own polling is subtracted).

Tools: Ratchet through the Python client (``ratchet worker``) and through the
SQL API (pgbench, one call per statement), pg-boss (npm, ``pgboss/``),
procrastinate and DBOS Transact (pip, ``requirements.txt``). A tool that is not
installed is reported as such, never estimated. The report replaces the part
of ``--out`` between the ``<!-- peers:begin -->`` and ``<!-- peers:end -->``
markers (appended if absent).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

PEERS_DIR = Path(__file__).resolve().parent
BENCH_DIR = PEERS_DIR.parent
ROOT = BENCH_DIR.parent
CLIENT_DIR = ROOT / "python_client"
PLAIN_SCRIPT = CLIENT_DIR / "ratchet" / "_sql" / "ratchet.sql"
PGBOSS_DIR = PEERS_DIR / "pgboss"
sys.path.insert(0, str(CLIENT_DIR))

from ratchet.testing import EmbeddedPostgres  # noqa: E402

BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
KINDS = {"jobs": 0, "wf3": 3}           # workload -> checkpointed steps per workflow
#: fewest commits a fenced one-at-a-time worker can make per workflow: the claim,
#: one per step checkpoint, the completion (enqueue is batched, outside the drain)
MIN_COMMITS = {"jobs": 2, "wf3": 5}
LAT_GAP_MS = 20


@dataclass(frozen=True)
class Config:
    workers: tuple[int, ...] = (1, 4, 16)
    reps: int = 3
    jobs: int = 1500
    wf3: int = 600
    lat_samples: int = 30

    def n(self, kind: str) -> int:
        return self.jobs if kind == "jobs" else self.wf3


FULL = Config()
QUICK = Config(workers=(1, 4), reps=1, jobs=80, wf3=40, lat_samples=5)


@dataclass
class Cell:
    """One (tool, workload, workers) figure over several runs."""

    rates: list[float] = field(default_factory=list)
    commits: list[float] = field(default_factory=list)
    statements: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pctl(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


# ---------------------------------------------------------------------- server


class Server:
    def __init__(self, pg: EmbeddedPostgres, workdir: Path, log: Callable[[str], None]) -> None:
        self.pg = pg
        self.workdir = workdir
        self.log = log

    def dsn(self, db: str) -> str:
        return self.pg.dsn(db)

    def url(self, db: str) -> str:
        return f"postgresql://{self.pg.user}@{self.pg.host}:{self.pg.port}/{db}"

    @contextlib.contextmanager
    def connect(self, db: str) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.dsn(db), autocommit=True) as conn:
            yield conn

    def one(self, db: str, query: str, params: Sequence[Any] | None = None) -> Any:
        with self.connect(db) as conn:
            return conn.execute(query, params).fetchone()

    def create_db(self, name: str) -> None:
        with self.connect("postgres") as conn:
            conn.execute(f'create database "{name}"')

    def counters(self, db: str) -> tuple[int, int]:
        """(xact_commit, top-level statement calls) of ``db`` so far."""
        with self.connect("postgres") as conn:
            conn.execute("select pg_stat_force_next_flush()")
            conn.execute("select pg_stat_clear_snapshot()")
            commits = conn.execute("select xact_commit from pg_stat_database where datname = %s",
                                   (db,)).fetchone()[0]  # type: ignore[index]
            calls = conn.execute(
                "select coalesce(sum(calls), 0) from pg_stat_statements s "
                "join pg_database d on d.oid = s.dbid where d.datname = %s and s.toplevel",
                (db,)).fetchone()[0]  # type: ignore[index]
        return int(commits), int(calls)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(CLIENT_DIR), str(BENCH_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 300,
         cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                          check=False, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    return proc.stdout


# ---------------------------------------------------------------------- tools


class Tool:
    """One tool under test, with its own database ``self.db``."""

    name = ""
    kinds: tuple[str, ...] = ("jobs",)
    latency = True
    #: query returning (succeeded count, first start epoch s, last end epoch s)
    timings_sql = ""
    #: query returning the enqueue-to-start latencies (ms) of succeeded jobs, oldest first
    latency_sql = ""

    def __init__(self, s: Server) -> None:
        self.s = s
        self.db = "peer_" + re.sub(r"\W", "_", self.name)
        self.version = ""

    def problem(self) -> str | None:
        return None

    def setup(self) -> None:
        pass

    def reset(self) -> None:
        pass

    def prefill(self, kind: str, n: int) -> None:
        raise NotImplementedError

    def trickle(self, kind: str, n: int, gap_ms: int) -> None:
        raise NotImplementedError

    def worker_cmd(self, kind: str, workers: int) -> tuple[list[str], dict[str, str], Path]:
        raise NotImplementedError

    def peer_env(self) -> dict[str, str]:
        env = _env()
        env["PEERS_DSN"] = self.s.url(self.db)
        return env

    @contextlib.contextmanager
    def worker(self, kind: str, workers: int) -> Iterator[subprocess.Popen[bytes]]:
        cmd, env, cwd = self.worker_cmd(kind, workers)
        log = self.s.workdir / f"{self.db}-{kind}-{workers}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        self._log = log
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def wait_done(self, n: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> int:
        """Poll until ``n`` jobs succeeded; returns the number of polls."""
        polls = 0
        deadline = time.monotonic() + timeout
        with self.s.connect(self.db) as conn:
            while True:
                polls += 1
                done = conn.execute(self.timings_sql).fetchone()[0]  # type: ignore[index]
                if done >= n:
                    return polls
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{self.name} worker exited ({proc.returncode}):\n"
                                       + self._log.read_text(errors="replace")[-1500:])
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: {done} of {n} done after {timeout:.0f} s")
                time.sleep(0.05)

    def drain(self, kind: str, workers: int, n: int) -> tuple[float, float, float]:
        """(jobs/s, commits per job, statements per job) of one run."""
        self.reset()
        self.prefill(kind, n)
        c0, q0 = self.s.counters(self.db)
        with self.worker(kind, workers) as proc:
            polls = self.wait_done(n, proc, timeout=120 + n / 5)
        c1, q1 = self.s.counters(self.db)
        # each poll is one statement and one commit; so is the counters() pair
        _, start, end = self.s.one(self.db, self.timings_sql)
        rate = n / max(float(end) - float(start), 1e-6)
        return rate, (c1 - c0 - polls) / n, (q1 - q0 - polls) / n

    def latencies(self, workers: int, samples: int) -> list[float]:
        self.reset()
        with self.worker("jobs", workers) as proc:
            self.trickle("jobs", 1, 0)           # the worker is up once this one ran
            self.wait_done(1, proc, timeout=120)
            self.trickle("jobs", samples, LAT_GAP_MS)
            self.wait_done(samples + 1, proc, timeout=120)
        with self.s.connect(self.db) as conn:
            rows = conn.execute(self.latency_sql).fetchall()
        return [float(r[0]) for r in rows[1:]]


class RatchetPy(Tool):
    name = "Ratchet (Python client)"
    kinds = ("jobs", "wf3")
    timings_sql = ("select count(*), extract(epoch from min(started_at)), "
                   "extract(epoch from max(ended_at)) from ratchet.workflows "
                   "where status = 'succeeded'")
    latency_sql = ("select extract(epoch from started_at - created_at) * 1000 "
                   "from ratchet.workflows where status = 'succeeded' order by created_at")

    def problem(self) -> str | None:
        return None if PLAIN_SCRIPT.exists() else f"{PLAIN_SCRIPT} missing: run `make sql`"

    def setup(self) -> None:
        from ratchet import __version__
        self.version = __version__
        self.s.create_db(self.db)
        with self.s.connect(self.db) as conn:
            conn.execute(PLAIN_SCRIPT.read_text())
            conn.execute("select ratchet.create_queue('bench')")

    def reset(self) -> None:
        with self.s.connect(self.db) as conn:
            conn.execute("truncate ratchet.workflows cascade")
            conn.execute("vacuum analyze")

    def prefill(self, kind: str, n: int) -> None:
        with self.s.connect(self.db) as conn:
            conn.execute("set ratchet.notify = off")
            conn.execute("select ratchet.start_workflows('bench', array(select %s::jsonb "
                         "from generate_series(1, %s)), 'bench')",
                         (json.dumps({"args": [KINDS[kind]]}), n))

    def trickle(self, kind: str, n: int, gap_ms: int) -> None:
        with self.s.connect(self.db) as conn:
            for _ in range(n):
                conn.execute("select ratchet.start_workflow('bench', %s, queue => 'bench')",
                             (json.dumps({"args": [KINDS[kind]]}),))
                time.sleep(gap_ms / 1000)

    def worker_cmd(self, kind: str, workers: int) -> tuple[list[str], dict[str, str], Path]:
        return ([sys.executable, "-m", "ratchet", "worker", "bench_app:app",
                 "--dsn", self.s.dsn(self.db), "--queue", "bench",
                 "--concurrency", str(workers), "--log-level", "warning"], _env(), BENCH_DIR)


class RatchetSql(RatchetPy):
    """The SQL API driven by pgbench: W clients, each ``claim`` then K
    ``record_step`` then ``finish``, one call per statement (autocommit)."""

    name = "Ratchet (SQL API, pgbench)"
    latency = False

    def setup(self) -> None:
        super().setup()
        self.db_ok = True

    def drain(self, kind: str, workers: int, n: int) -> tuple[float, float, float]:
        self.reset()
        self.prefill(kind, n)
        k = KINDS[kind]
        lines = ["select workflow_id, run_id from ratchet.claim(array['bench'], "
                 "'pgbench-' || :client_id, 1) \\gset"]
        lines += [f"select ratchet.record_step(:workflow_id, :run_id, {i}, 'bench_step', "
                  f"'{{\"i\": {i}}}');" for i in range(k)]
        lines.append(f"select ratchet.finish(:workflow_id, :run_id, '{{\"k\": {k}}}');")
        path = self.s.workdir / f"sql-{kind}.sql"
        path.write_text("\n".join(lines) + "\n")
        pg = self.s.pg
        c0, q0 = self.s.counters(self.db)
        env = {key: v for key, v in os.environ.items() if not key.startswith("PG")}
        _run([str(pg.bindir / "pgbench"), "-n", "-M", "prepared", "-t", str(n // workers),
              "-c", str(workers), "-j", str(min(workers, 4)), "-f", str(path),
              "-h", pg.host, "-p", str(pg.port), "-U", pg.user, self.db], env=env)
        c1, q1 = self.s.counters(self.db)
        done, start, end = self.s.one(self.db, self.timings_sql)
        if done != n // workers * workers:
            raise RuntimeError(f"pgbench finished {done} of {n} workflows")
        return done / max(float(end) - float(start), 1e-6), (c1 - c0) / done, (q1 - q0) / done


class PgBoss(Tool):
    name = "pg-boss"
    timings_sql = ("select count(*), extract(epoch from min(started_on)), "
                   "extract(epoch from max(completed_on)) from pgboss.job "
                   "where name = 'bench' and state = 'completed'")
    latency_sql = ("select extract(epoch from started_on - created_on) * 1000 from pgboss.job "
                   "where name = 'bench' and state = 'completed' order by created_on")

    def problem(self) -> str | None:
        if shutil.which("node") is None:
            return "node is not installed"
        pkg = PGBOSS_DIR / "node_modules" / "pg-boss" / "package.json"
        if not pkg.exists():
            return "bench/peers/pgboss/node_modules missing (`npm ci` there failed or was skipped)"
        self.version = json.loads(pkg.read_text())["version"]
        return None

    def node(self, *args: str) -> None:
        _run(["node", "bench.mjs", args[0], self.s.url(self.db), *args[1:]], cwd=PGBOSS_DIR)

    def setup(self) -> None:
        self.s.create_db(self.db)
        self.node("setup")

    def reset(self) -> None:
        with self.s.connect(self.db) as conn:
            conn.execute("delete from pgboss.job")
            conn.execute("delete from pgboss.archive")
            conn.execute("vacuum analyze")

    def prefill(self, kind: str, n: int) -> None:
        self.node("prefill", str(n))

    def trickle(self, kind: str, n: int, gap_ms: int) -> None:
        self.node("trickle", str(n), str(gap_ms))

    def worker_cmd(self, kind: str, workers: int) -> tuple[list[str], dict[str, str], Path]:
        return (["node", "bench.mjs", "worker", self.s.url(self.db), str(workers)],
                dict(os.environ), PGBOSS_DIR)


class Procrastinate(Tool):
    name = "procrastinate"
    timings_sql = ("select (select count(*) from procrastinate_jobs where status = 'succeeded'),"
                   " extract(epoch from min(at) filter (where type = 'started')),"
                   " extract(epoch from max(at) filter (where type = 'succeeded'))"
                   " from procrastinate_events")
    latency_sql = ("select extract(epoch from s.at - d.at) * 1000 from procrastinate_events d "
                   "join procrastinate_events s on s.job_id = d.job_id and s.type = 'started' "
                   "where d.type = 'deferred' order by d.at")

    def problem(self) -> str | None:
        try:
            self.version = importlib.metadata.version("procrastinate")
        except importlib.metadata.PackageNotFoundError:
            return "not installed (pip install -r bench/peers/requirements.txt)"
        return None

    def py(self, *args: str) -> None:
        _run([sys.executable, str(PEERS_DIR / "procrastinate_app.py"), *args],
             env=self.peer_env(), cwd=PEERS_DIR)

    def setup(self) -> None:
        self.s.create_db(self.db)
        self.py("setup")

    def reset(self) -> None:
        with self.s.connect(self.db) as conn:
            conn.execute("truncate procrastinate_jobs, procrastinate_events cascade")
            conn.execute("vacuum analyze")

    def prefill(self, kind: str, n: int) -> None:
        self.py("prefill", str(n))

    def trickle(self, kind: str, n: int, gap_ms: int) -> None:
        self.py("trickle", str(n), str(gap_ms))

    def worker_cmd(self, kind: str, workers: int) -> tuple[list[str], dict[str, str], Path]:
        return ([sys.executable, str(PEERS_DIR / "procrastinate_app.py"), "worker",
                 str(workers)], self.peer_env(), PEERS_DIR)


class Dbos(Tool):
    name = "DBOS Transact"
    kinds = ("jobs", "wf3")
    timings_sql = ("select count(*), min(started_at_epoch_ms) / 1000.0, max(updated_at) / 1000.0 "
                   "from dbos.workflow_status where status = 'SUCCESS'")
    latency_sql = ("select started_at_epoch_ms - created_at from dbos.workflow_status "
                   "where status = 'SUCCESS' order by created_at")

    def problem(self) -> str | None:
        try:
            self.version = importlib.metadata.version("dbos")
        except importlib.metadata.PackageNotFoundError:
            return "not installed (pip install -r bench/peers/requirements.txt)"
        return None

    def py(self, *args: str) -> None:
        _run([sys.executable, str(PEERS_DIR / "dbos_app.py"), *args],
             env=self.peer_env(), cwd=PEERS_DIR)

    def setup(self) -> None:
        self.s.create_db(self.db)
        # the first launch creates DBOS's system schema
        with self.worker("jobs", 1) as proc:
            deadline = time.monotonic() + 120
            while "ready" not in self._log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the DBOS executor did not start:\n"
                                       + self._log.read_text(errors="replace")[-1500:])
                time.sleep(0.1)
            self.py("prefill", "job", "1")
            self.wait_done(1, proc, timeout=120)

    def reset(self) -> None:
        with self.s.connect(self.db) as conn:
            conn.execute("truncate dbos.workflow_status cascade")
            conn.execute("vacuum analyze")

    def prefill(self, kind: str, n: int) -> None:
        self.py("prefill", "job" if kind == "jobs" else kind, str(n))

    def trickle(self, kind: str, n: int, gap_ms: int) -> None:
        self.py("trickle", "job" if kind == "jobs" else kind, str(n), str(gap_ms))

    def worker_cmd(self, kind: str, workers: int) -> tuple[list[str], dict[str, str], Path]:
        return ([sys.executable, str(PEERS_DIR / "dbos_app.py"), "worker", str(workers)],
                self.peer_env(), PEERS_DIR)


TOOLS: dict[str, type[Tool]] = {"ratchet-py": RatchetPy, "ratchet-sql": RatchetSql,
                                "pg-boss": PgBoss, "procrastinate": Procrastinate, "dbos": Dbos}


# ---------------------------------------------------------------------- run


@dataclass
class Results:
    cfg: Config
    tools: list[Tool] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    cells: dict[tuple[str, str, int], Cell] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=dict)
    profile: list[tuple[str, int, float]] = field(default_factory=list)
    seconds: float = 0.0

    def cell(self, tool: str, kind: str, w: int) -> Cell:
        return self.cells.setdefault((tool, kind, w), Cell())


def run(s: Server, cfg: Config, names: Sequence[str], res: Results) -> None:
    for key in names:
        tool = TOOLS[key](s)
        problem = tool.problem()
        if problem is None:
            try:
                tool.setup()
            except Exception as exc:  # noqa: BLE001 - reported, not hidden
                problem = f"setup failed: {exc}"[:800]
        if problem:
            res.notes[tool.name] = problem
            s.log(f"  {tool.name}: NOT MEASURED: {problem}")
            continue
        res.tools.append(tool)
    for rep in range(cfg.reps):
        for w in cfg.workers:
            for tool in list(res.tools):
                for kind in tool.kinds:
                    try:
                        rate, commits, stmts = tool.drain(kind, w, cfg.n(kind))
                    except Exception as exc:  # noqa: BLE001
                        res.notes[tool.name] = f"run failed ({kind}, {w} workers): {exc}"[:800]
                        s.log(f"  {tool.name}: {res.notes[tool.name]}")
                        res.tools.remove(tool)
                        break
                    c = res.cell(tool.name, kind, w)
                    c.rates.append(rate)
                    c.commits.append(commits)
                    c.statements.append(stmts)
                    s.log(f"  rep {rep + 1} {tool.name} {kind} W={w}: {rate:,.0f}/s, "
                          f"{commits:.2f} commits, {stmts:.2f} statements per workflow")
    for w in cfg.workers:
        for tool in list(res.tools):
            if not tool.latency:
                continue
            try:
                lat = tool.latencies(w, cfg.lat_samples)
            except Exception as exc:  # noqa: BLE001
                res.notes[tool.name] = f"latency run failed ({w} workers): {exc}"[:800]
                continue
            res.cell(tool.name, "jobs", w).latency_ms = lat
            s.log(f"  latency {tool.name} W={w}: p50 {pctl(lat, 50):.1f} ms")


def profile(s: Server, cfg: Config, res: Results) -> None:
    """pg_stat_statements of one Ratchet Python-client drain (jobs, most workers)."""
    tool = next((t for t in res.tools if isinstance(t, RatchetPy)
                 and not isinstance(t, RatchetSql)), None)
    if tool is None:
        return
    with s.connect("postgres") as conn:
        conn.execute("select pg_stat_statements_reset()")
    w = max(cfg.workers)
    tool.drain("jobs", w, cfg.jobs)
    with s.connect("postgres") as conn:
        rows = conn.execute(
            "select query, calls, total_exec_time from pg_stat_statements s "
            "join pg_database d on d.oid = s.dbid where d.datname = %s and s.toplevel "
            "order by total_exec_time desc limit 8", (tool.db,)).fetchall()
    res.profile = [(q, int(c), float(t)) for q, c, t in rows]


def machine_info(s: Server) -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    node = "absent"
    if shutil.which("node"):
        node = subprocess.run(["node", "--version"], capture_output=True, text=True,
                              check=False).stdout.strip()
    server = s.one("postgres", "show server_version")[0]
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": sys.version.split()[0],
            "node": node, "postgres": server,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


# ---------------------------------------------------------------------- report


def _fmt_cell(c: Cell | None) -> str:
    if c is None or not c.rates:
        return "not measured"
    return f"{med(c.rates):,.0f} ({min(c.rates):,.0f}-{max(c.rates):,.0f})"


def render(res: Results, quick: bool) -> str:
    cfg = res.cfg
    out: list[str] = []
    w = out.append
    m = res.machine
    w(BEGIN)
    w("## Ratchet next to its peers (`make bench-peers`)")
    w("")
    if quick:
        w("**Quick run (`--quick`): tiny sizes, one run each; not figures to quote.**")
        w("")
    w(f"Measured {m.get('date')} on this machine: {m.get('cpu')}, {m.get('cores')} cores, "
      f"PostgreSQL {m.get('postgres')} (one throwaway server, fsync and synchronous_commit "
      f"on, one database per tool), Python {m.get('python')}, node {m.get('node')}; "
      f"the whole run took {res.seconds:.0f} s.")
    w("")
    w("Workload, the same for every tool: **jobs** = N no-op jobs enqueued in bulk (untimed), "
      "then one worker process running W concurrent workers drains them, one job per claim; "
      "**wf3** = workflows of three checkpointed steps (Ratchet, DBOS). Throughput = N / (last "
      "completion - first start), both from the tool's own tables, so worker start-up and "
      f"enqueue are outside it. N = {cfg.jobs:,} jobs, {cfg.wf3:,} wf3 workflows; "
      f"{cfg.reps} runs per figure, tools interleaved; median (min-max). Enqueue-to-start: "
      f"idle worker, {cfg.lat_samples} jobs enqueued one at a time {LAT_GAP_MS} ms apart, the "
      "tool's own start time minus its own enqueue time.")
    w("")
    w("| tool | version | how it runs |")
    w("|---|---|---|")
    how = {
        RatchetPy.name: "`ratchet worker bench_app:app --concurrency W` (threads), LISTEN/NOTIFY",
        RatchetSql.name: "pgbench, W clients: `claim` (+ `record_step` x3) + `finish`, "
                         "one call per statement; no worker process, no latency row",
        PgBoss.name: "node, W loops of `fetch()` (batchSize 1) + `complete()`, an empty fetch "
                     "waits 0.5 s (pg-boss 10 polls, no LISTEN; its `work()` waits the "
                     "interval between fetches)",
        Procrastinate.name: "`app.run_worker_async(concurrency=W)`, async no-op task, "
                            "LISTEN/NOTIFY",
        Dbos.name: "one executor, `register_queue(worker_concurrency=W, "
                   "polling_interval_sec=0.1)`, jobs = a workflow with no step; enqueued "
                   "with `DBOSClient`",
    }
    for t in res.tools:
        w(f"| {t.name} | {t.version} | {how.get(t.name, '')} |")
    for name, note in res.notes.items():
        if name not in {t.name for t in res.tools}:
            w(f"| {name} | - | **not measured: {note}** |")
    w("")
    for name, note in res.notes.items():
        if name in {t.name for t in res.tools}:
            w(f"- **{name}: {note}**")
    base = RatchetPy.name
    for kind in KINDS:
        tools = [t for t in res.tools if kind in t.kinds]
        if not tools:
            continue
        label = "jobs/s" if kind == "jobs" else "3-step workflows/s"
        w("")
        w(f"### {'Job queue' if kind == 'jobs' else '3-step workflows through a queue'}: "
          f"{label}, median (min-max), and ratio to {base}")
        w("")
        w("| tool | " + " | ".join(f"W={x}" for x in cfg.workers)
          + " | " + " | ".join(f"ratio W={x}" for x in cfg.workers) + " |")
        w("|---" * (1 + 2 * len(cfg.workers)) + "|")
        for t in tools:
            cells = [res.cells.get((t.name, kind, x)) for x in cfg.workers]
            ratios = []
            for x, c in zip(cfg.workers, cells, strict=True):
                b = res.cells.get((base, kind, x))
                if c and c.rates and b and b.rates:
                    ratios.append(f"{med(c.rates) / med(b.rates):.2f}x")
                else:
                    ratios.append("-")
            w(f"| {t.name} | " + " | ".join(_fmt_cell(c) for c in cells) + " | "
              + " | ".join(ratios) + " |")
        w("")
        w(f"Commits and statements (round trips) per {'job' if kind == 'jobs' else 'workflow'} "
          f"during the drain (median over runs and worker counts; pg_stat_database "
          f"`xact_commit`, pg_stat_statements top-level `calls`); minimum for a fenced worker "
          f"taking one at a time: {MIN_COMMITS[kind]} commits (claim, "
          f"{'' if kind == 'jobs' else '3 checkpoints, '}completion).")
        w("")
        w("| tool | commits | statements |")
        w("|---|---|---|")
        for t in tools:
            cs = [v for x in cfg.workers for v in res.cell(t.name, kind, x).commits]
            qs = [v for x in cfg.workers for v in res.cell(t.name, kind, x).statements]
            w(f"| {t.name} | {med(cs):.2f} | {med(qs):.2f} |")
    w("")
    w("### Enqueue-to-start latency (ms), p50 / p99, idle worker")
    w("")
    w("| tool | " + " | ".join(f"W={x}" for x in cfg.workers) + " |")
    w("|---" * (1 + len(cfg.workers)) + "|")
    for t in res.tools:
        if not t.latency:
            continue
        row = []
        for x in cfg.workers:
            lat = res.cell(t.name, "jobs", x).latency_ms
            row.append(f"{pctl(lat, 50):.1f} / {pctl(lat, 99):.1f}" if lat else "not measured")
        w(f"| {t.name} | " + " | ".join(row) + " |")
    w("")
    w("### What bounds the figures")
    w("")
    w("Every tool here makes each claim and each completion its own commit, and with "
      "synchronous_commit on each commit waits for its WAL flush. So commits per second, "
      "jobs/s x commits per job, is the figure to compare with the server's serial commit "
      "rate at W=1 (one commit in flight at a time); above that, concurrent commits share "
      "flushes (group commit) and the 2 CPU cores, which also run the workers, become the "
      "bound. Commits per second at each worker count, this run (jobs workload):")
    w("")
    w("| tool | " + " | ".join(f"W={x}" for x in cfg.workers) + " |")
    w("|---" * (1 + len(cfg.workers)) + "|")
    for t in res.tools:
        row = []
        for x in cfg.workers:
            c = res.cells.get((t.name, "jobs", x))
            row.append(f"{med(c.rates) * med(c.commits):,.0f}" if c and c.rates else "-")
        w(f"| {t.name} | " + " | ".join(row) + " |")
    if res.profile:
        total = sum(p[2] for p in res.profile) or 1.0
        w("")
        w(f"### Where Ratchet's time goes (pg_stat_statements, one Python-client jobs drain, "
          f"W={max(cfg.workers)})")
        w("")
        w("| statement | calls | total ms | share of top 8 |")
        w("|---|---|---|---|")
        for q, calls, t_ms in res.profile:
            short = " ".join(q.split())[:100].replace("|", "\\|")
            w(f"| `{short}` | {calls:,} | {t_ms:,.0f} | {t_ms / total:.0%} |")
    w("")
    w(END)
    return "\n".join(out) + "\n"


def write_report(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section.rstrip("\n") + tail
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run (smoke test)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=None, help="jobs per run")
    parser.add_argument("--wf3", type=int, default=None, help="3-step workflows per run")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help=f"comma-separated, of {','.join(TOOLS)} (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="also write raw figures here")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    cfg = Config(cfg.workers, args.reps or cfg.reps, args.jobs or cfg.jobs, args.wf3 or cfg.wf3,
                 cfg.lat_samples)
    names = [n for n in args.tools.split(",") if n]
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        parser.error(f"unknown tools: {unknown}")
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    res = Results(cfg)
    conf = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "top",
            "pg_stat_statements.max": 5000, "max_connections": 200}
    with tempfile.TemporaryDirectory(prefix="ratchet-peers-") as tmp, \
            EmbeddedPostgres(fast=False, extra_conf=conf) as pg:
        s = Server(pg, Path(tmp), log)
        with s.connect("postgres") as conn:
            conn.execute("create extension if not exists pg_stat_statements")
        res.machine = machine_info(s)
        log(f"server up on port {pg.port}")
        run(s, cfg, names, res)
        if not args.quick:
            profile(s, cfg, res)
    res.seconds = time.monotonic() - started
    write_report(args.out, render(res, args.quick))
    if args.json:
        args.json.write_text(json.dumps(
            {"notes": res.notes, "cells": {f"{k[0]}|{k[1]}|{k[2]}": vars(c)
                                           for k, c in res.cells.items()}}, indent=1))
    for t in res.tools:
        log(f"{t.name} {t.version}")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
