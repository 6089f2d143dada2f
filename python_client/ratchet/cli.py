"""The ``ratchet`` command line: install, run workers, start and inspect workflows.

Connection settings work like libpq tools: ``--dsn``, else
``RATCHET_DATABASE_URL``, else ``DATABASE_URL``, else the ``PG*`` variables.
Output is a human-readable table; ``--json`` prints JSON for scripts.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ._db import configure_connection, resolve_dsn
from ._errors import RatchetError, translate

__all__ = ["main"]

_ENDED = ("succeeded", "failed", "cancelled", "dead")


class CliError(Exception):
    """An error to print without a traceback."""


# -- output helpers --------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(_jsonable(value), indent=2))


def _fmt_time(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        if value.year > 9000 or value.year < 1:
            return "infinity"
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    lines = ["  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True))]
    for r in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return _fmt_time(value)
    if isinstance(value, (dict, list)):
        return _short(value, 40)
    return _short(str(value), 60)


def _duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number with s, m, h, d or w (e.g. 30m, 1h, 2d)")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return float(match.group(1)) * unit


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


# -- database helpers ------------------------------------------------------------


def _connect(args: argparse.Namespace) -> psycopg.Connection[dict[str, Any]]:
    try:
        conn = psycopg.connect(resolve_dsn(args.dsn), autocommit=True, row_factory=dict_row)
        configure_connection(conn)
        return conn
    except psycopg.OperationalError as exc:
        raise CliError(f"cannot connect to the database: {str(exc).strip()}\n"
                       "(set --dsn, RATCHET_DATABASE_URL or DATABASE_URL)") from None


def _query(args: argparse.Namespace, query: str, params: Any = None) -> list[dict[str, Any]]:
    with _connect(args) as conn:
        try:
            return conn.execute(query, params).fetchall()
        except psycopg.Error as exc:
            mapped = translate(exc)
            if mapped is not None:
                raise CliError(str(mapped)) from None
            if exc.sqlstate == "3F000":  # invalid_schema_name
                raise CliError("ratchet is not installed in this database: run "
                               "`ratchet install`") from None
            raise


# -- commands ---------------------------------------------------------------------


def cmd_install(args: argparse.Namespace) -> int:
    from ._install import install

    message = install(resolve_dsn(args.dsn), plain=bool(args.plain))
    if args.json:
        _print_json({"result": message})
    else:
        print(message)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from ._app import App

    level = getattr(logging, args.log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ratchet").setLevel(level)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = args.app.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r}: {exc}") from None
    obj: Any = module
    for part in (attr or "app").split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, App):
        raise CliError(f"{args.app!r} is not a ratchet.App (use MODULE:ATTRIBUTE)")
    if args.dsn:
        obj.set_dsn(args.dsn)
    try:
        obj.run_worker(args.queue or ["default"], concurrency=args.concurrency,
                       lease=args.lease, poll_interval=args.poll_interval,
                       grace_period=args.grace_period,
                       maintenance_interval=args.maintenance_interval or None)
    finally:
        obj.close()
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    rows = _query(args, """select ratchet.start_workflow(
        name => %s::text, input => %s::jsonb, workflow_id => %s::text, queue => %s::text,
        priority => %s::int,
        start_at => ratchet.now() + %s::float8 * interval '1 second') as workflow_id""",
                  (args.name, json.dumps(args.input), args.id, args.queue, args.priority,
                   args.delay))
    workflow_id = rows[0]["workflow_id"]
    if args.json:
        _print_json({"workflow_id": workflow_id})
    else:
        print(workflow_id)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    where, params = [], []
    for column, value in (("status", args.status), ("queue", args.queue), ("name", args.name)):
        if value:
            where.append(f"w.{column} = any(%s::text[])")
            params.append(value)
    if args.since is not None:
        where.append("w.created_at >= ratchet.now() - %s::float8 * interval '1 second'")
        params.append(args.since)
    if args.parent:
        where.append("w.parent_id = %s")
        params.append(args.parent)
    query = ("select w.workflow_id, w.name, w.queue, w.status, w.attempts, w.created_at, "
             "w.ended_at, w.start_at, w.worker_id, w.parent_id from ratchet.workflows w"
             + (" where " + " and ".join(where) if where else "")
             + " order by w.created_at desc, w.workflow_id limit %s")
    params.append(args.limit)
    rows = _query(args, query, params)
    if args.json:
        _print_json(rows)
    elif not rows:
        print("no workflows")
    else:
        print(_table(rows, ["workflow_id", "name", "queue", "status", "attempts",
                            "created_at", "ended_at"]))
    return 0


def _step_line(step: dict[str, Any], origin: datetime | None) -> str:
    offset = ""
    if origin is not None and isinstance(step.get("recorded_at"), datetime):
        offset = f"+{(step['recorded_at'] - origin).total_seconds():.3f}s"
    error = step.get("error")
    if error is not None:
        what = f"error  {error.get('type', '')}: {_short(error.get('message', ''), 60)}"
    else:
        what = f"ok     {_short(step.get('output'), 60)}"
    return (f"  #{step['step_id']:<3} {offset:>10}  {step['name']:<24} "
            f"run {step.get('run_id')}  {what}")


def cmd_show(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        try:
            wf = conn.execute("select * from ratchet.get_workflow(workflow_id => %s::text)",
                              (args.id,)).fetchone()
            steps = conn.execute("select * from ratchet.get_steps(workflow_id => %s::text)",
                                 (args.id,)).fetchall()
            children = conn.execute(
                "select workflow_id, name, status, created_at, ended_at from ratchet.workflows "
                "where parent_id = %s order by created_at, workflow_id", (args.id,)).fetchall()
        except psycopg.Error as exc:
            mapped = translate(exc)
            if mapped is not None:
                raise CliError(str(mapped)) from None
            raise
    assert wf is not None
    if args.json:
        _print_json({"workflow": wf, "steps": steps, "children": children})
        return 0
    print(f"workflow  {wf['workflow_id']}")
    print(f"name      {wf['name']}   queue {wf['queue']}   priority {wf.get('priority')}")
    print(f"status    {wf['status']}   attempts {wf.get('attempts')}/{wf.get('max_attempts')}")
    for label, key in (("created", "created_at"), ("started", "started_at"),
                       ("ended", "ended_at")):
        if wf.get(key) is not None:
            print(f"{label:<9} {_fmt_time(wf[key])}")
    if wf["status"] == "enqueued" and wf.get("start_at") is not None:
        waiting = f" (waiting for {wf['wait_for']} {wf.get('wait_key') or ''})" \
            if wf.get("wait_for") else ""
        print(f"wakes     {_fmt_time(wf['start_at'])}{waiting}")
    if wf["status"] == "running":
        print(f"worker    {wf.get('worker_id')}   run {wf.get('run_id')}   lease until "
              f"{_fmt_time(wf.get('lease_expires_at'))}")
    if wf.get("deadline") is not None:
        print(f"deadline  {_fmt_time(wf['deadline'])}")
    if wf.get("parent_id"):
        print(f"parent    {wf['parent_id']}")
    if wf.get("forked_from"):
        print(f"forked    from {wf['forked_from']}")
    print(f"input     {_short(wf.get('input'), 100)}")
    if wf["status"] == "succeeded":
        print(f"output    {_short(wf.get('output'), 100)}")
    if wf.get("error") is not None:
        err = wf["error"]
        print(f"error     {err.get('type', '')}: {_short(err.get('message', ''), 100)}")
    origin = wf.get("started_at") or wf.get("created_at")
    print(f"\nsteps ({len(steps)})")
    if not steps:
        print("  (none recorded)")
    for step in steps:
        print(_step_line(step, origin))
    if children:
        print(f"\nchildren ({len(children)})")
        for child in children:
            print(f"  {child['workflow_id']}  {child['name']}  {child['status']}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    rows = _query(args, "select ratchet.cancel(workflow_id => %s::text) as cancelled",
                  (args.id,))
    n = rows[0]["cancelled"]
    if args.json:
        _print_json({"workflow_id": args.id, "cancelled": n})
    else:
        print(f"cancelled {n} workflow(s)")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    _query(args, "select ratchet.resume(workflow_id => %s::text)", (args.id,))
    if args.json:
        _print_json({"workflow_id": args.id, "resumed": True})
    else:
        print(f"resumed {args.id}")
    return 0


def cmd_fork(args: argparse.Namespace) -> int:
    rows = _query(args, "select ratchet.fork(workflow_id => %s::text, from_step => %s::int, "
                  "new_workflow_id => %s::text) as workflow_id",
                  (args.id, args.from_step, args.new_id))
    new_id = rows[0]["workflow_id"]
    if args.json:
        _print_json({"workflow_id": new_id, "forked_from": args.id})
    else:
        print(new_id)
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    rows = _query(args, "select ratchet.send(destination_id => %s::text, message => %s::jsonb, "
                  "topic => %s::text, idempotency_key => %s::text) as message_id",
                  (args.id, json.dumps(args.message), args.topic, args.idempotency_key))
    if args.json:
        _print_json({"message_id": rows[0]["message_id"]})
    else:
        print(rows[0]["message_id"])
    return 0


def cmd_queues(args: argparse.Namespace) -> int:
    rows = _query(args, "select * from ratchet.queue_stats order by 1")
    if args.json:
        _print_json(rows)
    elif not rows:
        print("no queues")
    else:
        print(_table(rows, list(rows[0].keys())))
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    if args.dry_run:
        where = ["w.ended_at < ratchet.now() - %s::float8 * interval '1 second'"]
        params: list[Any] = [args.older_than]
        if args.queue:
            where.append("w.queue = %s")
            params.append(args.queue)
        if args.status:
            where.append("w.status = %s")
            params.append(args.status)
        rows = _query(args, "select count(*) as n from ratchet.workflows w where "
                      + " and ".join(where), params)
        n, verb = rows[0]["n"], "would delete"
    else:
        n, verb = 0, "deleted"
        while True:  # batches, each its own short transaction
            rows = _query(args, "select ratchet.purge(older_than => %s::float8 * interval "
                          "'1 second', max_rows => %s::int, queue => %s::text, "
                          "status => %s::text) as n",
                          (args.older_than, args.batch, args.queue, args.status))
            n += rows[0]["n"]
            if rows[0]["n"] < args.batch:
                break
    if args.json:
        _print_json({"workflows": n, "dry_run": args.dry_run})
    else:
        print(f"{verb} {n} ended workflow(s)")
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    if args.set is not None:
        if args.queue is None or args.status is None:
            raise CliError("--set needs --queue and --status (succeeded, failed, cancelled, "
                           "dead or all)")
        try:
            keep = None if args.set in ("forever", "none") else _duration(args.set)
        except argparse.ArgumentTypeError as exc:
            raise CliError(str(exc)) from None
        _query(args, "select ratchet.set_retention(queue => %s::text, status => %s::text, "
               "keep => %s::float8 * interval '1 second')", (args.queue, args.status, keep))
    query = "select queue, status, keep, due from ratchet.retention"
    params: list[Any] = []
    if args.queue:
        query += " where queue = %s"
        params.append(args.queue)
    rows = _query(args, query, params)
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            row["keep"] = "forever" if row["keep"] is None else row["keep"]
        print(_table(rows, ["queue", "status", "keep", "due"]))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(args.dsn)


# -- parser -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public for documentation tools)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", default=argparse.SUPPRESS,
                        help="connection string (default: RATCHET_DATABASE_URL, DATABASE_URL, "
                             "then the PG* variables)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON instead of tables")

    parser = argparse.ArgumentParser(
        prog="ratchet", parents=[common],
        description="Durable workflows in PostgreSQL: install, run workers, inspect workflows.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, parents=[common])

    p = add("install", "install ratchet into the database (CREATE EXTENSION, or plain SQL)")
    p.add_argument("--plain", action="store_true",
                   help="run the plain-SQL script (for servers without the extension files, "
                        "e.g. managed PostgreSQL)")
    p.set_defaults(func=cmd_install)

    p = add("worker", "run a worker for an app")
    p.add_argument("app", metavar="MODULE:APP", help="where the ratchet.App is, e.g. myapp:app")
    p.add_argument("--queue", "-q", action="append", help="queue to serve (repeatable; "
                   "default: default)")
    p.add_argument("--concurrency", "-c", type=int, default=16,
                   help="workflows run at once (default 16)")
    p.add_argument("--lease", type=float, default=30.0,
                   help="lease in seconds; heartbeats every lease/3 (default 30)")
    p.add_argument("--poll-interval", type=float, default=None,
                   help="seconds between claims when no notification arrives (default 1)")
    p.add_argument("--grace-period", type=float, default=10.0,
                   help="seconds to let running workflows finish on SIGTERM (default 10)")
    p.add_argument("--maintenance-interval", type=float, default=60.0,
                   help="seconds between retention batches (ratchet.maintain()); 0 turns "
                        "them off (default 60)")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.set_defaults(func=cmd_worker)

    p = add("start", "start a workflow by name; prints its id")
    p.add_argument("name")
    p.add_argument("--input", type=_json_arg, default={},
                   help='JSON input: {"args": [...], "kwargs": {...}}, or an object of keyword '
                        "arguments (default {})")
    p.add_argument("--id", help="workflow id (the idempotency key; default: generated)")
    p.add_argument("--queue", default="default")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--delay", type=_duration, default=None, help="start after, e.g. 10m")
    p.set_defaults(func=cmd_start)

    p = add("ls", "list workflows, newest first")
    p.add_argument("--status", action="append",
                   choices=["enqueued", "running", *_ENDED], help="repeatable")
    p.add_argument("--queue", action="append", help="repeatable")
    p.add_argument("--name", action="append", help="repeatable")
    p.add_argument("--parent", help="only children of this workflow")
    p.add_argument("--since", type=_duration, default=None,
                   help="created within, e.g. 30m, 1h, 2d")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_ls)

    p = add("show", "a workflow, its steps as a timeline, and its children")
    p.add_argument("id")
    p.set_defaults(func=cmd_show)

    p = add("cancel", "cancel a workflow and its children")
    p.add_argument("id")
    p.set_defaults(func=cmd_cancel)

    p = add("resume", "put a failed, cancelled or dead workflow back in its queue")
    p.add_argument("id")
    p.set_defaults(func=cmd_resume)

    p = add("fork", "copy a workflow with its steps before --from-step, and run the copy")
    p.add_argument("id")
    p.add_argument("--from-step", type=int, required=True)
    p.add_argument("--new-id")
    p.set_defaults(func=cmd_fork)

    p = add("send", "send a JSON message to a workflow")
    p.add_argument("id")
    p.add_argument("message", type=_json_arg)
    p.add_argument("--topic")
    p.add_argument("--idempotency-key")
    p.set_defaults(func=cmd_send)

    p = add("queues", "queues with their limits and counts (ratchet.queue_stats)")
    p.set_defaults(func=cmd_queues)

    p = add("purge", "delete ended workflows (with their steps, events, messages) older than "
                     "--older-than, in batches")
    p.add_argument("--older-than", type=_duration, required=True, help="e.g. 30d, 12h")
    p.add_argument("--queue", help="only this queue")
    p.add_argument("--status", choices=list(_ENDED), help="only this end status")
    p.add_argument("--batch", type=int, default=1000,
                   help="workflows per transaction (default 1000)")
    p.add_argument("--dry-run", action="store_true", help="only count what would go")
    p.set_defaults(func=cmd_purge)

    p = add("retention", "show retention per queue and status (and how many are due), or "
                         "set it with --queue Q --status S --set 14d|forever; workers delete "
                         "what is due every minute")
    p.add_argument("--queue", help="only this queue (with --set: the queue to change)")
    p.add_argument("--status", choices=[*_ENDED, "all"], help="with --set: which end status")
    p.add_argument("--set", metavar="KEEP", help="keep for this long (e.g. 14d), or forever")
    p.set_defaults(func=cmd_retention)

    p = add("demo", "kill a worker with SIGKILL mid-workflow and watch another finish it, "
                    "every step exactly once (starts a throwaway PostgreSQL without --dsn)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ratchet`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.dsn = getattr(args, "dsn", None)
    args.json = getattr(args, "json", False)
    try:
        status: int = args.func(args)
        return status
    except (CliError, RatchetError) as exc:
        print(f"ratchet: error: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"ratchet: database error: {str(exc).strip()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
