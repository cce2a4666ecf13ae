"""Handlers of the end-to-end tier's worker image: each execution is a row in ``e2e_runs``.

A run is inserted when the handler starts and gets ``ended_at`` when it returns, with the pod (the
worker id is the pod's name) and the image revision it ran in, so that the tests can tell a job
lost from a job run twice, and which pod ran what.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg

from skiplock import Job, JobRegistry

jobs = JobRegistry()
POD = os.environ.get("SKIPLOCK_WORKER_ID") or os.environ.get("HOSTNAME", "?")
REVISION = os.environ.get("E2E_REVISION", "?")


def _sql(statement: str, params: tuple[Any, ...]) -> Any:
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        row = conn.execute(statement, params).fetchone()
    return row[0] if row else None


@jobs.handler("work")
def work(job: Job) -> dict[str, Any]:
    """Sleep ``payload.seconds`` (cancellable), recording the run's start and end."""
    run = _sql("INSERT INTO e2e_runs (job_id, attempt, pod, revision) VALUES (%s, %s, %s, %s) RETURNING id",
               (job.id, job.attempt, POD, REVISION))
    deadline = time.monotonic() + float(job.payload.get("seconds", 1))
    while time.monotonic() < deadline:
        job.raise_if_cancelled()
        time.sleep(0.05)
    _sql("UPDATE e2e_runs SET ended_at = clock_timestamp() WHERE id = %s RETURNING id", (run,))
    return {"pod": POD, "revision": REVISION}
