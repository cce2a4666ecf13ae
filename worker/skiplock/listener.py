"""The listener service: LISTEN for new work on the queues a worker serves and wake its claimer.
NOTIFY can silently stop (a dropped connection), so the claimer also polls; this only makes new
work start at once. One session connection of its own (``dsn``: a direct URL when the rest goes
through a transaction pooler, where LISTEN does not work), reconnected with backoff when it breaks.

While it listens (``healthy``), the claimer's safety-net poll backs off: ``skiplock_due``
notifications ('queue epoch') say when the soonest scheduled job or retry of a queue is due, so an
idle worker wakes for those too (``due_in``) without polling for them.

No thundering herd: a NOTIFY reaches every idle worker of the queue, but they do not all claim.
Each waits a random backoff within a spread that grows with the number of peers (a step per
peer: ``HERD_STEP``, or three times the time a claim takes when more, so that the first
claimer's notice arrives before the next one's backoff ends; the first of them claims within
about one step, whatever their number: first-job latency does not grow with the fleet); a claim
that takes fewer jobs than it asked for says so on ``skiplock_drained`` (``claim_announce``), and
a worker still waiting its backoff then drops the wake-up (``settle``). The claimer ignores its
own notice: a job enqueued while it claimed is then claimed by it (it has a free slot: it took
fewer than it asked for)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

from .db import connect
from .metrics import WorkerMetrics
from .service import Service, note_db_error

CHANNELS = ("skiplock_jobs", "skiplock_due", "skiplock_drained")
HERD_STEP = 0.001  # least backoff spread per peer (seconds); more when claims take longer
HERD_STEP_MAX = 0.01  # most (a slow claim must not make new work wait long)
HERD_SPREAD_MAX = 1.0  # the longest backoff, whatever the number of peers


class Listener(Service):
    """Sets ``wake`` for every notification naming one of ``queues`` (and after each reconnect,
    to catch up on anything sent while away)."""

    name = "listener"

    def __init__(self, dsn: str, queues: list[str], wake: asyncio.Event, metrics: WorkerMetrics,
                 worker_id: str = "", peers: Callable[[], int] = lambda: 1,
                 claim_seconds: Callable[[], float] = lambda: 0.0) -> None:
        super().__init__()
        self.dsn, self.queues, self.wake, self.metrics = dsn, set(queues), wake, metrics
        self.worker_id, self.peers, self.claim_seconds = worker_id, peers, claim_seconds
        self.healthy = False
        self.pending: set[str] = set()
        """Queues with new work noticed and not yet claimed (or drained by another worker)."""
        self._catch_up = False  # (re)connected: claim at once
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

    @property
    def herd(self) -> bool:
        """Whether other workers share this one's queues (and claims should say when they drain)."""
        return self.healthy and self.peers() > 1

    async def settle(self, stopping: asyncio.Event | None = None) -> bool:
        """After ``wake`` was set: whether to claim now. New work noticed: after a random backoff
        within the herd's spread, unless another worker's claim drained every queue noticed
        meanwhile. A (re)connect: at once. A due-time notice alone: no (the claimer recomputes
        how long it sleeps). ``stopping`` set ends the backoff at once."""
        if self._catch_up:
            self._catch_up = False
            self.pending.clear()
            return True
        if not self.pending:
            return False
        peers = self.peers()
        if peers > 1:
            step = min(max(HERD_STEP, 3 * self.claim_seconds()), HERD_STEP_MAX)  # a claim and its notice
            delay = random.random() * min(step * (peers - 1), HERD_SPREAD_MAX)
            if stopping is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stopping.wait()
        claim = bool(self.pending)
        self.pending.clear()
        return claim

    def _note(self, channel: str, payload: str) -> None:
        if channel == "skiplock_jobs":
            if payload in self.queues:
                self.notified += 1
                self.pending.add(payload)
                self.wake.set()
            return
        if channel == "skiplock_drained":
            who, _, queue = payload.rpartition("\n")
            if who != self.worker_id:
                self.pending.discard(queue)
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
                    self._catch_up = True
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
