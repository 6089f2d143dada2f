"""The dashboard: a Starlette app over Ratchet's tables.

Reads are the plain SQL of :mod:`ratchet.ui.queries` through a small async
connection pool. Live updates: one background task polls a cheap change
counter (``queries.CHANGES``) once per interval while any browser listens, and
pushes a server-sent event to every listener when it changes; pages then
refresh the parts that show live data. Browsers never poll the database.

Actions (cancel, resume, fork, pause/resume a queue) exist only when the app
is created with ``actions=True`` and a token. A browser signs in with the
token (``/login``), which sets an HttpOnly, SameSite=Strict session cookie;
every action is a POST that must carry the session's CSRF token (an HMAC of
the session id) in the form. Scripts may instead send
``Authorization: Bearer <token>`` (no cookie, so no CSRF exposure).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from jinja2 import Environment, FileSystemLoader, select_autoescape
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._db import _InfinityTimestamptzLoader
from . import charts, queries

HERE = Path(__file__).resolve().parent
STATUSES = ("enqueued", "running", "succeeded", "failed", "cancelled", "dead")
LIVE = ("enqueued", "running")
PAGE_SIZES = (25, 50, 100, 200)
COOKIE = "ratchet_ui_session"


class BadInput(ValueError):
    """A filter or URL value the dashboard refuses, with a message for the user."""


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _ago(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    else:
        seconds = (datetime.now(timezone.utc) - value).total_seconds()
    return _duration(seconds)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = abs(seconds)
    if s < 1:
        text = f"{s * 1000:.0f}ms"
    elif s < 120:
        text = f"{s:.1f}s"
    elif s < 7200:
        text = f"{s / 60:.0f}m"
    elif s < 172800:
        text = f"{s / 3600:.1f}h"
    else:
        text = f"{s / 86400:.0f}d"
    return ("-" if seconds < 0 else "") + text


def _ts(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        if value.year > 9000:
            return "infinity"
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _encode_cursor(created_at: datetime, workflow_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), workflow_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        ts, wid = json.loads(raw)
        return datetime.fromisoformat(ts), str(wid)
    except (ValueError, TypeError) as exc:
        raise BadInput("the page cursor is not valid; start again from the first page") from exc


def _parse_time(value: str, what: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise BadInput(f"{what} must be a date or time like 2030-01-31 or "
                       f"2030-01-31T14:00, got {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _name_arg(value: str, what: str) -> str:
    value = value.strip()
    if len(value) > 200:
        raise BadInput(f"{what} is longer than 200 characters")
    return value


def parse_filters(params: Any) -> tuple[dict[str, Any], int, tuple[datetime, str] | None]:
    """Validate the list page's query string; raises BadInput with a message."""
    filters: dict[str, Any] = {}
    status = [s for s in params.getlist("status") if s]
    for s in status:
        if s not in STATUSES:
            raise BadInput(f"unknown status {s!r}; one of {', '.join(STATUSES)}")
    if status:
        filters["status"] = status
    for key in ("name", "queue", "q"):
        if params.get(key):
            filters[key] = _name_arg(params[key], key)
    for key in ("since", "until"):
        if params.get(key):
            filters[key] = _parse_time(params[key], key)
    try:
        limit = int(params.get("limit") or 50)
    except ValueError as exc:
        raise BadInput("limit must be a whole number") from exc
    if limit not in PAGE_SIZES:
        raise BadInput(f"limit must be one of {', '.join(map(str, PAGE_SIZES))}")
    after = _decode_cursor(params["after"]) if params.get("after") else None
    return filters, limit, after


class Cache:
    """Results of the queries that scan history (counts by status, long
    throughput windows). A query that answered in under 50 ms is run again on
    every request (exact, and what small databases see); a slower one is
    kept for 20 times its duration (at most a minute), so a page with a
    million workflows renders from the cache instead of waiting for a scan."""

    FAST = 0.05

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, list[dict[str, Any]]]] = {}

    async def get(self, pool: AsyncConnectionPool[Any], key: str, sql: str,
                  params: Any = None) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > loop.time():
            return hit[1]
        t0 = loop.time()
        async with pool.connection() as conn:
            cur = await conn.execute(sql, params)
            rows: list[dict[str, Any]] = await cur.fetchall()
        took = loop.time() - t0
        if took >= self.FAST:
            self._entries[key] = (loop.time() + min(20 * took, 60.0), rows)
        else:
            self._entries.pop(key, None)
        return rows


