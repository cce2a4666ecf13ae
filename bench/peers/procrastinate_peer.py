"""procrastinate through its public API: ``Task.batch_defer_async`` and ``App.run_worker_async``
(it fetches and finishes one job per statement; it has no batch setting)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from procrastinate import App, PsycopgConnector

from ..handler import JOB_TYPE, handle
from . import Enqueue, Peer, WorkerSettings, until


def _app(dsn: str) -> App:
    app = App(connector=PsycopgConnector(conninfo=dsn))

    @app.task(name=JOB_TYPE)
    async def noop(**payload: Any) -> None:
        await handle(payload)

    return app


class ProcrastinatePeer(Peer):
    name = "procrastinate"
    done_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
    remaining_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
    lease_markers = ("procrastinate_update_heartbeat",)

    def setup(self, dsn: str) -> None:
        async def install() -> None:
            app = _app(dsn)
            async with app.open_async():
                await app.schema_manager.apply_schema_async()
        asyncio.run(install())

    @asynccontextmanager
    async def producer(self, dsn: str) -> AsyncIterator[Enqueue]:
        app = _app(dsn)
        async with app.open_async():
            task = app.tasks[JOB_TYPE]

            async def enqueue(payloads: list[dict[str, Any] | None]) -> None:
                await task.batch_defer_async(*[p or {} for p in payloads])
            yield enqueue

    async def work(self, dsn: str, settings: WorkerSettings, stop: asyncio.Event) -> None:
        app = _app(dsn)
        async with app.open_async():
            task = asyncio.create_task(app.run_worker_async(
                concurrency=settings.concurrency, install_signal_handlers=False))
            await until(stop, task, task.cancel)
