"""Counting lost and duplicated jobs from the database: the jobs' final states, and ``e2e_runs``,
one row per execution written by the handler in the worker image (tests/e2e/image/e2e_jobs.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from skiplock.sync import enqueue_many

QUEUE = "e2e"
RUNS_TABLE = """CREATE TABLE IF NOT EXISTS e2e_runs (
    id bigserial PRIMARY KEY, job_id bigint NOT NULL, attempt int NOT NULL, pod text NOT NULL,
    revision text NOT NULL, started_at timestamptz NOT NULL DEFAULT clock_timestamp(), ended_at timestamptz)"""


@dataclass(frozen=True)
class Run:
    job_id: int
    attempt: int
    pod: str
    revision: str
    started_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True)
class Audit:
    """``lost``: jobs not completed. ``reruns``: jobs that ran more than once; ``duplicated``: those
    of them with an earlier run that ``excused`` does not explain (its pod did not die running it)."""

    jobs: int
    lost: list[int]
    reruns: dict[int, list[Run]]
    duplicated: list[int]

    def summary(self) -> str:
        return (f"{self.jobs} jobs: {len(self.lost)} lost, {len(self.reruns)} run twice where their pod died "
                f"running them, {len(self.duplicated)} duplicated")


def sql(dsn: str, statement: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def now(dsn: str) -> datetime:
    """The database's clock (the one ``e2e_runs`` is written with)."""
    when: datetime = sql(dsn, "SELECT clock_timestamp()")[0][0]
    return when


def enqueue(dsn: str, n: int, seconds: float) -> list[int]:
    """``n`` jobs of type ``work`` sleeping ``seconds`` each, in one transaction."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return enqueue_many(conn, [{"type": "work", "payload": {"seconds": seconds}, "queue": QUEUE}] * n)


def states(dsn: str, ids: Sequence[int]) -> dict[int, str]:
    rows = sql(dsn, "SELECT id, state::text FROM skiplock.jobs WHERE id = ANY(%(ids)s) UNION ALL "
               "SELECT id, state::text FROM skiplock.jobs_history WHERE id = ANY(%(ids)s)", {"ids": list(ids)})
    return dict(rows)


def all_completed(dsn: str, ids: Sequence[int]) -> bool:
    found = states(dsn, ids)
    return len(found) == len(ids) and set(found.values()) == {"completed"}


def runs(dsn: str, ids: Sequence[int]) -> list[Run]:
    rows = sql(dsn, "SELECT job_id, attempt, pod, revision, started_at, ended_at FROM e2e_runs "
               "WHERE job_id = ANY(%(ids)s) ORDER BY started_at, id", {"ids": list(ids)})
    return [Run(*r) for r in rows]


def unfinished(dsn: str, ids: Sequence[int]) -> list[Run]:
    """Runs going on now (started, not ended)."""
    return [r for r in runs(dsn, ids) if r.ended_at is None]


def in_flight(dsn: str, ids: Sequence[int], pod: str, at: datetime) -> list[Run]:
    """The runs ``pod`` had going at ``at``: started before, not ended before."""
    return [r for r in runs(dsn, ids)
            if r.pod == pod and r.started_at <= at and (r.ended_at is None or r.ended_at > at)]


def audit(dsn: str, ids: Sequence[int], excused: Callable[[Run], bool] = lambda _: False) -> Audit:
    """The jobs' outcome; an earlier run of a job that ran again must be ``excused``."""
    found = states(dsn, ids)
    lost = sorted(i for i in ids if found.get(i) != "completed")
    by_job: dict[int, list[Run]] = {}
    for run in runs(dsn, ids):
        by_job.setdefault(run.job_id, []).append(run)
    reruns = {job: rs for job, rs in by_job.items() if len(rs) > 1}
    duplicated = sorted(job for job, rs in reruns.items() if not all(map(excused, rs[:-1])))
    return Audit(len(ids), lost, reruns, duplicated)