class Broadcaster:
    """One change-counter query per interval, shared by every SSE listener."""

    def __init__(self, pool: AsyncConnectionPool[Any], interval: float, cache: Cache) -> None:
        self.pool = pool
        self.cache = cache
        self.interval = interval
        self.version = 0
        self.snapshot: dict[str, Any] = {}
        self.listeners = 0
        self.queries = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        last: Any = None
        while self.listeners > 0:
            try:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(queries.CHANGES)
                    row = await cur.fetchone()
                self.queries += 1
            except psycopg.Error:
                row = None
            if row is not None and row != last:
                last = row
                counts = await self._counts()
                async with self._changed:
                    self.version += 1
                    self.snapshot = {"version": self.version, "counts": counts,
                                     "enqueued": row["enqueued"], "running": row["running"]}
                    self._changed.notify_all()
            await asyncio.sleep(self.interval)
        self._task = None

    async def _counts(self) -> dict[str, int]:
        rows = await self.cache.get(self.pool, "counts", queries.STATUS_COUNTS)
        self.queries += 1
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({r["status"]: int(r["n"]) for r in rows})
        return counts

    async def stream(self, request: Request) -> AsyncIterator[str]:
        self.listeners += 1
        if self._task is None:
            self._task = asyncio.create_task(self._poll())
        try:
            seen = 0
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                async with self._changed:
                    if self.version == seen:
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(self._changed.wait(), 15)
                if self.version != seen:
                    seen = self.version
                    yield f"event: change\ndata: {json.dumps(self.snapshot)}\n\n"
                else:
                    yield ": keep-alive\n\n"
        finally:
            self.listeners -= 1


