"""Through a real PgBouncer in transaction mode (tests/pgbouncer.py): workers and producers work
with everything but LISTEN going through it (no server-side prepared statements, no session
state), LISTEN on a direct URL or none at all (polling), and a PgBouncer restart mid-run loses
no job and runs none twice."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from skiplock import Job, JobRegistry, Queue, State
from tests.helpers import eventually, running_worker, sql
from tests.pgbouncer import PgBouncer, pgbouncer_binary

pytestmark = pytest.mark.skipif(pgbouncer_binary() is None, reason="pgbouncer is not installed (tools/setup.sh --test)")

POOL = 4


@pytest.fixture
def bouncer(dsn: str) -> Iterator[PgBouncer]:
    with PgBouncer(dsn, pool_size=POOL) as b:
        yield b


def _server_connections(dsn: str) -> int:
    name = urlsplit(dsn).path.lstrip("/")
    rows = sql(dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
    return int(rows[0][0])


async def _all(queue: Queue, ids: list[int], state: State) -> bool:
    return all([(await queue.get(i)).state == state for i in ids])


async def test_workers_and_producers_through_pgbouncer(dsn: str, bouncer: PgBouncer) -> None:
    pooled = bouncer.url(dsn)
    jobs = JobRegistry()
    jobs.register("t", lambda job: job.payload["n"] * 2)
    async with Queue(pooled) as queue:
        async with queue.transaction() as conn:  # a transaction of the caller's, through the pooler
            first = await queue.enqueue("t", {"n": 0}, conn=conn)
        ids = [first, *await queue.enqueue_many([{"type": "t", "payload": {"n": i}} for i in range(1, 200)])]
        async with running_worker(jobs, pooled, listen_database_url=dsn, concurrency=5, pool_size=2) as a, \
                running_worker(jobs, pooled, listen_database_url=dsn, concurrency=5, pool_size=2) as b:
            await eventually(lambda: _all(queue, ids, State.COMPLETED))
            # server connections: PgBouncer's pool, plus one LISTEN connection per worker
            assert _server_connections(dsn) <= POOL + 2
            assert a.listener.healthy and b.listener.healthy
            late = await queue.enqueue("t", {"n": 500})  # woken by the direct LISTEN
            await eventually(lambda: _all(queue, [late], State.COMPLETED), timeout=5)
        assert (await queue.get(ids[7])).result == 14


async def test_without_a_listen_url_the_worker_polls(dsn: str, bouncer: PgBouncer) -> None:
    pooled = bouncer.url(dsn)
    jobs = JobRegistry()
    jobs.register("t", lambda job: None)
    async with Queue(pooled) as queue, running_worker(jobs, pooled, listen_database_url="none",
                                                      poll_interval=0.3) as worker:
        assert not worker.listener.running
        ids = await queue.enqueue_many([{"type": "t"} for _ in range(20)])
        await eventually(lambda: _all(queue, ids, State.COMPLETED), timeout=10)


async def test_a_pgbouncer_restart_mid_run_loses_nothing_and_runs_nothing_twice(dsn: str, bouncer: PgBouncer) -> None:
    pooled = bouncer.url(dsn)
    runs: collections.Counter[int] = collections.Counter()
    jobs = JobRegistry()

    @jobs.handler("t")
    async def t(job: Job) -> None:
        runs[job.id] += 1
        await asyncio.sleep(0.02)

    async with Queue(dsn) as queue:
        ids = await queue.enqueue_many([{"type": "t"} for _ in range(600)])
        config = {"listen_database_url": dsn, "concurrency": 8, "lease_seconds": 4, "recovery_interval": 0.5,
                  "poll_interval": 0.2}
        async with running_worker(jobs, pooled, **config), running_worker(jobs, pooled, **config):
            for restart in (1, 2):  # after 150 runs, after 300: mid-run, every connection cut
                await eventually(lambda: _at_least(sum(runs.values()), 150 * restart), timeout=30)  # noqa: B023
                await asyncio.to_thread(bouncer.restart)
                assert sum(runs.values()) < len(ids)
            await eventually(lambda: _all(queue, ids, State.COMPLETED), timeout=60)
        assert set(runs) == set(ids)
        assert [i for i, n in runs.items() if n > 1] == []


async def _at_least(value: int, n: int) -> bool:
    return value >= n
