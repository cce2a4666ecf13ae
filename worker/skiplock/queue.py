"""The producer, consumer and admin API: enqueue; claim, complete, fail and release from your own
loop (the pull API); inspect, cancel, retry, reschedule, purge (one job or in bulk); queue settings;
wait for results; retention."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from . import plans, pull
from .database import Database
from .db import connect, make_pool, resolve_dsn
from .errors import InvalidJob, JobFailed, JobNotFound, wrap_db_errors
from .filters import JobFilter
from .models import FINISHED, INT32, JobRecord, JobSpec, State, make_spec
from .pull import DEFAULT_LEASE, PulledJob
from .queues import QueueSettings
from .retry import DEFAULT, RetryPolicy
from .schedules import ScheduleSpec
from .service import cancel_and_wait
from .sql import QUERIES
from .states import CANCELLABLE, PURGEABLE, RETRYABLE, ordered

if TYPE_CHECKING:
    from .metrics import WorkerMetrics

AsyncConn = psycopg.AsyncConnection[Any]


def as_spec(job: JobSpec | dict[str, Any]) -> JobSpec:
    """Accept a ``JobSpec`` or a dict with a ``type`` key."""
    if isinstance(job, JobSpec):
        return job
    options = dict(job)
    return make_spec(options.pop("type", ""), **options)


class Queue:
    """An async handle on the skiplock tables. Pass ``conn=`` to any write to run it inside your
    own transaction (the NOTIFY that wakes workers is then sent at your commit).

    Connections: a pool of 1 to ``pool_size`` (default 4; it grows only while that many calls run
    at once), or your ``pool``; each ``wait()`` in progress holds one more, for LISTEN, on
    ``listen_dsn`` (default: the DSN; give a direct URL when the DSN is a transaction pooler, where
    ``wait`` otherwise falls back to its poll)."""

    def __init__(self, dsn: str | None = None, *, pool: AsyncConnectionPool[Any] | None = None,
                 pool_size: int = 4, metrics: WorkerMetrics | None = None, worker_id: str | None = None,
                 listen_dsn: str | None = None) -> None:
        self.dsn = resolve_dsn(dsn) if pool is None else str(pool.conninfo)
        self.listen_dsn = listen_dsn or self.dsn
        self._pool = pool or make_pool(self.dsn, pool_size, "client")
        self._own_pool = pool is None
        self.db = Database(self._pool)
        self.metrics = metrics  # given: enqueued jobs count in its skiplock_jobs_enqueued_total
        self.worker_id = worker_id or pull.default_worker_id()  # who holds the leases of the pull API's claims

    async def __aenter__(self) -> Queue:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the pool; an unreachable server fails at once (one direct connection first)
        instead of after the pool's timeout."""
        if self._own_pool:
            probe = await connect(self.dsn, "client")
            await probe.close()
            with wrap_db_errors():
                await self._pool.open(wait=True)

    async def close(self) -> None:
        if self._own_pool:
            await self._pool.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConn]:
        """A pooled connection in a transaction, for ``conn=``: everything done on it commits
        together at the end of the block, or not at all."""
        with wrap_db_errors():
            async with self._pool.connection() as conn, conn.transaction():
                yield conn

    async def _run(self, plan: plans.Plan, conn: AsyncConn | None = None, atomic: bool = True) -> Any:
        return await self.db.run(plan, conn, atomic)

    async def _fetch(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return await self.db.execute(name, params)

    # -- producing ---------------------------------------------------------------------------

    async def enqueue(self, type: str, payload: Any = None, *, conn: AsyncConn | None = None,
                      **options: Any) -> int:
        """Enqueue one job; returns its id. Options are those of ``JobSpec`` (queue, priority,
        delay, run_at, max_attempts, timeout, tenant, labels, dedup_key, depends_on, and the
        lifetimes ttl, result_ttl, failure_ttl and a retry policy, e.g. ``retry=Fixed(30)``)."""
        spec = make_spec(type, payload={} if payload is None else payload, **options)
        (job_id,) = await self.enqueue_many([spec], conn=conn)
        return job_id

    async def enqueue_many(self, jobs: Iterable[JobSpec | dict[str, Any]], *,
                           conn: AsyncConn | None = None) -> list[int]:
        """Enqueue a batch in one round trip (two with dependencies); ids in input order."""
        specs = [as_spec(j) for j in jobs]
        atomic = any(s.depends_on for s in specs)
        ids: list[int] = await self._run(plans.enqueue(specs), conn, atomic)
        if self.metrics is not None:
            self.metrics.count_enqueued([(s.queue, s.type) for s in specs])
        return ids

    # -- inspecting and acting -----------------------------------------------------------------

    async def get(self, job_id: int) -> JobRecord:
        rows = await self._fetch("get_job", {"id": job_id})
        if not rows:
            raise JobNotFound(f"no job {job_id}")
        return JobRecord(**rows[0])

    async def list_jobs(self, *, state: str | None = None, queue: str | None = None, type: str | None = None,
                        tenant: str | None = None, labels: dict[str, str] | None = None, limit: int = 50,
                        offset: int = 0, brief: bool = False) -> list[JobRecord]:
        """Newest first. ``brief``: without payload and result (None), for lists that do not show them."""
        where = JobFilter(queue=queue, type=type, tenant=tenant, states=(state,) if state else (), labels=labels or {})
        rows = await self._fetch("list_jobs", {"filter": where.as_json(), "limit": limit, "offset": offset,
                                               "brief": brief})
        return [JobRecord(**r) for r in rows]

    async def dependents(self, job_id: int, limit: int = 100) -> list[dict[str, Any]]:
        """Jobs that depend on ``job_id``: rows of (id, queue, type, state), oldest first."""
        return await self._fetch("dependents", {"id": job_id, "limit": limit})

    async def cancel(self, job_id: int, reason: str = "cancelled by request") -> str:
        """Cancel a job; returns its state after (``running`` = the handler was asked to stop)."""
        state: str = await self._run(plans.cancel(job_id, reason))
        return state

    async def retry(self, job_id: int) -> None:
        """Run a dead, cancelled, completed or waiting job again now, with fresh attempts."""
        await self._run(plans.retry(job_id))

    async def retry_dead(self, queue: str | None = None) -> int:
        """Retry every job on the dead-letter list (of the hot table); returns how many."""
        return await self.retry_jobs(JobFilter(queue=queue, states=(State.DEAD.value,)))

    async def update(self, job_id: int, *, priority: int | None = None, run_at: datetime | None = None,
                     delay: float | None = None) -> str:
        """Reprioritise or reschedule a job that has not started; returns its state after."""
        if priority is None and run_at is None and delay is None:
            raise InvalidJob("give a priority, a run_at or a delay")
        if priority is not None and not -INT32 <= priority <= INT32:
            raise InvalidJob("priority must be a 32-bit integer")
        when = datetime.now(UTC) if delay == 0 else make_spec("t", run_at=run_at, delay=delay).effective_run_at()
        rows = await self._fetch("update_job", {"id": job_id, "priority": priority, "run_at": when})
        if not rows:
            job = await self.get(job_id)
            raise InvalidJob(f"job {job_id} is {job.state.value}: only a job that has not started can be updated")
        return str(rows[0]["state"])

    # -- bulk ------------------------------------------------------------------------------------

    async def count_jobs(self, where: JobFilter, hot_only: bool = False) -> int:
        """How many jobs ``where`` matches (in the hot table only, with ``hot_only``)."""
        rows = await self._fetch("count_matching", {"filter": where.as_json(), "hot_only": hot_only})
        return int(rows[0]["jobs"])

    async def cancel_jobs(self, where: JobFilter, reason: str = "cancelled by request") -> int:
        """Cancel every job ``where`` matches (waiting ones end cancelled, running ones are asked to
        stop); returns how many."""
        rows: list[dict[str, Any]] = await self._run(plans.cancel_matching(where.narrowed(ordered(CANCELLABLE)),
                                                                           reason))
        return len(rows)

    async def purge_jobs(self, where: JobFilter) -> int:
        """Delete the finished and waiting jobs ``where`` matches (never a running one); returns how many."""
        purged: int = await self._run(plans.purge_matching(where))
        return purged

    async def retry_jobs(self, where: JobFilter) -> int:
        """Run every finished or waiting job ``where`` matches (hot table) again now; returns how many."""
        narrowed = where.narrowed(ordered(RETRYABLE))
        if where.states and not narrowed.states:
            return 0
        rows = await self._fetch("retry", {"id": None, "filter": narrowed.as_json()})
        return len(rows)

    # -- the pull API ------------------------------------------------------------------------------

    async def claim(self, queue: str = "default", *, max_jobs: int = 1, lease_seconds: float = DEFAULT_LEASE,
                    types: Sequence[str] | None = None) -> list[PulledJob]:
        """Claim up to ``max_jobs`` runnable jobs of ``queue`` for ``self.worker_id`` (each spends an
        attempt and holds a lease of ``lease_seconds``: ``heartbeat()`` renews it). Finish each with
        ``complete``, ``fail`` or ``release``."""
        params = pull.claim_params(queue, self.worker_id, max_jobs, lease_seconds, list(types) if types else None)
        jobs: list[PulledJob] = await self._run(pull.claim(params), atomic=False)
        return jobs

    async def complete(self, job: PulledJob, result: Any = None) -> bool:
        """Record success (and ``result``); False if the lease was lost meanwhile (nothing changed)."""
        return await self._run(pull.finish(job, "completed", result)) is not None

    async def fail(self, job: PulledJob, error: str, retry_in: float | None = None,
                   permanent: bool = False) -> str | None:
        """Record a failed attempt; returns the job's new state (``retry``, or ``dead`` with its
        attempts spent, ``cancelled`` after a cancel request), None if the lease was lost.
        ``retry_in`` (seconds) overrides the retry policy's delay for this failure; ``permanent``
        dead-letters the job at once."""
        outcome = "dead" if permanent else "failed"
        state: str | None = await self._run(pull.finish(job, outcome, error=error, retry_in=retry_in))
        return state

    async def release(self, job: PulledJob) -> bool:
        """Hand the job back to pending without spending its attempt; False if the lease was lost."""
        released: bool = await self._run(pull.release(job))
        return released

    async def heartbeat(self, lease_seconds: float = DEFAULT_LEASE) -> int:
        """Renew every lease ``self.worker_id`` holds for ``lease_seconds``; returns how many."""
        renewed: int = await self._run(pull.heartbeat(self.worker_id, lease_seconds), atomic=False)
        return renewed

    async def renew(self, lease_seconds: float = DEFAULT_LEASE) -> dict[int, tuple[int, bool]]:
        """Renew every lease ``self.worker_id`` holds for ``lease_seconds``; returns ``{job id:
        (attempt, cancel requested)}`` for each lease renewed (a job not in it lost its lease)."""
        renewed: dict[int, tuple[int, bool]] = await self._run(pull.renew(self.worker_id, lease_seconds),
                                                               atomic=False)
        return renewed

    @contextlib.asynccontextmanager
    async def claimed(self, queue: str = "default", *, lease_seconds: float = DEFAULT_LEASE,
                      types: Sequence[str] | None = None) -> AsyncIterator[PulledJob | None]:
        """Claim one job (None if none is runnable) for the block: its lease is renewed while the
        block runs; at its end the job completes with ``job.result``, or fails with the exception
        (``PermanentFailure``: dead; ``JobCancelled``: cancelled); a cancelled block releases it.
        ``job.cancelled`` turns true once a renewal finds a cancel requested or the lease lost
        (``job.raise_if_cancelled()`` then ends the block)."""
        jobs = await self.claim(queue, lease_seconds=lease_seconds, types=types)
        if not jobs:
            yield None
            return
        job = jobs[0]
        keepalive = asyncio.create_task(self._keep_alive(job, lease_seconds), name=f"lease-{job.id}")
        try:
            yield job
        except (asyncio.CancelledError, KeyboardInterrupt):
            await cancel_and_wait(keepalive)
            if not job.done:
                await asyncio.shield(self._run(pull.release(job)))
            raise
        except Exception as exc:
            await cancel_and_wait(keepalive)
            await self._run(pull.run_ending(job, exc))
            raise
        else:
            await cancel_and_wait(keepalive)
            await self._run(pull.run_ending(job, None))

    async def _keep_alive(self, job: PulledJob, lease_seconds: float) -> None:
        while True:
            await sleep_jittered(lease_seconds / 3 * 0.8)
            with contextlib.suppress(Exception):  # a missed renewal is retried next time; the lease outlasts two
                pull.note_renewal(job, await self.renew(lease_seconds))

    async def wait(self, job_id: int, timeout: float | None = None, poll_interval: float = 1.0) -> Any:
        """Wait until the job finishes and return its result; raise ``JobFailed`` if it ended dead
        or cancelled, ``TimeoutError`` after ``timeout`` seconds. LISTEN wakes it at once; a poll
        every ``poll_interval`` seconds covers a lost notification."""
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = await connect(self.listen_dsn, "waiter")
        async with conn:
            with wrap_db_errors():
                await conn.execute("LISTEN skiplock_finished")
                await conn.execute(QUERIES["watch"], {"id": job_id})
            while True:
                job = await self.get(job_id)
                if job.state == State.COMPLETED:
                    return job.result
                if job.state in FINISHED:
                    raise JobFailed(job_id, job.state.value, job.last_error)
                left = poll_interval if deadline is None else min(poll_interval, deadline - time.monotonic())
                if left <= 0:
                    raise TimeoutError(f"job {job_id} still {job.state.value} after {timeout}s")
                with wrap_db_errors():
                    async for note in conn.notifies(timeout=left):
                        if note.payload == str(job_id):
                            break

    # -- queue-level views and maintenance -----------------------------------------------------

    async def stats(self) -> list[dict[str, Any]]:
        """Rows of (queue, state, jobs, oldest_pending_seconds)."""
        return await self._fetch("stats", {})

    async def depth(self, queues: Sequence[str]) -> list[dict[str, Any]]:
        """Runnable and running jobs by queue and type, with the oldest wait (the autoscaler's view)."""
        return await self._fetch("depth", {"queues": list(queues)})

    async def rescue(self, gone_workers: Sequence[str] = (), policy: RetryPolicy = DEFAULT) -> list[dict[str, Any]]:
        """Recover expired leases and the jobs of gone workers (retried after ``policy``'s delay)."""
        rows: list[dict[str, Any]] = await self._run(plans.rescue(gone_workers, policy))
        return rows

    async def purge(self, states: Sequence[str], older_than: float) -> int:
        """Delete finished jobs of ``states`` older than ``older_than`` seconds; returns how many."""
        allowed = [s.value for s in ordered(PURGEABLE)]
        bad = sorted(set(states) - set(allowed))
        if bad:
            raise InvalidJob(f"only finished states can be purged ({', '.join(allowed)}), not {bad}")
        return await self.purge_jobs(JobFilter(states=tuple(states), older_than=older_than))

    # -- queue settings ----------------------------------------------------------------------------

    async def set_queue(self, settings: QueueSettings, clear: Sequence[str] = (), source: str = "cli") -> QueueSettings:
        """Store the settings given (None keeps the stored value; ``clear`` removes the named ones:
        max_attempts, ttl, result_ttl, failure_ttl, retry); returns the queue's settings after."""
        rows = await self._fetch("set_queue", {**settings.row(source), "clear": list(clear)})
        return QueueSettings.from_row(rows[0])

    async def replace_queue(self, settings: QueueSettings, source: str) -> QueueSettings:
        """Make ``settings`` the whole of the queue's settings (a declaration: a JobQueue)."""
        rows = await self._fetch("replace_queue", settings.row(source))
        return QueueSettings.from_row(rows[0])

    async def sync_queue_settings(self, source: str, settings: Sequence[QueueSettings],
                                  keep_also: Sequence[str] = ()) -> list[str]:
        """Make the settings of ``source`` exactly ``settings`` (e.g. a JobQueue's spec.queueSettings),
        leaving the queues named in ``keep_also`` as stored; returns the queues whose settings were removed."""
        async with self.transaction() as conn:
            for one in settings:
                await self.db.execute("replace_queue", one.row(source), conn)
            rows = await self.db.execute("remove_queues_of_source", {
                "source": source, "keep": [s.name for s in settings] + list(keep_also)}, conn)
        return [r["name"] for r in rows]

    async def remove_queue(self, name: str) -> bool:
        """Drop a queue's settings (its jobs stay); False if it had none."""
        return bool(await self._fetch("remove_queue", {"name": name}))

    async def queues(self) -> list[QueueSettings]:
        """Every queue with settings or jobs, and its settings."""
        return [QueueSettings.from_row(r) for r in await self._fetch("list_queues", {})]

    # -- limits ----------------------------------------------------------------------------------

    async def set_limit(self, type: str, tenant: str = "", *, concurrency: int | None = None,
                        rate: float | None = None) -> dict[str, Any]:
        """At most ``concurrency`` running and ``rate`` starts per second for ``type``: across all
        tenants (``tenant=""``), for one tenant, or for each tenant separately (``tenant="*"``)."""
        if concurrency is None and rate is None:
            raise InvalidJob("give a concurrency, a rate, or both")
        if concurrency is not None and concurrency < 1:
            raise InvalidJob("concurrency must be at least 1")
        if rate is not None and not 0 < rate < float("inf"):
            raise InvalidJob("rate must be a positive number of starts per second")
        if tenant == "*" and rate is not None:
            raise InvalidJob("a rate applies to the type or to one tenant, not to each tenant ('*')")
        make_spec(type, tenant=tenant or None)  # the same name rules as jobs
        rows = await self._fetch("set_limit", {"type": type, "tenant": tenant, "concurrency": concurrency,
                                               "rate": rate})
        return rows[0]

    async def clear_limit(self, type: str, tenant: str = "") -> bool:
        return bool(await self._fetch("clear_limit", {"type": type, "tenant": tenant}))

    async def limits(self) -> list[dict[str, Any]]:
        """Every limit with the number of its jobs running now."""
        return await self._fetch("list_limits", {})

    # -- schedules -------------------------------------------------------------------------------

    async def set_schedule(self, spec: ScheduleSpec, source: str = "cli") -> datetime:
        """Create or redefine a schedule; returns its next run time."""
        rows = await self._fetch("upsert_schedule", spec.row(source, datetime.now(UTC)))
        next_run: datetime = rows[0]["next_run_at"]
        return next_run

    async def sync_schedules(self, source: str, specs: Sequence[ScheduleSpec]) -> list[str]:
        """Make the schedules of ``source`` exactly ``specs`` (e.g. a JobQueue's spec.schedules);
        returns the names removed."""
        for spec in specs:
            await self.set_schedule(spec, source)
        rows = await self._fetch("remove_schedules_of_source", {"source": source, "keep": [s.name for s in specs]})
        return [r["name"] for r in rows]

    async def remove_schedule(self, name: str) -> None:
        if not await self._fetch("remove_schedule", {"name": name}):
            raise JobNotFound(f"no schedule {name!r}")

    async def pause_schedule(self, name: str, paused: bool = True) -> None:
        if not await self._fetch("pause_schedule", {"name": name, "paused": paused}):
            raise JobNotFound(f"no schedule {name!r}")

    async def schedules(self) -> list[dict[str, Any]]:
        return await self._fetch("list_schedules", {})

    async def fire_schedules(self) -> int:
        """Enqueue the jobs of due schedule ticks now; returns how many (workers do this)."""
        fired: int = len(await self._run(plans.fire_schedules()))
        return fired

    async def overview(self) -> list[dict[str, Any]]:
        """Per queue: completed per second over 5 minutes and live workers."""
        return await self._fetch("overview", {})

    async def workers(self) -> list[dict[str, Any]]:
        return await self._fetch("list_workers", {})

    async def in_flight_by_worker(self, worker_ids: Sequence[str]) -> dict[str, int]:
        rows = await self._fetch("in_flight_by_worker", {"worker_ids": list(worker_ids)})
        return {r["worker_id"]: int(r["in_flight"]) for r in rows}

    async def running_workers(self, queues: Sequence[str]) -> list[str]:
        rows = await self._fetch("running_workers", {"queues": list(queues)})
        return [r["worker_id"] for r in rows]


async def sleep_jittered(seconds: float, event: asyncio.Event | None = None) -> None:
    """Sleep ``seconds`` scaled by a random factor in [0.5, 1.5), returning early if ``event`` is set."""
    import random
    delay = seconds * (0.5 + random.random())
    if event is None:
        await asyncio.sleep(delay)
        return
    with contextlib.suppress(TimeoutError):  # asyncio.timeout, not wait_for: a cancel always gets through (3.11)
        async with asyncio.timeout(delay):
            await event.wait()
