"""The executor: claims jobs into free slots and runs their handlers; at stop, drains.

The claim loop takes up to the free concurrency in one statement per queue (the limit-aware
transaction where limits apply to the worker's types), then waits for a wake-up (the listener's
NOTIFY, a freed slot) or a jittered poll: every ``poll_interval`` without a listening connection,
every ``idle_poll_interval`` with one (or when the soonest known timed job is due). Each job runs
in its own task (sync handlers in daemon threads) under its timeout and hands its outcome to the
completer. Stopping drains: in-flight jobs get the shutdown grace, then are cancelled and released
without spending their attempt.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from . import plans
from .completer import Completer, Outcome
from .database import Database
from .errors import DatabaseUnavailable, InvalidJob, JobCancelled, PermanentFailure
from .executions import Executions
from .metrics import WorkerMetrics
from .models import json_text
from .queue import sleep_jittered
from .registry import Job, JobRegistry
from .service import Service, cancel_and_wait, note_db_error
from .threads import in_daemon_thread

log = logging.getLogger("skiplock.worker")
LIMITS_REFRESH = 2.0


class Executor(Service):
    """Claims and runs jobs of ``types`` from ``queues`` for ``worker_id``, ``concurrency`` at once."""

    name = "executor"
    restart_on_error = False  # a claim loop bug stops the worker, loudly

    def __init__(self, db: Database, registry: JobRegistry, executions: Executions, completer: Completer,
                 metrics: WorkerMetrics, wake: asyncio.Event, *, worker_id: str, queues: list[str],
                 types: list[str], concurrency: int, claim_batch: int | None, max_jobs: int | None,
                 poll_interval: float, lease_seconds: float, job_timeout: float | None,
                 shutdown_grace: float, max_result_bytes: int, idle_poll_interval: float | None = None,
                 listening: Callable[[], bool] = lambda: False,
                 due_in: Callable[[], float | None] = lambda: None,
                 settle: Callable[[asyncio.Event], Awaitable[bool]] | None = None,
                 announce: Callable[[], bool] = lambda: False) -> None:
        super().__init__()
        self.db, self.registry, self.executions, self.completer = db, registry, executions, completer
        self.metrics, self.wake = metrics, wake
        self.worker_id, self.queues, self.types = worker_id, queues, types
        self.concurrency, self.claim_batch, self.max_jobs = concurrency, claim_batch, max_jobs
        self.poll_interval, self.lease_seconds, self.job_timeout = poll_interval, lease_seconds, job_timeout
        self.shutdown_grace, self.max_result_bytes = shutdown_grace, max_result_bytes
        self.idle_poll_interval = max(poll_interval, idle_poll_interval or poll_interval)
        self.listening, self.due_in, self.settle, self.announce = listening, due_in, settle, announce
        self.empty_claims = 0
        self.claim_seconds = 0.0
        """How long a claim statement takes (a moving average): the herd's backoff step follows it."""
        self.claimed = 0
        self._stopping = asyncio.Event()
        self._hard = False
        self._has_limits = False
        self._limits_checked = -LIMITS_REFRESH
        self._refill_in: float | None = None  # after a limited claim: seconds until a token is back

    # -- stopping ----------------------------------------------------------------------------------

    def request_stop(self, hard: bool = False) -> None:
        """Stop claiming (safe from a signal handler); ``hard``: no grace for in-flight jobs."""
        self._hard = self._hard or hard
        self._stopping.set()
        self.wake.set()
        self.executions.freed.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def stop(self) -> None:
        """Stop claiming and wait for the claim loop, then drain (see ``stopped``)."""
        self.request_stop()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        await self.stopped()

    def on_recorded(self) -> None:
        """Outcomes were recorded: under limits, their headroom is free now, so claim again."""
        if self._has_limits:
            self.wake.set()

    # -- claiming ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim until stopped, or until ``max_jobs`` were claimed and have finished."""
        executions = self.executions
        while not self.stopping:
            # A handler that returned frees its slot at once: claims go on while outcomes wait for
            # (and are batched into) the finish transaction. At most 2 x concurrency leases are
            # held. Not under limits, whose headroom counts finishing jobs as running until commit.
            concurrency = self.concurrency
            free = (concurrency - len(executions) if self._has_limits
                    else min(concurrency - executions.executing, 2 * concurrency - len(executions)))
            if self.max_jobs is not None:
                free = min(free, self.max_jobs - self.claimed)
                if free <= 0 and not executions.held:
                    return
            if free <= 0:
                executions.freed.clear()
                await executions.freed.wait()
                continue
            if self.claim_batch is not None:
                free = min(free, self.claim_batch)
            self.wake.clear()
            try:
                jobs = await self.claim(free)
            except DatabaseUnavailable as exc:
                note_db_error(self.metrics, "claim", exc)
                await sleep_jittered(self.poll_interval, self._stopping)
                continue
            now = time.time()
            for row in jobs:
                self._start(row, now)
            self._count_started(jobs)
            if not jobs:
                self.empty_claims += 1
                self.metrics.empty_claims.inc()
            if len(jobs) < free:
                wait = self._idle_wait()
                if self._refill_in is not None:  # a rate limit held jobs back: claim at its next token
                    wait = min(wait, max(self._refill_in, plans.RATE_BURST_SECONDS / 2))
                await self._wait_for_work(wait)

    async def _wait_for_work(self, wait: float) -> None:
        """Until ``wait`` seconds pass or a wake-up that ``settle`` says to claim for (a herd of
        idle workers woken by one NOTIFY: see ``listener.py``)."""
        while await wait_for_event(self.wake, wait):
            if self.settle is None or self.stopping or self._has_limits or await self.settle(self._stopping):
                return
            self.wake.clear()
            wait = self._idle_wait()

    def _idle_wait(self) -> float:
        """How long to wait for a wake-up before claiming again: the jittered poll interval; with a
        listening connection the longer idle interval, or until the soonest known timed job is due."""
        if not self.listening() or self._has_limits:  # headroom freed by other workers is not notified
            return self.poll_interval * (0.5 + random.random())
        wait = self.idle_poll_interval * (0.5 + random.random())
        due = self.due_in()
        if due is not None:
            wait = min(wait, due + 0.01)
        return wait

    async def claim(self, limit: int) -> list[dict[str, Any]]:
        """Fill up to ``limit`` slots from the queues in the order configured. Where limits apply
        to this worker's types, claim through the limit-aware transaction."""
        limited = await self._limited()
        claimed: list[dict[str, Any]] = []
        self._refill_in = None
        for queue in self.queues:
            params = {"queue": queue, "types": self.types, "limit": limit - len(claimed),
                      "worker_id": self.worker_id, "lease_seconds": self.lease_seconds}
            if limited:
                rows, refill = await self.db.run_one_trip(plans.claim_limited(params))
                if refill is not None:
                    self._refill_in = min(refill, self._refill_in or refill)
            elif self.announce():  # other idle workers may wait on this claim's outcome
                began = time.monotonic()
                rows = [r for r in await self.db.execute("claim_announce", params) if r["id"] is not None]
                self.claim_seconds += (time.monotonic() - began - self.claim_seconds) / 8
            else:
                rows = await self.db.execute("claim", params)
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
            self._has_limits = bool(await self.db.execute("limited_types", {"types": self.types}))
            self._limits_checked = now
        return self._has_limits

    def _start(self, row: dict[str, Any], now: float) -> None:
        job = Job(id=row["id"], type=row["type"], queue=row["queue"], payload=row["payload"],
                  attempt=row["attempts"], max_attempts=row["max_attempts"], priority=row["priority"],
                  tenant=row["tenant"], labels=row["labels"] or {}, run_at=row["run_at"],
                  created_at=row["created_at"], timeout=row["timeout_seconds"])
        self.claimed += 1
        self.executions.executing += 1
        if job.run_at is not None:
            self.metrics.of(job.queue, job.type).wait.observe(max(0.0, now - job.run_at.timestamp()))
        self.executions.add(job, asyncio.create_task(self._execute(job), name=f"job-{job.id}"))

    def _count_started(self, rows: list[dict[str, Any]]) -> None:
        """Metrics of a claimed batch: one increment per (queue, type), not one per job."""
        for (queue, type), n in collections.Counter((r["queue"], r["type"]) for r in rows).items():
            self.metrics.of(queue, type).started.inc(n)
        self.metrics.in_flight.set(len(self.executions))

    # -- running a job -----------------------------------------------------------------------------

    async def _execute(self, job: Job) -> None:
        started = time.monotonic()
        outcome: Outcome = {"id": job.id, "attempt": job.attempt, "result": None, "error": None}
        try:
            result = await self._call_handler(job)
            outcome.update(outcome="completed", result=storable_result(result, self.max_result_bytes))
        except asyncio.CancelledError:
            outcome = {}  # shutdown gave up on it: released, not finished
            raise
        except JobCancelled as exc:
            outcome.update(outcome="cancelled", error=str(exc) or "cancelled")
        except PermanentFailure as exc:
            outcome.update(outcome="dead", error=describe(exc))
        except TimeoutError:
            job._cancel.set()
            limit = self._timeout_for(job)
            outcome.update(outcome="failed", error=f"TimeoutError: handler exceeded its {limit:g}s timeout")
        except Exception as exc:
            outcome.update(outcome="failed", error=describe(exc))
        finally:
            self.metrics.of(job.queue, job.type).duration.observe(time.monotonic() - started)
            self.executions.executing -= 1
            if outcome:
                self.completer.add(outcome)
            else:
                self.executions.held.pop((job.id, job.attempt), None)
            self.executions.freed.set()

    def _timeout_for(self, job: Job) -> float | None:
        spec = self.registry.get(job.type)
        return job.timeout or (spec.timeout if spec else None) or self.job_timeout

    async def _call_handler(self, job: Job) -> Any:
        spec = self.registry.get(job.type)
        if spec is None:
            raise PermanentFailure(f"no handler for job type {job.type!r} in this worker")
        timeout = self._timeout_for(job)
        if spec.is_async:
            return await asyncio.wait_for(spec.fn(job), timeout)
        return await asyncio.wait_for(asyncio.shield(in_daemon_thread(spec.fn, job)), timeout)

    # -- shutdown ----------------------------------------------------------------------------------

    async def stopped(self) -> None:
        """Give in-flight jobs the grace period, then cancel them and release their leases."""
        held = self.executions.held
        if held and not self._hard:
            log.info("draining %d in-flight jobs (grace %ss)", len(held), self.shutdown_grace)
            tasks = [h.task for h in held.values() if h.task is not None]
            if tasks:
                await asyncio.wait(tasks, timeout=self.shutdown_grace)
        await self.completer.flush_all()
        leftover = {key: h for key, h in held.items() if h.task is not None and not h.task.done()}
        for entry in leftover.values():
            entry.job._cancel.set()
        await cancel_and_wait(*(h.task for h in leftover.values() if h.task is not None))
        await self.completer.flush_all()
        if leftover:
            try:
                rows = await self.db.run(plans.release(self.worker_id, list(leftover)))
                log.info("released %d unfinished jobs without spending an attempt", len(rows))
            except DatabaseUnavailable as exc:
                note_db_error(self.metrics, "release", exc)
        held.clear()

    def describe_running(self) -> str:
        """The job types running now, for the loop watchdog (``type x count``)."""
        types = collections.Counter(h.job.type for h in list(self.executions.held.values()))
        return ", ".join(f"{t} x{n}" if n > 1 else t for t, n in types.most_common(5))


def storable_result(value: Any, max_bytes: int) -> Any:
    """The handler's return value if PostgreSQL's jsonb can hold it within ``max_bytes``; else a
    clear, permanent failure (retrying would return it again)."""
    if value is None or type(value) in (bool, int):
        return value
    try:
        text = json_text(value, "result")
    except InvalidJob as exc:
        raise PermanentFailure(f"handler returned a value that cannot be stored: {exc}") from None
    size = len(text) if len(text) * 4 <= max_bytes else len(text.encode())
    if size > max_bytes:
        raise PermanentFailure(f"handler returned a result of {size} bytes, over the {max_bytes}-byte limit "
                               "(--max-result-bytes, SKIPLOCK_MAX_RESULT_BYTES)")
    return value


def describe(exc: BaseException) -> str:
    """``Type: message`` plus the innermost frames, bounded in size, as text PostgreSQL can store
    (a NUL or a lone surrogate in a handler's message must not make its outcome unrecordable)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3))[-4000:]
    return tb.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


async def wait_for_event(event: asyncio.Event, seconds: float) -> bool:
    """Until ``event`` is set (True) or ``seconds`` pass (False); ``asyncio.timeout``, not
    ``wait_for``: a cancel always gets through."""
    if event.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
