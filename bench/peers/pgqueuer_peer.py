"""PgQueuer through its public API (asyncpg, its recommended driver): ``Queries.enqueue`` with
lists, and ``PgQueuer.run(batch_size, max_concurrent_tasks)``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from pgqueuer import AsyncpgDriver, PgQueuer, Queries
from pgqueuer.models import Job

from ..handler import JOB_TYPE, handle
from . import Enqueue, Peer, WorkerSettings, until


class PgQueuerPeer(Peer):
    name = "pgqueuer"
    done_sql = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
    remaining_sql = "SELECT count(*) FROM pgqueuer"
    lease_markers = ("SET heartbeat = NOW()",)

    def setup(self, dsn: str) -> None:
        async def install() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await Queries(AsyncpgDriver(conn)).install()
            finally:
                await conn.close()
        asyncio.run(install())

    @asynccontextmanager
    async def producer(self, dsn: str) -> AsyncIterator[Enqueue]:
        conn = await asyncpg.connect(dsn)
        queries = Queries(AsyncpgDriver(conn))

        async def enqueue(payloads: list[dict[str, Any] | None]) -> None:
            await queries.enqueue([JOB_TYPE] * len(payloads),
                                  [json.dumps(p).encode() if p else None for p in payloads], [0] * len(payloads))
        try:
            yield enqueue
        finally:
            await conn.close()

    async def work(self, dsn: str, settings: WorkerSettings, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(dsn)
        pgq = PgQueuer.from_asyncpg_connection(conn)

        @pgq.entrypoint(JOB_TYPE)
        async def noop(job: Job) -> None:
            await handle(json.loads(job.payload) if job.payload else None)

        task = asyncio.create_task(pgq.run(batch_size=settings.batch, max_concurrent_tasks=settings.concurrency))
        try:
            await until(stop, task, pgq.shutdown.set)
        finally:
            await conn.close()
