"""The ``ratchet`` command line: install, run workers, start and inspect workflows.

Connection settings work like libpq tools: ``--dsn``, else
``RATCHET_DATABASE_URL``, else ``DATABASE_URL``, else the ``PG*`` variables.
Output is a human-readable table; ``--json`` prints JSON for scripts. Every
command goes through :class:`ratchet.App`'s methods.

Exit codes (see :data:`EXIT_CODES`): 0 success, 1 error, 2 usage error, 3 no
such workflow/schedule, 4 the awaited workflow failed, was cancelled or is
dead, 5 timed out waiting, 130 interrupted, 141 output pipe closed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from ._db import resolve_dsn
from ._errors import RatchetError, WorkflowCancelled, WorkflowFailed, WorkflowNotFound
from ._json import decode_input

if TYPE_CHECKING:
    from ._app import App
    from ._records import WorkflowStatus

__all__ = ["EXIT_CODES", "main"]

_ENDED = ("succeeded", "failed", "cancelled", "dead")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_WORKFLOW_FAILED, EXIT_TIMEOUT = range(6)
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "error (database, connection, rejected input, nothing to do)",
    EXIT_USAGE: "usage error (bad options or arguments)",
    EXIT_NOT_FOUND: "no such workflow or schedule",
    EXIT_WORKFLOW_FAILED: "the awaited workflow failed, is dead or was cancelled",
    EXIT_TIMEOUT: "timed out waiting for the workflow",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_BROKEN_PIPE: "the output pipe was closed (e.g. `ratchet ls | head`)",
}


class CliError(Exception):
    """An error to print without a traceback."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        self.code = code
        super().__init__(message)


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
    import asyncio

    from ._app import App
    from .aio import AsyncApp

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
    if not isinstance(obj, (App, AsyncApp)):
        raise CliError(f"{args.app!r} is not a ratchet.App or ratchet.AsyncApp "
                       "(use MODULE:ATTRIBUTE)")
    if args.dsn:
        obj.set_dsn(args.dsn)
    if args.pooled:
        obj.pooled = True
    if args.listen_dsn:
        obj.set_listen_dsn(args.listen_dsn)
    options: dict[str, Any] = {
        "concurrency": args.concurrency, "lease": args.lease,
        "poll_interval": args.poll_interval, "grace_period": args.grace_period,
        "maintenance_interval": args.maintenance_interval or None}
    queues = args.queue or ["default"]
    if isinstance(obj, AsyncApp):
        async_app = obj

        async def serve() -> None:  # the pool belongs to this one event loop
            try:
                await async_app.run_worker(queues, **options)
            finally:
                await async_app.close()

        asyncio.run(serve())
        return 0
    try:
        obj.worker(queues, batch_checkpoints=args.batch_checkpoints,
                   batch_finishes=args.batch_finishes, **options).run()
    finally:
        obj.close()
    return 0


# -- the app and error messages ----------------------------------------------------


@contextmanager
def _app(args: argparse.Namespace) -> Iterator[App]:
    from ._app import App

    app = App(resolve_dsn(args.dsn), pool_size=2, poll_interval=0.5)
    try:
        yield app
    finally:
        app.close()


# SQL-level hints in RT errors, said as the CLI command that does the same.
_HINTS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"select ratchet\.create_queue\('((?:[^']|'')*)'\)"),
     lambda m: f"ratchet queue create {m.group(1)}"),
    (re.compile(r"select ratchet\.fork\('((?:[^']|'')*)', from_step => (\d+)\)"),
     lambda m: f"ratchet fork {m.group(1)} --from-step {m.group(2)}"),
    (re.compile(r"select workflow_id from ratchet\.workflows[^;)]*"),
     lambda m: "ratchet ls"),
]


def cli_hint(hint: str) -> str:
    """A database hint with SQL calls replaced by the equivalent CLI command."""
    for pattern, repl in _HINTS:
        hint = pattern.sub(repl, hint)
    return hint


