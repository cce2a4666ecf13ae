"""The queues under test, each driven through its own public API behind one small interface.

A peer knows how to install its schema, enqueue a batch of payloads, run a worker with a given
concurrency (and claim batch, where it has one) until told to stop, and how to count the jobs it
has finished or still holds. Everything else (processes, timing, counting) is shared, so the peers
differ only in the library code they run.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

Enqueue = Callable[[list[dict[str, Any] | None]], Awaitable[None]]


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int
    batch: int


class Peer(abc.ABC):
    name: str
    done_sql: str  # jobs finished successfully
    remaining_sql: str  # jobs not finished yet (waiting or running)
    lease_markers: tuple[str, ...]  # substrings of the statements that keep running jobs alive

    @abc.abstractmethod
    def setup(self, dsn: str) -> None:
        """Install the schema into an empty database."""

    @abc.abstractmethod
    def producer(self, dsn: str) -> AbstractAsyncContextManager[Enqueue]:
        """An open client whose callable enqueues one batch (one round trip where the API allows)."""

    @abc.abstractmethod
    async def work(self, dsn: str, settings: WorkerSettings, stop: asyncio.Event) -> None:
        """Run one worker until ``stop`` is set, then shut it down."""


async def until(stop: asyncio.Event, task: asyncio.Task[Any], on_stop: Callable[[], Any]) -> None:
    """Wait for ``stop`` (then call ``on_stop`` and wait for the worker) or for the worker to end."""
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        result = on_stop()
        if asyncio.iscoroutine(result):
            await result
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, 20)
    waiter.cancel()
    if task.done() and not task.cancelled() and (error := task.exception()) is not None:
        raise error


def get(name: str) -> Peer:
    if name == "skiplock":
        from .skiplock_peer import SkiplockPeer
        return SkiplockPeer()
    if name == "pgqueuer":
        from .pgqueuer_peer import PgQueuerPeer
        return PgQueuerPeer()
    if name == "procrastinate":
        from .procrastinate_peer import ProcrastinatePeer
        return ProcrastinatePeer()
    raise ValueError(f"unknown peer {name!r}")
