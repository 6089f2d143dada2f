"""The Ratchet dashboard (``pip install 'pg-ratchet[ui]'``; ``ratchet ui --dsn ...``).

:func:`create_app` builds the ASGI app; :func:`serve` runs it with uvicorn.
Every read is plain SQL on Ratchet's tables (:mod:`ratchet.ui.queries`,
documented in docs/observability.md).
"""

from __future__ import annotations

from .app import create_app, serve

__all__ = ["create_app", "serve"]
