"""The completer: records outcomes of executions in batches, one transaction per flush whatever its
size (``plans.finish``: the outcome, the retry policy's delay for a failure, and the dependents)."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any

from . import plans
from .database import Database
from .errors import DatabaseUnavailable
from .executions import Execution, Executions
from .metrics import WorkerMetrics
from .queue import sleep_jittered
from .retry import RetryPolicy
from .service import Service, note_db_error

log = logging.getLogger("skiplock.worker")
FLUSH_ATTEMPTS_AT_STOP = 3

Outcome = dict[str, Any]
"""``{id, attempt, outcome, result, error}`` (and optionally ``retry_in``): see ``plans.finish``."""


class Completer(Service):
    """Buffers outcomes (``add``) and records them; an outcome that cannot be recorded now (the
    database is away) stays buffered while its lease keeps being renewed."""

    name = "completer"

    def __init__(self, db: Database, worker_id: str, policy: RetryPolicy, executions: Executions,
                 metrics: WorkerMetrics, on_recorded: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.db, self.worker_id, self.policy = db, worker_id, policy
        self.executions, self.metrics = executions, metrics
        self.on_recorded = on_recorded
        self.recorded = 0  # outcomes handled (recorded, or dropped as stale)
        self._buffer: list[Outcome] = []
        self._flushing: list[Outcome] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def add(self, outcome: Outcome) -> None:
        """Record ``outcome`` with the next flush."""
        self._buffer.append(outcome)
        self._wake.set()

    def buffered(self) -> set[Execution]:
        """Executions whose outcome is waiting for (or in) a flush."""
        return {(o["id"], o["attempt"]) for o in (*self._buffer, *self._flushing)}

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                flushed = await self.flush()
            except Exception:  # a bug, not an outage: the outcomes stay buffered, retried
                log.exception("could not record %d outcomes; retrying", len(self._buffer))
                flushed = False
            if not flushed:
                await sleep_jittered(1.0)
                self._wake.set()

    async def stopped(self) -> None:
        await self.flush_all()

    async def flush(self) -> bool:
        """Record every buffered outcome in one transaction; False if the database is away. One
        flush at a time, and a flush that started runs to its end even if its caller is cancelled
        (shutdown): an outcome taken from the buffer is always either recorded or put back."""
        return await asyncio.shield(self._flush_now())

    async def flush_all(self) -> None:
        """Record every outcome, the one a flush in progress holds included (waits for it)."""
        for _ in range(FLUSH_ATTEMPTS_AT_STOP):
            if await self.flush() and not self._buffer:
                return
            await asyncio.sleep(1.0)
        if self._buffer:
            log.error("could not record %d outcomes: their jobs will be rescued when the lease expires",
                      len(self._buffer))

    async def _flush_now(self) -> bool:
        async with self._lock:
            batch, self._buffer = self._buffer, []
            if not batch:
                return True
            self._flushing = batch
            try:
                done = await self.db.run(plans.finish(self.worker_id, batch, self.policy))
            except BaseException as exc:
                self._buffer[:0] = batch
                if not isinstance(exc, DatabaseUnavailable):
                    raise
                note_db_error(self.metrics, "finish", exc)
                return False
            finally:
                self._flushing = []
        self._settle(batch, {(r["id"], r["attempts"]): r["state"] for r in done})
        return True

    def _settle(self, batch: list[Outcome], recorded: dict[Execution, str]) -> None:
        """Drop the recorded executions from the held ones; count them by the state they ended in."""
        held = self.executions.held
        outcomes: collections.Counter[tuple[str, str, str | None]] = collections.Counter()
        for item in batch:
            key = (item["id"], item["attempt"])
            entry = held.pop(key, None)
            if entry is None:
                continue
            state = recorded.get(key)
            if state is None:
                log.warning("job %s: lease lost before it finished; outcome dropped", key[0])
            outcomes[entry.job.queue, entry.job.type, state] += 1
        self._count(outcomes)
        self.recorded += len(batch)
        self.metrics.in_flight.set(len(held))
        self.executions.freed.set()
        if self.on_recorded is not None:
            self.on_recorded()

    def _count(self, outcomes: collections.Counter[tuple[str, str, str | None]]) -> None:
        """Metrics of a recorded batch, by (queue, type, state the job ended in; None: lease lost)."""
        for (queue, type, state), n in outcomes.items():
            m = self.metrics.of(queue, type)
            if state is None:
                m.lost.inc(n)
            elif state == "completed":
                m.completed.inc(n)
            elif state == "cancelled":
                m.cancelled.inc(n)
            else:
                m.failed.inc(n)
                (m.retried if state == "retry" else m.dead).inc(n)