def create_app(dsn: str, *, actions: bool = False, token: str | None = None,
               poll_interval: float = 1.0) -> Starlette:
    """The dashboard as an ASGI app. ``actions=True`` needs a ``token``."""
    if actions and not token:
        raise ValueError("actions need a token (--token or RATCHET_UI_TOKEN)")
    secret = secrets.token_bytes(32)
    sessions: set[str] = set()

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        conn.adapters.register_loader("timestamptz", _InfinityTimestamptzLoader)
        await conn.set_autocommit(True)

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, min_size=1, max_size=4, open=False, configure=configure,
        kwargs={"row_factory": dict_row, "application_name": "ratchet-ui"})
    cache = Cache()
    broadcaster = Broadcaster(pool, poll_interval, cache)

    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(["html"]))
    env.filters.update(json=_json, ago=_ago, ts=_ts, duration=_duration)
    env.globals.update(statuses=STATUSES, page_sizes=PAGE_SIZES, actions_enabled=actions)

    def session_of(request: Request) -> str | None:
        sid = request.cookies.get(COOKIE)
        return sid if sid in sessions else None

    def csrf_for(sid: str) -> str:
        return hmac.new(secret, sid.encode(), hashlib.sha256).hexdigest()

    def render(request: Request, template: str, status_code: int = 200,
               **context: Any) -> HTMLResponse:
        sid = session_of(request)
        html = env.get_template(template).render(
            request=request, path=request.url.path, signed_in=sid is not None,
            live_version=broadcaster.version,
            csrf=csrf_for(sid) if sid else "", **context)
        return HTMLResponse(html, status_code=status_code)

    def error(request: Request, message: str, status_code: int = 400) -> HTMLResponse:
        return render(request, "error.html", status_code=status_code, message=message)

    async def fetch(sql: str, params: Any = None) -> list[dict[str, Any]]:
        async with pool.connection() as conn:
            cur = await conn.execute(sql, params)
            rows: list[dict[str, Any]] = await cur.fetchall()
            return rows

    async def overview(request: Request) -> Response:
        counts = dict.fromkeys(STATUSES, 0)
        rows = await cache.get(pool, "counts", queries.STATUS_COUNTS)
        counts.update({r["status"]: int(r["n"]) for r in rows})
        window = request.query_params.get("window", "1 hour")
        windows = {"15 minutes": (900, 30), "1 hour": (3600, 60), "6 hours": (21600, 300),
                   "1 day": (86400, 1800), "7 days": (604800, 10800)}
        if window not in windows:
            return error(request, f"window must be one of {', '.join(windows)}")
        span, step = windows[window]
        start = datetime.now(timezone.utc).timestamp() - span
        buckets = await cache.get(pool, "throughput " + window, queries.THROUGHPUT,
                                  {"window": timedelta(seconds=span),
                                   "bucket": timedelta(seconds=step)})
        slots = span // step
        workers = await fetch(queries.WORKERS)
        # The view calls ratchet.now(): a SELECT-only role may not (then the
        # dashboard's own lease query, on the tables alone, stands in).
        view = await fetch("select to_regclass('ratchet.workers') is not null"
                           " and has_function_privilege('ratchet.now()', 'execute') as present")
        registered = await fetch(queries.WORKERS_VIEW) if view[0]["present"] else None
        return render(request, "overview.html", counts=counts, total=sum(counts.values()),
                      queues=await fetch(queries.QUEUES), workers=workers,
                      registered=registered, window=window, windows=list(windows),
                      throughput=charts.throughput(buckets, start, step, slots),
                      failure=charts.failure_rate(buckets, start, step, slots))

    async def workflows(request: Request) -> Response:
        try:
            filters, limit, after = parse_filters(request.query_params)
        except BadInput as exc:
            return error(request, str(exc))
        sql, params = queries.list_query(filters, limit, after)
        rows = await fetch(sql, params)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = (_encode_cursor(rows[-1]["created_at"], rows[-1]["workflow_id"])
                       if more else None)
        base = [(k, v) for k, v in request.query_params.multi_items()
                if k != "after" and v]
        return render(request, "workflows.html", rows=rows, filters=filters,
                      raw=request.query_params, limit=limit, next_cursor=next_cursor,
                      base=base, first_page=after is None)

    async def workflow(request: Request) -> Response:
        wid = request.path_params["workflow_id"]
        if len(wid) > 200:
            return error(request, "a workflow id is at most 200 characters")
        found = await fetch(queries.WORKFLOW, [wid])
        if not found:
            return error(request, f"no workflow with id {wid!r}", 404)
        wf = found[0]
        steps = await fetch(queries.STEPS, [wid])
        runs = None
        if (await fetch(queries.RUNS_TABLE))[0]["present"]:
            try:
                runs = await fetch(queries.RUNS, [wid])
            except psycopg.Error:
                runs = None
        explain: Any = None
        explain_error = None
        if wf["status"] in LIVE:
            try:
                explain = (await fetch(queries.EXPLAIN, [wid]))[0]["explain"]
            except psycopg.errors.InsufficientPrivilege:
                explain_error = ("this role may not run ratchet.explain(); grant it "
                                 "ratchet_client (or EXECUTE on ratchet.explain(text))")
            except psycopg.errors.UndefinedFunction:
                explain_error = "ratchet.explain() is not installed (Ratchet < 0.2)"
        parent = (await fetch(queries.WORKFLOW, [wf["parent_id"]])
                  if wf["parent_id"] else [])
        return render(request, "workflow.html", wf=wf, steps=steps, runs=runs,
                      timeline=charts.timeline(wf, steps, runs),
                      children=await fetch(queries.CHILDREN, [wid]),
                      parent=parent[0] if parent else None,
                      messages=await fetch(queries.MESSAGES, [wid]),
                      events=await fetch(queries.EVENTS, [wid]),
                      explain=explain, explain_error=explain_error)

    async def queues_page(request: Request) -> Response:
        return render(request, "queues.html", queues=await fetch(queries.QUEUES))

    async def schedules_page(request: Request) -> Response:
        return render(request, "schedules.html", schedules=await fetch(queries.SCHEDULES))

    async def events(request: Request) -> Response:
        return StreamingResponse(broadcaster.stream(request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    async def health(request: Request) -> Response:
        await fetch("select 1")
        return Response(json.dumps({"ok": True, "listeners": broadcaster.listeners,
                                    "change_queries": broadcaster.queries}),
                        media_type="application/json")

    # -- actions -------------------------------------------------------------

    async def login(request: Request) -> Response:
        if not actions:
            return error(request, "actions are off; start the dashboard with --actions", 404)
        if request.method == "GET":
            return render(request, "login.html", failed=False)
        form = await request.form()
        given = str(form.get("token", ""))
        assert token is not None
        if not hmac.compare_digest(given.encode(), token.encode()):
            return render(request, "login.html", status_code=403, failed=True)
        sid = secrets.token_urlsafe(32)
        sessions.add(sid)
        response = RedirectResponse(str(form.get("next") or "/"), status_code=303)
        response.set_cookie(COOKIE, sid, httponly=True, samesite="strict")
        return response

    async def logout(request: Request) -> Response:
        sid = session_of(request)
        if sid:
            sessions.discard(sid)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    async def authorize(request: Request) -> tuple[Any, Response | None]:
        if not actions:
            return None, error(request, "actions are off; start the dashboard with "
                                        "--actions --token ...", 404)
        form = await request.form()
        auth = request.headers.get("authorization", "")
        assert token is not None
        if auth.startswith("Bearer "):
            if hmac.compare_digest(auth[7:].encode(), token.encode()):
                return form, None
            return None, error(request, "wrong token", 403)
        sid = session_of(request)
        if sid is None:
            return None, error(request, "sign in with the dashboard token first (/login)", 403)
        if not hmac.compare_digest(str(form.get("csrf", "")).encode(), csrf_for(sid).encode()):
            return None, error(request, "missing or wrong CSRF token: reload the page and "
                                        "try again", 403)
        return form, None

    async def act(request: Request) -> Response:
        form, refused = await authorize(request)
        if refused is not None:
            return refused
        what = request.path_params["action"]
        target = request.path_params["target"]
        back = f"/workflows/{target}"
        try:
            if what == "cancel":
                await fetch("select ratchet.cancel(%s) as n", [target])
            elif what == "resume":
                await fetch("select ratchet.resume(%s)", [target])
            elif what == "fork":
                try:
                    step = int(str(form.get("from_step", "")))
                except ValueError:
                    return error(request, "from_step must be a step number")
                row = await fetch("select ratchet.fork(%s, from_step => %s) as id",
                                  [target, step])
                back = f"/workflows/{row[0]['id']}"
            elif what in ("pause", "unpause"):
                fn = "pause_queue" if what == "pause" else "resume_queue"
                await fetch(f"select ratchet.{fn}(%s)", [target])
                back = "/queues"
            else:
                return error(request, f"unknown action {what!r}", 404)
        except psycopg.errors.InsufficientPrivilege:
            return error(request, "this database role may not do that; actions need a role "
                                  "granted ratchet_client", 403)
        except psycopg.Error as exc:
            diag = exc.diag
            message = diag.message_primary or str(exc)
            hint = f" ({diag.message_hint})" if diag.message_hint else ""
            return error(request, f"{what} failed: {message}{hint}", 409)
        return RedirectResponse(back, status_code=303)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.open()
        try:
            yield
        finally:
            await pool.close()

    app = Starlette(routes=[
        Route("/", overview),
        Route("/workflows", workflows),
        Route("/workflows/{workflow_id:path}", workflow),
        Route("/queues", queues_page),
        Route("/schedules", schedules_page),
        Route("/events", events),
        Route("/health", health),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/actions/{action}/{target:path}", act, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ], lifespan=lifespan)

    async def on_error(request: Request, exc: Exception) -> Response:
        return error(request, "the dashboard hit an error reading the database: "
                              f"{type(exc).__name__}", 500)

    app.add_exception_handler(psycopg.Error, on_error)
    app.state.broadcaster = broadcaster
    return app


def serve(dsn: str, host: str = "127.0.0.1", port: int = 8080, *, actions: bool = False,
          token: str | None = None, poll_interval: float = 1.0) -> None:
    """Serve the dashboard with uvicorn until interrupted."""
    import uvicorn

    app = create_app(dsn, actions=actions, token=token, poll_interval=poll_interval)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
