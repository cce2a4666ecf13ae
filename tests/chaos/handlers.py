"""Handlers for the chaos tier (``--handlers tests.chaos.handlers:jobs``).

Every execution inserts one row into ``chaos_executions`` (on its own connection, straight to the
database: ``CHAOS_RECORD_DSN``, so a proxy in front of the worker does not cut the bookkeeping)
before doing anything else, with a random token that the handler also returns as the job's result:
the stored result then names exactly the execution whose outcome the queue accepted.

Payload: ``ms`` (work time in milliseconds), ``stubborn`` (ignore cancel requests and lost leases,
like a handler stuck in a C call), ``trace`` (also record the end of the execution).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from typing import Any

import psycopg

from skiplock import Job, JobRegistry

jobs = JobRegistry()
_local = threading.local()


def _conn() -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        dsn = os.environ.get("CHAOS_RECORD_DSN") or os.environ["DATABASE_URL"]
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5, application_name="chaos-record")
        _local.conn = conn
    return conn


def _record(job: Job, token: str, note: str) -> None:
    """Insert the execution row; a connection the database dropped (a restart) is replaced once."""
    for last in (False, True):
        try:
            _conn().execute("INSERT INTO chaos_executions (job_id, attempt, worker, pid, token, note) "
                            "VALUES (%s, %s, %s, %s, %s, %s)",
                            (job.id, job.attempt, os.environ.get("SKIPLOCK_WORKER_ID", ""), os.getpid(), token,
                             note))
            return
        except psycopg.OperationalError:
            _local.conn = None
            if last:
                raise


@jobs.handler("work")
def work(job: Job) -> dict[str, Any]:
    token = secrets.token_hex(8)
    _record(job, token, "start")
    payload = job.payload if isinstance(job.payload, dict) else {}
    deadline = time.monotonic() + float(payload.get("ms", 0)) / 1000
    stubborn = bool(payload.get("stubborn"))
    while (left := deadline - time.monotonic()) > 0:
        if not stubborn:
            job.raise_if_cancelled()
        time.sleep(min(left, 0.05))
    if payload.get("trace"):
        _record(job, token, "end")
    return {"token": token, "attempt": job.attempt}
