"""Claims overlap the finish transaction: a handler that returned gives its slot back at once
(its outcome waits for the next flush), handlers never exceed the concurrency, and at most
2 x concurrency leases are held."""

from __future__ import annotations

import asyncio
from typing import Any

from skiplock import Job, JobRegistry, Queue, State
from skiplock import plans as plans_mod
from tests.helpers import eventually, running_worker


async def test_claim_overlaps_a_slow_finish_within_bounds(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()
    started: list[int] = []
    executing = 0
    max_executing = 0

    @jobs.handler("t")
    async def t(job: Job) -> None:
        nonlocal executing, max_executing
        executing += 1
        max_executing = max(max_executing, executing)
        started.append(job.id)
        await asyncio.sleep(0)
        executing -= 1

    ids = await queue.enqueue_many([{"type": "t"} for _ in range(12)])
    async with running_worker(jobs, dsn, concurrency=3) as worker:
        real_run = worker.db.run
        held: list[int] = []
        first_flush_done = asyncio.Event()
        started_during_first_flush: list[int] = []

        async def slow_run(plan: plans_mod.Plan, conn: Any = None, atomic: bool = True) -> Any:
            if plan.gi_code.co_name == "finish" and not first_flush_done.is_set():  # type: ignore[attr-defined]
                before = len(started)
                await asyncio.sleep(1.0)  # the first finish transaction is slow...
                started_during_first_flush.append(len(started) - before)
                held.append(len(worker.running))
                first_flush_done.set()
            return await real_run(plan, conn, atomic)

        worker.db.run = slow_run  # type: ignore[method-assign]

        async def all_done() -> bool:
            return all([(await queue.get(i)).state == State.COMPLETED for i in ids])

        await eventually(all_done)
    # ...yet the worker claimed and ran the next jobs meanwhile, within its limits.
    assert started_during_first_flush and started_during_first_flush[0] >= 3
    assert max_executing <= 3
    assert held and held[0] <= 6
    assert sorted(started) == sorted(ids)
