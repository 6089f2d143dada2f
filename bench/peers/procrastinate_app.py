"""procrastinate side of Ratchet's peer benchmark (``bench/peers/run.py``).

``python procrastinate_app.py setup|prefill N|trickle N MS|worker W`` with the
database in ``PEERS_DSN``: the schema, N no-op jobs deferred in batches of
1,000 (``batch_defer``), N jobs deferred one at a time MS ms apart, or a
worker of concurrency W (LISTEN/NOTIFY on) until SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import sys

import procrastinate

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ["PEERS_DSN"]))


@app.task(name="noop", queue="bench")
async def noop() -> None:
    """The no-op job body."""


async def main(mode: str, args: list[str]) -> None:
    async with app.open_async():
        if mode == "setup":
            await app.schema_manager.apply_schema_async()
        elif mode == "prefill":
            left = int(args[0])
            while left > 0:
                n = min(left, 1000)
                await noop.batch_defer_async(*({} for _ in range(n)))
                left -= n
        elif mode == "trickle":
            for _ in range(int(args[0])):
                await noop.defer_async()
                await asyncio.sleep(int(args[1]) / 1000)
        elif mode == "worker":
            print("ready", flush=True)
            await app.run_worker_async(queues=["bench"], concurrency=int(args[0]), wait=True,
                                       install_signal_handlers=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
