"""Dashboard benchmark: every dashboard query, and every page over HTTP, with 1M workflows.

    .venv/bin/python bench/ui_bench.py [--rows 1000000] [--reps 7]

Starts a throwaway PostgreSQL (ratchet.testing), installs Ratchet, bulk
loads ``--rows`` workflows with one INSERT ... SELECT (synthetic rows in every
status over 30 days, 5 names, 4 queues; 3 steps each for the newest 10k),
ANALYZEs, then times (median of ``--reps``):

* each query of ratchet.ui.queries, in SQL (``EXPLAIN ANALYZE`` execution
  time plus planning), and
* each page over HTTP from a real ``ratchet ui`` process.

Prints a Markdown table; docs/observability.md quotes the result.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python_client"))

from ratchet._install import install  # noqa: E402
from ratchet.testing import EmbeddedPostgres  # noqa: E402
from ratchet.ui import queries  # noqa: E402

FILL = """
insert into ratchet.workflows (workflow_id, status, name, queue, input, attempts, start_at,
                               created_at, started_at, ended_at, updated_at, error,
                               worker_id, run_id, lease_expires_at)
select 'wf-' || g,
       s.status,
       (array['checkout','send_invoice','sync_inventory','resize_images','report'])[1 + g %% 5],
       (array['default','emails','reports','batch'])[1 + g %% 4],
       jsonb_build_object('n', g),
       1,
       t.created + interval '1 second',
       t.created, t.created,
       case when s.status in ('succeeded','failed','cancelled','dead')
            then t.created + interval '2 seconds' end,
       t.created,
       case when s.status in ('failed','dead')
            then '{"type":"ValueError","message":"x"}'::jsonb end,
       case when s.status = 'running' then 'worker-' || (g %% 8) end,
       case when s.status = 'running' then g end,
       case when s.status = 'running' then now() + interval '1 hour' end
  from generate_series(1, %(rows)s) g
  cross join lateral (select now() - (%(rows)s - g) * (interval '30 days' / %(rows)s) as created) t
  cross join lateral (select case
         when g > %(rows)s - 2000 and g %% 10 = 0 then 'enqueued'
         when g > %(rows)s - 2000 and g %% 10 = 1 then 'running'
         when g %% 50 = 0 then 'failed'
         when g %% 97 = 0 then 'cancelled'
         when g %% 331 = 0 then 'dead'
         else 'succeeded' end as status) s
"""

STEPS = """
insert into ratchet.steps (workflow_id, step_id, name, output, run_id, recorded_at)
select 'wf-' || g, k, 'step' || k, '1', 1, now() - (%(rows)s - g) * interval '1 second'
  from generate_series(%(rows)s - 10000, %(rows)s) g, generate_series(0, 2) k
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def cases(conn: psycopg.Connection[Any], rows: int) -> list[tuple[str, str, Any]]:
    """(label, sql, params) for every dashboard read, with realistic filters."""
    deep = conn.execute("select created_at, workflow_id from ratchet.workflows "
                        "order by created_at desc, workflow_id desc offset %s limit 1",
                        [rows // 2]).fetchone()
    assert deep is not None
    out: list[tuple[str, str, Any]] = []
    for label, filters, after in [
        ("list: first page", {}, None),
        ("list: status=failed", {"status": ["failed"]}, None),
        ("list: status=dead (rare)", {"status": ["dead"]}, None),
        ("list: queue=emails, name=send_invoice", {"queue": "emails", "name": "send_invoice"},
         None),
        (f"list: page at row {rows // 2} (keyset)", {}, (deep["created_at"], deep["workflow_id"])),
        ("list: last 24h, status=failed", {"status": ["failed"],
                                           "since": "now"}, None),
        ("list: id search (exact)", {"q": f"wf-{rows // 2}"}, None),
    ]:
        if filters.get("since") == "now":
            since = conn.execute("select now() - interval '1 day' as t").fetchone()
            assert since is not None
            filters["since"] = since["t"]
        sql, params = queries.list_query(filters, 50, after)
        out.append((label, sql, params))
    out += [
        ("overview: counts by status", queries.STATUS_COUNTS, None),
        ("overview: queues", queries.QUEUES, None),
        ("overview: throughput 1h", queries.THROUGHPUT, {"window": "1 hour", "bucket": "1 minute"}),
        ("overview: throughput 7d", queries.THROUGHPUT, {"window": "7 days", "bucket": "3 hours"}),
        ("overview: workers", queries.WORKERS, None),
        ("live: change counter", queries.CHANGES, None),
        ("workflow: row", queries.WORKFLOW, [f"wf-{rows}"]),
        ("workflow: steps", queries.STEPS, [f"wf-{rows}"]),
        ("workflow: children", queries.CHILDREN, [f"wf-{rows}"]),
    ]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    with EmbeddedPostgres() as pg:
        dsn = pg.dsn("postgres")
        install(dsn)
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
            t0 = time.monotonic()
            conn.execute(FILL, {"rows": args.rows})
            conn.execute(STEPS, {"rows": args.rows})
            conn.execute("vacuum analyze ratchet.workflows")
            conn.execute("vacuum analyze ratchet.steps")
            load = time.monotonic() - t0
            print(f"loaded {args.rows} workflows in {load:.0f}s\n")
            print("| read | median ms (SQL) | plan |")
            print("| --- | ---: | --- |")
            for label, sql, params in cases(conn, args.rows):
                times = []
                plan = ""
                for _ in range(args.reps):
                    [row] = conn.execute("explain (analyze, format json) " + sql,
                                         params).fetchall()
                    top = row["QUERY PLAN"][0]
                    times.append((top["Execution Time"] + top["Planning Time"]) / 1000)
                    plan = _indexes(top["Plan"])
                print(f"| {label} | {_median_ms(times):.1f} | {plan} |")

        port = _free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT / "python_client"))
        proc = subprocess.Popen([sys.executable, "-m", "ratchet", "ui", "--dsn", dsn,
                                 "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(base + "/health", timeout=2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            print("\n| page | median ms (HTTP) |")
            print("| --- | ---: |")
            for path in ["/", "/workflows", "/workflows?status=failed",
                         "/workflows?queue=emails&name=send_invoice",
                         "/workflows?status=dead", f"/workflows/wf-{args.rows}",
                         "/queues", "/schedules"]:
                times = []
                for i in range(args.reps + 1):
                    t = time.perf_counter()
                    urllib.request.urlopen(base + path, timeout=30).read()
                    if i:  # the first request compiles the template
                        times.append(time.perf_counter() - t)
                print(f"| `{path}` | {_median_ms(times):.1f} |")
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


def _indexes(plan: dict[str, Any]) -> str:
    """The scans of a plan, e.g. 'Index Scan Backward workflows_created_idx'."""
    found: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if "Scan" in node["Node Type"] and node.get("Relation Name"):
            found.append(f"{node['Node Type']} {node.get('Index Name', node['Relation Name'])}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan)
    return "; ".join(dict.fromkeys(found))


if __name__ == "__main__":
    raise SystemExit(main())
