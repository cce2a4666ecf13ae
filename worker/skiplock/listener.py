"""The listener service: LISTEN for new work on the queues a worker serves and wake its claimer.
NOTIFY can silently stop (a dropped connection), so the claimer also polls; this only makes new
work start at once. One connection of its own, reconnected with backoff when it breaks."""

from __future__ import annotations

import asyncio
import random

from .db import connect
from .metrics import WorkerMetrics
from .service import Service, note_db_error


class Listener(Service):
    """Sets ``wake`` for every notification naming one of ``queues`` (and after each reconnect,
    to catch up on anything sent while away)."""

    name = "listener"

    def __init__(self, dsn: str, queues: list[str], wake: asyncio.Event, metrics: WorkerMetrics) -> None:
        super().__init__()
        self.dsn, self.queues, self.wake, self.metrics = dsn, set(queues), wake, metrics

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                conn = await connect(self.dsn, "listener")
                async with conn:
                    await conn.execute("LISTEN skiplock_jobs")
                    delay = 0.5
                    self.wake.set()
                    async for note in conn.notifies():
                        if note.payload in self.queues:
                            self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                note_db_error(self.metrics, "listen", exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 30.0)
