"""JSON encoding of inputs, outputs, messages and events.

Everything Ratchet stores is JSON (JSONB in the tables), never pickle. Values
are encoded here, in the caller's process, so that a value that is not
JSON-serializable fails at the call site with a :class:`SerializationError`
before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ._errors import SerializationError


def dumps(value: Any, what: str) -> str:
    """Encode ``value`` as JSON text; ``what`` names it in the error message."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"{what} must be JSON-serializable (Ratchet stores JSON, never pickle): {exc}"
        ) from None


def encode_input(args: Sequence[Any], kwargs: Mapping[str, Any], what: str) -> str:
    """A workflow's input: ``{"args": [...], "kwargs": {...}}``."""
    return dumps({"args": list(args), "kwargs": dict(kwargs)}, what)


def decode_input(value: Any) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments from a stored input.

    ``{"args": [...], "kwargs": {...}}`` (what this client writes) is split;
    any other JSON object (started from SQL or the CLI, say ``{"order_id": 4}``)
    becomes keyword arguments; a JSON array becomes positional arguments; any
    other value is the single positional argument; NULL means no arguments.
    """
    if value is None:
        return [], {}
    if isinstance(value, dict):
        if set(value) <= {"args", "kwargs"} and isinstance(value.get("args", []), list) \
                and isinstance(value.get("kwargs", {}), dict):
            return list(value.get("args", [])), dict(value.get("kwargs", {}))
        return [], dict(value)
    if isinstance(value, list):
        return list(value), {}
    return [value], {}
