"""The worker runtime against a real PostgreSQL: ordering, retries, dependencies, cancel, timeouts,
leases, shutdown and reconnects."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import psycopg

from skiplock import Job, JobRegistry, PermanentFailure, Queue, State, Worker, WorkerConfig
from skiplock.embedded import LocalPostgres
from skiplock.retry import Exponential
from skiplock.sql import QUERIES
from tests.helpers import eventually, running_worker, sql


async def _states(queue: Queue, ids: list[int]) -> list[State]:
    return [(await queue.get(i)).state for i in ids]


async def _all_in(queue: Queue, ids: list[int], *states: State) -> bool:
    return all(s in states for s in await _states(queue, ids))


async def test_results_are_stored_for_async_and_sync_handlers(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()
    threads: set[str] = set()

    @jobs.handler("async")
    async def a(job: Job) -> dict[str, object]:
        return {"double": job.payload["n"] * 2, "attempt": job.attempt, "queue": job.queue}

    @jobs.handler("sync")
    def s(job: Job) -> str:
        threads.add(threading.current_thread().name)
        return f"sync {job.payload['n']}"

    ids = await queue.enqueue_many([{"type": "async", "payload": {"n": 1}}, {"type": "sync", "payload": {"n": 2}}])
    async with running_worker(jobs, dsn):
        await eventually(lambda: _all_in(queue, ids, State.COMPLETED))
    assert (await queue.get(ids[0])).result == {"double": 2, "attempt": 1, "queue": "default"}
    assert (await queue.get(ids[1])).result == "sync 2"
    assert threads and all(t.startswith("job") for t in threads)


async def test_claim_batch_caps_each_claim_statement(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()
    jobs.register("t", lambda job: None)
    sizes: list[int] = []
    async with running_worker(jobs, dsn, concurrency=10, claim_batch=3) as worker:
        real = worker.executor.claim

        async def claim(limit: int) -> list[dict[str, object]]:
            rows = await real(limit)
            sizes.append(len(rows))
            return rows

        worker.executor.claim = claim  # type: ignore[method-assign]
        ids = await queue.enqueue_many([{"type": "t"} for _ in range(25)])
        await eventually(lambda: _all_in(queue, ids, State.COMPLETED), timeout=30)
    assert sizes and max(sizes) <= 3 and sum(sizes) == 25


async def test_priority_then_run_at_then_id(queue: Queue, dsn: str) -> None:
    order: list[int] = []
    jobs = JobRegistry()

    @jobs.handler("t")
    async def t(job: Job) -> None:
        order.append(job.payload["p"])

    await queue.enqueue_many([{"type": "t", "payload": {"p": p}, "priority": p} for p in (0, 5, -3, 20, 5, 1)])
    async with running_worker(jobs, dsn, concurrency=1):
        await eventually(lambda: asyncio.sleep(0, len(order) == 6))
    assert order == [20, 5, 5, 1, 0, -3]


async def test_failures_retry_with_backoff_then_dead(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()
    attempts: list[tuple[int, float]] = []

    @jobs.handler("fails")
    async def fails(job: Job) -> None:
        attempts.append((job.attempt, time.monotonic()))
        raise ValueError(f"boom {job.attempt}")

    @jobs.handler("refuses")
    async def refuses(job: Job) -> None:
        raise PermanentFailure("bad input")

    ids = await queue.enqueue_many([{"type": "fails", "max_attempts": 3}, {"type": "refuses", "max_attempts": 3}])
    async with running_worker(jobs, dsn, backoff_base=0.3, backoff_max=5) as worker:
        await eventually(lambda: _all_in(queue, ids, State.DEAD))
    failed = await queue.get(ids[0])
    assert failed.attempts == 3 and "ValueError: boom 3" in (failed.last_error or "")
    assert [a for a, _ in attempts] == [1, 2, 3]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3  # base * 2**(n-1), jittered by [0.5, 1)
    refused = await queue.get(ids[1])
    assert refused.attempts == 1 and "bad input" in (refused.last_error or "")
    samples = worker.metrics.registry.get_sample_value
    assert samples("skiplock_jobs_dead_total", {"queue": "default", "type": "fails"}) == 1
    assert samples("skiplock_jobs_retried_total", {"queue": "default", "type": "fails"}) == 2


async def test_dependency_chain_runs_in_order_and_dead_parent_cancels(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()
    ran: list[str] = []

    @jobs.handler("step")
    async def step(job: Job) -> None:
        ran.append(job.payload["name"])
        if job.payload["name"] == "bad":
            raise PermanentFailure("no")

    a = await queue.enqueue("step", {"name": "a"})
    b = await queue.enqueue("step", {"name": "b"}, depends_on=(a,))
    c = await queue.enqueue("step", {"name": "c"}, depends_on=(a, b))
    bad = await queue.enqueue("step", {"name": "bad"})
    orphan = await queue.enqueue("step", {"name": "orphan"}, depends_on=(bad, a))
    async with running_worker(jobs, dsn, concurrency=4):
        await eventually(lambda: _all_in(queue, [a, b, c, bad, orphan], State.COMPLETED, State.DEAD,
                                         State.CANCELLED))
    assert await _states(queue, [a, b, c, bad, orphan]) == [State.COMPLETED] * 3 + [State.DEAD, State.CANCELLED]
    assert ran.index("a") < ran.index("b") < ran.index("c") and "orphan" not in ran


async def test_cancel_running_job_is_cooperative_and_timeout_aborts(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()

    @jobs.handler("loop")
    async def loop(job: Job) -> None:
        while True:
            job.raise_if_cancelled()
            await asyncio.sleep(0.05)

    cancel_me = await queue.enqueue("loop")
    slow = await queue.enqueue("loop", timeout=0.5, max_attempts=1)
    async with running_worker(jobs, dsn, lease_seconds=3, heartbeat_interval=0.2):
        await eventually(lambda: _all_in(queue, [cancel_me], State.RUNNING))
        assert await queue.cancel(cancel_me) == "running"
        await eventually(lambda: _all_in(queue, [cancel_me], State.CANCELLED), timeout=10)
        await eventually(lambda: _all_in(queue, [slow], State.DEAD), timeout=10)
    assert "timeout" in ((await queue.get(slow)).last_error or "")


async def test_a_late_finish_cannot_overwrite_a_rescued_and_reclaimed_job(queue: Queue, dsn: str) -> None:
    job_id = await queue.enqueue("t")
    with psycopg.connect(dsn, autocommit=True) as conn:
        claim = {"queue": "default", "types": None, "limit": 1, "lease_seconds": 0.1}
        conn.execute(QUERIES["claim"], {**claim, "worker_id": "slow"})
        await asyncio.sleep(0.3)
        rescued = await queue.rescue(policy=Exponential(base=0))  # retry at once
        assert [(r["id"], r["state"]) for r in rescued] == [(job_id, "retry")]
        conn.execute(QUERIES["claim"], {**claim, "worker_id": "fresh", "lease_seconds": 60})
        late = [{"id": job_id, "attempt": 1, "outcome": "completed", "result": "stale", "error": None}]
        from skiplock import plans
        from skiplock.runner import run_sync
        assert run_sync(conn, plans.finish("slow", late)) == []
    job = await queue.get(job_id)
    assert job.state == State.RUNNING and job.worker_id == "fresh" and job.attempts == 2 and job.result is None


async def test_heartbeat_renews_all_leases_in_one_statement(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()
    gate = asyncio.Event()

    @jobs.handler("hold")
    async def hold(job: Job) -> None:
        await gate.wait()

    ids = await queue.enqueue_many([{"type": "hold"} for _ in range(5)])
    async with running_worker(jobs, dsn, concurrency=5, lease_seconds=3, heartbeat_interval=3600,
                              recovery_interval=0.2) as worker:
        await eventually(lambda: _all_in(queue, ids, State.RUNNING))
        before = {i: (await queue.get(i)).lease_expires_at for i in ids}
        await asyncio.sleep(1.0)
        calls = 0
        original = worker.db.execute

        async def counting(name: str, params: dict[str, object], conn: object = None) -> list[dict[str, object]]:
            nonlocal calls
            calls += name == "worker_heartbeat"
            return await original(name, params)

        worker.db.execute = counting  # type: ignore[method-assign]
        await worker.heartbeat()
        after = {i: (await queue.get(i)).lease_expires_at for i in ids}
        assert calls == 1 and all(after[i] > before[i] for i in ids)  # type: ignore[operator]
        await asyncio.sleep(2.3)  # past the original lease: renewed, so nothing was rescued
        assert await _all_in(queue, ids, State.RUNNING)
        gate.set()
        await eventually(lambda: _all_in(queue, ids, State.COMPLETED))


async def test_graceful_shutdown_finishes_short_jobs_and_releases_long_ones(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()

    @jobs.handler("nap")
    async def nap(job: Job) -> str:
        await asyncio.sleep(job.payload["s"])
        return "done"

    short, long = await queue.enqueue_many([{"type": "nap", "payload": {"s": 0.5}},
                                            {"type": "nap", "payload": {"s": 60}}])
    worker = Worker(jobs, dsn, WorkerConfig(shutdown_grace=1.5, poll_interval=0.2))
    task = asyncio.create_task(worker.run())
    await eventually(lambda: _all_in(queue, [short, long], State.RUNNING))
    worker.stop()
    await asyncio.wait_for(task, 20)
    assert (await queue.get(short)).state == State.COMPLETED
    released = await queue.get(long)
    assert released.state == State.PENDING and released.attempts == 0 and released.worker_id is None
    assert await queue.workers() == []


async def test_worker_rescues_expired_leases_of_a_dead_worker(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()

    @jobs.handler("t")
    async def t(job: Job) -> int:
        return job.attempt

    job_id = await queue.enqueue("t")
    sql(dsn, "UPDATE skiplock.jobs SET state='running', attempts=1, worker_id='ghost', "
             "lease_expires_at = now() - interval '1 second' WHERE id = %s", (job_id,))
    async with running_worker(jobs, dsn, recovery_interval=0.2):
        await eventually(lambda: _all_in(queue, [job_id], State.COMPLETED))
    job = await queue.get(job_id)
    assert job.result == 2 and "lease expired on worker ghost" in (job.last_error or "")


async def test_unhandled_types_stay_pending_and_forced_ones_fail_clearly(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()

    @jobs.handler("known")
    async def known(job: Job) -> None:
        return None

    unknown = await queue.enqueue("unknown", max_attempts=1)
    async with running_worker(jobs, dsn):
        await asyncio.sleep(0.6)
        assert (await queue.get(unknown)).state == State.PENDING
    async with running_worker(jobs, dsn, types=["known", "unknown"]):
        await eventually(lambda: _all_in(queue, [unknown], State.DEAD))
    assert "no handler for job type 'unknown'" in ((await queue.get(unknown)).last_error or "")


async def test_worker_survives_a_database_restart(own_server: LocalPostgres) -> None:
    dsn = own_server.uri
    jobs = JobRegistry()

    @jobs.handler("t")
    async def t(job: Job) -> None:
        return None

    async with Queue(dsn) as queue:
        first = await queue.enqueue_many([{"type": "t"} for _ in range(20)])
        async with running_worker(jobs, dsn, concurrency=4) as worker:
            await eventually(lambda: _all_in(queue, first, State.COMPLETED))
            own_server.stop("immediate")
            await asyncio.sleep(1.5)
            own_server.start()
            second = await _enqueue_retrying(queue, 20)
            await eventually(lambda: _all_in(queue, second, State.COMPLETED), timeout=60)
            assert worker.metrics.registry.get_sample_value("skiplock_db_errors_total", {"operation": "listen"})


async def _enqueue_retrying(queue: Queue, n: int) -> list[int]:
    from skiplock import DatabaseUnavailable

    for _ in range(50):
        try:
            return await queue.enqueue_many([{"type": "t"} for _ in range(n)])
        except DatabaseUnavailable:
            await asyncio.sleep(0.2)
    raise AssertionError("database did not come back")
