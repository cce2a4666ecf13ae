"""Run plans (``plans.py``) on a psycopg connection, async or sync.

Each step's statements are pipelined (one round trip). A plan runs in its own transaction when
the connection is idle; inside the caller's transaction it simply joins it.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from .errors import wrap_db_errors
from .plans import Plan, Row, Step
from .sql import QUERIES


async def _run_step_async(conn: psycopg.AsyncConnection[Any], step: Step) -> list[list[Row]]:
    async with conn.pipeline():
        curs = []
        for name, params in step:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(QUERIES[name], params)
            curs.append(cur)
    return [await c.fetchall() if c.description else [] for c in curs]


def _run_step_sync(conn: psycopg.Connection[Any], step: Step) -> list[list[Row]]:
    with conn.pipeline():
        curs = []
        for name, params in step:
            cur = conn.cursor(row_factory=dict_row)
            cur.execute(QUERIES[name], params)
            curs.append(cur)
    return [c.fetchall() if c.description else [] for c in curs]


async def run_one_trip(conn: psycopg.AsyncConnection[Any], plan: Plan) -> Any:
    """Drive a plan of one step as its own transaction in a single round trip: BEGIN, the step's
    statements and COMMIT are pipelined together, so the locks they take are held for the
    server's work and the commit only, never while the client reads the results (a claim of
    limited types holds the limit rows, which every other such claim waits for)."""
    if not _own_transaction(conn):
        return await run(conn, plan)
    step = next(plan)
    with wrap_db_errors():
        try:
            async with conn.pipeline(), conn.transaction():
                curs = []
                for name, params in step:
                    cur = conn.cursor(row_factory=dict_row)
                    await cur.execute(QUERIES[name], params)
                    curs.append(cur)
            results = [await c.fetchall() if c.description else [] for c in curs]
        except BaseException:
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                await conn.rollback()  # an error ended the pipeline before its COMMIT ran
            raise
    try:
        plan.send(results)
    except StopIteration as done:
        return done.value
    raise RuntimeError("run_one_trip: the plan has more than one step")


def _own_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    return conn.info.transaction_status == TransactionStatus.IDLE


async def run(conn: psycopg.AsyncConnection[Any], plan: Plan, atomic: bool = True) -> Any:
    """Drive ``plan`` on an async connection; returns the plan's value. ``atomic=False`` lets a
    plan whose only write is its first statement skip the transaction's extra round trips."""
    own = atomic and _own_transaction(conn)
    tx: AbstractAsyncContextManager[Any] = conn.transaction() if own else nullcontext()
    with wrap_db_errors():
        async with conn.pipeline(), tx:
            try:
                step = next(plan)
                while True:
                    step = plan.send(await _run_step_async(conn, step))
            except StopIteration as done:
                return done.value


def run_sync(conn: psycopg.Connection[Any], plan: Plan, atomic: bool = True) -> Any:
    """Drive ``plan`` on a sync connection; returns the plan's value (see ``run``)."""
    own = atomic and _own_transaction(conn)
    tx: AbstractContextManager[Any] = conn.transaction() if own else nullcontext()
    with wrap_db_errors(), conn.pipeline(), tx:
        try:
            step = next(plan)
            while True:
                step = plan.send(_run_step_sync(conn, step))
        except StopIteration as done:
            return done.value
