"""A worker's connection budget, counted by the server (pg_stat_activity): at most 2 by default
(one for LISTEN, one for everything else), idle or busy; ``pool_size`` raises the shared part;
without LISTEN (``listen_database_url="none"``) one, and new work is still found by the poll."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from skiplock import Job, JobRegistry, Queue, State
from tests.helpers import eventually, running_worker, sql


def _connections(dsn: str) -> int:
    """Server connections of skiplock workers (pool and listener) to this test's database."""
    name = urlsplit(dsn).path.lstrip("/")
    rows = sql(dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND application_name IN ('skiplock-worker', 'skiplock-listener')", (name,))
    return int(rows[0][0])


async def _all(queue: Queue, ids: list[int], state: State) -> bool:
    return all([(await queue.get(i)).state == state for i in ids])


async def test_a_worker_holds_at_most_two_connections_idle_and_busy(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()
    gate = asyncio.Event()
    peak = 0

    @jobs.handler("work")
    async def work(job: Job) -> None:
        await gate.wait()

    async with running_worker(jobs, dsn, concurrency=20, recovery_interval=0.1, heartbeat_interval=0.2) as worker:
        await eventually(lambda: _ready(worker.listener.healthy))
        await asyncio.sleep(1.0)  # idle: heartbeats, maintenance rounds, polls
        idle = _connections(dsn)
        ids = await queue.enqueue_many([{"type": "work"} for _ in range(200)])
        for _ in range(10):  # busy: claims, heartbeats of 20 leases, maintenance, finishes
            await asyncio.sleep(0.2)
            peak = max(peak, _connections(dsn))
            gate.set()
            await asyncio.sleep(0.05)
            gate.clear()
        gate.set()
        await eventually(lambda: _all(queue, ids, State.COMPLETED))
        peak = max(peak, _connections(dsn))
    assert idle == 2 and peak <= 2, (idle, peak)


async def test_pool_size_and_no_listen(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()
    jobs.register("t", lambda job: None)
    async with running_worker(jobs, dsn, listen_database_url="none", pool_size=3, concurrency=30,
                              poll_interval=0.2) as worker:
        assert not worker.listener.running
        ids = await queue.enqueue_many([{"type": "t"} for _ in range(300)])
        await eventually(lambda: _all(queue, ids, State.COMPLETED))
        assert _connections(dsn) <= 3


async def _ready(value: bool) -> bool:
    return value