def describe(exc: BaseException) -> str:
    """One clear line for an error: the database's message and hint (in CLI
    terms) for RT errors, the exception's text otherwise."""
    cause = exc.__cause__ if isinstance(exc.__cause__, psycopg.Error) else exc
    if isinstance(cause, psycopg.Error) and cause.sqlstate and \
            cause.sqlstate.startswith("RT"):
        msg = cause.diag.message_primary or str(cause).strip()
        if cause.diag.message_hint:
            msg = f"{msg}\nhint: {cli_hint(cause.diag.message_hint)}"
        return msg
    return str(exc)


def _db_error(exc: psycopg.Error) -> CliError:
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        return CliError(f"cannot connect to the database: {str(exc).strip()}\n"
                        "hint: set --dsn, RATCHET_DATABASE_URL or DATABASE_URL")
    if exc.sqlstate in ("3F000", "42P01", "42883"):  # no schema, table or function
        return CliError("ratchet is not installed in this database (or is an older "
                        "version)\nhint: run `ratchet install`")
    if exc.sqlstate == "42501":
        return CliError(f"permission denied: {exc.diag.message_primary}\n"
                        "hint: connect as a role granted ratchet_client (docs/python.md)")
    return CliError(f"database error: {str(exc).strip()}")


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        _print_json(data)
    else:
        print(text)


