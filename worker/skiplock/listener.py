"""The listener service: LISTEN for new work on the queues a worker serves and wake its claimer.
NOTIFY can silently stop (a dropped connection), so the claimer also polls; this only makes new
work start at once. One session connection of its own (``dsn``: a direct URL when the rest goes
through a transaction pooler, where LISTEN does not work), reconnected with backoff when it breaks.

While it listens (``healthy``), the claimer's safety-net poll backs off: ``skiplock_due``
notifications ('queue epoch') say when the soonest scheduled job or retry of a queue is due, so an
idle worker wakes for those too (``due_in``) without polling for them."""

from __future__ import annotations

import asyncio
import random
import time

from .db import connect
from .metrics import WorkerMetrics
from .service import Service, note_db_error

CHANNELS = ("skiplock_jobs", "skiplock_due")


class Listener(Service):
    """Sets ``wake`` for every notification naming one of ``queues`` (and after each reconnect,
    to catch up on anything sent while away)."""

    name = "listener"

    def __init__(self, dsn: str, queues: list[str], wake: asyncio.Event, metrics: WorkerMetrics) -> None:
        super().__init__()
        self.dsn, self.queues, self.wake, self.metrics = dsn, set(queues), wake, metrics
        self.healthy = False
        self.notified = 0
        """Notifications received for this worker's queues (new work, due times)."""
        self._due: float | None = None  # wall-clock time of the soonest known due job

    def due_in(self) -> float | None:
        """Seconds until the soonest scheduled job or retry this worker was told about is due
        (0 when past: then forgotten, the claim that follows takes it); None when none is known."""
        if self._due is None:
            return None
        left = self._due - time.time()
        if left <= 0:
            self._due = None
            return 0.0
        return left

    def _note(self, channel: str, payload: str) -> None:
        if channel == "skiplock_jobs":
            if payload in self.queues:
                self.notified += 1
                self.wake.set()
            return
        queue, _, when = payload.rpartition(" ")
        if queue in self.queues:
            try:
                due = float(when)
            except ValueError:
                return
            self.notified += 1
            if self._due is None or due < self._due:
                self._due = due
                self.wake.set()  # the claimer recomputes how long it may sleep

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                conn = await connect(self.dsn, "listener")
                async with conn:
                    for channel in CHANNELS:
                        await conn.execute(f"LISTEN {channel}")
                    delay = 0.5
                    self.healthy = True
                    self.wake.set()
                    async for note in conn.notifies():
                        self._note(note.channel, note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                note_db_error(self.metrics, "listen", exc)
            finally:
                self.healthy = False
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 30.0)
