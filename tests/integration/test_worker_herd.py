"""No thundering herd: one NOTIFY reaches every idle worker of a queue, but about one claims per new
job (the others wait a random backoff and hear that the first drained the queue), while the job
still starts at once; and jobs enqueued while a claim runs are not left behind."""

from __future__ import annotations

import asyncio
import contextlib
import time

from skiplock import Job, JobRegistry, Queue, State, Worker
from tests.helpers import eventually, running_worker

N = 8


async def _all(queue: Queue, ids: list[int], state: State) -> bool:
    return all([(await queue.get(i)).state == state for i in ids])


async def _true(value: bool) -> bool:
    return value


async def test_one_job_does_not_make_every_idle_worker_claim(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()
    started: dict[int, float] = {}

    @jobs.handler("t")
    async def t(job: Job) -> None:
        started[job.id] = time.monotonic()

    async with contextlib.AsyncExitStack() as stack:
        workers: list[Worker] = [await stack.enter_async_context(running_worker(jobs, dsn, concurrency=2))
                                 for _ in range(N)]
        await eventually(lambda: _true(all(w.listener.healthy and w.lease_keeper.peers == N for w in workers)))
        await asyncio.sleep(0.5)
        before = sum(w.executor.empty_claims for w in workers)
        waits = []
        for _ in range(20):
            sent = time.monotonic()
            (job_id,) = await queue.enqueue_many([{"type": "t"}])
            await eventually(lambda: _true(job_id in started), every=0.005)  # noqa: B023
            waits.append(started[job_id] - sent)
            await asyncio.sleep(0.3)  # every backoff over
        empty = sum(w.executor.empty_claims for w in workers) - before
        # without the backoff: N - 1 = 7 empty claims per job (measured: 139 for 20); with it, about one
        assert empty <= 20 * 2, empty
        assert sorted(waits)[len(waits) // 2] < 0.25, waits  # started at once, not at a poll
        ids = await queue.enqueue_many([{"type": "t"} for _ in range(50)])  # more jobs than one worker takes
        await eventually(lambda: _all(queue, ids, State.COMPLETED), timeout=10)


async def test_jobs_enqueued_in_bursts_all_start_promptly(queue: Queue, dsn: str) -> None:
    """Many small enqueues racing the claims: every job starts well before a safety-net poll."""
    jobs = JobRegistry()
    jobs.register("t", lambda job: None)
    async with contextlib.AsyncExitStack() as stack:
        workers = [await stack.enter_async_context(running_worker(jobs, dsn, concurrency=2, idle_poll_interval=120))
                   for _ in range(4)]
        await eventually(lambda: _true(all(w.listener.healthy and w.lease_keeper.peers == 4 for w in workers)))
        ids: list[int] = []
        for _ in range(60):
            ids += await queue.enqueue_many([{"type": "t"}])
            await asyncio.sleep(0.003)
        await eventually(lambda: _all(queue, ids, State.COMPLETED), timeout=15)
