"""The operator's database access: one small pool per distinct DSN, shared by every JobQueue that
names it, with bounded waits everywhere, so an unreachable database costs a few seconds per poll
and a ``Degraded`` condition, never a stuck or crashed operator. DSNs are only ever held in memory:
pools are keyed by a digest, and error text is scrubbed of the DSN and its password."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Hashable
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from skiplock.db import conn_kwargs, redact
from skiplock.errors import DatabaseUnavailable, SkiplockError
from skiplock.queue import Queue

__all__ = ["Databases", "InvalidDsn", "digest", "redact"]
log = logging.getLogger("skiplock.operator.db")
T = TypeVar("T")


class InvalidDsn(SkiplockError, ValueError):
    """The Secret holds something that is not a PostgreSQL connection string."""


def digest(dsn: str) -> str:
    """A stable, non-reversible name for a DSN (safe for logs)."""
    return hashlib.sha256(dsn.encode()).hexdigest()[:12]


class Databases:
    """Connection pools by DSN; each user (a JobQueue) holds one, and a pool closes with its last user."""

    def __init__(self, query_timeout: float = 5.0, pool_size: int = 4) -> None:
        self.query_timeout = query_timeout
        self.pool_size = pool_size
        self._pools: dict[str, AsyncConnectionPool[Any]] = {}
        self._queues: dict[str, Queue] = {}
        self._users: dict[Hashable, str] = {}

    def _pool(self, dsn: str) -> AsyncConnectionPool[Any]:
        kwargs = conn_kwargs("operator")
        kwargs["connect_timeout"] = max(1, round(self.query_timeout))
        kwargs["options"] = f"-c statement_timeout={int(self.query_timeout * 1000)}"
        return AsyncConnectionPool(
            dsn, min_size=1, max_size=self.pool_size, kwargs=kwargs, open=False,
            check=AsyncConnectionPool.check_connection, timeout=self.query_timeout,
            name=f"operator-{digest(dsn)}")

    async def acquire(self, user: Hashable, dsn: str) -> Queue:
        """The shared ``Queue`` for ``dsn``, on behalf of ``user`` (who drops any previous DSN)."""
        key = digest(dsn)
        if key not in self._queues:
            try:
                conninfo_to_dict(dsn)
            except psycopg.Error:
                raise InvalidDsn("not a valid PostgreSQL connection string") from None
            pool = self._pool(dsn)
            await pool.open(wait=False)
            self._pools[key], self._queues[key] = pool, Queue(pool=pool)
            log.info("opened database pool %s", key)
        previous = self._users.get(user)
        self._users[user] = key
        if previous is not None and previous != key:
            await self._close_unused(previous)
        return self._queues[key]

    async def release(self, user: Hashable) -> None:
        """``user`` no longer needs its database; the pool closes if nobody else does."""
        key = self._users.pop(user, None)
        if key is not None:
            await self._close_unused(key)

    async def _close_unused(self, key: str) -> None:
        if key in self._users.values():
            return
        self._queues.pop(key, None)
        pool = self._pools.pop(key, None)
        if pool is None:
            return
        try:
            await pool.close()
        except asyncio.CancelledError:  # its workers were cancelled (kopf stops leftover tasks)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        log.info("closed database pool %s", key)

    async def close(self) -> None:
        for key in list(self._queues):
            self._users = {u: k for u, k in self._users.items() if k != key}
            await self._close_unused(key)

    async def diagnose(self, dsn: str) -> str:
        """Why ``dsn`` cannot be reached, from one direct connection attempt (a pool timeout does not
        say); empty if it can be. Scrubbed of the DSN."""
        try:
            conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=max(1, round(self.query_timeout)))
        except psycopg.Error as exc:
            lines = str(exc).strip().splitlines()
            return redact(lines[0] if lines else type(exc).__name__, dsn)
        await conn.close()
        return ""

    async def call(self, work: Awaitable[T]) -> T:
        """Await ``work`` within the query timeout; a timeout is a ``DatabaseUnavailable``."""
        try:
            return await asyncio.wait_for(work, self.query_timeout * 2)
        except TimeoutError:
            raise DatabaseUnavailable(f"no answer within {self.query_timeout * 2:g}s") from None
