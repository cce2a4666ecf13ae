"""skiplock through its public API: ``Queue.enqueue_many`` and ``Worker``/``WorkerConfig``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from skiplock import Job, JobRegistry, Queue, Worker, WorkerConfig
from skiplock.migrate import migrate

from ..handler import JOB_TYPE, handle
from . import Enqueue, Peer, WorkerSettings, until


class SkiplockPeer(Peer):
    name = "skiplock"
    done_sql = "SELECT count(*) FROM skiplock.jobs WHERE state = 'completed'"
    remaining_sql = "SELECT count(*) FROM skiplock.jobs WHERE state IN ('pending', 'scheduled', 'retry', 'running')"
    lease_markers = ("INSERT INTO skiplock.workers",)

    def setup(self, dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)

    @asynccontextmanager
    async def producer(self, dsn: str) -> AsyncIterator[Enqueue]:
        async with Queue(dsn, pool_size=1) as queue:
            async def enqueue(payloads: list[dict[str, Any] | None]) -> None:
                await queue.enqueue_many([{"type": JOB_TYPE, "payload": p or {}} for p in payloads])
            yield enqueue

    async def work(self, dsn: str, settings: WorkerSettings, stop: asyncio.Event) -> None:
        registry = JobRegistry()

        @registry.handler(JOB_TYPE)
        async def noop(job: Job) -> None:
            await handle(job.payload)

        # The same claim batch as every peer that has one: at most settings.batch jobs per claim statement.
        worker = Worker(registry, dsn, WorkerConfig(concurrency=settings.concurrency, claim_batch=settings.batch))
        task = asyncio.create_task(worker.run())
        await until(stop, task, lambda: worker.stop(hard=True))