def _record(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


# -- human formats -----------------------------------------------------------------


def human_duration(value: timedelta | float | None) -> str:
    """``1h 5m``, ``42s``, ``350ms``; empty for None."""
    if value is None:
        return ""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 1:
        return f"{sign}{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{sign}{seconds:.0f}s" if seconds >= 10 else f"{sign}{seconds:.1f}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n >= 1:
            parts.append(f"{int(n)}{unit}")
    return sign + " ".join(parts[:2])


def _until(when: datetime | None, now: datetime) -> str:
    if when is None:
        return ""
    if when.year > 9000:
        return "no time limit"
    return f"in {human_duration(when - now)}" if when > now else "now"


def _waiting_cell(st: WorkflowStatus | None, now: datetime) -> str:
    if st is None or st.waiting_for is None:
        if st is not None and st.status == "running" and st.running_step is not None:
            return f"step #{st.running_step}"
        return ""
    what = {"sleep": "sleep", "message": "message", "child": "child", "start_at": "start",
            "paused_queue": "paused queue", "worker": "a worker"}.get(st.waiting_for,
                                                                     st.waiting_for)
    if st.waiting_for == "message":
        what += f" {st.wait_key!r}" if st.wait_key else ""
    elif st.waiting_for == "child":
        what += f" {st.wait_key}"
    if st.wake_at is not None and st.waiting_for in ("sleep", "start_at", "message") \
            and st.wake_at.year < 9000:
        what += f" ({_until(st.wake_at, now)})"
    return str(what)


def _error_cell(error: Any) -> str:
    if not error:
        return ""
    return f"{error.get('type', '')}: {error.get('message', '')}"


# -- commands ---------------------------------------------------------------------


def _start_input(value: Any) -> tuple[list[Any], dict[str, Any]]:
    if not isinstance(value, (dict, list)):
        raise CliError('--input must be a JSON object ({"args": [...], "kwargs": {...}}, or '
                       "keyword arguments) or an array of positional arguments",
                       EXIT_USAGE)
    return decode_input(value)


def cmd_start(args: argparse.Namespace) -> int:
    from ._workflows import StartOptions

    posargs, kwargs = _start_input(args.input)
    with _app(args) as app:
        options = StartOptions(workflow_id=args.id, queue=args.queue,
                               priority=args.priority, delay=args.delay)
        workflow_id = app._start(args.name, posargs, kwargs, options)
        if not args.wait:
            _emit(args, {"workflow_id": workflow_id}, workflow_id)
            return EXIT_OK
        handle = app.retrieve(workflow_id)
        if not args.json:
            print(workflow_id, file=sys.stderr)
        try:
            output = handle.result(timeout=args.timeout)
        except WorkflowCancelled:
            _emit(args, {"workflow_id": workflow_id, "status": "cancelled"},
                  f"workflow {workflow_id} was cancelled")
            return EXIT_WORKFLOW_FAILED
        except WorkflowFailed as exc:
            _emit(args, {"workflow_id": workflow_id, "status": exc.status, "error": exc.error},
                  f"workflow {workflow_id} {exc.status}: {exc.type}: {exc.message}")
            return EXIT_WORKFLOW_FAILED
        except TimeoutError:
            raise CliError(f"workflow {workflow_id} did not end within {args.timeout} s "
                           f"(status {handle.status()})\nhint: ratchet show {workflow_id}",
                           EXIT_TIMEOUT) from None
    _emit(args, {"workflow_id": workflow_id, "status": "succeeded", "output": output},
          json.dumps(output))
    return EXIT_OK


def _watch(args: argparse.Namespace, render: Callable[[], tuple[str, bool]]) -> int:
    """Print ``render()`` every ``--watch`` seconds until it says it is done or
    the user presses Ctrl-C. On a terminal each frame replaces the last."""
    tty = sys.stdout.isatty()
    try:
        while True:
            text, done = render()
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")
            print(text, flush=True)
            if done:
                return EXIT_OK
            if not tty:
                print("", flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return EXIT_OK


def _ls_frame(args: argparse.Namespace, app: App) -> tuple[str, Any]:
    created_after = None
    if args.since is not None:
        created_after = app.now() - timedelta(seconds=args.since)
    rows = app.list_workflows(status=args.status, name=args.name, queue=args.queue,
                              parent_id=args.parent, created_after=created_after,
                              limit=args.limit + 1, offset=args.offset)
    truncated = len(rows) > args.limit
    rows = rows[: args.limit]
    statuses = app.workflow_statuses([w.workflow_id for w in rows])
    now = app.now()
    if args.json:
        return "", {"workflows": [dict(_record(w), waiting_for=_record(statuses.get(
            w.workflow_id))) for w in rows], "truncated": truncated}
    if not rows:
        return "no workflows", None
    table = [{"workflow_id": w.workflow_id, "name": w.name, "queue": w.queue,
              "status": w.status, "attempts": w.attempts, "created_at": w.created_at,
              "waiting_for": _waiting_cell(statuses.get(w.workflow_id), now),
              "error": _error_cell(w.error)} for w in rows]
    text = _table(table, ["workflow_id", "name", "queue", "status", "attempts",
                          "created_at", "waiting_for", "error"])
    if truncated:
        text += (f"\n(showing {len(rows)} workflows from offset {args.offset}; more match: "
                 f"use --limit or --offset {args.offset + len(rows)})")
    return text, None


def cmd_ls(args: argparse.Namespace) -> int:
    with _app(args) as app:
        if args.watch:
            return _watch(args, lambda: (_ls_frame(args, app)[0], False))
        text, data = _ls_frame(args, app)
    if args.json:
        _print_json(data)
    else:
        print(text)
    return EXIT_OK


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


def _show_frame(args: argparse.Namespace, app: App) -> tuple[str, Any, bool]:
    wf = app.get_workflow(args.id)
    st = app.workflow_status(args.id)
    steps = app.get_steps(args.id)
    children = app.list_workflows(parent_id=args.id, limit=1000)
    ended = wf.ended
    if args.json:
        return "", {"workflow": _record(wf), "status": _record(st),
                    "steps": [_record(s) for s in steps],
                    "children": [{"workflow_id": c.workflow_id, "name": c.name,
                                  "status": c.status, "created_at": c.created_at,
                                  "ended_at": c.ended_at} for c in children]}, ended
    out = [f"workflow  {wf.workflow_id}",
           f"name      {wf.name}   queue {wf.queue}   priority {wf.priority}",
           f"status    {wf.status}   attempts {wf.attempts}/{wf.max_attempts}"]
    for label, value in (("created", wf.created_at), ("started", wf.started_at),
                         ("ended", wf.ended_at)):
        if value is not None:
            out.append(f"{label:<9} {_fmt_time(value)}")
    if st.status == "running":
        out.append(f"running   step #{st.running_step} on {wf.worker_id}   run {wf.run_id}   "
                   f"lease until {_fmt_time(wf.lease_expires_at)}")
    elif st.waiting_for is not None:
        out.append(f"waiting   {st.reason}")
        if st.wake_at is not None and st.wake_at.year < 9000:
            out.append(f"wakes     {_fmt_time(st.wake_at)}")
    if wf.deadline is not None:
        out.append(f"deadline  {_fmt_time(wf.deadline)}")
    if wf.parent_id:
        out.append(f"parent    {wf.parent_id}")
    if wf.forked_from:
        out.append(f"forked    from {wf.forked_from}")
    out.append(f"input     {_short(wf.input, 100)}")
    if wf.status == "succeeded":
        out.append(f"output    {_short(wf.output, 100)}")
    if wf.error is not None:
        out.append(f"error     {_error_cell(wf.error)}")
        where = wf.error.get("step")
        if where:
            out.append(f"          in step {where!r} (#{wf.error.get('step_id')})")
        tb = wf.error.get("traceback")
        if tb:
            out.append("traceback")
            out.extend("  " + line for line in str(tb).rstrip().splitlines())
    origin = wf.started_at or wf.created_at
    out.append(f"\nsteps ({len(steps)})")
    if not steps:
        out.append("  (none recorded)")
    for step in steps:
        out.append(_step_line(dataclasses.asdict(step), origin))
    if st.status == "running":
        out.append(f"  #{st.running_step:<3} {'':>10}  (running now)")
    if children:
        out.append(f"\nchildren ({len(children)})")
        for child in children:
            out.append(f"  {child.workflow_id}  {child.name}  {child.status}")
    return "\n".join(out), None, ended


def cmd_show(args: argparse.Namespace) -> int:
    with _app(args) as app:
        if args.watch:
            def frame() -> tuple[str, bool]:
                text, data, done = _show_frame(args, app)
                return (str(json.dumps(_jsonable(data))) if args.json else text), done
            return _watch(args, frame)
        text, data, _ = _show_frame(args, app)
    if args.json:
        _print_json(data)
    else:
        print(text)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with _app(args) as app:
        wf = app.get_workflow(args.id)
        if wf.ended:
            raise CliError(f"workflow {args.id} already ended ({wf.status}); nothing to "
                           "cancel" + (f"\nhint: ratchet resume {args.id}"
                                       if wf.status != "succeeded" else ""))
        n = app.cancel(args.id)
    _emit(args, {"workflow_id": args.id, "cancelled": n}, f"cancelled {n} workflow(s)")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    with _app(args) as app:
        app.resume(args.id)
    _emit(args, {"workflow_id": args.id, "resumed": True}, f"resumed {args.id}")
    return EXIT_OK


def cmd_fork(args: argparse.Namespace) -> int:
    with _app(args) as app:
        new_id = app.fork(args.id, args.from_step, args.new_id).workflow_id
    _emit(args, {"workflow_id": new_id, "forked_from": args.id}, new_id)
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    with _app(args) as app:
        message_id = app.send(args.id, args.message, topic=args.topic,
                              idempotency_key=args.idempotency_key)
    _emit(args, {"message_id": message_id}, str(message_id))
    return EXIT_OK


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def cmd_queues(args: argparse.Namespace) -> int:
    with _app(args) as app:
        queues = app.list_queues()
    if args.json:
        _print_json([_record(q) for q in queues])
        return EXIT_OK
    if not queues:
        print("no queues")
        return EXIT_OK
    rows = [{"queue": q.queue, "paused": _yes(q.paused),
             "concurrency": q.concurrency or "-", "per_worker": q.worker_concurrency or "-",
             "rate_limit": f"{q.rate_limit}/{human_duration(q.rate_period)}"
             if q.rate_limit else "-",
             "due": q.enqueued_due, "waiting": q.enqueued_waiting, "running": q.running,
             "expired_leases": q.running_lease_expired,
             "oldest_due": human_duration(q.oldest_due_age) if q.oldest_due_age else "-"}
            for q in queues]
    print(_table(rows, list(rows[0])))
    return EXIT_OK


def cmd_queue(args: argparse.Namespace) -> int:
    with _app(args) as app:
        if args.action == "create":
            app.create_queue(args.name, concurrency=args.concurrency,
                             worker_concurrency=args.worker_concurrency,
                             rate_limit=args.rate_limit, rate_period=args.rate_period)
            done = "created"
        elif args.action == "pause":
            app.pause_queue(args.name)
            done = "paused"
        else:
            app.resume_queue(args.name)
            done = "resumed"
    _emit(args, {"queue": args.name, "result": done}, f"queue {args.name} {done}")
    return EXIT_OK


def _print_records(args: argparse.Namespace, records: Sequence[Any], empty: str,
                   row: Callable[[Any], dict[str, Any]]) -> int:
    """A listing command's output: JSON records, ``empty``, or a table of
    ``row(record)`` (its keys are the columns)."""
    if args.json:
        _print_json([_record(x) for x in records])
    elif not records:
        print(empty)
    else:
        rows = [row(x) for x in records]
        print(_table(rows, list(rows[0])))
    return EXIT_OK


def cmd_schedules(args: argparse.Namespace) -> int:
    with _app(args) as app:
        schedules = app.list_schedules()
        now = app.now()
    return _print_records(args, schedules, "no schedules", lambda x: {
        "name": x.name, "cron": x.cron, "timezone": x.timezone,
        "workflow": x.workflow_name, "queue": x.queue,
        "next_fire": f"{_fmt_time(x.next_fire_at)} ({_until(x.next_fire_at, now)})",
        "last_fired": _fmt_time(x.last_fired_at), "last_workflow": x.last_workflow_id})


def cmd_unschedule(args: argparse.Namespace) -> int:
    with _app(args) as app:
        removed = app.unschedule(args.name)
    if not removed:
        raise CliError(f"no schedule named {args.name!r}\nhint: ratchet schedules",
                       EXIT_NOT_FOUND)
    _emit(args, {"schedule": args.name, "removed": True}, f"removed schedule {args.name}")
    return EXIT_OK


def cmd_workers(args: argparse.Namespace) -> int:
    with _app(args) as app:
        workers = app.list_workers()
        now = app.now()
    return _print_records(
        args, workers, "no live workers (a worker shows here while it runs a workflow)",
        lambda w: {"worker_id": w.worker_id, "running": w.running,
                   "queues": ",".join(w.queues),
                   "last_heartbeat": f"{human_duration(now - w.last_heartbeat)} ago",
                   "lease": "EXPIRED" if w.expired
                   else f"until {_fmt_time(w.lease_expires_at)}"})


def cmd_metrics(args: argparse.Namespace) -> int:
    from ._metrics import prometheus_text

    with _app(args) as app:
        metrics = app.metrics(args.window)
        workers = app.list_workers()
        now_row = app._db.fetchone("select ratchet.now() as t")
    assert now_row is not None
    if args.prometheus:
        sys.stdout.write(prometheus_text(metrics, workers, now_row["t"]))
    elif args.json:
        _print_json([_record(m) for m in metrics])
    else:
        def secs(v: float | None) -> str:
            return "-" if v is None else human_duration(v)
        print(_table([{"queue": m.queue, "started": m.started, "succeeded": m.succeeded,
                       "failed": m.failed, "cancelled": m.cancelled, "running": m.running,
                       "due": m.enqueued_due, "waiting": m.enqueued_waiting,
                       "oldest_due": "-" if m.oldest_due_age is None
                       else human_duration(m.oldest_due_age),
                       "steps": m.steps, "step_p50": secs(m.step_p50_seconds),
                       "step_p95": secs(m.step_p95_seconds)} for m in metrics],
                     ["queue", "started", "succeeded", "failed", "cancelled", "running",
                      "due", "waiting", "oldest_due", "steps", "step_p50", "step_p95"]))
    return EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    with _app(args) as app:
        if args.dry_run:
            n = app.count_purgeable(args.older_than, queue=args.queue, status=args.status)
            verb = "would delete"
        else:
            n, verb = 0, "deleted"
            while True:  # batches, each its own short transaction
                done = app.purge(args.older_than, queue=args.queue, status=args.status,
                                 max_rows=args.batch)
                n += done
                if done < args.batch:
                    break
    if args.json:
        _print_json({"workflows": n, "dry_run": args.dry_run})
    else:
        print(f"{verb} {n} ended workflow(s)")
    return EXIT_OK


def cmd_retention(args: argparse.Namespace) -> int:
    with _app(args) as app:
        if args.set is not None:
            if args.queue is None or args.status is None:
                raise CliError("--set needs --queue and --status (succeeded, failed, "
                               "cancelled, dead or all)")
            try:
                keep = None if args.set in ("forever", "none") else _duration(args.set)
            except argparse.ArgumentTypeError as exc:
                raise CliError(str(exc)) from None
            app.set_retention(args.queue, args.status, keep)
        rows = app.retention(args.queue)
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            row["keep"] = "forever" if row["keep"] is None else row["keep"]
        print(_table(rows, ["queue", "status", "keep", "due"]))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(args.dsn)


def cmd_ui(args: argparse.Namespace) -> int:
    try:
        from .ui import serve
    except ImportError as exc:
        raise CliError("the dashboard needs its extra: pip install 'pg-ratchet[ui]' "
                       f"({exc})") from exc
    token = args.token or os.environ.get("RATCHET_UI_TOKEN")
    if args.actions and not token:
        raise CliError("--actions needs --token (or RATCHET_UI_TOKEN)")
    print(f"Ratchet dashboard on http://{args.host}:{args.port}/ "
          f"({'actions on' if args.actions else 'read-only'})", flush=True)
    serve(resolve_dsn(args.dsn), args.host, args.port, actions=args.actions, token=token,
          poll_interval=args.poll_interval)
    return 0


# -- parser -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public for documentation tools)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", default=argparse.SUPPRESS,
                        help="connection string (default: RATCHET_DATABASE_URL, DATABASE_URL, "
                             "then the PG* variables)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON instead of tables")

    from . import __version__

    parser = argparse.ArgumentParser(
        prog="ratchet", parents=[common],
        description="Durable workflows in PostgreSQL: install, run workers, inspect workflows.",
        epilog="exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()))
    parser.add_argument("--version", action="version", version=f"ratchet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, parents=[common])

    p = add("install", "install ratchet into the database (CREATE EXTENSION, or plain SQL), "
                       "or upgrade it to this package's version")
    p.add_argument("--plain", action="store_true",
                   help="run the plain-SQL script (for servers without the extension files, "
                        "e.g. managed PostgreSQL)")
    p.set_defaults(func=cmd_install)

    p = add("worker", "run a worker for an app")
    p.add_argument("app", metavar="MODULE:APP",
                   help="where the ratchet.App or ratchet.AsyncApp is, e.g. myapp:app")
    p.add_argument("--queue", "-q", action="append", help="queue to serve (repeatable; "
                   "default: default)")
    p.add_argument("--concurrency", "-c", type=int, default=16,
                   help="workflows run at once (default 16)")
    p.add_argument("--lease", type=float, default=30.0,
                   help="lease in seconds; heartbeats every lease/3 (default 30)")
    p.add_argument("--poll-interval", type=float, default=None,
                   help="seconds between claims when no notification arrives (default 1)")
    p.add_argument("--listen-dsn", default=os.environ.get("RATCHET_LISTEN_DSN"),
                   help="direct connection (not through a pooler) to LISTEN on for wake-ups "
                        "(default $RATCHET_LISTEN_DSN)")
    p.add_argument("--pooled", action="store_true",
                   help="--dsn is a transaction pooler: never LISTEN on it "
                        "(docs/deployment.md)")
    p.add_argument("--grace-period", type=float, default=10.0,
                   help="seconds to let running workflows finish on SIGTERM (default 10)")
    p.add_argument("--maintenance-interval", type=float, default=60.0,
                   help="seconds between retention batches (ratchet.maintain()); 0 turns "
                        "them off (default 60)")
    p.add_argument("--batch-checkpoints", action=argparse.BooleanOptionalAction, default=None,
                   help="group commit of step checkpoints (ratchet.record_steps); default: "
                        "on from --concurrency 8 (sync apps)")
    p.add_argument("--batch-finishes", action=argparse.BooleanOptionalAction, default=True,
                   help="finish in batches with the next claim (ratchet.finish_and_claim); "
                        "default on (sync apps)")
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
    p.add_argument("--wait", action="store_true",
                   help="wait for the workflow to end and print its output (exit 4 if it "
                        "fails or is cancelled)")
    p.add_argument("--timeout", type=_duration, default=None,
                   help="with --wait: give up after this long (exit 5), e.g. 30s")
    p.set_defaults(func=cmd_start)

    p = add("ls", "list workflows, newest first")
    p.add_argument("--status", action="append",
                   choices=["enqueued", "running", *_ENDED], help="repeatable")
    p.add_argument("--queue", action="append", help="repeatable")
    p.add_argument("--name", action="append", help="repeatable")
    p.add_argument("--parent", help="only children of this workflow")
    p.add_argument("--since", type=_duration, default=None,
                   help="created within, e.g. 30m, 1h, 2d")
    p.add_argument("--limit", type=_count, default=50, help="rows to show (default 50)")
    p.add_argument("--offset", type=_count, default=0, help="rows to skip (default 0)")
    _watch_option(p)
    p.set_defaults(func=cmd_ls)

    p = add("show", "a workflow: why it waits, the step running now, its steps as a "
                    "timeline, its error with traceback, and its children")
    p.add_argument("id")
    _watch_option(p, " (stops when the workflow ends)")
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

    p = add("ui", "serve the web dashboard (needs pip install 'pg-ratchet[ui]')")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--actions", action="store_true",
                   help="enable cancel/resume/fork/pause (behind --token, with CSRF checks)")
    p.add_argument("--token", help="token that signs in for actions (or RATCHET_UI_TOKEN)")
    p.add_argument("--poll-interval", type=float, default=1.0,
                   help="seconds between the shared change polls for live updates (default 1)")
    p.set_defaults(func=cmd_ui)

    p = add("queue", "create, pause or resume a queue")
    qsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = qsub.add_parser("create", help="create or reconfigure a queue", parents=[common])
    q.add_argument("name")
    q.add_argument("--concurrency", type=_count, default=None,
                   help="running workflows at most, across workers")
    q.add_argument("--worker-concurrency", type=_count, default=None,
                   help="running workflows at most per worker")
    q.add_argument("--rate-limit", type=_count, default=None,
                   help="claims at most per --rate-period")
    q.add_argument("--rate-period", type=_duration, default=None, help="e.g. 1m")
    for action, help_ in (("pause", "stop workers from claiming on a queue"),
                          ("resume", "let workers claim on a queue again")):
        q = qsub.add_parser(action, help=help_, parents=[common])
        q.add_argument("name")
    p.set_defaults(func=cmd_queue)

    p = add("schedules", "cron schedules with their next and last firing")
    p.set_defaults(func=cmd_schedules)

    p = add("unschedule", "remove a cron schedule (exit 3 if there is none)")
    p.add_argument("name")
    p.set_defaults(func=cmd_unschedule)

    p = add("workers", "live workers (those running workflows) with their last heartbeat")
    p.set_defaults(func=cmd_workers)

    p = add("metrics", "per queue: started/succeeded/failed in a window, depth, oldest due, "
                       "step latency (ratchet.metrics)")
    p.add_argument("--window", type=_duration, default=3600.0, help="e.g. 15m, 1h (default 1h)")
    p.add_argument("--prometheus", action="store_true",
                   help="print Prometheus' text exposition format")
    p.set_defaults(func=cmd_metrics)

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


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _watch_option(p: argparse.ArgumentParser, extra: str = "") -> None:
    p.add_argument("--watch", "-w", nargs="?", type=_duration, const=2.0, default=None,
                   metavar="SECONDS",
                   help=f"refresh every SECONDS (default 2) until Ctrl-C{extra}")


def _run(args: argparse.Namespace) -> int:
    try:
        status: int = args.func(args)
        return status
    except CliError as exc:
        print(f"ratchet: error: {exc}", file=sys.stderr)
        return exc.code
    except WorkflowNotFound as exc:
        print(f"ratchet: error: {describe(exc)}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except RatchetError as exc:
        print(f"ratchet: error: {describe(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except psycopg.Error as exc:
        print(f"ratchet: error: {_db_error(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # e.g. the pool could not connect
        if type(exc).__name__ == "PoolTimeout":
            print(f"ratchet: error: cannot connect to the database: {exc}\n"
                  "hint: set --dsn, RATCHET_DATABASE_URL or DATABASE_URL", file=sys.stderr)
            return EXIT_ERROR
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ratchet`` command; returns the exit status (see
    :data:`EXIT_CODES`)."""
    args = build_parser().parse_args(argv)
    args.dsn = getattr(args, "dsn", None)
    args.json = getattr(args, "json", False)
    try:
        return _run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `ratchet ls | head`: the reader is gone. Say nothing, and keep
        # Python from complaining again when it flushes stdout at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_BROKEN_PIPE
