"""Python worker throughput on 3-step workflows, one client version against another.

Run from the repository root (after ``make sql``)::

    PYTHONPATH=$PWD/python_client .venv/bin/python bench/client_profile.py \\
        [--client base=/tmp/ratchet-base/python_client] [--client new=python_client] \\
        [--n 600] [--k 3] [--concurrency 4 16] [--reps 3] \\
        [--profile DIR] [--log-statements]

One throwaway durable server (``EmbeddedPostgres(fast=False)``), Ratchet
installed from this worktree's ``python_client/ratchet/_sql/ratchet.sql``.
For every rep, concurrency and client (the clients interleaved, their order
rotated each rep): a fresh ``ratchet worker bench_app:app --queue bench``
process with ``PYTHONPATH`` at that client's directory, a warm-up batch, a
settle (vacuum analyze, checkpoint), then ``--n`` ``bench`` workflows of
``--k`` steps started in one ``ratchet.start_workflows`` call. The rate is
N / (max(ended_at) - min(started_at)) of that batch, from ratchet.workflows.
Prints median and min-max per client and concurrency.

A baseline client is a copy of an older commit's ``python_client``, e.g.
``git archive <commit> python_client | tar -x -C /tmp/ratchet-base`` and
``cp -r python_client/ratchet/_sql /tmp/ratchet-base/python_client/ratchet/``.

``--profile DIR`` runs each worker under ``py-spy record --gil --format raw``
(samples of the thread holding the GIL only; ``pip install py-spy``, a
measurement tool, not a dependency) and writes ``DIR/<client>-c<W>-<rep>.txt``
(collapsed stacks) and prints the top
self-time functions. ``--log-statements`` sets ``log_min_duration_statement=0``
and runs one workflow at concurrency 1 per client, then prints the server log
lines of that run (the statements and commits per workflow).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
PLAIN_SCRIPT = ROOT / "python_client" / "ratchet" / "_sql" / "ratchet.sql"
QUEUE = "bench"

from ratchet.testing import EmbeddedPostgres  # noqa: E402


class Server:
    def __init__(self, pg: EmbeddedPostgres) -> None:
        self.pg = pg
        self.dsn = pg.dsn("bench")
        self.batches = 0

    def setup(self) -> None:
        with psycopg.connect(self.pg.dsn("postgres"), autocommit=True) as conn:
            conn.execute('create database "bench"')
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(PLAIN_SCRIPT.read_text())
            conn.execute("select ratchet.create_queue(%s)", (QUEUE,))

    def settle(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("vacuum (analyze) ratchet.workflows, ratchet.steps")
            conn.execute("checkpoint")

    def batch(self, n: int, k: int, timeout: float = 300.0) -> float:
        """Start ``n`` workflows of ``k`` steps in one call, wait until they ended;
        workflows/s = n / (max(ended_at) - min(started_at))."""
        self.batches += 1
        prefix, upper = f"cp{self.batches}-", f"cp{self.batches}."
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                "select ratchet.start_workflows('bench', array(select %s::jsonb "
                "from generate_series(1, %s)), %s, "
                "array(select %s || g from generate_series(1, %s) g))",
                (json.dumps({"args": [k], "kwargs": {}}), n, QUEUE, prefix, n))
            deadline = time.monotonic() + timeout
            while True:
                row = conn.execute(
                    "select count(*) from ratchet.workflows where workflow_id >= %s "
                    "and workflow_id < %s and status in ('enqueued', 'running')",
                    (prefix, upper)).fetchone()
                assert row is not None
                if row[0] == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{row[0]} of {n} still live after {timeout} s")
                time.sleep(0.05)
            ok, t0, t1 = conn.execute(
                "select count(*) filter (where status = 'succeeded'), min(started_at), "
                "max(ended_at) from ratchet.workflows where workflow_id >= %s "
                "and workflow_id < %s", (prefix, upper)).fetchone()  # type: ignore[misc]
        if ok != n:
            raise RuntimeError(f"only {ok} of {n} succeeded")
        return float(n / max((t1 - t0).total_seconds(), 1e-6))


class WorkerProc:
    def __init__(self, dsn: str, client_dir: Path, concurrency: int, log: Path,
                 profile: Path | None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = f"{client_dir}{os.pathsep}{BENCH_DIR}"
        cmd = [sys.executable, "-m", "ratchet", "worker", "bench_app:app", "--dsn", dsn,
               "--queue", QUEUE, "--concurrency", str(concurrency), "--log-level", "warning"]
        if profile is not None:
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            cmd = [spy, "record", "--gil", "--format", "raw", "--rate", "250", "-o", str(profile),
                   "--"] + cmd
        self.profiled = profile is not None
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=BENCH_DIR, env=env, stdout=out,
                                         stderr=subprocess.STDOUT)

    def worker_pid(self) -> int:
        if not self.profiled:
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(children.split()[0]) if children.split() else self.proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time of the worker process so far."""
        fields = Path(f"/proc/{self.worker_pid()}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        target = self.proc.pid
        if self.profiled:  # signal the worker, py-spy writes its file when it exits
            children = Path(f"/proc/{target}/task/{target}/children").read_text().split()
            if children:
                target = int(children[0])
        os.kill(target, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.returncode not in (0, -signal.SIGTERM):
            print(self.log.read_text()[-2000:], file=sys.stderr)


def collapsed(path: Path) -> Iterator[tuple[str, int]]:
    """The (stack, samples) lines of a py-spy raw (collapsed) file."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            yield stack, int(count)


def top_self(path: Path, limit: int = 25) -> list[tuple[str, float]]:
    """Self-time share of the leaf frames in a py-spy raw (collapsed) file."""
    selfs: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, n in collapsed(path):
        total += n
        selfs[stack.split(";")[-1]] += n
    return [(f, 100.0 * n / max(total, 1)) for f, n in selfs.most_common(limit)]


def inclusive(path: Path, needles: list[str]) -> dict[str, float]:
    """Inclusive share of the frames whose text contains each needle."""
    hits: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, n in collapsed(path):
        total += n
        for needle in needles:
            if needle in stack:
                hits[needle] += n
    return {k: 100.0 * hits[k] / max(total, 1) for k in needles}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--client", action="append", default=[],
                    help="NAME=DIR of a python_client directory (repeatable)")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--log-statements", action="store_true")
    args = ap.parse_args()
    clients = [(c.split("=", 1)[0], Path(c.split("=", 1)[1]).resolve()) for c in args.client] \
        or [("current", ROOT / "python_client")]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    conf: dict[str, Any] = {}
    if args.log_statements:
        conf = {"log_min_duration_statement": 0, "log_line_prefix": "%m [%p] x%x "}
    rates: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    cpus: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="ratchet-client-profile-") as tmp, \
            EmbeddedPostgres(fast=False, extra_conf=conf) as pg:
        server = Server(pg)
        server.setup()
        if args.log_statements:
            for name, cdir in clients:
                w = WorkerProc(server.dsn, cdir, 1, Path(tmp) / f"log-{name}.txt", None)
                try:
                    server.batch(20, args.k)  # warm up (prepared statements)
                    time.sleep(1.0)
                    offset = pg.logfile.stat().st_size
                    server.batch(1, args.k)
                    time.sleep(0.3)
                finally:
                    w.stop()
                with pg.logfile.open("rb") as f:
                    f.seek(offset)
                    text = f.read().decode(errors="replace")
                print(f"=== {name}: one workflow of {args.k} steps, concurrency 1 ===")
                print(text)
            return 0
        for rep in range(args.reps):
            for c in args.concurrency:
                order = clients[rep % len(clients):] + clients[:rep % len(clients)]
                for name, cdir in order:
                    prof = None if args.profile is None else \
                        args.profile / f"{name}-c{c}-{rep}.txt"
                    w = WorkerProc(server.dsn, cdir, c, Path(tmp) / f"w-{name}-{c}-{rep}.log",
                                   prof)
                    try:
                        server.batch(max(2 * c, 20), args.k)  # warm-up
                        server.settle()
                        cpu0, wall0 = w.cpu_seconds(), time.monotonic()
                        rate = server.batch(args.n, args.k)
                        cpu = w.cpu_seconds() - cpu0
                        wall = time.monotonic() - wall0
                    finally:
                        w.stop()
                    rates[(name, c)].append(rate)
                    cpus[(name, c)].append(1000 * cpu / args.n)
                    print(f"rep {rep} c={c:<3} {name:<10} {rate:8.1f} wf/s   worker CPU "
                          f"{1000 * cpu / args.n:.2f} ms/wf ({100 * cpu / wall:.0f}% of a core)",
                          flush=True)
                    if prof is not None and prof.exists():
                        for fn, pct in top_self(prof, 12):
                            print(f"    {pct:5.1f}%  {fn}")
    print("\nclient      conc   median   (min-max) wf/s   worker CPU ms/wf (median)")
    for c in args.concurrency:
        for name, _ in clients:
            r = rates[(name, c)]
            print(f"{name:<10} {c:>5} {statistics.median(r):8.1f}   ({min(r):.1f}-{max(r):.1f})   "
                  f"{statistics.median(cpus[(name, c)]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
