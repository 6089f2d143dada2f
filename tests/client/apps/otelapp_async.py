"""The workflows of otelapp.py for the async client, exporting spans to the
same file (the tracer provider otelapp.py sets up)."""

from __future__ import annotations

import otelapp  # noqa: F401  (sets the global tracer provider)
from crashapp_async import block

import ratchet

app = ratchet.AsyncApp(poll_interval=0.2)


@app.step()
async def fetch(n: int) -> int:
    return n * 2


@app.step(retries=0)
async def explode() -> None:
    raise ValueError("boom")


@app.workflow(max_attempts=1)
async def traced(n: int) -> int:
    total = await fetch(n) + await fetch(n + 1)
    try:
        await explode()
    except Exception:
        pass
    return total


@app.workflow()
async def traced_crash(n: int) -> int:
    """Blocks between its steps in a worker told to (CRASH_BLOCK_AT=between)."""
    first = await fetch(n)
    await block("between")
    return first + await fetch(n + 1)
