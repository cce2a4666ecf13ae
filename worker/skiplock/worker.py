"""The worker runtime: claim, run handlers, heartbeat leases, finish in batches, shut down gracefully.

Tasks of one worker process (one asyncio loop, one connection pool):
- the claim loop takes up to the free concurrency in one statement, then waits for a NOTIFY or a
  jittered poll (NOTIFY can silently stop, so the poll is the safety net);
- one task per job runs its handler (sync handlers in threads) under the job's timeout;
- the finisher records outcomes in batches (one transaction per batch, whatever its size);
- the heartbeat renews every held lease in one statement per interval and delivers cancel requests;
- maintenance rescues expired leases and archives old jobs, under an advisory lock.
Every loop survives the database going away: it logs, backs off and carries on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import secrets
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import plans
from .db import connect, make_pool
from .errors import DatabaseUnavailable, InvalidJob, JobCancelled, PermanentFailure, SkiplockError, wrap_db_errors
from .metrics import WorkerMetrics, serve
from .models import json_text
from .queue import Queue, sleep_jittered
from .registry import Job, JobRegistry
from .runner import run
from .sql import QUERIES
from .threads import in_daemon_thread

log = logging.getLogger("skiplock.worker")
LIMITS_REFRESH = 2.0
SCHEDULE_CHECK = 1.0  # after a tick fired, or an error
SCHEDULE_IDLE = 5.0  # at most this long before a new or changed schedule is seen


def default_worker_id() -> str:
    """``SKIPLOCK_WORKER_ID`` (the pod name in Kubernetes), else ``hostname-pid-random``."""
    return os.environ.get("SKIPLOCK_WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class WorkerConfig(BaseModel):
    """How a worker runs; every field has a ``skiplock worker`` flag and a ``SKIPLOCK_*`` variable."""

    model_config = ConfigDict(extra="forbid")

    queues: list[str] = Field(default_factory=lambda: ["default"], min_length=1)
    types: list[str] | None = None
    concurrency: int = Field(default=10, ge=1, le=10_000)
    claim_batch: int | None = Field(default=None, ge=1)  # most jobs per claim statement (None: every free slot)
    worker_id: str = Field(default_factory=default_worker_id, min_length=1, max_length=200)
    max_jobs: int | None = Field(default=None, ge=1)
    poll_interval: float = Field(default=2.0, gt=0)
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

    @property
    def heartbeat_every(self) -> float:
        return self.heartbeat_interval or self.lease_seconds / 3


@dataclass
class _Running:
    job: Job
    task: asyncio.Task[None]
    started: float = field(default_factory=time.monotonic)


Execution = tuple[int, int]
"""A job's id and attempt: one execution. A worker can hold two of the same job at once - a stale
one whose lease was rescued while it ran, and the re-claim - so executions, not jobs, are the key."""


class Worker:
    """Runs the handlers of ``registry`` for jobs of ``config.queues``."""

    def __init__(self, registry: JobRegistry, dsn: str, config: WorkerConfig | None = None,
                 metrics: WorkerMetrics | None = None) -> None:
        self.registry = registry
        self.dsn = dsn
        self.config = config or WorkerConfig()
        self.metrics = metrics or WorkerMetrics()
        self.id = self.config.worker_id
        self.types = self.config.types if self.config.types is not None else registry.types
        self.backoff = plans.Backoff(self.config.backoff_base, self.config.backoff_max)
        self.pool = make_pool(dsn, max_size=4, role="worker")
        self.running: dict[Execution, _Running] = {}
        self.finished = 0
        self.claimed = 0
        self._to_finish: list[dict[str, Any]] = []
        self._executing = 0  # handlers running now (an outcome waiting for its flush is not)
        self._finish_wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._slot = asyncio.Event()
        self._stopping = asyncio.Event()
        self._hard_stop = False
        self._last_db_ok = 0.0
        self._last_loop = time.monotonic()
        self._has_limits = False
        self._refill_in: float | None = None  # after a limited claim: seconds until a token is back
        self._limits_checked = -LIMITS_REFRESH

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self, hard: bool = False) -> None:
        """Stop claiming; in-flight jobs get ``shutdown_grace`` seconds (none if ``hard``)."""
        self._hard_stop = self._hard_stop or hard
        self._stopping.set()
        self._wake.set()
        self._slot.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def live(self) -> bool:
        """Liveness: the event loop turned recently."""
        return time.monotonic() - self._last_loop < max(60.0, 3 * self.config.poll_interval)

    def ready(self) -> bool:
        """Readiness: the database answered within the last lease."""
        return not self.stopping and time.monotonic() - self._last_db_ok < self.config.lease_seconds

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
        helpers = [asyncio.create_task(coro, name=name) for name, coro in (
            ("listen", self._listen()), ("finisher", self._finisher()), ("heartbeat", self._heartbeat()),
            ("maintenance", self._maintenance()), ("scheduler", self._scheduler()),
            ("ticker", self._ticker()))]
        log.info("worker %s started: queues=%s types=%s concurrency=%d", self.id, self.config.queues,
                 self.types, self.config.concurrency)
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._flush_all()
            await self._say_goodbye()
            await self.pool.close()
            if server:
                server.shutdown()
            log.info("worker %s stopped after %d jobs", self.id, self.finished)

    # -- claiming --------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while not self.stopping:
            # A handler that returned frees its slot at once: claims go on while outcomes wait for
            # (and are batched into) the finish transaction. At most 2 x concurrency leases are
            # held. Not under limits, whose headroom counts finishing jobs as running until commit.
            concurrency = self.config.concurrency
            free = (concurrency - len(self.running) if self._has_limits
                    else min(concurrency - self._executing, 2 * concurrency - len(self.running)))
            if self.config.max_jobs is not None:
                free = min(free, self.config.max_jobs - self.claimed)
                if free <= 0 and not self.running:
                    return
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                continue
            if self.config.claim_batch is not None:
                free = min(free, self.config.claim_batch)
            self._wake.clear()
            try:
                jobs = await self._claim(free)
            except DatabaseUnavailable as exc:
                self._db_error("claim", exc)
                await sleep_jittered(self.config.poll_interval, self._stopping)
                continue
            now = time.time()
            for row in jobs:
                self._start(row, now)
            self._count_started(jobs)
            if len(jobs) < free:
                wait = self.config.poll_interval
                if self._refill_in is not None:  # a rate limit held jobs back: claim at its next token
                    wait = min(wait, max(self._refill_in, plans.RATE_BURST_SECONDS / 2))
                await sleep_jittered(wait, self._wake)

    async def _claim(self, limit: int) -> list[dict[str, Any]]:
        """Fill up to ``limit`` slots from the queues in the order configured. Where limits apply
        to this worker's types, claim through the limit-aware transaction."""
        limited = await self._limited()
        claimed: list[dict[str, Any]] = []
        self._refill_in = None
        for queue in self.config.queues:
            params = {"queue": queue, "types": self.types, "limit": limit - len(claimed),
                      "worker_id": self.id, "lease_seconds": self.config.lease_seconds}
            if limited:
                rows, refill = await self._run(plans.claim_limited(params))
                if refill is not None:
                    self._refill_in = min(refill, self._refill_in or refill)
            else:
                rows = await self._execute("claim", params)
            rows.sort(key=lambda r: (-r["priority"], r["run_at"], r["id"]))
            claimed += rows
            if len(claimed) >= limit:
                break
        return claimed

    async def _limited(self) -> bool:
        """Whether limits exist for this worker's types (re-read every LIMITS_REFRESH seconds; the
        plain claim skips limited types, so a stale answer never breaks a limit)."""
        now = time.monotonic()
        if now - self._limits_checked > LIMITS_REFRESH:
            self._has_limits = bool(await self._execute("limited_types", {"types": self.types}))
            self._limits_checked = now
        return self._has_limits

    def _start(self, row: dict[str, Any], now: float) -> None:
        job = Job(id=row["id"], type=row["type"], queue=row["queue"], payload=row["payload"],
                  attempt=row["attempts"], max_attempts=row["max_attempts"], priority=row["priority"],
                  tenant=row["tenant"], labels=row["labels"] or {}, run_at=row["run_at"],
                  created_at=row["created_at"], timeout=row["timeout_seconds"])
        self.claimed += 1
        self._executing += 1
        if job.run_at is not None:
            self.metrics.of(job.queue, job.type).wait.observe(max(0.0, now - job.run_at.timestamp()))
        task = asyncio.create_task(self._execute_job(job), name=f"job-{job.id}")
        self.running[job.id, job.attempt] = _Running(job, task)

    def _count_started(self, rows: list[dict[str, Any]]) -> None:
        """Metrics of a claimed batch: one increment per (queue, type), not one per job."""
        for (queue, type), n in collections.Counter((r["queue"], r["type"]) for r in rows).items():
            self.metrics.of(queue, type).started.inc(n)
        self.metrics.in_flight.set(len(self.running))

    # -- running a job ---------------------------------------------------------------------------

    async def _execute_job(self, job: Job) -> None:
        started = time.monotonic()
        outcome: dict[str, Any] = {"id": job.id, "attempt": job.attempt, "result": None, "error": None}
        try:
            result = await self._call_handler(job)
            outcome.update(outcome="completed", result=_jsonable(result))
        except asyncio.CancelledError:
            outcome = {}  # shutdown gave up on it: released, not finished
            raise
        except JobCancelled as exc:
            outcome.update(outcome="cancelled", error=str(exc) or "cancelled")
        except PermanentFailure as exc:
            outcome.update(outcome="dead", error=_describe(exc))
        except TimeoutError:
            job._cancel.set()
            limit = self._timeout_for(job)
            outcome.update(outcome="failed", error=f"TimeoutError: handler exceeded its {limit:g}s timeout")
        except Exception as exc:
            outcome.update(outcome="failed", error=_describe(exc))
        finally:
            self.metrics.of(job.queue, job.type).duration.observe(time.monotonic() - started)
            self._executing -= 1
            if outcome:
                self._to_finish.append(outcome)
                self._finish_wake.set()
            else:
                self.running.pop((job.id, job.attempt), None)
            self._slot.set()

    def _timeout_for(self, job: Job) -> float | None:
        spec = self.registry.get(job.type)
        return job.timeout or (spec.timeout if spec else None) or self.config.job_timeout

    async def _call_handler(self, job: Job) -> Any:
        spec = self.registry.get(job.type)
        if spec is None:
            raise PermanentFailure(f"no handler for job type {job.type!r} in this worker")
        timeout = self._timeout_for(job)
        if spec.is_async:
            return await asyncio.wait_for(spec.fn(job), timeout)
        return await asyncio.wait_for(asyncio.shield(in_daemon_thread(spec.fn, job)), timeout)

    # -- finishing -------------------------------------------------------------------------------

    async def _finisher(self) -> None:
        while True:
            await self._finish_wake.wait()
            self._finish_wake.clear()
            try:
                flushed = await self._flush()
            except Exception:  # a bug, not an outage: the outcomes stay buffered, retried
                log.exception("could not record %d outcomes; retrying", len(self._to_finish))
                flushed = False
            if not flushed:
                await sleep_jittered(1.0)
                self._finish_wake.set()

    async def _flush(self) -> bool:
        """Record every buffered outcome in one transaction; False if the database is away (the
        outcomes stay buffered and their leases keep being renewed). One flush at a time, and a
        flush that started runs to its end even if its caller is cancelled (shutdown): an outcome
        taken from the buffer is always either recorded or put back."""
        return await asyncio.shield(self._flush_now())

    async def _flush_now(self) -> bool:
        async with self._flush_lock:
            batch, self._to_finish = self._to_finish, []
            if not batch:
                return True
            try:
                done = await self._run(plans.finish(self.id, batch, self.backoff))
            except BaseException as exc:
                self._to_finish[:0] = batch
                if not isinstance(exc, DatabaseUnavailable):
                    raise
                self._db_error("finish", exc)
                return False
        recorded = {(r["id"], r["attempts"]): r["state"] for r in done}
        outcomes: collections.Counter[tuple[str, str, str | None]] = collections.Counter()
        for item in batch:
            key = (item["id"], item["attempt"])
            entry = self.running.pop(key, None)
            if entry is None:
                continue
            state = recorded.get(key)
            if state is None:
                log.warning("job %s: lease lost before it finished; outcome dropped", key[0])
            outcomes[entry.job.queue, entry.job.type, state] += 1
        self._count(outcomes)
        self.finished += len(batch)
        self.metrics.in_flight.set(len(self.running))
        self._slot.set()
        if self._has_limits:
            self._wake.set()  # the finished jobs' concurrency headroom is free now: claim again
        return True

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

    async def _flush_all(self) -> None:
        """Record every outcome, the one a flush in progress holds included (waits for it)."""
        for _ in range(3):
            if await self._flush() and not self._to_finish:
                return
            await asyncio.sleep(1.0)
        if self._to_finish:
            log.error("could not record %d outcomes: their jobs will be rescued when the lease expires",
                      len(self._to_finish))

    # -- leases, cancel requests, maintenance ----------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            await sleep_jittered(self.config.heartbeat_every * 0.8)
            await self.heartbeat()

    async def heartbeat(self) -> None:
        """Renew every held lease in one statement; deliver cancel requests; note lost leases."""
        held_before = dict(self.running)  # executions claimed while the statement runs are not its business
        ids = sorted({job_id for job_id, _ in held_before})
        params = {"worker_id": self.id, "queues": self.config.queues, "types": self.config.types,
                  "hostname": socket.gethostname(), "pid": os.getpid(),
                  "concurrency": self.config.concurrency, "ids": ids,
                  "lease_seconds": self.config.lease_seconds}
        try:
            rows = await self._execute("heartbeat", params)
        except DatabaseUnavailable as exc:
            self._db_error("heartbeat", exc)
            return
        held = {(r["id"], r["attempts"]): r["cancel_requested"] for r in rows}
        pending_finish = {(o["id"], o["attempt"]) for o in self._to_finish}
        for key, entry in held_before.items():
            if key not in self.running:
                continue  # finished meanwhile
            if held.get(key) or (key not in held and key not in pending_finish):
                entry.job._cancel.set()  # cancel requested, or this execution's lease was lost

    async def _maintenance(self) -> None:
        while True:
            await sleep_jittered(self.config.recovery_interval)
            try:
                await self.maintain()
            except DatabaseUnavailable as exc:
                self._db_error("maintenance", exc)

    async def maintain(self) -> list[dict[str, Any]]:
        """Rescue expired leases and archive old jobs, if no other process is doing it now. While
        batches come back full, more follow (up to ARCHIVE_BUDGET_S): at a few thousand jobs a
        second, one batch per round would let the hot table grow without end."""
        rescued: list[dict[str, Any]]
        rescued, moved = await self._run(_maintenance_plan(self.config))
        deadline = time.monotonic() + ARCHIVE_BUDGET_S
        while moved >= ARCHIVE_BATCH and time.monotonic() < deadline and not self.stopping:
            moved = await self._run(_archive_plan(self.config))
        for row in rescued:
            self.metrics.rescued.labels(row["queue"]).inc()
        if rescued:
            log.info("rescued %d jobs with expired leases", len(rescued))
        if self.config.metrics_port is not None:
            await self._refresh_depth()
        return rescued

    async def _refresh_depth(self) -> None:
        rows = await self._execute("stats", {})
        self.metrics.depth.clear()
        self.metrics.oldest.clear()
        for r in rows:
            self.metrics.depth.labels(r["queue"], r["state"]).set(r["jobs"])
            if r["state"] == "pending":
                self.metrics.oldest.labels(r["queue"]).set(r["oldest_pending_seconds"])
        self.metrics.by_priority.clear()
        for r in await self._execute("pending_by_priority", {}):
            self.metrics.by_priority.labels(r["queue"], str(r["priority"])).set(r["jobs"])

    async def _scheduler(self) -> None:
        """Declare this registry's periodic schedules, then fire due ticks. One cheap statement
        asks when the next tick is due; the locking transaction runs only when one is, so idle
        workers without schedules send one statement per SCHEDULE_IDLE seconds, not three a second."""
        declared = False
        while True:
            wait = SCHEDULE_CHECK
            try:
                if not declared:
                    async with Queue(pool=self.pool) as queue:
                        for spec in self.registry.schedules:
                            await queue.set_schedule(spec, source="code")
                    declared = True
                (due,) = await self._execute("next_schedule", {})
                if due["seconds"] is None:
                    wait = SCHEDULE_IDLE
                elif due["seconds"] > 0:
                    wait = min(due["seconds"], SCHEDULE_IDLE)
                else:
                    fired: list[tuple[str, str]] = await self._run(plans.fire_schedules())
                    if fired:
                        self.metrics.count_enqueued(fired)
                        log.info("enqueued %d scheduled jobs", len(fired))
            except DatabaseUnavailable as exc:
                self._db_error("schedules", exc)
            await sleep_jittered(wait)

    async def _ticker(self) -> None:
        while True:
            self._last_loop = time.monotonic()
            await asyncio.sleep(1.0)

    # -- wake-ups --------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """LISTEN for new work; reconnect with backoff when the connection breaks."""
        delay = 0.5
        while True:
            try:
                conn = await connect(self.dsn, "listener")
                async with conn:
                    await conn.execute("LISTEN skiplock_jobs")
                    delay = 0.5
                    self._wake.set()  # catch up on anything sent while we were away
                    async for note in conn.notifies():
                        if note.payload in self.config.queues:
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._db_error("listen", exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 30.0)

    # -- shutdown --------------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Give in-flight jobs the grace period, then cancel them and release their leases."""
        if self.running and not self._hard_stop:
            log.info("draining %d in-flight jobs (grace %ss)", len(self.running), self.config.shutdown_grace)
            tasks = [r.task for r in self.running.values()]
            await asyncio.wait(tasks, timeout=self.config.shutdown_grace)
        await self._flush_all()
        leftover = {key: r for key, r in self.running.items() if not r.task.done()}
        for entry in leftover.values():
            entry.job._cancel.set()
            entry.task.cancel()
        await asyncio.gather(*(r.task for r in leftover.values()), return_exceptions=True)
        await self._flush_all()
        if leftover:
            try:
                rows = await self._execute("release", {"ids": [i for i, _ in leftover],
                                                       "attempts": [a for _, a in leftover], "worker_id": self.id})
                log.info("released %d unfinished jobs without spending an attempt", len(rows))
            except DatabaseUnavailable as exc:
                self._db_error("release", exc)
        self.running.clear()

    async def _say_goodbye(self) -> None:
        with contextlib.suppress(DatabaseUnavailable):
            await self._execute("worker_gone", {"worker_id": self.id})

    # -- database helpers ------------------------------------------------------------------------

    async def _execute(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with wrap_db_errors():
            async with self.pool.connection() as conn:
                cur = await conn.execute(QUERIES[name], params)
                rows = await cur.fetchall() if cur.description else []
        self._last_db_ok = time.monotonic()
        return rows

    async def _run(self, plan: plans.Plan) -> Any:
        with wrap_db_errors():
            async with self.pool.connection() as conn:
                value = await run(conn, plan)
        self._last_db_ok = time.monotonic()
        return value

    def _db_error(self, operation: str, exc: BaseException) -> None:
        self.metrics.db_errors.labels(operation).inc()
        log.warning("%s: database unavailable (%s); retrying", operation, exc)


ARCHIVE_BATCH = 5000
ARCHIVE_BUDGET_S = 2.0  # per maintenance round, in batches of ARCHIVE_BATCH (one transaction each)


def _maintenance_plan(config: WorkerConfig) -> plans.Plan:
    """Rescue, archive one batch, forget old workers; returns (rescued rows, jobs archived)."""
    (lock,) = yield [("try_maintenance_lock", {})]
    if not lock[0]["locked"]:
        return [], 0
    rescued = yield from plans.rescue()
    moved, _ = yield [_archive_step(config),
                      ("forget_workers", {"older_than": max(3600.0, 10 * config.lease_seconds)})]
    return rescued, moved[0]["moved"]


def _archive_plan(config: WorkerConfig) -> plans.Plan:
    (lock,) = yield [("try_maintenance_lock", {})]
    if not lock[0]["locked"]:
        return 0
    (moved,) = yield [_archive_step(config)]
    return int(moved[0]["moved"])


def _archive_step(config: WorkerConfig) -> tuple[str, dict[str, Any]]:
    return ("archive", {"finished_after": config.retain_finished, "dead_after": config.retain_dead,
                        "limit": ARCHIVE_BATCH})


def _jsonable(value: Any) -> Any:
    """The handler's return value if PostgreSQL's jsonb can hold it; else a clear failure."""
    if value is None or type(value) in (bool, int):
        return value
    try:
        json_text(value, "result")
    except InvalidJob as exc:
        raise PermanentFailure(f"handler returned a value that cannot be stored: {exc}") from None
    return value


def _describe(exc: BaseException) -> str:
    """``Type: message`` plus the innermost frames, bounded in size, as text PostgreSQL can store
    (a NUL or a lone surrogate in a handler's message must not make its outcome unrecordable)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3))[-4000:]
    return tb.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
