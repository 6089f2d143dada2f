"""OpenTelemetry tracing (optional extra ``pg-ratchet[otel]``).

``App(tracing=True)`` (or ``None``, the default: on when the ``opentelemetry``
API is installed and an application set a tracer provider) adds:

* a ``ratchet.start <name>`` span (kind PRODUCER) around :meth:`App.start`;
  its W3C trace context (``traceparent``/``tracestate``) is stored in the
  workflow row (``ratchet.workflows.trace_context``);
* a ``ratchet.workflow <name>`` span (CONSUMER) per run, whose parent is that
  stored context, so every run on whichever worker continues the starter's
  trace; a middleware, outermost, so user middleware runs inside it;
* a ``ratchet.step <name>`` span per executed step, a child of its run's span.
  Children started inside a workflow store the current context, so their
  runs join the same trace.

Attributes: ``ratchet.workflow_id``, ``ratchet.workflow_name``,
``ratchet.run_id``, ``ratchet.attempt``, ``ratchet.step_id``,
``ratchet.step_name`` and ``ratchet.outcome`` (``ok``, ``error`` or
``suspended``); errors are recorded as span events with status ERROR.
Tracing never fails a workflow: a broken tracer is logged and skipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._errors import _ControlFlow, _Suspended
from ._middleware import ExecutionInfo

if TYPE_CHECKING:
    from ._db import Database

logger = logging.getLogger("ratchet")

__all__ = ["Tracing", "tracing_for"]


def _available() -> bool:
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


def tracing_for(setting: Any, db: Database | None) -> Tracing | None:
    """The app's tracing, or None. ``setting`` None: on when the API is
    installed and a real (SDK) tracer provider is set; True: on (with the
    global provider); a ``TracerProvider``: on, with that provider. ``db``
    reads a run's stored trace context (None: the caller reads it, as the
    async client does)."""
    if setting is False:
        return None
    if not _available():
        if setting:
            raise ImportError("App(tracing=True) needs OpenTelemetry: "
                              "pip install 'pg-ratchet[otel]'")
        return None
    if setting is None:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        if type(provider).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
            return None
    return Tracing(db, None if isinstance(setting, bool) or setting is None else setting)


class Tracing:
    """Spans for starts, runs and steps (see the module docstring)."""

    def __init__(self, db: Database | None, provider: Any = None) -> None:
        from opentelemetry import trace

        from . import __version__

        self._db = db
        self._tracer = (provider.get_tracer("ratchet", __version__) if provider is not None
                        else trace.get_tracer("ratchet", __version__))

    @staticmethod
    def carrier() -> dict[str, str] | None:
        """The current context as a W3C carrier, or None without a valid span."""
        from opentelemetry.propagate import inject

        carrier: dict[str, str] = {}
        inject(carrier)
        return carrier or None

    @contextlib.contextmanager
    def start(self, name: str, params: dict[str, Any]) -> Iterator[None]:
        """A span around a start; its context goes into ``params['trace_context']``."""
        from opentelemetry.trace import SpanKind

        with self._tracer.start_as_current_span(
                f"ratchet.start {name}", kind=SpanKind.PRODUCER,
                attributes={"ratchet.workflow_name": name,
                            "ratchet.workflow_id": str(params.get("workflow_id") or ""),
                            "ratchet.queue": str(params.get("queue") or "")}):
            carrier = self.carrier()
            params["trace_context"] = None if carrier is None else json.dumps(carrier)
            yield

    def middleware(self, info: ExecutionInfo, call_next: Callable[[], Any]) -> Any:
        """The run and step spans (added to the app's middleware, outermost)."""
        parent = self._stored_context(info.workflow_id) if info.kind == "workflow" else None
        with self.span(info, parent):
            return call_next()

    @contextlib.contextmanager
    def span(self, info: ExecutionInfo, parent: Any) -> Iterator[Any]:
        """The span of one run (``parent``: the context stored at start, see
        :func:`stored_context`) or one step; its outcome is set from how the
        block ends. The sync middleware and the async client share it."""
        from opentelemetry.trace import SpanKind, Status, StatusCode

        attributes: dict[str, Any] = {"ratchet.workflow_id": info.workflow_id,
                                      "ratchet.run_id": info.run_id,
                                      "ratchet.attempt": info.attempt}
        if info.kind == "workflow":
            attributes["ratchet.workflow_name"] = info.name
            kind = SpanKind.CONSUMER
        else:
            attributes["ratchet.step_name"] = info.name
            attributes["ratchet.step_id"] = info.step_id if info.step_id is not None else -1
            parent = None
            kind = SpanKind.INTERNAL
        with self._tracer.start_as_current_span(
                f"ratchet.{info.kind} {info.name}", context=parent, kind=kind,
                attributes=attributes, record_exception=False,
                set_status_on_exception=False) as span:
            try:
                yield span
            except _Suspended:
                span.set_attribute("ratchet.outcome", "suspended")
                raise
            except _ControlFlow:
                span.set_attribute("ratchet.outcome", "aborted")
                raise
            except BaseException as exc:
                span.set_attribute("ratchet.outcome", "error")
                # a step's own exception arrives as StepError naming it
                kind_name = str(getattr(exc, "type", None) or type(exc).__name__)
                span.set_attribute("ratchet.error_type", kind_name)
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{kind_name}: {exc}"))
                raise
            span.set_attribute("ratchet.outcome", "ok")

    def _stored_context(self, workflow_id: str) -> Any:
        from . import _queries

        if self._db is None:
            return None
        try:
            row = self._db.fetchone(_queries.TRACE_CONTEXT, (workflow_id,))
        except Exception:  # tracing never fails a run
            logger.warning("workflow %s: could not read its trace context", workflow_id,
                           exc_info=True)
            return None
        return stored_context(row["trace_context"] if row else None)


def stored_context(value: Any) -> Any:
    """The OpenTelemetry context of a stored W3C carrier (a workflow's
    ``trace_context``), or None."""
    from opentelemetry.propagate import extract

    return extract(value) if isinstance(value, dict) and value else None
