"""Middleware: user hooks wrapped around every workflow run and step execution.

Two styles are accepted by :meth:`ratchet.App.add_middleware`:

* ``fn(info, call_next)`` calls ``call_next()`` and returns its result::

      def timing(info, call_next):
          t = time.monotonic()
          try:
              return call_next()
          finally:
              print(info.kind, info.name, time.monotonic() - t)

* ``fn(info)`` returns a context manager (e.g. a ``@contextmanager`` function,
  or an OpenTelemetry ``tracer.start_as_current_span(...)``)::

      @contextlib.contextmanager
      def span(info):
          with tracer.start_as_current_span(f"{info.kind} {info.name}"):
              yield

Workflow middleware runs on every run of the workflow, replays included; step
middleware only when a step really executes (not when it is replayed).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ExecutionInfo", "Middleware"]


@dataclass(frozen=True)
class ExecutionInfo:
    """What a middleware is wrapping."""

    #: ``"workflow"`` or ``"step"``
    kind: Literal["workflow", "step"]
    #: the workflow's or step's name
    name: str
    workflow_id: str
    #: the workflow's run (a new one per claim)
    run_id: int
    #: the workflow's attempt number (1 on the first run)
    attempt: int
    #: the step's number; None for a workflow
    step_id: int | None = None


Middleware = (Callable[[ExecutionInfo, Callable[[], Any]], Any]
              | Callable[[ExecutionInfo], AbstractContextManager[Any]])


def _required_positional(fn: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    return sum(1 for p in params if p.kind in kinds)


class _Wrapper:
    def __init__(self, fn: Middleware) -> None:
        self.fn = fn
        self.context_manager = _required_positional(fn) == 1

    def __call__(self, info: ExecutionInfo, call_next: Callable[[], Any]) -> Any:
        if self.context_manager:
            with self.fn(info):  # type: ignore[call-arg]
                return call_next()
        return self.fn(info, call_next)  # type: ignore[call-arg]


class MiddlewareChain:
    """The app's middleware, outermost first."""

    def __init__(self) -> None:
        self._items: list[_Wrapper] = []

    def __bool__(self) -> bool:
        """Whether any middleware is configured (without, callers skip building
        an :class:`ExecutionInfo` and call the function directly)."""
        return bool(self._items)

    def add(self, fn: Middleware) -> None:
        """Append ``fn`` (it runs inside the ones added before it)."""
        self._items.append(_Wrapper(fn))

    def run(self, info: ExecutionInfo, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` wrapped in every middleware."""
        call = fn
        for item in reversed(self._items):
            call = _bind(item, info, call)
        return call()


def _bind(item: _Wrapper, info: ExecutionInfo, call_next: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: item(info, call_next)
