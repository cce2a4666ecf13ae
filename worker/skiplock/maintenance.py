"""Maintenance: the rescuer (expired leases, gone workers), lifetimes (ttl, result_ttl, failure_ttl),
retention (archive) and the forgetting of silent workers, as tasks any process can run, and the
worker's service that runs them all.

Every worker runs the ``Maintenance`` service, but only the elected leader (the holder of the
``skiplock.leaders`` row its heartbeat renews) does rounds, so a fleet of hundreds sends one
process's statements, not hundreds; a round also takes a transaction-scoped advisory lock, so two
processes never do it at once (a leadership changing hands, ``Worker.maintain()``). The leader
alone computes the queue-wide gauges (depth, oldest age, pending by priority bucket); the others
export none of them. The operator runs the same ``Rescuer`` (with the worker ids of deleted pods)
rather than a copy of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import plans
from .database import Database
from .errors import DatabaseUnavailable
from .metrics import WorkerMetrics
from .plans import Plan, Row
from .queue import sleep_jittered
from .retry import DEFAULT, RetryPolicy
from .service import Service, note_db_error

log = logging.getLogger("skiplock.worker")
ARCHIVE_BATCH = 5000
ARCHIVE_BUDGET_S = 2.0  # per maintenance round, in batches of ARCHIVE_BATCH (one transaction each)
LIFETIME_BATCH = 5000  # jobs expired, and finished jobs deleted, per round

Step = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Rescuer:
    """Running jobs whose lease expired, or whose worker is known to be gone, ended their execution
    without an outcome: a failed attempt, retried after ``policy``'s delay (dead when the attempts
    are spent, cancelled when a cancel was requested)."""

    policy: RetryPolicy = DEFAULT

    def plan(self, gone_workers: Sequence[str] = ()) -> Plan:
        return plans.rescue(gone_workers, self.policy)

    async def rescue(self, db: Database, gone_workers: Sequence[str] = ()) -> list[Row]:
        """One rescue (its own transaction); returns the rows rescued."""
        rows: list[Row] = await db.run(self.plan(gone_workers))
        return rows


@dataclass(frozen=True)
class Archiver:
    """Retention: finished jobs older than their window move to ``skiplock.jobs_history``, a bounded
    batch per statement, so that claim cost stays flat however long the history grows."""

    retain_finished: float
    retain_dead: float
    batch: int = ARCHIVE_BATCH

    def step(self) -> Step:
        return ("archive", {"finished_after": self.retain_finished, "dead_after": self.retain_dead,
                            "limit": self.batch})

    def plan(self) -> Plan:
        """One more batch under the maintenance lock; returns how many moved (0: another process holds it)."""
        (lock,) = yield [("try_maintenance_lock", {})]
        if not lock[0]["locked"]:
            return 0
        (moved,) = yield [self.step()]
        return int(moved[0]["moved"])


@dataclass(frozen=True)
class WorkerReaper:
    """Worker rows not seen for ``older_than`` seconds: the worker stopped without saying so."""

    older_than: float

    def step(self) -> Step:
        return ("forget_workers", {"older_than": self.older_than})


@dataclass(frozen=True)
class Lifetimes:
    """Jobs' own lifetimes: waiting jobs past their ttl end cancelled (``expired``), their
    dependents with them; finished jobs past their result_ttl or failure_ttl are deleted."""

    batch: int = LIFETIME_BATCH

    def plan(self) -> Plan:
        """Returns the rows expired."""
        expired: list[Row] = yield from plans.expire(self.batch)
        return expired

    def step(self) -> Step:
        return ("expire_finished", {"limit": self.batch})


class Maintenance(Service):
    """Every ``interval`` seconds (jittered): rescue, expire, archive a batch, delete finished jobs
    whose lifetime ended and forget silent workers in one transaction under the advisory lock;
    while archive batches come back full, more follow (up to
    ARCHIVE_BUDGET_S: at a few thousand jobs a second, one batch per round would let the hot table
    grow without end). With ``refresh_depth``, the queue-depth gauges are refreshed too."""

    name = "maintenance"

    def __init__(self, db: Database, metrics: WorkerMetrics, *, interval: float, rescuer: Rescuer,
                 archiver: Archiver, reaper: WorkerReaper, refresh_depth: bool = False,
                 leader: Callable[[], bool] = lambda: True) -> None:
        super().__init__()
        self.db, self.metrics, self.interval = db, metrics, interval
        self.rescuer, self.archiver, self.reaper = rescuer, archiver, reaper
        self.lifetimes = Lifetimes()
        self.refresh_depth = refresh_depth
        self.leader = leader
        self.kick = asyncio.Event()
        """Set when this process just became the leader: a round at once (a dead leader's jobs wait no longer)."""

    async def run(self) -> None:
        while True:
            await sleep_jittered(self.interval, self.kick)
            self.kick.clear()
            if not self.leader():
                self._clear_depth()  # another process exports the queue-wide numbers
                continue
            try:
                await self.round()
            except DatabaseUnavailable as exc:
                note_db_error(self.metrics, "maintenance", exc)

    async def round(self) -> list[Row]:
        """One round now, if no other process is doing one; returns the rows rescued."""
        rescued: list[Row]
        rescued, expired, moved = await self.db.run(self._plan())
        deadline = time.monotonic() + ARCHIVE_BUDGET_S
        while moved >= self.archiver.batch and time.monotonic() < deadline:
            moved = await self.db.run(self.archiver.plan())
        for row in rescued:
            self.metrics.rescued.labels(row["queue"]).inc()
        for row in expired:
            self.metrics.expired.labels(row["queue"]).inc()
        if rescued:
            log.info("rescued %d jobs with expired leases", len(rescued))
        if self.refresh_depth:
            await self._refresh_depth()
        return rescued

    def _plan(self) -> Plan:
        """Rescue, expire, archive one batch, delete ended lifetimes, forget old workers; returns
        (rescued rows, expired rows, jobs archived)."""
        (lock,) = yield [("try_maintenance_lock", {})]
        if not lock[0]["locked"]:
            return [], [], 0
        rescued = yield from self.rescuer.plan()
        expired = yield from self.lifetimes.plan()
        moved, _, _ = yield [self.archiver.step(), self.reaper.step(), self.lifetimes.step()]
        return rescued, expired, moved[0]["moved"]

    async def _refresh_depth(self) -> None:
        rows = await self.db.execute("stats", {})
        by_priority = await self.db.execute("pending_by_priority", {})
        self._clear_depth()
        for r in rows:
            self.metrics.depth.labels(r["queue"], r["state"]).set(r["jobs"])
            if r["state"] == "pending":
                self.metrics.oldest.labels(r["queue"]).set(r["oldest_pending_seconds"])
        for r in by_priority:
            self.metrics.by_priority.labels(r["queue"], str(r["priority"])).set(r["jobs"])

    def _clear_depth(self) -> None:
        self.metrics.depth.clear()
        self.metrics.oldest.clear()
        self.metrics.by_priority.clear()
