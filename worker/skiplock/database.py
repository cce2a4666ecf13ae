"""The one way ``Queue`` and the worker's services reach PostgreSQL: named statements and plans on
a connection pool (so how many connections a process holds is decided in one place)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from .errors import wrap_db_errors
from .plans import Plan, Row
from .runner import run, run_one_trip
from .sql import QUERIES

AsyncConn = psycopg.AsyncConnection[Any]


class Database:
    """Runs named statements and plans on ``pool``, or on a caller's connection (inside its
    transaction). ``last_ok`` is when the database last answered (``time.monotonic()``)."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool
        self.last_ok = 0.0

    async def execute(self, name: str, params: dict[str, Any], conn: AsyncConn | None = None) -> list[Row]:
        """Run the statement ``name``; returns its rows (none for a statement without)."""
        with wrap_db_errors():
            if conn is not None:
                return await _fetch(conn, name, params)
            async with self.pool.connection() as pooled:
                rows = await _fetch(pooled, name, params)
        self.last_ok = time.monotonic()
        return rows

    async def run(self, plan: Plan, conn: AsyncConn | None = None, atomic: bool = True) -> Any:
        """Drive ``plan`` (see ``runner.run``); returns its value."""
        if conn is not None:
            return await run(conn, plan, atomic)
        with wrap_db_errors():
            async with self.pool.connection() as pooled:
                value = await run(pooled, plan, atomic)
        self.last_ok = time.monotonic()
        return value

    async def run_one_trip(self, plan: Plan) -> Any:
        """Drive a one-step ``plan`` as one transaction in one round trip (``runner.run_one_trip``)."""
        with wrap_db_errors():
            async with self.pool.connection() as pooled:
                value = await run_one_trip(pooled, plan)
        self.last_ok = time.monotonic()
        return value


async def _fetch(conn: AsyncConn, name: str, params: dict[str, Any]) -> list[Row]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(QUERIES[name], params)
    return await cur.fetchall() if cur.description else []
