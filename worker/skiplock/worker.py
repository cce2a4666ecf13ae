"""The worker: a set of services with one start/stop contract (``service.Service``), sharing one
database handle and the executions they hold.

Connections: the services share one pool of ``pool_size`` connections (default 1: every statement
is short, and a process claims, renews and records in a few a second at most), and the listener
holds one session connection for LISTEN (on ``listen_database_url`` when given: a direct URL when
the database URL is a transaction pooler; ``none``: no LISTEN, poll every ``poll_interval``). So a
worker process holds at most 2 server connections by default, idle or busy.

- executor (``executor.py``): claims jobs into free slots and runs their handlers; drains at stop;
- completer (``completer.py``): records outcomes in batches, one transaction per flush;
- lease keeper (``leases.py``): renews every held lease in one statement per interval, delivers
  cancel requests, tells an execution whose lease was lost to stop;
- maintenance (``maintenance.py``): rescues expired leases, archives old jobs, forgets silent
  workers, under an advisory lock (the operator runs the same rescuer);
- scheduler (``scheduler.py``): fires due ticks of periodic schedules;
- listener (``listener.py``): LISTEN for new work, to wake the executor;
- watchdog (``watchdog.py``): ticks for liveness; warns while a handler blocks the event loop.
Every service survives the database going away: it logs, backs off and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .completer import Completer
from .database import Database
from .db import make_pool
from .errors import DatabaseUnavailable, SkiplockError
from .executions import Executions, Held
from .executor import Executor
from .leases import LeaseKeeper
from .listener import Listener
from .maintenance import Archiver, Maintenance, Rescuer, WorkerReaper
from .metrics import WorkerMetrics, serve
from .models import DEFAULT_MAX_PAYLOAD
from .pull import default_worker_id
from .registry import JobRegistry
from .retry import Exponential, RetryPolicy
from .scheduler import Scheduler
from .service import Service
from .watchdog import LoopWatchdog

log = logging.getLogger("skiplock.worker")


class WorkerConfig(BaseModel):
    """How a worker runs; every field has a ``skiplock worker`` flag and a ``SKIPLOCK_*`` variable."""

    model_config = ConfigDict(extra="forbid")

    queues: list[str] = Field(default_factory=lambda: ["default"], min_length=1)
    types: list[str] | None = None
    concurrency: int = Field(default=10, ge=1, le=10_000)
    claim_batch: int | None = Field(default=None, ge=1)  # most jobs per claim statement (None: every free slot)
    worker_id: str = Field(default_factory=default_worker_id, min_length=1, max_length=200)
    max_jobs: int | None = Field(default=None, ge=1)
    poll_interval: float = Field(default=2.0, gt=0)  # without a listening connection
    idle_poll_interval: float = Field(default=60.0, gt=0)  # the safety-net poll while LISTEN is healthy
    pool_size: int = Field(default=1, ge=1, le=1000)  # connections shared by every service but LISTEN
    listen_database_url: str | None = None  # LISTEN here (None: the database URL; "none": never)
    job_timeout: float | None = Field(default=None, gt=0)
    lease_seconds: float = Field(default=30.0, ge=1)
    heartbeat_interval: float | None = Field(default=None, gt=0)
    recovery_interval: float = Field(default=10.0, gt=0)
    shutdown_grace: float = Field(default=30.0, ge=0)
    backoff_base: float = Field(default=1.0, ge=0)
    backoff_max: float = Field(default=3600.0, ge=0)
    retain_finished: float = Field(default=3600.0, ge=0)
    retain_dead: float = Field(default=7 * 86400.0, ge=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    max_result_bytes: int = Field(default=DEFAULT_MAX_PAYLOAD, ge=1)
    loop_lag_warning: float = Field(default=1.0, ge=0)  # 0: no warnings

    @property
    def heartbeat_every(self) -> float:
        return self.heartbeat_interval or self.lease_seconds / 3

    @property
    def retry_policy(self) -> RetryPolicy:
        """How long a failed job waits before its next attempt (finish and rescue alike)."""
        return Exponential(base=self.backoff_base, max=self.backoff_max)


class Worker:
    """Runs the handlers of ``registry`` for jobs of ``config.queues``, as a set of services."""

    def __init__(self, registry: JobRegistry, dsn: str, config: WorkerConfig | None = None,
                 metrics: WorkerMetrics | None = None) -> None:
        self.registry = registry
        self.dsn = dsn
        self.config = c = config or WorkerConfig()
        self.metrics = metrics or WorkerMetrics()
        self.id = c.worker_id
        self.types = c.types if c.types is not None else registry.types
        self.pool = make_pool(dsn, max_size=c.pool_size, role="worker")
        listen_dsn = dsn if c.listen_database_url is None else c.listen_database_url
        self.listen_dsn = None if listen_dsn.strip().lower() == "none" else listen_dsn
        self.db = Database(self.pool)
        self.executions = Executions()
        self.wake = asyncio.Event()
        self.completer = Completer(self.db, self.id, c.retry_policy, self.executions, self.metrics)
        self.listener = Listener(self.listen_dsn or "", c.queues, self.wake, self.metrics, worker_id=self.id,
                                 peers=lambda: self.lease_keeper.peers,
                                 claim_seconds=lambda: self.executor.claim_seconds)
        self.executor = Executor(
            self.db, registry, self.executions, self.completer, self.metrics, self.wake, worker_id=self.id,
            queues=c.queues, types=self.types, concurrency=c.concurrency, claim_batch=c.claim_batch,
            max_jobs=c.max_jobs, poll_interval=c.poll_interval, lease_seconds=c.lease_seconds,
            job_timeout=c.job_timeout, shutdown_grace=c.shutdown_grace, max_result_bytes=c.max_result_bytes,
            idle_poll_interval=c.idle_poll_interval, listening=lambda: self.listener.healthy,
            due_in=self.listener.due_in, settle=self.listener.settle if self.listen_dsn is not None else None,
            announce=lambda: self.listener.herd)
        self.completer.on_recorded = self.executor.on_recorded
        self.lease_keeper = LeaseKeeper(
            self.db, self.executions, self.completer, self.metrics, worker_id=self.id, queues=c.queues,
            types=c.types, concurrency=c.concurrency, lease_seconds=c.lease_seconds, every=c.heartbeat_every)
        self.maintenance = Maintenance(
            self.db, self.metrics, interval=c.recovery_interval, rescuer=Rescuer(c.retry_policy),
            archiver=Archiver(c.retain_finished, c.retain_dead),
            reaper=WorkerReaper(max(3600.0, 10 * c.lease_seconds)), refresh_depth=c.metrics_port is not None,
            leader=self.is_leader)
        self.scheduler = Scheduler(self.db, self.metrics, registry.schedules, leader=self.is_leader)
        self.lease_keeper.on_leader = self.maintenance.kick.set
        self.watchdog = LoopWatchdog(c.loop_lag_warning, self.executor.describe_running)
        self.support: list[Service] = [self.watchdog, self.completer, self.lease_keeper,
                                       self.maintenance, self.scheduler]
        if self.listen_dsn is not None:
            self.support.insert(1, self.listener)
        """Started before the executor, stopped after it (in reverse): while it drains, leases are
        still renewed and outcomes still recorded."""

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self, hard: bool = False) -> None:
        """Stop claiming; in-flight jobs get ``shutdown_grace`` seconds (none if ``hard``)."""
        self.executor.request_stop(hard)

    @property
    def stopping(self) -> bool:
        return self.executor.stopping

    @property
    def running(self) -> dict[tuple[int, int], Held]:
        """The executions held now, by (job id, attempt)."""
        return self.executions.held

    @property
    def claimed(self) -> int:
        return self.executor.claimed

    @property
    def finished(self) -> int:
        return self.completer.recorded

    def is_leader(self) -> bool:
        """Whether this worker does the cluster-wide work now (see ``LeaseKeeper.leader``)."""
        return self.lease_keeper.leader

    def live(self) -> bool:
        """Liveness: the event loop turned recently."""
        return time.monotonic() - self.watchdog.last_tick < max(60.0, 3 * self.config.poll_interval)

    def ready(self) -> bool:
        """Readiness: the database answered within the last lease."""
        return not self.stopping and time.monotonic() - self.db.last_ok < self.config.lease_seconds

    async def run(self) -> None:
        """Work until ``stop()`` or ``max_jobs``; then drain, release what is left, and return."""
        if not self.types:
            raise SkiplockError("the registry has no handlers and no --types were given")
        self.metrics.concurrency.set(self.config.concurrency)
        self.metrics.declare(self.config.queues, self.types)
        server = None
        if self.config.metrics_port is not None:
            server = serve(self.config.metrics_port, self.metrics.registry, self.live, self.ready,
                           self.config.metrics_host)
        await self.pool.open(wait=False)
        for service in self.support:
            service.start()
        self.executor.start()
        log.info("worker %s started: queues=%s types=%s concurrency=%d", self.id, self.config.queues,
                 self.types, self.config.concurrency)
        try:
            await self.executor.wait()
        finally:
            await self.executor.stop()
            for service in reversed(self.support):
                await service.stop()
            await self._say_goodbye()
            await self.pool.close()
            if server:
                server.shutdown()
            log.info("worker %s stopped after %d jobs", self.id, self.finished)

    async def heartbeat(self) -> None:
        """Renew every held lease now (the lease keeper does this every interval)."""
        await self.lease_keeper.heartbeat()

    async def maintain(self) -> list[dict[str, Any]]:
        """One maintenance round now (rescue, archive, forget); returns the rows rescued."""
        return await self.maintenance.round()

    async def _say_goodbye(self) -> None:
        with contextlib.suppress(DatabaseUnavailable):
            await self.db.execute("worker_gone", {"worker_id": self.id})
