"""The scheduler service: declares the registry's periodic schedules, then fires due ticks. One cheap
statement asks when the next tick is due; the locking transaction runs only when one is, so idle
workers without schedules send one statement per SCHEDULE_IDLE seconds, not three a second; and only
the elected leader (``leader()``) checks at all: a fleet sends one process's statements. Every
worker declares its registry's schedules once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from . import plans
from .database import Database
from .errors import DatabaseUnavailable
from .metrics import WorkerMetrics
from .queue import sleep_jittered
from .schedules import ScheduleSpec
from .service import Service, note_db_error

log = logging.getLogger("skiplock.worker")
SCHEDULE_CHECK = 1.0  # after a tick fired, or an error
SCHEDULE_IDLE = 5.0  # at most this long before a new or changed schedule is seen


class Scheduler(Service):
    """Fires the ticks of every schedule in the database (each tick once, however many run this)."""

    name = "scheduler"

    def __init__(self, db: Database, metrics: WorkerMetrics, declare: Sequence[ScheduleSpec] = (),
                 leader: Callable[[], bool] = lambda: True) -> None:
        super().__init__()
        self.db, self.metrics, self.declare, self.leader = db, metrics, list(declare), leader

    async def run(self) -> None:
        declared = False
        while True:
            wait = SCHEDULE_CHECK
            try:
                if not declared:
                    for spec in self.declare:
                        await self.db.execute("upsert_schedule", spec.row("code", datetime.now(UTC)))
                    declared = True
                if not self.leader():
                    await sleep_jittered(SCHEDULE_CHECK)
                    continue
                (due,) = await self.db.execute("next_schedule", {})
                if due["seconds"] is None:
                    wait = SCHEDULE_IDLE
                elif due["seconds"] > 0:
                    wait = min(due["seconds"], SCHEDULE_IDLE)
                else:
                    fired: list[tuple[str, str]] = await self.db.run(plans.fire_schedules())
                    if fired:
                        self.metrics.count_enqueued(fired)
                        log.info("enqueued %d scheduled jobs", len(fired))
            except DatabaseUnavailable as exc:
                note_db_error(self.metrics, "schedules", exc)
            await sleep_jittered(wait)
